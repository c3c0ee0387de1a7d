"""Optimizer: schedules, clipping, weight-decay mask, NaN/inf skipping, gradient accumulation."""
import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from agentrl_jax import optim, sharding
from helpers.standin import StandinLM, lm_loss, make_batch

TOL = dict(rtol=1e-5, atol=1e-6)  # fp32: accumulated vs. single-batch reductions differ in order only


def _factory():
    return StandinLM(vocab=64, hidden=32, mlp=64, layers=1, rngs=nnx.Rngs(0))


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def test_cosine_schedule_values():
    s = optim.make_schedule(peak_lr=1e-3, total_steps=100, kind="cosine", warmup_steps=10, end_lr_ratio=0.1)
    assert float(s(0)) == pytest.approx(0.0)
    assert float(s(5)) == pytest.approx(5e-4, rel=1e-5)
    assert float(s(10)) == pytest.approx(1e-3, rel=1e-5)
    assert float(s(25)) == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 15 / 90)), rel=1e-5)
    assert float(s(100)) == pytest.approx(1e-4, rel=1e-5)
    assert float(s(500)) == pytest.approx(1e-4, rel=1e-5)


def test_linear_and_constant_schedules_and_warmup_ratio():
    lin = optim.make_schedule(peak_lr=1e-3, total_steps=100, kind="linear", warmup_steps=10, end_lr_ratio=0.1)
    assert float(lin(10)) == pytest.approx(1e-3, rel=1e-5)
    assert float(lin(25)) == pytest.approx(1e-3 - 9e-4 * 15 / 90, rel=1e-5)
    assert float(lin(100)) == pytest.approx(1e-4, rel=1e-5)
    const = optim.make_schedule(peak_lr=1e-6, kind="constant", warmup_steps=4)
    assert [float(const(i)) for i in (0, 2, 4, 10_000)] == pytest.approx([0, 5e-7, 1e-6, 1e-6])
    # The study's SFT recipe: cosine, warm-up ratio 0.1 of 100 steps -> peak at step 10.
    sft = optim.make_schedule(peak_lr=5e-6, total_steps=100, warmup_ratio=0.1)
    assert float(sft(10)) == pytest.approx(5e-6, rel=1e-5) and float(sft(9)) < 5e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="exp", total_steps=10), "choose one of"),
        (dict(kind="cosine"), "set make_schedule.total_steps"),
        (dict(total_steps=10, warmup_steps=10), "must be < total_steps"),
        (dict(total_steps=10, warmup_ratio=1.5), "warmup_ratio"),
    ],
)
def test_schedule_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.make_schedule(**kwargs)


def test_gin_configures_schedule_and_optimizer():
    gin.clear_config()
    try:
        gin.parse_config(
            "make_schedule.peak_lr = 2e-3\nmake_schedule.kind = 'constant'\nmake_optimizer.max_grad_norm = None"
        )
        tx = optim.make_optimizer()
        params = {"w": jnp.ones((2, 2))}
        state = tx.init(params)
        _, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
        assert float(optim.current_learning_rate(state)) == pytest.approx(2e-3)
    finally:
        gin.clear_config()
    with pytest.raises(ValueError, match="b1"):
        optim.make_optimizer(learning_rate=1e-3, b1=1.0)


def test_clipping_bounds_the_gradient_seen_by_adam():
    tx = optim.make_optimizer(learning_rate=1e-3, max_grad_norm=1.0, b1=0.9)
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}
    grads = {"w": jnp.full((3, 4), 100.0), "b": jnp.full((4,), -50.0)}
    _, state = tx.update(grads, tx.init(params), params)
    mu = optax.tree_utils.tree_get(state, "mu")
    # first moment = (1 - b1) * clipped gradient, whose global norm is max_grad_norm
    assert float(optax.global_norm(mu)) == pytest.approx(0.1, rel=1e-5)


def test_weight_decay_skips_vectors_by_default():
    params = {"w": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    for decay_vectors, scale_moves in ((False, False), (True, True)):
        tx = optim.make_optimizer(learning_rate=0.1, weight_decay=0.5, decay_vectors=decay_vectors)
        upd, _ = tx.update(zeros, tx.init(params), params)
        new = optax.apply_updates(params, upd)
        assert float(new["w"][0, 0]) == pytest.approx(1 - 0.1 * 0.5)
        assert (float(new["scale"][0]) != 1.0) == scale_moves


def test_optimizer_rejects_nonfinite_gradients_and_counts_them():
    tx = optim.make_optimizer(learning_rate=0.1)
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    bad = {"w": jnp.array([[1.0, jnp.inf], [0.0, 1.0]])}
    for _ in range(3):
        upd, state = tx.update(bad, state, params)
        np.testing.assert_array_equal(np.asarray(upd["w"]), 0.0)
    assert int(state.total_notfinite) == 3 and int(state.inner_state[-1].count) == 0
    upd, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
    assert float(jnp.abs(upd["w"]).sum()) > 0 and int(state.total_notfinite) == 3


def _poisonable_loss(model, batch, key):
    loss, aux = lm_loss(model, batch, key)
    return loss * batch["scale"][0], aux  # scale = nan poisons the loss (and the gradients)


@pytest.mark.slow
@pytest.mark.parametrize("counted", [True, False], ids=["make_optimizer", "plain_adamw"])
def test_nan_loss_skips_update_and_leaves_params_unchanged(counted):
    tx = optim.make_optimizer(learning_rate=1e-2) if counted else optax.adamw(1e-2)
    mesh = sharding.make_mesh(1, 8, 1)
    graphdef, params, opt_state, sh = sharding.create_sharded(_factory, tx, mesh)
    step = sharding.make_train_step(_poisonable_loss, tx, mesh, sh, graphdef)
    batch = make_batch(0, 0)
    ok = dict(batch, scale=np.ones((16,), np.float32))
    nan = dict(batch, scale=np.full((16,), np.nan, np.float32))

    before, opt_before = _np(params), _np(opt_state)
    params, opt_state, m = step(params, opt_state, nan, jax.random.key(0))
    assert int(m["skipped"]) == 1 and not np.isfinite(float(m["loss"]))
    jax.tree.map(np.testing.assert_array_equal, _np(params), before)
    jax.tree.map(np.testing.assert_array_equal, _np(opt_state) if not counted else _np(opt_state.inner_state),
                 opt_before if not counted else opt_before.inner_state)
    if counted:
        assert int(m["skipped_total"]) == 1

    params, opt_state, m = step(params, opt_state, ok, jax.random.key(0))
    assert int(m["skipped"]) == 0 and np.isfinite(float(m["loss"]))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_np(params)))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(_np(params)), jax.tree.leaves(before)))
    if counted:
        assert int(m["skipped_total"]) == 1


@pytest.mark.slow
def test_accumulating_k_micro_batches_equals_one_big_batch():
    k, micro = 4, 8
    big = make_batch(3, 0, batch=k * micro)
    stacked = jax.tree.map(lambda x: x.reshape(k, micro, *x.shape[1:]), big)
    tx = optim.make_optimizer(learning_rate=1e-3)
    mesh = sharding.make_mesh(1, 8, 1)
    results = []
    for accum, batch in ((1, big), (k, stacked)):
        graphdef, params, opt_state, sh = sharding.create_sharded(_factory, tx, mesh)
        step = sharding.make_train_step(lm_loss, tx, mesh, sh, graphdef, accum_steps=accum)
        params, opt_state, m = step(params, opt_state, batch, jax.random.key(0))
        results.append((_np(params), {k_: float(v) for k_, v in m.items()}))
    (p1, m1), (pk, mk) = results
    assert mk["loss"] == pytest.approx(m1["loss"], rel=1e-6)
    assert mk["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), pk, p1)
