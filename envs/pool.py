"""A robust pool of text environments in worker processes.

`EnvPool(factory, num_workers=W, envs_per_worker=M)` starts W processes at once; each owns M envs built by
`factory()` (a picklable callable returning an `envs.interface.TextEnv`). Env id i lives in worker i // M.
`reset`/`step`/`call` send one request to every worker involved, then gather the replies with a deadline, so
workers run concurrently while a worker steps its own envs one after the other.

Failure handling (the batch always comes back, one `TextStep` per id):
- a Python exception in env code marks only that env's episode (`truncated_reason="env_error: ..."`, the
  traceback in `info["traceback"]`); the worker keeps running and rebuilds that env on its next reset;
- a worker that dies (SIGKILL, segfault, `os._exit`) or misses the deadline is killed with its whole process
  group (JVMs included) and restarted in the background; its envs in the batch come back
  `done=True, truncated=True` with `truncated_reason` "worker_crashed" or "timeout".
- Lost episodes: a restart loses the episodes of *all* envs of that worker. Choice: the pool never raises for
  this; the next `step` on such an env returns at once (without touching the worker)
  `TextStep(done=True, truncated=True, info={"truncated_reason": "needs_reset: <original reason>"})`, and the
  same happens for an env that was never reset. Call `reset` on it to go on. (A `step` after the env's own
  `done=True` is forwarded to the env: that behaviour is the env's.)
- Start-up failures (the factory raises, the worker dies or misses `start_timeout_s` while building its envs)
  are counted per worker; the envs come back `worker_crashed`/`timeout` with the factory's error in
  `info["traceback"]`, and the worker is started again. A worker that never built its envs raises at once
  (the factory does not work here); after it has, `max_init_failures` consecutive failed restarts raise a
  RuntimeError with the factory's traceback. The other workers' replies are read first, and the call's envs
  then need a reset, so a caught error leaves no stale reply behind; the next call that needs the worker
  tries to start it again. A call interrupted by an exception (e.g. a signal handler) kills the workers
  whose replies are still on their way, for the same reason.
- `stats()` counts restarts, timeouts, crashes and env errors for the trainer's logs; each restart after a
  failed call also logs one warning (logger "envs.pool") naming the worker, the reason and how many episodes
  it lost (envs mid-episode or being reset in that worker).
- `timings()` splits the calls' wall time into time inside env code (measured by the workers) and the pool's
  own cost (pipes, pickling, scheduling), within the same calls.

Hygiene: workers get `OMP_NUM_THREADS=1`, `MKL_NUM_THREADS=1`, `JAX_PLATFORMS=cpu` and a small JVM heap
(`JAVA_TOOL_OPTIONS`), optionally one CPU each; each worker leads its own process group, watches its parent
(pipe EOF, `getppid` poll, `PR_SET_PDEATHSIG` on Linux) and kills its group when the parent is gone, so no
worker or JVM outlives the trainer. The gin bindings of the parent are replayed in each worker, so a factory
such as `envs.alfworld.AlfWorldEnv` sees the same gin configuration it would see in the parent.

The pool is not meant to be shared by threads (a lock serialises calls). Because workers are started with
"spawn"/"forkserver", the parent's `__main__` module is re-imported in them: guard scripts with
`if __name__ == "__main__":`.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import warnings
import weakref
from typing import Any, Callable, Mapping, Sequence

import gin

from envs.interface import TextEnv, TextStep

DEFAULT_WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "JAX_PLATFORMS": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "TPU_VISIBLE_CHIPS": "",
    "JAVA_TOOL_OPTIONS": "-Xmx256m -XX:+UseSerialGC",
}

_ENV_LOCK = threading.Lock()  # guards the temporary os.environ patch while a worker is spawned
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EnvFailure:
    """What `EnvPool.call` returns for an env whose call failed (the worker died, hung, or the method raised)."""

    reason: str
    traceback: str = ""


def _failed_step(reason: str, **info: Any) -> TextStep:
    return TextStep(task="", observation="", done=True, truncated=True,
                    info={"truncated_reason": reason, **info})


# --------------------------------------------------------------------------------------------- worker side


def _watch_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Kill this worker's whole process group (and so its JVMs) once the parent is gone."""
    while True:
        if os.getppid() != parent_pid:
            _kill_own_group()
        time.sleep(poll_s)


def _kill_own_group() -> None:
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    finally:
        os._exit(1)


def _set_parent_death_signal() -> None:
    """Linux: get SIGTERM when the parent dies, even while the main thread sits in a long C call."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except Exception:  # pragma: no cover - best effort; the getppid poll still runs
        pass


def _worker_main(conn, factory_bytes: bytes, num_envs: int, env_vars: Mapping[str, str], cpu: int | None,
                 gin_config: str | None) -> None:
    """Entry point of a worker process: build M envs, then serve requests until 'close' or parent death."""
    parent_pid = os.getppid()
    os.setpgrp()  # own process group: the pool (or we) can kill the worker together with its children
    os.environ.update(env_vars)  # before the factory's module (and whatever it imports) is loaded

    def on_term(signum, frame):
        # PDEATHSIG fires when the *thread* that spawned us exits, too: only act if the parent is really gone.
        if os.getppid() != parent_pid:
            _kill_own_group()

    signal.signal(signal.SIGTERM, on_term)
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # parent died before prctl took effect
        _kill_own_group()
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass

    try:
        factory = pickle.loads(factory_bytes)
        gin_warning = None
        if gin_config:
            try:
                gin.parse_config(gin_config, skip_unknown=True)
            except Exception as e:  # a binding that only makes sense in the trainer; the env may not need it
                gin_warning = f"EnvPool worker could not replay the parent's gin config ({type(e).__name__}: {e})"
        envs: list[TextEnv | None] = [factory() for _ in range(num_envs)]
    except BaseException:
        conn.send(("init_error", traceback.format_exc()))
        conn.close()
        os._exit(1)
    conn.send(("ready", os.getpid(), gin_warning))

    broken = [False] * num_envs  # env raised: rebuild it on its next reset

    def run(local: int, fn: Callable[[TextEnv], Any], rebuild: bool):
        try:
            if rebuild and broken[local]:
                try:
                    envs[local].close()
                except Exception:
                    pass
                envs[local] = factory()
                broken[local] = False
            return ("ok", fn(envs[local]))
        except Exception as e:
            broken[local] = True
            return ("err", f"{type(e).__name__}: {e}", traceback.format_exc())

    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            break
        if op == "close":
            break
        started = time.perf_counter()
        if op == "reset":
            out = [run(i, lambda env, s=seed: env.reset(s), True) for i, seed in payload]
        elif op == "step":
            out = [run(i, lambda env, a=action: env.step(a), False) for i, action in payload]
        elif op == "call":
            locals_, method, args = payload
            out = [run(i, lambda env: getattr(env, method)(*args), False) for i in locals_]
        else:
            out = [("err", f"unknown op {op!r}", "")]
        env_s = time.perf_counter() - started  # wall time inside the env calls: what the pool adds is the rest
        try:
            conn.send(("result", out, env_s))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            # an env returned something unpicklable: report per env rather than dying
            msg = f"result not picklable: {e}"
            conn.send(("result", [("err", msg, traceback.format_exc()) for _ in out], env_s))
        except (BrokenPipeError, OSError):
            break
    for env in envs:
        try:
            env.close()
        except Exception:
            pass
    try:
        conn.close()
    finally:
        _kill_children_then_exit()


def _kill_children_then_exit() -> None:
    """Leave nothing behind: a JVM an env forgot to stop shares our process group."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(os.getpgid(0), signal.SIGTERM)
    except OSError:
        pass
    os._exit(0)


# --------------------------------------------------------------------------------------------- parent side


def _zero_timing() -> dict[str, float]:
    return {"calls": 0, "wall_s": 0.0, "env_critical_s": 0.0, "env_total_s": 0.0}


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, index: int):
        self.index = index
        self.proc: mp.process.BaseProcess | None = None
        self.conn: mp_connection.Connection | None = None
        self.ready = False  # built its envs since its last start
        self.ever_ready = False  # built them at least once: the factory works here, a failed restart is retried
        self.started_at = 0.0
        self.starts = 0
        self.init_failures = 0  # consecutive failed starts (raised, died or timed out while building its envs)


def _close_pool(workers: list[_Worker]) -> None:
    """Stop every worker and its process group; used by close(), atexit and the finaliser."""
    for w in workers:
        if w.conn is not None:
            try:
                w.conn.send(("close", None))
            except (OSError, ValueError):
                pass
    deadline = time.monotonic() + 2.0
    for w in workers:
        if w.proc is not None:
            w.proc.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        _kill_worker(w)


def _kill_worker(w: _Worker) -> None:
    if w.proc is not None:
        pid = w.proc.pid
        try:
            os.killpg(pid, signal.SIGKILL)  # the worker leads its group: this takes its JVMs too
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            w.proc.kill()
        except Exception:
            pass
        w.proc.join(5.0)
        try:
            w.proc.close()
        except Exception:
            pass
    if w.conn is not None:
        try:
            w.conn.close()
        except Exception:
            pass
    w.proc, w.conn, w.ready = None, None, False


@gin.configurable(module="envs.pool")
class EnvPool:
    """W worker processes × M text envs each, stepped in batches with timeouts, crash and hang recovery.

    Args:
      env_factory: picklable zero-argument callable returning a `TextEnv` (e.g.
        `functools.partial(AlfWorldEnv, split="train")`); called M times in each worker.
      num_workers: W, processes (one per free CPU core is a good start).
      envs_per_worker: M, envs per process, stepped serially inside it.
      step_timeout_s: deadline of one `step`/`call` batch; a worker that misses it is killed and restarted.
      reset_timeout_s: deadline of one `reset` batch (resets load games: give them longer).
      start_timeout_s: how long a (re)starting worker may take to build its M envs (JVM boots, game loading).
      start_method: "spawn" (default, safe with threads and JAX in the parent) or "forkserver".
      worker_env: environment variables for the workers, merged over `DEFAULT_WORKER_ENV`
        (set a key to override, e.g. `{"JAVA_TOOL_OPTIONS": "-Xmx1g"}`).
      cpu_affinity: None (no pinning), "auto" (worker w → core w mod #cores allowed to the parent) or a
        list of core ids used round-robin.
      max_init_failures: consecutive failed restarts of one worker before the pool raises (with the factory's
        traceback); a worker whose very first start fails raises at once.
      wait_ready: block in the constructor until every worker has built its envs.
    """

    def __init__(self, env_factory: Callable[[], TextEnv], num_workers: int = 1, envs_per_worker: int = 1,
                 step_timeout_s: float = 60.0, reset_timeout_s: float = 120.0, start_timeout_s: float = 300.0,
                 start_method: str = "spawn", worker_env: Mapping[str, str] | None = None,
                 cpu_affinity: str | Sequence[int] | None = None, max_init_failures: int = 3,
                 wait_ready: bool = True):
        if not callable(env_factory):
            raise ValueError(f"env_factory must be a callable returning a TextEnv, got {env_factory!r}")
        for name, v in (("num_workers", num_workers), ("envs_per_worker", envs_per_worker),
                        ("max_init_failures", max_init_failures)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name, v in (("step_timeout_s", step_timeout_s), ("reset_timeout_s", reset_timeout_s),
                        ("start_timeout_s", start_timeout_s)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {v!r}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver' (fork is unsafe with JAX/JVM "
                             f"threads), got {start_method!r}")
        try:
            self._factory_bytes = pickle.dumps(env_factory)
        except Exception as e:
            raise ValueError(f"env_factory must be picklable (a module-level class or functools.partial of "
                             f"one, not a lambda or local function): {e}") from e
        self.num_workers = num_workers
        self.envs_per_worker = envs_per_worker
        self.num_envs = num_workers * envs_per_worker
        self.step_timeout_s = float(step_timeout_s)
        self.reset_timeout_s = float(reset_timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.max_init_failures = max_init_failures
        self._ctx = mp.get_context(start_method)
        self._env_vars = {**DEFAULT_WORKER_ENV, **dict(worker_env or {})}
        self._cpus = self._resolve_affinity(cpu_affinity)
        try:
            self._gin_config = gin.config_str()
        except Exception:
            self._gin_config = None
        self._lock = threading.RLock()
        self._closed = False
        self._warned_gin = False
        self._stats = {"restarts": 0, "timeouts": 0, "crashes": 0, "env_errors": 0, "resets": 0, "steps": 0}
        self._timing = _zero_timing()
        # per env: None = an episode is running (as far as the pool knows), else why the env needs a reset
        self._lost: list[str | None] = ["not_reset"] * self.num_envs
        # per env: an episode is under way (reset, not yet done): what a restart loses, for its warning
        self._running: list[bool] = [False] * self.num_envs
        self._workers = [_Worker(i) for i in range(num_workers)]
        self._finalizer = weakref.finalize(self, _close_pool, self._workers)
        atexit.register(self._finalizer)
        self.start_time_s = 0.0
        t0 = time.monotonic()
        try:
            for w in self._workers:  # all at once: JVMs and game loading overlap
                self._start(w)
            if wait_ready:
                self.ready(self.start_timeout_s)
        except BaseException:
            self.close()
            raise
        self.start_time_s = time.monotonic() - t0

    # ------------------------------------------------------------------ lifecycle

    def _resolve_affinity(self, cpu_affinity) -> list[int] | None:
        if cpu_affinity is None:
            return None
        if cpu_affinity == "auto":
            allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            return allowed or None
        if isinstance(cpu_affinity, str) or not all(isinstance(c, int) and c >= 0 for c in cpu_affinity):
            raise ValueError(f"cpu_affinity must be None, 'auto' or a list of core ids, got {cpu_affinity!r}")
        return list(cpu_affinity) or None

    def _start(self, w: _Worker) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        cpu = self._cpus[w.index % len(self._cpus)] if self._cpus else None
        proc = self._ctx.Process(
            target=_worker_main, name=f"EnvPool-worker-{w.index}", daemon=True,
            args=(child_conn, self._factory_bytes, self.envs_per_worker, self._env_vars, cpu, self._gin_config))
        with _ENV_LOCK:  # the spawned interpreter starts with these already set (matters for jax/numpy imports)
            saved = {k: os.environ.get(k) for k in self._env_vars}
            os.environ.update(self._env_vars)
            try:
                proc.start()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        child_conn.close()  # else the parent keeps the pipe open and never sees EOF when the worker dies
        w.proc, w.conn, w.ready, w.started_at = proc, parent_conn, False, time.monotonic()
        if w.starts:
            self._stats["restarts"] += 1
        w.starts += 1

    def _stop(self, w: _Worker, reason: str) -> list[int]:
        """Kill a worker; its envs lose their episodes (returned: the env ids that were mid-episode). The next
        call that needs it starts it again."""
        _kill_worker(w)
        lost = [i for i in self._ids_of(w.index) if self._running[i]]
        for i in self._ids_of(w.index):
            self._lost[i], self._running[i] = reason, False
        return lost

    def _restart(self, w: _Worker, reason: str, starting: bool = False) -> None:
        lost = self._stop(w, reason)
        self._start(w)
        _log.warning("EnvPool worker %d restarted after %s%s: %d episode(s) lost (env ids %s)", w.index, reason,
                     " while starting" if starting else "", len(lost), lost)

    def _ids_of(self, worker: int) -> range:
        return range(worker * self.envs_per_worker, (worker + 1) * self.envs_per_worker)

    @staticmethod
    def _recv(w: _Worker):
        """The worker's next message, or None if it died (EOF)."""
        try:
            return w.conn.recv()
        except (EOFError, OSError):
            return None

    @staticmethod
    def _send(w: _Worker, request) -> bool:
        try:
            w.conn.send(request)
            return True
        except (OSError, ValueError, AttributeError):
            return False

    def _on_start_message(self, w: _Worker, msg) -> str | None:
        """Handle the first message of a starting worker: "ready", "init_error" (with the factory's traceback)
        or None (it died first). Returns None once it is ready, else why the start failed (it is then killed
        and the failure counted)."""
        if msg is not None and msg[0] == "ready":
            w.ready, w.ever_ready, w.init_failures = True, True, 0
            if len(msg) > 2 and msg[2] and not self._warned_gin:
                self._warned_gin = True
                warnings.warn(msg[2], RuntimeWarning)
            return None
        if msg is not None and msg[0] == "init_error":
            error = msg[1]
        else:
            if w.proc is not None:
                w.proc.join(1.0)
            code = w.proc.exitcode if w.proc is not None else None
            error = f"worker {w.index} died while building its envs (exit code {code})"
        return self._start_failed(w, error)

    def _start_failed(self, w: _Worker, error: str) -> str:
        w.init_failures += 1
        _kill_worker(w)
        return error

    def _start_error(self, w: _Worker, error: str) -> RuntimeError | None:
        """The error to raise for a failed start, or None while the worker may be restarted: a worker that never
        built its envs fails at once (the factory does not work here); after that, `max_init_failures`
        consecutive failed restarts."""
        if not w.ever_ready:
            why = "on its first start"
        elif w.init_failures >= self.max_init_failures:
            why = (f"{w.init_failures} consecutive failed restarts, max_init_failures = "
                   f"{self.max_init_failures}")
        else:
            return None
        return RuntimeError(f"EnvPool worker {w.index} could not build its envs ({why}); fix the env_factory "
                            f"(a call that needs this worker starts it again). The factory's error:\n{error}")

    def ready(self, timeout_s: float | None = None) -> None:
        """Block until every worker has built its envs; raise TimeoutError/RuntimeError otherwise."""
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                pending = [w for w in self._workers if not w.ready]
                if not pending:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"EnvPool: workers {[w.index for w in pending]} not ready after "
                                       f"{timeout_s:.0f}s; raise start_timeout_s if env construction is slow")
                for w in pending:
                    if w.proc is None:  # stopped after failing to start: try again
                        self._start(w)
                for conn in mp_connection.wait([w.conn for w in pending], timeout=left):
                    w = next(w for w in pending if w.conn is conn)
                    error = self._on_start_message(w, self._recv(w))
                    if error is None:
                        continue
                    fatal = self._start_error(w, error)
                    if fatal is not None:
                        raise fatal
                    self._start(w)

    def close(self) -> None:
        """Stop all workers (and their children); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._finalizer()
            atexit.unregister(self._finalizer)

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Counters for logging: restarts, timeouts, crashes, env_errors, resets, steps."""
        return dict(self._stats)

    def timings(self, reset: bool = False) -> dict[str, float]:
        """Where the time of the batched calls went, measured inside the same calls (so it is independent of how
        much an env's own step cost varies): `wall_s` = parent wall time of all calls; `env_critical_s` = per call
        the slowest worker's time inside env code, summed; `env_total_s` = all workers' env time;
        `pool_overhead` = wall_s / env_critical_s - 1 (pipes, pickling, scheduling: the pool's own cost).
        `reset=True` zeroes the counters after reading them."""
        t = dict(self._timing)
        t["pool_overhead"] = t["wall_s"] / t["env_critical_s"] - 1.0 if t["env_critical_s"] > 0 else 0.0
        if reset:
            self._timing = _zero_timing()
        return t

    def worker_pids(self) -> list[int | None]:
        """Process ids of the current workers (they change after a restart)."""
        return [w.proc.pid if w.proc is not None else None for w in self._workers]

    # ------------------------------------------------------------------ batched calls

    def reset(self, ids: Sequence[int], seeds: Sequence[int]) -> list[TextStep]:
        """Start a new episode in each env `ids[k]` with `seeds[k]`; one TextStep per id, in order."""
        ids = self._check_ids(ids)
        if len(seeds) != len(ids):
            raise ValueError(f"reset: got {len(ids)} ids but {len(seeds)} seeds; pass one seed per id")
        with self._lock:
            self._stats["resets"] += len(ids)
            for i in ids:  # the caller's new episodes: lost too if the worker dies during the reset
                self._running[i] = True
            out = self._dispatch("reset", ids, [int(s) for s in seeds], self.reset_timeout_s)
            for i, r in zip(ids, out):
                self._lost[i] = None if self._is_ok(r) else self._lost[i] or "failed_reset"
                self._running[i] = self._is_ok(r)
            return [self._as_step(r) for r in out]

    def step(self, ids: Sequence[int], actions: Sequence[str]) -> list[TextStep]:
        """Apply `actions[k]` to env `ids[k]`; one TextStep per id, in order (see module doc for failures)."""
        ids = self._check_ids(ids)
        if len(actions) != len(ids):
            raise ValueError(f"step: got {len(ids)} ids but {len(actions)} actions; pass one action per id")
        if not all(isinstance(a, str) for a in actions):
            raise ValueError("step: actions must be strings")
        with self._lock:
            self._stats["steps"] += len(ids)
            results: list[Any] = [None] * len(ids)
            live = [k for k, i in enumerate(ids) if self._lost[i] is None]
            for k, i in enumerate(ids):
                if self._lost[i] is not None:
                    results[k] = ("pool", _failed_step(f"needs_reset: {self._lost[i]}"))
            if live:
                got = self._dispatch("step", [ids[k] for k in live], [actions[k] for k in live],
                                     self.step_timeout_s)
                for k, r in zip(live, got):
                    results[k] = r
                    self._running[ids[k]] = self._is_ok(r) and not r[1].done
                    if not self._is_ok(r) and self._lost[ids[k]] is None:
                        self._lost[ids[k]] = self._as_step(r).info["truncated_reason"]
            return [self._as_step(r) for r in results]

    def call(self, ids: Sequence[int], method_name: str, *args: Any) -> list[Any]:
        """Call `env.method_name(*args)` on each env (e.g. "expert_actions"); an `EnvFailure` where it failed."""
        ids = self._check_ids(ids)
        if not isinstance(method_name, str) or method_name.startswith("_"):
            raise ValueError(f"call: method_name must be a public method name, got {method_name!r}")
        with self._lock:
            out = self._dispatch("call", ids, [(method_name, args)] * len(ids), self.step_timeout_s)
            values = []
            for i, r in zip(ids, out):
                if r[0] == "ok":
                    values.append(r[1])
                elif r[0] == "err":
                    values.append(EnvFailure(f"env_error: {r[1]}", r[2]))
                else:
                    values.append(EnvFailure(r[1].info["truncated_reason"]))
            return values

    # ------------------------------------------------------------------ internals

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        if self._closed:
            raise RuntimeError("EnvPool is closed")
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.num_envs]
        if bad:
            raise ValueError(f"env ids {bad} out of range: this pool has ids 0..{self.num_envs - 1} "
                             f"(num_workers × envs_per_worker)")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate env ids in one call: {ids}; an env takes one action per call")
        return ids

    @staticmethod
    def _is_ok(r) -> bool:
        return r[0] == "ok"

    def _as_step(self, r) -> TextStep:
        if r[0] == "ok":
            return r[1]
        if r[0] == "err":
            return _failed_step(f"env_error: {r[1]}", traceback=r[2])
        return r[1]  # ("pool", TextStep)

    def _dispatch(self, op: str, ids: list[int], args: list[Any], timeout_s: float) -> list[Any]:
        """Send one request per worker, gather with deadlines, recover failed workers. Results in id order.

        Every worker that got a request is read (or killed) before this returns or raises, so no reply is
        left in a pipe to be taken for the next call's. A worker still starting gets its request once it is
        ready; a start-up failure is counted, and past the limit (see `_start_error`) it is raised after the
        other workers' replies are in; the envs of the call then need a reset (the caller never saw them).
        """
        by_worker: dict[int, list[int]] = {}
        for k, i in enumerate(ids):
            by_worker.setdefault(i // self.envs_per_worker, []).append(k)
        requests = {wi: (op, self._payload(op, ids, args, wi, ks)) for wi, ks in by_worker.items()}
        results: list[Any] = [None] * len(ids)
        call_started = time.perf_counter()
        env_times: list[float] = []
        deadlines: dict[int, float] = {}
        failed: dict[int, str] = {}
        start_errors: dict[int, str] = {}
        given_up: dict[int, RuntimeError] = {}
        sent: set[int] = set()

        def send(wi: int) -> None:
            w = self._workers[wi]
            deadlines[wi] = time.monotonic() + timeout_s
            if self._send(w, requests[wi]):
                sent.add(wi)
            else:
                failed[wi] = "worker_crashed"

        def start_failed(wi: int, reason: str, error: str) -> None:
            failed[wi], start_errors[wi] = reason, error
            fatal = self._start_error(self._workers[wi], error)
            if fatal is not None:
                given_up[wi] = fatal

        for wi in by_worker:
            w = self._workers[wi]
            if w.proc is None:  # stopped after failing to start, or by an interrupted call: start it again
                self._start(w)
            if w.ready:
                send(wi)
            else:  # its request goes out once it has built its envs
                deadlines[wi] = w.started_at + self.start_timeout_s
        pending = {wi for wi in by_worker if wi not in failed}
        try:
            while pending:
                left = min(deadlines[wi] for wi in pending) - time.monotonic()
                ready_conns = mp_connection.wait([self._workers[wi].conn for wi in pending],
                                                 timeout=max(0.0, left))
                for conn in ready_conns:
                    wi = next(wi for wi in pending if self._workers[wi].conn is conn)
                    w = self._workers[wi]
                    msg = self._recv(w)
                    if not w.ready:
                        error = self._on_start_message(w, msg)
                        if error is None:
                            send(wi)
                            if wi in failed:
                                pending.discard(wi)
                        else:
                            start_failed(wi, "worker_crashed", error)
                            pending.discard(wi)
                        continue
                    pending.discard(wi)
                    if msg is None:
                        failed[wi] = "worker_crashed"
                        continue
                    for k, r in zip(by_worker[wi], msg[1]):
                        results[k] = r
                    env_times.append(float(msg[2]))
                now = time.monotonic()
                for wi in list(pending):
                    if now >= deadlines[wi]:
                        pending.discard(wi)
                        w = self._workers[wi]
                        if w.ready:
                            failed[wi] = "timeout"
                        else:
                            start_failed(wi, "timeout", self._start_failed(
                                w, f"worker {wi} did not build its envs within start_timeout_s = "
                                   f"{self.start_timeout_s:g} s"))
        except BaseException:
            # Interrupted mid-call (e.g. a signal handler raised): replies may still be on their way, and would
            # be read as the next call's. Stop those workers; the next call that needs them starts them again.
            for wi in pending & sent:
                self._stop(self._workers[wi], "interrupted_call")
            self._mark_unseen(ids, "interrupted_call")
            raise
        if not failed and env_times:  # calls with a restart would only blur the split
            self._timing["calls"] += 1
            self._timing["wall_s"] += time.perf_counter() - call_started
            self._timing["env_critical_s"] += max(env_times)
            self._timing["env_total_s"] += sum(env_times)
        for wi, reason in failed.items():
            if reason == "timeout":
                self._stats["timeouts"] += 1
            else:
                self._stats["crashes"] += 1
            extra = {"traceback": start_errors[wi]} if wi in start_errors else {}
            for k in by_worker[wi]:
                results[k] = ("pool", _failed_step(reason, **extra))
            if wi in given_up:
                self._stop(self._workers[wi], reason)
            else:
                self._restart(self._workers[wi], reason, starting=wi in start_errors)
        for k, r in enumerate(results):
            if r[0] == "err":
                self._stats["env_errors"] += 1
        if given_up:
            self._mark_unseen(ids, "pool_error")
            raise given_up[min(given_up)]
        return results

    def _mark_unseen(self, ids: list[int], reason: str) -> None:
        """A call that raises returns nothing: its envs' episodes are unknown to the caller, so they need a reset."""
        for i in ids:
            if self._lost[i] is None:
                self._lost[i] = reason
            self._running[i] = False  # lost here already, not by a later restart

    def _payload(self, op: str, ids: list[int], args: list[Any], wi: int, ks: list[int]):
        locals_ = [ids[k] - wi * self.envs_per_worker for k in ks]
        if op == "call":
            return (locals_, args[ks[0]][0], args[ks[0]][1])
        return [(loc, args[k]) for loc, k in zip(locals_, ks)]


# --------------------------------------------------------------------------------------------- debug env


class _DebugEnv(TextEnv):
    """A tiny deterministic env for testing the pool (picklable, importable in workers).

    State: an integer; `reset(seed)` sets it to seed, `step("add N")` adds N. Control actions:
    "sleep S" (hang S seconds), "raise" (exception in env code), "crash" (SIGKILL itself),
    "segfault", "spawn_child" (start a long `sleep` child, to stand in for a JVM; its pid is returned).
    While the file `init_fault_file` exists, building the env fails: "exit" in it makes the process exit,
    anything else makes the constructor raise (start-up failures of a worker).
    """

    max_steps = 20

    def __init__(self, max_steps: int = 20, init_fault_file: str | None = None):
        if init_fault_file is not None and os.path.exists(init_fault_file):
            with open(init_fault_file) as f:
                how = f.read().strip()
            if how == "exit":
                os._exit(3)
            raise RuntimeError(f"debug env asked to fail at start-up ({init_fault_file}: {how!r})")
        self.max_steps = max_steps
        self.value = 0
        self.t = 0
        self.seed = None
        self.children: list = []

    def _obs(self, reward=0.0, done=False, **info) -> TextStep:
        return TextStep(task=f"reach {self.seed + 10}", observation=f"value {self.value} at t={self.t}",
                        admissible_actions=("add 1", "add 2"), reward=reward, done=done,
                        success=done and self.value == self.seed + 10,
                        info={"pid": os.getpid(), **info})

    def getenv(self, name: str) -> str | None:
        return os.environ.get(name)

    def affinity(self) -> list[int]:
        return sorted(os.sched_getaffinity(0))

    def expert_actions(self) -> list[str]:
        return ["add 2"] * ((self.seed + 10 - self.value) // 2) + ["add 1"] * ((self.seed + 10 - self.value) % 2)

    def reset(self, seed: int) -> TextStep:
        self.seed, self.value, self.t = seed, seed, 0
        return self._obs()

    def step(self, action: str) -> TextStep:
        import subprocess

        if action.startswith("sleep"):
            time.sleep(float(action.split()[1]))
        elif action == "raise":
            raise RuntimeError("debug env asked to raise")
        elif action == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "segfault":
            import ctypes

            ctypes.string_at(0)
        elif action == "spawn_child":
            p = subprocess.Popen(["sleep", "1000"])
            self.children.append(p)
            return self._obs(child_pid=p.pid)
        elif action.startswith("add"):
            self.value += int(action.split()[1])
        self.t += 1
        done = self.value >= self.seed + 10 or self.t >= self.max_steps
        return self._obs(reward=10.0 if self.value == self.seed + 10 else 0.0, done=done)
