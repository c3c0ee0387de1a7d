"""Sokoban throughput: this JAX env vs Jumanji's Sokoban vs a plain Python/NumPy loop, plus level generation.

    python benchmarks/sokoban.py [--quick] [--json out.json] [--steps 100] [--batches 1,64,4096] [--rounds 5]

Every rollout is `jit(lax.scan(vmap(step)))` over random actions and CONSUMES each step's observation, as a
policy reads it: the observation goes into a checksum (a weighted sum of every element) that the rollout
returns with the reward sum. A rollout that returned only rewards would let XLA drop the observation
computation of one side and not the other (ours is a separate `cell_kinds`, Jumanji's is built into its
state), which is not how either env is used.

Rows (impl, batch, reward, steps/s, vs jumanji, compare):
- jumanji-10x10x4: `jumanji.environments.Sokoban` with its download-free `ToyGenerator` (two 10x10 levels,
  4 boxes) and its default `DenseReward`; the observation read is `timestep.observation.grid`.
- ours-10x10x4: our env on the SAME levels (Jumanji's, converted), the same actions (Jumanji's action order
  mapped to ours) and the equal reward (our "shaped" = Jumanji's dense: -0.1 a step, +-1 a box on/off a goal,
  +10 when solved), so both play the same trajectories; the benchmark checks the two reward sums agree. The
  observation read is `timestep.observation` (int8 cell kinds).
- ours-10x10x4+ids: the same, but reading what our LLM path reads: the state rendered to token ids inside
  the compiled rollout (`TokenRenderer`, the study's "coords" text, the tiny model's tokenizer by default).
- ours-6x6x1 / ours-6x6x1+ids: the study's board (generated 6x6 levels, one box). Its ratio is against
  Jumanji's 10x10 (Jumanji has no 6x6 board), so it is not like for like; the compare column says so.
- python-numpy: one env at a time, as gym-sokoban users step it (builds the observation every step).
- ours-generate-6x6x1: `jit(vmap(generator))` levels per second.

Timing: per batch size every rollout is compiled first, then timed in `--rounds` interleaved rounds (each
impl once per round, in turn, each timing long enough to swamp dispatch); steps/s is from each impl's best
round, "vs jumanji" is the median over rounds of that round's jumanji time / ours, so a noisy shared CPU
moves both sides of a ratio together.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import envs.sokoban as sk  # noqa: E402
from agentrl_jax.xla_cpu import host_cpu  # noqa: E402

LONG_EPISODES = 10**6  # no truncation inside a rollout: both sides step the whole scan
# Jumanji's actions are [up, right, down, left]; ours are [up, down, left, right].
JUMANJI_ACTION_OF_OURS = np.array([0, 2, 3, 1], np.int32)
MIN_TIMING_S = 0.05  # each timed block runs this long at least (repeated calls), so dispatch is noise


# --------------------------------------------------------------------------------------- observation reads
def checksum(x: jax.Array) -> jax.Array:
    """int32 checksum of a batched observation [B, ...] (wraps on overflow): every cell summed over the
    batch, then weighted by its position, i.e. sum over (env, cell) of x * (1 + cell % 251), a read that
    depends on every element, so the compiled rollout must compute the whole observation.

    Summing over the batch before weighting gives the same int32 as weighting every element first; in
    that other order XLA's CPU backend writes an int32 copy of the whole batch and reduces it to a scalar,
    which cost more than our whole step (10x10 at batch 4,096 on an AMD EPYC: ours 1.4x Jumanji's rate in that
    order, 2.5x in this one; Jumanji gains too, less, as its step is most of its cost). The same function
    reads both sides."""
    flat = x.reshape(x.shape[0], -1)
    weights = 1 + jnp.arange(flat.shape[1], dtype=jnp.int32) % 251
    per_cell = jnp.sum(flat.astype(jnp.int32), axis=0, dtype=jnp.int32)
    return jnp.sum(per_cell * weights, dtype=jnp.int32)


def make_rollout(step, read):
    """jit(scan(vmap(step))) returning (final states, reward sum, observation checksum).

    `read(state, timestep) -> int array [B, ...]` is what a policy reads each step; `timestep.reward` counts
    only until each env's episode ends (`timestep_done`), as a user stops there (Jumanji would otherwise
    keep paying its step penalty after the end)."""

    @jax.jit
    def rollout(states, actions):
        def body(carry, a):
            s, ended, total, check = carry
            s, ts = jax.vmap(step)(s, a)
            total = total + jnp.sum(jnp.where(ended, 0.0, ts.reward))
            ended = ended | timestep_done(ts)
            return (s, ended, total, check + checksum(read(s, ts))), None

        batch = actions.shape[1]
        init = (states, jnp.zeros((batch,), bool), jnp.float32(0.0), jnp.int32(0))
        (final, _, total, check), _ = jax.lax.scan(body, init, actions)
        return final, total, check

    return rollout


def timestep_done(ts) -> jax.Array:
    """Episode over after this step: ours has `done`, Jumanji's TimeStep has `last()`."""
    return ts.done if hasattr(ts, "done") else ts.last()


# ------------------------------------------------------------------------------------------------- levels
def jumanji_env():
    from jumanji.environments import Sokoban as JSokoban
    from jumanji.environments.routing.sokoban.generator import ToyGenerator

    return JSokoban(generator=ToyGenerator(), time_limit=LONG_EPISODES)  # default reward_fn: DenseReward


def levels_from_jumanji(jstates) -> sk.Level:
    """Our (batched) Level of Jumanji states. Two toy-level border cells are open floor that no player can
    reach (walled off inside); they become walls, as our levels need a wall all round. Same dynamics."""
    from jumanji.environments.routing.sokoban import constants as jc

    fixed, variable = np.asarray(jstates.fixed_grid), np.asarray(jstates.variable_grid)
    d = fixed.shape[-1]
    border = np.ones((d, d), bool)
    border[1:-1, 1:-1] = False
    walls = (fixed == jc.WALL) | border
    levels = sk.Level(walls, fixed == jc.TARGET, variable == jc.BOX, np.asarray(jstates.agent_location, np.int32))
    for i in range(walls.shape[0]):  # host validation (the batched reset below skips it)
        sk.check_level(sk.Level(*(x[i] for x in levels)), dim=d, num_boxes=jc.N_BOXES)
    return levels


def tokenizer_encode(name: str):
    """The `encode` the TokenRenderer pre-tokenizes its pieces with: "tiny" = the tiny model's byte-level BPE
    (what the CPU runs read), "bytes" = one id per UTF-8 byte (no transformers import; longer ids)."""
    if name == "bytes":
        return lambda s: list(s.encode("utf-8"))
    from agentrl_jax.models.tiny import train_tiny_tokenizer

    tok = train_tiny_tokenizer()
    return lambda s: tok.encode(s, add_special_tokens=False)


# ----------------------------------------------------------------------------------------------- rollouts
def generated_states(dim: int, num_boxes: int, batch: int):
    """`batch` reset states of our env on generated levels (one compile; slice them for smaller batches)."""
    env = sk.Sokoban(dim=dim, num_boxes=num_boxes, max_steps=LONG_EPISODES, reward="shaped")
    return jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), batch))[0]


def build_rollouts(batch: int, steps: int, encode, states6) -> dict:
    """name -> (rollout fn, states, actions, info) for one batch size, all on the same random actions.
    `states6`: at least `batch` generated 6x6 reset states (`generated_states`)."""
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    actions = jax.random.randint(jax.random.PRNGKey(1), (steps, batch), 0, 4)
    out = {}

    jenv = jumanji_env()
    jstates, _ = jax.jit(jax.vmap(jenv.reset))(keys)
    j_actions = jnp.asarray(JUMANJI_ACTION_OF_OURS)[actions]
    out["jumanji-10x10x4"] = (make_rollout(jenv.step, lambda s, ts: ts.observation.grid), jstates, j_actions,
                              dict(reward="dense (Jumanji default)", levels="Jumanji ToyGenerator"))

    env10 = sk.Sokoban(dim=10, num_boxes=4, max_steps=LONG_EPISODES, reward="shaped")
    s10, _ = jax.jit(jax.vmap(env10.reset_to_level))(levels_from_jumanji(jstates), keys)
    ren10 = sk.TokenRenderer(encode, dim=10, style="coords")
    same = dict(reward="shaped (= Jumanji dense)", levels="Jumanji's, same actions", compare="same")
    out["ours-10x10x4"] = (make_rollout(env10.step, lambda s, ts: ts.observation), s10, actions, same)
    out["ours-10x10x4+ids"] = (make_rollout(env10.step, lambda s, ts: ren10(s)[0]), s10, actions,
                               dict(same, read=f"token ids (coords, max {ren10.max_len})"))

    env6 = sk.Sokoban(dim=6, num_boxes=1, max_steps=LONG_EPISODES, reward="shaped")
    s6 = jax.tree.map(lambda x: x[:batch], states6)
    ren6 = sk.TokenRenderer(encode, dim=6, style="coords")
    small = dict(reward="shaped", levels="ours, generated", compare="6x6 vs Jumanji's 10x10: not like for like")
    out["ours-6x6x1"] = (make_rollout(env6.step, lambda s, ts: ts.observation), s6, actions, small)
    out["ours-6x6x1+ids"] = (make_rollout(env6.step, lambda s, ts: ren6(s)[0]), s6, actions,
                             dict(small, read=f"token ids (coords, max {ren6.max_len})"))
    return out


def time_interleaved(rollouts: dict, rounds: int) -> tuple[dict, dict]:
    """Compile every rollout, then `rounds` rounds timing each in turn. Returns (per-call seconds of each
    round by name, the outputs of each rollout's first call)."""
    outputs, reps = {}, {}
    for name, (fn, states, actions, _) in rollouts.items():
        outputs[name] = jax.block_until_ready(fn(states, actions))  # compile
        t = time.perf_counter()
        jax.block_until_ready(fn(states, actions))
        reps[name] = max(1, int(np.ceil(MIN_TIMING_S / max(time.perf_counter() - t, 1e-9))))
    times = {name: [] for name in rollouts}
    for _ in range(rounds):
        for name, (fn, states, actions, _) in rollouts.items():
            t = time.perf_counter()
            for _ in range(reps[name]):
                out = fn(states, actions)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t) / reps[name])
    return times, outputs


def check_same_rewards(outputs: dict) -> None:
    """Ours and Jumanji played the same trajectories with equal rewards, so their reward sums must agree."""
    ours, theirs = float(outputs["ours-10x10x4"][1]), float(outputs["jumanji-10x10x4"][1])
    if not np.isclose(ours, theirs, rtol=1e-4, atol=1e-2):
        raise AssertionError(f"reward sums differ on the same trajectories: ours {ours}, jumanji {theirs}; "
                             "the 'same' comparison is not like for like")


# ------------------------------------------------------------------------------------------ python + gen
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


def bench_python(levels: sk.Level, steps: int):
    """Steps/s of NumpySokoban over random actions, restarting on the next of 8 `levels` (batched) when solved."""
    levels = [sk.Level(*(np.asarray(x[i % x.shape[0]]) for x in levels[:4])) for i in range(8)]
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


def bench_generate(dim, num_boxes, batch, min_pushes, repeats=3):
    gen = sk.SokobanGenerator(dim=dim, num_boxes=num_boxes, min_pushes=min_pushes)
    fn = jax.jit(jax.vmap(gen.generate))
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    _, ok = jax.block_until_ready(fn(keys))  # compile
    assert bool(np.asarray(ok).all()), "generator failed to meet min_pushes within max_attempts"
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(keys))
        best = min(best, time.perf_counter() - t)
    return batch / best


# ----------------------------------------------------------------------------------------------------- main
def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batches 1,64,512, 20 steps, 3 rounds")
    p.add_argument("--steps", type=int, default=None, help="scan length per rollout (default 100, quick 20)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,64,4096)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5, quick 3)")
    p.add_argument("--py_steps", type=int, default=None, help="python-numpy steps (default 20000, quick 2000)")
    p.add_argument("--gen_batch", type=int, default=None, help="levels per generator call (default 4096)")
    p.add_argument("--gen_pushes", default="1,2",
                   help="min_pushes of the ours-generate rows, comma-separated; 'none' skips them")
    p.add_argument("--tokenizer", choices=("tiny", "bytes"), default="tiny",
                   help="encode for the +ids rows: the tiny model's BPE, or raw UTF-8 bytes")
    p.add_argument("--json", default=None, help="write the rows as a JSON list here")
    args = p.parse_args(argv)
    defaults = dict(steps=(20, 100), rounds=(3, 5), py_steps=(2000, 20000), gen_batch=(512, 4096))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    default_batches = "1,64,512" if args.quick else "1,64,4096"
    try:
        args.batch_list = [int(b) for b in (args.batches or default_batches).split(",")]
    except ValueError:
        p.error(f"--batches must be comma-separated integers like 1,64,4096, got {args.batches!r}")
    try:
        args.gen_pushes = [] if args.gen_pushes == "none" else [int(x) for x in args.gen_pushes.split(",")]
    except ValueError:
        p.error(f"--gen_pushes must be comma-separated integers like 1,2 or 'none', got {args.gen_pushes!r}")
    for name in ("steps", "rounds", "py_steps", "gen_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.batch_list) < 1:
        p.error(f"--batches must be positive, got {args.batches!r}")
    return args


def main(argv=None):
    args = parse(argv)
    rows = []

    def add(impl, batch, steps_per_s=None, levels_per_s=None, vs_jumanji=None, **info):
        rows.append(dict(impl=impl, batch=batch, steps_per_s=steps_per_s, levels_per_s=levels_per_s,
                         vs_jumanji=vs_jumanji, **info))
        rate = f"{steps_per_s:,.0f}" if steps_per_s else (f"{levels_per_s:,.0f} lv/s" if levels_per_s else "-")
        ratio = f"{vs_jumanji:.2f}x" if vs_jumanji else "-"
        note = "; ".join(f"{v}" for k, v in info.items() if k in ("reward", "read", "compare", "note"))
        print(f"{impl:<22} {batch:>6} {rate:>16} {ratio:>9}  {note}", flush=True)

    print(f"cpu: {host_cpu()}")
    print(f"devices: {jax.devices()}  steps per rollout: {args.steps}  rounds: {args.rounds}  "
          f"load: {os.getloadavg()}")
    print(f"{'impl':<22} {'batch':>6} {'steps/s':>16} {'vs jumanji':>9}  reward; observation read; compare")
    encode = tokenizer_encode(args.tokenizer)
    states6 = generated_states(6, 1, max(max(args.batch_list), 8))
    for b in args.batch_list:
        rollouts = build_rollouts(b, args.steps, encode, states6)
        times, outputs = time_interleaved(rollouts, args.rounds)
        check_same_rewards(outputs)
        jt = times["jumanji-10x10x4"]
        for name, (_, _, _, info) in rollouts.items():
            ratio = None if name.startswith("jumanji") else statistics.median(j / o for j, o in zip(jt, times[name]))
            add(name, b, b * args.steps / min(times[name]), vs_jumanji=ratio, read=info.get("read", "observation"),
                **{k: v for k, v in info.items() if k != "read"}, round_s=times[name],
                reward_sum=float(outputs[name][1]))
    add("python-numpy-6x6x1", 1, bench_python(states6, args.py_steps), reward="shaped")
    toy_levels = levels_from_jumanji(jax.vmap(jumanji_env().reset)(jax.random.split(jax.random.PRNGKey(0), 8))[0])
    add("python-numpy-10x10x4", 1, bench_python(toy_levels, args.py_steps), reward="shaped",
        note="Jumanji's levels")
    for pushes in args.gen_pushes:
        add("ours-generate-6x6x1", args.gen_batch, None, bench_generate(6, 1, args.gen_batch, min_pushes=pushes),
            note=f"min_pushes={pushes}")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
