"""LoRA vs full fine-tuning on the same model: optimizer-state memory and train-step time.

    python benchmarks/lora.py                                   # a 4-layer 512-wide model on this CPU
    python benchmarks/lora.py --hidden 1024 --layers 8 --rank 16 --json out.json

Both sides run the trainer's own pieces: `optim.make_optimizer` (AdamW + clip + apply_if_finite) and
`sharding.make_train_step` (LoRA: the adapters are the params, the base goes in frozen), a next-token NLL
loss, the same random batch. Memory columns are the bytes of the arrays themselves (trainable weights,
optimizer state, i.e. what is checkpointed besides the frozen base) and XLA's compiled temp-buffer estimate
of the step (`memory_analysis()`, where the backend gives one). Step time: median of `--steps` timed steps
after one warm-up (compile) step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv_heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default=",".join(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj")))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the rows here")
    return ap.parse_args(argv)


def _nbytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def _compiled_stats(step, *args):
    """(XLA's temp-buffer bytes, its FLOP count) of the compiled step; None where the backend gives none."""
    compiled = step.jitted.lower(*args).compile()
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 (not every backend reports it)
        temp = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost["flops"])
    except Exception:  # noqa: BLE001
        flops = None
    return temp, flops


def run_side(a, rank: int):
    from agentrl_jax import optim, sharding, training_core
    from agentrl_jax.models import ModelConfig, lora, random_model

    cfg = ModelConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_layers=a.layers,
                      num_heads=a.heads, num_kv_heads=a.kv_heads, dtype="float32", param_dtype="float32")
    lm = random_model(cfg, seed=0)
    if rank:
        lora.add_adapters(lm, lora.lora_config(rank=rank, alpha=a.alpha, target_modules=a.targets.split(",")))
    mesh = sharding.make_mesh(data=1, fsdp=-1, tensor=1, devices=jax.devices()[:1])
    graphdef, params, _ = nnx.split(lm, nnx.Param, ...)
    p_sh = sharding.tree_shardings(params, mesh)
    if rank:
        (params, frozen), (t_sh, f_sh) = lora.split_trainable(params), lora.split_trainable(p_sh)
        params, frozen = jax.device_put(params, t_sh), (jax.device_put(frozen, f_sh),)
    else:
        t_sh, f_sh, frozen = p_sh, None, ()
        params = jax.device_put(params, p_sh)
    tx = optim.make_optimizer(learning_rate=1e-4)
    opt_state = tx.init(params)
    o_sh = sharding.tree_shardings(opt_state, mesh)
    spec = sharding.TrainShardings(params=t_sh, opt_state=o_sh, batch=sharding.batch_sharding(mesh),
                                   replicated=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                                   mesh=mesh, rules=sharding.logical_rules())

    def loss_fn(model, batch, key):
        logits = model(batch["ids"][:, :-1])
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["ids"][:, 1:, None], -1).mean()
        return nll, {}

    step = sharding.make_train_step(loss_fn, tx, mesh, spec, graphdef, donate=False, frozen_shardings=f_sh,
                                    compiler_options=training_core.update_compiler_options())
    ids = np.random.default_rng(0).integers(0, a.vocab, (a.batch, a.seq + 1)).astype(np.int32)
    batch = sharding.shard_batch({"ids": ids}, spec)
    key = jax.random.PRNGKey(0)
    temp, flops = _compiled_stats(step, params, opt_state, batch, key, *frozen)
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        params, opt_state, m = step(params, opt_state, batch, key, *frozen)
        jax.block_until_ready((params, opt_state, m))
        if i:
            times.append(time.perf_counter() - t0)
    total = _nbytes(params) + (_nbytes(frozen[0]) if frozen else 0)
    return {"side": f"LoRA r={rank}" if rank else "full", "total_params": total // 4,
            "trainable_params": _nbytes(params) // 4, "trainable_bytes": _nbytes(params),
            "opt_state_bytes": _nbytes(opt_state), "step_temp_bytes": temp,
            "step_gflop": None if flops is None else flops / 1e9,
            "step_ms": 1000 * statistics.median(times)}


def _mib(b):
    return "n/a" if b is None else f"{b / 2**20:.2f}"


def _gflop(g):
    return "n/a" if g is None else f"{g:.1f}"


def main(argv=None):
    a = parse(argv)
    rows = [run_side(a, 0), run_side(a, a.rank)]
    full = rows[0]
    print(f"\nmodel: hidden {a.hidden}, {a.layers} layers, vocab {a.vocab}; batch {a.batch} x seq {a.seq}; "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}); targets {a.targets}")
    print("| side | trainable params | trainable MiB | optimizer state MiB | step temp MiB | step GFLOP (XLA) | "
          "step ms | opt state vs full |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']} | {r['trainable_params']:,} of {r['total_params']:,} | {_mib(r['trainable_bytes'])} | "
              f"{_mib(r['opt_state_bytes'])} | {_mib(r['step_temp_bytes'])} | "
              f"{_gflop(r['step_gflop'])} | {r['step_ms']:.1f} | "
              f"{r['opt_state_bytes'] / full['opt_state_bytes']:.4f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
