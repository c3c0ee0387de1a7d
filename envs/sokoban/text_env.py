"""Host text wrapper over the JAX Sokoban, for the host-driven rollout path and the env pool."""
from __future__ import annotations

from typing import Optional, Sequence

import gin
import jax
import numpy as np

from envs.interface import TextEnv, TextStep
from envs.sokoban.env import Sokoban, State, level_from_state
from envs.sokoban.prompt import ACTION_WORDS, parse_action
from envs.sokoban.render import render_text
from envs.sokoban.solver import solve

TASK = "Push every box onto a goal cell."


_COMPILED: dict = {}


def _compiled(env: Sokoban):
    """jitted (reset, step), shared by every wrapper whose env has the same configuration, so a worker
    holding many text envs compiles once."""
    gen = env.generator
    key = (type(env), env.dim, env.num_boxes, env.max_steps, env.reward, type(gen),
           tuple(sorted((k, v) for k, v in vars(gen).items() if isinstance(v, (int, float, str)))))
    if key not in _COMPILED:
        _COMPILED[key] = (jax.jit(env.reset), jax.jit(env.step))
    return _COMPILED[key]


@gin.configurable
class SokobanTextEnv(TextEnv):
    """Sokoban stepped with words ("up", "down", "left", "right"); observations are coords renders.

    reset(seed): seed → PRNGKey(seed) → a generated level (same seed, same level).
    step(text): an action word moves; any other text leaves the board as it is but still counts as a
    step of the episode (it reaches the env as the invalid id -1), the observation starts with a note that
    the action was invalid, and info["invalid"] is True. The trainer adds its own invalid-action penalty.
    """

    def __init__(
        self,
        dim: int = 6,
        num_boxes: int = 1,
        max_steps: int = 15,
        reward: str = "sparse",
        style: str = "coords",
        env: Optional[Sokoban] = None,
    ):
        self.env = env if env is not None else Sokoban(dim=dim, num_boxes=num_boxes, max_steps=max_steps, reward=reward)
        render_text(_dummy_level(self.env.dim), style)  # validates `style` early
        self.style = style
        self.max_steps = self.env.max_steps
        self._reset, self._step = _compiled(self.env)
        self._state: Optional[State] = None

    def _text_step(self, ts, observation: str, invalid: bool) -> TextStep:
        state = self._state
        return TextStep(
            task=TASK,
            observation=observation,
            admissible_actions=ACTION_WORDS,
            reward=float(ts.reward),
            done=bool(ts.done),
            success=bool(ts.success),
            truncated=bool(ts.truncated),
            info={
                "invalid": invalid,
                "step": int(ts.step_count),
                "boxes_on_target": int(state.boxes_on_target),
                **({"truncated_reason": "max_steps"} if bool(ts.truncated) else {}),
            },
        )

    def reset(self, seed: int) -> TextStep:
        self._state, ts = self._reset(jax.random.PRNGKey(int(seed)))
        return self._text_step(ts, self.render(), invalid=False)

    def step(self, action: str) -> TextStep:
        if self._state is None:
            raise RuntimeError("Call reset(seed) before step().")
        a = parse_action(action)
        self._state, ts = self._step(self._state, np.int32(a))
        obs = self.render()
        if a < 0:
            obs = f"Invalid action {str(action)!r}: use one of {', '.join(ACTION_WORDS)}. Nothing moved. " + obs
        return self._text_step(ts, obs, invalid=a < 0)

    def render(self) -> str:
        """The current board in this env's style."""
        return render_text(self._state, self.style)

    @property
    def state(self) -> Optional[State]:
        return self._state

    def expert_actions(self) -> Optional[Sequence[str]]:
        """Shortest solution from the current state (BFS solver), as action words."""
        if self._state is None:
            return None
        plan = solve(level_from_state(self._state))
        return None if plan is None else [ACTION_WORDS[a] for a in plan]


def _dummy_level(dim: int):
    from envs.sokoban.level import Level  # noqa: PLC0415

    walls = np.ones((dim, dim), bool)
    walls[1:-1, 1:-1] = False
    return Level(walls, np.zeros_like(walls), np.zeros_like(walls), np.array([1, 1], np.int32))
