"""The gin trainer end to end: configuration errors, resume after a stop, and honest learning on Sokoban."""
import os
import subprocess
import sys

import gin
import pytest

from agentrl_jax import train as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FILES = ["gin/experiments/sokoban_tiny_cpu.gin"]


def _bindings(out_dir, **over):
    b = {"OUTPUT_DIR": repr(str(out_dir)), "train.num_steps": 1, "train.tasks_per_step": 4, "train.group_size": 4,
         "train.minibatch_size": 32, "train.eval_episodes": 8, "train.sft_steps": 2, "train.sft_levels": 8,
         "train.eval_every": 1, "train.checkpoint_every": 1, "train.sample_every": 1,
         "Sokoban.max_steps": 3}
    b.update(over)
    return [f"{k} = {v}" for k, v in b.items()]


def _run(files, bindings):
    gin.clear_config()
    T.parse_gin(files, bindings)
    try:
        return T.train()
    finally:
        gin.clear_config()


def test_missing_required_macro_fails_before_compiling(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agentrl_jax.train", "--gin_file=gin/runs/grpo.gin"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "OUTPUT_DIR" in proc.stderr or "MODEL_PATH" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_unknown_binding_names_the_problem(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agentrl_jax.train", f"--gin_file={TINY_FILES[0]}",
                           "--gin_bindings=train.num_stepz = 3"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "num_stepz" in proc.stderr and "sokoban_tiny_cpu.gin" in proc.stderr, proc.stderr[-2000:]


def test_missing_gin_file_is_named(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agentrl_jax.train", "--gin_file=gin/experiments/nope.gin"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "nope.gin" in proc.stderr


def test_bad_warmup_stop_is_named_before_building_anything(tmp_path):
    with pytest.raises(ValueError, match="sft_max_success"):
        _run(TINY_FILES, _bindings(tmp_path, **{"train.sft_max_success": 1.5}))
    with pytest.raises(ValueError, match="sft_check_every"):
        _run(TINY_FILES, _bindings(tmp_path, **{"train.sft_check_every": 0}))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


@pytest.mark.slow
def test_train_writes_logs_checkpoints_and_resumes(tmp_path):
    first = _run(TINY_FILES, _bindings(tmp_path, **{"train.num_steps": 1}))
    ckpts = os.path.join(tmp_path, "checkpoints")
    assert sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) == [1]
    assert any(f.startswith("events") for f in os.listdir(os.path.join(tmp_path, "tb")))
    assert os.path.exists(os.path.join(tmp_path, "operative_config.gin"))
    assert "eval/success_rate" in first and "pg_loss" in first and "time/update_s" in first
    # A second run with a larger budget resumes from step 1 (no SFT again) and finishes step 2.
    second = _run(TINY_FILES, _bindings(tmp_path, **{"train.num_steps": 2}))
    assert sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) == [1, 2]
    assert "eval/success_rate" in second
