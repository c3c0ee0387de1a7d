"""Expert data for SFT: state->action records per domain, in exactly the prompt layout RL uses.

Every record is one `sft_data.record` (prompt ids as the rollout builds them for that turn, cut from the left
to the domain's prompt buffer as the policy reads them; answer ids with the stop id appended; both texts).

* Sokoban: optimal BFS-solver plans, each step's prompt from the same `SokobanPrompter` pieces the rollout
  uses (`sokoban_expert_records`); only levels the solver solves are kept.
* Pooled text domains (ALFWorld, ScienceWorld, WebShop): training-split tasks played by the env's own expert
  (`expert_actions()`: ALFWorld's walkthrough, ScienceWorld's gold path, WebShop's scripted shopper) through
  a real `rollout.PoolTask`, answered with the expert's action, so every prompt (its history included) is
  the one RL would build after exactly these answers (`pool_expert_records`). Only episodes the env reports
  as won are kept (TextStep.success: ALFWorld `won`, ScienceWorld completed with a positive score, WebShop a
  purchase scoring exactly 1).
* `rollout_records`: a policy's own episodes, unfiltered (what the study mixed into SFT data).

The thinking text of an expert answer is the gin choice `expert_rationale.kind`: "template" (a short, true
rationale built from the state, per domain) or "none" (an empty think block when thinking is on, since the
answer parser requires the tags then; no think block when it is off).

CLI (one JSONL file, `sft_data.write_jsonl`):
    python -m agentrl_jax.expert_data --gin_file=gin/envs/sciworld.gin --gin_file=gin/models/tiny.gin \\
        --domain=sciworld --source=expert --num_tasks=64 --seed=0 --out=data/sft/sciworld_expert.jsonl
    python -m agentrl_jax.expert_data --gin_file=... --domain=alfworld --source=rollout --run_dir=RUN \\
        [--step=K | latest] --num_tasks=64 --seed=0 --out=PATH       (or --model_path=M for a base model)
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m agentrl_jax.expert_data`: run the package module's CLI, so that gin
    # knows one `expert_rationale` (a second copy under `__main__` would make its bindings ambiguous).
    from agentrl_jax.expert_data import main as _main

    _main()
    raise SystemExit(0)

import argparse
import logging as _pylogging
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import gin
import jax
import numpy as np

import envs.sokoban as sk
from envs.sokoban.level import MOVES
from agentrl_jax import sft_data
from agentrl_jax.chat import parse_action_text
from agentrl_jax.rollout import _jitted_env_fns
from agentrl_jax.sokoban_prompt import SokobanPrompter

log = _pylogging.getLogger("agentrl_jax.expert_data")

RATIONALES = ("template", "none")
SFT_DATA = ("solver", "format")  # Sokoban's choices ("expert" = "solver")
EXPERT_DATA = ("expert", "solver")  # the text domains' one choice (the env's expert), "solver" an alias


# ------------------------------------------------------------------------------------------- answers
@gin.configurable
def expert_rationale(kind: str = "template") -> str:
    """The thinking text of expert answers (gin: `expert_rationale.kind`): "template" = a short rationale
    built from the state, true by construction; "none" = no reasoning (an empty think block with thinking on)."""
    if kind not in RATIONALES:
        raise ValueError(f"expert_rationale.kind = {kind!r}; use one of {RATIONALES}.")
    return kind


_TAGS = re.compile(r"</?\s*(?:think|action)\s*>", re.IGNORECASE)


def answer_text(action: str, thinking: bool, reason: str = "", rationale: Optional[str] = None) -> str:
    """The expert's answer in the study's format, parsing to `action` under this thinking setting
    (`chat.parse_action_text`): with thinking, `<think>reason</think>` (empty for rationale "none") first."""
    rationale = expert_rationale() if rationale is None else rationale
    if rationale not in RATIONALES:
        raise ValueError(f"rationale {rationale!r}; use one of {RATIONALES} (gin: expert_rationale.kind).")
    action = " ".join(str(action).split())
    if not thinking:
        text = f"<action>{action}</action>"
    else:
        # Env text quoted in the reason (titles, observations) must not open or close a block.
        think = _TAGS.sub("", " ".join(reason.split())) if rationale == "template" else ""
        text = f"<think>{think}</think>\n<action>{action}</action>"
    parsed, ok = parse_action_text(text, thinking)
    if not ok or parsed != action:
        raise ValueError(f"the expert action {action!r} does not survive the answer format (parsed {parsed!r}); "
                         "an action must be non-empty text without <think>/<action> tags.")
    return text


def _listing(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ------------------------------------------------------------------------------------------- Sokoban
def sokoban_reason(state, action: int, optimal: bool = True) -> str:
    """What the move does on this board (a push, a walk, a blocked move), and, for solver moves, that it is
    the next move of a shortest solution (the BFS solver's plans are optimal)."""
    word = sk.ACTION_WORDS[action]
    player = np.asarray(state.player).astype(int)
    walls, boxes, goals = (np.asarray(x, bool) for x in (state.walls, state.boxes, state.targets))
    d = MOVES[action]
    n1, n2 = player + d, player + 2 * d
    at = lambda c: f"({int(c[0])}, {int(c[1])})"  # noqa: E731
    dim = walls.shape[0]
    inside = lambda c: 0 <= c[0] < dim and 0 <= c[1] < dim  # noqa: E731
    text = f"The player is at {at(player)}. "
    if walls[tuple(n1)]:
        text += f"Moving {word} runs into the wall at {at(n1)}, so nothing moves."
    elif boxes[tuple(n1)]:
        if not inside(n2) or walls[tuple(n2)] or boxes[tuple(n2)]:
            text += f"Moving {word} pushes against the box at {at(n1)}, which is blocked, so nothing moves."
        else:
            onto = ", onto the goal" if goals[tuple(n2)] else ""
            text += f"Moving {word} pushes the box at {at(n1)} to {at(n2)}{onto}."
    else:
        text += f"Moving {word} takes the player to {at(n1)}."
    if optimal:
        text += " It is the next move of a shortest solution."
    return text


def expert_answer(action: int, thinking: bool, state=None, rationale: Optional[str] = None,
                  optimal: bool = True) -> str:
    """The answer text for a Sokoban action; with thinking, the move's rationale (`sokoban_reason`)."""
    reason = "" if state is None else sokoban_reason(state, action, optimal)
    return answer_text(sk.ACTION_WORDS[action], thinking, reason, rationale)


def sokoban_expert_records(env: sk.Sokoban, prompter: SokobanPrompter, num_levels: int, seed: int,
                           data: str = "solver", keys=None, source: Optional[str] = None) -> List[dict]:
    """One record per step of the solver's solutions of `num_levels` generated levels (from `keys`
    [num_levels] when given, else from `seed`); unsolvable levels are skipped.

    data="solver" (or "expert"): the optimal actions (expert warm-up). data="format": the same levels walked with
    uniformly random moves for as many steps as the solution (or until the level ends), each answered with
    its move, which teaches only the answer format (a clean start for measuring what RL itself learns); the
    history in every next prompt shows the move that was trained and the board it produced.
    """
    data = "solver" if data == "expert" else data
    if data not in SFT_DATA:
        raise ValueError(f"unknown Sokoban SFT data {data!r}; use one of {SFT_DATA} (or 'expert' = 'solver').")
    rng = np.random.default_rng(seed)
    if keys is None:  # level keys (e.g. filtered against held-out levels by the caller)
        keys = jax.random.split(jax.random.PRNGKey(seed), num_levels)
    reset, step = _jitted_env_fns(env)  # the host rollout's compiled programs, compiled once per env
    states = reset(keys)
    stop = prompter.chat.stop_ids[0]
    tok = prompter.chat.tokenizer
    rationale = expert_rationale()
    source = source or f"sokoban:{data}"
    records: List[dict] = []
    for i in range(int(keys.shape[0])):
        state = jax.tree.map(lambda x: x[i], states)
        plan = sk.solve(sk.level_from_state(state))
        if not plan:
            continue
        prev, prev_action = state, -1
        for t, action in enumerate(plan[: env.max_steps]):
            if data == "format":  # a random move, and the episode goes on from where it leads
                action = int(rng.integers(len(sk.ACTION_WORDS)))
            prompt = prompter.host_prompt_ids(state, prev, prev_action, t, augment=False)  # expert data: plain
            prompt = prompt[-prompter.max_prompt_tokens:]
            text = expert_answer(action, prompter.thinking, state, rationale, optimal=data == "solver")
            answer = prompter.encode(text) + [stop]
            records.append(sft_data.record("sokoban", i, t, prompt, answer, source, prompt_text=tok.decode(prompt),
                                           answer_text=text))
            # The next prompt's history shows exactly the trained answer and the board it led to.
            prev, prev_action = state, action
            state, ts = step(state, action)
            if bool(ts.done):
                break
    return records


def sokoban_expert_samples(env: sk.Sokoban, prompter: SokobanPrompter, num_levels: int, seed: int,
                           max_response_tokens: int, data: str = "solver", keys=None) -> Dict[str, np.ndarray]:
    """Packed SFT samples (ids, attn, response_mask) of `sokoban_expert_records`."""
    records = sokoban_expert_records(env, prompter, num_levels, seed, data, keys)
    return sft_data.pack(records, prompter.max_prompt_tokens, max_response_tokens, prompter.pad_id)


# ------------------------------------------------------------------------------------------- text envs
_ENTITY = re.compile(r"\b([a-z]+ \d+)\b")
_ALFWORLD_COMMANDS = (  # (pattern, what the command does), roles by ALFWorld's command grammar
    (r"go to (?P<r>.+)", "I go to {r}."),
    (r"take (?P<o>.+) from (?P<r>.+)", "I take {o} from {r}."),
    (r"(?:put|move) (?P<o>.+?) (?:in/on|in|on|to) (?P<r>.+)", "I put {o} in/on {r}."),
    (r"open (?P<r>.+)", "I open {r}."),
    (r"close (?P<r>.+)", "I close {r}."),
    (r"(?P<v>heat|cool|clean|slice) (?P<o>.+) with (?P<r>.+)", "I {v} {o} with {r}."),
    (r"(?:use|toggle) (?P<o>.+)", "I use {o}."),
    (r"examine (?P<o>.+)", "I examine {o}."),
)


def alfworld_reason(task: str, observation: str, action: str) -> str:
    """The goal, what the command does and to which object / receptacle, which of them are the kinds of thing
    the goal names, and which the current observation mentions."""
    task = task.strip().rstrip(".")
    parts = [f"My task is to {task}." if task else ""]
    for pattern, sentence in _ALFWORLD_COMMANDS:
        m = re.fullmatch(pattern, action)
        if m:
            parts.append(sentence.format(**m.groupdict()))
            break
    else:
        parts.append(f"I {action}.")
    entities = _ENTITY.findall(action)
    goal_words = set(re.findall(r"[a-z]+", task.lower()))
    named = [e for e in entities if e.rsplit(" ", 1)[0] in goal_words]
    if named:
        parts.append(f"{_listing(named)} {'is' if len(named) == 1 else 'are'} of a kind the task names.")
    seen = [e for e in entities if re.search(rf"\b{re.escape(e)}\b", observation)]
    if seen:
        parts.append(f"The current observation mentions {_listing(seen)}.")
    return " ".join(p for p in parts if p)


def _template_objects(action: str, templates: Sequence[str]) -> Optional[tuple]:
    """(template, its objects) of the most specific template the action fits ("move OBJ to OBJ"), or None."""
    for tpl in sorted(templates, key=lambda s: -len(s.replace("OBJ", ""))):
        pattern = "".join("(.+?)" if w == "OBJ" else re.escape(w) for w in re.split(r"(OBJ)", tpl))
        m = re.fullmatch(pattern, action)
        if m:
            return tpl, m.groups()
    return None


SCIWORLD_ALIASES = ("go to OBJ",)


def sciworld_reason(task: str, observation: str, action: str, templates: Sequence[str]) -> str:
    """The task's first sentence, the template the action fills and its objects, the objects the task names;
    a number answering an ambiguous request names the option it picks."""
    from envs.sciworld import DEFAULT_TEMPLATES, _ambiguous_options  # noqa: PLC0415

    first = re.split(r"(?<=\.)\s", task.strip(), maxsplit=1)[0]
    first = re.sub(r"^your task is to\s+", "", first, flags=re.IGNORECASE)
    parts = [f"My task is to {first[:1].lower() + first[1:]}"]
    options = _ambiguous_options(observation)
    if options is not None and re.fullmatch(r"\d+", action) and int(action) < len(options):
        parts.append(f"My last request was ambiguous; option {action} is {options[int(action)]}.")
        return " ".join(parts)
    # "go to X" is the simulator's spelling of the template "go OBJ" with X
    found = _template_objects(action, [*(templates or DEFAULT_TEMPLATES), *SCIWORLD_ALIASES])
    if found is None or not found[1]:
        parts.append(f"Next I {action}.")
        return " ".join(parts)
    objects = found[1]
    parts.append(f"Next I {action}, acting on {_listing(objects)}.")
    named = [o for o in objects if o.lower() in task.lower()]
    if named:
        parts.append(f"The task names {_listing(named)}.")
    return " ".join(parts)


def webshop_reason(goal: dict, product: Optional[dict], price: Optional[float], observation: str,
                   action: str) -> str:
    """What the instruction asks for that the action serves: the search words, the target product and the
    instruction's attributes it shows, the option value asked for, the purchase."""
    from envs.webshop.data import NO_PRICE_LIMIT  # noqa: PLC0415
    from envs.webshop.env import clickable_text, expert_query, parse_action  # noqa: PLC0415

    kind, arg = parse_action(action) or ("", "")
    options = goal["goal_options"]
    wanted = list(options.items()) if isinstance(options, dict) else [(None, v) for v in options if v]
    if kind == "search":
        if arg == expert_query(goal):
            return f"I search with the instruction's own description of the product: {arg}."
        return f"I search for the product by its title: {arg}."
    if arg == "next >":
        page = re.search(r"Page (\d+)", observation)
        where = f"page {page.group(1)}" if page else "this page"
        return f"The product the instruction describes is not on {where} of the results, so I go to the next page."
    if arg == "buy now":
        if wanted:
            chosen = _listing([f"{n}: {v}" if n else v for n, v in wanted])
            return f"The product is open with the options the instruction asks for selected ({chosen}), so I buy it."
        return "The product is open and the instruction asks for no options, so I buy it."
    if product is not None and arg == product["asin"].lower():
        text = " ".join([product["Title"], *product["BulletPoints"], product["Description"]]).lower()
        found = [a for a in goal["attributes"] if a.lower() in text]
        out = f"{product['asin']} is \"{product['Title']}\", the product the instruction describes"
        out += f"; it shows the asked-for {_listing(found)}." if found else "."
        if price is not None and goal["price_upper"] != NO_PRICE_LIMIT and price <= goal["price_upper"]:
            out += f" Its price {product['Price']} is under {goal['price_upper']:.2f} dollars."
        return out
    for name, value in wanted:
        if clickable_text(value) == arg:
            return f"The instruction asks for {name}: {value}, so I select it." if name else \
                f"The instruction asks for {value}, so I select it."
    return f"I {kind} {arg}."


def pool_expert_records(task, plans: Sequence[Optional[Sequence[str]]], chat, domain: str,
                        task_ids: Sequence[Any], reason: Callable[[Any, str], str], max_prompt_tokens: int,
                        source: str = "expert") -> tuple[List[dict], np.ndarray]:
    """Play each episode's expert plan through `task` (a `rollout.PoolTask`), answering every turn with the
    plan's action; (records of the episodes the env reports as won, won [E]).

    The prompt of a turn is `task.prompt_ids(i)` cut to the last `max_prompt_tokens` (what `host_rollout`
    feeds the policy); the answer goes back through `task.step` as decoded text, as in RL, so the next prompt's
    history holds exactly the trained answer. reason(step as the policy reads it, action) -> thinking text.
    An episode whose plan is missing, runs out, hits an unparseable answer or is lost is dropped.
    """
    tok = chat.tokenizer
    stop = chat.stop_ids[0]
    rationale = expert_rationale()
    e = task.num_episodes
    won = np.zeros(e, bool)
    failed = np.array([not p for p in plans], bool) | np.asarray(task.lost, bool)
    done = failed.copy()
    per_episode: List[List[dict]] = [[] for _ in range(e)]
    for t in range(task.max_turns):
        active = [i for i in range(e) if not done[i]]
        if not active:
            break
        answers = []
        for i in active:
            prompt = task.prompt_ids(i)[-max_prompt_tokens:]
            action = plans[i][t]
            text = answer_text(action, chat.thinking, reason(task.shown[i], action), rationale)
            ids = chat.encode_content(text) + [stop]
            per_episode[i].append(sft_data.record(domain, task_ids[i], t, prompt, ids, source,
                                                  prompt_text=tok.decode(prompt), answer_text=text))
            answers.append(tok.decode(ids[:-1]))  # what host_rollout hands the task: the ids without the stop
        results = task.step(active, answers, [True] * len(active))
        for i, (_reward, ep_done, ep_success, invalid, _action) in zip(active, results):
            won[i] |= bool(ep_success)
            failed[i] |= bool(invalid) or bool(task.lost[i])
            done[i] = ep_done or failed[i] or won[i] or t + 1 >= len(plans[i])
    won &= ~failed
    return [r for i in range(e) if won[i] for r in per_episode[i]], won


def text_expert_records(domain, num_tasks: int, seed: int, data: str = "expert") -> List[dict]:
    """A pooled text domain's expert records on `domain.sft_tasks(num_tasks, seed)` (training-split tasks),
    played in batches of the pool's capacity; only won episodes are kept (how many is logged)."""
    from envs.pool import EnvFailure  # noqa: PLC0415

    if data not in EXPERT_DATA:
        raise ValueError(f"unknown {domain.name} SFT data {data!r}; the text domains have {EXPERT_DATA} (the env's "
                         f"expert; 'solver' is the same).")
    tasks = domain.sft_tasks(num_tasks, seed)
    capacity = domain.batch_capacity() or max(tasks.num_episodes, 1)
    records: List[dict] = []
    kept = 0
    for start in range(0, tasks.num_episodes, capacity):
        part = tasks.take(range(start, min(start + capacity, tasks.num_episodes)))
        task = domain.host_task(part, key=None)  # expert data: plain prompts, no distractors
        got = task.pool.call(task.env_ids, "expert_actions")
        plans = [None if isinstance(p, EnvFailure) or not p else [str(a) for a in p] for p in got]
        recs, won = pool_expert_records(task, plans, domain.chat, domain.name, [int(s) for s in part.seeds],
                                        domain.expert_reason, domain.max_prompt_tokens, source=f"{domain.name}:expert")
        records += recs
        kept += int(won.sum())
    log.info("%s expert: %d of %d episodes won (kept), %d records", domain.name, kept, tasks.num_episodes,
             len(records))
    return records


# ------------------------------------------------------------------------------------------- rollouts
def step_batch_records(batch, task_ids: Sequence[Any], tokenizer, domain: str, source: str,
                       keep: Optional[Sequence[bool]] = None) -> List[dict]:
    """Records of every played turn of a window-mode `StepBatch` (of the episodes `keep` marks, default all):
    the prompt without its padding, the generated ids (the stop id included where generation stopped on it),
    and their texts."""
    prompt_ids, prompt_mask = np.asarray(batch.prompt_ids), np.asarray(batch.prompt_mask)
    resp_ids, resp_mask = np.asarray(batch.response_ids), np.asarray(batch.response_mask)
    valid, cut = np.asarray(batch.valid, bool), np.asarray(batch.response_truncated, bool)
    keep = np.ones(valid.shape[0], bool) if keep is None else np.asarray(keep, bool)
    out = []
    for e in np.flatnonzero(keep):
        for t in np.flatnonzero(valid[e]):
            prompt = prompt_ids[e, t][prompt_mask[e, t] == 1]
            answer = resp_ids[e, t][resp_mask[e, t] == 1]
            text = tokenizer.decode(answer if cut[e, t] else answer[:-1])
            out.append(sft_data.record(domain, task_ids[e], int(t), prompt, answer, source,
                                       prompt_text=tokenizer.decode(prompt), answer_text=text))
    return out


def rollout_records(domain, graphdef, params, tokenizer, num_episodes: int, seed: int, settings,
                    config=None, source: str = "rollout") -> List[dict]:
    """The policy's own episodes on `domain.sft_tasks(num_episodes, seed)`, every turn a record, unfiltered
    (failed episodes and invalid answers included; only episodes lost to the env machinery, a worker crash or a
    timeout, are left out, as the learner leaves them out). Sampling key PRNGKey(seed); config: the generation settings
    (None = temperature 1.0, RL's sampling, at the domain's answer length or 512 tokens). Window mode only
    (a record is one state->action sample)."""
    from agentrl_jax import generate as gen  # noqa: PLC0415

    if settings.prompt_mode != "window":
        raise ValueError("rollout records are window samples (one prompt per turn): use prompt_mode 'window'.")
    if config is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        config = gen.GenerationConfig(max_new_tokens=int(domain.max_response_tokens or 512), temperature=1.0,
                                      stop_ids=tuple(domain.chat.stop_ids), pad_id=pad)
    tasks = domain.sft_tasks(num_episodes, seed)
    parts = domain.rollout_chunks(graphdef, params, tasks, jax.random.PRNGKey(seed), config, tokenizer, settings)
    records, offset = [], 0
    for batch, stats in parts:
        n = int(np.asarray(stats.success).shape[0])
        ids = [int(s) for s in tasks.seeds[offset: offset + n]]
        lost = np.asarray(stats.lost, bool)
        records += step_batch_records(jax.device_get(batch), ids, tokenizer, domain.name, source, keep=~lost)
        offset += n
    return records


def load_rollout_policy(run_dir: Optional[str] = None, step: Optional[int] = None,
                        model_path: Optional[str] = None, thinking: bool = True, mesh=None):
    """(graphdef, params, tokenizer, thinking, source) of a training run's checkpoint (`step`, default the
    latest; the run's model, thinking setting and LoRA adapters from its operative config) or of a base model
    folder (`model_path`, with `thinking`). The evaluator's rows and policy cache do the loading."""
    with gin.unlock_config():  # the evaluator's module registers a gin configurable; main() has locked gin
        from agentrl_jax import evaluate as ev  # noqa: PLC0415
    from agentrl_jax import sharding  # noqa: PLC0415

    if (run_dir is None) == (model_path is None):
        raise ValueError("pass either --run_dir (a training run's train.output_dir) or --model_path (a base model "
                         "folder or 'tiny'), not both and not neither.")
    if run_dir is None and step is not None:
        raise ValueError("--step names a checkpoint of --run_dir; a base model (--model_path) has none.")
    steps = "latest" if step is None else [int(step)]
    rows = ev.build_rows(model_path, {"run": run_dir} if run_dir else {}, steps, 1, bool(thinking))
    row = rows[0]
    graphdef, params, tokenizer = ev.PolicyCache(mesh or sharding.make_mesh()).params(row, row.steps[0])
    source = f"rollout:{run_dir}@{row.steps[0]}" if run_dir else f"rollout:{model_path}"
    return graphdef, params, tokenizer, row.thinking, source


# ------------------------------------------------------------------------------------------------- CLI
def _gin_value(name: str, default: Any) -> Any:
    """A binding's value after parsing (macros resolved), else `default`."""
    try:
        value = gin.query_parameter(name)
    except ValueError:
        return default
    while isinstance(value, gin.config.ConfigurableReference) and value.evaluate:  # a macro (%MODEL_PATH)
        value = value.scoped_configurable_fn()
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m agentrl_jax.expert_data", description=__doc__.splitlines()[0])
    ap.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; domain, model, ...)")
    ap.add_argument("--gin_bindings", action="append", default=[], help="gin binding (repeatable)")
    ap.add_argument("--gin_search_paths", default="", help="comma-separated folders to resolve gin includes")
    ap.add_argument("--domain", required=True, help="registered domain name (sokoban, alfworld, sciworld, webshop)")
    ap.add_argument("--source", choices=("expert", "rollout"), default="expert")
    ap.add_argument("--num_tasks", type=int, required=True, help="tasks (episodes) to play")
    ap.add_argument("--seed", type=int, default=0, help="seed of the training-split tasks (and rollout sampling)")
    ap.add_argument("--out", required=True, help="the JSONL file to write")
    ap.add_argument("--data", default="expert", help="expert data choice (Sokoban: solver | format)")
    ap.add_argument("--run_dir", default=None, help="rollout source: a training run folder")
    ap.add_argument("--step", default=None, help="the run's checkpoint step (default: latest)")
    ap.add_argument("--model_path", default=None, help="expert: the tokenizer's model; rollout: a base model")
    ap.add_argument("--temperature", type=float, default=None, help="rollout sampling (default train.temperature)")
    return ap.parse_args(argv)


def write_records(args: argparse.Namespace) -> List[dict]:
    """Build the records the parsed CLI arguments ask for and write them to `args.out` (gin already parsed)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    from agentrl_jax import domains as registry  # noqa: PLC0415
    from agentrl_jax import generate as gen  # noqa: PLC0415
    from agentrl_jax.chat import ChatFormat  # noqa: PLC0415
    from agentrl_jax.policy import resolve_model_path  # noqa: PLC0415

    if args.num_tasks < 1:
        raise ValueError(f"--num_tasks must be >= 1, got {args.num_tasks}.")
    registry.domain_class(args.domain)
    step = None if args.step in (None, "latest") else int(args.step)
    # The run's own layer (train.*), else the macros the model and thinking files set (MODEL_PATH, THINKING).
    thinking = bool(_gin_value("train.thinking", _gin_value("%THINKING", True)))
    if args.source == "rollout":
        graphdef, params, tokenizer, thinking, source = load_rollout_policy(args.run_dir, step, args.model_path,
                                                                            thinking)
    else:
        if args.run_dir is not None:
            raise ValueError("--run_dir is for --source=rollout; expert data needs only a tokenizer (--model_path "
                             "or the gin file's train.model_path).")
        model_path = args.model_path or _gin_value("train.model_path", None) or _gin_value("%MODEL_PATH", None)
        if not model_path:
            raise ValueError("expert data needs the policy's tokenizer: pass --model_path or a gin file that binds "
                             "MODEL_PATH or train.model_path (e.g. gin/models/tiny.gin).")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_path))
    chat = ChatFormat.from_tokenizer(tokenizer, thinking=thinking)
    # The run's seed and held-out size: Sokoban's expert levels avoid exactly the run's held-out levels.
    domain = registry.make_domain(args.domain, chat=chat, seed=int(_gin_value("train.seed", 0)),
                                  num_eval_tasks=int(_gin_value("train.eval_episodes", 64)))
    try:
        if args.source == "expert":
            records = domain.expert_records(args.num_tasks, args.seed, args.data)
        else:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            n = domain.max_response_tokens or int(_gin_value("train.max_response_tokens", 512))
            temperature = args.temperature if args.temperature is not None else float(
                _gin_value("train.temperature", 1.0))
            config = gen.GenerationConfig(max_new_tokens=int(n), temperature=temperature,
                                          stop_ids=tuple(chat.stop_ids), pad_id=pad)
            mode = str(_gin_value("train.rollout_mode", "host"))
            settings = registry.RolloutSettings(mode=mode, prompt_mode="window",
                                                invalid_penalty=float(_gin_value("train.invalid_penalty", -0.1)))
            records = rollout_records(domain, graphdef, params, tokenizer, args.num_tasks, args.seed, settings,
                                      config, source)
    finally:
        domain.close()
    sft_data.write_jsonl(args.out, records, sft_data.data_meta(chat, tokenizer))  # sft checks thinking against it
    return records


def main(argv: Optional[Sequence[str]] = None) -> None:
    from agentrl_jax.train import parse_gin  # noqa: PLC0415 (the same gin handling as training)

    _pylogging.basicConfig(level=_pylogging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    parse_gin(args.gin_file, args.gin_bindings, [p for p in args.gin_search_paths.split(",") if p])
    try:
        records = write_records(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {len(records)} records to {args.out}")

