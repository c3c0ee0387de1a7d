"""Smoke tests of benchmarks/train_step.py: the torch peer runs on the same device and dtype as ours (or the
benchmark refuses, saying why), each side in fresh interleaved processes."""
import importlib.util
import json
import os
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "train_step.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peer_device_matches_ours_or_refuses_clearly(bench):
    assert bench.torch_device_for("cpu", 8, torch_has_cuda=False) == "cpu"  # fake devices share the host
    assert bench.torch_device_for("gpu", 1, torch_has_cuda=True) == "cuda"
    for args, message in [(("gpu", 2, True), "runs on one"), (("gpu", 1, False), "has no CUDA"),
                          (("tpu", 4, False), "where torch does not run")]:
        with pytest.raises(SystemExit, match=message):
            bench.torch_device_for(*args)


@pytest.mark.parametrize("flags, message", [
    (["--batch", "6", "--accum", "4"], "must be divisible by --accum"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--cpus", "0"], "--cpus must be between 1 and"),
])
def test_bad_flags_fail_with_a_clear_message(bench, flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bf16_peer_run_is_same_device_and_dtype_interleaved(tmp_path):
    out = tmp_path / "step.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    repeats = 2
    proc = subprocess.run([sys.executable, SCRIPT, "--peer", "torch", "--dtype", "bfloat16", "--repeats",
                           str(repeats), "--steps", "2", "--warmup", "1", "--vocab", "128", "--hidden", "32",
                           "--layers", "1", "--seq", "8", "--batch", "2", "--cpu_devices", "1", "--mesh", "1,1,1", "--cpus", "1",
                           "--json", str(out)], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=580)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ours, peer = json.loads(out.read_text())["results"]
    assert ours["device"].startswith("cpu") and peer["device"].startswith("cpu")
    assert ours["dtype"] == "fp32 weights, bf16 compute" and peer["dtype"] == "fp32 weights, bf16 autocast"
    assert ours["params"] == peer["params"] and peer["threads"] == 1  # --cpus 1: torch sizes its pool to it
    # Interleaved fresh processes: jax_0 < torch_0 < jax_1 < torch_1.
    starts = [s for pair in zip(ours["round_started"], peer["round_started"]) for s in pair]
    assert len(starts) == 2 * repeats and starts == sorted(starts)
    assert len(ours["step_times"]) == len(peer["step_times"]) == 2 * repeats
    assert ours["vs_torch"] == pytest.approx(statistics.median(
        t / j for j, t in zip(ours["round_step_s"], peer["round_step_s"])))
    assert "vs torch" in proc.stdout and "same device and dtype" in proc.stdout


def test_accumulation_reduces_gradients_across_replicas_once_per_step(bench):
    """Pure data parallelism (8 replicas) with 2 micro-batches: the compiled step's only collective is one
    gradient all-reduce after the accumulation scan, none inside it (which would cost k x the traffic)."""
    a = bench.parse(["--mesh=-1,1,1", "--accum", "2", "--batch", "16", "--seq", "8", "--vocab", "128",
                     "--hidden", "32", "--layers", "1", "--steps", "1", "--warmup", "1"])
    traffic = bench.bench_jax(a)["collectives"]
    assert traffic.get("all-reduce_in_loop", 0) == 0, traffic
    assert traffic["all-reduce_ops"] >= 1 and traffic["all-reduce"] > 0, traffic


def test_collective_traffic_counts_loop_bodies_per_trip(bench):
    hlo = "\n".join([
        "%body.1 (p: (f32[4])) -> (f32[4]) {",
        "  %ar = f32[4,8]{1,0} all-reduce(%x), replica_groups={}, to_apply=%add",
        "}",
        "ENTRY %main (a: f32[4]) -> f32[4] {",
        "  %w = (f32[4]) while(%t), condition=%cond.1, body=%body.1",
        "  %ag = (f32[2,2]{1,0}, /*index=1*/bf16[8]{0}) all-gather(%y, %z), dimensions={0}",
        "}",
    ])
    t = bench.collective_traffic(hlo, loop_trips=3)
    assert t["all-reduce"] == t["all-reduce_in_loop"] == 3 * 4 * 8 * 4 and t["all-reduce_ops"] == 3
    assert t["all-gather"] == 2 * 2 * 4 + 8 * 2 and "all-gather_in_loop" not in t
