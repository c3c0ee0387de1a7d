"""AlfWorldEnv on the 48 vendored real ALFWorld games (TextWorld engine)."""
import json
import os

import pytest

pytest.importorskip("alfworld", reason="alfworld not installed (pip install alfworld==0.4.2)")

from envs import prompting  # noqa: E402
from envs.alfworld import (TASK_TYPES, AlfWorldEnv, alfworld_factory, build_prompt, list_games,  # noqa: E402
                           resolve_data_path, split_task)

pytestmark = pytest.mark.alfworld
DATA = os.environ["ALFWORLD_DATA"]


def test_splits_and_task_types_match_the_data():
    sizes = {s: len(AlfWorldEnv(split=s).games) for s in ("train", "valid_seen", "valid_unseen")}
    assert sizes == {"train": 24, "valid_seen": 6, "valid_unseen": 18}
    # the folder-name task type we filter on is ALFRED's own traj_data task_type
    for game in list_games(resolve_data_path(None), "valid_unseen"):
        with open(os.path.join(os.path.dirname(game), "traj_data.json")) as f:
            assert json.load(f)["task_type"] == os.path.basename(os.path.dirname(os.path.dirname(game))).split("-")[0]
    heat = AlfWorldEnv(split="train", task_types=["pick_heat_then_place_in_recep"])
    assert len(heat.games) == 4 and all("pick_heat_then_place_in_recep-" in g for g in heat.games)
    two = AlfWorldEnv(split="valid_unseen", task_types=["look_at_obj_in_light", "pick_two_obj_and_place"])
    assert len(two.games) == 6


def test_game_order_is_sorted_and_seeded():
    a, b = AlfWorldEnv(split="train"), AlfWorldEnv(split="train")
    assert list(a.games) == sorted(a.games)
    s1, s2 = a.reset(5), b.reset(5 + len(b.games))  # seed picks games[seed % n]
    assert s1.info["gamefile"] == s2.info["gamefile"] == os.path.relpath(a.games[5], os.path.join(DATA, "json_2.1.1"))
    assert (s1.task, s1.observation, s1.admissible_actions) == (s2.task, s2.observation, s2.admissible_actions)
    assert a.reset(6).info["gamefile"] != s1.info["gamefile"]


def test_reset_step_reward_and_invalid_action():
    env = AlfWorldEnv(split="valid_seen", max_steps=50)
    first = env.reset(0)
    assert first.task == "look at cd under the desklamp"
    assert first.observation.startswith("-= Welcome to TextWorld, ALFRED! =-")
    assert "Your task is to" not in first.observation and "Your task is to: look at cd" in first.info["raw_observation"]
    assert list(first.admissible_actions) == sorted(first.admissible_actions) and "look" in first.admissible_actions
    assert first.reward == 0.0 and not first.done and first.info["task_type"] == "look_at_obj_in_light"
    bad = env.step("fly to the moon")
    assert bad.observation == "Nothing happens." and not bad.done and bad.reward == 0.0
    plan = env.expert_actions()
    assert plan and all(isinstance(a, str) for a in plan)
    env.reset(0)
    rewards = [env.step(a) for a in plan]
    assert rewards[-1].done and rewards[-1].success and rewards[-1].reward == 10.0
    assert sum(r.reward for r in rewards) == 10.0 and not any(r.done for r in rewards[:-1])
    env.close()


def test_truncation_at_max_steps():
    env = AlfWorldEnv(split="train", max_steps=3)
    env.reset(0)
    out = [env.step("look") for _ in range(3)]
    assert [o.done for o in out] == [False, False, True]
    assert out[-1].truncated and not out[-1].success and out[-1].info["truncated_reason"] == "max_steps"


def test_bad_configuration_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="valid ones: \\['pick_and_place_simple'"):
        AlfWorldEnv(task_types=["pick_and_juggle"])
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        AlfWorldEnv(split="test")
    with pytest.raises(ValueError, match="ALFWORLD_DATA(.|\n)*alfworld-download"):
        AlfWorldEnv(data_path=str(tmp_path))
    monkeypatch.delenv("ALFWORLD_DATA")
    with pytest.raises(ValueError, match="AlfWorldEnv.data_path(.|\n)*ALFWORLD_DATA"):
        alfworld_factory()
    with pytest.raises(ValueError, match="max_steps"):
        AlfWorldEnv(data_path=DATA, max_steps=0)


def test_split_task():
    obs, task = split_task("-= Welcome =-\n\nYou see a mug 1.\n\nYour task is to: put a clean mug in coffeemachine.")
    assert (obs, task) == ("-= Welcome =-\n\nYou see a mug 1.", "put a clean mug in coffeemachine")


def test_build_prompt():
    p0 = build_prompt("find two knife and put them in drawer", [], "-= Welcome to TextWorld, ALFRED! =- ...",
                      ["go to cabinet 1", "look"], step=0)
    assert p0.startswith("You are an expert agent operating in the ALFRED Embodied Environment.")
    assert "Your task is to: find two knife and put them in drawer." in p0
    assert "Your current observation is: -= Welcome to TextWorld, ALFRED! =- ..." in p0
    assert 'Your admissible actions of the current situation are: ["go to cabinet 1", "look"].' in p0
    assert p0.endswith(prompting.answer_format(True)) and "Prior to this step" not in p0
    hist = [("obs one", "go to cabinet 1"), ("obs two", "look")]
    p2 = build_prompt("t", hist, "obs three", ["look"], step=2, window=1, thinking=False)
    assert "Prior to this step, you have already taken 2 step(s)" in p2
    assert "[Observation 2: 'obs two', Action 2: 'look']" in p2 and "obs one" not in p2
    assert "You are now at step 3 and your current observation is: obs three" in p2
    assert p2.endswith(prompting.answer_format(False)) and "<think>" not in p2


# All 48 walkthroughs through the pool: tests/test_augment.py plays them through the domain's pools (with half
# the episodes augmented by distractors, which the env never sees), so the suite pays for them once.
