"""GAE / returns against hand-computed numbers and a plain-Python reference loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentrl_jax.rl import discounted_returns, gae, gae_turns, turns_to_tokens

gae_jit = jax.jit(gae)


def reference_gae(rewards, values, mask, gamma, lam, bootstrap=None, dones=None):
    """Textbook GAE on the compacted steps of each row (plain Python)."""
    b, t = rewards.shape
    dones = np.zeros_like(rewards) if dones is None else dones
    adv = np.zeros((b, t))
    for i in range(b):
        steps = [j for j in range(t) if mask[i, j] > 0]
        r = {j: rewards[i, j] for j in steps}
        d = {j: dones[i, j] for j in steps}
        for j in range(t):  # non-step rewards/dones belong to the previous step
            if mask[i, j] == 0:
                prev = [s for s in steps if s < j]
                if prev:
                    r[prev[-1]] += rewards[i, j]
                    d[prev[-1]] = max(d[prev[-1]], dones[i, j])
        next_v = 0.0 if bootstrap is None else bootstrap[i]
        next_a = 0.0
        for j in reversed(steps):
            cont = 1.0 - d[j]
            delta = r[j] + gamma * cont * next_v - values[i, j]
            a = delta + gamma * lam * cont * next_a
            adv[i, j] = a
            next_v, next_a = values[i, j], a
    return adv


def test_gamma_lambda_one_is_return_to_go_minus_value():
    rewards = jnp.array([[0.0, 1.0, 0.0, 2.0]])
    values = jnp.array([[0.5, 0.25, 1.0, 3.0]])
    mask = jnp.ones((1, 4))
    adv, ret = gae_jit(rewards, values, mask, 1.0, 1.0)
    # return-to-go: [3, 3, 2, 2]
    np.testing.assert_allclose(adv, [[2.5, 2.75, 1.0, -1.0]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[3.0, 3.0, 2.0, 2.0]], rtol=1e-6)


def test_four_step_hand_computed():
    # gamma=0.9, lam=0.8, gamma*lam=0.72
    # delta3 = 1 - 0.8 = 0.2;  delta2 = 0.9*0.8 - 0.7 = 0.02
    # delta1 = 0.9*0.7 - 0.6 = 0.03;  delta0 = 0.9*0.6 - 0.5 = 0.04
    # A3 = 0.2; A2 = 0.02 + 0.72*0.2 = 0.164; A1 = 0.03 + 0.72*0.164 = 0.14808
    # A0 = 0.04 + 0.72*0.14808 = 0.1466176
    rewards = jnp.array([[0.0, 0.0, 0.0, 1.0]])
    values = jnp.array([[0.5, 0.6, 0.7, 0.8]])
    adv, ret = gae_jit(rewards, values, jnp.ones((1, 4)), 0.9, 0.8)
    np.testing.assert_allclose(adv, [[0.1466176, 0.14808, 0.164, 0.2]], rtol=1e-5)
    np.testing.assert_allclose(ret, [[0.6466176, 0.74808, 0.864, 1.0]], rtol=1e-5)


def test_masked_gaps_are_skipped():
    # Steps at 0, 3, 4; positions 1, 2, 5 are environment tokens with junk (NaN) values.
    # Compact episode: values [0.5, 0.6, 0.7], rewards [0, 0, 1], gamma=0.9, lam=0.8
    # delta2 = 0.3; delta1 = 0.63 - 0.6 = 0.03; delta0 = 0.54 - 0.5 = 0.04
    # A2 = 0.3; A1 = 0.03 + 0.72*0.3 = 0.246; A0 = 0.04 + 0.72*0.246 = 0.21712
    mask = jnp.array([[1.0, 0, 0, 1, 1, 0]])
    values = jnp.array([[0.5, jnp.nan, jnp.nan, 0.6, 0.7, jnp.nan]])
    rewards = jnp.array([[0.0, 0, 0, 0, 1, 0]])
    want = [[0.21712, 0, 0, 0.246, 0.3, 0]]
    adv, ret = gae_jit(rewards, values, mask, 0.9, 0.8)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ret, [[0.71712, 0, 0, 0.846, 1.0, 0]], rtol=1e-5, atol=1e-7)
    # The same reward placed on the trailing environment token attaches to the last step.
    adv2, _ = gae_jit(jnp.array([[0.0, 0, 0, 0, 0, 1]]), values, mask, 0.9, 0.8)
    np.testing.assert_allclose(adv2, want, rtol=1e-5, atol=1e-7)


def test_bootstrap_and_dones():
    # Truncated row: bootstrap V(s_T)=5 with gamma=lam=1 -> A = [1+5, 5].
    adv, _ = gae_jit(jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2)), jnp.ones((1, 2)), 1.0, 1.0, jnp.array([5.0]))
    np.testing.assert_allclose(adv, [[6.0, 5.0]])
    # Two episodes packed in one row: done after step 1 stops the sum; bootstrap ignored after a done.
    adv, _ = gae_jit(jnp.array([[0.0, 1.0, 0.0, 2.0]]), jnp.zeros((1, 4)), jnp.ones((1, 4)), 1.0, 1.0,
                     jnp.array([7.0]), jnp.array([[0.0, 1.0, 0.0, 1.0]]))
    np.testing.assert_allclose(adv, [[1.0, 1.0, 2.0, 2.0]])


def test_matches_reference_loop_on_random_ragged_batch():
    rng = np.random.default_rng(0)
    b, t = 5, 13
    rewards = rng.normal(size=(b, t))
    values = rng.normal(size=(b, t))
    mask = (rng.random((b, t)) < 0.6).astype(np.float64)
    mask[4] = 0.0  # a row with no steps at all
    dones = (rng.random((b, t)) < 0.15).astype(np.float64)
    boot = rng.normal(size=(b,))
    adv, ret = gae_jit(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                       jnp.asarray(mask, jnp.float32), 0.95, 0.7, jnp.asarray(boot, jnp.float32),
                       jnp.asarray(dones, jnp.float32))
    want = reference_gae(rewards, values, mask, 0.95, 0.7, boot, dones)
    np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ret, (want + values) * mask, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(adv)[4] == 0)


def test_turn_gae_with_padding_turns():
    # gamma=0.5, lam=1. Row 0: rewards [1,2,4], V=0 -> A = [1+0.5*2+0.25*4, 2+0.5*4, 4] = [3, 4, 4].
    # Row 1: 2 real turns, V=[1,1], padding value 7 ignored: delta1 = 2 - 1 = 1,
    #        delta0 = 1 + 0.5*1 - 1 = 0.5, A0 = 0.5 + 0.5*1 = 1.
    rewards = jnp.array([[1.0, 2.0, 4.0], [1.0, 2.0, 0.0]])
    values = jnp.array([[0.0, 0.0, 0.0], [1.0, 1.0, 7.0]])
    turn_mask = jnp.array([[1.0, 1, 1], [1, 1, 0]])
    adv, ret = jax.jit(gae_turns)(rewards, values, turn_mask, 0.5, 1.0)
    np.testing.assert_allclose(adv, [[3.0, 4.0, 4.0], [1.0, 1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[3.0, 4.0, 4.0], [2.0, 2.0, 0.0]], rtol=1e-6)
    # Spread onto tokens: prompt tokens (-1) and masked tokens get 0.
    token_turn = jnp.array([[-1, 0, 0, -1, 1, 2], [-1, 0, -1, 1, 1, -1]])
    tmask = (token_turn >= 0).astype(jnp.float32)
    tok = jax.jit(turns_to_tokens)(adv, token_turn, tmask)
    np.testing.assert_allclose(tok, [[0, 3, 3, 0, 4, 4], [0, 1, 0, 1, 1, 0]])


def test_discounted_returns():
    # gamma = 0.5: G = [1 + 0.5*2 + 0.25*4, 2 + 0.5*4, 4] = [3, 4, 4]; the masked slot is skipped.
    g = jax.jit(discounted_returns)(jnp.array([[1.0, 0.0, 2.0, 4.0]]), jnp.array([[1.0, 0.0, 1.0, 1.0]]), 0.5)
    np.testing.assert_allclose(g, [[3.0, 0.0, 4.0, 4.0]])


def test_traced_gamma_lambda_do_not_retrace():
    f = jax.jit(gae)
    x = jnp.ones((2, 3))
    a1, _ = f(x, x * 0, x, 0.5, 1.0)
    a2, _ = f(x, x * 0, x, 1.0, 1.0)
    np.testing.assert_allclose(a1[0], [1.75, 1.5, 1.0])
    np.testing.assert_allclose(a2[0], [3.0, 2.0, 1.0])


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="values shape"):
        gae(jnp.ones((2, 3)), jnp.ones((2, 4)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        gae(jnp.ones((3,)), jnp.ones((3,)), jnp.ones((3,)))
    with pytest.raises(ValueError, match="bootstrap_value"):
        gae(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones((2, 3)), bootstrap_value=jnp.ones((3,)))
