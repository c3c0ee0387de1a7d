"""Multi-host start-up: one call before anything touches a JAX device.

* Single process (the default, a laptop or one GPU box): does nothing.
* TPU pod slice: ``initialize()`` with no arguments; JAX discovers the other workers from the TPU
  metadata. Start the same command on every worker (``gcloud compute tpus tpu-vm ssh ... --worker=all``).
* GPU / CPU clusters: give the coordinator (``host:port`` of process 0), the number of processes and this
  process's id — as arguments, gin bindings, or environment variables:

  ============================  =================================================
  ``AGENTRL_COORDINATOR``       ``host:port`` of process 0's coordination service
  ``AGENTRL_NUM_PROCESSES``     total number of processes
  ``AGENTRL_PROCESS_ID``        this process's id, 0 .. N-1
  ``AGENTRL_LOCAL_DEVICE_IDS``  optional, comma-separated local device ids
  ``AGENTRL_INIT_TIMEOUT``      optional, seconds to wait for all processes (default 300)
  ============================  =================================================

  Explicit arguments win over the environment.

If the other processes never arrive, JAX's own client aborts the process with a bare C++ check failure
(``DEADLINE_EXCEEDED ... RegisterTask``). A watchdog here fires first, prints what is wrong and how to fix
it, and exits with status 2 instead.
"""
from __future__ import annotations

import dataclasses
import functools
import logging as _pylogging
import os
import sys
import threading
import time
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import gin
import jax
import numpy as np

log = _pylogging.getLogger(__name__)

ENV_COORDINATOR = "AGENTRL_COORDINATOR"
ENV_NUM_PROCESSES = "AGENTRL_NUM_PROCESSES"
ENV_PROCESS_ID = "AGENTRL_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "AGENTRL_LOCAL_DEVICE_IDS"
ENV_INIT_TIMEOUT = "AGENTRL_INIT_TIMEOUT"
EXIT_INIT_TIMEOUT = 2


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    process_index: int
    process_count: int
    local_device_count: int
    device_count: int


def _env_int(name: str) -> Optional[int]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"distributed.initialize: environment variable {name}={raw!r} must be an integer.") from None


def tpu_pod_hosts() -> int:
    """Number of TPU worker hosts this VM belongs to, from the TPU VM environment (1 if unknown / not TPU)."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return max(1, len([h for h in hosts.split(",") if h.strip()]))


def _watchdog(timeout_s: float, message: str) -> threading.Event:
    """Exit the process with `message` unless the returned event is set within `timeout_s`."""
    done = threading.Event()

    def run():
        if not done.wait(timeout_s):
            sys.stderr.write("\n" + message + "\n")
            sys.stderr.flush()
            os._exit(EXIT_INIT_TIMEOUT)  # jax's client is blocked in C++; a Python exception cannot reach it

    threading.Thread(target=run, name="agentrl-distributed-watchdog", daemon=True).start()
    return done


@gin.configurable(module="agentrl_jax.distributed")
def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    local_device_ids: Optional[Union[int, Sequence[int]]] = None,
    initialization_timeout: Optional[int] = None,
    tpu_pod: Optional[bool] = None,
) -> ProcessInfo:
    """Join the multi-process JAX runtime if this job has several processes; otherwise do nothing.

    Args (each falls back to its ``AGENTRL_*`` environment variable, see the module doc):
      coordinator_address: ``host:port`` of process 0.
      num_processes: total processes; 1 / unset with no coordinator = single process.
      process_id: this process's id.
      local_device_ids: restrict this process to these local devices (e.g. one GPU per process).
      initialization_timeout: seconds to wait for every process to join before failing with a clear
        message (default 300).
      tpu_pod: force (True) or forbid (False) TPU-pod auto-detection; default: on when the TPU VM
        environment lists more than one worker.

    Returns the process index / count and device counts. Must run before any other JAX call that
    initialises a backend (e.g. ``jax.devices()``). Calling it again after success is a no-op.
    """
    if jax.distributed.is_initialized():
        return _info()
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if local_device_ids is None and os.environ.get(ENV_LOCAL_DEVICE_IDS):
        try:
            local_device_ids = [int(x) for x in os.environ[ENV_LOCAL_DEVICE_IDS].split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"distributed.initialize: {ENV_LOCAL_DEVICE_IDS} must be comma-separated ints, "
                             f"got {os.environ[ENV_LOCAL_DEVICE_IDS]!r}.") from None
    timeout = initialization_timeout if initialization_timeout is not None else (_env_int(ENV_INIT_TIMEOUT) or 300)
    if timeout < 1:
        raise ValueError(f"distributed.initialize: initialization_timeout must be >= 1 s, got {timeout}.")
    pod_hosts = tpu_pod_hosts()
    if tpu_pod is None:
        tpu_pod = pod_hosts > 1

    if coordinator_address is None and (num_processes is None or num_processes == 1) and not tpu_pod:
        return _info()  # single process: nothing to join

    if tpu_pod and coordinator_address is None and num_processes is None:
        what = (f"this TPU VM belongs to a pod slice of {pod_hosts} hosts, but not all of them joined within "
                f"{timeout} s. Start the same command on every worker at once (gcloud compute tpus tpu-vm ssh "
                f"<name> --worker=all --command=...); a single host of a pod cannot run alone.")
        kwargs = {}
    else:
        if num_processes is None or num_processes < 1:
            raise ValueError(
                f"distributed.initialize: a coordinator ({coordinator_address}) is set but num_processes is "
                f"{num_processes}; set {ENV_NUM_PROCESSES} (or initialize.num_processes) to the total count."
            )
        if coordinator_address is None:
            raise ValueError(
                f"distributed.initialize: num_processes={num_processes} needs a coordinator; set "
                f"{ENV_COORDINATOR}=host:port (process 0's address) on every process."
            )
        if ":" not in coordinator_address:
            raise ValueError(f"distributed.initialize: coordinator_address {coordinator_address!r} must be host:port.")
        if process_id is None or not 0 <= process_id < num_processes:
            raise ValueError(
                f"distributed.initialize: process_id={process_id} must be in [0, {num_processes}); set "
                f"{ENV_PROCESS_ID} differently on each process."
            )
        what = (f"process {process_id} of {num_processes} waited {timeout} s for all processes to join the "
                f"coordinator at {coordinator_address}. Start all {num_processes} processes (ids 0..{num_processes - 1}, "
                f"same {ENV_COORDINATOR}), check that host:port is reachable from every host, or set "
                f"{ENV_NUM_PROCESSES}=1 for a single-process run.")
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    if local_device_ids is not None:
        kwargs["local_device_ids"] = local_device_ids

    msg = f"agentrl_jax.distributed.initialize failed: {what}"
    # JAX's own deadline is set later than ours so the clear message wins the race.
    done = _watchdog(timeout, msg)
    t0 = time.time()
    try:
        jax.distributed.initialize(initialization_timeout=int(timeout) + 30, **kwargs)
    except Exception as e:  # e.g. bad address, cluster auto-detection failure
        done.set()
        raise RuntimeError(f"{msg} (jax: {type(e).__name__}: {e})") from e
    done.set()
    info = _info()
    log.info("joined %d processes as %d in %.1fs (%d local / %d global devices)", info.process_count,
             info.process_index, time.time() - t0, info.local_device_count, info.device_count)
    return info


def _info() -> ProcessInfo:
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def shutdown() -> None:
    """Leave the multi-process runtime (no-op when single process)."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


# ----------------------------------------------------------------------------------- a process's share
@dataclasses.dataclass(frozen=True)
class HostShare:
    """How the processes of a multi-process job split a batch of episodes and samples (None in one process).

    Every process sees the same global task list (a function of (seed, step)); process at position q of the
    mesh's batch axes plays the contiguous block q of it (`rows`), steps only those episodes, and feeds only
    its own rows to the global programs (`to_global`: generation, scoring, the train step), reading back only
    its own rows (`to_local`). Whole-batch quantities (group baselines, metrics) come from small all-gathers
    (`gather`, `sum`), in position order, so a gathered array is in the single-process episode order.
    """

    mesh: Any
    rules: Any
    count: int  # processes
    position: int  # this process's block along the batch axes
    order: Tuple[int, ...]  # process index at each position

    @classmethod
    def for_mesh(cls, mesh, rules) -> Optional["HostShare"]:
        """The share of this process on `mesh` (batch over the `batch` rule's axes); None with one process."""
        if jax.process_count() == 1:
            return None
        from agentrl_jax import sharding  # noqa: PLC0415  (sharding imports nothing from here)

        divisor = sharding.batch_divisor(mesh, rules)
        rows = sharding.batch_sharding(mesh, rules).devices_indices_map((divisor,))
        owner = {}
        for d, idx in rows.items():
            owner.setdefault(idx[0].start or 0, set()).add(d.process_index)
        if any(len(p) != 1 for p in owner.values()) or len({min(p) for p in owner.values()}) != jax.process_count():
            raise ValueError(f"a {jax.process_count()}-process run needs the batch mesh axes "
                             f"{sharding.batch_axes(mesh, rules)} (mesh {dict(mesh.shape)}) to span every process, "
                             "each holding its own rows: set make_mesh.fsdp (or make_mesh.data) to cover the hosts.")
        by_start = [next(iter(owner[s])) for s in sorted(owner)]
        order = tuple(dict.fromkeys(by_start))
        per = divisor // len(order)
        if by_start != [p for p in order for _ in range(per)]:
            raise ValueError(f"the batch mesh axes interleave the processes' devices (rows owned {by_start}); "
                             "build the mesh so each process holds one contiguous block of the batch.")
        return cls(mesh, tuple(rules), len(order), order.index(jax.process_index()), order)

    # ------------------------------------------------------------------ which rows
    def check_divides(self, total: int, what: str) -> None:
        if total % self.count:
            raise ValueError(f"{what}: {total} episodes do not split evenly over {self.count} processes; use a "
                             f"multiple of {self.count}.")

    def rows(self, total: int, what: str = "batch") -> np.ndarray:
        """This process's rows of a batch of `total` (its contiguous block)."""
        self.check_divides(total, what)
        per = total // self.count
        return np.arange(self.position * per, (self.position + 1) * per)

    def quantum(self) -> int:
        """Rows a process adds to a global batch come in multiples of this (data*fsdp / processes)."""
        from agentrl_jax import sharding  # noqa: PLC0415

        return sharding.batch_divisor(self.mesh, self.rules) // self.count

    def padded(self, n_local: int) -> int:
        q = self.quantum()
        return max(q, -(-n_local // q) * q)

    # ------------------------------------------------------------------ global arrays <-> own rows
    def batch_sharding(self, accum: bool = False):
        from agentrl_jax import sharding  # noqa: PLC0415

        return sharding.batch_sharding(self.mesh, self.rules, accum=accum)

    def to_global(self, tree, accum: bool = False):
        """Each process's own rows (equal counts, a multiple of `quantum()`) stitched into global arrays,
        batch dim over the batch axes."""
        sh = self.batch_sharding(accum)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)), tree)

    def to_local(self, tree):
        """This process's rows (numpy) of global arrays whose leading dim is the batch: resharded over the
        batch axes first, so it works whatever sharding the program that made them chose."""
        sh = self.batch_sharding()
        leaves, treedef = jax.tree.flatten(tree)
        moved = _reshard(tuple(leaves), sh)
        return jax.tree.unflatten(treedef, [_own_rows(x) for x in moved])

    # ------------------------------------------------------------------ whole-batch quantities
    def gather(self, x) -> np.ndarray:
        """Every process's equal-shaped `x`, concatenated along dim 0 in batch (position) order."""
        from jax.experimental import multihost_utils  # noqa: PLC0415

        stacked = np.asarray(multihost_utils.process_allgather(np.asarray(x)))  # [processes, ...], index order
        return np.concatenate([stacked[p] for p in self.order], axis=0)

    def gather_ragged(self, x) -> np.ndarray:
        """`gather` for arrays whose leading dims differ between processes."""
        x = np.asarray(x)
        sizes = self.gather(np.array([x.shape[0]], np.int64))
        pad = np.zeros((int(sizes.max()),) + x.shape[1:], x.dtype)
        pad[: x.shape[0]] = x
        parts = self.gather(pad[None])
        return np.concatenate([parts[i][: sizes[i]] for i in range(self.count)], axis=0)

    def sum(self, values: Dict[str, float]) -> Dict[str, float]:
        """Per-key sums over the processes (every process passes the same keys)."""
        keys = sorted(values)
        total = self.gather(np.array([[float(values[k]) for k in keys]], np.float64)).sum(0)
        return dict(zip(keys, (float(v) for v in total)))

    def any(self, flag: bool) -> bool:
        return bool(self.gather(np.array([bool(flag)])).any())


@functools.partial(jax.jit, static_argnums=1)
def _reshard(leaves, sharding):
    return jax.lax.with_sharding_constraint(leaves, sharding)


def _own_rows(x) -> np.ndarray:
    """The rows of a batch-sharded global array that this process's devices hold, in order."""
    parts = {}
    for s in x.addressable_shards:
        parts.setdefault(s.index[0].start or 0, s.data)
    return np.concatenate([np.asarray(parts[k]) for k in sorted(parts)], axis=0)
