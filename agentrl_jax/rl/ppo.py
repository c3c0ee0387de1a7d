"""PPO-style clipped policy loss, clipped value loss, entropy bonus, and the combined loss.

Inputs are [B, T] per-token arrays with a float `mask` (1 on policy tokens). Every loss returns
(scalar loss, metrics dict of scalars); metrics are computed under `stop_gradient`.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import gin
import jax
import jax.numpy as jnp

from agentrl_jax.rl.aggregate import AGGREGATION_MODES, Counts, aggregate, count_of, masked_mean, normalizer_of
from agentrl_jax.rl.kl import KL_ESTIMATORS, kl_loss

Metrics = Dict[str, jax.Array]

ALGORITHMS = ("grpo", "ppo")
VALUE_CLIP_SCALES = ("absolute", "return_std")
# exp(20) ~ 5e8: ratios beyond it only occur with a broken old_logprobs and would overflow the loss.
_LOG_RATIO_CLAMP = 20.0


@gin.configurable(module="agentrl_jax.rl")
@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Hyperparameters of the RL update. Frozen (hashable) so it can be a static jit argument.

    algorithm: "grpo" (group baseline, no critic) or "ppo" (critic + GAE).
    clip_eps: PPO clip range (lower side, and upper side unless clip_eps_high is set).
    clip_eps_high: upper clip range (DAPO-style decoupled "clip-higher"); None = symmetric.
    dual_clip_c: dual-clip bound (> 1) on the loss of negative-advantage tokens; None = off.
    loss_aggregation: "token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum".
    entropy_coef: weight of the entropy bonus (subtracted from the loss).
    kl_coef: weight of the KL to the reference policy; kl_estimator: "k1" | "k2" | "k3" | "low_var_kl".
    kl_in_reward: True subtracts kl_coef x the turn's summed KL estimate (rollout policy vs reference) from
      each turn's reward before the advantages (classic RLHF PPO; GRPO then compares the penalised returns);
      False adds it as a loss term (GRPO style).
    value_clip: clip range of the value update (None = unclipped); value_coef: weight of the value loss.
    value_clip_scale: "absolute" (value_clip in return units) or "return_std" (value_clip times the batch's
      return standard deviation, so the clip means the same for returns of 0..1 and 0..10).
    gamma, lam: turn-level GAE discount and lambda (one value per turn: the study's window mode).
    grpo_normalize_std, grpo_eps: GRPO advantage normalization.
    ppo_epochs: passes over each rollout batch (its minibatch size is `train.minibatch_size`).
    """
    algorithm: str = "grpo"
    clip_eps: float = 0.2
    clip_eps_high: Optional[float] = None
    dual_clip_c: Optional[float] = None
    loss_aggregation: str = "token-mean"
    entropy_coef: float = 0.0
    kl_coef: float = 0.01
    kl_estimator: str = "low_var_kl"
    kl_in_reward: bool = False
    value_clip: Optional[float] = 0.2
    value_clip_scale: str = "absolute"
    value_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 1.0
    grpo_normalize_std: bool = True
    grpo_eps: float = 1e-6
    ppo_epochs: int = 1

    def __post_init__(self):
        choices = (("algorithm", ALGORITHMS), ("loss_aggregation", AGGREGATION_MODES),
                   ("kl_estimator", KL_ESTIMATORS), ("value_clip_scale", VALUE_CLIP_SCALES))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"RLConfig.{name}={getattr(self, name)!r}; use one of {allowed}.")
        _check_clip(self.clip_eps, self.clip_eps_high, self.dual_clip_c)
        if self.value_clip is not None and self.value_clip <= 0:
            raise ValueError(f"RLConfig.value_clip must be > 0 or None, got {self.value_clip}.")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"RLConfig.gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}.")
        if int(self.ppo_epochs) < 1:
            raise ValueError(f"RLConfig.ppo_epochs must be >= 1, got {self.ppo_epochs}.")
        for name in ("entropy_coef", "kl_coef", "value_coef", "grpo_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"RLConfig.{name} must be >= 0, got {getattr(self, name)}.")


def _check_clip(clip_eps, clip_eps_high, dual_clip_c):
    # Only Python numbers can be checked here; traced values are the caller's responsibility.
    if isinstance(clip_eps, (int, float)) and not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}.")
    if isinstance(clip_eps_high, (int, float)) and not clip_eps_high > 0:
        raise ValueError(f"clip_eps_high must be > 0 or None, got {clip_eps_high}.")
    if isinstance(dual_clip_c, (int, float)) and not dual_clip_c > 1:
        raise ValueError(f"dual_clip_c must be > 1 or None (off), got {dual_clip_c}.")


def _check_same(fn, **arrays):
    shapes = {k: jnp.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{fn}: all inputs must have the same [B, T] shape, got {shapes}.")


def policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, mask: jax.Array,
                clip_eps=0.2, clip_eps_high=None, dual_clip_c=None,
                aggregation: str = "token-mean", counts: Optional[Counts] = None) -> Tuple[jax.Array, Metrics]:
    """Clipped surrogate loss  max(-A r, -A clip(r, 1 - eps, 1 + eps_high)), r = pi / pi_old.

    With `dual_clip_c`, tokens with A < 0 have their loss capped at -A * c (a huge ratio on a bad token
    cannot dominate the update). Shapes: all [B, T]. Returns (loss, metrics) with metrics
    clip_frac (tokens where the clipped term is active), dual_clip_frac, approx_kl (k3 estimate of
    KL(pi_old || pi), >= 0), ratio_mean. `counts`: whole-minibatch counts when this is one micro-batch
    (see `Counts`); the loss and metrics are then this micro-batch's additive share.
    """
    _check_same("policy_loss", logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    _check_clip(clip_eps, clip_eps_high, dual_clip_c)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    on = mask > 0
    mask = mask.astype(jnp.float32)
    # Select (not multiply) masked-out entries away first: NaN/inf padding then reaches neither the loss nor
    # the gradient (a multiply by 0 in the backward pass would still give NaN).
    lp = jnp.where(on, logprobs.astype(jnp.float32), 0.0)
    old_lp = jnp.where(on, old_logprobs.astype(jnp.float32), 0.0)
    adv = jax.lax.stop_gradient(jnp.where(on, advantages.astype(jnp.float32), 0.0))
    log_ratio = jnp.clip(lp - jax.lax.stop_gradient(old_lp), -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    loss_mat = jnp.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped
    dual = jnp.zeros_like(clipped)
    if dual_clip_c is not None:
        cap = -adv * dual_clip_c
        dual = (adv < 0) & (loss_mat > cap)
        loss_mat = jnp.where(adv < 0, jnp.minimum(loss_mat, cap), loss_mat)
    loss = aggregate(loss_mat, mask, aggregation, normalizer_of(counts, aggregation))
    sg = jax.lax.stop_gradient
    n = count_of(counts)
    metrics = {
        "clip_frac": masked_mean(sg(clipped).astype(jnp.float32), mask, count=n),
        "dual_clip_frac": masked_mean(sg(dual).astype(jnp.float32), mask, count=n),
        "approx_kl": masked_mean(sg(ratio - 1.0 - log_ratio), mask, count=n),
        "ratio_mean": masked_mean(sg(ratio), mask, count=n),
    }
    return loss, metrics


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               value_clip=0.2, aggregation: str = "token-mean", counts: Optional[Counts] = None
               ) -> Tuple[jax.Array, Metrics]:
    """Clipped value loss 1/2 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2); c=None: unclipped.

    `value_clip` may be a scalar or a [B, T] array (e.g. a clip range scaled per batch). Shapes: all [B, T].
    Returns (loss, {"vf_clip_frac", "vf_explained_var"}). With `counts` (one micro-batch of a minibatch) the
    loss and vf_clip_frac are additive shares and vf_explained_var, which is not additive, is left out:
    compute it over the whole batch (the trainer does, from the old values).
    """
    _check_same("value_loss", values=values, old_values=old_values, returns=returns, mask=mask)
    if isinstance(value_clip, (int, float)) and not value_clip > 0:
        raise ValueError(f"value_clip must be > 0 or None (unclipped), got {value_clip}.")
    on = mask > 0
    mask = mask.astype(jnp.float32)
    v = jnp.where(on, values.astype(jnp.float32), 0.0)
    v_old = jax.lax.stop_gradient(jnp.where(on, old_values.astype(jnp.float32), 0.0))
    ret = jax.lax.stop_gradient(jnp.where(on, returns.astype(jnp.float32), 0.0))
    err = jnp.square(v - ret)
    if value_clip is None:
        loss_mat = err
        clipped = jnp.zeros_like(err, dtype=bool)
    else:
        v_clip = v_old + jnp.clip(v - v_old, -value_clip, value_clip)
        err_clip = jnp.square(v_clip - ret)
        loss_mat = jnp.maximum(err, err_clip)
        clipped = err_clip > err
    loss = 0.5 * aggregate(loss_mat, mask, aggregation, normalizer_of(counts, aggregation))
    sg = jax.lax.stop_gradient
    clip_frac = masked_mean(sg(clipped).astype(jnp.float32), mask, count=count_of(counts))
    if counts is not None:
        return loss, {"vf_clip_frac": clip_frac}
    ret_var = masked_mean(jnp.square(ret - masked_mean(ret, mask)), mask)
    resid = sg(ret - v)
    resid_var = masked_mean(jnp.square(resid - masked_mean(resid, mask)), mask)
    metrics = {
        "vf_clip_frac": clip_frac,
        "vf_explained_var": jnp.where(ret_var > 0, 1.0 - resid_var / jnp.where(ret_var > 0, ret_var, 1.0), 0.0),
    }
    return loss, metrics


def entropy_bonus(entropy: jax.Array, mask: jax.Array, aggregation: str = "token-mean",
                  counts: Optional[Counts] = None) -> jax.Array:
    """Aggregated policy entropy [B, T] -> scalar; the combined loss subtracts entropy_coef times this."""
    _check_same("entropy_bonus", entropy=entropy, mask=mask)
    ent = jnp.where(mask > 0, entropy.astype(jnp.float32), 0.0)
    return aggregate(ent, mask.astype(jnp.float32), aggregation, normalizer_of(counts, aggregation))


def ppo_loss(config: RLConfig, logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
             mask: jax.Array, *, entropy: Optional[jax.Array] = None, ref_logprobs: Optional[jax.Array] = None,
             values: Optional[jax.Array] = None, old_values: Optional[jax.Array] = None,
             returns: Optional[jax.Array] = None, counts: Optional[Counts] = None) -> Tuple[jax.Array, Metrics]:
    """Total loss = policy + value_coef * value - entropy_coef * entropy + kl_coef * KL.

    The value term is added when `values` is given (all of values/old_values/returns are then required);
    the entropy term when `entropy` is given and entropy_coef > 0 (entropy is logged whenever given); the KL
    term when `ref_logprobs` is given, kl_coef > 0 and `config.kl_in_reward` is False (with kl_in_reward
    the penalty belongs in the rewards: `kl_penalty_in_reward`). All arrays [B, T].
    Returns (loss, metrics) with the parts under keys pg_loss, vf_loss, entropy, kl_loss, loss, and the
    sub-losses' metrics. `counts`: whole-minibatch counts when this is one micro-batch of it (`Counts`).
    kl_in_reward=True is refused here: the trainer folds the KL into the rewards before the advantages.
    """
    agg = config.loss_aggregation
    pg, metrics = policy_loss(logprobs, old_logprobs, advantages, mask, config.clip_eps, config.clip_eps_high,
                              config.dual_clip_c, agg, counts)
    metrics = dict(metrics, pg_loss=pg)
    total = pg
    if values is not None:
        if old_values is None or returns is None:
            raise ValueError("ppo_loss: values given without old_values and returns; pass all three for the "
                             "value loss (algorithm='ppo'), or none of them (algorithm='grpo').")
        vf, vm = value_loss(values, old_values, returns, mask, config.value_clip, agg, counts)
        total = total + config.value_coef * vf
        metrics.update(vm, vf_loss=vf)
    if entropy is not None:
        ent = entropy_bonus(entropy, mask, agg, counts)
        metrics["entropy"] = jax.lax.stop_gradient(ent)
        if config.entropy_coef > 0:
            total = total - config.entropy_coef * ent
    if ref_logprobs is not None and not config.kl_in_reward and config.kl_coef > 0:
        kl, km = kl_loss(logprobs, ref_logprobs, mask, config.kl_estimator, agg, counts)
        total = total + config.kl_coef * kl
        metrics.update(km, kl_loss=kl)
    metrics["loss"] = jax.lax.stop_gradient(total)
    return total, metrics
