"""GRPO: group-relative, trajectory-level advantages.

Each task prompt is rolled out n times (a group). A trajectory's advantage is its return minus the group
mean, optionally divided by the group standard deviation; the same number is applied to every action
(policy token) of the trajectory, which is how the study trains (no critic, no GAE).

Standard deviation: we use the *sample* (unbiased, n - 1) std, as verl / verl-agent do with `torch.std`,
so numbers match the study's codebase. For a group of 8 it is sqrt(8/7) ~ 1.07x the population std.

Degenerate groups: a group of size 1 and a group whose returns are all equal carry no learning signal and
get advantage exactly 0 (no NaN, no eps-amplified rounding noise). Note verl instead gives a size-1 group
mean 0 and std 1, i.e. advantage = R; we deliberately do not.
"""
from __future__ import annotations

from typing import Hashable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def _group_stats_dense(returns, valid):
    # returns, valid: [G, n]
    n = jnp.sum(valid, axis=1, keepdims=True)
    mean = jnp.sum(returns * valid, axis=1, keepdims=True) / jnp.maximum(n, 1.0)
    sq = jnp.sum(jnp.square(returns - mean) * valid, axis=1, keepdims=True)
    std = jnp.sqrt(sq / jnp.maximum(n - 1.0, 1.0))
    big = jnp.finfo(jnp.float32).max
    hi = jnp.max(jnp.where(valid > 0, returns, -big), axis=1, keepdims=True)
    lo = jnp.min(jnp.where(valid > 0, returns, big), axis=1, keepdims=True)
    return n, mean, std, hi, lo


def _finish(returns, valid, n, mean, std, hi, lo, normalize_std, eps):
    centered = returns - mean
    adv = centered / (std + eps) if normalize_std else centered
    informative = (n >= 2) & (hi > lo) & (valid > 0)
    return jnp.where(informative, adv, 0.0)


def group_advantages(returns: jax.Array, group_ids: Optional[jax.Array] = None, num_groups: Optional[int] = None,
                     normalize_std: bool = True, eps: float = 1e-6, valid: Optional[jax.Array] = None) -> jax.Array:
    """Group-normalized advantages (R - mean_group) / (std_group + eps).

    Two layouts:
      * `returns` [G, n] with `group_ids=None`: each row is a group.
      * `returns` [N] with `group_ids` [N] int in [0, num_groups): arbitrary grouping (e.g. after filtering);
        `num_groups` must be a Python int (a static size, so this is jit-able).
    Args:
      normalize_std: divide by the group std (False gives the mean-only baseline, as in Dr. GRPO).
      eps: added to the std.
      valid: optional mask of the same shape as `returns`; 0 drops a trajectory from the statistics and gives
        it advantage 0 (padding or failed rollouts).
    Returns: float32 advantages, same shape as `returns`.
    """
    returns = jnp.asarray(returns, jnp.float32)
    valid = jnp.ones_like(returns) if valid is None else jnp.asarray(valid, jnp.float32)
    if valid.shape != returns.shape:
        raise ValueError(f"group_advantages: valid shape {valid.shape} must equal returns shape {returns.shape}.")
    if group_ids is None:
        if returns.ndim != 2:
            raise ValueError("group_advantages: without group_ids, returns must be [num_groups, group_size]; "
                             f"got shape {returns.shape}. Reshape, or pass group_ids and num_groups.")
        stats = _group_stats_dense(returns, valid)
        return _finish(returns, valid, *stats, normalize_std, eps)

    if returns.ndim != 1 or jnp.shape(group_ids) != returns.shape:
        raise ValueError(f"group_advantages: with group_ids, returns and group_ids must both be [N]; got "
                         f"{returns.shape} and {jnp.shape(group_ids)}.")
    if not isinstance(num_groups, (int, np.integer)) or num_groups <= 0:
        raise ValueError("group_advantages: pass num_groups (a positive Python int, e.g. from "
                         f"group_ids_from_keys) together with group_ids; got {num_groups!r}.")
    gid = jnp.asarray(group_ids, jnp.int32)
    seg = lambda x: jax.ops.segment_sum(x, gid, num_segments=num_groups)
    n = seg(valid)
    mean = seg(returns * valid) / jnp.maximum(n, 1.0)
    sq = seg(jnp.square(returns - mean[gid]) * valid)
    std = jnp.sqrt(sq / jnp.maximum(n - 1.0, 1.0))
    big = jnp.finfo(jnp.float32).max
    hi = jax.ops.segment_max(jnp.where(valid > 0, returns, -big), gid, num_segments=num_groups)
    lo = jax.ops.segment_min(jnp.where(valid > 0, returns, big), gid, num_segments=num_groups)
    return _finish(returns, valid, n[gid], mean[gid], std[gid], hi[gid], lo[gid], normalize_std, eps)


def group_ids_from_keys(keys: Sequence[Hashable]) -> Tuple[np.ndarray, int]:
    """Host-side helper: map per-trajectory group keys (task uid, prompt id, ...) to dense ids.

    Returns (group_ids [N] int32 in first-seen order, num_groups).
    """
    table: dict = {}
    ids = np.asarray([table.setdefault(k, len(table)) for k in keys], dtype=np.int32)
    return ids, len(table)


def broadcast_to_tokens(adv: jax.Array, mask: jax.Array) -> jax.Array:
    """Apply one advantage per row to each of its counted tokens: adv [B], mask [B, T] -> [B, T]."""
    if jnp.ndim(adv) != 1 or jnp.ndim(mask) != 2 or jnp.shape(adv)[0] != jnp.shape(mask)[0]:
        raise ValueError(f"broadcast_to_tokens: need adv [B] and mask [B, T], got {jnp.shape(adv)} and "
                         f"{jnp.shape(mask)}.")
    return jnp.asarray(adv, jnp.float32)[:, None] * mask.astype(jnp.float32)
