"""The on-device Sokoban distractor splice against the plain-text reference, key for key, on real tokenizers."""
import dataclasses
import os
import re
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import AutoTokenizer

import envs.distractors as D
import envs.sokoban as sk
from agentrl_jax import generate as gen
from agentrl_jax.augment import DistractorSplice, augment_episode
from agentrl_jax.chat import ChatFormat
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.rollout import SokobanHostTask, host_rollout, sokoban_device_rollout
from agentrl_jax.sokoban_prompt import SokobanPrompter
from helpers.fixed_answer import fixed_answer_policy

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


# ------------------------------------------------------------------ rollouts: the task is unchanged
DISTRACTOR_LINE = re.compile(r"\n\(-?\d+, -?\d+\) shows an? [^\n]*unreachable\)\.")


def _masked(batch, e, t):
    ids, mask = np.asarray(batch.prompt_ids)[e, t], np.asarray(batch.prompt_mask)[e, t] == 1
    return [int(x) for x in ids[mask]]


@pytest.fixture(scope="module")
def up_rollouts(tiny_chat):
    """8 episodes (2 levels x 4, a GRPO group each) of a policy that always answers "up", with distractors on
    (eps 80, p 0.5) on device and from the host, and off on device; one rollout key."""
    policy, answer_len = fixed_answer_policy(tiny_chat, "<action>up</action>")
    graphdef, params = nnx.split(policy)
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=3)
    # The bare grid prompt keeps the buffer small (the distractor lines are the same in every prompt style).
    pr = SokobanPrompter(tiny_chat, dim=6, max_steps=3, render_style="grid", prompt_style="minimal", window=0,
                         max_prompt_tokens=448, augment_bank="sokoban", augment_epsilon=80.0, augment_p=0.5)
    levels = jnp.repeat(jax.random.split(jax.random.PRNGKey(3), 2), 4, axis=0)
    key = jax.random.PRNGKey(7)
    cfg = gen.GenerationConfig(max_new_tokens=answer_len + 1, temperature=0.0, stop_ids=tiny_chat.stop_ids, pad_id=0)
    run = jax.jit(sokoban_device_rollout, static_argnums=(0, 2, 3, 4), static_argnames=("augment",))
    on = jax.device_get(run(graphdef, params, env, pr, cfg, levels, key, augment=True))
    off = jax.device_get(run(graphdef, params, env, pr, cfg, levels, key, augment=False))
    host = host_rollout(graphdef, params, SokobanHostTask(env, pr, levels, augment_key=key), cfg, key,
                        tiny_chat.tokenizer, pr.max_prompt_tokens)
    return on, off, host


def test_device_rollout_with_distractors_equals_host_and_leaves_the_task_unchanged(tiny_chat, up_rollouts):
    (on, on_stats), (off, off_stats), (host, host_stats) = up_rollouts
    flags = np.asarray(on_stats.augmented)
    np.testing.assert_array_equal(flags, host_stats.augmented)
    assert 0 < flags.sum() < 8 and not np.asarray(off_stats.augmented).any()
    assert flags[:4].any() and not flags[:4].all() or flags[4:].any() and not flags[4:].all()  # a group mixes
    # The env sees only the actions: rewards, dones (turns played), actions and successes are the same.
    for field in ("valid", "invalid", "action", "reward", "response_ids", "response_mask"):
        for other in (off, host):
            np.testing.assert_array_equal(np.asarray(getattr(on, field)), np.asarray(getattr(other, field)), field)
    for field in ("success", "length", "episode_return"):
        np.testing.assert_array_equal(np.asarray(getattr(on_stats, field)), np.asarray(getattr(off_stats, field)))
    decode = tiny_chat.tokenizer.decode
    for e in range(8):
        turns = np.flatnonzero(np.asarray(on.valid)[e])
        added = []
        for t in turns:
            aug_ids, plain_ids = _masked(on, e, t), _masked(off, e, t)
            assert aug_ids == _masked(host, e, t)  # the same ids on device and from the host
            if not flags[e]:
                assert aug_ids == plain_ids
                continue
            text, plain = decode(aug_ids), decode(plain_ids)
            lines = DISTRACTOR_LINE.findall(text)
            assert len(lines) == 8 and DISTRACTOR_LINE.sub("", text) == plain  # k = max(1, 80 // 10) lines
            added.append(lines)
        assert len(added) < 2 or added[0] != added[1]  # a fresh sample for every state


def test_richness_metrics_split_states_by_the_coin(tiny_chat, up_rollouts):
    from agentrl_jax.train import _richness_metrics

    (on, on_stats), (off, off_stats), _ = up_rollouts
    m = _richness_metrics(on, on_stats, tiny_chat.tokenizer)
    assert m["augment/episode_fraction"] == pytest.approx(np.mean(on_stats.augmented))
    assert m["augment/state_tokens_augmented"] > m["augment/state_tokens_plain"] + 40
    assert m["augment/state_chars_augmented"] > m["augment/state_chars_plain"] + 8 * 30
    plain = _richness_metrics(off, off_stats, tiny_chat.tokenizer)
    assert plain["augment/episode_fraction"] == 0 and "augment/state_tokens_augmented" not in plain


def test_bfs_solutions_solve_augmented_host_episodes(tiny_chat):
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=30)
    pr = SokobanPrompter(tiny_chat, dim=6, max_steps=30, window=1, max_prompt_tokens=2048, augment_bank="sokoban",
                         augment_epsilon=80.0, augment_p=1.0)
    task = SokobanHostTask(env, pr, jax.random.split(jax.random.PRNGKey(11), 3), augment_key=jax.random.PRNGKey(1))
    assert task.augmented.all()
    plans = [sk.solve(sk.level_from_state(s)) for s in task.states]
    done = [False] * 3
    for t in range(max(len(p) for p in plans)):
        live = [i for i in range(3) if t < len(plans[i])]
        for i in live:
            assert len(DISTRACTOR_LINE.findall(tiny_chat.tokenizer.decode(task.prompt_ids(i)))) == 8
        out = task.step(live, [f"<action>{sk.ACTION_WORDS[plans[i][t]]}</action>" for i in live], [True] * len(live))
        for i, (_, d, success, invalid, _) in zip(live, out):
            assert not invalid
            done[i] = success
    assert all(done)


def test_gin_augment_bindings_per_domain(tiny_chat):
    from agentrl_jax.domains import make_domain

    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config(["sokoban/augment.epsilon = 80", "sokoban/augment.p = 0.5", "augment.epsilon = 3",
                          "SokobanPrompter.max_prompt_tokens = 2048"])  # the tiny tokenizer spells out words
    try:
        dom = make_domain("sokoban", chat=tiny_chat, seed=0, num_eval_tasks=4)
        assert dom.prompter.augmenting and dom.prompter.augment_epsilon == 80 and dom.prompter.augment_p == 0.5
        assert dom.augments(dom.train_tasks(0, 2)) and not dom.augments(dom.eval_tasks(2))  # held out: plain
        aug = __import__("agentrl_jax.augment", fromlist=["x"])
        assert aug.domain_augmentation("alfworld").epsilon == 3  # unscoped bindings reach every domain
        for binding, match in [("sokoban/augment.epsilon = -1", "sokoban/augment.epsilon"),
                               ("sokoban/augment.p = 2.0", "sokoban/augment.p"),
                               ("sokoban/augment.bank = 'nope'", "sokoban/augment.bank = 'nope'"),
                               ("sokoban/augment.epsilon = 100000", "max_prompt_tokens.*sokoban/augment.epsilon")]:
            gin.clear_config()
            gin.parse_config([binding])
            with pytest.raises(ValueError, match=match):
                make_domain("sokoban", chat=tiny_chat, seed=0, num_eval_tasks=4)
        gin.clear_config()
        with pytest.raises(ValueError, match="augment_epsilon"):  # one place: the prompter's own knob is not gin
            gin.parse_config(["SokobanPrompter.augment_epsilon = 80"])
    finally:
        gin.clear_config()


# ------------------------------------------------------------------ text domains through the pool
@pytest.mark.alfworld
@pytest.mark.slow
def test_alfworld_walkthroughs_win_through_the_pool_with_augmented_observations(tiny_chat):
    """All 48 vendored games played through the domain's pools with their walkthroughs as the policy's answers,
    half the episodes augmented (eps 300: 25 sentences per observation): every game is won, the env's steps
    are untouched, and the ids in the distractors are fresh."""
    pytest.importorskip("alfworld", reason="alfworld not installed (pip install alfworld==0.4.2)")
    from agentrl_jax.domains import Tasks, make_domain

    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config(["alfworld/augment.epsilon = 300", "alfworld/augment.p = 0.5", "alfworld/augment.in_eval = True"])
    dom = make_domain("alfworld", chat=tiny_chat, seed=0, num_workers=2, envs_per_worker=12, max_steps=60,
                      step_timeout_s=300, reset_timeout_s=600)
    won, flags = {}, []
    try:
        for split in ("train", "valid_seen", "valid_unseen"):
            n = dom.task_count(split)
            tasks = Tasks(np.arange(n), None, split)
            assert dom.augments(tasks)
            task = dom.host_task(tasks, jax.random.PRNGKey(len(split)))
            plans = dom.pool(split).call(list(range(n)), "expert_actions")
            flags += list(task.augmented)
            for t in range(max(len(p) for p in plans)):
                live = [i for i in range(n) if t < len(plans[i])]
                for i in live:
                    shown, real = task.shown[i], task.steps[i]
                    assert shown.admissible_actions == real.admissible_actions and shown.task == real.task
                    if not task.augmented[i]:
                        assert shown.observation == real.observation
                        continue
                    context = dom.augment_context(real, task.augmenter._first[i])
                    ds = D.sample_distractors("alfworld", real.observation, task.augmenter.rng(i, t), 300,
                                              **context)
                    assert len(ds) == 25 and D.render(real.observation, ds) == shown.observation
                    ids = [d.entity_id for d in ds]
                    names = [re.search(r"(\w+) \d+", d.text).group(0) for d in ds]
                    assert len(set(names)) == 25 and not set(names) & set(context["entities"]), (names, ids)
                    prompt = tiny_chat.tokenizer.decode(task.prompt_ids(i))
                    assert shown.observation in prompt  # the policy reads the augmented state
                out = task.step(live, [f"<action>{plans[i][t]}</action>" for i in live], [True] * len(live))
                assert not any(invalid for *_, invalid, _ in out)
                for i, (_, done, success, _, _) in zip(live, out):
                    won[(split, i)] = success
            assert not any(task.lost)
        assert dom.pool_stats()["restarts"] == 0
    finally:
        dom.close()
        gin.clear_config()
    assert len(won) == 48 and all(won.values()), [k for k, v in won.items() if not v]
    assert 0 < sum(flags) < 48  # the coin mixes augmented and plain episodes


def test_cross_domain_monitor_in_a_text_domain_shows_a_sokoban_state(tiny_chat):
    from agentrl_jax import augment as aug
    from agentrl_jax.domains import make_domain
    from envs.interface import TextStep

    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config(["alfworld/augment.bank = 'cross_domain'", "alfworld/augment.epsilon = 60"])
    try:
        dom = make_domain("alfworld", chat=tiny_chat, seed=0)
        ts = TextStep(task="put a mug in the sink", observation="You are in the middle of a room. Looking around "
                      "you, you see a sink 1.", admissible_actions=("look", "go to sink 1"),
                      info={"entities": ["mug 1", "sink 1"]})
        setting = dom.augmentation
        assert setting.bank == "cross_domain" and aug.uses_monitor(setting.bank)
        augmenter = aug.TextAugmenter(setting, jax.random.PRNGKey(0), 2, dom.augment_context)
        assert augmenter.augmented.all()  # p = 1
        out = augmenter.observation(0, 0, ts)
        assert out.startswith(ts.observation) and "monitor" in out
        boards = [text for _, text in aug.sokoban_monitor_states()]
        shown = out[len(ts.observation):]
        assert any(" ".join(b.split()[:3]) in shown for b in boards)  # the start of a real Sokoban state
        assert augmenter.observation(0, 1, ts) != out  # a fresh sample for the next state
        assert augmenter.observation(0, 0, ts) == out  # the same key, the same text
    finally:
        gin.clear_config()


def test_sokoban_domain_augments_training_rollouts_only(tiny_chat):
    """Through the registry, as the trainer calls it: training episodes get distractors inside the compiled
    episode; held-out ones are plain unless augment.in_eval (device == host is checked above)."""
    from agentrl_jax.domains import RolloutSettings, make_domain

    policy, answer_len = fixed_answer_policy(tiny_chat, "<action>up</action>")
    graphdef, params = nnx.split(policy)
    cfg = gen.GenerationConfig(max_new_tokens=answer_len + 1, temperature=0.0, stop_ids=tiny_chat.stop_ids, pad_id=0)
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config(["sokoban/augment.epsilon = 30", "sokoban/augment.p = 0.5", "Sokoban.max_steps = 2",
                          "SokobanPrompter.max_prompt_tokens = 1024", "SokobanPrompter.prompt_style = 'minimal'",
                          "SokobanPrompter.window = 0"])
    try:
        dom = make_domain("sokoban", chat=tiny_chat, seed=0, num_eval_tasks=4)
        train, held = dom.train_tasks(0, 2).repeat(4), dom.eval_tasks(4)
        assert dom.augments(train) and not dom.augments(held)
        dev, stats = dom.rollout(graphdef, params, train, jax.random.PRNGKey(3), cfg, tiny_chat.tokenizer,
                                 RolloutSettings("device"))
        flags = np.asarray(stats.augmented)
        assert 0 < flags.sum() < 8
        for e in range(8):
            text = tiny_chat.tokenizer.decode(_masked(dev, e, 0))
            assert len(DISTRACTOR_LINE.findall(text)) == (3 if flags[e] else 0)  # k = max(1, 30 // 10)
        dom.augmentation = dataclasses.replace(dom.augmentation, in_eval=True)
        assert dom.augments(held)
        samples = dom.expert_samples(2, 0, 16)  # the SFT warm-up's expert prompts stay plain
        assert len(samples["ids"]) and not any(DISTRACTOR_LINE.search(tiny_chat.tokenizer.decode(row[attn == 1]))
                                               for row, attn in zip(samples["ids"], samples["attn"]))
    finally:
        gin.clear_config()


def test_evaluator_records_the_scoped_augment_bindings_of_a_run():
    from agentrl_jax.evaluate import _augmentation_of

    config = "train.domain = 'sokoban'\nsokoban/augment.epsilon = 80\nsokoban/augment.p = 0.5\n# augment off\n"
    assert _augmentation_of(config) == "sokoban/augment.epsilon = 80; sokoban/augment.p = 0.5"
    assert _augmentation_of("train.domain = 'sokoban'\n") == "none"
    # The operative config of a run lists every domain's scope at its defaults too: only active ones count.
    operative = ("alfworld/augment.bank = None\nalfworld/augment.epsilon = 0.0\nalfworld/augment.p = 1.0\n"
                 "sokoban/augment.bank = None\nsokoban/augment.epsilon = 80\nsokoban/augment.p = 0.5\n")
    assert _augmentation_of(operative) == ("sokoban/augment.bank = None; sokoban/augment.epsilon = 80; "
                                           "sokoban/augment.p = 0.5")
    assert _augmentation_of(operative.replace("= 80", "= 0.0")) == "none"
    assert _augmentation_of("augment.epsilon = 30\n") == "augment.epsilon = 30"  # unscoped: every domain


def test_webshop_pages_take_the_bank_view_of_their_kind(tiny_chat):
    """The WebShop bank plugs in through the domain's context alone: results pages get ads and fake results,
    item pages features and ads; the expert still buys the goal (the env only ever sees the actions)."""
    pytest.importorskip("bm25s", reason="WebShop needs bm25s (pip install -e '.[envs]')")
    from agentrl_jax import augment as aug
    from agentrl_jax.domains import make_domain
    from envs.webshop import WebShopEnv

    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config(["webshop/augment.epsilon = 30"])
    try:
        dom = make_domain("webshop", chat=tiny_chat, seed=0)
        augmenter = aug.TextAugmenter(dom.augmentation, jax.random.PRNGKey(0), 1, dom.augment_context)
        env = WebShopEnv(split="validation")
        ts = env.reset(0)
        views = []
        for turn, action in enumerate(env.expert_actions()):
            shown = augmenter.observation(0, turn, ts)
            view = dom.augment_context(ts, ts)["view"]
            views.append(view)
            units = sum(D.count_units("webshop", 30, view).values())
            assert shown.startswith(ts.observation) and shown.count(" [SEP] ") - ts.observation.count(" [SEP] ") >= units
            ts = env.step(action)
        assert ts.done and ts.info["task_score"] == 1.0 and ts.reward == 10.0
        assert "search" in views and "detail" in views
        # A one-view bank (the cross-domain monitor) gets no page view and works on every page.
        gin.clear_config()
        gin.parse_config(["webshop/augment.epsilon = 30", "webshop/augment.bank = 'cross_domain'"])
        monitor = make_domain("webshop", chat=tiny_chat, seed=0)
        first = env.reset(1)
        context = monitor.augment_context(first, first)
        assert "view" not in context
        assert "monitor" in D.augment_text("cross_domain", first.observation, 0, 30, **context)
        env.close()
    finally:
        gin.clear_config()


def test_text_distractors_that_cannot_fit_the_prompt_are_refused_before_any_env_starts(tiny_chat):
    from agentrl_jax.domains import make_domain

    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config(["alfworld/augment.epsilon = 3000"])
    try:
        with pytest.raises(ValueError, match=r"lower alfworld/augment.epsilon or raise AlfWorldDomain.max_prompt_tokens"):
            make_domain("alfworld", chat=tiny_chat, seed=0)
        dom = make_domain("alfworld", chat=tiny_chat, seed=0, max_prompt_tokens=200_000)  # a buffer that holds it
        assert dom.augmentation.epsilon == 3000 and not dom._pools
    finally:
        gin.clear_config()
