"""WebShop's product catalog and goals, loaded from `data/webshop/` (see the README there).

Facts followed (Yao et al. 2022, princeton-nlp/WebShop, as described in `data/webshop/README.md`): the product
processing of its loader (title, description, bullet points, parsed prices, lower-cased options, attributes),
the search document text, the synthetic goals (one per combination of a product's option values, with a price
ceiling drawn from the first four multiples of 10 above the price) and the split by goal index after one fixed
shuffle (indices 0-499 validation, 500+ train, as verl-agent uses the "small" set).

Randomness: WebShop draws range prices and price ceilings from Python's global `random`, then shuffles the goals
under `random.seed(233)`. Here one `random.Random(goal_seed)` draws the prices and ceilings and a fresh
`random.Random(goal_seed)` shuffles, so a catalog is a pure function of (files, goal_seed): every worker process
builds the same goal list and the 500 validation goals never change.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import re
from decimal import Decimal
from typing import Any

DEFAULT_DATA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "data", "webshop")
PRODUCTS_FILE = "items_shuffle_1000.json"
ATTRIBUTES_FILE = "items_ins_v2_1000.json"
HUMAN_FILE = "items_human_ins.json"
# WebShop's names for the full set ("setup.sh -d all"), read when the small set's files are not in the folder
FULL_PRODUCTS_FILE, FULL_ATTRIBUTES_FILE = "items_shuffle.json", "items_ins_v2.json"
NUM_VALIDATION_GOALS = 500
SPLITS = ("validation", "train", "human")
PRICE_STEPS = tuple(10.0 * i for i in range(1, 100))  # 10, 20, ..., 990: the price ceilings goals can ask for
NO_PRICE_LIMIT = 1_000_000.0
FULL_SET_HINT = (f"for the full 1.18M-product set, point it at a folder with WebShop's {FULL_PRODUCTS_FILE} and "
                 f"{FULL_ATTRIBUTES_FILE} (what its `setup.sh -d all` downloads) and {HUMAN_FILE}")


def data_files(path: str) -> tuple[str, str] | None:
    """(products, attributes) file paths in `path`: the small set's names, else the full set's; None if neither."""
    for names in ((PRODUCTS_FILE, ATTRIBUTES_FILE), (FULL_PRODUCTS_FILE, FULL_ATTRIBUTES_FILE)):
        files = tuple(os.path.join(path, n) for n in names)
        if all(os.path.isfile(f) for f in files):
            return files  # type: ignore[return-value]
    return None


def resolve_data_path(data_path: str | None) -> str:
    """The data folder (None = the repository's `data/webshop`); a clear error naming the gin binding if absent."""
    path = os.path.abspath(os.path.expanduser(os.path.expandvars(
        data_path or os.environ.get("WEBSHOP_DATA") or DEFAULT_DATA_PATH)))
    if data_files(path) is None:
        raise ValueError(f"WebShop data not found: {path!r} has neither {PRODUCTS_FILE} + {ATTRIBUTES_FILE} nor "
                         f"{FULL_PRODUCTS_FILE} + {FULL_ATTRIBUTES_FILE}. Bind `WebShopEnv.data_path` (gin) or set "
                         f"$WEBSHOP_DATA to such a folder (the vendored 'data/webshop' holds the 1000-product set; "
                         f"{FULL_SET_HINT}).")
    return path


def parse_price(pricing: str) -> list[float]:
    """'$12.99' -> [12.99]; '$19.99$27.99' -> [19.99, 27.99]; '' -> [100.0] (WebShop's default price)."""
    if not pricing:
        return [100.0]
    values = [float(Decimal(re.sub(r"[^\d.]", "", p))) for p in pricing.split("$")[1:]]
    return values[:2] if values else [100.0]


def price_tag(prices: list[float]) -> str:
    return f"${prices[0]}" if len(prices) == 1 else f"${prices[0]} to ${prices[1]}"


def process_product(raw: dict, attributes: dict) -> dict:
    """One product as WebShop's pages and reward read it (only the fields they use)."""
    bullets = raw["small_description"]
    bullets = bullets if isinstance(bullets, list) else [bullets]
    options: dict[str, list[str]] = {}
    for name, contents in (raw.get("customization_options") or {}).items():
        if contents is None:
            continue
        options[name.lower()] = [c["value"].strip().replace("/", " | ").lower() for c in contents]
    info = attributes.get(raw["asin"], {})
    pricing = parse_price(raw.get("pricing") or "")
    return {
        "asin": raw["asin"], "Title": raw["name"], "Description": raw["full_description"], "BulletPoints": bullets,
        "pricing": pricing, "Price": price_tag(pricing), "Rating": "N.A.", "options": options,
        "Attributes": info.get("attributes", ["DUMMY_ATTR"]) if "attributes" in info else ["DUMMY_ATTR"],
        "instruction_text": info.get("instruction"), "instruction_attributes": info.get("instruction_attributes"),
        "category": raw["category"], "query": raw["query"].lower().strip(),
        "product_category": raw["product_category"], "name": raw["name"],
    }


def search_text(p: dict) -> str:
    """The document WebShop indexes: title, description, first bullet and "name: v1, v2, and name: ..."."""
    option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in p["options"].items())
    first_bullet = p["BulletPoints"][0] if p["BulletPoints"] else ""
    return " ".join([p["Title"], p["Description"], first_bullet, option_text]).lower()


def purchase_price(prices: list[float], rng: random.Random) -> float:
    """A single price is the price; a range is one uniform draw between its ends (made once, at load)."""
    return prices[0] if len(prices) == 1 else rng.uniform(*prices[:2])


def price_ceiling(price: float, rng: random.Random) -> float:
    """The larger of two of the first four multiples of 10 above the price; no limit if fewer than two exist."""
    steps = [p for p in PRICE_STEPS if p > price][:4]
    if len(steps) < 2:
        return NO_PRICE_LIMIT
    return max(rng.sample(steps, 2))


def _price_clause(upper: float) -> str:
    return "" if upper == NO_PRICE_LIMIT else f", and price lower than {upper:.2f} dollars"


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Products (WebShop order), purchase prices, the shuffled synthetic goals and the human goals."""

    products: tuple[dict, ...]
    by_asin: dict[str, dict]
    prices: dict[str, float]
    goals: tuple[dict, ...]
    human_goals: tuple[dict, ...]
    data_path: str
    goal_seed: int

    def split_goals(self, split: str) -> tuple[dict, ...]:
        if split == "validation":
            return self.goals[:NUM_VALIDATION_GOALS]
        if split == "train":
            return self.goals[NUM_VALIDATION_GOALS:]
        if split == "human":
            return self.human_goals
        raise ValueError(f"unknown WebShop split {split!r}; use one of {SPLITS} (gin: WebShopEnv.split)")


def synthetic_goals(products: list[dict], prices: dict[str, float], rng: random.Random) -> list[dict]:
    """One goal per combination of option values (names sorted) of every product with an instruction."""
    goals = []
    for p in products:
        if p["instruction_text"] is None:
            continue
        upper = price_ceiling(prices[p["asin"]], rng)
        names = sorted(p["options"])
        for combo in itertools.product(*(p["options"][n] for n in names)):
            goal_options = dict(zip(names, combo))
            opts = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
            goals.append({
                "asin": p["asin"], "category": p["category"], "query": p["query"], "name": p["Title"],
                "product_category": p["product_category"], "attributes": list(p["instruction_attributes"]),
                "goal_options": goal_options, "price_upper": upper, "base_instruction": p["instruction_text"],
                "instruction_text": f"{p['instruction_text']}{' with ' + opts if opts else ''}{_price_clause(upper)}",
            })
    counts: dict[str, int] = {}
    for g in goals:
        for a in g["attributes"]:
            counts[a] = counts.get(a, 0) + 1
    for g in goals:  # only used when goals are sampled by weight rather than indexed
        g["weight"] = sum(1.0 / counts[a] for a in g["attributes"]) / len(g["attributes"])
    return goals


def human_goals(products: list[dict], prices: dict[str, float], human: dict, rng: random.Random) -> list[dict]:
    """One goal per human instruction with attributes; goal options are a list of values (not name/value pairs)."""
    goals = []
    for p in products:
        for ins in human.get(p["asin"], []):
            if not ins["instruction_attributes"]:
                continue
            upper = price_ceiling(prices[p["asin"]], rng)
            goals.append({
                "asin": p["asin"], "category": p["category"], "query": p["query"], "name": p["name"],
                "product_category": p["product_category"], "attributes": list(ins["instruction_attributes"]),
                "goal_options": list(ins["instruction_options"]), "price_upper": upper, "weight": 1.0,
                "base_instruction": ins["instruction"].strip("."),
                "instruction_text": ins["instruction"].strip(".") + _price_clause(upper),
            })
    return goals


def load_catalog(data_path: str | None = None, goal_seed: int = 233) -> Catalog:
    """Read the files and build products, prices and goals (deterministic in `goal_seed`)."""
    path = resolve_data_path(data_path)
    products_file, attributes_file = data_files(path)
    with open(products_file) as f:
        raw_products = json.load(f)
    with open(attributes_file) as f:
        attributes = json.load(f)
    human: dict[str, Any] = {}
    if os.path.isfile(os.path.join(path, HUMAN_FILE)):
        with open(os.path.join(path, HUMAN_FILE)) as f:
            human = json.load(f)
    products, seen = [], set()
    for raw in raw_products:
        asin = raw.get("asin")
        if not asin or asin == "nan" or len(asin) > 10 or asin in seen:  # WebShop skips these
            continue
        seen.add(asin)
        products.append(process_product(raw, attributes))
    rng = random.Random(goal_seed)
    prices = {p["asin"]: purchase_price(p["pricing"], rng) for p in products}
    goals = synthetic_goals(products, prices, rng)
    random.Random(goal_seed).shuffle(goals)
    humans = human_goals(products, prices, human, rng)
    return Catalog(tuple(products), {p["asin"]: p for p in products}, prices, tuple(goals), tuple(humans),
                   path, int(goal_seed))
