"""ALFWorld (text-only, TextWorld engine) as an `envs.interface.TextEnv`.

Games are loaded straight with `textworld.start` and ALFWorld's own `AlfredDemangler`/`AlfredInfos`
wrappers (the ones `AlfredTWEnv` registers), which is faster than going through `textworld.gym` and gives
one game per env object, as the pool wants. The game list follows `AlfredTWEnv`'s rules (a `traj_data.json`
and a solvable `game.tw-pddl` per trial folder; movable/sliced games skipped) but is sorted by path, so
`reset(seed)` picks `games[seed % len(games)]` whatever the filesystem order or the number of workers.

Data: `data_path` (gin) or `$ALFWORLD_DATA`, laid out as `alfworld-download` leaves it
(`<data>/json_2.1.1/{train,valid_seen,valid_unseen}/<task>/<trial>/game.tw-pddl`).
Splits: "train", "valid_seen" (in-distribution eval), "valid_unseen" (out-of-distribution eval).

Reward: 10.0 on the step that wins the game, else 0.0 (the study's success reward; the -0.1 per invalid
action is the trainer's business, since it depends on parsing the model's answer). `success` = TextWorld's
`won`; the episode is truncated after `max_steps` steps (`truncated_reason="max_steps"`). A command the game
does not know gets the game's own "Nothing happens." and costs a step.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Sequence

import gin

from envs import prompting
from envs.interface import TextEnv, TextStep

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLITS = {"train": "train", "valid_seen": "valid_seen", "valid_unseen": "valid_unseen",
          # AlfredTWEnv's names for the same folders
          "eval_in_distribution": "valid_seen", "eval_out_of_distribution": "valid_unseen"}
SUCCESS_REWARD = 10.0
_TASK_RE = re.compile(r"\s*Your task is to:\s*(.*?)\s*$", re.DOTALL)
_SOLVABLE_RE = re.compile(rb'"solvable"\s*:\s*(true|false)')


def resolve_data_path(data_path: str | None = None) -> str:
    """`data_path`, else `$ALFWORLD_DATA`; raise a ValueError that says how to get the data if missing."""
    path = data_path or os.environ.get("ALFWORLD_DATA")
    if not path:
        raise ValueError("ALFWorld data path not set: bind `AlfWorldEnv.data_path = '/path/to/alfworld'` in gin "
                         "or `export ALFWORLD_DATA=/path/to/alfworld` (run `alfworld-download` to fetch the "
                         "data, or use the repository's vendored `data/alfworld`).")
    path = os.path.expanduser(os.path.expandvars(path))
    if not os.path.isdir(os.path.join(path, "json_2.1.1")):
        raise ValueError(f"ALFWorld data not found: {path!r} has no json_2.1.1/ folder. Point ALFWORLD_DATA "
                         f"(or the gin binding `AlfWorldEnv.data_path`) at the folder `alfworld-download` "
                         f"filled, or at the vendored `data/alfworld`.")
    return path


def check_task_types(task_types: Sequence[str] | None) -> tuple[str, ...]:
    """Validate a task-type selection (None = all six); unknown names raise a ValueError listing valid ones."""
    if task_types is None:
        return TASK_TYPES
    if isinstance(task_types, str):
        task_types = [task_types]
    unknown = [t for t in task_types if t not in TASK_TYPES]
    if unknown or not task_types:
        raise ValueError(f"unknown ALFWorld task type(s) {unknown or task_types!r}; valid ones: {list(TASK_TYPES)}")
    return tuple(t for t in TASK_TYPES if t in task_types)


@functools.lru_cache(maxsize=32)
def list_games(data_path: str, split: str, task_types: tuple[str, ...] = TASK_TYPES) -> tuple[str, ...]:
    """Sorted game files of a split, filtered like AlfredTWEnv (solvable, no movable/sliced, task types)."""
    if split not in SPLITS:
        raise ValueError(f"unknown ALFWorld split {split!r}; valid ones: {sorted(SPLITS)}")
    root = os.path.join(data_path, "json_2.1.1", SPLITS[split])
    if not os.path.isdir(root):
        raise ValueError(f"ALFWorld split folder missing: {root}; check ALFWORLD_DATA / `AlfWorldEnv.data_path`")
    games = []
    for dirpath, _, files in os.walk(root):
        if "traj_data.json" not in files or "game.tw-pddl" not in files:
            continue
        if "movable" in dirpath or "Sliced" in dirpath:
            continue
        # ALFRED folder names start with the task type (`<task_type>-<obj>-<mrecep>-<recep>-<scene>/<trial>`)
        task_type = os.path.basename(os.path.dirname(dirpath)).split("-")[0]
        if task_type not in task_types:
            continue
        game = os.path.join(dirpath, "game.tw-pddl")
        with open(game, "rb") as f:
            m = _SOLVABLE_RE.search(f.read())
        if m is None or m.group(1) != b"true":
            continue
        games.append(game)
    if not games:
        raise ValueError(f"no ALFWorld games for split={split!r}, task_types={list(task_types)} under {root}")
    return tuple(sorted(games, key=lambda g: os.path.relpath(g, root)))


_TRANSLATION_CACHE_SIZE = 8


def _memoize_pddl_translation() -> None:
    """Make TextWorld's PDDL→SAS translation (fast-downward, pure Python) run once per game per process.

    `textworld`'s `PddlEnv` translates the same (domain, problem) pair twice on `load` and twice again on
    every `reset`: that is most of an ALFWorld reset. The translation is a pure function of its text inputs
    and TextWorld only reads the returned task, so a small per-process LRU cache is safe.
    """
    import fast_downward

    if getattr(fast_downward.pddl2sas, "_agentrl_memoized", False):
        return
    original = fast_downward.pddl2sas

    @functools.lru_cache(maxsize=_TRANSLATION_CACHE_SIZE)
    def cached(domain, problem, verbose=False, optimize=False):
        return original(domain, problem, verbose=verbose, optimize=optimize)

    def pddl2sas(domain, problem, verbose=False, optimize=False):
        return cached(domain, problem, verbose=bool(verbose), optimize=bool(optimize))

    pddl2sas._agentrl_memoized = True
    fast_downward.pddl2sas = pddl2sas


def _memoize_grammar_parsing() -> None:
    """Parse each TextWorld grammar template once per process instead of on every derivation.

    Every step TextWorld derives the text of each admissible command and of the feedback, re-parsing the
    same few hundred template strings with tatsu each time: most of a step's cost. We cache the parsed
    symbols and hand out deep copies (derivation mutates them), which is the same result, several times faster.
    """
    import copy

    from textworld.envs.pddl import textgen

    if getattr(textgen._parse_and_convert, "_agentrl_memoized", False):
        return
    original = textgen._parse_and_convert

    @functools.lru_cache(maxsize=4096)
    def cached(text, rule_name, trace):
        return original(text, rule_name=rule_name, trace=trace)

    def parse_and_convert(text, rule_name="symbols", trace=False, **kwargs):
        if kwargs or not isinstance(text, str):
            return original(text, rule_name=rule_name, trace=trace, **kwargs)
        return copy.deepcopy(cached(text, rule_name, bool(trace)))

    parse_and_convert._agentrl_memoized = True
    textgen._parse_and_convert = parse_and_convert


def split_task(feedback: str) -> tuple[str, str]:
    """Split the initial description into (observation without the task line, task without the final period)."""
    head, sep, tail = feedback.rpartition("Your task is to:")
    if not sep:
        return feedback.strip(), ""
    return head.strip(), tail.strip().rstrip(".").strip()


def task_type_of(game_file: str) -> str:
    return os.path.basename(os.path.dirname(os.path.dirname(game_file))).split("-")[0]


@gin.configurable(module="envs.alfworld")
class AlfWorldEnv(TextEnv):
    """One ALFWorld text game at a time.

    Args:
      split: "train", "valid_seen" (in-distribution eval) or "valid_unseen" (out-of-distribution eval).
      task_types: subset of `TASK_TYPES` (gin list), None for all six.
      data_path: ALFWorld data folder; None → `$ALFWORLD_DATA`.
      max_steps: episode step limit (the study uses 50).
      planner_expert: also ask TextWorld for its planner's plan from the current state each step
        (`expert_plan()`); costs a planner call per step, so off by default.
      cache_translation: memoize TextWorld's PDDL translation and grammar parsing in this process (see
        `_memoize_pddl_translation`, `_memoize_grammar_parsing`): same text, several times faster steps and
        resets (a reset of a game seen recently costs a fraction of a fresh one).
    """

    def __init__(self, split: str = "train", task_types: Sequence[str] | None = None, data_path: str | None = None,
                 max_steps: int = 50, planner_expert: bool = False, cache_translation: bool = True):
        if split not in SPLITS:
            raise ValueError(f"unknown ALFWorld split {split!r}; valid ones: {sorted(SPLITS)}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        self.split = split
        self.task_types = check_task_types(task_types)
        self.data_path = resolve_data_path(data_path)
        self.max_steps = max_steps
        self.planner_expert = planner_expert
        self.cache_translation = cache_translation
        self.games = list_games(self.data_path, split, self.task_types)
        self._env = None
        self._loaded = None
        self._state = None
        self._task = ""
        self._t = 0
        self._done = True

    def _textworld_env(self, first_game: str):
        if self._env is None:
            try:
                import textworld
                from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
            except ImportError as e:
                raise ImportError("AlfWorldEnv needs `pip install alfworld==0.4.2` (it brings textworld)") from e
            if self.cache_translation:
                _memoize_pddl_translation()
                _memoize_grammar_parsing()
            infos = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=self.planner_expert,
                                       extras=["gamefile", "walkthrough"])
            self._env = textworld.start(first_game, request_infos=infos,
                                        wrappers=[AlfredDemangler(shuffle=False), AlfredInfos])
            self._loaded = first_game
        return self._env

    @property
    def game_file(self) -> str | None:
        return self._loaded

    def reset(self, seed: int) -> TextStep:
        game = self.games[int(seed) % len(self.games)]
        env = self._textworld_env(game)
        if game != self._loaded:
            env.load(game)
            self._loaded = game
        self._state = env.reset()
        self._t, self._done = 0, False
        raw = self._state["feedback"]
        obs, self._task = split_task(raw)
        return TextStep(task=self._task, observation=obs, admissible_actions=self._admissible(),
                        info=self._info(raw_observation=raw, entities=self._entities()))

    def step(self, action: str) -> TextStep:
        if self._state is None:
            raise RuntimeError("AlfWorldEnv.step called before reset")
        self._state, _, tw_done = self._env.step(str(action))
        self._t += 1
        won = bool(self._state["won"])
        truncated = not won and self._t >= self.max_steps
        done = won or truncated or bool(tw_done and self._state.get("lost"))
        info = self._info()
        if truncated:
            info["truncated_reason"] = "max_steps"
        # reward only on the winning transition, not again if the caller keeps stepping a won game
        reward = SUCCESS_REWARD if won and not self._done else 0.0
        self._done = self._done or done
        return TextStep(task=self._task, observation=self._state["feedback"].strip(),
                        admissible_actions=self._admissible(), reward=reward, done=done, success=won,
                        truncated=truncated, info=info)

    def _entities(self) -> list[str]:
        """Every numbered entity of the game ("mug 1", "cabinet 3"), hidden ones included (from TextWorld's
        game state; in the reset step's info["entities"]), so that distractors never reuse a real id."""
        infos = (self._state or {}).get("_entity_infos") or {}
        names = (getattr(i, "name", None) for i in infos.values())
        return sorted(n for n in names if n and re.fullmatch(r"\S+ \d+", n))

    def _admissible(self) -> tuple[str, ...]:
        return tuple(sorted(self._state["admissible_commands"] or ()))

    def _info(self, **extra) -> dict:
        data_root = os.path.join(self.data_path, "json_2.1.1")
        return {"gamefile": os.path.relpath(self._loaded, data_root), "task_type": task_type_of(self._loaded),
                "step": self._t, "won": bool(self._state["won"]), **extra}

    def expert_actions(self) -> list[str] | None:
        """The game's stored walkthrough: a winning sequence from the initial state of the current game."""
        if self._state is None:
            return None
        return list(self._state.get("extra.walkthrough") or []) or None

    def expert_plan(self) -> list[str] | None:
        """TextWorld's planner plan from the current state (needs `planner_expert=True`)."""
        if self._state is None or not self.planner_expert:
            return None
        return list(self._state.get("policy_commands") or [])

    def close(self) -> None:
        if self._env is not None:
            try:
                self._env.close()
            finally:
                self._env, self._loaded, self._state = None, None, None


@gin.configurable(module="envs.alfworld")
def alfworld_factory(split: str = "train", task_types: Sequence[str] | None = None, data_path: str | None = None,
                     max_steps: int = 50, planner_expert: bool = False) -> functools.partial:
    """A picklable `EnvPool` factory with the arguments fixed in the parent (validated here, early)."""
    check_task_types(task_types)
    data_path = resolve_data_path(data_path)
    return functools.partial(AlfWorldEnv, split=split, task_types=None if task_types is None else tuple(task_types),
                             data_path=data_path, max_steps=max_steps, planner_expert=planner_expert)


SYSTEM_INTRO = "You are an expert agent operating in the ALFRED Embodied Environment."


@gin.configurable(module="envs.alfworld", denylist=["task", "history", "obs", "admissible", "step"])
def build_prompt(task: str, history: Sequence[tuple[str, str]], obs: str, admissible: Sequence[str], step: int,
                 window: int = 0, thinking: bool = True) -> str:
    """The per-step ALFWorld prompt: intro, task, recent history, current observation, admissible actions,
    answer format. At step 0 it reads like the study's example ("Your current observation is: ...").

    history: all past (observation, action) pairs; `window` of them are shown (0 = none, as in the study's
    ALFWorld example). thinking: ask for <think> reasoning before the <action> (else the action alone).
    """
    parts = [SYSTEM_INTRO]
    if task:
        parts.append(f"Your task is to: {task}.")
    past = prompting.history_block(history, step, window)
    if past:
        parts.append(past)
    if step > 0:
        parts.append(f"You are now at step {step + 1} and your current observation is: {obs}")
    else:
        parts.append(f"Your current observation is: {obs}")
    parts.append(f"Your admissible actions of the current situation are: {prompting.format_admissible(admissible)}.")
    return "\n".join(parts) + "\n\n" + prompting.answer_format(thinking)
