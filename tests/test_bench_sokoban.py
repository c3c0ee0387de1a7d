"""Smoke tests of benchmarks/sokoban.py: the rollouts really read each step's observation, ours replays
Jumanji's trajectories on its own levels with the same rewards, and a tiny run writes sane rows."""
import importlib.util
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs.sokoban as sk

pytest.importorskip("jumanji")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sokoban", os.path.join(REPO, "benchmarks", "sokoban.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rollout_checksum_is_the_observations_read_step_by_step(bench):
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=100, reward="shaped")
    level = sk.Level.from_strings(["######", "#@ $.#", "#    #", "#    #", "#    #", "######"])
    states, _ = jax.vmap(env.reset_to_level, in_axes=(None, 0))(sk.check_level(level),
                                                             jax.random.split(jax.random.PRNGKey(0), 2))
    actions = jnp.array([[3, 1], [3, 0], [1, 2]])  # env 0 pushes the box onto the goal at step 2
    _, total, check = bench.make_rollout(env.step, lambda s, ts: ts.observation)(states, actions)
    want_total, want_check, s = 0.0, 0, states
    for a in actions:
        s, ts = jax.vmap(env.step)(s, a)
        want_total += float(jnp.sum(ts.reward))
        want_check += int(bench.checksum(ts.observation))
    assert float(total) == pytest.approx(want_total) and want_total == pytest.approx(10.9 - 4 * 0.1)
    assert int(check) == np.int32(want_check)  # every observation element reaches the result


def test_ours_replays_jumanji_trajectories_with_equal_rewards(bench):
    from jumanji.environments.routing.sokoban import constants as jc

    jenv = bench.jumanji_env()
    keys = jax.random.split(jax.random.PRNGKey(3), 6)
    jstates, _ = jax.vmap(jenv.reset)(keys)
    env = sk.Sokoban(dim=10, num_boxes=4, max_steps=bench.LONG_EPISODES, reward="shaped")
    ours, _ = jax.vmap(env.reset_to_level)(bench.levels_from_jumanji(jstates), keys)
    jstep, ostep = jax.jit(jax.vmap(jenv.step)), jax.jit(jax.vmap(env.step))
    rng = np.random.default_rng(0)
    for _ in range(40):
        a = rng.integers(0, 4, size=6).astype(np.int32)
        jstates, jts = jstep(jstates, jnp.asarray(bench.JUMANJI_ACTION_OF_OURS[a]))
        ours, ots = ostep(ours, jnp.asarray(a))
        np.testing.assert_array_equal(np.asarray(ours.boxes), np.asarray(jstates.variable_grid) == jc.BOX)
        np.testing.assert_array_equal(np.asarray(ours.player), np.asarray(jstates.agent_location))
        np.testing.assert_allclose(np.asarray(ots.reward), np.asarray(jts.reward), atol=1e-6)


@pytest.mark.slow
def test_tiny_run_writes_interleaved_rows_with_ratios(bench, tmp_path):
    out = tmp_path / "sokoban.json"
    rounds, steps = 2, 4
    rows = bench.main(["--batches", "3", "--steps", str(steps), "--rounds", str(rounds), "--py_steps", "50",
                       "--gen_pushes", "none", "--tokenizer", "bytes", "--json", str(out)])
    by = {r["impl"]: r for r in rows}
    assert set(by) == {"jumanji-10x10x4", "ours-10x10x4", "ours-10x10x4+ids", "ours-6x6x1", "ours-6x6x1+ids",
                       "python-numpy-6x6x1", "python-numpy-10x10x4"}
    jt = by["jumanji-10x10x4"]["round_s"]
    for name, r in by.items():
        if name.startswith("python"):
            assert r["steps_per_s"] > 0
            continue
        assert len(r["round_s"]) == rounds and r["batch"] == 3
        assert r["steps_per_s"] == pytest.approx(3 * steps / min(r["round_s"]))
        if name.startswith("ours"):
            assert r["vs_jumanji"] == pytest.approx(statistics.median(j / o for j, o in zip(jt, r["round_s"])))
    # The "same" rows play Jumanji's trajectories with the equal reward: equal sums (checked by the run too).
    for name in ("ours-10x10x4", "ours-10x10x4+ids"):
        assert by[name]["compare"] == "same"
        assert by[name]["reward_sum"] == pytest.approx(by["jumanji-10x10x4"]["reward_sum"], abs=1e-3)
    assert "not like for like" in by["ours-6x6x1"]["compare"]
    assert out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--batches", "1,x"], "--batches must be comma-separated integers"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--gen_pushes", "a"], "--gen_pushes must be comma-separated integers"),
])
def test_bad_flags_fail_with_a_clear_message(bench, flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err
