"""The on-device answer parser (agentrl_jax.answer_parse via SokobanPrompter.parse_response) against what the
host rollout computes (decode with `rollout._answer_text`, then `SokobanPrompter.host_parse`), on the tiny
tokenizer, SmolLM2's and Qwen2's byte-level BPE, whose tags split over several tokens and merge with their
neighbours."""
import copy
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from agentrl_jax import answer_parse as ap
from agentrl_jax.chat import ChatFormat
from agentrl_jax.models import tiny
from agentrl_jax.rollout import _answer_text
from agentrl_jax.sokoban_prompt import SokobanPrompter

REPO = Path(__file__).resolve().parents[1]
SMOL = Path(os.environ.get("AGENTRL_CACHE", REPO / "cache")) / "smollm2-135m-instruct"
MAX_TOKENS = 96  # one padded response length: one compile per (tokenizer, thinking)


def _smol():
    if not (SMOL / "tokenizer.json").exists():
        pytest.skip(f"SmolLM2 folder absent ({SMOL}); run `python scripts/fetch_smollm2.py` first")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(SMOL))


def _qwen2():
    from helpers.qwen2_tokenizer import qwen2_tokenizer

    return qwen2_tokenizer()


@pytest.fixture(scope="module", params=["tiny", "smollm2", "qwen2"])
def tok(request):
    return {"tiny": tiny.train_tiny_tokenizer, "smollm2": _smol, "qwen2": _qwen2}[request.param]()


class Case:
    """One tokenizer's prompters (thinking off/on) and their jitted parsers."""

    def __init__(self, tok):
        self.tok = tok
        self.pr = {t: SokobanPrompter(ChatFormat.from_tokenizer(tok, thinking=t), dim=6, max_steps=4)
                   for t in (False, True)}
        self.fn = {t: jax.jit(p.parse_response) for t, p in self.pr.items()}
        self.stop = self.pr[False].chat.stop_ids[0]
        self.vocab = self.pr[False].parser.token_class.shape[0]
        # The id of each single byte (byte-level BPE has one per byte), to write partial UTF-8 on purpose.
        table = ap.token_bytes(tok)
        self.byte_id = {}
        for i in np.flatnonzero(table.lengths == 1)[::-1]:
            self.byte_id[table.host_bytes([i])[0]] = int(i)

    def both(self, ids, thinking, stopped=True):
        """(device, host) for generated ids (the stop token appended when stopped)."""
        gen = list(ids) + ([self.stop] if stopped else [])
        assert len(gen) <= MAX_TOKENS
        buf = np.zeros(MAX_TOKENS, np.int32)
        buf[: len(gen)] = gen
        pr = self.pr[thinking]
        device = int(self.fn[thinking](jnp.asarray(buf), jnp.int32(len(gen)), jnp.bool_(stopped)))
        return device, pr.host_parse(_answer_text(self.tok, gen, stopped), stopped)


@pytest.fixture(scope="module")
def case(tok):
    return Case(tok)


# Pieces of answers: the format, near-misses of its tags, case forms and non-words, ASCII and Unicode
# whitespace (and look-alikes that are not whitespace), non-ASCII text, chat specials.
TAGS = ["<think>", "</think>", "<action>", "</action>"]
NEAR = ["<action >", "</action", "<Action>", "<ACTION>", "< action>", "<think", "think>", "<", ">", "</", "/",
        "<th", "ink>", "<act", "ion>", "</action>>", "<<action>", "<\\action>"]
WORDS = ["up", "Down", "LEFT", "rIgHt", "left", "right", "down", "lef", "upp", "jump", "u p", "up.", "ｕｐ", "rİght",
         "Kup"]
SPACE = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\x0b", "\x1c", "\x85", "\u00a0", "\u1680", "\u2003", "\u2028", "\u3000",
         "\u200b", "\ufeff", "\u180e"]
OTHER = ["x", "go", ".", " .", "'s", "é", "😀", "日本", "İ", "\u212a", "\ufffd", "<|im_start|>", "<|endoftext|>"]
PIECES = TAGS + NEAR + WORDS + SPACE + OTHER


@st.composite
def answers(draw):
    """Text near the format: each slot of `ws <think> .. </think> ws <action> ws word ws </action> ws` filled
    with the right thing most of the time and with a near-miss otherwise; or a free mix of pieces."""
    pick = lambda good, bad: draw(st.sampled_from(good) if draw(st.integers(0, 5)) else st.sampled_from(bad))  # noqa: E731
    ws = lambda: "".join(draw(st.lists(st.sampled_from(SPACE[:14] + [""] * 6), max_size=2)))  # noqa: E731
    if draw(st.integers(0, 4)) == 0:
        return "".join(draw(st.lists(st.sampled_from(PIECES), max_size=10)))
    think = ""
    if draw(st.booleans()):
        body = "".join(draw(st.lists(st.sampled_from(WORDS + OTHER + SPACE + TAGS + NEAR), max_size=4)))
        think = ws() + pick(["<think>"], NEAR + ["", "<action>"]) + body + pick(["</think>"], NEAR + [""])
    word = pick(WORDS[:8], WORDS[8:] + OTHER + [""])
    return (think + ws() + pick(["<action>"], NEAR + [""]) + ws() + word + ws() + pick(["</action>"], NEAR + [""])
            + ws() + ("" if draw(st.integers(0, 6)) else draw(st.sampled_from(PIECES))))


@st.composite
def encodings(draw, text):
    """Ids whose decoded text is `text` (tokenized whole, or cut into chunks tokenized on their own, which
    splits tags anywhere), with arbitrary ids (partial UTF-8 bytes, ids past the tokenizer) sometimes mixed in."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=4))))
    chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    noise = draw(st.lists(st.integers(0, 2**20), max_size=2))
    # Single bytes of multi-byte spaces (and other lead/continuation bytes), whole or broken sequences.
    raw = draw(st.lists(st.tuples(st.integers(0, 2**20), st.lists(st.sampled_from(RAW), min_size=1, max_size=3)),
                        max_size=2))
    return chunks, noise, raw


RAW = [0xC2, 0xA0, 0x85, 0xE1, 0x9A, 0xE2, 0x80, 0x81, 0x8A, 0x8B, 0x9F, 0xE3, 0xF0, 0x9F, 0xFF, 0x20, 0x3C]


def _ids(case, chunks, noise=(), raw=()):
    ids = [t for c in chunks for t in case.tok(c, add_special_tokens=False)["input_ids"]]
    for r in noise:  # an arbitrary id at an arbitrary place: raw bytes, specials, padding rows of the model
        ids.insert(r % (len(ids) + 1), r % (case.vocab + 8))
    for r, seq in raw:
        at = r % (len(ids) + 1)
        ids[at:at] = [case.byte_id[b] for b in seq if b in case.byte_id]  # (some vocabularies lack 0xF5..0xFF)
    return ids[: MAX_TOKENS - 1]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), thinking=st.booleans(), stopped=st.integers(0, 7))
def test_device_parse_equals_host_parse(case, data, thinking, stopped):
    text = data.draw(answers())
    chunks, noise, raw = data.draw(encodings(text)) if data.draw(st.booleans()) else ([text], [], [])
    ids = _ids(case, chunks, noise, raw)
    device, host = case.both(ids, thinking, stopped=bool(stopped))
    assert device == host, (text, chunks, ids, case.tok.decode(ids))


@pytest.mark.parametrize("thinking", [False, True])
def test_known_answers(case, thinking):
    """Fixed answers with the action each must give (so agreement is not agreement on -1 alone)."""
    th = "<think>The box is left of me; I push it.</think>\n" if thinking else ""
    valid = [(th + "<action>left</action>", 2), (th + "<action> Up </action>\n", 0),
             (("<think>a<</think>" if thinking else "") + "<action>up</action>", 0),  # "<" then a tag
             ("\n " + th + " <action>\nRIGHT\t</action>  ", 3), (th + "<action>\u3000down\u00a0</action>\u2003", 1)]
    invalid = [th + "<action >up</action>", th + "<action>up</action", th + "<action>up</action></action>",
               th + "<Action>up</Action>", th + "<action>upward</action>", th + "<action>ｕｐ</action>",
               th + "<action>up\u200b</action>", th + "<action></action>", "x" + th + "<action>up</action>",
               th + "<action>up</action>.", (th or "<think></think>") + "<think><action>up</action>",
               "<action>up</action>" + (th or "<think>a</think>"), "<think>a<action>up</action></think>",
               "<think>a<action>b</think><action>up</action>", "<think>a</action></think><action>up</action>"]
    for text, want in valid + [(t, -1) for t in invalid]:
        for chunks in ([text], list(text)):  # tokenized whole, and one character at a time
            ids = _ids(case, chunks)
            assert case.both(ids, thinking) == (want, want), (text, chunks)
        assert case.both(_ids(case, [text]), thinking, stopped=False) == (-1, -1)  # cut off: malformed
    # A multi-byte space written byte by byte is a space; cut short it is a U+FFFD, which is not.
    for seq, want in (([0xE3, 0x80, 0x80], 0), ([0xE3, 0x80], -1), ([0xC2], -1), ([0xC2, 0xA0], 0),
                      ([0xC2, 0x20], -1), ([0xE2, 0x80, 0x20], -1), ([0xE2, 0x80, 0x8B], -1)):
        for before in (True, False):
            ids = _ids(case, [th + "<action>up</action>"])
            at = 0 if before else len(ids)
            ids[at:at] = [case.byte_id[b] for b in seq if b in case.byte_id]  # (some vocabularies lack 0xF5..0xFF)
            assert case.both(ids, thinking) == (want, want), (seq, before)
    # Without thinking, any think block breaks the format.
    if not thinking:
        assert case.both(_ids(case, ["<think>a</think><action>up</action>"]), False) == (-1, -1)


def test_tags_split_and_merge_on_real_tokenizers(case):
    """The cases the former single-token parser refused: on SmolLM2 and Qwen2 each tag is several tokens, and
    BPE merges a tag's bytes with its neighbours (">\\n", " </"); the answer still parses as on the host."""
    if len(case.tok) < 2000:
        pytest.skip("the tiny tokenizer has the tags as single tokens")
    enc = lambda s: case.tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert all(len(enc(t)) > 1 for t in TAGS)
    text = "<think>push</think>\n<action> left </action>\n"
    ids = enc(text)
    pieces = [case.tok.decode([i]) for i in ids]
    assert any(len(p) > 1 and p[0] in "> " and p.strip() not in TAGS and (">" in p or "<" in p) for p in pieces), pieces
    assert case.both(ids, True) == (2, 2)


def test_unicode_whitespace_table_is_pythons():
    spaces = [c for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert tuple(c for c in spaces if c >= 128) == ap.UNICODE_SPACES
    assert tuple(c for c in spaces if c < 128) == ap.ASCII_SPACES
    # No non-ASCII character lowers to ASCII letters only, except KELVIN SIGN -> "k" (in no action word).
    folds = {chr(c).lower() for c in range(128, sys.maxunicode + 1) if chr(c).lower().isascii()}
    assert folds == {"k"}


def test_token_bytes_match_decode(case):
    table = ap.token_bytes(case.tok)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = rng.integers(0, table.vocab, size=12).tolist()
        assert table.host_bytes(ids).decode("utf-8", "replace") == case.tok.decode(ids)


def test_unsupported_decoder_is_refused_with_the_fix():
    """A decoder the parser does not model (here SentencePiece's Metaspace) keeps the host rollout: the
    prompter builds, and a device parse names the binding to change."""
    from tokenizers import decoders

    tok = copy.deepcopy(tiny.train_tiny_tokenizer())
    tok.backend_tokenizer.decoder = decoders.Metaspace()
    pr = SokobanPrompter(ChatFormat.from_tokenizer(tok, thinking=False), dim=6, max_steps=4)
    assert pr.parser is None and pr.head  # the prompt pieces (the host path) are built as usual
    with pytest.raises(ValueError, match=r"Metaspace.*train\.rollout_mode = 'host'"):
        pr.parse_response(jnp.zeros(4, jnp.int32), jnp.int32(1), jnp.bool_(True))

