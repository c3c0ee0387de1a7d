"""Device mesh, parameter shardings and the sharded (FSDP / tensor-parallel) train step.

The mesh has three named axes:

* ``data``   — pure data parallelism (parameters replicated across it),
* ``fsdp``   — data parallelism with parameters, gradients and optimizer state sharded across it (ZeRO-3),
* ``tensor`` — tensor (model) parallelism over heads / mlp / vocab.

Which parameter dimension goes on which axis is decided by the logical-axis rules of
:mod:`agentrl_jax.partitioning`; models only annotate their parameters with logical names
(``nnx.with_partitioning(init, ("embed", "mlp"))``). Everything here is model-agnostic: it works for any
Flax NNX module whose state is made of ``nnx.Param`` variables.

Typical use::

    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    graphdef, params, opt_state, sh = create_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), tx, mesh)
    step = make_train_step(loss_fn, tx, mesh, sh, graphdef)
    params, opt_state, metrics = step(params, opt_state, batch, key)
"""
from __future__ import annotations

import dataclasses
import logging as _pylogging
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from agentrl_jax import optim, partitioning
from agentrl_jax.partitioning import DEFAULT_RULES, Rules

log = _pylogging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# loss_fn(model, batch, key) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, Any, jax.Array], Tuple[jax.Array, Mapping[str, jax.Array]]]


# --------------------------------------------------------------------------------------------------- mesh
@gin.configurable(module="agentrl_jax.sharding")
def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """Build the ``(data, fsdp, tensor)`` mesh over all (global) devices.

    One of the sizes may be -1, meaning "all remaining devices". The product must equal the number of
    devices. Axes are ``AxisType.Auto`` so that ``with_sharding_constraint`` (used by
    :func:`partitioning.constrain`) lets the compiler propagate shardings.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [data, fsdp, tensor]
    for name, s in zip(MESH_AXES, sizes):
        if not isinstance(s, (int, np.integer)) or (s < 1 and s != -1):
            raise ValueError(f"make_mesh: {name}={s!r} must be a positive int or -1 (= the remaining devices).")
    if sizes.count(-1) > 1:
        raise ValueError(f"make_mesh: at most one axis may be -1, got data={data}, fsdp={fsdp}, tensor={tensor}.")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n % known:
            raise ValueError(
                f"make_mesh: {n} devices cannot be split as data={data}, fsdp={fsdp}, tensor={tensor}: "
                f"{n} is not divisible by {known}. Pick sizes whose product divides {n}."
            )
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f"make_mesh: data*fsdp*tensor = {sizes[0]}*{sizes[1]}*{sizes[2]} = {math.prod(sizes)} but there are "
            f"{n} devices. Make the product equal {n} (or set one axis to -1)."
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@gin.configurable(module="agentrl_jax.sharding")
def logical_rules(rules: Optional[Sequence[Tuple[str, Any]]] = None) -> Rules:
    """The logical-axis rules in force: ``partitioning.DEFAULT_RULES`` unless overridden by gin.

    Overrides are merged by name, e.g. ``logical_rules.rules = [("vocab", None)]`` keeps the defaults and
    replicates the vocabulary dimension.
    """
    if rules is None:
        return DEFAULT_RULES
    override = {}
    for item in rules:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(f"logical_rules: each rule must be (logical_name, mesh_axis_or_None), got {item!r}.")
        target = item[1]
        override[item[0]] = tuple(target) if isinstance(target, list) else target
    merged = [(k, override.pop(k, v)) for k, v in DEFAULT_RULES]
    return tuple(merged) + tuple(override.items())


# ---------------------------------------------------------------------------------------------- shardings
def _logical_names(var: nnx.Variable) -> Optional[Tuple[Optional[str], ...]]:
    """Logical axis names of a variable, whatever the Flax version calls the metadata field."""
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names is not None:
            return tuple(names)
    return None


def _spec_for(shape: Sequence[int], names: Optional[Sequence[Optional[str]]], mesh: Mesh, rules: Rules) -> PartitionSpec:
    """Logical names -> PartitionSpec, replicating any dimension the mesh axes do not divide evenly
    (e.g. 2 kv-heads on tensor=8) instead of failing to compile."""
    if names is None or len(names) != len(shape):
        return PartitionSpec()
    spec = list(partitioning.logical_to_spec(names, rules, mesh))
    spec += [None] * (len(shape) - len(spec))
    for i, (dim, axes) in enumerate(zip(shape, spec)):
        if axes is None:
            continue
        size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
        if dim % size:
            log.info("dimension %d (size %d, logical %r) not divisible by mesh %r (%d): replicated",
                     i, dim, names[i], axes, size)
            spec[i] = None
    return PartitionSpec(*spec)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Optional[Rules] = None) -> Any:
    """NamedShardings for any pytree of (abstract) arrays that may contain ``nnx.Variable`` nodes.

    Variables use their logical-axis metadata; plain leaves (step counters, scalars) are replicated. Works
    for model state and for optax states that mirror it (their moments keep the Param metadata).
    `rules` default: :func:`logical_rules` (gin-configurable).
    """
    rules = logical_rules() if rules is None else rules

    def one(x):
        if isinstance(x, nnx.Variable):
            value = x.get_value() if hasattr(x, "get_value") else x.value
            return x.replace(NamedSharding(mesh, _spec_for(np.shape(value), _logical_names(x), mesh, rules)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_shardings(abstract_state: Any, mesh: Mesh, rules: Optional[Rules] = None) -> Any:
    """NamedShardings (same tree structure) for an abstract or concrete NNX state."""
    return tree_shardings(abstract_state, mesh, rules)


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, accum: bool = False) -> NamedSharding:
    """Sharding of a batch leaf: leading dim (the second when `accum`, i.e. [accum, B, ...]) over the
    mesh axes the ``batch`` rule names (default ``("data", "fsdp")``); other dims replicated."""
    spec = partitioning.logical_to_spec(("batch",), rules, mesh)
    return NamedSharding(mesh, PartitionSpec(None, *spec) if accum else spec)


def batch_axes(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Tuple[str, ...]:
    """The mesh axes (of size > 1) the ``batch`` rule shards the batch dim over, in order."""
    (axes,) = partitioning.logical_to_spec(("batch",), rules, mesh) or (None,)
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def batch_divisor(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """The global batch size must be a multiple of this (the product of the batch mesh axes)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


@dataclasses.dataclass(frozen=True)
class TrainShardings:
    """Shardings of everything the train step touches."""

    params: Any
    opt_state: Any
    batch: NamedSharding
    replicated: NamedSharding
    mesh: Mesh
    rules: Rules


def _check_only_params(rest: Any) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(rest)
    if leaves:
        names = ", ".join(jax.tree_util.keystr(p) for p, _ in leaves[:5])
        raise ValueError(
            "create_sharded: the model holds non-Param state (" + names + "). The sharded trainer only "
            "supports modules whose variables are nnx.Param: pass PRNG keys explicitly to the loss instead of "
            "storing nnx.Rngs in the module, and keep non-trainable buffers out of the module."
        )


def create_sharded(
    model_factory: Callable[[], nnx.Module],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: Optional[Rules] = None,
) -> Tuple[nnx.GraphDef, nnx.State, Any, TrainShardings]:
    """Create parameters and optimizer state directly sharded over `mesh` (never whole on one device).

    `model_factory()` builds the module (it must draw its randomness from its own ``nnx.Rngs(seed)``).
    Shapes come from ``nnx.eval_shape``; the init then runs under ``jax.jit`` with ``out_shardings``, so
    each device only ever materialises its own shard.

    `rules` default: :func:`logical_rules` (``partitioning.DEFAULT_RULES`` unless gin overrides them).
    Returns ``(graphdef, params, opt_state, shardings)``; ``nnx.merge(graphdef, params)`` rebuilds the module.
    """
    rules = logical_rules() if rules is None else tuple(rules)
    # Flax's eager sharding would need a flax-level mesh context; we shard through jit instead.
    with nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(model_factory)
    graphdef, abstract_params, rest = nnx.split(abstract_model, nnx.Param, ...)
    _check_only_params(rest)
    p_sh = tree_shardings(abstract_params, mesh, rules)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    o_sh = tree_shardings(abstract_opt, mesh, rules)

    def init():
        with nnx.use_eager_sharding(False):
            model = model_factory()
        _, params, _ = nnx.split(model, nnx.Param, ...)
        return params, optimizer.init(params)

    params, opt_state = jax.jit(init, out_shardings=(p_sh, o_sh))()
    sh = TrainShardings(
        params=p_sh,
        opt_state=o_sh,
        batch=batch_sharding(mesh, rules),
        replicated=NamedSharding(mesh, PartitionSpec()),
        mesh=mesh,
        rules=tuple(rules),
    )
    return graphdef, params, opt_state, sh


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree carrying `shardings`: the restore target for a checkpoint."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def shard_batch(batch: Any, shardings: TrainShardings, accum_steps: int = 1, process_local: bool = False) -> Any:
    """Place a host batch (numpy arrays) on the mesh with the train step's batch sharding.

    * ``process_local=False``: every process holds the same *global* batch (e.g. generated from a shared
      seed); each device takes its slice. Works for one or many processes.
    * ``process_local=True``: each process holds only its own rows (its share of the global batch, in
      process order), as with per-host data loaders / env pools; uses
      ``jax.make_array_from_process_local_data``.
    """
    sh = batch_sharding(shardings.mesh, shardings.rules, accum=accum_steps > 1)
    if process_local:
        problem = process_local_batch_problem(
            {d: d.process_index for d in shardings.mesh.devices.flat},
            batch_sharding(shardings.mesh, shardings.rules).devices_indices_map((batch_divisor(shardings.mesh,
                                                                                             shardings.rules),)))
        if problem:
            raise ValueError(f"shard_batch(process_local=True): {problem}")
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)), batch)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

    return jax.tree.map(put, batch)


def process_local_batch_problem(process_of: Mapping[Any, int], rows_of: Mapping[Any, Any]) -> Optional[str]:
    """Why per-process batches cannot be stitched into one global batch, or None when they can.

    process_of: device -> process index; rows_of: device -> its index (slices) into the batch dim, for a
    batch of one row per batch shard. Each process passes its own rows, so the processes must hold disjoint
    sets of batch shards, the same number each. When the batch axes do not span the processes (e.g. mesh
    (1, 1, 8) over 2 hosts: the batch is replicated on every device), every process would claim the whole
    batch and JAX would silently keep one process's half.
    """
    shards: dict = {}
    for d, idx in rows_of.items():
        start = idx[0].start or 0
        shards.setdefault(process_of[d], set()).add(start)
    procs = sorted(shards)
    if len(procs) <= 1:
        return None
    for i, a in enumerate(procs):
        for b in procs[i + 1:]:
            if shards[a] & shards[b]:
                return (f"processes {a} and {b} hold the same batch rows, so rows passed by one process would "
                        "silently replace the other's. Put the `batch` logical axis on mesh axes that span the "
                        "processes (e.g. make_mesh.fsdp or make_mesh.data across hosts), or give every process "
                        "the same global batch and use process_local=False.")
    if len({len(v) for v in shards.values()}) != 1:
        return "processes hold unequal numbers of batch shards; use a mesh whose batch axes split evenly over hosts."
    return None


# --------------------------------------------------------------------------------------------- train step
def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def _check_batch(batch: Any, divisor: int, accum_steps: int) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ValueError("train step: the batch is empty; pass a pytree of arrays with a leading batch dim.")
    lead = None
    for path, x in leaves:
        shape = np.shape(x)
        need = 2 if accum_steps > 1 else 1
        if len(shape) < need:
            raise ValueError(
                f"train step: batch leaf {jax.tree_util.keystr(path)} has shape {shape}; every leaf needs a "
                + ("leading [accum_steps, micro_batch] pair of dims." if accum_steps > 1 else "leading batch dim.")
            )
        if accum_steps > 1 and shape[0] != accum_steps:
            raise ValueError(
                f"train step: batch leaf {jax.tree_util.keystr(path)} has leading dim {shape[0]} but "
                f"accum_steps={accum_steps}; feed batches shaped [accum_steps, micro_batch, ...]."
            )
        b = shape[1] if accum_steps > 1 else shape[0]
        if lead is None:
            lead = b
        elif b != lead:
            raise ValueError(f"train step: batch leaves disagree on the batch size ({lead} vs {b} at "
                             f"{jax.tree_util.keystr(path)}).")
        if b % divisor:
            raise ValueError(
                f"train step: (micro-)batch size {b} is not divisible by the data*fsdp mesh size {divisor}; "
                f"use a multiple of {divisor}."
            )

def _replica_batch_axes(mesh: Mesh, rules, param_shardings) -> Tuple[str, ...]:
    """The leading mesh axes of the batch rule that shard no parameter (pure replicas, e.g. ``data``): their
    gradient reduction can wait until the end of an accumulation scan. Only a leading run of the batch axes
    qualifies, so splitting a micro-batch into one group per replica moves no data."""
    used = set()
    for sh in jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)):
        for entry in sh.spec:
            used.update((entry,) if isinstance(entry, str) else tuple(entry or ()))
    lead = []
    for a in batch_axes(mesh, rules):
        if a in used:
            break
        lead.append(a)
    return tuple(lead)


def _rules_without(rules, axes: Sequence[str]):
    """`rules` with `axes` removed from every target (inside a vmap whose spmd axes they are)."""
    if not axes:
        return rules
    out = []
    for name, target in rules:
        if target is not None:
            kept = tuple(a for a in ((target,) if isinstance(target, str) else target) if a not in axes)
            target = None if not kept else kept[0] if len(kept) == 1 else kept
        out.append((name, target))
    return tuple(out)


def _with_leading_axis(shardings: Any, mesh: Mesh, axes: Tuple[str, ...]) -> Any:
    """Each sharding with a new leading dim split over `axes` (a carry holding one value per replica group)."""
    lead = axes[0] if len(axes) == 1 else axes
    return jax.tree.map(lambda sh: NamedSharding(mesh, PartitionSpec(lead, *sh.spec)), shardings)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    shardings: TrainShardings,
    graphdef: nnx.GraphDef,
    *,
    accum_steps: int = 1,
    donate: bool = True,
    accumulate: str = "mean",
    frozen_shardings: Any = None,
    compiler_options: Any = (),
) -> Callable[[Any, Any, Any, jax.Array], Tuple[Any, Any, dict]]:
    """A jitted ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

    * `loss_fn(model, batch, key) -> (loss, aux)` where `model = nnx.merge(graphdef, params)`; `aux` is a
      dict of scalars (averaged over micro-batches into `metrics`).
    * Gradient accumulation is an explicit ``lax.scan`` inside the step: with ``accum_steps=k > 1`` every
      batch leaf is ``[k, micro_B, ...]``. ``accumulate="mean"``: the update uses the mean gradient (and
      the mean loss and metrics) of the k micro-batches, equal to one batch of ``k*micro_B`` only when the
      loss is a mean over equally weighted examples. ``accumulate="sum"``: gradients, loss and metrics are
      summed, for losses that return their micro-batch's *share* of the whole batch's loss (normalised by
      whole-batch counts carried in the batch, as `learner.rl_loss` does): exact for any masks, padding
      rows or loss aggregation.
    * The batch's (micro-)batch dim is sharded over the mesh axes of the ``batch`` rule (data, fsdp).
    * A non-finite loss or gradient never reaches the weights: with :func:`optim.make_optimizer` (which
      wraps ``optax.apply_if_finite``) the update is rejected there and counted in its state; for any other
      optimizer the step skips the update with ``lax.cond``.
    * `metrics`: loss, grad_norm (before clipping), param_norm, skipped (0/1), skipped_total (when the
      optimizer counts), learning_rate (when the optimizer injects it), plus the aux metrics.
    * Params and optimizer state are donated (pass copies if you need the old ones).
    * `frozen_shardings` (e.g. LoRA: `params` = the adapters): the step takes a fifth argument `frozen`, the
      rest of the model's state placed on these shardings; the model is ``merge(graphdef, frozen + params)``,
      and `frozen` gets no gradient, no optimizer state and is never changed (nor donated).
    * `compiler_options`: XLA options for the step's program (pairs), e.g. `xla_cpu.eigen_dot_options()`.
    """
    if accum_steps < 1:
        raise ValueError(f"make_train_step: accum_steps must be >= 1, got {accum_steps}.")
    if accumulate not in ("mean", "sum"):
        raise ValueError(f"make_train_step: accumulate={accumulate!r}; use 'mean' or 'sum'.")
    scale = 1.0 if accumulate == "sum" else 1.0 / accum_steps
    rules = shardings.rules
    divisor = batch_divisor(mesh, rules)
    b_sh = batch_sharding(mesh, rules, accum=accum_steps > 1)

    def grad_fn(params, batch, key, frozen=None):
        def f(p):
            model = nnx.merge(graphdef, p if frozen is None else nnx.merge_state(frozen, p))
            loss, aux = loss_fn(model, batch, key)
            return loss, dict(aux)

        (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss, aux, grads

    # Gradient accumulation reduces over the replica axes once per minibatch, not once per micro-batch: each
    # replica group's micro-batch gradients are summed where they were computed (a carry with a leading group
    # axis sharded over those axes, per-device memory one gradient, as before) and summed across groups after
    # the scan. Without it, the carry's parameter sharding forces a full all-reduce inside every scan step.
    replica_axes = _replica_batch_axes(mesh, rules, shardings.params) if accum_steps > 1 else ()
    groups = math.prod(mesh.shape[a] for a in replica_axes)
    inner_rules = _rules_without(rules, replica_axes)
    # With G > 1 groups the carry holds [G, ...] per-group sums; "mean": each group's loss is a mean over its
    # (equal) share of the rows, so the groups average too.
    lead, group_scale, carry_sh = (), 1.0, shardings.params
    if groups > 1:
        lead, carry_sh = (groups,), _with_leading_axis(shardings.params, mesh, replica_axes)
        group_scale = 1.0 if accumulate == "sum" else 1.0 / groups

    def grouped_grad_fn(params, micro, key, frozen=None):
        """grad_fn per replica group: (loss [G], aux [G], grads [G, ...]) for a micro-batch split in G groups."""
        split = jax.tree.map(lambda x: x.reshape((groups, x.shape[0] // groups) + x.shape[1:]), micro)
        keys = jax.random.split(key, groups)

        def one(part, k):
            with partitioning.axis_rules(mesh, inner_rules):
                return grad_fn(params, part, k, frozen)

        return jax.vmap(one, spmd_axis_name=replica_axes)(split, keys)

    micro_grad_fn = grouped_grad_fn if groups > 1 else grad_fn

    def step(params, opt_state, batch, key, frozen=None):
        with partitioning.axis_rules(mesh, rules):
            if accum_steps == 1:
                loss, aux, grads = grad_fn(params, batch, key, frozen)
            else:
                def body(carry, xs):
                    g_sum, l_sum, a_sum = carry
                    i, micro = xs
                    loss, aux, g = micro_grad_fn(params, micro, jax.random.fold_in(key, i), frozen)
                    g_sum = jax.tree.map(lambda s, x: s + x.astype(s.dtype), g_sum, g)
                    g_sum = jax.lax.with_sharding_constraint(g_sum, carry_sh)
                    a_sum = jax.tree.map(lambda s, x: s + x, a_sum, aux)
                    return (g_sum, l_sum + loss, a_sum), None

                first = jax.tree.map(lambda x: x[0], batch)
                aux_shape = jax.eval_shape(lambda: micro_grad_fn(params, first, key, frozen)[1])
                zeros_g = jax.tree.map(
                    lambda p: jnp.zeros(lead + p.shape, jnp.promote_types(p.dtype, jnp.float32)), params)
                zeros_g = jax.lax.with_sharding_constraint(zeros_g, carry_sh)
                zeros_a = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shape)
                (g_sum, l_sum, a_sum), _ = jax.lax.scan(
                    body, (zeros_g, jnp.zeros(lead, jnp.float32), zeros_a), (jnp.arange(accum_steps), batch)
                )
                if groups > 1:  # the one cross-replica reduction of the step
                    g_sum = jax.tree.map(lambda s: s.sum(0), g_sum)
                    l_sum, a_sum = l_sum.sum(0), jax.tree.map(lambda a: a.sum(0), a_sum)
                total = scale * group_scale
                grads = jax.tree.map(lambda s, p: (s * total).astype(p.dtype), g_sum, params)
                loss = l_sum * total
                aux = jax.tree.map(lambda a: a * total, a_sum)

        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        counted = optim.state_value(opt_state, "total_notfinite") is not None
        if counted:
            # apply_if_finite inspects only the gradients: make a bad loss visible to it.
            grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grads)
            updates, new_opt = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            # apply_if_finite returns zero updates on rejection; keep params bit-identical regardless.
            new_params = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_params, params)
        else:
            def apply(_):
                updates, o = optimizer.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), o

            new_params, new_opt = jax.lax.cond(finite, apply, lambda _: (params, opt_state), None)
        new_params = jax.lax.with_sharding_constraint(new_params, shardings.params)
        new_opt = jax.lax.with_sharding_constraint(new_opt, shardings.opt_state)

        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}
        metrics.update(
            loss=jnp.asarray(loss, jnp.float32),
            grad_norm=grad_norm.astype(jnp.float32),
            param_norm=optax.global_norm(new_params).astype(jnp.float32),
            skipped=(~finite).astype(jnp.int32),
        )
        total = optim.state_value(new_opt, "total_notfinite")
        if total is not None:
            metrics["skipped_total"] = total
        lr = optim.state_value(new_opt, "learning_rate")
        if lr is not None:
            metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
        return new_params, new_opt, metrics

    in_sh = (shardings.params, shardings.opt_state, b_sh, shardings.replicated)
    jitted = jax.jit(
        step,
        in_shardings=in_sh if frozen_shardings is None else in_sh + (frozen_shardings,),
        out_shardings=(shardings.params, shardings.opt_state, shardings.replicated),
        donate_argnums=(0, 1) if donate else (),
        compiler_options=dict(compiler_options) or None,
    )

    def train_step(params, opt_state, batch, key, *frozen):
        _check_batch(batch, divisor, accum_steps)
        if len(frozen) != (frozen_shardings is not None):
            raise ValueError("train step: pass the frozen state as the fifth argument exactly when the step was "
                             "built with frozen_shardings.")
        return jitted(params, opt_state, batch, key, *frozen)

    train_step.jitted = jitted  # for .lower(...) / cost analysis in benchmarks
    return train_step
