"""ScienceWorld adapter on the real simulator (real JVM): gold paths, parity with the package, lifecycle."""
import collections
import functools
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import gin
import psutil
import pytest

from envs.interface import TextStep
from envs.prompting import answer_format

scienceworld = pytest.importorskip("scienceworld", reason="needs the scienceworld package (pip install scienceworld)")
if shutil.which("java") is None:
    pytest.skip("needs a Java runtime on PATH for ScienceWorld", allow_module_level=True)

from envs.sciworld import (DEFAULT_TEMPLATES, REPRODUCIBLE_TEXT_JVM_OPTIONS, TASK_NAMES,  # noqa: E402
                           UNKNOWN_ACTION_FEEDBACK, SciWorldEnv, build_prompt)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Cheap gold paths (≤ ~40 steps, gold generation < 3 s) over different topics, incl. boil and find-animal.
GOLD_TASKS = ("boil", "find-animal", "lifespan-longest-lived", "power-component", "use-thermometer",
              "chemistry-mix")


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


@pytest.fixture(scope="module")
def env():
    e = SciWorldEnv(task_names=GOLD_TASKS)
    yield e
    e.close()


def _seed_for(env, task, k=0):
    """The seed that plays the k-th split variation of `task` under the documented mapping."""
    return env.task_names.index(task) + k * len(env.task_names)


def _words(text):
    return collections.Counter(re.findall(r"\w+", text))


def _play(env, actions):
    steps = []
    for a in actions:
        steps.append(env.step(a))
        if steps[-1].done:
            break
    return steps


# ------------------------------------------------------------------ no JVM needed


def test_unknown_task_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown ScienceWorld task") as e:
        SciWorldEnv(task_names=["boil", "boil-the-ocean"])
    assert "boil-the-ocean" in str(e.value)
    for name in ("find-animal", "mendelian-genetics-unknown-plant", "use-thermometer"):
        assert name in str(e.value)
    assert len(TASK_NAMES) == 30


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "valid"}, "split must be one of"),
    ({"reward_mode": "dense"}, "reward_mode must be one of"),
    ({"max_steps": 0}, "max_steps must be a positive int"),
    ({"task_names": []}, "task_names is empty"),
    ({"jvm_options": "-Xss1m"}, "jvm_options must be a list"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SciWorldEnv(**kwargs)


def test_gin_selects_tasks_and_rejects_unknown_ones():
    gin.clear_config()
    try:
        gin.parse_config("envs.sciworld.SciWorldEnv.task_names = ['boil', 'melt-the-sun']")
        with pytest.raises(ValueError, match="melt-the-sun.*valid names.*'boil'"):
            SciWorldEnv()
        gin.parse_config("envs.sciworld.build_prompt.window = 1")
        p = build_prompt("t", [("o1", "a1"), ("o2", "a2")], "o3", ["x"], step=2)
        assert "'o2'" in p and "'o1'" not in p
    finally:
        gin.clear_config()


def test_task_aliases_resolve_to_simulator_names():
    # the package's ids and the paper's names are accepted; the result is sorted and de-duplicated
    assert SciWorldEnv._resolve_tasks(["1-1", "boil", "find-animal"]) == ("boil", "find-animal")
    assert SciWorldEnv._resolve_tasks(None) == TASK_NAMES


def test_build_prompt_layout():
    history = [("obs one", "look around"), ("obs two", "open door to kitchen"), ("obs three", "go kitchen")]
    p = build_prompt("Your task is to boil water.", history, "You are in the kitchen.", ["sink", "stove"],
                     step=3)
    assert "<action>go kitchen</action>" in p
    assert "Now, your task is: Your task is to boil water." in p
    # only the last 2 pairs, numbered by their step
    assert "obs one" not in p and "[Observation 2: 'obs two', Action 2: 'open door to kitchen']" in p
    assert "[Observation 3: 'obs three', Action 3: 'go kitchen']" in p
    assert "current observation is: You are in the kitchen." in p
    assert '"focus on OBJ"' in p and '"connect OBJ to OBJ"' in p and '"look around"' in p
    assert "replace the 'OBJ'" in p and '["sink", "stove"]' in p
    assert "do NOT repeat the same action" in p and "'look around'" in p
    assert p.endswith(answer_format(True))
    # the order: example, task, history, observation, templates, note, format
    keys = ["<action>go kitchen</action>", "Now, your task is", "Prior to this step", "current observation",
            "replace the 'OBJ'", "do NOT repeat", answer_format(True)]
    assert [p.index(k) for k in keys] == sorted(p.index(k) for k in keys)
    first = build_prompt("t", [], "o", ["x"], step=0, thinking=False)
    assert "Prior to this step" not in first and "<think>" not in first
    assert first.endswith(answer_format(False))
    assert len(DEFAULT_TEMPLATES) == 25


# ------------------------------------------------------------------ real JVM


@pytest.mark.java
@pytest.mark.slow
@pytest.mark.parametrize("task", GOLD_TASKS)
def test_gold_sequence_reaches_success(env, task):
    ts = env.reset(_seed_for(env, task))
    assert ts.info["task_name"] == task and ts.info["variation"] == env.variations(task)[0]
    assert not ts.done and ts.reward == 0.0 and ts.info["score"] == 0
    gold = env.expert_actions()
    assert gold and all(isinstance(a, str) for a in gold)
    steps = _play(env, gold)
    last = steps[-1]
    assert last.done and last.success and not last.truncated
    assert last.info["score"] == 100
    # score mode: rewards are score deltas scaled so a full solve sums to 10
    assert sum(s.reward for s in steps) == pytest.approx(10.0)
    assert all(not s.done for s in steps[:-1])


@pytest.mark.java
def test_reset_observation_and_step_fields(env):
    ts = env.reset(_seed_for(env, "boil"))
    assert ts.task.startswith("Your task is to boil water")
    assert "This room is called" in ts.observation and "In your inventory, you see" in ts.observation
    assert ts.admissible_actions == DEFAULT_TEMPLATES == env.action_templates()
    objs = ts.info["admissible_objects"]
    assert objs == env.admissible_objects() and "hallway" in objs
    assert ts.info["jvm_pid"] == env.jvm_pid and _alive(env.jvm_pid)
    pickle.loads(pickle.dumps(ts))  # must travel through the pool
    # the object list follows the agent: the kitchen's objects appear after moving there
    env.step("open door to kitchen")
    ts = env.step("go kitchen")
    assert "sink" in ts.info["admissible_objects"] and "sink" not in objs


@pytest.mark.java
def test_same_seed_same_episode_and_seed_mapping(env):
    n = len(env.task_names)
    a = env.reset(_seed_for(env, "find-animal", k=3))
    assert (a.info["task_name"], a.info["variation"]) == ("find-animal", env.variations("find-animal")[3])
    b = env.reset(_seed_for(env, "find-animal", k=3))
    # same task and variation; the object listing order may differ with JVM history (see
    # test_listing_order_is_reproducible_on_request), the content may not
    assert (a.task, a.info["variation"], a.info["score"]) == (b.task, b.info["variation"], b.info["score"])
    assert _words(a.observation) == _words(b.observation)
    # consecutive seeds cycle through the sorted task list
    assert [env.episode_of(s)[0] for s in range(n)] == sorted(GOLD_TASKS)


@pytest.mark.java
def test_invalid_action_returns_feedback(env):
    env.reset(_seed_for(env, "find-animal"))
    for bad in ("fly to the moon", "", "focus on the unicorn", "reset task"):
        ts = env.step(bad)
        assert isinstance(ts, TextStep)
        assert ts.observation == UNKNOWN_ACTION_FEEDBACK, bad
        assert not ts.done and ts.reward == 0.0
    assert ts.info["steps"] == 4
    # "reset task" was refused, so earned score stays
    ts = env.step("open door to kitchen")
    assert ts.info["score"] > 0
    assert env.step("reset task").info["score"] == ts.info["score"]


@pytest.mark.java
def test_failure_truncation_and_after_done(env):
    env.reset(_seed_for(env, "find-animal"))
    env.step("open door to kitchen")
    ts = env.step("focus on air")  # focusing on a non-animal fails the task
    assert ts.done and not ts.success and not ts.truncated and ts.info["score"] < 0
    assert ts.reward < 0 and ts.info["failure"]
    after = env.step("look around")  # stepping a finished episode does not touch the simulator
    assert after.done and after.reward == 0.0 and after.info["after_done"]

    old = env.max_steps
    env.max_steps = 3
    try:
        env.reset(_seed_for(env, "boil"))
        steps = [env.step("wait1") for _ in range(3)]
    finally:
        env.max_steps = old
    assert [s.done for s in steps] == [False, False, True]
    assert steps[-1].truncated and not steps[-1].success
    assert steps[-1].info["truncated_reason"] == "max_steps"


@pytest.mark.java
def test_failed_episode_rewards_sum_to_zero(env):
    env.reset(_seed_for(env, "find-animal"))
    steps = _play(env, ["open door to kitchen", "go kitchen", "focus on air"])
    assert steps[-1].done and not steps[-1].success
    assert steps[0].reward > 0  # partial credit on the way ...
    assert sum(s.reward for s in steps) == pytest.approx(0.0)  # ... taken back by the failure


@pytest.mark.java
def test_success_reward_mode(env):
    env.reward_mode = "success"
    try:
        env.reset(_seed_for(env, "lifespan-longest-lived"))
        steps = _play(env, env.expert_actions())
    finally:
        env.reward_mode = "score"
    assert steps[-1].success and steps[-1].reward == 10.0
    assert all(s.reward == 0.0 for s in steps[:-1])


@pytest.mark.java
def test_expert_actions_mid_episode_keeps_the_state(env):
    env.reset(_seed_for(env, "find-animal"))  # variation 0 starts in the hallway
    # act first, without the gold path (generate_gold_path=False) ...
    before = _play(env, ["open door to kitchen", "go kitchen"])
    look = env.look()
    assert "kitchen" in look and before[-1].info["score"] > 0
    # ... then ask: the task is reloaded with gold-path generation and the 2 actions are replayed
    gold = env.expert_actions()
    assert env.look() == look
    ts = env.step("look around")
    assert ts.info["steps"] == 3 and ts.info["score"] == before[-1].info["score"]
    assert ts.observation.strip() == look.strip()
    # the gold path (from the episode start) still solves it from here: the detour only cost moves
    rest = _play(env, gold)
    assert rest[-1].success and rest[-1].info["score"] == 100
    assert env.expert_actions() == gold  # cached for the episode


def _options(ambiguous_reply):
    assert ambiguous_reply.startswith("Ambiguous request:"), ambiguous_reply
    return re.findall(r"^\d+:\t(.*)$", ambiguous_reply, flags=re.M)


def _open_door_by_number(env, room):
    """Open the door to `room` the way an agent would: "open door", then the number of its option."""
    options = _options(env.step("open door").observation)
    k = next(i for i, o in enumerate(options) if f"between {room} and" in o)
    ts = env.step(str(k))
    assert ts.observation == "The door is now open." and ts.info["resolved_action"] == options[k]
    return options


@pytest.mark.java
def test_expert_actions_replays_numeric_answers_as_the_option_picked(env):
    """The options of an ambiguous request come in a new hash order in each load (without
    `reproducible_text`), so the replay must answer with the option, not the agent's number."""
    rooms = ("workshop", "bedroom", "greenhouse")
    env.reset(_seed_for(env, "find-animal"))  # variation 0: the hallway, six closed doors
    for room in rooms:
        _open_door_by_number(env, room)
    look = env.look()
    env.expert_actions()
    for room in rooms:
        assert f"A door to the {room} (that is open)" in env.look()
    assert _words(env.look()) == _words(look)
    ts = env.step("look around")
    assert ts.info["steps"] == 7 and "resolved_action" not in ts.info

    # a replay that does not restore the episode fails clearly instead of going on from another state
    env.reset(_seed_for(env, "find-animal"))
    options = _open_door_by_number(env, "workshop")
    action, _ = env._episode["actions"][-1]
    env._episode["actions"][-1] = (action, next(o for o in options if "kitchen" in o))  # injected divergence
    with pytest.raises(RuntimeError, match="did not restore the episode(.|\n)*generate_gold_path"):
        env.expert_actions()
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look around")


@pytest.fixture(scope="module")
def repro_env():
    e = SciWorldEnv(task_names=["find-animal", "power-component"], reproducible_text=True)
    yield e
    e.close()


def _package_env(java_tool_options=None):
    """The package's own env; `java_tool_options` reach its JVM through JAVA_TOOL_OPTIONS."""
    old = os.environ.get("JAVA_TOOL_OPTIONS")
    if java_tool_options is not None:
        os.environ["JAVA_TOOL_OPTIONS"] = java_tool_options
    try:
        return scienceworld.ScienceWorldEnv("", envStepLimit=10_000)
    finally:
        if old is None:
            os.environ.pop("JAVA_TOOL_OPTIONS", None)
        else:
            os.environ["JAVA_TOOL_OPTIONS"] = old


# boil variation 0: the first 10 gold actions (hallway → kitchen, the package's costliest room), written out
# so the test does not pay for gold-path generation.
BOIL_PREFIX = ("open door to kitchen", "go to kitchen", "look around", "pick up thermometer", "open cupboard",
               "pick up metal pot", "look around", "move metal pot to sink", "activate sink", "deactivate sink")


def _check_parity(env, pkg, task, variation, actions, same_text):
    pkg.load(task, variation, "")
    pkg_obs, pkg_info = pkg.reset()
    first = env.load(task, variation)
    same_text(first.observation, pkg_obs.strip() + "\n" + pkg_info["inv"].strip())
    assert first.task in pkg_info["taskDesc"]
    for a in actions:
        o, _, done, info = pkg.step(a)
        ts = env.step(a)
        same_text(ts.observation, o)
        assert ts.info["score"] == info["score"], a
        assert ts.done == done, a
        if ts.done:
            break
    # the lazy lists are the package's lists
    assert sorted(ts.info["admissible_objects"]) == sorted(pkg.get_possible_objects())
    assert sorted(env.valid_action_combinations()) == sorted(info["valid"])
    return ts


@pytest.mark.java
@pytest.mark.slow
def test_fast_step_matches_package_step_boil(env):
    """Same actions → same observations (up to the order of listed objects, see
    `REPRODUCIBLE_TEXT_JVM_OPTIONS`) and the same scores as `scienceworld.ScienceWorldEnv.step`."""
    pkg = _package_env()
    try:
        actions = BOIL_PREFIX[:4] + ("fly to the moon", "inventory", "look around") + BOIL_PREFIX[4:]

        def same_text(ours, theirs):
            assert _words(ours) == _words(theirs)

        ts = _check_parity(env, pkg, "boil", env.variations("boil")[0], actions, same_text)
        assert ts.info["score"] > 0 and "kitchen" in env.look()
    finally:
        pkg.close()


@pytest.mark.java
@pytest.mark.slow
def test_fast_step_matches_package_step_exactly(repro_env):
    """With constant identity hashes in both JVMs the texts match byte for byte, to the task's success."""
    pkg = _package_env(" ".join(("-Xmx256m",) + REPRODUCIBLE_TEXT_JVM_OPTIONS))
    try:
        task = "power-component"
        variation = repro_env.variations(task)[1]
        repro_env.load(task, variation)
        gold = repro_env.expert_actions()
        actions = gold[:4] + ["fly to the moon", "inventory", "look around"] + gold[4:]

        def same_text(ours, theirs):
            assert ours == theirs

        assert _check_parity(repro_env, pkg, task, variation, actions, same_text).success
    finally:
        pkg.close()


@pytest.mark.java
def test_listing_order_is_reproducible_on_request(repro_env):
    """Same seed, different JVM history: byte-identical text with `reproducible_text`."""
    env = repro_env
    first = env.reset(0)
    for seed in (1, 2):  # other episodes in between
        env.reset(seed)
        env.step("look around")
    assert env.reset(0) == first


@pytest.mark.java
def test_dev_split_variations_and_close_kills_the_jvm():
    dev = SciWorldEnv(task_names=["find-animal", "boil"], split="dev", include_objects=False)
    pid = dev.jvm_pid
    try:
        assert _alive(pid)
        # the heap bound is on the JVM's command line
        assert "-Xmx256m" in psutil.Process(pid).cmdline()
        # the package's dev lists: find-animal 150..224, boil 14..20 (train starts at 0 for both)
        assert dev.variations("find-animal") == tuple(range(150, 225))
        assert dev.variations("boil") == tuple(range(14, 21))
        ts = dev.reset(1)  # sorted tasks: boil=0, find-animal=1
        assert ts.info["task_name"] == "find-animal" and ts.info["variation"] == 150
        assert "admissible_objects" not in ts.info
    finally:
        dev.close()
    assert _wait_gone(pid, 10)
    assert dev.jvm_pid is None
    dev.close()  # idempotent
    with pytest.raises(RuntimeError, match="reset"):
        dev.step("look around")


@pytest.mark.java
def test_bad_jvm_option_gives_a_clear_error():
    with pytest.raises(RuntimeError, match="JVM failed to start.*jvm_memory"):
        SciWorldEnv(jvm_memory="lots")


@pytest.mark.java
def test_jvm_dies_with_its_owner_process():
    """A worker killed with SIGKILL (no cleanup at all) does not leave its JVM behind."""
    code = textwrap.dedent("""
        import sys, time
        from envs.sciworld import SciWorldEnv
        e = SciWorldEnv(task_names=["find-animal"])
        print(e.jvm_pid, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert _alive(pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert _wait_gone(pid, 20), "JVM outlived its owner"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


@pytest.mark.java
@pytest.mark.slow
def test_gold_sequences_through_the_pool():
    pool_mod = pytest.importorskip("envs.pool")
    tasks = ("find-animal", "lifespan-longest-lived")
    factory = functools.partial(SciWorldEnv, task_names=tasks, include_objects=False, reproducible_text=True)
    with pool_mod.EnvPool(factory, num_workers=2, envs_per_worker=1) as pool:
        seeds = [2, 1]  # sorted tasks: find-animal=0, lifespan=1 → (find-animal, v1), (lifespan, v0)
        first = pool.reset([0, 1], seeds)
        assert [(s.info["task_name"], s.info["variation"]) for s in first] == [
            ("find-animal", 1), ("lifespan-longest-lived", 0)]
        golds = pool.call([0, 1], "expert_actions")
        finished = [None, None]
        for t in range(max(len(g) for g in golds)):
            ids = [i for i in (0, 1) if finished[i] is None and t < len(golds[i])]
            if not ids:
                break
            for i, ts in zip(ids, pool.step(ids, [golds[i][t] for i in ids])):
                if ts.done:
                    finished[i] = ts
        assert all(f is not None and f.success for f in finished)
        # the same seeds on the other worker give the same episodes (mapping independent of placement)
        swapped = pool.reset([0, 1], seeds[::-1])
        assert [s.observation for s in swapped] == [s.observation for s in first[::-1]]
        jvms = [s.info["jvm_pid"] for s in swapped]
    for pid in jvms:
        assert _wait_gone(pid, 20)
