"""The Sokoban prompt as token ids, built on device (inside jit) and on the host from the same pieces.

Principle 1 of the design: ids are the source of truth. Both paths assemble
    chat start + user prefix + [prompt prefix] + [history block] + [step intro] + [observation] + [prompt suffix]
    + user suffix + generation prompt
from pieces tokenized once, so `device_prompt(...)` and `host_prompt_ids(...)` give identical ids, and their
decoded text is exactly the chat-templated `envs.sokoban.build_prompt(...)` (tested).

Distractor augmentation (arXiv 2601.18217 §6; off by default): with `augment_bank` set, every state of an
augmented episode gets k = max(1, floor(eps/10)) goal-irrelevant lines right after the current observation (not
in the history block), spliced on device by `agentrl_jax.augment.DistractorSplice`; their decoded text is what
`envs.distractors.augment_text` adds for the same key. The caller passes one key per state and the episode's coin
(`agentrl_jax.augment.augment_episode`).

The device path also parses the answer straight from generated ids (`parse_response`, built on
`agentrl_jax.answer_parse`: the acceptance rule of `agentrl_jax.chat.parse_action_text` as a byte automaton
lifted to whole tokens), so it gives what the host rollout decodes and parses for any byte-level BPE tokenizer,
tags split over several tokens or merged with neighbouring text included. Tokenizers whose decoding it does not
model (SentencePiece/WordPiece decoders) keep the host rollout, with a message that says so.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import List, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp

import envs.distractors as distractors
import envs.sokoban as sk
from envs.prompting import answer_format, format_admissible
from agentrl_jax import segments
from agentrl_jax.answer_parse import TAGS, AnswerParser  # noqa: F401  (TAGS: the format tags, re-exported)
from agentrl_jax.augment import DistractorSplice
from agentrl_jax.chat import ChatFormat

PROMPT_STYLES = ("study", "compact", "minimal")
# The history shows this word when the previous answer could not be parsed.
INVALID_WORD = "invalid"


def prompt_parts(dim: int, thinking: bool, style: str) -> Tuple[str, str]:
    """(prefix, suffix) around the current-step paragraph. "study" is the paper's full prompt
    (`envs.sokoban.prompt_parts`); "compact" keeps only the essentials; "minimal" is the bare observation, for
    models trained from scratch (the tiny model), which cannot read instructions: measured on 1-push levels, a
    2-layer model learns the pushing direction in ~75 supervised steps from the bare grid (56 tokens) but
    plateaus at 75% after 400 steps when the same grid sits in the 138-token compact prompt."""
    if style == "study":
        return sk.prompt_parts(dim, thinking)
    if style == "compact":
        prefix = f"Sokoban {dim}x{dim}. Push the box onto the goal.\n"
        suffix = f"\nActions: {format_admissible(sk.ACTION_WORDS)}.\n" + answer_format(thinking)
        return prefix, suffix
    if style == "minimal":
        return "", ""
    raise ValueError(f"Unknown Sokoban prompt style {style!r}; use one of {PROMPT_STYLES}.")


def step_intro(step: int, style: str) -> str:
    """The words before the current observation ("minimal": none, the step count is not shown)."""
    return "" if style == "minimal" else sk.step_intro(step)


def history_head(step: int) -> str:
    """History block text before the previous observation (window 1), matching `envs.prompting.history_block`."""
    return (f"Prior to this step, you have already taken {step} step(s). Below are the most recent 1 observations "
            f"and the corresponding actions you took:\n[Text Observation {step}: '")


def history_mid(step: int) -> str:
    return f"', Action {step}: '"


HISTORY_TAIL = "']\n"


@gin.configurable(denylist=["chat", "dim", "max_steps", "augment_bank", "augment_epsilon", "augment_p"])  # augment.*
@dataclasses.dataclass(eq=False)
class SokobanPrompter:
    """Pre-tokenized pieces of the per-step Sokoban prompt for one tokenizer / chat template.

    render_style: "coords" (the study's) or "grid" (RAGEN's). prompt_style: "study" or "compact".
    window: past (observation, action) pairs shown (0 or 1 on device). max_prompt_tokens: the static prompt
    buffer; longer prompts are cut from the left and counted as truncated.
    augment_bank: distractor bank (a shipped name such as "sokoban", or a bank JSON path); None = off.
    augment_epsilon: injected volume in tokens (the study's eps; 80 in Table 11); 0 = off.
    augment_p: probability that an episode is augmented (the caller flips the coin: `augment.augment_episode`).
    """

    chat: ChatFormat
    dim: int
    max_steps: int
    render_style: str = "coords"
    prompt_style: str = "study"
    window: int = 1
    max_prompt_tokens: int = 1024
    augment_bank: Optional[str] = None
    augment_epsilon: float = 0.0
    augment_p: float = 1.0

    def __post_init__(self):
        if self.window not in (0, 1):
            raise ValueError(f"SokobanPrompter.window must be 0 or 1 for the on-device prompt, got {self.window}.")
        self._check_augment_settings()
        tok = self.chat.tokenizer
        self.thinking = self.chat.thinking
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        enc = self.encode
        self.renderer = sk.TokenRenderer(enc, self.dim, self.render_style, pad_id=self.pad_id)
        prefix, suffix = prompt_parts(self.dim, self.thinking, self.prompt_style)
        self.head = (list(self.chat.start_ids) + list(self.chat.default_system_ids)
                     + list(self.chat.prefix_ids["user"]) + enc(prefix))
        self.tail = enc(suffix) + list(self.chat.suffix_ids["user"]) + self.chat.generation_prompt_ids()
        steps = range(self.max_steps + 1)
        self.intro = [enc(step_intro(t, self.prompt_style)) for t in steps]
        self.hist_head = [enc(history_head(t)) for t in steps]
        self.hist_mid = [enc(history_mid(t)) for t in steps]
        self.hist_tail = enc(HISTORY_TAIL)
        self.words = [enc(w) for w in (*sk.ACTION_WORDS, INVALID_WORD)]
        self._tables = {name: segments.pad_table(getattr(self, name), self.pad_id)
                        for name in ("intro", "hist_head", "hist_mid", "words")}
        self._build_parser(tok)
        self._build_augmentation()

    def _check_augment_settings(self) -> None:
        """The augment_* bindings, checked before anything is tokenized or compiled."""
        eps, p = self.augment_epsilon, self.augment_p
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"SokobanPrompter.augment_epsilon (injected tokens per state) must be a finite number "
                             f">= 0, got {eps!r}; use 0 to turn augmentation off")
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"SokobanPrompter.augment_p (probability that an episode is augmented) must be in "
                             f"[0, 1], got {p!r}")
        if self.augment_bank is None and eps:
            raise ValueError(f"SokobanPrompter.augment_epsilon = {eps} but SokobanPrompter.augment_bank is None; "
                             f"set augment_bank (e.g. 'sokoban') or augment_epsilon = 0")

    def _build_augmentation(self) -> None:
        """Pre-tokenize the bank once and check that the worst-case prompt fits the buffer."""
        self.splice = None
        self.augment_tokens = 0  # static bound on the ids added to one prompt
        if self.augment_bank is None:
            return
        eps = self.augment_epsilon
        try:
            self.splice = DistractorSplice(self.augment_bank, self.encode, self.dim, self.dim, self.pad_id)
        except ValueError as e:
            raise ValueError(f"SokobanPrompter.augment_bank = {self.augment_bank!r}: {e}") from None
        self.augment_tokens = self.splice.max_tokens(eps)
        worst = self.worst_case_prompt_tokens()
        if self.augment_tokens and worst > self.max_prompt_tokens:
            raise ValueError(
                f"Sokoban prompts with distractors can reach {worst} tokens ({self.augment_tokens} of them "
                f"distractors for augment_epsilon = {eps}), more than SokobanPrompter.max_prompt_tokens = "
                f"{self.max_prompt_tokens}; raise max_prompt_tokens to >= {worst} or lower "
                f"SokobanPrompter.augment_epsilon")

    @property
    def augmenting(self) -> bool:
        """True when augmented episodes get distractors (a bank, eps > 0 and p > 0)."""
        return bool(self.augment_tokens) and self.augment_p > 0

    def worst_case_prompt_tokens(self) -> int:
        """The longest prompt these pieces can make (every cell at its longest piece), distractors included."""
        longest = lambda pieces: max(len(p) for p in pieces)  # noqa: E731
        n = len(self.head) + longest(self.intro) + self.renderer.max_len + len(self.tail) + self.augment_tokens
        if self.window == 1:
            n += (longest(self.hist_head) + self.renderer.max_len + longest(self.hist_mid) + longest(self.words)
                  + len(self.hist_tail))
        return n

    def _check_augment_key(self, augment_key, augment=None) -> bool:
        """Whether to splice: augmentation on needs a key per state (no silent plain prompts) unless the caller
        asks for a plain prompt with a Python `augment=False` (held-out episodes of a run that trains with
        distractors)."""
        if not self.augmenting or augment is False:
            return False
        if augment_key is None:
            raise ValueError(f"SokobanPrompter.augment_bank = {self.augment_bank!r} is set, so every prompt needs "
                             f"augment_key (one JAX key per state) and augment (the episode's coin); pass them, or "
                             f"unset augment_bank")
        return True

    def encode(self, text: str) -> List[int]:
        return list(self.chat.encode_content(text))

    # ------------------------------------------------------------------ prompt ids
    def device_prompt(self, state: sk.State, prev_state: sk.State, prev_action: jax.Array, step: jax.Array,
                      augment_key: Optional[jax.Array] = None, augment: Optional[jax.Array] = None
                      ) -> Tuple[jax.Array, jax.Array, jax.Array]:
        """Prompt ids for one (unbatched) state; vmap for batches.

        prev_state / prev_action (0..3, or -1 = invalid answer) are used when step > 0 and window == 1.
        augment_key: this state's JAX key for the distractors (needed when augment_bank is set; ignored when
        off); augment: the episode's coin (bool, traced is fine; None = augmented).
        Returns (ids int32[max_prompt_tokens] right-aligned, mask, total length before truncation).
        """
        splice = self._check_augment_key(augment_key, augment)
        step = jnp.asarray(step, jnp.int32)
        segs = [segments.constant(self.head)]
        if self.window == 1:
            show = step > 0
            hide = lambda seg: (seg[0], jnp.where(show, seg[1], 0))  # noqa: E731
            obs_prev = self.renderer(prev_state)
            word = jnp.where(prev_action < 0, len(sk.ACTION_WORDS), prev_action)
            segs += [hide(segments.table_lookup(*self._tables["hist_head"], step)), hide(obs_prev),
                     hide(segments.table_lookup(*self._tables["hist_mid"], step)),
                     hide(segments.table_lookup(*self._tables["words"], word)),
                     hide(segments.constant(self.hist_tail))]
        segs += [segments.table_lookup(*self._tables["intro"], step), self.renderer(state)]
        if splice:
            ids, n = self.splice(augment_key, self.augment_epsilon)
            segs.append((ids, n if augment is None else jnp.where(augment, n, 0)))
        segs.append(segments.constant(self.tail))
        return segments.pack_right(segs, self.max_prompt_tokens, self.pad_id)

    def host_prompt_ids(self, state, prev_state=None, prev_action: int = -1, step: int = 0,
                        augment_key: Optional[jax.Array] = None, augment: Optional[bool] = None) -> List[int]:
        """The same ids as `device_prompt`, unpadded, assembled in Python (for the host rollout path)."""
        augment = None if augment is None else bool(augment)
        splice = self._check_augment_key(augment_key, augment)
        pieces = [self.head]
        if self.window == 1 and step > 0:
            word = prev_action if 0 <= prev_action < len(sk.ACTION_WORDS) else len(sk.ACTION_WORDS)
            pieces += [self.hist_head[step], self.renderer.host_ids(prev_state), self.hist_mid[step],
                       self.words[word], self.hist_tail]
        pieces += [self.intro[step], self.renderer.host_ids(state)]
        if splice:
            pieces.append(self.splice.host_ids(augment_key, self.augment_epsilon))
        pieces.append(self.tail)
        return [t for p in pieces for t in p]

    def prompt_text(self, state, prev_state=None, prev_action: int = -1, step: int = 0,
                    augment_key: Optional[jax.Array] = None, augment: Optional[bool] = None) -> str:
        """The chat-templated prompt as text, built with `envs.sokoban.build_prompt` (for logs and checks); the
        distractors come from the plain-text reference, `envs.distractors.augment_text`."""
        prefix, suffix = prompt_parts(self.dim, self.thinking, self.prompt_style)
        history = []
        if step > 0 and self.window:
            word = sk.ACTION_WORDS[prev_action] if 0 <= prev_action < 4 else INVALID_WORD
            history = [(sk.render_text(prev_state, self.render_style), word)]
        obs = sk.render_text(state, self.render_style)
        if self._check_augment_key(augment_key, None if augment is None else bool(augment)):
            obs = distractors.augment_text(self.splice.bank, obs, augment_key, self.augment_epsilon, dim=self.dim)
        body = prefix + sk.current_step_text(obs, history, step, self.window,
                                             intro=step_intro(step, self.prompt_style)) + suffix
        return self.chat.render_text([{"role": "user", "content": body}], add_generation_prompt=True)

    # ------------------------------------------------------------------ answer parsing from ids
    def _build_parser(self, tok) -> None:
        """Tabulate the tokenizer's token bytes once for the on-device parser. A tokenizer it cannot model keeps
        `device_parse_error` (the reason and the fix), raised when a device rollout asks for a parse."""
        self.parser, self.device_parse_error = None, None
        try:
            self.parser = AnswerParser.from_tokenizer(tok, self.thinking, sk.ACTION_WORDS)
        except ValueError as e:
            self.device_parse_error = str(e)

    def parse_response(self, tokens: jax.Array, length: jax.Array, stopped: jax.Array) -> jax.Array:
        """Action id 0..3 parsed from generated ids, or -1 when malformed (unbatched; vmap for batches).

        tokens: int32[max_new_tokens]; length: generated count, the stop token included. Equals
        `host_parse(decode(tokens[:length-1]), stopped)`, what the host rollout computes: exactly the expected
        tags once each in order, only whitespace outside the blocks, one action word (any case, whitespace
        around allowed) in the action block, however the tokenizer split it. An answer cut off before its stop
        token is malformed.
        """
        if self.parser is None:
            raise ValueError(self.device_parse_error)
        return self.parser(tokens, length, stopped)

    def host_parse(self, text: str, stopped: bool = True) -> int:
        """The reference parser on decoded text (what the host rollout uses); `stopped` False (cut off at
        max_new_tokens) is malformed, as in `parse_response`."""
        from agentrl_jax.chat import parse_action_text  # noqa: PLC0415

        action, ok = parse_action_text(text, self.thinking, stopped=stopped)
        return sk.parse_action(action) if ok else -1
