"""Jitted prefill + decode with a preallocated KV cache; multi-turn continuation without recomputing history.

The core, `generate_fn(graphdef, state, prompt_ids, prompt_mask, cache, key, config)`, is a pure function of
arrays (NNX split/merge style), so it can be traced inside another `jit` or `lax.scan` (the on-device Sokoban
episode calls it once per turn). `generate(model, ...)` is the convenient jitted wrapper; `continue_generation`
appends the next chunk (e.g. an observation) to an existing cache and goes on generating.

Shapes are static: one compilation per (batch, prompt bucket, cache length, GenerationConfig). Pad prompts to
`bucket_length(...)` with `pad_batch(...)` so a multi-turn rollout reuses one program per bucket.

Every sampled token, including a stop token, is written to the cache before returning, so the cache holds
exactly prompt + generated tokens and the next turn's chunk is simply appended. Rows that stopped keep their
slots masked from then on (their later outputs are `pad_id`, logprob 0).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from typing import List, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from agentrl_jax import xla_cpu
from agentrl_jax.models.decoder import CausalLM, KVCache, compute_params_jit, init_cache, needs_cast, pad_mlp_width

_TRACES = {"generate_fn": 0}


def trace_count() -> int:
    """How many times generation's prefill (`prefill_fn`, inside `generate_fn` or `generate_jit`) has been traced
    in this process (for recompilation checks: one per batch, prompt bucket and cache length)."""
    return _TRACES["generate_fn"]


SAMPLERS = ("gumbel", "inverse_cdf")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings (static: each distinct config compiles its own program).

    temperature: 0 = greedy (logprobs are then those of the temperature-1 distribution).
    top_k: keep the k most likely tokens (0 = off). top_p: nucleus mass to keep (1.0 = off).
    stop_ids: any of these ends a row (the stop token is kept in the output). pad_id: fills after stop.
    sampler: how a temperature > 0 token is drawn, both exactly from the filtered softmax: 'gumbel'
    (`jax.random.categorical`: V Gumbel numbers per row and step) or 'inverse_cdf' (`sample_categorical`: one
    uniform per row; ~40x cheaper on a CPU at [64, 49152], see there). They draw different streams from the
    same key, so switching changes which episodes a seed plays.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_ids: Tuple[int, ...] = ()
    pad_id: int = 0
    sampler: str = "gumbel"

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"GenerationConfig.sampler = {self.sampler!r}; use one of {SAMPLERS}")
        stop = (self.stop_ids,) if isinstance(self.stop_ids, (int, np.integer)) else self.stop_ids
        object.__setattr__(self, "stop_ids", tuple(int(s) for s in stop))
        object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))


@struct.dataclass
class GenerationResult:
    """tokens int32 [B, N] (pad_id after a stop); logprobs float32 [B, N] (0 after a stop);
    lengths int32 [B] (generated tokens incl. the stop token); stopped bool [B] (hit a stop id);
    cache: the KV cache holding prompt + generated tokens; steps: int32 [] decode-loop iterations run (the
    longest live row's length: rows that stopped or were inactive do not keep the loop going)."""

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array
    cache: KVCache
    steps: jax.Array


def filter_logits(logits: jax.Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits of the sampling distribution: scaled by 1/temperature, outside top-k / top-p set to -inf.

    temperature 0 is treated as 1 here (greedy picks the argmax of the unscaled distribution).
    """
    x = logits.astype(jnp.float32)
    if temperature > 0 and temperature != 1.0:
        x = x / temperature
    if top_k > 0 and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if top_p < 1.0:
        sorted_x = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_x, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        keep = mass_before < top_p
        thresh = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < thresh, -jnp.inf, x)
    return x


def sample_token(logits: jax.Array, key: jax.Array, config: GenerationConfig) -> Tuple[jax.Array, jax.Array]:
    """Pick a token per row from logits [B, V]; returns (token int32 [B], its logprob float32 [B])."""
    x = filter_logits(logits, config.temperature, config.top_k, config.top_p)
    if config.temperature == 0:
        tok = first_max_index(x, jnp.max(x, axis=-1, keepdims=True))
    elif config.sampler == "inverse_cdf":
        tok = sample_categorical(key, x, jnp.max(x, axis=-1, keepdims=True))
    else:
        tok = jax.random.categorical(key, x, axis=-1)
    logp = jax.nn.log_softmax(x, axis=-1)
    lp = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
    return tok.astype(jnp.int32), lp


def first_max_index(x: jax.Array, top: jax.Array) -> jax.Array:
    """`jnp.argmax(x, -1)` (the first index of the row's maximum `top`) as a compare and a min-reduction: XLA:CPU
    runs argmax's (value, index) reduction as a scalar loop, 5x slower at [64, 32000]."""
    return jnp.min(jnp.where(x == top, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1]), axis=-1)


_SAMPLE_BLOCK = 128


def sample_categorical(key: jax.Array, x: jax.Array, top: jax.Array) -> jax.Array:
    """One token per row from softmax(x) [B, V] (`top` = the row max), by inverse CDF with one uniform per row.

    The same distribution as `jax.random.categorical` (Gumbel-max), which draws V Gumbel numbers per row: at
    [64, 49152] on a CPU core that took ~120 ms per decode step, this ~3 ms. Two levels: the uniform picks a block
    of 128 tokens by the blocks' cumulative mass, then a token inside it. A zero-probability token (filtered
    to -inf) is never picked: its cumulative mass equals its predecessor's.
    """
    b, v = x.shape
    p = jnp.exp(x - top)
    p = jnp.pad(p, ((0, 0), (0, (-v) % _SAMPLE_BLOCK))).reshape(b, -1, _SAMPLE_BLOCK)
    block = jnp.sum(p, axis=-1)  # [B, blocks]
    upto = jnp.cumsum(block, axis=-1)
    u = jax.random.uniform(key, (b, 1), jnp.float32) * upto[:, -1:]
    bi = jnp.minimum(jnp.sum(upto <= u, axis=-1), upto.shape[-1] - 1)  # the block where the mass passes u
    before = jnp.take_along_axis(upto - block, bi[:, None], axis=-1)
    in_block = jnp.take_along_axis(p, bi[:, None, None], axis=1)[:, 0]  # [B, 128]
    j = jnp.sum(jnp.cumsum(in_block, axis=-1) <= u - before, axis=-1)
    # Rounding can leave u at or past the block's last mass: then its last token with mass.
    last = _SAMPLE_BLOCK - 1 - first_max_index(in_block[:, ::-1] > 0, jnp.ones((b, 1), bool))
    return bi * _SAMPLE_BLOCK + jnp.minimum(j, last)


def _last_real(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """hidden [B, L, D] at each row's last real token (works for left or right padding)."""
    idx = jnp.max(jnp.where(mask, jnp.arange(mask.shape[1]), 0), axis=1)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


def prefill_fn(graphdef, state, prompt_ids: jax.Array, prompt_mask: Optional[jax.Array],
               cache: Optional[KVCache], cache_length: Optional[int] = None) -> Tuple[jax.Array, KVCache]:
    """Write `prompt_ids` [B, P] (mask [B, P], None = all real) into `cache` after what it holds; return the
    logits [B, V] at each row's last real token (the first sampling distribution) and the new cache.

    cache None: a fresh cache of `cache_length` slots (static) is made here, inside the program, so a
    new generation costs no eager allocation and zero-fill of every layer's K/V on the host side first."""
    # Python side effect: runs once per trace, not per call. Counted here, in the prefill, because a new
    # prompt bucket retraces it (with generate_jit, the decode program only depends on the cache shape).
    _TRACES["generate_fn"] += 1
    model = nnx.merge(graphdef, state)
    if cache is None:
        if cache_length is None:
            raise ValueError("prefill without a cache needs cache_length (the slots of the cache to make)")
        cache = init_cache(model.cfg, prompt_ids.shape[0], int(cache_length))
    mask = jnp.ones(prompt_ids.shape, bool) if prompt_mask is None else prompt_mask.astype(bool)
    _, hidden, cache = model.forward(prompt_ids.astype(jnp.int32), attention_mask=mask, cache=cache,
                                     return_logits=False)
    return model.logits(_last_real(hidden, mask)), cache


def decode_fn(graphdef, state, logits: jax.Array, cache: KVCache, key: jax.Array, config: GenerationConfig,
              active: Optional[jax.Array] = None) -> GenerationResult:
    """Sample from `logits` [B, V], write the token to `cache`, repeat up to config.max_new_tokens."""
    model = nnx.merge(graphdef, state)
    b = logits.shape[0]
    n = config.max_new_tokens
    stop_ids = jnp.asarray(config.stop_ids or (-1,), jnp.int32)

    def cond(carry):
        i, _, _, _, _, done, _ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, cache, logits, tokens, logprobs, done, lengths = carry
        tok, lp = sample_token(logits, jax.random.fold_in(key, i), config)
        live = ~done
        tok = jnp.where(live, tok, config.pad_id)
        lp = jnp.where(live, lp, 0.0)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
        logprobs = jax.lax.dynamic_update_slice(logprobs, lp[:, None], (0, i))
        lengths = lengths + live.astype(jnp.int32)
        done = done | (live & jnp.isin(tok, stop_ids))
        # Write the token (stop tokens included) so the cache holds the whole turn; finished rows write
        # masked slots that are never attended to.
        _, h, cache = model.forward(tok[:, None], attention_mask=live[:, None], cache=cache, return_logits=False)
        return i + 1, cache, model.logits(h[:, -1]), tokens, logprobs, done, lengths

    init = (
        jnp.zeros((), jnp.int32), cache, logits,
        jnp.full((b, n), config.pad_id, jnp.int32), jnp.zeros((b, n), jnp.float32),
        jnp.zeros((b,), bool) if active is None else ~active.astype(bool), jnp.zeros((b,), jnp.int32),
    )
    steps, cache, _, tokens, logprobs, done, lengths = jax.lax.while_loop(cond, body, init)
    # An inactive row starts "done" but did not stop on a stop id.
    stopped = done if active is None else done & active.astype(bool)
    return GenerationResult(tokens=tokens, logprobs=logprobs, lengths=lengths, stopped=stopped, cache=cache,
                            steps=steps)


def generate_fn(graphdef, state, prompt_ids: jax.Array, prompt_mask: Optional[jax.Array],
                cache: Optional[KVCache], key: jax.Array, config: GenerationConfig,
                active: Optional[jax.Array] = None, cache_length: Optional[int] = None) -> GenerationResult:
    """Pure generation: prefill `prompt_ids` [B, P] into `cache`, then decode up to config.max_new_tokens.

    prompt_mask [B, P] marks real tokens (left padding recommended; None = all real). The chunk is appended
    after what `cache` already holds, with per-row positions continuing from `cache.lengths`. A row whose
    chunk is empty continues from garbage logits; callers should ignore such rows. The cache must have room
    for P + max_new_tokens more slots (checked by the `generate` wrapper, not here).
    active: optional bool [B]; inactive rows (e.g. finished episodes) generate nothing (length 0) and do not
    keep the decode loop running, so they cost no decode steps once all active rows are done.
    cache None: a fresh one of `cache_length` slots is made inside (see `prefill_fn`).
    `state` in the model's compute dtype (`generation_split`, `compute_params`) keeps weight casts out of
    the decode loop.
    """
    logits, cache = prefill_fn(graphdef, state, prompt_ids, prompt_mask, cache, cache_length)
    return decode_fn(graphdef, state, logits, cache, key, config, active)


@gin.configurable(module="generate")
def prefill_compiler_options(cpu_eigen_dots: bool = True) -> Tuple[Tuple[str, str], ...]:
    """XLA options for the prefill program (as a hashable tuple of pairs).

    cpu_eigen_dots: on the CPU backend, compile prefill's matmuls with Eigen rather than XLA's default
    YNNPACK kernels. Prefill multiplies tall activations ([batch * prompt, hidden]); there Eigen ran
    1.3-1.6x faster on this project's 2-core Xeon (time to first token at batch 16 x 512 prompt tokens:
    13.6 s vs 18.1 s), while for decode's few-row matmuls the faster one depends on the CPU (YNNPACK on that
    Xeon, Eigen on a Zen 4 EPYC). So the two phases are compiled apart, each with its own kernels
    (`decode_kernels`, `xla_cpu`).
    """
    return xla_cpu.eigen_dot_options(cpu_eigen_dots)


@gin.configurable(module="generate")
def decode_kernels(kernels: str = "auto") -> str:
    """Matmul kernels of the decode program (and of the fused on-device episode, mostly decode steps): see
    `xla_cpu.dot_options` ('auto' measures which is faster on this host for the batch's row count)."""
    if kernels not in xla_cpu.KERNELS:
        raise ValueError(f"generate.decode_kernels.kernels = {kernels!r}; use one of {xla_cpu.KERNELS}")
    return kernels


def decode_compiler_options(batch_size: int) -> Tuple[Tuple[str, str], ...]:
    """XLA options for a decode program of `batch_size` rows (see `decode_kernels`)."""
    return xla_cpu.dot_options(decode_kernels(), batch_size)


@functools.lru_cache(maxsize=None)
def _phase_jits(prefill_options: Tuple[Tuple[str, str], ...], decode_options: Tuple[Tuple[str, str], ...] = ()):
    prefill = jax.jit(prefill_fn, static_argnames=("graphdef", "cache_length"), donate_argnames=("cache",),
                      compiler_options=dict(prefill_options) or None)
    decode = jax.jit(decode_fn, static_argnames=("graphdef", "config"), donate_argnames=("cache",),
                     compiler_options=dict(decode_options) or None)
    return prefill, decode


def generate_jit(graphdef, state, prompt_ids: jax.Array, prompt_mask: Optional[jax.Array],
                 cache: Optional[KVCache], key: jax.Array, config: GenerationConfig,
                 active: Optional[jax.Array] = None, cache_length: Optional[int] = None) -> GenerationResult:
    """`generate_fn` compiled for the host loop: prefill and decode are two programs (see
    `prefill_compiler_options`), one compilation each per shape; the passed cache is donated. cache None:
    the prefill program makes a fresh one of `cache_length` slots."""
    prefill, decode = _phase_jits(prefill_compiler_options(), decode_compiler_options(prompt_ids.shape[0]))
    logits, cache = prefill(graphdef, state, prompt_ids, prompt_mask, cache, cache_length)
    return decode(graphdef, state, logits, cache, key, config, active)


def compact_cache_fn(cache: KVCache, keep: jax.Array) -> KVCache:
    """Free every slot of `cache` that holds no real token of a kept row (chunk padding, finished rows).

    keep: bool [B]. Each kept row's real slots move to the front, in order; the other rows lose theirs; the
    write index becomes the longest kept row's real count. Generation continues exactly as before: keys are
    stored with RoPE already applied at their row's own positions (which go on from `lengths`), and a new
    query attends to every valid slot before it whatever the slot numbers.
    """
    mask = cache.mask & keep.astype(bool)[:, None]
    order = jnp.argsort((~mask).astype(jnp.int8), axis=1, stable=True)  # real slots first, order kept

    def move(x):  # [B, KV, S, hd]
        return jnp.take_along_axis(x, order[:, None, :, None], axis=2)

    return cache.replace(k=tuple(move(k) for k in cache.k), v=tuple(move(v) for v in cache.v),
                         mask=jnp.take_along_axis(mask, order, axis=1),
                         index=jnp.max(jnp.sum(mask, axis=1, dtype=jnp.int32)))


compact_cache = jax.jit(compact_cache_fn, donate_argnames=("cache",))


def grow_cache(cache: KVCache, max_length: int) -> KVCache:
    """The same cache with empty slots appended up to `max_length` (a new cache shape: a new compile)."""
    extra = int(max_length) - cache.max_length
    if extra < 0:
        raise ValueError(f"grow_cache cannot shrink a cache of {cache.max_length} slots to {max_length}")
    kv = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0)))  # noqa: E731
    return cache.replace(k=tuple(map(kv, cache.k)), v=tuple(map(kv, cache.v)),
                         mask=jnp.pad(cache.mask, ((0, 0), (0, extra))))


def _check_room(cache: KVCache, chunk_len: int, config: GenerationConfig) -> None:
    try:
        used = int(cache.index)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return  # traced: cannot check here
    need = used + chunk_len + config.max_new_tokens
    if need > cache.max_length:
        raise ValueError(
            f"KV cache too short: {used} slots used + {chunk_len} prompt + {config.max_new_tokens} new tokens = "
            f"{need} > max_length {cache.max_length}; create it with model.init_cache(batch, >= {need})"
        )


# ------------------------------------------------------------------------- the model's split, cached per model
@dataclasses.dataclass
class _Split:
    graphdef: object
    state: object  # in the model's compute dtype
    variables: list  # the model's Variables, in split order
    raws: list  # the arrays they held when split (identity is the staleness check)


_SPLITS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SPLIT_COUNT = {"n": 0}


def split_count() -> int:
    """How many times `generation_split` has split a model in this process (for cache checks)."""
    return _SPLIT_COUNT["n"]


def generation_split(model) -> Tuple[object, object]:
    """(graphdef, state) of `model` for the generation programs, cached per model object.

    `nnx.split` walks the whole module graph in Python on every call (10-30 ms for a 134M model on this
    CPU, i.e. a visible share of a short generation's time to first token); here it runs once per model and
    again only when a parameter array was replaced (e.g. `nnx.update(model, new_state)` after an optimizer
    step): each call compares the model's Variables' arrays with the split ones by identity (~1 us each).
    The state is in the model's compute dtype (`cfg.dtype`): fp32 weights of a bf16 model are cast once here,
    not inside every decode step (see `compute_params`). A structural change that keeps every old array
    (assigning a new submodule) is not seen: call `generation_split.cache_clear()` after one.
    """
    entry = _SPLITS.get(model)
    if entry is not None and len(entry.variables) and all(
            v.get_raw_value() is r for v, r in zip(entry.variables, entry.raws)):
        return entry.graphdef, entry.state
    _SPLIT_COUNT["n"] += 1
    graphdef, state = nnx.split(model)
    variables = [v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)]
    raws = [v.get_raw_value() for v in variables]
    cfg = getattr(model, "cfg", None)
    if cfg is not None and needs_cast(state, cfg.dtype):
        state = compute_params_jit(state, dtype=jnp.dtype(cfg.dtype).name)
    if xla_cpu.generation_mlp_padding():
        state = pad_mlp_width(state)
    _SPLITS[model] = _Split(graphdef, state, variables, raws)
    return graphdef, state


generation_split.cache_clear = _SPLITS.clear


@gin.configurable(denylist=["model", "prompt_ids", "prompt_mask", "cache", "key", "active"])
def generate(model: CausalLM, prompt_ids, prompt_mask=None, *, cache: Optional[KVCache] = None,
             key: Optional[jax.Array] = None, config: Optional[GenerationConfig] = None,
             cache_length: Optional[int] = None, active=None) -> GenerationResult:
    """Jitted generation for an NNX model.

    prompt_ids [B, P] (left-padded; see `pad_batch`), prompt_mask [B, P] (None = all real). Without `cache`
    a fresh one of `cache_length` slots (default P + max_new_tokens) is made inside the compiled prefill.
    The passed cache is donated: use the returned `result.cache` afterwards. key: PRNG key for sampling
    (unused when greedy). active: optional bool [B]; inactive rows generate nothing and cost no decode steps
    (see `generate_fn`). The model's split is cached (`generation_split`), in its compute dtype.
    """
    config = config or GenerationConfig()
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if prompt_ids.ndim != 2:
        raise ValueError(f"prompt_ids must be [batch, length], got shape {prompt_ids.shape}")
    if prompt_mask is not None:
        prompt_mask = jnp.asarray(prompt_mask, bool)
        if prompt_mask.shape != prompt_ids.shape:
            raise ValueError(f"prompt_mask shape {prompt_mask.shape} != prompt_ids shape {prompt_ids.shape}")
    new_length = None
    if cache is None:
        new_length = int(cache_length or prompt_ids.shape[1] + config.max_new_tokens)
        need = prompt_ids.shape[1] + config.max_new_tokens
        if need > new_length:
            raise ValueError(f"KV cache too short: {prompt_ids.shape[1]} prompt + {config.max_new_tokens} new "
                             f"tokens = {need} > cache_length {new_length}; pass cache_length >= {need}")
    else:
        if cache.batch_size != prompt_ids.shape[0]:
            raise ValueError(f"cache batch size {cache.batch_size} != prompt batch size {prompt_ids.shape[0]}")
        _check_room(cache, prompt_ids.shape[1], config)
    if key is None:
        if config.temperature > 0:
            raise ValueError("sampling with temperature > 0 needs a PRNG key: pass key=jax.random.key(seed)")
        key = _GREEDY_KEY()
    if active is not None:
        active = jnp.asarray(active, bool)
        if active.shape != (prompt_ids.shape[0],):
            raise ValueError(f"active must be a bool [batch] = [{prompt_ids.shape[0]}] mask, got shape {active.shape}")
    graphdef, state = generation_split(model)
    return generate_jit(graphdef, state, prompt_ids, prompt_mask, cache, key, config, active,
                        cache_length=new_length)


@functools.lru_cache(maxsize=None)
def _GREEDY_KEY():  # noqa: N802 - one unused key for greedy calls, made once (a key is an eager dispatch)
    return jax.random.key(0)


def continue_generation(model: CausalLM, chunk_ids, chunk_mask, cache: KVCache, *, key=None,
                        config: Optional[GenerationConfig] = None) -> GenerationResult:
    """Append `chunk_ids` [B, C] (e.g. the next observation, left-padded) to `cache` and keep generating.

    Only the new chunk is prefilled; history stays in the cache. Equivalent to a fresh generation over the
    whole history (prompt + previous outputs + chunk), without recomputing it.
    """
    if cache is None:
        raise ValueError("continue_generation needs the cache returned by a previous generate call")
    return generate(model, chunk_ids, chunk_mask, cache=cache, key=key, config=config)


def bucket_length(n: int, *, min_size: int = 16, multiple: Optional[int] = None) -> int:
    """Static length for a chunk of n tokens: the next power of two >= max(n, min_size), or with `multiple`,
    n rounded up to a multiple of it (less padding, more programs)."""
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    if multiple:
        return max(multiple, -(-n // multiple) * multiple)
    return 1 << max(0, math.ceil(math.log2(max(n, min_size, 1))))


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0, *, length: Optional[int] = None,
              min_size: int = 16, multiple: Optional[int] = None, side: str = "left") -> Tuple[np.ndarray, np.ndarray]:
    """Pad token lists to one bucketed length: returns (ids int32 [B, L], mask bool [B, L]).

    length: explicit target (else `bucket_length` of the longest). side: "left" (for generation) or "right".
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    longest = max((len(s) for s in seqs), default=0)
    target = length if length is not None else bucket_length(longest, min_size=min_size, multiple=multiple)
    if longest > target:
        raise ValueError(f"a sequence of {longest} tokens does not fit length {target}")
    ids = np.full((len(seqs), target), pad_id, np.int32)
    mask = np.zeros((len(seqs), target), bool)
    for i, s in enumerate(seqs):
        if len(s) == 0:
            continue
        sl = slice(target - len(s), target) if side == "left" else slice(0, len(s))
        ids[i, sl] = np.asarray(s, np.int32)
        mask[i, sl] = True
    return ids, mask


def unpad(result: GenerationResult) -> List[List[int]]:
    """The generated tokens of each row as a list (up to and including the stop token)."""
    toks = np.asarray(result.tokens)
    return [toks[i, : int(n)].tolist() for i, n in enumerate(np.asarray(result.lengths))]
