"""One RL iteration broken down, and the on-device Sokoban episode vs the host loop.

    python benchmarks/rl_iteration.py --quick --json out.json        # CPU smoke run (minutes)
    python benchmarks/rl_iteration.py                                # batches 16, 64; 3 timed repeats
    python benchmarks/rl_iteration.py --model_config qwen2.5-0.5b --dtype bfloat16 --no_peer   # on a GPU
    python benchmarks/rl_iteration.py --model smollm2-2l --sections device_vs_host   # real SmolLM2, 2 layers

Three sections, all on easy Sokoban (`gin/experiments/sokoban_tiny_cpu.gin`: 6x6, one box, 6 steps, grid
render, compact prompt, thinking off, 8 new tokens, temperature 1.0) with the tiny model unless
`--model_config` asks for a bigger random one or `--model` for SmolLM2 (real weights and tokenizer; the prompt
buffer grows to `--smollm2_prompt_tokens`):

1. `device_vs_host`: the same level keys played by `sokoban_device_rollout` (the whole batch of episodes as
   ONE compiled program) and by `host_rollout` over `SokobanHostTask` (a Python loop over turns: host prompt
   assembly, one jitted generation call per turn, text decoding and parsing, one jitted env step per episode).
   Compilation is excluded (one warm-up run each); episodes/s, env steps/s and generated tokens/s side by side.
   `host` counts everything the trainer's host path does; `host_loop` leaves out building `SokobanHostTask`
   (`setup_s`: level reset and per-episode state split). Host `generate_s` includes prompt assembly, `env_s`
   includes decoding and parsing. `peer_torch`: the same levels and prompts played as RAGEN and verl-agent play
   them in one process, with the same weights in transformers: per turn `model.generate` (torch, under
   inference_mode) on the live episodes, text decoding and parsing, a Python env step per episode.
   `device_speedup` = device episodes/s over the row's. The device program generates each turn for the live
   episodes only, gathered into a static batch bucket (`rollout.device_batch_buckets`).
2. `rl_iteration`: `agentrl_jax.train._rl_iteration` (GRPO) on a `Trainer` built the way `train()` builds it,
   after one warm-up iteration: rollout / generate / env / update seconds (update includes the old-logprob
   scoring pass and is measured to completion; `update_reported_s` is the trainer's own time/update_s). Run with the device rollout (generation and env fused: env_s is not separable) and with the
   host rollout (generation and env timed apart).
3. `env_only`: the bare JAX env (`vmap(env.step)` jitted, random actions) for scale: what the env alone costs.

Timings are wall clock; on a shared CPU they move with the other load on the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import os
import shutil
import sys
import tempfile
import time

# Qwen2.5-0.5B's shape (the vocab stays the tiny tokenizer's, padded to a multiple of 8; no qkv bias, since the
# random-weight writer makes none). Enough to see how a 0.5B-parameter model moves the balance.
MODEL_PRESETS = {
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         head_dim=64, intermediate_size=4864, rope_theta=1_000_000.0, tie_word_embeddings=True),
}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CPU smoke run: batch 8, 2x4 GRPO, 1 repeat")
    ap.add_argument("--batches", default=None, help="comma-separated episode batch sizes (default 16,64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3)")
    ap.add_argument("--iterations", type=int, default=None, help="timed RL iterations (default 2)")
    ap.add_argument("--tasks_per_step", type=int, default=None, help="GRPO tasks per iteration (default gin: 8)")
    ap.add_argument("--group_size", type=int, default=None, help="GRPO rollouts per task (default gin: 8)")
    ap.add_argument("--model_config", default=None,
                    help=f"bigger random model: a preset ({', '.join(MODEL_PRESETS)}) or a JSON dict of "
                         "config.json overrides, e.g. '{\"hidden_size\": 256, \"num_hidden_layers\": 4}'")
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2", "smollm2-2l"],
                    help="real weights: the tiny model, SmolLM2-135M-Instruct from cache/ (scripts/fetch_smollm2.py), "
                         "or its first 2 layers (real tokenizer, embeddings and layers; fast enough for this CPU)")
    ap.add_argument("--smollm2_path", default=os.path.join("cache", "smollm2-135m-instruct"),
                    help="the SmolLM2 folder for --model smollm2 / smollm2-2l")
    ap.add_argument("--smollm2_prompt_tokens", type=int, default=320,
                    help="SokobanPrompter.max_prompt_tokens with SmolLM2 (its tokenizer and system prompt "
                         "take more ids than the tiny one's)")
    ap.add_argument("--no_peer", action="store_true",
                    help="skip the peer row (transformers + torch generate per turn, as RAGEN / verl-agent)")
    ap.add_argument("--peer_threads", type=int, default=1,
                    help="torch threads of the peer row (0 = torch's default); 1 because on this busy 2-core box "
                         "torch's OpenMP threads stall on descheduled peers (the README's generation note)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                    help="compute dtype (load_policy.dtype); params stay float32")
    ap.add_argument("--sections", default="device_vs_host,rl_iteration,env_only",
                    help="which sections to run (comma-separated)")
    ap.add_argument("--gin_file", default="experiments/sokoban_tiny_cpu.gin")
    ap.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the rows (list of dicts) here")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in (args.batches or ("8" if args.quick else "16,64")).split(",") if b]
    if not args.batches or min(args.batches) < 1:
        raise SystemExit("error: --batches needs positive integers, e.g. --batches 16,64")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.iterations = args.iterations or (1 if args.quick else 2)
    if args.quick:
        args.tasks_per_step = args.tasks_per_step or 2
        args.group_size = args.group_size or 4
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.model != "tiny" and args.model_config:
        raise SystemExit("error: --model_config builds a random model; drop it or use --model tiny")
    unknown = set(args.sections) - {"device_vs_host", "rl_iteration", "env_only"}
    if unknown:
        raise SystemExit(f"error: unknown --sections {sorted(unknown)}; use device_vs_host, rl_iteration, env_only")
    return args


def model_overrides(spec: str | None) -> dict | None:
    """--model_config value → config.json overrides (None = the tiny model)."""
    if not spec:
        return None
    if spec in MODEL_PRESETS:
        return dict(MODEL_PRESETS[spec])
    try:
        cfg = json.loads(spec)
    except json.JSONDecodeError:
        raise SystemExit(f"error: --model_config {spec!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor a "
                         "JSON dict of config.json fields") from None
    if not isinstance(cfg, dict):
        raise SystemExit("error: --model_config JSON must be a dict of config.json fields")
    return cfg


def _rate(n, s):
    return float(n) / s if s > 0 else float("nan")


# ------------------------------------------------------------------------------------------ build
def build_trainer(args, out_dir, model_path):
    """Parse the gin config and build the Trainer + RL train step exactly as `train()` does."""
    import gin
    import jax
    from agentrl_jax import learner, optim, rl, sharding, training_core
    from agentrl_jax import train as tm

    bindings = [f"OUTPUT_DIR = '{out_dir}'", "train.sft_steps = 0"]
    if model_path:
        bindings.append(f"MODEL_PATH = '{model_path}'")
    if args.dtype:
        bindings.append(f"load_policy.dtype = '{args.dtype}'")
    if args.tasks_per_step:
        bindings.append(f"train.tasks_per_step = {args.tasks_per_step}")
    if args.group_size:
        bindings.append(f"train.group_size = {args.group_size}")
    with _without_cwd_on_path():
        tm.parse_gin([args.gin_file], bindings + list(args.gin_bindings))

    # train()'s arguments as the experiment configures them: its defaults, overridden by the gin bindings.
    kw = {k: v.default for k, v in inspect.signature(tm.train).parameters.items()
          if v.default is not inspect.Parameter.empty}
    kw.update(gin.get_bindings("train"))
    if kw["domain"] != "sokoban":
        raise SystemExit(f"error: this benchmark plays Sokoban; {args.gin_file} sets train.domain="
                         f"{kw['domain']!r}")
    cfg = rl.RLConfig()
    mesh = sharding.make_mesh()
    tr = tm.Trainer(output_dir=kw["output_dir"], model_path=kw["model_path"], domain="sokoban",
                    rollout_mode=kw["rollout_mode"], rl_config=cfg, tasks_per_step=kw["tasks_per_step"],
                    group_size=kw["group_size"], minibatch_size=kw["minibatch_size"],
                    max_response_tokens=kw["max_response_tokens"], temperature=kw["temperature"],
                    top_p=kw["top_p"], top_k=kw["top_k"], eval_temperature=kw["eval_temperature"],
                    eval_episodes=kw["eval_episodes"], invalid_penalty=kw["invalid_penalty"], seed=args.seed,
                    mesh=mesh, thinking=kw["thinking"], logits_chunk_size=kw["logits_chunk_size"],
                    eval_domains=tuple(kw.get("eval_domains", ())))
    tx = optim.make_optimizer()
    o_sh = sharding.tree_shardings(jax.eval_shape(tx.init, tr.params), mesh, tr.rules)
    opt_state = jax.jit(tx.init, out_shardings=o_sh)(tr.params)
    spec = sharding.TrainShardings(params=tr.param_sh, opt_state=o_sh, batch=sharding.batch_sharding(mesh, tr.rules),
                                   replicated=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                                   mesh=mesh, rules=tr.rules)
    temp = kw["temperature"]
    rl_step = sharding.make_train_step(
        functools.partial(learner.rl_loss, config=cfg, prompt_len=tr.max_prompt_tokens,
                          temperature=temp if temp > 0 else 1.0, chunk_size=kw["logits_chunk_size"]),
        tx, mesh, spec, tr.graphdef, donate=False, accumulate="sum",
        compiler_options=training_core.update_compiler_options())  # the kernels train() compiles it with
    tr.ref_params = tr.params if cfg.kl_coef > 0 else None
    return tr, rl_step, opt_state, cfg


@contextlib.contextmanager
def _without_cwd_on_path():
    """Hide the working folder from imports while gin parses: gin first tries an include like 'runs/grpo.gin'
    as a Python resource, and the repo's (git-ignored) `runs/` output folder then imports as a namespace
    package without a file, which crashes gin's resource reader (TypeError on None)."""
    saved = list(sys.path)

    def shadows(entry):
        root = os.path.abspath(entry or ".")
        return any(os.path.isdir(os.path.join(root, d)) and not os.path.exists(os.path.join(root, d, "__init__.py"))
                   for d in ("runs", "models", "experiments"))

    sys.path[:] = [p for p in sys.path if not shadows(p)]
    try:
        yield
    finally:
        sys.path[:] = saved


def smollm2_folder(src: str, layers: int | None, folder: str) -> str:
    """The SmolLM2 folder itself, or (layers) a folder whose config keeps the first `layers` layers, the other
    files linked: both our loader and transformers then read the same truncated weights."""
    if not os.path.exists(os.path.join(src, "model.safetensors")):
        raise SystemExit(f"error: no SmolLM2 at {src!r}; run `python scripts/fetch_smollm2.py` or pass --smollm2_path")
    if layers is None:
        return os.path.abspath(src)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(src):
        if name != "config.json":
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(folder, name))
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["num_hidden_layers"] = int(layers)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return folder


def write_model_folder(overrides: dict, folder: str) -> str:
    from agentrl_jax.models.tiny import write_tiny_folder
    write_tiny_folder(folder, **overrides)
    return folder


# ------------------------------------------------------------------------------------------- the peer
def load_torch_model(folder: str, threads: int = 1):
    """The same weights in transformers (fp32, CPU), as RAGEN / verl-agent hold the policy for rollouts."""
    import torch
    from transformers import AutoModelForCausalLM

    if threads > 0:
        torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def peer_rollout(model, task, config, tokenizer, max_prompt_tokens: int, seed: int):
    """The episodes played the peers' way, in one process: per turn, left-pad the live episodes' prompts,
    `model.generate` (transformers + torch, under inference_mode), decode the new ids to text, parse it and
    step each env from Python (`task`: the same `SokobanHostTask` as the host row, so the same levels and
    prompts). Returns (env steps, generated tokens)."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    e, n = task.num_episodes, config.max_new_tokens
    stop = set(config.stop_ids)
    sampling = dict(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k or None) \
        if config.temperature > 0 else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    done = np.zeros(e, bool)
    steps = toks = 0
    for t in range(task.max_turns):
        active = np.flatnonzero(~done)
        if active.size == 0:
            break
        rows = [task.prompt_ids(int(i))[-max_prompt_tokens:] for i in active]
        width = max(len(r) for r in rows)
        ids = np.full((active.size, width), config.pad_id, np.int64)
        mask = np.zeros((active.size, width), np.int64)
        for j, r in enumerate(rows):
            ids[j, width - len(r):], mask[j, width - len(r):] = r, 1
        with torch.inference_mode():
            out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                 max_new_tokens=n, eos_token_id=list(config.stop_ids), pad_token_id=config.pad_id,
                                 **sampling)
        new = out[:, width:].numpy()
        answers, stopped = [], []
        for row in new.tolist():
            k = next((i for i, tok in enumerate(row) if tok in stop), None)
            stopped.append(k is not None)
            answers.append(row[:k] if k is not None else row)
            toks += (k + 1) if k is not None else len(row)
        results = task.step(active.tolist(), [tokenizer.decode(a) for a in answers], stopped)
        steps += active.size
        for j, i in enumerate(active):
            done[i] = results[j][1] or t + 1 >= task.max_turns
    return steps, toks


# ----------------------------------------------------------------------------------------- sections
def device_vs_host(tr, batches, repeats, seed, device_kind, model, peer_model=None):
    """Section 1: the same level keys, on-device episode vs host-driven loop."""
    import jax
    import numpy as np
    from agentrl_jax.domains import Tasks
    from agentrl_jax.rollout import host_rollout

    rows = []
    for e in batches:
        level_keys = jax.random.split(jax.random.PRNGKey(seed), e)
        tasks = Tasks(np.arange(e), level_keys, "train")

        def run_device(r):
            batch, stats = tr.domain.device_rollout(tr.graphdef, tr.params, tr.gen_config, tasks,
                                                    jax.random.PRNGKey(1000 + r), tr.invalid_penalty)
            return jax.device_get(jax.block_until_ready((batch, stats)))

        def run_host(r, timings):
            t0 = time.perf_counter()
            task = tr.domain.host_task(tasks)
            timings["setup"] = timings.get("setup", 0.0) + time.perf_counter() - t0
            return host_rollout(tr.graphdef, tr.params, task, tr.gen_config, jax.random.PRNGKey(1000 + r),
                                tr.tokenizer, tr.max_prompt_tokens, tr.invalid_penalty, timings=timings)

        res = {}
        for impl in ("device", "host"):
            t0 = time.perf_counter()
            run_device(-1) if impl == "device" else run_host(-1, {})  # compile + warm-up
            compile_s = time.perf_counter() - t0
            secs, steps, toks, timings = 0.0, 0, 0, {}
            for r in range(repeats):
                t0 = time.perf_counter()
                batch, _ = run_device(r) if impl == "device" else run_host(r, timings)
                secs += time.perf_counter() - t0
                steps += int(np.asarray(batch.valid).sum())
                toks += int(np.asarray(batch.response_mask).sum())
            row = dict(section="device_vs_host", impl=impl, batch=e, repeats=repeats,
                       episodes_per_s=_rate(e * repeats, secs), env_steps_per_s=_rate(steps, secs),
                       generated_tokens_per_s=_rate(toks, secs), seconds=secs / repeats,
                       env_steps=steps / repeats, generated_tokens=toks / repeats, warmup_s=compile_s,
                       generate_s=(timings.get("generate", 0.0) / repeats) if impl == "host" else None,
                       env_s=(timings.get("env", 0.0) / repeats) if impl == "host" else None,
                       device=device_kind, model=model)
            res[impl] = row
            rows.append(row)
            if impl == "host":
                # SokobanHostTask's construction (level reset, per-episode state split) counted apart: the
                # turn loop alone, as if the host path had free setup.
                setup = timings.get("setup", 0.0) / repeats
                row["setup_s"] = setup
                loop = dict(row, impl="host_loop", seconds=row["seconds"] - setup, setup_s=None, warmup_s=None)
                for k, n in (("episodes_per_s", e), ("env_steps_per_s", row["env_steps"]),
                             ("generated_tokens_per_s", row["generated_tokens"])):
                    loop[k] = _rate(n, loop["seconds"])
                res["host_loop"] = loop
                rows.append(loop)
        if peer_model is not None:
            peer = lambda r: peer_rollout(peer_model, tr.domain.host_task(tasks), tr.gen_config,  # noqa: E731
                                          tr.tokenizer, tr.max_prompt_tokens, 1000 + r)
            t0 = time.perf_counter()
            peer(-1)
            warm = time.perf_counter() - t0
            secs, steps, toks = 0.0, 0, 0
            for r in range(repeats):
                t0 = time.perf_counter()
                st, tk = peer(r)
                secs += time.perf_counter() - t0
                steps, toks = steps + st, toks + tk
            res["peer_torch"] = dict(section="device_vs_host", impl="peer_torch", batch=e, repeats=repeats,
                                     episodes_per_s=_rate(e * repeats, secs), env_steps_per_s=_rate(steps, secs),
                                     generated_tokens_per_s=_rate(toks, secs), seconds=secs / repeats,
                                     env_steps=steps / repeats, generated_tokens=toks / repeats, warmup_s=warm,
                                     generate_s=None, env_s=None, device="cpu:torch", model=model)
            rows.append(res["peer_torch"])
        for impl in res:
            res[impl]["device_speedup"] = res["device"]["episodes_per_s"] / res[impl]["episodes_per_s"]
    return rows


def rl_iterations(tr, rl_step, opt_state, cfg, iterations, seed, device_kind, model):
    """Section 2: `_rl_iteration` with the device rollout and with the host rollout (after a warm-up each)."""
    import jax
    import numpy as np
    from agentrl_jax import train as tm

    rows = []
    params0 = tr.params
    key = jax.random.PRNGKey(seed)
    for impl in ("device", "host"):
        tr.rollout_mode = impl
        params, opt = params0, opt_state
        t0 = time.perf_counter()
        params, opt, *_ = tm._rl_iteration(tr, rl_step, 1, params, opt, key, cfg)  # warm-up (compiles)
        warm = time.perf_counter() - t0
        acc = {}
        for it in range(iterations):
            t0 = time.perf_counter()
            params, opt, m, batch, _ = tm._rl_iteration(tr, rl_step, 2 + it, params, opt, key, cfg)
            jax.block_until_ready(params)
            total = time.perf_counter() - t0
            # The trainer stamps time/update_s right after dispatching the (asynchronous) train steps, before
            # they finish; the wall remainder after the rollout is the real update time.
            vals = dict(seconds=total, rollout_s=m["time/rollout_s"], update_s=total - m["time/rollout_s"],
                        update_reported_s=m["time/update_s"],
                        generate_s=m["time/generate_s"], env_s=m["time/env_s"],
                        env_steps=float(np.asarray(batch.valid).sum()),
                        generated_tokens=float(np.asarray(batch.response_mask).sum()), samples=m["samples"])
            for k, v in vals.items():
                acc[k] = acc.get(k, 0.0) + v / iterations
        episodes = tr.tasks_per_step * tr.group_size
        if impl == "device":
            acc["generate_s"], acc["env_s"] = acc["rollout_s"], None  # fused in one program
            acc["other_s"] = 0.0
        else:  # rollout time outside the turn loop's generate/env: SokobanHostTask setup, StepBatch assembly
            acc["other_s"] = acc["rollout_s"] - acc["generate_s"] - acc["env_s"]
        rows.append(dict(section="rl_iteration", impl=impl, batch=episodes, iterations=iterations,
                         episodes_per_s=_rate(episodes, acc["seconds"]),
                         env_steps_per_s=_rate(acc["env_steps"], acc["rollout_s"]),
                         generated_tokens_per_s=_rate(acc["generated_tokens"], acc["rollout_s"]),
                         warmup_s=warm, algorithm=cfg.algorithm, device=device_kind, model=model, **acc))
    tr.rollout_mode = "device"
    return rows


def env_only(tr, batches, repeats, seed, device_kind, model):
    """Section 3: the bare JAX env, `max_steps` vmapped steps with random actions in one jitted scan."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    env = tr.domain.env

    @functools.partial(jax.jit, static_argnums=1)
    def play(key, e):
        states, _ = jax.vmap(env.reset)(jax.random.split(key, e))

        def body(s, k):
            s, ts = jax.vmap(env.step)(s, jax.random.randint(k, (e,), 0, 4))
            return s, ts.reward

        return jax.lax.scan(body, states, jax.random.split(jax.random.fold_in(key, 1), env.max_steps))

    rows = []
    for e in batches:
        jax.block_until_ready(play(jax.random.PRNGKey(seed), e))
        t0 = time.perf_counter()
        for r in range(repeats):
            jax.block_until_ready(play(jax.random.PRNGKey(seed + r + 1), e))
        secs = (time.perf_counter() - t0) / repeats
        steps = e * env.max_steps  # finished episodes keep stepping (auto no-op): an upper bound of real steps
        rows.append(dict(section="env_only", impl="jax_env", batch=e, repeats=repeats,
                         episodes_per_s=_rate(e, secs), env_steps_per_s=_rate(steps, secs),
                         generated_tokens_per_s=None, seconds=secs, device=device_kind, model=model))
    del np, jnp
    return rows


# ------------------------------------------------------------------------------------------- report
def _fmt(v, w=10):
    if v is None:
        return "-".rjust(w)
    if isinstance(v, float):
        return (f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}").rjust(w)
    return str(v).rjust(w)


def print_tables(rows, header):
    print(header)
    for section, cols in (
        ("device_vs_host", ["impl", "batch", "episodes_per_s", "env_steps_per_s", "generated_tokens_per_s",
                            "seconds", "generate_s", "env_s", "setup_s", "warmup_s", "device_speedup"]),
        ("rl_iteration", ["impl", "batch", "seconds", "rollout_s", "generate_s", "env_s", "other_s", "update_s",
                          "env_steps_per_s", "generated_tokens_per_s", "episodes_per_s", "warmup_s"]),
        ("env_only", ["impl", "batch", "episodes_per_s", "env_steps_per_s", "seconds"]),
    ):
        sel = [r for r in rows if r["section"] == section]
        if not sel:
            continue
        short = {"episodes_per_s": "episodes/s", "env_steps_per_s": "steps/s", "generated_tokens_per_s": "tokens/s",
                 "device_speedup": "dev_speedup"}
        w = 10
        print(f"\n[{section}]")
        print(" ".join(short.get(c, c).rjust(w) for c in cols))
        for r in sel:
            print(" ".join(_fmt(r.get(c), w) for c in cols))


def main(argv=None):
    args = parse(argv)
    try:
        import agentrl_jax  # noqa: F401
    except ImportError:  # not installed: run from a checkout
        sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax

    from agentrl_jax.xla_cpu import host_cpu

    dev = jax.devices()[0]
    device_kind = f"{dev.platform}:{dev.device_kind} x{jax.device_count()}"
    overrides = model_overrides(args.model_config)
    tmp = tempfile.mkdtemp(prefix="bench_rl_iteration-")
    try:
        model_path = write_model_folder(overrides, os.path.join(tmp, "model")) if overrides else None
        if args.model != "tiny":
            model_path = smollm2_folder(args.smollm2_path, 2 if args.model == "smollm2-2l" else None,
                                        os.path.join(tmp, "smollm2"))
            args.gin_bindings = [f"SokobanPrompter.max_prompt_tokens = {args.smollm2_prompt_tokens}"] + list(
                args.gin_bindings)
        tr, rl_step, opt_state, cfg = build_trainer(args, os.path.join(tmp, "run"), model_path)
        n_params = sum(int(x.size) for x in jax.tree.leaves(tr.params))
        model = f"{args.model_config or args.model} ({n_params / 1e6:.2f}M params)"
        peer_model = None
        if "device_vs_host" in args.sections and not args.no_peer:
            from agentrl_jax.policy import resolve_model_path
            if args.dtype not in (None, "float32"):
                raise SystemExit("error: the peer row runs fp32; add --no_peer with --dtype bfloat16")
            peer_model = load_torch_model(resolve_model_path(model_path or "tiny"), args.peer_threads)
        header = (f"rl_iteration benchmark | device: {device_kind} | model: {model} | "
                  f"Sokoban {tr.domain.env.dim}x{tr.domain.env.dim} max_steps={tr.domain.env.max_steps} | "
                  f"max_new_tokens={tr.gen_config.max_new_tokens} temperature={tr.gen_config.temperature} | "
                  f"prompt buffer {tr.max_prompt_tokens} | {cfg.algorithm} {tr.tasks_per_step}x{tr.group_size}"
                  f"\ncpu: {host_cpu()}")
        rows = []
        if "device_vs_host" in args.sections:
            rows += device_vs_host(tr, args.batches, args.repeats, args.seed, device_kind, model, peer_model)
        if "rl_iteration" in args.sections:
            rows += rl_iterations(tr, rl_step, opt_state, cfg, args.iterations, args.seed, device_kind, model)
        if "env_only" in args.sections:
            rows += env_only(tr, args.batches, max(args.repeats, 3), args.seed, device_kind, model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_tables(rows, header)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"\nwrote {len(rows)} rows to {args.json}")
    return rows


if __name__ == "__main__":
    main()
