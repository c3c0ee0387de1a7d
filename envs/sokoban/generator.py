"""Procedural Sokoban levels in JAX: carve a room, put the boxes on their goals, then play backwards.

Every level is solvable by construction: the player starts from the solved position and only ever *pulls*
boxes (the time-reverse of a push), so replaying the walk forwards solves the level.

Steps for one attempt (all `lax`, so `jax.vmap(generator)(keys)` makes a batch with no Python loop):
1. room: walls everywhere, then a random walk through the interior stamps small floor shapes (single cell,
   plus, bars, 2×2), in the spirit of gym-sokoban's room topology; `room="open"` keeps the whole interior.
2. placement: `num_boxes` goals and the player on distinct random floor cells; boxes start on the goals.
3. reverse play: `num_reverse_steps` random moves; a move into a free cell with a box right behind the
   player pulls that box along with probability `pull_prob`.
4. acceptance: the level kept is the last one along the walk whose push lower bound (sum over boxes of the
   Manhattan distance to the nearest goal, a valid lower bound on the pushes of *any* solution) reaches
   `min_pushes`. Attempts without such a state are resampled with a per-level `lax.while_loop`.
"""
from __future__ import annotations

import functools
from typing import Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from envs.sokoban.level import MOVES, Level

# 3×3 floor stamps for the carving walk (row offset -1..1, column offset -1..1).
_STAMPS = np.array(
    [
        [[0, 0, 0], [0, 1, 0], [0, 0, 0]],  # single cell
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],  # plus
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],  # horizontal bar
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],  # vertical bar
        [[0, 0, 0], [0, 1, 1], [0, 1, 1]],  # 2x2 square
    ],
    dtype=bool,
)

ROOMS = ("carve", "open")


def push_lower_bound(level: Level) -> int:
    """Host: sum over boxes of the Manhattan distance to the nearest goal (a lower bound on pushes)."""
    boxes = np.argwhere(np.asarray(level.boxes))
    goals = np.argwhere(np.asarray(level.targets))
    if len(boxes) == 0:
        return 0
    return int(np.abs(boxes[:, None, :] - goals[None, :, :]).sum(-1).min(1).sum())


@gin.configurable
class SokobanGenerator:
    """Samples solvable levels from a PRNG key: `level = gen(key)` (jit/vmap-able, pure in `key`).

    Args:
      dim: grid side, walls included (>= 5).
      num_boxes: boxes (= goals) per level.
      num_reverse_steps: length of the backward walk (more steps, more scrambled levels).
      min_pushes: every level needs at least this many pushes (guaranteed via the Manhattan lower bound).
      room: "carve" (random-walk room topology) or "open" (the whole interior is floor).
      num_carve_steps: length of the carving walk; default 1.7 * 2 * dim, like gym-sokoban.
      turn_prob: chance the carving walk changes direction at each step.
      pull_prob: chance a possible pull is taken during the backward walk (the first `forced_pulls` moves
        always pull).
      forced_pulls: how many first backward moves keep the starting direction and pull (1 or 2). With 2 (the
        default) the first goal and the player's side are drawn where two pulls in a line fit, which narrows
        small rooms to few levels (an open 4x4 interior with 4 reverse steps: 80 distinct in 10,000; with 5 and
        one forced pull: 536); 1 needs room for one pull only (one-push levels: 4,703 distinct vs 3,154).
      walk_turn_prob: chance the backward walk draws a new direction at each step (else it keeps going).
      num_walks: backward walks tried in parallel per attempt (the first one reaching min_pushes is kept).
      max_attempts: resampling cap per level; past it the last sample is kept and `generate` reports
        `ok=False` (with sane parameters this does not happen; `generate` lets callers check).
    """

    def __init__(
        self,
        dim: int = 6,
        num_boxes: int = 1,
        num_reverse_steps: int = 30,
        min_pushes: int = 1,
        room: str = "carve",
        num_carve_steps: Optional[int] = None,
        turn_prob: float = 0.35,
        pull_prob: float = 0.9,
        walk_turn_prob: float = 0.5,
        forced_pulls: int = 2,
        num_walks: int = 1,
        max_attempts: int = 256,
    ):
        if int(dim) != dim or dim < 5:
            raise ValueError(f"dim must be an integer >= 5 (walls included); got {dim!r}.")
        interior = (dim - 2) ** 2
        if int(num_boxes) != num_boxes or num_boxes < 1:
            raise ValueError(f"num_boxes must be a positive integer; got {num_boxes!r}.")
        if num_boxes + 2 > interior:
            raise ValueError(
                f"{num_boxes} boxes cannot fit in a {dim}x{dim} room ({interior} interior cells, which must "
                f"hold the boxes, the player and room to move); use fewer boxes or a larger dim."
            )
        if int(num_reverse_steps) != num_reverse_steps or num_reverse_steps < 0:
            raise ValueError(f"num_reverse_steps must be a non-negative integer; got {num_reverse_steps!r}.")
        if int(min_pushes) != min_pushes or min_pushes < 0:
            raise ValueError(f"min_pushes must be a non-negative integer; got {min_pushes!r}.")
        if min_pushes > num_reverse_steps:
            raise ValueError(
                f"min_pushes={min_pushes} cannot be reached with num_reverse_steps={num_reverse_steps} "
                "(each backward step pulls at most one box one cell); raise num_reverse_steps."
            )
        # A box can never be pulled onto a wall-adjacent cell it did not start next to, so the distance
        # to its goal is below the interior's span; asking for more than that can never be met.
        reach = num_boxes * 2 * (dim - 3)
        if min_pushes > reach:
            raise ValueError(f"min_pushes={min_pushes} is impossible on a {dim}x{dim} grid with {num_boxes} box(es) (max {reach}).")
        if room not in ROOMS:
            raise ValueError(f"Unknown room {room!r}; use one of {ROOMS}.")
        if num_carve_steps is None:
            num_carve_steps = int(1.7 * 2 * dim)
        if int(num_carve_steps) != num_carve_steps or num_carve_steps < 1:
            raise ValueError(f"num_carve_steps must be a positive integer; got {num_carve_steps!r}.")
        for name, p in (("turn_prob", turn_prob), ("pull_prob", pull_prob), ("walk_turn_prob", walk_turn_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]; got {p!r}.")
        if min_pushes > 1 and pull_prob == 0.0:
            raise ValueError("pull_prob=0 moves a box only once, so min_pushes > 1 cannot be met; raise pull_prob.")
        # 0 would start the walk away from the box: pulls become rare and sampling ~50x slower.
        if forced_pulls not in (1, 2):
            raise ValueError(f"forced_pulls must be 1 or 2; got {forced_pulls!r}.")
        if int(num_walks) != num_walks or num_walks < 1:
            raise ValueError(f"num_walks must be a positive integer; got {num_walks!r}.")
        if int(max_attempts) != max_attempts or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive integer; got {max_attempts!r}.")
        self.dim = int(dim)
        self.num_boxes = int(num_boxes)
        self.num_reverse_steps = int(num_reverse_steps)
        self.min_pushes = int(min_pushes)
        self.room = room
        self.num_carve_steps = int(num_carve_steps)
        self.turn_prob = float(turn_prob)
        self.pull_prob = float(pull_prob)
        self.walk_turn_prob = float(walk_turn_prob)
        self.forced_pulls = int(forced_pulls)
        self.num_walks = int(num_walks)
        self.max_attempts = int(max_attempts)

        d = self.dim
        rr, cc = np.indices((d, d))
        self._rr, self._cc = rr, cc
        self._interior = (rr > 0) & (rr < d - 1) & (cc > 0) & (cc < d - 1)
        flat = np.stack([rr.ravel(), cc.ravel()], -1)
        self._manhattan = np.abs(flat[:, None, :] - flat[None, :, :]).sum(-1).astype(np.int32)  # [N, N]
        self._flat_moves = (MOVES[:, 0] * d + MOVES[:, 1]).astype(np.int32)

    # -- one attempt --------------------------------------------------------------------------------------
    def _carve(self, key: jax.Array) -> jax.Array:
        """bool[dim, dim] floor mask."""
        interior = jnp.asarray(self._interior)
        if self.room == "open":
            return interior
        d, t = self.dim, self.num_carve_steps
        k_start, k_dir0, k_dirs, k_turn, k_stamp = jax.random.split(key, 5)
        start = jax.random.randint(k_start, (2,), 1, d - 1)
        dir0 = jax.random.randint(k_dir0, (), 0, 4)
        new_dirs = jax.random.randint(k_dirs, (t,), 0, 4)
        turns = jax.random.uniform(k_turn, (t,)) < self.turn_prob
        stamps = jax.random.randint(k_stamp, (t,), 0, len(_STAMPS))
        moves = jnp.asarray(MOVES)

        # The walk itself is a cheap scalar scan; the stamping of all visited cells is one vectorised op.
        def body(carry, x):
            pos, direction = carry
            new_dir, turn = x
            direction = jnp.where(turn, new_dir, direction)
            return (jnp.clip(pos + moves[direction], 1, d - 2), direction), pos

        _, visited = jax.lax.scan(body, (start, dir0), (new_dirs, turns))  # [t, 2]
        dr = jnp.asarray(self._rr)[None] - visited[:, 0, None, None]  # [t, d, d]
        dc = jnp.asarray(self._cc)[None] - visited[:, 1, None, None]
        near = (jnp.abs(dr) <= 1) & (jnp.abs(dc) <= 1)
        mask = jnp.asarray(_STAMPS)[stamps[:, None, None], jnp.clip(dr + 1, 0, 2), jnp.clip(dc + 1, 0, 2)]
        return jnp.any(near & mask, axis=0) & interior

    def sample(self, key: jax.Array) -> tuple[Level, jax.Array]:
        """One attempt: (level, ok) where ok says the room fits the pieces and min_pushes was reached."""
        d, nb, n = self.dim, self.num_boxes, self.dim * self.dim
        k_room, k_place, k_side, k_walk = jax.random.split(key, 4)
        floor = self._carve(k_room).reshape(n)

        # Distinct random floor cells: the nb goals, then the player. With forced pulls, the first goal is
        # drawn among cells with two (for two forced pulls, better three) free cells in a row beside them,
        # where the pulls can start, when there are any.
        moves = jnp.asarray(self._flat_moves)
        idx = jnp.arange(n)
        beside = [jnp.clip(idx[:, None] + k * moves[None, :], 0, n - 1) for k in (1, 2, 3)]
        run2 = floor[beside[0]] & floor[beside[1]]
        pullable = floor & jnp.any(run2, axis=1)
        pullable2 = floor & jnp.any(run2 & floor[beside[2]], axis=1)  # room for two pulls in a line
        u = jax.random.uniform(k_place, (n,))
        scores = jnp.where(floor, u, -2.0)
        bonus = pullable.astype(jnp.float32)  # a float sum: bool + bool would be a logical or
        if self.forced_pulls >= 2:
            bonus = bonus + pullable2
        scores = scores.at[jnp.argmax(u + bonus - 2.0 * ~floor)].add(2.0)
        top, cells = jax.lax.top_k(scores, nb + 1)
        placed = top[-1] >= 0.0
        goals = cells[:nb]
        targets = jnp.any(idx[:, None] == goals[None, :], axis=1)
        # A solved position usually has the player right next to the box it pushed last, on the side it
        # pushed from: start there when some side of the first box has two free cells in a row (so the
        # first backward move can pull), else on the random floor cell drawn above.
        side1 = goals[0] + moves  # on the grid: goals are inside the walls
        side2 = jnp.clip(goals[0] + 2 * moves, 0, n - 1)
        side3 = jnp.clip(goals[0] + 3 * moves, 0, n - 1)
        usable = floor[side1] & ~targets[side1] & floor[side2] & ~targets[side2]
        usable2 = usable & floor[side3] & ~targets[side3]
        side_bonus = usable2 if self.forced_pulls >= 2 else 0.0
        pick = jnp.argmax(jnp.where(usable, jax.random.uniform(k_side, (4,)) + side_bonus, -1.0))
        player = jnp.where(jnp.any(usable), side1[pick], cells[nb])
        dir0 = jnp.where(jnp.any(usable), pick, 0)

        # Per-cell distance to the nearest goal; goals stay put, so the push bound is a gather per box.
        goal_dist = jnp.min(jnp.where(targets[None, :], jnp.asarray(self._manhattan), n), axis=1)
        # Several independent backward walks from the same start, in parallel; keep the first that reached
        # min_pushes (this raises the per-attempt acceptance far more cheaply than re-carving a room).
        walk = functools.partial(self._reverse_walk, floor=floor, goals=goals, goal_dist=goal_dist, player=player, dir0=dir0)
        ps, bs, founds = jax.vmap(walk)(jax.random.split(k_walk, self.num_walks))
        first = jnp.argmax(founds)
        best_p, best_boxes, found = ps[first], bs[first], founds[first]
        boxes = jnp.any(idx[:, None] == best_boxes[None, :], axis=1)
        level = Level(
            walls=(~floor).reshape(d, d),
            targets=targets.reshape(d, d),
            boxes=boxes.reshape(d, d),
            player=jnp.stack([best_p // d, best_p % d]).astype(jnp.int32),
        )
        return level, placed & found

    def _reverse_walk(self, key, floor, goals, goal_dist, player, dir0):
        """Random backward play from the solved position; boxes are tracked as flat positions int32[nb].

        The walk keeps its direction (so repeated pulls carry a box along a line) until it is blocked or
        a turn is drawn. Returns the last position whose push bound reached min_pushes, and whether any did.
        """
        t = self.num_reverse_steps
        k_dirs, k_turns, k_pull = jax.random.split(key, 3)
        new_dirs = jax.random.randint(k_dirs, (t,), 0, 4)
        # The first `forced_pulls` moves keep dir0 and pull: from the starting side they drag the box up to
        # that many cells along a line (a blocked second move just turns the walk).
        f = self.forced_pulls
        turns = (jax.random.uniform(k_turns, (t,)) < self.walk_turn_prob).at[:f].set(False)
        pulls = (jax.random.uniform(k_pull, (t,)) < self.pull_prob).at[:f].set(True)
        moves = jnp.asarray(self._flat_moves)
        min_pushes = self.min_pushes

        def body(carry, x):
            p, boxes, direction, blocked, best_p, best_boxes, found = carry
            new_dir, turn, pull = x
            direction = jnp.where(turn | blocked, new_dir, direction)
            step = moves[direction]
            nxt, behind = p + step, p - step  # the player is inside the walls, so both stay on the grid
            can_move = floor[nxt] & ~jnp.any(boxes == nxt)
            do_pull = can_move & pull
            boxes = jnp.where(do_pull & (boxes == behind), p, boxes)
            p = jnp.where(can_move, nxt, p)
            good = jnp.sum(goal_dist[boxes]) >= min_pushes
            best_p = jnp.where(good, p, best_p)
            best_boxes = jnp.where(good, boxes, best_boxes)
            return (p, boxes, direction, ~can_move, best_p, best_boxes, found | good), None

        carry0 = (player, goals, dir0, jnp.asarray(False), player, goals, jnp.asarray(min_pushes <= 0))
        (_, _, _, _, best_p, best_boxes, found), _ = jax.lax.scan(body, carry0, (new_dirs, turns, pulls))
        return best_p, best_boxes, found

    # -- rejection sampling --------------------------------------------------------------------------------
    def generate(self, key: jax.Array) -> tuple[Level, jax.Array]:
        """Resample (per level, `lax.while_loop`) until an attempt is accepted; returns (level, ok)."""
        key, sub = jax.random.split(key)
        level, ok = self.sample(sub)

        def cond(c):
            _, _, ok, attempt = c
            return (~ok) & (attempt < self.max_attempts)

        def body(c):
            key, _, _, attempt = c
            key, sub = jax.random.split(key)
            level, ok = self.sample(sub)
            return key, level, ok, attempt + 1

        _, level, ok, _ = jax.lax.while_loop(cond, body, (key, level, ok, jnp.int32(1)))
        return level, ok

    def __call__(self, key: jax.Array) -> Level:
        return self.generate(key)[0]
