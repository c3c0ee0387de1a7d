"""Cross-domain evaluation end to end: a real tiny training run with in-training curves on two domains, its
real Orbax checkpoints evaluated on Sokoban + ALFWorld + ScienceWorld, killed with SIGKILL and resumed without
recomputing finished cells; fingerprints; bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from agentrl_jax import evaluate as E
from agentrl_jax import train as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_JAVA = shutil.which("java") is not None
# The evaluator subprocesses run on one CPU device (compiles faster); the run was saved from 8 fake devices, so
# restoring also crosses meshes.
ONE_DEVICE = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
# Short text episodes with a small prompt buffer (cut from the left): plumbing, not competence, is tested here.
TEXT_SMALL = ["AlfWorldEnv.data_path = 'data/alfworld'", "AlfWorldDomain.max_steps = 2",
              "AlfWorldDomain.max_prompt_tokens = 512", "SciWorldDomain.max_prompt_tokens = 512",
              "AlfWorldDomain.num_workers = 1", "AlfWorldDomain.envs_per_worker = 2",
              "SciWorldDomain.max_steps = 2", "SciWorldDomain.num_workers = 1", "SciWorldDomain.envs_per_worker = 2"]


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two RL steps of the tiny policy on easy Sokoban, checkpointed at both, evaluated on Sokoban and ALFWorld."""
    out = tmp_path_factory.mktemp("run")
    bindings = [f"OUTPUT_DIR = '{out}'", "train.num_steps = 2", "train.tasks_per_step = 2", "train.group_size = 2",
                "train.minibatch_size = 16", "train.sft_steps = 0", "train.eval_every = 2", "train.eval_episodes = 4",
                "train.checkpoint_every = 1", "train.sample_every = 0", "train.eval_domains = ['alfworld']",
                *TEXT_SMALL]
    gin.clear_config()
    T.parse_gin(["gin/experiments/sokoban_tiny_cpu.gin"], bindings)
    try:
        metrics = T.train()
    finally:
        gin.clear_config()
    return str(out), metrics


@pytest.mark.alfworld
@pytest.mark.slow
def test_training_logs_generalization_curves_for_each_eval_domain(run_dir):
    out, metrics = run_dir
    scalars = _scalars(os.path.join(out, "tb"))
    for tag in ("eval/success_rate", "eval/alfworld/success_rate", "eval/alfworld/invalid_action_rate",
                "time/eval/alfworld_s"):
        assert sorted(scalars[tag]) == [0, 2], tag  # the starting policy and every eval_every step
    assert "env/alfworld/restarts" in scalars and scalars["env/alfworld/restarts"][2] == 0
    # The ALFWorld evaluation ran 4 episodes through a pool of 2 (two batches) of at most 2 steps each.
    assert 1 <= metrics["eval/alfworld/episode_length"] <= 2


def _eval_cmd(out_dir, run, extra=()):
    domains = ["sokoban", "alfworld"] + (["sciworld"] if HAVE_JAVA else [])
    bindings = [f"EVAL_DIR = '{out_dir}'", f"evaluate.runs = {{'sokoban': '{run}'}}", f"evaluate.domains = {domains}",
                "evaluate.episodes = {'sokoban': 4, 'alfworld': 2, 'sciworld': 2}", "evaluate.seeds = (0, 1)",
                "evaluate.num_checkpoints = 2", "evaluate.n_boot = 200", *TEXT_SMALL, *extra]
    return [sys.executable, "-m", "agentrl_jax.evaluate", "--gin_file=gin/experiments/eval_tiny_cpu.gin",
            *[f"--gin_bindings={b}" for b in bindings]]


@pytest.mark.alfworld
@pytest.mark.slow
def test_evaluation_is_killed_and_resumes_without_recomputing(run_dir, tmp_path):
    run, _ = run_dir
    out = tmp_path / "eval"
    cells = out / "cells"
    proc = subprocess.Popen(_eval_cmd(out, run), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=ONE_DEVICE)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if cells.is_dir() and len([p for p in cells.iterdir() if p.suffix == ".json"]) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in cells.iterdir() if p.suffix == ".json"}
    assert len(before) >= 3 and not (out / "results.json").exists()

    done = subprocess.run(_eval_cmd(out, run), cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=ONE_DEVICE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in cells.iterdir() if p.suffix == ".json"}
    assert all(after[k] == v for k, v in before.items())  # finished cells were read, not recomputed
    n_domains = 3 if HAVE_JAVA else 2
    assert len(after) == (1 + 2) * n_domains * 2  # (start + 2 checkpoints) x domains x seeds
    results = json.loads((out / "results.json").read_text())
    assert results["cells_reused"] == len(before) and results["cells_total"] == len(after)
    assert results["matrix"]["rows"] == ["start", "sokoban"] and len(results["matrix"]["cols"]) == n_domains
    assert results["matrix"]["train_domain"] == {"start": None, "sokoban": "sokoban"}
    assert results["rows"]["sokoban"]["checkpoints"] == [1, 2] and results["rows"]["sokoban"]["thinking"] is False
    entry = results["entries"]["sokoban"]["alfworld"]
    assert entry["interval_method"] == "bootstrap" and entry["tasks"] == 2
    assert entry["checkpoints"] == [1, 2] and entry["seeds"] == [0, 1]
    assert 0.0 <= entry["interval"][0] <= entry["success"] <= entry["interval"][1] <= 100.0
    assert results["domains"]["alfworld"]["split"] == "valid_unseen"
    if HAVE_JAVA:
        assert results["domains"]["sciworld"]["split"] == "test"
    # The matrix entry is the mean of the per-task successes stored in its cells.
    stored = [json.loads((cells / n).read_text()) for n in after]
    assert all(c["thinking"] is False for c in stored)  # every cell records the thinking setting it played with
    cell_vals = [json.loads((cells / n).read_text())["success"] for n in after if n.startswith("sokoban__")
                 and "__sokoban__" in n]
    assert entry is not None and np.isclose(results["entries"]["sokoban"]["sokoban"]["success"],
                                            100 * np.mean(cell_vals))
    assert "evaluate.domains" in results["gin_config"]
    assert "| start |" in (out / "table.md").read_text()
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tb = _scalars(str(out / "tb"))
    assert "matrix/sokoban/alfworld/success_rate" in tb
    assert sorted(tb["checkpoints/sokoban/alfworld/success_rate"]) == [1, 2]  # a curve over the run's checkpoints


def test_cell_fingerprint_follows_checkpoint_files_and_settings(tmp_path):
    folder = tmp_path / "run" / "checkpoints" / "3"
    folder.mkdir(parents=True)
    (folder / "state").write_bytes(b"abc")
    row = E.Row("r", "tiny", "sokoban", False, "none", str(tmp_path / "run"), (3,))
    spec = E.CellSpec("r", 3, "alfworld", "valid_unseen", 0)
    fp = E.cell_fingerprint(row, spec, {"temperature": 0.4})
    assert fp == E.cell_fingerprint(row, spec, {"temperature": 0.4})
    assert fp != E.cell_fingerprint(row, spec, {"temperature": 0.5})
    E.write_cell(str(tmp_path / "cells"), {"id": spec.cell_id, "fingerprint": fp, "success": [1.0]})
    assert E.read_cell(str(tmp_path / "cells"), spec, fp)["success"] == [1.0]
    time.sleep(0.01)
    (folder / "state").write_bytes(b"abd")  # a rewritten checkpoint
    fp2 = E.cell_fingerprint(row, spec, {"temperature": 0.4})
    assert fp2 != fp and E.read_cell(str(tmp_path / "cells"), spec, fp2) is None


def test_the_last_4_are_on_the_runs_checkpoint_schedule(tmp_path):
    """A run preempted at 142 and resumed keeps 105-150 on disk with 142 beside them (or did before retention
    dropped it): the evaluator's "last 4" reads the schedule from the run's operative config and skips 142."""
    run = tmp_path / "run"
    for step in (105, 120, 135, 142, 150):
        os.makedirs(run / "checkpoints" / str(step))
    (run / "operative_config.gin").write_text("train.domain = 'sokoban'\ntrain.model_path = 'tiny'\n"
                                              "train.num_steps = 150\ntrain.checkpoint_every = 15\n")
    rows = E.build_rows(None, {"r": str(run)}, "last", 4, True)
    assert rows[0].steps == (105, 120, 135, 150)
    assert E.select_steps([105, 120, 135, 142, 150], "last", 4) == [120, 135, 142, 150]  # without the schedule


def test_bad_input_gets_one_clear_message(tmp_path):
    with pytest.raises(ValueError, match="unknown domain 'sokobann'"):
        E.evaluate(output_dir=str(tmp_path / "a"), domains=["sokobann"], start_model="tiny")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "operative_config.gin").write_text("train.domain = 'sokoban'\n")
    with pytest.raises(ValueError, match="no checkpoint in"):
        E.evaluate(output_dir=str(tmp_path / "b"), domains=["sokoban"], runs={"sok": str(empty)})
    with pytest.raises(ValueError, match="not a training run folder"):
        E.evaluate(output_dir=str(tmp_path / "c"), domains=["sokoban"], runs={"sok": str(tmp_path)})
    with pytest.raises(ValueError, match="no split 'valid_unsen'.*valid_unseen"):
        E.evaluate(output_dir=str(tmp_path / "d"), domains=["alfworld"], start_model="tiny",
                   splits={"alfworld": "valid_unsen"})
    with pytest.raises(ValueError, match="nothing to evaluate"):
        E.evaluate(output_dir=str(tmp_path / "e"), domains=["sokoban"])
    proc = subprocess.run([sys.executable, "-m", "agentrl_jax.evaluate", "--gin_file=gin/experiments/eval_tiny_cpu.gin",
                           "--gin_bindings=evaluate.domains = ['webshopp']"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "unknown domain 'webshopp'" in proc.stderr and "Traceback" not in proc.stderr


def test_columns_name_a_domain_and_optionally_its_split():
    assert E.parse_column("alfworld") == ("alfworld", "alfworld", None)
    assert E.parse_column("alfworld:valid_seen") == ("alfworld:valid_seen", "alfworld", "valid_seen")
    with pytest.raises(ValueError, match="unknown domain 'alfwold'"):
        E.parse_column("alfwold:valid_seen")
    cols = ["sokoban", "alfworld:valid_seen", "alfworld"]
    assert E.id_column("alfworld", cols) == "alfworld" and E.id_column(None, cols) is None
    assert E.id_column("alfworld", ["sokoban", "alfworld:valid_seen"]) == "alfworld:valid_seen"
    assert E.id_column("sciworld", cols) is None  # trained on a domain the matrix does not show: all OOD
