"""Assemble token sequences from variable-length pieces inside jit.

Prompts are built from pre-tokenized pieces (template text, rendered state, step numbers) that each have a
static buffer size and a traced length. `pack_right` lays them out back to back and right-aligns the result
in a fixed-size buffer (left padding), which is what batched generation with per-row positions wants.
The host path does the same with Python lists (`pack_right_host`), so both produce identical ids.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Segment = Tuple[jax.Array, jax.Array]  # (ids int32[..., L], length int32[...])


def constant(ids: Sequence[int]) -> Segment:
    """A fixed piece (e.g. template text) as a segment."""
    arr = jnp.asarray(np.asarray(ids, dtype=np.int32).reshape(-1))
    return arr, jnp.asarray(arr.shape[0], jnp.int32)


def table_lookup(table: jax.Array, lengths: jax.Array, index: jax.Array) -> Segment:
    """Pick row `index` of a padded table of pieces (e.g. the ids of "1", "2", ... for step numbers)."""
    return table[index], lengths[index]


def pack_right(segments: Sequence[Segment], size: int, pad_id: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Concatenate unbatched segments and right-align them in a buffer of `size` ids.

    Returns (ids int32[size], mask int32[size], total_length). Tokens that do not fit are dropped from the
    *left* (the oldest text), and `total_length > size` tells the caller it truncated.
    Use `jax.vmap` for batches.
    """
    lengths = jnp.stack([jnp.asarray(n, jnp.int32) for _, n in segments])
    total = jnp.sum(lengths)
    starts = size - total + jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(lengths)[:-1]])
    out = jnp.full((size,), pad_id, jnp.int32)
    for (ids, n), start in zip(segments, starts):
        ids = jnp.asarray(ids, jnp.int32)
        pos = start + jnp.arange(ids.shape[-1], dtype=jnp.int32)
        keep = (jnp.arange(ids.shape[-1]) < n) & (pos >= 0)
        # Out-of-range positions are dropped by the scatter.
        out = out.at[jnp.where(keep, pos, size)].set(ids, mode="drop")
    mask = (jnp.arange(size) >= size - jnp.minimum(total, size)).astype(jnp.int32)
    return out, mask, total


def pack_right_host(pieces: Sequence[Sequence[int]], size: int, pad_id: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Host twin of `pack_right` for lists of ids."""
    flat = [int(t) for piece in pieces for t in piece]
    total = len(flat)
    kept = flat[-size:] if total > size else flat
    ids = np.full((size,), pad_id, np.int32)
    mask = np.zeros((size,), np.int32)
    if kept:
        ids[size - len(kept):] = kept
        mask[size - len(kept):] = 1
    return ids, mask, total


def pad_table(pieces: Sequence[Sequence[int]], pad_id: int) -> Tuple[jax.Array, jax.Array]:
    """Stack pieces of different lengths into (table int32[n, max_len], lengths int32[n])."""
    width = max(1, max(len(p) for p in pieces))
    table = np.full((len(pieces), width), pad_id, np.int32)
    for i, p in enumerate(pieces):
        table[i, : len(p)] = p
    return jnp.asarray(table), jnp.asarray([len(p) for p in pieces], jnp.int32)


def find_first_pattern(tokens: jax.Array, valid: jax.Array, patterns: jax.Array, pattern_lengths: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Earliest occurrence of any of `patterns` in `tokens` (unbatched).

    tokens int32[N], valid bool[N] (positions actually generated), patterns int32[K, Lp] padded,
    pattern_lengths int32[K]. Returns (pattern index or -1, start position or N).
    """
    n = tokens.shape[0]
    k, lp = patterns.shape
    padded = jnp.concatenate([tokens, jnp.full((lp,), -1, tokens.dtype)])
    valid_p = jnp.concatenate([valid, jnp.zeros((lp,), bool)])
    # windows[i, j] = tokens[i + j]
    idx = jnp.arange(n)[:, None] + jnp.arange(lp)[None, :]
    windows, wvalid = padded[idx], valid_p[idx]
    in_pattern = jnp.arange(lp)[None, :] < pattern_lengths[:, None]  # [K, Lp]
    eq = (windows[None, :, :] == patterns[:, None, :]) & wvalid[None, :, :]  # [K, N, Lp]
    hit = jnp.all(eq | ~in_pattern[:, None, :], axis=-1) & (pattern_lengths[:, None] > 0)  # [K, N]
    first_pos = jnp.where(hit, jnp.arange(n)[None, :], n).min(axis=1)  # [K]
    best = jnp.argmin(first_pos)
    found = first_pos[best] < n
    return jnp.where(found, best, -1), jnp.where(found, first_pos[best], n)
