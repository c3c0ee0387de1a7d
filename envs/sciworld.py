"""ScienceWorld adapter: all 30 task types behind `envs.interface.TextEnv`, with a fast step.

Why a fast step: the package's `ScienceWorldEnv.step` asks the Java server, after every action, for the
full list of valid action/object combinations (thousands of strings in a furnished room), plus look and
inventory text. That enumeration is almost all of its 46-240 ms per step; the simulator's own step is
~6-14 ms. The study's prompt needs only the action *templates* (fixed per simplification setting) and the
admissible *objects*, so `SciWorldEnv.step` talks to the same Java `PythonInterface` directly (py4j) and
asks only for the observation, score and completion flag; objects come from one cheap extra call when
`include_objects=True` (`info["admissible_objects"]`; with it off, ask `env.admissible_objects()`, or
`pool.call(ids, "admissible_objects")` through `envs.pool`, only when a prompt needs them); the full
combination list stays available via `valid_action_combinations()`.

Episodes: `reset(seed)` maps the seed deterministically to (task, variation): tasks are sorted by name,
`task = tasks[seed % n_tasks]`, `variation = split_variations[(seed // n_tasks) % n_variations]`, where the
split's variations are the package's own train/dev/test lists (`getVariationsTrain/Dev/Test`). So
consecutive seeds cycle through the task types evenly, and the mapping does not depend on the worker
count or on which env instance handles the seed.

Reward (gin `reward_mode`):
- "score" (default): reward = (score_t - score_{t-1}) / 100 * `success_reward`. The package's score runs
  0..100, so a full solve sums to `success_reward` (10, the study's success reward), and partial
  progress (sub-goals) is rewarded on the way. A failure (score < 0, e.g. focusing on the wrong object)
  counts as score 0 for the reward: it takes back the partial credit, so a failed episode sums to 0 (the
  study's "0 on failure") and a truncated one to its partial credit.
- "success": `success_reward` on the step that completes the task, 0 otherwise (the study's sparse scheme).
`info["score"]` always holds the package's integer score (0..100, negative on failure).

Episode end: success when the simulator reports completion with a positive score; failure (done, not
success) when the score goes negative; truncation after `max_steps` actions.

JVM: one per env, started by py4j's `launch_gateway` as a child process with `--die-on-broken-pipe`, so it
exits when this process dies (its stdin closes); `close()` kills it and waits for it. Its pid is
`env.jvm_pid` and `info["jvm_pid"]` (the pool can reap it). The heap is `jvm_memory` (`-Xmx`, on the java
command line, so it wins over a `-Xmx` in JAVA_TOOL_OPTIONS; pass `jvm_memory=None` to leave the heap to
JAVA_TOOL_OPTIONS), plus `jvm_options` (serial GC by default: one small JVM per env, no GC threads).
"""
from __future__ import annotations

import collections
import re
import subprocess
import weakref
from typing import Any, Sequence

import gin

from envs.interface import TextEnv, TextStep
from envs.prompting import answer_format, format_admissible, history_block

# The 30 task types, by the simulator's names; known without starting a JVM.
try:  # the package is optional at import time (tests skip without it)
    from scienceworld.constants import ID2TASK as _ID2TASK
    from scienceworld.utils import infer_task as _infer_task

    TASK_NAMES: tuple[str, ...] = tuple(sorted(_infer_task(v) for v in _ID2TASK.values()))
except ImportError:  # pragma: no cover - exercised only without scienceworld installed
    _infer_task = None
    TASK_NAMES = ()

SPLITS = ("train", "dev", "test")
REWARD_MODES = ("score", "success")
# The simulator's own reply to input it cannot parse; also what a blocked "reset task" gets.
UNKNOWN_ACTION_FEEDBACK = "No known action matches that input."
# "reset task" would restart the episode inside the simulator behind the adapter's back (score, step
# count), so the adapter refuses it and leaves it out of the templates shown to the agent.
_BLOCKED_ACTIONS = ("reset task",)
_TASK_DESC_HEADER = "Task Description:"
# The simulator lists a room's contents (and breaks gold-path ties) in Java hash-set order, and Java's
# default identity hash codes come from a per-thread random stream, so the same (task, variation) can list
# its objects in a different order depending on what the JVM loaded before (the package has the same
# property). The task, its variation, scores and dynamics do not change. A constant identity hash makes
# the order insertion order, hence reproducible, at about 2x the step time (measured on boil).
REPRODUCIBLE_TEXT_JVM_OPTIONS = ("-XX:+UnlockExperimentalVMOptions", "-XX:hashCode=2")
# An action that matches several objects gets this reply with numbered options, listed in that same hash
# order; the next input is then read as the number of an option. So a number names different objects in
# different loads of the same episode, and a replay must answer with the option's text, not its number.
_AMBIGUOUS_HEADER = "Ambiguous request:"
_OPTION_LINE = re.compile(r"(\d+):\t(.*)")
_NUMBER = re.compile(r"[+-]?\d+")


def _ambiguous_options(observation: str) -> list[str] | None:
    """The options of an "Ambiguous request" reply, by number; None for any other reply."""
    if not observation.startswith(_AMBIGUOUS_HEADER):
        return None
    options = {}
    for line in observation.splitlines()[1:]:
        m = _OPTION_LINE.fullmatch(line)
        if m:
            options[int(m.group(1))] = m.group(2).strip()
    return [options[i] for i in sorted(options)]


def _chosen_option(action: str, options: list[str] | None) -> str | None:
    """The option text a numeric answer to an ambiguous request picks (None if it picks none)."""
    if options is None or not _NUMBER.fullmatch(action):
        return None
    n = int(action)
    return options[n] if 0 <= n < len(options) else None


def _listing_fingerprint(text: str) -> collections.Counter:
    """A room or inventory text up to listing order: each line (one object with what it holds) as its words."""
    return collections.Counter(frozenset(collections.Counter(re.findall(r"\w+", line)).items())
                               for line in text.splitlines())


def _require_scienceworld():
    try:
        import scienceworld  # noqa: F401
        from py4j.java_gateway import JavaGateway  # noqa: F401
    except ImportError as e:
        raise ImportError("envs.sciworld needs the ScienceWorld package: pip install scienceworld==1.2.3 "
                          "(and a Java 11+ runtime on PATH)") from e


def _kill_jvm(proc: subprocess.Popen | None, gateway: Any) -> None:
    """Close the py4j connection and kill the JVM child (idempotent; used by close() and the finalizer)."""
    if gateway is not None:
        try:
            gateway.close()
        except Exception:
            pass
        # Mark the client disconnected: py4j's finalizers of leftover Java object proxies then skip their
        # "delete" message instead of reconnecting to a dead JVM and logging tracebacks from inside the GC
        # (formatting a traceback during GC can break an ast.parse in progress on Python 3.11).
        client = getattr(gateway, "_gateway_client", None)
        if client is not None:
            client.is_connected = False
    if proc is not None and proc.poll() is None:
        try:
            proc.kill()
            proc.wait(timeout=10)
        except Exception:
            pass
    if proc is not None:
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass


def _clean_task(text: str) -> str:
    text = text.strip()
    if text.startswith(_TASK_DESC_HEADER):
        text = text[len(_TASK_DESC_HEADER):].strip()
    return text


@gin.configurable(module="envs.sciworld")
class SciWorldEnv(TextEnv):
    """One ScienceWorld simulator (one JVM) behind the `TextEnv` interface.

    Args:
      task_names: task types to sample from (simulator names, e.g. "boil", "find-animal"; the package's
        ids "1-1" or paper names are accepted too). None = all 30.
      split: "train", "dev" or "test": which of the package's variation lists seeds map into.
      max_steps: actions per episode before truncation (the study uses 50).
      simplifications: the package's simplification string ("" = none, "easy", or a comma list such as
        "openDoors,selfWateringFlowerPots"). The default "" keeps the electrical actions (connect /
        disconnect) that the study's 25 templates include.
      reward_mode: "score" (score delta scaled so a full solve sums to `success_reward`) or "success".
      success_reward: the reward of a full solve (10 as in the study).
      include_objects: fill `info["admissible_objects"]` on every reset/step (one extra ~3 ms server call);
        turn off when the prompt does not show objects.
      generate_gold_path: have the simulator compute the gold path at every reset (slow for some tasks,
        up to ~9 s); when False, `expert_actions()` computes it on demand.
      jvm_memory: JVM max heap (`-Xmx`), or None to leave it to JAVA_TOOL_OPTIONS.
      jvm_options: further java command-line options.
      reproducible_text: make observation text byte-identical for the same seed whatever the JVM did
        before (see `REPRODUCIBLE_TEXT_JVM_OPTIONS`); costs about 2x step time, so off by default.
    """

    def __init__(self, task_names: Sequence[str] | None = None, split: str = "train", max_steps: int = 50,
                 simplifications: str = "", reward_mode: str = "score", success_reward: float = 10.0,
                 include_objects: bool = True, generate_gold_path: bool = False,
                 jvm_memory: str | None = "256m", jvm_options: Sequence[str] = ("-XX:+UseSerialGC",),
                 reproducible_text: bool = False):
        _require_scienceworld()
        self.task_names = self._resolve_tasks(task_names)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        if not isinstance(simplifications, str):
            raise ValueError(f"simplifications must be a comma-separated string such as 'easy' or "
                             f"'openDoors,openContainers', got {simplifications!r}")
        if isinstance(jvm_options, str):
            raise ValueError(f"jvm_options must be a list of java options, e.g. ['-XX:+UseSerialGC'], "
                             f"not one string: {jvm_options!r}")
        self.split = split
        self.max_steps = max_steps
        self.simplifications = simplifications
        self.reward_mode = reward_mode
        self.success_reward = float(success_reward)
        self.include_objects = include_objects
        self.generate_gold_path = generate_gold_path
        self._javaopts = ([f"-Xmx{jvm_memory}"] if jvm_memory else []) + list(jvm_options)
        if reproducible_text:
            self._javaopts += list(REPRODUCIBLE_TEXT_JVM_OPTIONS)
        self.reproducible_text = reproducible_text

        self._proc: subprocess.Popen | None = None
        self._gateway = None
        self._server = None
        self._launch()
        # Validate the simplification string with the simulator's own list before the first reset.
        possible = ["easy"] + str(self._server.getPossibleSimplifications()).split(", ")
        bad = [s for s in simplifications.split(",") if s and s not in possible]
        if bad:
            self.close()
            raise ValueError(f"unknown simplification(s) {bad}; valid ones: {possible} (comma-separated)")

        self._variations: dict[str, tuple[int, ...]] = {}  # task -> split variations (cached)
        self._templates: tuple[str, ...] | None = None
        self._episode: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _resolve_tasks(task_names: Sequence[str] | None) -> tuple[str, ...]:
        if task_names is None:
            return TASK_NAMES
        if isinstance(task_names, str):
            task_names = [task_names]
        resolved, unknown = [], []
        for name in task_names:
            canon = _infer_task(str(name)) if _infer_task else str(name)
            (resolved if canon in TASK_NAMES else unknown).append(canon if canon in TASK_NAMES else name)
        if unknown:
            raise ValueError(f"unknown ScienceWorld task name(s) {unknown}; valid names: {list(TASK_NAMES)}")
        if not resolved:
            raise ValueError(f"task_names is empty; pick some of {list(TASK_NAMES)} or pass None for all")
        return tuple(sorted(set(resolved)))

    def _launch(self) -> None:
        from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
        from scienceworld.constants import BASEPATH, JAR_PATH

        try:
            port, proc = launch_gateway(classpath=JAR_PATH, die_on_exit=True, cwd=BASEPATH, return_proc=True,
                                        javaopts=self._javaopts)
        except FileNotFoundError as e:
            raise RuntimeError("ScienceWorld needs a Java 11+ runtime on PATH (e.g. apt-get install "
                               "openjdk-17-jre-headless)") from e
        except ValueError as e:  # the JVM exited before printing its port, e.g. a bad java option
            raise RuntimeError(f"the ScienceWorld JVM failed to start with options {self._javaopts}; check "
                               f"jvm_memory / jvm_options / JAVA_TOOL_OPTIONS") from e
        self._proc = proc
        self._finalizer = weakref.finalize(self, _kill_jvm, proc, None)
        try:
            self._gateway = JavaGateway(gateway_parameters=GatewayParameters(port=port), java_process=proc)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _kill_jvm, proc, self._gateway)
            self._server = self._gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface()
        except BaseException:
            self.close()
            raise

    @property
    def jvm_pid(self) -> int | None:
        """Process id of this env's JVM (None after close)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def close(self) -> None:
        """Kill the JVM and wait for it; safe to call twice."""
        fin = getattr(self, "_finalizer", None)
        if fin is not None:
            fin()  # runs _kill_jvm once
        self._server = None
        self._gateway = None
        self._episode = None

    def __enter__(self) -> "SciWorldEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _srv(self):
        if self._server is None:
            raise RuntimeError("SciWorldEnv is closed; build a new one")
        return self._server

    # ------------------------------------------------------------------ seeds → episodes

    def variations(self, task: str) -> tuple[int, ...]:
        """The package's variation ids of `task` in this env's split (loads the task once; cached)."""
        if task not in self._variations:
            srv = self._srv()
            srv.load(task, 0, "", False)
            getter = {"train": srv.getVariationsTrain, "dev": srv.getVariationsDev,
                      "test": srv.getVariationsTest}[self.split]
            self._variations[task] = tuple(int(v) for v in getter())
            self._episode = None  # that load replaced any running episode
        return self._variations[task]

    def episode_of(self, seed: int) -> tuple[str, int]:
        """The (task, variation) that `reset(seed)` plays; deterministic, independent of the instance."""
        seed = int(seed)
        n = len(self.task_names)
        task = self.task_names[seed % n]
        vs = self.variations(task)
        return task, vs[(seed // n) % len(vs)]

    # ------------------------------------------------------------------ TextEnv

    def reset(self, seed: int) -> TextStep:
        """Load the seed's (task, variation) and return the first observation (look around + inventory)."""
        task, variation = self.episode_of(seed)
        return self.load(task, variation, seed=int(seed))

    def load(self, task: str, variation: int, seed: int | None = None) -> TextStep:
        """Start an episode of an explicit (task, variation); `reset(seed)` is the usual entry point."""
        srv = self._srv()
        if task not in TASK_NAMES:
            raise ValueError(f"unknown ScienceWorld task {task!r}; valid names: {list(TASK_NAMES)}")
        srv.load(task, int(variation), self.simplifications, bool(self.generate_gold_path))
        # Like the package's reset: the first move is "look around" (it counts as a simulator move).
        look = str(srv.step("look around"))
        inventory = str(srv.freeActionInventory())
        score = int(round(100 * srv.getScore()))
        self._episode = {
            "task_name": task, "variation": int(variation), "seed": seed,
            "task": _clean_task(str(srv.freeActionTaskDesc())),
            "steps": 0, "score": score, "done": False,
            # (action as sent, the option text it picked if it answered an ambiguous request): for replays
            "actions": [], "options": None,
            "gold": list(srv.getGoldActionSequence()) if self.generate_gold_path else None,
        }
        obs = f"{look.strip()}\n{inventory.strip()}"
        return self._text_step(obs, reward=0.0, done=False, success=False, truncated=False)

    def step(self, action: str) -> TextStep:
        """One action: only observation, score and completion are computed (plus objects if enabled).

        A number answering an "Ambiguous request" reports the option it picked in `info["resolved_action"]`.
        """
        ep = self._episode
        if ep is None:
            raise RuntimeError("call reset(seed) before step()")
        if ep["done"]:
            return self._text_step("The episode has ended; call reset() to start a new one.", 0.0, True,
                                   ep.get("success", False), ep.get("truncated", False), after_done=True)
        action = " ".join(str(action).split())  # one line: the parser is whitespace-sensitive
        srv = self._srv()
        resolved = None
        if action.lower() in _BLOCKED_ACTIONS:  # the simulator never sees it: a pending ambiguity stays
            obs, completed = UNKNOWN_ACTION_FEEDBACK, False
        else:
            obs = str(srv.step(action))
            completed = bool(srv.getCompleted())
            resolved = _chosen_option(action, ep["options"])
            ep["options"] = _ambiguous_options(obs)
        ep["actions"].append((action, resolved))
        ep["steps"] += 1
        score = int(round(100 * srv.getScore()))
        # Negative scores (failure) count as 0 for the reward, so an episode's rewards sum to
        # max(final score, 0) / 100 * success_reward: full on success, partial credit on truncation, 0 on
        # failure (the study's "0 on failure"), never below 0.
        delta = max(score, 0) - max(ep["score"], 0)
        ep["score"] = score
        success = completed and score > 0
        failed = score < 0
        truncated = not (success or failed) and ep["steps"] >= self.max_steps
        done = success or failed or truncated
        if self.reward_mode == "score":
            reward = delta / 100.0 * self.success_reward
        else:
            reward = self.success_reward if success else 0.0
        ep.update(done=done, success=success, truncated=truncated)
        extra = {"truncated_reason": "max_steps"} if truncated else {}
        if failed:
            extra["failure"] = True
        if resolved is not None:
            extra["resolved_action"] = resolved
        return self._text_step(obs, reward, done, success, truncated, **extra)

    def expert_actions(self) -> list[str]:
        """The simulator's gold action sequence for this episode (from its start).

        Without `generate_gold_path`, the task is reloaded with gold-path generation and the actions taken
        so far are replayed (the simulator is deterministic), so the episode carries on where it was. A
        numeric answer to an ambiguous request is replayed as the option it picked (the options come in a
        different order in each load); the room, inventory, score and move count are then checked against
        the state before, and a replay that differs raises (the episode then needs a reset).
        """
        ep = self._episode
        if ep is None:
            raise RuntimeError("call reset(seed) before expert_actions()")
        if ep["gold"] is None:
            srv = self._srv()
            before = self._state_fingerprint()
            srv.load(ep["task_name"], ep["variation"], self.simplifications, True)
            gold = [str(a) for a in srv.getGoldActionSequence()]
            srv.step("look around")
            try:
                ep["options"] = self._replay(ep["actions"])
                if self._state_fingerprint() != before:
                    raise RuntimeError("the replayed state differs from the episode's (room, inventory, score "
                                       "or move count)")
            except RuntimeError as e:
                self._episode = None
                raise RuntimeError(f"SciWorldEnv.expert_actions: replaying {len(ep['actions'])} action(s) of "
                                   f"{ep['task_name']} variation {ep['variation']} did not restore the "
                                   f"episode ({e}); call reset() to go on, or set generate_gold_path=True so "
                                   f"no replay is needed") from None
            ep["gold"] = gold
        return list(ep["gold"])

    def _replay(self, actions: Sequence[tuple[str, str | None]]) -> list[str] | None:
        """Send `actions` again after a reload; an answer to an ambiguous request becomes the number its option
        has in this load. Returns the options still pending at the end."""
        srv = self._srv()
        options = None
        for action, resolved in actions:
            if action.lower() in _BLOCKED_ACTIONS:
                continue
            if resolved is not None:
                if options is None or resolved not in options:
                    raise RuntimeError(f"the answer {action!r} picked {resolved!r}, which the replay's "
                                       f"options {options} do not list")
                # identical option texts cannot be told apart: the state check below catches a wrong one
                action = str(options.index(resolved))
            options = _ambiguous_options(str(srv.step(action)))
        return options

    def _state_fingerprint(self) -> tuple:
        """What a replay must reproduce, up to the listing order of objects (see REPRODUCIBLE_TEXT_JVM_OPTIONS)."""
        srv = self._srv()
        return (_listing_fingerprint(str(srv.freeActionLook())),
                _listing_fingerprint(str(srv.freeActionInventory())),
                int(round(100 * srv.getScore())), int(srv.getNumMoves()))

    # ------------------------------------------------------------------ lazy extras

    def action_templates(self) -> tuple[str, ...]:
        """The action templates ("focus on OBJ", "move OBJ to OBJ", ...) under this env's simplifications.

        Fixed per simplification setting, so fetched once. "reset task" is left out (the adapter refuses it).
        """
        if self._templates is None:
            if self._episode is None:
                raise RuntimeError("call reset(seed) before action_templates()")
            self._templates = tuple(str(t) for t in self._srv().getPossibleActions()
                                    if str(t) not in _BLOCKED_ACTIONS)
        return self._templates

    def admissible_objects(self) -> tuple[str, ...]:
        """Names of the objects the agent can refer to now (what replaces OBJ in the templates)."""
        return tuple(str(o) for o in self._srv().getPossibleObjects())

    def valid_action_combinations(self) -> list[str]:
        """Every valid template/object combination now (the package's slow enumeration, on request only)."""
        return [str(a) for a in self._srv().getValidActionObjectCombinations()]

    def look(self) -> str:
        """The room description, without spending a move."""
        return str(self._srv().freeActionLook())

    def inventory(self) -> str:
        """The inventory, without spending a move."""
        return str(self._srv().freeActionInventory())

    def _text_step(self, obs: str, reward: float, done: bool, success: bool, truncated: bool,
                   **extra: Any) -> TextStep:
        ep = self._episode
        info: dict[str, Any] = {
            "score": ep["score"], "steps": ep["steps"], "task_name": ep["task_name"],
            "variation": ep["variation"], "seed": ep["seed"], "jvm_pid": self.jvm_pid, **extra,
        }
        if self.include_objects:
            info["admissible_objects"] = self.admissible_objects()
        return TextStep(task=ep["task"], observation=obs, admissible_actions=self.action_templates(),
                        reward=float(reward), done=done, success=success, truncated=truncated, info=info)


# ---------------------------------------------------------------------------------------------- prompt

def _one_shot_example(thinking: bool) -> str:
    reasoning = ("<think>Boiling water needs water, a container and a heat source. Kitchens usually have a "
                 "sink, pots and a stove, and the kitchen door here is open, so the first move is to go "
                 "there.</think>\n") if thinking else ""
    return (
        "Here is an example of how to act in this environment.\n"
        "Task: Your task is to boil water. For compounds without a boiling point, combusting the substance "
        "is also acceptable. First, focus on the substance. Then, take actions that will cause it to change "
        "its state of matter.\n"
        "Observation: This room is called the hallway. In it, you see: the agent, a substance called air, "
        "a picture. You also see: A door to the kitchen (that is open), A door to the workshop (that is "
        "open).\n"
        "Admissible objects: [\"agent\", \"air\", \"picture\", \"kitchen\", \"workshop\", \"hallway\"]\n"
        f"{reasoning}<action>go kitchen</action>"
    )


@gin.configurable(module="envs.sciworld")
def build_prompt(task: str, history: Sequence[tuple[str, str]], observation: str,
                 admissible_objects: Sequence[str], step: int, window: int = 2, thinking: bool = True,
                 templates: Sequence[str] | None = None) -> str:
    """The per-step SciWorld prompt of the study (arXiv 2601.18217, App. B), in our own words.

    One-shot example (ending `<action>go kitchen</action>`), the task, the last `window` (observation,
    action) pairs, the current observation, the action templates with the admissible objects that
    replace OBJ, a note against repeating actions, then the answer-format instruction.
    `templates` defaults to the simulator's 25 templates (no simplifications); pass
    `TextStep.admissible_actions` to show exactly what the env accepts.
    """
    if templates is None:
        templates = DEFAULT_TEMPLATES
    parts = [
        "You are an agent in ScienceWorld, a text-based virtual lab and home where you carry out "
        "elementary science tasks step by step.",
        _one_shot_example(thinking),
        f"Now, your task is: {task}",
    ]
    hist = history_block(history, step, window)
    if hist:
        parts.append(hist)
    parts.append(f"You are now at step {step + 1} and your current observation is: {observation}")
    parts.append(
        "The actions you can take follow these templates: " + format_admissible(templates) + ", where you "
        "should replace the 'OBJ' with an object from the admissible objects list: "
        + format_admissible(admissible_objects) + "."
    )
    parts.append(
        "Note: do NOT repeat the same action over and over when it does not change anything (for example "
        "'look around' again and again); try a different action that makes progress on the task."
    )
    parts.append(answer_format(thinking))
    return "\n\n".join(parts)


# The simulator's templates with no simplifications, minus "reset task" (kept in sync by a test).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "activate OBJ", "close OBJ", "connect OBJ to OBJ", "deactivate OBJ", "disconnect OBJ", "dunk OBJ in OBJ",
    "eat OBJ", "flush OBJ", "focus on OBJ", "go OBJ", "inventory", "look around", "look at OBJ",
    "look in OBJ", "mix OBJ", "move OBJ to OBJ", "open OBJ", "pick up OBJ", "pour OBJ in OBJ",
    "put down OBJ", "read OBJ", "task", "use OBJ on OBJ", "wait", "wait1",
)

