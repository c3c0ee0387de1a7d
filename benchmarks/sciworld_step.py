"""ScienceWorld step latency: the package's `ScienceWorldEnv.step` vs `envs.sciworld.SciWorldEnv.step`.

Both replay the same gold action sequences on the same (task, variation)s, each in its own JVM, after a
warm-up pass (JIT). Prints a table of per-step latency (median / p90, ms) per task and overall:
- package: `scienceworld.ScienceWorldEnv.step` (enumerates every valid action/object combination);
- fast: `SciWorldEnv.step` with `include_objects=False` (observation, score, completion only);
- fast+objects: `SciWorldEnv.step` with `include_objects=True` (plus the admissible object list);
- raw: the bare Java `step` call alone (the floor).

    python benchmarks/sciworld_step.py [--tasks boil,find-animal,...] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_TASKS = "boil,find-animal,chemistry-mix,use-thermometer,grow-plant,test-conductivity"


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated task names")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes over each gold sequence")
    args = ap.parse_args(argv)

    from scienceworld import ScienceWorldEnv

    from envs.sciworld import SciWorldEnv

    tasks = [t for t in args.tasks.split(",") if t]
    fast = SciWorldEnv(task_names=tasks, include_objects=False)
    fast_obj = SciWorldEnv(task_names=tasks, include_objects=True)
    pkg = ScienceWorldEnv("", envStepLimit=10_000)
    try:
        golds = {}
        for t in tasks:
            variation = fast.variations(t)[0]
            fast.load(t, variation)
            golds[t] = (variation, fast.expert_actions())

        def run_pkg(t, variation, actions, out):
            pkg.load(t, variation, "")
            pkg.reset()
            for a in actions:
                t0 = time.perf_counter()
                pkg.step(a)
                out.append(time.perf_counter() - t0)

        def run_fast(env, t, variation, actions, out):
            env.load(t, variation)
            for a in actions:
                t0 = time.perf_counter()
                ts = env.step(a)
                out.append(time.perf_counter() - t0)
                if ts.done:
                    break

        def run_raw(t, variation, actions, out):
            fast.load(t, variation)
            srv = fast._server
            for a in actions:
                t0 = time.perf_counter()
                srv.step(a)
                out.append(time.perf_counter() - t0)

        # warm-up pass (JIT) on every env
        for t, (v, acts) in golds.items():
            run_pkg(t, v, acts, [])
            run_fast(fast, t, v, acts, [])
            run_fast(fast_obj, t, v, acts, [])

        rows = []
        allt = {k: [] for k in ("package", "fast", "fast+objects", "raw")}
        for t, (v, acts) in golds.items():
            per = {k: [] for k in allt}
            for _ in range(args.repeats):
                run_pkg(t, v, acts, per["package"])
                run_fast(fast, t, v, acts, per["fast"])
                run_fast(fast_obj, t, v, acts, per["fast+objects"])
                run_raw(t, v, acts, per["raw"])
            for k in allt:
                allt[k] += per[k]
            rows.append((t, len(per["fast"]), per))
        rows.append(("ALL", len(allt["fast"]), allt))

        cols = list(allt)
        print(f"\nScienceWorld step latency, ms (median / p90), gold sequences, {os.cpu_count()} CPUs visible")
        print(f"{'task':32s} {'steps':>5s} " + " ".join(f"{c:>16s}" for c in cols) + f" {'speedup':>8s}")
        for name, n, per in rows:
            cells = " ".join(f"{1000 * statistics.median(per[c]):7.1f} /{1000 * _pct(per[c], 0.9):7.1f}"
                             for c in cols)
            sp = statistics.median(per["package"]) / statistics.median(per["fast+objects"])
            print(f"{name:32s} {n:5d} {cells} {sp:7.1f}x")
    finally:
        fast.close()
        fast_obj.close()
        pkg.close()


if __name__ == "__main__":
    main()
