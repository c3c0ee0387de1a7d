"""WebShop (Yao et al. 2022) as an `envs.interface.TextEnv`: text pages, BM25 search, WebShop's score; offline.

Pages, as the study's agents (verl-agent's text mode) see them: the visible texts of the page after the
instruction, each in quotes, joined by " [SEP] ":
- search page: 'Search'; the only admissible action is `search[<your query>]` (any non-empty query);
- results page: 'Back to Search' [SEP] 'Page 1 (Total results: 50)' [SEP] ('< Prev') [SEP] ('Next >') [SEP]
  then per product its ASIN, title and price, 10 products a page out of the top 50 hits;
- item page: 'Back to Search' [SEP] '< Prev' [SEP] each option name followed by its values [SEP] title [SEP]
  'Price: $..' [SEP] 'Rating: N.A.' [SEP] 'Description' [SEP] 'Features' [SEP] 'Reviews' [SEP] 'Buy Now';
- Description / Features / Reviews pages: 'Back to Search' [SEP] '< Prev' [SEP] the text (the small set has
  no reviews, so that page is empty);
- after `click[buy now]` the episode ends with the score.
Clickables are the lower-cased button texts, the lower-cased ASINs and the option values: `click[next >]`,
`click[b09s3bn15c]`, `click[navy blue]`, `click[buy now]`. Moves: `< Prev` goes from a results page to the
previous one, from an item page to its results page (dropping the selected options), from a sub-page to its
item page; `Back to Search` goes to the search page; clicking an option value selects it for its option name
(WebShop keys a value shared by two option names to the last of them).

Deliberate differences from WebShop's site: `Next >` is shown only while there are further results (WebShop
always shows it and serves empty pages), `search[...]` is admissible only on the search page, as the
admissible list says (WebShop runs a search typed on any page), and a search that finds nothing is refused
like any inadmissible action (WebShop shows an empty results page the agent has to leave again).

Reward (the study's): `success_reward` (10) when the purchase scores exactly 1, else 0; an action that is not
admissible on the page (unknown click, empty or over-long search, garbage) gets `invalid_penalty` (-0.1),
leaves the page as it was and costs a step. Answers that do not parse are the trainer's (`rollout`): they never
reach the env. `info["task_score"]` is WebShop's raw score R in [0, 1] (0 until a purchase), for the score
metric; `info["score_parts"]` its parts. The episode is truncated after `max_steps` (15) steps.

Goals: the synthetic goals of `data.load_catalog` under a fixed `goal_seed`; split "validation" = goal indices
0..499, "train" = 500.., "human" = the 13 human instructions of this set. `reset(seed)` plays goal
`seed % len(split goals)`, so seeds 0..n-1 are the first n goals of the split on every worker.
The catalog, search index and tagger are built once per process and shared by its envs (`resources`).
"""
from __future__ import annotations

import functools
import re
import time
from typing import Any, Sequence

import gin

from envs import prompting
from envs.interface import TextEnv, TextStep
from envs.webshop import data as wsdata
from envs.webshop import reward as wsreward
from envs.webshop.search import TOP_K, SearchEngine

SUCCESS_REWARD = 10.0
INVALID_PENALTY = -0.1
MAX_STEPS = 15
PAGE_SIZE = 10  # WebShop's PRODUCT_WINDOW
MAX_ACTION_CHARS = 1000
SEARCH_ACTION = "search[<your query>]"
BACK, PREV, NEXT, BUY = "back to search", "< prev", "next >", "buy now"
SUB_PAGES = ("Description", "Features", "Reviews")
_ACTION = re.compile(r"\s*(search|click)\s*\[(.*)\]\s*", re.IGNORECASE | re.DOTALL)


class Resources:
    """What every env of a process shares: the catalog, its search index and the title tagger."""

    def __init__(self, data_path: str | None, goal_seed: int, tagger_package: str):
        t0 = time.perf_counter()
        self.catalog = wsdata.load_catalog(data_path, goal_seed)
        self.engine = SearchEngine([wsdata.search_text(p) for p in self.catalog.products])
        self.index_build_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.tagger = wsreward.TitleTagger(tagger_package)
        self.tagger_load_s = time.perf_counter() - t1
        self.asins = [p["asin"] for p in self.catalog.products]

    def search(self, query: str) -> list[str]:
        return [self.asins[i] for i in self.engine.search(query, TOP_K)]


@functools.lru_cache(maxsize=4)
def resources(data_path: str | None = None, goal_seed: int = 233,
              tagger_package: str = wsreward.TAGGER_PACKAGE) -> Resources:
    """The process-wide shared catalog + index + tagger for these settings (built on first use)."""
    return Resources(wsdata.resolve_data_path(data_path), int(goal_seed), tagger_package)


def clickable_text(text: str) -> str:
    """How a clickable is named in actions: lower-cased, runs of whitespace (no-break spaces too) as one space."""
    return " ".join(text.split()).lower()


def parse_action(action: str) -> tuple[str, str] | None:
    """'search[...]' / 'click[...]' -> (kind, argument as `clickable_text`); else None."""
    m = _ACTION.fullmatch(action)
    if m is None:
        return None
    return m.group(1).lower(), clickable_text(m.group(2))


def render(parts: Sequence[str]) -> str:
    return " [SEP] ".join(f"'{p}'" for p in parts)


@gin.configurable(module="envs.webshop")
class WebShopEnv(TextEnv):
    """One WebShop session at a time, in-process.

    Args:
      split: "validation" (goals 0-499, the study's eval set), "train" (goals 500+) or "human".
      data_path: folder with the WebShop json files (None: $WEBSHOP_DATA, else the vendored `data/webshop`).
      goal_seed: the seed of the goal shuffle and the price draws (fixed: the eval set must not move).
      max_steps: actions per episode (the study: 15).
      success_reward / invalid_penalty: reward of a purchase scoring exactly 1 / of an inadmissible action.
      max_action_chars: longer actions are invalid (a 10 kB "query" is not a search).
      tagger_package: the installed spaCy model package that tags titles (see `reward`).
    """

    def __init__(self, split: str = "train", data_path: str | None = None, goal_seed: int = 233,
                 max_steps: int = MAX_STEPS, success_reward: float = SUCCESS_REWARD,
                 invalid_penalty: float = INVALID_PENALTY, max_action_chars: int = MAX_ACTION_CHARS,
                 tagger_package: str = wsreward.TAGGER_PACKAGE):
        if split not in wsdata.SPLITS:
            raise ValueError(f"unknown WebShop split {split!r}; use one of {wsdata.SPLITS} (gin: WebShopEnv.split)")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"WebShopEnv.max_steps must be a positive int, got {max_steps!r}")
        self.split, self.max_steps = split, max_steps
        self.success_reward, self.invalid_penalty = float(success_reward), float(invalid_penalty)
        self.max_action_chars = int(max_action_chars)
        self.res = resources(wsdata.resolve_data_path(data_path), int(goal_seed), tagger_package)
        self.goals = self.res.catalog.split_goals(split)
        self._ep: dict[str, Any] | None = None

    def catalog_path(self) -> str:
        """The data folder this env's catalog was read from."""
        return self.res.catalog.data_path

    # ------------------------------------------------------------------ episode
    def goal_index(self, seed: int) -> int:
        return int(seed) % len(self.goals)

    @property
    def goal(self) -> dict:
        if self._ep is None:
            raise RuntimeError("call reset(seed) first")
        return self._ep["goal"]

    def reset(self, seed: int) -> TextStep:
        idx = self.goal_index(seed)
        self._ep = {"goal": self.goals[idx], "goal_index": idx, "seed": int(seed), "steps": 0, "done": False,
                    "page": "search", "query": None, "results": [], "page_num": 1, "asin": None,
                    "options": {}, "sub": None, "score": 0.0, "parts": None}
        return self._step_out(0.0)

    def step(self, action: str) -> TextStep:
        ep = self._ep
        if ep is None:
            raise RuntimeError("call WebShopEnv.reset(seed) before step()")
        if ep["done"]:
            return self._step_out(0.0, after_done=True)
        ep["steps"] += 1
        move = self._parse(action)
        if move is None:
            reward, invalid = self.invalid_penalty, True
        else:
            reward, invalid = self._apply(*move), False
        truncated = not ep["done"] and ep["steps"] >= self.max_steps
        ep["done"] = ep["done"] or truncated
        return self._step_out(reward, invalid=invalid, truncated=truncated)

    def _parse(self, action) -> tuple[str, str, list | None] | None:
        """The move an action makes on the current page, or None when it is not admissible here."""
        if not isinstance(action, str) or len(action) > self.max_action_chars:
            return None
        parsed = parse_action(action)
        if parsed is None:
            return None
        kind, arg = parsed
        if kind == "search":
            if self._ep["page"] != "search" or not arg:
                return None
            hits = self.res.search(arg)
            return (kind, arg, hits) if hits else None  # a search that finds nothing leaves the page as it is
        return (kind, arg, None) if arg in self._clickables() else None

    def _apply(self, kind: str, arg: str, hits: list | None) -> float:
        ep = self._ep
        if kind == "search":
            ep.update(page="results", query=arg, results=hits, page_num=1, asin=None, options={})
            return 0.0
        target = self._clickables()[arg]
        if arg == BACK:
            ep.update(page="search", query=None, results=[], page_num=1, asin=None, options={}, sub=None)
        elif arg == NEXT:
            ep["page_num"] += 1
        elif arg == PREV and ep["page"] == "results":
            ep["page_num"] -= 1
        elif arg == PREV and ep["page"] == "item":
            ep.update(page="results", asin=None, options={})
        elif arg == PREV and ep["page"] == "sub":
            ep.update(page="item", sub=None)
        elif arg == BUY:
            return self._buy()
        elif target[0] == "product":
            ep.update(page="item", asin=target[1], options={})
        elif target[0] == "option":
            ep["options"][target[1]] = target[2]  # the value as the product lists it (the reward compares it)
        elif target[0] == "sub":
            ep.update(page="sub", sub=target[1])
        return 0.0

    def _buy(self) -> float:
        ep = self._ep
        product = self.res.catalog.by_asin[ep["asin"]]
        r, parts = wsreward.score(product, ep["goal"], self.res.catalog.prices[ep["asin"]], ep["options"],
                                  self.res.tagger.nouns)
        ep.update(page="done", done=True, score=r, parts=parts, bought=(ep["asin"], dict(ep["options"])))
        return self.success_reward if r == 1.0 else 0.0

    # ------------------------------------------------------------------ pages
    def _product(self) -> dict:
        return self.res.catalog.by_asin[self._ep["asin"]]

    def _page_results(self) -> list[str]:
        ep = self._ep
        start = (ep["page_num"] - 1) * PAGE_SIZE
        return ep["results"][start:start + PAGE_SIZE]

    def _has_next(self) -> bool:
        return self._ep["page_num"] * PAGE_SIZE < len(self._ep["results"])

    def _clickables(self) -> dict[str, tuple]:
        """Lower-cased clickable text -> what it is, for the current page (in page order)."""
        ep, out = self._ep, {}
        page = ep["page"]
        if page in ("results", "item", "sub"):
            out[BACK] = ("button",)
        if page == "results":
            if ep["page_num"] > 1:
                out[PREV] = ("button",)
            if self._has_next():
                out[NEXT] = ("button",)
            for asin in self._page_results():
                out[asin.lower()] = ("product", asin)
        elif page == "item":
            out[PREV] = ("button",)
            for name, values in self._product()["options"].items():
                for v in values:
                    key = clickable_text(v)
                    out.pop(key, None)  # a value shared by two option names belongs to the last one
                    out[key] = ("option", name, v)
            for sub in SUB_PAGES:
                out[sub.lower()] = ("sub", sub)
            out[BUY] = ("button",)
        elif page == "sub":
            out[PREV] = ("button",)
        return out

    def _page_parts(self) -> list[str]:
        ep = self._ep
        page = ep["page"]
        if page == "search":
            return ["Search"]
        if page == "results":
            parts = ["Back to Search", f"Page {ep['page_num']} (Total results: {len(ep['results'])})"]
            if ep["page_num"] > 1:
                parts.append("< Prev")
            if self._has_next():
                parts.append("Next >")
            for asin in self._page_results():
                p = self.res.catalog.by_asin[asin]
                parts += [asin, p["Title"], p["Price"]]
            return parts
        p = self._product() if ep["asin"] else None
        if page == "item":
            parts = ["Back to Search", "< Prev"]
            for name, values in p["options"].items():
                parts += [name, *values]
            return parts + [p["Title"], f"Price: {p['Price']}", f"Rating: {p['Rating']}", *SUB_PAGES, "Buy Now"]
        if page == "sub":
            body = {"Description": [p["Description"]], "Features": list(p["BulletPoints"]), "Reviews": []}[ep["sub"]]
            return ["Back to Search", "< Prev", *body]
        return ["Thank you for shopping with us!", f"Your score (min 0.0, max 1.0): {ep['score']:.4g}"]

    def admissible(self) -> tuple[str, ...]:
        if self._ep["page"] == "search":
            return (SEARCH_ACTION,)
        return tuple(f"click[{c}]" for c in self._clickables())

    def _step_out(self, reward: float, invalid: bool = False, truncated: bool = False,
                  after_done: bool = False) -> TextStep:
        ep = self._ep
        success = ep["page"] == "done" and ep["score"] == 1.0
        info: dict[str, Any] = {
            "task_score": ep["score"], "steps": ep["steps"], "page": ep["page"], "goal_index": ep["goal_index"],
            "goal_asin": ep["goal"]["asin"], "split": self.split, "seed": ep["seed"], "invalid_action": invalid,
        }
        if ep["parts"] is not None:
            info["score_parts"] = dict(ep["parts"])
            info["purchased"] = ep["bought"][0]
            info["selected_options"] = dict(ep["bought"][1])
        if truncated:
            info["truncated_reason"] = "max_steps"
        if after_done:
            info["after_done"] = True
        return TextStep(task=ep["goal"]["instruction_text"], observation=render(self._page_parts()),
                        admissible_actions=() if ep["done"] else self.admissible(), reward=float(reward),
                        done=ep["done"], success=success, truncated=truncated and not success, info=info)

    # ------------------------------------------------------------------ expert
    def expert_actions(self) -> list[str] | None:
        """A scripted purchase of the goal's product from the episode's start: search the instruction (the
        product's own wording, without the option and price clauses), page on until the product shows up
        (trying its title as the query when the instruction's top 50 miss it), open it, click each goal option
        value (names sorted), buy. None if neither query finds the product or the plan exceeds `max_steps`."""
        if self._ep is None:
            return None
        return expert_plan(self.res, self._ep["goal"], self.max_steps)


def expert_query(goal: dict) -> str:
    """The instruction without its option and price clauses: the words that describe the product."""
    return " ".join(goal["base_instruction"].lower().split())


def expert_plan(res: Resources, goal: dict, max_steps: int = MAX_STEPS) -> list[str] | None:
    asin = goal["asin"]
    product = res.catalog.by_asin[asin]
    for query in (expert_query(goal), " ".join(product["Title"].lower().split())):
        hits = res.search(query)
        if asin not in hits:
            continue
        page = hits.index(asin) // PAGE_SIZE
        options = goal["goal_options"]
        values = [options[k] for k in sorted(options)] if isinstance(options, dict) else list(options)
        values = [v for v in values if v]
        plan = [f"search[{query}]", *["click[next >]"] * page, f"click[{asin.lower()}]",
                *[f"click[{clickable_text(v)}]" for v in values], "click[buy now]"]
        return plan if len(plan) <= max_steps else None
    return None


def env_setting(name: str, options: dict | None = None, default: Any = None) -> Any:
    """A WebShopEnv argument as an env will see it: from `options`, else its gin binding, else `default`."""
    if options and name in options:
        return options[name]
    try:
        return gin.query_parameter(f"WebShopEnv.{name}")
    except ValueError:  # not bound
        return default


@gin.configurable(module="envs.webshop")
def webshop_factory(split: str = "train", data_path: str | None = None, max_steps: int = MAX_STEPS,
                    **kwargs) -> functools.partial:
    """A picklable `EnvPool` factory; the data folder the envs will use is checked here, in the parent. An
    explicit `data_path` is fixed in the factory; otherwise the workers' envs see the gin binding
    `WebShopEnv.data_path` (the pool replays the parent's bindings), or the default."""
    if split not in wsdata.SPLITS:
        raise ValueError(f"unknown WebShop split {split!r}; use one of {wsdata.SPLITS} (gin: WebShopEnv.split)")
    if data_path is not None:
        kwargs["data_path"] = wsdata.resolve_data_path(data_path)
    else:
        wsdata.resolve_data_path(env_setting("data_path"))
    return functools.partial(WebShopEnv, split=split, max_steps=max_steps, **kwargs)


SYSTEM_INTRO = "You are an expert autonomous agent operating in the WebShop e-commerce environment."
PAGE_NOTE = "Note: Prioritize click a product in the current page over going to next page."


@gin.configurable(module="envs.webshop", denylist=["task", "history", "observation", "admissible", "step"])
def build_prompt(task: str, history: Sequence[tuple[str, str]], observation: str, admissible: Sequence[str],
                 step: int, window: int = 2, thinking: bool = True) -> str:
    """The study's per-step WebShop prompt (arXiv 2601.18217, App. B), in our own words around its quoted parts:
    intro, task, the last `window` (observation, action) pairs, the current page, the admissible actions, the
    note on paging, then the answer format (<think> on or off)."""
    parts = [SYSTEM_INTRO, f"Your task is to: {task}."]
    past = prompting.history_block(history, step, window)
    if past:
        parts.append(past)
    parts.append(f"You are now at step {step + 1} and your current observation is: {observation}")
    parts.append(f"Your admissible actions of the current situation are: {prompting.format_admissible(admissible)}.")
    parts.append(PAGE_NOTE)
    return "\n".join(parts) + "\n\n" + prompting.answer_format(thinking)
