"""Masked reductions, aggregation modes and KL estimators, hand-computed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentrl_jax.rl import (aggregate, kl_estimate, kl_loss, kl_penalty_in_reward, masked_mean, masked_sum,
                            masked_whiten)

LOSS = jnp.array([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
MASK = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # row 2 is padding


@pytest.mark.parametrize("mode,want", [
    ("token-mean", (1 + 2 + 3 + 4) / 4),          # 2.5
    ("seq-mean-token-mean", (2.0 + 4.0) / 2),     # row means 2 and 4 -> 3
    ("seq-mean-token-sum", (6.0 + 4.0) / 2),      # row sums 6 and 4 -> 5
])
def test_aggregation_modes_on_ragged_mask(mode, want):
    f = jax.jit(aggregate, static_argnames="mode")
    np.testing.assert_allclose(f(LOSS, MASK, mode=mode), want, rtol=1e-6)
    # an all-zero mask gives 0, and its gradient is finite (zero)
    assert float(f(LOSS, jnp.zeros_like(MASK), mode=mode)) == 0.0
    g = jax.grad(lambda x: f(x, jnp.zeros_like(MASK), mode=mode))(LOSS)
    assert np.all(np.asarray(g) == 0.0)
    # gradient of the loss flows only into counted tokens
    g = np.asarray(jax.grad(lambda x: f(x, MASK, mode=mode))(LOSS))
    assert np.all(g[MASK == 0] == 0) and np.all(g[MASK == 1] > 0)


def test_aggregate_normalizer_and_bad_mode():
    f = jax.jit(aggregate, static_argnames="mode")
    np.testing.assert_allclose(f(LOSS, MASK, mode="token-mean", normalizer=20.0), 0.5)
    np.testing.assert_allclose(f(LOSS, MASK, mode="seq-mean-token-sum", normalizer=4.0), 2.5)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(LOSS, MASK, "sum")
    with pytest.raises(ValueError, match="mask shape"):
        aggregate(LOSS, MASK[:, :2])


def test_masked_mean_sum_whiten():
    x = jnp.array([[1.0, 2.0], [3.0, 100.0]])
    m = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    assert float(jax.jit(masked_sum)(x, m)) == 6.0
    assert float(jax.jit(masked_mean)(x, m)) == 2.0
    row_mean = jax.jit(masked_mean, static_argnames="axis")
    np.testing.assert_allclose(row_mean(x, m, axis=1), [1.5, 3.0])
    np.testing.assert_allclose(row_mean(x, jnp.zeros_like(m), axis=1), [0.0, 0.0])
    # mean 2, population var 2/3 -> (x - 2) / sqrt(2/3) = [-1.2247, 0, 1.2247], masked slot 0
    w = jax.jit(masked_whiten)(x, m)
    np.testing.assert_allclose(w, [[-1.2247449, 0.0], [1.2247449, 0.0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(masked_whiten, static_argnames="shift_mean")(x, m, shift_mean=False), [[0.7752551, 2.0], [3.2247449, 0.0]],
                               rtol=1e-5)


def test_kl_estimators_closed_forms():
    # pi(a) = 0.5, pi_ref(a) = 0.25: log r = log 2
    lp = jnp.log(jnp.array([[0.5]]))
    ref = jnp.log(jnp.array([[0.25]]))
    f = jax.jit(kl_estimate, static_argnames="kind")
    np.testing.assert_allclose(f(lp, ref, kind="k1"), [[np.log(2)]], rtol=1e-6)
    np.testing.assert_allclose(f(lp, ref, kind="k2"), [[0.5 * np.log(2) ** 2]], rtol=1e-6)   # 0.2402265
    # r_ref = 0.5: (0.5 - 1) - log 0.5 = 0.1931472
    np.testing.assert_allclose(f(lp, ref, kind="k3"), [[0.5 - 1 + np.log(2)]], rtol=1e-6)
    np.testing.assert_allclose(f(lp, ref, kind="low_var_kl"), [[0.5 - 1 + np.log(2)]], rtol=1e-6)


def test_k3_nonnegative_and_low_var_clamped():
    rng = np.random.default_rng(0)
    lp = jnp.asarray(rng.normal(scale=3.0, size=(4, 50)), jnp.float32)
    ref = jnp.asarray(rng.normal(scale=3.0, size=(4, 50)), jnp.float32)
    kl = jax.jit(kl_estimate, static_argnames="kind")
    k3 = np.asarray(kl(lp, ref, kind="k3"))
    assert np.all(k3 >= 0) and np.all(np.asarray(kl(lp, ref, kind="k2")) >= 0)
    # ref much more likely than pi: r_ref = e^15, k3 = e^15 - 16; low_var_kl clamps it to 10
    big_lp, big_ref = jnp.array([[-16.0]]), jnp.array([[-1.0]])
    np.testing.assert_allclose(kl(big_lp, big_ref, kind="k3"), [[np.exp(15.0) - 16.0]], rtol=1e-5)
    assert float(kl(big_lp, big_ref, kind="low_var_kl")[0, 0]) == 10.0
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_estimate(lp, ref, "k4")


def test_k1_and_k3_are_unbiased_for_categoricals():
    # E_{a~p}[k(a)] summed exactly over the vocabulary equals KL(p || q) for k1 and k3.
    rng = np.random.default_rng(3)
    p = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(7,)), jnp.float32))
    q = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(7,)), jnp.float32))
    kl = float(jnp.sum(jnp.exp(p) * (p - q)))
    kl_jit = jax.jit(kl_estimate, static_argnames="kind")
    for kind in ("k1", "k3"):
        est = float(jnp.sum(jnp.exp(p) * kl_jit(p[None], q[None], kind=kind)[0]))
        np.testing.assert_allclose(est, kl, rtol=1e-5)


def test_kl_in_reward_and_loss_forms():
    rewards = jnp.array([[0.0, 0.0, 1.0]])
    kl = jnp.array([[0.5, 2.0, 1.0]])
    mask = jnp.array([[0.0, 1.0, 1.0]])
    np.testing.assert_allclose(jax.jit(kl_penalty_in_reward)(rewards, kl, 0.1, mask), [[0.0, -0.2, 0.9]])
    lp = jnp.log(jnp.array([[0.1, 0.5, 0.5]]))
    ref = jnp.log(jnp.array([[0.9, 0.25, 0.5]]))
    loss, m = jax.jit(kl_loss, static_argnames=("kind", "aggregation"))(lp, ref, mask, kind="k1")
    np.testing.assert_allclose(loss, (np.log(2) + 0.0) / 2, rtol=1e-6)  # first token masked out
    np.testing.assert_allclose(m["kl"], loss)
    # gradient of the k3 loss w.r.t. logprobs: d/dx [e^{ref-x} - 1 - (ref-x)] = 1 - e^{ref-x}
    g = jax.jit(jax.grad(lambda x: kl_loss(x, ref, mask, "k3")[0]))(lp)
    np.testing.assert_allclose(g, [[0.0, (1 - 0.5) / 2, 0.0]], atol=1e-6)
