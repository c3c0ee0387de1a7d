"""The JAX Sokoban domain: levels from PRNG keys, the whole episode on device (or stepped from the host).

Held-out sets are disjoint from training by content, not only by key (`agentrl_jax.heldout`): the fixed
held-out levels ("heldout") and the SFT warm-up's validation levels ("sft_validation") are built once, and every
training level that equals one of them is replaced by a fresh draw.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

import envs.sokoban as sk
from agentrl_jax import generate as gen
from agentrl_jax import heldout
from agentrl_jax.domains.base import (HELD_OUT_STREAM, SFT_VALIDATION_STREAM, TRAIN_STREAM, Domain, Tasks, register,
                                      stream_keys, stream_seeds)
from agentrl_jax.rollout import SokobanHostTask, sokoban_device_rollout
from agentrl_jax.expert_data import sokoban_expert_records
from agentrl_jax.sokoban_prompt import SokobanPrompter

SPLIT_STREAMS = {"heldout": HELD_OUT_STREAM, "sft_validation": SFT_VALIDATION_STREAM}


@functools.lru_cache(maxsize=None)
def device_rollout_jit(compiler_options=()):
    """The on-device episode compiled with these XLA options (its decode steps' kernels, `gen.decode_kernels`):
    one program per (options, policy graph, env, prompter, generation config), shared by every domain instance."""
    return jax.jit(sokoban_device_rollout, static_argnums=(0, 2, 3, 4), static_argnames=("invalid_penalty", "augment"),
                   compiler_options=dict(compiler_options) or None)


@register
@gin.configurable(denylist=["chat", "seed", "num_eval_tasks"])
class SokobanDomain(Domain):
    """Sokoban as `envs.sokoban.Sokoban` and `SokobanPrompter` are configured by gin.

    held_out_levels: size of the fixed held-out and SFT-validation sets (None = the caller's number of
    evaluation episodes, `train.eval_episodes`); evaluations may use any prefix of them.
    """

    name = "sokoban"
    rollout_modes = ("device", "host")
    splits = tuple(SPLIT_STREAMS)
    gin_configurables = ("SokobanDomain", "Sokoban", "SokobanGenerator", "SokobanPrompter")

    def __init__(self, chat, seed: int, num_eval_tasks: int = 64, held_out_levels: Optional[int] = None,
                 eval_split: Optional[str] = None, max_response_tokens: Optional[int] = None):
        super().__init__(chat, seed, eval_split, max_response_tokens)
        self.env = sk.Sokoban()
        a = self.augmentation
        try:
            self.prompter = SokobanPrompter(chat, dim=self.env.dim, max_steps=self.env.max_steps,
                                            **(dict(augment_bank=a.bank, augment_epsilon=a.epsilon, augment_p=a.p)
                                               if a.active else {}))
        except ValueError as e:  # name the gin bindings, not the constructor arguments
            raise ValueError(str(e).replace("SokobanPrompter.augment_", "sokoban/augment.")) from None
        self.max_prompt_tokens, self.max_turns = self.prompter.max_prompt_tokens, self.env.max_steps
        n = int(held_out_levels or num_eval_tasks)
        held = heldout.HeldOutLevels.build(self.env, stream_keys(self.seed, HELD_OUT_STREAM, 0, n))
        val = heldout.HeldOutLevels.build(self.env, stream_keys(self.seed, SFT_VALIDATION_STREAM, 0, n), avoid=held)
        self.level_sets = {"heldout": held, "sft_validation": val}
        self.reserved_levels = held.union(val)
        self.seen_levels = heldout.SeenLevels()

    def train_tasks(self, step: int, n_tasks: int) -> Tasks:
        keys = stream_keys(self.seed, TRAIN_STREAM, step, n_tasks)
        excluded = self.reserved_levels.exclude(self.env, keys)
        self.seen_levels.add(excluded.hashes)  # a set: drawing a step's keys again adds nothing
        return Tasks(stream_seeds(self.seed, TRAIN_STREAM, step, n_tasks), excluded.keys, self.train_split)

    def eval_tasks(self, n_tasks: int, split: Optional[str] = None) -> Tasks:
        split = self.check_eval_split(split or self.eval_split)
        levels = self.level_sets[split]
        if n_tasks > len(levels):
            raise ValueError(f"{n_tasks} Sokoban evaluation episodes but the {split} set holds {len(levels)} levels; "
                             f"raise SokobanDomain.held_out_levels (or train.eval_episodes) to at least {n_tasks}.")
        return Tasks(np.arange(n_tasks), levels.keys[:n_tasks], split)

    def task_count(self, split: str) -> Optional[int]:
        return len(self.level_sets[split]) if split in self.level_sets else None

    def host_task(self, tasks: Tasks, key=None):
        return SokobanHostTask(self.env, self.prompter, tasks.keys,
                               augment_key=key if key is not None and self.augments(tasks) else None)

    def device_rollout(self, graphdef, params, config: gen.GenerationConfig, tasks: Tasks, key, invalid_penalty):
        rollout = device_rollout_jit(gen.decode_compiler_options(tasks.keys.shape[0]))
        return rollout(graphdef, params, self.env, self.prompter, config, tasks.keys, key,
                       invalid_penalty=invalid_penalty, augment=self.augments(tasks))

    def metrics(self) -> Dict[str, float]:
        """Distinct training levels drawn so far and their overlap with the held-out sets."""
        return heldout.level_metrics(self.seen_levels, self.level_sets["heldout"], self.level_sets["sft_validation"])

    def sft_tasks(self, num_tasks: int, seed: int) -> Tasks:
        """Fresh levels from `seed` that avoid both held-out sets by content (task id = index)."""
        keys = self.reserved_levels.exclude(self.env, jax.random.split(jax.random.PRNGKey(seed), num_tasks)).keys
        return Tasks(np.arange(num_tasks), keys, self.train_split)

    def expert_records(self, num_tasks: int, seed: int, data: str = "expert") -> List[dict]:
        """Solver (data "expert" / "solver") or format-only ("format") records on `sft_tasks` levels; only levels
        the solver solves."""
        return sokoban_expert_records(self.env, self.prompter, num_tasks, seed, data,
                                      keys=self.sft_tasks(num_tasks, seed).keys)

    def blind_success(self, split: str = "sft_validation", n_tasks: Optional[int] = None) -> float:
        """The best a policy that ignores the board can do on a level set: repeat one action (the best of the
        four) for the whole episode. A level set's mix of solutions makes this more than 1/4."""
        keys = self.eval_tasks(n_tasks or len(self.level_sets[split]), split).keys
        return _blind_success(self.env, keys)


@functools.partial(jax.jit, static_argnums=0)
def _per_action_success(env: sk.Sokoban, keys: jax.Array) -> jax.Array:
    def episode(key, action):
        state, ts = env.reset(key)

        def body(_, carry):
            state, _ts = carry
            return env.step(state, action)

        return jax.lax.fori_loop(0, env.max_steps, body, (state, ts))[1].success

    return jax.vmap(jax.vmap(episode, (0, None)), (None, 0))(keys, jnp.arange(4))


def _blind_success(env: sk.Sokoban, keys: jax.Array) -> float:
    return float(np.max(np.mean(np.asarray(_per_action_success(env, keys)), axis=1)))
