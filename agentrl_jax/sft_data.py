"""SFT data on disk: JSONL records of state->action pairs, and the datamix across sources.

A file starts with a header line {"schema": "agentrl_jax.sft", "version": N, "thinking": ..., "tokenizer": ...}
(the chat format's thinking setting and the tokenizer the ids are of; files written before these two lack them
and are still read); every further line is one
state-action pair exactly as the policy sees it in RL: domain, task (id or seed), turn, the prompt (token ids
and text), the answer (ids and text, stop token included in the ids) and its source (e.g. "expert",
"rollout:<run dir>"). Readers refuse another version with a message naming the fix.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

SCHEMA = "agentrl_jax.sft"
SCHEMA_VERSION = 1
FIELDS = ("domain", "task", "turn", "prompt_ids", "prompt_text", "answer_ids", "answer_text", "source")


def record(domain: str, task, turn: int, prompt_ids: Sequence[int], answer_ids: Sequence[int], source: str,
           prompt_text: str = "", answer_text: str = "") -> Dict:
    return {"domain": domain, "task": task, "turn": int(turn), "prompt_ids": [int(i) for i in prompt_ids],
            "prompt_text": prompt_text, "answer_ids": [int(i) for i in answer_ids], "answer_text": answer_text,
            "source": source}


def data_meta(chat, tokenizer) -> Dict:
    """The header settings a file's records were built with: the chat format's thinking setting and the
    tokenizer (its name or path) the ids are of."""
    return {"thinking": bool(chat.thinking), "tokenizer": str(getattr(tokenizer, "name_or_path", "") or "")}


def write_jsonl(path: str, records: Sequence[Mapping], meta: Optional[Mapping] = None) -> None:
    """`meta`: header settings (data_meta: thinking, tokenizer), which readers check against their run."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps({**(meta or {}), "schema": SCHEMA, "version": SCHEMA_VERSION}) + "\n")
        for r in records:
            missing = [k for k in FIELDS if k not in r]
            if missing:
                raise ValueError(f"SFT record lacks {missing}; build records with agentrl_jax.sft_data.record().")
            f.write(json.dumps({k: r[k] for k in FIELDS}) + "\n")


def _header(path: str, f) -> Dict:
    header = json.loads(f.readline() or "{}")
    if header.get("schema") != SCHEMA or header.get("version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: SFT data schema {header.get('schema')!r} version {header.get('version')!r}, "
                         f"this code reads {SCHEMA!r} version {SCHEMA_VERSION}; regenerate the file.")
    return header


def _open(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SFT data file {path!r} not found; write it with agentrl_jax.sft_data.write_jsonl "
                                "(or fix the path in sft.data).")
    return open(path)


def read_jsonl(path: str) -> List[Dict]:
    with _open(path) as f:
        _header(path, f)
        return [json.loads(line) for line in f if line.strip()]


def read_meta(path: str) -> Dict:
    """The header's settings besides schema and version (thinking, tokenizer; {} for a file without them)."""
    with _open(path) as f:
        return {k: v for k, v in _header(path, f).items() if k not in ("schema", "version")}


def mix(sources: Mapping[str, Sequence[Dict]], ratios: Mapping[str, float], total: int,
        rng: np.random.Generator) -> List[Dict]:
    """`total` state-action pairs drawn from `sources` in proportion to `ratios` (counted in pairs; largest
    remainder rounding, so the counts sum to `total`). A source with fewer pairs than its share is repeated in
    whole shuffled passes plus a random part of one more, so every pair is seen as often as any other, +-1
    (drawing with replacement would leave some out); each source's order is shuffled by `rng`."""
    unknown = set(ratios) - set(sources)
    if unknown:
        raise ValueError(f"sft.mix names {sorted(unknown)} with no data; sft.data has {sorted(sources)}.")
    names = [n for n in ratios if ratios[n] > 0]
    if not names:
        raise ValueError("sft.mix needs at least one positive ratio.")
    w = np.array([ratios[n] for n in names], np.float64)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts))[: total - counts.sum()]] += 1
    out: List[Dict] = []
    for n, c in zip(names, counts):
        pool = list(sources[n])
        if not pool:
            raise ValueError(f"SFT source {n!r} has no records.")
        passes = -(-c // len(pool))
        idx = np.concatenate([rng.permutation(len(pool)) for _ in range(passes)])
        out.extend(pool[i] for i in idx[:c])
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def pack(records: Sequence[Mapping], prompt_len: int, response_len: int, pad_id: int) -> Dict[str, np.ndarray]:
    """Window samples [prompt P (left-padded, left-truncated) | answer N (right-padded, cut at N)] as the RL
    loss sees them: ids, attn, response_mask."""
    p, n = prompt_len, response_len
    ids = np.full((len(records), p + n), pad_id, np.int32)
    attn = np.zeros((len(records), p + n), np.int32)
    resp = np.zeros((len(records), n), np.float32)
    for j, r in enumerate(records):
        prompt, answer = list(r["prompt_ids"])[-p:], list(r["answer_ids"])[:n]
        ids[j, p - len(prompt): p], attn[j, p - len(prompt): p] = prompt, 1
        ids[j, p: p + len(answer)], attn[j, p: p + len(answer)] = answer, 1
        resp[j, : len(answer)] = 1.0
    return {"ids": ids, "attn": attn, "response_mask": resp}
