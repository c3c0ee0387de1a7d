"""Token-level chat assembly: build prompts from pre-tokenized template pieces, never re-tokenize history.

A chat template is rendered once, on probe conversations with sentinel contents, and cut around the sentinels
into its constant pieces (turn prefixes/suffixes per role, the generation prompt, a default system message if
the template injects one). Each piece is tokenized once. A conversation is then the concatenation of those
piece ids and each message's content tokenized on its own, so the ids the policy saw during rollout are the
ids the trainer scores, and appending a turn is a list append.

For templates whose pieces meet content at special tokens or line breaks (ChatML and friends), the result is
id-for-id what `tokenizer.apply_chat_template(..., tokenize=True)` gives; `tests/test_chat.py` checks it.

`parse_action_text` reads the answer format of the study: `<think>...</think>` (thinking on) then
`<action>...</action>`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import gin

ROLES = ("system", "user", "assistant")

# Sentinels: plain letters so no template escapes or trims them, distinct so each is found exactly once.
_S = "QXSYSTEMQX"
_U1, _U2, _U3 = "QXUSERONEQX", "QXUSERTWOQX", "QXUSERTHREEQX"
_A1, _A2 = "QXASSISTONEQX", "QXASSISTTWOQX"
_R1, _R2 = "QXREASONONEQX", "QXREASONTWOQX"


def _msg(role: str, content: str, reasoning: Optional[str] = None) -> dict:
    m = {"role": role, "content": content}
    if reasoning is not None:
        m["reasoning_content"] = reasoning
    return m


def _split_once(text: str, sentinel: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        raise ValueError(
            f"The chat template does not render message content verbatim exactly once (sentinel {sentinel!r} "
            f"found {text.count(sentinel)} times); ChatFormat supports templates that place each message's "
            "content as is. Use a ChatML-style template (tokenizer.chat_template = ...).")
    a, b = text.split(sentinel)
    return a, b


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"Unsupported chat template: cannot isolate the {what} ({text!r} does not start with "
                         f"{prefix!r}). ChatFormat needs a template that renders every turn the same way.")
    return text[len(prefix):]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    if suffix and not text.endswith(suffix):
        raise ValueError(f"Unsupported chat template: cannot isolate the {what} ({text!r} does not end with "
                         f"{suffix!r}). ChatFormat needs a template that renders every turn the same way.")
    return text[: len(text) - len(suffix)]


@dataclasses.dataclass(frozen=True, eq=False)
class ChatFormat:
    """The constant pieces of one tokenizer's chat template, as text and as token ids.

    Build with `ChatFormat.from_tokenizer(tokenizer, thinking)`. Text fields are the raw template pieces; the
    `*_ids` tuples are those pieces tokenized on their own (add_special_tokens=False).

    start: text before the first message (a BOS such as `<|begin_of_text|>`; "" for ChatML).
    prefixes/suffixes: wrap each message's content, per role.
    reasoning_prefix/suffix: wrap an assistant message's `reasoning_content`; None if the template drops it.
    generation_prompt: appended when the assistant is to speak next (depends on `thinking`).
    default_system: the text the template inserts when a conversation has no system message ("" if none).
    """

    tokenizer: Any
    thinking: bool
    start: str
    prefixes: Mapping[str, str]
    suffixes: Mapping[str, str]
    reasoning_prefix: Optional[str]
    reasoning_suffix: Optional[str]
    generation_prompt: str
    default_system: str

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_tokenizer(cls, tokenizer, thinking: bool = True) -> "ChatFormat":
        """Derive the pieces by rendering probe conversations with `tokenizer.apply_chat_template`.

        thinking: passed to the template as `enable_thinking` (templates without that switch ignore it); it
        decides the generation prompt and how `parse_action_text` reads answers.
        Raises ValueError if the tokenizer has no chat template or the template is not a per-turn template.
        """
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("This tokenizer has no chat_template; set tokenizer.chat_template (e.g. "
                             "agentrl_jax.models.tiny.CHAT_TEMPLATE) or load a folder whose tokenizer_config.json "
                             "carries one.")

        def render(messages, gen=False):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                                 enable_thinking=bool(thinking))

        head_u, user_suffix = _split_once(render([_msg("user", _U1)]), _U1)
        _, x_ua = _split_once(render([_msg("user", _U1), _msg("assistant", _A1)]), _U1)
        x_ua, assistant_suffix = _split_once(x_ua, _A1)
        assistant_prefix = _strip_prefix(x_ua, user_suffix, "assistant turn prefix")
        t_uau = render([_msg("user", _U1), _msg("assistant", _A1), _msg("user", _U2)])
        x_au = _split_once(_split_once(t_uau, _A1)[1], _U2)[0]
        user_prefix = _strip_prefix(x_au, assistant_suffix, "user turn prefix")
        pre_u = _strip_suffix(head_u, user_prefix, "conversation start")

        head_s, x_su = _split_once(render([_msg("system", _S), _msg("user", _U1)]), _S)
        x_su = _split_once(x_su, _U1)[0]
        system_suffix = _strip_suffix(x_su, user_prefix, "system turn suffix")

        # A BOS-like start is text every conversation begins with but that no turn prefix repeats.
        start = ""
        bos = getattr(tokenizer, "bos_token", None)
        if bos and head_s.startswith(bos) and pre_u.startswith(bos) and not any(
                p.startswith(bos) for p in (user_prefix, assistant_prefix)):
            start = bos
        system_prefix = head_s[len(start):]
        default_system = _strip_prefix(pre_u, start, "conversation start")

        gen_base = render([_msg("system", _S), _msg("user", _U1)])
        generation_prompt = _strip_prefix(render([_msg("system", _S), _msg("user", _U1)], gen=True), gen_base,
                                          "generation prompt")

        reasoning_prefix = reasoning_suffix = None
        t_r = render([_msg("user", _U1), _msg("assistant", _A1, _R1)])
        if _R1 in t_r:
            mid = _split_once(_split_once(t_r, _U1)[1], _A1)[0]
            mid = _strip_prefix(mid, user_suffix + assistant_prefix, "reasoning block")
            reasoning_prefix, reasoning_suffix = _split_once(mid, _R1)

        fmt = cls(
            tokenizer=tokenizer, thinking=bool(thinking), start=start,
            prefixes={"system": system_prefix, "user": user_prefix, "assistant": assistant_prefix},
            suffixes={"system": system_suffix, "user": user_suffix, "assistant": assistant_suffix},
            reasoning_prefix=reasoning_prefix, reasoning_suffix=reasoning_suffix,
            generation_prompt=generation_prompt, default_system=default_system,
        )
        fmt._self_check(render)
        return fmt

    def _self_check(self, render) -> None:
        """Re-render longer probes from the pieces; any difference means the template is not per-turn."""
        r = self.reasoning_prefix is not None
        probes = [
            [_msg("system", _S), _msg("user", _U1), _msg("assistant", _A1, _R1 if r else None),
             _msg("user", _U2), _msg("assistant", _A2, _R2 if r else None), _msg("user", _U3)],
            [_msg("user", _U1), _msg("assistant", _A1), _msg("user", _U2), _msg("assistant", _A2)],
        ]
        for msgs in probes:
            for gen in (False, True):
                want = render(msgs, gen)
                got = self.render_text(msgs, add_generation_prompt=gen)
                if got != want:
                    raise ValueError(
                        "Unsupported chat template: it does not render every turn the same way, so a conversation "
                        f"cannot be assembled from constant pieces.\n template: {want!r}\n pieces:   {got!r}")

    # ------------------------------------------------------------------ piece ids (cached)

    def _encode(self, text: str) -> tuple[int, ...]:
        if not text:
            return ()
        return tuple(int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __post_init__(self):
        enc = self._encode
        ids = {
            "start_ids": enc(self.start),
            "prefix_ids": {k: enc(v) for k, v in self.prefixes.items()},
            "suffix_ids": {k: enc(v) for k, v in self.suffixes.items()},
            "reasoning_prefix_ids": enc(self.reasoning_prefix or ""),
            "reasoning_suffix_ids": enc(self.reasoning_suffix or ""),
            "_gen_ids": enc(self.generation_prompt),
            "default_system_ids": enc(self.default_system),
        }
        for k, v in ids.items():
            object.__setattr__(self, k, v)
        # End of an assistant turn: the first token of the assistant suffix when it is a single special/added
        # token (`<|im_end|>`), plus the tokenizer's EOS.
        stops = []
        suf = self.suffix_ids["assistant"]
        if suf and suf[0] in set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder):
            stops.append(suf[0])
        eos = self.tokenizer.eos_token_id
        extra = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        extra.append(self.tokenizer.get_vocab().get("<|endoftext|>"))  # document end also ends the turn
        for e in extra:
            if e is not None and int(e) not in stops:
                stops.append(int(e))
        object.__setattr__(self, "stop_ids", tuple(stops))

    # ------------------------------------------------------------------ text (for logs and checks)

    def render_text(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
        """The conversation as text, assembled from the pieces (equals the template's own rendering)."""
        self._check_messages(messages)
        out = [self.start]
        if not messages or messages[0]["role"] != "system":
            out.append(self.default_system)
        for m in messages:
            role = m["role"]
            out.append(self.prefixes[role])
            if role == "assistant" and m.get("reasoning_content") and self.reasoning_prefix is not None:
                out += [self.reasoning_prefix, m["reasoning_content"], self.reasoning_suffix]
            out += [m["content"], self.suffixes[role]]
        if add_generation_prompt:
            out.append(self.generation_prompt)
        return "".join(out)

    # ------------------------------------------------------------------ ids

    @staticmethod
    def _check_messages(messages) -> None:
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}")
            if m["role"] not in ROLES:
                raise ValueError(f"messages[{i}] has role {m['role']!r}; ChatFormat supports {ROLES}.")
            if not isinstance(m["content"], str):
                raise ValueError(f"messages[{i}]['content'] must be a string, got {type(m['content']).__name__}")

    def encode_content(self, text: str) -> list[int]:
        """Content alone, tokenized without special-token additions."""
        return list(self._encode(text))

    def encode_message(self, role: str, content: str, reasoning_content: Optional[str] = None) -> list[int]:
        """One full turn: role prefix + (reasoning block) + content + role suffix."""
        self._check_messages([{"role": role, "content": content}])
        ids = list(self.prefix_ids[role])
        if role == "assistant" and reasoning_content and self.reasoning_prefix is not None:
            ids += [*self.reasoning_prefix_ids, *self._encode(reasoning_content), *self.reasoning_suffix_ids]
        return ids + list(self._encode(content)) + list(self.suffix_ids[role])

    def generation_prompt_ids(self) -> list[int]:
        """What opens the assistant's turn before generation (with the empty think block when thinking is off
        and the template has the switch)."""
        return list(self._gen_ids)

    def encode_conversation(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False
                            ) -> list[int]:
        """The whole conversation as ids, equal to `apply_chat_template(messages, tokenize=True)` for ChatML-style
        templates (content that starts with a run of whitespace may merge differently; see module doc)."""
        self._check_messages(messages)
        ids = list(self.start_ids)
        if not messages or messages[0]["role"] != "system":
            ids += self.default_system_ids
        for m in messages:
            ids += self.encode_message(m["role"], m["content"], m.get("reasoning_content"))
        if add_generation_prompt:
            ids += self._gen_ids
        return ids

    def user_turn_ids(self, content: str) -> list[int]:
        """A complete user turn, to append to a buffer that ends with a closed assistant turn."""
        return self.encode_message("user", content)

    def close_assistant_ids(self, generated_ids: Sequence[int]) -> list[int]:
        """Ids that finish an assistant turn after generation stopped with `generated_ids`.

        If generation ended on the template's end-of-turn token (it is kept in the buffer as the policy's own
        output), only the rest of the assistant suffix is added (ChatML: "\\n"); otherwise (length cut-off, or a
        different stop id) the whole suffix is.
        """
        suf = list(self.suffix_ids["assistant"])
        if generated_ids and suf and int(generated_ids[-1]) == suf[0]:
            return suf[1:]
        return suf

    def next_turn_ids(self, generated_ids: Sequence[int], user_content: str,
                      add_generation_prompt: bool = True) -> list[int]:
        """Everything to append after an assistant generation to reach the next generation point: the rest of
        the assistant suffix, the new user turn, and the generation prompt."""
        ids = self.close_assistant_ids(generated_ids) + self.user_turn_ids(user_content)
        if add_generation_prompt:
            ids += self._gen_ids
        return ids


@gin.configurable
def chat_format(tokenizer, thinking: bool = True) -> ChatFormat:
    """Gin entry point for `ChatFormat.from_tokenizer` (bind `chat_format.thinking`)."""
    return ChatFormat.from_tokenizer(tokenizer, thinking=thinking)


# ------------------------------------------------------------------ answer parsing

_TAG = re.compile(r"</?(?:think|action)>")


def parse_action_text(text: str, thinking: bool, *, stopped: bool = True) -> tuple[Optional[str], bool]:
    """Extract the action from a model answer in the study's format.

    thinking=True: the answer must be `<think>...</think>` followed by `<action>...</action>`.
    thinking=False: the answer must be `<action>...</action>` alone.
    Only whitespace may surround the blocks, each tag appears exactly once, and the action must be non-empty.
    stopped: whether generation ended on a stop token. An answer cut off at max_new_tokens is malformed even
    when it holds a complete action block: one rule for every rollout mode (the on-device id parser,
    `SokobanPrompter.parse_response`, applies the same), so the same tokens always get the same reward.
    Returns (stripped action, True) when well formed, else (None, False).
    """
    if not isinstance(text, str):
        raise ValueError(f"parse_action_text expects decoded text (str), got {type(text).__name__}")
    if not stopped:
        return None, False
    tags = _TAG.findall(text)
    want = ["<think>", "</think>", "<action>", "</action>"] if thinking else ["<action>", "</action>"]
    if tags != want:
        return None, False
    if thinking:
        pattern = r"\s*<think>.*?</think>\s*<action>(.*?)</action>\s*"
    else:
        pattern = r"\s*<action>(.*?)</action>\s*"
    m = re.fullmatch(pattern, text, flags=re.DOTALL)
    if m is None:
        return None, False
    action = m.group(1).strip()
    return (action, True) if action else (None, False)
