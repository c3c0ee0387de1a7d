"""Generalized advantage estimation (GAE) over tokens or turns, and discounted returns.

A row is one episode laid out in time. `mask` marks the positions that are RL steps (policy-generated tokens
for token-level GAE, real turns for turn-level GAE). Other positions (prompt, environment observation,
padding) are not steps: the recursion jumps over them, so the "next value" of a step is the value at the
next step of the same row, and the tokens of an observation between two turns do not break the chain.

Conventions (all arrays [B, T], float):
  * `rewards[b, t]` is the reward received after step t. A reward sitting on a non-step position is added to
    the nearest step before it (an observation is not a decision); rewards before the first step are dropped.
  * `dones[b, t] = 1` means the episode ended after step t: no bootstrapping across it. Like rewards, a done
    on a non-step position applies to the step before it. Without `dones`, each row ends after its last step.
  * `bootstrap_value` [B] is V(s_T) for rows cut off before the episode ended (0 when None).
Outputs are 0 at non-step positions.

Implemented as one reverse `lax.scan` over time, vectorized over the batch.
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp


def _check(rewards, values, mask, dones, bootstrap_value, fn):
    shape = jnp.shape(rewards)
    if len(shape) != 2:
        raise ValueError(f"{fn}: rewards must be [B, T], got shape {shape}.")
    for name, a in (("values", values), ("mask", mask), ("dones", dones)):
        if a is not None and jnp.shape(a) != shape:
            raise ValueError(f"{fn}: {name} shape {jnp.shape(a)} must equal rewards shape {shape}.")
    if bootstrap_value is not None and jnp.shape(bootstrap_value) != shape[:1]:
        raise ValueError(f"{fn}: bootstrap_value must be [B] = {shape[:1]}, got {jnp.shape(bootstrap_value)}.")


def _gae_core(rewards, values, mask, gamma, lam, bootstrap_value, dones):
    b, _ = rewards.shape
    f32 = jnp.float32
    rewards = rewards.astype(f32)
    values = values.astype(f32)
    step = (mask > 0)
    dones = jnp.zeros_like(rewards) if dones is None else dones.astype(f32)
    gamma = jnp.asarray(gamma, f32)
    lam = jnp.asarray(lam, f32)
    next_value0 = jnp.zeros((b,), f32) if bootstrap_value is None else bootstrap_value.astype(f32)

    def body(carry, xs):
        next_value, next_adv, pend_r, pend_done = carry
        r, v, m, d = xs
        r_eff = r + pend_r
        d_eff = jnp.maximum(d, pend_done)
        cont = 1.0 - d_eff
        delta = r_eff + gamma * cont * next_value - v
        adv = delta + gamma * lam * cont * next_adv
        new_carry = (
            jnp.where(m, v, next_value),
            jnp.where(m, adv, next_adv),
            jnp.where(m, 0.0, r_eff),       # non-step: carry the reward back to the previous step
            jnp.where(m, 0.0, d_eff),
        )
        return new_carry, jnp.where(m, adv, 0.0)

    init = (next_value0, jnp.zeros((b,), f32), jnp.zeros((b,), f32), jnp.zeros((b,), f32))
    xs = (rewards.T, values.T, step.T, dones.T)  # scan over time
    _, adv_t = jax.lax.scan(body, init, xs, reverse=True)
    adv = adv_t.T
    returns = jnp.where(step, adv + values, 0.0)
    return adv, returns


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma=1.0, lam=1.0,
        bootstrap_value: Optional[jax.Array] = None, dones: Optional[jax.Array] = None
        ) -> Tuple[jax.Array, jax.Array]:
    """Token-level GAE.

    Args:
      rewards, values, mask: [B, T]; mask is 1 on policy tokens (the steps).
      gamma, lam: discount and GAE lambda (floats or traced scalars).
      bootstrap_value: optional [B] value after the last step (truncated rows).
      dones: optional [B, T] episode-end flags (see module doc).
    Returns: (advantages [B, T], returns [B, T]) float32, returns = advantages + values; 0 off-mask.
    """
    _check(rewards, values, mask, dones, bootstrap_value, "gae")
    return _gae_core(rewards, values, mask, gamma, lam, bootstrap_value, dones)


def gae_turns(rewards: jax.Array, values: jax.Array, turn_mask: jax.Array, gamma=1.0, lam=1.0,
              bootstrap_value: Optional[jax.Array] = None, dones: Optional[jax.Array] = None
              ) -> Tuple[jax.Array, jax.Array]:
    """Turn-level GAE: same recursion with one step per turn.

    Args:
      rewards, values, turn_mask: [B, K]; values are the critic's value of each turn (e.g. read at the turn's
        first policy token), turn_mask is 1 for real turns (0 = padding when episodes have fewer turns).
    Returns: (advantages [B, K], returns [B, K]). Spread them onto tokens with `turns_to_tokens`.
    """
    _check(rewards, values, turn_mask, dones, bootstrap_value, "gae_turns")
    return _gae_core(rewards, values, turn_mask, gamma, lam, bootstrap_value, dones)


def turns_to_tokens(turn_values: jax.Array, token_turn: jax.Array, mask: jax.Array) -> jax.Array:
    """Give every token the value of its turn: [B, K] gathered by `token_turn` [B, T] (int turn index) -> [B, T].

    Positions with mask 0 (or a negative turn index) get 0.
    """
    if jnp.ndim(turn_values) != 2 or jnp.ndim(token_turn) != 2 or jnp.shape(token_turn) != jnp.shape(mask):
        raise ValueError("turns_to_tokens: need turn_values [B, K], token_turn [B, T] and mask [B, T]; got "
                         f"{jnp.shape(turn_values)}, {jnp.shape(token_turn)}, {jnp.shape(mask)}.")
    idx = jnp.clip(token_turn, 0, turn_values.shape[1] - 1).astype(jnp.int32)
    out = jnp.take_along_axis(turn_values, idx, axis=1)
    return jnp.where((mask > 0) & (token_turn >= 0), out, 0.0)


def discounted_returns(rewards: jax.Array, mask: jax.Array, gamma=1.0,
                       bootstrap_value: Optional[jax.Array] = None, dones: Optional[jax.Array] = None
                       ) -> jax.Array:
    """Discounted return-to-go G_t = r_t + gamma * G_{t+1} over the steps of each row: [B, T] -> [B, T].

    Same step / reward / done conventions as `gae` (it is GAE with zero values and lambda = 1).
    """
    _check(rewards, None, mask, dones, bootstrap_value, "discounted_returns")
    adv, _ = _gae_core(rewards, jnp.zeros_like(rewards, dtype=jnp.float32), mask, gamma, 1.0,
                       bootstrap_value, dones)
    return adv
