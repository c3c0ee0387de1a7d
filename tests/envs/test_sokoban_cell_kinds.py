"""`cell_kinds` (the env's observation) against a per-cell reading of its documented precedence, on every
combination of wall / goal / box / player in a cell, in NumPy, in jax.numpy and under jit."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np

import envs.sokoban as sk
from envs.sokoban import level as lv


def reference_kind(wall: bool, goal: bool, box: bool, player: bool) -> int:
    if player:
        return lv.PLAYER_ON_GOAL if goal else lv.PLAYER
    if wall:
        return lv.WALL
    if box:
        return lv.BOX_ON_GOAL if goal else lv.BOX
    return lv.GOAL if goal else lv.EMPTY


def test_every_cell_combination_reads_by_precedence_in_int8():
    # One 4x4 board per player position; its 16 cells hold the 16 wall/goal/box combinations twice over
    # (8 combos x 2), so each combination is seen with and without the player on it.
    combos = list(itertools.product((False, True), repeat=3))  # (wall, goal, box)
    cells = [combos[i % 8] for i in range(16)]
    walls, goals, boxes = (np.array([c[k] for c in cells]).reshape(4, 4) for k in range(3))
    players = np.array([[r, c] for r in range(4) for c in range(4)] + [[-1, 7]], np.int32)  # last: off-board
    batch = sk.Level(*(np.broadcast_to(x, (len(players), 4, 4)) for x in (walls, goals, boxes)), players)
    want = np.array([[[reference_kind(walls[r, c], goals[r, c], boxes[r, c], (r, c) == tuple(p))
                       for c in range(4)] for r in range(4)] for p in players])
    for got in (sk.cell_kinds(batch, xp=np), sk.cell_kinds(sk.Level(*map(jnp.asarray, batch))),
                jax.jit(sk.cell_kinds)(batch)):
        assert got.dtype == np.int8
        np.testing.assert_array_equal(np.asarray(got), want)
