"""The gin-configurable RL trainer: `python -m agentrl_jax.train --gin_file=gin/experiments/X.gin`.

One iteration (window mode, the study's):
  rollout (JAX Sokoban: one compiled program on device; text envs: host loop over the pool)
  → advantages (GRPO group baseline, or PPO critic + turn-level GAE)
  → old / reference log-probs by a forward pass → `epochs` passes of minibatch updates (sharded train step)
  → TensorBoard scalars and sample episodes, Orbax checkpoint every N steps, periodic held-out evaluation.
An optional SFT warm-up on expert (solver) data runs first. A killed job resumes from its last checkpoint;
SIGTERM saves one and exits cleanly.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging as _pylogging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import jax
import numpy as np
from flax import nnx

from agentrl_jax import checkpoint as ckpt
from agentrl_jax import distributed, domains, learner, optim, partitioning, rl, sharding
from agentrl_jax import sft as sft_lib
from agentrl_jax import generate as gen
from agentrl_jax.logging import MetricsLogger
from agentrl_jax.training_core import PolicyCore, update_compiler_options

log = _pylogging.getLogger("agentrl_jax.train")
ROLLOUT_MODES, PROMPT_MODES = domains.ROLLOUT_MODES, domains.PROMPT_MODES
# Key streams (0 training, 1 the fixed held-out set, 2 the SFT warm-up's validation set): see agentrl_jax.domains.
TRAIN_STREAM, HELD_OUT_STREAM, SFT_VALIDATION_STREAM = (domains.TRAIN_STREAM, domains.HELD_OUT_STREAM,
                                                       domains.SFT_VALIDATION_STREAM)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"train.{name}={value!r}; use one of {allowed}.")


def _generated_tokens(batch) -> float:
    return float(np.asarray(getattr(batch, "response_mask", getattr(batch, "loss_mask", 0))).sum())


def _kept(stats) -> np.ndarray:
    """Episodes that count: not lost to an env crash or timeout (those are out of the loss and the rates)."""
    lost = getattr(stats, "lost", None)
    n = len(np.asarray(stats.success))
    return np.ones(n, bool) if lost is None else ~np.asarray(lost, bool)


def _summarise(stats, batch, hosts=None) -> Dict[str, float]:
    return _summarise_parts([(batch, stats)], hosts)


def _summarise_parts(parts, hosts=None) -> Dict[str, float]:
    """Episode and turn metrics over one or several rollout calls of a domain, lost episodes left out; with
    several processes (`hosts`) over every process's episodes."""
    tot: Dict[str, float] = {}

    def add(k, v):
        tot[k] = tot.get(k, 0.0) + float(v)

    for batch, stats in parts:
        kept = _kept(stats)
        valid = np.asarray(batch.valid) & kept[:, None]
        add("episodes", kept.sum())
        add("lost", (~kept).sum())
        add("success", np.asarray(stats.success)[kept].sum())
        add("return", np.asarray(stats.episode_return)[kept].sum())
        add("length", np.asarray(stats.length)[kept].sum())
        add("turns", valid.sum())
        add("invalid", (np.asarray(batch.invalid) & valid).sum())
        add("response_truncated", (np.asarray(batch.response_truncated) & valid).sum())
        mask = np.asarray(getattr(batch, "response_mask", getattr(batch, "loss_mask", 0)))
        add("tokens", (mask * (kept.reshape((-1,) + (1,) * (mask.ndim - 1)))).sum())
        if hasattr(batch, "prompt_truncated"):
            add("prompt_truncated", (np.asarray(batch.prompt_truncated) & valid).sum())
        else:
            add("context_truncated", np.asarray(batch.context_truncated)[kept].sum())
    if hosts is not None:
        tot = hosts.sum(tot)
    n_ep, n_turns = max(tot["episodes"], 1.0), max(tot["turns"], 1.0)
    out = {
        "success_rate": tot["success"] / n_ep,
        "return": tot["return"] / n_ep,
        "episode_length": tot["length"] / n_ep,
        "invalid_action_rate": tot["invalid"] / n_turns,
        "response_truncated_rate": tot["response_truncated"] / n_turns,
        "response_tokens_mean": tot["tokens"] / n_turns,
        "lost_episodes": tot["lost"],
        "episodes": tot["episodes"],  # that count (lost ones left out): the intervals' n
    }
    if "prompt_truncated" in tot:
        out["prompt_truncated_rate"] = tot["prompt_truncated"] / n_turns
    else:
        out["context_truncated_rate"] = tot["context_truncated"] / n_ep
    return out


def _richness_metrics(batch, stats, tokenizer, max_states: int = 64) -> Dict[str, float]:
    """The study's state-richness measure split by the episode's distractor coin: mean tokens (all states) and
    chars (up to `max_states` decoded states of each kind) of the prompt the policy read per state, for plain
    and augmented episodes, and the augmented fraction of episodes (lost ones left out)."""
    kept = _kept(stats)
    flags = np.zeros(len(kept), bool) if stats.augmented is None else np.asarray(stats.augmented, bool)
    out = {"augment/episode_fraction": float(flags[kept].mean()) if kept.any() else 0.0}
    if not hasattr(batch, "prompt_ids"):  # conversation mode: one buffer per episode, no per-state prompt
        return out
    valid = np.asarray(batch.valid) & kept[:, None]
    mask = np.asarray(batch.prompt_mask) == 1
    for name, rows in (("plain", ~flags), ("augmented", flags)):
        states = np.argwhere(valid & rows[:, None])
        if not len(states):
            continue
        out[f"augment/state_tokens_{name}"] = float(mask[states[:, 0], states[:, 1]].sum(-1).mean())
        sample = states[:max_states]
        ids = np.asarray(batch.prompt_ids)[sample[:, 0], sample[:, 1]]
        texts = tokenizer.batch_decode([row[m] for row, m in zip(ids, mask[sample[:, 0], sample[:, 1]])])
        out[f"augment/state_chars_{name}"] = float(np.mean([len(t) for t in texts]))
    return out


# TensorBoard groups for the trainer's bare metric names (names with a "/" are grouped already: eval/, env/,
# levels/, augment/, time/, throughput/, sft/). Alphabetical groups put "episode" (success, return) before
# "eval", "loss", "optim" and "time"; the learner's metrics (pg/kl/vf losses, clip fractions, ...) go to "loss".
EPISODE_METRICS = frozenset({
    "success_rate", "return", "episode_length", "invalid_action_rate", "response_truncated_rate",
    "response_tokens_mean", "prompt_truncated_rate", "context_truncated_rate", "lost_episodes", "samples",
    "episodes"})
OPTIM_METRICS = frozenset({"grad_norm", "update_norm", "param_norm", "learning_rate", "skipped", "skipped_total"})


def tb_name(key: str) -> str:
    """The TensorBoard tag of a trainer metric (`success_rate` -> `episode/success_rate`)."""
    if "/" in key:
        return key
    if key in EPISODE_METRICS:
        return f"episode/{key}"
    return f"optim/{key}" if key in OPTIM_METRICS else f"loss/{key}"


def tb_metrics(metrics: Dict[str, float]) -> Dict[str, float]:
    return {tb_name(k): v for k, v in metrics.items()}


def _episode_text(tokenizer, batch, stats, e: int) -> str:
    lines = [f"success={bool(np.asarray(stats.success)[e])} return={float(np.asarray(stats.episode_return)[e]):.2f}"
             + (f" augmented={bool(np.asarray(stats.augmented)[e])}" if stats.augmented is not None else "")]
    if not hasattr(batch, "prompt_ids"):  # conversation mode: the whole buffer
        attn = np.asarray(batch.attn)[e] == 1
        return lines[0] + "\n" + tokenizer.decode(np.asarray(batch.ids)[e][attn])
    valid = np.asarray(batch.valid)[e]
    for t in np.flatnonzero(valid):
        pm = np.asarray(batch.prompt_mask)[e, t] == 1
        rm = np.asarray(batch.response_mask)[e, t] == 1
        prompt = tokenizer.decode(np.asarray(batch.prompt_ids)[e, t][pm])
        answer = tokenizer.decode(np.asarray(batch.response_ids)[e, t][rm])
        tail = prompt[-400:].replace("\n", "\n    ")
        lines.append(f"--- turn {t}: reward {float(np.asarray(batch.reward)[e, t]):.2f}\n    ...{tail}\n>>> {answer}")
    return "\n".join(lines)


class Trainer(PolicyCore):
    """Holds the compiled pieces (the model, its sharding and update program: `PolicyCore`); `train()` below is the gin entry point that builds and runs it.

    domain: the training domain's registry name; eval_domains: further domains evaluated on their held-out sets
    every `eval_every` steps (`eval/<domain>/...`). Neither is branched on here: everything domain-specific goes
    through `agentrl_jax.domains`.
    """

    def __init__(self, *, output_dir, model_path, domain, rollout_mode, rl_config, tasks_per_step, group_size,
                 minibatch_size, max_response_tokens, temperature, top_p, top_k, eval_temperature,
                 eval_episodes, invalid_penalty, seed, mesh, thinking, prompt_mode="window",
                 max_context_tokens=4096, micro_batch_size=None, logits_chunk_size=None, eval_domains=()):
        self.output_dir, self.rollout_mode = output_dir, rollout_mode
        self.cfg: rl.RLConfig = rl_config
        self.tasks_per_step, self.group_size = tasks_per_step, group_size
        self.minibatch_size, self.invalid_penalty = minibatch_size, invalid_penalty
        self.eval_episodes, self.seed, self.mesh = eval_episodes, seed, mesh
        self.temperature = temperature
        self.prompt_mode, self.max_context_tokens = prompt_mode, max_context_tokens
        self.micro_batch_size = micro_batch_size or minibatch_size
        ppo = rl_config.algorithm == "ppo"
        if prompt_mode == "conversation":
            if rollout_mode != "host":
                raise ValueError("prompt_mode='conversation' keeps a growing buffer per episode on the host: set "
                                 "train.rollout_mode = 'host'.")
            if ppo:
                raise ValueError("prompt_mode='conversation' trains one sample per episode with the GRPO advantage; "
                                 "use RLConfig.algorithm = 'grpo' or prompt_mode = 'window' for PPO.")
        for name in (domain, *eval_domains):
            domains.domain_class(name)  # an unknown name fails before the model is loaded
        super().__init__(model_path=model_path, mesh=mesh, thinking=thinking, with_value_head=ppo,
                         logits_chunk_size=logits_chunk_size)
        stop = tuple(self.chat.stop_ids)
        self.gen_config = gen.GenerationConfig(max_new_tokens=max_response_tokens, temperature=temperature,
                                               top_p=top_p, top_k=top_k, stop_ids=stop, pad_id=self.pad_id)
        self.eval_config = gen.GenerationConfig(max_new_tokens=max_response_tokens, temperature=eval_temperature,
                                                stop_ids=stop, pad_id=self.pad_id)
        # Several processes: each plays its own block of every batch (None in one process).
        self.hosts = distributed.HostShare.for_mesh(mesh, self.rules)
        self.accum_steps = 1
        self.ref_params = None  # set by train(): the policy at the start of RL, when the KL term is on
        self.domain = domains.make_domain(domain, chat=self.chat, seed=seed, num_eval_tasks=eval_episodes)
        if rollout_mode not in self.domain.rollout_modes:
            raise ValueError(f"the {domain} domain runs on the host: set train.rollout_mode = 'host' (it has no "
                             f"{rollout_mode!r} rollout).")
        # Evaluation domains are built now (cheap: their pools start on their first episode).
        self.eval_domains = {name: self.domain if name == domain else
                             domains.make_domain(name, chat=self.chat, seed=seed, num_eval_tasks=eval_episodes)
                             for name in eval_domains}
        self.max_prompt_tokens = self.domain.max_prompt_tokens
        # Window samples are [prompt P | response N]; conversation samples are [1 | rest of the buffer].
        self.prompt_len = 1 if prompt_mode == "conversation" else self.max_prompt_tokens
        score = functools.partial(learner.score_samples, prompt_len=self.prompt_len,
                                  temperature=temperature if temperature > 0 else 1.0, with_values=ppo,
                                  chunk_size=logits_chunk_size)

        def score_fn(params, mb):
            with partitioning.axis_rules(mesh, self.rules):  # the same logical-axis rules as the train step
                return score(nnx.merge(self.graphdef, params), mb)

        # The scoring pass runs on micro-batches placed exactly like the train step's (batch over data x fsdp),
        # so it never needs more memory than a training micro-batch.
        self._score = jax.jit(score_fn, in_shardings=(self.param_sh, self.train_sh.batch),
                              out_shardings=self.train_sh.replicated,
                              compiler_options=dict(update_compiler_options()) or None)
        self.timings: Dict[str, float] = {}

    @property
    def settings(self) -> domains.RolloutSettings:
        return domains.RolloutSettings(self.rollout_mode, self.prompt_mode, self.max_context_tokens,
                                       self.invalid_penalty, self.hosts)

    def all_domains(self) -> Dict[str, domains.Domain]:
        return {self.domain.name: self.domain, **self.eval_domains}

    def close(self) -> None:
        """Stop every domain's env worker processes (and their JVMs)."""
        for d in self.all_domains().values():
            d.close()

    # ------------------------------------------------------------------------------------------ rollout
    def config_for(self, domain: domains.Domain, config: gen.GenerationConfig) -> gen.GenerationConfig:
        """A domain may answer at its own length (`<Domain>.max_response_tokens`)."""
        n = domain.max_response_tokens
        return config if n is None or n == config.max_new_tokens else dataclasses.replace(config, max_new_tokens=n)

    def rollout(self, params, tasks: domains.Tasks, key, config, domain: Optional[domains.Domain] = None):
        """Play `tasks` of `domain` (default: the training domain) with `params`; numpy batch and stats."""
        domain = domain or self.domain
        # Keys live replicated on the mesh next to the (sharded) parameters.
        key = jax.device_put(key, self.train_sh.replicated)
        if tasks.keys is not None:
            tasks = dataclasses.replace(tasks, keys=jax.device_put(tasks.keys, self.train_sh.replicated))
        return domain.rollout(self.graphdef, self._rollout_params(params), tasks, key,
                              self.config_for(domain, config), self.tokenizer,
                              self.settings, timings=self.timings)

    def train_tasks(self, step: int) -> domains.Tasks:
        """The step's training tasks, each repeated `group_size` times (a GRPO group shares its task)."""
        return self.domain.train_tasks(step, self.tasks_per_step).repeat(self.group_size)

    def evaluate(self, params, step: int, split: Optional[str] = None, domain: Optional[domains.Domain] = None,
                 n_tasks: Optional[int] = None) -> Dict[str, float]:
        """eval_config (validation temperature) metrics on a domain's fixed held-out set (`split`, default the
        domain's `eval_split`), as `eval/<metric>`."""
        domain = domain or self.domain
        tasks = domain.eval_tasks(n_tasks or self.eval_episodes, split)
        if tasks.keys is not None:
            tasks = dataclasses.replace(tasks, keys=jax.device_put(tasks.keys, self.train_sh.replicated))
        key = jax.device_put(jax.random.PRNGKey(step), self.train_sh.replicated)
        parts = domain.rollout_chunks(self.graphdef, self._rollout_params(params), tasks, key,
                                      self.config_for(domain, self.eval_config),
                                      self.tokenizer, self.settings, timings=self.timings)
        return {f"eval/{k}": v for k, v in _summarise_parts(parts, self.hosts).items()}

    def evaluate_all(self, params, step: int) -> Dict[str, float]:
        """The training domain's held-out metrics (`eval/...`) and every evaluation domain's
        (`eval/<domain>/...`), with the seconds each took (`time/eval/<domain>_s`)."""
        t0 = time.perf_counter()
        params = self._rollout_params(params)  # one compute-dtype copy for every domain's evaluation
        out = self.evaluate(params, step)
        out[f"time/eval/{self.domain.name}_s"] = time.perf_counter() - t0
        for name, d in self.eval_domains.items():
            t0 = time.perf_counter()
            m = out if d is self.domain else self.evaluate(params, step, domain=d)
            out.update({f"eval/{name}/{k[len('eval/'):]}": v for k, v in m.items() if k.startswith("eval/")
                        and k.count("/") == 1})
            if d is not self.domain:
                out[f"time/eval/{name}_s"] = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------------------------------- update
    def prepare(self, params, batch, stats) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
        """The packed samples of a rollout batch with old / reference log-probs and advantages, and the
        metrics only the whole batch can give (explained variance, the KL folded into the rewards)."""
        flatten = learner.flatten_conversations if self.prompt_mode == "conversation" else learner.flatten_samples
        # Episodes lost to an env crash or timeout are out of the loss and out of their groups' baselines.
        keep = _kept(stats)
        # Several processes: each holds its own episodes' samples; batch-wide statistics see every process's.
        whole = self.hosts.gather_ragged if self.hosts is not None else (lambda x: x)
        if not (keep.any() if self.hosts is None else self.hosts.any(keep.any())):
            raise EpisodesLost("every episode of the step was lost to env crashes or timeouts")
        samples, index = flatten(batch, keep=keep)
        scored = self._score_all(params, samples)
        samples["old_logprobs"] = scored["logprobs"]
        if self.ref_params is not None:
            samples["ref_logprobs"] = self._score_all(self.ref_params, samples)["logprobs"]
        metrics: Dict[str, float] = {}
        reward_et = np.asarray(batch.reward, np.float32) if hasattr(batch, "reward") else None
        returns_e = np.asarray(stats.episode_return, np.float32)
        if self.cfg.kl_in_reward and self.ref_params is not None:
            penalty = learner.kl_reward_penalty(samples, self.cfg.kl_coef, self.cfg.kl_estimator)
            reward_et, returns_e = learner.penalised_rewards(reward_et, returns_e, index, penalty)
            metrics["kl_reward_penalty"] = float(whole(penalty).mean())
        if self.cfg.algorithm == "grpo":
            # Group baselines over the whole batch (a group may straddle processes): this process's episodes
            # are rows `offset`.. of it.
            offset = 0 if self.hosts is None else self.hosts.position * len(keep)
            samples["advantages"] = learner.grpo_step_advantages(whole(returns_e), index + [offset, 0],
                                                                 self.group_size, self.cfg.grpo_normalize_std,
                                                                 self.cfg.grpo_eps, present=whole(keep))
        else:
            values_et = np.zeros(np.asarray(batch.valid).shape, np.float32)
            values_et[index[:, 0], index[:, 1]] = scored["values"]
            adv, ret = learner.ppo_turn_advantages(reward_et, np.asarray(batch.valid), values_et, self.cfg.gamma,
                                                   self.cfg.lam)
            adv_s = adv[index[:, 0], index[:, 1]]
            samples["advantages"] = (adv_s - whole(adv_s).mean()) / (whole(adv_s).std() + 1e-6)
            samples["returns"] = ret[index[:, 0], index[:, 1]]
            samples["old_values"] = scored["values"]
            if self.cfg.value_clip is not None and self.cfg.value_clip_scale == "return_std":
                std = float(whole(samples["returns"]).std())
                clip = self.cfg.value_clip * (std if std > 0 else 1.0)
                samples["value_clip"] = np.full(len(index), clip, np.float32)
                metrics["vf_clip_range"] = clip
            metrics["vf_explained_var"] = learner.explained_variance(whole(samples["returns"]), whole(scored["values"]))
        return samples, metrics

    def _score_all(self, params, samples):
        """Old / reference log-probs (and values) of every sample, one training-sized micro-batch at a time."""
        if self.hosts is not None:
            return learner.score_process_samples(self._score, params, samples, self.micro_batch_size, self.hosts)
        outs: Dict[str, List[np.ndarray]] = {}
        s = len(samples["ids"])
        for mb in learner.minibatches({k: samples[k] for k in ("ids", "attn")}, self.micro_batch_size, None,
                                      shuffle=False):
            res = self._score(params, sharding.shard_batch(mb, self.train_sh))
            for k, v in res.items():
                outs.setdefault(k, []).append(np.asarray(v))
        return {k: np.concatenate(v)[:s] for k, v in outs.items()}


@gin.configurable(denylist=["mesh"])
def train(
    output_dir: str = gin.REQUIRED,
    model_path: str = gin.REQUIRED,
    domain: str = "sokoban",
    eval_domains: Sequence[str] = (),
    rollout_mode: str = "device",
    num_steps: int = 150,
    tasks_per_step: int = 16,
    group_size: int = 8,
    minibatch_size: int = 256,
    micro_batch_size: Optional[int] = None,
    max_response_tokens: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    thinking: bool = True,
    prompt_mode: str = "window",
    max_context_tokens: int = 4096,
    logits_chunk_size: Optional[int] = 128,
    invalid_penalty: float = -0.1,
    eval_every: int = 15,
    eval_episodes: int = 64,
    eval_temperature: float = 0.4,
    checkpoint_every: int = 15,
    keep_checkpoints: int = 3,
    sft_steps: int = 0,
    sft_levels: int = 256,
    sft_batch_size: int = 64,
    sft_data: str = "solver",
    sft_max_success: Optional[float] = None,
    sft_check_every: int = 10,
    sample_every: int = 10,
    init_from: Optional[str] = None,
    seed: int = 0,
    mesh=None,
) -> Dict[str, float]:
    """Run SFT warm-up (optional) then `num_steps` RL iterations; returns the last metrics.

    Every argument is a gin binding (`train.num_steps = 150`); the RL math lives in `RLConfig` (gin),
    the optimizer in `agentrl_jax.optim.make_optimizer` / `make_schedule`, the mesh in
    `agentrl_jax.sharding.make_mesh`, each domain in its registry class (`SokobanDomain`, `AlfWorldDomain`, ...,
    `agentrl_jax.domains`) and the envs it builds.

    domain: the training domain. eval_domains: more domains evaluated on their held-out sets every `eval_every`
    steps, logged as `eval/<domain>/...` (the training domain's own held-out metrics are `eval/...`).
    init_from: another run's output_dir (RL or SFT, `python -m agentrl_jax.sft`): the model starts from its latest
    checkpoint (fresh optimizer; the KL reference is that model). A run that has checkpoints of its own resumes
    from them instead.
    """
    _check_choice("domain", domain, domains.domain_names())
    for name in eval_domains:
        _check_choice("eval_domains", name, domains.domain_names())
    _check_choice("rollout_mode", rollout_mode, ROLLOUT_MODES)
    _check_choice("prompt_mode", prompt_mode, PROMPT_MODES)
    if int(num_steps) < 0:
        raise ValueError(f"train.num_steps must be >= 0 (0 = only evaluate the starting policy), got {num_steps}.")
    for name, v in (("tasks_per_step", tasks_per_step), ("group_size", group_size),
                    ("minibatch_size", minibatch_size), ("max_response_tokens", max_response_tokens)):
        if int(v) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {v}.")
    if sft_max_success is not None and not 0.0 <= sft_max_success <= 1.0:
        raise ValueError(f"train.sft_max_success must be in [0, 1] (points above a board-blind policy) or None, "
                         f"got {sft_max_success}.")
    if int(sft_check_every) < 1:
        raise ValueError(f"train.sft_check_every must be >= 1, got {sft_check_every}.")
    if logits_chunk_size is not None and int(logits_chunk_size) < 1:
        raise ValueError(f"train.logits_chunk_size must be >= 1 (response positions per logits slice) or None "
                         f"(all at once), got {logits_chunk_size}.")
    micro = micro_batch_size or minibatch_size
    if micro < 1 or minibatch_size % micro:
        raise ValueError(f"train.micro_batch_size={micro_batch_size} must divide train.minibatch_size={minibatch_size} "
                         "(gradients of the micro-batches are averaged into one update).")
    accum_steps = minibatch_size // micro
    rl_config = rl.RLConfig()
    if rl_config.algorithm == "grpo" and group_size < 2:
        raise ValueError("GRPO compares rollouts of the same task: set train.group_size >= 2.")
    distributed.initialize()
    mesh = mesh or sharding.make_mesh()
    os.makedirs(output_dir, exist_ok=True)

    tr = Trainer(output_dir=output_dir, model_path=model_path, domain=domain, rollout_mode=rollout_mode,
                 rl_config=rl_config, tasks_per_step=tasks_per_step, group_size=group_size,
                 minibatch_size=minibatch_size, max_response_tokens=max_response_tokens, temperature=temperature,
                 top_p=top_p, top_k=top_k, eval_temperature=eval_temperature, eval_episodes=eval_episodes,
                 invalid_penalty=invalid_penalty, seed=seed, mesh=mesh, thinking=thinking, prompt_mode=prompt_mode,
                 max_context_tokens=max_context_tokens, micro_batch_size=micro,
                 logits_chunk_size=logits_chunk_size, eval_domains=tuple(eval_domains))
    # Written once the domains exist, so their scoped settings (e.g. `sokoban/augment.*`) are in it.
    with open(os.path.join(output_dir, "operative_config.gin"), "w") as f:
        f.write(gin.operative_config_str())
    tx = optim.make_optimizer()
    rl_step, opt_state, o_sh = tr.make_update(
        functools.partial(learner.rl_loss, config=rl_config, prompt_len=tr.prompt_len,
                          temperature=temperature if temperature > 0 else 1.0, chunk_size=logits_chunk_size),
        tx, tr.params, accum_steps)
    tr.accum_steps = accum_steps

    checkpointer = ckpt.Checkpointer(os.path.join(output_dir, "checkpoints"), save_every=checkpoint_every,
                                     keep=keep_checkpoints, best_metric="eval/success_rate")
    ckpt.install_preemption_handler()
    key = jax.random.PRNGKey(seed)
    if tr.hosts is not None:  # several processes checkpoint global arrays only
        key = jax.device_put(key, tr.train_sh.replicated)
    start_step = 0
    params = tr.params
    ref_params = None
    abstract = tr.abstract_state(params, opt_state, o_sh, key, with_ref=rl_config.kl_coef > 0)
    restored = checkpointer.restore_latest(abstract)
    logger = MetricsLogger(os.path.join(output_dir, "tb"), total_steps=num_steps,
                           bar_keys=["episode/success_rate", "episode/return", "eval/success_rate", "loss/kl_loss"])
    logger.gin_config(gin.operative_config_str())
    last: Dict[str, float] = {}
    first_eval: Optional[Dict[str, float]] = None  # this process's first evaluation, for the end-of-run summary
    preempted_at: Optional[int] = None  # the step saved before a preemption stopped the run
    try:
        if restored is not None:
            start_step, state, extra = restored
            params, opt_state, key = tr.full_params(state["params"]), state["opt_state"], state["key"]
            ref_params = tr.full_params(state["ref_params"]) if "ref_params" in state else None
            logger.write(f"resumed from step {start_step} ({checkpointer.directory})")
            for done_step in range(1, start_step + 1):  # the distinct-level count covers the steps before
                tr.domain.train_tasks(done_step, tr.tasks_per_step)
        else:
            if init_from:
                params, source_step = tr.init_from(init_from, params)
                logger.write(f"starting from {init_from} (its checkpoint at step {source_step})")
            if sft_steps > 0:
                params = _sft_warmup(tr, params, sft_steps, sft_levels, sft_batch_size, max_response_tokens,
                                     logger, seed, sft_data, sft_max_success, sft_check_every)
            ref_params = params if rl_config.kl_coef > 0 else None
            base = tr.evaluate_all(params, 0)
            first_eval = base
            logger.scalars(0, tb_metrics(base))
            logger.write(f"step 0: initial policy {json.dumps({k: round(v, 4) for k, v in base.items()})}")
            last.update(base)
        tr.ref_params = ref_params
        for step in range(start_step + 1, num_steps + 1):
            before = {"params": tr.saved_params(params), "opt_state": opt_state, "key": key}
            if ref_params is not None:
                before["ref_params"] = tr.saved_params(ref_params)
            out = _rl_iteration(tr, rl_step, step, params, opt_state, key, rl_config)
            if out is None:  # preempted between minibatches: keep the state this step started from
                checkpointer.maybe_save(step - 1, before, extra_json={"step": step - 1}, force=True)
                logger.write(f"preemption requested during step {step}: saved step {step - 1}, exiting")
                preempted_at = step - 1
                break
            params, opt_state, metrics, batch, stats = out
            if eval_every and (step % eval_every == 0 or step == num_steps):
                metrics.update(tr.evaluate_all(params, step))
            logger.scalars(step, tb_metrics(metrics))
            if sample_every and step % sample_every == 0:
                logger.text(step, "samples/episode", _episode_text(tr.tokenizer, batch, stats, 0))
                returns = np.asarray(stats.episode_return)
                logger.histogram(step, "returns", returns if tr.hosts is None else tr.hosts.gather(returns))
            last = metrics
            state = dict(before, params=tr.saved_params(params), opt_state=opt_state)
            preempted = ckpt.preemption_requested(step)
            checkpointer.maybe_save(step, state, extra_json={"step": step}, metrics=metrics,
                                    force=preempted or step == num_steps)
            if preempted:
                logger.write(f"preemption requested: saved step {step}, exiting")
                preempted_at = step
                break
        if preempted_at is None and first_eval is not None and "eval/success_rate" in last:
            logger.write(run_summary(first_eval, last, output_dir))
    finally:
        checkpointer.close()
        logger.close()
        tr.close()  # stop every domain's env worker processes (and their JVMs)
    if preempted_at is not None:  # after the checkpoints are closed: the save is on disk
        raise ckpt.Preempted(preempted_at, output_dir)
    return last


def run_summary(first: Dict[str, float], last: Dict[str, float], output_dir: str) -> str:
    """The end-of-run lines: held-out success of the first and last evaluation with 95% Wilson intervals, and
    where the curves and checkpoints are."""
    from agentrl_jax.protocol import wilson_interval  # noqa: PLC0415

    def cell(m):
        n = int(m.get("eval/episodes", 0))
        rate = float(m["eval/success_rate"])
        if not n:
            return f"{100 * rate:.1f}%"
        lo, hi = wilson_interval(int(round(rate * n)), n)
        return f"{100 * rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] of {n} episodes"

    delta = 100 * (float(last["eval/success_rate"]) - float(first["eval/success_rate"]))
    return (f"held-out success: {cell(first)} at the first evaluation -> {cell(last)} at the last ({delta:+.1f} "
            f"points; 95% Wilson intervals)\ncurves: tensorboard --logdir {os.path.join(output_dir, 'tb')}\n"
            f"checkpoints: {os.path.join(output_dir, 'checkpoints')}")


class EpisodesLost(RuntimeError):
    """A step whose episodes were all lost (env crashes / timeouts): it gives no samples."""


def _preempted_mid_step() -> bool:
    """A preemption signal seen between minibatches. Single process only: with several processes every host
    must stop at the same point, which only the step-end sync point (`ckpt.preemption_requested(step)`) gives."""
    return jax.process_count() == 1 and ckpt.preemption_requested()


def _rl_iteration(tr: Trainer, rl_step, step, params, opt_state, key, cfg: rl.RLConfig):
    """One RL step; None when a preemption arrived before its last minibatch (the caller keeps the state the
    step started from: every random choice of a step derives from (seed, step), so redoing it is exact)."""
    t0 = time.perf_counter()
    tasks = tr.train_tasks(step)
    tr.timings.clear()
    batch, stats = tr.rollout(params, tasks, jax.random.fold_in(key, step), tr.gen_config)
    t1 = time.perf_counter()
    try:
        samples, batch_metrics = tr.prepare(params, batch, stats)
    except EpisodesLost as e:  # nothing to learn from: keep the parameters, log the step
        log.warning("step %d: %s; no update this step", step, e)
        samples, batch_metrics = {"ids": np.zeros((0, 1), np.int32)}, {}
        cfg = dataclasses.replace(cfg, ppo_epochs=0)
    # The minibatch order is a function of (seed, step), never of where a run was resumed.
    rng = np.random.default_rng([tr.seed, step])
    metrics_list = []
    local = tr.hosts is not None  # several processes: each feeds its own samples' share of every minibatch
    for epoch in range(cfg.ppo_epochs):
        for mb in (learner.process_minibatches(samples, tr.minibatch_size, rng, tr.hosts) if local else
                   learner.minibatches(samples, tr.minibatch_size, rng)):
            if _preempted_mid_step():
                return None
            params, opt_state, m = rl_step(params, opt_state, tr.shard(mb, tr.accum_steps, process_local=local),
                                           jax.random.fold_in(key, step * 1000 + epoch))
            metrics_list.append(m)
    jax.block_until_ready(params)  # the steps run asynchronously; time them to the end
    t2 = time.perf_counter()
    m = {k: float(np.mean([float(x[k]) for x in metrics_list])) for k in metrics_list[0]} if metrics_list else {}
    m.update(batch_metrics)
    m.update(tr.domain.global_metrics(tr.hosts))
    for d in tr.eval_domains.values():
        if d is not tr.domain:
            m.update(d.global_metrics(tr.hosts))
    m.update(_summarise(stats, batch, tr.hosts))
    if tr.domain.augmentation.active:
        m.update(_richness_metrics(batch, stats, tr.tokenizer))
    m[f"env/{tr.domain.name}/crashed_episodes"] = m["lost_episodes"]
    gen_tokens = _generated_tokens(batch)
    env_steps = float(np.asarray(batch.valid).sum())
    n_samples = float(len(samples["ids"]))
    if tr.hosts is not None:  # the whole job's counts
        gen_tokens, env_steps, n_samples = (tr.hosts.sum({"a": gen_tokens, "b": env_steps, "c": n_samples})[k]
                                            for k in "abc")
    m.update({
        "time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
        "time/generate_s": tr.timings.get("generate", t1 - t0), "time/env_s": tr.timings.get("env", 0.0),
        "throughput/generated_tokens_per_s": gen_tokens / max(t1 - t0, 1e-9),
        "throughput/env_steps_per_s": env_steps / max(t1 - t0, 1e-9),
        "samples": n_samples,
    })
    return params, opt_state, m, batch, stats


def _sft_warmup(tr: Trainer, params, steps, levels, batch_size, max_response_tokens, logger, seed, data="solver",
                max_success: Optional[float] = None, check_every: int = 10):
    """Supervised warm-up on the training domain's expert data (Sokoban: solver solutions); its own optimizer
    (gin scope `sft`).

    max_success: stop early and keep the last parameters whose greedy success on a separate validation level
    set (checked every `check_every` steps) is at most this many points above the best board-blind policy's
    (one action repeated; `_blind_success`), so RL starts from a policy of a chosen competence, e.g. 0.05: one
    that does not read the board yet. None = run all `steps`.
    """
    domain = tr.domain
    if max_success is not None and not hasattr(domain, "blind_success"):
        raise ValueError(f"train.sft_max_success needs a board-blind baseline, which the {domain.name} domain does "
                         "not define; set train.sft_max_success = None.")
    # The warm-up's tasks avoid the held-out and validation sets (by content for Sokoban), like the RL tasks.
    samples = domain.expert_samples(levels, seed + 10_000, max_response_tokens, data)
    # The expert samples are window samples [prompt P | answer N] in every prompt mode (a conversation
    # policy sees the same current-step text at the end of its buffer), so the loss uses their own layout.
    # The same optimizer (gin scope `sft`) and update as `python -m agentrl_jax.sft`.
    step_fn, opt_state, _ = sft_lib.make_sft_step(tr, sft_lib.sft_optimizer(steps), params, domain.max_prompt_tokens)
    rng = np.random.default_rng(seed)
    done = 0
    kept, kept_step = params, 0  # the last parameters known to be within max_success
    blind = domain.blind_success("sft_validation", tr.eval_episodes) if max_success is not None else 0.0
    while done < steps:
        for mb in learner.minibatches(samples, batch_size, rng):
            params, opt_state, m = step_fn(params, opt_state, tr.shard(mb), jax.random.PRNGKey(done))
            done += 1
            if done % 10 == 0 or done == steps:
                # Its own step axis (the SFT step), apart from RL's; the progress bar counts RL steps only.
                logger.scalars(done, {f"sft/{k}": v for k, v in m.items()}, progress=False)
                logger.write(f"sft step {done}/{steps}: nll {float(m['nll']):.4f}")
            if max_success is not None and (done % check_every == 0 or done == steps):
                success = tr.evaluate(params, 0, split="sft_validation")["eval/success_rate"]
                if success > blind + max_success:
                    logger.write(f"sft step {done}: validation greedy success {success:.3f} > board-blind "
                                 f"{blind:.3f} + sft_max_success {max_success}; keeping the parameters of step "
                                 f"{kept_step}")
                    return kept
                kept, kept_step = params, done
            if done >= steps:
                break
    return params


# ------------------------------------------------------------------------------------------------ CLI
# What a user's configuration causes (bad values, missing folders or files); our messages name the fix.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, ImportError)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m agentrl_jax.train", description=__doc__.splitlines()[0])
    ap.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later files override)")
    ap.add_argument("--gin_bindings", action="append", default=[], help="gin binding, e.g. 'train.num_steps = 5'")
    ap.add_argument("--gin_search_paths", default="", help="comma-separated folders to resolve gin includes")
    ap.add_argument("--verbose", action="store_true", help="show the traceback of a configuration error")
    return ap.parse_args(argv)


def repo_gin_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
    """Parse gin files and bindings, failing with the file's name (before any compilation)."""
    repo = os.path.dirname(repo_gin_dir())  # 'gin/experiments/x.gin' resolves from any working folder
    for path in [*search_paths, repo_gin_dir(), repo]:  # the repo root last: includes resolve in gin/ first
        if path and os.path.isdir(path):
            gin.add_config_file_search_path(os.path.abspath(path))
    # gin tries the working folder first and, when that misses, imports the include's first path component as a
    # Python package ('runs/grpo.gin' -> package `runs`), which breaks on unrelated folders of that name.
    # Our search paths go first so includes resolve as plain files.
    prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)
    if isinstance(prefixes, list) and "" in prefixes:
        prefixes.remove("")
        prefixes.append("")
    for f in gin_files:
        if not os.path.exists(f) and not any(os.path.exists(os.path.join(p, f))
                                             for p in [*search_paths, repo_gin_dir(), repo]):
            raise SystemExit(f"error: gin file {f!r} not found (looked in the working folder, {repo_gin_dir()}"
                             f"{', ' + ', '.join(search_paths) if search_paths else ''}).")
    try:
        # gin first looks for includes relative to the working folder and logs an ERROR for each miss before
        # finding them on the search path; silence that noise while parsing.
        _pylogging.disable(_pylogging.ERROR)
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings))
    except Exception as e:  # gin raises ValueError/KeyError/ImportError with the location in the message
        raise SystemExit(f"error: bad gin configuration in {', '.join(gin_files) or '(bindings)'}: "
                         f"{type(e).__name__}: {e}") from None
    finally:
        _pylogging.disable(_pylogging.NOTSET)


def run_entry_point(entry, argv: Optional[Sequence[str]], usage: str, shown=lambda k: True) -> None:
    """The CLI of a gin entry point (`train`, `sft`): parse the gin files and bindings, run `entry()`, print the
    shown metrics as JSON; a configuration error is one message that names the fix (--verbose: the traceback); a
    preempted run (saved, not finished) exits ckpt.EXIT_PREEMPTED."""
    _pylogging.basicConfig(level=_pylogging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.gin_file and not args.gin_bindings:
        raise SystemExit(f"error: pass --gin_file=gin/experiments/<experiment>.gin ({usage}).")
    parse_gin(args.gin_file, args.gin_bindings, [p for p in args.gin_search_paths.split(",") if p])
    try:
        metrics = entry()
    except ckpt.Preempted as e:
        # Saved but not finished: a status other than 0, so a scheduler (or the study runner) does not take the
        # run for done, and 75 (EX_TEMPFAIL), not 1, so it can tell a preemption from a failure.
        print(f"{e}", flush=True)
        raise SystemExit(ckpt.EXIT_PREEMPTED) from None
    except USER_ERRORS as e:
        # A bad value, a missing model folder or data path: one message that names the fix, no traceback.
        if args.verbose:
            raise
        raise SystemExit(f"error: {e}\n(run with --verbose for the traceback)") from None
    print(json.dumps({k: round(v, 4) for k, v in metrics.items() if shown(k)}))


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_entry_point(train, argv, "see README", shown=lambda k: k.startswith(("eval/", "success")))


if __name__ == "__main__":
    main()
