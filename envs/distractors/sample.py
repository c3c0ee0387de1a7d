"""The plain-text reference of distractor augmentation: sample the distractors as data, then render them.

    ds = sample_distractors("alfworld", obs, rng, 300, admissible_actions=acts)   # list[Distractor]
    aug = render(obs, ds)                                                       # == augment_text(...)

Sampling contract (what a token-level splice must reproduce to agree key for key):
1. Units per part: `part.count.units(epsilon)` (static for a given epsilon).
2. Raw draws: for part index i of the view and unit u, `part.n_fields` uint32 values
   - JAX key: `jax.random.bits(fold_in(fold_in(key, i), u), (n_fields,), uint32)` (so a unit's draws do not
     depend on how many units there are);
   - numpy Generator (or int seed -> `numpy.random.default_rng(seed)`): `rng.integers(0, 2**32,
     (units, n_fields), uint32)`, one call per part with units > 0, in part order.
3. Choices from draws, all `draw % n`: field 0 the template, fields 1..L one per word list (the part's file
   order, drawn whether or not the template uses it), field L+1 the slot among `insertion_slots(text)`,
   field L+2 the kind's extra choice (coords: the cell among `outside_cells`; monitor: which other state).
4. Entity ids (kind "entity"): the k-th unit of type t in this state gets id `max_real_id(t) + k` (see
   `fresh_ids`), so ids depend on the chosen types and the real ids only.
5. Rendering: each unit becomes `separator + text`, inserted at `offset` (a character offset of the
   original text); units at the same offset keep sampling order.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from envs.distractors.bank import Bank, Part, View, _exact, load_bank

CONTEXT_KEYS = {
    "view": "which view of the bank (WebShop: 'search' or 'detail')",
    "slots": "explicit insertion offsets (characters), overriding the view's placement",
    "admissible_actions": "ALFWorld: the admissible commands (their ids are real)",
    "entities": "ALFWorld: every real entity name of the game (their ids are real)",
    "height": "Sokoban: the room's rows", "width": "Sokoban: the room's columns",
    "dim": "Sokoban: a square room's side (instead of height/width)",
    "other_states": "cross-domain: states of other domains, as texts or (domain, text) pairs",
}


@dataclasses.dataclass(frozen=True)
class Distractor:
    """One sampled unit (a sentence, a line, an ad, a fake result), as data.

    part: the bank part it came from; template: index into part.templates; words: (word list, index) for
    every word list of the part (file order; unused lists are drawn too); slot: index into the slots of the
    text; offset: the character offset of the ORIGINAL text it goes in at; separator: put before `text`;
    text: the unit as rendered; entity_id / coords / source: the kind's extra choice (ALFWorld id, the
    (r, c) outside the room, the index into other_states), else None.
    """

    part: str
    template: int
    words: tuple[tuple[str, int], ...]
    slot: int
    offset: int
    separator: str
    text: str
    entity_id: int | None = None
    coords: tuple[int, int] | None = None
    source: int | None = None


# ---------------------------------------------------------------------------------------------- checks


def check_epsilon(epsilon) -> float:
    """epsilon as given, if it is a finite number >= 0 (the injected volume in tokens; 0 = off)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon (the injected volume in tokens) must be a finite number >= 0, got {epsilon!r}; "
                         f"use 0 to turn augmentation off")
    return epsilon


def check_probability(p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"p (the probability that an episode is augmented) must be a number in [0, 1], got {p!r}")
    return float(p)


def _check_context(context: Mapping[str, Any]) -> None:
    unknown = sorted(set(context) - set(CONTEXT_KEYS))
    if unknown:
        raise ValueError(f"unknown context key(s) {unknown}; known ones: " +
                         "; ".join(f"{k} ({v})" for k, v in CONTEXT_KEYS.items()))
    for key in ("admissible_actions", "entities"):
        v = context.get(key)
        if v is not None and (isinstance(v, str) or not all(isinstance(s, str) for s in v)):
            raise ValueError(f"{key} must be a list of strings (not one string), got {v!r}")


# ---------------------------------------------------------------------------------------------- randomness


def _is_jax_key(x) -> bool:
    if "jax" not in sys.modules:  # nothing can be a jax array before jax is imported
        return False
    import jax

    if not isinstance(x, jax.Array):
        return False
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) and x.shape == ():
        return True
    if x.dtype == np.uint32 and x.shape == (2,):
        return True
    raise ValueError(f"a JAX key for distractors must be one PRNG key (typed, or raw uint32[2]), got "
                     f"{x.dtype}{list(x.shape)}; split a batch of keys and pass one per state")


def as_generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy.random.Generator, a non-negative int seed or a JAX PRNG key, got {rng!r}")


@functools.cache
def _jax_bits_fn(n_units: int, n_fields: int):
    import jax
    import jax.numpy as jnp

    def bits(key, part_index):
        pk = jax.random.fold_in(key, part_index)
        keys = jax.vmap(lambda u: jax.random.fold_in(pk, u))(jnp.arange(n_units, dtype=jnp.uint32))
        return jax.vmap(lambda k: jax.random.bits(k, (n_fields,), jnp.uint32))(keys)

    return jax.jit(bits)


class _Draws:
    """uint32 draws per part, from a JAX key or a numpy Generator (the contract in the module docstring)."""

    def __init__(self, rng):
        self.key = rng if _is_jax_key(rng) else None
        self.gen = None if self.key is not None else as_generator(rng)

    def part(self, part_index: int, n_units: int, n_fields: int) -> np.ndarray:
        if self.key is not None:
            # A unit's draws do not depend on the unit count, so compile for counts rounded up to a power of
            # two (fewer compiles) and keep the first n_units rows.
            padded = max(8, 1 << (n_units - 1).bit_length())
            return np.asarray(_jax_bits_fn(padded, n_fields)(self.key, np.uint32(part_index)))[:n_units]
        return self.gen.integers(0, 2**32, size=(n_units, n_fields), dtype=np.uint32)


def apply_this_episode(rng_or_seed, p) -> bool:
    """One coin per episode: True with probability p (p = 0 never, p = 1 always).

    numpy Generator / int seed: `rng.random() < p`; JAX key: `jax.random.bernoulli(key, p)`. Give it its own
    key (or generator) rather than the one the states are sampled from."""
    p = check_probability(p)
    if _is_jax_key(rng_or_seed):
        import jax

        return bool(jax.random.bernoulli(rng_or_seed, p))
    return bool(as_generator(rng_or_seed).random() < p)


# ---------------------------------------------------------------------------------------------- slots


_SENTENCE_END = re.compile(r"[.!?](?=\Z|\n|[ \t]+[A-Z])")
_LINE_BREAK = re.compile(r"\n(?![ \t])")


def insertion_slots(text: str, placement: str) -> list[int]:
    """Sorted character offsets where units may go in (see the placements in bank.py); never empty."""
    if placement == "sentence":
        slots = [m.end() for m in _SENTENCE_END.finditer(text)]
    elif placement == "line":
        slots = [m.start() for m in _LINE_BREAK.finditer(text)]
    elif placement == "end":
        slots = []
    else:
        raise ValueError(f"unknown placement {placement!r}; use 'sentence', 'line' or 'end'")
    return sorted(set(slots) | {len(text)})


def _explicit_slots(slots, text: str) -> list[int]:
    if isinstance(slots, (str, bytes)) or not slots or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and 0 <= s <= len(text) for s in slots):
        raise ValueError(f"slots must be a non-empty list of character offsets in [0, {len(text)}], got {slots!r}")
    return sorted({int(s) for s in slots})


# ---------------------------------------------------------------------------------------------- kinds


@functools.lru_cache(maxsize=1024)
def _id_pattern(entity_type: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-]){re.escape(entity_type)} (\d+)\b")


def real_ids(entity_type: str, texts: Iterable[str]) -> set[int]:
    """The ids "<type> <n>" that appear in `texts` (observation, admissible commands, entity names)."""
    # One scan of the texts joined by newlines (a non-word character, so no match spans two texts).
    joined = texts if isinstance(texts, str) else "\n".join(texts)
    return {int(m.group(1)) for m in _id_pattern(entity_type).finditer(joined)}


def fresh_ids(types: Sequence[str], texts: Sequence[str]) -> list[int]:
    """An id for each of `types` (in order) that no "<type> <n>" in `texts` has, nor any earlier one here:
    the k-th occurrence of a type gets max(real ids of that type, 0) + k."""
    top: dict[str, int] = {}
    out = []
    joined = "\n".join(texts)
    for t in types:
        if t not in top:
            top[t] = max(real_ids(t, joined), default=0)
        top[t] += 1
        out.append(top[t])
    return out


def room_size(context: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) from context height/width or dim; a ValueError says what to pass."""
    dim, h, w = context.get("dim"), context.get("height"), context.get("width")
    if dim is not None and (h is not None or w is not None):
        raise ValueError("pass either dim=D (square room) or height=H, width=W, not both")
    if dim is not None:
        h = w = dim
    for name, v in (("height", h), ("width", w)):
        if v is None or isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"coordinate distractors need the room's size: pass height=H, width=W (or dim=D) as "
                             f"positive ints (Sokoban: the env's dim); got {name}={v!r}")
    return int(h), int(w)


def outside_cells(height: int, width: int, margin: int) -> list[tuple[int, int]]:
    """Cells (r, c) with 0 <= r < height + margin, 0 <= c < width + margin that are not inside the room
    (r >= height or c >= width), row-major: the candidates a coordinate distractor picks from."""
    return [(r, c) for r in range(height + margin) for c in range(width + margin) if r >= height or c >= width]


def _other_states(context: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    states = context.get("other_states")
    if states is None or isinstance(states, str) or not len(states):
        raise ValueError("cross-domain distractors need other_states=[...]: texts of states of other domains "
                         "(or (domain, text) pairs, which pick the monitor's label)")
    out = []
    for s in states:
        if isinstance(s, str):
            out.append((None, s))
        elif isinstance(s, (tuple, list)) and len(s) == 2 and all(isinstance(x, str) for x in s):
            out.append((s[0], s[1]))
        else:
            raise ValueError(f"each of other_states must be a text or a (domain, text) pair, got {s!r}")
    return out


def monitor_text(state: str, max_words: int) -> str:
    """Another domain's state on one line, cut to `max_words` words ("..." marks a cut)."""
    words = state.split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")


# ---------------------------------------------------------------------------------------------- sampling


def count_units(bank: str | Bank, epsilon, view: str | None = None) -> dict[str, int]:
    """Units per part of the view for `epsilon` (what a state gets; static, so a splice can size its buffer)."""
    eps = check_epsilon(epsilon)
    return {p.name: p.count.units(eps) for p in load_bank(bank).view(view).parts}


def _units_of_part(part: Part, part_bits: np.ndarray, slots: list[int], separator: str, eps,
                   context: Mapping[str, Any]) -> list[dict]:
    """Choices and fill values for each unit of one part (entity ids are filled in afterwards)."""
    names = [k for k, _ in part.words]
    lists = [w for _, w in part.words]
    L = len(names)
    if part.kind == "coords":
        cells = outside_cells(*room_size(context), part.margin)
    elif part.kind == "monitor":
        others = _other_states(context)
        max_words = max(1, math.floor(_exact(eps) / _exact(part.tokens_per_word)))
    out = []
    for b in part_bits:
        b = [int(x) for x in b]
        word_idx = [b[1 + j] % len(lists[j]) for j in range(L)]
        fill = {names[j]: lists[j][word_idx[j]] for j in range(L)}
        extra = {}
        if part.kind == "coords":
            r, c = cells[b[L + 2] % len(cells)]
            fill.update(r=r, c=c)
            extra["coords"] = (r, c)
        elif part.kind == "monitor":
            src = b[L + 2] % len(others)
            domain, state = others[src]
            fill.update(label=part.label(domain), state=monitor_text(state, max_words))
            extra["source"] = src
        slot = b[L + 1] % len(slots)
        out.append(dict(part=part.name, template=b[0] % len(part.templates), words=tuple(zip(names, word_idx)),
                        slot=slot, offset=slots[slot], separator=separator, fill=fill, **extra))
    return out


def sample_distractors(bank: str | Bank, text: str, rng, epsilon, **context) -> list[Distractor]:
    """The distractors one state gets, as data (no text is changed). `render(text, result)` applies them.

    bank: a shipped bank name, a bank file path, or a `Bank`; text: the state as the agent would read it;
    rng: a numpy Generator, an int seed or a JAX PRNG key (same rng, same result); epsilon: injected volume
    in tokens (0: nothing). context: see `CONTEXT_KEYS` (e.g. admissible_actions/entities for ALFWorld,
    height/width or dim for Sokoban, other_states for cross-domain, view for WebShop)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str (the state the agent reads), got {type(text).__name__}")
    eps = check_epsilon(epsilon)
    _check_context(context)
    bank = load_bank(bank)
    view: View = bank.view(context.get("view"))
    counts = [p.count.units(eps) for p in view.parts]
    if not any(counts):
        return []
    slots = (_explicit_slots(context["slots"], text) if context.get("slots") is not None
             else insertion_slots(text, view.placement))
    draws = _Draws(rng)
    units = []
    for i, (part, n) in enumerate(zip(view.parts, counts)):
        if n:
            units += [(part, u) for u in _units_of_part(part, draws.part(i, n, part.n_fields), slots,
                                                       view.separator, eps, context)]
    entity_units = [(p, u) for p, u in units if p.kind == "entity"]
    if entity_units:
        real_texts = [text, *(context.get("admissible_actions") or ()), *(context.get("entities") or ())]
        ids = fresh_ids([u["fill"][p.entity] for p, u in entity_units], real_texts)
        for (p, u), i in zip(entity_units, ids):
            u["fill"][p.entity] = f"{u['fill'][p.entity]} {i}"
            u["entity_id"] = i
    out = []
    for part, u in units:
        fill = u.pop("fill")
        out.append(Distractor(text=part.templates[u["template"]].format(**fill), **u))
    return out


def render(text: str, distractors: Sequence[Distractor]) -> str:
    """`text` with every distractor's `separator + text` inserted at its offset (list order within an offset)."""
    by_offset: dict[int, list[Distractor]] = {}
    for d in distractors:
        if not 0 <= d.offset <= len(text):
            raise ValueError(f"distractor offset {d.offset} is outside this text (length {len(text)}); render the "
                             f"distractors into the text they were sampled for")
        by_offset.setdefault(d.offset, []).append(d)
    pieces, prev = [], 0
    for off in sorted(by_offset):
        pieces.append(text[prev:off])
        pieces.extend(d.separator + d.text for d in by_offset[off])
        prev = off
    pieces.append(text[prev:])
    return "".join(pieces)


def augment_text(domain_or_bank: str | Bank, text: str, rng, epsilon, **context) -> str:
    """The state with goal-irrelevant distractors added: `render(text, sample_distractors(...))`.

    epsilon = 0 returns `text` unchanged. The per-episode probability p is the caller's (one coin per
    episode, `apply_this_episode`); call this for every state of an augmented episode with a fresh rng draw."""
    return render(text, sample_distractors(domain_or_bank, text, rng, epsilon, **context))
