"""Smoke test of benchmarks/generate.py: a --tiny run spawns each side (ours, HF dynamic cache, HF static cache) in
fresh processes, interleaved, and writes sane JSON rows (medians of the per-round runs, the speedup against HF's
best row, identical greedy tokens on the shared weights)."""
import json
import math
import os
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "generate.py")


def _env():
    env = dict(os.environ)
    # One CPU device, as a user runs it (conftest's 8 fake devices would only slow the children down).
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    return env


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_run_interleaves_fresh_processes_and_writes_rows(tmp_path):
    out = tmp_path / "gen.json"
    batches, repeats, n = (2,), 2, 4
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--batches", ",".join(map(str, batches)),
                           "--new_tokens", str(n), "--repeats", str(repeats), "--cpus", "1", "--json", str(out)],
                          cwd=str(tmp_path), env=_env(), capture_output=True, text=True, timeout=580)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert 100_000 < data["params"] < 200_000  # tiny: hidden 64, 2 layers, vocab 512
    assert data["args"]["new_tokens"] == n and data["args"]["repeats"] == repeats
    rows = data["rows"]
    assert [r["batch"] for r in rows] == list(batches)
    sides = ("ours", "hf", "hf_static")
    last_start = 0.0
    for r in rows:
        runs = r["runs"]
        assert [x["repeat"] for x in runs] == list(range(repeats))
        # Interleaved: ours_0 < hf_0 < hf_static_0 < ours_1 < ... (each a separate process, started in order).
        for x in runs:
            starts = [x[f"{side}_started"] for side in sides]
            assert last_start < starts[0] and starts == sorted(starts)
            last_start = starts[-1]
        assert r["ours_compile_s"] == pytest.approx(statistics.median(x["ours_compile_s"] for x in runs))
        for side in sides:
            for k in ("tok_s", "ttft_ms", "step_ms"):
                key = f"{side}_{k}"
                assert r[key] == pytest.approx(statistics.median(x[key] for x in runs)), key
            assert r[f"{side}_tok_s"] > 0 and r[f"{side}_ttft_ms"] > 0
            # one decode step = (full call - TTFT) / (n - 1); on the tiny model it is within timing noise of 0
            for x in runs:
                full_ms = 1e3 * r["batch"] * n / x[f"{side}_tok_s"]
                assert x[f"{side}_step_ms"] == pytest.approx((full_ms - x[f"{side}_ttft_ms"]) / (n - 1))
        # The speedup is against HF's best row of each round (dynamic or static cache), median over rounds.
        for x in runs:
            best = max(x["hf_tok_s"], x["hf_static_tok_s"])
            assert x["ratio"] == pytest.approx(x["ours_tok_s"] / best)
            assert x[f"{x['best_hf']}_tok_s"] == pytest.approx(best)
            for h in ("hf", "hf_static"):
                assert x[f"ratio_{h}"] == pytest.approx(x["ours_tok_s"] / x[f"{h}_tok_s"])
                assert x["ratio"] <= x[f"ratio_{h}"] * (1 + 1e-9)
            assert all(x[f"{side}_load1"] >= 0 for side in sides)
            # --cpus 1: every side pinned to one core, so torch sizes its thread pool to one
            assert x["cores"] == {side: 1 for side in sides} and x["hf_threads"] == 1
        assert r["speedup"] == pytest.approx(statistics.median(x["ratio"] for x in runs))
        for h in ("hf", "hf_static"):
            assert r[f"speedup_vs_{h}"] == pytest.approx(statistics.median(x[f"ratio_{h}"] for x in runs))
        # The memory floor of a decode step: all fp32 weights + the cached K/V at the measured bandwidth.
        kv = 2 * 2 * r["batch"] * 2 * 16 * 4 * (data["args"]["prompt_len"] + n / 2)  # layers, kv heads, head_dim
        assert r["floor_step_ms"] == pytest.approx(1e3 * (4 * data["params"] + kv) / (data["read_gb_s"] * 1e9))
        # Same weights, same prompt, greedy, fp32 on all sides: every generated token agrees.
        assert r["same_tokens"] == 1.0
        assert len(r["loadavg"]) == 3 and all(v >= 0 for v in r["loadavg"])
        assert r["device"] == "cpu x1" and r["repeats"] == repeats
    assert 0.5 < data["read_gb_s"] < 5000
    assert "speedup" in proc.stdout and "load 1/5/15m" in proc.stdout and "floor" in proc.stdout
    assert "hf_static" in proc.stdout
    assert sum(" repeat " in line for line in proc.stdout.splitlines()) == len(batches) * repeats


@pytest.mark.parametrize("flags, message", [
    (["--batches", "1,x"], "--batches must be comma-separated integers"),
    (["--batches", "0"], "--batches must be positive"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--tiny", "--quick"], "pick one of --quick and --tiny"),
    (["--cpus", "0"], "--cpus must be between 1 and"),
    (["--hidden", "100", "--heads", "12"], "must divide by --heads"),
])
def test_bad_flags_fail_fast_with_a_clear_message(flags, message):
    proc = subprocess.run([sys.executable, SCRIPT, *flags], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
