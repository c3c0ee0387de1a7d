"""Optimizer and learning-rate schedules (optax), configured by gin.

``make_optimizer()`` returns::

    apply_if_finite( chain( clip_by_global_norm(max_grad_norm),
                            inject_hyperparams(adamw)(learning_rate=schedule, ...) ) )

* ``apply_if_finite`` rejects any update whose gradients hold NaN/inf (the sharded train step also turns a
  non-finite *loss* into non-finite gradients so it is rejected too); the rejection count lives in the
  optimizer state (``total_notfinite``), so it is checkpointed and reported as ``skipped_total``. It is
  built so it never gives up and applies a bad update.
* ``inject_hyperparams`` keeps the learning rate of the last update in the state, which the train step
  reports as ``learning_rate``.
* Gradient accumulation is *not* done here (no ``optax.MultiSteps``): the train step scans over
  ``[accum_steps, micro_batch, ...]`` batches itself (see ``sharding.make_train_step``), so one call is one
  optimizer update and the step counter equals the number of updates.

Example gin::

    make_schedule.peak_lr = 1e-6
    make_schedule.kind = 'cosine'
    make_schedule.warmup_ratio = 0.1
    make_schedule.total_steps = 150
    make_optimizer.weight_decay = 0.01
"""
from __future__ import annotations

from typing import Optional, Union

import gin
import jax
import jax.numpy as jnp
import optax

SCHEDULE_KINDS = ("cosine", "constant", "linear")
# apply_if_finite applies the update anyway after this many consecutive bad steps; make that unreachable
# (its counter saturates at the int32 maximum).
_NEVER = 2**31 - 1


@gin.configurable(module="agentrl_jax.optim")
def make_schedule(
    peak_lr: float = 1e-6,
    total_steps: Optional[int] = None,
    kind: str = "cosine",
    warmup_steps: Optional[int] = None,
    warmup_ratio: float = 0.0,
    init_lr_ratio: float = 0.0,
    end_lr_ratio: float = 0.0,
) -> optax.Schedule:
    """Linear warm-up from ``init_lr_ratio*peak_lr`` to `peak_lr`, then `kind`:

    * ``cosine``: cosine decay to ``end_lr_ratio*peak_lr`` at `total_steps`,
    * ``linear``: linear decay to ``end_lr_ratio*peak_lr`` at `total_steps`,
    * ``constant``: stay at `peak_lr`.

    Warm-up length is `warmup_steps`, or ``round(warmup_ratio*total_steps)`` when that is None.
    Step counts are optimizer updates (accumulated micro-batches count once).
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"make_schedule: kind={kind!r}; choose one of {SCHEDULE_KINDS}.")
    if peak_lr < 0:
        raise ValueError(f"make_schedule: peak_lr must be >= 0, got {peak_lr}.")
    if kind != "constant" and total_steps is None:
        raise ValueError(f"make_schedule: kind={kind!r} decays until total_steps; set make_schedule.total_steps.")
    if warmup_steps is None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"make_schedule: warmup_ratio must be in [0, 1), got {warmup_ratio}.")
        warmup_steps = int(round(warmup_ratio * (total_steps or 0)))
    if warmup_steps < 0:
        raise ValueError(f"make_schedule: warmup_steps must be >= 0, got {warmup_steps}.")
    if total_steps is not None and kind != "constant" and warmup_steps >= total_steps:
        raise ValueError(
            f"make_schedule: warmup_steps={warmup_steps} must be < total_steps={total_steps} for a decaying schedule."
        )
    init, end = init_lr_ratio * peak_lr, end_lr_ratio * peak_lr

    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=init, peak_value=peak_lr, warmup_steps=warmup_steps, decay_steps=total_steps, end_value=end
        )
    if kind == "linear":
        decay = optax.linear_schedule(peak_lr, end, total_steps - warmup_steps)
    else:
        decay = optax.constant_schedule(peak_lr)
    if warmup_steps == 0:
        return decay
    warm = optax.linear_schedule(init, peak_lr, warmup_steps)
    return optax.join_schedules([warm, decay], [warmup_steps])


def _decay_mask(params):
    # No weight decay on vectors (biases, norm scales): the usual AdamW practice.
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


@gin.configurable(module="agentrl_jax.optim")
def make_optimizer(
    learning_rate: Union[float, optax.Schedule, None] = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay_vectors: bool = False,
    max_grad_norm: Optional[float] = 1.0,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and NaN/inf skipping.

    `learning_rate`: a float, an optax schedule, or None for ``make_schedule()`` (gin-configured).
    `decay_vectors`: also apply weight decay to rank<2 parameters (off by default).
    `max_grad_norm`: None or 0 disables clipping.
    `skip_nonfinite`: wrap in ``optax.apply_if_finite`` (see module doc).
    """
    if learning_rate is None:
        learning_rate = make_schedule()
    for name, v in (("b1", b1), ("b2", b2)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"make_optimizer: {name} must be in [0, 1), got {v}.")
    if eps <= 0 or weight_decay < 0:
        raise ValueError(f"make_optimizer: need eps > 0 and weight_decay >= 0, got eps={eps}, weight_decay={weight_decay}.")
    if max_grad_norm is not None and max_grad_norm < 0:
        raise ValueError(f"make_optimizer: max_grad_norm must be >= 0 or None, got {max_grad_norm}.")
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=None if decay_vectors else _decay_mask,
    )
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
    tx = optax.chain(*parts, adamw)
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=_NEVER)
    return tx


def state_value(opt_state, key: str) -> Optional[jax.Array]:
    """The single array named `key` in an optax state (e.g. "learning_rate", "total_notfinite"), or None
    when absent or ambiguous."""
    try:
        return optax.tree_utils.tree_get(opt_state, key, filtering=lambda _, v: hasattr(v, "dtype"))
    except KeyError:
        return None


def current_learning_rate(opt_state) -> Optional[jax.Array]:
    """The learning rate of the last update, for optimizers built by :func:`make_optimizer`."""
    return state_value(opt_state, "learning_rate")
