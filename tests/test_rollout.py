"""Rollout invariants on the real tiny model and the real JAX Sokoban."""
import dataclasses
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
from agentrl_jax.models.decoder import init_cache
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.policy import load_policy
from agentrl_jax.rollout import SokobanHostTask, generation_window, host_rollout, sokoban_device_rollout
from agentrl_jax.sokoban_prompt import SokobanPrompter
from helpers.fixed_answer import fixed_answer_policy


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
    assert device == pr.host_parse(text, stopped), (pieces, text)
    if not stopped:
        assert device == -1  # cut off at max_new_tokens: malformed on both paths


@pytest.mark.parametrize("thinking", [False, True])
def test_an_answer_cut_off_exactly_at_max_new_tokens_is_invalid_on_both_parsers(tokenizer, thinking):
    """A complete action block filling max_new_tokens with no stop token after it: -1 from the id parser and
    from the host parser (the text the host rollout decodes for a cut-off answer keeps every token)."""
    chat = ChatFormat.from_tokenizer(tokenizer, thinking=thinking)
    pr = _prompter(chat)
    answer = ("<think>push</think>" if thinking else "") + "<action>up</action>"
    ids = chat.encode_content(answer)
    n = len(ids)  # max_new_tokens, exactly hit
    from agentrl_jax.rollout import _answer_text

    text = _answer_text(tokenizer, ids, stopped=False)
    assert text == answer and pr.host_parse(text, stopped=True) == 0  # would be "up" had it stopped
    assert pr.host_parse(text, stopped=False) == -1
    assert int(_parse(pr)(jnp.asarray(ids, jnp.int32), jnp.int32(n), jnp.bool_(False))) == -1
    # With its stop token (one more slot) both read "up".
    full = jnp.asarray(ids + [chat.stop_ids[0]], jnp.int32)
    assert int(_parse(pr)(full, jnp.int32(n + 1), jnp.bool_(True))) == 0


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
    # The device program generated from the buffer's last `window` slots only (the prompter's worst case, here
    # under the 256-slot buffer): every slot before them is padding in every recorded prompt.
    window = generation_window(pr.max_prompt_tokens, pr.worst_case_prompt_tokens())
    assert window < pr.max_prompt_tokens
    assert not np.asarray(dev_batch.prompt_mask)[..., :-window].any()
    # JAX Sokoban has no worker to lose: no episode is lost on either path.
    assert not np.asarray(dev_stats.lost).any() and not host_stats.lost.any()
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
    # 500 tokens hold the 4 turns' ~480 real ones, but not the ~540 cache slots that padded chunks take: the
    # last turn runs in a compacted cache, which the scoring check below covers too.
    batch, stats = host_conversation_rollout(graphdef, params, task, chat, cfg, jax.random.PRNGKey(3), tokenizer,
                                             max_total_tokens=500)
    assert not np.asarray(batch.context_truncated).any() and np.all(stats.length == 4)
    assert stats.lost.shape == (4,) and not stats.lost.any()
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


# ------------------------------------------------------------------ a policy whose answers are known
@pytest.fixture(scope="module")
def up_policy(tokenizer):
    """Answers `<action>up</action><|im_end|>` after any generation prompt (thinking off); a row that starts
    from a pad token (id 0) repeats "x" forever, so a padding row left live runs to max_new_tokens."""
    chat = ChatFormat.from_tokenizer(tokenizer, thinking=False)
    policy, answer_len = fixed_answer_policy(chat, "<action>up</action>")
    return chat, policy, answer_len


@pytest.mark.slow
def test_cut_off_answers_get_the_same_reward_in_device_and_host_rollouts(tokenizer, up_policy):
    """The policy's answer fills max_new_tokens exactly, with no stop token: both drivers mark every turn
    invalid with the same reward (before the fix the host stepped "up" and the device did not)."""
    chat, policy, answer_len = up_policy
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=2)
    pr = SokobanPrompter(chat, dim=6, max_steps=2, render_style="grid", prompt_style="minimal", window=0,
                         max_prompt_tokens=128)
    graphdef, params = nnx.split(policy)
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    cut = gen.GenerationConfig(max_new_tokens=answer_len, temperature=0.0, stop_ids=chat.stop_ids, pad_id=0)
    run = jax.jit(sokoban_device_rollout, static_argnums=(0, 2, 3, 4))
    dev, _ = jax.device_get(run(graphdef, params, env, pr, cut, keys, jax.random.PRNGKey(0)))
    host, _ = host_rollout(graphdef, params, SokobanHostTask(env, pr, keys), cut, jax.random.PRNGKey(0), tokenizer,
                           pr.max_prompt_tokens)
    answer = chat.encode_content("<action>up</action>")
    for batch in (dev, host):
        np.testing.assert_array_equal(np.asarray(batch.response_ids)[:, 0], [answer, answer])
        assert np.all(np.asarray(batch.response_truncated)[np.asarray(batch.valid)])
        assert np.all(np.asarray(batch.invalid) == np.asarray(batch.valid))
    for field in ("valid", "invalid", "action", "response_ids", "response_mask"):
        np.testing.assert_array_equal(np.asarray(getattr(dev, field)), np.asarray(getattr(host, field)), err_msg=field)
    np.testing.assert_allclose(dev.reward, host.reward, atol=1e-6)
    np.testing.assert_allclose(host.reward[host.valid], -0.1, atol=1e-6)
    # One more token lets the stop token in: the same answer is then a valid "up" (the test is not vacuous).
    full = dataclasses.replace(cut, max_new_tokens=answer_len + 1)
    ok, _ = host_rollout(graphdef, params, SokobanHostTask(env, pr, keys), full, jax.random.PRNGKey(0), tokenizer,
                         pr.max_prompt_tokens)
    assert not ok.invalid[:, 0].any() and np.all(ok.action[:, 0] == sk.ACTION_WORDS.index("up"))


class _FixedLengthTask:
    """Episode i lasts lengths[i] turns whatever the answers (a HostTask: the same prompt every turn)."""

    def __init__(self, chat, lengths):
        self.chat, self.lengths = chat, list(lengths)
        self.num_episodes, self.max_turns = len(self.lengths), max(self.lengths)
        self.turn = [0] * self.num_episodes

    def prompt_ids(self, episode):
        return self.chat.encode_conversation([{"role": "user", "content": "Go."}], add_generation_prompt=True)

    def step(self, episodes, answers, stopped):
        from agentrl_jax.chat import parse_action_text

        out = []
        for i, a, s in zip(episodes, answers, stopped):
            self.turn[i] += 1
            ok = parse_action_text(a, self.chat.thinking, stopped=s)[1]
            out.append((0.0, self.turn[i] >= self.lengths[i], False, not ok, -1))
        return out


def test_host_rollout_padding_rows_cost_no_decode_steps(tokenizer, up_policy):
    """After one episode ends, the batch bucket (3 rows) has a padding row. Live, it would decode "x" for all
    max_new_tokens; inactive, every turn's decode loop ends with the real rows' 4-token answer."""
    chat, policy, answer_len = up_policy
    graphdef, params = nnx.split(policy)
    cfg = gen.GenerationConfig(max_new_tokens=12, temperature=1.0, stop_ids=chat.stop_ids, pad_id=0)
    timings = {}
    batch, stats = host_rollout(graphdef, params, _FixedLengthTask(chat, (1, 3, 3)), cfg, jax.random.PRNGKey(0),
                                tokenizer, 32, timings=timings)
    np.testing.assert_array_equal(stats.length, [1, 3, 3])
    np.testing.assert_array_equal(stats.lost, [False] * 3)  # a task without `lost` loses nothing
    assert not batch.invalid[batch.valid].any()
    assert np.all(batch.response_mask.sum(-1)[batch.valid] == answer_len + 1)
    assert timings["decode_steps"] == 3 * (answer_len + 1)  # 3 turns, each the real rows' answer only


def test_conversation_truncates_only_when_the_real_tokens_no_longer_fit(tokenizer, up_policy):
    """Each chunk is padded to a power of two and the shared cache index also moves over that padding; the
    budget must count the episode's real tokens. Every episode here runs until its context is full: it ends
    exactly when its buffer plus one full answer would pass max_total_tokens (before the fix both ended
    after 15 turns with about 710 of the 1024 tokens used; now after 22-23 turns)."""
    from agentrl_jax.rollout import host_conversation_rollout

    chat, policy, answer_len = up_policy
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=60)
    pr = SokobanPrompter(chat, dim=6, max_steps=60, render_style="grid", prompt_style="minimal", window=0)
    graphdef, params = nnx.split(policy)
    cfg = gen.GenerationConfig(max_new_tokens=8, temperature=0.0, stop_ids=chat.stop_ids, pad_id=0)
    budget = 1024
    task = SokobanHostTask(env, pr, jax.random.split(jax.random.PRNGKey(5), 2))
    batch, stats = host_conversation_rollout(graphdef, params, task, chat, cfg, jax.random.PRNGKey(0), tokenizer,
                                             max_total_tokens=budget)
    real = np.asarray(batch.attn).sum(1)  # the buffer: every turn so far plus the chunk that was not played
    turn = answer_len + 1 + len(chat.next_turn_ids([chat.stop_ids[0]], task.conversation_content(0)))
    assert np.all(batch.context_truncated) and np.all(stats.length > 10)
    assert np.all(real + cfg.max_new_tokens > budget)  # the next turn really does not fit
    assert np.all(real - turn + cfg.max_new_tokens <= budget)  # the last one played did
    # The loss mask still covers exactly the policy's answers.
    assert np.all(np.asarray(batch.loss_mask).sum(1) == stats.length * (answer_len + 1))


def test_make_room_compacts_then_pads_exactly_then_grows(policy):
    """Row 0 holds 40 real tokens, row 1 holds 8 and brings a 20-token chunk; the shared index stands at 60 after
    padding. Each row alone fits 64 slots with an 8-token answer, both together need 40 + 20 + 8."""
    from agentrl_jax.rollout import _make_room

    lm = getattr(policy, "lm", policy)
    cache = init_cache(lm.cfg, 2, 64)
    mask = np.zeros((2, 64), bool)
    mask[0, 10:50], mask[1, 52:60] = True, True
    cache = cache.replace(mask=jnp.asarray(mask), index=jnp.int32(60), lengths=jnp.asarray([40, 8], jnp.int32))
    fits, width = _make_room(jax.tree.map(jnp.copy, cache), np.array([True, True]), 10, 8)
    assert width == 16 and fits.max_length == 64 and int(fits.index) == 40  # compaction alone was enough
    grown, width = _make_room(cache, np.array([True, True]), 20, 8)
    assert width == 20 and grown.max_length == 128 and int(grown.index) == 40
    np.testing.assert_array_equal(np.asarray(grown.mask).sum(1), [40, 8])
    assert np.asarray(grown.mask)[:, :40].sum() == 48 and not np.asarray(grown.mask)[:, 40:].any()
