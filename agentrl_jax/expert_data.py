"""Expert data for SFT: state->action records per domain, in exactly the prompt layout RL uses.

For the JAX Sokoban, expert episodes come from the optimal BFS solver; every step becomes one
(prompt ids, answer ids) sample built with the same `SokobanPrompter` pieces the rollout uses, so the
warm-up trains on exactly the token layout RL will see.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import jax
import numpy as np

import envs.sokoban as sk
from agentrl_jax import sft_data
from agentrl_jax.sokoban_prompt import SokobanPrompter


def expert_answer(action: int, thinking: bool, state=None) -> str:
    """The answer text for an expert action; with thinking, a short rationale naming the move."""
    word = sk.ACTION_WORDS[action]
    if not thinking:
        return f"<action>{word}</action>"
    player = "" if state is None else f"The player is at ({int(state.player[0])}, {int(state.player[1])}). "
    return f"<think>{player}Moving {word} brings the box closer to the goal.</think>\n<action>{word}</action>"


SFT_DATA = ("solver", "format")


def sokoban_expert_samples(env: sk.Sokoban, prompter: SokobanPrompter, num_levels: int, seed: int,
                           max_response_tokens: int, data: str = "solver", keys=None) -> Dict[str, np.ndarray]:
    """Packed SFT samples (ids, attn, response_mask) of `sokoban_expert_records`."""
    records = sokoban_expert_records(env, prompter, num_levels, seed, data, keys)
    return sft_data.pack(records, prompter.max_prompt_tokens, max_response_tokens, prompter.pad_id)


def sokoban_expert_records(env: sk.Sokoban, prompter: SokobanPrompter, num_levels: int, seed: int,
                           data: str = "solver", keys=None) -> List[dict]:
    """SFT records (`sft_data.record`) from solver solutions of `num_levels` generated levels (from `keys`
    [num_levels] when given, else from `seed`); unsolvable levels are left out.

    data="solver": the optimal actions (expert warm-up). data="format": the same levels walked with uniformly
    random moves for as many steps as the solution (or until the level ends), each answered with its move,
    which teaches only the answer format (a clean start for measuring what RL itself learns); the history
    in every next prompt shows the move that was trained and the board it produced.
    """
    if data not in SFT_DATA:
        raise ValueError(f"unknown SFT data {data!r}; use one of {SFT_DATA}")
    rng = np.random.default_rng(seed)
    if keys is None:  # level keys (e.g. filtered against held-out levels by the caller)
        keys = jax.random.split(jax.random.PRNGKey(seed), num_levels)
    states, _ = jax.jit(jax.vmap(env.reset))(keys)
    step = jax.jit(env.step)
    stop = prompter.chat.stop_ids[0]
    records: List[dict] = []
    for i in range(num_levels):
        state = jax.tree.map(lambda x: x[i], states)
        plan = sk.solve(sk.level_from_state(state))
        if not plan:
            continue
        prev, prev_action = state, -1
        for t, action in enumerate(plan[: env.max_steps]):
            if data == "format":  # a random move, and the episode goes on from where it leads
                action = int(rng.integers(len(sk.ACTION_WORDS)))
            prompt = prompter.host_prompt_ids(state, prev, prev_action, t, augment=False)  # expert data: plain
            text = expert_answer(action, prompter.thinking, state)
            records.append(sft_data.record("sokoban", i, t, prompt, prompter.encode(text) + [stop], f"sokoban:{data}",
                                           answer_text=text))
            # The next prompt's history shows exactly the trained answer and the board it led to.
            prev, prev_action = state, action
            state, ts = step(state, action)
            if bool(ts.done):
                break
    return records
