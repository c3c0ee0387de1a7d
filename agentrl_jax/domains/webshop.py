"""WebShop as a pooled text domain: `envs.webshop.WebShopEnv` (in-process BM25 search and WebShop's score).

Train on the `train` goals (indices 500+ of the fixed shuffle); held out: `validation` (goals 0-499, the study's
eval set) and `human` (the 13 human instructions of the small set). The study: 15 steps, prompts up to 4096
tokens, the last 2 steps shown (window 2).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import gin

import envs.webshop  # noqa: F401  (its gin configurables exist before gin files are parsed)
from agentrl_jax.domains.base import register
from agentrl_jax.domains.text import TextDomain


@register
@gin.configurable(denylist=["chat", "seed", "num_eval_tasks"])
class WebShopDomain(TextDomain):
    """WebShop (the 1000-product small set by default; `WebShopEnv.data_path` for another). Study defaults:
    max_steps 15, max_prompt_tokens 4096, window 2."""

    name = "webshop"
    splits = ("validation", "human")
    gin_configurables = ("WebShopDomain", "WebShopEnv", "webshop_factory", "webshop.build_prompt")
    default_window = 2

    def __init__(self, chat, seed: int, num_eval_tasks: int = 0, max_steps: int = 15,
                 max_prompt_tokens: int = 4096, **kwargs):
        super().__init__(chat, seed, num_eval_tasks, max_steps=max_steps, max_prompt_tokens=max_prompt_tokens,
                         **kwargs)

    def env_factory(self, split: str) -> Callable:
        from envs.webshop import webshop_factory  # noqa: PLC0415

        return webshop_factory(split=split, max_steps=self.max_steps, **self.options)

    @functools.lru_cache(maxsize=None)  # noqa: B019 (one domain object per run)
    def task_count(self, split: str) -> Optional[int]:
        """Goals in the split, from the catalog alone (no index, no tagger)."""
        from envs.webshop.data import load_catalog  # noqa: PLC0415
        from envs.webshop.env import env_setting  # noqa: PLC0415

        catalog = load_catalog(env_setting("data_path", self.options), env_setting("goal_seed", self.options, 233))
        return len(catalog.split_goals(self.check_split(split)))

    @functools.cached_property
    def catalog(self):
        """The catalog the envs read (products and goals; no index, no tagger), for the expert's rationale."""
        from envs.webshop.data import load_catalog  # noqa: PLC0415
        from envs.webshop.env import env_setting  # noqa: PLC0415

        return load_catalog(env_setting("data_path", self.options), env_setting("goal_seed", self.options, 233))

    def expert_reason(self, step, action: str) -> str:
        """From the episode's goal (the step's split and goal index) and the product the action opens."""
        from agentrl_jax.expert_data import webshop_reason  # noqa: PLC0415
        from envs.webshop.env import parse_action  # noqa: PLC0415

        goal = self.catalog.split_goals(step.info["split"])[int(step.info["goal_index"])]
        _, arg = parse_action(action) or ("", "")
        product = self.catalog.by_asin.get(goal["asin"]) if arg == goal["asin"].lower() else None
        price = self.catalog.prices.get(goal["asin"]) if product is not None else None
        return webshop_reason(goal, product, price, step.observation, action)

    def augment_context(self, ts, first_ts) -> dict:
        """Distractor view by page: ads and fake products on results pages ("search"), trivial features and ads
        on the search, item and sub pages ("detail")."""
        context = super().augment_context(ts, first_ts)
        view = "search" if ts.info.get("page") == "results" else "detail"
        if view in self._bank_views:  # a one-view bank (cross_domain, a user's own) needs none
            context["view"] = view
        return context

    @functools.cached_property
    def _bank_views(self) -> frozenset:
        from envs.distractors import load_bank  # noqa: PLC0415

        return frozenset(v.name for v in load_bank(self.augmentation.bank).views)

    def prompt_fn(self, ts, history, turn: int) -> str:
        from envs.webshop import build_prompt  # noqa: PLC0415

        return build_prompt(ts.task, history, ts.observation, ts.admissible_actions, turn, window=self.window,
                            thinking=self.chat.thinking)
