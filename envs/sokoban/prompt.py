"""The per-step Sokoban prompt (the study's sections, in our own words) and the action words.

How the pieces concatenate, for every step:

    build_prompt(obs, history, step, dim, window, thinking)
        == prefix + current_step_text(obs, history, step, window) + suffix
    where (prefix, suffix) = prompt_parts(dim, thinking)

- `prefix` holds the fixed sections (# Objective ... # Observation Format) and ends with "# Current Step\\n".
- `current_step_text` is the history block (`envs.prompting.history_block`, absent at step 0 or window 0)
  followed by "\\n" when present, then `step_intro(step) + obs`.
- `suffix` starts with "\\n" and holds the admissible actions line and the answer-format instruction.
At step 0 (the on-device path with history window 0) the middle is just `step_intro(0) + obs`, so a trainer
can pre-tokenize prefix, `step_intro(0)` and suffix once and splice the rendered observation ids between.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from envs.prompting import answer_format, format_admissible, history_block

ACTION_WORDS = ("up", "down", "left", "right")
_WORD_TO_ID = {w: i for i, w in enumerate(ACTION_WORDS)}


def parse_action(text: str) -> int:
    """Action id 0..3 for "up"/"down"/"left"/"right" (case-insensitive, surrounding whitespace ignored),
    -1 for anything else."""
    if not isinstance(text, str):
        return -1
    return _WORD_TO_ID.get(text.strip().lower(), -1)


def prompt_parts(dim: int, thinking: bool = True) -> tuple[str, str]:
    """(prefix, suffix): the fixed text before and after the current-step paragraph."""
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer; got {dim!r}.")
    last = dim - 1
    prefix = (
        "You are playing Sokoban, a puzzle about pushing boxes in a warehouse.\n\n"
        "# Objective\n"
        "Move the player so that every box ends up on a goal cell. The puzzle is solved as soon as all boxes "
        "sit on goals.\n\n"
        "# Environment Setup\n"
        f"The room is a {dim}×{dim} grid. A cell is named by its position (row, column); (0, 0) is the top-left "
        f"corner and ({last}, {last}) the bottom-right one. Rows count downward, columns count to the right. "
        "The room is enclosed by walls.\n\n"
        "# Rules\n"
        "1. Each step moves the player one cell up, down, left or right.\n"
        "2. The player cannot walk through walls and cannot move onto a cell holding a box unless it pushes it.\n"
        "3. Walking into a box pushes it one cell further in the same direction, but only when that next cell "
        "is free (no wall and no other box). You can never pull a box, and you can push only one box at a time.\n"
        "4. Example: the player is at (3, 1) and a box is at (3, 2). Moving right pushes the box to (3, 3) and "
        "the player ends at (3, 2). Moving up instead would just take the player to (2, 1) and leave the box "
        "where it is.\n"
        "5. A move that is blocked leaves everything as it was but still uses up a step.\n"
        "6. Avoid deadlocks: a box pushed into a corner, or against a wall along which there is no goal, can no "
        "longer reach a goal. Plan pushes ahead so that every box keeps a path to a goal.\n\n"
        "# Observation Format\n"
        "The observation lists the occupied cells row by row, left to right, e.g. \"Wall at (0, 0)\", "
        "\"Goal at (r, c)\", \"Box at (r, c)\" and \"Player at (r, c)\". A box already resting on a goal is "
        "listed as \"Box on goal at (r, c)\", and the player standing on a goal as \"Player on goal at (r, c)\". "
        "All unspecified cells are empty.\n\n"
        "# Current Step\n"
    )
    suffix = f"\nYour admissible actions are {format_admissible(ACTION_WORDS)}.\n\n" + answer_format(thinking)
    return prefix, suffix


def step_intro(step: int) -> str:
    """The words just before the observation; `step` counts the steps already taken (0 at the start)."""
    return f"You are now at step {step + 1} and your current observation is: "


def current_step_text(observation: str, history: Sequence[Tuple[str, str]], step: int, window: int = 1,
                      intro: Optional[str] = None) -> str:
    """History block (if any) + "\\n" + `intro` (default `step_intro(step)`) + observation."""
    block = history_block(history, step, window, obs_name="Text Observation")
    return (block + "\n" if block else "") + (step_intro(step) if intro is None else intro) + observation


def build_prompt(
    observation: str,
    history: Sequence[Tuple[str, str]],
    step: int,
    dim: int,
    window: int = 1,
    thinking: bool = True,
) -> str:
    """The full prompt for one step.

    observation: the current rendered state (coords style). history: every past (observation, action word)
    pair of the episode, oldest first. step: steps already taken. window: how many past pairs to show.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}.")
    prefix, suffix = prompt_parts(dim, thinking)
    return prefix + current_step_text(observation, history, step, window) + suffix
