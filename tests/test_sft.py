"""Expert SFT samples: every prompt's history shows exactly the answer trained on the step before."""
import jax
import numpy as np
import pytest
from transformers import AutoTokenizer

import envs.sokoban as sk
from agentrl_jax.chat import ChatFormat, parse_action_text
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.expert_data import sokoban_expert_samples
from agentrl_jax.sokoban_prompt import SokobanPrompter


@pytest.mark.parametrize("data", ["solver", "format"])
def test_history_follows_the_trained_answer(data):
    tok = AutoTokenizer.from_pretrained(ensure_tiny_folder())
    chat = ChatFormat.from_tokenizer(tok, thinking=False)
    env = sk.Sokoban(max_steps=6)
    pr = SokobanPrompter(chat, dim=env.dim, max_steps=env.max_steps, window=1, max_prompt_tokens=512)
    seed, n = 3, 16
    samples = sokoban_expert_samples(env, pr, num_levels=1, seed=seed, max_response_tokens=n, data=data)
    p = pr.max_prompt_tokens
    # Walk the same level with the answers that were trained: each next prompt must be the one that walk gives.
    state, _ = env.reset(jax.random.split(jax.random.PRNGKey(seed), 1)[0])
    prev, prev_action = state, -1
    assert len(samples["ids"]) >= 2  # at least one history to check
    for t, (ids, attn, resp) in enumerate(zip(samples["ids"], samples["attn"], samples["response_mask"])):
        prompt = ids[:p][attn[:p] == 1].tolist()
        assert prompt == pr.host_prompt_ids(state, prev, prev_action, t)[-p:], f"step {t}"
        answer = tok.decode(ids[p:][resp == 1][:-1])  # without the stop token
        word, ok = parse_action_text(answer, thinking=False)
        assert ok, answer
        action = sk.ACTION_WORDS.index(word)
        prev, prev_action = state, action
        state, _ = env.step(state, action)
    if data == "solver":
        assert bool(state.success)  # the solver's answers solve the level
