"""Render a SuccessMatrix like the paper does: markdown tables (Table 2 cells, Table 8 ranks) and PNG plots.

Cells are in percent (see agentrl_jax.protocol). Plots draw on matplotlib's Agg canvas directly (no pyplot,
so no global backend is switched and nothing needs a display); matplotlib is imported only when plotting.
Each PNG is figsize x dpi pixels exactly (no tight bounding box), so callers and tests know its size.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from agentrl_jax.protocol import DEFAULT_TIE, SuccessMatrix, delta_id, ood_column_ranks, ood_ranking_scores

MISSING = "–"  # what the paper prints for a pair not evaluated
Intervals = Mapping[str, Mapping[str, Tuple[float, float]]]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(first: str, cols: Sequence[str]) -> str:
    return _row([first, *cols]) + "\n" + _row(["---"] * (len(cols) + 1))


def format_cell(matrix: SuccessMatrix, row: str, col: str, interval: Optional[Tuple[float, float]] = None,
                show_delta_id: bool = True, digits: int = 1) -> str:
    """One cell: "30.5", an ID cell as "+60.6 (=82.5)" (or "**82.5**" without ΔID), None as "–";
    an interval (percent) appends " [lo, hi]"."""
    value = matrix.cell(row, col)
    if value is None:
        return MISSING
    text = f"{value:.{digits}f}"
    if matrix.train_domain.get(row) == col:
        gain = delta_id(matrix).get(row)
        text = f"{gain:+.{digits}f} (={text})" if show_delta_id and gain is not None else f"**{text}**"
    if interval is not None:
        lo, hi = interval
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def markdown_table(matrix: SuccessMatrix, intervals: Optional[Intervals] = None, show_delta_id: bool = True,
                   digits: int = 1) -> str:
    """Rows x cols success table like the paper's Table 2. intervals: {row: {col: (lo, hi)}} in percent,
    for any subset of cells."""
    intervals = intervals or {}
    lines = [_header("train → eval", matrix.cols)]
    for row in matrix.rows:
        cells = [format_cell(matrix, row, c, intervals.get(row, {}).get(c), show_delta_id, digits)
                 for c in matrix.cols]
        lines.append(_row([row, *cells]))
    return "\n".join(lines) + "\n"


def ranking_table(matrix: SuccessMatrix, tie: float = DEFAULT_TIE) -> str:
    """Per-column OOD ranks of the trained rows and their score (sum, lower is better), like Table 8."""
    ranks = ood_column_ranks(matrix, tie)
    scores = ood_ranking_scores(matrix, tie)
    lines = [_header("train → eval", [*matrix.cols, "score"])]
    for row in matrix.trained_rows:
        cells = [str(ranks[c][row]) if row in ranks.get(c, {}) else MISSING for c in matrix.cols]
        lines.append(_row([row, *cells, str(scores[row])]))
    return "\n".join(lines) + "\n"


def _figure(figsize: Tuple[float, float], dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str, dpi: int) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def heatmap_png(matrix: SuccessMatrix, path: str, title: str = "Success rate (%)",
                figsize: Tuple[float, float] = (6.4, 4.8), dpi: int = 100) -> str:
    """Annotated heatmap of the matrix (0-100 colour scale), ID cells outlined and annotated with ΔID,
    unevaluated cells blank. Returns path."""
    from matplotlib.patches import Rectangle

    data = np.array([[np.nan if matrix.cell(r, c) is None else matrix.cell(r, c) for c in matrix.cols]
                     for r in matrix.rows], dtype=np.float64)
    gains = delta_id(matrix)
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="success (%)")
    ax.set_xticks(range(len(matrix.cols)), labels=matrix.cols)
    ax.set_yticks(range(len(matrix.rows)), labels=matrix.rows)
    ax.set_xlabel("evaluation domain")
    ax.set_ylabel("training domain")
    ax.set_title(title)
    for i, row in enumerate(matrix.rows):
        for j, col in enumerate(matrix.cols):
            value = data[i, j]
            if np.isnan(value):
                ax.text(j, i, MISSING, ha="center", va="center", color="black")
                continue
            text = f"{value:.1f}"
            if matrix.train_domain.get(row) == col:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
                if row in gains:
                    text += f"\n({gains[row]:+.1f})"
            ax.text(j, i, text, ha="center", va="center", color="white" if value < 60 else "black")
    return _save(fig, path, dpi)


def axes_scatter_png(points: Sequence[Tuple[str, float, float]], path: str, x_label: str, y_label: str,
                     title: Optional[str] = None, figsize: Tuple[float, float] = (6.4, 4.8),
                     dpi: int = 100) -> str:
    """Labelled scatter, one point per training domain, e.g. state richness or planning complexity
    (Table 1) against the OOD ranking score or mean OOD success. points: [(label, x, y)]. Returns path."""
    if not points:
        raise ValueError("axes_scatter_png needs at least one (label, x, y) point")
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    for label, x, y in points:
        ax.scatter([x], [y])
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path, dpi)
