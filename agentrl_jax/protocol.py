"""The study's evaluation protocol (arXiv 2601.18217 §3, §5) as pure functions over plain data.

Units: a `SuccessMatrix` holds success rates in PERCENT (0-100), as the paper prints them. The raw
per-episode arrays fed to `average_cells` / `bootstrap_interval` are 0/1 (or fractional) success, so those
two return fractions; multiply by 100 before putting them in a matrix or next to it.

    steps = last_checkpoints(saved_steps)                 # study: 105, 120, 135, 150
    success = ...                                         # [checkpoints, seeds, tasks] of 0/1, per cell
    cell = 100 * average_cells(success)                   # pass@1 averaged over checkpoints x seeds
    lo, hi = bootstrap_interval(success)                  # fraction; x100 for the table
    m = SuccessMatrix(rows, cols, cells, start_row, train_domain)
    delta_id(m); ood_ranking_scores(m); delta_ood(aug, base)

The paper's own tables are in data/study/tables.json; `matrix_from_table` and `augmentation_matrices`
turn them into matrices, which the tests use to reproduce Tables 5 and 8.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# Differences of this many points or more are a real difference in the OOD ranking (paper §5: "under 0.5").
DEFAULT_TIE = 0.5
# Printed cells carry one decimal, so 10.5 - 10.0 may come out as 0.4999999999999; compare with slack.
_EPS = 1e-9


# ---------------------------------------------------------------------------------------------------------
# Intervals and averaging over checkpoints x seeds x tasks


def wilson_interval(successes: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """Wilson score interval for a binomial proportion (fractions, not percent).

    Better than the normal interval at small n and near 0 or 1; n = 0 carries no information -> (0, 1).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def _as_cube(success) -> np.ndarray:
    x = np.asarray(success, dtype=np.float64)
    if x.ndim != 3 or min(x.shape) == 0:
        raise ValueError(
            f"success must be shaped [checkpoints, seeds, tasks] with every axis non-empty, got shape "
            f"{x.shape}; for a single run use x.reshape(1, 1, -1)")
    return x


def average_cells(success) -> float:
    """Mean success of one matrix cell from a [checkpoints, seeds, tasks] array (study: 4 x 3 x tasks).

    Each task is first averaged over the checkpoints x seeds it was run in, then tasks are averaged, so a
    task is weighted once however many runs reached it. NaN marks a (checkpoint, seed, task) not run;
    tasks never run are left out. Returns the input's unit (a fraction for 0/1 success).
    """
    x = _as_cube(success)
    run = ~np.isnan(x)
    if not run.any():
        raise ValueError("average_cells got no evaluated episode (all NaN); evaluate at least one task")
    per_task_runs = run.sum(axis=(0, 1))
    per_task = np.where(run, x, 0.0).sum(axis=(0, 1))[per_task_runs > 0] / per_task_runs[per_task_runs > 0]
    return float(per_task.mean())


def bootstrap_interval(success, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean success over [checkpoints, seeds, tasks].

    Each replicate resamples the three axes independently with replacement (tasks, seeds and checkpoints
    are all sources of variance) and takes the mean of the resampled cube. A resample with replacement is
    a multinomial count per index, so the cube's mean is a weighted sum; this avoids materialising
    n_boot cubes. Deterministic for a given seed. Returns the input's unit; no NaN allowed.
    """
    x = _as_cube(success)
    if not np.isfinite(x).all():
        raise ValueError("bootstrap_interval needs a full array (no NaN/inf); drop or fill unevaluated runs")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_interval needs n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    rng = np.random.default_rng(seed)
    n_c, n_s, n_t = x.shape

    def counts(n):  # [n_boot, n] draws per index, each row sums to n
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)

    w_c, w_s, w_t = counts(n_c), counts(n_s), counts(n_t)
    per_cs = np.einsum("cst,bt->bcs", x, w_t)
    means = np.einsum("bcs,bc,bs->b", per_cs, w_c, w_s) / (n_c * n_s * n_t)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def last_checkpoints(steps: Sequence[int], n: int = 4, every: Optional[int] = None,
                     final: Optional[int] = None) -> List[int]:
    """The last n checkpoint steps, ascending (study: every 15 of 150 -> [105, 120, 135, 150]).

    every / final: the run's checkpoint schedule and last step; when given, only steps on the schedule
    (step % every == 0) or the final step count, so an off-schedule preemption save (142) does not push 105 out.
    Fewer than n saved -> all of them (an early or short run still gets evaluated; one with no step on the
    schedule yet, its off-schedule ones).
    """
    if n < 1:
        raise ValueError(f"last_checkpoints needs n >= 1, got {n}")
    if len(steps) == 0:
        raise ValueError("no checkpoint steps given: point the evaluator at a run directory that holds "
                         "saved checkpoints (train with a checkpoint interval > 0)")
    saved = sorted(set(int(s) for s in steps))
    if every:
        saved = [s for s in saved if s % int(every) == 0 or s == final] or saved
    return saved[-n:]


# ---------------------------------------------------------------------------------------------------------
# The success matrix: rows = start policy + one per training domain, cols = evaluation domains


@dataclasses.dataclass(frozen=True)
class SuccessMatrix:
    """Success rates in PERCENT. `success[row][col]` is None where the pair was not evaluated.

    rows: the starting policy (`start_row`) and one row per trained policy; cols: evaluation domains.
    train_domain[row] is the column that row was trained on (its in-distribution, ID, column), or None for
    the start row and for a policy trained on no single domain (an SFT run on a mix: no ID cell, no ΔID).
    Every other evaluated column of a row is out-of-distribution (OOD).
    """
    rows: Tuple[str, ...]
    cols: Tuple[str, ...]
    success: Mapping[str, Mapping[str, Optional[float]]]
    start_row: str
    train_domain: Mapping[str, Optional[str]]

    def __post_init__(self):
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "cols", tuple(self.cols))
        if self.start_row not in self.rows:
            raise ValueError(f"start_row {self.start_row!r} is not one of rows {self.rows}")
        if self.train_domain.get(self.start_row) is not None:
            raise ValueError(f"the start row {self.start_row!r} has no training domain: map it to None")
        for row in self.rows:
            if row not in self.success:
                raise ValueError(f"row {row!r} has no cells in success; give it a dict (None = not evaluated)")
            extra = set(self.success[row]) - set(self.cols)
            if extra:
                raise ValueError(f"row {row!r} has cells for unknown columns {sorted(extra)}; add them to cols")
            col = self.train_domain.get(row)
            if col is not None and col not in self.cols:
                raise ValueError(f"row {row!r} trains on {col!r}, which is not a column of {self.cols}")
            if row not in self.train_domain:
                raise ValueError(f"row {row!r} needs its training domain in train_domain (None for a policy "
                                 f"trained on no single domain, e.g. an SFT mix: all its columns are OOD)")

    def cell(self, row: str, col: str) -> Optional[float]:
        return self.success[row].get(col)

    @property
    def trained_rows(self) -> Tuple[str, ...]:
        return tuple(r for r in self.rows if r != self.start_row)


def delta_id(matrix: SuccessMatrix) -> Dict[str, float]:
    """ΔID per trained row: its ID cell minus the start row's cell in that column (rows missing either are
    left out)."""
    out = {}
    for row in matrix.trained_rows:
        col = matrix.train_domain[row]
        own, start = matrix.cell(row, col), matrix.cell(matrix.start_row, col)
        if own is not None and start is not None:
            out[row] = own - start
    return out


def ood_cells(matrix: SuccessMatrix, row: str) -> Dict[str, float]:
    """The evaluated OOD cells of a row, {col: success}. For the start row (trained on nothing) every
    evaluated column counts."""
    if row not in matrix.rows:
        raise ValueError(f"unknown row {row!r}; rows are {matrix.rows}")
    own = matrix.train_domain.get(row)
    return {c: v for c in matrix.cols if c != own and (v := matrix.cell(row, c)) is not None}


def delta_ood(aug: SuccessMatrix, base: SuccessMatrix) -> Dict[str, float]:
    """ΔOOD (%) per trained row of `aug`: Σ_e (G_aug − G_base) / Σ_e G_base × 100 over the row's OOD
    columns e evaluated in both matrices (paper §6). Rows absent from `base`, or trained on another domain
    there, are left out; a zero base sum gives NaN (relative change undefined)."""
    out = {}
    for row in aug.trained_rows:
        if row not in base.rows or base.train_domain.get(row) != aug.train_domain[row]:
            continue
        a, b = ood_cells(aug, row), ood_cells(base, row)
        common = [c for c in a if c in b]
        if not common:
            continue
        base_sum = sum(b[c] for c in common)
        gain = sum(a[c] - b[c] for c in common)
        out[row] = gain / base_sum * 100.0 if base_sum != 0 else math.nan
    return out


# ---------------------------------------------------------------------------------------------------------
# OOD ranking score (paper §5, Table 8)


def dense_ranks(values: Mapping[str, float], tie: float = DEFAULT_TIE) -> Dict[str, int]:
    """Dense ranks, 1 = highest value; values within `tie` of their rank's best value share the rank.

    Rule (anchored on each rank's best, so ranks never chain): sort descending; the first value opens
    rank 1; a value opens the next rank when it is at least `tie` below the value that opened the current
    rank. So 10.6, 10.3, 10.0 with tie 0.5 -> 1, 1, 2 (10.0 is 0.6 below 10.6), although each neighbour
    pair is under 0.5 apart; a linking rule would put all three at 1 and, in long chains, call values far
    apart equal. Table 8 has no such chain, so both rules reproduce it; this one keeps every tied group
    narrower than `tie`. Equal values always share a rank.
    """
    if tie < 0:
        raise ValueError(f"tie must be >= 0 points, got {tie}")
    order = sorted(values, key=lambda k: -values[k])
    ranks, rank, anchor = {}, 0, None
    for key in order:
        v = values[key]
        if anchor is None or (v != anchor and anchor - v >= tie - _EPS):
            rank, anchor = rank + 1, v
        ranks[key] = rank
    return ranks


def ood_column_ranks(matrix: SuccessMatrix, tie: float = DEFAULT_TIE) -> Dict[str, Dict[str, int]]:
    """{eval col: {trained row: rank}}: per column, the dense ranks (`dense_ranks`) of the trained rows
    evaluated there OOD; the start row, a row's own ID column and None cells take no part."""
    out = {}
    for col in matrix.cols:
        vals = {r: v for r in matrix.trained_rows
                if matrix.train_domain[r] != col and (v := matrix.cell(r, col)) is not None}
        if vals:
            out[col] = dense_ranks(vals, tie)
    return out


def ood_ranking_scores(matrix: SuccessMatrix, tie: float = DEFAULT_TIE) -> Dict[str, int]:
    """OOD ranking score per trained row: the sum of its per-column ranks (lower = generalizes better).
    Compare scores only between rows ranked in the same number of columns."""
    scores = {r: 0 for r in matrix.trained_rows}
    for ranks in ood_column_ranks(matrix, tie).values():
        for row, rank in ranks.items():
            scores[row] += rank
    return scores


# ---------------------------------------------------------------------------------------------------------
# Matrices from the paper's tables (data/study/tables.json)


def matrix_from_table(entry: Mapping[str, Mapping[str, Optional[float]]], start_row: str = "start",
                      start_cells: Optional[Mapping[str, Optional[float]]] = None) -> SuccessMatrix:
    """A SuccessMatrix from one version of a table in tables.json (e.g. tables["table2_success"]["V2"]).

    Each trained row is named after its training domain and prints its ID cell as "delta_id" (gain over the
    start row); it is turned back into an absolute cell here. Tables without a start row (5, 7) take its
    cells from `start_cells` (Table 2's start row of that version). Columns follow the start row's order.
    """
    if start_row in entry:
        if start_cells is not None:
            raise ValueError(f"the table has its own {start_row!r} row; drop start_cells")
        start_cells = entry[start_row]
    elif start_cells is None:
        raise ValueError(f"the table has no {start_row!r} row; pass start_cells (Table 2's start row)")
    cols = list(start_cells)
    for name, cells in entry.items():
        for c in [*cells, name] if "delta_id" in cells else cells:
            if c != "delta_id" and c not in cols:
                cols.append(c)
    success = {start_row: {c: start_cells.get(c) for c in cols}}
    train_domain: Dict[str, Optional[str]] = {start_row: None}
    for name, cells in entry.items():
        if name == start_row:
            continue
        if "delta_id" not in cells:
            raise ValueError(f"row {name!r} has no delta_id cell; every trained row needs its ID gain")
        start = start_cells.get(name)
        if start is None:
            raise ValueError(f"row {name!r} trains on {name!r}, but the start row has no cell there to add "
                             f"delta_id to")
        # round() drops float noise of the sum (21.9 + 60.6); printed cells have one decimal.
        absolute = round(start + cells["delta_id"], 9)
        success[name] = {c: absolute if c == name else cells.get(c) for c in cols}
        train_domain[name] = name
    rows = [start_row] + [n for n in entry if n != start_row]
    return SuccessMatrix(rows=rows, cols=cols, success=success, start_row=start_row, train_domain=train_domain)


def augmentation_matrices(entry: Mapping[str, Mapping], start_cells: Mapping[str, Optional[float]],
                          start_row: str = "start") -> Tuple[SuccessMatrix, SuccessMatrix]:
    """(base, aug) matrices from one version of Table 5 (tables["table5_augmentation"]["V2"]): each row
    holds "base"/"aug" OOD cells and "delta_id": [base, aug]; `start_cells` is Table 2's start row."""
    def side(which: str, i: int) -> SuccessMatrix:
        table = {name: {"delta_id": row["delta_id"][i], **row[which]} for name, row in entry.items()}
        return matrix_from_table(table, start_row=start_row, start_cells=start_cells)

    return side("base", 0), side("aug", 1)
