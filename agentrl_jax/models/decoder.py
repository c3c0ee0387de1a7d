"""Flax NNX decoder for the Llama-3 / Qwen2 / Qwen3 family, with a preallocated KV cache.

Sharding metadata: in flax 0.12.8 a Variable's logical axis names live in its `out_sharding` metadata
(`nnx.with_partitioning(init, names)` sets the same key; `sharding_names=` is the deprecated spelling).
`nnx.get_partition_spec(nnx.state(model))` then returns `PartitionSpec`s of *logical* names (`vocab`,
`embed`, `mlp`, `heads`, `kv_heads`, `kv`), which `agentrl_jax.partitioning.logical_to_spec` maps to mesh axes.
Every Param is created with `eager_sharding=False`: flax 0.12 otherwise tries to shard a variable at creation
against the current mesh, which fails for logical (non-mesh) names. Sharding is applied by the caller, e.g. by
jitting the constructor with `out_shardings` built from these specs.

Weight layouts (ours, "in" axes first; `hf.py` transposes HF's [out, in] Linear weights):
  embed_tokens.embedding [V, D] (vocab, embed)       lm_head.kernel [D, V] (embed, vocab)
  attn.q_proj.kernel [D, H, hd] (embed, heads, kv)   attn.k_proj / v_proj.kernel [D, KV, hd] (embed, kv_heads, kv)
  attn.o_proj.kernel [H, hd, D] (heads, kv, embed)   q/k/v biases [H|KV, hd]; q_norm/k_norm.scale [hd] (kv)
  attn.o_proj.bias [D] (embed)
  mlp.gate_proj / up_proj.kernel [D, F] (embed, mlp) mlp.down_proj.kernel [F, D] (mlp, embed)
  *_norm.scale [D] (embed)

KV cache semantics (`KVCache`): all rows share one write pointer `index` (a slot in [0, max_length)); a chunk
of L tokens goes to slots index..index+L-1 for every row, and `mask[b, slot]` records whether the slot holds
a real token of row b. Rows carry their own RoPE positions (`lengths[b]` = real tokens cached so far = next
position), so left padding, per-row stop and multi-turn continuation need no data movement: padded slots are
simply never attended to. A query attends to valid slots at or before its own slot.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from agentrl_jax.models.config import ModelConfig, rope_inv_freq
from agentrl_jax.partitioning import DEFAULT_RULES, constrain, named_sharding

_NEG_INF = -1e30  # finite, so a row with nothing to attend to (a left-pad query) gives no NaNs
_INIT = nnx.initializers.normal(stddev=0.02)


def _param(rngs: nnx.Rngs, init, shape: Sequence[int], dtype, names: Tuple[Optional[str], ...]) -> nnx.Param:
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(names), eager_sharding=False)


class RMSNorm(nnx.Module):
    """RMSNorm as in Llama: normalise in float32, cast back, then scale."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype, names=("embed",), rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.scale = _param(rngs, nnx.initializers.ones, (dim,), param_dtype, names)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return x32.astype(self.dtype) * self.scale[...].astype(self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def contract(equation: str, x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """`jnp.einsum(equation, x, w)` for a weight `w`, whose gradient is written straight in `w`'s axis order.

    Autodiff's transpose of the einsum computes the weight gradient in (output, input) order and then
    transposes it; on XLA:CPU that makes the compiler copy every [tokens, features] output gradient into a
    transposed buffer and run the weight-gradient GEMM on it (measured: the MLP's fwd+bwd 377 -> 272 ms at
    4,096 tokens x 256 -> 1,024, most of the gap to torch's train step). Same values, same dtypes.
    """
    return jnp.einsum(equation, x, w, preferred_element_type=out_dtype)


def _contract_fwd(equation, x, w, out_dtype):
    return contract(equation, x, w, out_dtype), (x, w)


def _contract_bwd(equation, out_dtype, residuals, dy):
    del out_dtype
    x, w = residuals
    if "..." in equation:  # leading axes of x and of the output, flattened into one named axis
        lead = x.ndim - (len(equation.split(",")[0]) - 3)
        free = next(c for c in "zyxwvutsrqpon" if c not in equation)
        dx, dw = _contract_bwd(equation.replace("...", free), None, (x.reshape((-1,) + x.shape[lead:]), w),
                               dy.reshape((-1,) + dy.shape[lead:]))
        return dx.reshape(x.shape), dw
    (xs, ws), out = equation.split("->")[0].split(","), equation.split("->")[1]
    # dy stays in its own dtype (float32 logits' gradient with bf16 weights), as autodiff's transpose keeps it
    dx = jnp.einsum(f"{out},{ws}->{xs}", dy, w)
    dw = jnp.einsum(f"{xs},{out}->{ws}", x, dy)
    return dx.astype(x.dtype), dw.astype(w.dtype)


contract.defvjp(_contract_fwd, _contract_bwd)


class Proj(nnx.Module):
    """A linear map written as an einsum over named axes (kernel with logical names, optional bias)."""

    def __init__(self, equation: str, kernel_shape, kernel_names, *, bias_shape=None, bias_names=None,
                 dtype, param_dtype, rngs: nnx.Rngs):
        self.equation = equation
        self.dtype = dtype
        self.kernel = _param(rngs, _INIT, kernel_shape, param_dtype, kernel_names)
        self.bias = (
            _param(rngs, nnx.initializers.zeros, bias_shape, param_dtype, bias_names) if bias_shape else None
        )
        # An optional low-rank adapter (`nnx.LoRA` over the flattened in/out axes), attached after loading by
        # `agentrl_jax.models.lora.add_adapters`; its output is scaled by `lora_scale` (alpha / rank).
        self.lora: Optional[nnx.LoRA] = nnx.data(None)  # a data slot (an adapter may be assigned later)
        self.lora_scale = 1.0

    def io_ndims(self) -> Tuple[int, int]:
        """(number of kernel axes contracted with x, number of kernel axes kept in the output)."""
        lhs, out = self.equation.split("->")
        xs, ks = lhs.split(",")
        return sum(c in xs for c in ks), sum(c in out for c in ks)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = contract(self.equation, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.lora is not None:
            n_in, n_out = self.io_ndims()
            delta = self.lora(x.reshape(x.shape[:x.ndim - n_in] + (-1,)).astype(self.dtype))
            y = y + (delta * jnp.asarray(self.lora_scale, delta.dtype)).reshape(y.shape).astype(y.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table [V, D] (vocab, embed)."""

    def __init__(self, vocab_size: int, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = _param(rngs, _INIT, (vocab_size, dim), param_dtype, ("vocab", "embed"))

    def __call__(self, ids: jax.Array) -> jax.Array:
        # The lookup reads a replicated table (one all-gather of [V, D], as FSDP gathers every weight): from the
        # (vocab, embed)-sharded table XLA cannot gather rows for batch-sharded ids and falls back to replicating
        # the whole [B, L, D] lookup on every device ("involuntary full rematerialization") with fsdp, tensor > 1.
        table = constrain(self.embedding[...], (None, None))
        return jnp.take(table, ids, axis=0).astype(self.dtype)


@struct.dataclass
class KVCache:
    """Preallocated per-layer keys/values plus slot validity, shared write index and per-row lengths.

    k, v: tuples (one per layer) of [B, KV, S, hd]; mask: bool [B, S]; index: int32 scalar (next slot);
    lengths: int32 [B] (real tokens cached per row, = next RoPE position).
    Heads come before slots so that attention is a batched matmul with leading batch dims (b, kv_head):
    XLA:CPU runs that on its fast GEMM path, while the [B, S, KV, hd] layout made it fall back to a slow
    loop (~8x slower attention per decode step at batch 64).
    """

    k: Tuple[jax.Array, ...]
    v: Tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array
    lengths: jax.Array

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def max_length(self) -> int:
        return self.mask.shape[1]

    @staticmethod
    def logical_axes(num_layers: int) -> "KVCache":
        """The same tree with logical axis names as leaves (for building shardings)."""
        kv = ("batch", "kv_heads", "cache_length", "kv")
        return KVCache(k=(kv,) * num_layers, v=(kv,) * num_layers, mask=("batch", "cache_length"), index=(),
                       lengths=("batch",))


def init_cache(cfg: ModelConfig, batch_size: int, max_length: int, dtype=None) -> KVCache:
    """An empty cache for `batch_size` rows and `max_length` slots (K/V in `dtype`, default cfg.dtype)."""
    if batch_size <= 0 or max_length <= 0:
        raise ValueError(f"init_cache needs positive batch_size and max_length, got {batch_size}, {max_length}")
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch_size, cfg.num_kv_heads, max_length, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(
        k=zeros,
        v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        mask=jnp.zeros((batch_size, max_length), bool),
        index=jnp.zeros((), jnp.int32),
        lengths=jnp.zeros((batch_size,), jnp.int32),
    )


def rope_cos_sin(inv_freq: jax.Array, positions: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """cos, sin [B, L, head_dim] (float32) for integer positions [B, L] (rotate-half layout)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, L, N, hd] by cos/sin [B, L, hd] (HF's rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kvh, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.num_heads, self.num_kv_heads, self.head_dim = h, kvh, hd
        self.dtype = dt
        qb = dict(bias_shape=(h, hd), bias_names=("heads", "kv")) if cfg.qkv_bias else {}
        kvb = dict(bias_shape=(kvh, hd), bias_names=("kv_heads", "kv")) if cfg.qkv_bias else {}
        common = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        self.q_proj = Proj("bld,dhk->blhk", (d, h, hd), ("embed", "heads", "kv"), **qb, **common)
        self.k_proj = Proj("bld,dhk->blhk", (d, kvh, hd), ("embed", "kv_heads", "kv"), **kvb, **common)
        self.v_proj = Proj("bld,dhk->blhk", (d, kvh, hd), ("embed", "kv_heads", "kv"), **kvb, **common)
        ob = dict(bias_shape=(d,), bias_names=("embed",)) if cfg.o_proj_bias else {}
        self.o_proj = Proj("blhk,hkd->bld", (h, hd, d), ("heads", "kv", "embed"), **ob, **common)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, dtype=dt, param_dtype=pdt, names=("kv",), rngs=rngs)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, dtype=dt, param_dtype=pdt, names=("kv",), rngs=rngs)
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x, cos, sin, allowed, k_cache=None, v_cache=None, index=None):
        """x [B, L, D]; allowed bool [B, L, S]; with k_cache/v_cache [B, KV, S, hd], writes at slot `index`."""
        q = constrain(self.q_proj(x), ("batch", "length", "act_heads", "kv"))
        k = constrain(self.k_proj(x), ("batch", "length", "act_kv_heads", "kv"))
        v = constrain(self.v_proj(x), ("batch", "length", "act_kv_heads", "kv"))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Heads-major [B, KV, L, hd] (the cache layout): only this chunk is transposed, never the cache.
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        if k_cache is not None:
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, 0, index, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, index, 0))
            new_k, new_v = k, v
        else:
            new_k = new_v = None
        k = constrain(k, ("batch", "act_kv_heads", "cache_length", "kv"))
        v = constrain(v, ("batch", "act_kv_heads", "cache_length", "kv"))
        b, l, h, hd = q.shape
        kvh = self.num_kv_heads
        groups = h // kvh
        # GQA without repeating K/V: the query heads of a group share one K/V head; queries of a group are
        # stacked as rows [B, KV, G*L, hd] so both products are plain batched matmuls over (b, kv_head).
        qg = jnp.transpose(q.reshape(b, l, kvh, groups, hd), (0, 2, 3, 1, 4)).reshape(b, kvh, groups * l, hd)
        scores = jnp.einsum("bkqd,bksd->bkqs", qg, k.astype(self.dtype), preferred_element_type=jnp.float32)
        scores = scores.reshape(b, kvh, groups, l, -1) * (hd ** -0.5)
        scores = jnp.where(allowed[:, None, None, :, :], scores, _NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype).reshape(b, kvh, groups * l, -1)
        out = jnp.einsum("bkqs,bksd->bkqd", probs, v.astype(self.dtype))
        out = jnp.transpose(out.reshape(b, kvh, groups, l, hd), (0, 3, 1, 2, 4)).reshape(b, l, h, hd)
        return self.o_proj(out), new_k, new_v


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        common = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.gate_proj = Proj("bld,df->blf", (d, f), ("embed", "mlp"), **common)
        self.up_proj = Proj("bld,df->blf", (d, f), ("embed", "mlp"), **common)
        self.down_proj = Proj("blf,fd->bld", (f, d), ("mlp", "embed"), **common)

    def __call__(self, x):
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(constrain(h, ("batch", "length", "act_mlp")))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, allowed, k_cache=None, v_cache=None, index=None):
        a, k, v = self.attn(self.input_norm(x), cos, sin, allowed, k_cache, v_cache, index)
        x = constrain(x + a, ("batch", "length", "act_embed"))
        x = constrain(x + self.mlp(self.post_attn_norm(x)), ("batch", "length", "act_embed"))
        return x, k, v


def _run_layer(layer, *args):
    return layer(*args)


class CausalLM(nnx.Module):
    """Decoder-only LM. `model(ids)` → logits; `model.forward(...)` → (logits, hidden, cache)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"CausalLM needs a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.lm_head = (
            None if cfg.tie_word_embeddings
            else Proj("bld,dv->blv", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dtype=dt,
                      param_dtype=pdt, rngs=rngs)
        )

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        return self.forward(input_ids)[0]

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
        """A preallocated empty KVCache (see module docstring for its semantics)."""
        return init_cache(self.cfg, batch_size, max_length, dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-norm hidden [..., D] → float32 logits [..., V]."""
        dt = jnp.dtype(self.cfg.dtype)
        h = hidden.astype(dt)
        if self.lm_head is None:
            out = contract("...d,vd->...v", h, self.embed_tokens.embedding[...].astype(dt), jnp.float32)
        else:
            out = contract("...d,dv->...v", h, self.lm_head.kernel[...].astype(dt), jnp.float32)
        return out.astype(jnp.float32)

    def forward(self, input_ids, positions=None, attention_mask=None, cache: Optional[KVCache] = None, *,
                return_logits: bool = True):
        """Run the decoder.

        input_ids int32 [B, L]; attention_mask [B, L] (1 = real token, default all 1); positions int32 [B, L]
        (default: running count of real tokens, continuing from `cache.lengths`). With `cache`, this chunk's
        K/V are written at slots cache.index.. and every query attends to all valid cached slots before it.
        Returns (logits float32 [B, L, V] or None, hidden [B, L, D], new cache or None).
        """
        cfg = self.cfg
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        b, l = input_ids.shape
        mask = jnp.ones((b, l), bool) if attention_mask is None else attention_mask.astype(bool)
        if mask.shape != (b, l):
            raise ValueError(f"attention_mask shape {mask.shape} does not match input_ids shape {(b, l)}")
        if cache is not None and cache.batch_size != b:
            raise ValueError(f"cache has batch size {cache.batch_size} but input_ids has {b}")
        if cache is not None and l > cache.max_length:
            raise ValueError(f"chunk of {l} tokens does not fit a cache of {cache.max_length} slots")
        start = cache.lengths[:, None] if cache is not None else 0
        if positions is None:
            positions = start + jnp.maximum(jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)

        if cache is None:
            slots = jnp.arange(l)
            allowed = (slots[None, :] <= slots[:, None])[None] & mask[:, None, :]
            index = None
        else:
            index = cache.index
            cache_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, index))
            q_slots = index + jnp.arange(l)
            allowed = (jnp.arange(cache.max_length)[None, :] <= q_slots[:, None])[None] & cache_mask[:, None, :]

        cos, sin = rope_cos_sin(jnp.asarray(rope_inv_freq(cfg)), positions)
        x = constrain(self.embed_tokens(input_ids), ("batch", "length", "act_embed"))
        run = nnx.remat(_run_layer) if cfg.remat else _run_layer
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            if cache is None:
                x, _, _ = run(layer, x, cos, sin, allowed)
            else:
                x, k, v = run(layer, x, cos, sin, allowed, cache.k[i], cache.v[i], index)
                new_k.append(k)
                new_v.append(v)
        hidden = self.norm(x)
        logits = self.logits(hidden) if return_logits else None
        if logits is not None:
            logits = constrain(logits, ("batch", "length", "act_vocab"))
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), mask=cache_mask, index=index + l,
                                lengths=cache.lengths + mask.sum(axis=1, dtype=jnp.int32))
        return logits, hidden, new_cache


def compute_params(params, dtype):
    """`params` (any pytree of arrays, e.g. an NNX State) with every floating leaf in the compute `dtype`.

    The modules cast each weight to their compute dtype where it is used (`Proj`, `RMSNorm`, `Embed`, the LM
    head); on weights already in that dtype those casts vanish. So generation gets its weights through this
    once per update (fp32 master weights and optimizer state stay with the update) and its compiled decode loop
    holds no weight converts: with fp32 weights and bf16 compute every step re-read every fp32 weight and wrote
    a bf16 copy of it. Leaves already in `dtype` (and non-floating ones) are returned as they are; jit it to
    keep the copy on the params' devices and sharding (`compute_params_jit`).
    """
    dt = jnp.dtype(dtype)

    def cast(x):
        return x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dt else x

    return jax.tree.map(cast, params)


def needs_cast(params, dtype) -> bool:
    """Whether `compute_params(params, dtype)` would change any leaf (False: use `params` as they are)."""
    dt = jnp.dtype(dtype)
    return any(jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dt for x in jax.tree.leaves(params))


compute_params_jit = jax.jit(compute_params, static_argnames=("dtype",))


MLP_PAD = 16  # zero units appended to a power-of-two MLP width in the generation copy (see `pad_mlp_width`)


def _path_names(path) -> Tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def pad_mlp_width(params, pad: int = MLP_PAD, min_width: int = 1024):
    """`params` with every power-of-two MLP width >= `min_width` grown by `pad` zero units: gate/up kernels
    [d, f] -> [d, f + pad], down_proj [f, d] -> [f + pad, d]. Same outputs: a padded unit's gate is 0, so
    silu(0) * up = 0 and its (zero) down_proj row adds nothing; only the summation order of down_proj changes.

    Why: XLA:CPU's Eigen GEMM runs [rows, d] x [d, 2^n] at ~60% of its rate for other widths on a Xeon
    (512x768x2048: 124 GFLOP/s, x2064: 199; a [K, 2^n] operand aliases in the cache), which made the generation
    benchmark's 2,048-wide model decode 15% and prefill 18% slower there. Meant for the copy generation reads
    (`generate.generation_split`, `policy.rollout_params_fn`), never for the trained params. Returned as it is
    when it holds a LoRA adapter (the adapter's output keeps the unpadded width)."""
    # By path name, not `lora.has_adapters` (an NNX-State filter): callers also pass plain pytrees of arrays.
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if any("lora" in _path_names(path) for path, _ in leaves):
        return params

    def grow(path, x):
        names = [n for n in _path_names(path) if n != "value"]
        if len(names) < 3 or names[-3] != "mlp" or names[-1] != "kernel" or getattr(x, "ndim", 0) != 2:
            return x
        axis = 0 if names[-2] == "down_proj" else 1 if names[-2] in ("gate_proj", "up_proj") else None
        width = x.shape[axis] if axis is not None else 0
        if width < min_width or width & (width - 1):
            return x
        widths = [(0, 0), (0, 0)]
        widths[axis] = (0, pad)
        return jnp.pad(x, widths)

    return jax.tree_util.tree_map_with_path(grow, params)


def param_names(var) -> Tuple[Optional[str], ...]:
    """Logical axis names of an NNX Param (its `out_sharding` metadata); () when unannotated."""
    return tuple(var.get_metadata().get("out_sharding") or ())


def build_model(cfg: ModelConfig, make_value: Callable[[Tuple[str, ...], Tuple[int, ...], Any, Tuple], Any], *,
                mesh: Optional[jax.sharding.Mesh] = None, rules=DEFAULT_RULES) -> CausalLM:
    """A CausalLM whose params come from `make_value(path, shape, dtype, logical_names)` (host arrays).

    The model is built abstractly first (no random init, nothing compiled), then each value is placed on
    device (on its logical sharding when `mesh` is given). Used by the HF loader and for fast numpy init.
    """
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = []
    for key, var in nnx.to_flat_state(state):
        sds = var.get_value()
        path = tuple(str(p) for p in key)  # the original key (ints for list items) is kept for the merge
        value = make_value(path, tuple(sds.shape), sds.dtype, param_names(var))
        value = np.asarray(value).astype(sds.dtype, copy=False)
        if value.shape != tuple(sds.shape):
            raise ValueError(f"value for {'/'.join(path)} has shape {value.shape}, expected {tuple(sds.shape)}")
        if mesh is not None:
            arr = jax.device_put(value, named_sharding(param_names(var), mesh, rules))
        else:
            arr = jnp.asarray(value)
        flat.append((key, var.replace(arr)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def random_model(cfg: ModelConfig, seed: int = 0, std: float = 0.02, norm_std: float = 0.0,
                 bias_std: float = 0.0, **kw) -> CausalLM:
    """A randomly initialised CausalLM built with numpy (no per-shape XLA compiles, so fast on CPU).

    Kernels/embeddings ~ N(0, std); norm scales 1 + N(0, norm_std); biases N(0, bias_std).
    """
    rng = np.random.default_rng(seed)

    def value(path, shape, dtype, names):
        if path[-1] == "scale":
            return 1.0 + norm_std * rng.standard_normal(shape, dtype=np.float32)
        s = bias_std if path[-1] == "bias" else std
        return s * rng.standard_normal(shape, dtype=np.float32)

    return build_model(cfg, value, **kw)
