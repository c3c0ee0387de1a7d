"""The study as gin files and its runner (issue 16): every study file parses and builds with the tiny model, the
runner's order, dry-run commands, skip/resume, and the study's tables from evaluator-shaped results."""
import glob
import importlib.util
import inspect
import json
import os
import stat
import subprocess
import sys

import gin
import pytest

from agentrl_jax import augment as aug
from agentrl_jax import evaluate as ev
from agentrl_jax import optim, rl
from agentrl_jax import study as S
from agentrl_jax import study_tables as ST
from agentrl_jax import train as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import gen_study_gin as G  # noqa: E402

GRIDS = ("study", "study_tiny")
HAS_INIT_FROM = "init_from" in inspect.signature(T.train).parameters
HAS_SFT = importlib.util.find_spec("agentrl_jax.sft") is not None and os.path.isfile(
    os.path.join(REPO, "gin", "runs", "sft.gin"))


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _grid(name):
    T.parse_gin([f"gin/experiments/{name}/grid.gin"], [])
    spec = S.study()
    gin.clear_config()
    return spec


def test_the_generated_files_are_up_to_date():
    assert G.main(["--check"]) == 0, "run python scripts/gen_study_gin.py"
    for name in GRIDS:
        on_disk = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, f"gin/experiments/{name}/**/*.gin"),
                                                                   recursive=True)}
        spec = G.study() if name == "study" else G.tiny()
        assert on_disk == set(G.files(spec)), "stale files in the study folder: regenerate it"


def test_the_full_grid_is_the_studys():
    spec = _grid("study")
    rl_runs = [st for st in spec["stages"] if st.kind == "rl"]
    # V2: 4 domains; V1: no SciWorld (paper §4, Table 8's V1 ranking is 3 rows x 2 OOD columns), x aug x think x 3.
    assert len(rl_runs) == (4 + 3) * 2 * 2 * 3 == 84
    coords = {(r.run["domain"], r.run["aug"], r.run["thinking"], r.run["init"], r.run["seed"]) for r in rl_runs}
    assert len(coords) == 84 and {c[0] for c in coords} == set(G.DOMAINS) and {c[4] for c in coords} == {0, 1, 2}
    assert {c[0] for c in coords if c[3] == "v1"} == {"sokoban", "alfworld", "webshop"}
    evals = {st.of for st in spec["stages"] if st.kind == "eval"}
    assert evals == {r.name for r in rl_runs} | {"v1", "v2"}
    # Every V1 evaluation (its runs and the start row) has no SciWorld column; V2's have all four.
    for st in spec["stages"]:
        if st.kind == "eval":
            gin.clear_config()
            T.parse_gin([st.gin], ["MODEL_PATH = 'tiny'"])
            init = "v1" if st.of == "v1" or st.of.endswith(tuple(f"_v1_s{s}" for s in (0, 1, 2))) else "v2"
            want = ["sokoban", "alfworld", "webshop"] if init == "v1" else list(G.DOMAINS)
            assert gin.get_bindings(ev.evaluate)["domains"] == want, st.name
    kinds = sorted({st.kind for st in spec["stages"]})
    assert kinds == sorted(S.KIND_MODULES)


def _stage_files():
    for name in GRIDS:
        T.parse_gin([f"gin/experiments/{name}/grid.gin"], [])
        spec = S.study()
        gin.clear_config()
        for st in spec["stages"]:
            yield pytest.param(name, st, id=f"{name}/{st.name}")


def _query(name):
    return gin.query_parameter(name)


def _macro(name):
    return gin.query_parameter(f"{name}/gin.macro.value")


@pytest.mark.parametrize("grid,stage", list(_stage_files()))
def test_every_study_file_parses_and_builds_with_the_tiny_model(grid, stage):
    """Parse the stage's file as its entry point does (the tiny model substituted), bind the entry point's
    arguments and build the cheap configurables (RL config, optimizer, each domain's distractor setting);
    the values are those the generator meant, so no include order silently overrides a macro."""
    import agentrl_jax.env_properties as EP

    if stage.kind in ("v1", "rl") and not HAS_INIT_FROM:
        pytest.skip("train.init_from is not on this branch yet")
    if stage.kind == "sft" and not HAS_SFT:
        pytest.skip("agentrl_jax.sft / gin/runs/sft.gin are not on this branch yet")
    T.parse_gin([stage.gin], ["MODEL_PATH = 'tiny'"])
    entry = {"v1": T.train, "rl": T.train, "eval": ev.evaluate, "properties": EP.env_properties}.get(stage.kind)
    if entry is not None:
        bound = inspect.signature(entry).bind(**gin.get_bindings(entry))
        assert all(v is not gin.REQUIRED for v in bound.arguments.values())
    tiny = grid == "study_tiny"
    if stage.kind in ("v1", "rl"):
        run = stage.run or {"domain": "webshop", "aug": False, "thinking": True, "init": None, "seed": 0}
        b = gin.get_bindings(T.train)
        assert b["output_dir"] == stage.output and b["domain"] == run["domain"] and b["thinking"] is run["thinking"]
        assert b["seed"] == run["seed"] and b["model_path"] == "tiny"
        init = run["init"]
        assert b["init_from"] == (None if init is None else f"{G.study().output_root if not tiny else 'outputs/study_tiny'}/{init}")
        cfg = rl.RLConfig()
        assert cfg.algorithm == "grpo" and cfg.kl_coef == 0.01
        optim.make_optimizer()
        if not tiny:
            assert (b["num_steps"], b["group_size"], b["tasks_per_step"]) == ((20 if stage.kind == "v1" else 150), 8, 16)
            assert (b["checkpoint_every"], b["keep_checkpoints"]) == (15, 4)
            assert gin.get_bindings("agentrl_jax.optim.make_schedule")["peak_lr"] == 1e-6
        for d in G.DOMAINS:
            setting = aug.domain_augmentation(d)
            expected = (G.tiny() if tiny else G.study()).augmentation[init][d] if (run["aug"] and d == run["domain"]) else None
            assert setting.active == (expected is not None), d
            if expected is not None:
                assert (setting.epsilon, setting.p) == expected
    elif stage.kind == "eval":
        b = gin.get_bindings(ev.evaluate)
        assert b["output_dir"] == stage.output
        assert list(b["runs"].values()) == [stage.output.replace("/eval/", "/rl/") if stage.of not in ("v1", "v2")
                                            else stage.output.rsplit("/eval/", 1)[0] + "/" + stage.of]
        assert b["steps"] == ("latest" if stage.of in ("v1", "v2") else "last")
        if not tiny:
            v1 = stage.of == "v1" or "_v1_s" in stage.of  # V1 has no SciWorld column (paper §4)
            assert b["num_checkpoints"] == 4 and tuple(b["seeds"]) == (0, 1, 2) and len(b["domains"]) == (3 if v1 else 4)
    elif stage.kind == "properties":
        b = gin.get_bindings(EP.env_properties)
        assert b["output_path"] == stage.output and b["run_dir"].endswith("/v2") and b["thinking"] is True
        if not tiny:
            assert (b["episodes"], b["max_turns_cap"]) == (128, 50)
    elif stage.kind == "data":
        assert _macro("THINKING") is True and _macro("MODEL_PATH") == "tiny"
        b = gin.get_bindings(T.train)  # what agentrl_jax.expert_data reads of the policy
        assert b["model_path"] == "tiny" and b["thinking"] is True and b["temperature"] == 1.0
        assert any(a == f"--out={stage.output}" for a in stage.args)
    elif stage.kind == "sft":
        import agentrl_jax.sft as SFT

        b = gin.get_bindings(SFT.sft)
        assert b["init_from"].endswith("/v1") and b["mix"] == {"sciworld_expert": 19, "alfworld_rollout": 3,
                                                                "webshop_rollout": 1}
        if not tiny:
            assert (b["num_steps"], b["batch_size"]) == (100, 32)
            assert b.get("max_response_tokens") == 1024  # RL's longest answers (WebShop, SciWorld), not cut at 512
            s = gin.get_bindings("sft/agentrl_jax.optim.make_schedule")
            assert (s["peak_lr"], s["kind"], s["warmup_ratio"]) == (5e-6, "cosine", 0.1)
        assert b["data"] == {n: f"{stage.output.rsplit('/', 1)[0]}/data/{n}.jsonl" for n in b["mix"]}


def test_the_evaluator_reads_distractors_bound_to_macros():
    """The study binds `<domain>/augment.*` to AUG_EPSILON / AUG_P; a run's row must still say it had them."""
    config = ("AUG_EPSILON = 80\nAUG_P = 0.5\nsokoban/augment.epsilon = %AUG_EPSILON\nsokoban/augment.p = %AUG_P\n"
              "alfworld/augment.epsilon = 0\n")
    assert ev._augmentation_of(config) == "sokoban/augment.epsilon = 80; sokoban/augment.p = 0.5"


def test_sciworld_has_its_own_distractor_setting():
    """The study did not augment ScienceWorld; its aug runs use our own setting, not ALFWorld's."""
    assert G.TABLE11["v2"]["sciworld"] != G.TABLE11["v2"]["alfworld"]
    assert "sciworld" not in G.TABLE11["v1"]  # no SciWorld run starts from V1
    text = open(os.path.join(REPO, "gin/experiments/study/rl/sciworld_aug_think_v2_s0.gin")).read()
    assert "include 'runs/augment/sciworld.gin'" in text and "AUG_EPSILON = 60" in text and "AUG_P = 0.5" in text


# ------------------------------------------------------------------------------------------ the runner
def test_the_order_follows_dependencies_and_the_studys_chain():
    for name in GRIDS:
        spec = _grid(name)
        order = S.execution_order(spec["stages"])
        pos = {st.name: i for i, st in enumerate(order)}
        for st in order:
            assert all(pos[a] < pos[st.name] for a in st.after), st.name
        kinds = [st.kind for st in order]
        # V1 -> data -> SFT (V2) -> RL runs -> evaluations -> env axes, each block whole.
        blocks = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
        assert blocks == ["v1", "data", "sft", "rl", "eval", "properties"], blocks


def test_a_bad_grid_is_named():
    base = {"kind": "rl", "gin": "x.gin", "output": "o"}
    with pytest.raises(ValueError, match="cycle"):
        S.parse_stages([{**base, "name": "a", "after": ["b"]}, {**base, "name": "b", "after": ["a"]}])
    with pytest.raises(ValueError, match="does not have"):
        S.parse_stages([{**base, "name": "a", "after": ["nope"]}])
    with pytest.raises(ValueError, match="kind 'train'"):
        S.parse_stages([{**base, "name": "a", "kind": "train"}])
    with pytest.raises(ValueError, match="two stages"):
        S.parse_stages([{**base, "name": "a"}, {**base, "name": "a"}])


def test_dry_run_prints_every_stages_exact_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "agentrl_jax.study", "--gin_file=gin/experiments/study_tiny/grid.gin",
                          "--dry_run", f"--gin_bindings=study.output_dir = '{tmp_path}'",
                          "--stage_binding=MODEL_PATH = 'tiny'"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if ": " in line and " -m " in line]
    assert len(lines) == 16
    py = sys.executable
    assert lines[0] == f"todo  v1: {py} -m agentrl_jax.train --gin_file=gin/experiments/study_tiny/v1.gin " \
                       "'--gin_bindings=MODEL_PATH = '\"'\"'tiny'\"'\"''"
    v2 = next(line for line in lines if " v2: " in line)
    assert v2.startswith("after v1,data_sciworld_expert,data_alfworld_rollout,data_webshop_rollout  v2: ")
    assert f"{py} -m agentrl_jax.sft --gin_file=gin/experiments/study_tiny/v2.gin" in v2
    data = next(line for line in lines if "data_alfworld_rollout:" in line)
    assert ("-m agentrl_jax.expert_data --gin_file=gin/experiments/study_tiny/data/alfworld_rollout.gin "
            "--domain=alfworld --source=rollout --num_tasks=1 --seed=0 "
            "--out=outputs/study_tiny/data/alfworld_rollout.jsonl --run_dir=outputs/study_tiny/v1") in data
    assert sum(" -m agentrl_jax.evaluate " in line for line in lines) == 6
    assert not os.path.exists(os.path.join(tmp_path, "stages"))  # nothing ran, nothing marked


FAKE = """#!/bin/sh
# A stand-in for a stage's process: logs its call and writes a run folder of 2 steps (operative config + the
# checkpoints a trainer leaves); the first call of a stage named in $KILL_FIRST kills itself (as an OOM kill
# would), any call of a stage in $FAIL exits 3, one in $SHORT exits 0 with only step 1 saved, and the first call
# of one in $TERM_RUNNER sends SIGTERM to the runner (its parent) and, like the trainer, saves step 1 on the
# forwarded SIGTERM and exits 75.
echo "$@" >> "$CALLS"
name=$(echo "$@" | sed 's/.*--gin_file=\\([^ ]*\\).*/\\1/')
case " $FAIL " in *" $name "*) echo "failing $name"; exit 3;; esac
case " $KILL_FIRST " in *" $name "*)
  if [ ! -f "$CALLS.$name.killed" ]; then touch "$CALLS.$name.killed"; kill -9 $$; fi;; esac
case " $NO_OUTPUT " in *" $name "*) echo "nothing written"; exit 0;; esac
mkdir -p "$OUT/$name/checkpoints/1"
echo "train.num_steps = 2" > "$OUT/$name/operative_config.gin"
case " $TERM_RUNNER " in *" $name "*)
  if [ ! -f "$CALLS.$name.termed" ]; then
    touch "$CALLS.$name.termed"
    trap 'echo "preempted: saved step 1"; exit 75' TERM
    kill -TERM $PPID
    while :; do sleep 0.05; done
  fi;; esac
case " $SHORT " in *" $name "*) echo "stopped at 1"; exit 0;; esac
mkdir -p "$OUT/$name/checkpoints/2"
echo "ok $name"
"""


def _fake_python(tmp_path):
    path = tmp_path / "fake_python"
    path.write_text(FAKE)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _spec(tmp_path):
    out = tmp_path / "out"  # the fake writes <out>/<its gin file>
    raw = [{"name": "v1", "kind": "v1", "gin": "a", "output": str(out / "a")},
           {"name": "rl1", "kind": "rl", "gin": "b", "output": str(out / "b"), "after": ["v1"]},
           {"name": "rl2", "kind": "rl", "gin": "c", "output": str(out / "c"), "after": ["v1"]},
           {"name": "eval1", "kind": "eval", "gin": "d", "output": str(out / "d"), "after": ["rl1"], "of": "rl1"}]
    return {"output_dir": str(tmp_path / "study"), "stages": S.parse_stages(raw), "sft_mix_domains": (),
            "stage_bindings": (), "tie": 0.5, "n_boot": 10, "compilation_cache": str(tmp_path / "jax_cache")}


@pytest.fixture(autouse=True)
def _fake_env(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    for name in ("KILL_FIRST", "FAIL", "NO_OUTPUT", "SHORT", "TERM_RUNNER"):
        monkeypatch.setenv(name, "")


def _calls(path):
    return [line.split("--gin_file=")[1].split()[0] for line in open(path)] if os.path.exists(path) else []


def _fake_stages(monkeypatch, tmp_path, **behaviour) -> str:
    """Set how the fake stages behave (KILL_FIRST, FAIL, NO_OUTPUT, SHORT, TERM_RUNNER: the stage names each
    applies to; `_fake_env` makes them none); returns the file the stages append their names to."""
    calls = str(tmp_path / "calls")
    monkeypatch.setenv("CALLS", calls)
    for name, value in behaviour.items():
        monkeypatch.setenv(name, value)
    return calls


def test_a_finished_stage_is_skipped_and_a_killed_one_is_rerun(tmp_path, monkeypatch):
    calls = _fake_stages(monkeypatch, tmp_path, KILL_FIRST="b")
    py, spec, seen = _fake_python(tmp_path), _spec(tmp_path), []
    first = S.run_study(spec, python=py, echo=seen.append)
    # rl1 was killed: no marker, the run stops there (rl2, eval1 not started).
    assert first == {"done": [], "ran": ["v1"], "failed": ["rl1"], "blocked": [], "stopped": []}
    assert _calls(calls) == ["a", "b"]
    assert os.path.isfile(S.marker_path(spec["output_dir"], spec["stages"][0]))
    assert not os.path.exists(S.marker_path(spec["output_dir"], spec["stages"][1]))
    assert any("FAILED   rl1 (exit -9)" in line for line in seen)
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))  # one set already wins
    assert seen[0] == f"stages share JAX's compilation cache: JAX_COMPILATION_CACHE_DIR={cache}"
    second = S.run_study(spec, python=py, echo=seen.append)
    assert second == {"done": ["v1"], "ran": ["rl1", "rl2", "eval1"], "failed": [], "blocked": [], "stopped": []}
    assert _calls(calls) == ["a", "b", "b", "c", "d"]  # v1 skipped, the killed rl1 run again
    log = open(os.path.join(spec["output_dir"], "logs", "rl1.log")).read()
    assert log.count("$ ") == 2 and "ok b" in log
    marker = json.load(open(S.marker_path(spec["output_dir"], spec["stages"][1])))
    assert marker["command"] == [py, "-m", "agentrl_jax.train", "--gin_file=b"]
    third = S.run_study(spec, python=py, echo=seen.append)
    assert third["done"] == ["v1", "rl1", "rl2", "eval1"] and _calls(calls) == ["a", "b", "b", "c", "d"]


def test_keep_going_runs_what_does_not_depend_on_a_failure(tmp_path, monkeypatch):
    calls = _fake_stages(monkeypatch, tmp_path, FAIL="b")
    spec = _spec(tmp_path)
    status = S.run_study(spec, python=_fake_python(tmp_path), keep_going=True, echo=lambda s: None)
    assert status == {"done": [], "ran": ["v1", "rl2"], "failed": ["rl1"], "blocked": ["eval1"], "stopped": []}
    only = S.run_study(spec, python=_fake_python(tmp_path), only=["v*"], echo=lambda s: None)
    assert only["done"] == ["v1"] and only["ran"] == [] and _calls(calls) == ["a", "b", "c"]


def test_a_stage_that_exits_0_without_its_output_is_not_done(tmp_path, monkeypatch):
    _fake_stages(monkeypatch, tmp_path, NO_OUTPUT="a")
    spec, seen = _spec(tmp_path), []
    status = S.run_study(spec, python=_fake_python(tmp_path), echo=seen.append)
    assert status["failed"] == ["v1"] and not S.is_done(spec["output_dir"], spec["stages"][0])
    assert f"v1 exited 0 but wrote no {tmp_path / 'out' / 'a'}" in seen


def test_a_run_that_exits_0_short_of_its_num_steps_is_not_done(tmp_path, monkeypatch):
    _fake_stages(monkeypatch, tmp_path, SHORT="b")
    spec, seen = _spec(tmp_path), []
    status = S.run_study(spec, python=_fake_python(tmp_path), echo=seen.append)
    assert status["ran"] == ["v1"] and status["failed"] == ["rl1"]
    assert not S.is_done(spec["output_dir"], spec["stages"][1])
    assert "rl1 exited 0 but its latest checkpoint is step 1, not its num_steps 2" in seen


def test_a_sigterm_to_the_runner_stops_it_after_the_stage_without_a_marker(tmp_path, monkeypatch):
    """A preemption: the runner passes SIGTERM on, the stage saves and exits 75, the runner writes no marker and
    starts nothing else; the next call resumes that stage."""
    calls = _fake_stages(monkeypatch, tmp_path, TERM_RUNNER="b")
    py, spec, seen = _fake_python(tmp_path), _spec(tmp_path), []
    first = S.run_study(spec, python=py, keep_going=True, echo=seen.append)  # even with keep_going
    assert first == {"done": [], "ran": ["v1"], "failed": [], "blocked": [], "stopped": ["rl1"]}
    assert _calls(calls) == ["a", "b"] and not S.is_done(spec["output_dir"], spec["stages"][1])
    assert "[rl1] preempted: saved step 1" in seen and any(line.startswith("STOPPED  rl1 (exit 75)") for line in seen)
    second = S.run_study(spec, python=py, echo=seen.append)
    assert second["ran"] == ["rl1", "rl2", "eval1"] and _calls(calls) == ["a", "b", "b", "c", "d"]


# ------------------------------------------------------------------------------------------ the tables
TASKS = 1000  # success rates with one decimal are exact counts of 1000 tasks
START_V1 = {"alfworld": 25.8, "webshop": 34.4, "sokoban": 12.5, "sciworld": 3.1}  # Table 2
START_V2 = {"alfworld": 21.9, "webshop": 38.3, "sokoban": 14.1, "sciworld": 18.0}
# Table 2's trained rows (ID cells absolute), Table 5's V2 aug rows, Table 7's V1 ALFWorld row without thinking.
ROWS = {
    ("v1", True, False): {"alfworld": {"alfworld": 73.0, "webshop": 15.2, "sokoban": 14.0},
                          "webshop": {"alfworld": 10.8, "webshop": 58.0, "sokoban": 12.8},
                          "sokoban": {"alfworld": 20.5, "webshop": 15.0, "sokoban": 48.5}},
    ("v2", True, False): {"alfworld": {"alfworld": 82.5, "webshop": 30.5, "sokoban": 9.8, "sciworld": 10.0},
                          "webshop": {"alfworld": 17.0, "webshop": 67.0, "sokoban": 9.0, "sciworld": 13.8},
                          "sokoban": {"alfworld": 20.0, "webshop": 34.0, "sokoban": 49.8, "sciworld": 13.0},
                          "sciworld": {"alfworld": 19.8, "webshop": 35.8, "sokoban": 12.0, "sciworld": 38.2}},
    ("v2", True, True): {"alfworld": {"alfworld": 78.5, "webshop": 30.3, "sokoban": 11.0, "sciworld": 12.5},
                         "webshop": {"alfworld": 25.8, "webshop": 66.0, "sokoban": 11.8, "sciworld": 15.5},
                         "sokoban": {"alfworld": 20.8, "webshop": 37.0, "sokoban": 51.5, "sciworld": 13.0}},
    ("v1", False, False): {"alfworld": {"alfworld": 77.0, "webshop": 0.8, "sokoban": 7.5}},
}


def _write_eval(folder, row, train_domain, cells_pct, seed_offset=0.0, steps=(105, 120, 135, 150), seeds=(0, 1, 2)):
    """An evaluator output folder (results.json + cells/) for one row, through the evaluator's own code: each
    cell has exactly round((p + offset) * 10) of TASKS tasks solved."""
    cols = list(cells_pct)
    row_obj = ev.Row(row, "tiny", train_domain, True, "none", "run" if train_domain else None, tuple(steps))
    cells = {}
    for col, p in cells_pct.items():
        k = int(round((p + seed_offset) * TASKS / 100))
        for step in steps:
            for seed in seeds:
                spec = ev.CellSpec(row, step, col, "test", seed)
                cell = {"id": spec.cell_id, "fingerprint": "x", "row": row, "step": step, "domain": col,
                        "split": "test", "seed": seed, "thinking": True, "seconds": 0.0,
                        "success": [1.0] * k + [0.0] * (TASKS - k), "invalid_action_rate": 0.0,
                        "episode_length": 1.0, "response_tokens_per_turn": 1.0, "lost_episodes": 0,
                        "success_rate": k / TASKS}
                ev.write_cell(os.path.join(folder, "cells"), cell)
                cells.setdefault((row, col), []).append(cell)
    meta = {c: {"domain": c, "split": "test", "tasks": TASKS} for c in cols}
    results = ev._results([row_obj], cols, cells, list(seeds), meta, 50, 0.95, 0.5, None)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(results, f, default=float)


@pytest.fixture(scope="module")
def study_tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    starts = {}
    for init, cells in (("v1", {k: v for k, v in START_V1.items() if k != "sciworld"}), ("v2", START_V2)):
        starts[init] = str(root / f"eval_start_{init}")
        _write_eval(starts[init], f"start_{init}", "webshop", cells, steps=(20,))
    runs = []
    for (init, thinking, aug_on), by_domain in ROWS.items():
        for domain, cells in by_domain.items():
            for seed, offset in ((0, -0.5), (1, 0.5)):  # two training seeds, 1 point apart: their mean is the cell
                name = f"{domain}_{'aug' if aug_on else 'noaug'}_{'think' if thinking else 'nothink'}_{init}_s{seed}"
                folder = str(root / "eval" / name)
                _write_eval(folder, name, domain, cells, offset)
                runs.append(ST.RunEval(name, domain, aug_on, thinking, init, seed, folder))
    props = root / "properties.json"
    props.write_text(json.dumps({"config": {"policy": "v2"}, "domains": {
        d: {"prompt_chars": c, "planning_steps": p} for d, c, p in
        (("sokoban", 3114, 44.0), ("sciworld", 2851, 43.5), ("webshop", 3063, 33.9), ("alfworld", 1572, 42.0))}}))
    out = root / "tables"
    js = ST.write_tables(runs, starts, str(out), ["sciworld", "alfworld", "webshop"], str(props), n_boot=50)
    return js, out


def test_the_matrix_pools_seeds_with_intervals(study_tables):
    js, out = study_tables
    g = js["groups"]["v2_think_noaug"]
    assert g["matrix"]["success"]["sokoban"]["webshop"] == pytest.approx(34.0)  # mean of 33.5 and 34.5
    assert g["matrix"]["success"]["start"]["sciworld"] == pytest.approx(18.0)
    assert g["delta_id"]["alfworld"] == pytest.approx(60.6) and g["delta_id"]["sciworld"] == pytest.approx(20.2)
    lo, hi = g["intervals"]["sokoban"]["webshop"]
    assert lo < 34.0 < hi and hi - lo < 10
    assert g["runs"]["sokoban"]["webshop"] == 2
    md = (out / "tables.md").read_text()
    assert "| sokoban | 20.0 [" in md and "+60.6 (=82.5) [" in md
    for label in ("v1_think_noaug", "v2_think_noaug", "v2_think_aug", "v1_nothink_noaug"):
        assert (out / f"matrix_{label}.png").is_file()


def test_ood_ranking_scores_are_table_8s(study_tables):
    js, _ = study_tables
    assert js["groups"]["v2_think_noaug"]["ranking"] == {"alfworld": 8, "webshop": 6, "sokoban": 5, "sciworld": 3}
    assert js["groups"]["v1_think_noaug"]["ranking"] == {"alfworld": 2, "webshop": 4, "sokoban": 2}


def test_delta_ood_per_lever_by_hand(study_tables):
    js, out = study_tables
    rows = {(r["lever"], r["on"], r["train_domain"]): r["delta_ood"] for r in js["delta_ood"]}
    # Table 5, V2 rows (its ✓ rows): ALFWorld +7.0%, WebShop +33.4%, Sokoban +5.7%.
    assert round(rows[("augmentation", "v2_think_aug", "alfworld")], 1) == 7.0
    assert round(rows[("augmentation", "v2_think_aug", "webshop")], 1) == 33.4
    assert round(rows[("augmentation", "v2_think_aug", "sokoban")], 1) == 5.7
    # Thinking, V1 ALFWorld: ((15.2 - 0.8) + (14.0 - 7.5)) / (0.8 + 7.5) = 251.8%.
    assert rows[("thinking", "v1_think_noaug", "alfworld")] == pytest.approx(20.9 / 8.3 * 100)
    # V2 vs V1 start, Sokoban, over the OOD columns both evaluated (ALF, Web):
    # ((20.0 - 20.5) + (34.0 - 15.0)) / (20.5 + 15.0) = 52.1%.
    assert rows[("mid-training (V2 vs V1 start)", "v2_think_noaug", "sokoban")] == pytest.approx(18.5 / 35.5 * 100)
    assert len(rows) == 3 + 1 + 3 and (out / "delta_ood.png").is_file()


def test_forgetting_is_table_6(study_tables):
    js, out = study_tables
    rows = {(r["train_domain"], r["eval_domain"]): r for r in js["forgetting"] if r["group"] == "think_noaug"}
    # Table 6's rows that agree with Table 2 (its ALFWorld -> WebShop row does not): (V1 Rel, V2 Rel, Diff, in mix)
    table6 = {("sokoban", "webshop"): (-56.4, -11.2, 45.2, True), ("sokoban", "alfworld"): (-20.5, -8.7, 11.8, True),
              ("alfworld", "sokoban"): (12.0, -30.5, -42.5, False), ("webshop", "alfworld"): (-58.1, -22.4, 35.7, True),
              ("webshop", "sokoban"): (2.4, -36.2, -38.6, False)}
    for key, (rel1, rel2, diff, in_mix) in table6.items():
        r = rows[key]
        assert (round(r["v1_rel"], 1), round(r["v2_rel"], 1), r["in_mix"]) == (rel1, rel2, in_mix), key
        assert abs(r["diff"] - diff) <= 0.1, key  # the paper subtracts the rounded Rel. values
    assert set(rows) == set(table6) | {("alfworld", "webshop")}
    assert "| think_noaug | sokoban → webshop | yes | 15.0 (-56.4%) | 34.0 (-11.2%) | +45.2% |" in \
        (out / "tables.md").read_text()


def test_env_axes_scatter(study_tables):
    js, out = study_tables
    axes = js["env_axes"]
    assert axes["group"] == "v2_think_noaug" and len(axes["png"]) == 4
    points = {p[0]: p[1:] for p in axes["points"]["richness_vs_ranking"]}
    assert points == {"alfworld": [1572.0, 8.0], "webshop": [3063.0, 6.0], "sokoban": [3114.0, 5.0],
                      "sciworld": [2851.0, 3.0]} or points == {"alfworld": (1572.0, 8.0), "webshop": (3063.0, 6.0),
                                                                 "sokoban": (3114.0, 5.0), "sciworld": (2851.0, 3.0)}
    assert all(os.path.isfile(p) for p in axes["png"])


def test_tables_tolerate_a_study_in_progress(tmp_path):
    """Nothing evaluated yet: empty tables, no error (the runner writes them after every call)."""
    js = ST.write_tables([ST.RunEval("r", "sokoban", False, True, "v1", 0, str(tmp_path / "none"))],
                         {"v1": str(tmp_path / "none")}, str(tmp_path / "tables"))
    assert js["groups"] == {} and js["delta_ood"] == [] and (tmp_path / "tables" / "tables.md").is_file()


# ------------------------------------------------------------------------------------------ end to end
def _has_expert_data_cli():
    path = os.path.join(REPO, "agentrl_jax", "expert_data.py")
    return os.path.isfile(path) and "--source" in open(path).read()


@pytest.mark.slow
@pytest.mark.java
@pytest.mark.skipif(not (HAS_INIT_FROM and HAS_SFT and _has_expert_data_cli()),
                    reason="needs train.init_from, agentrl_jax.sft and the expert_data CLI on this branch")
def test_the_tiny_grid_runs_end_to_end(tmp_path):
    """Every kind of stage on real entry points: V1, SFT data, SFT (V2), RL runs (aug/noaug, think/nothink, both
    starts), evaluations, env axes; then the tables; a second call finds everything done."""
    os.symlink(os.path.join(REPO, "data"), tmp_path / "data")  # the stages read data/ from their working folder
    cmd = [sys.executable, "-m", "agentrl_jax.study", "--gin_file=gin/experiments/study_tiny/grid.gin"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=3600, env=env)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    root = tmp_path / "outputs" / "study_tiny"
    assert len(list((root / "stages").glob("*.done"))) == 16
    tables = json.load(open(root / "tables" / "tables.json"))
    assert sorted(tables["groups"]) == ["v1_nothink_noaug", "v1_think_aug", "v1_think_noaug", "v2_think_noaug"]
    for g in tables["groups"].values():
        assert g["matrix"]["cols"] == ["sokoban", "webshop"] and g["matrix"]["success"]["start"]["sokoban"] is not None
    assert {r["lever"] for r in tables["delta_ood"]} == {lever for lever, *_ in ST.LEVERS}
    assert len(tables["delta_ood"]) == 3  # one Sokoban row per lever (its value 0/0 while the tiny model solves nothing)
    assert (root / "tables" / "tables.md").is_file() and len(list((root / "tables").glob("matrix_*.png"))) == 4
    assert len(tables["env_axes"]["png"]) == 4
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0 and "stages: 16 done before, 0 ran" in second.stdout, second.stdout[-3000:]
