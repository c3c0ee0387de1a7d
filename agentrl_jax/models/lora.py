"""LoRA: low-rank adapters on the decoder's projections, trained while the base weights stay frozen.

The adapters are Flax NNX's own `nnx.LoRA` modules (their weights are `nnx.LoRAParam`, a subclass of
`nnx.Param`), attached to the chosen `Proj` modules of a loaded `CausalLM` (`add_adapters`). A projection's
kernel may have several in or out axes (q_proj [D, H, hd], o_proj [H, hd, D]); the adapter sees them
flattened (lora_a [D, r], lora_b [r, H*hd]), so `kernel + scale * (lora_a @ lora_b).reshape(kernel.shape)`
is the merged weight (`merged`, what `save_pretrained` writes). `lora_b` starts at zero, so a fresh adapter
leaves the model's outputs exactly as they were.

Gin (see README)::

    lora.rank = 8                 # 0 = off (full fine-tuning)
    lora.alpha = 16.0             # scale = alpha / rank (default alpha = rank, scale 1)
    lora.target_modules = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']

Training: `split_trainable` separates the trainable state (adapters, and the value head when there is one: it
is new, not part of the base) from the frozen base; the optimizer, its state and the checkpoints hold only the
trainable part, and the frozen part is passed to the train step as an input that gets no gradient.

Sharding: lora_a carries the logical name of the kernel's first in axis on its in dim and lora_b that of the
kernel's first out axis on its out dim (a flattened [H*hd] dim sharded like H, its major axis); the rank dim is
replicated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agentrl_jax.models.decoder import CausalLM, Proj, build_model, param_names
from agentrl_jax.partitioning import DEFAULT_RULES, named_sharding

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTENTION_TARGETS + MLP_TARGETS
# What the update trains when adapters are on: the adapters, and the value head (new weights, not the base).
TRAINABLE = nnx.Any(nnx.LoRAParam, nnx.PathContains("value_head"))


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 0
    alpha: Optional[float] = None
    target_modules: Tuple[str, ...] = TARGETS
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank) / self.rank


@gin.configurable("lora")
def lora_config(rank: int = 0, alpha: Optional[float] = None, target_modules: Sequence[str] = TARGETS,
                seed: int = 0) -> LoRAConfig:
    """The LoRA settings from gin (`lora.rank`, `lora.alpha`, `lora.target_modules`, `lora.seed`).

    rank 0 = no adapters (full fine-tuning). alpha: the adapters' output is scaled by alpha / rank (None: alpha
    = rank). target_modules: projection names among TARGETS. seed: the adapters' init (lora_a; lora_b is 0).
    """
    if not isinstance(rank, (int, np.integer)) or rank < 0:
        raise ValueError(f"lora.rank must be an int >= 0 (0 = full fine-tuning), got {rank!r}.")
    if alpha is not None and not float(alpha) > 0:
        raise ValueError(f"lora.alpha must be > 0 (scale = alpha / rank) or None (= rank), got {alpha!r}.")
    targets = tuple(target_modules)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or (rank and not targets):
        raise ValueError(f"lora.target_modules={list(targets)!r}: use a non-empty subset of {list(TARGETS)} "
                         f"(unknown: {unknown}).")
    return LoRAConfig(int(rank), None if alpha is None else float(alpha), targets, int(seed))


def target_projs(lm: CausalLM, targets: Sequence[str]) -> Iterator[Tuple[str, Proj]]:
    for i, layer in enumerate(lm.layers):
        for block in (layer.attn, layer.mlp):
            for name in targets:
                proj = getattr(block, name, None)
                if isinstance(proj, Proj):
                    yield f"layers/{i}/{name}", proj


def _io(proj: Proj) -> Tuple[int, int, Optional[str], Optional[str]]:
    """(flat in features, flat out features, logical name of the in dim, of the out dim) of a projection."""
    n_in, n_out = proj.io_ndims()
    shape, names = tuple(proj.kernel.get_value().shape), param_names(proj.kernel) or (None,) * len(proj.kernel.shape)
    if n_in + n_out != len(shape):
        raise ValueError(f"a projection with equation {proj.equation!r} does not take LoRA (axes neither in nor out)")
    return (int(np.prod(shape[:n_in])), int(np.prod(shape[n_in:])), names[0], names[n_in])


def add_adapters(lm: CausalLM, config: LoRAConfig, *, mesh: Optional[jax.sharding.Mesh] = None,
                 rules=DEFAULT_RULES) -> CausalLM:
    """Attach a fresh `nnx.LoRA` (rank `config.rank`, float32 weights, the model's compute dtype) to every
    target projection of `lm`, in place; with `mesh`, each adapter weight is placed on its logical sharding."""
    if not config.enabled:
        return lm
    if has_adapters(nnx.state(lm)):
        raise ValueError("the model already carries LoRA adapters; add them once (load_policy does, from lora.*).")
    rngs = nnx.Rngs(params=config.seed)
    for _, proj in target_projs(lm, config.target_modules):
        d_in, d_out, in_name, out_name = _io(proj)
        meta_a = {"out_sharding": (in_name, None), "eager_sharding": False}
        meta_b = {"out_sharding": (None, out_name), "eager_sharding": False}
        adapter = nnx.LoRA(d_in, config.rank, d_out, dtype=jnp.dtype(lm.cfg.dtype), param_dtype=jnp.float32,
                           rngs=rngs, a_metadata=meta_a, b_metadata=meta_b)
        if mesh is not None:
            for var in (adapter.lora_a, adapter.lora_b):
                var.set_value(jax.device_put(var.get_value(), named_sharding(param_names(var), mesh, rules)))
        proj.lora = adapter
        proj.lora_scale = config.scale
    return lm


def has_adapters(state: Any) -> bool:
    """Whether an NNX state (or a module) holds LoRA weights."""
    if isinstance(state, nnx.Module):
        state = nnx.state(state)
    return bool(jax.tree.leaves(nnx.filter_state(state, nnx.LoRAParam)))


def split_trainable(state: Any) -> Tuple[Any, Any]:
    """(trainable, frozen) parts of a policy's param state (or of a tree of Variables, e.g. its shardings)."""
    return nnx.filter_state(state, TRAINABLE, ...)


def join(frozen: Any, trainable: Any) -> Any:
    """The whole state again (`split_trainable`'s inverse)."""
    return nnx.merge_state(frozen, trainable)


def merged_kernel(proj: Proj) -> jax.Array:
    """kernel + scale * lora_a @ lora_b, in the kernel's shape and dtype (float32 arithmetic)."""
    kernel = proj.kernel.get_value()
    if proj.lora is None:
        return kernel
    delta = jnp.matmul(proj.lora.lora_a.get_value().astype(jnp.float32),
                       proj.lora.lora_b.get_value().astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return (kernel.astype(jnp.float32) + proj.lora_scale * delta.reshape(kernel.shape)).astype(kernel.dtype)


def merged(lm: CausalLM) -> CausalLM:
    """A plain CausalLM (no adapters) whose projection kernels hold the adapters' contribution: the same
    function as `lm`, for export (`save_pretrained` writes this). Built on host, one weight at a time."""
    merged_kernels = {path: merged_kernel(proj) for path, proj in target_projs(lm, TARGETS) if proj.lora is not None}
    flat = {tuple(str(p) for p in k): v for k, v in nnx.to_flat_state(nnx.state(lm, nnx.Not(nnx.LoRAParam)))}

    def value(path, shape, dtype, names):
        if path[-1] == "kernel" and path[0] == "layers":
            key = f"layers/{path[1]}/{path[-2]}"
            if key in merged_kernels:
                return np.asarray(jax.device_get(merged_kernels[key]))
        return np.asarray(jax.device_get(flat[path].get_value()))

    return build_model(lm.cfg, value)


def param_bytes(state: Any) -> int:
    """Bytes of every array in a pytree (params or optimizer state)."""
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(state)
                   if hasattr(x, "dtype")))
