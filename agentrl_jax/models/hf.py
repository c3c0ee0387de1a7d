"""Load and save Hugging Face checkpoints (config.json + safetensors + tokenizer) from a local folder, no torch.

Weights are read one tensor at a time with `safetensors` (numpy backend) and converted straight to the
requested param dtype, so an 8B bf16 checkpoint never passes through a float32 copy. The model is first
built abstractly (`nnx.eval_shape`), so no random weights are materialised either; with `mesh=` each tensor
is placed directly on its sharding.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from agentrl_jax.models.config import ModelConfig, SUPPORTED_MODEL_TYPES, config_from_hf, config_to_hf
from agentrl_jax.models.decoder import CausalLM, build_model
from agentrl_jax.models.lora import has_adapters, merged
from agentrl_jax.partitioning import DEFAULT_RULES

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# HF tensors that carry no weights of ours (recomputed buffers).
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")

_HF_MODULE = {
    "input_norm": "input_layernorm",
    "post_attn_norm": "post_attention_layernorm",
    "attn": "self_attn",
}


def _hf_name(path: Tuple[Any, ...]) -> str:
    """Our flat-state path → HF tensor name."""
    path = tuple(str(p) for p in path)
    if path == ("embed_tokens", "embedding"):
        return "model.embed_tokens.weight"
    if path == ("lm_head", "kernel"):
        return "lm_head.weight"
    if path == ("norm", "scale"):
        return "model.norm.weight"
    if path[0] == "layers":
        parts = ["model", "layers", path[1]] + [_HF_MODULE.get(p, p) for p in path[2:-1]]
        leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
        return ".".join(parts + [leaf])
    raise ValueError(f"no Hugging Face name for parameter {'/'.join(path)}")


def _n_in_axes(path: Tuple[Any, ...]) -> int:
    """How many leading axes of our kernel are the Linear's input (0 = not a Linear weight)."""
    if path[-1] != "kernel":
        return 0
    return 2 if "o_proj" in [str(p) for p in path] else 1


def _hf_shape(path, shape: Sequence[int]) -> Tuple[int, ...]:
    n_in = _n_in_axes(path)
    if n_in:  # HF Linear weight is [out, in]
        return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
    if tuple(str(p) for p in path) == ("embed_tokens", "embedding"):
        return tuple(shape)
    return (math.prod(shape),)


def _to_ours(path, arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return (arr.T if _n_in_axes(path) else arr).reshape(shape)


def _to_hf(path, arr: np.ndarray) -> np.ndarray:
    n_in = _n_in_axes(path)
    if n_in:
        return np.ascontiguousarray(arr.reshape(math.prod(arr.shape[:n_in]), -1).T)
    return np.ascontiguousarray(arr.reshape(_hf_shape(path, arr.shape)))


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _weight_files(folder: str) -> Dict[str, str]:
    """HF tensor name → safetensors file path, from the index, the single file, or all *.safetensors."""
    index = os.path.join(folder, _INDEX)
    if os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map'; it is not a safetensors index file")
        out = {}
        for name, fname in weight_map.items():
            p = os.path.join(folder, fname)
            if not os.path.exists(p):
                raise FileNotFoundError(f"{index} lists tensor {name!r} in {fname}, but {p} does not exist")
            out[name] = p
        return out
    files = [os.path.join(folder, _SINGLE)] if os.path.exists(os.path.join(folder, _SINGLE)) else sorted(
        os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no weights in {folder}: expected {_SINGLE} or {_INDEX} with its shards (safetensors format; "
            "convert .bin / .pth / .gguf checkpoints to safetensors first)"
        )
    out = {}
    for p in files:
        with safe_open(p, framework="np") as f:
            for name in f.keys():
                out[name] = p
    return out


def read_config(folder: str, **overrides: Any) -> ModelConfig:
    """ModelConfig from `folder/config.json` (+ eos ids from generation_config.json), with field overrides."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist (expected a local Hugging Face folder)")
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {folder} is not a Hugging Face model folder")
    raw = _read_json(path)
    try:
        cfg = config_from_hf(raw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    eos = list(cfg.eos_token_ids)
    gen_path = os.path.join(folder, "generation_config.json")
    if os.path.exists(gen_path):
        g = _read_json(gen_path).get("eos_token_id")
        g = [] if g is None else list(g) if isinstance(g, (list, tuple)) else [g]
        eos = g + [e for e in eos if e not in g]
    if "param_dtype" not in overrides:
        ckpt_dtype = str(raw.get("dtype") or raw.get("torch_dtype") or "float32").replace("torch.", "")
        overrides["param_dtype"] = ckpt_dtype if ckpt_dtype in ("float32", "bfloat16", "float16") else "float32"
    if "dtype" not in overrides:
        overrides["dtype"] = overrides["param_dtype"]
    return ModelConfig(**{**cfg.__dict__, "eos_token_ids": tuple(eos), **overrides})


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in _TOKENIZER_FILES)


@gin.configurable
def load_pretrained(folder: str, dtype: Optional[str] = None, param_dtype: Optional[str] = None, *,
                    load_tokenizer: bool = True, mesh: Optional[jax.sharding.Mesh] = None, rules=DEFAULT_RULES,
                    **config_overrides: Any):
    """Load a Llama-3 / Qwen2 / Qwen3 checkpoint from a local Hugging Face folder.

    dtype / param_dtype: compute / storage dtype (default: the checkpoint's dtype for both).
    load_tokenizer: also load `AutoTokenizer.from_pretrained(folder)` (fast); False returns None for it.
    mesh, rules: place each tensor directly on its logical-axis sharding (see `agentrl_jax.partitioning`).
    config_overrides: other ModelConfig fields (e.g. remat=True).
    Returns (model, tokenizer). `model.cfg.eos_token_ids` holds the eos ids of generation_config.json.
    """
    folder = os.fspath(folder)
    overrides = dict(config_overrides)
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
        overrides.setdefault("dtype", param_dtype)
    cfg = read_config(folder, **overrides)
    tokenizer = None
    if load_tokenizer:
        if not _has_tokenizer(folder):
            raise FileNotFoundError(
                f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {folder}; add them or pass "
                "load_tokenizer=False"
            )
        from transformers import AutoTokenizer  # lazy: transformers is slow to import

        tokenizer = AutoTokenizer.from_pretrained(folder)
    files = _weight_files(folder)
    model = _build(cfg, files, folder, mesh, rules)
    return model, tokenizer


def _build(cfg: ModelConfig, files: Dict[str, str], folder: str, mesh, rules) -> CausalLM:
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    wanted = [_hf_name(path) for path, _ in nnx.to_flat_state(nnx.state(abstract))]
    missing = [n for n in wanted if n not in files]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"checkpoint in {folder} lacks tensors {shown} needed by a {cfg.model_type} model with "
            f"{cfg.num_layers} layers (tie_word_embeddings={cfg.tie_word_embeddings}); is config.json right?"
        )
    extra = [n for n in files if n not in set(wanted) and not _IGNORED.match(n)
             and not (n == "lm_head.weight" and cfg.tie_word_embeddings)]
    # A tensor of a module we do build (e.g. a projection's bias) changes that module's output: dropping it
    # would run a different model, so that is an error, not a warning.
    ours = {n.rsplit(".", 1)[0] for n in wanted}
    dropped = [n for n in extra if n.rsplit(".", 1)[0] in ours]
    if dropped:
        shown = ", ".join(dropped[:3]) + (f" and {len(dropped) - 3} more" if len(dropped) > 3 else "")
        raise ValueError(
            f"checkpoint in {folder} has tensors {shown} that a {cfg.model_type} model with this config.json "
            f"(qkv_bias={cfg.qkv_bias}, o_proj_bias={cfg.o_proj_bias}, qk_norm={cfg.qk_norm}) has no place "
            "for; loading without them would change the outputs. Is config.json right (e.g. attention_bias)?"
        )
    if extra:
        warnings.warn(f"{folder}: ignoring {len(extra)} tensors the model does not use, e.g. {extra[:3]}")

    with contextlib.ExitStack() as stack:
        handles: Dict[str, Any] = {}

        def read(path, shape, dtype, names):
            name = _hf_name(path)
            fpath = files[name]
            if fpath not in handles:
                handles[fpath] = stack.enter_context(safe_open(fpath, framework="np"))
            arr = handles[fpath].get_tensor(name)
            expect = _hf_shape(path, shape)
            if tuple(arr.shape) != expect:
                raise ValueError(
                    f"{fpath}: tensor {name} has shape {tuple(arr.shape)} but the config in {folder} "
                    f"implies {expect}; config.json and the weights disagree"
                )
            # Cast per tensor from the file's dtype: no float32 detour for bf16 checkpoints.
            return _to_ours(path, arr, shape).astype(dtype, copy=False)

        return build_model(cfg, read, mesh=mesh, rules=rules)


def _parse_size(size) -> int:
    if isinstance(size, (int, np.integer)):
        return int(size)
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)i?B?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r} is not a size like 5000000000, '5GB' or '500MB'")
    unit = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2).upper()]
    return int(float(m.group(1)) * unit)


@gin.configurable
def save_pretrained(model: CausalLM, tokenizer, folder: str, *, max_shard_size="5GB") -> List[str]:
    """Write `folder` as a Hugging Face checkpoint transformers / vLLM can open.

    config.json, model.safetensors (or model-0000k-of-0000n.safetensors + model.safetensors.index.json when
    larger than max_shard_size), generation_config.json when the config has eos ids, and the tokenizer's
    files when `tokenizer` is not None. Weights are written in cfg.param_dtype. Returns the files written.
    A model with LoRA adapters is written merged (kernel + scale * lora_a @ lora_b; `lora.merged`): a plain
    checkpoint of the same function.
    """
    if not isinstance(model, CausalLM):
        raise ValueError(f"save_pretrained needs a CausalLM, got {type(model).__name__}")
    if has_adapters(model):
        model = merged(model)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    cfg = model.cfg
    limit = _parse_size(max_shard_size)
    flat = [(p, v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    # Plan shards from sizes first, then convert one shard at a time (bounded host memory).
    shards: List[List[Tuple]] = [[]]
    used = 0
    for path, var in flat:
        nbytes = var.get_value().size * jnp.dtype(cfg.param_dtype).itemsize
        if shards[-1] and used + nbytes > limit:
            shards.append([])
            used = 0
        shards[-1].append((path, var))
        used += nbytes
    written = []
    weight_map = {}
    total = 0
    pdt = np.dtype(jnp.dtype(cfg.param_dtype))
    for i, shard in enumerate(shards):
        fname = _SINGLE if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for path, var in shard:
            arr = _to_hf(path, np.asarray(jax.device_get(var.get_value())).astype(pdt, copy=False))
            name = _hf_name(path)
            tensors[name] = arr
            weight_map[name] = fname
            total += arr.nbytes
        save_file(tensors, os.path.join(folder, fname), metadata={"format": "pt"})
        written.append(fname)
        del tensors
    if len(shards) > 1:
        with open(os.path.join(folder, _INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        written.append(_INDEX)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_to_hf(cfg), f, indent=2)
    written.append("config.json")
    if cfg.eos_token_ids:
        eos = list(cfg.eos_token_ids)
        with open(os.path.join(folder, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": eos if len(eos) > 1 else eos[0]}, f, indent=2)
        written.append("generation_config.json")
    if tokenizer is not None:
        written.extend(os.path.basename(p) for p in tokenizer.save_pretrained(folder))
    return written


__all__ = ["load_pretrained", "save_pretrained", "read_config", "SUPPORTED_MODEL_TYPES"]
