"""The study's environment axes (agentrl_jax.env_properties) on real domains: easy Sokoban with the tiny model
and its BFS expert, ALFWorld's walkthroughs through the env pool and the gin entry point, checked against
counts of the same states rebuilt independently (replayed envs, the prompt builders, decoded prompt ids)."""
import json
import os

import gin
import jax
import numpy as np
import pytest
from transformers import AutoTokenizer

import envs.sokoban as sk
from agentrl_jax import domains as dm
from agentrl_jax import env_properties as E
from agentrl_jax import protocol as P
from agentrl_jax.chat import ChatFormat
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.rollout import SokobanHostTask, _jitted_env_fns
from agentrl_jax.train import parse_gin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = os.path.join(REPO, "data", "study", "tables.json")
GIN = os.path.join(REPO, "gin")
TEMPLATE = os.path.join(GIN, "runs", "env_properties.gin")


def open_text(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_tiny_folder())


@pytest.fixture(scope="module")
def chat(tokenizer):
    return ChatFormat.from_tokenizer(tokenizer, thinking=False)


@pytest.fixture(scope="module")
def sokoban(chat):
    """The easy Sokoban domain of gin/envs/sokoban_easy.gin (6-step episodes), built once (compiles are slow)."""
    gin.clear_config()
    parse_gin([os.path.join(GIN, "envs", "sokoban_easy.gin")], [])
    try:
        yield dm.make_domain("sokoban", chat=chat, seed=0, num_eval_tasks=8)
    finally:
        gin.clear_config()


def _wrapper_chars(chat) -> int:
    """Characters the chat template adds around a one-turn user prompt."""
    return len(chat.render_text([{"role": "user", "content": ""}], add_generation_prompt=True))


def test_planning_counts_each_failure_as_t_max():
    assert E.planning_steps([True, False, True], [3, 6, 5], 50) == pytest.approx((3 + 50 + 5) / 3)
    assert E.planning_steps([False, False], [15, 2], 50) == 50.0  # failures count T_max however long they ran
    with pytest.raises(ValueError, match="at least one episode"):
        E.planning_steps([], [], 50)


def test_sokoban_expert_states_and_bfs_lengths_match_an_independent_replay(sokoban, chat, tokenizer):
    n = 8
    expert = E.Policy(E.EXPERT, tokenizer)
    summary, played, batches = E.measure_domain(sokoban, expert, chat, n, 50, "train", None, jax.random.PRNGKey(0),
                                                keep_text=True)
    assert batches == [None]
    # Replay every level with the solver's plan in a fresh host task, rebuilding each state's prompt as text.
    keys = sokoban.train_tasks(0, n).keys
    host = SokobanHostTask(sokoban.env, sokoban.prompter, keys)
    step = _jitted_env_fns(sokoban.env)[1]
    wrapper, style = _wrapper_chars(chat), sokoban.prompter.render_style
    lengths, expected = [], []
    for e, state in enumerate(host.states):
        plan = sk.solve(sk.level_from_state(state))
        lengths.append(len(plan))
        prev, prev_action = state, -1
        for t, action in enumerate(plan):
            text = sokoban.prompter.prompt_text(state, prev, prev_action, t)
            obs = sk.render_text(state, style)
            expected.append((e, len(obs), len(tokenizer(obs, add_special_tokens=False)["input_ids"]),
                             len(text) - wrapper, len(sokoban.prompter.host_prompt_ids(state, prev, prev_action, t))))
            prev, prev_action = state, action
            state, ts = step(state, action)
        assert bool(ts.success)
    # The BFS lengths are solve()'s, and every easy level is solved within its 6 steps.
    assert played.plan_length.tolist() == lengths
    assert summary["expert_plan_source"] == "bfs_optimal"
    assert summary["expert_plan_length"] == pytest.approx(np.mean(lengths))
    assert summary["expert_plan_length_histogram"] == {str(k): lengths.count(k) for k in sorted(set(lengths))}
    assert summary["success_rate"] == 1.0 and summary["planning_steps"] == pytest.approx(np.mean(lengths))
    # One state per move, each counted as the replay counts it.
    assert sorted(map(tuple, played.states.tolist())) == sorted(expected)
    assert summary["states"] == sum(lengths)
    for j, name in enumerate(E.STATE_FIELDS, start=1):
        assert summary[name] == pytest.approx(np.mean([r[j] for r in expected])), name
    # The recorded prompt ids decode to the chat-templated study prompt text (nothing lost in the count).
    ids, obs = played.texts[0]
    assert tokenizer.decode(ids).endswith(chat.generation_prompt) and obs in tokenizer.decode(ids)


def test_sokoban_tiny_policy_counts_equal_the_rollout_batch(sokoban, chat, tokenizer):
    from agentrl_jax import generate as gen

    policy = E.load_measurement_policy("tiny", None)
    config = gen.GenerationConfig(max_new_tokens=8, temperature=1.0, stop_ids=tuple(chat.stop_ids),
                                  pad_id=tokenizer.pad_token_id or 0)
    t_max = 10  # above the 6-step limit: a failure counts 10 whatever its length
    summary, played, (batch,) = E.measure_domain(sokoban, policy, chat, 8, t_max, "heldout", config,
                                                 jax.random.PRNGKey(1))
    valid = np.asarray(batch.valid)
    assert not np.asarray(batch.prompt_truncated)[valid].any() and summary["prompt_truncated_rate"] == 0.0
    # Independent count: the prompt ids the rollout stored, decoded.
    wrapper = _wrapper_chars(chat)
    tokens, chars = [], []
    for e, t in zip(*np.nonzero(valid)):
        ids = np.asarray(batch.prompt_ids)[e, t][np.asarray(batch.prompt_mask)[e, t] == 1]
        tokens.append(len(ids))
        chars.append(len(tokenizer.decode(ids)) - wrapper)
    assert summary["states"] == len(tokens) == int(valid.sum())
    assert summary["prompt_tokens"] == pytest.approx(np.mean(tokens))
    assert summary["prompt_chars"] == pytest.approx(np.mean(chars))
    # Outcomes from the rewards: 10 on the solving step.
    success = (np.asarray(batch.reward) >= 10.0).any(axis=1)
    length = valid.sum(axis=1)
    assert summary["planning_steps"] == pytest.approx(np.mean(np.where(success, length, t_max)))
    assert summary["success_rate"] == pytest.approx(success.mean())
    assert summary["turn_limit"] == 6 and summary["policy"] == "tiny"
    # The BFS lengths of the held-out levels are reported under a model policy too.
    levels = sokoban.eval_tasks(8, "heldout").keys  # 8 levels, as above: one compiled reset
    states = SokobanHostTask(sokoban.env, sokoban.prompter, levels).states
    assert played.plan_length.tolist() == [len(sk.solve(sk.level_from_state(s))) for s in states]


def _replay_alfworld(seeds, limit, tokenizer):
    """Each game's walkthrough replayed in an env of this process: per state (observation chars, prompt chars,
    prompt tokens), with the prompt built by the ALFWorld prompt builder and tokenized by the chat template."""
    from envs.alfworld import AlfWorldEnv, build_prompt

    env = AlfWorldEnv(split="valid_seen", data_path=os.path.join(REPO, "data", "alfworld"), max_steps=limit)
    rows, plans = [], []
    try:
        for seed in seeds:
            ts = env.reset(seed)
            plan = env.expert_actions()
            plans.append(len(plan))
            history = []
            for t, action in enumerate(plan[:limit]):
                text = build_prompt(ts.task, history, ts.observation, ts.admissible_actions, t, window=0,
                                    thinking=False)
                ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                    add_generation_prompt=True, enable_thinking=False)
                ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # newer transformers return a dict
                rows.append((len(ts.observation), len(text), len(ids)))
                history.append((ts.observation, action))
                ts = env.step(action)
            assert ts.success == (len(plan) <= limit)
    finally:
        env.close()
    return np.asarray(rows, np.float64), plans


def test_alfworld_expert_through_the_gin_entry_point(tmp_path, tokenizer):
    tables = json.loads(open_text(TABLES))
    matrix = P.matrix_from_table(tables["table2_success"]["V2"])
    evaluation = {"matrix": {"rows": list(matrix.rows), "cols": list(matrix.cols), "success": matrix.success,
                             "start_row": matrix.start_row, "train_domain": matrix.train_domain},
                  "ranking": P.ood_ranking_scores(matrix)}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    out = tmp_path / "props.json"
    limit = 5  # the valid_seen walkthroughs 0..2 take 4, 4 and 6 steps: two solved, one cut off
    gin.clear_config()
    try:
        E.main([f"--gin_file={TEMPLATE}", f"--gin_file={os.path.join(GIN, 'envs', 'alfworld.gin')}",
                "--gin_bindings=env_properties.domains = ['alfworld']",
                "--gin_bindings=env_properties.model_path = 'expert'",
                "--gin_bindings=env_properties.tokenizer_path = 'tiny'",
                f"--gin_bindings=env_properties.output_path = '{out}'",
                f"--gin_bindings=env_properties.eval_json = '{tmp_path / 'eval.json'}'",
                "--gin_bindings=env_properties.episodes = 3", "--gin_bindings=env_properties.thinking = False",
                "--gin_bindings=env_properties.split = 'valid_seen'",
                f"--gin_bindings=AlfWorldDomain.max_steps = {limit}",
                "--gin_bindings=AlfWorldDomain.num_workers = 1", "--gin_bindings=AlfWorldDomain.envs_per_worker = 3",
                f"--gin_bindings=AlfWorldEnv.data_path = '{os.path.join(REPO, 'data', 'alfworld')}'"])
    finally:
        gin.clear_config()
    got = json.loads(out.read_text())["domains"]["alfworld"]
    rows, plans = _replay_alfworld([0, 1, 2], limit, tokenizer)
    assert plans == [4, 4, 6]
    assert got["planning_steps"] == pytest.approx((4 + 4 + 50) / 3)
    assert got["success_rate"] == pytest.approx(2 / 3) and got["success_length"] == 4.0
    assert got["expert_plan_source"] == "walkthrough" and got["expert_plan_length_histogram"] == {"4": 2, "6": 1}
    assert got["states"] == len(rows) == 4 + 4 + 5
    assert got["observation_chars"] == pytest.approx(rows[:, 0].mean())
    assert got["prompt_chars"] == pytest.approx(rows[:, 1].mean())
    assert got["prompt_tokens"] == pytest.approx(rows[:, 2].mean())
    assert got["lost_episodes"] == 0 and got["turn_limit"] == limit
    pngs = sorted(p.name for p in tmp_path.glob("props_*.png"))
    assert pngs == sorted(f"props_{a}_vs_{t}.png" for a in E.AXES for t in E.TARGETS)


def test_scatter_points_from_the_papers_tables(tmp_path):
    tables = json.loads(open_text(TABLES))
    matrix = P.matrix_from_table(tables["table2_success"]["V2"])
    evaluation = {"matrix": {"rows": list(matrix.rows), "cols": list(matrix.cols), "success": matrix.success,
                             "start_row": matrix.start_row, "train_domain": matrix.train_domain}}  # no ranking
    axes = tables["table1_env_axes"]
    properties = {"config": {"model_path": "study"},
                  "domains": {d: {"prompt_chars": axes[d]["richness_chars"],
                                  "planning_steps": axes[d]["planning_steps"]}
                              for d in ("sokoban", "sciworld", "webshop", "alfworld")}}
    ranks = {r: int(y) for r, _, y in E.scatter_points(evaluation, properties, "richness", "ranking")}
    assert ranks == {"alfworld": 8, "webshop": 6, "sokoban": 5, "sciworld": 3}  # Table 8, V2
    planning = {r: (x, y) for r, x, y in E.scatter_points(evaluation, properties, "planning", "ood_success")}
    assert planning["sokoban"] == pytest.approx((44.0, (20.0 + 34.0 + 13.0) / 3))
    assert planning["alfworld"] == pytest.approx((42.0, (30.5 + 9.8 + 10.0) / 3))
    (tmp_path / "e.json").write_text(json.dumps(evaluation))
    (tmp_path / "p.json").write_text(json.dumps(properties))
    png = E.axes_scatter(str(tmp_path / "e.json"), str(tmp_path / "p.json"), str(tmp_path / "s.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="measure those domains"):
        E.scatter_points(evaluation, {"config": {}, "domains": {"webshopp": {}}})
    with pytest.raises(ValueError, match="axis must be one of"):
        E.scatter_points(evaluation, properties, "richnes")


def test_template_names_what_a_user_must_set():
    gin.clear_config()
    try:
        with pytest.raises(SystemExit, match="domains"):
            E.main([f"--gin_file={TEMPLATE}"])
        gin.clear_config()
        with pytest.raises(ValueError, match="tokenizer_path"):
            E.load_measurement_policy("expert", None)
    finally:
        gin.clear_config()


def test_a_training_runs_checkpoint_replaces_the_model_parameters(tmp_path):
    from agentrl_jax import checkpoint as ckpt

    base = E.load_measurement_policy("tiny")
    saved = jax.tree.map(lambda x: x * 0.5 + 1.0, base.params)  # parameters the tiny model does not have
    checkpointer = ckpt.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    checkpointer.maybe_save(3, {"params": saved, "opt_state": {"mu": saved}}, force=True)
    checkpointer.close()
    got = E.load_measurement_policy("tiny", run_dir=str(tmp_path))
    assert got.name == f"{tmp_path}@3"
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="set env_properties.checkpoint_step"):
        E.load_measurement_policy("tiny", run_dir=str(tmp_path), checkpoint_step=7)
    with pytest.raises(ValueError, match="no checkpoints/ folder"):
        E.load_measurement_policy("tiny", run_dir=str(tmp_path / "nope"))
