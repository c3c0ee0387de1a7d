"""Sokoban state → text (host) and → token ids (inside jit), both built from the same per-cell pieces.

Styles:
- "coords" (the study's): the non-empty cells in row-major order, separated by one space:
  "Wall at (0, 0) Wall at (0, 1) ... Goal at (2, 1) ... Box at (3, 3) ... Player at (4, 3) ...".
  Empty floor is not listed. A box standing on a goal reads "Box on goal at (r, c)"; the player standing
  on a goal reads "Player on goal at (r, c)" (the goal is not listed separately then).
- "grid" (RAGEN's): one row per line, one symbol per cell, no separators: `#` wall, `_` floor,
  `O` goal, `X` box, `√` box on goal, `P` player, `S` player on goal.

Token path: `TokenRenderer(encode, dim, style)` encodes every (cell, kind) piece once on the host. A coords
piece carries its leading space, except for the first listed cell which has none (so a piece never
depends on its neighbours); a grid piece is the cell symbol plus "\\n" at the end of every row but the
last. Because a byte-level tokenizer decodes a concatenation of ids to the concatenation of the texts,
`decode(ids[:length]) == render_text(state, style)`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from envs.sokoban.level import (
    BOX,
    BOX_ON_GOAL,
    EMPTY,
    GOAL,
    NUM_KINDS,
    PLAYER,
    PLAYER_ON_GOAL,
    WALL,
    Level,
    cell_kinds,
)

STYLES = ("coords", "grid")
COORD_NAMES = {
    WALL: "Wall",
    GOAL: "Goal",
    BOX: "Box",
    BOX_ON_GOAL: "Box on goal",
    PLAYER: "Player",
    PLAYER_ON_GOAL: "Player on goal",
}
GRID_SYMBOLS = {EMPTY: "_", WALL: "#", GOAL: "O", BOX: "X", BOX_ON_GOAL: "√", PLAYER: "P", PLAYER_ON_GOAL: "S"}


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"Unknown render style {style!r}; use one of {STYLES}.")


def piece(style: str, dim: int, cell: int, kind: int, first: bool) -> str:
    """The text one cell contributes. `first`: this is the first listed cell (coords: no leading space)."""
    r, c = divmod(cell, dim)
    if style == "coords":
        if kind == EMPTY:
            return ""
        return ("" if first else " ") + f"{COORD_NAMES[kind]} at ({r}, {c})"
    return GRID_SYMBOLS[kind] + ("\n" if c == dim - 1 and r < dim - 1 else "")


def _host_kinds(state) -> np.ndarray:
    """Flat int kinds of an unbatched state/level (anything with walls/targets/boxes/player)."""
    walls = np.asarray(state.walls)
    if walls.ndim != 2:
        raise ValueError(f"render expects one unbatched state; got walls of shape {walls.shape} (index the batch first).")
    lv = Level(walls, np.asarray(state.targets), np.asarray(state.boxes), np.asarray(state.player))
    return cell_kinds(lv, xp=np).reshape(-1)


def _pieces_of(kinds: np.ndarray, style: str, dim: int) -> list[tuple[int, int, bool]]:
    """(cell, kind, first) for every cell, in row-major order."""
    out, seen = [], False
    for cell, k in enumerate(int(x) for x in kinds):
        out.append((cell, k, style == "coords" and not seen and k != EMPTY))
        seen = seen or k != EMPTY
    return out


def render_text(state, style: str = "coords") -> str:
    """Text of one unbatched state (or `Level`) in the given style (see the module docstring)."""
    _check_style(style)
    kinds = _host_kinds(state)
    dim = int(np.asarray(state.walls).shape[-1])
    return "".join(piece(style, dim, cell, k, first) for cell, k, first in _pieces_of(kinds, style, dim))


class TokenRenderer:
    """Jittable state → token ids, from pieces pre-tokenized with `encode`.

    `renderer(state) -> (ids int32[max_len], length int32)`: the ids of `render_text(state, style)`,
    left-aligned and padded with `pad_id`; works under jit and vmap (batched states give batched ids).
    `renderer.host_ids(state) -> list[int]` builds the same ids in Python from the same pieces.
    """

    def __init__(self, encode: Callable[[str], Sequence[int]], dim: int, style: str = "coords", pad_id: int = 0):
        _check_style(style)
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer; got {dim!r}.")
        self.dim, self.style, self.pad_id = int(dim), style, int(pad_id)
        n = self.dim * self.dim
        # pieces[cell][kind][first] -> ids
        self._pieces = [
            [[list(encode(piece(style, self.dim, cell, k, bool(f)))) if piece(style, self.dim, cell, k, bool(f)) else []
              for f in (0, 1)] for k in range(NUM_KINDS)]
            for cell in range(n)
        ]
        for cell in range(n):
            for k in range(NUM_KINDS):
                for f in (0, 1):
                    text = piece(style, self.dim, cell, k, bool(f))
                    if text and not self._pieces[cell][k][f]:
                        raise ValueError(f"encode({text!r}) returned no ids; the tokenizer cannot render this piece.")
        width = max(len(ids) for cell in self._pieces for kind in cell for ids in kind)
        table = np.full((n, NUM_KINDS, 2, width), self.pad_id, np.int32)
        lens = np.zeros((n, NUM_KINDS, 2), np.int32)
        for cell in range(n):
            for k in range(NUM_KINDS):
                for f in (0, 1):
                    ids = self._pieces[cell][k][f]
                    table[cell, k, f, : len(ids)] = ids
                    lens[cell, k, f] = len(ids)
        self._table, self._lens, self._width = table, lens, width
        # Longest possible render: every cell at its longest piece.
        self.max_len = int(lens.max(axis=(1, 2)).sum())

    def _first_flags(self, kinds):
        """bool[n]: which cell is the first listed one (coords style only)."""
        if self.style != "coords":
            return jnp.zeros(kinds.shape, bool)
        nonempty = kinds != EMPTY
        first = jnp.argmax(nonempty)
        return (jnp.arange(kinds.shape[0]) == first) & nonempty

    def _render_one(self, kinds):
        n, width = kinds.shape[0], self._width
        flags = self._first_flags(kinds).astype(jnp.int32)
        cells = jnp.arange(n)
        lens = jnp.asarray(self._lens)[cells, kinds, flags]  # [n]
        toks = jnp.asarray(self._table)[cells, kinds, flags]  # [n, width]
        starts = jnp.cumsum(lens) - lens
        j = jnp.arange(width)
        pos = jnp.where(j[None, :] < lens[:, None], starts[:, None] + j[None, :], self.max_len)  # pads dropped
        ids = jnp.full((self.max_len,), self.pad_id, jnp.int32).at[pos.reshape(-1)].set(toks.reshape(-1), mode="drop")
        return ids, jnp.sum(lens).astype(jnp.int32)

    def __call__(self, state):
        """(ids int32[..., max_len], length int32[...]) for a state (or batch of states / Levels)."""
        kinds = cell_kinds(state).astype(jnp.int32)
        if kinds.shape[-2:] != (self.dim, self.dim):
            raise ValueError(f"TokenRenderer was built for dim={self.dim}; got a board of shape {kinds.shape[-2:]}.")
        flat = kinds.reshape(kinds.shape[:-2] + (self.dim * self.dim,))
        fn = self._render_one
        for _ in range(flat.ndim - 1):
            fn = jax.vmap(fn)
        return fn(flat)

    def host_ids(self, state) -> list[int]:
        """The same ids as `__call__` (unpadded), assembled in Python for one unbatched state."""
        kinds = _host_kinds(state)
        out: list[int] = []
        for cell, k, first in _pieces_of(kinds, self.style, self.dim):
            out.extend(self._pieces[cell][k][int(first)])
        return out
