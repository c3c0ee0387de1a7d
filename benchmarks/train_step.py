"""Throughput and MFU of the sharded train step (agentrl_jax.sharding + optim) for a CausalLM config.

    python benchmarks/train_step.py                                  # tiny CPU default, 8 fake devices
    python benchmarks/train_step.py --mesh 1,-1,1 --hidden 256 --layers 4 --seq 256 --batch 16
    python benchmarks/train_step.py --peer torch --json out.json     # also time HF transformers (torch) AdamW

The torch peer (`--peer torch`) runs the same config, batch and optimizer (AdamW, lr 1e-4, no weight decay,
global-norm clip 1.0) on the SAME device and dtype as ours, as torch users run it: on CPU when JAX runs on CPU,
on one CUDA GPU when JAX runs on one GPU (fp32 matmuls as TF32 on both: JAX's GPU default, torch's
`set_float32_matmul_precision("high")`), and for `--dtype bfloat16` fp32 weights with bf16 compute on both
(ours: `dtype=bfloat16, param_dtype=float32`; torch: `torch.autocast(dtype=torch.bfloat16)`). Anything else
(a TPU, several GPUs in the mesh, a GPU torch cannot see) stops with a message before any timing. Each side
runs in its own fresh process (one framework's thread pool slows the other's kernels in a shared process),
interleaved jax, torch, jax, torch, ... for `--repeats` rounds; "vs torch" is the median over rounds of torch's
step time / ours. On CPU, fake devices (`--cpu_devices`) share the host's cores with one another, so the
comparison is the same hardware at any device count; `--cpu_devices 1 --mesh 1,1,1` is the closest like.

Model FLOPs per step = (6 * params + 12 * layers * heads * head_dim * seq) * tokens (PaLM appendix B
convention: matmul FLOPs of forward+backward, attention scores/values counted over the full sequence).
MFU = model FLOP/s / peak FLOP/s. Peak: `--peak_tflops` (per device), else a table by device kind (dense
bf16 datasheet numbers), else on CPU a measured fp32 matmul rate of the host. Fake CPU devices share the
same cores, so on CPU the peak is the host's, not multiplied by the device count.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

_RESULT = "RESULT "  # prefix of the one line a child process answers with

PEAK_TFLOPS = {  # dense bf16 per device, vendor datasheets
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "NVIDIA H100": 989.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100": 312.0,
}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=None, help="default 4*hidden")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv_heads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences) per optimizer step")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per step (batch is split)")
    ap.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor (one may be -1)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cpu_devices", type=int, default=8, help="fake CPU devices (CPU backend only)")
    ap.add_argument("--peak_tflops", type=float, default=None, help="peak per device, TFLOP/s")
    ap.add_argument("--peer", choices=["none", "torch"], default="none",
                    help="also time the same model/step in HF transformers + torch, same device and dtype")
    ap.add_argument("--repeats", type=int, default=3,
                    help="with --peer: interleaved (jax, torch) rounds, each side in a fresh process")
    ap.add_argument("--cpus", type=int, default=None,
                    help="pin both sides to the first N cores (default: all). On a machine other jobs share, "
                         "--cpus 1 keeps torch's OpenMP threads from stalling on descheduled peers, a bias "
                         "in our favour (see benchmarks/generate.py)")
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--logits_memory", action="store_true",
                    help="also print the compiled peak memory of scoring / train gradient with whole vs sliced "
                         "logits at Llama-3.1-8B's vocabulary and the study's lengths (benchmarks/logits_memory.py)")
    # Internal: one side in a fresh process, answering with one RESULT line.
    ap.add_argument("--side", choices=["probe", "jax", "torch"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--torch_device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--head_dim_of_jax", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for name in ("steps", "warmup", "repeats", "batch", "seq", "accum", "cpu_devices"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    allowed = len(os.sched_getaffinity(0))
    if a.cpus is not None and not 1 <= a.cpus <= allowed:
        ap.error(f"--cpus must be between 1 and the {allowed} cores this process may use, got {a.cpus}")
    a.intermediate = a.intermediate or 4 * a.hidden
    if a.batch % a.accum:
        ap.error(f"--batch {a.batch} must be divisible by --accum {a.accum}")
    return a


def model_flops_per_token(n_params: int, layers: int, heads: int, head_dim: int, seq: int) -> float:
    return 6.0 * n_params + 12.0 * layers * heads * head_dim * seq


def measure_cpu_peak(jax, jnp) -> float:
    """fp32 matmul FLOP/s on one CPU device (uses all host cores)."""
    n = 1024
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "s8": 1, "u8": 1, "pred": 1}


def collective_traffic(hlo_text: str, loop_trips: int = 1) -> dict:
    """Bytes (the outputs' sizes, per device) and counts of each collective in one execution of a compiled
    program, from its optimized HLO text. Ops in a while-loop body count `loop_trips` times (the train step's
    only loop is the gradient-accumulation scan); their share is reported separately as `<kind>_in_loop`."""
    import re  # noqa: PLC0415

    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo_text))
    op = re.compile(r"= (.+?) (" + "|".join(_COLLECTIVES) + r")(?:-start)?\(")
    out: dict = {}
    computation = None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            computation = head.group(1)
            continue
        m = op.search(re.sub(r"/\*index=\d+\*/", "", line))
        if not m:
            continue
        size = sum(_DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
                   for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", m.group(1)))
        in_loop = computation in bodies
        trips = loop_trips if in_loop else 1
        for key in (m.group(2), f"{m.group(2)}_in_loop") if in_loop else (m.group(2),):
            out[key] = out.get(key, 0) + size * trips
            out[f"{key}_ops"] = out.get(f"{key}_ops", 0) + trips
    return out


def bench_jax(a):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from agentrl_jax import optim, sharding, training_core
    from agentrl_jax.models import CausalLM, ModelConfig

    cfg = ModelConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_layers=a.layers, num_heads=a.heads, num_kv_heads=a.kv_heads, head_dim=None,
                      tie_word_embeddings=True, dtype=a.dtype, param_dtype="float32", remat=a.remat)
    mesh = sharding.make_mesh(*[int(x) for x in a.mesh.split(",")])
    tx = optim.make_optimizer(learning_rate=1e-4)

    def loss_fn(model, batch, key):
        del key
        ids = batch["ids"]
        logits = model(ids[:, :-1])
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean(), {}

    graphdef, params, opt_state, sh = sharding.create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), tx, mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    # compiled with the kernels train() uses (on CPU: Eigen's matmuls, `training_core.update_compiler_options`)
    step = sharding.make_train_step(loss_fn, tx, mesh, sh, graphdef, accum_steps=a.accum,
                                    compiler_options=training_core.update_compiler_options())
    rng = np.random.default_rng(0)
    ids = rng.integers(0, a.vocab, size=(a.batch, a.seq + 1), dtype=np.int32)
    if a.accum > 1:
        ids = ids.reshape(a.accum, a.batch // a.accum, a.seq + 1)
    batch = sharding.shard_batch({"ids": ids}, sh, accum_steps=a.accum)

    t = time.perf_counter()
    params, opt_state, m = step(params, opt_state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    # The program the first call compiled (jit's cache serves it: no second compilation).
    traffic = collective_traffic(step.jitted.lower(params, opt_state, batch, jax.random.key(0)).compile().as_text(),
                                 loop_trips=a.accum)
    for i in range(a.warmup - 1):
        params, opt_state, m = step(params, opt_state, batch, jax.random.key(i))
    jax.block_until_ready(m)
    times = []
    for i in range(a.steps):
        t = time.perf_counter()
        params, opt_state, m = step(params, opt_state, batch, jax.random.key(i))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)

    dev = jax.devices()[0]
    kind = dev.device_kind
    n_dev = len(mesh.devices.flat)
    if a.peak_tflops is not None:
        peak, peak_src = a.peak_tflops * 1e12 * n_dev, "flag"
    elif dev.platform == "cpu":
        peak, peak_src = measure_cpu_peak(jax, jnp), "measured fp32 matmul (host)"
    else:
        per = next((v for k, v in PEAK_TFLOPS.items() if kind.startswith(k)), None)
        peak, peak_src = (per * 1e12 * n_dev, f"table ({kind})") if per else (float("nan"), "unknown")
    return dict(
        impl="agentrl_jax", device=f"{dev.platform}:{kind}", n_devices=n_dev, mesh=dict(mesh.shape),
        dtype="fp32 weights, bf16 compute" if a.dtype == "bfloat16" else "float32",
        params=n_params, head_dim=cfg.head_dim, compile_s=compile_s, step_times=times, peak_flops=peak,
        peak_source=peak_src, loss=float(m["loss"]), collectives=traffic,
    )


def torch_device_for(platform: str, n_devices: int, torch_has_cuda: bool) -> str:
    """The torch device that matches the JAX side's hardware, or SystemExit saying why there is none."""
    if platform == "cpu":
        return "cpu"
    if platform in ("gpu", "cuda"):
        if n_devices != 1:
            sys.exit(f"--peer torch: JAX sees {n_devices} GPUs but the torch peer runs on one; compare on one GPU "
                     f"(e.g. CUDA_VISIBLE_DEVICES=0 ... --mesh 1,1,1) so both sides use the same hardware.")
        if not torch_has_cuda:
            sys.exit("--peer torch: JAX runs on a GPU but this torch has no CUDA (torch.cuda.is_available() is "
                     "False); install a CUDA build of torch, or run both on CPU with JAX_PLATFORMS=cpu.")
        return "cuda"
    sys.exit(f"--peer torch: JAX runs on {platform!r}, where torch does not run; compare on CPU "
             f"(JAX_PLATFORMS=cpu) or on one GPU.")


def probe() -> dict:
    """Which hardware the JAX side gets (in its own process, so the parent never holds a device)."""
    import jax

    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except ImportError:
        cuda = False
    return dict(platform=jax.default_backend(), n_devices=jax.device_count(), torch_cuda=cuda)


def bench_torch(a, head_dim):
    import contextlib

    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dev = torch.device(a.torch_device)
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls, as JAX does on a GPU by default
    # Mixed precision as torch users run it: fp32 weights and optimizer, bf16 compute under autocast.
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.dtype == "bfloat16" \
        else contextlib.nullcontext
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      head_dim=head_dim, tie_word_embeddings=True, max_position_embeddings=max(a.seq + 1, 128))
    model = LlamaForCausalLM(cfg).to(dev).train()  # fp32 weights, like ours (param_dtype float32)
    if a.remat:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)  # ours: make_optimizer(1e-4)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, a.vocab, size=(a.batch, a.seq + 1)).astype(np.int64))
    ids = ids.to(dev).reshape(a.accum, a.batch // a.accum, a.seq + 1)

    def step():
        for micro in ids:  # --accum micro-batches, one optimizer step (as ours)
            with autocast():
                out = model(input_ids=micro[:, :-1])
            logp = torch.log_softmax(out.logits.float(), -1)
            loss = -logp.gather(-1, micro[:, 1:, None]).mean() / a.accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return float(loss.detach())

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    n = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return dict(impl=f"torch {torch.__version__} + transformers (HF Llama)", device=f"{dev.type}:{name}",
                n_devices=1, params=n, step_times=times, threads=torch.get_num_threads(),
                dtype="fp32 weights, bf16 autocast" if a.dtype == "bfloat16" else "float32")


def _spawn(argv: list, side: str, extra: tuple = ()) -> dict:
    """Re-invoke this script for one side in a fresh process; return its RESULT json (raise on failure)."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--side", side, *extra]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT)]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr[-4000:]
        if proc.returncode != 0 and "--peer torch:" in tail:  # a refusal: pass its message on as is
            sys.exit(tail.strip().splitlines()[-1])
        raise RuntimeError(f"benchmark side {side!r} failed with exit code {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{tail}")
    return dict(json.loads(lines[-1][len(_RESULT):]), started=started)


def _without(argv: list, *flags: str) -> list:
    """argv minus the given --flag value pairs (and --flag=value forms)."""
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x in flags:
            skip = True
        elif not any(x.startswith(f + "=") for f in flags):
            out.append(x)
    return out


def run_with_peer(a, argv: list) -> list:
    """Interleaved fresh-process rounds of (jax, torch) on the same device and dtype; returns [jax, torch] rows
    whose step_times are all rounds' timed steps and whose `rounds` hold each round's median step."""
    hw = _spawn(argv, "probe")
    device = torch_device_for(hw["platform"], hw["n_devices"], hw["torch_cuda"])
    child_argv = _without(argv, "--json", "--repeats")
    rounds = []
    for _ in range(a.repeats):
        j = _spawn(child_argv, "jax")
        t = _spawn(child_argv, "torch", ("--torch_device", device, "--head_dim_of_jax", str(j["head_dim"])))
        rounds.append((j, t))
    rows = []
    for k in range(2):
        row = dict(rounds[0][k])
        row["step_times"] = [x for r in rounds for x in r[k]["step_times"]]
        row["round_step_s"] = [statistics.median(r[k]["step_times"]) for r in rounds]
        row["round_started"] = [r[k]["started"] for r in rounds]
        rows.append(row)
    rows[0]["vs_torch"] = statistics.median(t / j for j, t in zip(rows[0]["round_step_s"], rows[1]["round_step_s"]))
    return rows


def _child(a) -> None:
    if a.side == "probe":
        out = probe()
    elif a.side == "jax":
        out = bench_jax(a)
    else:
        out = bench_torch(a, a.head_dim_of_jax)
    print(_RESULT + json.dumps(out, default=str), flush=True)


def print_step_table(a, rows) -> None:
    tokens = a.batch * a.seq
    peak = rows[0]["peak_flops"]
    for r in rows:
        med = sorted(r["step_times"])[len(r["step_times"]) // 2]
        fpt = model_flops_per_token(r["params"], a.layers, a.heads, rows[0]["head_dim"], a.seq)
        r.update(step_s=med, tokens_per_s=tokens / med, model_tflops=fpt * tokens / med / 1e12,
                 mfu=fpt * tokens / med / peak if peak == peak else float("nan"))

    print(f"\nconfig: vocab={a.vocab} hidden={a.hidden} inter={a.intermediate} layers={a.layers} heads={a.heads}/"
          f"{a.kv_heads} seq={a.seq} batch={a.batch} accum={a.accum} dtype={a.dtype} remat={a.remat} "
          f"mesh={rows[0]['mesh']}")
    from agentrl_jax.xla_cpu import host_cpu

    print(f"cpu: {host_cpu()}")
    print(f"peak: {peak / 1e12:.3f} TFLOP/s ({rows[0]['peak_source']}); jax compile {rows[0]['compile_s']:.1f}s")
    if len(rows) > 1:
        print(f"peer: same device and dtype ({rows[1]['device']}, {rows[1]['dtype']}), each side in a fresh "
              f"process, {a.repeats} interleaved round(s); step ms = median over all rounds' steps; vs torch = "
              f"median over rounds of torch step / ours; torch threads {rows[1]['threads']}; cores "
              f"{len(os.sched_getaffinity(0))}; load {os.getloadavg()[0]:.1f}")
    print()
    hdr = (f"{'impl':<44} {'device':<16} {'devs':>4} {'params':>10} {'step ms':>9} {'tokens/s':>10} {'TFLOP/s':>8} "
           f"{'MFU':>7} {'vs torch':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        vs = f"{r['vs_torch']:.2f}x" if "vs_torch" in r else "-"
        print(f"{r['impl'][:44]:<44} {r['device'][:16]:<16} {r['n_devices']:>4} {r['params']:>10,} "
              f"{r['step_s'] * 1e3:>9.1f} {r['tokens_per_s']:>10,.0f} {r['model_tflops']:>8.4f} "
              f"{r['mfu'] * 100:>6.2f}% {vs:>8}")
    traffic = rows[0].get("collectives") or {}
    if traffic:
        parts = []
        for kind in _COLLECTIVES:
            if kind in traffic:
                loop = traffic.get(f"{kind}_in_loop", 0)
                parts.append(f"{kind} {traffic[kind] / 1e6:.2f} MB ({traffic[f'{kind}_ops']} ops"
                             + (f"; {loop / 1e6:.2f} MB inside the accumulation scan" if loop else "") + ")")
        print("\ncollectives per step (ours, compiled HLO, per device): " + ("; ".join(parts) or "none"))


def print_logits_memory(a, rows) -> None:
    """Compiled peak memory of the scoring pass and the train gradient, whole vs sliced logits, at an 8B
    vocabulary and the study's lengths (`benchmarks/logits_memory.py`; compiled only, nothing runs)."""
    import logits_memory  # noqa: PLC0415  (next to this file)

    print()
    mem = logits_memory.main([])
    for r in rows:
        r["logits_memory"] = mem


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.cpus is not None:  # before any thread pool starts; child processes inherit it
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:a.cpus])
    if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={a.cpu_devices}").strip()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if a.side is not None:
        return _child(a)

    rows = run_with_peer(a, argv) if a.peer == "torch" else [bench_jax(a)]
    print_step_table(a, rows)
    # Further report sections go here, each its own function of (a, rows) printing below the step table.
    if a.logits_memory:
        print_logits_memory(a, rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": rows}, f, indent=2, default=str)
        print(f"\nwrote {a.json}")
    return rows


if __name__ == "__main__":
    main()
