"""EnvPool on real worker processes: crashes, hangs, env errors, determinism across W, no zombies."""
import functools
import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import gin
import psutil
import pytest

from envs.interface import TextStep
from envs.pool import DEFAULT_WORKER_ENV, EnvFailure, EnvPool, _DebugEnv

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HAS_ALFWORLD = importlib.util.find_spec("alfworld") is not None
HAS_SOKOBAN_TEXT = importlib.util.find_spec("envs.sokoban") is not None and os.path.exists(
    os.path.join(REPO, "envs", "sokoban", "text_env.py"))


def _gone(pids, timeout_s=15.0):
    """Wait until none of `pids` runs; return the ones still running.

    A dead orphan (a worker's child) may stay a zombie until the container's init reaps it; it holds no
    resources, so it counts as gone. Our own children must be reaped: see `_own_zombies`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _own_zombies():
    return [c.pid for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]


def _tree(pids):
    out = set(pids)
    for pid in pids:
        try:
            out.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def pool():
    with EnvPool(_DebugEnv, num_workers=2, envs_per_worker=2, step_timeout_s=2.0, reset_timeout_s=5.0,
                 start_timeout_s=60.0) as p:
        yield p


def test_batched_reset_step_routes_ids_to_workers(pool):
    pids = pool.worker_pids()
    out = pool.reset([3, 0, 2], [30, 0, 20])
    assert [o.observation for o in out] == ["value 30 at t=0", "value 0 at t=0", "value 20 at t=0"]
    assert [o.info["pid"] for o in out] == [pids[1], pids[0], pids[1]]  # id i lives in worker i // M
    out = pool.step([0, 3], ["add 2", "add 1"])
    assert [o.observation for o in out] == ["value 2 at t=1", "value 31 at t=1"]
    # the expert reaches the goal; reward and success come back through the pipe
    (plan,) = pool.call([0], "expert_actions")
    for a in plan:
        (last,) = pool.step([0], [a])
    assert last.done and last.success and last.reward == 10.0
    assert pool.stats()["restarts"] == 0


def test_timings_split_env_time_from_the_pools_own_cost(pool):
    """The workers time their env calls; the parent times the whole call. Known sleeps must land on the env side."""
    pool.reset([0, 1, 2, 3], [0, 1, 2, 3])
    pool.timings(reset=True)
    pool.step([0, 2], ["sleep 0.2", "sleep 0.05"])  # worker 0 sleeps 0.2 s, worker 1 0.05 s: in parallel
    pool.step([0, 1], ["sleep 0.1", "sleep 0.1"])  # both envs live in worker 0: 0.2 s in a row
    t = pool.timings()
    assert t["calls"] == 2
    assert 0.4 <= t["env_critical_s"] < 0.4 + 0.15  # max over workers per call: 0.2 + 0.2
    assert 0.45 <= t["env_total_s"] < 0.45 + 0.15  # every worker's env time: 0.25 + 0.2
    assert t["wall_s"] >= t["env_critical_s"]
    assert t["pool_overhead"] == pytest.approx(t["wall_s"] / t["env_critical_s"] - 1)
    # a failed call (hung worker) is left out of the split rather than blurring it
    pool.step([0], ["sleep 5"])
    assert pool.timings(reset=True)["calls"] == 2 and pool.timings()["calls"] == 0


def test_env_exception_marks_only_that_env(pool):
    pool.reset([0, 1, 2, 3], [0, 1, 2, 3])
    pid0 = pool.worker_pids()[0]
    out = pool.step([0, 1, 2, 3], ["add 1", "raise", "add 1", "add 1"])
    assert out[1].done and out[1].truncated
    assert out[1].info["truncated_reason"].startswith("env_error: RuntimeError")
    assert "debug env asked to raise" in out[1].info["traceback"]
    assert [o.observation for o in (out[0], out[2], out[3])] == ["value 1 at t=1", "value 3 at t=1", "value 4 at t=1"]
    # the sibling in the same worker keeps its episode, the worker was not restarted
    assert pool.step([0], ["add 1"])[0].observation == "value 2 at t=2"
    assert pool.worker_pids()[0] == pid0
    # the failed env says it needs a reset, then works again after one
    again = pool.step([1], ["add 1"])[0]
    assert again.truncated and again.info["truncated_reason"].startswith("needs_reset: env_error")
    assert pool.reset([1], [7])[0].observation == "value 7 at t=0"
    assert pool.step([1], ["add 1"])[0].observation == "value 8 at t=1"
    assert pool.stats()["env_errors"] == 1 and pool.stats()["restarts"] == 0


def test_sigkill_mid_step_loses_no_other_episode(pool):
    pool.reset([0, 1, 2, 3], [0, 1, 2, 3])
    victim = pool.worker_pids()[0]
    threading.Timer(0.5, os.kill, args=(victim, signal.SIGKILL)).start()
    out = pool.step([0, 2, 3], ["sleep 1.5", "add 1", "add 2"])  # env 0 is mid-step when its worker dies
    assert out[0].done and out[0].truncated and out[0].info["truncated_reason"] == "worker_crashed"
    assert [o.observation for o in out[1:]] == ["value 3 at t=1", "value 5 at t=1"]
    assert not any(o.truncated for o in out[1:])
    stats = pool.stats()
    assert stats["crashes"] == 1 and stats["restarts"] == 1 and stats["timeouts"] == 0
    assert pool.worker_pids()[0] != victim
    assert _gone([victim]) == [] and victim not in _own_zombies()
    # env 1 shared the dead worker but was not in the batch: its episode is lost, and says so
    lost = pool.step([1, 2], ["add 1", "add 1"])
    assert lost[0].truncated and lost[0].info["truncated_reason"] == "needs_reset: worker_crashed"
    assert lost[1].observation == "value 4 at t=2"
    # the restarted worker serves new episodes
    out = pool.reset([0, 1], [5, 6])
    assert [o.observation for o in out] == ["value 5 at t=0", "value 6 at t=0"]
    assert out[0].info["pid"] == pool.worker_pids()[0] != victim


def test_hung_step_times_out_and_worker_is_replaced(pool):
    pool.reset([0, 1, 2, 3], [0, 1, 2, 3])
    hung_pid = pool.worker_pids()[1]
    out = pool.step([0, 3], ["add 1", "sleep 60"])
    assert out[0].observation == "value 1 at t=1"
    assert out[1].done and out[1].truncated and out[1].info["truncated_reason"] == "timeout"
    assert pool.stats()["timeouts"] == 1 and pool.stats()["restarts"] == 1
    assert _gone([hung_pid]) == [] and hung_pid not in _own_zombies()
    assert pool.reset([2, 3], [2, 3])[1].info["pid"] == pool.worker_pids()[1]


def test_each_restart_logs_one_warning_with_the_episodes_it_lost(pool, caplog):
    """Worker 0 crashes while env 1's episode had already ended: only env 0's episode is lost. Worker 1 hangs
    on env 3 while env 2 is mid-episode (not in the call): both are lost."""
    import logging

    caplog.set_level(logging.WARNING, logger="envs.pool")
    pool.reset([0, 1, 2, 3], [0, 1, 2, 3])
    assert pool.step([1], ["add 10"])[0].done
    pool.step([0, 2], ["crash", "add 1"])
    pool.step([3], ["sleep 60"])
    pool.step([0], ["add 1"])  # needs a reset: answered by the pool, no restart, no warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "envs.pool" and r.levelno == logging.WARNING]
    assert warnings == ["EnvPool worker 0 restarted after worker_crashed: 1 episode(s) lost (env ids [0])",
                        "EnvPool worker 1 restarted after timeout: 2 episode(s) lost (env ids [2, 3])"]
    assert pool.stats()["restarts"] == len(warnings)


@pytest.mark.parametrize("action", ["crash", "segfault"])
def test_worker_death_in_env_code_is_marked(pool, action):
    pool.reset([0, 2], [0, 2])
    out = pool.step([0, 2], [action, "add 1"])
    assert out[0].info["truncated_reason"] == "worker_crashed"
    assert out[1].observation == "value 3 at t=1"
    assert pool.reset([0], [0])[0].observation == "value 0 at t=0"


def test_call_reports_failures_as_envfailure(pool):
    pool.reset([0, 1, 2], [0, 1, 2])
    got = pool.call([0, 2, 1], "expert_actions")
    assert got[0] == ["add 2"] * 5 and got[1] == ["add 2"] * 5
    bad = pool.call([0], "no_such_method")
    assert isinstance(bad[0], EnvFailure) and "AttributeError" in bad[0].reason


def test_worker_environment_and_affinity():
    cpus = sorted(os.sched_getaffinity(0))
    with EnvPool(_DebugEnv, num_workers=2, worker_env={"JAVA_TOOL_OPTIONS": "-Xmx64m"},
                 cpu_affinity="auto") as p:
        for name, want in DEFAULT_WORKER_ENV.items():
            if name != "JAVA_TOOL_OPTIONS":
                assert p.call([0, 1], "getenv", name) == [want, want]
        assert p.call([0], "getenv", "JAVA_TOOL_OPTIONS") == ["-Xmx64m"]
        assert p.call([0, 1], "affinity") == [[cpus[0]], [cpus[1 % len(cpus)]]]
    # the parent's own environment is untouched
    assert os.environ.get("JAVA_TOOL_OPTIONS") != "-Xmx64m"


def test_forkserver_start_method():
    with EnvPool(_DebugEnv, num_workers=2, start_method="forkserver") as p:
        assert [o.observation for o in p.reset([0, 1], [4, 5])] == ["value 4 at t=0", "value 5 at t=0"]
        assert p.step([1], ["crash"])[0].info["truncated_reason"] == "worker_crashed"
        assert p.reset([1], [6])[0].observation == "value 6 at t=0"
        pids = _tree(p.worker_pids())
    assert _gone(pids) == []


def test_bad_arguments_raise_clear_errors(pool):
    with pytest.raises(ValueError, match="out of range"):
        pool.reset([4], [0])
    with pytest.raises(ValueError, match="duplicate env ids"):
        pool.step([1, 1], ["a", "b"])
    with pytest.raises(ValueError, match="one seed per id"):
        pool.reset([0, 1], [0])
    with pytest.raises(ValueError, match="picklable"):
        EnvPool(lambda: _DebugEnv())
    with pytest.raises(ValueError, match="start_method"):
        EnvPool(_DebugEnv, start_method="fork")
    with pytest.raises(ValueError, match="num_workers"):
        EnvPool(_DebugEnv, num_workers=0)


def test_factory_error_raises_with_traceback():
    with pytest.raises(RuntimeError, match="could not build its envs(.|\n)*no_such_arg"):
        EnvPool(functools.partial(_DebugEnv, no_such_arg=1), num_workers=1)


def _fault_factory(tmp_path):
    """A debug env whose construction fails while `fault` exists (its text: "raise" or "exit")."""
    fault = tmp_path / "fault"
    return fault, functools.partial(_DebugEnv, init_fault_file=str(fault))


START_FAILURE = {"raise": "debug env asked to fail at start-up",
                 "exit": r"died while building its envs \(exit code 3\)"}


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_failed_restarts_are_counted_and_raise_with_the_factorys_error(tmp_path, how):
    fault, factory = _fault_factory(tmp_path)
    # wait_ready=False: the limit holds without ready() (it once ran only after ready() had)
    with EnvPool(factory, num_workers=2, envs_per_worker=1, max_init_failures=2, wait_ready=False) as p:
        p.reset([0, 1], [0, 1])
        fault.write_text(how)
        assert p.step([0], ["crash"])[0].info["truncated_reason"] == "worker_crashed"
        # each restart has failed (and its process is gone) before the next call: the case
        assert _gone([p.worker_pids()[0]]) == []
        first = p.reset([0], [5])[0]
        assert first.truncated and first.info["truncated_reason"] == "worker_crashed"
        assert re.search(START_FAILURE[how], first.info["traceback"])
        assert _gone([p.worker_pids()[0]]) == []
        with pytest.raises(RuntimeError, match=r"worker 0 could not build its envs \(2 consecutive failed restarts"
                                               r"(.|\n)*" + START_FAILURE[how]):
            p.reset([0, 1], [5, 6])
        # the other worker was read before the raise: its next answer is its own
        assert p.step([1], ["add 1"])[0].info["truncated_reason"] == "needs_reset: pool_error"
        assert p.reset([1], [6])[0].observation == "value 6 at t=0"
        # while the factory fails, a call that needs the worker fails clearly; once fixed, it comes back
        with pytest.raises(RuntimeError, match="3 consecutive failed restarts"):
            p.reset([0], [5])
        fault.unlink()
        assert p.reset([0], [7])[0].observation == "value 7 at t=0"
        assert p.step([0], ["add 1"])[0].observation == "value 8 at t=1"


def test_start_up_error_raised_mid_call_leaves_no_stale_reply(tmp_path):
    fault, factory = _fault_factory(tmp_path)
    with EnvPool(factory, num_workers=2, envs_per_worker=1, step_timeout_s=10, max_init_failures=1) as p:
        p.reset([0, 1], [0, 1])
        fault.write_text("raise")
        p.step([0], ["crash"])
        # worker 1 is still stepping when worker 0's restart fails past the limit
        with pytest.raises(RuntimeError, match="could not build its envs"):
            p.call([0, 1], "step", "sleep 2")
        assert [o.observation for o in p.reset([1], [7])] == ["value 7 at t=0"]


def test_interrupted_call_leaves_no_stale_reply(pool):
    class Interrupt(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupt()

    pool.reset([0, 2], [0, 2])
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # fires while worker 0 is still sleeping
        with pytest.raises(Interrupt):
            pool.step([0, 2], ["sleep 1", "add 1"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # env 2's step happened but never reached the caller; worker 0's reply was still on its way
    assert pool.step([2], ["add 1"])[0].info["truncated_reason"] == "needs_reset: interrupted_call"
    out = pool.reset([0, 2], [5, 6])
    assert [o.observation for o in out] == ["value 5 at t=0", "value 6 at t=0"]
    assert pool.step([0], ["add 1"])[0].observation == "value 6 at t=1"


def test_close_leaves_no_processes():
    p = EnvPool(_DebugEnv, num_workers=2, envs_per_worker=1)
    p.reset([0, 1], [0, 1])
    children = [s.info["child_pid"] for s in p.step([0, 1], ["spawn_child", "spawn_child"])]
    pids = _tree(p.worker_pids())
    assert set(children) <= pids
    p.close()
    p.close()  # idempotent
    assert _gone(pids) == []
    assert not set(_own_zombies()) & pids
    with pytest.raises(RuntimeError, match="closed"):
        p.step([0], ["add 1"])


@pytest.mark.parametrize("busy", [False, True])
def test_parent_sigkill_leaves_no_processes(tmp_path, busy):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from envs.pool import EnvPool, _DebugEnv
        if __name__ == "__main__":
            p = EnvPool(_DebugEnv, num_workers=2, envs_per_worker=1, step_timeout_s=600)
            p.reset([0, 1], [0, 1])
            kids = [s.info["child_pid"] for s in p.step([0, 1], ["spawn_child", "spawn_child"])]
            print(" ".join(map(str, p.worker_pids() + kids)), flush=True)
            if {busy}:
                p.step([0, 1], ["sleep 600", "sleep 600"])  # workers busy in env code when we die
            time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    try:
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert len(pids) == 4 and all(psutil.pid_exists(p) for p in pids)
        time.sleep(0.5)
        proc.kill()
        proc.wait()
        assert _gone(pids) == []
    finally:
        proc.kill()


class _ScriptedRun:
    """100 mixed reset/step calls over `n` envs from one RNG: the same script for any pool layout."""

    def __init__(self, n, actions_fn, calls=100, seed=0, reset_prob=0.15, num_seeds=1000):
        self.n, self.actions_fn, self.calls, self.seed = n, actions_fn, calls, seed
        self.reset_prob, self.num_seeds = reset_prob, num_seeds

    def run(self, pool):
        rng = random.Random(self.seed)
        log, last = [], {}
        pool.reset(list(range(self.n)), list(range(self.n)))
        for c in range(self.calls):
            ids = sorted(rng.sample(range(self.n), rng.randint(1, self.n)))
            if rng.random() < self.reset_prob or any(last.get(i) is not None and last[i].done for i in ids):
                seeds = [rng.randrange(self.num_seeds) for _ in ids]
                out = pool.reset(ids, seeds)
            else:
                out = pool.step(ids, [self.actions_fn(rng, last.get(i)) for i in ids])
            for i, o in zip(ids, out):
                last[i] = o
                info = {k: v for k, v in o.info.items() if k != "pid"}
                log.append((c, i, o.task, o.observation, o.admissible_actions, o.reward, o.done, o.success, info))
        return log


def _debug_action(rng, last):
    return rng.choice(["add 1", "add 2", "look"])


def _text_action(rng, last):
    acts = list(last.admissible_actions) if last is not None and last.admissible_actions else ["look"]
    return rng.choice(acts + ["dance wildly"])  # an unknown command now and then


def test_same_results_for_one_and_two_workers_debug():
    script = _ScriptedRun(4, _debug_action)
    with EnvPool(_DebugEnv, num_workers=1, envs_per_worker=4) as p1:
        one = script.run(p1)
    with EnvPool(_DebugEnv, num_workers=2, envs_per_worker=2) as p2:
        two = script.run(p2)
    assert one == two and len(one) > 150


@pytest.mark.slow
@pytest.mark.alfworld
@pytest.mark.skipif(not HAS_ALFWORLD, reason="alfworld not installed (pip install alfworld==0.4.2)")
def test_same_results_for_one_and_two_workers_alfworld():
    from envs.alfworld import alfworld_factory

    # few distinct games and rare resets: an ALFWorld reset of a new game costs a PDDL translation
    factory = alfworld_factory(split="valid_seen", max_steps=10)
    script = _ScriptedRun(2, _text_action, calls=24, reset_prob=0.1, num_seeds=3)
    with EnvPool(factory, num_workers=1, envs_per_worker=2) as p1:
        one = script.run(p1)
    with EnvPool(factory, num_workers=2, envs_per_worker=1) as p2:
        two = script.run(p2)
    assert one == two
    assert any("Nothing happens." in entry[3] for entry in one)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SOKOBAN_TEXT, reason="envs/sokoban/text_env.py not written yet")
def test_same_results_for_one_and_two_workers_sokoban():
    from envs.sokoban.text_env import SokobanTextEnv

    script = _ScriptedRun(2, _text_action, calls=40)  # workers each jit-compile the env: keep W small
    with EnvPool(SokobanTextEnv, num_workers=1, envs_per_worker=2, start_timeout_s=300) as p1:
        one = script.run(p1)
    with EnvPool(SokobanTextEnv, num_workers=2, envs_per_worker=1, start_timeout_s=300) as p2:
        two = script.run(p2)
    assert one == two


@pytest.mark.alfworld
@pytest.mark.skipif(not HAS_ALFWORLD, reason="alfworld not installed (pip install alfworld==0.4.2)")
def test_gin_bindings_reach_the_workers():
    from envs.alfworld import AlfWorldEnv

    gin.clear_config()
    try:
        gin.bind_parameter("envs.alfworld.AlfWorldEnv.max_steps", 2)
        gin.bind_parameter("envs.alfworld.AlfWorldEnv.split", "valid_seen")
        with EnvPool(AlfWorldEnv, num_workers=1) as p:
            first = p.reset([0], [0])[0]
            p.step([0], ["look"])
            out = p.step([0], ["look"])[0]
    finally:
        gin.clear_config()
    assert first.info["gamefile"].startswith("valid_seen/")
    assert out.done and out.truncated and out.info["truncated_reason"] == "max_steps"
