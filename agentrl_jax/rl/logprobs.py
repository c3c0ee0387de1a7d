"""Per-token log-probabilities and entropies from logits, in float32.

The full float32 log-softmax of a [B, T, V] logit tensor is large (B=8, T=8192, V=128k is 32 GiB), so
both functions can walk over T in chunks: each step upcasts and reduces one [B, chunk, V] slice and only the
[B, chunk] results are kept. The chunk loop is a `lax.map` over chunk indices that slices `logits` in place
(no transposed copy of the logits). Gradients flow through both paths.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp


def _check_temperature(temperature) -> None:
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use 1.0 for the raw policy.")


def _check_chunk(chunk_size: Optional[int]) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None (no chunking), got {chunk_size!r}.")


def _over_time_chunks(fn: Callable[..., Tuple[jax.Array, ...]], logits: jax.Array, extras: Tuple[jax.Array, ...],
                      chunk_size: Optional[int]) -> Tuple[jax.Array, ...]:
    """Apply `fn(logits_chunk [B,c,V], *extras_chunks [B,c]) -> tuple of [B,c]` over T in chunks."""
    t = logits.shape[1]
    if chunk_size is None or chunk_size >= t:
        return fn(logits, *extras)
    n_full = t // chunk_size

    def one(i):
        start = i * chunk_size
        lg = jax.lax.dynamic_slice_in_dim(logits, start, chunk_size, axis=1)
        ex = tuple(jax.lax.dynamic_slice_in_dim(e, start, chunk_size, axis=1) for e in extras)
        return fn(lg, *ex)

    # outs: tuple of [n_full, B, c] -> [B, n_full * c]
    outs = jax.lax.map(one, jnp.arange(n_full))
    outs = tuple(jnp.moveaxis(o, 0, 1).reshape(o.shape[1], n_full * chunk_size) for o in outs)
    rem = t - n_full * chunk_size
    if rem:  # static tail, handled unchunked (it is smaller than one chunk)
        tail = fn(logits[:, n_full * chunk_size:], *(e[:, n_full * chunk_size:] for e in extras))
        outs = tuple(jnp.concatenate([o, r], axis=1) for o, r in zip(outs, tail))
    return outs


def _scaled(logits: jax.Array, temperature) -> jax.Array:
    return logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)


def _lp_chunk(temperature):
    def f(lg, tg):
        z = _scaled(lg, temperature)
        lse = jax.nn.logsumexp(z, axis=-1)
        picked = jnp.take_along_axis(z, tg[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return (picked - lse,)
    return f


def _ent_chunk(temperature):
    def f(lg):
        z = _scaled(lg, temperature)
        lse = jax.nn.logsumexp(z, axis=-1)
        p = jnp.exp(z - lse[..., None])
        # H = lse - E_p[z]
        return (lse - jnp.sum(p * z, axis=-1),)
    return f


def _lp_ent_chunk(temperature):
    def f(lg, tg):
        z = _scaled(lg, temperature)
        lse = jax.nn.logsumexp(z, axis=-1)
        picked = jnp.take_along_axis(z, tg[..., None].astype(jnp.int32), axis=-1)[..., 0]
        p = jnp.exp(z - lse[..., None])
        return picked - lse, lse - jnp.sum(p * z, axis=-1)
    return f


def _check_shapes(logits: jax.Array, targets: Optional[jax.Array], fn: str) -> None:
    if jnp.ndim(logits) != 3:
        raise ValueError(f"{fn}: logits must be [B, T, V], got shape {jnp.shape(logits)}.")
    if targets is not None:
        if jnp.shape(targets) != jnp.shape(logits)[:2]:
            raise ValueError(f"{fn}: targets shape {jnp.shape(targets)} must be logits.shape[:2] = "
                             f"{jnp.shape(logits)[:2]}; shift targets so targets[:, t] is the token after position t.")
        if not jnp.issubdtype(jnp.asarray(targets).dtype, jnp.integer):
            raise ValueError(f"{fn}: targets must be integer token ids, got dtype {jnp.asarray(targets).dtype}.")


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature=1.0,
                   chunk_size: Optional[int] = None) -> jax.Array:
    """log softmax(logits / temperature)[targets] per position.

    Args:
      logits: [B, T, V], any float dtype (upcast to float32 inside).
      targets: [B, T] int token ids; `targets[:, t]` is scored by `logits[:, t]`.
      temperature: divides the logits (use the rollout temperature so ratios match the sampler).
      chunk_size: if set, process T in chunks of this many positions to bound float32 memory.
    Returns: [B, T] float32.
    """
    _check_shapes(logits, targets, "token_logprobs")
    _check_temperature(temperature)
    _check_chunk(chunk_size)
    return _over_time_chunks(_lp_chunk(temperature), logits, (targets,), chunk_size)[0]


def entropy_from_logits(logits: jax.Array, temperature=1.0, chunk_size: Optional[int] = None) -> jax.Array:
    """Entropy of softmax(logits / temperature) per position: [B, T, V] -> [B, T] float32."""
    _check_shapes(logits, None, "entropy_from_logits")
    _check_temperature(temperature)
    _check_chunk(chunk_size)
    return _over_time_chunks(_ent_chunk(temperature), logits, (), chunk_size)[0]


def token_logprobs_and_entropy(logits: jax.Array, targets: jax.Array, temperature=1.0,
                               chunk_size: Optional[int] = None) -> Tuple[jax.Array, jax.Array]:
    """Both of the above in one pass over the logits (shares the logsumexp): ([B, T], [B, T]) float32."""
    _check_shapes(logits, targets, "token_logprobs_and_entropy")
    _check_temperature(temperature)
    _check_chunk(chunk_size)
    lp, ent = _over_time_chunks(_lp_ent_chunk(temperature), logits, (targets,), chunk_size)
    return lp, ent
