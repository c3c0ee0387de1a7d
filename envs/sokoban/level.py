"""The `Level` pytree shared by the generator, the env, the renderers and the solver.

A level is four arrays on a dim×dim grid: `walls`, `targets` and `boxes` (bool[dim, dim]) and `player`
(int32[2], (row, column)). The same NamedTuple holds NumPy arrays on the host (solver, tests) and JAX
arrays inside jit (generator output). Cells are addressed row-major: flat index = row * dim + column.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

# Cell kinds, the env's observation codes and the renderers' lookup index (order matters: it is the
# index into the pre-tokenized piece tables).
EMPTY, WALL, GOAL, BOX, BOX_ON_GOAL, PLAYER, PLAYER_ON_GOAL = range(7)
NUM_KINDS = 7
# `cell_kinds` relies on this layout: "on goal" is the kind plus one, empty floor is 0.
assert (EMPTY, BOX_ON_GOAL, PLAYER_ON_GOAL) == (0, BOX + 1, PLAYER + 1)

# Action ids 0..3 and their (row, column) moves.
UP, DOWN, LEFT, RIGHT = range(4)
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int32)

# ASCII used by `Level.from_strings` / `Level.to_strings` (the common Sokoban text format; RAGEN's
# symbols are accepted too when reading).
_READ = {
    "#": (True, False, False, False),
    " ": (False, False, False, False),
    "_": (False, False, False, False),
    "-": (False, False, False, False),
    ".": (False, True, False, False),
    "O": (False, True, False, False),
    "$": (False, False, True, False),
    "X": (False, False, True, False),
    "*": (False, True, True, False),
    "√": (False, True, True, False),
    "@": (False, False, False, True),
    "P": (False, False, False, True),
    "+": (False, True, False, True),
    "S": (False, True, False, True),
}
_WRITE = {EMPTY: " ", WALL: "#", GOAL: ".", BOX: "$", BOX_ON_GOAL: "*", PLAYER: "@", PLAYER_ON_GOAL: "+"}


class Level(NamedTuple):
    """One Sokoban level (or a batch of them, with leading batch axes)."""

    walls: Any
    targets: Any
    boxes: Any
    player: Any

    @classmethod
    def from_strings(cls, rows: Sequence[str]) -> "Level":
        """Parse a square ASCII level: `#` wall, space/`_` floor, `.` goal, `$` box, `*` box on goal,
        `@` player, `+` player on goal (RAGEN's `O X √ P S` also accepted)."""
        rows = list(rows)
        dim = len(rows)
        if dim == 0 or any(len(r) != dim for r in rows):
            raise ValueError(f"Level rows must form a square grid; got row lengths {[len(r) for r in rows]}.")
        walls = np.zeros((dim, dim), bool)
        targets = np.zeros((dim, dim), bool)
        boxes = np.zeros((dim, dim), bool)
        players = []
        for r, row in enumerate(rows):
            for c, ch in enumerate(row):
                if ch not in _READ:
                    raise ValueError(f"Unknown level character {ch!r} at ({r}, {c}); use one of {''.join(_READ)!r}.")
                w, t, b, p = _READ[ch]
                walls[r, c], targets[r, c], boxes[r, c] = w, t, b
                if p:
                    players.append((r, c))
        if len(players) != 1:
            raise ValueError(f"A level needs exactly one player ('@' or '+'); found {len(players)}.")
        return cls(walls, targets, boxes, np.array(players[0], np.int32))

    def to_strings(self) -> list[str]:
        """The inverse of `from_strings` (unbatched levels only)."""
        kinds = cell_kinds(self, xp=np)
        return ["".join(_WRITE[int(k)] for k in row) for row in kinds]

    @property
    def dim(self) -> int:
        return int(np.shape(self.walls)[-1])


def to_numpy(level: Level) -> Level:
    """Host copy of a (possibly JAX) level."""
    return Level(*(np.asarray(x) for x in level))


def cell_kinds(level: Level, xp=None):
    """int8[..., dim, dim] of cell kinds (EMPTY..PLAYER_ON_GOAL) for `level` or any object with
    walls/targets/boxes/player fields. `xp` is `numpy` for host use, `jax.numpy` (default) inside jit.

    Precedence, for any input: the player's cell is PLAYER / PLAYER_ON_GOAL, else a wall is WALL, else a
    box is BOX / BOX_ON_GOAL, else GOAL / EMPTY. Computed in int8 throughout (the kinds are laid out so
    that "on goal" adds one): int32 intermediates would make XLA keep int32 boards in a rollout's loop,
    four times the memory traffic of the int8 result."""
    if xp is None:
        import jax.numpy as xp  # noqa: PLC0415 (keeps NumPy-only users free of a jax import cost here)
    walls, targets, boxes, player = level.walls, level.targets, level.boxes, level.player
    dim = walls.shape[-1]
    rows = xp.arange(dim).reshape(dim, 1)
    cols = xp.arange(dim).reshape(1, dim)
    is_player = (rows == player[..., 0, None, None]) & (cols == player[..., 1, None, None])
    goal = xp.asarray(targets).astype(xp.int8)  # 0/1
    i8 = xp.int8
    base = xp.where(walls, i8(WALL), xp.where(boxes, i8(BOX) + goal, i8(GOAL) * goal))
    return xp.where(is_player, i8(PLAYER) + goal, base).astype(xp.int8)


# Content hash: each cell's four facts (wall, goal, box, player) packed 4 bits per cell, 8 cells per uint32
# word (an exact encoding, invalid boards included), then two differently built 32-bit hashes of the words
# (murmur3-style and xxhash32-style rounds, different seeds), so two levels collide only if both collide:
# ~2^-64 per pair.
_CELLS_PER_WORD = 8
_M1, _M2, _M3, _M4 = 0xCC9E2D51, 0x1B873593, 0xE6546B64, 0x85EBCA6B
_P1, _P2, _P3, _P4 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F


def _rotl(x, r: int):
    return (x << r) | (x >> (32 - r))


def _fmix(h, xp):
    h = h ^ (h >> 16)
    h = h * xp.uint32(_M4)
    h = h ^ (h >> 13)
    h = h * xp.uint32(_P3)
    return h ^ (h >> 16)


def level_words(level: Level):
    """uint32[..., ceil(dim*dim / 8)]: wall, goal, box and player bits of every cell, 4 bits per cell."""
    import jax.numpy as jnp  # noqa: PLC0415

    walls = jnp.asarray(level.walls)
    dim = walls.shape[-1]
    rows = jnp.arange(dim).reshape(dim, 1)
    cols = jnp.arange(dim).reshape(1, dim)
    player = jnp.asarray(level.player)
    is_player = (rows == player[..., 0, None, None]) & (cols == player[..., 1, None, None])
    u = jnp.uint32
    bits = (walls.astype(u) | (jnp.asarray(level.targets).astype(u) << 1) | (jnp.asarray(level.boxes).astype(u) << 2)
            | (is_player.astype(u) << 3))
    flat = bits.reshape(bits.shape[:-2] + (dim * dim,))
    m = -(-dim * dim // _CELLS_PER_WORD)
    pad = m * _CELLS_PER_WORD - dim * dim
    flat = jnp.concatenate([flat, jnp.zeros(flat.shape[:-1] + (pad,), u)], axis=-1)
    groups = flat.reshape(flat.shape[:-1] + (m, _CELLS_PER_WORD))
    shifts = jnp.arange(_CELLS_PER_WORD, dtype=u) * 4
    return jnp.sum(groups << shifts, axis=-1, dtype=u)  # disjoint bit fields: the sum is their or


def level_hash(level: Level):
    """uint32[..., 2] content hash of `level` (or a batch of levels); jit/vmap-able.

    Equal levels (same walls, goals, boxes and player cell) hash equal; any difference, one cell or the
    player's position, changes the pair except with probability ~2^-64. `hash64` joins the two words.
    """
    import jax.numpy as jnp  # noqa: PLC0415

    words = level_words(level)
    dim = level.walls.shape[-1]
    u = jnp.uint32
    h1 = jnp.full(words.shape[:-1], u((0x3C6EF372 ^ dim) & 0xFFFFFFFF), u)
    h2 = jnp.full(words.shape[:-1], u((0x165667B1 + dim) & 0xFFFFFFFF), u)
    for i in range(words.shape[-1]):
        w = words[..., i]
        k = _rotl(w * u(_M1), 15) * u(_M2)  # murmur3 block
        h1 = _rotl(h1 ^ k, 13) * u(5) + u(_M3)
        h2 = _rotl(h2 + w * u(_P2), 13) * u(_P1)  # xxhash32 round
        h2 = _rotl(h2 ^ u(_P4), 17) * u(_P4)
    n = u(words.shape[-1])
    return jnp.stack([_fmix(h1 ^ n, jnp), _fmix(h2 + n * u(_P3), jnp)], axis=-1)


def hash64(hashes) -> np.ndarray:
    """Host: uint64[...] from `level_hash`'s uint32[..., 2] (set-friendly)."""
    h = np.asarray(hashes, np.uint64)
    return (h[..., 0] << np.uint64(32)) | h[..., 1]


def check_level(level: Level, dim: int | None = None, num_boxes: int | None = None) -> Level:
    """Validate a concrete (host) level; returns its NumPy copy or raises ValueError naming the problem."""
    lv = to_numpy(level)
    if lv.walls.ndim != 2 or lv.walls.shape[0] != lv.walls.shape[1]:
        raise ValueError(f"Level walls must be a square [dim, dim] array; got shape {lv.walls.shape}.")
    d = lv.walls.shape[0]
    for name in ("targets", "boxes"):
        if getattr(lv, name).shape != (d, d):
            raise ValueError(f"Level.{name} has shape {getattr(lv, name).shape}, expected {(d, d)}.")
    if lv.player.shape != (2,):
        raise ValueError(f"Level.player must be (row, column); got shape {lv.player.shape}.")
    if dim is not None and d != dim:
        raise ValueError(f"Level is {d}x{d} but the env was built with dim={dim}.")
    border = np.ones((d, d), bool)
    border[1:-1, 1:-1] = False
    if not lv.walls[border].all():
        raise ValueError("Level must be surrounded by walls (every border cell a wall).")
    r, c = (int(x) for x in lv.player)
    if not (0 <= r < d and 0 <= c < d) or lv.walls[r, c] or lv.boxes[r, c]:
        raise ValueError(f"Player at ({r}, {c}) must stand on a free floor cell.")
    if (lv.walls & (lv.boxes | lv.targets)).any():
        raise ValueError("Boxes and goals cannot sit on walls.")
    nb, nt = int(lv.boxes.sum()), int(lv.targets.sum())
    if nb != nt:
        raise ValueError(f"Level has {nb} boxes but {nt} goals; they must match.")
    if num_boxes is not None and nb != num_boxes:
        raise ValueError(f"Level has {nb} boxes but the env was built with num_boxes={num_boxes}.")
    return Level(lv.walls.astype(bool), lv.targets.astype(bool), lv.boxes.astype(bool), lv.player.astype(np.int32))
