"""Text-env throughput: a plain serial loop vs `EnvPool` with W = 1, 2 workers, for 1, 8, 32 envs.

    python benchmarks/text_envs.py --env alfworld [--quick] [--json out.json]
    python benchmarks/text_envs.py --env all

Per row: env steps/s (resets excluded; one untimed warm-up round first (jit compiles, caches); every env steps
each round, a done env is reset outside the clock),
pool start-up time, memory per env (RSS of the worker process trees / envs; for the serial loop the growth
of this process / envs), and the pool's overhead at W=1 over the serial loop. Actions are drawn from the
admissible list with a fixed seed, so serial and pooled runs do the same work.

Add an env by putting a zero-argument function returning a picklable env factory into `ENV_FACTORIES`.
Keep module-level imports light: spawned workers re-import this file as `__mp_main__`.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


def _alfworld():
    from envs.alfworld import alfworld_factory

    os.environ.setdefault("ALFWORLD_DATA", os.path.join(os.path.dirname(__file__), "..", "data", "alfworld"))
    return alfworld_factory(split="train", max_steps=50)


def _sokoban_text():
    from envs.sokoban.text_env import SokobanTextEnv

    return functools.partial(SokobanTextEnv)


def _sciworld():
    # admissible_actions are SciWorld's action templates ("focus on OBJ"), so the random actions here are
    # mostly rejected by the parser; benchmarks/sciworld_step.py times real (gold-path) steps.
    from envs.sciworld import SciWorldEnv

    return functools.partial(SciWorldEnv, split="train", max_steps=50)


def _debug():
    from envs.pool import _DebugEnv

    return functools.partial(_DebugEnv, max_steps=10**9)


# name -> () -> picklable zero-argument factory of a TextEnv
ENV_FACTORIES = {
    "alfworld": _alfworld,
    "sokoban_text": _sokoban_text,
    "sciworld": _sciworld,
    "debug": _debug,  # pure pool overhead: a step costs microseconds
}


def _rss_tree(pids) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            total += p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return total


def _choose(rng, step) -> str:
    acts = step.admissible_actions if step is not None and step.admissible_actions else ("look",)
    return rng.choice(acts)


def run_serial(factory, n, rounds, seed=0):
    import psutil

    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    envs = [factory() for _ in range(n)]
    last = [env.reset(i) for i, env in enumerate(envs)]
    startup = time.perf_counter() - t0
    rng, steps, clock = random.Random(seed), 0, 0.0
    for r in range(rounds + 1):  # round 0 warms up (jit compiles, lazy caches) off the clock
        acts = [_choose(rng, s) for s in last]
        t = time.perf_counter()
        last = [env.step(a) for env, a in zip(envs, acts)]
        if r == 0:
            last = [env.reset(i) for i, env in enumerate(envs)]
            continue
        clock += time.perf_counter() - t
        steps += n
        last = [env.reset(rng.randrange(10**6)) if s.done else s for env, s in zip(envs, last)]
    mem = (psutil.Process().memory_info().rss - rss0) / n
    for env in envs:
        env.close()
    return {"steps_per_s": steps / clock, "startup_s": startup, "mem_mb_per_env": mem / 2**20}


def run_pool(factory, n, workers, rounds, seed=0):
    from envs.pool import EnvPool

    t0 = time.perf_counter()
    with EnvPool(factory, num_workers=workers, envs_per_worker=n // workers, step_timeout_s=600,
                 reset_timeout_s=600, start_timeout_s=600) as pool:
        ids = list(range(n))
        last = pool.reset(ids, ids)
        startup = time.perf_counter() - t0
        rng, steps, clock = random.Random(seed), 0, 0.0
        for r in range(rounds + 1):  # round 0 warms up (jit compiles, lazy caches) off the clock
            acts = [_choose(rng, s) for s in last]
            t = time.perf_counter()
            last = pool.step(ids, acts)
            if r == 0:
                last = pool.reset(ids, ids)
                continue
            clock += time.perf_counter() - t
            steps += n
            done = [i for i in ids if last[i].done]
            if done:
                for i, s in zip(done, pool.reset(done, [rng.randrange(10**6) for _ in done])):
                    last[i] = s
        mem = _rss_tree(pool.worker_pids()) / n
        stats = pool.stats()
    return {"steps_per_s": steps / clock, "startup_s": startup, "mem_mb_per_env": mem / 2**20,
            "pool_startup_s": pool.start_time_s, "failures": stats["timeouts"] + stats["crashes"] + stats["env_errors"]}


def bench(env_name, sizes, worker_counts, rounds):
    factory = ENV_FACTORIES[env_name]()
    rows = []
    for n in sizes:
        serial = run_serial(factory, n, rounds)
        rows.append({"env": env_name, "envs": n, "mode": "serial", **serial})
        for w in worker_counts:
            if w > n or n % w:
                continue
            r = run_pool(factory, n, w, rounds)
            r["x_serial"] = r["steps_per_s"] / serial["steps_per_s"]
            # extra wall time per batched call (n env steps) over the serial loop; < 0 when parallel wins
            r["overhead_ms_per_call"] = 1e3 * n * (1.0 / r["steps_per_s"] - 1.0 / serial["steps_per_s"])
            rows.append({"env": env_name, "envs": n, "mode": f"pool W={w}", **r})
        print(_table(rows[-(1 + sum(1 for w in worker_counts if w <= n and n % w == 0)):]), flush=True)
    return rows


def _table(rows) -> str:
    head = (f"{'env':<13}{'envs':>5}  {'mode':<11}{'steps/s':>10}{'x serial':>9}{'ms/call +':>10}"
            f"{'start-up s':>11}{'MB/env':>8}")
    lines = [head]
    for r in rows:
        x = f"{r['x_serial']:.2f}" if "x_serial" in r else ""
        ov = f"{r['overhead_ms_per_call']:+.2f}" if "overhead_ms_per_call" in r else ""
        lines.append(f"{r['env']:<13}{r['envs']:>5}  {r['mode']:<11}{r['steps_per_s']:>10.1f}{x:>9}{ov:>10}"
                     f"{r['startup_s']:>11.2f}{r['mem_mb_per_env']:>8.1f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="alfworld", help=f"one of {sorted(ENV_FACTORIES)} or 'all'")
    ap.add_argument("--quick", action="store_true", help="1 and 8 envs, few rounds")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="env counts (default 1 8 32)")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=None, help="batched steps per configuration")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args(argv)
    names = sorted(ENV_FACTORIES) if args.env == "all" else [args.env]
    unknown = [n for n in names if n not in ENV_FACTORIES]
    if unknown:
        ap.error(f"unknown --env {unknown}; choose from {sorted(ENV_FACTORIES)} or 'all'")
    sizes = args.sizes or ([1, 8] if args.quick else [1, 8, 32])
    rows = []
    for name in names:
        rounds = args.rounds or ((200 if name == "debug" else 3) if args.quick else (1000 if name == "debug" else 10))
        rows += bench(name, sizes, args.workers, rounds)
    print("\n" + _table(rows))
    print(f"\n(cpu cores available: {len(os.sched_getaffinity(0))}; 'x serial' = pool steps/s / serial loop "
          f"steps/s over the same envs; 'ms/call +' = extra wall time of one batched step call over the serial "
          f"loop (negative: the workers ran in parallel); start-up = building the envs + first reset)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
