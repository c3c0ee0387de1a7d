"""Throughput and MFU of the sharded train step (agentrl_jax.sharding + optim) for a CausalLM config.

    python benchmarks/train_step.py                                  # tiny CPU default, 8 fake devices
    python benchmarks/train_step.py --mesh 1,-1,1 --hidden 256 --layers 4 --seq 256 --batch 16
    python benchmarks/train_step.py --peer torch --json out.json     # also time HF transformers (torch) AdamW

Model FLOPs per step = (6 * params + 12 * layers * heads * head_dim * seq) * tokens (PaLM appendix B
convention: matmul FLOPs of forward+backward, attention scores/values counted over the full sequence).
MFU = model FLOP/s / peak FLOP/s. Peak: `--peak_tflops` (per device), else a table by device kind (dense
bf16 datasheet numbers), else on CPU a measured fp32 matmul rate of the host. Fake CPU devices share the
same cores, so on CPU the peak is the host's, not multiplied by the device count.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

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


def parse():
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
                    help="also time the same model/step in HF transformers + torch (CPU)")
    ap.add_argument("--json", default=None, help="write results here")
    return ap.parse_args()


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


def bench_jax(a):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from agentrl_jax import optim, sharding
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
    step = sharding.make_train_step(loss_fn, tx, mesh, sh, graphdef, accum_steps=a.accum)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, a.vocab, size=(a.batch, a.seq + 1), dtype=np.int32)
    if a.accum > 1:
        ids = ids.reshape(a.accum, a.batch // a.accum, a.seq + 1)
    batch = sharding.shard_batch({"ids": ids}, sh, accum_steps=a.accum)

    t = time.perf_counter()
    params, opt_state, m = step(params, opt_state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
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
        params=n_params, head_dim=cfg.head_dim, compile_s=compile_s, step_times=times, peak_flops=peak,
        peak_source=peak_src, loss=float(m["loss"]),
    )


def bench_torch(a, head_dim):
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      head_dim=head_dim, tie_word_embeddings=True, max_position_embeddings=max(a.seq + 1, 128))
    model = LlamaForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, a.vocab, size=(a.batch, a.seq + 1)).astype(np.int64))

    def step():
        out = model(input_ids=ids[:, :-1])
        logp = torch.log_softmax(out.logits.float(), -1)
        loss = -logp.gather(-1, ids[:, 1:, None]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    n = sum(p.numel() for p in model.parameters())
    return dict(impl=f"torch {torch.__version__} + transformers (HF Llama)", device="cpu",
                n_devices=1, params=n, step_times=times, threads=torch.get_num_threads())


def main():
    a = parse()
    a.intermediate = a.intermediate or 4 * a.hidden
    if a.batch % a.accum:
        sys.exit(f"--batch {a.batch} must be divisible by --accum {a.accum}")
    if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={a.cpu_devices}").strip()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    rows = [bench_jax(a)]
    if a.peer == "torch":
        rows.append(bench_torch(a, rows[0]["head_dim"]))
    tokens = a.batch * a.seq
    peak = rows[0]["peak_flops"]
    for r in rows:
        med = sorted(r["step_times"])[len(r["step_times"]) // 2]
        fpt = model_flops_per_token(r["params"], a.layers, a.heads, rows[0]["head_dim"], a.seq)
        r.update(step_s=med, tokens_per_s=tokens / med, model_tflops=fpt * tokens / med / 1e12,
                 mfu=fpt * tokens / med / peak if peak == peak else float("nan"))

    print(f"\nconfig: vocab={a.vocab} hidden={a.hidden} inter={a.intermediate} layers={a.layers} heads={a.heads}/"
          f"{a.kv_heads} seq={a.seq} batch={a.batch} accum={a.accum} dtype={a.dtype} mesh={rows[0]['mesh']}")
    print(f"peak: {peak / 1e12:.3f} TFLOP/s ({rows[0]['peak_source']}); jax compile {rows[0]['compile_s']:.1f}s\n")
    hdr = f"{'impl':<44} {'device':<14} {'params':>10} {'step ms':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>7}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['impl'][:44]:<44} {r['device'][:14]:<14} {r['params']:>10,} {r['step_s'] * 1e3:>9.1f} "
              f"{r['tokens_per_s']:>10,.0f} {r['model_tflops']:>8.4f} {r['mfu'] * 100:>6.2f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": rows}, f, indent=2, default=str)
        print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
