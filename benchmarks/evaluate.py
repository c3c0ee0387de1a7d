"""Evaluation speed per domain, and what the in-training evaluation costs a training step.

    python benchmarks/evaluate.py --quick --json out.json     # CPU smoke run
    python benchmarks/evaluate.py                             # 16 episodes per domain, 2 timed repeats

On the trainer built the way `train()` builds it (easy Sokoban, the tiny model, `gin/experiments/sokoban_tiny_cpu.gin`)
with `train.eval_domains` = sokoban, alfworld and (with Java) sciworld at small pools: for each domain, after one
warm-up evaluation (compiles, starts the pool), `Trainer.evaluate` on its held-out split timed end to end with
the generate / env split of the host rollout (Sokoban's device rollout fuses both). Then one RL iteration
(`_rl_iteration`, after a warm-up) and the share of a training step that evaluating every domain adds:
eval_s / (step_s + eval_s), for an evaluation every step (divide by train.eval_every for the real cost).
Timings are wall clock; on a shared CPU they move with the other load on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # rl_iteration's trainer builder
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, when not installed


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 episodes per domain, 1 repeat, 2-step text episodes")
    ap.add_argument("--episodes", type=int, default=None, help="evaluation episodes per domain (default 16)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 2)")
    ap.add_argument("--text_steps", type=int, default=None, help="max steps of a text episode (default 10)")
    ap.add_argument("--domains", default=None, help="comma-separated (default sokoban,alfworld[,sciworld])")
    ap.add_argument("--json", default=None, help="write the rows (list of dicts) here")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    episodes = args.episodes or (4 if args.quick else 16)
    repeats = args.repeats or (1 if args.quick else 2)
    steps = args.text_steps or (2 if args.quick else 10)
    names = args.domains.split(",") if args.domains else ["sokoban", "alfworld"] + (
        ["sciworld"] if shutil.which("java") else [])
    import jax
    from rl_iteration import build_trainer

    from agentrl_jax import train as tm

    workers = max(2, min(episodes, 8))
    bindings = [f"train.eval_episodes = {episodes}", f"train.eval_domains = {names}",
                "AlfWorldEnv.data_path = 'data/alfworld'", f"AlfWorldDomain.max_steps = {steps}",
                "AlfWorldDomain.num_workers = 1", f"AlfWorldDomain.envs_per_worker = {workers}",
                f"SciWorldDomain.max_steps = {steps}", "SciWorldDomain.num_workers = 1",
                f"SciWorldDomain.envs_per_worker = {workers}"]
    ns = argparse.Namespace(gin_file="experiments/sokoban_tiny_cpu.gin", dtype=None, tasks_per_step=None,
                            group_size=None, gin_bindings=bindings, seed=0)
    out_dir = tempfile.mkdtemp(prefix="bench_eval_")
    rows = []
    tr, rl_step, opt_state, cfg = build_trainer(ns, out_dir, None)
    try:
        params, key = tr.params, jax.random.PRNGKey(0)
        eval_total = 0.0
        for name, domain in tr.eval_domains.items():
            tr.evaluate(tr.params, 0, domain=domain)  # warm-up: compiles, starts the pool
            acc = {"seconds": 0.0, "generate_s": 0.0, "env_s": 0.0, "turns": 0.0, "success": 0.0}
            for r in range(repeats):
                tr.timings.clear()
                t0 = time.perf_counter()
                m = tr.evaluate(tr.params, 1 + r, domain=domain)
                acc["seconds"] += (time.perf_counter() - t0) / repeats
                acc["generate_s"] += tr.timings.get("generate", 0.0) / repeats
                acc["env_s"] += tr.timings.get("env", 0.0) / repeats
                acc["turns"] += m["eval/episode_length"] * episodes / repeats
                acc["success"] += m["eval/success_rate"] / repeats
            fused = domain.resolve_mode(tr.rollout_mode) == "device"
            eval_total += acc["seconds"]
            rows.append(dict(section="evaluate", domain=name, split=domain.eval_split, episodes=episodes,
                             mode="device" if fused else "host", seconds=acc["seconds"],
                             episodes_per_s=episodes / acc["seconds"], env_steps_per_s=acc["turns"] / acc["seconds"],
                             generate_s=None if fused else acc["generate_s"], env_s=None if fused else acc["env_s"],
                             other_s=None if fused else acc["seconds"] - acc["generate_s"] - acc["env_s"],
                             success_rate=acc["success"]))
        params, opt, *_ = tm._rl_iteration(tr, rl_step, 1, params, opt_state, key, cfg)  # warm-up
        t0 = time.perf_counter()
        for it in range(repeats):
            params, opt, *_ = tm._rl_iteration(tr, rl_step, 2 + it, params, opt, key, cfg)
        jax.block_until_ready(params)
        step_s = (time.perf_counter() - t0) / repeats
        rows.append(dict(section="train_step", domain=tr.domain.name, seconds=step_s, eval_all_s=eval_total,
                         eval_share=eval_total / (step_s + eval_total)))
    finally:
        tr.close()
        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"\nevaluation per domain ({episodes} episodes, {repeats} repeat(s), text episodes <= {steps} steps, "
          f"tiny model, {jax.devices()[0].device_kind})")
    print("| domain | split | mode | s | episodes/s | env steps/s | generate s | env s | other s |")
    print("|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        if r["section"] == "evaluate":
            print(f"| {r['domain']} | {r['split']} | {r['mode']} | {r['seconds']:.2f} | {r['episodes_per_s']:.2f} | "
                  f"{r['env_steps_per_s']:.2f} | {fmt(r['generate_s'])} | {fmt(r['env_s'])} | {fmt(r['other_s'])} |")
    t = rows[-1]
    print(f"\none RL step on {t['domain']}: {t['seconds']:.2f} s; evaluating all {len(names)} domains: "
          f"{t['eval_all_s']:.2f} s = {100 * t['eval_share']:.0f}% of a step that evaluates every time "
          f"(x 1/train.eval_every in a real run)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    return rows


if __name__ == "__main__":
    main()
