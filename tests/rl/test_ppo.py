"""PPO clip behaviour checked on values and on gradients (jax.grad), plus the value loss and ppo_loss."""
import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentrl_jax.rl import RLConfig, entropy_bonus, kl_loss, policy_loss, ppo_loss, value_loss

pl_jit = jax.jit(policy_loss, static_argnames=("clip_eps", "clip_eps_high", "dual_clip_c", "aggregation"))


def _one_token(ratio, adv, **kw):
    """Loss, d loss / d logprob and metrics for a single token with the given ratio and advantage."""
    old = jnp.array([[-1.0]])
    lp = old + jnp.log(ratio)
    a = jnp.array([[adv]])
    m = jnp.ones((1, 1))
    loss, metrics = pl_jit(lp, old, a, m, **kw)
    grad = jax.grad(lambda x: pl_jit(x, old, a, m, **kw)[0])(lp)
    return float(loss), float(grad[0, 0]), metrics


@pytest.mark.parametrize("ratio,adv,want_loss,want_grad,clipped", [
    (1.5, 1.0, -1.2, 0.0, 1.0),    # above 1+eps, A>0: clipped at 1.2, no gradient
    (0.5, 1.0, -0.5, -0.5, 0.0),   # below 1-eps, A>0: unclipped (pessimistic), d(-A r)/dlogp = -A r
    (1.5, -1.0, 1.5, 1.5, 0.0),    # above 1+eps, A<0: unclipped, gradient pushes the ratio down
    (0.5, -1.0, 0.8, 0.0, 1.0),    # below 1-eps, A<0: clipped at 0.8, no gradient
    (1.1, 2.0, -2.2, -2.2, 0.0),   # inside the trust region: plain -A r
])
def test_symmetric_clip(ratio, adv, want_loss, want_grad, clipped):
    loss, grad, m = _one_token(ratio, adv, clip_eps=0.2)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    assert float(m["clip_frac"]) == clipped
    np.testing.assert_allclose(m["ratio_mean"], ratio, rtol=1e-5)
    # approx_kl is the k3 estimate of KL(old || new): r - 1 - log r
    np.testing.assert_allclose(m["approx_kl"], ratio - 1 - np.log(ratio), rtol=1e-4, atol=1e-7)


def test_dual_clip():
    # A<0 and ratio 5: standard PPO loss would be 5; dual clip caps it at -A*c = 3 with no gradient.
    loss, grad, m = _one_token(5.0, -1.0, clip_eps=0.2, dual_clip_c=3.0)
    assert (loss, grad) == pytest.approx((3.0, 0.0), abs=1e-6)
    assert float(m["dual_clip_frac"]) == 1.0
    # below the cap it is the standard loss
    loss, grad, m = _one_token(2.0, -1.0, clip_eps=0.2, dual_clip_c=3.0)
    assert (loss, grad) == pytest.approx((2.0, 2.0), rel=1e-5)
    assert float(m["dual_clip_frac"]) == 0.0
    # positive advantages are untouched by the dual clip
    loss, grad, _ = _one_token(5.0, 1.0, clip_eps=0.2, dual_clip_c=3.0)
    assert (loss, grad) == pytest.approx((-1.2, 0.0), abs=1e-6)
    with pytest.raises(ValueError, match="dual_clip_c"):
        policy_loss(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.ones((1, 1)), jnp.ones((1, 1)), dual_clip_c=0.5)


def test_decoupled_clip_higher():
    # ratio 1.25, A>0: symmetric eps=0.2 clips at 1.2; clip_eps_high=0.28 lets it through (1.25 < 1.28).
    loss, grad, _ = _one_token(1.25, 1.0, clip_eps=0.2)
    assert (loss, grad) == pytest.approx((-1.2, 0.0), abs=1e-6)
    loss, grad, _ = _one_token(1.25, 1.0, clip_eps=0.2, clip_eps_high=0.28)
    assert (loss, grad) == pytest.approx((-1.25, -1.25), rel=1e-5)
    # the low side still uses clip_eps: ratio 0.7 with A<0 is clipped to 0.8
    loss, grad, _ = _one_token(0.7, -1.0, clip_eps=0.2, clip_eps_high=0.28)
    assert (loss, grad) == pytest.approx((0.8, 0.0), abs=1e-6)


def test_policy_loss_aggregation_and_mask():
    old = jnp.zeros((2, 3))
    lp = jnp.zeros((2, 3))            # ratio 1 everywhere: per-token loss = -A
    adv = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    tm, _ = pl_jit(lp, old, adv, mask, aggregation="token-mean")
    sm, _ = pl_jit(lp, old, adv, mask, aggregation="seq-mean-token-mean")
    np.testing.assert_allclose(tm, -(1 + 2 + 4) / 3, rtol=1e-6)
    np.testing.assert_allclose(sm, -(1.5 + 4) / 2, rtol=1e-6)
    # no gradient reaches masked-out tokens or old_logprobs
    g = jax.grad(lambda x: pl_jit(x, old, adv, mask)[0])(lp)
    np.testing.assert_allclose(g, [[-1 / 3, -2 / 3, 0], [-4 / 3, 0, 0]], rtol=1e-6)
    g_old = jax.grad(lambda o: pl_jit(lp, o, adv, mask)[0])(old)
    assert np.all(np.asarray(g_old) == 0)


def test_value_clip():
    vl = jax.jit(value_loss, static_argnames=("value_clip", "aggregation"))
    old, ret, m = jnp.array([[1.0]]), jnp.array([[2.0]]), jnp.ones((1, 1))
    # V=1.5 moved 0.5 from V_old=1: clipped V = 1.2; (1.5-2)^2 = 0.25 < (1.2-2)^2 = 0.64 -> 0.5*0.64
    v = jnp.array([[1.5]])
    loss, met = vl(v, old, ret, m, value_clip=0.2)
    np.testing.assert_allclose(loss, 0.32, rtol=1e-6)
    assert float(met["vf_clip_frac"]) == 1.0
    assert float(jax.grad(lambda x: vl(x, old, ret, m, value_clip=0.2)[0])(v)[0, 0]) == 0.0
    # V=0.5 moved away from the target: unclipped loss 0.5*(0.5-2)^2 = 1.125 is larger, gradient V - R = -1.5
    v = jnp.array([[0.5]])
    loss, met = vl(v, old, ret, m, value_clip=0.2)
    np.testing.assert_allclose(loss, 1.125, rtol=1e-6)
    assert float(met["vf_clip_frac"]) == 0.0
    np.testing.assert_allclose(jax.grad(lambda x: vl(x, old, ret, m, value_clip=0.2)[0])(v), [[-1.5]])
    # value_clip=None: plain squared error
    loss, _ = vl(jnp.array([[1.5]]), old, ret, m, value_clip=None)
    np.testing.assert_allclose(loss, 0.125, rtol=1e-6)


def test_rlconfig_gin_and_validation():
    with gin.unlock_config():
        gin.parse_config("agentrl_jax.rl.RLConfig.clip_eps_high = 0.28\n"
                         "agentrl_jax.rl.RLConfig.loss_aggregation = 'seq-mean-token-sum'")
    try:
        cfg = RLConfig()
        assert cfg.clip_eps_high == 0.28 and cfg.loss_aggregation == "seq-mean-token-sum"
        assert cfg.clip_eps == 0.2 and cfg.kl_coef == 0.01 and cfg.algorithm == "grpo"
    finally:
        gin.clear_config()
    assert RLConfig().clip_eps_high is None
    hash(RLConfig())  # usable as a static jit argument
    with pytest.raises(ValueError, match="kl_estimator"):
        RLConfig(kl_estimator="k5")
    with pytest.raises(ValueError, match="loss_aggregation"):
        RLConfig(loss_aggregation="mean")
    with pytest.raises(ValueError, match="clip_eps"):
        RLConfig(clip_eps=1.5)


def test_ppo_loss_combines_parts():
    rng = np.random.default_rng(0)
    shape = (3, 5)
    lp = jnp.asarray(rng.normal(scale=0.1, size=shape) - 1.0, jnp.float32)
    old = jnp.asarray(rng.normal(scale=0.1, size=shape) - 1.0, jnp.float32)
    ref = jnp.asarray(rng.normal(scale=0.1, size=shape) - 1.0, jnp.float32)
    adv = jnp.asarray(rng.normal(size=shape), jnp.float32)
    ent = jnp.asarray(rng.random(shape), jnp.float32)
    v, v_old, ret = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
    mask = jnp.asarray(rng.random(shape) < 0.7, jnp.float32)
    cfg = RLConfig(algorithm="ppo", entropy_coef=0.01, kl_coef=0.05, kl_estimator="k3", value_coef=0.5,
                   dual_clip_c=3.0, loss_aggregation="seq-mean-token-mean")
    f = jax.jit(ppo_loss, static_argnums=0)
    total, met = f(cfg, lp, old, adv, mask, entropy=ent, ref_logprobs=ref, values=v, old_values=v_old, returns=ret)
    agg = cfg.loss_aggregation

    @jax.jit
    def parts(lp, old, ref, adv, ent, v, v_old, ret, mask):
        pg, _ = policy_loss(lp, old, adv, mask, 0.2, None, 3.0, agg)
        vf, _ = value_loss(v, v_old, ret, mask, 0.2, agg)
        kl, _ = kl_loss(lp, ref, mask, "k3", agg)
        ent_b = entropy_bonus(ent, mask, agg)
        pg_tm, _ = policy_loss(lp, old, adv, mask)
        kl_tm, _ = kl_loss(lp, ref, mask, "low_var_kl")
        return pg, vf, kl, ent_b, pg_tm, kl_tm

    pg, vf, kl, ent_b, pg_tm, kl_tm = parts(lp, old, ref, adv, ent, v, v_old, ret, mask)
    want = pg + 0.5 * vf - 0.01 * ent_b + 0.05 * kl
    np.testing.assert_allclose(total, want, rtol=1e-5)
    for key in ("pg_loss", "vf_loss", "kl_loss", "entropy", "clip_frac", "vf_clip_frac", "approx_kl", "loss"):
        assert key in met and np.isfinite(float(met[key]))
    # kl_in_reward: the KL term is not in the loss
    total_r, met_r = f(dataclasses.replace(cfg, kl_in_reward=True), lp, old, adv, mask, entropy=ent,
                       ref_logprobs=ref, values=v, old_values=v_old, returns=ret)
    np.testing.assert_allclose(total_r, want - 0.05 * kl, rtol=1e-5)
    assert "kl_loss" not in met_r
    # GRPO form: policy (+ KL) only
    total_g, _ = f(RLConfig(), lp, old, adv, mask, ref_logprobs=ref)
    np.testing.assert_allclose(total_g, pg_tm + 0.01 * kl_tm, rtol=1e-5)
    with pytest.raises(ValueError, match="old_values and returns"):
        ppo_loss(cfg, lp, old, adv, mask, values=v)


def test_nan_padding_does_not_leak_into_loss_or_grads():
    # Padding positions often hold NaN/-inf log-probs; they must not poison the loss or the gradient.
    mask = jnp.array([[1.0, 1.0, 0.0]])
    lp = jnp.array([[-1.0, -2.0, jnp.nan]])
    old = jnp.array([[-1.1, -1.9, -jnp.inf]])
    ref = jnp.array([[-1.2, -2.1, jnp.nan]])
    adv = jnp.array([[1.0, -1.0, jnp.nan]])
    ent = jnp.array([[0.5, 0.7, jnp.nan]])
    vals = jnp.array([[0.1, 0.2, jnp.nan]])
    cfg = RLConfig(algorithm="ppo", entropy_coef=0.01, dual_clip_c=3.0)

    @jax.jit
    def loss_and_grads(lp, ent, vals):
        def f(lp, ent, vals):
            return ppo_loss(cfg, lp, old, adv, mask, entropy=ent, ref_logprobs=ref, values=vals,
                            old_values=vals, returns=vals + 1.0)
        (loss, met), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(lp, ent, vals)
        return loss, met, grads

    loss, met, grads = loss_and_grads(lp, ent, vals)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(float(v)) for v in met.values())
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))) and float(g[0, 2]) == 0.0
    # and the finite part equals the loss computed without the padding column
    clean = jax.jit(ppo_loss, static_argnums=0)(
        cfg, lp[:, :2], old[:, :2], adv[:, :2], mask[:, :2], entropy=ent[:, :2], ref_logprobs=ref[:, :2],
        values=vals[:, :2], old_values=vals[:, :2], returns=vals[:, :2] + 1.0)[0]
    np.testing.assert_allclose(loss, clean, rtol=1e-6)
