"""Supervised fine-tuning (SFT) on state->action pairs: `python -m agentrl_jax.sft --gin_file=gin/experiments/X.gin`.

The samples are exactly what the policy reads and writes in RL (the domains' prompt builders, chat template and
thinking setting; `agentrl_jax.expert_data` writes them as JSONL, `agentrl_jax.sft_data` reads and mixes them), and
the model, sharding, update program, checkpoints and logs are RL's (`agentrl_jax.training_core.PolicyCore`,
`Checkpointer`, `MetricsLogger`), so an SFT run folder has an RL run's layout (operative_config.gin, checkpoints/,
tb/): RL starts from it with `train.init_from`, the evaluator reads it as a run, and a killed SFT job resumes.

    sft.data = {'sciworld_expert': '/data/sciworld_expert.jsonl', 'sokoban': 'expert:sokoban:256'}
    sft.mix = {'sciworld_expert': 19, 'sokoban': 1}     # ratios counted in state-action pairs
A source is a JSONL file, or `expert:<domain>:<num_tasks>`: that domain's expert data, generated on the first run
into <output_dir>/data/<name>.jsonl (and read from there on a resume).
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m agentrl_jax.sft`: run the package's module, so gin registers `sft` once
    from agentrl_jax.sft import main

    main()
    raise SystemExit(0)

import functools
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import gin
import jax
import numpy as np

from agentrl_jax import checkpoint as ckpt
from agentrl_jax import distributed, domains, learner, optim, sft_data, sharding
from agentrl_jax.logging import MetricsLogger
from agentrl_jax.training_core import PolicyCore, checkpoints_folder

EXPERT_PREFIX = "expert:"


# ------------------------------------------------------------------------------------------------ data
def _parse_expert_source(name: str, spec: str):
    parts = spec[len(EXPERT_PREFIX):].split(":")
    if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
        raise ValueError(f"sft.data[{name!r}] = {spec!r}: write an expert source as 'expert:<domain>:<num_tasks>' "
                         f"(e.g. 'expert:sokoban:256'), or give a JSONL file.")
    return parts[0], int(parts[1])


def check_sources(data: Mapping[str, str], mix: Optional[Mapping[str, float]], init_from: Optional[str],
                  resuming: bool = False, thinking: Optional[bool] = None) -> None:
    """Bad data settings fail before the model loads, each with the fix. `thinking`: the run's setting, which a
    file's header (when it records one) must match."""
    if not data:
        raise ValueError("sft.data is empty: name at least one source, e.g. sft.data = {'sokoban': "
                         "'expert:sokoban:256'} or {'mine': '/path/to/records.jsonl'}.")
    for name, spec in data.items():
        if str(spec).startswith(EXPERT_PREFIX):
            domains.domain_class(_parse_expert_source(name, str(spec))[0])
        elif not os.path.isfile(str(spec)):
            raise FileNotFoundError(f"SFT data file {spec!r} (sft.data[{name!r}]) not found; write it with "
                                    f"`python -m agentrl_jax.expert_data` or use 'expert:<domain>:<num_tasks>'.")
        elif thinking is not None:
            check_thinking(name, str(spec), thinking)
    unknown = sorted(set(mix or {}) - set(data))
    if unknown:
        raise ValueError(f"sft.mix names {unknown} with no data; sft.data has {sorted(data)}.")
    if init_from and not resuming:
        checkpoints_folder(init_from, "sft.init_from")


def check_thinking(name: str, path: str, thinking: bool) -> None:
    """A file written for the other thinking setting would train the wrong answer format (with or without the
    think block) silently; one without the setting in its header (older files) is accepted."""
    written = sft_data.read_meta(path).get("thinking")
    if written is not None and bool(written) != bool(thinking):
        raise ValueError(f"SFT data {path!r} (sft.data[{name!r}]) was written with thinking={bool(written)}, this run "
                         f"has sft.thinking={bool(thinking)}: set THINKING = {bool(written)} or regenerate the file "
                         f"with THINKING = {bool(thinking)} (python -m agentrl_jax.expert_data).")


def load_sources(data: Mapping[str, str], core: PolicyCore, data_dir: str, seed: int) -> Dict[str, List[dict]]:
    """Each named source's records: read from its JSONL file, or (an `expert:` source) generated once with the
    domain's expert in this run's prompt format and stored under `data_dir`."""
    out = {}
    for i, (name, spec) in enumerate(sorted(data.items())):
        if not str(spec).startswith(EXPERT_PREFIX):
            out[name] = sft_data.read_jsonl(str(spec))
            continue
        domain_name, n = _parse_expert_source(name, str(spec))
        path = os.path.join(data_dir, f"{name}.jsonl")
        if os.path.isfile(path):
            out[name] = sft_data.read_jsonl(path)
            continue
        # Every process generates the same records (a function of the seed); process 0 stores them.
        domain = domains.make_domain(domain_name, chat=core.chat, seed=seed)
        try:
            out[name] = domain.expert_records(n, seed + 10_000 + i)
        finally:
            domain.close()
        if jax.process_index() == 0:
            sft_data.write_jsonl(path + ".tmp", out[name], sft_data.data_meta(core.chat, core.tokenizer))
            os.replace(path + ".tmp", path)  # a killed generation leaves no half file behind
    return out


def sample_plan(sources: Mapping[str, Sequence[dict]], mix: Optional[Mapping[str, float]], total: int,
                seed: int) -> List[dict]:
    """The `total` state-action pairs the run trains on, in order: drawn by `mix` (ratios counted in pairs), or
    without a mix every source's pairs, reshuffled each pass until `total`. A function of the data and seed, so
    a resumed run continues the same sequence. Each pair carries its sft.data name (`sft_source`), which the log
    counts: records' own `source` strings do not tell sources apart (ALFWorld and WebShop rollouts of one run
    share one)."""
    rng = np.random.default_rng(seed)
    sources = {name: [dict(r, sft_source=name) for r in recs] for name, recs in sources.items()}
    if mix:
        return sft_data.mix(sources, mix, total, rng)
    pool = [r for name in sorted(sources) for r in sources[name]]
    if not pool:
        raise ValueError("the SFT sources hold no records.")
    out: List[dict] = []
    while len(out) < total:
        out.extend(pool[i] for i in rng.permutation(len(pool)))
    return out[:total]


def packed_lengths(records: Sequence[dict], max_prompt_tokens: Optional[int], max_response_tokens: int):
    """(prompt slots, answer slots): the longest prompt and answer in the data, capped by the bindings."""
    p = max(len(r["prompt_ids"]) for r in records)
    n = max(len(r["answer_ids"]) for r in records)
    return (p if max_prompt_tokens is None else min(p, max_prompt_tokens)), min(n, max_response_tokens)


# ---------------------------------------------------------------------------------------------- update
def sft_optimizer(num_steps: int):
    """AdamW under the gin scope `sft` (`sft/agentrl_jax.optim.make_schedule.peak_lr = 5e-6`, ...), its schedule
    spanning this run's `num_steps` updates."""
    with gin.config_scope("sft"):
        return optim.make_optimizer(learning_rate=optim.make_schedule(total_steps=num_steps))


def make_sft_step(core: PolicyCore, tx, params, prompt_len: int, accum_steps: int = 1):
    """(step fn, fresh optimizer state, its shardings) for the token-mean NLL of the answers."""
    loss = functools.partial(learner.sft_loss, prompt_len=prompt_len, chunk_size=core.logits_chunk_size)
    return core.make_update(loss, tx, params, accum_steps)


# ------------------------------------------------------------------------------------------- entry point
@gin.configurable(denylist=["mesh"])
def sft(
    output_dir: str = gin.REQUIRED,
    model_path: str = gin.REQUIRED,
    data: Mapping[str, str] = gin.REQUIRED,
    mix: Optional[Mapping[str, float]] = None,
    num_steps: int = 100,
    batch_size: int = 32,
    micro_batch_size: Optional[int] = None,
    max_prompt_tokens: Optional[int] = None,
    max_response_tokens: int = 512,
    thinking: bool = True,
    init_from: Optional[str] = None,
    checkpoint_every: int = 25,
    keep_checkpoints: int = 2,
    logits_chunk_size: Optional[int] = 128,
    log_every: int = 10,
    seed: int = 0,
    mesh=None,
) -> Dict[str, float]:
    """`num_steps` updates of `batch_size` state-action pairs; returns the last metrics.

    data / mix: the named sources and their ratios (module doc). thinking: the chat format the samples were
    built for (records generated here follow it; a JSONL file whose header records the other setting is
    refused). init_from: an RL or SFT run's output_dir to start from (its latest checkpoint's model).
    max_prompt_tokens / max_response_tokens: caps on the packed sample (prompts are cut from the left, like RL's
    window; None = the longest prompt in the data). micro_batch_size: gradient accumulation (a memory knob).
    Optimizer: AdamW under gin scope `sft` (gin/runs/sft.gin: lr 5e-6 cosine, warm-up ratio 0.1).
    """
    for name, v in (("num_steps", num_steps), ("batch_size", batch_size), ("max_response_tokens",
                                                                           max_response_tokens)):
        if int(v) < 1:
            raise ValueError(f"sft.{name} must be >= 1, got {v}.")
    micro = micro_batch_size or batch_size
    if micro < 1 or batch_size % micro:
        raise ValueError(f"sft.micro_batch_size={micro_batch_size} must divide sft.batch_size={batch_size}.")
    # A run with checkpoints of its own resumes from them (its init_from source is no longer read).
    check_sources(data, mix, init_from, resuming=bool(ckpt_steps(os.path.join(output_dir, "checkpoints"))),
                  thinking=thinking)
    distributed.initialize()
    mesh = mesh or sharding.make_mesh()
    divisor = sharding.batch_divisor(mesh)
    if micro % divisor:
        raise ValueError(f"sft.batch_size / micro-batches = {micro} samples must divide over the mesh's batch axes "
                         f"({divisor} devices): set sft.batch_size (or sft.micro_batch_size) to a multiple of "
                         f"{divisor}.")
    os.makedirs(output_dir, exist_ok=True)
    core = PolicyCore(model_path=model_path, mesh=mesh, thinking=thinking, logits_chunk_size=logits_chunk_size)
    sources = load_sources(data, core, os.path.join(output_dir, "data"), seed)
    plan = sample_plan(sources, mix, num_steps * batch_size, seed)
    p, n = packed_lengths(plan, max_prompt_tokens, max_response_tokens)
    samples = sft_data.pack(plan, p, n, core.pad_id)
    tx = sft_optimizer(num_steps)
    with open(os.path.join(output_dir, "operative_config.gin"), "w") as f:  # after the optimizer: its settings too
        f.write(gin.operative_config_str())

    params = core.params
    step_fn, opt_state, o_sh = make_sft_step(core, tx, params, p, batch_size // micro)
    key = jax.random.PRNGKey(seed)
    if jax.process_count() > 1:  # Orbax saves global arrays only when several processes checkpoint
        key = jax.device_put(key, core.train_sh.replicated)
    checkpointer = ckpt.Checkpointer(os.path.join(output_dir, "checkpoints"), save_every=checkpoint_every,
                                     keep=keep_checkpoints)
    ckpt.install_preemption_handler()
    logger = MetricsLogger(os.path.join(output_dir, "tb"), total_steps=num_steps, bar_keys=["sft/nll"])
    logger.gin_config(gin.operative_config_str())
    counts = _source_counts(plan)
    logger.write(f"sft: {len(plan)} state-action pairs ({json.dumps(counts)}), prompt {p} + answer {n} slots, "
                 f"{num_steps} steps of {batch_size}")
    start = 0
    last: Dict[str, float] = {}
    preempted_at: Optional[int] = None
    try:
        restored = checkpointer.restore_latest(core.abstract_state(params, opt_state, o_sh, key))
        if restored is not None:
            start, state, _ = restored
            params, opt_state = core.full_params(state["params"]), state["opt_state"]
            logger.write(f"resumed from step {start} ({checkpointer.directory})")
        elif init_from:
            params, source_step = core.init_from(init_from, params)
            logger.write(f"starting from {init_from} (its checkpoint at step {source_step})")
        # The plan is consumed in order, one minibatch per step: step s trains on pairs [s*B, (s+1)*B).
        for step in range(start + 1, num_steps + 1):
            rows = slice((step - 1) * batch_size, step * batch_size)
            mb = learner.with_counts({k: v[rows] for k, v in samples.items()} | {"weight": np.ones(batch_size,
                                                                                                  np.float32)})
            params, opt_state, m = step_fn(params, opt_state, core.shard(mb, batch_size // micro),
                                           jax.random.fold_in(key, step))
            last = {f"sft/{k}": float(v) for k, v in m.items()}
            if step % log_every == 0 or step == num_steps:
                logger.scalars(step, last)
            preempted = ckpt.preemption_requested(step)
            checkpointer.maybe_save(step, {"params": core.saved_params(params), "opt_state": opt_state, "key": key},
                                    extra_json={"step": step}, metrics=last, force=preempted or step == num_steps)
            if preempted:
                logger.write(f"preemption requested: saved step {step}, exiting")
                preempted_at = step
                break
        if preempted_at is None:
            logger.write(f"sft done: {json.dumps({k: round(v, 4) for k, v in last.items()})}; checkpoints in "
                         f"{checkpointer.directory}; start RL from it with train.init_from = '{output_dir}'")
    finally:
        checkpointer.close()
        logger.close()
    if preempted_at is not None:  # after the checkpoints are closed: the save is on disk
        raise ckpt.Preempted(preempted_at, output_dir)
    return last


def ckpt_steps(folder: str):
    """The step folders a checkpoint directory holds (none when it does not exist)."""
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def _source_counts(plan: Sequence[dict]) -> Dict[str, int]:
    """Pairs per sft.data name and domain ("alfworld_rollout:alfworld"): the mix as trained, ratio by ratio."""
    out: Dict[str, int] = {}
    for r in plan:
        key = f"{r.get('sft_source', r['source'])}:{r['domain']}"
        out[key] = out.get(key, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Optional[Sequence[str]] = None) -> None:
    from agentrl_jax.train import run_entry_point  # noqa: PLC0415 (train imports this module)

    run_entry_point(sft, argv, "an SFT run; see gin/runs/sft.gin")
