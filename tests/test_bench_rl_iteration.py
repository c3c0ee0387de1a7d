"""Smoke test of benchmarks/rl_iteration.py: the --quick run finishes and writes the promised JSON rows."""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_run_writes_rows(tmp_path):
    out = tmp_path / "rl.json"
    env = dict(os.environ)
    # One CPU device is enough here (conftest's 8 fake devices only slow the compile down on a 2-core box).
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "rl_iteration.py"), "--quick",
                           "--json", str(out)], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=880)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    by = {(r["section"], r["impl"]): r for r in rows}
    assert set(by) == {("device_vs_host", "device"), ("device_vs_host", "host"), ("device_vs_host", "host_loop"),
                       ("device_vs_host", "peer_torch"), ("rl_iteration", "device"), ("rl_iteration", "host"), ("env_only", "jax_env")}
    for r in rows:
        for field in ("section", "impl", "batch", "episodes_per_s", "env_steps_per_s", "generated_tokens_per_s",
                      "seconds", "device"):
            assert field in r, (field, r)
        assert r["device"].startswith("cpu") and r["batch"] == 8
        assert r["episodes_per_s"] > 0 and math.isfinite(r["episodes_per_s"]) and r["env_steps_per_s"] > 0
    for impl in ("device", "host"):
        dvh, it = by[("device_vs_host", impl)], by[("rl_iteration", impl)]
        # Every episode takes 1..max_steps (6) turns and each turn generates 1..8 tokens.
        assert 8 <= dvh["env_steps"] <= 8 * 6 and dvh["env_steps"] <= dvh["generated_tokens"] <= 8 * dvh["env_steps"]
        assert dvh["generated_tokens_per_s"] > 0
        for k in ("rollout_s", "generate_s", "update_s", "other_s"):
            assert it[k] is not None and it[k] >= 0, (impl, k)
        assert it["update_s"] > 0 and it["rollout_s"] > 0 and it["samples"] == it["env_steps"]
        assert it["seconds"] >= it["rollout_s"] + it["update_reported_s"] - 1e-6
        assert abs(it["seconds"] - it["rollout_s"] - it["update_s"]) < 1e-6
    # The peer row (transformers + torch generate per turn) plays the same levels with the same weights.
    peer = by[("device_vs_host", "peer_torch")]
    assert 8 <= peer["env_steps"] <= 8 * 6 and peer["env_steps"] <= peer["generated_tokens"] <= 8 * peer["env_steps"]
    assert peer["device_speedup"] > 0 and peer["device"] == "cpu:torch"
    assert by[("rl_iteration", "host")]["env_s"] > 0 and by[("rl_iteration", "device")]["env_s"] is None
    assert 0 < by[("device_vs_host", "host")]["setup_s"] < by[("device_vs_host", "host")]["seconds"]
    assert "[device_vs_host]" in proc.stdout and "[rl_iteration]" in proc.stdout
