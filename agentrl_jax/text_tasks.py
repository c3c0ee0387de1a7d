"""Text environments (ALFWorld, ScienceWorld) for the trainer: the pool, the per-step prompt, the splits.

The trainer talks to them only through `envs.pool.EnvPool` and `envs.interface.TextStep`; this module picks
the env class, its train / eval split, and the study's prompt builder for each domain.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import gin

# Imported here (they are light) so their gin configurables exist before gin files are parsed.
import envs.alfworld  # noqa: F401
import envs.pool  # noqa: F401
import envs.sciworld  # noqa: F401
from agentrl_jax.rollout import PoolTask

TEXT_ENVS = ("alfworld", "sciworld")
# The study evaluates ALFWorld out of distribution (valid_unseen); ScienceWorld's dev split is held out.
DEFAULT_SPLITS = {"alfworld": ("train", "valid_unseen"), "sciworld": ("train", "dev")}
DEFAULT_WINDOW = {"alfworld": 0, "sciworld": 2}


def _factory(env_name: str, split: str, max_steps: int, options: dict):
    if env_name == "alfworld":
        from envs.alfworld import AlfWorldEnv  # noqa: PLC0415

        return functools.partial(AlfWorldEnv, split=split, max_steps=max_steps, **options)
    from envs.sciworld import SciWorldEnv  # noqa: PLC0415

    return functools.partial(SciWorldEnv, split=split, max_steps=max_steps, **options)


def prompt_builder(env_name: str, window: int, thinking: bool) -> Callable:
    """(TextStep, history, turn) -> prompt text, with the domain's study prompt."""
    if env_name == "alfworld":
        from envs.alfworld import build_prompt  # noqa: PLC0415

        return lambda ts, hist, turn: build_prompt(ts.task, hist, ts.observation, ts.admissible_actions, turn,
                                                   window=window, thinking=thinking)
    from envs.sciworld import build_prompt  # noqa: PLC0415

    return lambda ts, hist, turn: build_prompt(ts.task, hist, ts.observation,
                                               ts.info.get("admissible_objects", ()), turn, window=window,
                                               thinking=thinking, templates=ts.admissible_actions or None)


@gin.configurable(denylist=["env_name", "chat"])
class TextEnvSetup:
    """Pools for one text domain: `task(seeds, split)` gives a `PoolTask` for a batch of episodes.

    num_workers / envs_per_worker: pool size (the batch of episodes must fit: W*M >= episodes per call).
    max_steps: the study uses 50 for both. max_prompt_tokens: the prompt buffer (the study: 2048).
    window: history pairs in the prompt (None = the study's: 0 ALFWorld, 2 SciWorld).
    env_options: extra keyword arguments of the env class (task_types / task_names, ...).
    """

    def __init__(self, env_name: str, chat, num_workers: int = 2, envs_per_worker: int = 8, max_steps: int = 50,
                 max_prompt_tokens: int = 2048, window: Optional[int] = None,
                 splits: Optional[Tuple[str, str]] = None, env_options: Optional[dict] = None,
                 step_timeout_s: float = 60.0):
        if env_name not in TEXT_ENVS:
            raise ValueError(f"unknown text env {env_name!r}; use one of {TEXT_ENVS}")
        self.env_name, self.chat = env_name, chat
        self.max_steps, self.max_prompt_tokens = max_steps, max_prompt_tokens
        self.splits = dict(zip(("train", "eval"), splits or DEFAULT_SPLITS[env_name]))
        if self.splits["train"] == self.splits["eval"]:
            raise ValueError(f"TextEnvSetup.splits={tuple(self.splits.values())}: the held-out split must not be the "
                             f"training split (held-out means unseen games); use e.g. {DEFAULT_SPLITS[env_name]}.")
        self.window = DEFAULT_WINDOW[env_name] if window is None else window
        self.options = dict(env_options or {})
        self.num_workers, self.envs_per_worker, self.step_timeout_s = num_workers, envs_per_worker, step_timeout_s
        self._pools: Dict[str, object] = {}
        self.prompt_fn = prompt_builder(env_name, self.window, chat.thinking)

    def pool(self, split: str):
        if split not in self._pools:
            from envs.pool import EnvPool  # noqa: PLC0415

            factory = _factory(self.env_name, self.splits[split], self.max_steps, self.options)
            self._pools[split] = EnvPool(factory, num_workers=self.num_workers, envs_per_worker=self.envs_per_worker,
                                         step_timeout_s=self.step_timeout_s)
        return self._pools[split]

    def task(self, seeds: Sequence[int], split: str = "train") -> PoolTask:
        pool = self.pool(split)
        capacity = self.num_workers * self.envs_per_worker
        if len(seeds) > capacity:
            raise ValueError(f"{len(seeds)} episodes per batch but the {self.env_name} pool holds {capacity} envs; "
                             "raise TextEnvSetup.num_workers / envs_per_worker or lower the batch.")
        return PoolTask(pool, list(range(len(seeds))), [int(s) for s in seeds], self.chat, self.prompt_fn,
                        self.max_steps)

    def close(self) -> None:
        for p in self._pools.values():
            p.close()
        self._pools.clear()
