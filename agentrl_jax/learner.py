"""From a rollout batch to parameter updates: advantages, the packed sample batch, and the RL / SFT losses.

Window mode (the study's): every valid (episode, turn) is one state→action sample. Samples are packed as
[prompt P | response N] id rows; the loss covers exactly the response tokens the policy generated.

GRPO: the group-normalised episode return is the advantage of every step of that episode.
PPO: a critic value per turn (value head at the last prompt token), turn-level GAE over each episode's steps.

Lost episodes (`EpisodeStats.lost`: cut short by a worker crash, timeout, env error or failed reset) are no
evidence about the policy: `kept_episodes` drops them, `flatten_*(keep=...)` gives them no samples,
`grpo_step_advantages(present=...)` leaves them out of their group's statistics, and `outcome_metrics`
leaves them out of the success rate, return and length.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from agentrl_jax import rl
from agentrl_jax.policy import Policy, response_outputs
from agentrl_jax.rollout import EpisodeStats, StepBatch


def kept_episodes(stats: EpisodeStats) -> np.ndarray:
    """bool [E]: the episodes that count (all but the lost ones)."""
    return ~np.asarray(stats.lost, bool)


def outcome_metrics(stats: EpisodeStats) -> Dict[str, float]:
    """success_rate / return / episode_length averaged over the kept episodes (NaN when every episode was
    lost: no evidence either way), and lost_episodes, the number of episodes left out."""
    kept = kept_episodes(stats)
    mean = lambda x: float(np.mean(np.asarray(x, np.float64)[kept])) if kept.any() else float("nan")  # noqa: E731
    return {"success_rate": mean(stats.success), "return": mean(stats.episode_return),
            "episode_length": mean(stats.length), "lost_episodes": float(np.sum(~kept))}


def _keep_mask(keep: Optional[np.ndarray], num_episodes: int, name: str = "keep") -> np.ndarray:
    if keep is None:
        return np.ones(num_episodes, bool)
    keep = np.asarray(keep)
    if keep.dtype != bool or keep.shape != (num_episodes,):
        raise ValueError(f"{name} must be a bool array with one entry per episode, shape ({num_episodes},); got "
                         f"{keep.dtype} {keep.shape}. Pass learner.kept_episodes(stats).")
    return keep


def flatten_samples(batch: StepBatch, keep: Optional[np.ndarray] = None) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Valid (episode, turn) samples as packed host arrays, and their (episode, turn) index [S, 2].
    keep: bool [E], only these episodes give samples (None: all)."""
    valid = np.asarray(batch.valid)
    where = np.argwhere(valid & _keep_mask(keep, valid.shape[0])[:, None])
    e, t = where[:, 0], where[:, 1]
    pick = lambda x: np.asarray(x)[e, t]  # noqa: E731
    samples = {
        "ids": np.concatenate([pick(batch.prompt_ids), pick(batch.response_ids)], axis=1).astype(np.int32),
        "attn": np.concatenate([pick(batch.prompt_mask), pick(batch.response_mask)], axis=1).astype(np.int32),
        "response_mask": pick(batch.response_mask).astype(np.float32),
        "sample_logprobs": pick(batch.logprobs).astype(np.float32),
    }
    return samples, where


def flatten_conversations(batch, keep: Optional[np.ndarray] = None) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Conversation mode: one sample per episode. The packed layout is a 1-token "prompt" followed by the
    rest of the buffer as "response" whose mask marks the policy's own tokens (score with prompt_len=1).
    keep: bool [E], only these episodes give samples (None: all); the index [S, 2] holds (episode, 0)."""
    rows = np.flatnonzero(_keep_mask(keep, np.shape(batch.loss_mask)[0]))
    loss = np.asarray(batch.loss_mask)[rows]
    samples = {
        "ids": np.asarray(batch.ids, np.int32)[rows],
        "attn": np.asarray(batch.attn, np.int32)[rows],
        "response_mask": loss[:, 1:].astype(np.float32),
        "sample_logprobs": np.asarray(batch.logprobs, np.float32)[rows, 1:],
    }
    index = np.stack([rows, np.zeros(len(rows), np.int64)], axis=1)
    return samples, index


def grpo_step_advantages(episode_returns: np.ndarray, index: np.ndarray, group_size: int,
                         normalize_std: bool = True, eps: float = 1e-6,
                         present: Optional[np.ndarray] = None) -> np.ndarray:
    """Episode e belongs to group e // group_size; each step gets its episode's normalised return.
    present: bool [E], the episodes that enter their group's mean / std (None: all), e.g. `kept_episodes`; a
    group with fewer than 2 present members gives its members advantage 0 (no baseline to compare with)."""
    returns = jnp.asarray(np.asarray(episode_returns), jnp.float32)
    n = returns.shape[0]
    if n % group_size:
        raise ValueError(f"{n} episodes do not split into groups of {group_size}.")
    valid = None if present is None else jnp.asarray(_keep_mask(present, n, "present"), jnp.float32)
    adv = rl.group_advantages(returns, group_ids=jnp.arange(n) // group_size, num_groups=n // group_size,
                              normalize_std=normalize_std, eps=eps, valid=valid)
    return np.asarray(adv)[index[:, 0]]


def ppo_turn_advantages(reward_et: np.ndarray, valid_et: np.ndarray, values_et: np.ndarray, gamma: float,
                        lam: float) -> Tuple[np.ndarray, np.ndarray]:
    """Turn-level GAE: per-turn rewards and critic values [E, T] → (advantages, returns) [E, T]."""
    adv, ret = rl.gae_turns(jnp.asarray(reward_et, jnp.float32), jnp.asarray(values_et),
                            jnp.asarray(valid_et, jnp.float32), gamma=gamma, lam=lam)
    return np.asarray(adv), np.asarray(ret)


def kl_reward_penalty(samples: Dict[str, np.ndarray], kl_coef: float, estimator: str) -> np.ndarray:
    """kl_coef x each sample's summed per-token KL estimate between the rollout policy (old log-probs) and
    the reference [S]: what `RLConfig.kl_in_reward` subtracts from the sample's turn reward."""
    kl = rl.kl_estimate(jnp.asarray(samples["old_logprobs"]), jnp.asarray(samples["ref_logprobs"]), estimator)
    mask = samples["response_mask"]
    return kl_coef * np.where(mask > 0, np.asarray(kl), 0.0).sum(axis=1).astype(np.float32)


def penalised_rewards(reward_et: Optional[np.ndarray], episode_returns: np.ndarray, index: np.ndarray,
                      penalty: np.ndarray) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """Subtract each sample's KL penalty from its turn's reward [E, T] (when the batch has per-turn rewards)
    and from its episode's return [E]; `index` [S, 2] holds each sample's (episode, turn)."""
    returns = np.asarray(episode_returns, np.float32).copy()
    np.subtract.at(returns, index[:, 0], penalty)
    if reward_et is None:
        return None, returns
    rewards = np.asarray(reward_et, np.float32).copy()
    np.subtract.at(rewards, (index[:, 0], index[:, 1]), penalty)
    return rewards, returns


def explained_variance(returns: np.ndarray, values: np.ndarray) -> float:
    """1 - Var(returns - values) / Var(returns) over the batch (0 when the returns do not vary)."""
    var = float(np.var(returns))
    return 0.0 if var == 0 else float(1.0 - np.var(returns - values) / var)


def minibatches(samples: Dict[str, np.ndarray], size: int, rng: Optional[np.random.Generator],
                shuffle: bool = True) -> Iterator[Dict[str, np.ndarray]]:
    """Fixed-size minibatches (one compiled step); the last is padded with zero-weight copies.

    Minibatches of loss samples (those with a `response_mask`) also carry the whole minibatch's counts
    (`with_counts`), so a loss computed on micro-batches of one adds up to the loss of all of it.
    """
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
        yield with_counts(mb) if "response_mask" in mb else mb


COUNT_KEYS = ("count_tokens", "count_rows", "count_samples")


def with_counts(mb: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Add the minibatch's counts as per-row copies (so they split and shard like any batch leaf):
    counted response tokens, rows with >= 1 counted token, and real (weight 1) samples."""
    mask = mb["response_mask"] * mb["weight"][:, None]
    b = len(mask)
    counts = (mask.sum(), (mask.sum(axis=1) > 0).sum(), mb["weight"].sum())
    return dict(mb, **{k: np.full(b, c, np.float32) for k, c in zip(COUNT_KEYS, counts)})


def _counts(mb: Dict[str, jax.Array]) -> Tuple[rl.Counts, rl.Counts]:
    """(token counts for the policy terms, per-sample counts for the value term) of the whole minibatch."""
    samples = mb["count_samples"][0]
    return rl.Counts(mb["count_tokens"][0], mb["count_rows"][0]), rl.Counts(samples, samples)


def score_samples(policy: Policy, mb: Dict[str, jax.Array], prompt_len: int, temperature: float,
                  with_values: bool, chunk_size: Optional[int] = None) -> Dict[str, jax.Array]:
    """Forward pass without gradients: logprobs (and values) of the sampled responses."""
    lp, _, values = response_outputs(policy, mb["ids"], mb["attn"], prompt_len, temperature, with_values,
                                     chunk_size)
    out = {"logprobs": lp}
    if with_values:
        out["values"] = values
    return out


def rl_loss(policy: Policy, mb: Dict[str, jax.Array], key, *, config: rl.RLConfig, prompt_len: int,
            temperature: float, chunk_size: Optional[int] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """The GRPO / PPO loss on one (micro-)batch (see `agentrl_jax.rl.ppo_loss`); value loss on turn values.

    Every term is normalised by the counts of the whole minibatch the batch came from (`with_counts`): the
    loss and every metric are additive over its micro-batches (`make_train_step(accumulate="sum")`), so
    `train.micro_batch_size` changes memory, never the update.
    """
    del key
    ppo = config.algorithm == "ppo"
    lp, ent, values = response_outputs(policy, mb["ids"], mb["attn"], prompt_len, temperature, with_values=ppo,
                                       chunk_size=chunk_size)
    mask = mb["response_mask"] * mb["weight"][:, None]
    adv = jnp.broadcast_to(mb["advantages"][:, None], lp.shape)
    token_counts, sample_counts = _counts(mb)
    loss, metrics = rl.ppo_loss(config, lp, mb["old_logprobs"], adv, mask, entropy=ent,
                                ref_logprobs=mb.get("ref_logprobs"), counts=token_counts)
    if ppo:
        w = mb["weight"][:, None]
        clip = config.value_clip
        if clip is not None and config.value_clip_scale == "return_std":
            clip = mb["value_clip"][:, None]
        vf, vf_metrics = rl.value_loss(values[:, None], mb["old_values"][:, None], mb["returns"][:, None], w,
                                       clip, counts=sample_counts)
        loss = loss + config.value_coef * vf
        metrics = dict(metrics, vf_loss=vf, **vf_metrics)
    # The total is recomputed from the additive parts (ppo_loss's "loss" is the pre-value total).
    metrics = dict(metrics, loss=jax.lax.stop_gradient(loss), response_tokens=jnp.sum(mask))
    return loss, metrics


def sft_loss(policy: Policy, mb: Dict[str, jax.Array], key, *, prompt_len: int,
             chunk_size: Optional[int] = None) -> Tuple[jax.Array, Dict]:
    """Token-mean negative log-likelihood of the response tokens (expert answers) over the whole minibatch
    (additive over micro-batches, like `rl_loss`)."""
    del key
    lp, _, _ = response_outputs(policy, mb["ids"], mb["attn"], prompt_len, chunk_size=chunk_size)
    mask = mb["response_mask"] * mb["weight"][:, None]
    nll = -rl.masked_mean(lp, mask, count=_counts(mb)[0].tokens)
    return nll, {"nll": nll}


# ------------------------------------------------------------------------------------ several processes
def _rows(samples: Dict[str, np.ndarray], idx: np.ndarray, size: int) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """`size` rows of `samples` at `idx` padded with zero-weight copies (all-zero rows, attention on, when
    this process has no samples at all); and the weight [size] (1 = a real row)."""
    weight = np.zeros(size, np.float32)
    weight[: len(idx)] = 1.0
    s = len(next(iter(samples.values())))
    if s == 0:
        rows = {k: np.zeros((size,) + v.shape[1:], v.dtype) for k, v in samples.items()}
        if "attn" in rows:
            rows["attn"][:] = 1  # a padding row attends somewhere (no empty softmax)
        return rows, weight
    if len(idx) < size:
        idx = np.concatenate([idx, np.resize(idx if len(idx) else np.arange(s), size - len(idx))])
    return {k: v[idx] for k, v in samples.items()}, weight


def process_minibatches(samples: Dict[str, np.ndarray], size: int, rng: np.random.Generator,
                        hosts) -> Iterator[Dict[str, np.ndarray]]:
    """`minibatches` of a multi-process run (`distributed.HostShare`): `samples` are this process's own; each
    process gives every minibatch `size / processes` rows of its samples (shuffled by `rng`), so a minibatch
    is stratified over the processes' episodes. Every process yields the same number of minibatches (set by
    the process with most samples; a process with fewer pads with zero-weight rows), and the counts the loss
    normalises by (`with_counts`) are the whole minibatch's, summed over the processes. When each process's
    samples fit in one share (one minibatch per epoch), the minibatch holds the same samples as a
    single-process run's and the update is the same."""
    if size % hosts.count or (size // hosts.count) % hosts.quantum():
        raise ValueError(f"train.minibatch_size={size} must split into {hosts.count} equal per-process shares "
                         f"that are multiples of {hosts.quantum()} (a multiple of the data*fsdp mesh size).")
    share = size // hosts.count
    s = len(next(iter(samples.values())))
    most = int(hosts.gather(np.array([s])).max())
    order = rng.permutation(s)
    for start in range(0, most, share):
        mb, weight = _rows(samples, order[start: start + share], share)
        mb["weight"] = weight
        if "response_mask" not in mb:
            yield mb
            continue
        mine = with_counts(mb)
        total = hosts.sum({k: float(mine[k][0]) for k in COUNT_KEYS})
        yield dict(mb, **{k: np.full(share, total[k], np.float32) for k in COUNT_KEYS})


def score_process_samples(score_fn, params, samples: Dict[str, np.ndarray], micro_batch_size: int,
                          hosts) -> Dict[str, np.ndarray]:
    """`Trainer._score_all` of a multi-process run: every process scores its own samples, `micro / processes`
    rows per global micro-batch (the same number of micro-batches everywhere); `score_fn(params, mb)` returns
    replicated outputs, of which a process keeps its own rows."""
    share = hosts.padded(max(micro_batch_size // hosts.count, 1))
    s = len(samples["ids"])
    most = int(hosts.gather(np.array([s])).max())
    outs: Dict[str, list] = {}
    for start in range(0, most, share):
        idx = np.arange(start, min(start + share, s))
        mb, _ = _rows({k: samples[k] for k in ("ids", "attn")}, idx, share)
        res = score_fn(params, hosts.to_global(mb))
        mine = slice(hosts.position * share, (hosts.position + 1) * share)
        for k, v in res.items():
            outs.setdefault(k, []).append(np.asarray(v)[mine][: len(idx)])
    return {k: np.concatenate(v) for k, v in outs.items()} if outs else {
        "logprobs": np.zeros((0,) + samples["response_mask"].shape[1:], np.float32)}
