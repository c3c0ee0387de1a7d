"""Sokoban throughput: this JAX env vs Jumanji's Sokoban vs a plain Python/NumPy loop, plus level generation.

    python benchmarks/sokoban.py [--quick] [--json out.json] [--steps 100]

Rows (impl, batch, steps_per_s, levels_per_s):
- ours-6x6 / ours-10x10x4: `jit(lax.scan(vmap(step)))` over random actions, env steps per second after
  compile (block_until_ready), at batch 1, 64 and 4096.
- jumanji-10x10x4: `jumanji.environments.Sokoban` with its download-free `ToyGenerator` (10×10, 4 boxes),
  stepped the same way.
- python-numpy: one env at a time, as gym-sokoban users step it.
- ours-generate-6x6: `jit(vmap(generator))` levels per second for 4096 levels.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import envs.sokoban as sk  # noqa: E402


def _time(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def bench_ours(dim, num_boxes, batch, steps):
    env = sk.Sokoban(dim=dim, num_boxes=num_boxes, max_steps=10**6)
    states, _ = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), batch))
    actions = jax.random.randint(jax.random.PRNGKey(1), (steps, batch), 0, 4)

    @jax.jit
    def rollout(states, actions):
        final, tss = jax.lax.scan(lambda s, a: jax.vmap(env.step)(s, a), states, actions)
        return final, tss.reward.sum()

    dt = _time(rollout, states, actions)
    return batch * steps / dt


def bench_jumanji(batch, steps):
    from jumanji.environments import Sokoban as JSokoban
    from jumanji.environments.routing.sokoban.generator import ToyGenerator

    env = JSokoban(generator=ToyGenerator(), time_limit=10**6)
    states, _ = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), batch))
    actions = jax.random.randint(jax.random.PRNGKey(1), (steps, batch), 0, 4)

    @jax.jit
    def rollout(states, actions):
        final, tss = jax.lax.scan(lambda s, a: jax.vmap(env.step)(s, a), states, actions)
        return final, tss.reward.sum()

    dt = _time(rollout, states, actions)
    return batch * steps / dt


class NumpySokoban:
    """A gym-sokoban-style env: NumPy room arrays, one Python `step` per action."""

    MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))

    def __init__(self, level: sk.Level):
        self.walls = np.asarray(level.walls).copy()
        self.targets = np.asarray(level.targets).copy()
        self.boxes = np.asarray(level.boxes).copy()
        self.player = np.asarray(level.player).copy()
        self.steps = 0

    def step(self, action):
        dr, dc = self.MOVES[action]
        r, c = self.player
        n1 = (r + dr, c + dc)
        n2 = (r + 2 * dr, c + 2 * dc)
        reward = -0.1
        if self.boxes[n1]:
            if not self.walls[n2] and not self.boxes[n2]:
                self.boxes[n1], self.boxes[n2] = False, True
                self.player = np.array(n1)
                reward += float(self.targets[n2]) - float(self.targets[n1])
        elif not self.walls[n1]:
            self.player = np.array(n1)
        self.steps += 1
        done = bool((self.boxes <= self.targets).all())
        obs = sk.cell_kinds(sk.Level(self.walls, self.targets, self.boxes, self.player), xp=np)
        return obs, reward + 10.0 * done, done, {}


def bench_python(dim, num_boxes, steps):
    env = sk.Sokoban(dim=dim, num_boxes=num_boxes)
    states, _ = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 8))
    levels = [sk.Level(*(np.asarray(x[i]) for x in states[:4])) for i in range(8)]
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 4, size=steps)
    t = time.perf_counter()
    done_steps = 0
    py_env = NumpySokoban(levels[0])
    for i, a in enumerate(actions):
        _, _, done, _ = py_env.step(int(a))
        done_steps += 1
        if done:
            py_env = NumpySokoban(levels[i % 8])
    return done_steps / (time.perf_counter() - t)


def bench_generate(dim, num_boxes, batch, min_pushes):
    gen = sk.SokobanGenerator(dim=dim, num_boxes=num_boxes, min_pushes=min_pushes)
    fn = jax.jit(jax.vmap(gen.generate))
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    dt = _time(fn, keys)
    _, ok = fn(keys)
    assert bool(np.asarray(ok).all()), "generator failed to meet min_pushes within max_attempts"
    return batch / dt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batches and few steps")
    parser.add_argument("--steps", type=int, default=None, help="scan length per rollout (default 100, quick 20)")
    parser.add_argument("--json", default=None, help="write the rows as a JSON list here")
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else 100)
    batches = (1, 64, 512) if args.quick else (1, 64, 4096)
    gen_batch = 512 if args.quick else 4096
    rows = []

    def add(impl, batch, steps_per_s=None, levels_per_s=None, note=""):
        rows.append(dict(impl=impl, batch=batch, steps_per_s=steps_per_s, levels_per_s=levels_per_s, note=note))
        sps = f"{steps_per_s:,.0f}" if steps_per_s else "-"
        lps = f"{levels_per_s:,.0f}" if levels_per_s else "-"
        print(f"{impl:<24} {batch:>6} {sps:>16} {lps:>14}  {note}", flush=True)

    print(f"devices: {jax.devices()}  steps per rollout: {steps}")
    print(f"{'impl':<24} {'batch':>6} {'steps/s':>16} {'levels/s':>14}")
    for b in batches:
        add("ours-6x6x1", b, bench_ours(6, 1, b, steps))
    for b in batches:
        add("ours-10x10x4", b, bench_ours(10, 4, b, steps))
    try:
        import jumanji  # noqa: F401

        for b in batches:
            add("jumanji-10x10x4", b, bench_jumanji(b, steps))
    except Exception as e:  # noqa: BLE001 (report any import/runtime problem as a row)
        add("jumanji-10x10x4", 0, None, None, note=f"unavailable: {type(e).__name__}: {e}")
    py_steps = 2000 if args.quick else 20000
    add("python-numpy-6x6x1", 1, bench_python(6, 1, py_steps))
    add("python-numpy-10x10x4", 1, bench_python(10, 4, py_steps))
    add("ours-generate-6x6x1", gen_batch, None, bench_generate(6, 1, gen_batch, min_pushes=1), note="min_pushes=1")
    add("ours-generate-6x6x1", gen_batch, None, bench_generate(6, 1, gen_batch, min_pushes=2), note="min_pushes=2")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
