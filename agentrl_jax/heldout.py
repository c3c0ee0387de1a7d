"""Held-out Sokoban levels that are unseen by content, not only by key stream.

Level keys of different streams still draw from one generator, whose level space is small (6x6, one box),
so the same level turns up under many keys. Here a level set is identified by the content hashes of its
levels (`Sokoban.level_hash`: walls, goals, boxes, player), and:

    held = HeldOutLevels.build(env, eval_keys)                   # distinct levels; .keys to evaluate on
    sft_val = HeldOutLevels.build(env, val_keys, avoid=held)     # distinct, and none of held's
    reserved = held.union(sft_val)
    keys, n_replaced, hashes = reserved.exclude(env, train_keys) # no training level is a reserved one
    seen.add(hashes); metrics = level_metrics(seen, held, sft_val)

Replacement is a pure function of the keys: a colliding key k becomes `fold_in(k, r)` for the first round r
whose level is acceptable, so equal keys (the rows of a GRPO group) get equal replacements and a resumed run
draws the same levels. The keys feed both rollout modes (device and host reset from level keys).
"""
from __future__ import annotations

import functools
from typing import Dict, Iterable, NamedTuple, Optional

import jax
import numpy as np

from envs.sokoban.level import hash64

DEFAULT_MAX_ROUNDS = 64
MIN_BUCKET = 128


@functools.lru_cache(maxsize=16)
def _hash_fn(env):
    return jax.jit(jax.vmap(env.level_hash))


def _bucket(n: int) -> int:
    """Batch size to compile for n keys: a power of two >= MIN_BUCKET, so eval sets, training batches and
    single keys share a few compiles (generating a few padding levels costs far less than compiling)."""
    return max(MIN_BUCKET, 1 << (n - 1).bit_length())


def level_hashes(env, keys) -> np.ndarray:
    """uint64[n]: content hash of the level `env.reset(key)` plays, for each key (host)."""
    keys = jax.numpy.asarray(keys)
    n = keys.shape[0] if keys.ndim else 0
    if n == 0:
        return np.zeros((0,), np.uint64)
    pad = _bucket(n) - n
    padded = jax.numpy.concatenate([keys, jax.numpy.repeat(keys[:1], pad, axis=0)]) if pad else keys
    return hash64(jax.device_get(_hash_fn(env)(padded)))[:n]


def _too_few(what: str, missing: int, n: int, rounds: int) -> ValueError:
    return ValueError(
        f"{what}: {missing} of {n} keys still give a rejected level after {rounds} resampling rounds; the "
        "generator's level space is too small for these sets. Widen it (SokobanGenerator.num_reverse_steps, "
        "room='carve', a larger Sokoban.dim), make the held-out sets smaller (train.eval_episodes), or allow "
        "more rounds (max_rounds).")


def _resample(env, keys, rejected_fn, what: str, max_rounds: int):
    """Replace keys until `rejected_fn(hashes, pending)` rejects none; returns (keys, hashes, replaced mask).

    Round r gives every still-rejected row `fold_in(original_key, r)`; the whole batch is rehashed each round
    so the jitted hash keeps one shape.
    """
    original = jax.numpy.asarray(keys)
    keys = original
    hashes = level_hashes(env, keys)
    pending = rejected_fn(hashes, np.ones(len(hashes), bool))
    replaced = pending.copy()
    for r in range(1, max_rounds + 1):
        if not pending.any():
            break
        fresh = jax.vmap(jax.random.fold_in, (0, None))(original, r)
        rows = jax.numpy.asarray(pending).reshape((-1,) + (1,) * (keys.ndim - 1))
        keys = jax.numpy.where(rows, fresh, keys)
        new_hashes = level_hashes(env, keys)
        hashes = np.where(pending, new_hashes, hashes)
        pending = pending & rejected_fn(hashes, pending)
    if pending.any():
        raise _too_few(what, int(pending.sum()), len(hashes), max_rounds)
    return keys, hashes, replaced


class Excluded(NamedTuple):
    keys: jax.Array  # the level keys to play (replaced where the original level was reserved)
    n_replaced: int  # rows whose key was replaced
    hashes: np.ndarray  # uint64[n] content hashes of the levels the returned keys give


class SeenLevels:
    """The distinct training levels of a run so far (for logging; rebuild on resume by replaying the steps)."""

    def __init__(self):
        self._seen: set = set()

    def add(self, hashes: Iterable) -> int:
        """Record one step's level hashes; returns how many were new."""
        before = len(self._seen)
        self._seen.update(np.asarray(hashes, np.uint64).tolist())
        return len(self._seen) - before

    @property
    def distinct(self) -> int:
        return len(self._seen)

    def __contains__(self, h) -> bool:
        return int(h) in self._seen


class HeldOutLevels:
    """A level set identified by content: `.keys` (what to evaluate on), `.hashes` (uint64[n]), `.distinct`."""

    def __init__(self, keys, hashes: np.ndarray):
        self.keys = keys
        self.hashes = np.asarray(hashes, np.uint64)
        self.hash_set = frozenset(self.hashes.tolist())
        self.n_resampled = 0  # rows `build` resampled (repeats, or levels of `avoid`)

    @property
    def distinct(self) -> int:
        return len(self.hash_set)

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def build(cls, env, keys, avoid: Optional["HeldOutLevels"] = None, distinct: bool = True,
              max_rounds: int = DEFAULT_MAX_ROUNDS) -> "HeldOutLevels":
        """The set for `keys`: rows whose level repeats an earlier row's (when `distinct`) or is in `avoid` get
        resampled keys, so the set has len(keys) distinct levels, none of avoid's. Raises a ValueError naming
        the knobs when the generator cannot supply that many."""
        rows = np.asarray(jax.random.key_data(keys) if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
                          else keys).reshape(len(keys), -1)
        if distinct and len(np.unique(rows, axis=0)) < len(rows):
            raise ValueError("HeldOutLevels.build takes one key per level; got repeated keys (build the set from "
                             "the task keys before repeating them for groups).")
        taken = set() if avoid is None else set(avoid.hash_set)

        def rejected(hashes, pending):
            # Rows already accepted stay; pending rows are accepted in order, each one's level then taken.
            out = np.zeros(len(hashes), bool)
            accepted = {int(h) for h, p in zip(hashes.tolist(), pending) if not p} if distinct else set()
            seen = taken | accepted
            for i in np.flatnonzero(pending):
                h = int(hashes[i])
                if h in seen:
                    out[i] = True
                elif distinct:
                    seen.add(h)
            return out

        keys, hashes, replaced = _resample(env, keys, rejected, "HeldOutLevels.build", max_rounds)
        held = cls(keys, hashes)
        held.n_resampled = int(replaced.sum())
        return held

    def union(self, *others: "HeldOutLevels") -> "HeldOutLevels":
        """One set holding this one's and `others`' levels (e.g. held-out + SFT validation, for `exclude`)."""
        sets = (self, *others)
        keys = jax.numpy.concatenate([jax.numpy.asarray(s.keys) for s in sets])
        return HeldOutLevels(keys, np.concatenate([s.hashes for s in sets]))

    def exclude(self, env, keys, max_rounds: int = DEFAULT_MAX_ROUNDS) -> Excluded:
        """`keys` with every row whose level is in this set replaced (deterministically from the key) by one
        whose level is not. Repeats among `keys` are kept (a GRPO group shares its task's key)."""
        reserved = np.fromiter(self.hash_set, np.uint64, len(self.hash_set))

        def rejected(hashes, pending):
            return pending & np.isin(hashes, reserved)

        keys, hashes, replaced = _resample(env, keys, rejected, "HeldOutLevels.exclude", max_rounds)
        return Excluded(keys, int(replaced.sum()), hashes)

    def overlap(self, seen) -> int:
        """How many of this set's distinct levels are in `seen` (a SeenLevels or an iterable of hashes)."""
        if not isinstance(seen, SeenLevels):
            seen = set(np.asarray(list(seen), np.uint64).tolist())
        return sum(1 for h in self.hash_set if h in seen)


def level_metrics(seen: SeenLevels, held: HeldOutLevels, sft_validation: Optional[HeldOutLevels] = None
                  ) -> Dict[str, float]:
    """Scalars for the trainer's log: distinct training levels so far, distinct held-out levels, and their
    overlap (0 when training keys went through `exclude`)."""
    m = {"levels/train_distinct_seen": float(seen.distinct), "levels/heldout_distinct": float(held.distinct),
         "levels/heldout_in_train": float(held.overlap(seen))}
    if sft_validation is not None:
        m["levels/sft_validation_distinct"] = float(sft_validation.distinct)
        m["levels/sft_validation_in_train"] = float(sft_validation.overlap(seen))
    return m
