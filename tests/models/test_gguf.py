"""GGUF -> Hugging Face conversion (agentrl_jax.models.gguf) and the converted SmolLM2-135M-Instruct."""
import json
import math
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import regex
from safetensors.numpy import load_file

from agentrl_jax.models import tiny
from agentrl_jax.models.gguf import convert_gguf_to_hf, hf_tensor_name, permute_qk, unpermute_qk

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("AGENTRL_CACHE", REPO / "cache"))
SMOL = CACHE / "smollm2-135m-instruct"
SMOL_GGUF = CACHE / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
need_smol = pytest.mark.skipif(not (SMOL / ".complete").exists(),
                               reason=f"SmolLM2 folder absent ({SMOL}); run `python scripts/fetch_smollm2.py`")
need_smol_gguf = pytest.mark.skipif(not SMOL_GGUF.exists(),
                                    reason=f"SmolLM2 GGUF absent ({SMOL_GGUF}); run `python scripts/fetch_smollm2.py`")

TRICKY = [
    "Hello world",
    "12345 and 3.14159, (0, 12) -7",
    "line one\r\nline two\n\n\ttabbed\t\tdouble tab",
    "日本語のテキストと中文",
    "emoji 😀🚀 and ZWJ 👩‍💻 mixed",
    "<|im_start|>user\nhi there<|im_end|>\n<|endoftext|>",
    "   leading and trailing spaces   ",
    "don't won't I'll we've THEY'RE",
    "Wall at (0, 0) Wall at (0, 1) Player at (4, 3)",
    "non\u00a0breaking space, café, ÀÉÎ, naïve",
    "<think>\nreason\n</think>\n\n<action>up</action>",
    "",
]


# ----------------------------------------------------------------------------------------------------------
# An independent reference for llama.cpp's byte-level BPE with the "smollm" pre-tokenizer: split off control
# tokens, isolate every digit (\p{N}), split the rest with the GPT-2 regex, map bytes to GPT-2's printable
# alphabet and apply the merges in rank order. Written from the GGUF's token list and merges alone.
# ----------------------------------------------------------------------------------------------------------

_GPT2_RE = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


def _byte_alphabet():
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(
        range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_B2U = _byte_alphabet()


def reference_encode(text, tokens, merges, specials):
    ids_of = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
    out = []
    chunks = regex.split("(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")",
                         text) if specials else [text]
    for chunk in chunks:
        if chunk in specials:
            out.append(ids_of[chunk])
            continue
        for piece in regex.split(r"(\p{N})", chunk):
            for word in _GPT2_RE.findall(piece):
                sym = [_B2U[b] for b in word.encode("utf-8")]
                while len(sym) > 1:
                    rank, i = min((ranks.get(p, math.inf), i) for i, p in enumerate(zip(sym, sym[1:])))
                    if rank == math.inf:
                        break
                    sym[i:i + 2] = [sym[i] + sym[i + 1]]
                out.extend(ids_of[s] for s in sym)
    return out


# ----------------------------------------------------------------------------------------------------------
# A small synthetic GGUF written with the gguf package's writer: fast, and its truth is known exactly.
# ----------------------------------------------------------------------------------------------------------


def _tiny_vocab():
    tok = tiny.train_tiny_tokenizer(vocab_size=512)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    types = [3 if t in tiny.SPECIAL_TOKENS else 4 if t in tiny.TAG_TOKENS else 1 for t in tokens]
    return tokens, merges, types


def write_synthetic_gguf(path, arch="llama", tokenizer_model="gpt2", quantize_embedding=True, seed=0):
    tokens, merges, types = _tiny_vocab()
    cfg = tiny.tiny_config(vocab_size=len(tokens), rope_theta=50000.0)
    hf = tiny.random_llama_weights(cfg, seed=seed, std=0.1)
    hf = {k: (v + np.random.default_rng(1).normal(0, 0.1, v.shape).astype(np.float32)) if "norm" in k else v
          for k, v in hf.items()}  # non-trivial norms, so a mix-up between norm tensors would show
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(50000.0)
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(tiny.CHAT_TEMPLATE)
    names = {v: k for k, v in ((g, hf_tensor_name(g)) for g in _gguf_names(cfg["num_hidden_layers"]))}
    for hf_name, arr in hf.items():
        g = names[hf_name]
        if hf_name.endswith("q_proj.weight"):
            arr = permute_qk(arr, cfg["num_attention_heads"])
        elif hf_name.endswith("k_proj.weight"):
            arr = permute_qk(arr, cfg["num_key_value_heads"])
        if quantize_embedding and g == "token_embd.weight":
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(g, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(g, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return cfg, hf, tokens, merges


def _gguf_names(n_layers):
    yield from ("token_embd.weight", "output_norm.weight")
    for i in range(n_layers):
        for s in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm",
                  "ffn_norm"):
            yield f"blk.{i}.{s}.weight"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    cfg, hf, tokens, merges = write_synthetic_gguf(d / "tiny.gguf")
    out = convert_gguf_to_hf(d / "tiny.gguf", d / "hf")
    return cfg, hf, tokens, merges, out


def test_synthetic_config(synthetic):
    cfg, _, tokens, _, out = synthetic
    got = json.loads((out / "config.json").read_text())
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "max_position_embeddings"):
        assert got[k] == cfg[k], k
    assert got["model_type"] == "llama" and got["vocab_size"] == len(tokens)
    assert got["rope_parameters"] == {"rope_type": "default", "rope_theta": 50000.0}
    assert got["rms_norm_eps"] == 1e-5 and got["tie_word_embeddings"] is True
    assert (got["bos_token_id"], got["eos_token_id"], got["pad_token_id"]) == (1, 2, 2)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 0]


def test_synthetic_weights_round_trip(synthetic):
    _, hf, _, _, out = synthetic
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(hf)
    for k, v in hf.items():
        assert got[k].dtype == np.float32 and got[k].shape == v.shape, k
        if k == "model.embed_tokens.weight":  # stored as Q8_0: equal up to the 8-bit step of each block
            step = np.abs(v).reshape(v.shape[0], -1, 32).max(-1, keepdims=True) / 127
            # half a step, plus the float16 rounding of each block's scale
            assert np.all(np.abs(got[k] - v).reshape(step.shape[0], -1, 32) <= step * 0.6)
            q8 = gguf.quants.quantize(v, gguf.GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(got[k], gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0))
            assert not np.array_equal(got[k], v)
        else:  # F32 tensors, Q/K un-permuted back to the HF layout exactly
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def _rope_interleaved(x, pos, theta):
    """llama.cpp's 'normal' RoPE: rotate adjacent pairs (x0, x1), (x2, x3), ..."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = pos[:, None] * inv[None]
    c, s = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = x0 * c - x1 * s, x0 * s + x1 * c
    return out


def _rope_half(x, pos, theta):
    """Hugging Face's RoPE: rotate (x_i, x_{i + d/2})."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = pos[:, None] * inv[None]
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * c - b * s, a * s + b * c], -1)


def test_unpermute_makes_hf_rope_match_llamacpp_rope():
    """Attention scores with llama.cpp's RoPE on GGUF-layout Q/K equal HF's RoPE on the converted weights."""
    rng = np.random.default_rng(0)
    n_heads, hd, d, T = 3, 8, 12, 5
    wq_gguf = rng.normal(size=(n_heads * hd, d))
    wk_gguf = rng.normal(size=(n_heads * hd, d))
    x, pos = rng.normal(size=(T, d)), np.arange(T, dtype=np.float64)

    def scores(wq, wk, rope):
        q = (x @ wq.T).reshape(T, n_heads, hd).transpose(1, 0, 2)
        k = (x @ wk.T).reshape(T, n_heads, hd).transpose(1, 0, 2)
        return np.einsum("htd,hsd->hts", rope(q, pos, 1e4), rope(k, pos, 1e4))

    want = scores(wq_gguf, wk_gguf, _rope_interleaved)
    got = scores(unpermute_qk(wq_gguf, n_heads), unpermute_qk(wk_gguf, n_heads), _rope_half)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # Without un-permuting the two conventions disagree, so the check above has teeth.
    assert not np.allclose(scores(wq_gguf, wk_gguf, _rope_half), want)
    np.testing.assert_array_equal(permute_qk(unpermute_qk(wq_gguf, n_heads), n_heads), wq_gguf)


@pytest.fixture(scope="module")
def synthetic_tok(synthetic):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(synthetic[-1]))


@pytest.mark.parametrize("text", TRICKY)
def test_synthetic_tokenizer_matches_reference_bpe(synthetic, synthetic_tok, text):
    _, _, tokens, merges, _ = synthetic
    tok = synthetic_tok
    ids = tok(text, add_special_tokens=False)["input_ids"]
    specials = [t for t in tokens if t in tiny.SPECIAL_TOKENS + tiny.TAG_TOKENS]
    assert ids == reference_encode(text, tokens, merges, specials)
    assert tok.decode(ids) == text


def test_unsupported_inputs_raise_clear_errors(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="architecture 'mamba' is not supported"):
        convert_gguf_to_hf(tmp_path / "m.gguf", tmp_path / "out")
    write_synthetic_gguf(tmp_path / "spm.gguf", tokenizer_model="llama", quantize_embedding=False)
    with pytest.raises(ValueError, match="tokenizer model 'llama' is not supported"):
        convert_gguf_to_hf(tmp_path / "spm.gguf", tmp_path / "out2")
    with pytest.raises(ValueError, match="fetch_smollm2"):
        convert_gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out3")
    with pytest.raises(ValueError, match="no Hugging Face Llama counterpart"):
        hf_tensor_name("rope_freqs.weight")


@pytest.mark.torch
def test_transformers_runs_synthetic_folder(synthetic):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, hf, _, _, out = synthetic
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.rope_parameters["rope_theta"] == 50000.0
    np.testing.assert_array_equal(model.model.layers[1].self_attn.k_proj.weight.detach().numpy(),
                                  hf["model.layers.1.self_attn.k_proj.weight"])


# ----------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct (converted by scripts/fetch_smollm2.py)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_gguf_vocab():
    reader = gguf.GGUFReader(str(SMOL_GGUF))
    f = reader.fields
    tokens = list(f["tokenizer.ggml.tokens"].contents())
    types = list(f["tokenizer.ggml.token_type"].contents())
    merges = list(f["tokenizer.ggml.merges"].contents())
    return tokens, types, merges


@pytest.fixture(scope="module")
def smol_tok():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(SMOL))


@need_smol
def test_smollm2_folder_config():
    cfg = json.loads((SMOL / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (30, 576, 1536)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (9, 3, 64)
    assert cfg["vocab_size"] == 49152 and cfg["tie_word_embeddings"] is True
    assert cfg["rope_parameters"]["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5
    tcfg = json.loads((SMOL / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tcfg["chat_template"] and tcfg["eos_token"] == "<|im_end|>"


@need_smol
@need_smol_gguf
@pytest.mark.parametrize("text", TRICKY)
def test_smollm2_tokenizer_matches_gguf_vocab(smol_gguf_vocab, smol_tok, text):
    tokens, types, merges = smol_gguf_vocab
    tok = smol_tok
    ids = tok(text, add_special_tokens=False)["input_ids"]
    specials = [t for t, ty in zip(tokens, types) if ty == 3]
    assert ids == reference_encode(text, tokens, merges, specials)
    assert tok.decode(ids) == text
    if text.startswith("<|im_start|>"):
        assert ids[0] == 1 and ids[-1] == 0 and 2 in ids


@need_smol
@pytest.mark.torch
@pytest.mark.slow
def test_smollm2_answers_paris_with_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(SMOL))
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(SMOL), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@need_smol_gguf
@pytest.mark.slow
def test_smollm2_conversion_reproduces_cached_folder(tmp_path):
    out = convert_gguf_to_hf(SMOL_GGUF, tmp_path / "smol")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 30
    if (SMOL / ".complete").exists():  # deterministic: same files as the fetch script produced
        for name in ("config.json", "tokenizer.json", "generation_config.json"):
            assert (out / name).read_text() == (SMOL / name).read_text(), name
    w = load_file(str(out / "model.safetensors"))
    assert len(w) == 2 + 30 * 9 and "lm_head.weight" not in w
    assert w["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert w["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert np.isfinite(w["model.embed_tokens.weight"]).all()
