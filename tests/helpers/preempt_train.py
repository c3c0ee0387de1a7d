"""A tiny end-to-end training script for the preemption test (run as a subprocess).

sharding + optim + checkpoint on the stand-in LM; data are a pure function of (seed, step), the step key
is fold_in(PRNGKey(seed), step) and the sampler cursor goes in the checkpoint's JSON, so an interrupted
and resumed run must end bit-identical to an uninterrupted one.

    python tests/helpers/preempt_train.py --workdir D --steps 12 --out final.npz [--sleep 0.3]
Exit 0 when finished, checkpoint.EXIT_PREEMPTED (75) when stopped by SIGTERM (after a forced checkpoint).
"""
import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE)]

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from agentrl_jax import checkpoint, optim, sharding  # noqa: E402
from helpers.standin import StandinLM, lm_loss, make_batch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save_every", type=int, default=4)
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds per step, to leave time for a SIGTERM")
    ap.add_argument("--mesh", default="1,8,1")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    checkpoint.install_preemption_handler()
    mesh = sharding.make_mesh(*[int(x) for x in a.mesh.split(",")])
    tx = optim.make_optimizer(learning_rate=optim.make_schedule(1e-2, total_steps=a.steps, warmup_steps=2))
    graphdef, params, opt_state, sh = sharding.create_sharded(
        lambda: StandinLM(vocab=64, hidden=32, mlp=64, layers=1, rngs=nnx.Rngs(a.seed)), tx, mesh)
    step_fn = sharding.make_train_step(lm_loss, tx, mesh, sh, graphdef)
    ckpt = checkpoint.Checkpointer(os.path.join(a.workdir, "ckpt"), save_every=a.save_every, keep=2)

    abstract = {
        "params": sharding.abstract_with_shardings(params, sh.params),
        "opt_state": sharding.abstract_with_shardings(opt_state, sh.opt_state),
        "rng": jax.random.key(0),
    }
    restored = ckpt.restore_latest(abstract)
    if restored is None:
        step, rng, cursor = 0, jax.random.key(a.seed), 0
    else:
        step, state, extra = restored
        params, opt_state, rng, cursor = state["params"], state["opt_state"], state["rng"], extra["cursor"]
        print(f"resumed from step {step}", flush=True)

    while step < a.steps:
        batch = make_batch(a.seed, cursor)
        params, opt_state, m = step_fn(params, opt_state, batch, jax.random.fold_in(rng, step))
        step, cursor = step + 1, cursor + 1
        print(f"step {step} loss {float(m['loss']):.6f}", flush=True)
        state = {"params": params, "opt_state": opt_state, "rng": rng}
        ckpt.maybe_save(step, state, extra_json={"cursor": cursor})
        if checkpoint.preemption_requested(step):
            ckpt.maybe_save(step, state, extra_json={"cursor": cursor}, force=True)
            ckpt.close()
            print(f"preempted at step {step}", flush=True)
            sys.exit(checkpoint.EXIT_PREEMPTED)
        time.sleep(a.sleep)

    ckpt.close()
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(a.out, **flat)
    print("done", flush=True)


if __name__ == "__main__":
    main()
