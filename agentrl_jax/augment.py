"""Distractor augmentation on token ids, inside jit: the on-device twin of `envs.distractors` (issue 14).

The plain-text reference (`envs.distractors.render`) is the definition; this module produces, for the same JAX
key and epsilon, token ids whose decoded text is exactly what the reference adds after the state. It covers
banks whose units go at the END of the state (placement "end") with plain or coordinate parts: the Sokoban
bank, or a user's own bank of that shape. Banks that insert inside the text (ALFWorld sentences) or depend on
the text (entity ids, monitors) stay on the host with the text reference.

How: each template, with the view's separator in front, is cut into chunks at every whitespace that follows
non-whitespace (the space goes with the next word, as GPT-2-style pre-tokenizers cut), and every chunk is
tokenized ONCE for each value of the fields it holds (a word of a list, an outside cell's coordinates). A unit
is then a row lookup per chunk, chosen by the unit's draws (`envs/distractors/sample.py`'s contract):

    unit u of part i: bits = jax.random.bits(fold_in(fold_in(key, i), u), (n_fields,), uint32)
    template = bits[0] % T, word list j = bits[1 + j] % len(list j), cell = bits[L + 2] % len(outside cells)

    splice = DistractorSplice(load_bank("sokoban"), chat.encode_content, height=6, width=6, pad_id=0)
    ids, n = splice(key, 80.0)              # int32[splice.max_tokens(80.0)], int32: 8 lines after the state
    splice.host_ids(key, 80.0)              # the same ids as a list, assembled in Python
    augment_episode(coin_key, p)            # the per-trajectory coin: one bool per episode

Keys: give the coin its own key and every state a fresh one, e.g. `coin_key, states_key = split(episode_key)`
and `fold_in(states_key, step)` for the state at `step` (the reference does not care how keys are derived).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import string
from typing import Callable, List, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np

from envs.distractors import (Bank, Part, View, augment_text, check_epsilon, check_probability, load_bank,
                              outside_cells)

Segment = Tuple[jax.Array, jax.Array]  # (ids int32[L], length int32), as in agentrl_jax.segments
CELL = "cell"  # the source of a coordinate part's {r} and {c}


def augment_episode(key: jax.Array, p) -> jax.Array:
    """The per-trajectory coin: True with probability p (0 never, 1 always), one flip per episode key.

    Jittable; agrees with `envs.distractors.apply_this_episode(key, p)` for the same key."""
    return jax.random.bernoulli(key, p)


def _atoms(text: str) -> List[Tuple[str, str]]:
    """A template as atoms: ("lit", one character) or ("field", name)."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(text):
        out += [("lit", ch) for ch in literal]
        if field is not None:
            out.append(("field", field))
    return out


def _chunks(text: str) -> List[List[Tuple[str, str]]]:
    """Cut at each whitespace character that follows a non-whitespace atom (fields count as words)."""
    chunks: List[List[Tuple[str, str]]] = []
    prev_ws = True
    for kind, val in _atoms(text):
        ws = kind == "lit" and val.isspace()
        if not chunks or (ws and not prev_ws):
            chunks.append([])
        chunks[-1].append((kind, val))
        prev_ws = ws
    return chunks


@dataclasses.dataclass(frozen=True)
class _PartTables:
    """One part's chunk tables, every template padded to the same chunk count C, row count R and width W.

    table int32[T, C, R, W], lens int32[T, C, R]; a chunk's row is sum_s (bits[field[s]] % mod[s]) * stride[s]
    over its S sources (padding sources: field 0, mod 1, stride 0). pieces[t][c][row] are the same ids as lists.
    """

    index: int  # the part's position in its view (folded into the key)
    part: Part
    n_fields: int
    table: np.ndarray
    lens: np.ndarray
    field: np.ndarray  # int32[T, C, S]
    mod: np.ndarray  # uint32[T, C, S]
    stride: np.ndarray  # int32[T, C, S]
    pieces: Tuple[Tuple[Tuple[Tuple[int, ...], ...], ...], ...]
    unit_tokens: int  # the longest unit any template can give


def _build_part(index: int, part: Part, separator: str, encode: Callable[[str], Sequence[int]],
                cells: List[Tuple[int, int]]) -> _PartTables:
    names = [k for k, _ in part.words]
    lists = dict(part.words)
    L = len(names)
    # source -> (draw field, the template fields each of its choices fills in)
    sources = {n: (1 + j, [{n: w} for w in lists[n]]) for j, n in enumerate(names)}
    if part.kind == "coords":
        sources[CELL] = (L + 2, [{"r": r, "c": c} for r, c in cells])

    def source_of(field: str) -> str:
        return CELL if part.kind == "coords" and field in ("r", "c") else field

    per_template = []
    for template in part.templates:
        chunks = []
        for chunk in _chunks(separator + template):
            srcs = list(dict.fromkeys(source_of(v) for k, v in chunk if k == "field"))
            # Rebuild the chunk as a format string with its fields only (literal braces stay escaped).
            fmt = "".join(v.replace("{", "{{").replace("}", "}}") if k == "lit" else "{" + v + "}" for k, v in chunk)
            rows = []
            for choice in itertools.product(*(sources[s][1] for s in srcs)):
                fill = {k: v for values in choice for k, v in values.items()}
                ids = tuple(int(t) for t in encode(fmt.format(**fill)))
                if not ids:
                    raise ValueError(f"distractor bank {part.name!r}: the tokenizer gives no ids for "
                                     f"{fmt.format(**fill)!r}")
                rows.append(ids)
            mods = [len(sources[s][1]) for s in srcs]
            strides = [int(np.prod(mods[i + 1:], dtype=np.int64)) for i in range(len(mods))]
            chunks.append((rows, [sources[s][0] for s in srcs], mods, strides))
        per_template.append(chunks)

    T = len(per_template)
    C = max(len(ch) for ch in per_template)
    R = max(len(rows) for ch in per_template for rows, *_ in ch)
    W = max(len(ids) for ch in per_template for rows, *_ in ch for ids in rows)
    S = max(1, max(len(f) for ch in per_template for _, f, _, _ in ch))
    table = np.zeros((T, C, R, W), np.int32)
    lens = np.zeros((T, C, R), np.int32)
    field = np.zeros((T, C, S), np.int32)
    mod = np.ones((T, C, S), np.uint32)
    stride = np.zeros((T, C, S), np.int32)
    for t, chunks in enumerate(per_template):
        for c, (rows, f, m, s) in enumerate(chunks):
            for r, ids in enumerate(rows):
                table[t, c, r, : len(ids)] = ids
                lens[t, c, r] = len(ids)
            field[t, c, : len(f)], mod[t, c, : len(m)], stride[t, c, : len(s)] = f, m, s
    pieces = tuple(tuple(tuple(rows) for rows, *_ in chunks) for chunks in per_template)
    unit_tokens = int(lens.max(axis=2).sum(axis=1).max())
    return _PartTables(index, part, part.n_fields, table, lens, field, mod, stride, pieces, unit_tokens)


def _concat_left(toks: jax.Array, lens: jax.Array, size: int, pad_id: int) -> Segment:
    """Rows toks[n, w] (row i holds lens[i] ids) back to back, left-aligned in int32[size]."""
    starts = jnp.cumsum(lens) - lens
    j = jnp.arange(toks.shape[-1])
    pos = jnp.where(j[None, :] < lens[:, None], starts[:, None] + j[None, :], size)  # padding is dropped
    ids = jnp.full((size,), pad_id, jnp.int32).at[pos.reshape(-1)].set(toks.reshape(-1), mode="drop")
    return ids, jnp.sum(lens).astype(jnp.int32)


def _unit_bits(key: jax.Array, part_index: int, n_units: int, n_fields: int) -> jax.Array:
    """uint32[n_units, n_fields]: the draws of sample.py's contract (a unit's draws ignore the unit count)."""
    pk = jax.random.fold_in(key, np.uint32(part_index))
    keys = jax.vmap(lambda u: jax.random.fold_in(pk, u))(jnp.arange(n_units, dtype=jnp.uint32))
    return jax.vmap(lambda k: jax.random.bits(k, (n_fields,), jnp.uint32))(keys)


@functools.cache
def _host_bits(n_units: int, n_fields: int):
    return jax.jit(lambda key, part_index: _unit_bits(key, part_index, n_units, n_fields), static_argnums=1)


def _rows(pt: _PartTables, bits) -> Tuple[int, np.ndarray]:
    """(template, row per chunk) for one unit's draws; numpy or jax arrays alike."""
    xp = jnp if isinstance(bits, jax.Array) else np
    T = pt.table.shape[0]
    t = bits[0] % np.uint32(T)
    f, m, s = (xp.asarray(a)[t] for a in (pt.field, pt.mod, pt.stride))
    rows = xp.sum((bits[f] % m).astype(np.int32) * s, axis=-1)
    return t, rows


class DistractorSplice:
    """A bank's end-of-state distractors as token ids: `splice(key, epsilon) -> (ids, length)`, jittable.

    bank: a `Bank`, a shipped bank name or a bank file; encode: the policy's content tokenizer
    (`ChatFormat.encode_content`); height, width: the room (for coordinate parts); view: the bank's view
    (None: its only one). Every piece is tokenized here, once.
    """

    def __init__(self, bank, encode: Callable[[str], Sequence[int]], height: int, width: int, pad_id: int = 0,
                 view: str | None = None):
        self.bank: Bank = load_bank(bank)
        self.view: View = self.bank.view(view)
        if self.view.placement != "end":
            raise ValueError(f"distractor bank {self.bank.name!r} view {self.view.name!r} inserts at "
                             f"{self.view.placement!r} positions; the token splice only appends after the state "
                             f"(placement 'end', e.g. the sokoban bank): use envs.distractors.augment_text on the "
                             f"host for this bank")
        bad = [p.name for p in self.view.parts if p.kind not in (None, "coords")]
        if bad:
            raise ValueError(f"distractor bank {self.bank.name!r}: parts {bad} depend on the text (entity ids or "
                             f"monitors), which the token splice cannot see; use envs.distractors.augment_text")
        self.height, self.width, self.pad_id = int(height), int(width), int(pad_id)
        self.parts = []
        for i, part in enumerate(self.view.parts):
            cells = outside_cells(self.height, self.width, part.margin) if part.kind == "coords" else []
            self.parts.append(_build_part(i, part, self.view.separator, encode, cells))

    def counts(self, epsilon) -> List[int]:
        """Units per part for `epsilon` (static)."""
        eps = check_epsilon(epsilon)
        return [pt.part.count.units(eps) for pt in self.parts]

    def max_tokens(self, epsilon) -> int:
        """Static upper bound on the ids added for `epsilon`: every unit at its longest template and pieces."""
        return sum(n * pt.unit_tokens for n, pt in zip(self.counts(epsilon), self.parts))

    def __call__(self, key: jax.Array, epsilon) -> Segment:
        """(ids int32[max_tokens(epsilon)] left-aligned, padded with pad_id; length int32): the ids of the text
        `envs.distractors.render` adds after the state for this key. epsilon is static (a Python number)."""
        size = self.max_tokens(epsilon)
        toks, lens = [], []
        for n, pt in zip(self.counts(epsilon), self.parts):
            if not n:
                continue
            unit = self._unit_fn(pt)
            ids, length = jax.vmap(unit)(_unit_bits(key, pt.index, n, pt.n_fields))
            toks.append(jnp.pad(ids, ((0, 0), (0, max(p.unit_tokens for p in self.parts) - ids.shape[1])),
                                constant_values=self.pad_id))
            lens.append(length)
        if not toks:
            return jnp.zeros((0,), jnp.int32), jnp.int32(0)
        return _concat_left(jnp.concatenate(toks), jnp.concatenate(lens), size, self.pad_id)

    def _unit_fn(self, pt: _PartTables):
        table, lens = jnp.asarray(pt.table), jnp.asarray(pt.lens)
        chunk = jnp.arange(pt.table.shape[1])

        def unit(bits):
            t, rows = _rows(pt, bits)
            return _concat_left(table[t, chunk, rows], lens[t, chunk, rows], pt.unit_tokens, self.pad_id)

        return unit

    def host_ids(self, key: jax.Array, epsilon) -> List[int]:
        """The same ids as `__call__` (unpadded), assembled in Python from the same pieces."""
        out: List[int] = []
        for n, pt in zip(self.counts(epsilon), self.parts):
            if not n:
                continue
            for bits in np.asarray(_host_bits(n, pt.n_fields)(key, pt.index)):
                t, rows = _rows(pt, bits)
                for c, r in enumerate(rows):
                    if c < len(pt.pieces[t]):
                        out.extend(pt.pieces[t][c][int(r)])
        return out


# ------------------------------------------------------------------------------------------ per-domain settings
AUGMENT_SALT = 0x61756700  # folded into a rollout's key for the distractor keys (never a turn index)


@gin.configurable("augment")
@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A domain's distractor setting, bound per domain with a gin scope (off by default):

        sokoban/augment.epsilon = 80        # Table 11 V1: Sokoban 80 / p = 1; V2: 80 / 0.5
        alfworld/augment.epsilon = 300      # V1: 300 / 1; V2: 200 / 0.5
        alfworld/augment.p = 0.5
        webshop/augment.epsilon = 30        # V1: 30 / 1; V2: 40 / 0.5

    bank: a shipped bank name or a bank JSON path (None: the domain's own bank, named like the domain;
    'cross_domain' shows another domain's state on a monitor). epsilon: injected volume in tokens per state
    (0 = off). p: the probability that an episode is augmented (one coin per episode). in_eval: augment the
    held-out evaluation episodes too (default False: the study trains with distractors and evaluates plain).
    """

    bank: Optional[str] = None
    epsilon: float = 0.0
    p: float = 1.0
    in_eval: bool = False

    @property
    def active(self) -> bool:
        return bool(self.epsilon) and self.p > 0

    def applies_to(self, split: str, train_split: str = "train") -> bool:
        """Whether episodes of `split` get distractors (training always, held-out only with in_eval)."""
        return self.active and (split == train_split or self.in_eval)


def domain_augmentation(domain: str) -> Augmentation:
    """The `<domain>/augment.*` bindings (unscoped `augment.*` apply to every domain), checked before anything
    is tokenized or compiled; bank None becomes the domain's own bank (named like the domain)."""
    with gin.config_scope(domain):
        aug = Augmentation()
    where = f"{domain}/augment"
    try:
        check_epsilon(aug.epsilon)
    except ValueError as e:
        raise ValueError(f"{where}.epsilon: {e}") from None
    try:
        check_probability(aug.p)
    except ValueError as e:
        raise ValueError(f"{where}.p: {e}") from None
    bank = aug.bank or domain
    if aug.active or aug.bank is not None:  # a bank named by the user is checked even while eps is 0
        try:
            load_bank(bank)
        except (ValueError, OSError) as e:
            raise ValueError(f"{where}.bank = {bank!r}: {e}") from None
    return dataclasses.replace(aug, bank=bank)


def episode_keys(key: jax.Array, n: int) -> Tuple[jax.Array, jax.Array]:
    """(coin keys [n], state keys [n]) of a rollout's n episodes: one coin per episode, and the state at turn t
    of episode i draws from `state_key(states[i], t)`. Derived from the rollout key and the episode's place in
    the batch (not its level), so the episodes of a GRPO group flip their own coins. Jittable."""
    pairs = jax.vmap(jax.random.split)(jax.random.split(jax.random.fold_in(key, AUGMENT_SALT), n))
    return pairs[:, 0], pairs[:, 1]


def state_key(states_key: jax.Array, turn) -> jax.Array:
    return jax.random.fold_in(states_key, turn)


class TextAugmenter:
    """Distractors for host-stepped text episodes (ALFWorld, ScienceWorld, WebShop): the plain-text reference,
    `envs.distractors.augment_text`, applied to each observation of the episodes whose coin comes up. The text
    the policy reads is then tokenized as usual, so the ids it trains on are what it saw.

    key: the rollout key (coins and state keys as `episode_keys(key, num_episodes)`, the same derivation as the
    Sokoban device rollout); context_fn(step, first_step) -> the bank's context for a state, given the episode's
    reset step too (admissible actions and entity names for ALFWorld ids, the view for WebShop pages, other
    domains' states for the monitor bank).
    """

    def __init__(self, setting: Augmentation, key: jax.Array, num_episodes: int,
                 context_fn: Callable[..., dict] = lambda step, first_step: {}):
        self.bank, self.epsilon, self.context_fn = load_bank(setting.bank), setting.epsilon, context_fn
        coin_keys, states_keys = episode_keys(key, num_episodes)
        self.augmented = np.array(jax.vmap(augment_episode, in_axes=(0, None))(coin_keys, setting.p), bool)
        self._states_keys = states_keys
        self._turn_keys = {}
        self._first = {}  # episode -> its reset step

    def rng(self, episode: int, turn: int) -> np.random.Generator:
        """The state's draws: a numpy Generator seeded with the state's key (`state_key`), the same for the same
        rollout key. Text states have no on-device twin to agree with, and a seeded Generator costs ~1/50 of a
        JAX draw dispatched per state; the key derivation is one batched call per turn for all episodes."""
        if turn not in self._turn_keys:
            keys = jax.vmap(state_key, in_axes=(0, None))(self._states_keys, turn)
            self._turn_keys[turn] = np.asarray(jax.random.key_data(keys)).reshape(len(self.augmented), -1)
        return np.random.default_rng(self._turn_keys[turn][episode])

    def observation(self, episode: int, turn: int, step) -> str:
        """What the policy reads of `step` (a `TextStep`) at `turn`: the observation, with distractors when the
        episode is augmented."""
        if turn == 0:
            self._first[episode] = step
        if not self.augmented[episode]:
            return step.observation
        return augment_text(self.bank, step.observation, self.rng(episode, turn), self.epsilon,
                            **self.context_fn(step, self._first.get(episode, step)))


def uses_monitor(bank) -> bool:
    """Whether a bank shows other domains' states (the cross-domain monitor), which needs `other_states`."""
    return any(p.kind == "monitor" for v in load_bank(bank).views for p in v.parts)


@functools.lru_cache(maxsize=4)
def sokoban_monitor_states(n: int = 32, seed: int = 0) -> Tuple[Tuple[str, str], ...]:
    """(domain, text) states of JAX Sokoban for the cross-domain monitor of the text domains: n fixed levels of
    the default room, rendered as the study's prompt shows them (cheap: one compiled reset)."""
    import envs.sokoban as sk  # noqa: PLC0415

    env = sk.Sokoban()
    states = jax.device_get(jax.jit(jax.vmap(lambda k: env.reset(k)[0]))(
        jax.random.split(jax.random.PRNGKey(seed), n)))
    return tuple(("sokoban", sk.render_text(jax.tree.map(lambda x, i=i: x[i], states))) for i in range(n))


def text_distractor_bound(bank, epsilon, encode: Callable[[str], Sequence[int]]) -> int:
    """An upper estimate of the tokens the distractors can add to one text state (the largest view): every unit
    at its longest template filled with each list's longest word (entity ids as "99"; a monitor's state at its
    word cap, 3 tokens a word). For checking a setting against the prompt buffer before anything runs."""
    bank = load_bank(bank)
    eps = check_epsilon(epsilon)
    worst = 0
    for view in bank.views:
        total = 0
        for part in view.parts:
            n = part.count.units(eps)
            if not n:
                continue
            fill = {name: max(words, key=len) for name, words in part.words}
            if part.kind == "entity":
                fill[part.entity] = f"{fill[part.entity]} 99"
            extra = 0
            if part.kind == "monitor":
                words = max(1, int(eps // part.tokens_per_word))
                fill.update(label=max((lbl for _, lbl in part.labels), key=len), state="")
                extra = 3 * words
            if part.kind == "coords":
                fill.update(r=99, c=99)
            unit = max(len(encode(view.separator + t.format(**fill))) for t in part.templates) + extra
            total += n * unit
        worst = max(worst, total)
    return worst
