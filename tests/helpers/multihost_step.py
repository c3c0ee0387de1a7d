"""Sharded train steps as one process of a multi-process CPU job (run twice as subprocesses by
tests/test_distributed.py), or as the single-process 8-device reference (`reference()`).

    AGENTRL_COORDINATOR=localhost:PORT AGENTRL_NUM_PROCESSES=2 AGENTRL_PROCESS_ID=i \\
        python tests/helpers/multihost_step.py --out result.npz --local_devices 4
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_steps(mesh_shape=(2, 4, 1), steps=2):
    """Returns (losses, {path: full param array}) after `steps` sharded train steps."""
    import jax
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils

    from agentrl_jax import optim, sharding
    from helpers.standin import StandinLM, lm_loss, make_batch

    mesh = sharding.make_mesh(*mesh_shape)
    tx = optim.make_optimizer(learning_rate=1e-3)
    graphdef, params, opt_state, sh = sharding.create_sharded(
        lambda: StandinLM(vocab=64, hidden=32, mlp=64, layers=1, rngs=nnx.Rngs(0)), tx, mesh)
    step = sharding.make_train_step(lm_loss, tx, mesh, sh, graphdef)
    losses = []
    for i in range(steps):
        batch = sharding.shard_batch(make_batch(0, i), sh)  # same global batch on every process
        params, opt_state, m = step(params, opt_state, batch, jax.random.key(i))
        losses.append(float(m["loss"]))
    full = multihost_utils.process_allgather(params, tiled=True)  # sharded across hosts -> whole arrays
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(full)}
    return losses, flat


def check_process_local(steps_losses):
    """Each process passes only its own rows (`shard_batch(process_local=True)`). On the (2, 4, 1) mesh the
    batch axes span both processes: the stitched batch is the global one and the first step's loss equals
    the global-batch path's. On (1, 1, 8) the batch is replicated over the processes: refused, naming the
    fix (before the check, JAX silently kept one process's half: a (8, 9) batch came out (4, 9))."""
    import jax
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils

    from agentrl_jax import optim, sharding
    from helpers.standin import StandinLM, lm_loss, make_batch

    batch = make_batch(0, 0)
    k, p = jax.process_count(), jax.process_index()
    n = batch["ids"].shape[0] // k
    mine = {"ids": batch["ids"][p * n:(p + 1) * n]}
    tx = optim.make_optimizer(learning_rate=1e-3)
    mesh = sharding.make_mesh(2, 4, 1)
    graphdef, params, opt_state, sh = sharding.create_sharded(
        lambda: StandinLM(vocab=64, hidden=32, mlp=64, layers=1, rngs=nnx.Rngs(0)), tx, mesh)
    stitched = sharding.shard_batch(mine, sh, process_local=True)
    assert stitched["ids"].shape == batch["ids"].shape, stitched["ids"].shape
    np.testing.assert_array_equal(multihost_utils.process_allgather(stitched["ids"], tiled=True), batch["ids"])
    step = sharding.make_train_step(lm_loss, tx, mesh, sh, graphdef)
    _, _, m = step(params, opt_state, stitched, jax.random.key(0))
    np.testing.assert_allclose(float(m["loss"]), steps_losses[0], rtol=1e-5)

    _, _, _, sh_rep = sharding.create_sharded(
        lambda: StandinLM(vocab=64, hidden=32, mlp=64, layers=1, rngs=nnx.Rngs(0)), tx, sharding.make_mesh(1, 1, 8))
    try:
        sharding.shard_batch(mine, sh_rep, process_local=True)
    except ValueError as e:
        assert "span the processes" in str(e) and "process_local=False" in str(e), e
    else:
        raise AssertionError("shard_batch(process_local=True) accepted a batch replicated over the processes")
    print("process_local ok", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--local_devices", type=int, default=4)
    ap.add_argument("--timeout", type=int, default=None)
    a = ap.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE)]
    import jax
    import numpy as np

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from agentrl_jax import distributed

    info = distributed.initialize(initialization_timeout=a.timeout)
    print(f"process {info.process_index}/{info.process_count}: {info.local_device_count} local, "
          f"{info.device_count} global devices", flush=True)
    losses, flat = run_steps()
    if info.process_count > 1:
        check_process_local(losses)
    if info.process_index == 0:
        np.savez(a.out, __losses__=np.array(losses), **flat)
    print("done", flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    main()
