"""The SFT entry point end to end on the tiny model: data generated in the RL prompt format and stored as JSONL,
the NLL falls, an RL-shaped run folder (operative config, Orbax checkpoints, TensorBoard), a killed run resumes
bit-identical, RL starts from it (`train.init_from`), the evaluator reads it as a run, and bad input."""
import json
import os
import shutil
import signal

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from agentrl_jax import checkpoint as ckpt
from agentrl_jax import evaluate as E
from agentrl_jax import sft as S
from agentrl_jax import sft_data
from agentrl_jax import train as T
from agentrl_jax.training_core import PolicyCore

SFT_FILES = ["gin/runs/sft.gin", "gin/models/tiny.gin", "gin/envs/sokoban_easy.gin"]


def _bindings(out_dir, **over):
    b = {"OUTPUT_DIR": repr(str(out_dir)), "THINKING": False, "sft.data": {"sokoban": "expert:sokoban:6"},
         "sft.num_steps": 6, "sft.batch_size": 8, "sft.checkpoint_every": 3, "sft.log_every": 1,
         "sft/agentrl_jax.optim.make_schedule.peak_lr": 3e-3,
         "sft/agentrl_jax.optim.make_schedule.kind": "'constant'", "Sokoban.max_steps": 4}
    b.update(over)
    return [f"{k} = {v!r}" if isinstance(v, dict) else f"{k} = {v}" for k, v in b.items()]


def _run(bindings, files=SFT_FILES):
    gin.clear_config()
    T.parse_gin(files, bindings)
    try:
        return S.sft()
    finally:
        gin.clear_config()


def _saved(out_dir, step):
    state = ocp.PyTreeCheckpointer().restore(os.path.join(out_dir, "checkpoints", str(step), "state"))
    return jax.tree.map(np.asarray, state["params"])


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    first = _run(_bindings(out, **{"sft.num_steps": 1}))  # the first update's NLL, same data and seed
    gin.clear_config()
    shutil.rmtree(out)
    last = _run(_bindings(out))
    return out, first, last


def test_sft_run_trains_and_has_an_rl_run_layout(sft_run):
    out, first, last = sft_run
    assert last["sft/nll"] < 0.8 * first["sft/nll"], (first, last)
    assert sorted(int(d) for d in os.listdir(out / "checkpoints") if d.isdigit()) == [3, 6]
    assert os.path.isfile(out / "operative_config.gin") and os.listdir(out / "tb")
    # The generated expert data is stored with its schema header, in the RL prompt format.
    records = sft_data.read_jsonl(str(out / "data" / "sokoban.jsonl"))
    assert sft_data.read_meta(str(out / "data" / "sokoban.jsonl"))["thinking"] is False  # the run's setting
    assert records and {r["domain"] for r in records} == {"sokoban"}
    assert all(r["answer_text"].startswith("<action>") for r in records)  # THINKING = False: no think block
    settings = E.run_settings(str(out))  # the evaluator reads an SFT run like an RL run
    assert settings["model_path"] == "tiny" and settings["thinking"] is False
    assert E.run_steps(str(out)) == [3, 6]


def test_killed_sft_resumes_bit_identical(sft_run, tmp_path, monkeypatch, capsys):
    out, _, _ = sft_run
    real = S.learner.with_counts
    calls = []

    def with_counts_then_sigterm(mb):
        calls.append(1)
        if len(calls) == 5:  # during step 5: the run saves step 5 and exits
            os.kill(os.getpid(), signal.SIGTERM)
        return real(mb)

    monkeypatch.setattr(S.learner, "with_counts", with_counts_then_sigterm)
    argv = [f"--gin_file={f}" for f in SFT_FILES] + [f"--gin_bindings={b}" for b in _bindings(tmp_path / "resumed")]
    gin.clear_config()
    try:
        # The CLI: saved but not finished is exit 75 (not 0), with the step it resumes from.
        with pytest.raises(SystemExit) as stopped:
            S.main(argv)
    finally:
        ckpt.clear_preemption_flag()
        gin.clear_config()
    assert stopped.value.code == ckpt.EXIT_PREEMPTED == 75
    assert "will resume from step 5 when started again" in capsys.readouterr().out
    monkeypatch.setattr(S.learner, "with_counts", real)
    assert sorted(int(d) for d in os.listdir(tmp_path / "resumed" / "checkpoints") if d.isdigit()) == [3, 5]
    _run(_bindings(tmp_path / "resumed"))
    for x, y in zip(jax.tree.leaves(_saved(out, 6)), jax.tree.leaves(_saved(tmp_path / "resumed", 6))):
        np.testing.assert_array_equal(x, y)


def test_rl_starts_from_the_sft_run(sft_run, tmp_path, capsys):
    out, _, _ = sft_run
    core = PolicyCore(model_path="tiny", mesh=T.sharding.make_mesh(), thinking=False)
    params, step = core.init_from(str(out), core.params)
    assert step == 6
    fresh = jax.tree.leaves(jax.tree.map(np.asarray, core.params))
    started = jax.tree.leaves(jax.tree.map(np.asarray, params))
    saved = jax.tree.leaves(_saved(out, 6))
    for s_, st in zip(saved, started):
        np.testing.assert_array_equal(s_, st)
    assert any(not np.array_equal(f, s_) for f, s_ in zip(fresh, started))
    # The RL trainer: init_from in gin, no RL step; its step-0 evaluation is the SFT model's.
    gin.clear_config()
    T.parse_gin(["gin/experiments/sokoban_tiny_cpu.gin"],
                [f"OUTPUT_DIR = {str(tmp_path / 'rl')!r}", f"train.init_from = {str(out)!r}", "train.num_steps = 0",
                 "train.eval_episodes = 4", "train.sft_steps = 0", "THINKING = False", "Sokoban.max_steps = 4"])
    try:
        T.train()
    finally:
        gin.clear_config()
    assert f"starting from {out} (its checkpoint at step 6)" in capsys.readouterr().out


def test_bad_sft_input_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="expert:<domain>:<num_tasks>"):
        _run(_bindings(tmp_path / "a", **{"sft.data": {"x": "expert:sokoban"}}))
    with pytest.raises(FileNotFoundError, match="sft.data"):
        _run(_bindings(tmp_path / "b", **{"sft.data": {"x": str(tmp_path / "missing.jsonl")}}))
    with pytest.raises(ValueError, match="sft.mix names"):
        _run(_bindings(tmp_path / "c", **{"sft.mix": {"other": 1}}))
    thinking_data = str(tmp_path / "think.jsonl")  # written for THINKING = True; this run has False
    sft_data.write_jsonl(thinking_data, [sft_data.record("sokoban", 0, 0, [1], [2], "expert")], {"thinking": True})
    with pytest.raises(ValueError, match="written with thinking=True, this run has sft.thinking=False"):
        _run(_bindings(tmp_path / "d", **{"sft.data": {"x": thinking_data}}))
    with pytest.raises(ValueError, match="no checkpoints/ folder"):
        _run(_bindings(tmp_path / "d", **{"sft.init_from": repr(str(tmp_path))}))


def test_a_run_starts_from_a_lora_run_with_its_adapters_merged(tmp_path):
    """A LoRA SFT run's checkpoints hold adapters only: init_from merges them into the shared base, so the new
    (full fine-tuning) run starts on base + scale * lora_a @ lora_b in every target kernel, the rest untouched."""
    out = tmp_path / "lora_sft"
    _run(_bindings(out, **{"sft.num_steps": 2, "sft.checkpoint_every": 2, "lora.rank": 4, "lora.alpha": 8.0,
                           "lora.target_modules": ["q_proj", "down_proj"]}))
    saved = ocp.PyTreeCheckpointer().restore(os.path.join(out, "checkpoints", "2", "state"))["params"]
    core = PolicyCore(model_path="tiny", mesh=T.sharding.make_mesh(), thinking=False)
    params, step = core.init_from(str(out), core.params)
    assert step == 2
    base = {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(core.params)}
    started = {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(params)}
    assert started.keys() == base.keys()
    merged = 0
    for name, kernel in base.items():
        block = name.split("/")[-2]
        if block in ("q_proj", "down_proj"):
            adapter = saved
            for part in name.split("/")[:-1] + ["lora"]:  # .../q_proj/kernel -> .../q_proj/lora/{lora_a, lora_b}
                adapter = adapter[part]
            a, b = (np.asarray(adapter[w]["value"] if isinstance(adapter[w], dict) else adapter[w], np.float64)
                    for w in ("lora_a", "lora_b"))
            assert np.abs(b).max() > 0  # trained (lora_b starts at zero)
            np.testing.assert_allclose(started[name], kernel + 2.0 * (a @ b).reshape(kernel.shape), atol=1e-6)
            merged += 1
        else:
            np.testing.assert_array_equal(started[name], kernel)
    assert merged == 2 * len(saved["lm"]["layers"])  # q_proj and down_proj of every layer
