"""Orbax checkpoints: async save every N steps, keep the last K (+ the best by a metric), restore onto any
mesh, fall back past a corrupt newest checkpoint, and save-then-exit on preemption (SIGTERM).

Each step directory holds three Orbax items:

* ``state``  — the training pytree (params, optimizer state, PRNG keys, ...), saved sharded (OCDBT). Typed
  PRNG keys are stored as their raw ``key_data`` and re-wrapped on restore.
* ``extra``  — a JSON blob for whatever the data / env samplers need to resume (epoch, cursor, seeds, ...).
* ``config`` — ``{"gin_config": <operative gin config text>, "step": step}``.

Training-loop pattern::

    ckpt = Checkpointer(workdir + "/checkpoints", save_every=15, keep=3)
    install_preemption_handler()
    restored = ckpt.restore_latest(abstract_state)       # ShapeDtypeStructs carrying target shardings
    step, state, extra = restored or (0, init_state, {})
    while step < total:
        state, metrics = train_step(state, batch(step)); step += 1
        ckpt.maybe_save(step, state, extra_json=sampler.state(), metrics=metrics)
        if preemption_requested(step):
            ckpt.maybe_save(step, state, extra_json=sampler.state(), force=True)
            ckpt.close()
            sys.exit(EXIT_PREEMPTED)   # not 0: the run is not finished (a scheduler / the study runner retries)
    ckpt.close()

Retention: the last `keep` checkpoints *on the save_every schedule* (+ the best, + always the newest). An
off-schedule save (a preemption at step 142, a final step off the grid) stays only until a newer one lands, so
it never pushes an on-schedule step (105 of 105/120/135/150) out of the last `keep`.

Multi-host: every process calls the same methods with the same step (Orbax coordinates the writes). For
preemption use ``preemption_requested(step)`` every step: with more than one process it asks
``jax.experimental.multihost_utils.reached_preemption_sync_point(step)``, JAX's coordination-service
agreement on one step at which *all* hosts save (the signal arrives at one host; a local flag alone would
make hosts disagree and hang in the collective save). The local SIGTERM flag is for single-process runs.
"""
from __future__ import annotations

import dataclasses
import json
import logging as _pylogging
import os
import signal
import threading
import warnings
from typing import Any, Mapping, Optional, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

log = _pylogging.getLogger(__name__)

_STATE, _EXTRA, _CONFIG = "state", "extra", "config"


# ------------------------------------------------------------------------------------------- PRNG keys
def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree: Any) -> Any:
    """Replace typed PRNG keys by their raw uint32 key data (what gets written)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_key_data(x):
    if not _is_key(x):
        return x
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    sharding = getattr(x, "sharding", None)
    if sharding is not None and isinstance(sharding, jax.sharding.NamedSharding):
        # key data has one trailing dim the key array lacks: replicate it
        spec = tuple(sharding.spec) + (None,) * (data.ndim - len(sharding.spec))
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


def _rewrap_keys(abstract: Any, restored: Any) -> Any:
    def one(a, r):
        if _is_key(a):
            return jax.random.wrap_key_data(r, impl=a.dtype._impl)  # the dtype names its PRNG implementation
        return r

    return jax.tree.map(one, abstract, restored)


# ----------------------------------------------------------------------------------------- preemption
_PREEMPTED = threading.Event()
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved and stopped early; the same command resumes (exit 0 = finished)


class Preempted(Exception):
    """A run stopped by a preemption signal after saving `step` (raised once its checkpoints are closed); the
    CLI turns it into exit status EXIT_PREEMPTED."""

    def __init__(self, step: int, output_dir: str):
        self.step, self.output_dir = int(step), output_dir
        super().__init__(f"preempted: saved step {self.step} in {output_dir}; the run is not finished and will "
                         f"resume from step {self.step} when started again with the same command")


def install_preemption_handler(signals: Tuple[int, ...] = (signal.SIGTERM,)) -> None:
    """On `signals` (default SIGTERM) set a flag that :func:`preemption_requested` reports.

    The handler only sets a flag: the loop finishes its current step, force-saves and exits EXIT_PREEMPTED
    (raise :class:`Preempted`). Must be called from the main thread.
    """

    def handler(signum, frame):  # noqa: ARG001
        log.warning("signal %d received: will checkpoint and exit after this step", signum)
        _PREEMPTED.set()

    for s in signals:
        signal.signal(s, handler)


def preemption_requested(step: Optional[int] = None) -> bool:
    """True once a preemption signal arrived (single process), or, with several processes and a `step`,
    when JAX's preemption sync point for `step` is reached on all hosts."""
    if _PREEMPTED.is_set():
        return True
    if step is not None and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        try:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except RuntimeError:  # preemption service not enabled
            return False
    return False


def clear_preemption_flag() -> None:
    _PREEMPTED.clear()


# ---------------------------------------------------------------------------------------- checkpointer
@dataclasses.dataclass
class LatestOnSchedule(ocm.PreservationPolicy):
    """Preserves the last `n` checkpoints whose step is on the save schedule (step % every == 0)."""

    n: int
    every: int

    def should_preserve(self, checkpoints, *, context):  # noqa: ARG002
        on = [i for i, c in enumerate(checkpoints) if c.step % self.every == 0]
        kept = set(on[-self.n:])
        return [i in kept for i in range(len(checkpoints))]


def _operative_gin() -> str:
    try:
        return gin.operative_config_str()
    except Exception:  # gin not used in this process
        return ""


@gin.configurable(module="agentrl_jax.checkpoint")
class Checkpointer:
    """Thin policy layer over ``orbax.checkpoint.CheckpointManager``.

    Args:
      directory: where step directories go (created; absolute or relative path).
      save_every: :meth:`maybe_save` writes when ``step % save_every == 0`` (or `force`).
      keep: keep the last `keep` checkpoints on the save_every schedule (and the newest one, on it or not).
      best_metric: also keep the single best checkpoint by ``metrics[best_metric]`` (e.g. "eval/success").
      best_mode: "max" or "min" for `best_metric`.
      async_save: write in a background thread (training continues; call :meth:`wait` before reading).
    """

    def __init__(
        self,
        directory: str,
        save_every: int = 100,
        keep: int = 3,
        best_metric: Optional[str] = None,
        best_mode: str = "max",
        async_save: bool = True,
    ):
        if save_every < 1:
            raise ValueError(f"Checkpointer: save_every must be >= 1, got {save_every}.")
        if keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1, got {keep}.")
        if best_mode not in ("max", "min"):
            raise ValueError(f"Checkpointer: best_mode must be 'max' or 'min', got {best_mode!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every, self.keep = save_every, keep
        self.best_metric, self.best_mode = best_metric, best_mode

        # The newest (whatever its step: a preemption save is needed to resume) + the last `keep` on schedule.
        policies = [ocm.LatestN(n=1), LatestOnSchedule(n=keep, every=save_every)]
        best_fn = None
        if best_metric is not None:
            sign = 1.0 if best_mode == "max" else -1.0

            def best_fn(m, _k=best_metric, _s=sign):
                return float(m[_k]) if _k in m else -_s * float("inf")

            policies.append(ocm.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                      keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            best_fn=best_fn,  # makes Orbax record metrics and answer best_step()
            best_mode=best_mode,
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=(_STATE, _EXTRA, _CONFIG))

    # -------------------------------------------------------------------------------------------- save
    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def maybe_save(
        self,
        step: int,
        state: Any,
        extra_json: Optional[Mapping[str, Any]] = None,
        metrics: Optional[Mapping[str, Any]] = None,
        force: bool = False,
        gin_config: Optional[str] = None,
    ) -> bool:
        """Start an (async) save of `state` at `step` if it is due or `force`; returns whether it started.

        `extra_json` must be JSON-serialisable; `metrics` (scalars) feed the best-checkpoint choice.
        `gin_config` defaults to ``gin.operative_config_str()``. A step already on disk is not rewritten.
        """
        step = int(step)
        if not (force or self.should_save(step)):
            return False
        if step in self._mgr.all_steps():
            return False
        extra = dict(extra_json or {})
        try:
            json.dumps(extra)
        except TypeError as e:
            raise ValueError(f"Checkpointer.maybe_save: extra_json must be JSON-serialisable ({e}).") from None
        m = None
        if metrics is not None and self.best_metric is not None and self.best_metric in metrics:
            m = {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(keys_to_data(state)),
                _EXTRA: ocp.args.JsonSave(extra),
                _CONFIG: ocp.args.JsonSave({"gin_config": _operative_gin() if gin_config is None else gin_config,
                                            "step": step}),
            }
        )
        return bool(self._mgr.save(step, args=args, metrics=m, force=True))

    # ----------------------------------------------------------------------------------------- restore
    def all_steps(self):
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._mgr.latest_step()

    def best_step(self) -> Optional[int]:
        return self._mgr.best_step() if self.best_metric else None

    def restore(self, step: int, abstract_state: Any) -> Tuple[Any, dict]:
        """Restore `step` onto the shardings carried by `abstract_state` (a tree of
        ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``, e.g. from
        ``sharding.abstract_with_shardings``); the saving mesh does not matter."""
        target = jax.tree.map(_abstract_key_data, abstract_state)
        out = self._mgr.restore(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(target), _EXTRA: ocp.args.JsonRestore()}
            ),
        )
        return _rewrap_keys(abstract_state, out[_STATE]), dict(out[_EXTRA] or {})

    def restore_params(self, step: int, abstract_params: Any, key: str = "params") -> Any:
        """Only the `key` subtree (the policy parameters) of `step`, onto the shardings of `abstract_params`;
        the rest of the saved state (optimizer, reference policy, value head) is not read. For evaluation."""
        target = {key: jax.tree.map(_abstract_key_data, abstract_params)}
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype), target)
        out = self._mgr.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)}))
        return out[_STATE][key]

    def restore_latest(self, abstract_state: Any) -> Optional[Tuple[int, Any, dict]]:
        """``(step, state, extra)`` from the newest checkpoint that restores, or None if there is none.

        A newest checkpoint that fails to restore (partial / corrupt files) is skipped with a warning
        (``RuntimeWarning`` + log) and the previous one is tried. Once one restores, the newer ones that failed
        are moved aside (see :meth:`_move_aside`) so their steps can be saved again. If all fail, ValueError
        (nothing is moved: that points at the target, not the disk).
        """
        self.wait()
        self._mgr.reload()
        steps = sorted(self._mgr.all_steps(), reverse=True)
        first_error = None
        failed = []
        for step in steps:
            try:
                state, extra = self.restore(step, abstract_state)
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                msg = (f"checkpoint at step {step} in {self.directory} could not be restored "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                       "falling back to the previous one")
                log.warning(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                first_error = first_error or e
                failed.append(step)
                continue
            if failed:
                self._move_aside(failed)
            return step, state, extra
        if steps:
            # Every checkpoint failing points at the target (wrong shapes / tree) rather than at the disk.
            raise ValueError(
                f"none of the checkpoints {steps} in {self.directory} could be restored into the given abstract "
                f"state; check that its tree structure, shapes and dtypes match what was saved "
                f"(first error: {type(first_error).__name__}: {first_error})"
            ) from first_error
        return None

    def _move_aside(self, steps) -> None:
        """Rename each step directory to ``<step>.corrupt-<n>`` (first free n), a name Orbax does not read as a
        step: otherwise the step stays listed and ``maybe_save(step)`` refuses to write it again. The files are
        kept for inspection (delete them by hand)."""
        if jax.process_index() == 0:  # one host renames; the others wait at the barrier below
            for step in steps:
                src = os.path.join(self.directory, str(step))
                if not os.path.isdir(src):
                    continue
                n = 0
                while os.path.exists(f"{src}.corrupt-{n}"):
                    n += 1
                os.rename(src, f"{src}.corrupt-{n}")
                log.warning("moved the unrestorable checkpoint %s aside to %s so step %d can be saved again",
                            src, f"{src}.corrupt-{n}", step)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("agentrl_jax.checkpoint.move_aside")
        self._mgr.reload()

    def read_config(self, step: int) -> dict:
        """The ``config`` item of `step`: ``{"gin_config": text, "step": step}``."""
        out = self._mgr.restore(step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
        return dict(out[_CONFIG])

    # ------------------------------------------------------------------------------------------- misc
    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release resources."""
        self._mgr.wait_until_finished()
        self._mgr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
