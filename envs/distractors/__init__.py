"""Goal-irrelevant distractors added to the states an agent reads (arXiv 2601.18217 §6, App. C): the banks as
data and the plain-text reference rule. Transitions and rewards never see them; only the agent's input does.

    from envs import distractors as D
    aug = D.augment_text("sokoban", state_text, seed, 80, dim=6)        # k = max(1, floor(80/10)) = 8 lines
    aug = D.augment_text("alfworld", obs, rng, 300, admissible_actions=acts, entities=names)  # 25 sentences
    ds = D.sample_distractors("alfworld", obs, rng, 300, admissible_actions=acts)  # the same choices, as data
    D.render(obs, ds)                                                   # == the augmented text
    D.apply_this_episode(episode_rng, p=0.5)                            # the per-trajectory coin

Shipped banks (`envs/distractors/<name>.json`; any other bank is a JSON file path, format in `bank.py`):
- alfworld: n = floor(eps/12) sentences ("You notice a <obj> that looks <desc>.") at random sentence ends;
  28 kitchen objects, 19 descriptors; each object gets an id no real entity of its type has.
- sokoban: k = max(1, floor(eps/10)) lines after the state, "(r, c) shows a <obj> (<desc>; unreachable).",
  (r, c) strictly outside the H x W room; 7 objects, 5 descriptors.
- webshop: views "search" (ads and fake unselectable results mixed, min(floor(eps * alpha / 10), 10);
  alpha = 0.5, the study's worked example, since its value in the runs is not reported) and "detail"
  (max(1, floor(eps/25)) trivial features plus max(1, floor(eps/30)) ads), appended with " [SEP] ".
- sciworld (not augmented in the study; our rule): n = floor(eps/12) room-feature sentences, each on its own
  line at a block boundary (never inside an indented listing); inert objects ScienceWorld does not have.
- cross_domain (the study's unused variant): one line "There is a monitor showing <label>: "<another
  domain's state>"", the state cut to max(1, floor(eps/1.5)) words; states come from context other_states.

The sampling contract a token-level splice must follow is in `sample.py`'s docstring.
"""
from envs.distractors.bank import (FORMAT, PLACEMENTS, VERSION, Bank, BankError, CountRule, Part, View, bank_names,
                                   known_words, load_bank, parse_bank)
from envs.distractors.sample import (CONTEXT_KEYS, Distractor, apply_this_episode, augment_text, check_epsilon,
                                     check_probability, count_units, fresh_ids, insertion_slots, monitor_text,
                                     outside_cells, real_ids, render, room_size, sample_distractors)

__all__ = [
    "CONTEXT_KEYS", "FORMAT", "PLACEMENTS", "VERSION", "Bank", "BankError", "CountRule", "Distractor", "Part", "View",
    "apply_this_episode", "augment_text", "bank_names", "check_epsilon", "check_probability", "count_units",
    "fresh_ids", "insertion_slots", "known_words", "load_bank", "monitor_text", "outside_cells", "parse_bank",
    "real_ids", "render", "room_size", "sample_distractors",
]
