"""Per-token log-probabilities and entropies, in float32, from logits or straight from hidden states.

Memory: a [B, T, V] float32 tensor is large (B=8, T=8192, V=128k is 32 GiB). With `chunk_size`, the
functions walk over T in chunks (a `lax.map` over chunk indices that slices the input in place): each step
upcasts and reduces one [B, chunk, V] slice and keeps only the [B, chunk] results. Each chunk is wrapped in
`jax.checkpoint`, so the backward pass recomputes the chunk instead of storing every chunk's float32
softmax (which would add up to the full tensor again).

Where chunking pays off is `token_logprobs_from_hidden`: it applies the unembedding inside the loop, so the
[B, T, V] logits never exist, in the forward or the backward pass. Compiled temp memory on XLA:CPU for
B=2, T=1024, D=256, V=32000 (full float32 logits = 250 MiB), forward+backward w.r.t. hidden and unembed:
materialised logits 500 MiB, chunk 256: 128 MiB, chunk 64: 49 MiB (bf16 inputs: 656 / 159 / 65 MiB).
For logits that already exist, XLA fuses logsumexp and the gather into their producer, so chunking
`token_logprobs` saves nothing on XLA:CPU (it adds a loop-carried gradient buffer in the backward pass);
it is kept for backends that do not fuse. Measure before turning it on there.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp


def _check_temperature(temperature) -> None:
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use 1.0 for the raw policy.")


def _check_chunk(chunk_size: Optional[int]) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None (no chunking), got {chunk_size!r}.")


def _over_time_chunks(fn: Callable[..., Tuple[jax.Array, ...]], arrays: Tuple[jax.Array, ...],
                      chunk_size: Optional[int]) -> Tuple[jax.Array, ...]:
    """Apply `fn(*chunks) -> tuple of [B, c]` to slices [:, i:i+c] of every array in `arrays` (axis 1 = T)."""
    t = arrays[0].shape[1]
    if chunk_size is None or chunk_size >= t:
        return fn(*arrays)
    n_full = t // chunk_size
    body = jax.checkpoint(fn)

    def one(i):
        start = i * chunk_size
        # The barrier keeps XLA from rewriting "upcast(slice(x))" into "slice(upcast(x))" and hoisting the
        # upcast of the whole input out of the loop.
        first = jax.lax.optimization_barrier(jax.lax.dynamic_slice_in_dim(arrays[0], start, chunk_size, axis=1))
        rest = tuple(jax.lax.dynamic_slice_in_dim(a, start, chunk_size, axis=1) for a in arrays[1:])
        return body(first, *rest)

    outs = jax.lax.map(one, jnp.arange(n_full))  # tuple of [n_full, B, c]
    outs = tuple(jnp.moveaxis(o, 0, 1).reshape(o.shape[1], n_full * chunk_size) for o in outs)
    cut = n_full * chunk_size
    if cut < t:  # static tail shorter than one chunk
        tail = body(*(a[:, cut:] for a in arrays))
        outs = tuple(jnp.concatenate([o, r], axis=1) for o, r in zip(outs, tail))
    return outs


def _scaled(logits: jax.Array, temperature) -> jax.Array:
    return logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)


def _logprob_of(z: jax.Array, lse: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0] - lse


def _entropy_of(z: jax.Array, lse: jax.Array) -> jax.Array:
    p = jnp.exp(z - lse[..., None])
    return lse - jnp.sum(p * z, axis=-1)  # H = log Z - E_p[z]


def _make_chunk_fn(temperature, want_lp: bool, want_ent: bool, to_logits=None):
    def f(x, *maybe_targets):
        z = _scaled(x if to_logits is None else to_logits(x), temperature)
        lse = jax.nn.logsumexp(z, axis=-1)
        out = ()
        if want_lp:
            out += (_logprob_of(z, lse, maybe_targets[0]),)
        if want_ent:
            out += (_entropy_of(z, lse),)
        return out
    return f


def _check_shapes(logits: jax.Array, targets: Optional[jax.Array], fn: str, what: str = "logits",
                  last: str = "V") -> None:
    if jnp.ndim(logits) != 3:
        raise ValueError(f"{fn}: {what} must be [B, T, {last}], got shape {jnp.shape(logits)}.")
    if targets is not None:
        if jnp.shape(targets) != jnp.shape(logits)[:2]:
            raise ValueError(f"{fn}: targets shape {jnp.shape(targets)} must be {what}.shape[:2] = "
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
      chunk_size: if set, process T in chunks of this many positions (see module doc).
    Returns: [B, T] float32.
    """
    _check_shapes(logits, targets, "token_logprobs")
    _check_temperature(temperature)
    _check_chunk(chunk_size)
    return _over_time_chunks(_make_chunk_fn(temperature, True, False), (logits, targets), chunk_size)[0]


def entropy_from_logits(logits: jax.Array, temperature=1.0, chunk_size: Optional[int] = None) -> jax.Array:
    """Entropy of softmax(logits / temperature) per position: [B, T, V] -> [B, T] float32."""
    _check_shapes(logits, None, "entropy_from_logits")
    _check_temperature(temperature)
    _check_chunk(chunk_size)
    return _over_time_chunks(_make_chunk_fn(temperature, False, True), (logits,), chunk_size)[0]


def token_logprobs_and_entropy(logits: jax.Array, targets: jax.Array, temperature=1.0,
                               chunk_size: Optional[int] = None) -> Tuple[jax.Array, jax.Array]:
    """Both of the above in one pass over the logits (shares the logsumexp): ([B, T], [B, T]) float32."""
    _check_shapes(logits, targets, "token_logprobs_and_entropy")
    _check_temperature(temperature)
    _check_chunk(chunk_size)
    lp, ent = _over_time_chunks(_make_chunk_fn(temperature, True, True), (logits, targets), chunk_size)
    return lp, ent


def token_logprobs_from_hidden(hidden: jax.Array, unembed: jax.Array, targets: jax.Array, temperature=1.0,
                               chunk_size: Optional[int] = None, with_entropy: bool = False):
    """Log-probs (and optionally entropies) from final hidden states, never materialising [B, T, V] logits.

    Args:
      hidden: [B, T, D] final (normed) hidden states.
      unembed: [D, V] output projection (for tied embeddings pass `embedding.T`).
      targets: [B, T] int token ids.
      temperature, chunk_size: as in `token_logprobs`; chunk_size bounds the live logits to [B, chunk, V].
      with_entropy: also return the per-token entropy.
    Returns: [B, T] float32 log-probs, or (log-probs, entropy) when `with_entropy`.
    """
    _check_shapes(hidden, targets, "token_logprobs_from_hidden", what="hidden", last="D")
    if jnp.ndim(unembed) != 2 or jnp.shape(unembed)[0] != jnp.shape(hidden)[-1]:
        raise ValueError(f"token_logprobs_from_hidden: unembed must be [D, V] with D = hidden.shape[-1] = "
                         f"{jnp.shape(hidden)[-1]}, got {jnp.shape(unembed)}; pass the transpose of a [V, D] "
                         "embedding table.")
    to_logits = lambda h: jnp.einsum("btd,dv->btv", h, unembed, preferred_element_type=jnp.float32)
    return logprobs_from_hidden_fn(hidden, to_logits, targets, temperature, chunk_size, with_entropy)


def logprobs_from_hidden_fn(hidden: jax.Array, to_logits: Callable[[jax.Array], jax.Array], targets: jax.Array,
                            temperature=1.0, chunk_size: Optional[int] = None, with_entropy: bool = False):
    """`token_logprobs_from_hidden` for any hidden -> logits map (e.g. a model's own `logits` method, which
    knows whether the embedding is tied and which dtype to compute in): [B, T, V] logits exist only one
    `chunk_size` slice of T at a time, in the forward and the backward pass."""
    _check_shapes(hidden, targets, "logprobs_from_hidden_fn", what="hidden", last="D")
    _check_temperature(temperature)
    _check_chunk(chunk_size)
    out = _over_time_chunks(_make_chunk_fn(temperature, True, with_entropy, to_logits), (hidden, targets),
                            chunk_size)
    return (out[0], out[1]) if with_entropy else out[0]
