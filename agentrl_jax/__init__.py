"""agentrl_jax: RL post-training of LLM agents on multi-turn text environments, in JAX."""

__version__ = "0.1.0"
