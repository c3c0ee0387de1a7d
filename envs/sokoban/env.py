"""A JAX-native Sokoban with a Jumanji-style pure API.

    env = Sokoban(dim=6, num_boxes=1, max_steps=15, reward="sparse")
    state, ts = env.reset(key)
    state, ts = env.step(state, action)      # action 0..3 = up, down, left, right

Both are pure functions of their inputs, use only `lax`-friendly control flow and work under `jit` and
`vmap`. Semantics:
- A move into a free cell moves the player; a move into a box pushes it when the cell behind the box is
  free (no wall, no box); otherwise nothing moves. Every call on a live episode counts as a step.
- An action id outside 0..3 is a no-op that still counts as a step (and pays the step penalty under
  `reward="shaped"`). The trainer adds its own invalid-format penalty on top.
- `done = success | truncated`; `truncated` when `max_steps` steps were taken without solving.
- Stepping a done state is a no-op: the state is returned unchanged with reward 0. No auto-reset.
- Rewards: "sparse" (the study's): 10 on the step that solves the level, else 0. "shaped" (RAGEN's):
  -0.1 per step, +1 per box pushed onto a goal, -1 per box pushed off a goal, +10 when solved.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from envs.sokoban.generator import SokobanGenerator
from envs.sokoban.level import MOVES, Level, cell_kinds, check_level, level_hash

REWARDS = ("sparse", "shaped")
SOLVED_REWARD = 10.0
STEP_PENALTY = -0.1
BOX_ON_REWARD = 1.0
BOX_OFF_PENALTY = -1.0


class State(NamedTuple):
    """Env state (a pytree). Board arrays are bool[dim, dim]; `player` is int32[2] (row, column)."""

    walls: jax.Array
    targets: jax.Array
    boxes: jax.Array
    player: jax.Array
    boxes_on_target: jax.Array  # int32: boxes currently on a goal
    step_count: jax.Array  # int32: steps taken this episode
    done: jax.Array
    success: jax.Array
    truncated: jax.Array
    key: jax.Array  # the episode's key (Jumanji style; stepping is deterministic)


class TimeStep(NamedTuple):
    """What `reset`/`step` return alongside the state.

    observation: int8[dim, dim] cell kinds (see `envs.sokoban.level`: 0 empty, 1 wall, 2 goal, 3 box,
    4 box on goal, 5 player, 6 player on goal). reward: float32 of the last transition.
    """

    observation: jax.Array
    reward: jax.Array
    done: jax.Array
    truncated: jax.Array
    success: jax.Array
    step_count: jax.Array


def level_from_state(state: State) -> Level:
    """Host `Level` (NumPy) of an unbatched state, e.g. for the solver or `Level.to_strings`."""
    return Level(*(np.asarray(x) for x in (state.walls, state.targets, state.boxes, state.player)))


@gin.configurable
class Sokoban:
    """Pure-functional Sokoban; see the module docstring for the exact semantics.

    Args:
      dim: grid side, walls included (>= 5).
      num_boxes: boxes (= goals) per level.
      max_steps: steps before truncation.
      reward: "sparse" (10 when solved) or "shaped" (RAGEN's per-step shaping).
      generator: a `SokobanGenerator` with the same dim/num_boxes; default builds one (gin-configurable).
    """

    num_actions = 4

    def __init__(
        self,
        dim: int = 6,
        num_boxes: int = 1,
        max_steps: int = 15,
        reward: str = "sparse",
        generator: Optional[SokobanGenerator] = None,
    ):
        if reward not in REWARDS:
            raise ValueError(f"Unknown reward {reward!r}; use one of {REWARDS}.")
        if int(max_steps) != max_steps or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}.")
        if generator is None:
            generator = SokobanGenerator(dim=dim, num_boxes=num_boxes)  # validates dim / num_boxes
        elif (generator.dim, generator.num_boxes) != (dim, num_boxes):
            raise ValueError(
                f"generator makes {generator.dim}x{generator.dim} levels with {generator.num_boxes} box(es) but the "
                f"env has dim={dim}, num_boxes={num_boxes}; make them agree."
            )
        self.dim = int(dim)
        self.num_boxes = int(num_boxes)
        self.max_steps = int(max_steps)
        self.reward = reward
        self.generator = generator
        self._flat_moves = (MOVES[:, 0] * self.dim + MOVES[:, 1]).astype(np.int32)

    def __repr__(self) -> str:
        return f"Sokoban(dim={self.dim}, num_boxes={self.num_boxes}, max_steps={self.max_steps}, reward={self.reward!r})"

    # -- reset ---------------------------------------------------------------------------------------------
    def _start(self, level: Level, key: jax.Array) -> tuple[State, TimeStep]:
        walls, targets, boxes = (jnp.asarray(x, bool) for x in level[:3])
        on = jnp.sum(boxes & targets, dtype=jnp.int32)
        solved = on == self.num_boxes
        state = State(
            walls=walls,
            targets=targets,
            boxes=boxes,
            player=jnp.asarray(level.player, jnp.int32),
            boxes_on_target=on,
            step_count=jnp.int32(0),
            done=solved,
            success=solved,
            truncated=jnp.asarray(False),
            key=key,
        )
        return state, self._timestep(state, jnp.float32(0.0))

    def reset(self, key: jax.Array) -> tuple[State, TimeStep]:
        """A fresh generated level for `key` (same key, same level)."""
        key, gen_key = jax.random.split(key)
        return self._start(self.generator(gen_key), key)

    def level(self, key: jax.Array) -> Level:
        """The level `reset(key)` starts from, without the rest of the state (jit/vmap-able)."""
        return self.generator(jax.random.split(key)[1])

    def level_hash(self, key: jax.Array) -> jax.Array:
        """uint32[2] content hash of the level `reset(key)` plays (see `envs.sokoban.level.level_hash`):
        two keys with equal hashes give the same level, whatever their key streams."""
        return level_hash(self.level(key))

    def reset_to_level(self, level: Level, key: Optional[jax.Array] = None) -> tuple[State, TimeStep]:
        """Start from a given level (hand-built, from `Level.from_strings`, or a solver test case).

        A concrete (NumPy/host) level is validated (shape, walls around, one free player cell, boxes ==
        goals == num_boxes); a traced one is taken as is.
        """
        if not any(isinstance(x, jax.core.Tracer) for x in level):
            level = check_level(level, dim=self.dim, num_boxes=self.num_boxes)
        if key is None:
            key = jax.random.PRNGKey(0)
        return self._start(level, key)

    # -- step ----------------------------------------------------------------------------------------------
    def step(self, state: State, action: Any) -> tuple[State, TimeStep]:
        """Apply one action (int id; 0 up, 1 down, 2 left, 3 right; anything else is a counted no-op)."""
        d, n = self.dim, self.dim * self.dim
        action = jnp.asarray(action, jnp.int32)
        valid = (action >= 0) & (action < 4)
        delta = jnp.asarray(self._flat_moves)[jnp.clip(action, 0, 3)]
        walls, targets, boxes = state.walls.reshape(n), state.targets.reshape(n), state.boxes.reshape(n)
        p = state.player[0] * d + state.player[1]
        # The player never stands on the border (walls all around), so p + delta is on the grid; the cell two
        # away is clipped, which only matters when the next cell is a border wall and blocks anyway.
        n1 = jnp.clip(p + delta, 0, n - 1)
        n2 = jnp.clip(p + 2 * delta, 0, n - 1)
        box1 = boxes[n1]
        free1 = ~walls[n1] & ~box1
        push = valid & box1 & ~walls[n2] & ~boxes[n2]
        live = ~state.done
        push = push & live
        move = live & valid & (free1 | push)

        # A push moves the box from n1 (a box) to n2 (free): flipping both cells is that move, in one
        # elementwise pass over the board.
        idx = jnp.arange(n)
        new_boxes = boxes ^ (push & ((idx == n1) | (idx == n2)))
        new_p = jnp.where(move, p + delta, p)
        box_on = (push & targets[n2]).astype(jnp.int32)
        box_off = (push & targets[n1]).astype(jnp.int32)
        on = state.boxes_on_target + box_on - box_off
        step_count = state.step_count + live.astype(jnp.int32)
        success = on == self.num_boxes
        truncated = ~success & (step_count >= self.max_steps)
        solved_now = live & success

        if self.reward == "sparse":
            reward = jnp.where(solved_now, SOLVED_REWARD, 0.0)
        else:
            reward = jnp.where(
                live,
                STEP_PENALTY + BOX_ON_REWARD * box_on + BOX_OFF_PENALTY * box_off + jnp.where(success, SOLVED_REWARD, 0.0),
                0.0,
            )
        new_state = State(
            walls=state.walls,
            targets=state.targets,
            boxes=new_boxes.reshape(d, d),
            player=jnp.stack([new_p // d, new_p % d]).astype(jnp.int32),
            boxes_on_target=on,
            step_count=step_count,
            done=jnp.where(live, success | truncated, state.done),
            success=jnp.where(live, success, state.success),
            truncated=jnp.where(live, truncated, state.truncated),
            key=state.key,
        )
        return new_state, self._timestep(new_state, reward.astype(jnp.float32))

    # -- views ---------------------------------------------------------------------------------------------
    @staticmethod
    def observation(state: State) -> jax.Array:
        """int8[dim, dim] cell kinds of `state`."""
        return cell_kinds(state)

    def _timestep(self, state: State, reward: jax.Array) -> TimeStep:
        return TimeStep(
            observation=cell_kinds(state),
            reward=reward,
            done=state.done,
            truncated=state.truncated,
            success=state.success,
            step_count=state.step_count,
        )

    def render_text(self, state: State, style: str = "coords") -> str:
        """The text the LLM reads for an unbatched state; see `envs.sokoban.render.render_text`."""
        from envs.sokoban.render import render_text  # noqa: PLC0415 (render imports env types)

        return render_text(state, style)
