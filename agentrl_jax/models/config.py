"""Model configuration: one frozen dataclass for the Llama-3 / Qwen2 / Qwen3 decoder family.

`config_from_hf` reads a Hugging Face `config.json` dict (transformers 5 keeps RoPE settings in
`rope_parameters`; 4.x used top-level `rope_theta` + `rope_scaling`); `config_to_hf` writes one back that both
transformers 4.x and 5.x (and vLLM) accept.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple

import gin
import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_DTYPES = ("float32", "bfloat16", "float16")


def _freeze(value: Any) -> Any:
    """A hashable view of nested dicts/lists (for hashing the config)."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder hyper-parameters.

    head_dim: None means hidden_size // num_heads (resolved at construction, so `cfg.head_dim` is always an int).
    rope_scaling: None or a dict with `rope_type` in {"default", "llama3", "linear"} and its fields
      (llama3: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings; linear: factor).
    qkv_bias: biases on q/k/v projections (Qwen2; Llama / Qwen3 with `attention_bias=True`).
    o_proj_bias: bias on the output projection (Llama / Qwen3 with `attention_bias=True`; Qwen2 has none).
    qk_norm: per-head RMSNorm on q and k before RoPE (Qwen3).
    dtype: compute dtype of activations; param_dtype: storage dtype of weights.
    remat: rematerialise each decoder layer in the backward pass (`nnx.remat`).
    eos_token_ids: end-of-turn/eos ids read from generation_config.json / config.json (may be empty).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: Optional[int] = None
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_proj_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 4096
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    model_type: str = "llama"
    eos_token_ids: Tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"ModelConfig.model_type={self.model_type!r} is not supported; use one of {SUPPORTED_MODEL_TYPES}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads}) for GQA"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_heads ({self.num_heads}); "
                    "set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; use one of {_DTYPES}")
        if self.rope_scaling is not None:
            rs = dict(self.rope_scaling)
            rope_type = rs.get("rope_type", rs.get("type", "default"))
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise ValueError(f"rope_type {rope_type!r} is not supported; use one of {SUPPORTED_ROPE_TYPES}")
            need = {"llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                    "linear": ("factor",), "default": ()}[rope_type]
            missing = [k for k in need if k not in rs]
            if missing:
                raise ValueError(f"rope_scaling of type {rope_type!r} is missing {missing}")
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))

    # Frozen dataclasses hash their fields; rope_scaling is a dict, so hash a frozen view instead. NNX keeps the
    # config in the graphdef, which jit hashes.
    def __hash__(self):
        return hash(tuple(_freeze(getattr(self, f.name)) for f in dataclasses.fields(self)))

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.qkv_bias:
            attn += hd * (self.num_heads + 2 * self.num_kv_heads)
        if self.o_proj_bias:
            attn += d
        if self.qk_norm:
            attn += 2 * hd
        layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + emb + d


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] (float32), with llama3 / linear scaling applied."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv = inv.astype(np.float32)
    rt = cfg.rope_type
    if rt == "linear":
        inv = inv / np.float32(cfg.rope_scaling["factor"])
    elif rt == "llama3":
        rs = cfg.rope_scaling
        factor = float(rs["factor"])
        lo, hi = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_len = float(rs["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        # Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, and the band in between
        # is interpolated linearly in old_len / wavelen.
        scaled = np.where(wavelen > old_len / lo, inv / factor, inv)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
        inv = np.where(medium, blended, scaled).astype(np.float32)
    return inv


def _rope_from_hf(d: Mapping[str, Any]) -> Tuple[float, Optional[dict]]:
    """(rope_theta, rope_scaling) from a v5 `rope_parameters` or v4 `rope_theta` / `rope_scaling`."""
    params = d.get("rope_parameters")
    if params:
        params = dict(params)
        theta = float(params.pop("rope_theta", d.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        return theta, (None if rope_type == "default" else params)
    theta = float(d.get("rope_theta", 10000.0))
    scaling = d.get("rope_scaling")
    if scaling:
        scaling = dict(scaling)
        if "rope_type" not in scaling and "type" in scaling:
            scaling["rope_type"] = scaling.pop("type")
        if scaling.get("rope_type", "default") == "default":
            scaling = None
    return theta, scaling or None


def sliding_window_layers(d: Mapping[str, Any]) -> list:
    """Indices of the layers transformers runs with sliding-window attention for HF config dict `d` (Qwen2/3).

    As in transformers 5's Qwen2Config / Qwen3Config: no window unless `use_sliding_window` and a
    `sliding_window` size are set; then `layer_types` when given, else every layer i >= `max_window_layers`
    (default 28). Llama has no sliding window.
    """
    if d.get("model_type") not in ("qwen2", "qwen3") or not d.get("use_sliding_window"):
        return []
    if d.get("sliding_window") is None:
        return []
    n = int(d["num_hidden_layers"])
    types = d.get("layer_types") or [
        "sliding_attention" if i >= int(d.get("max_window_layers", 28)) else "full_attention" for i in range(n)
    ]
    return [i for i, t in enumerate(types) if t == "sliding_attention"]


def config_from_hf(d: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config dict (transformers 4.x or 5.x layout).

    `overrides` replace fields afterwards (e.g. dtype="bfloat16").
    """
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported model types: {list(SUPPORTED_MODEL_TYPES)}"
        )
    if d.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"hidden_act {d.get('hidden_act')!r} is not supported (only silu/SwiGLU)")
    if d.get("mlp_bias"):
        raise ValueError("mlp_bias=True is not supported (Llama/Qwen checkpoints have no MLP biases)")
    sliding = sliding_window_layers(d)
    if sliding:
        raise ValueError(
            f"use_sliding_window=True with sliding_window={d.get('sliding_window')} makes transformers window the "
            f"attention of layers {sliding} (from layer_types / max_window_layers={d.get('max_window_layers', 28)}), "
            "but this decoder only has full attention, so its outputs would differ from the checkpoint's on any "
            "sequence longer than the window. Load a checkpoint without sliding window layers (set "
            "use_sliding_window=false in config.json only if no sequence will exceed the window)"
        )
    theta, scaling = _rope_from_hf(d)
    eos = d.get("eos_token_id")
    eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    kwargs = dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=int(d["num_attention_heads"]),
        num_kv_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
        head_dim=d.get("head_dim"),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases and none on o_proj; Llama's and Qwen3's attention_bias=True puts a bias
        # on all four projections (transformers' LlamaAttention / Qwen3Attention).
        qkv_bias=True if model_type == "qwen2" else bool(d.get("attention_bias", False)),
        o_proj_bias=model_type != "qwen2" and bool(d.get("attention_bias", False)),
        qk_norm=model_type == "qwen3",
        max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
        model_type=model_type,
        eos_token_ids=eos,
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def config_to_hf(cfg: ModelConfig) -> dict:
    """A Hugging Face config dict for `cfg` (with both v4 and v5 RoPE keys)."""
    rope_params = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope_params = dict(cfg.rope_scaling, rope_theta=cfg.rope_theta)
        rope_params.setdefault("rope_type", cfg.rope_type)
    d = {
        "architectures": [_ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": ({k: v for k, v in rope_params.items() if k != "rope_theta"} if cfg.rope_scaling else None),
        "rope_parameters": rope_params,
        "torch_dtype": cfg.param_dtype,
        "dtype": cfg.param_dtype,
        "use_cache": True,
    }
    if cfg.model_type in ("llama", "qwen3"):
        # One HF flag for all four attention biases: a config with only some of them is not representable.
        if cfg.qkv_bias != cfg.o_proj_bias:
            raise ValueError(
                f"{cfg.model_type} checkpoints have biases on q/k/v and o_proj together (attention_bias) or on "
                f"none; got qkv_bias={cfg.qkv_bias}, o_proj_bias={cfg.o_proj_bias}: set both to the same value "
                "(or use model_type='qwen2' for q/k/v biases alone)"
            )
        d["attention_bias"] = cfg.qkv_bias
        d["attention_dropout"] = 0.0
    if cfg.model_type == "llama":
        d["mlp_bias"] = False
    if cfg.model_type in ("qwen2", "qwen3"):
        d["use_sliding_window"] = False
    if cfg.model_type == "qwen2" and not cfg.qkv_bias:
        raise ValueError("Qwen2 checkpoints always have q/k/v biases; use qkv_bias=True or model_type='llama'")
    if cfg.model_type == "qwen2" and cfg.o_proj_bias:
        raise ValueError("Qwen2 checkpoints have no o_proj bias; use o_proj_bias=False or model_type='llama'")
    if cfg.model_type != "qwen3" and cfg.qk_norm:
        raise ValueError("qk_norm=True is only representable as model_type='qwen3'")
    if cfg.model_type == "qwen3" and not cfg.qk_norm:
        raise ValueError("Qwen3 checkpoints always have q/k norms; use qk_norm=True")
    if cfg.eos_token_ids:
        d["eos_token_id"] = list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else cfg.eos_token_ids[0]
    return d
