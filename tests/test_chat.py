"""Token-level chat assembly (agentrl_jax.chat) against the tokenizers' own chat templates."""
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl_jax.chat import ChatFormat, chat_format, parse_action_text
from agentrl_jax.models import tiny

REPO = Path(__file__).resolve().parents[1]
SMOL = Path(os.environ.get("AGENTRL_CACHE", REPO / "cache")) / "smollm2-135m-instruct"

SOKOBAN_OBS = "Wall at (0, 0) Wall at (0, 1) Goal at (2, 1)\nBox at (3, 3) Player at (4, 3)"
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a Sokoban solver."},
     {"role": "user", "content": SOKOBAN_OBS},
     {"role": "assistant", "content": "<think>The box is below.</think><action>down</action>"},
     {"role": "user", "content": "Nothing happens. Score: 12 \t tabs,\r\nCRLF, 日本語 😀"},
     {"role": "assistant", "content": "<action>left</action>"},
     {"role": "user", "content": "Your admissible actions are: ['go to cabinet 1', 'look']"}],
    [{"role": "user", "content": "obs one"},
     {"role": "assistant", "content": "<action>up</action>", "reasoning_content": "Up is free."},
     {"role": "user", "content": "obs two, with trailing spaces   "},
     {"role": "assistant", "content": ""}],
]


@pytest.fixture(scope="module")
def tiny_tok():
    return tiny.train_tiny_tokenizer()


@pytest.fixture(scope="module")
def smol_tok():
    if not (SMOL / "tokenizer.json").exists():
        pytest.skip(f"SmolLM2 folder absent ({SMOL}); run `python scripts/fetch_smollm2.py` first")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(SMOL))


@pytest.fixture(params=["tiny", "smollm2"])
def tok(request, tiny_tok):
    return tiny_tok if request.param == "tiny" else request.getfixturevalue("smol_tok")


def template_ids(tok, messages, gen, thinking):
    return list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen,
                                        enable_thinking=thinking)["input_ids"])


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_encode_conversation_equals_template_ids(tok, conv, gen, thinking):
    msgs = CONVERSATIONS[conv]
    fmt = ChatFormat.from_tokenizer(tok, thinking=thinking)
    assert fmt.encode_conversation(msgs, add_generation_prompt=gen) == template_ids(tok, msgs, gen, thinking)
    assert fmt.render_text(msgs, gen) == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                                                 enable_thinking=thinking)


def test_pieces_of_tiny_template(tiny_tok):
    on, off = ChatFormat.from_tokenizer(tiny_tok, True), ChatFormat.from_tokenizer(tiny_tok, False)
    assert on.start == "" and on.default_system == ""
    assert on.prefixes["user"] == "<|im_start|>user\n" and on.suffixes["assistant"] == "<|im_end|>\n"
    assert (on.reasoning_prefix, on.reasoning_suffix) == ("<think>\n", "\n</think>\n\n")
    assert on.generation_prompt == "<|im_start|>assistant\n"
    assert off.generation_prompt == "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    im_end = tiny_tok.convert_tokens_to_ids("<|im_end|>")
    assert on.stop_ids == (im_end, tiny_tok.eos_token_id)
    assert tiny_tok.decode(off.generation_prompt_ids()) == off.generation_prompt


def test_pieces_of_smollm2_template(smol_tok):
    fmt = ChatFormat.from_tokenizer(smol_tok, thinking=True)
    # SmolLM2's template injects a default system turn when the conversation has none.
    assert fmt.default_system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert fmt.start == ""  # its BOS (<|im_start|>) also opens every turn, so it is not a separate start
    assert fmt.reasoning_prefix is None  # the template ignores reasoning_content
    assert fmt.generation_prompt == "<|im_start|>assistant\n"
    assert smol_tok.convert_tokens_to_ids("<|im_end|>") in fmt.stop_ids
    with_sys = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert "SmolLM" not in smol_tok.decode(fmt.encode_conversation(with_sys))


_TEXT = st.lists(st.sampled_from(list("abcXYZ 019,.()'\"\n\t\r<>/_-é日😀") + ["<action>", "</think>", "  \n"]),
                max_size=30).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contents=st.lists(_TEXT, min_size=1, max_size=5), system=st.booleans(), gen=st.booleans(),
       thinking=st.booleans())
def test_tiny_parity_on_arbitrary_content(tiny_tok, contents, system, gen, thinking):
    # The tiny tokenizer isolates newlines, so even content starting/ending with whitespace matches exactly.
    roles = ["user", "assistant"]
    msgs = ([{"role": "system", "content": "sys"}] if system else []) + [
        {"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    fmt = ChatFormat.from_tokenizer(tiny_tok, thinking=thinking)
    assert fmt.encode_conversation(msgs, gen) == template_ids(tiny_tok, msgs, gen, thinking)


def test_leading_whitespace_content_is_decode_equal_on_smollm2(smol_tok):
    # GPT-2's regex merges a run of whitespace across the "\n" ending the turn prefix, so ids may differ;
    # the decoded text must still be identical.
    msgs = [{"role": "user", "content": "\n\n  indented first line"}, {"role": "assistant", "content": " ok"}]
    fmt = ChatFormat.from_tokenizer(smol_tok, thinking=True)
    ours = fmt.encode_conversation(msgs, add_generation_prompt=True)
    text = smol_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert smol_tok.decode(ours) == text
    assert ours != template_ids(smol_tok, msgs, True, True)  # documents the known boundary effect


@pytest.mark.parametrize("thinking", [True, False])
def test_rollout_buffer_equals_template(tok, thinking):
    """Simulate a rollout: generation prompt, model ids, stop token, then next_turn_ids, without re-tokenizing."""
    fmt = ChatFormat.from_tokenizer(tok, thinking=thinking)
    start = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": SOKOBAN_OBS}]
    buf = fmt.encode_conversation(start, add_generation_prompt=True)
    answer = "<think>Push it.</think><action>down</action>" if thinking else "<action>down</action>"
    generated = tok(answer, add_special_tokens=False)["input_ids"] + [fmt.stop_ids[0]]
    buf += generated + fmt.next_turn_ids(generated, "Box at (4, 3)")
    # What the template would show: with thinking off, the empty think block of the prompt is part of the turn.
    shown = answer if thinking or fmt.generation_prompt == fmt.prefixes["assistant"] else (
        fmt.generation_prompt[len(fmt.prefixes["assistant"]):] + answer)
    msgs = start + [{"role": "assistant", "content": shown}, {"role": "user", "content": "Box at (4, 3)"}]
    assert buf == template_ids(tok, msgs, True, thinking)


def test_close_assistant_after_cutoff(tiny_tok):
    fmt = ChatFormat.from_tokenizer(tiny_tok, thinking=True)
    suffix = list(fmt.suffix_ids["assistant"])
    cut = tiny_tok("<think>still thinking", add_special_tokens=False)["input_ids"]
    assert fmt.close_assistant_ids(cut) == suffix  # no stop token generated -> the full suffix is added
    assert fmt.close_assistant_ids(cut + [suffix[0]]) == suffix[1:]
    assert fmt.user_turn_ids("x") == fmt.encode_message("user", "x")
    assert tiny_tok.decode(fmt.user_turn_ids("obs")) == "<|im_start|>user\nobs<|im_end|>\n"


def test_gin_entry_point(tiny_tok):
    assert chat_format(tiny_tok, thinking=False).generation_prompt.endswith("</think>\n\n")


def test_errors_are_clear(tiny_tok):
    tiny_tok_no_template = tiny.train_tiny_tokenizer()
    tiny_tok_no_template.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        ChatFormat.from_tokenizer(tiny_tok_no_template)
    # A template that treats the last message differently cannot be assembled from constant pieces.
    odd = tiny.train_tiny_tokenizer()
    odd.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}")
    with pytest.raises(ValueError, match="Unsupported chat template"):
        ChatFormat.from_tokenizer(odd)
    fmt = ChatFormat.from_tokenizer(tiny_tok)
    with pytest.raises(ValueError, match="role"):
        fmt.encode_conversation([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="string"):
        fmt.encode_message("user", ["not", "text"])


@pytest.mark.parametrize("text,thinking,expected", [
    ("<think>box is left</think><action>left</action>", True, ("left", True)),
    ("  <think>\nmulti\nline\n</think>\n\n<action>  go to cabinet 1 </action>\n", True, ("go to cabinet 1", True)),
    ("<action>up</action>", True, (None, False)),  # thinking required
    ("<think>a</think>", True, (None, False)),  # no action
    ("<think>a</think><action>up</action><action>down</action>", True, (None, False)),  # two actions
    ("<action>up</action><think>a</think>", True, (None, False)),  # wrong order
    ("<think>a</think>chatter<action>up</action>", True, (None, False)),  # text between blocks
    ("<think>a</think><action>up</action> trailing words", True, (None, False)),
    ("<think>a</think><action>   </action>", True, (None, False)),  # empty action
    ("<think>a<action>up</action>", True, (None, False)),  # unclosed think
    ("<action>right</action>", False, ("right", True)),
    ("\n<action>take mug 1 from countertop 2</action>", False, ("take mug 1 from countertop 2", True)),
    ("<think>a</think><action>up</action>", False, (None, False)),  # no-think format: action alone
    ("I choose up", False, (None, False)),
    ("<action>up", False, (None, False)),
    ("", False, (None, False)),
])
def test_parse_action_text(text, thinking, expected):
    assert parse_action_text(text, thinking) == expected


def test_parse_action_text_rejects_ids():
    with pytest.raises(ValueError, match="decoded text"):
        parse_action_text([1, 2, 3], True)


@pytest.mark.parametrize("text,thinking", [("<action>up</action>", False),
                                           ("<think>box left</think><action>left</action>", True)])
def test_an_answer_cut_off_before_its_stop_token_is_malformed(text, thinking):
    assert parse_action_text(text, thinking)[1]
    assert parse_action_text(text, thinking, stopped=False) == (None, False)
