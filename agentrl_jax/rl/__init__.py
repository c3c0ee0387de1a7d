"""RL math: advantages (GAE, GRPO), PPO-style losses, KL estimators, log-probs, masked aggregation.

Pure, jit-able functions over [B, T] (tokens) or [B, K] (turns) arrays with float masks. Hyperparameters are
plain arguments; `RLConfig` (gin-configurable) bundles them for the trainer.
"""
from agentrl_jax.rl.aggregate import (AGGREGATION_MODES, Counts, aggregate, masked_mean, masked_sum, masked_var,
                                      masked_whiten)
from agentrl_jax.rl.gae import discounted_returns, gae, gae_turns, turns_to_tokens
from agentrl_jax.rl.grpo import broadcast_to_tokens, group_advantages, group_ids_from_keys
from agentrl_jax.rl.kl import KL_ESTIMATORS, kl_estimate, kl_loss, kl_penalty_in_reward
from agentrl_jax.rl.logprobs import (entropy_from_logits, logprobs_from_hidden_fn, token_logprobs, token_logprobs_and_entropy,
                                     token_logprobs_from_hidden)
from agentrl_jax.rl.ppo import RLConfig, entropy_bonus, policy_loss, ppo_loss, value_loss

__all__ = [
    "AGGREGATION_MODES", "Counts", "KL_ESTIMATORS", "RLConfig",
    "aggregate", "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    "gae", "gae_turns", "turns_to_tokens", "discounted_returns",
    "group_advantages", "group_ids_from_keys", "broadcast_to_tokens",
    "kl_estimate", "kl_loss", "kl_penalty_in_reward",
    "token_logprobs", "entropy_from_logits", "logprobs_from_hidden_fn", "token_logprobs_and_entropy", "token_logprobs_from_hidden",
    "policy_loss", "value_loss", "entropy_bonus", "ppo_loss",
]
