"""Report rendering: markdown like the paper's Tables 2 and 8, and real PNG files of the expected size."""
import json
import os

import pytest

from agentrl_jax import protocol as P
from agentrl_jax import report as R

TABLES = os.path.join(os.path.dirname(__file__), "..", "data", "study", "tables.json")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tables():
    with open(TABLES) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def v2(tables):
    return P.matrix_from_table(tables["table2_success"]["V2"])


def test_markdown_table_prints_table2_v2(v2):
    lines = R.markdown_table(v2).splitlines()
    assert lines[0] == "| train → eval | alfworld | webshop | sokoban | sciworld |"
    assert "| start | 21.9 | 38.3 | 14.1 | 18.0 |" in lines
    assert "| alfworld | +60.6 (=82.5) | 30.5 | 9.8 | 10.0 |" in lines
    assert "| sokoban | 20.0 | 34.0 | +35.7 (=49.8) | 13.0 |" in lines
    assert "| sciworld | 19.8 | 35.8 | 12.0 | +20.2 (=38.2) |" in lines
    assert len(lines) == 2 + len(v2.rows)


def test_markdown_table_missing_cells_absolute_id_and_intervals(tables, v2):
    v1 = P.matrix_from_table(tables["table2_success"]["V1"])
    assert "| webshop | 10.8 | **58.0** | 12.8 | – |" in R.markdown_table(v1, show_delta_id=False).splitlines()
    text = R.markdown_table(v2, intervals={"alfworld": {"webshop": (27.14, 33.96)}})
    assert "| alfworld | +60.6 (=82.5) | 30.5 [27.1, 34.0] | 9.8 | 10.0 |" in text.splitlines()


def test_ranking_table_prints_table8_v2(v2):
    lines = R.ranking_table(v2).splitlines()
    assert lines[0] == "| train → eval | alfworld | webshop | sokoban | sciworld | score |"
    assert lines[2:] == ["| alfworld | – | 3 | 2 | 3 | 8 |", "| webshop | 2 | – | 3 | 1 | 6 |",
                         "| sokoban | 1 | 2 | – | 2 | 5 |", "| sciworld | 1 | 1 | 1 | – | 3 |"]


def _png_shape(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    return matplotlib.image.imread(path).shape


def test_heatmap_png(v2, tmp_path):
    path = R.heatmap_png(v2, str(tmp_path / "plots" / "v2.png"), title="V2")
    assert path == str(tmp_path / "plots" / "v2.png")
    assert _png_shape(path) == (480, 640, 4)
    small = R.heatmap_png(v2, str(tmp_path / "small.png"), figsize=(3.0, 2.0), dpi=50)
    assert _png_shape(small) == (100, 150, 4)


def test_axes_scatter_png(tables, v2, tmp_path):
    axes = tables["table1_env_axes"]
    scores = P.ood_ranking_scores(v2)
    points = [(d, axes[d]["richness_chars"], scores[d]) for d in scores]
    path = R.axes_scatter_png(points, str(tmp_path / "axes.png"), "state richness (chars)", "OOD ranking score")
    assert _png_shape(path) == (480, 640, 4)
    with pytest.raises(ValueError, match="at least one"):
        R.axes_scatter_png([], str(tmp_path / "none.png"), "x", "y")
