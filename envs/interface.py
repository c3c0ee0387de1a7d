"""The one small interface between the trainer and text environments.

A text environment is a host-side object stepped with strings. The pool (`envs.pool`) batches many of
them across worker processes; the rollout (`agentrl_jax.rollout`) only ever sees `TextStep`s.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence


@dataclasses.dataclass(frozen=True)
class TextStep:
    """What an agent sees after `reset` or `step`.

    task: the goal in words ("put a clean mug in the coffee machine").
    observation: the environment's feedback for the last action (or the initial description).
    admissible_actions: the actions the env accepts now; empty when the env does not enumerate them.
    reward: reward of the last transition (0.0 after reset).
    done: the episode ended (success, failure, or truncation).
    success: the task was completed.
    truncated: the episode was cut short (step limit, crashed/hung worker); `info["truncated_reason"]` says why.
    info: env-specific extras (score, gold actions, ...); must be picklable.
    """

    task: str
    observation: str
    admissible_actions: tuple[str, ...] = ()
    reward: float = 0.0
    done: bool = False
    success: bool = False
    truncated: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class TextEnv(abc.ABC):
    """A single text environment. Implementations must be constructible inside a worker process."""

    max_steps: int = 50

    @abc.abstractmethod
    def reset(self, seed: int) -> TextStep:
        """Start a new episode; the same seed gives the same task."""

    @abc.abstractmethod
    def step(self, action: str) -> TextStep:
        """Apply one action. An action the env does not accept returns the env's own feedback, never raises."""

    def expert_actions(self) -> Sequence[str] | None:
        """A successful action sequence for the current episode (walkthrough / gold path), if known."""
        return None

    def close(self) -> None:
        """Release processes (JVMs, games)."""
