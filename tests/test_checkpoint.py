"""Orbax checkpoints: cross-mesh restore, retention, corrupt fallback, SIGTERM preemption + exact resume."""
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from agentrl_jax import checkpoint, optim, sharding
from helpers.standin import StandinLM, tiny_causal_lm

HELPERS = os.path.join(os.path.dirname(__file__), "helpers")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _factory(seed=0):
    return lambda: StandinLM(vocab=64, hidden=32, mlp=64, layers=1, rngs=nnx.Rngs(seed))


def _state(mesh, seed=0, factory=_factory):
    tx = optim.make_optimizer(learning_rate=1e-3)
    _, params, opt_state, sh = sharding.create_sharded(factory(seed), tx, mesh)
    state = {"params": params, "opt_state": opt_state, "rng": jax.random.key(seed)}
    abstract = {
        "params": sharding.abstract_with_shardings(params, sh.params),
        "opt_state": sharding.abstract_with_shardings(opt_state, sh.opt_state),
        "rng": jax.random.key(0),
    }
    return state, abstract


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def test_save_on_one_mesh_restore_on_another(tmp_path):
    """The real CausalLM (tiny config), saved from (8,1,1) and restored onto (2,4,1)."""
    state, _ = _state(sharding.make_mesh(8, 1, 1), seed=0, factory=tiny_causal_lm)
    ck = checkpoint.Checkpointer(tmp_path / "ck", save_every=5, keep=2)
    assert not ck.maybe_save(3, state)  # not due
    assert ck.maybe_save(5, state, extra_json={"cursor": 17, "env_seeds": [1, 2]}, gin_config="a.b = 1\n")
    ck.close()

    mesh2 = sharding.make_mesh(2, 4, 1)
    _, abstract = _state(mesh2, seed=1, factory=tiny_causal_lm)  # different values on purpose: they must be overwritten
    ck2 = checkpoint.Checkpointer(tmp_path / "ck", save_every=5, keep=2)
    step, restored, extra = ck2.restore_latest(abstract)
    assert step == 5 and extra == {"cursor": 17, "env_seeds": [1, 2]}
    assert ck2.read_config(5) == {"gin_config": "a.b = 1\n", "step": 5}
    jax.tree.map(np.testing.assert_array_equal, _np(restored["params"]), _np(state["params"]))
    jax.tree.map(np.testing.assert_array_equal, _np(restored["opt_state"]), _np(state["opt_state"]))
    # PRNG key comes back typed and equal
    assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored["rng"]), jax.random.key_data(state["rng"]))
    kernel = restored["params"]["layers"][0]["mlp"]["up_proj"]["kernel"].get_value()
    assert kernel.sharding.mesh.shape == mesh2.shape and kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    ck2.close()


def test_keeps_last_k_and_best(tmp_path):
    state, _ = _state(sharding.make_mesh(1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, save_every=1, keep=2, best_metric="success", best_mode="max")
    for step, success in [(1, 0.1), (2, 0.9), (3, 0.2), (4, 0.3), (5, 0.4)]:
        ck.maybe_save(step, state, metrics={"success": success, "loss": 1.0})
    ck.wait()
    assert ck.all_steps() == [2, 4, 5] and ck.best_step() == 2
    ck.close()
    ck = checkpoint.Checkpointer(tmp_path / "min", save_every=1, keep=1, best_metric="loss", best_mode="min")
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0)]:
        ck.maybe_save(step, state, metrics={"loss": loss})
    ck.wait()
    assert ck.all_steps() == [2, 3] and ck.best_step() == 2
    ck.close()


def test_an_off_schedule_save_never_pushes_an_on_schedule_one_out(tmp_path):
    """A preemption save at 14 (schedule every 3, keep 2) is kept while it is the newest (it is what a resume
    needs), then dropped once 15 lands: the last 2 on-schedule steps stay 12 and 15."""
    state, _ = _state(sharding.make_mesh(1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, save_every=3, keep=2)
    for step in (3, 6, 9, 12):
        ck.maybe_save(step, state)
    ck.maybe_save(14, state, force=True)
    ck.wait()
    assert ck.all_steps() == [9, 12, 14]
    ck.maybe_save(15, state)
    ck.wait()
    assert ck.all_steps() == [12, 15]
    ck.maybe_save(16, state, force=True)  # a final step off the schedule: the newest, kept
    ck.close()
    assert checkpoint.Checkpointer(tmp_path, save_every=3, keep=2).all_steps() == [12, 15, 16]


@pytest.mark.parametrize("damage", ["metadata", "data"])
def test_corrupt_latest_falls_back_to_previous(tmp_path, damage):
    state, abstract = _state(sharding.make_mesh(1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, save_every=1, keep=3)
    ck.maybe_save(1, state, extra_json={"at": 1})
    ck.maybe_save(2, state, extra_json={"at": 2})
    ck.close()
    newest = tmp_path / "2" / "state"
    if damage == "metadata":
        os.remove(newest / "_METADATA")
    else:  # delete the array data files
        for root, _, files in os.walk(newest):
            if os.path.basename(root) == "d":
                for f in files:
                    os.remove(os.path.join(root, f))
    ck = checkpoint.Checkpointer(tmp_path, save_every=1, keep=3)
    with pytest.warns(RuntimeWarning, match="step 2 .* could not be restored"):
        step, restored, extra = ck.restore_latest(abstract)
    assert step == 1 and extra == {"at": 1}
    jax.tree.map(np.testing.assert_array_equal, _np(restored["params"]), _np(state["params"]))
    ck.close()


def _break_metadata(step_dir):
    os.remove(step_dir / "state" / "_METADATA")


def test_corrupt_step_is_moved_aside_so_it_can_be_saved_again(tmp_path, caplog):
    """Issue 19 point 11: after falling back past a corrupt step 2, step 2 can be saved again (the final model of
    a run is not lost) and is what restore_latest returns; the damaged files are kept aside, not deleted."""
    state, abstract = _state(sharding.make_mesh(1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, save_every=1, keep=3)
    ck.maybe_save(1, state, extra_json={"at": 1})
    ck.maybe_save(2, state, extra_json={"at": 2})
    ck.close()
    _break_metadata(tmp_path / "2")
    ck = checkpoint.Checkpointer(tmp_path, save_every=1, keep=3)
    with pytest.warns(RuntimeWarning, match="step 2 .* could not be restored"), caplog.at_level("WARNING"):
        step, _, extra = ck.restore_latest(abstract)
    assert step == 1 and extra == {"at": 1}
    assert ck.all_steps() == [1] and (tmp_path / "2.corrupt-0" / "state").is_dir()
    assert any("2.corrupt-0" in r.getMessage() for r in caplog.records)

    newer = jax.tree.map(lambda x: x + 1 if hasattr(x, "dtype") and x.dtype == np.float32 else x, state)
    assert ck.maybe_save(2, newer, extra_json={"at": "2 again"}, force=True)
    ck.wait()
    step, restored, extra = ck.restore_latest(abstract)
    assert step == 2 and extra == {"at": "2 again"}
    jax.tree.map(np.testing.assert_array_equal, _np(restored["params"]), _np(newer["params"]))
    ck.close()
    # A second failure of the same step gets the next free name, and a reopened manager never sees either.
    _break_metadata(tmp_path / "2")
    ck = checkpoint.Checkpointer(tmp_path, save_every=1, keep=3)
    with pytest.warns(RuntimeWarning):
        assert ck.restore_latest(abstract)[0] == 1
    assert (tmp_path / "2.corrupt-1").is_dir() and ck.all_steps() == [1]
    ck.close()
    assert checkpoint.Checkpointer(tmp_path, save_every=1).all_steps() == [1]


def test_empty_dir_and_wrong_target(tmp_path):
    state, abstract = _state(sharding.make_mesh(1, 8, 1))
    ck = checkpoint.Checkpointer(tmp_path, save_every=1)
    assert ck.restore_latest(abstract) is None
    ck.maybe_save(1, state)
    bad = dict(abstract, rng=jax.ShapeDtypeStruct((3,), np.float32))
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="could be restored into the given abstract"):
        ck.restore_latest(bad)
    assert ck.all_steps() == [1] and os.listdir(tmp_path) == ["1"]  # a wrong target moves nothing aside
    with pytest.raises(ValueError, match="JSON-serialisable"):
        ck.maybe_save(2, state, extra_json={"x": object()})
    ck.close()
    with pytest.raises(ValueError, match="save_every"):
        checkpoint.Checkpointer(tmp_path / "x", save_every=0)


def _run(workdir, out, *extra):
    cmd = [sys.executable, os.path.join(HELPERS, "preempt_train.py"), "--workdir", str(workdir), "--out", str(out),
           "--steps", "10", "--save_every", "4", *extra]
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_saves_and_resume_matches_uninterrupted_run(tmp_path):
    ref = _run(tmp_path / "ref", tmp_path / "ref.npz")
    ref_out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0 and "done" in ref_out

    proc = _run(tmp_path / "run", tmp_path / "run.npz", "--sleep", "0.5")
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 3 "):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == checkpoint.EXIT_PREEMPTED, "".join(seen) + rest  # saved, not finished
    preempted = [l for l in rest.splitlines() if l.startswith("preempted at step")]
    assert preempted, rest
    stopped_at = int(preempted[0].split()[-1])
    assert 3 <= stopped_at < 10 and not (tmp_path / "run.npz").exists()
    assert str(stopped_at) in os.listdir(tmp_path / "run" / "ckpt")  # forced save off the save_every grid too

    again = _run(tmp_path / "run", tmp_path / "run.npz")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and f"resumed from step {stopped_at}" in out and "done" in out, out
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "run.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 0
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical
