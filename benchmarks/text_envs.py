"""Text-env throughput: a plain serial loop vs `EnvPool` with W = 1, 2 workers, for 1, 8, 32 envs.

    python benchmarks/text_envs.py --env alfworld --json text_envs.json      # default run (< ~10 min idle)
    python benchmarks/text_envs.py --env alfworld --quick                     # 1 and 8 envs, short
    python benchmarks/text_envs.py --env all                                  # every env below

Same work in every mode: env i plays seed i (an ALFWorld game, a SciWorld (task, variation), a Sokoban
level, a WebShop validation goal) and replays that episode's expert script (ALFWorld walkthrough, SciWorld gold
path, Sokoban BFS plan, WebShop's scripted purchase, the debug env's plan). A round steps every env once with the next action of its script (one batched
`pool.step` call, or one pass of the serial loop); an env whose episode ended or whose script ran out is
reset to the same seed off the clock and replays it. Each repetition starts from a reset of all envs, so
every repetition of every mode executes the identical (env, seed, action) sequence; the benchmark checks
that (a digest of the sequence and of each step's done flag) and, on the untimed warm-up repetition, that
every mode saw the same observations, rewards and done flags, and it raises if any of that differs or a
pool call failed (timeout, crash, env error).

Timing: the warm-up repetition (jit compiles, JVM JIT, per-process caches of the env) is off the clock and
replays exactly the timed work, so pool workers and the parent start the clock equally warm. Then `--reps`
repetitions run interleaved (serial, W=1, W=2, serial, W=1, W=2, ...) so load drift hits every mode alike;
rates are medians over repetitions. Only the step calls are timed (resets are not).

Same process environment: by default this process (where the serial loop runs) takes the workers'
`envs.pool.DEFAULT_WORKER_ENV` (one BLAS/OpenMP thread, ...) before any env library is imported, so the
modes differ only by the pool (`--parent-env inherit` keeps the shell's; an unpinned BLAS thread pool in the
parent burned ~1.5x the CPU per ALFWorld step on the shared 2-core box).

Columns: steps/s (median over repetitions; ±% = half the min-max spread), overhead = 1 - pool/serial rate
(the W=1 target is < 10%), ms/call+ = extra wall time of one batched call over the serial loop, scaling = rate(W) / rate(W=1) with the ideal min(W, cores) in brackets,
reset ms = wall time of the reset calls per env reset (resets are off the clock of steps/s; a pool resets a batch
in one call), start-up (building the envs + first reset), MB/env (serial: RSS growth of this process and its children,
e.g. JVMs; pool: RSS of the worker process trees, / envs), parent CPU µs per env step (serial: the env work
itself; pool: what the parent spends on pipes and pickling), env CPU ms = CPU per env step of the processes
that step the envs, around the step calls only (serial: this process; pool: the workers), CPU ovh = pool env
CPU / serial env CPU - 1, paired per repetition (independent of other load, unlike the wall columns),
pool own = the pool's own cost inside the same calls: wall time of the step calls / the slowest worker's time in
env code (`EnvPool.timings()`) - 1; immune to the env's step cost varying between processes and repetitions,
which swamps the overhead column on a small shared machine. host = the scaling of W CPU-bound Python
processes on this machine (`HostProbe`), measured between the repetitions: the ceiling any pool could reach
right now (on a shared 2-core VM it was 1.72-1.96 for W=2). balance = the ceiling the split of the work across
workers allows: the workers' summed env time / the slowest worker's, per call (a worker whose envs finish first
waits for the others). of ceil = scaling / min(host, balance): how much of what the machine and the work allow
the pool reaches. load = 1-min load average during the block.
Below each block: the pickled size of a TextStep and the time to pickle + unpickle one (the pool's
serialisation cost, sent once per worker per batch).

Add an env by putting a zero-argument function returning a picklable env factory into `ENV_FACTORIES`; its
envs' `expert_actions()` after `reset(seed)` gives the script (else a fixed fallback script).
Keep module-level imports light: spawned workers re-import this file as `__mp_main__`.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import pickle
import statistics
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

# SciWorld tasks with short, reproducible gold paths (test-conductivity's gold path takes seconds to compute).
SCIWORLD_TASKS = ("boil", "chemistry-mix", "find-animal", "grow-plant", "use-thermometer")


def _alfworld():
    from envs.alfworld import alfworld_factory

    os.environ.setdefault("ALFWORLD_DATA", os.path.join(os.path.dirname(__file__), "..", "data", "alfworld"))
    return alfworld_factory(split="train", max_steps=50)


def _sokoban_text():
    from envs.sokoban.text_env import SokobanTextEnv

    return functools.partial(SokobanTextEnv)


def _sciworld():
    # reproducible_text: without it the JVM lists objects (and breaks gold-path ties) in an order that
    # depends on its history, so the same script could do different work in different processes.
    from envs.sciworld import SciWorldEnv

    return functools.partial(SciWorldEnv, task_names=SCIWORLD_TASKS, split="train", max_steps=100,
                             reproducible_text=True)


def _webshop():
    # the vendored 1000-product set; every env of a worker shares one catalog, index and tagger
    from envs.webshop import webshop_factory

    return webshop_factory(split="validation")


def _debug():
    from envs.pool import _DebugEnv

    return functools.partial(_DebugEnv, max_steps=10**9)


# name -> () -> picklable zero-argument factory of a TextEnv
ENV_FACTORIES = {
    "alfworld": _alfworld,
    "sokoban_text": _sokoban_text,
    "sciworld": _sciworld,
    "webshop": _webshop,
    "debug": _debug,  # pure pool overhead: a step costs microseconds
}
# (rounds, reps) per env: default run, --quick run
ROUNDS = {"alfworld": ((6, 3), (4, 2)), "sciworld": ((20, 3), (5, 2)), "sokoban_text": ((40, 5), (10, 2)),
          "webshop": ((60, 5), (20, 2)), "debug": ((1000, 5), (100, 2))}
MAX_SCRIPT = 100
# pool failures (not the env's own step limit) make a benchmark run meaningless
_FAILURE_PREFIXES = ("timeout", "worker_crashed", "env_error", "needs_reset", "failed_reset")


def _rss_tree(pids) -> int:
    """RSS of these processes and all their descendants, bytes."""
    import psutil

    total = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            total += p.memory_info().rss
            for c in p.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
    return total


# --------------------------------------------------------------------------------------------- runners


class SerialRunner:
    """n envs in this process, stepped one after the other (the reference)."""

    mode = "serial"
    workers = 0

    def __init__(self, factory, n: int):
        self.envs = [factory() for _ in range(n)]

    def reset(self, ids, seeds):
        return [self.envs[i].reset(s) for i, s in zip(ids, seeds)]

    def step(self, actions):
        return [env.step(a) for env, a in zip(self.envs, actions)]

    def expert_actions(self, ids):
        return [self.envs[i].expert_actions() for i in ids]

    def env_cpu_s(self) -> float:
        """CPU seconds spent so far by the processes that step the envs (here: this one)."""
        return time.process_time()

    def env_seconds_in_last_step(self):
        return None  # the serial loop's step call is all env time

    def close(self):
        for env in self.envs:
            env.close()


class PoolRunner:
    """n envs in an `EnvPool` of `workers` processes; a round is one batched `step` call."""

    def __init__(self, factory, n: int, workers: int, cpu_affinity=None):
        from envs.pool import EnvPool

        self.mode, self.workers = f"pool W={workers}", workers
        self.ids = list(range(n))
        self.pool = EnvPool(factory, num_workers=workers, envs_per_worker=n // workers, step_timeout_s=600,
                            reset_timeout_s=600, start_timeout_s=600, cpu_affinity=cpu_affinity)

    def reset(self, ids, seeds):
        return self.pool.reset(ids, seeds)

    def step(self, actions):
        self.pool.timings(reset=True)
        return self.pool.step(self.ids, actions)

    def env_seconds_in_last_step(self):
        """(slowest worker's, all workers' summed) time inside env code during the last step call, measured by
        the workers."""
        t = self.pool.timings()
        return (t["env_critical_s"], t["env_total_s"]) if t["calls"] == 1 else None

    def memory_bytes(self) -> int:
        return _rss_tree([p for p in self.pool.worker_pids() if p is not None])

    def env_cpu_s(self) -> float:
        """CPU seconds (user + system) spent so far by the worker processes."""
        import psutil

        total = 0.0
        for pid in self.pool.worker_pids():
            try:
                t = psutil.Process(pid).cpu_times() if pid is not None else None
            except psutil.NoSuchProcess:
                t = None
            total += (t.user + t.system) if t is not None else 0.0
        return total

    def close(self):
        self.pool.close()


def _check_ok(mode, steps) -> None:
    for i, s in enumerate(steps):
        reason = str(s.info.get("truncated_reason", "")) if s.truncated else ""
        if reason.startswith(_FAILURE_PREFIXES):
            raise RuntimeError(f"{mode}: env {i} failed ({reason}); the run would not measure the same work "
                               f"in every mode. Traceback from the env, if any:\n{s.info.get('traceback', '')}")


def make_plan(runner: SerialRunner, seeds) -> list[tuple[int, tuple[str, ...]]]:
    """(seed, script) per env: the env's expert actions right after `reset(seed)`, capped at MAX_SCRIPT."""
    ids = list(range(len(seeds)))
    first = runner.reset(ids, seeds)
    plan = []
    for seed, s, script in zip(seeds, first, runner.expert_actions(ids)):
        script = [str(a) for a in (script or ())][:MAX_SCRIPT]
        if not script:  # no expert known: a fixed, deterministic script
            script = [(s.admissible_actions or ("look",))[0]] * 8
        plan.append((int(seed), tuple(script)))
    return plan


def replay(runner, plan, rounds: int, record: bool = False) -> dict:
    """Reset every env to its seed, then `rounds` batched steps of the scripts; only the step calls are timed.

    An env whose episode ended or whose script ran out is reset to its seed (off the clock) and replays.
    Returns wall and parent-CPU seconds of the step calls, the env steps done, a digest of the executed
    (env, seed, action, done) sequence and, with `record`, every step's (observation, reward, done, success).
    """
    n = len(plan)
    ids, seeds = list(range(n)), [seed for seed, _ in plan]
    t_reset = time.perf_counter()
    _check_ok(runner.mode, runner.reset(ids, seeds))
    reset_wall, resets = time.perf_counter() - t_reset, n
    pos = [0] * n
    wall = cpu = env_cpu = 0.0
    env_wall, env_sum, split_ok = 0.0, 0.0, True
    digest = hashlib.sha1()
    seen, outs = [], []
    for _ in range(rounds):
        actions = [plan[i][1][pos[i]] for i in ids]
        e0 = runner.env_cpu_s()
        c0, t0 = time.process_time(), time.perf_counter()
        out = runner.step(actions)
        t1, c1 = time.perf_counter(), time.process_time()
        env_cpu += runner.env_cpu_s() - e0
        inside = runner.env_seconds_in_last_step()
        split_ok = split_ok and inside is not None
        slowest, summed = inside or (0.0, 0.0)
        env_wall += slowest
        env_sum += summed
        wall += t1 - t0
        cpu += c1 - c0
        _check_ok(runner.mode, out)
        digest.update("".join(f"{i}|{seeds[i]}|{a}|{s.done}\n" for i, (a, s) in enumerate(zip(actions, out)))
                      .encode())
        if record:
            seen.append([(s.observation, s.reward, s.done, s.success) for s in out])
            outs.append(out)
        pos = [p + 1 for p in pos]
        again = [i for i in ids if out[i].done or pos[i] >= len(plan[i][1])]
        if again:
            t_reset = time.perf_counter()
            _check_ok(runner.mode, runner.reset(again, [seeds[i] for i in again]))
            reset_wall, resets = reset_wall + time.perf_counter() - t_reset, resets + len(again)
            for i in again:
                pos[i] = 0
    return {"wall_s": wall, "cpu_s": cpu, "env_cpu_s": env_cpu, "steps": rounds * n, "digest": digest.hexdigest(), "seen": seen,
            "outs": outs, "env_wall_s": env_wall if split_ok else None, "env_sum_s": env_sum if split_ok else None,
            "reset_s": reset_wall, "resets": resets}


def _compare(ref: dict, other: dict, mode: str) -> None:
    """Raise unless `other` saw exactly what the serial reference saw (warm-up repetition)."""
    if ref["digest"] != other["digest"]:
        raise RuntimeError(f"{mode} executed a different (env, seed, action, done) sequence than the serial loop")
    for r, (a, b) in enumerate(zip(ref["seen"], other["seen"])):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                raise RuntimeError(f"{mode}: env {i} round {r} differs from the serial loop:\n serial: {x!r}\n "
                                   f"{mode}: {y!r}\nthe env is not deterministic across processes; make it so "
                                   f"(e.g. SciWorldEnv(reproducible_text=True)) before timing it")


def _pickle_cost(outs) -> tuple[float, float]:
    """(bytes, µs) per TextStep to pickle and unpickle the recorded batches, as the pool does per batch."""
    steps = [s for batch in outs for s in batch]
    if not steps:
        return 0.0, 0.0
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for batch in outs:
            pickle.loads(pickle.dumps(("result", [("ok", s) for s in batch]), protocol=pickle.HIGHEST_PROTOCOL))
        best = min(best, time.perf_counter() - t)
    size = sum(len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in steps)
    return size / len(steps), 1e6 * best / len(steps)


# --------------------------------------------------------------------------------------------- host probe


# A worker of the host probe: a fresh interpreter that, for each number n read on stdin, runs pure-Python work
# like a text env's (dict and string churn, n iterations) and answers with its wall seconds.
_BUSY_WORKER = """
import sys, time
for line in sys.stdin:
    t = time.perf_counter()
    d = {}
    for i in range(int(line)):
        d[i % 997] = str(i)
        d.get((i * 7) % 997, "")
    print(time.perf_counter() - t, flush=True)
"""


class HostProbe:
    """How well THIS machine runs w CPU-bound Python processes at once, right now: w * t(1 process) / t(w
    processes, each doing the same work). The ceiling any process pool could reach for `scaling`; on a
    shared VM it moves with the neighbours' load, so it is measured interleaved with the pool runs."""

    def __init__(self, max_workers: int, n: int = 400_000):
        import subprocess

        self.n = n
        self.procs = [subprocess.Popen([sys.executable, "-c", _BUSY_WORKER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for _ in range(max_workers)]
        self._run(max_workers, 1000)  # every interpreter started and warm

    def _run(self, w: int, n: int) -> float:
        """Wall seconds for w of the processes to each finish n iterations, started together."""
        t = time.perf_counter()
        for p in self.procs[:w]:
            p.stdin.write(f"{n}\n")
            p.stdin.flush()
        for p in self.procs[:w]:
            float(p.stdout.readline())
        return time.perf_counter() - t

    def scaling(self, w: int) -> float:
        one = self._run(1, self.n)
        return w * one / self._run(w, self.n)

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()
            p.wait(timeout=10)


# --------------------------------------------------------------------------------------------- benchmark


def bench_size(env_name: str, factory, n: int, worker_counts, rounds: int, reps: int,
               mem_budget_mb: float | None = None, cpu_affinity=None) -> list[dict]:
    """All modes for `n` envs, alive together, replayed interleaved; one row per mode."""
    import psutil

    worker_counts = [w for w in worker_counts if w <= n and n % w == 0]
    me = os.getpid()
    rss0 = _rss_tree([me])
    t0 = time.perf_counter()
    serial = SerialRunner(factory, n)
    runners, startup, mem = [serial], {}, {}
    probe = None
    try:
        plan = make_plan(serial, list(range(n)))  # includes the first reset
        startup["serial"] = time.perf_counter() - t0
        mem["serial"] = max(0, _rss_tree([me]) - rss0) / n
        need = mem["serial"] * n * len(worker_counts) / 2**20
        if mem_budget_mb is not None and need > mem_budget_mb:
            print(f"[{env_name} {n} envs] skipped pools: they would need ~{need:.0f} MB more "
                  f"(> {mem_budget_mb:.0f} MB available); run with fewer --sizes or on a bigger machine",
                  flush=True)
            worker_counts = []
        for w in worker_counts:
            t = time.perf_counter()
            p = PoolRunner(factory, n, w, cpu_affinity)
            runners.append(p)
            _check_ok(p.mode, p.reset(list(range(n)), [seed for seed, _ in plan]))
            startup[p.mode] = time.perf_counter() - t
            mem[p.mode] = p.memory_bytes() / n

        # warm-up: the exact timed work, off the clock, observations compared across modes
        warm = {r.mode: replay(r, plan, rounds, record=True) for r in runners}
        for r in runners[1:]:
            _compare(warm["serial"], warm[r.mode], r.mode)
        pk_bytes, pk_us = _pickle_cost(warm["serial"]["outs"])

        res = {r.mode: [] for r in runners}
        loads, host = [], {w: [] for w in worker_counts if w > 1}
        if host:
            probe = HostProbe(max(host))
        for _ in range(reps):
            for r in runners:  # interleaved: serial, W=1, W=2, serial, ...
                loads.append(os.getloadavg()[0])
                out = replay(r, plan, rounds)
                if out["digest"] != warm["serial"]["digest"]:
                    raise RuntimeError(f"{r.mode} did different work in a timed repetition")
                res[r.mode].append(out)
            for w in host:
                host[w].append(probe.scaling(w))
    finally:
        for r in runners:
            r.close()
        if probe is not None:
            probe.close()

    cores = len(os.sched_getaffinity(0))
    load = statistics.median(loads)
    rows = []
    for r in runners:
        reps_ = res[r.mode]
        rates = [x["steps"] / x["wall_s"] for x in reps_]
        rate = statistics.median(rates)
        rows.append({
            "env": env_name, "envs": n, "mode": r.mode, "workers": r.workers, "rounds": rounds, "reps": reps,
            "steps_per_s": rate, "steps_per_s_reps": rates,
            "spread": (max(rates) - min(rates)) / 2 / rate,
            "parent_cpu_us_per_step": 1e6 * statistics.median(x["cpu_s"] / x["steps"] for x in reps_),
            # CPU of the processes stepping the envs, around the step calls only: unlike wall time it does not
            # depend on what else the machine runs, so it shows per-step overhead when the wall rates are noisy.
            "env_cpu_ms_per_step": 1e3 * statistics.median(x["env_cpu_s"] / x["steps"] for x in reps_),
            "env_cpu_ms_reps": [1e3 * x["env_cpu_s"] / x["steps"] for x in reps_],
            # psutil reads worker CPU in clock ticks (10 ms): below ~10 ticks per repetition the ratio is noise
            "env_cpu_resolvable": all(x["env_cpu_s"] >= 0.1 for x in reps_),
            # Pool only: the same calls' wall time over the slowest worker's time inside env code, minus 1. Both
            # are measured in one call, so env-cost swings between processes and repetitions cancel out.
            "pool_own_overhead": (statistics.median(x["wall_s"] / x["env_wall_s"] - 1.0 for x in reps_)
                                  if all(x["env_wall_s"] for x in reps_) else None),
            # Pool only: the scaling the split of the work allows, sum over workers of their env time / the
            # slowest worker's, per call (= W when every worker's envs take equally long; the rest waits).
            "balance": (statistics.median(x["env_sum_s"] / x["env_wall_s"] for x in reps_)
                        if all(x["env_wall_s"] for x in reps_) else None),
            "host_scaling": statistics.median(host[r.workers]) if r.workers in host else None,
            "host_scaling_reps": host.get(r.workers),
            # wall time of the (off-the-clock) reset calls per env reset; a pool resets a batch in one call
            "reset_ms_per_env": 1e3 * statistics.median(x["reset_s"] / x["resets"] for x in reps_),
            "startup_s": startup[r.mode], "mem_mb_per_env": mem[r.mode] / 2**20,
            "load_1min": load, "loads": loads, "cores": cores,
            "pickle_bytes_per_step": pk_bytes, "pickle_us_per_step": pk_us,
            "work_digest": reps_[0]["digest"], "plan_steps": sum(len(s) for _, s in plan),
        })
    base = rows[0]["steps_per_s"]
    w1 = next((x["steps_per_s"] for x in rows if x["workers"] == 1), None)
    for k, row in enumerate(rows[1:], start=1):
        row["x_serial"] = row["steps_per_s"] / base
        row["overhead"] = 1.0 - row["x_serial"]
        # extra wall time of one batched call (n env steps) over the serial loop; < 0 when workers run in parallel
        row["overhead_ms_per_call"] = 1e3 * n * (1.0 / row["steps_per_s"] - 1.0 / base)
        # paired per repetition: pool rate / serial rate of the same repetition (drift-robust)
        row["x_serial_paired"] = statistics.median(
            p / s for p, s in zip(row["steps_per_s_reps"], rows[0]["steps_per_s_reps"]))
        # paired per repetition: env-stepping CPU per step of the pool's workers over the serial loop's, minus 1
        row["cpu_overhead"] = (statistics.median(
            p / s for p, s in zip(row["env_cpu_ms_reps"], rows[0]["env_cpu_ms_reps"])) - 1.0
            if row["env_cpu_resolvable"] and rows[0]["env_cpu_resolvable"] else None)
        if w1 is not None:
            row["scaling"] = row["steps_per_s"] / w1
            row["ideal_scaling"] = min(row["workers"], cores)
            # how much of what this machine and this split of the work allow the pool reaches
            ceiling = min(row["host_scaling"] or row["ideal_scaling"], row["balance"] or row["ideal_scaling"])
            row["scaling_of_ceiling"] = row["scaling"] / ceiling if row["workers"] > 1 else None
    return rows


def _table(rows) -> str:
    head = (f"{'env':<13}{'envs':>5}  {'mode':<10}{'steps/s':>9}{'±%':>5}{'x serial':>9}{'overhead':>9}"
            f"{'scaling':>12}{'host':>6}{'balance':>8}{'of ceil':>8}{'ms/call+':>9}{'env CPU ms':>11}{'CPU ovh':>8}"
            f"{'pool own':>9}{'reset ms':>9}{'start-up s':>11}{'MB/env':>8}"
            f"{'parent µs':>10}{'load':>6}")
    lines = [head]
    for r in rows:
        x = f"{r['x_serial']:.2f}" if "x_serial" in r else ""
        ov = f"{100 * r['overhead']:+.0f}%" if "overhead" in r else ""
        sc = f"{r['scaling']:.2f} ({r['ideal_scaling']})" if "scaling" in r else ""
        ms = f"{r['overhead_ms_per_call']:+.2f}" if "overhead_ms_per_call" in r else ""
        co = "" if "cpu_overhead" not in r else "n/a" if r["cpu_overhead"] is None else f"{100 * r['cpu_overhead']:+.0f}%"
        po = "" if r.get("pool_own_overhead") is None else f"{100 * r['pool_own_overhead']:+.1f}%"
        hs = "" if r.get("host_scaling") is None else f"{r['host_scaling']:.2f}"
        bal = "" if r.get("balance") is None else f"{r['balance']:.2f}"
        oc = "" if r.get("scaling_of_ceiling") is None else f"{100 * r['scaling_of_ceiling']:.0f}%"
        lines.append(f"{r['env']:<13}{r['envs']:>5}  {r['mode']:<10}{r['steps_per_s']:>9.1f}"
                     f"{100 * r['spread']:>5.0f}{x:>9}{ov:>9}{sc:>12}{hs:>6}{bal:>8}{oc:>8}{ms:>9}"
                     f"{r['env_cpu_ms_per_step']:>11.2f}{co:>8}{po:>9}{r['reset_ms_per_env']:>9.2f}"
                     f"{r['startup_s']:>11.2f}"
                     f"{r['mem_mb_per_env']:>8.1f}{r['parent_cpu_us_per_step']:>10.0f}{r['load_1min']:>6.2f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="alfworld", help=f"one of {sorted(ENV_FACTORIES)} or 'all'")
    ap.add_argument("--quick", action="store_true", help="1 and 8 envs, few rounds and repetitions")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="env counts (default 1 8 32)")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=None, help="batched steps per repetition")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per mode (median reported)")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    ap.add_argument("--parent-env", choices=("worker", "inherit"), default="worker",
                    help="'worker' (default): give this process (the serial loop) the pool workers' environment "
                         "variables (envs.pool.DEFAULT_WORKER_ENV: one BLAS/OpenMP thread, JAX on CPU, small JVM "
                         "heap), so the modes differ only by the pool; 'inherit': keep the shell's")
    ap.add_argument("--cpu-affinity", choices=("none", "auto"), default="none",
                    help="EnvPool(cpu_affinity=...): 'auto' pins worker w to core w")
    argv = list(sys.argv[1:] if argv is None else argv)  # copy now: some env imports rewrite sys.argv
    args = ap.parse_args(argv)
    names = sorted(ENV_FACTORIES) if args.env == "all" else [args.env]
    unknown = [n for n in names if n not in ENV_FACTORIES]
    if unknown:
        ap.error(f"unknown --env {unknown}; choose from {sorted(ENV_FACTORIES)} or 'all'")
    sizes = args.sizes or ([1, 8] if args.quick else [1, 8, 32])
    if any(s < 1 for s in sizes) or any(w < 1 for w in args.workers):
        ap.error("--sizes and --workers must be positive integers")
    if (args.rounds is not None and args.rounds < 1) or (args.reps is not None and args.reps < 1):
        ap.error("--rounds and --reps must be >= 1")

    if args.parent_env == "worker":
        # before any env module (numpy, torch, JAX, JVMs) is imported or started
        from envs.pool import DEFAULT_WORKER_ENV

        os.environ.update(DEFAULT_WORKER_ENV)
    import psutil

    print(f"parent env: {args.parent_env}; cores: {len(os.sched_getaffinity(0))}, load at start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    for name in names:
        rounds, reps = ROUNDS.get(name, ((20, 3), (5, 2)))[1 if args.quick else 0]
        rounds, reps = args.rounds or rounds, args.reps or reps
        factory = ENV_FACTORIES[name]()
        for n in sizes:
            # leave a margin for the rest of the machine
            budget = 0.7 * psutil.virtual_memory().available / 2**20
            block = bench_size(name, factory, n, args.workers, rounds, reps, mem_budget_mb=budget,
                               cpu_affinity=None if args.cpu_affinity == "none" else args.cpu_affinity)
            rows += block
            print(_table(block), flush=True)
            print(f"  (TextStep pickled: {block[0]['pickle_bytes_per_step']:.0f} B, pickle+unpickle "
                  f"{block[0]['pickle_us_per_step']:.1f} µs/step; {rounds} rounds x {reps} reps)\n", flush=True)
    print("\n" + _table(rows))
    print(f"\n(cores: {len(os.sched_getaffinity(0))}; overhead = 1 - pool/serial steps/s at the same work, target "
          f"< 10% at W=1; CPU ovh = the same in CPU per env step of the env-stepping processes; pool own = wall of "
          f"the pool's step calls / the slowest worker's time in env code - 1 (same calls); scaling = "
          f"steps/s(W) / steps/s(W=1), ideal in brackets; host = the same for W CPU-bound Python processes on "
          f"this machine, measured between the repetitions (its ceiling now); balance = the ceiling the split of "
          f"the work allows (sum of the workers' env time / the slowest worker's, per call); of ceil = scaling / "
          f"min(host, balance); parent µs = CPU time of this "
          f"process per env step; load = median 1-min load average during the block)")
    print("rerun: python benchmarks/text_envs.py " + " ".join(argv))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
