"""Multi-turn rollouts: observation → prompt ids → generation → parsed action → env step, until done.

Two drivers produce the same `StepBatch` (window mode, the study's: every step is its own state→action
training sample with a freshly built prompt):

* `sokoban_device_rollout`: the whole batch of JAX-Sokoban episodes is ONE compiled program (design
  principle 2): prompt assembly from pre-tokenized pieces, KV-cache generation, parsing the action from ids
  and the env step all run in a `lax.while_loop` over turns; no host round trip per turn. The loop exits as
  soon as every episode is done, and finished episodes stop costing generation: each turn the live rows are
  gathered into the smallest of a few static batch buckets (`device_batch_buckets`) and scattered back.
* `host_rollout`: a Python loop for text environments (an `envs.pool.EnvPool`, or the Sokoban env stepped
  from the host for comparison). Prompts are tokenized on the host, generation is the same jitted program,
  finished episodes are compacted away and the batch bucket's padding rows are inactive, so neither costs
  generation compute.

Answers that do not parse get `invalid_penalty` (the study: -0.1) and do not step the env; the turn still
counts toward the step limit. An answer cut off at max_new_tokens (no stop token) is malformed in both
drivers, even when it holds a complete action block.

Lost episodes: an episode cut short by the env machinery (a worker crash, a step timeout, an env error, a
failed reset; see `envs/pool.py`) says nothing about the policy, so `EpisodeStats.lost` marks it and the
learner leaves it out of the loss and the success rates (`learner.kept_episodes`, `learner.outcome_metrics`).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

import envs.sokoban as sk
from agentrl_jax import augment as aug
from agentrl_jax import generate as gen
from agentrl_jax.models.decoder import init_cache
from agentrl_jax.sokoban_prompt import SokobanPrompter


@struct.dataclass
class StepBatch:
    """One training sample per (episode, turn). Leading dims [E, T] (episodes, turns).

    prompt_ids/prompt_mask: int32 [E, T, P], right-aligned (left padding).
    response_ids/response_mask: int32 [E, T, N]; the mask covers exactly the generated tokens (stop included).
    logprobs: float32 [E, T, N], log-probabilities of the sampling distribution at the generated tokens.
    reward: float32 [E, T] env reward of the turn plus the invalid-answer penalty.
    valid: bool [E, T], the turn happened (episodes end at different turns).
    invalid: bool [E, T], the answer did not parse (env not stepped).
    prompt_truncated / response_truncated: bool [E, T], the prompt was cut from the left / no stop token.
    """

    prompt_ids: Any
    prompt_mask: Any
    response_ids: Any
    response_mask: Any
    logprobs: Any
    reward: Any
    valid: Any
    invalid: Any
    prompt_truncated: Any
    response_truncated: Any
    action: Any  # int32 [E, T] env action id (Sokoban) or -1; text envs keep -1


@struct.dataclass
class EpisodeStats:
    """Per-episode outcome [E]: return (sum of rewards), success, length (turns), truncated (did not succeed:
    hit the limit or was cut short), lost (cut short by a worker crash, step timeout, env error or failed
    reset, not by the policy: see `is_lost_step`; a lost episode never counts as a success)."""

    episode_return: Any
    success: Any
    length: Any
    truncated: Any
    lost: Any
    augmented: Any = None  # bool [E]: the episode's states got distractors (`agentrl_jax.augment`); None = never


NORMAL_TRUNCATION = "max_steps"  # the envs' own step limit (envs/alfworld.py, envs/sciworld.py, sokoban text env)


def is_lost_step(step) -> bool:
    """A `TextStep` that ends its episode for a reason other than the env's own step limit: the pool's
    "worker_crashed", "timeout", "env_error: ...", "needs_reset: ..." (and a failed reset, which comes back as
    one of these). A truncated step without a reason is the env's own limit (envs set none otherwise)."""
    reason = step.info.get("truncated_reason", NORMAL_TRUNCATION) if step.info else NORMAL_TRUNCATION
    return bool(step.truncated) and reason != NORMAL_TRUNCATION


def _task_flags(task, num_episodes: int, name: str = "lost") -> np.ndarray:
    """The task's per-episode `lost` (or `augmented`) flags; a task without the attribute has none set."""
    flags = np.asarray(getattr(task, name, np.zeros(num_episodes, bool)), bool)
    if flags.shape != (num_episodes,):
        raise ValueError(f"task.{name} must hold one bool per episode ({num_episodes}), got shape {flags.shape}")
    return flags


# ------------------------------------------------------------------------------------------- on device
def sokoban_device_rollout(graphdef, params, env: sk.Sokoban, prompter: SokobanPrompter,
                           config: gen.GenerationConfig, level_keys: jax.Array, key: jax.Array,
                           invalid_penalty: float = -0.1, max_turns: Optional[int] = None, augment: bool = False
                           ) -> Tuple[StepBatch, EpisodeStats]:
    """Play one batch of Sokoban episodes entirely on device (jit this; `graphdef`, `env`, `prompter`,
    `config`, `augment` static). level_keys [E]: one PRNG key per episode (equal keys = equal levels, for GRPO
    groups). augment: add the prompter's distractors (when it has any) to the states of the episodes whose coin
    comes up (`augment.episode_keys(key, E)`: a coin per episode, a fresh key per state); inside this program.
    """
    e = level_keys.shape[0]
    t_max = int(max_turns or env.max_steps)
    p, n = prompter.max_prompt_tokens, config.max_new_tokens
    states, _ = jax.vmap(env.reset)(level_keys)
    augment = bool(augment) and prompter.augmenting
    if augment:
        coin_keys, states_keys = aug.episode_keys(key, e)
        coin = jax.vmap(aug.augment_episode, in_axes=(0, None))(coin_keys, prompter.augment_p)
    else:
        coin = jnp.zeros((e,), bool)

    def buf(shape, dtype, fill=0):
        return jnp.full((e, t_max) + shape, fill, dtype)

    batch = StepBatch(
        prompt_ids=buf((p,), jnp.int32), prompt_mask=buf((p,), jnp.int32),
        response_ids=buf((n,), jnp.int32, config.pad_id), response_mask=buf((n,), jnp.int32),
        logprobs=buf((n,), jnp.float32), reward=buf((), jnp.float32), valid=buf((), bool),
        invalid=buf((), bool), prompt_truncated=buf((), bool), response_truncated=buf((), bool),
        action=buf((), jnp.int32, -1),
    )
    done0 = states.done
    buckets = device_batch_buckets(e)
    window = generation_window(p, prompter.worst_case_prompt_tokens())

    def cond(carry):
        t, _, _, _, done, _, _ = carry
        return (t < t_max) & ~jnp.all(done)

    def body(carry):
        t, state, prev_state, prev_action, done, batch, ret = carry
        active = ~done
        if augment:
            skeys = jax.vmap(aug.state_key, in_axes=(0, None))(states_keys, t)
            ids, mask, total = jax.vmap(prompter.device_prompt, in_axes=(0, 0, 0, None, 0, 0))(
                state, prev_state, prev_action, t, skeys, coin)
        else:
            plain = functools.partial(prompter.device_prompt, augment=False)
            ids, mask, total = jax.vmap(plain, in_axes=(0, 0, 0, None))(state, prev_state, prev_action, t)
        mask = mask * active[:, None].astype(jnp.int32)  # finished rows generate nothing
        # Generation reads only the buffer's last `window` slots: prompts are right-aligned and none can be
        # longer than the prompter's worst case, so the slots before it are padding in every row.
        res = _bucketed_generate(graphdef, params, ids[:, -window:], mask[:, -window:], active,
                                 jax.random.fold_in(key, t), config, buckets, window + n)
        action = jax.vmap(prompter.parse_response)(res.tokens, res.lengths, res.stopped)
        bad = active & (action < 0)
        new_state, ts = jax.vmap(env.step)(state, jnp.where(action < 0, 0, action))
        stepped = active & ~bad
        state_next = jax.tree.map(lambda a, b: jnp.where(_bcast(stepped, a), a, b), new_state, state)
        reward = jnp.where(stepped, ts.reward, 0.0) + jnp.where(bad, invalid_penalty, 0.0)
        done_next = done | (active & (state_next.done | (t + 1 >= t_max)))
        resp_mask = (jnp.arange(n)[None, :] < res.lengths[:, None]) & active[:, None]
        row = dict(
            prompt_ids=ids, prompt_mask=mask, response_ids=res.tokens, response_mask=resp_mask.astype(jnp.int32),
            logprobs=jnp.where(resp_mask, res.logprobs, 0.0), reward=reward, valid=active, invalid=bad,
            prompt_truncated=active & (total > p), response_truncated=active & ~res.stopped,
            action=jnp.where(active, action, -1),
        )
        batch = batch.replace(**{k: getattr(batch, k).at[:, t].set(v.astype(getattr(batch, k).dtype))
                                 for k, v in row.items()})
        prev_state = jax.tree.map(lambda a, b: jnp.where(_bcast(active, a), a, b), state, prev_state)
        prev_action = jnp.where(active, action, prev_action)
        return t + 1, state_next, prev_state, prev_action, done_next, batch, ret + reward

    init = (jnp.int32(0), states, states, jnp.full((e,), -1, jnp.int32), done0, batch, jnp.zeros((e,), jnp.float32))
    _, final, _, _, _, batch, ret = jax.lax.while_loop(cond, body, init)
    length = jnp.sum(batch.valid, axis=1).astype(jnp.int32)
    stats = EpisodeStats(episode_return=ret, success=final.success, length=length, truncated=~final.success,
                         lost=jnp.zeros((e,), bool), augmented=coin)  # the JAX env has no worker to lose
    return batch, stats


def generation_window(buffer: int, worst_case: int, multiple: int = 8) -> int:
    """Prompt slots the on-device episode prefills each turn: the static buffer, cut to the longest prompt the
    prompter can make (rounded up to `multiple`). The buffer is often far larger than any prompt (the study's
    Sokoban: 4096 slots, ~1,400 at most with SmolLM2's tokenizer), and every slot costs prefill and decode
    attention."""
    return int(min(buffer, -(-int(worst_case) // multiple) * multiple))


@gin.configurable(module="rollout")
def device_batch_buckets(batch: int, enabled: bool = True, min_bucket: int = 8, max_buckets: int = 4
                         ) -> Tuple[int, ...]:
    """Static generation batch sizes of the on-device episode (ascending, the last = `batch`).

    Each turn generates only for the live episodes, gathered into the smallest bucket that holds them, so
    finished episodes stop costing prefill and decode compute. Buckets halve from `batch` down to
    `min_bucket` (at most `max_buckets` of them); every bucket is one more compiled generation branch.
    enabled False (gin `rollout.device_batch_buckets.enabled = False`): one bucket, the whole batch.
    """
    if min_bucket < 1 or max_buckets < 1:
        raise ValueError("rollout.device_batch_buckets needs min_bucket >= 1 and max_buckets >= 1, got "
                         f"{min_bucket}, {max_buckets}")
    sizes = [int(batch)]
    while enabled and len(sizes) < max_buckets and sizes[-1] // 2 >= min_bucket:
        sizes.append(sizes[-1] // 2)
    return tuple(sorted(sizes))


def _bucketed_generate(graphdef, params, ids, mask, active, key, config: gen.GenerationConfig,
                       buckets: Tuple[int, ...], cache_length: int) -> gen.GenerationResult:
    """`generate_fn` over the batch [E, P], run on the live rows only: they are gathered (in order) into the
    smallest static bucket that holds them, generated for, and scattered back; finished rows come back as
    the unbucketed program leaves them (pad tokens, zero logprobs and lengths, not stopped). Greedy results
    equal the unbucketed program's; sampled ones are drawn from the same distribution with other draws
    (the sampler's random bits depend on the batch layout). The returned cache is not used (None)."""
    e, n = ids.shape[0], config.max_new_tokens
    if len(buckets) == 1:
        cache = _policy_cache(graphdef, params, e, cache_length)
        return gen.generate_fn(graphdef, params, ids, mask, cache, key, config, active=active)
    live = jnp.sum(active.astype(jnp.int32))
    order = jnp.argsort(~active, stable=True)  # live rows first, each group in batch order

    def branch(b):
        def run(_):
            rows = order[:b]
            row_active = jnp.arange(b) < live
            cache = _policy_cache(graphdef, params, b, cache_length)
            res = gen.generate_fn(graphdef, params, ids[rows], mask[rows], cache, key, config, active=row_active)
            # Rows past `live` are finished episodes: their results are the inactive defaults already.
            return (jnp.full((e, n), config.pad_id, jnp.int32).at[rows].set(res.tokens),
                    jnp.zeros((e, n), jnp.float32).at[rows].set(res.logprobs),
                    jnp.zeros((e,), jnp.int32).at[rows].set(res.lengths),
                    jnp.zeros((e,), bool).at[rows].set(res.stopped), res.steps)
        return run

    index = jnp.sum(jnp.asarray(buckets[:-1], jnp.int32) < live)  # the smallest bucket >= live
    tokens, logprobs, lengths, stopped, steps = jax.lax.switch(index, [branch(b) for b in buckets], None)
    return gen.GenerationResult(tokens=tokens, logprobs=logprobs, lengths=lengths, stopped=stopped, cache=None,
                                steps=steps)


def _bcast(flag: jax.Array, like: jax.Array) -> jax.Array:
    return flag.reshape(flag.shape + (1,) * (like.ndim - flag.ndim))


def _policy_cache(graphdef, params, batch: int, length: int):
    model = nnx.merge(graphdef, params)
    lm = getattr(model, "lm", model)
    return init_cache(lm.cfg, batch, length)


# ---------------------------------------------------------------------------------------------- on host
def _answer_text(tokenizer, generated: Sequence[int], stopped: bool) -> str:
    """The answer as text for the env / parser: the generated ids without the stop token that ended them."""
    return tokenizer.decode(generated[:-1] if stopped else generated)


class HostTask(Protocol):
    """A batch of episodes stepped from the host (see `PoolTask`, `SokobanHostTask`)."""

    num_episodes: int
    max_turns: int
    # Optional: lost [E] bool, episodes cut short by the env machinery (read after the reset and after each
    # step; an episode lost at reset is never played). A task without it never loses episodes.

    def prompt_ids(self, episode: int) -> List[int]:
        """The full chat-templated prompt ids for this episode's current turn."""

    def step(self, episodes: Sequence[int], answers: Sequence[str], stopped: Sequence[bool]
             ) -> List[Tuple[float, bool, bool, bool, int]]:
        """Apply the answers; per episode (reward, done, success, invalid, action id or -1). stopped[j]: the
        answer ended on a stop token; one cut off at max_new_tokens is invalid (`parse_action_text`)."""


def host_rollout(graphdef, params, task: HostTask, config: gen.GenerationConfig, key: jax.Array, tokenizer,
                 max_prompt_tokens: int, invalid_penalty: float = -0.1, batch_buckets: Sequence[int] = (),
                 timings: Optional[Dict[str, float]] = None, hosts=None) -> Tuple[StepBatch, EpisodeStats]:
    """Drive `task` turn by turn from Python. Only unfinished episodes are generated for (compacted into a
    batch bucket whose padding rows are inactive), so finished ones stop costing compute. Returns numpy
    `StepBatch` / `EpisodeStats`. timings (if given) accumulates "generate" and "env" seconds and
    "decode_steps" (decode-loop iterations, summed over turns).

    hosts (a multi-process run's `distributed.HostShare`): `task` is this process's share. The processes
    generate in lockstep, one global program per turn (each feeding its own rows, padded to one fixed size),
    until no process has an unfinished episode."""
    e, t_max = task.num_episodes, task.max_turns
    p, n = max_prompt_tokens, config.max_new_tokens
    out = {
        "prompt_ids": np.zeros((e, t_max, p), np.int32), "prompt_mask": np.zeros((e, t_max, p), np.int32),
        "response_ids": np.full((e, t_max, n), config.pad_id, np.int32),
        "response_mask": np.zeros((e, t_max, n), np.int32), "logprobs": np.zeros((e, t_max, n), np.float32),
        "reward": np.zeros((e, t_max), np.float32), "valid": np.zeros((e, t_max), bool),
        "invalid": np.zeros((e, t_max), bool), "prompt_truncated": np.zeros((e, t_max), bool),
        "response_truncated": np.zeros((e, t_max), bool), "action": np.full((e, t_max), -1, np.int32),
    }
    done = _task_flags(task, e).copy()  # lost at reset: nothing to play
    success = np.zeros(e, bool)
    timings = {} if timings is None else timings
    buckets = sorted(set(batch_buckets) | {e})
    for t in range(t_max):
        active = np.flatnonzero(~done)
        if (active.size == 0) if hosts is None else not hosts.any(active.size > 0):
            break
        t0 = time.perf_counter()
        rows = [task.prompt_ids(int(i)) for i in active]
        # Several processes: one shape for all (their programs are one collective program).
        bsz = next(b for b in buckets if b >= active.size) if hosts is None else hosts.padded(e)
        ids = np.full((bsz, p), config.pad_id, np.int32)
        mask = np.zeros((bsz, p), np.int32)
        for j, r in enumerate(rows):
            kept = r[-p:]
            ids[j, p - len(kept):], mask[j, p - len(kept):] = kept, 1
            out["prompt_truncated"][active[j], t] = len(r) > p
        row_active = np.arange(bsz) < active.size  # the bucket's padding rows must not keep the loop going
        # cache None: the prefill program makes it (no eager cache and no model merge per turn).
        if hosts is None:
            res = gen.generate_jit(graphdef, params, jnp.asarray(ids), jnp.asarray(mask), None,
                                   jax.random.fold_in(key, t), config, jnp.asarray(row_active), cache_length=p + n)
            tokens, lps = np.asarray(res.tokens), np.asarray(res.logprobs)
            lengths, stopped = np.asarray(res.lengths), np.asarray(res.stopped)
        else:
            g_ids, g_mask, g_active = hosts.to_global((ids, mask, row_active))
            res = gen.generate_jit(graphdef, params, g_ids, g_mask, None, jax.random.fold_in(key, t), config,
                                   g_active, cache_length=p + n)
            tokens, lps, lengths, stopped = hosts.to_local((res.tokens, res.logprobs, res.lengths, res.stopped))
        t1 = time.perf_counter()
        answers = [_answer_text(tokenizer, tokens[j, : lengths[j]], stopped[j]) for j in range(active.size)]
        results = task.step(active.tolist(), answers, stopped[: active.size].tolist())
        t2 = time.perf_counter()
        timings["generate"] = timings.get("generate", 0.0) + (t1 - t0)
        timings["env"] = timings.get("env", 0.0) + (t2 - t1)
        timings["decode_steps"] = timings.get("decode_steps", 0) + int(res.steps)
        for j, i in enumerate(active):
            reward, ep_done, ep_success, bad, action = results[j]
            out["prompt_ids"][i, t], out["prompt_mask"][i, t] = ids[j], mask[j]
            out["response_ids"][i, t] = tokens[j]
            out["response_mask"][i, t, : lengths[j]] = 1
            out["logprobs"][i, t] = np.where(out["response_mask"][i, t] == 1, lps[j], 0.0)
            out["reward"][i, t] = reward + (invalid_penalty if bad else 0.0)
            out["valid"][i, t], out["invalid"][i, t] = True, bad
            out["response_truncated"][i, t] = not stopped[j]
            out["action"][i, t] = action
            success[i] |= ep_success
            done[i] = ep_done or (t + 1 >= t_max)
    batch = StepBatch(**out)
    lost = _task_flags(task, e)
    success &= ~lost
    stats = EpisodeStats(episode_return=out["reward"].sum(1), success=success,
                         length=out["valid"].sum(1).astype(np.int32), truncated=~success, lost=lost,
                         augmented=_task_flags(task, e, "augmented"))
    return batch, stats


@functools.lru_cache(maxsize=8)
def _jitted_env_fns(env: sk.Sokoban):
    """Compiled batched reset and single step, cached per env so host tasks do not recompile each batch."""
    return jax.jit(lambda keys: jax.vmap(env.reset)(keys)[0]), jax.jit(env.step)


class SokobanHostTask:
    """JAX Sokoban episodes stepped from the host with the same prompt ids as the device path (for the
    device-vs-host benchmark and equality tests)."""

    def __init__(self, env: sk.Sokoban, prompter: SokobanPrompter, level_keys: jax.Array,
                 augment_key: Optional[jax.Array] = None):
        """augment_key: the rollout key when the episodes get the prompter's distractors (the same coins and
        state keys as `sokoban_device_rollout(..., key=augment_key, augment=True)`); None = plain prompts."""
        self.env, self.prompter = env, prompter
        self.num_episodes, self.max_turns = int(level_keys.shape[0]), env.max_steps
        self.augmented = np.zeros(self.num_episodes, bool)
        self._state_keys = None
        if augment_key is not None and prompter.augmenting:
            coin_keys, self._state_keys = aug.episode_keys(augment_key, self.num_episodes)
            self.augmented = np.asarray(jax.vmap(aug.augment_episode, in_axes=(0, None))(coin_keys,
                                                                                         prompter.augment_p))
        reset, self._step = _jitted_env_fns(env)
        states = jax.device_get(reset(level_keys))
        self.states = [jax.tree.map(lambda x, i=i: x[i], states) for i in range(self.num_episodes)]
        self.prev = list(self.states)
        self.prev_action = [-1] * self.num_episodes
        self.turn = [0] * self.num_episodes
        self.lost = np.zeros(self.num_episodes, bool)  # no worker to lose: JAX steps it in this process

    def prompt_ids(self, episode: int) -> List[int]:
        extra = {"augment": False}
        if self._state_keys is not None:
            extra = dict(augment_key=aug.state_key(self._state_keys[episode], self.turn[episode]),
                         augment=bool(self.augmented[episode]))
        return self.prompter.host_prompt_ids(self.states[episode], self.prev[episode], self.prev_action[episode],
                                             self.turn[episode], **extra)

    def conversation_content(self, episode: int) -> str:
        """Conversation mode: the full prompt (no history block) first, then only the new observation."""
        from agentrl_jax.sokoban_prompt import prompt_parts, step_intro  # noqa: PLC0415

        obs = sk.render_text(self.states[episode], self.prompter.render_style)
        t = self.turn[episode]
        if self._state_keys is not None and self.augmented[episode]:  # the text reference of the device splice
            from envs.distractors import augment_text  # noqa: PLC0415

            obs = augment_text(self.prompter.splice.bank, obs, aug.state_key(self._state_keys[episode], t),
                               self.prompter.augment_epsilon, dim=self.prompter.dim)
        prefix, suffix = prompt_parts(self.prompter.dim, self.prompter.thinking, self.prompter.prompt_style)
        return (prefix if t == 0 else "") + step_intro(t, self.prompter.prompt_style) + obs + suffix

    def step(self, episodes, answers, stopped):
        out = []
        for i, text, complete in zip(episodes, answers, stopped):
            action = self.prompter.host_parse(text, complete)
            self.prev[i], self.prev_action[i] = self.states[i], action
            self.turn[i] += 1
            if action < 0:
                out.append((0.0, False, False, True, -1))
                continue
            self.states[i], ts = self._step(self.states[i], action)
            out.append((float(ts.reward), bool(ts.done), bool(ts.success), False, action))
        return out


class PoolTask:
    """Episodes of pooled text environments (ALFWorld, ScienceWorld, ...) with an env-specific prompt builder.

    prompt_fn(step: TextStep, history: list[(obs, action)], turn: int) -> prompt text; the text becomes one
    user turn through `chat.encode_conversation`. Actions are parsed with `chat.parse_action_text`.
    lost[i] / lost_reason[i]: episode i was cut short by the pool (worker crash, timeout, env error, failed
    reset) and the pool's `truncated_reason`; `host_rollout` does not play an episode lost at reset.
    augmenter: distractors on the observations of augmented episodes (`augment.TextAugmenter`); `shown[i]` is
    the step as the policy reads it, and the history keeps what it read; the env only ever sees the actions.
    """

    def __init__(self, pool, env_ids: Sequence[int], seeds: Sequence[int], chat, prompt_fn, max_turns: int,
                 augmenter: Optional[aug.TextAugmenter] = None):
        from agentrl_jax.chat import parse_action_text  # noqa: PLC0415

        self._parse = parse_action_text
        self.pool, self.chat, self.prompt_fn, self.augmenter = pool, chat, prompt_fn, augmenter
        self.env_ids = list(env_ids)
        self.num_episodes, self.max_turns = len(self.env_ids), int(max_turns)
        self.augmented = np.zeros(self.num_episodes, bool) if augmenter is None else augmenter.augmented
        self.steps = pool.reset(self.env_ids, list(seeds))
        self.shown: List[Any] = list(self.steps)  # the steps as the policy reads them (distractors added)
        self.history: List[List[Tuple[str, str]]] = [[] for _ in self.env_ids]
        self.lost: List[bool] = [False] * self.num_episodes
        self.lost_reason: List[Optional[str]] = [None] * self.num_episodes
        for i, ts in enumerate(self.steps):
            self._note(i, ts)

    def _note(self, episode: int, ts) -> None:
        if is_lost_step(ts) and not self.lost[episode]:  # keep the first reason, not a later "needs_reset: ..."
            self.lost[episode], self.lost_reason[episode] = True, str(ts.info["truncated_reason"])
        if self.augmenter is not None and self.augmented[episode]:
            obs = self.augmenter.observation(episode, len(self.history[episode]), ts)
            ts = dataclasses.replace(ts, observation=obs)
        self.shown[episode] = ts

    def prompt_ids(self, episode: int) -> List[int]:
        text = self.prompt_fn(self.shown[episode], self.history[episode], len(self.history[episode]))
        return self.chat.encode_conversation([{"role": "user", "content": text}], add_generation_prompt=True)

    def conversation_content(self, episode: int) -> str:
        """Conversation mode: the full prompt first, then the new observation and admissible actions."""
        ts, turn = self.shown[episode], len(self.history[episode])
        if turn == 0:
            return self.prompt_fn(ts, [], 0)
        from envs.prompting import answer_format, format_admissible  # noqa: PLC0415

        actions = f"\nYour admissible actions are {format_admissible(ts.admissible_actions)}." if ts.admissible_actions else ""
        return f"Step {turn + 1}. Observation: {ts.observation}{actions}\n" + answer_format(self.chat.thinking)

    def step(self, episodes, answers, stopped):
        parsed = [self._parse(a, self.chat.thinking, stopped=bool(s)) for a, s in zip(answers, stopped)]
        todo = [(i, act) for i, (act, ok) in zip(episodes, parsed) if ok]
        results = dict(zip([i for i, _ in todo], self.pool.step([self.env_ids[i] for i, _ in todo],
                                                                [a for _, a in todo]))) if todo else {}
        out = []
        for i, (act, ok) in zip(episodes, parsed):
            if not ok:
                self.history[i].append((self.shown[i].observation, "invalid"))
                self._note(i, self.steps[i])  # the same state again, with a fresh distractor sample
                out.append((0.0, False, False, True, -1))
                continue
            ts = results[i]
            self.history[i].append((self.shown[i].observation, act))
            self.steps[i] = ts
            self._note(i, ts)
            out.append((float(ts.reward), bool(ts.done), bool(ts.success) and not self.lost[i], False, -1))
        return out


# ------------------------------------------------------------------------------------ conversation mode
@struct.dataclass
class ConversationBatch:
    """Conversation mode (RAGEN's): one growing token buffer per episode; one training sample per episode.

    ids/attn: int32 [E, L], the whole episode right-aligned: first prompt, then for each turn the policy's
    own generated ids (kept exactly as sampled) and the next user turn's ids appended after them.
    loss_mask: int32 [E, L], 1 exactly on the ids the policy generated. logprobs: float32 [E, L], sampling
    log-probabilities at those positions. reward/valid/invalid: [E, T] per turn, as in `StepBatch`.
    context_truncated: bool [E], the episode stopped because its real tokens (buffer + a full answer) would
    no longer fit `max_total_tokens`.
    """

    ids: Any
    attn: Any
    loss_mask: Any
    logprobs: Any
    reward: Any
    valid: Any
    invalid: Any
    response_truncated: Any
    context_truncated: Any


def _make_room(cache, active: np.ndarray, longest: int, n: int):
    """(cache, chunk width) with room for a chunk of `longest` real tokens and `n` answer tokens.

    All rows share the cache's write index, which moves by the padded chunk width and the longest answer, so
    it runs ahead of every row's real tokens. When it would pass the end: first the cache is compacted
    (padding and finished rows' slots freed; results unchanged), then the chunk is padded exactly instead of
    to a power of two (one more compile), and only then does the cache grow, which rows whose histories and
    new chunks differ in length can need (the longest history beside the longest chunk).
    """
    width = gen.bucket_length(longest, min_size=16)  # few distinct widths: few compiles
    if int(cache.index) + width + n > cache.max_length:
        cache = gen.compact_cache(cache, jnp.asarray(active))
    if int(cache.index) + width + n > cache.max_length:
        width = longest
    need = int(cache.index) + width + n
    if need > cache.max_length:
        cache = gen.grow_cache(cache, gen.bucket_length(need, multiple=64))
    return cache, width


def host_conversation_rollout(graphdef, params, task, chat, config: gen.GenerationConfig, key: jax.Array,
                              tokenizer, max_total_tokens: int, invalid_penalty: float = -0.1,
                              timings: Optional[Dict[str, float]] = None) -> Tuple[ConversationBatch, EpisodeStats]:
    """Multi-turn rollout that keeps one KV cache per episode across turns.

    Turn 0 prefills the chat-templated first message; every later turn appends only the new tokens
    (`chat.next_turn_ids`: end of the assistant turn, the new user turn, the generation prompt) to the cache
    and continues; history is never re-tokenized, because chat templates are not prefix-stable. `task` must
    offer `conversation_content(episode) -> str` (the next user message) and `step(...)` as `HostTask`.
    max_total_tokens: each episode's budget of real tokens; an episode ends context-truncated before a turn
    whose buffer plus a full answer (max_new_tokens) would exceed it, whatever the others do. The cache starts
    with that many slots (see `_make_room` for when it needs more).
    """
    e, t_max = task.num_episodes, task.max_turns
    n = config.max_new_tokens
    buffers: List[List[int]] = [chat.encode_conversation([{"role": "user", "content": task.conversation_content(i)}],
                                                         add_generation_prompt=True) for i in range(e)]
    loss: List[List[int]] = [[0] * len(b) for b in buffers]
    lps: List[List[float]] = [[0.0] * len(b) for b in buffers]
    reward = np.zeros((e, t_max), np.float32)
    valid = np.zeros((e, t_max), bool)
    invalid = np.zeros((e, t_max), bool)
    resp_trunc = np.zeros((e, t_max), bool)
    ctx_trunc = np.zeros(e, bool)
    done = _task_flags(task, e).copy()  # lost at reset: nothing to play
    success = np.zeros(e, bool)
    timings = {} if timings is None else timings
    cache = _policy_cache(graphdef, params, e, max_total_tokens)
    chunks = [list(b) for b in buffers]
    last_generated: List[List[int]] = [[] for _ in range(e)]
    for t in range(t_max):
        # Truncation counts real tokens only (the buffer holds the pending chunk already), never cache slots.
        over = ~done & (np.asarray([len(b) for b in buffers]) + n > max_total_tokens)
        ctx_trunc |= over
        done |= over
        active = ~done
        if not active.any():
            break
        cache, width = _make_room(cache, active, max(len(chunks[i]) for i in np.flatnonzero(active)), n)
        t0 = time.perf_counter()
        ids = np.full((e, width), config.pad_id, np.int32)
        mask = np.zeros((e, width), np.int32)
        for i in np.flatnonzero(active):
            ids[i, width - len(chunks[i]):], mask[i, width - len(chunks[i]):] = chunks[i], 1
        res = gen.generate_jit(graphdef, params, jnp.asarray(ids), jnp.asarray(mask), cache,
                               jax.random.fold_in(key, t), config, jnp.asarray(active))
        cache = res.cache
        tokens, lp = np.asarray(res.tokens), np.asarray(res.logprobs)
        lengths, stopped = np.asarray(res.lengths), np.asarray(res.stopped)
        t1 = time.perf_counter()
        idx = np.flatnonzero(active)
        answers = []
        for i in idx:
            out = tokens[i, : lengths[i]].tolist()
            last_generated[i] = out
            buffers[i] += out
            loss[i] += [1] * len(out)
            lps[i] += lp[i, : lengths[i]].tolist()
            answers.append(_answer_text(tokenizer, out, stopped[i]))
        results = task.step(idx.tolist(), answers, stopped[idx].tolist())
        t2 = time.perf_counter()
        timings["generate"] = timings.get("generate", 0.0) + (t1 - t0)
        timings["env"] = timings.get("env", 0.0) + (t2 - t1)
        for j, i in enumerate(idx):
            r, ep_done, ep_success, bad, _ = results[j]
            reward[i, t] = r + (invalid_penalty if bad else 0.0)
            valid[i, t], invalid[i, t], resp_trunc[i, t] = True, bad, not stopped[i]
            success[i] |= ep_success
            done[i] = ep_done or t + 1 >= t_max
            if not done[i]:
                chunks[i] = chat.next_turn_ids(last_generated[i], task.conversation_content(int(i)))
                buffers[i] += chunks[i]
                loss[i] += [0] * len(chunks[i])
                lps[i] += [0.0] * len(chunks[i])
    size = gen.bucket_length(max(len(b) for b in buffers), min_size=64)  # few distinct shapes: few compiles
    out = {k: np.zeros((e, size), dt) for k, dt in (("ids", np.int32), ("attn", np.int32), ("loss_mask", np.int32),
                                                    ("logprobs", np.float32))}
    out["ids"][:] = config.pad_id
    for i in range(e):
        k = len(buffers[i])
        out["ids"][i, size - k:], out["attn"][i, size - k:] = buffers[i], 1
        out["loss_mask"][i, size - k:], out["logprobs"][i, size - k:] = loss[i], lps[i]
    batch = ConversationBatch(**out, reward=reward, valid=valid, invalid=invalid, response_truncated=resp_trunc,
                              context_truncated=ctx_trunc)
    lost = _task_flags(task, e)
    success &= ~lost
    stats = EpisodeStats(episode_return=reward.sum(1), success=success, length=valid.sum(1).astype(np.int32),
                         truncated=~success, lost=lost, augmented=_task_flags(task, e, "augmented"))
    return batch, stats
