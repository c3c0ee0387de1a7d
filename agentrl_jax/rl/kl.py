"""Per-token estimators of KL(pi || pi_ref) from log-probabilities of tokens sampled from pi.

With log r = log pi(a) - log pi_ref(a) (a ~ pi):
  * ``k1``: log r. Unbiased, high variance, can be negative per token.
  * ``k2``: 1/2 (log r)^2. Biased, low variance, >= 0.
  * ``k3``: (r_ref - 1) - log r_ref with r_ref = pi_ref / pi = exp(-log r). Unbiased, low variance, >= 0
    (Schulman's "Approximating KL divergence" note). The exponent is clamped to [-20, 20] against overflow.
  * ``low_var_kl``: k3 with the result clamped to [-10, 10], as verl's `low_var_kl` (the study's setting).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from agentrl_jax.rl.aggregate import Counts, aggregate, count_of, masked_mean, normalizer_of

KL_ESTIMATORS = ("k1", "k2", "k3", "low_var_kl")


def kl_estimate(logprobs: jax.Array, ref_logprobs: jax.Array, kind: str = "low_var_kl") -> jax.Array:
    """Per-token KL estimate, same shape as the inputs ([B, T]), float32."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {kind!r}; use one of {KL_ESTIMATORS}.")
    if jnp.shape(logprobs) != jnp.shape(ref_logprobs):
        raise ValueError(f"kl_estimate: logprobs shape {jnp.shape(logprobs)} != ref_logprobs shape "
                         f"{jnp.shape(ref_logprobs)}.")
    log_r = jnp.asarray(logprobs, jnp.float32) - jnp.asarray(ref_logprobs, jnp.float32)
    if kind == "k1":
        return log_r
    if kind == "k2":
        return 0.5 * jnp.square(log_r)
    log_r_ref = jnp.clip(-log_r, -20.0, 20.0)
    k3 = jnp.exp(log_r_ref) - 1.0 - log_r_ref
    if kind == "low_var_kl":
        k3 = jnp.clip(k3, -10.0, 10.0)
    return k3


def kl_penalty_in_reward(rewards: jax.Array, kl: jax.Array, coef, mask: jax.Array) -> jax.Array:
    """Fold the KL penalty into per-token rewards: r - coef * kl on counted tokens. All [B, T].

    The penalty is treated as part of the reward (no gradient flows through it).
    """
    if not (jnp.shape(rewards) == jnp.shape(kl) == jnp.shape(mask)):
        raise ValueError(f"kl_penalty_in_reward: rewards {jnp.shape(rewards)}, kl {jnp.shape(kl)} and mask "
                         f"{jnp.shape(mask)} must have the same [B, T] shape.")
    return rewards - jnp.where(mask > 0, coef * jax.lax.stop_gradient(kl) * mask, 0.0)


def kl_loss(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array, kind: str = "low_var_kl",
            aggregation: str = "token-mean", counts: Optional[Counts] = None
            ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """KL-to-reference as a loss term (multiply by kl_coef outside). Gradient flows through `logprobs`.

    Returns (loss scalar, {"kl": token-mean of the estimate}).
    """
    on = mask > 0  # select (not multiply) so NaN/inf at padding cannot reach values or gradients
    kl = kl_estimate(jnp.where(on, logprobs, 0.0), jnp.where(on, ref_logprobs, 0.0), kind)
    loss = aggregate(kl, mask, aggregation, normalizer_of(counts, aggregation))
    kl_mean = masked_mean(kl, mask.astype(jnp.float32), count=count_of(counts))
    return loss, {"kl": jax.lax.stop_gradient(kl_mean)}
