"""The on-device episode's static batch buckets: live rows gathered into a smaller generation batch give the
very same batch as the unbucketed program (greedy), with episodes that finish at different turns."""
import gin
import jax
import numpy as np
import pytest
from flax import nnx
from transformers import AutoTokenizer

import envs.sokoban as sk
from agentrl_jax import generate as gen
from agentrl_jax.chat import ChatFormat
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.rollout import device_batch_buckets, sokoban_device_rollout
from agentrl_jax.sokoban_prompt import SokobanPrompter
from helpers.fixed_answer import fixed_answer_policy

# Indices into split(PRNGKey(0), 512) of 6x6 one-box levels that answering "up" solves at turn 0 (19, 142,
# 235), at turn 1 (33, 57, 68) or never within 4 steps (0, 1); shuffled so the gather reorders rows. Live
# episodes per turn: 8, 5, 2, 2: with buckets (2, 4, 8) turns 2 and 3 generate in the bucket of 2.
LEVELS = [0, 19, 33, 1, 142, 57, 235, 68]


def test_default_buckets_halve_down_to_min_bucket():
    assert device_batch_buckets(64) == (8, 16, 32, 64)
    assert device_batch_buckets(8) == (8,) and device_batch_buckets(12) == (12,)
    assert device_batch_buckets(64, enabled=False) == (64,)
    assert device_batch_buckets(8, min_bucket=2) == (2, 4, 8)
    with pytest.raises(ValueError, match="min_bucket"):
        device_batch_buckets(8, min_bucket=0)


def _rollout(policy, env, pr, cfg, keys, bindings):
    graphdef, params = nnx.split(policy)
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config(bindings)
    try:  # a fresh function per setting (jit caches traces per function): buckets are read at trace time
        run = jax.jit(lambda *a: sokoban_device_rollout(*a), static_argnums=(0, 2, 3, 4))
        args = (graphdef, params, env, pr, cfg, keys, jax.random.PRNGKey(0))
        branches = run.lower(*args).as_text().count("stablehlo.case")
        return jax.device_get(run(*args)), branches
    finally:
        gin.clear_config()


def test_bucketed_device_rollout_equals_unbucketed():
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_folder())
    chat = ChatFormat.from_tokenizer(tokenizer, thinking=False)
    policy, answer_len = fixed_answer_policy(chat, "<action>up</action>")
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=4)
    pr = SokobanPrompter(chat, dim=6, max_steps=4, render_style="grid", prompt_style="minimal", window=0,
                         max_prompt_tokens=128)
    cfg = gen.GenerationConfig(max_new_tokens=answer_len + 2, temperature=0.0, stop_ids=chat.stop_ids, pad_id=0)
    keys = jax.random.split(jax.random.PRNGKey(0), 512)[np.asarray(LEVELS)]
    off, two = ["rollout.device_batch_buckets.enabled = False"], ["rollout.device_batch_buckets.min_bucket = 2"]
    (flat, flat_stats), flat_cases = _rollout(policy, env, pr, cfg, keys, off)
    (buck, buck_stats), buck_cases = _rollout(policy, env, pr, cfg, keys, two)
    assert buck_cases == flat_cases + 1  # the bucketed program holds the bucket switch, the other does not
    # Not vacuous: episodes end at different turns, so the later turns ran in the bucket of 2.
    np.testing.assert_array_equal(np.asarray(flat.valid).sum(0), [8, 5, 2, 2])
    for field in flat.__dataclass_fields__:
        np.testing.assert_array_equal(np.asarray(getattr(buck, field)), np.asarray(getattr(flat, field)),
                                      err_msg=field)
    for field in ("episode_return", "success", "length", "truncated", "lost", "augmented"):
        np.testing.assert_array_equal(np.asarray(getattr(buck_stats, field)), np.asarray(getattr(flat_stats, field)),
                                      err_msg=field)
    assert np.asarray(flat_stats.success).sum() == 6
