"""Held-out means unseen by content: Sokoban held-out / SFT-validation sets are distinct levels that no
(replaced) training key plays, with the trainer's own keys and batch sizes; text domains' train and eval
splits share no game (ALFWorld) or variation (ScienceWorld)."""
import functools
import hashlib
import json
import os
import shutil

import gin
import jax
import numpy as np
import pytest
from helpers.gin_envs import sokoban_from_gin

import envs.sokoban as sk
from agentrl_jax import domains, heldout
from agentrl_jax.train import HELD_OUT_STREAM, SFT_VALIDATION_STREAM

GIN_DIR = os.path.join(os.path.dirname(__file__), "..", "gin")
# (env gin file, tasks per step, group size, eval episodes) as the runs that use each env set them:
# the study (runs/grpo.gin), the README main job (runs/cpu_small.gin), the learning checks (GRPO 16x8).
SETTINGS = {"sokoban": (16, 8, 64), "sokoban_easy": (8, 8, 64), "sokoban_push1": (16, 8, 64)}
STEPS = (1, 2, 3, 4)


@functools.lru_cache(maxsize=None)  # one env object per setting: its jitted functions compile once
def _env(name: str) -> sk.Sokoban:
    return sokoban_from_gin(name)


def _trainer_keys(step, n_tasks, group, stream, seed=0):
    """The trainer's raw level keys (`domains.stream_keys` before any exclusion): task keys from
    fold_in(fold_in(PRNGKey(seed), stream), step), each repeated `group` times."""
    base = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stream), step)
    return jax.numpy.repeat(jax.random.split(base, n_tasks), group, axis=0)


@functools.lru_cache(maxsize=None)
def _reset_kinds(env):
    return jax.jit(jax.vmap(lambda key: sk.cell_kinds(env.reset(key)[0])))


def _contents(env, keys) -> list:
    """The levels the keys play, as cell-kind bytes of `env.reset` (independent of the hash); padded to one
    batch shape so each env compiles once."""
    n = len(keys)
    padded = jax.numpy.concatenate([keys, jax.numpy.repeat(keys[:1], 128 - n, axis=0)]) if n < 128 else keys
    return [k.tobytes() for k in np.asarray(_reset_kinds(env)(padded))[:n]]


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def setting(request):
    env = _env(request.param)
    tasks, group, n_eval = SETTINGS[request.param]
    held = heldout.HeldOutLevels.build(env, _trainer_keys(0, n_eval, 1, HELD_OUT_STREAM))
    sft_val = heldout.HeldOutLevels.build(env, _trainer_keys(0, n_eval, 1, SFT_VALIDATION_STREAM), avoid=held)
    return request.param, env, tasks, group, held, sft_val


@pytest.mark.slow
def test_heldout_and_training_levels_are_disjoint_by_content(setting):
    name, env, tasks, group, held, sft_val = setting
    held_levels, val_levels = set(_contents(env, held.keys)), set(_contents(env, sft_val.keys))
    # Each set is as many distinct levels as it has keys, and the two share none.
    assert len(held) == len(held_levels) == held.distinct == 64
    assert len(sft_val) == len(val_levels) == sft_val.distinct == 64
    assert not held_levels & val_levels
    reserved = held.union(sft_val)
    seen, raw_hits, replaced = heldout.SeenLevels(), 0, 0
    for step in STEPS:
        keys = _trainer_keys(step, tasks, group, stream=0)
        raw_hits += sum(c in held_levels | val_levels for c in _contents(env, keys))
        res = reserved.exclude(env, keys)
        replaced += res.n_replaced
        played = _contents(env, res.keys)
        assert not set(played) & (held_levels | val_levels), f"{name} step {step}: a reserved level in training"
        # Rows of a GRPO group still share one key (and so one level); unreserved rows keep their key.
        k = np.asarray(res.keys).reshape(tasks, group, -1)
        assert (k == k[:, :1]).all()
        kept = np.asarray(res.hashes) == heldout.level_hashes(env, keys)
        np.testing.assert_array_equal(np.asarray(res.keys)[kept], np.asarray(keys)[kept])
        np.testing.assert_array_equal(res.hashes, heldout.level_hashes(env, res.keys))
        seen.add(res.hashes)
    assert replaced == raw_hits  # exactly the rows whose original level was reserved
    if name == "sokoban_push1":  # the one-push space is small: raw training keys do draw reserved levels
        assert raw_hits > 0
    m = heldout.level_metrics(seen, held, sft_val)
    assert m["levels/heldout_in_train"] == m["levels/sft_validation_in_train"] == 0
    assert m["levels/heldout_distinct"] == 64 and 0 < m["levels/train_distinct_seen"] <= tasks * len(STEPS)


def test_exclusion_and_build_are_deterministic():
    env = _env("sokoban_push1")
    held = heldout.HeldOutLevels.build(env, _trainer_keys(0, 64, 1, HELD_OUT_STREAM))
    again = heldout.HeldOutLevels.build(env, _trainer_keys(0, 64, 1, HELD_OUT_STREAM))
    np.testing.assert_array_equal(np.asarray(held.keys), np.asarray(again.keys))
    np.testing.assert_array_equal(held.hashes, again.hashes)
    # A training batch that holds held-out keys (two groups of 4 rows) among fresh ones.
    fresh = _trainer_keys(7, 6, 4, stream=0)
    keys = jax.numpy.concatenate([fresh[:12], jax.numpy.repeat(held.keys[:2], 4, axis=0), fresh[12:]])
    a, b = held.exclude(env, keys), held.exclude(env, keys)
    np.testing.assert_array_equal(np.asarray(a.keys), np.asarray(b.keys))
    assert a.n_replaced == b.n_replaced >= 8
    assert not set(a.hashes.tolist()) & held.hash_set
    # A replaced key is the original folded with a round number: a function of that key alone, so the same
    # key anywhere in any batch gets the same replacement.
    changed = np.flatnonzero((np.asarray(a.keys) != np.asarray(keys)).any(-1))
    assert set(range(12, 20)) <= set(changed.tolist())
    for i in (12, 16):
        alone = held.exclude(env, keys[i:i + 1])
        np.testing.assert_array_equal(np.asarray(alone.keys[0]), np.asarray(a.keys[i]))
        rounds = [np.asarray(jax.random.fold_in(keys[i], r)) for r in range(1, heldout.DEFAULT_MAX_ROUNDS + 1)]
        assert any((r == np.asarray(a.keys[i])).all() for r in rounds)
    k = np.asarray(a.keys)
    assert (k[12:16] == k[12]).all() and (k[16:20] == k[16]).all()


def test_too_small_a_level_space_raises_naming_the_knobs():
    env = sk.Sokoban(dim=5, num_boxes=1, generator=sk.SokobanGenerator(dim=5, num_reverse_steps=1, room="open"))
    with pytest.raises(ValueError, match="num_reverse_steps.*eval_episodes"):
        heldout.HeldOutLevels.build(env, jax.random.split(jax.random.PRNGKey(0), 64), max_rounds=4)
    with pytest.raises(ValueError, match="one key per level"):  # group-repeated keys cannot be distinct levels
        heldout.HeldOutLevels.build(env, _trainer_keys(0, 4, 2, HELD_OUT_STREAM))


# ----------------------------------------------------------------------------------------------- text domains
def test_alfworld_train_and_eval_splits_share_no_game():
    from envs.alfworld import list_games, resolve_data_path  # noqa: PLC0415

    cls = domains.domain_class("alfworld")
    train_split, eval_split = cls.train_split, cls.splits[0]
    assert eval_split == "valid_unseen"  # the study's out-of-distribution split
    root = resolve_data_path()
    games = {s: list_games(root, s) for s in (train_split, eval_split)}

    def trial(g):  # <task_type>-<obj>-<mrecep>-<recep>-<scene>/<trial>
        return os.path.relpath(os.path.dirname(g), os.path.join(root, "json_2.1.1")).split(os.sep, 1)[1]

    def problem(g):
        with open(g) as f:
            return hashlib.sha256(json.load(f)["pddl_problem"].encode()).hexdigest()

    def scene(g):
        return trial(g).split(os.sep)[0].rsplit("-", 1)[1]

    for key in (trial, problem, scene):  # valid_unseen: unseen games, and unseen rooms too
        tr, ev = {key(g) for g in games[train_split]}, {key(g) for g in games[eval_split]}
        assert tr and ev and not tr & ev, key.__name__


@pytest.mark.java
@pytest.mark.slow
def test_sciworld_train_and_eval_variations_are_disjoint():
    scienceworld = pytest.importorskip("scienceworld", reason="needs the scienceworld package")
    if shutil.which("java") is None:
        pytest.skip("needs a Java runtime on PATH for ScienceWorld")
    from envs.sciworld import TASK_NAMES  # noqa: PLC0415

    cls = domains.domain_class("sciworld")
    assert (cls.train_split, *cls.splits) == ("train", "dev", "test")
    env = scienceworld.ScienceWorldEnv(envStepLimit=10)
    try:
        for task in TASK_NAMES:
            env.load(task, 0)
            train, dev, test = (set(env.get_variations_train()), set(env.get_variations_dev()),
                                set(env.get_variations_test()))
            assert train and dev and test, task
            assert not train & dev and not train & test and not dev & test, task
    finally:
        env.close()


def test_domains_refuse_a_split_that_does_not_exist_or_is_the_training_one():
    from transformers import AutoTokenizer

    from agentrl_jax.chat import ChatFormat
    from agentrl_jax.models.tiny import ensure_tiny_folder

    chat = ChatFormat.from_tokenizer(AutoTokenizer.from_pretrained(ensure_tiny_folder()), thinking=False)
    with pytest.raises(ValueError, match="no split 'valid_unsen'.*valid_unseen"):
        domains.make_domain("alfworld", chat=chat, seed=0, eval_split="valid_unsen")
    alf = domains.make_domain("alfworld", chat=chat, seed=0)
    assert alf.eval_split == "valid_unseen" and alf.eval_tasks(3).split == "valid_unseen"
    with pytest.raises(ValueError, match="no split 'bogus'"):
        alf.eval_tasks(3, "bogus")
    assert alf.task_count("valid_unseen") == 18 and alf.task_count("valid_seen") == 6
    with pytest.raises(ValueError, match="unknown domain 'webshopp'.*registered domains"):
        domains.make_domain("webshopp", chat=chat, seed=0)
    sok = domains.make_domain("sokoban", chat=chat, seed=0, num_eval_tasks=4)
    with pytest.raises(ValueError, match="must not be the training split"):
        sok.eval_tasks(2, "train")
    with pytest.raises(ValueError, match="must not be the training split"):
        domains.make_domain("sciworld", chat=chat, seed=0, eval_split="train")
    with pytest.raises(ValueError, match="raise SokobanDomain.held_out_levels"):
        sok.eval_tasks(5)
