"""Cross-domain evaluation: `python -m agentrl_jax.evaluate --gin_file=gin/experiments/X_eval.gin`.

Rows are policies: the starting policy (a Hugging Face folder or "tiny") and one row per training run (a run
folder written by `agentrl_jax.train`: its checkpoints, and `operative_config.gin` for its training domain and
thinking setting). Columns are domains, each on a fixed held-out split. A cell of work is (row, checkpoint,
domain, seed): pass@1 success per task at the validation temperature; a row's matrix entry averages its last
`num_checkpoints` checkpoints and the seeds (the study: last 4 checkpoints, 3 seeds).

Every finished cell is written at once (`cells/<id>.json`); a rerun reuses every cell whose checkpoint files and
settings are unchanged, so a killed evaluation resumes without recomputing. Outputs in `output_dir`:
results.json (matrix, intervals, ranking, ΔID, optional ΔOOD against another results.json, the operative gin
config and checkpoint ids), table.md, heatmap.png and TensorBoard scalars (tb/).
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import logging as _pylogging
import os
import re
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import jax
import numpy as np
from flax import nnx

from agentrl_jax import checkpoint as ckpt
from agentrl_jax import domains as registry
from agentrl_jax import protocol, report, sharding
from agentrl_jax import generate as gen
from agentrl_jax.chat import ChatFormat
from agentrl_jax.logging import MetricsLogger
from agentrl_jax.models.lora import LoRAConfig, lora_config
from agentrl_jax.policy import load_policy, restore_checkpoint_params

log = _pylogging.getLogger("agentrl_jax.evaluate")
START_ROW = "start"
CELL_VERSION = 1
# Domain settings that change how fast episodes run, not what they give (seeds fix the tasks).
_RESULT_NEUTRAL = ("num_workers", "envs_per_worker", "step_timeout_s")


# ------------------------------------------------------------------------------------------- run folders
def run_settings(run_dir: str) -> Dict[str, Any]:
    """`train.*` (or an SFT run's `sft.*`) bindings of a run's operative config (literal values only), e.g. domain,
    thinking, model_path."""
    path = os.path.join(run_dir, "operative_config.gin")
    if not os.path.isfile(path):
        raise ValueError(f"{run_dir!r} is not a training run folder (no operative_config.gin); point evaluate.runs at "
                         f"the train.output_dir of a run, or evaluate a Hugging Face folder as evaluate.start_model.")
    with open(path) as f:
        # gin writes a long value on continuation lines (a trailing backslash, then indented lines): one line each.
        text = re.sub(r"\n[ \t]+", " ", re.sub(r"\\\n[ \t]*", "", f.read()))

    def value(literal: str):
        try:
            return ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            return literal

    macros = {m.group(1): value(m.group(2)) for m in re.finditer(r"^([A-Z_][A-Z0-9_]*)\s*=\s*(.+?)\s*$", text, re.M)}

    def bindings(configurable: str) -> Dict[str, Any]:
        found = {}
        for m in re.finditer(rf"^{configurable}\.(\w+)\s*=\s*(.+?)\s*$", text, re.MULTILINE):
            v = m.group(2)
            found[m.group(1)] = macros.get(v[1:], v) if v.startswith("%") else value(v)
        return found

    # An SFT run (`python -m agentrl_jax.sft`) has no train.* bindings: its sft.* ones (model_path, thinking) serve.
    out: Dict[str, Any] = bindings("train") or bindings("sft")
    out["augmentation"] = _augmentation_of(text)
    out["lora"] = bindings("lora")  # the run's adapters (rank 0 or absent: full fine-tuning)
    return out


def run_lora(run_dir: str):
    """The `LoRAConfig` a training run trained with (rank 0 = full fine-tuning), from its operative config: the
    policy that restores its checkpoints must carry the same adapters."""
    return lora_config(**run_settings(run_dir)["lora"])


def _augmentation_of(config_text: str) -> str:
    """The distractor setting a run was trained with: the `augment.*` / `<domain>/augment.*` bindings of the
    scopes that add distractors (epsilon > 0 and p > 0; a scope falls back to the unscoped values), "none"
    without any. The operative config lists every domain's scope, at its defaults too."""
    values: Dict[str, Dict[str, str]] = {}
    # A value bound to a macro (`sokoban/augment.epsilon = %AUG_EPSILON`) reads the macro's value.
    macros = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=\s*(.+?)\s*$", config_text, re.M))
    for m in re.finditer(r"^(?:(\w+)/)?augment\.(\w+)\s*=\s*(.+?)\s*$", config_text, re.M):
        v = m.group(3)
        values.setdefault(m.group(1) or "", {})[m.group(2)] = macros.get(v[1:], v) if v.startswith("%") else v

    def number(scope, name, default):
        v = values.get(scope, {}).get(name, values.get("", {}).get(name, default))
        try:
            return float(ast.literal_eval(v))
        except (ValueError, SyntaxError, TypeError):
            return float(default)

    lines = []
    for scope in sorted(values):
        if number(scope, "epsilon", "0") > 0 and number(scope, "p", "1") > 0:
            prefix = f"{scope}/augment" if scope else "augment"
            lines += [f"{prefix}.{k} = {v}" for k, v in sorted(values[scope].items())]
    return "; ".join(lines) if lines else "none"


def run_steps(run_dir: str) -> List[int]:
    folder = os.path.join(run_dir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []
    if not steps:
        raise ValueError(f"no checkpoint in {folder!r}: the run saved none yet (train.checkpoint_every) or the path "
                         f"is wrong; evaluate.runs maps a row name to a train.output_dir.")
    return steps


def select_steps(available: Sequence[int], steps: Union[str, Sequence[int]], num_checkpoints: int,
                 every: Optional[int] = None, final: Optional[int] = None) -> List[int]:
    """"last" = the study's last `num_checkpoints` on the run's schedule (`every`: its checkpoint_every, `final`:
    its num_steps; an off-schedule preemption save does not count); "latest" = the newest; or an explicit list
    (all must exist)."""
    if steps == "last":
        return protocol.last_checkpoints(available, num_checkpoints, every, final)
    if steps == "latest":
        return [max(available)]
    missing = sorted(set(int(s) for s in steps) - set(available))
    if missing:
        raise ValueError(f"checkpoint steps {missing} do not exist (available: {list(available)}); fix evaluate.steps.")
    return sorted(int(s) for s in steps)


def schedule_of(cfg: Mapping[str, Any]) -> Tuple[Optional[int], Optional[int]]:
    """(checkpoint_every, num_steps) of a run's settings (train.* or sft.*; None where a value is not a number)."""
    def number(name):
        v = cfg.get(name)
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

    return number("checkpoint_every"), number("num_steps")


def files_fingerprint(folder: str) -> str:
    """Names, sizes and modification times of every file below `folder`: a rewritten checkpoint changes it."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            h.update(f"{os.path.relpath(os.path.join(root, f), folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ rows
@dataclasses.dataclass(frozen=True)
class Row:
    """A policy to evaluate: `checkpoints` maps a checkpoint id (a step, or 0 for the starting model) to its
    parameters' source."""

    name: str
    model_path: str
    train_domain: Optional[str]
    thinking: bool
    augmentation: str
    run_dir: Optional[str]
    steps: Tuple[int, ...]
    lora: Any = None  # the run's LoRAConfig (None: the starting model, no adapters)

    def checkpoint_folder(self, step: int) -> str:
        return os.path.join(self.run_dir, "checkpoints", str(step)) if self.run_dir else self.model_path


def build_rows(start_model: Optional[str], runs: Mapping[str, str], steps, num_checkpoints: int,
               start_thinking: bool) -> List[Row]:
    rows = []
    if start_model:
        rows.append(Row(START_ROW, start_model, None, start_thinking, "none", None, (0,)))
    for name, run_dir in runs.items():
        if name == START_ROW:
            raise ValueError(f"a run may not be named {START_ROW!r} (the starting policy's row); rename it.")
        cfg = run_settings(run_dir)
        domain = cfg.get("domain", cfg.get("env_name"))  # None: an SFT run, which has no training domain
        rows.append(Row(name, str(cfg.get("model_path", start_model)), None if domain is None else str(domain),
                        bool(cfg.get("thinking", True)), cfg["augmentation"], run_dir,
                        tuple(select_steps(run_steps(run_dir), steps, num_checkpoints, *schedule_of(cfg))),
                        lora_config(**cfg["lora"])))
    if not rows:
        raise ValueError("nothing to evaluate: set evaluate.start_model (a Hugging Face folder or 'tiny') and/or "
                         "evaluate.runs = {'<row name>': '<train.output_dir>'}.")
    return rows


# ----------------------------------------------------------------------------------------------- cells
@dataclasses.dataclass(frozen=True)
class CellSpec:
    row: str
    step: int
    domain: str
    split: str
    seed: int

    @property
    def cell_id(self) -> str:
        return f"{self.row}__{self.step}__{self.domain}__{self.split}__{self.seed}"


def cell_fingerprint(row: Row, spec: CellSpec, settings: Mapping[str, Any]) -> str:
    """What a cell's result depends on: the checkpoint's files and the evaluation settings."""
    payload = {"version": CELL_VERSION, "checkpoint": files_fingerprint(row.checkpoint_folder(spec.step)),
               "model_path": row.model_path, "thinking": row.thinking, **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cell(folder: str, spec: CellSpec, fingerprint: str) -> Optional[dict]:
    path = os.path.join(folder, spec.cell_id + ".json")
    try:
        with open(path) as f:
            cell = json.load(f)
    except (OSError, ValueError):
        return None
    return cell if cell.get("fingerprint") == fingerprint else None


def write_cell(folder: str, cell: dict) -> None:
    """Atomically: a kill mid-write leaves either the old file or the new one, never half a cell."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, cell["id"] + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(cell, f)
    os.replace(path + ".tmp", path)


def cell_metrics(parts) -> Dict[str, Any]:
    """Per-task success (lost episodes as None) and the cell's rates, from a domain's rollout chunks."""
    from agentrl_jax.train import _kept, _summarise_parts  # noqa: PLC0415 (one summary for training and eval)

    success: List[Optional[float]] = []
    for _batch, stats in parts:
        kept = _kept(stats)
        success += [float(s) if k else None for s, k in zip(np.asarray(stats.success), kept)]
    m = _summarise_parts(parts)
    return {"success": success, "invalid_action_rate": m["invalid_action_rate"],
            "episode_length": m["episode_length"], "response_tokens_per_turn": m["response_tokens_mean"],
            "lost_episodes": int(m["lost_episodes"]), "success_rate": m["success_rate"]}


# ------------------------------------------------------------------------------------------ aggregation
def cell_array(cells: Sequence[dict], steps: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
    """[checkpoints, seeds, tasks] success (NaN = a lost episode), from the cells of one (row, domain)."""
    by = {(c["step"], c["seed"]): c["success"] for c in cells}
    n = max(len(v) for v in by.values())
    out = np.full((len(steps), len(seeds), n), np.nan)
    for i, st in enumerate(steps):
        for j, sd in enumerate(seeds):
            vals = by[(st, sd)]
            out[i, j, : len(vals)] = [np.nan if v is None else v for v in vals]
    return out


def summarise_entry(cells: Sequence[dict], steps: Sequence[int], seeds: Sequence[int], n_boot: int,
                    level: float) -> Dict[str, Any]:
    """One matrix entry: success (percent), its 95% interval (Wilson for one checkpoint x one seed, else a
    bootstrap over tasks x seeds x checkpoints), and the cell rates averaged."""
    arr = cell_array(cells, steps, seeds)
    success = protocol.average_cells(arr)
    if arr.shape[0] * arr.shape[1] == 1:
        ok = arr[~np.isnan(arr)]
        lo, hi = protocol.wilson_interval(int(ok.sum()), int(ok.size))
        method = "wilson"
    else:
        filled = np.where(np.isnan(arr), np.nanmean(arr), arr)  # a lost episode counts as its cell's mean
        lo, hi = protocol.bootstrap_interval(filled, n_boot=n_boot, level=level)
        method = "bootstrap"
    mean = lambda k: float(np.mean([c[k] for c in cells]))  # noqa: E731
    return {"success": 100.0 * success, "interval": [100.0 * lo, 100.0 * hi], "interval_method": method,
            "tasks": int(arr.shape[2]), "checkpoints": list(steps), "seeds": list(seeds),
            "invalid_action_rate": mean("invalid_action_rate"), "episode_length": mean("episode_length"),
            "response_tokens_per_turn": mean("response_tokens_per_turn"),
            "lost_episodes": int(sum(c["lost_episodes"] for c in cells))}


# ------------------------------------------------------------------------------------------------ policy
class PolicyCache:
    """One policy structure per (model folder, thinking); parameters swapped per checkpoint."""

    def __init__(self, mesh):
        self.mesh, self.rules = mesh, sharding.logical_rules()
        self._models: Dict[str, tuple] = {}

    def model(self, model_path: str, lora_settings=None):
        """(graphdef, params, shardings, tokenizer) of a model folder, with a run's LoRA adapters when given."""
        lora_settings = lora_settings or LoRAConfig()  # the starting model: no adapters, whatever gin says
        key = (model_path, lora_settings)
        if key not in self._models:
            policy, tokenizer = load_policy(model_path, mesh=self.mesh, lora_settings=lora_settings)
            graphdef, params, _ = nnx.split(policy, nnx.Param, ...)
            param_sh = sharding.tree_shardings(params, self.mesh, self.rules)
            self._models[key] = (graphdef, jax.device_put(params, param_sh), param_sh, tokenizer)
        return self._models[key]

    def params(self, row: Row, step: int):
        graphdef, params, param_sh, tokenizer = self.model(row.model_path, row.lora)
        if row.run_dir is not None:
            folder = os.path.join(row.run_dir, "checkpoints")
            checkpointer = ckpt.Checkpointer(folder, async_save=False)
            try:
                params = restore_checkpoint_params(checkpointer, step, params, param_sh)
            finally:
                checkpointer.close()
        return graphdef, params, tokenizer


# ---------------------------------------------------------------------------------------------- evaluate
@gin.configurable(denylist=["mesh"])
def evaluate(
    output_dir: str = gin.REQUIRED,
    domains: Sequence[str] = gin.REQUIRED,
    start_model: Optional[str] = None,
    start_thinking: bool = True,
    runs: Mapping[str, str] = {},  # noqa: B006 (gin passes dicts)
    steps: Union[str, Sequence[int]] = "last",
    num_checkpoints: int = 4,
    seeds: Sequence[int] = (0, 1, 2),
    episodes: Union[int, Mapping[str, int], None] = None,
    splits: Mapping[str, str] = {},  # noqa: B006
    temperature: float = 0.4,
    max_response_tokens: int = 512,
    rollout_mode: str = "device",
    prompt_mode: str = "window",
    max_context_tokens: int = 4096,
    invalid_penalty: float = -0.1,
    tie: float = protocol.DEFAULT_TIE,
    n_boot: int = 2000,
    interval_level: float = 0.95,
    compare_to: Optional[str] = None,
    task_seed: int = 0,
    mesh=None,
) -> Dict[str, Any]:
    """Evaluate every row on every domain in `domains`; returns the results dict (also results.json).

    start_model: the starting policy's folder ("tiny" or a Hugging Face folder), evaluated with start_thinking;
    also the model structure for runs whose config names none. runs: {row name: train.output_dir}. steps: "last"
    (the last `num_checkpoints`), "latest", or a list of steps. episodes: tasks per domain (an int, a dict per
    domain, or None = all of a split whose size is known, else 64). splits: held-out split per domain (default:
    each domain's `eval_split`, e.g. ALFWorld valid_unseen). compare_to: a baseline results.json for ΔOOD (this
    run = augmented, that one = base). task_seed: the seed of the task sets (Sokoban's held-out levels: use the
    training runs' train.seed to get the levels they held out).
    """
    columns = [parse_column(c) for c in domains]
    if not domains:
        raise ValueError("evaluate.domains is empty; list the domains to evaluate, e.g. ['sokoban', 'alfworld'].")
    if prompt_mode not in registry.PROMPT_MODES or rollout_mode not in registry.ROLLOUT_MODES:
        raise ValueError(f"evaluate.prompt_mode must be one of {registry.PROMPT_MODES} and rollout_mode one of "
                         f"{registry.ROLLOUT_MODES}.")
    rows = build_rows(start_model, runs, steps, num_checkpoints, start_thinking)
    os.makedirs(output_dir, exist_ok=True)
    cells_dir = os.path.join(output_dir, "cells")
    mesh = mesh or sharding.make_mesh()
    policies = PolicyCache(mesh)
    settings = registry.RolloutSettings(rollout_mode, prompt_mode, max_context_tokens, invalid_penalty)
    seeds = [int(s) for s in seeds]
    logger = MetricsLogger(os.path.join(output_dir, "tb"), progress=False)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # Domains are built lazily per (thinking setting, domain): rows that read the same prompts share the pools.
    built: Dict[Tuple[bool, str, str], registry.Domain] = {}
    plan = [(row, step, c) for row in rows for step in row.steps for c in columns]
    total, done, reused = len(plan) * len(seeds), 0, 0
    cells: Dict[Tuple[str, str], List[dict]] = {}
    domain_meta: Dict[str, Dict[str, Any]] = {}
    try:
        for row in rows:
            graphdef, tokenizer = policies.model(row.model_path)[0], policies.model(row.model_path)[3]
            chat = ChatFormat.from_tokenizer(tokenizer, thinking=row.thinking)
            for step in row.steps:
                params = None
                for label, name, col_split in columns:
                    n_tasks = _episodes_for(label, episodes) or _episodes_for(name, episodes)
                    if (row.thinking, row.model_path, name) not in built:
                        built[(row.thinking, row.model_path, name)] = registry.make_domain(
                            name, chat=chat, seed=task_seed, num_eval_tasks=n_tasks or 64)
                    domain = built[(row.thinking, row.model_path, name)]
                    split = domain.check_eval_split(col_split or splits.get(name, domain.eval_split))
                    n = n_tasks or domain.task_count(split) or 64
                    tasks = domain.eval_tasks(n, split)
                    if tasks.keys is not None:  # keys live replicated next to the (sharded) parameters
                        tasks = dataclasses.replace(tasks, keys=jax.device_put(tasks.keys, replicated))
                    domain_meta[label] = {"domain": name, "split": split, "tasks": n}
                    cfg = _eval_config(tokenizer, chat, temperature, domain.max_response_tokens or max_response_tokens)
                    cell_settings = {"column": label, "domain": name, "split": split, "tasks": n, "temperature": temperature,
                                     "max_new_tokens": cfg.max_new_tokens, "rollout": dataclasses.asdict(settings),
                                     "task_seed": task_seed, "domain_config": _domain_config(name)}
                    for seed in seeds:
                        spec = CellSpec(row.name, step, name, split, seed)
                        fp = cell_fingerprint(row, spec, cell_settings)
                        cell = read_cell(cells_dir, spec, fp)
                        done += 1
                        if cell is not None:
                            reused += 1
                        else:
                            if params is None:
                                _, params, _ = policies.params(row, step)
                            t0 = time.perf_counter()
                            key = jax.device_put(jax.random.fold_in(jax.random.PRNGKey(seed), step), replicated)
                            def progress(k, n_all, _msg=f"{row.name} step {step} on {label} seed {seed}"):
                                if k < n_all:  # a cell of several pool batches reports as it goes
                                    logger.write(f"  {_msg}: {k}/{n_all} episodes")

                            parts = domain.rollout_chunks(graphdef, params, tasks, key, cfg, tokenizer, settings,
                                                          progress=progress)
                            cell = {"id": spec.cell_id, "fingerprint": fp, **dataclasses.asdict(spec),
                                    "thinking": row.thinking,
                                    "seconds": time.perf_counter() - t0, **cell_metrics(parts)}
                            write_cell(cells_dir, cell)
                            logger.write(f"cell {done}/{total}: {row.name} step {step} on {name}/{split} seed "
                                         f"{seed}: success {cell['success_rate']:.3f} over {n} tasks "
                                         f"({cell['seconds']:.1f} s)")
                        cells.setdefault((row.name, label), []).append(cell)
                    # Per-checkpoint curves: the seeds' mean at the checkpoint's step.
                    rates = [c["success_rate"] for c in cells[(row.name, label)] if c["step"] == step]
                    logger.scalars(step, {f"checkpoints/{row.name}/{label}/success_rate": float(np.mean(rates))})
        results = _results(rows, [c[0] for c in columns], cells, seeds, domain_meta, n_boot, interval_level, tie,
                           compare_to)
        results["cells_reused"], results["cells_total"] = reused, total
        _write_outputs(output_dir, results, logger)
        logger.write(f"evaluation done: {total} cells ({reused} reused from an earlier run) -> "
                     f"{os.path.join(output_dir, 'results.json')}")
        return results
    finally:
        for d in built.values():
            d.close()
        logger.close()


def parse_column(spec: str) -> Tuple[str, str, Optional[str]]:
    """A column of the matrix: "alfworld" (the domain's split from evaluate.splits / its eval_split) or
    "alfworld:valid_seen" (an explicit split, e.g. ALFWorld's in-distribution one). (label, domain, split)."""
    name, _, split = str(spec).partition(":")
    registry.domain_class(name)
    return str(spec), name, split or None


def id_column(train_domain: Optional[str], cols: Sequence[str]) -> Optional[str]:
    """A row's in-domain column: the plain domain column if listed, else its first "domain:split" column."""
    if train_domain is None:
        return None
    if train_domain in cols:
        return train_domain
    return next((c for c in cols if c.partition(":")[0] == train_domain), None)


def _episodes_for(name: str, episodes) -> Optional[int]:
    if isinstance(episodes, Mapping):
        return episodes.get(name)
    return None if episodes is None else int(episodes)


def _eval_config(tokenizer, chat, temperature: float, max_new_tokens: int) -> gen.GenerationConfig:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return gen.GenerationConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                stop_ids=tuple(chat.stop_ids), pad_id=pad)


def _domain_config(name: str) -> str:
    """The gin bindings of the domain's configurables (its env, pool and prompt settings), for the fingerprint."""
    # Distractor settings too (`<domain>/augment.*`, and unscoped `augment.*`): they change episodes with in_eval.
    prefixes = tuple(f"{c}." for c in registry.domain_class(name).gin_configurables) + (f"{name}/augment.", "augment.")
    return "\n".join(sorted(line for line in gin.config_str().splitlines() if line.startswith(prefixes)
                            and not any(f".{k} " in line for k in _RESULT_NEUTRAL)))


def _results(rows: Sequence[Row], cols: Sequence[str], cells, seeds, domain_meta, n_boot, level, tie,
             compare_to) -> Dict[str, Any]:
    entries: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        entries[row.name] = {}
        for col in cols:
            entries[row.name][col] = summarise_entry(cells[(row.name, col)], row.steps, seeds, n_boot, level)
    start = START_ROW if any(r.name == START_ROW for r in rows) else None
    # Without a starting policy (only runs evaluated, e.g. one run per evaluation), the matrix has an empty
    # start row: no ΔID, the runs still ranked against each other.
    empty_start = {} if start is not None else {START_ROW: {c: None for c in cols}}
    matrix = protocol.SuccessMatrix(
        rows=tuple(empty_start) + tuple(r.name for r in rows), cols=tuple(cols),
        success={**empty_start, **{r.name: {c: entries[r.name][c]["success"] for c in cols} for r in rows}},
        start_row=START_ROW,
        train_domain={**{k: None for k in empty_start}, **{r.name: id_column(r.train_domain, cols) for r in rows}})
    out: Dict[str, Any] = {
        "matrix": _matrix_json(matrix),
        "entries": entries,
        "rows": {r.name: {"train_domain": r.train_domain, "thinking": r.thinking, "augmentation": r.augmentation,
                          "model_path": r.model_path, "run_dir": r.run_dir, "checkpoints": list(r.steps)}
                 for r in rows},
        "domains": domain_meta,
        "ranking": protocol.ood_ranking_scores(matrix, tie) if len(matrix.trained_rows) > 1 else {},
        "ood_column_ranks": protocol.ood_column_ranks(matrix, tie) if len(matrix.trained_rows) > 1 else {},
        "gin_config": gin.config_str(),
    }
    if start is not None:
        out["delta_id"] = protocol.delta_id(matrix)
    if compare_to:
        with open(compare_to) as f:
            base = protocol.SuccessMatrix(**_matrix_args(json.load(f)["matrix"]))
        out["delta_ood"] = protocol.delta_ood(matrix, base)
    return out


def _matrix_json(m: protocol.SuccessMatrix) -> Dict[str, Any]:
    return {"rows": list(m.rows), "cols": list(m.cols), "success": {r: dict(m.success[r]) for r in m.rows},
            "start_row": m.start_row, "train_domain": dict(m.train_domain)}


def _matrix_args(j: Mapping[str, Any]) -> Dict[str, Any]:
    return dict(rows=tuple(j["rows"]), cols=tuple(j["cols"]), success=j["success"], start_row=j["start_row"],
                train_domain=j["train_domain"])


def matrix_of(results: Mapping[str, Any]) -> protocol.SuccessMatrix:
    """The SuccessMatrix of a results.json."""
    return protocol.SuccessMatrix(**_matrix_args(results["matrix"]))


def _write_outputs(output_dir: str, results: Dict[str, Any], logger: MetricsLogger) -> None:
    matrix = matrix_of(results)
    intervals = {r: {c: tuple(results["entries"][r][c]["interval"]) for c in matrix.cols} for r in matrix.rows
                 if r in results["entries"]}
    md = ["# Cross-domain evaluation", "",
          "Success (%), pass@1 per task, averaged over checkpoints x seeds; 95% interval in brackets; ID cells as "
          "ΔID over the starting policy.", "", report.markdown_table(matrix, intervals=intervals), ""]
    if results.get("ranking"):
        md += ["## OOD ranking (lower is better)", "", report.ranking_table(matrix), ""]
    md += ["## Settings per row", "", "| row | trained on | thinking | augmentation | checkpoints |", "|---|---|---|---|---|"]
    for name, r in results["rows"].items():
        md.append(f"| {name} | {r['train_domain'] or '–'} | {r['thinking']} | {r['augmentation']} | "
                  f"{', '.join(map(str, r['checkpoints']))} |")
    md += ["", "| row | domain | split | tasks | invalid | episode length | tokens/turn | lost |",
           "|---|---|---|---|---|---|---|---|"]
    for r, by_col in results["entries"].items():
        for c, e in by_col.items():
            md.append(f"| {r} | {c} | {results['domains'][c]['split']} | {e['tasks']} | "
                      f"{e['invalid_action_rate']:.3f} | {e['episode_length']:.2f} | "
                      f"{e['response_tokens_per_turn']:.1f} | {e['lost_episodes']} |")
    with open(os.path.join(output_dir, "table.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    report.heatmap_png(matrix, os.path.join(output_dir, "heatmap.png"))
    with open(os.path.join(output_dir, "results.json.tmp"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    os.replace(os.path.join(output_dir, "results.json.tmp"), os.path.join(output_dir, "results.json"))
    for r, by_col in results["entries"].items():
        scalars = {}
        for c, e in by_col.items():
            scalars.update({f"matrix/{r}/{c}/success_rate": e["success"],
                            f"matrix/{r}/{c}/invalid_action_rate": e["invalid_action_rate"]})
        logger.scalars(0, scalars)
    logger.text(0, "evaluation/table", "\n".join(md))


# ------------------------------------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> None:
    from agentrl_jax.train import parse_args, parse_gin  # noqa: PLC0415 (the same gin handling as training)

    _pylogging.basicConfig(level=_pylogging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.gin_file and not args.gin_bindings:
        raise SystemExit("error: pass --gin_file=gin/runs/evaluate.gin plus an experiment's eval file (see README).")
    parse_gin(args.gin_file, args.gin_bindings, [p for p in args.gin_search_paths.split(",") if p])
    try:
        results = evaluate()
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(report.markdown_table(matrix_of(results)))


if __name__ == "__main__":
    main()
