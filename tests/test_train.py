"""The gin trainer end to end: configuration errors, resume after a stop, and honest learning on Sokoban."""
import os
import signal
import subprocess
import sys

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from agentrl_jax import checkpoint as ckpt
from agentrl_jax import learner
from agentrl_jax import train as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FILES = ["gin/experiments/sokoban_tiny_cpu.gin"]
# Tests that train a step evaluate at the rollout temperature: 8 held-out episodes are then the very program of
# the step's 8 training episodes, compiled once instead of twice (what they check does not depend on it).
SAMPLED_EVAL = {"train.eval_temperature": 1.0}


def _bindings(out_dir, **over):
    # 8 episodes a step, as many as the held-out evaluation (see SAMPLED_EVAL).
    b = {"OUTPUT_DIR": repr(str(out_dir)), "train.num_steps": 1, "train.tasks_per_step": 2, "train.group_size": 4,
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


@pytest.mark.parametrize("value", [True, False])
def test_one_thinking_macro_sets_training_evaluation_and_env_properties(value):
    """`THINKING` is the one switch: the trainer (prompts, answer format, parser, SFT answers all follow
    train.thinking), the evaluator's starting row and env_properties read it, whatever the experiment set."""
    import agentrl_jax.env_properties  # noqa: F401  (registers its configurable)
    import agentrl_jax.evaluate  # noqa: F401

    gin.clear_config()
    try:
        T.parse_gin(["gin/experiments/sokoban_tiny_learn.gin", "gin/runs/evaluate.gin", "gin/runs/env_properties.gin"],
                    [f"THINKING = {value}", "EVAL_DIR = '/tmp/unused'", "evaluate.domains = ['sokoban']",
                     "env_properties.domains = ['sokoban']", "env_properties.model_path = 'expert'",
                     "env_properties.output_path = '/tmp/unused.json'"])
        for name in ("train.thinking", "evaluate.start_thinking", "env_properties.thinking"):
            assert str(gin.query_parameter(name)) == "%THINKING", name
        assert gin.query_parameter("THINKING/gin.macro.value") is value
    finally:
        gin.clear_config()


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
    first = _run(TINY_FILES, _bindings(tmp_path, **SAMPLED_EVAL, **{"train.num_steps": 1}))
    ckpts = os.path.join(tmp_path, "checkpoints")
    assert sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) == [1]
    assert any(f.startswith("events") for f in os.listdir(os.path.join(tmp_path, "tb")))
    assert os.path.exists(os.path.join(tmp_path, "operative_config.gin"))
    assert "eval/success_rate" in first and "pg_loss" in first and "time/update_s" in first
    # A second run with a larger budget resumes from step 1 (no SFT again) and finishes step 2.
    second = _run(TINY_FILES, _bindings(tmp_path, **SAMPLED_EVAL, **{"train.num_steps": 2}))
    assert sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) == [1, 2]
    assert "eval/success_rate" in second


def _saved_params(out_dir, step):
    state = ocp.PyTreeCheckpointer().restore(os.path.join(out_dir, "checkpoints", str(step), "state"))
    return jax.tree.map(np.asarray, state["params"])


def _ppo_bindings(out_dir):
    # PPO with a critic, KL folded into the rewards, 2 epochs of shuffled minibatches of 8 (8 episodes x 3
    # turns = up to 24 samples: 3 minibatches an epoch). No SFT warm-up: a resume never redoes it, so it is not
    # what this checks.
    return _bindings(out_dir, **SAMPLED_EVAL, **{
        "train.num_steps": 2, "train.tasks_per_step": 8, "train.group_size": 1, "train.minibatch_size": 8,
        "train.eval_every": 0, "train.sample_every": 0, "train.checkpoint_every": 1, "train.sft_steps": 0,
        "agentrl_jax.rl.RLConfig.algorithm": "'ppo'", "agentrl_jax.rl.RLConfig.ppo_epochs": 2,
        "agentrl_jax.rl.RLConfig.kl_coef": 0.5, "agentrl_jax.rl.RLConfig.kl_in_reward": True,
        "agentrl_jax.rl.RLConfig.value_clip_scale": "'return_std'"})


@pytest.mark.slow
def test_preempted_between_minibatches_resumes_bit_identical(tmp_path, monkeypatch):
    """The real trainer: 2 steps straight vs. a SIGTERM after the first minibatch of step 2 (the run keeps
    step 1 and exits), then a restart that resumes: the final parameters are bit-identical."""
    straight = _run(TINY_FILES, _ppo_bindings(tmp_path / "straight"))
    assert straight["kl_reward_penalty"] > 0 and "kl_loss" not in straight  # the KL went into the rewards
    assert "vf_explained_var" in straight and straight["vf_clip_range"] > 0

    real_minibatches = learner.minibatches
    rl_passes = []

    def minibatches_then_sigterm(samples, *args, **kwargs):
        rl_pass = "advantages" in samples
        rl_passes.append(rl_pass)
        for i, mb in enumerate(real_minibatches(samples, *args, **kwargs)):
            yield mb
            if rl_pass and sum(rl_passes) == 3 and i == 0:  # step 2, epoch 0, after its first minibatch
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(T.learner, "minibatches", minibatches_then_sigterm)
    try:
        with pytest.raises(ckpt.Preempted, match="resume from step 1 ") as stopped:  # saved, not finished
            _run(TINY_FILES, _ppo_bindings(tmp_path / "resumed"))
    finally:
        ckpt.clear_preemption_flag()
    assert stopped.value.step == 1
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) == [1]  # step 2 was abandoned mid-way
    monkeypatch.setattr(T.learner, "minibatches", real_minibatches)
    _run(TINY_FILES, _ppo_bindings(tmp_path / "resumed"))
    a, b = _saved_params(tmp_path / "straight", 2), _saved_params(tmp_path / "resumed", 2)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_sft_warmup_then_conversation_mode_runs(tmp_path):
    """The warm-up trains window samples; a conversation-mode run (host rollout) starts from it."""
    out = _run(TINY_FILES, _bindings(tmp_path, **{
        "train.num_steps": 0, "train.prompt_mode": "'conversation'", "train.rollout_mode": "'host'",
        "train.eval_episodes": 4, "train.sft_steps": 2}))
    assert 0.0 <= out["eval/success_rate"] <= 1.0
