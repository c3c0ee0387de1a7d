"""Masked reductions and the loss-aggregation modes used by the PPO/GRPO losses.

Shapes: `x`, `mask` are [B, T] (tokens) or [B, K] (turns); `mask` is float (1 = counts, 0 = ignored).
Every reduction is safe on empty masks: a row (or batch) with no counted element contributes nothing and
yields 0, never NaN.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

AGGREGATION_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


class Counts(NamedTuple):
    """Counts of a whole minibatch, for losses computed on one micro-batch of it at a time.

    With them every loss and metric is the micro-batch's *share* of the minibatch value (sums over the
    micro-batch divided by whole-minibatch counts), so the shares of all micro-batches add up to exactly the
    unsplit minibatch's value, whatever the masks: gradient accumulation becomes a pure memory knob.
    tokens: counted tokens (token-mean's denominator and the metrics'); rows: rows with >= 1 counted token
    (the seq-* modes' denominator).
    """
    tokens: jax.Array
    rows: jax.Array

    def normalizer(self, mode: str) -> jax.Array:
        return self.tokens if mode == "token-mean" else self.rows


def count_of(counts: Optional[Counts]) -> Optional[jax.Array]:
    """The token count for metric means, or None (= the mask's own count)."""
    return None if counts is None else counts.tokens


def normalizer_of(counts: Optional[Counts], mode: str) -> Optional[jax.Array]:
    return None if counts is None else counts.normalizer(mode)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den > 0, else 0 (the `where` keeps gradients finite too)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _check_same_shape(x: jax.Array, mask: jax.Array, fn: str) -> None:
    if jnp.shape(x) != jnp.shape(mask):
        raise ValueError(f"{fn}: values shape {jnp.shape(x)} must equal mask shape {jnp.shape(mask)}; "
                         "build the mask with the same [B, T] shape as the values.")


def _zero_out(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x * mask, except that NaN/inf at masked-out positions (e.g. padding log-probs) cannot leak."""
    return jnp.where(mask > 0, x * mask, 0.0)


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Sum of `x * mask` over `axis` (all axes when None)."""
    _check_same_shape(x, mask, "masked_sum")
    return jnp.sum(_zero_out(x, mask), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None, count: Optional[jax.Array] = None) -> jax.Array:
    """Mean of `x` over positions where mask > 0; 0 where nothing is counted.

    `count` overrides the denominator (e.g. the whole minibatch's token count when this is one micro-batch
    of it: the micro-batch results then add up to the minibatch mean).
    """
    _check_same_shape(x, mask, "masked_mean")
    return _safe_div(jnp.sum(_zero_out(x, mask), axis=axis), jnp.sum(mask, axis=axis) if count is None else count)


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
    """Variance of the counted elements of `x` (whole array). `unbiased` divides by (n - 1)."""
    mean = masked_mean(x, mask)
    sq = masked_sum(jnp.square(x - mean), mask)
    n = jnp.sum(mask)
    return _safe_div(sq, n - 1.0 if unbiased else n)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / sqrt(var + eps) over the counted elements (whole batch); 0 at masked-out positions.

    With `shift_mean=False` the mean is added back (scale-only whitening, as for PPO advantages in some
    codebases).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=False)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return _zero_out(out, mask)


def aggregate(loss_mat: jax.Array, mask: jax.Array, mode: str = "token-mean",
              normalizer: Optional[jax.Array] = None) -> jax.Array:
    """Reduce a per-element loss [B, T] to a scalar.

    Modes:
      * ``token-mean``: sum over all counted tokens / number of counted tokens (long answers weigh more).
      * ``seq-mean-token-mean``: each row's mean over its tokens, then the mean over rows.
      * ``seq-mean-token-sum``: each row's sum over its tokens, then the mean over rows.
    Rows whose mask is all zero are left out of the row count in the seq-* modes (padding rows do not
    dilute the loss); an all-zero mask gives 0.

    `normalizer` overrides the denominator (tokens for token-mean, rows for the seq-* modes), e.g. the
    global count when a batch is split into micro-batches whose gradients are summed.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"Unknown loss aggregation {mode!r}; use one of {AGGREGATION_MODES}.")
    _check_same_shape(loss_mat, mask, "aggregate")
    if jnp.ndim(loss_mat) != 2:
        raise ValueError(f"aggregate expects a [B, T] loss matrix, got shape {jnp.shape(loss_mat)}.")
    mask = mask.astype(loss_mat.dtype)
    if mode == "token-mean":
        den = jnp.sum(mask) if normalizer is None else normalizer
        return _safe_div(jnp.sum(_zero_out(loss_mat, mask)), den)
    row_tokens = jnp.sum(mask, axis=-1)
    row_sum = jnp.sum(_zero_out(loss_mat, mask), axis=-1)
    per_row = _safe_div(row_sum, row_tokens) if mode == "seq-mean-token-mean" else row_sum
    den = jnp.sum((row_tokens > 0).astype(loss_mat.dtype)) if normalizer is None else normalizer
    return _safe_div(jnp.sum(per_row), den)
