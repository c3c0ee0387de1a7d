"""Domains: one notion of a task domain for the trainer, the evaluator and SFT (see `base.py`).

Built in: sokoban (JAX, on device), alfworld and sciworld (pooled text envs). A new domain is one file here with
a `@register`-ed `Domain` subclass, imported below, and a gin file in `gin/envs/`.
"""
from agentrl_jax.domains.base import (HELD_OUT_STREAM, PROMPT_MODES, ROLLOUT_MODES, SFT_VALIDATION_STREAM,
                                      TRAIN_STREAM, Domain, RolloutSettings, Tasks, domain_class, domain_names,
                                      make_domain, register, stream_keys, stream_seeds)
from agentrl_jax.domains import sokoban, text  # noqa: F401,E402  (registers the built-in domains)
from agentrl_jax.domains import webshop  # noqa: F401,E402

__all__ = ["Domain", "RolloutSettings", "Tasks", "domain_class", "domain_names", "make_domain", "register",
           "stream_keys", "stream_seeds", "TRAIN_STREAM", "HELD_OUT_STREAM", "SFT_VALIDATION_STREAM",
           "ROLLOUT_MODES", "PROMPT_MODES"]
