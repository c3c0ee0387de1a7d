"""Optimal Sokoban solver: breadth-first search over (player, boxes) states in plain Python/NumPy.

BFS over single moves, so the returned plan is the shortest in env steps (the study's planning-complexity
measure counts steps). Pruning: a box on a "dead" cell (a cell from which no goal can be reached even with
the rest of the board empty, found by pulling a lone box backwards from every goal) can never be solved,
so such states are skipped. This never removes a solvable state, so optimality is kept.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

import numpy as np

from envs.sokoban.level import MOVES, Level, to_numpy


def _as_level(level_or_state) -> Level:
    if isinstance(level_or_state, Level):
        return to_numpy(level_or_state)
    return Level(*(np.asarray(getattr(level_or_state, f)) for f in ("walls", "targets", "boxes", "player")))


def live_cells(walls: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """bool[n] flat: cells from which a lone box can still be pushed onto some goal."""
    dim = walls.shape[0]
    free = ~walls.reshape(-1)
    steps = MOVES[:, 0] * dim + MOVES[:, 1]
    live = targets.reshape(-1).copy()
    queue = deque(np.flatnonzero(live).tolist())
    while queue:
        b = queue.popleft()
        for s in steps:
            # Pull the box from b to b+s: the player stands at b+s and steps back to b+2s.
            a, a2 = b + s, b + 2 * s
            if 0 <= a2 < free.size and free[a] and free[a2] and not live[a]:
                live[a] = True
                queue.append(a)
    return live


def solve(level, max_states: int = 5_000_000) -> Optional[list[int]]:
    """Shortest action-id sequence (0 up, 1 down, 2 left, 3 right) that solves `level`, [] if it is
    already solved, None if it is unsolvable (or `max_states` states were explored without a solution).

    `level`: a `Level` (NumPy or JAX arrays) or an unbatched env `State`. The board must be walled in.
    """
    lv = _as_level(level)
    if lv.walls.ndim != 2:
        raise ValueError(f"solve expects one unbatched level; got walls of shape {lv.walls.shape}.")
    dim = lv.walls.shape[0]
    free = ~lv.walls.reshape(-1)
    goals = frozenset(np.flatnonzero(lv.targets.reshape(-1)).tolist())
    live = live_cells(lv.walls, lv.targets)
    steps = [int(s) for s in MOVES[:, 0] * dim + MOVES[:, 1]]
    n = free.size

    start = (int(lv.player[0]) * dim + int(lv.player[1]), tuple(sorted(np.flatnonzero(lv.boxes.reshape(-1)).tolist())))
    if set(start[1]) <= goals:
        return []
    parent: dict = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        player, boxes = state
        box_set = set(boxes)
        for a, s in enumerate(steps):
            nxt = player + s
            if not (0 <= nxt < n) or not free[nxt]:
                continue
            if nxt in box_set:
                beyond = nxt + s
                if not (0 <= beyond < n) or not free[beyond] or beyond in box_set or not live[beyond]:
                    continue
                new_boxes = tuple(sorted(beyond if b == nxt else b for b in boxes))
            else:
                new_boxes = boxes
            child = (nxt, new_boxes)
            if child in parent:
                continue
            parent[child] = (state, a)
            if new_boxes is not boxes and set(new_boxes) <= goals:
                return _unwind(parent, child)
            if len(parent) > max_states:
                return None
            queue.append(child)
    return None


def _unwind(parent: dict, state) -> list[int]:
    plan = []
    while parent[state] is not None:
        state, a = parent[state]
        plan.append(a)
    return plan[::-1]


def count_pushes(level, actions) -> int:
    """How many of `actions` push a box when replayed on `level` (host; invalid moves are skipped)."""
    lv = _as_level(level)
    dim = lv.walls.shape[0]
    walls = lv.walls.reshape(-1)
    boxes = set(np.flatnonzero(lv.boxes.reshape(-1)).tolist())
    p = int(lv.player[0]) * dim + int(lv.player[1])
    pushes = 0
    for a in actions:
        s = int(MOVES[a, 0] * dim + MOVES[a, 1])
        nxt = p + s
        if walls[nxt]:
            continue
        if nxt in boxes:
            if walls[nxt + s] or (nxt + s) in boxes:
                continue
            boxes.remove(nxt)
            boxes.add(nxt + s)
            pushes += 1
        p = nxt
    return pushes
