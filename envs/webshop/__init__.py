"""WebShop, offline and in-process: the 1000-product "small" set, BM25 search, WebShop's score (see `env`)."""
from envs.webshop.env import (MAX_STEPS, SUCCESS_REWARD, WebShopEnv, build_prompt, expert_plan, resources,
                              webshop_factory)

__all__ = ["WebShopEnv", "build_prompt", "webshop_factory", "expert_plan", "resources", "MAX_STEPS",
           "SUCCESS_REWARD"]
