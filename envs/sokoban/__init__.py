"""JAX-native Sokoban: procedural solvable levels, a pure jit/vmap env, text and token renderers, the
study's prompt, a host text wrapper and an optimal BFS solver.

    import envs.sokoban as sk
    env = sk.Sokoban(dim=6, num_boxes=1, max_steps=15, reward="sparse")
    state, ts = env.reset(jax.random.PRNGKey(0))
    state, ts = env.step(state, 3)                  # 0 up, 1 down, 2 left, 3 right
    env.render_text(state, style="coords")          # the text the LLM reads
    sk.solve(sk.level_from_state(state))            # shortest plan (action ids)
    env.level_hash(key)                             # uint32[2] content hash of reset(key)'s level
"""
from envs.sokoban.env import REWARDS, Sokoban, State, TimeStep, level_from_state
from envs.sokoban.generator import SokobanGenerator, push_lower_bound
from envs.sokoban.level import Level, cell_kinds, check_level, hash64, level_hash
from envs.sokoban.prompt import ACTION_WORDS, build_prompt, current_step_text, parse_action, prompt_parts, step_intro
from envs.sokoban.render import STYLES, TokenRenderer, render_text
from envs.sokoban.solver import count_pushes, solve
from envs.sokoban.text_env import SokobanTextEnv

__all__ = [
    "ACTION_WORDS",
    "Level",
    "REWARDS",
    "STYLES",
    "Sokoban",
    "SokobanGenerator",
    "SokobanTextEnv",
    "State",
    "TimeStep",
    "TokenRenderer",
    "build_prompt",
    "cell_kinds",
    "check_level",
    "count_pushes",
    "current_step_text",
    "hash64",
    "level_from_state",
    "level_hash",
    "parse_action",
    "prompt_parts",
    "push_lower_bound",
    "render_text",
    "solve",
    "step_intro",
]
