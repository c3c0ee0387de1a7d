"""The study's two environment axes (arXiv 2601.18217 §5, Table 1/3), measured per domain.

    python -m agentrl_jax.env_properties --gin_file=gin/runs/env_properties.gin --gin_file=gin/envs/<env>.gin \
        --gin_bindings="env_properties.domains = ['sokoban']" ...

* State information richness: mean characters and tokens per state over the played trajectories, for the raw
  observation (the env's text alone) and for the per-step prompt the policy reads. Prompt characters count the
  user message (template, task, history, observation, actions, answer format: what the study's 1,572-3,114
  characters match); prompt tokens count every id the policy reads, chat template included, before any
  cut to the domain's prompt buffer (`prompt_truncated_rate` says how often that cut happened).
* Planning complexity: mean trajectory length with every failed trajectory counted as T_max
  (`max_turns_cap`, the study: 50), so it mixes horizon and goal reachability; with the success rate
  (goal reachability) beside it. Episodes are played for min(domain's own step limit, T_max) turns.

The policy is a model (an HF folder or "tiny") or "expert": the domain's own solver where it has one (Sokoban:
the BFS solver `envs.sokoban.solve`, shortest in steps; text envs: their `expert_actions()` walkthrough). The
expert's plan lengths are reported under any policy (for Sokoban the optimal solution length, mean and
distribution). Episodes lost to the env machinery (a crashed worker, a timeout) are left out of every mean.

`axes_scatter` plots one axis against the OOD ranking score or the mean OOD success of the evaluator's JSON,
one point per training domain.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging as _pylogging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import jax
import numpy as np

import envs.sokoban as sk
from agentrl_jax import domains as dm
from agentrl_jax import generate as gen
from agentrl_jax import protocol
from agentrl_jax.chat import ChatFormat
from agentrl_jax.rollout import PoolTask, SokobanHostTask, host_rollout

log = _pylogging.getLogger("agentrl_jax.env_properties")
EXPERT = "expert"
# Per-state measures, the columns after the episode index of `Played.states`.
STATE_FIELDS = ("observation_chars", "observation_tokens", "prompt_chars", "prompt_tokens")
AXES = {"richness": ("prompt_chars", "state information richness (prompt characters)"),
        "planning": ("planning_steps", "planning complexity (steps, failures = T_max)")}
TARGETS = {"ranking": "OOD ranking score (lower = better)", "ood_success": "mean OOD success (%)"}


# ------------------------------------------------------------------------------------------ per state
def user_content_ids(chat: ChatFormat, ids: Sequence[int]) -> List[int]:
    """The user message's own ids inside a one-turn prompt (what both host tasks build: start, default
    system, user prefix, content, user suffix, generation prompt); a prompt of another shape is an error."""
    head = [*chat.start_ids, *chat.default_system_ids, *chat.prefix_ids["user"]]
    tail = [*chat.suffix_ids["user"], *chat.generation_prompt_ids()]
    ids = list(ids)
    if len(ids) < len(head) + len(tail) or ids[:len(head)] != head or ids[len(ids) - len(tail):] != tail:
        raise ValueError("a prompt does not have the one-user-turn layout of ChatFormat.encode_conversation "
                         "(start, system, user turn, generation prompt); env_properties measures window prompts: "
                         "a fresh prompt per step.")
    return ids[len(head):len(ids) - len(tail)]


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    """Ids as the exact text they stand for (no clean-up of spaces before punctuation, which would change
    character counts)."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


class RecordingTask:
    """A `rollout.HostTask` that records every state the policy reads: the prompt ids it is given for the
    turn (`prompt_ids` is called once per active episode per turn) and the env's raw observation text.

    max_turns: the turn limit of this measurement (at most the task's own). keep_text: also keep each
    state's prompt ids and observation text (for checks), not only their counts.
    """

    def __init__(self, task, chat: ChatFormat, max_turns: int, keep_text: bool = False):
        self.task, self.chat, self.keep_text = task, chat, keep_text
        self.num_episodes = int(task.num_episodes)
        self.max_turns = min(int(task.max_turns), int(max_turns))
        self.records: List[Tuple[int, int, int, int, int]] = []  # (episode, *STATE_FIELDS)
        self.texts: List[Tuple[List[int], str]] = []

    @property
    def lost(self) -> np.ndarray:
        return np.asarray(getattr(self.task, "lost", np.zeros(self.num_episodes, bool)), bool)

    def prompt_ids(self, episode: int) -> List[int]:
        ids = self.task.prompt_ids(episode)
        obs = observation_text(self.task, episode)
        content = decode_text(self.chat.tokenizer, user_content_ids(self.chat, ids))
        self.records.append((episode, len(obs), len(self.chat.encode_content(obs)), len(content), len(ids)))
        if self.keep_text:
            self.texts.append((list(ids), obs))
        return ids

    def step(self, episodes, answers, stopped):
        return self.task.step(episodes, answers, stopped)


# ------------------------------------------------------------------------------------------ host tasks
# What a state looks like and what the expert would do are read from the two host-task kinds the domains
# build (the JAX Sokoban stepped from the host, pooled text envs); a new kind adds a branch to each.
def observation_text(task, episode: int) -> str:
    """The env's text of an episode's current state, without the rest of the prompt."""
    if isinstance(task, SokobanHostTask):
        return sk.render_text(task.states[episode], task.prompter.render_style)
    if isinstance(task, PoolTask):
        return task.steps[episode].observation
    raise ValueError(f"env_properties reads observations of SokobanHostTask and PoolTask episodes, not of "
                     f"{type(task).__name__}; add a branch to agentrl_jax.env_properties.observation_text.")


def expert_plans(task) -> Tuple[Optional[str], Optional[List[Optional[List[str]]]]]:
    """(source, each episode's expert action words from its initial state): Sokoban's BFS solutions
    ("bfs_optimal", shortest in steps) or the text envs' walkthroughs ("walkthrough"); a plan is None where
    there is none (an unsolvable level, a game without a walkthrough, a failed env call). (None, None) when
    the env has no expert."""
    if isinstance(task, SokobanHostTask):
        plans = [sk.solve(sk.level_from_state(s)) for s in task.states]
        return "bfs_optimal", [None if p is None else [sk.ACTION_WORDS[a] for a in p] for p in plans]
    if isinstance(task, PoolTask):
        from envs.pool import EnvFailure  # noqa: PLC0415

        got = task.pool.call(task.env_ids, "expert_actions")
        return "walkthrough", [None if isinstance(p, EnvFailure) or p is None else [str(a) for a in p] for p in got]
    return None, None


# ------------------------------------------------------------------------------------------ the expert
def expert_answer(action: str, thinking: bool) -> str:
    """An answer in the study's format that parses to `action`."""
    return ("<think>expert plan</think>\n" if thinking else "") + f"<action>{action}</action>"


def play_expert(task, plans: Sequence[Optional[Sequence[str]]], thinking: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Play each episode's plan through the host task (so its prompts are built and recorded as for a
    policy); (success [E], length [E] turns played). An episode without a plan is not played (a failure);
    one stops when it is done, its plan runs out, or the task's turn limit is reached."""
    e = task.num_episodes
    success, length = np.zeros(e, bool), np.zeros(e, np.int32)
    done = task.lost.copy() | np.asarray([not p for p in plans], bool)
    for t in range(task.max_turns):
        active = [i for i in range(e) if not done[i]]
        if not active:
            break
        for i in active:
            task.prompt_ids(i)  # the state the expert acts on
        results = task.step(active, [expert_answer(plans[i][t], thinking) for i in active], [True] * len(active))
        lost = task.lost
        for i, (_reward, ep_done, ep_success, _bad, _action) in zip(active, results):
            length[i] += 1
            success[i] |= bool(ep_success)
            done[i] = ep_done or lost[i] or t + 1 >= task.max_turns or t + 1 >= len(plans[i])
    return success & ~task.lost, length


# ------------------------------------------------------------------------------------------ summaries
def planning_steps(success: np.ndarray, length: np.ndarray, t_max: int) -> float:
    """The study's planning complexity: mean trajectory length, each failed trajectory counted as t_max."""
    success, length = np.asarray(success, bool), np.asarray(length, np.float64)
    if success.size == 0:
        raise ValueError("planning_steps needs at least one episode")
    return float(np.mean(np.where(success, length, float(t_max))))


@dataclasses.dataclass
class Played:
    """What one domain's measurement played. states: int [S, 5] (episode, *STATE_FIELDS), the prompts the
    policy read; per episode [E]: success, length (turns), lost, plan_length (the expert's, -1 = none);
    plan_source: where the expert's plans come from (None: no expert); texts: (prompt ids, observation) per
    state, when kept."""

    states: np.ndarray
    success: np.ndarray
    length: np.ndarray
    lost: np.ndarray
    plan_length: np.ndarray
    plan_source: Optional[str] = None
    texts: List[Tuple[List[int], str]] = dataclasses.field(default_factory=list)

    @staticmethod
    def concat(parts: Sequence["Played"]) -> "Played":
        offset, states = 0, []
        for p in parts:
            s = p.states.copy()
            s[:, 0] += offset
            states.append(s)
            offset += len(p.success)
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return Played(np.concatenate(states) if states else np.zeros((0, 5), np.int64), cat("success"),
                      cat("length"), cat("lost"), cat("plan_length"), parts[0].plan_source if parts else None,
                      [t for p in parts for t in p.texts])


def histogram(values: Sequence[int]) -> Dict[str, int]:
    """{value: count}, keys as strings in ascending numeric order (JSON object keys are strings)."""
    return {str(k): int(v) for k, v in sorted(collections.Counter(int(x) for x in values).items())}


def summarise(played: Played, t_max: int, turn_limit: int, max_prompt_tokens: int) -> Dict[str, object]:
    """The axes of one domain from what was played (lost episodes left out). max_prompt_tokens: the domain's
    prompt buffer (a longer prompt is cut from the left before the policy reads it)."""
    kept = ~played.lost
    if not kept.any():
        raise ValueError("every episode was lost to the env machinery (crashed or timed-out workers); nothing to "
                         "measure: check the env's workers (e.g. AlfWorldEnv.data_path) and rerun.")
    states = played.states[kept[played.states[:, 0]]] if len(played.states) else played.states
    out: Dict[str, object] = {"episodes": int(kept.sum()), "lost_episodes": int((~kept).sum()),
                              "states": int(len(states)), "turn_limit": int(turn_limit), "t_max": int(t_max)}
    for j, name in enumerate(STATE_FIELDS, start=1):
        out[name] = float(states[:, j].mean()) if len(states) else float("nan")
    out["prompt_truncated_rate"] = float((states[:, 4] > max_prompt_tokens).mean()) if len(states) else 0.0
    out["planning_steps"] = planning_steps(played.success[kept], played.length[kept], t_max)
    out["success_rate"] = float(played.success[kept].mean())
    wins = played.length[kept & played.success]
    out["success_length"] = float(wins.mean()) if wins.size else None
    plans = played.plan_length[kept]
    out["expert_plan_source"] = played.plan_source
    if played.plan_source is not None:
        have = plans[plans >= 0]
        out["expert_plan_length"] = float(have.mean()) if have.size else None
        out["expert_plan_length_histogram"] = histogram(have)
        out["expert_no_plan"] = int((plans < 0).sum())
        # Reachable for the expert: a plan that fits the turn limit (the study's horizon).
        out["expert_plan_within_limit"] = float(((plans >= 0) & (plans <= turn_limit)).mean())
    return out


# ------------------------------------------------------------------------------------------ measuring
@dataclasses.dataclass
class Policy:
    """A model to play with (graphdef, params), or the expert (graphdef None)."""

    name: str
    tokenizer: object
    graphdef: object = None
    params: object = None

    @property
    def is_expert(self) -> bool:
        return self.graphdef is None


def load_measurement_policy(model_path: str, tokenizer_path: Optional[str] = None, run_dir: Optional[str] = None,
                            checkpoint_step: Optional[int] = None) -> Policy:
    """The policy of `model_path` (an HF folder or "tiny") with its tokenizer, or the expert ("expert"), whose
    states are tokenized with `tokenizer_path`'s tokenizer. run_dir: a training run (`train.output_dir`) whose
    checkpoint `checkpoint_step` (None = the latest) replaces the parameters of `model_path`, the run's model."""
    if model_path == EXPERT:
        if not tokenizer_path:
            raise ValueError("env_properties.model_path = 'expert' counts tokens with a tokenizer of its own: set "
                             "env_properties.tokenizer_path (an HF folder, or 'tiny').")
        from transformers import AutoTokenizer  # noqa: PLC0415

        from agentrl_jax.policy import resolve_model_path  # noqa: PLC0415

        return Policy(EXPERT, AutoTokenizer.from_pretrained(resolve_model_path(tokenizer_path)))
    from flax import nnx  # noqa: PLC0415

    from agentrl_jax.policy import load_policy, restore_checkpoint_params  # noqa: PLC0415

    folder = None if run_dir is None else os.path.join(run_dir, "checkpoints")
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(f"env_properties.run_dir {run_dir!r} has no checkpoints/ folder; point it at a training "
                         f"run's train.output_dir.")
    lora_settings = None
    if run_dir is not None and os.path.isfile(os.path.join(run_dir, "operative_config.gin")):
        with gin.unlock_config():  # the evaluator's module registers a configurable; the entry point locked gin
            from agentrl_jax.evaluate import run_lora  # noqa: PLC0415 (the run's adapters, from its operative config)

        lora_settings = run_lora(run_dir)
    model, tokenizer = load_policy(model_path, lora_settings=lora_settings)
    graphdef, params, _ = nnx.split(model, nnx.Param, ...)
    if run_dir is None:
        return Policy(model_path, tokenizer, graphdef, params)
    from agentrl_jax import checkpoint as ckpt  # noqa: PLC0415

    checkpointer = ckpt.Checkpointer(folder, async_save=False)
    try:
        step = checkpointer.latest_step() if checkpoint_step is None else int(checkpoint_step)
        if step is None or step not in checkpointer.all_steps():
            raise ValueError(f"no checkpoint {'at all' if step is None else f'at step {step}'} in {folder} (saved: "
                             f"{checkpointer.all_steps()}); set env_properties.checkpoint_step to one of them.")
        params = restore_checkpoint_params(checkpointer, step, params, jax.tree.map(lambda x: x.sharding, params))
    finally:
        checkpointer.close()
    return Policy(f"{run_dir}@{step}", tokenizer, graphdef, params)


def play_chunk(domain: dm.Domain, tasks: dm.Tasks, policy: Policy, chat: ChatFormat, t_max: int,
               config: Optional[gen.GenerationConfig], key, keep_text: bool = False):
    """One batch of episodes (at most the domain's batch capacity): (Played, the StepBatch or None)."""
    task = RecordingTask(domain.host_task(tasks), chat, t_max, keep_text)
    source, plans = expert_plans(task.task)
    batch = None
    if policy.is_expert:
        if plans is None:
            raise ValueError(f"the {domain.name} domain has no expert here; set env_properties.model_path to a "
                             f"model (an HF folder or 'tiny').")
        success, length = play_expert(task, plans, chat.thinking)
    else:
        batch, stats = host_rollout(policy.graphdef, policy.params, task, config, key, policy.tokenizer,
                                    domain.max_prompt_tokens)
        success, length = np.asarray(stats.success, bool) & ~task.lost, np.asarray(stats.length, np.int32)
    plan_length = np.asarray([-1 if p is None else len(p) for p in plans] if plans is not None
                             else [-1] * task.num_episodes, np.int32)
    states = np.asarray(task.records, np.int64).reshape(-1, 1 + len(STATE_FIELDS))
    return Played(states, success, length, task.lost.copy(), plan_length, source, task.texts), batch


def measure_domain(domain: dm.Domain, policy: Policy, chat: ChatFormat, episodes: int, t_max: int, split: str,
                   config: Optional[gen.GenerationConfig], key, keep_text: bool = False
                   ) -> Tuple[Dict[str, object], Played, list]:
    """(summary, what was played, the rollout batches) for `episodes` tasks of `split` ("train" = the
    training stream's first step, else a held-out split), in chunks of the domain's batch capacity."""
    tasks = domain.train_tasks(0, episodes) if split == domain.train_split else domain.eval_tasks(episodes, split)
    capacity = domain.batch_capacity() or tasks.num_episodes
    parts, batches = [], []
    for start in range(0, tasks.num_episodes, capacity):
        part = tasks.take(range(start, min(start + capacity, tasks.num_episodes)))
        log.info("%s: episodes %d-%d of %d (%s)", domain.name, start, start + part.num_episodes - 1,
                 tasks.num_episodes, policy.name)
        played, batch = play_chunk(domain, part, policy, chat, t_max, config, jax.random.fold_in(key, start),
                                   keep_text)
        parts.append(played)
        batches.append(batch)
    played = Played.concat(parts)
    turn_limit = min(int(domain.max_turns), int(t_max))
    summary = summarise(played, t_max, turn_limit, domain.max_prompt_tokens)
    summary["policy"] = policy.name
    summary["split"] = split
    return summary, played, batches


@gin.configurable
def env_properties(domains: Sequence[str] = gin.REQUIRED, model_path: str = gin.REQUIRED,
                   output_path: str = gin.REQUIRED, episodes: int = 128, max_turns_cap: int = 50,
                   thinking: bool = True, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                   max_response_tokens: int = 512, split: str = "train", seed: int = 0,
                   tokenizer_path: Optional[str] = None, run_dir: Optional[str] = None,
                   checkpoint_step: Optional[int] = None, eval_json: Optional[str] = None) -> Dict[str, object]:
    """Measure both axes for each of `domains`; write `output_path` (JSON), print a markdown table, and
    with `eval_json` (the evaluator's JSON) write the four axis scatters next to `output_path`.

    model_path: an HF folder or "tiny" (the policy), or "expert" (tokens counted with `tokenizer_path`).
    run_dir / checkpoint_step: play a training run's checkpoint (None = its latest) on `model_path`'s model.
    episodes: trajectories per domain (the study: 128). max_turns_cap: T_max (the study: 50), the count of a
    failed trajectory and a cap on the turns played (the domain's own step limit applies too: the study's
    RL limits, Sokoban 15; raise e.g. `Sokoban.max_steps` to play longer). temperature: sampling temperature
    of the model (the study's measurement temperature is not stated). max_response_tokens: answer length,
    unless the domain sets its own (`<Domain>.max_response_tokens`). split: "train" (the training stream) or a
    held-out split name of every domain measured.
    """
    for name in domains:
        dm.domain_class(name)  # an unknown name fails before anything loads
    if int(episodes) < 1 or int(max_turns_cap) < 1:
        raise ValueError(f"env_properties.episodes and max_turns_cap must be >= 1, got {episodes}, {max_turns_cap}.")
    policy = load_measurement_policy(model_path, tokenizer_path, run_dir, checkpoint_step)
    chat = ChatFormat.from_tokenizer(policy.tokenizer, thinking=thinking)
    pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else 0
    key = jax.random.PRNGKey(seed)
    results: Dict[str, object] = {}
    for k, name in enumerate(domains):
        domain = dm.make_domain(name, chat=chat, seed=seed, num_eval_tasks=int(episodes))
        try:
            config = None if policy.is_expert else gen.GenerationConfig(
                max_new_tokens=domain.max_response_tokens or max_response_tokens, temperature=temperature,
                top_p=top_p, top_k=top_k, stop_ids=tuple(chat.stop_ids), pad_id=pad)
            results[name], _, _ = measure_domain(domain, policy, chat, int(episodes), int(max_turns_cap), split,
                                                 config, jax.random.fold_in(key, k))
        finally:
            domain.close()
    out = {"config": {"model_path": model_path, "policy": policy.name, "tokenizer_path": tokenizer_path,
                      "episodes": int(episodes),
                      "max_turns_cap": int(max_turns_cap), "thinking": bool(thinking), "temperature": temperature,
                      "split": split, "seed": int(seed)},
           "domains": results}
    parent = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(parent, exist_ok=True)
    with open(output_path, "w") as f:
        json.dump(out, f, indent=2)
    print(markdown_table(out))
    if eval_json:
        stem = os.path.splitext(output_path)[0]
        for axis in AXES:
            for target in TARGETS:
                print(axes_scatter(eval_json, output_path, f"{stem}_{axis}_vs_{target}.png", axis, target))
    return out


# ------------------------------------------------------------------------------------------ reporting
def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(properties: Dict[str, object]) -> str:
    """One row per domain: richness (observation and prompt chars / tokens per state) and planning (mean
    steps, failures = T_max; success rate; the expert's plan length)."""
    t_max = properties["config"]["max_turns_cap"]
    head = ["domain", "policy", "episodes", "states", "obs chars", "obs tokens", "prompt chars", "prompt tokens",
            f"planning steps (fail = {t_max})", "success %", "expert plan length"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in properties["domains"].items():
        plan = r.get("expert_plan_length")
        plan_text = "–" if plan is None else f"{plan:.2f} ({r['expert_plan_source']})"
        cells = [name, str(r["policy"]), str(r["episodes"]), str(r["states"]), _fmt(r["observation_chars"]),
                 _fmt(r["observation_tokens"]), _fmt(r["prompt_chars"]), _fmt(r["prompt_tokens"]),
                 _fmt(r["planning_steps"]), _fmt(100.0 * r["success_rate"]), plan_text]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scatter_points(evaluation: Dict[str, object], properties: Dict[str, object], axis: str = "richness",
                   target: str = "ranking") -> List[Tuple[str, float, float]]:
    """[(row, axis value of its training domain, its OOD ranking score or mean OOD success %)] for every
    trained row of the evaluator's matrix whose training domain was measured."""
    if axis not in AXES or target not in TARGETS:
        raise ValueError(f"axes_scatter: axis must be one of {list(AXES)} and target one of {list(TARGETS)}, got "
                         f"{axis!r}, {target!r}.")
    matrix = protocol.SuccessMatrix(**evaluation["matrix"])
    ranking = evaluation.get("ranking") or protocol.ood_ranking_scores(matrix)
    measured = properties["domains"]
    points = []
    for row in matrix.trained_rows:
        domain = matrix.train_domain[row]
        if domain not in measured:
            continue
        if target == "ranking":
            y = float(ranking[row])
        else:
            cells = protocol.ood_cells(matrix, row)
            if not cells:
                continue
            y = float(np.mean(list(cells.values())))
        points.append((row, float(measured[domain][AXES[axis][0]]), y))
    if not points:
        raise ValueError(f"no trained row of the evaluation trains on a measured domain: rows train on "
                         f"{sorted(set(v for v in matrix.train_domain.values() if v))}, measured "
                         f"{sorted(measured)}; measure those domains with env_properties.domains.")
    return points


def axes_scatter(eval_json: str, properties_json: str, out_png: str, axis: str = "richness",
                 target: str = "ranking") -> str:
    """Scatter of one axis ("richness" or "planning") against the OOD ranking score ("ranking") or the mean
    OOD success ("ood_success"), one point per training domain; returns out_png."""
    from agentrl_jax.report import axes_scatter_png  # noqa: PLC0415

    with open(eval_json) as f:
        evaluation = json.load(f)
    with open(properties_json) as f:
        properties = json.load(f)
    points = scatter_points(evaluation, properties, axis, target)
    return axes_scatter_png(points, out_png, AXES[axis][1], TARGETS[target],
                            title=f"{axis} vs {target} (policy: {properties['config'].get('policy', '?')})")


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m agentrl_jax.env_properties", description=__doc__.splitlines()[0])
    ap.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later files override)")
    ap.add_argument("--gin_bindings", action="append", default=[],
                    help="gin binding, e.g. \"env_properties.domains = ['sokoban']\"")
    ap.add_argument("--gin_search_paths", default="", help="comma-separated folders to resolve gin includes")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    from agentrl_jax.train import parse_gin  # noqa: PLC0415

    # force: an imported library has already put a WARNING-level handler on the root logger (progress is INFO).
    _pylogging.basicConfig(level=_pylogging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                           force=True)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.gin_file and not args.gin_bindings:
        raise SystemExit("error: pass --gin_file=gin/runs/env_properties.gin plus the env files of the domains "
                         "measured (see the file's header).")
    parse_gin(args.gin_file, args.gin_bindings, [p for p in args.gin_search_paths.split(",") if p])
    try:
        env_properties()
    except ValueError as e:
        if "Required bindings" in str(e) or "gin" in str(e).lower():
            raise SystemExit(f"error: {e}") from None
        raise


if __name__ == "__main__":
    main()
