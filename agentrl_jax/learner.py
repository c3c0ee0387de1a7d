"""From a rollout batch to parameter updates: advantages, the packed sample batch, and the RL / SFT losses.

Window mode (the study's): every valid (episode, turn) is one state→action sample. Samples are packed as
[prompt P | response N] id rows; the loss covers exactly the response tokens the policy generated.

GRPO: the group-normalised episode return is the advantage of every step of that episode.
PPO: a critic value per turn (value head at the last prompt token), turn-level GAE over each episode's steps.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from agentrl_jax import rl
from agentrl_jax.policy import Policy, response_outputs
from agentrl_jax.rollout import EpisodeStats, StepBatch


def flatten_samples(batch: StepBatch) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Valid (episode, turn) samples as packed host arrays, and their (episode, turn) index [S, 2]."""
    valid = np.asarray(batch.valid)
    where = np.argwhere(valid)
    e, t = where[:, 0], where[:, 1]
    pick = lambda x: np.asarray(x)[e, t]  # noqa: E731
    samples = {
        "ids": np.concatenate([pick(batch.prompt_ids), pick(batch.response_ids)], axis=1).astype(np.int32),
        "attn": np.concatenate([pick(batch.prompt_mask), pick(batch.response_mask)], axis=1).astype(np.int32),
        "response_mask": pick(batch.response_mask).astype(np.float32),
        "sample_logprobs": pick(batch.logprobs).astype(np.float32),
    }
    return samples, where


def flatten_conversations(batch) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Conversation mode: one sample per episode. The packed layout is a 1-token "prompt" followed by the
    rest of the buffer as "response" whose mask marks the policy's own tokens (score with prompt_len=1)."""
    loss = np.asarray(batch.loss_mask)
    samples = {
        "ids": np.asarray(batch.ids, np.int32),
        "attn": np.asarray(batch.attn, np.int32),
        "response_mask": loss[:, 1:].astype(np.float32),
        "sample_logprobs": np.asarray(batch.logprobs, np.float32)[:, 1:],
    }
    index = np.stack([np.arange(loss.shape[0]), np.zeros(loss.shape[0], np.int64)], axis=1)
    return samples, index


def grpo_step_advantages(stats: EpisodeStats, index: np.ndarray, group_size: int, normalize_std: bool = True,
                         eps: float = 1e-6) -> np.ndarray:
    """Episode e belongs to group e // group_size; each step gets its episode's normalised return."""
    returns = jnp.asarray(np.asarray(stats.episode_return), jnp.float32)
    n = returns.shape[0]
    if n % group_size:
        raise ValueError(f"{n} episodes do not split into groups of {group_size}.")
    adv = rl.group_advantages(returns, group_ids=jnp.arange(n) // group_size, num_groups=n // group_size,
                              normalize_std=normalize_std, eps=eps)
    return np.asarray(adv)[index[:, 0]]


def ppo_turn_advantages(batch: StepBatch, values_et: np.ndarray, gamma: float, lam: float
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Turn-level GAE: per-turn rewards and critic values [E, T] → (advantages, returns) [E, T]."""
    adv, ret = rl.gae_turns(jnp.asarray(np.asarray(batch.reward), jnp.float32), jnp.asarray(values_et),
                            jnp.asarray(np.asarray(batch.valid), jnp.float32), gamma=gamma, lam=lam)
    return np.asarray(adv), np.asarray(ret)


def minibatches(samples: Dict[str, np.ndarray], size: int, rng: np.random.Generator,
                shuffle: bool = True) -> Iterator[Dict[str, np.ndarray]]:
    """Fixed-size minibatches (one compiled step); the last is padded with zero-weight copies."""
    s = len(next(iter(samples.values())))
    order = rng.permutation(s) if shuffle else np.arange(s)
    for start in range(0, s, size):
        idx = order[start: start + size]
        weight = np.ones(size, np.float32)
        if len(idx) < size:
            weight[len(idx):] = 0.0
            idx = np.concatenate([idx, np.resize(idx, size - len(idx))])
        mb = {k: v[idx] for k, v in samples.items()}
        mb["weight"] = weight
        yield mb


def score_samples(policy: Policy, mb: Dict[str, jax.Array], prompt_len: int, temperature: float,
                  with_values: bool) -> Dict[str, jax.Array]:
    """Forward pass without gradients: logprobs (and values) of the sampled responses."""
    lp, _, values = response_outputs(policy, mb["ids"], mb["attn"], prompt_len, temperature, with_values)
    out = {"logprobs": lp}
    if with_values:
        out["values"] = values
    return out


def rl_loss(policy: Policy, mb: Dict[str, jax.Array], key, *, config: rl.RLConfig, prompt_len: int,
            temperature: float) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """The GRPO / PPO loss on one minibatch (see `agentrl_jax.rl.ppo_loss`); value loss on turn values."""
    del key
    ppo = config.algorithm == "ppo"
    lp, ent, values = response_outputs(policy, mb["ids"], mb["attn"], prompt_len, temperature, with_values=ppo)
    mask = mb["response_mask"] * mb["weight"][:, None]
    adv = jnp.broadcast_to(mb["advantages"][:, None], lp.shape)
    loss, metrics = rl.ppo_loss(config, lp, mb["old_logprobs"], adv, mask, entropy=ent,
                                ref_logprobs=mb.get("ref_logprobs"))
    if ppo:
        w = mb["weight"][:, None]
        vf, vf_metrics = rl.value_loss(values[:, None], mb["old_values"][:, None], mb["returns"][:, None], w,
                                       config.value_clip)
        loss = loss + config.value_coef * vf
        metrics = dict(metrics, vf_loss=vf, **vf_metrics)
    metrics = dict(metrics, response_tokens=jnp.sum(mask))
    return loss, metrics


def sft_loss(policy: Policy, mb: Dict[str, jax.Array], key, *, prompt_len: int) -> Tuple[jax.Array, Dict]:
    """Token-mean negative log-likelihood of the response tokens (expert answers)."""
    del key
    lp, _, _ = response_outputs(policy, mb["ids"], mb["attn"], prompt_len)
    mask = mb["response_mask"] * mb["weight"][:, None]
    nll = -rl.masked_mean(lp, mask)
    return nll, {"nll": nll}
