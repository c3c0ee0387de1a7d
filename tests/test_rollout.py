"""Rollout invariants on the real tiny model and the real JAX Sokoban."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import example, given, settings, strategies as st
from transformers import AutoTokenizer

import envs.sokoban as sk
from agentrl_jax import generate as gen
from agentrl_jax import learner
from agentrl_jax.chat import ChatFormat
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.policy import load_policy
from agentrl_jax.rollout import SokobanHostTask, host_rollout, sokoban_device_rollout
from agentrl_jax.sokoban_prompt import SokobanPrompter


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_tiny_folder())


@pytest.fixture(scope="module")
def policy():
    pol, _ = load_policy("tiny")
    return pol


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("prompt_style,render_style", [("study", "coords"), ("compact", "grid"), ("minimal", "grid")])
def test_device_prompt_equals_host_prompt_and_template(tokenizer, thinking, prompt_style, render_style):
    chat = ChatFormat.from_tokenizer(tokenizer, thinking=thinking)
    pr = SokobanPrompter(chat, dim=6, max_steps=15, render_style=render_style, prompt_style=prompt_style,
                         window=1, max_prompt_tokens=2048)
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=15)
    s0, _ = env.reset(jax.random.PRNGKey(3))
    s1, _ = env.step(s0, 1)
    device = jax.jit(pr.device_prompt)
    for state, prev, action, t in [(s0, s0, -1, 0), (s1, s0, 1, 1), (s1, s0, -1, 4)]:
        ids, mask, total = device(state, prev, jnp.int32(action), jnp.int32(t))
        host = pr.host_prompt_ids(state, prev, action, t)
        assert [int(x) for x, m in zip(ids, mask) if m] == host
        assert int(total) == len(host)
        # Decoding the ids gives exactly the chat-templated study prompt.
        assert tokenizer.decode(host) == pr.prompt_text(state, prev, action, t)


def test_prompt_truncation_is_reported(tokenizer):
    chat = ChatFormat.from_tokenizer(tokenizer, thinking=False)
    pr = SokobanPrompter(chat, dim=6, max_steps=15, max_prompt_tokens=64)
    env = sk.Sokoban()
    s0, _ = env.reset(jax.random.PRNGKey(0))
    ids, mask, total = pr.device_prompt(s0, s0, jnp.int32(-1), jnp.int32(0))
    assert int(total) > 64 and int(mask.sum()) == 64
    assert [int(x) for x in ids] == pr.host_prompt_ids(s0)[-64:]


_PIECES = ["<think>", "</think>", "<action>", "</action>", "up", "Down", " left", "right ", "LEFT", "jump", " ",
           "\n", "go", "x"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=9), st.booleans(), st.booleans())
@example(["<action>", "up", "\n", "</action>"], False, True)  # whitespace tokens inside the block (once a bug)
@example(["<action>", "\n", " ", "Down", " ", "</action>"], False, True)
def test_id_parser_agrees_with_text_parser(tokenizer, pieces, thinking, stopped):
    chat = ChatFormat.from_tokenizer(tokenizer, thinking=thinking)
    pr = _prompter(chat)
    ids = [t for p in pieces for t in chat.encode_content(p)] + [chat.stop_ids[0]]
    buf = np.zeros(48, np.int32)
    buf[: len(ids)] = ids
    device = int(_parse(pr)(jnp.asarray(buf), jnp.int32(len(ids)), jnp.bool_(stopped)))
    text = tokenizer.decode(ids[:-1])
    expected = pr.host_parse(text) if stopped else -1
    assert device == expected, (pieces, text)


@functools.lru_cache(maxsize=None)
def _parse(pr):
    return jax.jit(pr.parse_response)


_PROMPTERS = {}


def _prompter(chat):
    if chat.thinking not in _PROMPTERS:
        _PROMPTERS[chat.thinking] = SokobanPrompter(chat, dim=6, max_steps=15)
    return _PROMPTERS[chat.thinking]


def _small_setup(tokenizer):
    chat = ChatFormat.from_tokenizer(tokenizer, thinking=False)
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=4)
    pr = SokobanPrompter(chat, dim=6, max_steps=4, render_style="grid", prompt_style="compact", window=1,
                         max_prompt_tokens=256)
    return chat, env, pr


@pytest.mark.slow
def test_device_rollout_matches_host_rollout_and_masks(tokenizer, policy):
    chat, env, pr = _small_setup(tokenizer)
    graphdef, params = nnx.split(policy)
    cfg = gen.GenerationConfig(max_new_tokens=6, temperature=0.0, stop_ids=chat.stop_ids, pad_id=0)
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    run = jax.jit(sokoban_device_rollout, static_argnums=(0, 2, 3, 4))
    dev_batch, dev_stats = jax.device_get(run(graphdef, params, env, pr, cfg, keys, jax.random.PRNGKey(0)))
    host_batch, host_stats = host_rollout(graphdef, params, SokobanHostTask(env, pr, keys), cfg,
                                          jax.random.PRNGKey(0), tokenizer, pr.max_prompt_tokens)
    # Greedy decoding: the on-device episode and the host loop produce the very same trajectories.
    for field in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "valid", "invalid", "action"):
        np.testing.assert_array_equal(np.asarray(getattr(dev_batch, field)), np.asarray(getattr(host_batch, field)),
                                      err_msg=field)
    np.testing.assert_allclose(dev_batch.reward, host_batch.reward, atol=1e-6)
    np.testing.assert_allclose(dev_batch.logprobs, host_batch.logprobs, atol=1e-4)
    np.testing.assert_array_equal(dev_stats.success, host_stats.success)
    # The loss mask covers exactly the generated tokens: a prefix of each row, pad after it.
    rm = np.asarray(dev_batch.response_mask)
    assert np.all(np.diff(rm, axis=-1) <= 0)
    assert np.all(np.asarray(dev_batch.response_ids)[rm == 0] == 0)
    assert np.all(rm.sum(-1)[np.asarray(dev_batch.valid)] >= 1)
    assert np.all(rm[~np.asarray(dev_batch.valid)] == 0)


@pytest.mark.slow
def test_recomputed_logprobs_match_sampling_logprobs(tokenizer, policy):
    chat, env, pr = _small_setup(tokenizer)
    graphdef, params = nnx.split(policy)
    cfg = gen.GenerationConfig(max_new_tokens=6, temperature=1.0, stop_ids=chat.stop_ids, pad_id=0)
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    run = jax.jit(sokoban_device_rollout, static_argnums=(0, 2, 3, 4))
    batch, _ = jax.device_get(run(graphdef, params, env, pr, cfg, keys, jax.random.PRNGKey(5)))
    samples, _ = learner.flatten_samples(batch)
    scored = learner.score_samples(policy, {k: jnp.asarray(v) for k, v in samples.items()}, pr.max_prompt_tokens,
                                   1.0, False)
    mask = samples["response_mask"] == 1
    np.testing.assert_allclose(np.asarray(scored["logprobs"])[mask], samples["sample_logprobs"][mask], atol=1e-4)
    assert mask.sum() > 10


@pytest.mark.slow
def test_conversation_mode_keeps_generated_ids_and_scores_consistently(tokenizer, policy):
    from agentrl_jax.rollout import host_conversation_rollout

    chat, env, pr = _small_setup(tokenizer)
    graphdef, params = nnx.split(policy)
    cfg = gen.GenerationConfig(max_new_tokens=6, temperature=1.0, stop_ids=chat.stop_ids, pad_id=0)
    keys = jax.random.split(jax.random.PRNGKey(2), 4)
    task = SokobanHostTask(env, pr, keys)
    batch, stats = host_conversation_rollout(graphdef, params, task, chat, cfg, jax.random.PRNGKey(3), tokenizer,
                                             max_total_tokens=1024)
    ids, attn, loss = (np.asarray(x) for x in (batch.ids, batch.attn, batch.loss_mask))
    assert loss.sum() > 0 and np.all(attn[loss == 1] == 1)
    # The buffer starts with the chat-templated first message, and every turn after it is appended, never
    # re-tokenized: the text of the buffer is exactly the conversation, and the policy's tokens sit verbatim
    # at the loss-mask positions.
    first = chat.encode_conversation([{"role": "user", "content": SokobanHostTask(env, pr, keys).conversation_content(0)}],
                                     add_generation_prompt=True)
    row = ids[0][attn[0] == 1].tolist()
    assert row[: len(first)] == first
    assert int(np.asarray(batch.valid)[0].sum()) >= 1
    # Scoring the whole buffer in one forward pass reproduces the logprobs sampled turn by turn from the
    # KV cache: positions, masks and ids line up exactly.
    samples, _ = learner.flatten_conversations(batch)
    scored = learner.score_samples(policy, {k: jnp.asarray(v) for k, v in samples.items()}, 1, 1.0, False)
    m = samples["response_mask"] == 1
    np.testing.assert_allclose(np.asarray(scored["logprobs"])[m], samples["sample_logprobs"][m], atol=1e-4)
