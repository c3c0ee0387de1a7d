"""The on-device Sokoban distractor splice against the plain-text reference, key for key, on real tokenizers."""
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from transformers import AutoTokenizer

import envs.distractors as D
import envs.sokoban as sk
from agentrl_jax.augment import DistractorSplice, augment_episode
from agentrl_jax.chat import ChatFormat
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.sokoban_prompt import SokobanPrompter

REPO = Path(__file__).resolve().parents[1]
SMOL = Path(os.environ.get("AGENTRL_CACHE", REPO / "cache")) / "smollm2-135m-instruct"
KEYS = jnp.stack([jax.random.PRNGKey(i) for i in (0, 1, 2, 12345)])


def load_tokenizer(name):
    if name == "smollm2" and not (SMOL / "tokenizer.json").exists():
        pytest.skip(f"SmolLM2 not fetched ({SMOL}); run scripts/fetch_smollm2.py")
    return AutoTokenizer.from_pretrained(ensure_tiny_folder() if name == "tiny" else SMOL)


@pytest.fixture(scope="module")
def tiny_chat():
    return ChatFormat.from_tokenizer(AutoTokenizer.from_pretrained(ensure_tiny_folder()), thinking=False)


@pytest.fixture(scope="module")
def states():
    """Two hand-built states, the second one step (down) after the first."""
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=15)
    rows = ["######", "#@   #", "# $  #", "#  . #", "#    #", "######"]
    s0 = env.reset_to_level(sk.Level.from_strings(rows))[0]
    s1 = env.reset_to_level(sk.Level.from_strings([rows[0], "#    #", "#@$  #", *rows[3:]]))[0]
    return s0, s1


def reference_added_text(key, epsilon, dim):
    """What the text reference adds after a state for this key."""
    state = "Wall at (0, 0)"
    out = D.augment_text("sokoban", state, key, epsilon, dim=dim)
    assert out.startswith(state)
    return out[len(state):]


# 12 lines in a larger room; 8 lines (the study's eps) in the study's room.
@pytest.mark.parametrize("name,dim,eps", [("tiny", 9, 123), ("smollm2", 6, 80)])
def test_splice_decodes_to_the_text_reference_key_for_key(name, dim, eps):
    tokenizer = load_tokenizer(name)
    chat = ChatFormat.from_tokenizer(tokenizer, thinking=False)
    pad = 0
    splice = DistractorSplice("sokoban", chat.encode_content, dim, dim, pad_id=pad)
    k = max(1, eps // 10)
    bound = splice.max_tokens(eps)
    all_ids, all_n = jax.jit(jax.vmap(lambda key: splice(key, eps)))(KEYS)
    for key, ids, n in zip(KEYS, all_ids, all_n):
        ids, n = [int(x) for x in ids], int(n)
        assert len(ids) == bound and 0 < n <= bound
        added = reference_added_text(key, eps, dim)
        assert tokenizer.decode(ids[:n]) == added
        assert added.count("\n") == k and added.startswith("\n(")
        assert all(x == pad for x in ids[n:])
        assert ids[:n] == splice.host_ids(key, eps)
        # Pieces cut where the tokenizer's pre-tokenizer cuts: the ids are the text's own tokenization.
        assert ids[:n] == chat.encode_content(added)


def test_splice_bound_is_the_longest_unit(tiny_chat):
    splice = DistractorSplice("sokoban", tiny_chat.encode_content, 6, 6)
    bank = D.load_bank("sokoban")
    part = bank.view().parts[0]
    longest = max(len(tiny_chat.encode_content(f"\n({r}, {c}) shows a {o} ({d}; unreachable)."))
                  for r, c in D.outside_cells(6, 6, part.margin) for o in part.word_lists["obj"]
                  for d in part.word_lists["desc"])
    assert splice.counts(80) == [8] and splice.max_tokens(80) == 8 * longest
    assert splice.counts(5) == [1] and splice.max_tokens(5) == longest  # k = max(1, floor(eps / 10))
    assert splice.counts(0) == [0] and splice.max_tokens(0) == 0
    ids, n = splice(jax.random.PRNGKey(0), 0)
    assert ids.shape == (0,) and int(n) == 0


def test_coin_matches_reference_and_mixes_a_group():
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    coin = jax.jit(jax.vmap(augment_episode, in_axes=(0, None)))
    for p in (0.0, 0.3, 0.5, 1.0):
        flags = [bool(f) for f in coin(keys, p)]
        assert flags[:2] == [D.apply_this_episode(k, p) for k in keys[:2]]
        if p == 0.0:
            assert not any(flags)
        elif p == 1.0:
            assert all(flags)
        else:
            assert 0 < sum(flags) < 64  # a group of episodes mixes augmented and plain ones


def _prompter(chat, **kw):
    return SokobanPrompter(chat, dim=6, max_steps=15, render_style="coords", prompt_style="study", window=1,
                           max_prompt_tokens=2048, **kw)


def test_off_gives_exactly_the_plain_prompt_ids(tiny_chat, states):
    s0, s1 = states
    plain = _prompter(tiny_chat).host_prompt_ids(s1, s0, 1, 1)  # == its device ids (tests/test_rollout.py)
    key = jax.random.PRNGKey(5)
    for kw in (dict(augment_epsilon=0.0), dict(augment_epsilon=80.0, augment_p=0.0)):
        pr = _prompter(tiny_chat, augment_bank="sokoban", **kw)
        assert not pr.augmenting
        assert pr.host_prompt_ids(s1, s0, 1, 1, augment_key=key, augment=True) == plain
    # eps = 0 and p = 0 take the same device path (augmenting is False); a plain episode (coin False) of an
    # augmenting prompter is checked on device in the batch test below.
    ids, mask, _ = jax.jit(pr.device_prompt)(s1, s0, jnp.int32(1), jnp.int32(1), augment_key=key,
                                             augment=jnp.bool_(True))
    assert [int(x) for x, m in zip(ids, mask) if m] == plain


def test_augmented_prompt_device_equals_host_and_text_reference(tiny_chat, states):
    s0, s1 = states
    pr = _prompter(tiny_chat, augment_bank="sokoban", augment_epsilon=80.0, augment_p=0.5)
    # A batch as a GRPO group would have it: augmented and plain episodes side by side, a key per state.
    rows = [(s0, s0, -1, 0, jax.random.PRNGKey(1), True), (s1, s0, 1, 1, jax.random.PRNGKey(2), True),
            (s1, s0, 1, 1, jax.random.PRNGKey(3), False)]
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    batch = [stack([r[0] for r in rows]), stack([r[1] for r in rows]), jnp.int32([r[2] for r in rows]),
             jnp.int32([r[3] for r in rows]), jnp.stack([r[4] for r in rows]), jnp.bool_([r[5] for r in rows])]
    ids, mask, total = jax.jit(jax.vmap(pr.device_prompt))(*batch)
    plain = _prompter(tiny_chat)
    for i, (state, prev, action, step, key, flag) in enumerate(rows):
        host = pr.host_prompt_ids(state, prev, action, step, augment_key=key, augment=flag)
        assert [int(x) for x, m in zip(ids[i], mask[i]) if m] == host and int(total[i]) == len(host)
        text = pr.prompt_text(state, prev, action, step, augment_key=key, augment=flag)
        assert tiny_chat.tokenizer.decode(host) == text
        plain_text = pr.prompt_text(state, prev, action, step, augment_key=key, augment=False)
        if flag:
            # The lines come right after the current observation; the history block stays plain.
            current = sk.step_intro(step) + sk.render_text(state, "coords")
            assert plain_text.count(current) == 1
            assert text == plain_text.replace(current, current + reference_added_text(key, 80.0, 6))
            assert text.count("unreachable") == 8
        else:
            assert host == plain.host_prompt_ids(state, prev, action, step)


def test_bad_settings_name_the_gin_binding(tiny_chat):
    cases = [
        (dict(augment_bank="no_such_bank", augment_epsilon=80.0), "SokobanPrompter.augment_bank.*unknown"),
        (dict(augment_bank="alfworld", augment_epsilon=80.0), "SokobanPrompter.augment_bank.*placement"),
        (dict(augment_bank="sokoban", augment_epsilon=-1.0), "SokobanPrompter.augment_epsilon"),
        (dict(augment_bank="sokoban", augment_epsilon=80.0, augment_p=1.5), "SokobanPrompter.augment_p"),
        (dict(augment_epsilon=80.0), "SokobanPrompter.augment_bank is None"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            _prompter(tiny_chat, **kw)
    fits = _prompter(tiny_chat, augment_bank="sokoban", augment_epsilon=80.0)
    need = fits.worst_case_prompt_tokens()
    with pytest.raises(ValueError, match=f"SokobanPrompter.max_prompt_tokens = {need - 1}.* >= {need}"):
        SokobanPrompter(tiny_chat, dim=6, max_steps=15, max_prompt_tokens=need - 1, augment_bank="sokoban",
                        augment_epsilon=80.0)
    # The same buffer holds the plain prompt: only the added volume is refused.
    SokobanPrompter(tiny_chat, dim=6, max_steps=15, max_prompt_tokens=need - 1)
    with pytest.raises(ValueError, match="augment_key"):
        fits.host_prompt_ids(None)
