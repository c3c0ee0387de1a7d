"""Sokoban text side: renders, the jittable token renderer against a real Hugging Face tokenizer, the prompt
pieces and the host text env."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import envs.sokoban as sk
from envs.prompting import answer_format

HAND = [
    "######",
    "#  .+#",
    "# $  #",
    "#  * #",
    "##$  #",
    "######",
]

HAND_COORDS = (
    "Wall at (0, 0) Wall at (0, 1) Wall at (0, 2) Wall at (0, 3) Wall at (0, 4) Wall at (0, 5) "
    "Wall at (1, 0) Goal at (1, 3) Player on goal at (1, 4) Wall at (1, 5) "
    "Wall at (2, 0) Box at (2, 2) Wall at (2, 5) "
    "Wall at (3, 0) Box on goal at (3, 3) Wall at (3, 5) "
    "Wall at (4, 0) Wall at (4, 1) Box at (4, 2) Wall at (4, 5) "
    "Wall at (5, 0) Wall at (5, 1) Wall at (5, 2) Wall at (5, 3) Wall at (5, 4) Wall at (5, 5)"
)
HAND_GRID = "######\n#__OS#\n#_X__#\n#__√_#\n##X__#\n######"


def _random_levels(n, dim, seed):
    """Random boards (not necessarily solvable): enough variety to train a tokenizer and test renders."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        walls = np.ones((dim, dim), bool)
        walls[1:-1, 1:-1] = rng.random((dim - 2, dim - 2)) < 0.2
        free = np.argwhere(~walls)
        if len(free) < 5:
            continue
        pick = free[rng.permutation(len(free))[:5]]
        targets = np.zeros_like(walls)
        boxes = np.zeros_like(walls)
        targets[tuple(pick[:2].T)] = True
        boxes[tuple(pick[1:3].T)] = True  # one box starts on a goal
        player = pick[3] if rng.random() < 0.5 else pick[0]  # sometimes on a goal
        out.append(sk.Level(walls, targets, boxes, np.asarray(player, np.int32)))
    return out


@pytest.fixture(scope="module")
def hf_tokenizer():
    levels = _random_levels(300, 6, 0)
    corpus = [sk.render_text(lv, s) for lv in levels for s in ("coords", "grid")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", clean_up_tokenization_spaces=False)


def test_render_text_on_hand_level():
    level = sk.Level.from_strings(HAND)
    assert sk.render_text(level, "coords") == HAND_COORDS
    assert sk.render_text(level, "grid") == HAND_GRID
    env = sk.Sokoban(dim=6, num_boxes=3)
    state, _ = env.reset_to_level(level)
    assert env.render_text(state, style="coords") == HAND_COORDS
    assert env.render_text(state, style="grid") == HAND_GRID
    assert level.to_strings() == HAND


@pytest.mark.parametrize("style", ["coords", "grid"])
def test_token_renderer_decodes_to_render_text(hf_tokenizer, style):
    tok = hf_tokenizer
    pad = tok.pad_token_id
    renderer = sk.TokenRenderer(lambda s: tok.encode(s, add_special_tokens=False), dim=6, style=style, pad_id=pad)
    levels = _random_levels(64, 6, 1) + [sk.Level.from_strings(HAND)]
    batch = sk.Level(*(np.stack(x) for x in zip(*levels)))
    ids, lengths = jax.jit(renderer)(batch)  # batched states go through vmap inside
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    assert ids.shape == (len(levels), renderer.max_len) and ids.dtype == np.int32
    for i, lv in enumerate(levels):
        text = sk.render_text(lv, style)
        host = renderer.host_ids(lv)
        assert ids[i, : lengths[i]].tolist() == host
        assert (ids[i, lengths[i]:] == pad).all()
        assert tok.decode(host) == text
    # Also from env states, one at a time under jit.
    env = sk.Sokoban(dim=6, num_boxes=3)
    state, _ = env.reset_to_level(sk.Level.from_strings(HAND))
    one, n = jax.jit(renderer)(state)
    assert tok.decode(np.asarray(one)[: int(n)].tolist()) == (HAND_COORDS if style == "coords" else HAND_GRID)


def test_token_renderer_rejects_bad_input():
    with pytest.raises(ValueError, match="style"):
        sk.TokenRenderer(lambda s: [1], dim=6, style="ascii")
    renderer = sk.TokenRenderer(lambda s: [ord(ch) for ch in s], dim=6, style="grid")
    with pytest.raises(ValueError, match="dim=6"):
        renderer(sk.Level.from_strings(["#####", "#@$.#", "#   #", "#   #", "#####"]))
    with pytest.raises(ValueError, match="no ids"):
        sk.TokenRenderer(lambda s: [], dim=5, style="grid")


def test_prompt_pieces_concatenate_to_the_full_prompt():
    obs = HAND_COORDS
    for thinking in (True, False):
        prefix, suffix = sk.prompt_parts(6, thinking)
        full = sk.build_prompt(obs, [], 0, 6, window=1, thinking=thinking)
        assert full == prefix + sk.step_intro(0) + obs + suffix
        assert full.endswith(answer_format(thinking))
        for section in ("# Objective", "# Environment Setup", "# Rules", "# Observation Format", "# Current Step"):
            assert section in prefix
        assert "6×6" in prefix and "(0, 0)" in prefix and "All unspecified cells are empty" in prefix
        assert "Box on goal at (r, c)" in prefix and "Player on goal at (r, c)" in prefix
        assert 'Your admissible actions are ["up", "down", "left", "right"].' in suffix
        assert "You are now at step 1 and your current observation is: " + obs in full
    # Later steps: the history block sits between prefix and the step intro.
    history = [("obs one", "up"), ("obs two", "left")]
    later = sk.build_prompt("obs three", history, 2, 6, window=1)
    prefix, suffix = sk.prompt_parts(6, True)
    middle = later[len(prefix) : len(later) - len(suffix)]
    assert later.startswith(prefix) and later.endswith(suffix)
    assert middle == sk.current_step_text("obs three", history, 2, window=1)
    assert "already taken 2 step(s)" in middle and "'obs two'" in middle and "'obs one'" not in middle
    assert middle.endswith("You are now at step 3 and your current observation is: obs three")
    assert sk.build_prompt("o", history, 2, 6, window=0) == prefix + sk.step_intro(2) + "o" + suffix


def test_parse_action():
    assert [sk.parse_action(w) for w in sk.ACTION_WORDS] == [0, 1, 2, 3]
    assert sk.parse_action("  UP \n") == 0 and sk.parse_action("Right") == 3
    for bad in ("", "upp", "north", "up left", "still", None):
        assert sk.parse_action(bad) == -1


def test_text_env_follows_the_solver_to_success():
    env = sk.SokobanTextEnv(dim=6, num_boxes=1, max_steps=30)
    first = env.reset(5)
    assert first.admissible_actions == sk.ACTION_WORDS and not first.done
    assert first.observation.startswith("Wall at (0, 0)") and "Box at" in first.observation
    assert env.reset(5).observation == first.observation  # same seed, same level
    plan = env.expert_actions()
    assert plan and all(a in sk.ACTION_WORDS for a in plan)
    for i, word in enumerate(plan):
        ts = env.step(word)
        assert ts.done == (i == len(plan) - 1) and not ts.info["invalid"]
    assert ts.success and ts.reward == 10.0 and "Box on goal at" in ts.observation
    assert env.expert_actions() == []


def test_text_env_invalid_action_and_truncation():
    env = sk.SokobanTextEnv(dim=6, num_boxes=1, max_steps=2, reward="sparse")
    start = env.reset(3)
    ts = env.step("jump")
    assert ts.info["invalid"] and "Invalid action 'jump'" in ts.observation
    assert ts.observation.endswith(start.observation)  # the board did not change
    assert ts.reward == 0.0 and not ts.done and ts.info["step"] == 1
    ts = env.step("jump")
    assert ts.done and ts.truncated and not ts.success and ts.info["truncated_reason"] == "max_steps"
    with pytest.raises(ValueError, match="style"):
        sk.SokobanTextEnv(style="ascii")
