"""The tiny tokenizer, chat template, config and HF folder (agentrl_jax.models.tiny)."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from agentrl_jax.models import tiny

ENV_TEXTS = [
    "Wall at (0, 0) Wall at (0, 1) Wall at (2, 0) Goal at (2, 1) Wall at (2, 5) Box at (3, 3) Player at (4, 3)",
    "######\n#_O__#\n#_X__#\n#__P_#\n######",
    "(-1, 7) shows a Leaking pipe (beyond the wall; unreachable).",
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 6, a drawer 2, and a fridge 1.\n"
    "Your task is to: put a clean mug in coffeemachine.",
    "This room is called the kitchen. In it, you see: \n\ta thermometer\n\ta stove\r\n",
    "<think>\nThe box is left of the goal, so I push right.\n</think>\n\n<action>right</action>",
    "<action>take mug 1 from countertop 2</action>",
    "Unicode too: café, 日本語, emoji 😀, tabs\tand  double  spaces, and 12345678901234567890.",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return tiny.train_tiny_tokenizer()


def test_tokenizer_is_deterministic(tok):
    again = tiny.train_tiny_tokenizer()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    # A different corpus gives a different tokenizer, so the check above is not vacuous.
    other = tiny.train_tiny_tokenizer(vocab_size=512, corpus=tiny.default_corpus(n_episodes=10, seed=1))
    assert other.backend_tokenizer.to_str() != tok.backend_tokenizer.to_str()


@pytest.mark.parametrize("text", ENV_TEXTS)
def test_round_trips_env_text_exactly(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_vocab_size_and_learned_env_words(tok):
    assert len(tok) == 1024 + len(tiny.TAG_TOKENS)
    # The corpus teaches frequent env words as single tokens (a generic byte tokenizer would not).
    for word in ["Wall", "Ġat", "ĠPlayer", "ĠBox", "Ġroom"]:
        assert word in tok.get_vocab(), word


def test_specials_and_tags_are_single_ids(tok):
    ids = {t: tok(t, add_special_tokens=False)["input_ids"] for t in tiny.SPECIAL_TOKENS + tiny.TAG_TOKENS}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert [ids[t][0] for t in tiny.SPECIAL_TOKENS] == [0, 1, 2]
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None
    # Tags are not special: they survive skip_special_tokens, while the ChatML markers are dropped.
    text = "<|im_start|>assistant\n<think>hmm</think><action>up</action><|im_end|>"
    ids_all = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids_all, skip_special_tokens=True) == "assistant\n<think>hmm</think><action>up</action>"
    # A tag inside text is still cut out as its own id (the rollout finds actions from ids).
    assert tok.convert_tokens_to_ids("<action>") in tok("xx<action>up", add_special_tokens=False)["input_ids"]


def test_digits_are_split_one_by_one(tok):
    pieces = tok.convert_ids_to_tokens(tok("(12, 345)", add_special_tokens=False)["input_ids"])
    assert "1" in pieces and "2" in pieces and "3" in pieces and "4" in pieces and "5" in pieces
    assert not any(len(p.strip("Ġ")) > 1 and p.strip("Ġ").isdigit() for p in pieces)


def test_no_special_tokens_added_by_default(tok):
    assert tok("up")["input_ids"] == tok("up", add_special_tokens=False)["input_ids"]


def test_chat_template_thinking_switch(tok):
    msgs = [{"role": "user", "content": "Where is the box?"}]
    on = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    off = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on == "<|im_start|>user\nWhere is the box?<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"
    no_gen = tok.apply_chat_template(msgs, tokenize=False)
    assert no_gen == "<|im_start|>user\nWhere is the box?<|im_end|>\n"


def test_chat_template_renders_reasoning_and_is_prefix_stable(tok):
    msgs = [
        {"role": "system", "content": "You solve Sokoban."},
        {"role": "user", "content": "obs 1"},
        {"role": "assistant", "content": "<action>up</action>", "reasoning_content": "Go up first."},
        {"role": "user", "content": "obs 2"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert "<|im_start|>assistant\n<think>\nGo up first.\n</think>\n\n<action>up</action><|im_end|>\n" in text
    # Adding turns only appends: earlier turns render identically (reasoning is never dropped later).
    for k in range(1, len(msgs)):
        assert text.startswith(tok.apply_chat_template(msgs[:k], tokenize=False))


def test_tiny_config_fields_and_overrides():
    cfg = tiny.tiny_config()
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (64, 192, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 16)
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert "rope_theta" not in cfg and cfg["max_position_embeddings"] == 4096
    cfg2 = tiny.tiny_config(num_hidden_layers=3, rope_theta=5e5)
    assert cfg2["num_hidden_layers"] == 3 and cfg2["rope_parameters"]["rope_theta"] == 5e5
    with pytest.raises(ValueError, match="multiple of"):
        tiny.tiny_config(num_attention_heads=4, num_key_value_heads=3)


def test_padded_vocab_size():
    assert [tiny.padded_vocab_size(n) for n in (1, 8, 9, 1028)] == [8, 8, 16, 1032]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="too small"):
        tiny.train_tiny_tokenizer(vocab_size=100)
    with pytest.raises(ValueError, match="corpus"):
        tiny.train_tiny_tokenizer(corpus=[])


def test_write_tiny_folder_files_and_weights(tmp_path, tok):
    folder = tiny.write_tiny_folder(tmp_path / "m", seed=3)
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "model.safetensors"]:
        assert (folder / name).is_file(), name
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vocab_size"] == 1032 and cfg["vocab_size"] % 8 == 0 and cfg["vocab_size"] >= len(tok)
    assert cfg["eos_token_id"] == cfg["pad_token_id"] == 0
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == tiny.CHAT_TEMPLATE
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 0]
    w = load_file(str(folder / "model.safetensors"))
    assert "lm_head.weight" not in w
    assert w["model.embed_tokens.weight"].shape == (1032, 64)
    assert w["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)
    assert w["model.layers.0.self_attn.o_proj.weight"].shape == (64, 64)
    assert w["model.layers.0.mlp.down_proj.weight"].shape == (64, 192)
    np.testing.assert_array_equal(w["model.norm.weight"], np.ones(64, np.float32))
    assert abs(float(w["model.layers.0.mlp.up_proj.weight"].std()) - 0.02) < 0.002
    assert len(w) == 1 + 2 * 9 + 1
    # Same seed -> same weights; different seed -> different weights.
    w_same = load_file(str(tiny.write_tiny_folder(tmp_path / "m2", seed=3) / "model.safetensors"))
    w_other = load_file(str(tiny.write_tiny_folder(tmp_path / "m3", seed=4) / "model.safetensors"))
    np.testing.assert_array_equal(w_same["model.embed_tokens.weight"], w["model.embed_tokens.weight"])
    assert not np.array_equal(w_other["model.embed_tokens.weight"], w["model.embed_tokens.weight"])


def test_untied_folder_has_lm_head(tmp_path):
    folder = tiny.write_tiny_folder(tmp_path / "u", tie_word_embeddings=False)
    w = load_file(str(folder / "model.safetensors"))
    assert w["lm_head.weight"].shape == w["model.embed_tokens.weight"].shape


def test_ensure_tiny_folder_builds_once(tmp_path):
    a = tiny.ensure_tiny_folder(cache_dir=tmp_path)
    stamp = os.stat(a / "model.safetensors").st_mtime_ns
    b = tiny.ensure_tiny_folder(cache_dir=tmp_path)
    assert a == b and os.stat(b / "model.safetensors").st_mtime_ns == stamp
    c = tiny.ensure_tiny_folder(cache_dir=tmp_path, seed=1)
    assert c != a and c.parent == a.parent
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, c.name])  # no temp leftovers


def test_ensure_tiny_folder_honours_env_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path / "envcache"))
    assert tiny.ensure_tiny_folder().parent == tmp_path / "envcache"


@pytest.mark.torch
def test_transformers_loads_tiny_folder(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tiny.ensure_tiny_folder(cache_dir=tmp_path)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.vocab_size == 1032 and model.config.tie_word_embeddings
    loaded = load_file(str(folder / "model.safetensors"))
    np.testing.assert_array_equal(model.model.layers[0].self_attn.q_proj.weight.detach().numpy(),
                                  loaded["model.layers.0.self_attn.q_proj.weight"])
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    text = ENV_TEXTS[0]
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False).endswith("</think>\n\n")
    with torch.no_grad():
        logits = model(torch.tensor([tok(text)["input_ids"]])).logits
    assert logits.shape[-1] == 1032 and torch.isfinite(logits).all()
