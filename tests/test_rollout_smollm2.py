"""The on-device Sokoban episode with SmolLM2's real tokenizer (its tags are several tokens each): greedy device
rollout == host rollout on a 2-layer truncation of the real checkpoint (real embeddings, real prompt pieces).
Parsing split tags into actions is checked against the host parser in tests/test_answer_parse.py."""
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import envs.sokoban as sk
from agentrl_jax import generate as gen
from agentrl_jax.chat import ChatFormat
from agentrl_jax.rollout import SokobanHostTask, host_rollout, sokoban_device_rollout
from agentrl_jax.sokoban_prompt import SokobanPrompter

REPO = Path(__file__).resolve().parents[1]
SMOL = Path(os.environ.get("AGENTRL_CACHE", REPO / "cache")) / "smollm2-135m-instruct"
FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "valid", "invalid", "action",
          "response_truncated", "prompt_truncated")


@pytest.fixture(scope="module")
def smol():
    if not (SMOL / "model.safetensors").exists():
        pytest.skip(f"SmolLM2 folder absent ({SMOL}); run `python scripts/fetch_smollm2.py` first")
    from agentrl_jax.models.hf import load_pretrained
    from agentrl_jax.policy import Policy

    with pytest.warns(UserWarning, match="ignoring"):  # the 28 layers past the truncation
        lm, tok = load_pretrained(str(SMOL), num_layers=2)
    return Policy(lm, None), tok


def _setup(tok, max_steps):
    chat = ChatFormat.from_tokenizer(tok, thinking=False)
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=max_steps)
    pr = SokobanPrompter(chat, dim=6, max_steps=max_steps, render_style="grid", prompt_style="compact", window=1,
                         max_prompt_tokens=320)
    assert pr.worst_case_prompt_tokens() <= 320 and pr.parser is not None
    return chat, env, pr


def _both(policy, env, pr, chat, tok, max_new_tokens, episodes=2):
    graphdef, params = nnx.split(policy)
    cfg = gen.GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_ids=chat.stop_ids,
                               pad_id=pr.pad_id)
    keys = jax.random.split(jax.random.PRNGKey(7), episodes)
    run = jax.jit(sokoban_device_rollout, static_argnums=(0, 2, 3, 4))
    dev = jax.device_get(run(graphdef, params, env, pr, cfg, keys, jax.random.PRNGKey(0)))
    host = host_rollout(graphdef, params, SokobanHostTask(env, pr, keys), cfg, jax.random.PRNGKey(0), tok,
                        pr.max_prompt_tokens)
    return dev, host


def _assert_same(dev, host):
    (db, ds), (hb, hs) = dev, host
    for field in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(db, field)), np.asarray(getattr(hb, field)), err_msg=field)
    np.testing.assert_allclose(db.reward, hb.reward, atol=1e-6)
    np.testing.assert_allclose(db.logprobs, hb.logprobs, atol=1e-4)
    np.testing.assert_array_equal(ds.success, hs.success)
    np.testing.assert_array_equal(ds.length, hs.length)


@pytest.mark.slow  # two compiles of a rollout program, as tests/test_rollout.py's tiny-model twin
def test_greedy_device_rollout_equals_host_rollout_on_truncated_smollm2(smol):
    policy, tok = smol
    chat, env, pr = _setup(tok, max_steps=2)
    dev, host = _both(policy, env, pr, chat, tok, max_new_tokens=4)
    _assert_same(dev, host)
    batch = dev[0]
    assert np.asarray(batch.valid).sum() == 4 and np.asarray(batch.response_mask).sum() > 4
