"""The whole trainer as a 2-process job (2 CPU processes x 4 devices, one 8-device mesh): Sokoban's losses,
rollouts, held-out success and final parameters equal a 1-process x 8-device run; in an ALFWorld job each
process steps only its own block of every batch, the blocks together being the step's tasks."""
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from agentrl_jax import domains

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(REPO, "tests", "helpers", "multihost_train.py")
STEPS = 2
# 2 tasks x 4 rollouts = 8 episodes a step (a multiple of the 8-device batch axes), as many held-out episodes
# at the rollout temperature (one compiled rollout program for both). Each process's <= 12 samples fit in its
# share (16) of a 32-row minibatch, so a minibatch holds the same samples as the 1-process run's. A short SFT
# warm-up (on every process, the same global batch) makes some answers parse, so returns and GRPO
# advantages differ inside groups and the update is not zero.
SOKOBAN = ["train.num_steps = 2", "train.tasks_per_step = 2", "train.group_size = 4", "train.minibatch_size = 32",
           "train.eval_episodes = 8", "train.eval_temperature = 1.0", "train.eval_every = 2",
           "train.checkpoint_every = 1", "train.sample_every = 0", "Sokoban.max_steps = 3",
           "train.sft_steps = 20", "train.sft_levels = 16", "train.sft_batch_size = 16"]
ALFWORLD = ["train.num_steps = 2", "train.eval_every = 2", "train.checkpoint_every = 2", "train.sample_every = 0",
            "train.max_response_tokens = 8", "AlfWorldDomain.max_steps = 2", "train.eval_episodes = 2",
            "train.minibatch_size = 16"]
SEEDS_LINE = re.compile(r"process (\d) of 2 plays alfworld episodes (\d+)\.\.(\d+) of (\d+) \(split (\w+)\): "
                        r"task seeds \[([\d, ]*)\]")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(out_dir, gin_file, bindings, nproc, local_devices):
    """nproc processes of one job (each `local_devices` CPU devices); process 0 writes out_dir/result.json."""
    port, procs = _free_port(), []
    args = ["--out", str(out_dir / "result.json"), "--local_devices", str(local_devices), "--gin_file", gin_file]
    for b in [f"OUTPUT_DIR = {str(out_dir)!r}", *bindings]:
        args += ["--gin_bindings", b]
    for pid in range(nproc):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRL_") and k != "XLA_FLAGS"}
        env["PYTHONPATH"] = REPO
        if nproc > 1:
            env.update(AGENTRL_COORDINATOR=f"localhost:{port}", AGENTRL_NUM_PROCESSES=str(nproc),
                       AGENTRL_PROCESS_ID=str(pid), AGENTRL_INIT_TIMEOUT="600")
        procs.append(subprocess.Popen([sys.executable, HELPER, *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs, out_dir, timeout=1500):
    logs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-4000:]
        assert "done" in out
        logs.append(out)
    with open(out_dir / "result.json") as f:
        return json.load(f), logs


def _saved_params(out_dir, step):
    """The checkpointed parameters as numpy arrays (whatever devices wrote them)."""
    path = os.path.join(out_dir, "checkpoints", str(step), "state")
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    state = ckptr.restore(path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta))
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state["params"])}


def _flat(params, keys):
    return np.concatenate([params[k].ravel() for k in keys])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sokoban_two_processes_equal_one_process_of_eight_devices(tmp_path):
    gin_file = "gin/experiments/sokoban_tiny_cpu.gin"
    two = _start(tmp_path / "two", gin_file, SOKOBAN, nproc=2, local_devices=4)
    one = _start(tmp_path / "one", gin_file, SOKOBAN, nproc=1, local_devices=8)
    (got, logs), (ref, _) = _finish(two, tmp_path / "two"), _finish(one, tmp_path / "one")
    for log in logs:
        assert "4 local, 8 global devices" in log
    assert "process 0 of 2 plays sokoban episodes 0..3 of 8 (split train)" in logs[0]
    assert "process 1 of 2 plays sokoban episodes 4..7 of 8 (split train)" in logs[1]
    assert "process 0 of 2 plays sokoban episodes" not in logs[1]

    assert sorted(got["steps"]) == sorted(ref["steps"])
    for step in map(str, range(1, STEPS + 1)):
        g, r = got["steps"][step], ref["steps"][step]
        # The rollout is the same episodes (global means over all 8, not process 0's 4) ...
        for k in ("episode/return", "episode/success_rate", "episode/invalid_action_rate", "episode/episodes",
                  "episode/samples", "loss/response_tokens"):
            np.testing.assert_allclose(g[k], r[k], rtol=1e-6, err_msg=f"step {step} {k}")
        # ... and the update the same, up to float reassociation.
        for k in ("loss/loss", "loss/pg_loss", "loss/entropy", "optim/grad_norm", "optim/param_norm"):
            np.testing.assert_allclose(g[k], r[k], rtol=2e-4, atol=1e-6, err_msg=f"step {step} {k}")
    # A real update: some answers parse, so some group's advantages are not all zero.
    assert max(ref["steps"][str(s)]["optim/grad_norm"] for s in range(1, STEPS + 1)) > 0
    assert got["steps"]["1"]["episode/episodes"] == 8
    for step in ("0", str(STEPS)):  # held-out success over every process's episodes
        for k in ("eval/success_rate", "eval/return", "eval/episodes"):
            np.testing.assert_allclose(got["steps"][step][k], ref["steps"][step][k], rtol=1e-6, err_msg=k)
    assert got["steps"]["0"]["eval/episodes"] == 8

    a, b = _saved_params(tmp_path / "two", STEPS), _saved_params(tmp_path / "one", STEPS)
    before = _saved_params(tmp_path / "one", STEPS - 1)
    assert sorted(a) == sorted(b)
    keys = sorted(b)
    # Adam turns float noise in near-zero gradients into updates of up to the learning rate on a handful of
    # weights, so the final parameters are compared as a whole: the two runs' parameters differ by under 0.1%
    # of the last step's update, and nearly every weight agrees to 1e-6.
    diff, update = _flat(a, keys) - _flat(b, keys), _flat(b, keys) - _flat(before, keys)
    assert np.linalg.norm(update) > 0
    assert np.linalg.norm(diff) < 1e-3 * np.linalg.norm(update), (np.linalg.norm(diff), np.linalg.norm(update))
    assert np.mean(np.abs(diff) > 1e-6) < 1e-3


@pytest.mark.slow
@pytest.mark.alfworld
@pytest.mark.timeout(1800)
def test_alfworld_each_process_steps_only_its_own_episodes(tmp_path):
    pytest.importorskip("alfworld")
    got, logs = _finish(_start(tmp_path, "gin/experiments/alfworld_tiny_cpu.gin", ALFWORLD, nproc=2,
                               local_devices=4), tmp_path)
    played = {}  # (split, step index) -> {process: (first, last, total, seeds)}
    for log in logs:
        calls = {}
        for pid, first, last, total, split, seeds in SEEDS_LINE.findall(log):
            n = calls[split] = calls.get(split, 0) + 1
            played.setdefault((split, n), {})[int(pid)] = (int(first), int(last), int(total),
                                                           [int(s) for s in seeds.split(",")])
    # Training: 2 tasks x 2 rollouts a step; process 0 plays episodes 0-1, process 1 episodes 2-3, which
    # together are the step's tasks in order (the single-process batch).
    for step in range(1, STEPS + 1):
        mine = played[("train", step)]
        assert [mine[p][:3] for p in (0, 1)] == [(0, 1, 4), (2, 3, 4)]
        expected = np.repeat(domains.stream_seeds(0, domains.TRAIN_STREAM, step, 2), 2).tolist()
        assert mine[0][3] + mine[1][3] == expected
        assert not set(mine[0][3]) & set(mine[1][3])
    # Held-out: episode 0 on process 0, episode 1 on process 1 (at step 0 and at the last step).
    for n in (1, 2):
        mine = played[("valid_unseen", n)]
        assert [mine[p] for p in (0, 1)] == [(0, 0, 2, [0]), (1, 1, 2, [1])]
    # Process 0 logged the whole job's means: all 4 training and both held-out episodes.
    assert got["steps"][str(STEPS)]["episode/episodes"] == 4
    assert got["steps"]["0"]["eval/episodes"] == 2 and got["steps"][str(STEPS)]["eval/episodes"] == 2
    assert os.path.isdir(tmp_path / "checkpoints" / str(STEPS))
