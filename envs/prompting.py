"""Pieces shared by every environment's per-step prompt (arXiv 2601.18217, appendix B, in our own words).

Each adapter (`envs.sokoban.prompt`, `envs.alfworld`, `envs.sciworld`, later WebShop) builds its prompt from
its task, a short window of past (observation, action) pairs, the current observation and the admissible
actions, then appends the answer-format instruction below. The trainer switches thinking on/off.
"""
from __future__ import annotations

from typing import Sequence, Tuple

ANSWER_FORMAT_THINKING = (
    "You should first reason step-by-step about the current situation. This reasoning process MUST be "
    "enclosed within <think> </think> tags. Once you've finished your reasoning, you should choose an "
    "admissible action for current step and present it within <action> </action> tags."
)
ANSWER_FORMAT_NO_THINKING = (
    "Choose an admissible action for the current step and present it within <action> </action> tags, "
    "with no other text."
)


def answer_format(thinking: bool) -> str:
    return ANSWER_FORMAT_THINKING if thinking else ANSWER_FORMAT_NO_THINKING


def history_block(history: Sequence[Tuple[str, str]], step: int, window: int, obs_name: str = "Observation") -> str:
    """The "Prior to this step ..." paragraph: the last `window` (observation, action) pairs before `step`.

    `history` holds every past (observation, action) pair of the episode in order; `step` is the number of
    steps already taken (len(history) normally). Returns "" at the first step or when window == 0.
    """
    if step == 0 or window <= 0 or not history:
        return ""
    recent = list(history)[-window:]
    first = step - len(recent) + 1
    lines = [
        f"Prior to this step, you have already taken {step} step(s). Below are the most recent "
        f"{len(recent)} observations and the corresponding actions you took:"
    ]
    for i, (obs, act) in enumerate(recent):
        k = first + i
        lines.append(f"[{obs_name} {k}: '{obs}', Action {k}: '{act}']")
    return "\n".join(lines)


def format_admissible(actions: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{a}"' for a in actions) + "]"
