"""Write the study's grid as gin files: `python scripts/gen_study_gin.py` (both grids; --check: fail if a file differs).

gin/experiments/study/ (arXiv 2601.18217, App. A) and its tiny CPU counterpart gin/experiments/study_tiny/:

    v1.gin                       Ckpt V1 = the base model + 20 GRPO steps on WebShop
    data/<domain>_<source>.gin   the SFT data: SciWorld expert demos, ALFWorld and WebShop rollouts of V1
    v2.gin                       Ckpt V2 = V1 + SFT on the 19:3:1 mix, counted in state-action pairs
    rl/<run>.gin                 one GRPO run per <domain>_<aug|noaug>_<think|nothink>_<v1|v2>_s<seed> (V1 starts:
                                 Sokoban, ALFWorld, WebShop only; the study has no SciWorld for V1)
    eval/<run>.gin               the run's last 4 checkpoints x 3 seeds on all four domains (V1 runs: without
                                 SciWorld); eval/start_v1|v2.gin the starting policies (their latest checkpoint)
    properties_v2.gin            the two environment axes measured with Ckpt V2 (128 trajectories, T_max 50)
    grid.gin                     every stage above for `python -m agentrl_jax.study`

A stage file only includes templates (gin/runs/study_*.gin, augment/<domain>.gin, a model and env files) and
then sets macros, so the study's settings live in one place each. Output folders are under --output_root.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("sokoban", "alfworld", "sciworld", "webshop")
INITS = ("v1", "v2")
# The study's V1 half has no SciWorld, neither as a training domain nor as an evaluation column (paper §4: "No
# SciWorld eval for V1"; Table 8's V1 ranking is 3 rows x 2 OOD columns, Table 11 has no SciWorld).
INIT_DOMAINS = {"v1": ("sokoban", "alfworld", "webshop"), "v2": DOMAINS}
# Table 11: distractor volume epsilon (tokens per state) and the probability an episode is augmented, per start.
# ScienceWorld was not augmented in the study: its setting is OURS (its own bank, envs/distractors/sciworld.json,
# n = floor(eps/12) sentences, 5 at 60; a medium-richness domain, between WebShop/Sokoban and ALFWorld), with the
# study's p per start. Tune it by the study's rule: raise eps until ID success drops.
TABLE11 = {
    "v1": {"alfworld": (300, 1.0), "webshop": (30, 1.0), "sokoban": (80, 1.0)},  # no SciWorld from V1
    "v2": {"alfworld": (200, 0.5), "webshop": (40, 0.5), "sokoban": (80, 0.5), "sciworld": (60, 0.5)},
}
# The V2 datamix, counted in state-action pairs: (domain, source, ratio).
SFT_MIX = (("sciworld", "expert", 19), ("alfworld", "rollout", 3), ("webshop", "rollout", 1))


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """One grid's sizes. Paper-scale defaults; `tiny()` is the CPU counterpart."""

    folder: str  # under gin/experiments/
    output_root: str
    model_gin: str
    env_gins: Dict[str, str]
    domains: Tuple[str, ...] = DOMAINS
    seeds: Tuple[int, ...] = (0, 1, 2)
    # The RL runs as (domain, aug, thinking, init); None = the full product.
    runs: Optional[Tuple[Tuple[str, bool, bool, str], ...]] = None
    v1_steps: int = 20
    rl_steps: Optional[int] = None  # None: the template's 150
    data_tasks: Dict[str, int] = dataclasses.field(
        default_factory=lambda: {"sciworld": 200, "alfworld": 64, "webshop": 64})
    # Extra templates per stage kind ("rl", "data", "sft", "eval", "properties"), included after the stage's own.
    tiny_templates: Dict[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)
    eval_domains: Optional[Tuple[str, ...]] = None  # None: the template's four
    properties_episodes: int = 128
    properties_t_max: int = 50
    properties_domains: Optional[Tuple[str, ...]] = None
    # The distractor settings (init -> domain -> (eps, p)); None: Table 11.
    aug_settings: Optional[Dict[str, Dict[str, Tuple[float, float]]]] = None

    @property
    def augmentation(self) -> Dict[str, Dict[str, Tuple[float, float]]]:
        return self.aug_settings or TABLE11


def study() -> GridSpec:
    return GridSpec("study", "outputs/study", "models/llama3.1_8b_instruct.gin",
                    {d: f"envs/{d}.gin" for d in DOMAINS})


def tiny() -> GridSpec:
    """Every kind of stage once or twice: V1, the three data sets, SFT (V2), Sokoban RL runs that pair up each
    lever (aug/noaug, think/nothink, V2/V1 start), the evaluations and the env axes. One seed."""
    runs = (("sokoban", False, True, "v1"), ("sokoban", True, True, "v1"), ("sokoban", False, False, "v1"),
            ("sokoban", False, True, "v2"))
    return GridSpec("study_tiny", "outputs/study_tiny", "models/tiny.gin",
                    {**{d: f"envs/{d}.gin" for d in DOMAINS}, "sokoban": "envs/sokoban_easy.gin"},
                    seeds=(0,), runs=runs, v1_steps=1, rl_steps=1, data_tasks={"sciworld": 1, "alfworld": 1, "webshop": 1},
                    tiny_templates={"rl": ("runs/study_tiny.gin", "runs/study_tiny_rl.gin"),
                                    "data": ("runs/study_tiny.gin", "runs/study_tiny_rl.gin"), "sft": ("runs/study_tiny.gin", "runs/study_tiny_sft.gin"),
                                    "eval": ("runs/study_tiny.gin", "runs/study_tiny_eval.gin"),
                                    "properties": ("runs/study_tiny.gin",)},
                    eval_domains=("sokoban", "webshop"),
                    properties_episodes=2, properties_t_max=2, properties_domains=("sokoban", "webshop"),
                    # One distractor line (eps 10), so the easy Sokoban's short prompt buffer holds it.
                    aug_settings={init: {**TABLE11[init], "sokoban": (10, TABLE11[init]["sokoban"][1])} for init in INITS})


# ----------------------------------------------------------------------------------------------- naming
def run_name(domain: str, aug: bool, thinking: bool, init: str, seed: int) -> str:
    return f"{domain}_{'aug' if aug else 'noaug'}_{'think' if thinking else 'nothink'}_{init}_s{seed}"


def grid_runs(spec: GridSpec) -> List[Tuple[str, bool, bool, str, int]]:
    combos = spec.runs or tuple((d, a, t, i) for d in spec.domains for a in (False, True) for t in (True, False)
                                for i in INITS if d in INIT_DOMAINS[i])
    return [(d, a, t, i, s) for (d, a, t, i) in combos for s in spec.seeds]


def _gin_path(spec: GridSpec, rel: str) -> str:
    return f"gin/experiments/{spec.folder}/{rel}"


def _out(spec: GridSpec, rel: str) -> str:
    return f"{spec.output_root}/{rel}"


def _lit(v) -> str:
    return repr(v)


def _file(header: Sequence[str], includes: Sequence[str], macros: Sequence[Tuple[str, object]]) -> str:
    lines = [f"# {h}" if h else "#" for h in header]
    lines.append("# Generated by scripts/gen_study_gin.py; edit that script, not this file.")
    lines += [f"include '{inc}'" for inc in includes]
    lines += [f"{k} = {v if isinstance(v, Raw) else _lit(v)}" for k, v in macros]
    return "\n".join(lines) + "\n"


class Raw(str):
    """A macro value written as is (a gin reference such as %MODEL_PATH)."""


def _tiny(spec: GridSpec, kind: str) -> List[str]:
    return list(spec.tiny_templates.get(kind, ()))


# ----------------------------------------------------------------------------------------------- files
def v1_file(spec: GridSpec) -> str:
    return _file(["Ckpt V1: the base model after 20 GRPO steps on WebShop (the study's App. A; 34.4% there)."],
                 ["runs/study_rl.gin", spec.model_gin, spec.env_gins["webshop"], *_tiny(spec, "rl")],
                 [("OUTPUT_DIR", _out(spec, "v1")), ("INIT_FROM", None), ("TRAIN_SEED", 0),
                  ("NUM_STEPS", spec.v1_steps), ("THINKING", True)])


def data_name(domain: str, source: str) -> str:
    return f"{domain}_{source}"


def data_file(spec: GridSpec, domain: str, source: str) -> str:
    what = "expert demonstrations" if source == "expert" else "unfiltered rollouts of Ckpt V1 (failures kept)"
    return _file([f"SFT data for Ckpt V2: {domain} {what}, in the prompt layout RL uses (thinking on).",
                  "The task count, seed and output path are the command's flags (grid.gin)."],
                 ["runs/study_data.gin", spec.model_gin, spec.env_gins[domain], *_tiny(spec, "data")],
                 [("THINKING", True)])


def data_args(spec: GridSpec, domain: str, source: str) -> List[str]:
    args = [f"--domain={domain}", f"--source={source}", f"--num_tasks={spec.data_tasks[domain]}", "--seed=0",
            f"--out={_out(spec, 'data/' + data_name(domain, source) + '.jsonl')}"]
    if source == "rollout":
        args.append(f"--run_dir={_out(spec, 'v1')}")
    return args


def v2_file(spec: GridSpec) -> str:
    data = {data_name(d, s): _out(spec, f"data/{data_name(d, s)}.jsonl") for d, s, _ in SFT_MIX}
    mix = {data_name(d, s): r for d, s, r in SFT_MIX}
    macros: List[Tuple[str, object]] = [("OUTPUT_DIR", _out(spec, "v2")), ("SFT_INIT_FROM", _out(spec, "v1")),
                                        ("SFT_DATA", data), ("SFT_MIX", mix), ("THINKING", True)]
    return _file(["Ckpt V2: Ckpt V1 + SFT on SciWorld expert : ALFWorld rollouts : WebShop rollouts = 19:3:1",
                  "(state-action pairs), lr 5e-6 cosine, warm-up 0.1, batch 32, 100 steps (runs/study_sft.gin)."],
                 ["runs/study_sft.gin", spec.model_gin, *_tiny(spec, "sft")], macros)


def rl_file(spec: GridSpec, domain: str, aug: bool, thinking: bool, init: str, seed: int) -> str:
    includes = ["runs/study_rl.gin", spec.model_gin, spec.env_gins[domain]]
    header = [f"GRPO on {domain} from Ckpt {init.upper()}, thinking {'on' if thinking else 'off'}, "
              + (f"distractors eps {spec.augmentation[init][domain][0]} / p {spec.augmentation[init][domain][1]} ({'Table 11' if spec.aug_settings is None else 'the tiny grid'}"
                 + (", ours: SciWorld was not augmented in the study" if domain == "sciworld" else "") + ")"
                 if aug else "no distractors") + f", seed {seed}."]
    macros: List[Tuple[str, object]] = [("OUTPUT_DIR", _out(spec, "rl/" + run_name(domain, aug, thinking, init, seed))),
                                        ("INIT_FROM", _out(spec, init)), ("TRAIN_SEED", seed), ("THINKING", thinking)]
    if aug:
        includes.append(f"runs/augment/{domain}.gin")
        eps, p = spec.augmentation[init][domain]
        macros += [("AUG_EPSILON", eps), ("AUG_P", p)]
    if spec.rl_steps is not None:
        macros.append(("NUM_STEPS", spec.rl_steps))
    return _file(header, [*includes, *_tiny(spec, "rl")], macros)


def eval_domains(spec: GridSpec, init: str) -> Optional[List[str]]:
    """The evaluation columns of a policy from (or being) Ckpt `init`; None: the template's four."""
    domains = [d for d in (spec.eval_domains or DOMAINS) if d in INIT_DOMAINS[init]]
    return None if spec.eval_domains is None and domains == list(DOMAINS) else domains


def eval_file(spec: GridSpec, row: str, run_dir: str, task_seed: int, start: bool, init: str) -> str:
    macros: List[Tuple[str, object]] = [("EVAL_DIR", _out(spec, f"eval/{row}")), ("EVAL_RUNS", {row: run_dir}),
                                        ("EVAL_TASK_SEED", task_seed)]
    if start:
        macros.append(("EVAL_STEPS", "latest"))
    domains = eval_domains(spec, init)
    if domains is not None:
        macros.append(("EVAL_DOMAINS", domains))
    what = "the starting policy " + row if start else "run " + row + "'s last 4 checkpoints"
    where = "every domain" if domains is None else ", ".join(domains)
    return _file([f"The study's evaluation of {what} on {where} (runs/study_eval.gin)."],
                 ["runs/study_eval.gin", spec.model_gin, *_tiny(spec, "eval")], macros)


def properties_file(spec: GridSpec) -> str:
    domains = list(spec.properties_domains or spec.domains)
    return _file(["The two environment axes (Table 1) measured with Ckpt V2: 128 trajectories per domain, T_max 50."],
                 ["runs/study_properties.gin", spec.model_gin, *[spec.env_gins[d] for d in domains], *_tiny(spec, "properties")],
                 [("PROPERTIES_DOMAINS", domains), ("PROPERTIES_RUN", _out(spec, "v2")),
                  ("PROPERTIES_OUT", _out(spec, "properties/v2.json")),
                  ("PROPERTIES_EPISODES", spec.properties_episodes), ("PROPERTIES_T_MAX", spec.properties_t_max)])


# ----------------------------------------------------------------------------------------------- the grid
def stages(spec: GridSpec) -> List[dict]:
    """Every stage of the grid, in dependency order: name, kind, gin file, output, dependencies, extra args."""
    out = [{"name": "v1", "kind": "v1", "gin": _gin_path(spec, "v1.gin"), "output": _out(spec, "v1"), "after": []}]
    data = []
    for d, s, _ in SFT_MIX:
        name = "data_" + data_name(d, s)
        data.append(name)
        out.append({"name": name, "kind": "data", "gin": _gin_path(spec, f"data/{data_name(d, s)}.gin"),
                    "output": _out(spec, f"data/{data_name(d, s)}.jsonl"), "after": ["v1"] if s == "rollout" else [],
                    "args": data_args(spec, d, s)})
    out.append({"name": "v2", "kind": "sft", "gin": _gin_path(spec, "v2.gin"), "output": _out(spec, "v2"),
                "after": ["v1", *data]})
    runs = grid_runs(spec)
    for d, a, t, i, s in runs:
        name = run_name(d, a, t, i, s)
        out.append({"name": name, "kind": "rl", "gin": _gin_path(spec, f"rl/{name}.gin"), "output": _out(spec, f"rl/{name}"),
                    "after": [i], "run": {"domain": d, "aug": a, "thinking": t, "init": i, "seed": s}})
    for start in INITS:
        out.append({"name": f"eval_start_{start}", "kind": "eval", "gin": _gin_path(spec, f"eval/start_{start}.gin"),
                    "output": _out(spec, f"eval/start_{start}"), "after": [start], "of": start})
    for d, a, t, i, s in runs:
        name = run_name(d, a, t, i, s)
        out.append({"name": f"eval_{name}", "kind": "eval", "gin": _gin_path(spec, f"eval/{name}.gin"),
                    "output": _out(spec, f"eval/{name}"), "after": [name], "of": name})
    out.append({"name": "properties_v2", "kind": "properties", "gin": _gin_path(spec, "properties_v2.gin"),
                "output": _out(spec, "properties/v2.json"), "after": ["v2"]})
    return out


def grid_file(spec: GridSpec) -> str:
    lines = [f"# The {'tiny CPU counterpart of the ' if spec.tiny_templates else ''}study's whole grid for the runner:",
             f"#   python -m agentrl_jax.study --gin_file=gin/experiments/{spec.folder}/grid.gin [--dry_run]",
             "# Stages run in dependency order (V1 -> data -> SFT (V2) -> RL runs -> evaluations -> env axes), each as",
             "# its own process; a finished stage (done marker) is skipped, a killed one rerun (it resumes itself).",
             *([] if spec.tiny_templates else [
                 "# The model folder goes to every stage: --stage_binding=\"MODEL_PATH = '/data/llama3.1_8b_instruct'\"; to",
                 "# spread the runs over hosts, give each host its share: --only='sokoban_*' --only='eval_sokoban_*'."]),
             "# Generated by scripts/gen_study_gin.py; edit that script, not this file.",
             f"study.output_dir = {_lit(spec.output_root)}",
             f"study.sft_mix_domains = {_lit([d for d, _, _ in SFT_MIX])}",
             "study.stages = ["]
    for st in stages(spec):
        lines.append(f"    {_lit(st)},")
    lines.append("]")
    return "\n".join(lines) + "\n"


def files(spec: GridSpec) -> Dict[str, str]:
    """{path relative to the repo: text} of one grid."""
    out = {_gin_path(spec, "v1.gin"): v1_file(spec), _gin_path(spec, "v2.gin"): v2_file(spec)}
    for d, s, _ in SFT_MIX:
        out[_gin_path(spec, f"data/{data_name(d, s)}.gin")] = data_file(spec, d, s)
    for d, a, t, i, s in grid_runs(spec):
        name = run_name(d, a, t, i, s)
        out[_gin_path(spec, f"rl/{name}.gin")] = rl_file(spec, d, a, t, i, s)
        out[_gin_path(spec, f"eval/{name}.gin")] = eval_file(spec, name, _out(spec, f"rl/{name}"), s, start=False,
                                                             init=i)
    for start in INITS:
        out[_gin_path(spec, f"eval/start_{start}.gin")] = eval_file(spec, f"start_{start}", _out(spec, start), 0,
                                                                     start=True, init=start)
    out[_gin_path(spec, "properties_v2.gin")] = properties_file(spec)
    out[_gin_path(spec, "grid.gin")] = grid_file(spec)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file differs")
    args = ap.parse_args(argv)
    stale = []
    for spec in (study(), tiny()):
        for rel, text in files(spec).items():
            path = os.path.join(REPO, rel)
            old = open(path).read() if os.path.exists(path) else None
            if old == text:
                continue
            stale.append(rel)
            if not args.check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    if args.check and stale:
        print("stale study gin files (run python scripts/gen_study_gin.py):\n  " + "\n  ".join(stale))
        return 1
    print(f"{'checked' if args.check else 'wrote'} {len(stale)} changed file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
