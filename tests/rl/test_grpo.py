"""GRPO group advantages against hand-computed numbers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentrl_jax.rl import broadcast_to_tokens, group_advantages, group_ids_from_keys

# jit-compiled once per shape; num_groups and normalize_std are static
ga = jax.jit(group_advantages, static_argnames=("num_groups", "normalize_std"))


def test_dense_groups_sample_std():
    returns = jnp.array([
        [1.0, 0.0, 0.0, 1.0],   # mean 0.5, sample std sqrt(4*0.25/3) = 0.57735 -> +-0.8660254
        [1.0, 1.0, 1.0, 1.0],   # all equal -> 0
        [0.0, 1.0, 2.0, 1.0],   # mean 1, sample std sqrt(2/3) = 0.81650 -> [-1.2247, 0, 1.2247, 0]
    ])
    adv = ga(returns)
    np.testing.assert_allclose(adv, [[0.8660254, -0.8660254, -0.8660254, 0.8660254],
                                     [0, 0, 0, 0],
                                     [-1.2247449, 0, 1.2247449, 0]], rtol=1e-5, atol=1e-6)


def test_mean_only_baseline():
    adv = ga(jnp.array([[0.0, 2.0, 4.0]]), normalize_std=False)
    np.testing.assert_allclose(adv, [[-2.0, 0.0, 2.0]])
    # with std: sample std of [0, 2, 4] is 2 -> [-1, 0, 1]
    np.testing.assert_allclose(ga(jnp.array([[0.0, 2.0, 4.0]])), [[-1, 0, 1]], rtol=1e-5)


def test_group_ids_with_size_one_groups():
    # group 0 = {0, 1, 2} at positions 0, 2, 4 (mean 1, std 1); groups 1 and 2 have a single member -> 0.
    returns = jnp.array([0.0, 5.0, 1.0, 7.0, 2.0])
    ids = jnp.array([0, 1, 0, 2, 0])
    f = ga
    adv = f(returns, ids, num_groups=3)
    np.testing.assert_allclose(adv, [-1.0, 0.0, 0.0, 0.0, 1.0], rtol=1e-5, atol=1e-6)
    # group ids may leave some groups empty
    adv4 = f(returns, ids, num_groups=5)
    np.testing.assert_allclose(adv4, adv)


def test_all_equal_groups_are_exactly_zero_not_nan():
    # 0.1 is not exactly representable: the float32 mean differs from the members by rounding, which an
    # eps-sized std would blow up; the result must still be exactly 0.
    returns = jnp.full((2, 8), 0.1, jnp.float32).at[1].set(0.7)
    adv = ga(returns)
    assert np.all(np.asarray(adv) == 0.0)
    adv_ids = ga(returns.reshape(-1), jnp.repeat(jnp.arange(2), 8), num_groups=2)
    assert np.all(np.asarray(adv_ids) == 0.0)


def test_valid_mask_drops_trajectories():
    adv = ga(jnp.array([[0.0, 1.0, 2.0, 100.0]]), valid=jnp.array([[1.0, 1.0, 1.0, 0.0]]))
    np.testing.assert_allclose(adv, [[-1.0, 0.0, 1.0, 0.0]], rtol=1e-5, atol=1e-6)


def test_dense_and_id_layouts_agree():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(4, 8)).astype(np.float32)
    dense = ga(jnp.asarray(r))
    perm = rng.permutation(32)
    ids = np.repeat(np.arange(4), 8)[perm]
    flat = ga(jnp.asarray(r.reshape(-1)[perm]), jnp.asarray(ids), num_groups=4)
    np.testing.assert_allclose(np.asarray(flat), np.asarray(dense).reshape(-1)[perm], rtol=1e-5, atol=1e-6)
    # matches numpy's unbiased std
    want = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(dense, want, rtol=1e-4, atol=1e-5)


def test_group_ids_from_keys_and_broadcast():
    ids, n = group_ids_from_keys(["b", "a", "b", "c", "a"])
    assert n == 3 and ids.tolist() == [0, 1, 0, 2, 1]
    mask = jnp.array([[0.0, 1, 1, 0], [1, 0, 1, 1]])
    tok = jax.jit(broadcast_to_tokens)(jnp.array([2.0, -1.0]), mask)
    np.testing.assert_allclose(tok, [[0, 2, 2, 0], [-1, 0, -1, -1]])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="num_groups"):
        group_advantages(jnp.ones(4), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="num_groups, group_size"):
        group_advantages(jnp.ones(4))
    with pytest.raises(ValueError, match=r"adv \[B\]"):
        broadcast_to_tokens(jnp.ones(3), jnp.ones((2, 4)))
