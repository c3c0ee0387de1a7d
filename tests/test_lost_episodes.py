"""Episodes cut short by the env machinery (a killed worker, an env error at reset) are marked `lost` by the real
`PoolTask` on a real `EnvPool` of debug envs, and the learner leaves them out of the samples, the GRPO group
statistics and the success rate."""
import functools
import logging
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx
from transformers import AutoTokenizer

from agentrl_jax import generate as gen
from agentrl_jax import learner
from agentrl_jax.chat import ChatFormat
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.rollout import PoolTask, host_conversation_rollout, host_rollout
from envs.pool import EnvPool, _DebugEnv
from helpers.fixed_answer import fixed_answer_policy


def _act(action: str) -> str:
    return f"<action>{action}</action>"  # the study's answer format without thinking (chat.parse_action_text)


def _prompt(ts, history, turn):
    return f"{ts.task}. Now: {ts.observation}."


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_tiny_folder())


@pytest.fixture(scope="module")
def chat(tokenizer):
    return ChatFormat.from_tokenizer(tokenizer, thinking=False)


@pytest.fixture(scope="module")
def fault_file(tmp_path_factory):
    """While this file exists, a debug env that has to be rebuilt (after it raised) fails to build."""
    return str(tmp_path_factory.mktemp("faults") / "init_fault")


@pytest.fixture(scope="module")
def pool(fault_file):
    """2 workers x 2 debug envs: env ids 0, 1 live in worker 0 and 2, 3 in worker 1."""
    with EnvPool(functools.partial(_DebugEnv, init_fault_file=fault_file), num_workers=2, envs_per_worker=2,
                 step_timeout_s=5.0, reset_timeout_s=10.0, start_timeout_s=60.0) as p:
        yield p


@pytest.fixture(scope="module")
def add5(chat):
    """A real decoder that always answers "add 5": a debug env reset with seed s reaches its goal s + 10 (reward
    10, success) on the second step."""
    policy, _ = fixed_answer_policy(chat, _act("add 5"))
    return nnx.split(policy)


def _pool_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "envs.pool" and r.levelno == logging.WARNING]


def test_pool_task_marks_exactly_the_crashed_workers_episodes_lost(pool, chat, caplog):
    task = PoolTask(pool, [0, 1, 2, 3], [0, 1, 2, 3], chat, _prompt, max_turns=4)
    assert task.lost == [False] * 4
    restarts = pool.stats()["restarts"]
    caplog.set_level(logging.WARNING, logger="envs.pool")
    # Episode 0's action SIGKILLs worker 0; episode 1 (same worker) answers badly, so it is not stepped this turn.
    out = task.step([0, 1, 2, 3], [_act("crash"), "no action here", _act("add 5"), _act("add 5")], [True] * 4)
    assert out[0] == (0.0, True, False, False, -1) and out[1] == (0.0, False, False, True, -1)
    assert [o[1] for o in out[2:]] == [False, False]
    assert task.lost == [True, False, False, False] and task.lost_reason[0] == "worker_crashed"
    # Episode 1 learns on its next step that the restart took its episode; worker 1's episodes go on and succeed.
    out = task.step([1, 2, 3], [_act("add 5")] * 3, [True] * 3)
    assert out[0] == (0.0, True, False, False, -1)
    assert out[1] == out[2] == (10.0, True, True, False, -1)
    assert task.lost == [True, True, False, False]
    assert task.lost_reason == ["worker_crashed", "needs_reset: worker_crashed", None, None]
    # One restart, one warning: it names the worker, the reason and both episodes it took.
    assert pool.stats()["restarts"] == restarts + 1
    assert _pool_warnings(caplog) == ["EnvPool worker 0 restarted after worker_crashed: 2 episode(s) lost "
                                      "(env ids [0, 1])"]


@pytest.mark.parametrize("mode", ["window", "conversation"])
def test_host_rollouts_mark_lost_episodes_and_the_learner_leaves_them_out(pool, chat, tokenizer, add5, fault_file,
                                                                        caplog, mode):
    graphdef, params = add5
    # Episode 3's reset fails (its env raised, and rebuilding it fails while the fault file exists).
    pool.reset([3], [3])
    assert pool.step([3], ["raise"])[0].info["truncated_reason"].startswith("env_error")
    pool.ready()  # a worker restarted by an earlier test must not build its envs while the fault file exists
    with open(fault_file, "w") as f:
        f.write("raise")
    try:
        task = PoolTask(pool, [0, 1, 2, 3], [0, 1, 2, 3], chat, _prompt, max_turns=3)
    finally:
        os.remove(fault_file)
    assert task.lost == [False, False, False, True] and task.lost_reason[3].startswith("env_error: RuntimeError")
    # Worker 0 dies between the reset and the first step: episodes 0 and 1 are lost at their first step.
    caplog.set_level(logging.WARNING, logger="envs.pool")
    os.kill(pool.worker_pids()[0], signal.SIGKILL)
    cfg = gen.GenerationConfig(max_new_tokens=8, temperature=0.0, stop_ids=chat.stop_ids, pad_id=0)
    if mode == "window":
        batch, stats = host_rollout(graphdef, params, task, cfg, jax.random.PRNGKey(0), tokenizer, 64)
        flatten = learner.flatten_samples
    else:
        batch, stats = host_conversation_rollout(graphdef, params, task, chat, cfg, jax.random.PRNGKey(0), tokenizer,
                                                 max_total_tokens=256)
        flatten = learner.flatten_conversations
    np.testing.assert_array_equal(stats.lost, [True, True, False, True])
    np.testing.assert_array_equal(stats.length, [1, 1, 2, 0])  # the episode lost at reset is never played
    np.testing.assert_array_equal(stats.success, [False, False, True, False])
    np.testing.assert_allclose(stats.episode_return, [0.0, 0.0, 10.0, 0.0])
    assert _pool_warnings(caplog) == ["EnvPool worker 0 restarted after worker_crashed: 2 episode(s) lost "
                                      "(env ids [0, 1])"]

    keep = learner.kept_episodes(stats)
    np.testing.assert_array_equal(keep, [False, False, True, False])
    everything, index_all = flatten(batch)
    kept, index = flatten(batch, keep=keep)
    assert set(index_all[:, 0]) >= {0, 1, 2}  # the lost episodes did produce samples: they are dropped, not absent
    rows = keep[index_all[:, 0]]
    np.testing.assert_array_equal(index, index_all[rows])
    assert set(index[:, 0]) == {2}
    for k in everything:
        np.testing.assert_array_equal(kept[k], everything[k][rows], err_msg=k)
    with pytest.raises(ValueError, match="kept_episodes"):
        flatten(batch, keep=keep.astype(np.int32))

    # The success rate counts the kept episode only (over all four it would read 0.25).
    assert learner.outcome_metrics(stats) == {"success_rate": 1.0, "return": 10.0, "episode_length": 2.0,
                                              "lost_episodes": 3.0}


def test_grpo_group_statistics_use_only_present_episodes():
    group_size = 4
    returns = np.array([1.0, 4.0, 100.0, 2.0,  # group 0: episode 2 lost (its return would dominate the group)
                        5.0, -7.0, 0.0, 3.0,  # group 1: a single present member
                        0.0, 1.0, 2.0, 6.0], np.float32)  # group 2: nothing lost
    present = np.array([True, True, False, True, True, False, False, False, True, True, True, True])
    index = np.stack([np.arange(12), np.zeros(12, np.int64)], axis=1)
    adv = learner.grpo_step_advantages(returns, index, group_size, present=present)
    eps = 1e-6
    kept = returns[[0, 1, 3]]
    want = (kept - kept.mean()) / (kept.std(ddof=1) + eps)  # the group as if episode 2 had never run
    np.testing.assert_allclose(adv[[0, 1, 3]], want, rtol=1e-5)
    assert adv[2] == 0.0
    np.testing.assert_array_equal(adv[4:8], 0.0)  # fewer than 2 present: no baseline, no signal
    np.testing.assert_allclose(adv[8:], learner.grpo_step_advantages(returns, index, group_size)[8:], rtol=1e-6)
    # Only the steps the learner keeps need an advantage: the index may skip the lost episodes.
    some = index[[1, 3, 8]]
    np.testing.assert_allclose(learner.grpo_step_advantages(returns, some, group_size, present=present),
                               adv[[1, 3, 8]], rtol=1e-6)
    with pytest.raises(ValueError, match="present"):
        learner.grpo_step_advantages(returns, index, group_size, present=present[:4])


def test_outcome_metrics_when_every_episode_is_lost():
    from agentrl_jax.rollout import EpisodeStats

    stats = EpisodeStats(episode_return=np.zeros(2), success=np.zeros(2, bool), length=np.ones(2, np.int32),
                         truncated=np.ones(2, bool), lost=np.ones(2, bool))
    m = learner.outcome_metrics(stats)
    assert m["lost_episodes"] == 2.0 and all(np.isnan(m[k]) for k in ("success_rate", "return", "episode_length"))
