"""What a domain is, and the registry that names them.

A domain is everything the trainer, the evaluator and SFT need to know about one kind of task: its task sets
(a training stream and named held-out splits), how a batch of its episodes is played (on device, or from the
host in window or conversation mode), its prompt length, its expert, and its own metrics. Callers never branch
on a domain's name: they ask the registry for the domain and call these methods.

Adding a domain = one file in `agentrl_jax/domains/` with a `Domain` subclass decorated `@register`, imported
from `agentrl_jax/domains/__init__.py`, plus a gin file in `gin/envs/`.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import jax
import numpy as np

from agentrl_jax import augment as aug
from agentrl_jax import generate as gen
from agentrl_jax.rollout import host_conversation_rollout, host_rollout

# Key streams: 0 = training tasks, 1 = the fixed held-out set, 2 = the SFT warm-up's own validation set.
TRAIN_STREAM, HELD_OUT_STREAM, SFT_VALIDATION_STREAM = 0, 1, 2
ROLLOUT_MODES = ("device", "host")
PROMPT_MODES = ("window", "conversation")


def stream_base_key(seed: int, stream: int, step: int) -> jax.Array:
    """The key every random choice of (seed, stream, step) derives from; a resumed run draws the same tasks."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stream), step)


def stream_keys(seed: int, stream: int, step: int, n: int) -> jax.Array:
    return jax.random.split(stream_base_key(seed, stream, step), n)


def stream_seeds(seed: int, stream: int, step: int, n: int) -> np.ndarray:
    """Integer task seeds (text envs map a seed to a game / variation deterministically)."""
    return np.asarray(jax.random.randint(stream_base_key(seed, stream, step), (n,), 0, 2**30))


@dataclasses.dataclass(frozen=True)
class Tasks:
    """A batch of episodes of one domain, one entry per episode (a GRPO group repeats its task).

    seeds: int [E], the episode's task seed (text envs: `reset(seed)`). keys: PRNG keys [E] (JAX envs: the level),
    or None. split: which task set they come from ("train" or a held-out split name).
    """

    seeds: np.ndarray
    keys: Optional[jax.Array]
    split: str

    @property
    def num_episodes(self) -> int:
        return int(len(self.seeds))

    def repeat(self, group: int) -> "Tasks":
        keys = None if self.keys is None else jax.numpy.repeat(self.keys, group, axis=0)
        return Tasks(np.repeat(self.seeds, group), keys, self.split)

    def take(self, index: Sequence[int]) -> "Tasks":
        index = np.asarray(index, np.int32)
        return Tasks(self.seeds[index], None if self.keys is None else self.keys[index], self.split)


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """How episodes are played, common to every domain of a run (a policy is trained and evaluated the same way).

    mode: "device" (one compiled program per batch, where the domain has one) or "host". prompt_mode: "window"
    (a fresh prompt per step, the study's) or "conversation" (one growing buffer per episode).
    """

    mode: str = "host"
    prompt_mode: str = "window"
    max_context_tokens: int = 4096
    invalid_penalty: float = -0.1


class Domain(abc.ABC):
    """One task domain. Subclasses set `name`, `splits` (held-out split names; the first is the default) and
    implement the task sets and `host_task`; a domain with an on-device rollout also lists "device" in
    `rollout_modes` and implements `device_rollout`."""

    name: ClassVar[str]
    rollout_modes: ClassVar[Tuple[str, ...]] = ("host",)
    splits: ClassVar[Tuple[str, ...]] = ()
    train_split: ClassVar[str] = "train"
    # The gin configurables whose bindings shape this domain's episodes (its own class, env, prompt); a changed
    # binding invalidates the evaluator's stored cells of the domain.
    gin_configurables: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, chat, seed: int, eval_split: Optional[str] = None,
                 max_response_tokens: Optional[int] = None):
        self.chat, self.seed = chat, int(seed)
        self.eval_split = self.check_eval_split(eval_split or self.splits[0])
        # None: the run's train.max_response_tokens (set per domain when its answers need more, e.g. thinking).
        self.max_response_tokens = max_response_tokens
        # The domain's distractor setting (`<name>/augment.*`, off by default), checked here before anything runs.
        self.augmentation = aug.domain_augmentation(self.name)

    # ------------------------------------------------------------------ what subclasses provide
    max_prompt_tokens: int
    max_turns: int

    @abc.abstractmethod
    def train_tasks(self, step: int, n_tasks: int) -> Tasks:
        """The `n_tasks` training tasks of a step, a function of (seed, step) only."""

    @abc.abstractmethod
    def eval_tasks(self, n_tasks: int, split: Optional[str] = None) -> Tasks:
        """The first `n_tasks` tasks of a fixed held-out split (the same every call)."""

    @abc.abstractmethod
    def host_task(self, tasks: Tasks, key=None):
        """A `rollout.HostTask` for the batch (prompt ids per turn, step with answers). key: the rollout's key,
        from which distractor coins and state keys derive (`agentrl_jax.augment`); None = plain prompts."""

    def device_rollout(self, graphdef, params, config: gen.GenerationConfig, tasks: Tasks, key, invalid_penalty):
        raise NotImplementedError(f"the {self.name} domain has no on-device rollout; use rollout mode 'host'.")

    def task_count(self, split: str) -> Optional[int]:
        """How many distinct tasks a split holds, when known cheaply (None = unknown / unbounded)."""
        return None

    def batch_capacity(self) -> Optional[int]:
        """The most episodes one rollout call can hold (a pool's W x M); None = no limit."""
        return None

    def metrics(self) -> Dict[str, float]:
        """Domain-specific scalars for TensorBoard (distinct levels, env restarts, ...), already prefixed."""
        return {}

    def sft_tasks(self, num_tasks: int, seed: int) -> Tasks:
        """Training-split tasks for SFT data (expert or a policy's rollouts), a function of `seed` alone; never
        a held-out task (text domains: the train split's games / variations / goals)."""
        return Tasks(stream_seeds(seed, TRAIN_STREAM, 0, num_tasks), None, self.train_split)

    def expert_records(self, num_tasks: int, seed: int, data: str = "expert") -> List[dict]:
        """The expert's state->action records (`sft_data.record`) on `sft_tasks(num_tasks, seed)`: prompt ids as
        the rollout builds them for each turn, answer ids with the stop id; only episodes the expert wins."""
        raise NotImplementedError(f"the {self.name} domain has no expert data for SFT yet; set train.sft_steps = 0.")

    def expert_reason(self, step, action: str) -> str:
        """The template rationale of an expert action in a state (`expert_data.expert_rationale`)."""
        return ""

    @property
    def pad_id(self) -> int:
        tok = self.chat.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else 0)

    def expert_samples(self, num_tasks: int, seed: int, max_response_tokens: int, data: str = "solver"):
        """`expert_records` packed as window samples [prompt P | answer N] (`sft_data.pack`)."""
        from agentrl_jax import sft_data  # noqa: PLC0415

        return sft_data.pack(self.expert_records(num_tasks, seed, data), self.max_prompt_tokens,
                             max_response_tokens, self.pad_id)

    def close(self) -> None:
        """Stop worker processes (pools are started lazily, on a split's first episode)."""

    # ------------------------------------------------------------------ shared behaviour
    def augments(self, tasks: Tasks) -> bool:
        """Whether these tasks' episodes get distractors (training ones when `<name>/augment.*` is on; held-out
        ones only with `augment.in_eval`)."""
        return self.augmentation.applies_to(tasks.split, self.train_split)

    def check_split(self, split: str) -> str:
        known = (self.train_split, *self.splits)
        if split not in known:
            raise ValueError(f"the {self.name} domain has no split {split!r}; use one of {known} "
                             f"(e.g. {type(self).__name__}.eval_split = {self.splits[0]!r}).")
        return split

    def check_eval_split(self, split: str) -> str:
        """A held-out split: known, and not the training one (held out means tasks training never sees)."""
        if split == self.train_split:
            raise ValueError(f"{self.name}: the held-out split must not be the training split {split!r} (held out "
                             f"means unseen tasks); use one of {self.splits}.")
        return self.check_split(split)

    def resolve_mode(self, requested: str) -> str:
        """The rollout mode this domain plays for a requested one: "device" falls back to "host" where the
        domain has no device program (a Sokoban run evaluates ALFWorld from the host)."""
        return requested if requested in self.rollout_modes else "host"

    def rollout(self, graphdef, params, tasks: Tasks, key, config: gen.GenerationConfig, tokenizer,
                settings: RolloutSettings, timings: Optional[Dict[str, float]] = None):
        """Play `tasks` with the policy; (StepBatch or ConversationBatch, EpisodeStats), as numpy."""
        if self.resolve_mode(settings.mode) == "device":
            if settings.prompt_mode != "window":
                raise ValueError("the on-device rollout builds a fresh prompt per step: use prompt_mode 'window' "
                                 "or rollout_mode 'host'.")
            batch, stats = self.device_rollout(graphdef, params, config, tasks, key, settings.invalid_penalty)
            return jax.device_get(batch), jax.device_get(stats)
        task = self.host_task(tasks, key)
        if settings.prompt_mode == "conversation":
            return host_conversation_rollout(graphdef, params, task, self.chat, config, key, tokenizer,
                                             settings.max_context_tokens, settings.invalid_penalty, timings=timings)
        return host_rollout(graphdef, params, task, config, key, tokenizer, self.max_prompt_tokens,
                            settings.invalid_penalty, timings=timings)

    def rollout_chunks(self, graphdef, params, tasks: Tasks, key, config: gen.GenerationConfig, tokenizer,
                       settings: RolloutSettings, timings: Optional[Dict[str, float]] = None,
                       progress: Optional[Callable[[int, int], None]] = None):
        """`rollout` in batches of at most `batch_capacity()` episodes (a pool holds W x M at a time); a list of
        (batch, stats), in task order. The first chunk samples with `key`, a later one with fold_in(key, its
        first task's index). progress(done, total) is called after each chunk (long evaluations report)."""
        capacity = self.batch_capacity() or max(tasks.num_episodes, 1)
        parts = []
        for start in range(0, tasks.num_episodes, capacity):
            part = tasks.take(range(start, min(start + capacity, tasks.num_episodes)))
            part_key = key if start == 0 else jax.random.fold_in(key, start)
            parts.append(self.rollout(graphdef, params, part, part_key, config, tokenizer, settings, timings))
            if progress is not None:
                progress(start + part.num_episodes, tasks.num_episodes)
        return parts


_REGISTRY: Dict[str, Type[Domain]] = {}


def register(cls: Type[Domain]) -> Type[Domain]:
    """Class decorator: make a domain available by its `name`."""
    if not getattr(cls, "name", None) or not cls.splits:
        raise TypeError(f"{cls.__name__} must set `name` and at least one held-out split in `splits`.")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two domains are named {cls.name!r}: {_REGISTRY[cls.name].__name__} and {cls.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def domain_names() -> Tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def domain_class(name: str) -> Type[Domain]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown domain {name!r}; registered domains: {list(domain_names())}. A new domain is one "
                         f"file in agentrl_jax/domains/ with a @register-ed Domain subclass.")
    return _REGISTRY[name]


def make_domain(name: str, *, chat, seed: int, **kwargs: Any) -> Domain:
    """The domain `name`, configured by its gin bindings (e.g. `AlfWorldDomain.num_workers = 2`)."""
    return domain_class(name)(chat=chat, seed=seed, **kwargs)
