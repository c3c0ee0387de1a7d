"""Sokoban level diversity per gin env setting, and how the trainer's level sets overlap by content.

    python benchmarks/sokoban_levels.py [--levels 10000] [--env sokoban sokoban_easy ...] [--bind 'X = 1' ...]

Per env (gin/envs/<env>.gin) and `--levels` levels from `jax.random.split(PRNGKey(0), n)`:
- distinct: distinct level contents (walls, goals, boxes, player); top: how often the commonest one appears;
- rooms: distinct wall layouts; le2 / le_max: share solvable in <= 2 moves / within Sokoban.max_steps;
  mean_len: mean optimal solution length (BFS);
- gen_ms: milliseconds to generate the batch (jit(vmap), after compile, best of 3).
Then, with the trainer's own keys (`agentrl_jax.domains.stream_keys`: stream 0 training, 1 held-out), the training
levels of the run (train.num_steps x train.tasks_per_step tasks, from the run gin file) and the 64 held-out
levels: their distinct counts and how many held-out levels occur in training, before and after
`agentrl_jax.heldout` (resampled held-out set, training keys excluded from it).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import gin
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import envs.sokoban as sk  # noqa: E402
from agentrl_jax import heldout  # noqa: E402

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
# The run each env is trained in (num_steps, tasks_per_step), as the gin experiments set them.
RUNS = {"sokoban": (150, 16), "sokoban_easy": (40, 8), "sokoban_push1": (80, 16)}


def make_env(name: str, bindings=()) -> sk.Sokoban:
    gin.clear_config()
    gin.add_config_file_search_path(GIN_DIR)
    # The env files set train.* / SokobanPrompter.* too; only Sokoban's and the generator's bindings matter.
    with gin.unlock_config():
        gin.parse_config_files_and_bindings([os.path.join(GIN_DIR, "envs", f"{name}.gin")], list(bindings),
                                            skip_unknown=True)
    return sk.Sokoban()


def trainer_keys(step: int, n_tasks: int, stream: int, seed: int = 0):
    """`SokobanDomain`'s raw stream keys (`domains.stream_keys`), without the group repeat (rows of a group
    share their task's key)."""
    base = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stream), step)
    return jax.random.split(base, n_tasks)


def diversity(env: sk.Sokoban, n: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    gen = jax.jit(jax.vmap(env.level))
    jax.block_until_ready(gen(keys))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        levels = jax.block_until_ready(gen(keys))
        best = min(best, time.perf_counter() - t)
    levels = sk.Level(*(np.asarray(x) for x in levels))
    hashes = sk.hash64(jax.jit(sk.level_hash)(levels))
    counts = collections.Counter(hashes.tolist())
    rooms = {w.tobytes() for w in levels.walls}
    first = {}
    for i, h in enumerate(hashes.tolist()):
        first.setdefault(h, i)
    # Solve each distinct level once, weight by its count.
    lengths = {}
    for h, i in first.items():
        plan = sk.solve(sk.Level(*(x[i] for x in levels)))
        lengths[h] = np.inf if plan is None else len(plan)
    lens = np.array([lengths[h] for h in hashes.tolist()])
    return {"distinct": len(counts), "top": max(counts.values()), "rooms": len(rooms),
            "le2": float(np.mean(lens <= 2)), "le_max": float(np.mean(lens <= env.max_steps)),
            "mean_len": float(np.mean(lens[np.isfinite(lens)])), "gen_ms": 1e3 * best}


def trainer_overlap(env: sk.Sokoban, num_steps: int, tasks: int, eval_episodes: int = 64) -> dict:
    hash_fn = jax.jit(jax.vmap(env.level_hash))
    held_keys, val_keys = trainer_keys(0, eval_episodes, stream=1), trainer_keys(0, eval_episodes, stream=2)
    train_keys = [trainer_keys(step, tasks, stream=0) for step in range(1, num_steps + 1)]
    held_raw = set(sk.hash64(hash_fn(held_keys)).tolist())
    seen_raw = set(sk.hash64(hash_fn(jax.numpy.concatenate(train_keys))).tolist())
    out = {"train_levels": num_steps * tasks, "train_distinct_before": len(seen_raw),
           "heldout_distinct_before": len(held_raw), "heldout_in_train_before": len(held_raw & seen_raw)}
    try:
        held = heldout.HeldOutLevels.build(env, held_keys)
        sft_val = heldout.HeldOutLevels.build(env, val_keys, avoid=held)
    except ValueError as e:  # the level space cannot hold two distinct 64-level sets
        return {**out, "heldout_error": str(e).split(";")[0]}
    reserved = held.union(sft_val)
    seen, replaced = heldout.SeenLevels(), 0
    t = time.perf_counter()
    for keys in train_keys:
        res = reserved.exclude(env, keys)
        replaced += res.n_replaced
        seen.add(res.hashes)
    return {**out, "train_distinct_after": seen.distinct, "heldout_distinct_after": held.distinct,
            "heldout_in_train_after": held.overlap(seen), "sft_validation_in_train_after": sft_val.overlap(seen),
            "train_share_resampled": replaced / (num_steps * tasks),
            "exclude_ms_per_step": 1e3 * (time.perf_counter() - t) / num_steps}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, default=10_000)
    ap.add_argument("--env", nargs="+", default=list(RUNS))
    ap.add_argument("--bind", action="append", default=[], help="extra gin binding for every env")
    ap.add_argument("--no-overlap", action="store_true", help="skip the trainer-keys overlap part")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = {}
    for name in args.env:
        env = make_env(name, args.bind)
        row = diversity(env, args.levels)
        if not args.no_overlap:
            row.update(trainer_overlap(env, *RUNS[name]))
        out[name] = row
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
