"""Logical axis names → mesh axes.

Every weight and activation in the model is annotated with *logical* axis names (`embed`, `mlp`, `heads`,
`kv`, `vocab`, `batch`, `length`, ...). Which mesh axis each maps to is decided in one place, the rules,
as in t5x. Outside an `axis_rules(...)` context (or without a mesh), `constrain` is a no-op so the same
model code runs unsharded on a laptop.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional, Sequence, Tuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalAxes = Tuple[Optional[str], ...]
# (logical name, mesh axis or tuple of mesh axes or None)
Rules = Tuple[Tuple[str, object], ...]

# Defaults modelled on t5x's standard rules: batch over data+fsdp, weights' embed dim over fsdp (ZeRO-3),
# heads / mlp / vocab over tensor.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("cache_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_vocab", "tensor"),
    ("value", None),
)

_CURRENT: contextvars.ContextVar[Optional[Tuple[Mesh, Rules]]] = contextvars.ContextVar(
    "agentrl_jax_axis_rules", default=None
)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Activate `rules` on `mesh` for `constrain` calls traced inside this context."""
    token = _CURRENT.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> Optional[Tuple[Mesh, Rules]]:
    return _CURRENT.get()


def logical_to_spec(names: Sequence[Optional[str]], rules: Rules, mesh: Optional[Mesh] = None) -> PartitionSpec:
    """Map logical names to a PartitionSpec; a mesh axis is used at most once, later uses are replicated.

    Mesh axes of size 1 are dropped, and (when `mesh` is given) axes the mesh lacks are ignored.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in names:
        target = table.get(name) if name is not None else None
        if target is None:
            spec.append(None)
            continue
        axes = (target,) if isinstance(target, str) else tuple(target)
        if mesh is not None:
            axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def named_sharding(names: Sequence[Optional[str]], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules, mesh))


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op outside `axis_rules` (or if ranks differ)."""
    ctx = _CURRENT.get()
    if ctx is None or len(names) != x.ndim:
        return x
    mesh, rules = ctx
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules, mesh)))
