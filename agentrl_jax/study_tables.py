"""The study's tables from its evaluations (arXiv 2601.18217 Tables 2, 5, 6, 7, 8 and the env-axes plots).

Input: the evaluator's output folder of every run (`agentrl_jax.evaluate`: results.json and cells/<id>.json, the
per-task success of one (row, checkpoint, domain, split, seed)), the evaluations of the starting policies (Ckpt
V1 / V2) and, for the scatter, env_properties' JSON measured with Ckpt V2. A group of runs shares (start,
thinking, augmentation); its matrix has the start row and one row per training domain, each entry pooled over
the group's seeds: pass@1 over tasks x (training seed x evaluation seed) x checkpoints, with the evaluator's
interval (`evaluate.summarise_entry`: a bootstrap over those three axes). Tables:

* the cross-domain matrix of every group (Table 2 / 7 form: ID cells as ΔID over the start row), with intervals;
* ΔOOD per lever (Table 5's formula, `protocol.delta_ood`): aug vs noaug, think vs nothink, V2 vs V1 start, per
  training domain with the other two levers fixed;
* OOD ranking scores per group (Table 8, `protocol.ood_ranking_scores`);
* forgetting (Table 6): each OOD cell's change relative to its start row, V1 vs V2, and whether the evaluation
  domain was in V2's SFT mix;
* the env axes (Table 1) against the OOD ranking score and mean OOD success (`env_properties.scatter_points`).

Written as tables.md, tables.json and PNGs (one heatmap per group, ΔOOD bars, the axis scatters).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from agentrl_jax import protocol, report
from agentrl_jax.env_properties import AXES, TARGETS, scatter_points
from agentrl_jax.evaluate import id_column, summarise_entry

START = "start"
INIT_LABELS = ("v1", "v2")
# (lever, the field of a group key it changes, value with the lever on, value with it off)
LEVERS = (("augmentation", "aug", True, False), ("thinking", "thinking", True, False),
          ("mid-training (V2 vs V1 start)", "init", "v2", "v1"))


@dataclasses.dataclass(frozen=True)
class RunEval:
    """One trained run's evaluation: its grid coordinates and the evaluator's output folder."""

    name: str
    domain: str
    aug: bool
    thinking: bool
    init: str
    seed: int
    eval_dir: str


GroupKey = Tuple[str, bool, bool]  # (init, thinking, aug)


def group_label(key: GroupKey) -> str:
    init, thinking, aug = key
    return f"{init}_{'think' if thinking else 'nothink'}_{'aug' if aug else 'noaug'}"


# ------------------------------------------------------------------------------------------ reading
def read_results(eval_dir: str) -> Optional[dict]:
    path = os.path.join(eval_dir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def row_cells(eval_dir: str, results: Mapping[str, Any], row: str, col: str) -> Optional[List[dict]]:
    """The cells behind results["entries"][row][col] (per-task success), or None when any is missing."""
    entry = results["entries"][row][col]
    meta = results["domains"][col]
    out = []
    for step in entry["checkpoints"]:
        for seed in entry["seeds"]:
            path = os.path.join(eval_dir, "cells", f"{row}__{step}__{meta['domain']}__{meta['split']}__{seed}.json")
            if not os.path.isfile(path):
                return None
            with open(path) as f:
                out.append(json.load(f))
    return out


def pooled_entry(parts: Sequence[Tuple[int, dict, Optional[List[dict]]]], n_boot: int, level: float
                 ) -> Dict[str, Any]:
    """One matrix entry over several runs (training seeds): parts = [(train seed, results entry, its cells)].

    With every run's cells: success and interval over tasks x (train seed, eval seed) x checkpoints, checkpoints
    matched by position (the i-th last of each run). Otherwise the runs' mean success, no interval."""
    if all(cells is not None for _, _, cells in parts):
        n_ckpt = {len(e["checkpoints"]) for _, e, _ in parts}
        if len(n_ckpt) == 1:
            pooled, seeds = [], []
            for train_seed, entry, cells in parts:
                pos = {s: i for i, s in enumerate(entry["checkpoints"])}
                for c in cells:
                    pooled.append(dict(c, step=pos[c["step"]], seed=(train_seed, c["seed"])))
                seeds += [(train_seed, s) for s in entry["seeds"]]
            out = summarise_entry(pooled, list(range(n_ckpt.pop())), seeds, n_boot, level)
            out["runs"] = len(parts)
            return out
    return {"success": float(np.mean([e["success"] for _, e, _ in parts])), "interval": None,
            "interval_method": "none (cells missing)", "runs": len(parts)}


@dataclasses.dataclass
class GroupMatrix:
    key: GroupKey
    matrix: protocol.SuccessMatrix
    intervals: Dict[str, Dict[str, Tuple[float, float]]]
    entries: Dict[str, Dict[str, Any]]


def build_matrices(runs: Sequence[RunEval], starts: Mapping[str, str], n_boot: int = 2000,
                   level: float = 0.95) -> Dict[GroupKey, GroupMatrix]:
    """One matrix per (init, thinking, aug) group that has at least one evaluated run. starts: {init: the
    evaluation folder of that starting policy (its one row)}."""
    found: Dict[GroupKey, Dict[str, List[Tuple[RunEval, dict]]]] = {}
    for r in runs:
        res = read_results(r.eval_dir)
        if res is not None:
            found.setdefault((r.init, r.thinking, r.aug), {}).setdefault(r.domain, []).append((r, res))
    start_results = {init: read_results(d) for init, d in starts.items()}
    out = {}
    for key, by_domain in sorted(found.items(), key=lambda kv: group_label(kv[0])):
        cols: List[str] = []
        for items in by_domain.values():
            for _, res in items:
                cols += [c for c in res["matrix"]["cols"] if c not in cols]
        success: Dict[str, Dict[str, Optional[float]]] = {}
        intervals: Dict[str, Dict[str, Tuple[float, float]]] = {}
        entries: Dict[str, Dict[str, Any]] = {}
        start = start_results.get(key[0])
        success[START], intervals[START], entries[START] = {}, {}, {}
        if start is not None:
            row = start["matrix"]["rows"][-1]  # the starting policy's evaluation has that one row
            for c in cols:
                e = start["entries"].get(row, {}).get(c)
                if e is not None:
                    success[START][c] = e["success"]
                    intervals[START][c] = tuple(e["interval"])
                    entries[START][c] = e
        # Rows in the order of their ID columns (the paper's: ALFWorld, WebShop, Sokoban, SciWorld when so listed).
        domains = sorted(by_domain, key=lambda d: (cols.index(id_column(d, cols)) if id_column(d, cols) else len(cols), d))
        for d in domains:
            success[d], intervals[d], entries[d] = {}, {}, {}
            for c in cols:
                parts = []
                for r, res in by_domain[d]:
                    row = res["matrix"]["rows"][-1]
                    if c in res["entries"].get(row, {}):
                        parts.append((r.seed, res["entries"][row][c], row_cells(r.eval_dir, res, row, c)))
                if parts:
                    e = pooled_entry(parts, n_boot, level)
                    success[d][c], entries[d][c] = e["success"], e
                    if e["interval"] is not None:
                        intervals[d][c] = tuple(e["interval"])
        train_domain = {START: None, **{d: id_column(d, cols) for d in domains}}
        # A row whose training domain is no column cannot be placed; leave it out (it has no ID cell to rank by).
        rows = [START] + [d for d in domains if train_domain[d] is not None]
        matrix = protocol.SuccessMatrix(rows=rows, cols=cols, success={r: success[r] for r in rows}, start_row=START,
                                        train_domain={r: train_domain[r] for r in rows})
        out[key] = GroupMatrix(key, matrix, intervals, entries)
    return out


# ------------------------------------------------------------------------------------------ tables
def delta_ood_rows(groups: Mapping[GroupKey, GroupMatrix]) -> List[Dict[str, Any]]:
    """ΔOOD (%) of each lever: for every pair of groups that differ in that lever only, per training domain."""
    rows = []
    for lever, field, on, off in LEVERS:
        index = {"init": 0, "thinking": 1, "aug": 2}[field]
        for key, g in groups.items():
            if key[index] != on:
                continue
            base_key = tuple(off if i == index else v for i, v in enumerate(key))
            base = groups.get(base_key)
            if base is None:
                continue
            d_ood = protocol.delta_ood(g.matrix, base.matrix)
            id_on, id_off = protocol.delta_id(g.matrix), protocol.delta_id(base.matrix)
            for row in g.matrix.trained_rows:
                if row in d_ood:
                    rows.append({"lever": lever, "on": group_label(key), "off": group_label(base_key),
                                 "train_domain": row, "delta_ood": d_ood[row],
                                 "delta_id_on": id_on.get(row), "delta_id_off": id_off.get(row)})
    return rows


def forgetting_rows(groups: Mapping[GroupKey, GroupMatrix], mix_domains: Sequence[str]) -> List[Dict[str, Any]]:
    """Table 6: for each (thinking, aug) with both starts evaluated, every OOD cell of a training domain in both
    matrices: success and Rel. = change vs its start row (%), Diff = Rel(V2) - Rel(V1), In mix? = the evaluation
    domain is in V2's SFT mix."""
    out = []
    for (init, thinking, aug), g1 in groups.items():
        if init != "v1" or ("v2", thinking, aug) not in groups:
            continue
        g2 = groups[("v2", thinking, aug)]
        for row in g1.matrix.trained_rows:
            if row not in g2.matrix.rows:
                continue
            for col, v1 in protocol.ood_cells(g1.matrix, row).items():
                v2 = g2.matrix.cell(row, col) if col in g2.matrix.cols else None
                s1, s2 = g1.matrix.cell(START, col), (g2.matrix.cell(START, col) if col in g2.matrix.cols else None)
                if v2 is None or not s1 or not s2:
                    continue
                rel1, rel2 = (v1 - s1) / s1 * 100.0, (v2 - s2) / s2 * 100.0
                out.append({"group": f"{'think' if thinking else 'nothink'}_{'aug' if aug else 'noaug'}",
                            "train_domain": row, "eval_domain": col, "in_mix": col.partition(":")[0] in mix_domains,
                            "v1": v1, "v1_rel": rel1, "v2": v2, "v2_rel": rel2, "diff": rel2 - rel1})
    return out


def _pct(v: Optional[float], digits: int = 1, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return report.MISSING
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def delta_ood_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| lever | on | off | trained on | ΔOOD (%) | ΔID on | ΔID off |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['lever']} | {r['on']} | {r['off']} | {r['train_domain']} | {_pct(r['delta_ood'], sign=True)} "
                     f"| {_pct(r['delta_id_on'], sign=True)} | {_pct(r['delta_id_off'], sign=True)} |")
    return "\n".join(lines) + "\n"


def forgetting_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| group | RL train → eval | In mix? | V1 succ (Rel.) | V2 succ (Rel.) | Diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['group']} | {r['train_domain']} → {r['eval_domain']} | {'yes' if r['in_mix'] else 'no'} | "
                     f"{_pct(r['v1'])} ({_pct(r['v1_rel'], sign=True)}%) | {_pct(r['v2'])} ({_pct(r['v2_rel'], sign=True)}%)"
                     f" | {_pct(r['diff'], sign=True)}% |")
    return "\n".join(lines) + "\n"


def delta_ood_png(rows: Sequence[Mapping[str, Any]], path: str) -> Optional[str]:
    """Bars of ΔOOD per (lever, setting, training domain); None when there is nothing to draw."""
    finite = [r for r in rows if r["delta_ood"] is not None and math.isfinite(r["delta_ood"])]
    if not finite:
        return None
    fig = report._figure((max(6.4, 0.45 * len(finite) + 2), 4.8), 100)
    ax = fig.add_subplot()
    ax.bar(range(len(finite)), [r["delta_ood"] for r in finite])
    ax.set_xticks(range(len(finite)), labels=[f"{r['on']} vs {r['off']}\n{r['train_domain']}" for r in finite],
                  rotation=90, fontsize=7)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("ΔOOD (%)")
    ax.set_title("ΔOOD per lever (lever on vs off)")
    return report._save(fig, path, 100)


def env_axes(groups: Mapping[GroupKey, GroupMatrix], properties_json: Optional[str], out_dir: str,
             key: GroupKey = ("v2", True, False)) -> Dict[str, Any]:
    """Scatters of both axes against the ranking score and mean OOD success of one group (the study: V2 start,
    thinking, no augmentation; Table 1), when the properties were measured and the group exists."""
    if properties_json is None or not os.path.isfile(properties_json) or key not in groups:
        return {}
    with open(properties_json) as f:
        properties = json.load(f)
    g = groups[key]
    evaluation = {"matrix": {"rows": list(g.matrix.rows), "cols": list(g.matrix.cols),
                             "success": {r: dict(g.matrix.success[r]) for r in g.matrix.rows},
                             "start_row": g.matrix.start_row, "train_domain": dict(g.matrix.train_domain)},
                  "ranking": protocol.ood_ranking_scores(g.matrix)}
    out: Dict[str, Any] = {"group": group_label(key), "points": {}, "png": []}
    for axis in AXES:
        for target in TARGETS:
            try:
                points = scatter_points(evaluation, properties, axis, target)
            except ValueError:
                continue
            out["points"][f"{axis}_vs_{target}"] = points
            out["png"].append(report.axes_scatter_png(points, os.path.join(out_dir, f"axes_{axis}_vs_{target}.png"),
                                                      AXES[axis][1], TARGETS[target],
                                                      title=f"{axis} vs {target} ({group_label(key)})"))
    out["properties"] = {d: {"richness": p.get("prompt_chars"), "planning": p.get("planning_steps")}
                         for d, p in properties["domains"].items()}
    return out


# ------------------------------------------------------------------------------------------ writing
def write_tables(runs: Sequence[RunEval], starts: Mapping[str, str], out_dir: str, mix_domains: Sequence[str] = (),
                 properties_json: Optional[str] = None, tie: float = protocol.DEFAULT_TIE, n_boot: int = 2000,
                 level: float = 0.95) -> Dict[str, Any]:
    """Every table of the study from what has been evaluated so far; writes tables.md, tables.json, PNGs."""
    os.makedirs(out_dir, exist_ok=True)
    groups = build_matrices(runs, starts, n_boot, level)
    md = ["# The study's tables", "",
          "Success (%), pass@1 per task over the last checkpoints x evaluation seeds x training seeds; 95% interval "
          "in brackets; ID cells as ΔID over the start row (Ckpt V1 or V2).", ""]
    js: Dict[str, Any] = {"groups": {}, "delta_ood": [], "forgetting": [], "env_axes": {}}
    for key, g in groups.items():
        label = group_label(key)
        scores = protocol.ood_ranking_scores(g.matrix, tie) if len(g.matrix.trained_rows) > 1 else {}
        md += [f"## Cross-domain matrix: {label}", "", report.markdown_table(g.matrix, intervals=g.intervals), ""]
        if scores:
            md += [f"OOD ranking ({label}, lower is better):", "", report.ranking_table(g.matrix, tie), ""]
        png = report.heatmap_png(g.matrix, os.path.join(out_dir, f"matrix_{label}.png"), title=f"Success (%) {label}")
        js["groups"][label] = {"init": key[0], "thinking": key[1], "aug": key[2],
                               "matrix": {"rows": list(g.matrix.rows), "cols": list(g.matrix.cols),
                                          "success": {r: dict(g.matrix.success[r]) for r in g.matrix.rows},
                                          "start_row": g.matrix.start_row,
                                          "train_domain": dict(g.matrix.train_domain)},
                               "intervals": {r: {c: list(v) for c, v in by.items()} for r, by in g.intervals.items()},
                               "delta_id": protocol.delta_id(g.matrix), "ranking": scores,
                               "ood_column_ranks": protocol.ood_column_ranks(g.matrix, tie) if scores else {},
                               "runs": {r: {c: e.get("runs", 1) for c, e in by.items()} for r, by in g.entries.items()},
                               "png": png}
    d_rows = delta_ood_rows(groups)
    js["delta_ood"] = d_rows
    md += ["## ΔOOD per lever", "", "ΔOOD = Σ_e (G_on − G_off) / Σ_e G_off × 100 over the OOD domains evaluated in both.",
           "", delta_ood_markdown(d_rows), ""]
    js["delta_ood_png"] = delta_ood_png(d_rows, os.path.join(out_dir, "delta_ood.png"))
    f_rows = forgetting_rows(groups, mix_domains)
    js["forgetting"] = f_rows
    md += ["## Forgetting (Table 6 form)", "", "Rel. = change of the OOD cell vs its start row (Ckpt V1 or V2); "
           "Diff = Rel(V2) − Rel(V1); In mix? = the evaluation domain is in V2's SFT mix.", "",
           forgetting_markdown(f_rows), ""]
    axes = env_axes(groups, properties_json, out_dir)
    js["env_axes"] = axes
    if axes:
        md += [f"## Environment axes ({axes['group']})", "", "| domain | richness (prompt chars) | planning (steps) |",
               "|---|---|---|"]
        md += [f"| {d} | {_pct(p['richness'])} | {_pct(p['planning'])} |" for d, p in axes["properties"].items()]
        md += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in axes["png"]] + [""]
    with open(os.path.join(out_dir, "tables.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out_dir, "tables.json.tmp"), "w") as f:
        json.dump(js, f, indent=1, default=float)
    os.replace(os.path.join(out_dir, "tables.json.tmp"), os.path.join(out_dir, "tables.json"))
    return js
