"""Pooled text domains (ALFWorld, ScienceWorld): env worker pools per split, the study's prompt per domain.

A text domain plays episodes through `envs.pool.EnvPool` (W worker processes x M envs, started on a split's
first episode and closed by `close()`), one pool per split; episode seeds map to games / variations
deterministically inside the env, so a fixed held-out set is the seeds 0..n-1 of a held-out split.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional

import gin
import numpy as np

# Imported here (they are light) so their gin configurables exist before gin files are parsed.
import envs.alfworld  # noqa: F401
import envs.pool  # noqa: F401
import envs.sciworld  # noqa: F401
from agentrl_jax import augment as aug
from agentrl_jax.domains.base import TRAIN_STREAM, Domain, Tasks, register, stream_seeds
from agentrl_jax.rollout import PoolTask

POOL_COUNTERS = ("restarts", "timeouts", "crashes", "env_errors")


class TextDomain(Domain):
    """Shared by the pooled text domains. Subclasses give `env_factory(split)` and `prompt_fn`.

    num_workers / envs_per_worker: the pool of each split (W*M >= episodes per rollout call). max_steps: the
    step limit (the study: 50). max_prompt_tokens: the prompt buffer (the study: 2048). window: history pairs
    shown in the prompt (None = the study's for the domain, `default_window`). env_options: extra keyword
    arguments of the env class. step_timeout_s: a step that takes longer marks its episode lost and restarts
    the worker; reset_timeout_s is the same for a batched reset (games load then). Each subclass is its own gin
    configurable (`AlfWorldDomain.num_workers = 1`). Distractors: `<name>/augment.*` (`agentrl_jax.augment`).
    """

    default_window: int = 0

    def __init__(self, chat, seed: int, num_eval_tasks: int = 0, num_workers: int = 2, envs_per_worker: int = 8,
                 max_steps: int = 50, max_prompt_tokens: int = 2048, window: Optional[int] = None,
                 eval_split: Optional[str] = None, env_options: Optional[dict] = None, step_timeout_s: float = 60.0,
                 max_response_tokens: Optional[int] = None, reset_timeout_s: float = 120.0):
        del num_eval_tasks  # fixed held-out sets are the seeds 0..n-1 of a split
        window = self.default_window if window is None else window
        super().__init__(chat, seed, eval_split, max_response_tokens)
        if num_workers < 1 or envs_per_worker < 1:
            raise ValueError(f"{type(self).__name__}: num_workers and envs_per_worker must be >= 1, got "
                             f"{num_workers} x {envs_per_worker}.")
        self.max_turns = self.max_steps = int(max_steps)
        self.max_prompt_tokens, self.window = int(max_prompt_tokens), int(window)
        self.options = dict(env_options or {})
        self.num_workers, self.envs_per_worker, self.step_timeout_s = num_workers, envs_per_worker, step_timeout_s
        self.reset_timeout_s = reset_timeout_s
        self._pools: Dict[str, object] = {}
        self._closed_stats: Dict[str, int] = {k: 0 for k in POOL_COUNTERS}
        self._monitor = self.augmentation.active and aug.uses_monitor(self.augmentation.bank)
        if self.augmentation.active:
            self._check_augmentation_fits()

    # ------------------------------------------------------------------ per domain
    def env_factory(self, split: str) -> Callable:
        raise NotImplementedError

    def prompt_fn(self, ts, history, turn: int) -> str:
        raise NotImplementedError

    def _check_augmentation_fits(self) -> None:
        """Refuse, before any env starts, a distractor volume that alone would fill the prompt buffer (every
        prompt would be cut from the left, instructions first)."""
        a = self.augmentation
        bound = aug.text_distractor_bound(a.bank, a.epsilon, self.chat.encode_content)
        if bound >= self.max_prompt_tokens:
            raise ValueError(f"{self.name} distractors can add ~{bound} tokens per state at {self.name}/augment.epsilon"
                             f" = {a.epsilon}, more than {type(self).__name__}.max_prompt_tokens = "
                             f"{self.max_prompt_tokens}; lower {self.name}/augment.epsilon or raise "
                             f"{type(self).__name__}.max_prompt_tokens")

    def augment_context(self, ts, first_ts) -> dict:
        """The distractor bank's context for a state (`envs.distractors.CONTEXT_KEYS`), given the episode's reset
        step too; subclasses add what their bank needs (ALFWorld: the real entity ids)."""
        return {"other_states": list(aug.sokoban_monitor_states())} if self._monitor else {}

    # ------------------------------------------------------------------ Domain
    def train_tasks(self, step: int, n_tasks: int) -> Tasks:
        return Tasks(stream_seeds(self.seed, TRAIN_STREAM, step, n_tasks), None, self.train_split)

    def eval_tasks(self, n_tasks: int, split: Optional[str] = None) -> Tasks:
        # Seeds 0..n-1: consecutive seeds cycle through the split's games / task types evenly (see the adapters).
        return Tasks(np.arange(n_tasks), None, self.check_eval_split(split or self.eval_split))

    def batch_capacity(self) -> int:
        return self.num_workers * self.envs_per_worker

    def pool(self, split: str):
        if split not in self._pools:
            from envs.pool import EnvPool  # noqa: PLC0415

            self._pools[split] = EnvPool(self.env_factory(self.check_split(split)), num_workers=self.num_workers,
                                         envs_per_worker=self.envs_per_worker, step_timeout_s=self.step_timeout_s,
                                         reset_timeout_s=self.reset_timeout_s)
        return self._pools[split]

    def host_task(self, tasks: Tasks, key=None) -> PoolTask:
        capacity = self.batch_capacity()
        if tasks.num_episodes > capacity:
            raise ValueError(f"{tasks.num_episodes} episodes per batch but the {self.name} pool holds {capacity} envs; "
                             f"raise {type(self).__name__}.num_workers / envs_per_worker or lower the batch.")
        augmenter = None
        if key is not None and self.augments(tasks):
            augmenter = aug.TextAugmenter(self.augmentation, key, tasks.num_episodes, self.augment_context)
        return PoolTask(self.pool(tasks.split), list(range(tasks.num_episodes)), [int(s) for s in tasks.seeds],
                        self.chat, self.prompt_fn, self.max_steps, augmenter=augmenter)

    def expert_records(self, num_tasks: int, seed: int, data: str = "expert") -> List[dict]:
        """The env's expert (`expert_actions()`) on `sft_tasks(num_tasks, seed)`, played through a real
        `PoolTask` (`expert_data.text_expert_records`); only the episodes the env reports as won are kept."""
        from agentrl_jax import expert_data  # noqa: PLC0415

        return expert_data.text_expert_records(self, num_tasks, seed, data)

    def pool_stats(self) -> Dict[str, int]:
        """Restarts, timeouts, crashes and env errors summed over this domain's pools, closed ones included."""
        out = dict(self._closed_stats)
        for p in self._pools.values():
            for k in POOL_COUNTERS:
                out[k] += int(p.stats().get(k, 0))
        return out

    def metrics(self) -> Dict[str, float]:
        return {f"env/{self.name}/{k}": float(v) for k, v in self.pool_stats().items()}

    def close(self) -> None:
        for p in self._pools.values():
            for k in POOL_COUNTERS:
                self._closed_stats[k] += int(p.stats().get(k, 0))
            p.close()
        self._pools.clear()


@register
@gin.configurable(denylist=["chat", "seed", "num_eval_tasks"])
class AlfWorldDomain(TextDomain):
    """ALFWorld (TextWorld engine): train on `train`; held out: `valid_unseen` (out of distribution, the study's)
    and `valid_seen` (in distribution). The study shows no history (window 0)."""

    name = "alfworld"
    splits = ("valid_unseen", "valid_seen")
    gin_configurables = ("AlfWorldDomain", "AlfWorldEnv", "alfworld_factory")
    default_window = 0

    def env_factory(self, split: str) -> Callable:
        from envs.alfworld import AlfWorldEnv  # noqa: PLC0415

        return functools.partial(AlfWorldEnv, split=split, max_steps=self.max_steps, **self.options)

    @functools.lru_cache(maxsize=None)  # noqa: B019 (one domain object per run)
    def task_count(self, split: str) -> Optional[int]:
        from envs.alfworld import AlfWorldEnv  # noqa: PLC0415

        return len(AlfWorldEnv(split=self.check_split(split), max_steps=self.max_steps, **self.options).games)

    def augment_context(self, ts, first_ts) -> dict:
        """Real ids the distractors must avoid: the admissible commands and every entity of the game."""
        return {**super().augment_context(ts, first_ts), "admissible_actions": list(ts.admissible_actions),
                "entities": list(first_ts.info.get("entities") or ())}

    def expert_reason(self, step, action: str) -> str:
        from agentrl_jax.expert_data import alfworld_reason  # noqa: PLC0415

        return alfworld_reason(step.task, step.observation, action)

    def prompt_fn(self, ts, history, turn: int) -> str:
        from envs.alfworld import build_prompt  # noqa: PLC0415

        return build_prompt(ts.task, history, ts.observation, ts.admissible_actions, turn, window=self.window,
                            thinking=self.chat.thinking)


@register
@gin.configurable(denylist=["chat", "seed", "num_eval_tasks"])
class SciWorldDomain(TextDomain):
    """ScienceWorld (one JVM per env): train variations; held out: `dev` (in-training checks) and `test` (the
    fixed test variations per task the evaluator reports). The study shows the last 2 steps (window 2)."""

    name = "sciworld"
    splits = ("dev", "test")
    gin_configurables = ("SciWorldDomain", "SciWorldEnv")
    default_window = 2

    def env_factory(self, split: str) -> Callable:
        from envs.sciworld import SciWorldEnv  # noqa: PLC0415

        return functools.partial(SciWorldEnv, split=split, max_steps=self.max_steps, **self.options)

    def expert_reason(self, step, action: str) -> str:
        from agentrl_jax.expert_data import sciworld_reason  # noqa: PLC0415

        return sciworld_reason(step.task, step.observation, action, step.admissible_actions)

    def prompt_fn(self, ts, history, turn: int) -> str:
        from envs.sciworld import build_prompt  # noqa: PLC0415

        return build_prompt(ts.task, history, ts.observation, ts.info.get("admissible_objects", ()), turn,
                            window=self.window, thinking=self.chat.thinking, templates=ts.admissible_actions or None)
