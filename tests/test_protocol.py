"""The evaluation protocol against the paper's own numbers (data/study/tables.json, notes/paper.md §3, §5)."""
import json
import math
import os

import numpy as np
import pytest

from agentrl_jax import protocol as P

TABLES = os.path.join(os.path.dirname(__file__), "..", "data", "study", "tables.json")


@pytest.fixture(scope="module")
def tables():
    with open(TABLES) as f:
        return json.load(f)


def _matrix(cells, start="start"):
    """A small hand-built matrix: rows named after their training domain."""
    cols = sorted({c for row in cells.values() for c in row})
    return P.SuccessMatrix(rows=list(cells), cols=cols, success=cells, start_row=start,
                           train_domain={r: (None if r == start else r) for r in cells})


# ---- Table 2 -> matrix ---------------------------------------------------------------------------------


def test_matrix_from_table2_restores_absolute_id_cells(tables):
    m = P.matrix_from_table(tables["table2_success"]["V2"])
    assert m.rows == ("start", "alfworld", "webshop", "sokoban", "sciworld")
    assert m.cols == tuple(tables["domains"])
    assert m.cell("alfworld", "alfworld") == pytest.approx(21.9 + 60.6)
    assert m.cell("sokoban", "sokoban") == pytest.approx(14.1 + 35.7)
    assert m.cell("webshop", "sciworld") == 13.8
    assert P.delta_id(m) == pytest.approx({"alfworld": 60.6, "webshop": 28.7, "sokoban": 35.7, "sciworld": 20.2})
    v1 = P.matrix_from_table(tables["table2_success"]["V1"])
    assert v1.cell("alfworld", "sciworld") is None and v1.cell("start", "sciworld") == 3.1
    assert P.ood_cells(v1, "sokoban") == {"alfworld": 20.5, "webshop": 15.0}
    assert P.ood_cells(v1, "start") == {"alfworld": 25.8, "webshop": 34.4, "sokoban": 12.5, "sciworld": 3.1}


def test_matrix_from_table_errors_name_the_fix(tables):
    entry = {k: v for k, v in tables["table2_success"]["V2"].items() if k != "start"}
    with pytest.raises(ValueError, match="pass start_cells"):
        P.matrix_from_table(entry)
    with pytest.raises(ValueError, match="no delta_id"):
        P.matrix_from_table({"start": {"a": 1.0}, "a": {"b": 2.0}})
    with pytest.raises(ValueError, match="add them to cols"):
        P.SuccessMatrix(rows=["s"], cols=["a"], success={"s": {"b": 1.0}}, start_row="s", train_domain={"s": None})
    with pytest.raises(ValueError, match="needs its training domain"):
        P.SuccessMatrix(rows=["s", "a"], cols=["a"], success={"s": {}, "a": {}}, start_row="s",
                        train_domain={"s": None})


# ---- OOD ranking (Table 8) -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_ranking_reproduces_table8_from_table2(tables, version):
    m = P.matrix_from_table(tables["table2_success"][version])
    ranks = P.ood_column_ranks(m)
    scores = P.ood_ranking_scores(m)
    for row, printed in tables["table8_ood_ranks"][version].items():
        ours = [ranks.get(col, {}).get(row) for col in tables["domains"]]
        assert ours == printed["ranks"], (row, ours)
        assert scores[row] == printed["score"]
    assert set(scores) == set(tables["table8_ood_ranks"][version])  # the start row is never ranked


def test_v2_scores_are_the_papers(tables):
    m = P.matrix_from_table(tables["table2_success"]["V2"])
    assert P.ood_ranking_scores(m) == {"alfworld": 8, "webshop": 6, "sokoban": 5, "sciworld": 3}


def test_ties_under_half_a_point():
    assert P.dense_ranks({"a": 10.0, "b": 9.6}) == {"a": 1, "b": 1}       # 0.4 apart: tie
    assert P.dense_ranks({"a": 10.0, "b": 9.5}) == {"a": 1, "b": 2}       # 0.5 apart: not a tie
    assert P.dense_ranks({"a": 20.5, "b": 20.0}) == {"a": 1, "b": 2}      # exact float difference
    assert P.dense_ranks({"a": 8.2, "b": 7.7}) == {"a": 1, "b": 2}        # 8.2 - 7.7 < 0.5 in floats
    assert P.dense_ranks({"a": 10.0, "b": 9.6}, tie=0.3) == {"a": 1, "b": 2}
    assert P.dense_ranks({"a": 3.0, "b": 3.0, "c": 1.0}, tie=0.0) == {"a": 1, "b": 1, "c": 2}
    # Chains: a rank is anchored on its best value, so 10.0 (0.6 below 10.6) opens rank 2; dense after.
    assert P.dense_ranks({"a": 10.6, "b": 10.3, "c": 10.0, "d": 5.0}) == {"a": 1, "b": 1, "c": 2, "d": 3}


def test_ranking_skips_start_row_id_column_and_unevaluated_cells():
    m = _matrix({
        "start": {"x": 99.0, "y": 99.0, "z": 99.0},
        "x": {"x": 90.0, "y": 10.0, "z": 30.0},
        "y": {"x": 20.0, "y": 95.0, "z": 30.3},   # ties with x on z (0.3 apart)
        "z": {"x": 20.4, "y": None, "z": 80.0},   # ties with y on x; not evaluated on y
    })
    assert P.ood_column_ranks(m) == {"x": {"y": 1, "z": 1}, "y": {"x": 1}, "z": {"x": 1, "y": 1}}
    assert P.ood_ranking_scores(m) == {"x": 2, "y": 2, "z": 1}
    m2 = _matrix({**m.success, "z": {"x": 20.5, "y": None, "z": 80.0}})   # 0.5 apart: z now ahead on x
    assert P.ood_column_ranks(m2)["x"] == {"z": 1, "y": 2}


# ---- ΔOOD (Table 5) ------------------------------------------------------------------------------------


def test_delta_ood_reproduces_table5_v2(tables):
    base, aug = P.augmentation_matrices(tables["table5_augmentation"]["V2"], tables["table2_success"]["V2"]["start"])
    got = P.delta_ood(aug, base)
    printed = {row: v["printed_delta_ood"] for row, v in tables["table5_augmentation"]["V2"].items()}
    assert printed == {"alfworld": 7.0, "webshop": 33.4, "sokoban": 5.7}
    for row, value in printed.items():
        assert abs(got[row] - value) <= 0.05, (row, got[row])   # printed cells and result carry one decimal
    # The no-aug runs are Table 2's V2 runs, and ΔID comes along.
    table2 = P.matrix_from_table(tables["table2_success"]["V2"])
    for row in got:
        assert P.ood_cells(base, row) == pytest.approx(P.ood_cells(table2, row))
    assert P.delta_id(aug) == pytest.approx({"alfworld": 56.6, "webshop": 27.7, "sokoban": 37.4})


def test_delta_ood_v1_cells_give_the_notes_values_not_the_printed_ones(tables):
    base, aug = P.augmentation_matrices(tables["table5_augmentation"]["V1"], tables["table2_success"]["V1"]["start"])
    got = P.delta_ood(aug, base)
    assert {r: round(v, 1) for r, v in got.items()} == {"alfworld": 19.9, "webshop": 22.0, "sokoban": 29.6}


def test_delta_ood_uses_only_columns_evaluated_in_both():
    start = {"a": 0.0, "b": 0.0, "c": 0.0}
    base = _matrix({"start": start, "a": {"a": 50.0, "b": 10.0, "c": 20.0}})
    aug = _matrix({"start": start, "a": {"a": 50.0, "b": 15.0, "c": None}})
    assert P.delta_ood(aug, base) == {"a": pytest.approx(50.0)}            # (15 - 10) / 10, c skipped
    zero = _matrix({"start": start, "a": {"a": 50.0, "b": 0.0, "c": 20.0}})
    assert math.isnan(P.delta_ood(aug, zero)["a"])                         # relative to nothing


# ---- intervals, averaging, checkpoints ----------------------------------------------------------------


def test_wilson_known_values():
    assert P.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-4)
    assert P.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = P.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=5e-4)
    assert P.wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="successes <= n"):
        P.wilson_interval(11, 10)


@pytest.fixture(scope="module")
def episodes():
    """4 checkpoints x 3 seeds x 200 tasks of 0/1 success, tasks of varying difficulty."""
    rng = np.random.default_rng(1)
    p = rng.uniform(0.0, 1.0, size=200)
    return (rng.uniform(size=(4, 3, 200)) < p).astype(np.float64)


def test_bootstrap_contains_mean_and_is_deterministic(episodes):
    lo, hi = P.bootstrap_interval(episodes, n_boot=500)
    assert lo < P.average_cells(episodes) < hi
    assert P.bootstrap_interval(episodes, n_boot=500) == (lo, hi)
    assert P.bootstrap_interval(episodes, n_boot=500, seed=1) != (lo, hi)
    assert P.bootstrap_interval(np.full((2, 2, 5), 0.25), n_boot=50) == pytest.approx((0.25, 0.25))


def test_bootstrap_narrows_with_more_tasks(episodes):
    few = P.bootstrap_interval(episodes[:, :, :20], n_boot=500)
    many = P.bootstrap_interval(episodes, n_boot=500)
    assert many[1] - many[0] < 0.6 * (few[1] - few[0])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_bootstrap_resamples_every_axis(axis):
    # Variance along one axis only: the interval has width only if that axis is resampled.
    shape = [4, 3, 6]
    levels = np.linspace(0.0, 1.0, shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
    lo, hi = P.bootstrap_interval(np.broadcast_to(levels, shape), n_boot=300)
    assert hi - lo > 0.1


def test_bootstrap_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"reshape\(1, 1, -1\)"):
        P.bootstrap_interval(np.ones(10))


def test_average_cells_weights_each_task_once():
    x = np.full((4, 1, 2), np.nan)
    x[0, 0, 0] = 1.0          # task 0: one run, solved
    x[:, 0, 1] = 0.0          # task 1: four runs, all failed
    assert P.average_cells(x) == pytest.approx(0.5)    # a plain mean over runs would say 0.2
    assert P.average_cells(np.ones((4, 3, 5))) == 1.0


def test_last_checkpoints():
    study = list(range(15, 151, 15))
    assert P.last_checkpoints(study) == [105, 120, 135, 150]
    assert P.last_checkpoints([150, 30, 15, 30]) == [15, 30, 150]
    assert P.last_checkpoints(study, n=1) == [150]
    with pytest.raises(ValueError, match="checkpoint interval"):
        P.last_checkpoints([])
    # A resumed run's preemption save (142) is off the schedule: it does not push 105 out.
    resumed = [120, 135, 142, 150, 105]
    assert P.last_checkpoints(resumed, every=15, final=150) == [105, 120, 135, 150]
    assert P.last_checkpoints([15, 20], every=15, final=20) == [15, 20]  # a final step off the grid counts
    assert P.last_checkpoints([7], every=15, final=150) == [7]  # nothing on the schedule yet: what there is
