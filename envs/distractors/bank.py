"""Distractor banks: the data (templates, word lists, counting rules) read from JSON, checked once on load.

A bank file (`envs/distractors/<name>.json`, or a user's own file):

    {
      "format": "agentrl-distractor-bank", "version": 1, "name": "alfworld", "description": "...",
      "views": {                                  # one per kind of page/state; most banks have one ("state")
        "state": {
          "placement": "sentence",                # where units go: "sentence" | "line" | "end" (see below)
          "separator": " ",                       # optional; put before every unit (default per placement)
          "parts": [                              # sampled in this order
            {
              "name": "objects",
              "count": {"tokens_per_unit": 12, "scale": 1, "min_units": 0, "max_units": null},
              "templates": ["You notice a {obj} that looks {desc}.", ...],
              "words": {"obj": [...], "desc": [...]},   # every {field} of a template names a list (or a special field)
              "entity": "obj"                     # optional, one of: "entity" | "coords" | "monitor"
            }
          ]
        }
      }
    }

Counting rule (per part): units(eps) = 0 if eps == 0, else
    min(max_units, max(min_units, floor(eps * scale / tokens_per_unit)))        (max_units null = no cap)
so ALFWorld's n = floor(eps/12) is {tokens_per_unit: 12}, Sokoban's k = max(1, floor(eps/10)) is
{tokens_per_unit: 10, min_units: 1}, WebShop's search pages min(floor(eps/100 * alpha * 10), 10) is
{tokens_per_unit: 10, scale: alpha, max_units: 10}.

Part kinds (at most one of these keys; a plain part just fills its templates from its word lists):
- "entity": "<word list>": that word is an ALFWorld-style object type and is rendered "<type> <id>" with an id
  no real entity of that type has (see `sample.fresh_ids`).
- "coords": {"margin": m}: templates may use {r} and {c}, a cell strictly outside the H x W room, within m
  rows/columns of it (the room's size comes from the caller's context).
- "monitor": {"tokens_per_word": t, "labels": {"<domain>": "<label>", "*": "<label>"}}: templates may use
  {label} and {state}: the flattened text of another domain's state (from context), cut to
  max(1, floor(eps / t)) words.

Placements (the insertion slots of a text; see `sample.insertion_slots`):
- "sentence": right after each sentence end ([.!?] followed by the end, a newline, or spaces and a capital
  letter), plus the end of the text; default separator " ".
- "line": before each newline that does not start an indented line (so listings stay whole), plus the end
  of the text; default separator "\\n".
- "end": the end of the text only (lines after the state); default separator "\\n".
"""
from __future__ import annotations

import dataclasses
import fractions
import functools
import importlib.resources
import json
import math
import os
import string
from collections.abc import Mapping, Sequence

FORMAT = "agentrl-distractor-bank"
VERSION = 1  # the newest bank format this code reads
PLACEMENTS = ("sentence", "line", "end")
DEFAULT_SEPARATORS = {"sentence": " ", "line": "\n", "end": "\n"}
PART_KINDS = ("entity", "coords", "monitor")
SPECIAL_FIELDS = {"coords": ("r", "c"), "monitor": ("label", "state")}
_PACKAGE = "envs.distractors"


@functools.lru_cache(maxsize=1)
def bank_names() -> tuple[str, ...]:
    """Names of the banks shipped with the package (the JSON files next to this module)."""
    root = importlib.resources.files(_PACKAGE)
    return tuple(sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json")))


def _exact(x) -> fractions.Fraction:
    """A number as an exact fraction of its decimal spelling (so floor(100 * 0.3 / 10) is 3, not 2)."""
    return fractions.Fraction(x) if isinstance(x, int) else fractions.Fraction(repr(float(x)))


@dataclasses.dataclass(frozen=True)
class CountRule:
    tokens_per_unit: float
    scale: float = 1
    min_units: int = 0
    max_units: int | None = None

    def units(self, epsilon: float) -> int:
        """How many units a state gets for an injected volume of `epsilon` tokens (0 when epsilon is 0)."""
        if epsilon == 0:
            return 0
        n = math.floor(_exact(epsilon) * _exact(self.scale) / _exact(self.tokens_per_unit))
        n = max(self.min_units, n)
        return n if self.max_units is None else min(self.max_units, n)


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    count: CountRule
    templates: tuple[str, ...]
    words: tuple[tuple[str, tuple[str, ...]], ...]  # (list name, words), in file order: the draw layout
    kind: str | None = None  # None | "entity" | "coords" | "monitor"
    entity: str | None = None  # kind "entity": the word list holding object types
    margin: int = 0  # kind "coords"
    tokens_per_word: float = 1.0  # kind "monitor"
    labels: tuple[tuple[str, str], ...] = ()  # kind "monitor": (domain, label), "*" = any other

    @property
    def word_lists(self) -> dict[str, tuple[str, ...]]:
        return dict(self.words)

    @property
    def n_fields(self) -> int:
        """Random draws per unit: template, one per word list (file order), slot, one extra (coords/monitor)."""
        return len(self.words) + 3

    def label(self, domain: str | None) -> str:
        labels = dict(self.labels)
        return labels.get(domain, labels["*"]) if domain is not None else labels["*"]


@dataclasses.dataclass(frozen=True)
class View:
    name: str
    placement: str
    separator: str
    parts: tuple[Part, ...]


@dataclasses.dataclass(frozen=True)
class Bank:
    name: str
    version: int
    description: str
    views: tuple[View, ...]
    path: str = ""

    def view(self, name: str | None = None) -> View:
        """The view `name`; None picks the only view (banks with several views need one named)."""
        names = [v.name for v in self.views]
        if name is None:
            if len(self.views) == 1:
                return self.views[0]
            raise ValueError(f"bank {self.name!r} has several views {names}: pass view=<one of them> "
                             f"(e.g. the kind of page the text is)")
        for v in self.views:
            if v.name == name:
                return v
        raise ValueError(f"bank {self.name!r} has no view {name!r}; its views are {names}")


class BankError(ValueError):
    """A bank file that cannot be used; the message names the file and what to fix."""


def _fail(where: str, problem: str):
    raise BankError(f"distractor bank {where}: {problem} (format: see envs/distractors/bank.py)")


def _number(where, obj, key, default=None, *, integer=False, positive=False, nullable=False):
    x = obj.get(key, default)
    if x is None and nullable:
        return None
    ok = isinstance(x, int) if integer else isinstance(x, (int, float))
    if isinstance(x, bool) or not ok or not math.isfinite(x) or x < 0 or (positive and x == 0):
        kind = "integer" if integer else "number"
        _fail(where, f"{key!r} must be a {'positive' if positive else 'non-negative'} {kind}, got {x!r}")
    return x


def _strings(where, x, what) -> tuple[str, ...]:
    if not isinstance(x, list) or not x or not all(isinstance(s, str) and s.strip() for s in x):
        _fail(where, f"{what} must be a non-empty list of non-empty strings")
    return tuple(x)


def _template_fields(where, template) -> set[str]:
    fields = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        _fail(where, f"template {template!r} is not a valid format string ({e}); write literal braces as {{{{ }}}}")
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            _fail(where, f"template {template!r}: fields must be plain names like {{obj}}, got {{{field}}}")
        fields.add(field)
    return fields


def _parse_part(where, obj) -> Part:
    if not isinstance(obj, dict):
        _fail(where, "a part must be an object with name, count, templates, words")
    unknown = set(obj) - {"name", "count", "templates", "words", "notes", *PART_KINDS}
    if unknown:
        _fail(where, f"unknown key(s) {sorted(unknown)}; a part has name, count, templates, words, notes and "
                     f"at most one of {list(PART_KINDS)}")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        _fail(where, "every part needs a 'name'")
    where = f"{where}, part {name!r}"
    count = obj.get("count")
    if not isinstance(count, dict):
        _fail(where, "'count' must be an object like {\"tokens_per_unit\": 12}")
    bad = set(count) - {"tokens_per_unit", "scale", "min_units", "max_units"}
    if bad:
        _fail(where, f"unknown count key(s) {sorted(bad)}; use tokens_per_unit, scale, min_units, max_units")
    if "tokens_per_unit" not in count:
        _fail(where, "'count' needs 'tokens_per_unit'")
    rule = CountRule(tokens_per_unit=_number(where, count, "tokens_per_unit", positive=True),
                     scale=_number(where, count, "scale", 1, positive=True),
                     min_units=_number(where, count, "min_units", 0, integer=True),
                     max_units=_number(where, count, "max_units", None, integer=True, nullable=True))
    if rule.max_units is not None and rule.max_units < rule.min_units:
        _fail(where, f"max_units {rule.max_units} is below min_units {rule.min_units}")
    templates = _strings(where, obj.get("templates"), "'templates'")
    words = obj.get("words", {})
    if not isinstance(words, dict):
        _fail(where, "'words' must be an object of word lists, e.g. {\"obj\": [\"mug\", \"cup\"]}")
    words = tuple((k, _strings(where, v, f"word list {k!r}")) for k, v in words.items())
    kinds = [k for k in PART_KINDS if k in obj]
    if len(kinds) > 1:
        _fail(where, f"a part has at most one of {list(PART_KINDS)}, got {kinds}")
    kind = kinds[0] if kinds else None
    extra: dict = {}
    names = dict(words)
    if kind == "entity":
        if obj["entity"] not in names:
            _fail(where, f"'entity' must name one of its word lists {sorted(names)}, got {obj['entity']!r}")
        if any(not w.replace(" ", "").isalnum() for w in names[obj["entity"]]):
            _fail(where, f"entity types must be plain words (letters/digits), got {list(names[obj['entity']])}")
        extra["entity"] = obj["entity"]
    elif kind == "coords":
        c = obj["coords"]
        if not isinstance(c, dict):
            _fail(where, "'coords' must be an object like {\"margin\": 2}")
        extra["margin"] = _number(where, c, "margin", None, integer=True, positive=True)
    elif kind == "monitor":
        m = obj["monitor"]
        if not isinstance(m, dict):
            _fail(where, "'monitor' must be an object like {\"tokens_per_word\": 1.5, \"labels\": {\"*\": ...}}")
        extra["tokens_per_word"] = _number(where, m, "tokens_per_word", None, positive=True)
        labels = m.get("labels")
        if not isinstance(labels, dict) or "*" not in labels or not all(isinstance(v, str) for v in labels.values()):
            _fail(where, "'monitor.labels' must map domain names to labels and include \"*\" for any other")
        extra["labels"] = tuple(labels.items())
    allowed = set(names) | set(SPECIAL_FIELDS.get(kind, ()))
    for t in templates:
        missing = _template_fields(where, t) - allowed
        if missing:
            _fail(where, f"template {t!r} uses {sorted(missing)}, which is neither a word list {sorted(names)} "
                         f"nor a field of this part's kind {list(SPECIAL_FIELDS.get(kind, ()))}")
    return Part(name=name, count=rule, templates=templates, words=words, kind=kind, **extra)


def parse_bank(data: Mapping, where: str = "<dict>") -> Bank:
    """A `Bank` from already-decoded JSON, checked; `BankError` (a ValueError) names what to fix."""
    if not isinstance(data, dict):
        _fail(where, "the file must hold one JSON object")
    if data.get("format") != FORMAT:
        _fail(where, f"'format' must be {FORMAT!r}, got {data.get('format')!r}")
    unknown = set(data) - {"format", "version", "name", "description", "source", "notes", "views"}
    if unknown:
        _fail(where, f"unknown key(s) {sorted(unknown)}; a bank has format, version, name, description, source, "
                     f"notes, views")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        _fail(where, f"'version' must be a positive integer, got {version!r}")
    if version > VERSION:
        _fail(where, f"version {version} is newer than this code reads ({VERSION}); update agentrl_jax or "
                     f"write the bank in version {VERSION}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        _fail(where, "'name' must be a non-empty string")
    views = data.get("views")
    if not isinstance(views, dict) or not views:
        _fail(where, "'views' must be a non-empty object, e.g. {\"state\": {\"placement\": ..., \"parts\": [...]}}")
    parsed = []
    for vname, v in views.items():
        vwhere = f"{where}, view {vname!r}"
        if not isinstance(v, dict):
            _fail(vwhere, "a view must be an object with placement and parts")
        if set(v) - {"placement", "separator", "parts", "notes"}:
            _fail(vwhere, f"unknown key(s) {sorted(set(v) - {'placement', 'separator', 'parts', 'notes'})}; a view "
                          f"has placement, separator, parts, notes")
        placement = v.get("placement")
        if placement not in PLACEMENTS:
            _fail(vwhere, f"'placement' must be one of {list(PLACEMENTS)}, got {placement!r}")
        sep = v.get("separator", DEFAULT_SEPARATORS[placement])
        if not isinstance(sep, str) or not sep:
            _fail(vwhere, f"'separator' must be a non-empty string, got {sep!r}")
        parts = v.get("parts")
        if not isinstance(parts, list) or not parts:
            _fail(vwhere, "'parts' must be a non-empty list")
        parts = tuple(_parse_part(vwhere, p) for p in parts)
        if len({p.name for p in parts}) != len(parts):
            _fail(vwhere, "part names must be unique within a view")
        parsed.append(View(name=vname, placement=placement, separator=sep, parts=parts))
    return Bank(name=name, version=version, description=str(data.get("description", "")), views=tuple(parsed),
                path=where)


@functools.lru_cache(maxsize=64)
def _load_file(path: str, mtime_ns: int) -> Bank:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BankError(f"distractor bank {path}: not valid JSON ({e}); fix the file") from None
    return parse_bank(data, path)


def _shipped_path(name: str) -> str:
    return str(importlib.resources.files(_PACKAGE) / f"{name}.json")


def load_bank(name_or_path: str | os.PathLike | Bank) -> Bank:
    """A shipped bank by name ("alfworld", "sokoban", "sciworld", "webshop", "cross_domain"), a user's bank
    file by path, or a `Bank` as is. Unknown names and bad files raise a ValueError that says what to do."""
    if isinstance(name_or_path, Bank):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"a distractor bank is a name {list(bank_names())} or a JSON file path, "
                         f"got {type(name_or_path).__name__}")
    s = os.fspath(name_or_path)
    if s in bank_names():
        path = _shipped_path(s)
    elif os.path.isfile(os.path.expanduser(s)):
        path = os.path.abspath(os.path.expanduser(s))
    else:
        looks_like_path = s.endswith(".json") or os.sep in s
        raise ValueError(
            (f"distractor bank file {s!r} does not exist; " if looks_like_path else f"unknown distractor bank {s!r}; ")
            + f"use one of the shipped banks {list(bank_names())} or the path of your own bank JSON file "
              f"(format: see envs/distractors/bank.py)")
    return _load_file(path, os.stat(path).st_mtime_ns)


def known_words(bank: Bank) -> dict[str, Sequence[str]]:
    """Every word list of every part, keyed "<view>/<part>/<list>" (for inspection and pre-tokenizing)."""
    return {f"{v.name}/{p.name}/{k}": words for v in bank.views for p in v.parts for k, words in p.words}
