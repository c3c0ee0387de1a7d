"""A tiny Llama-style model, built locally, for tests and the CPU default.

Everything here is produced offline and deterministically:

* `train_tiny_tokenizer`: a byte-level BPE trained with the `tokenizers` library on text that looks like what
  our environments emit (Sokoban coordinate and grid renderings, the prompt template, `<think>`/`<action>`
  answers, ALFWorld / ScienceWorld style sentences). Every byte is in the alphabet, so any text round-trips.
* `CHAT_TEMPLATE`: ChatML with an optional `<think>` block, switched by `enable_thinking` like Qwen3.
* `tiny_config` / `write_tiny_folder` / `ensure_tiny_folder`: a plain Hugging Face folder (config.json,
  tokenizer files, generation_config.json, random `model.safetensors` under HF Llama tensor names) that
  transformers and our own loader both read.

This module deliberately imports only numpy, safetensors, tokenizers and transformers (plus the shared prompt
text from `envs.prompting`), so it works before / without the Flax model package.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import gin
import numpy as np

from envs.prompting import ANSWER_FORMAT_NO_THINKING, ANSWER_FORMAT_THINKING

# Bump when the corpus, template or folder layout changes: it is part of the cache key.
TINY_FORMAT_VERSION = 1

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # ids 0, 1, 2 (the same ids SmolLM2 uses)
# Single tokens that decode as text, so the rollout can find the answer tags straight from generated ids.
TAG_TOKENS = ("<think>", "</think>", "<action>", "</action>")

# ChatML; assistant turns may carry `reasoning_content`, rendered in a think block. When `enable_thinking` is
# false the generation prompt ends with an empty think block (as Qwen3 does), so the model answers directly.
# Every turn is rendered the same wherever it sits, which keeps the rendering prefix-stable across turns.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' and message.get('reasoning_content') %}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def cache_root(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """Where built artefacts live: `cache_dir`, else `$AGENTRL_CACHE`, else `<repo>/cache`."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("AGENTRL_CACHE")
    return Path(env) if env else _repo_root() / "cache"


# ----------------------------------------------------------------------------------------------------------
# Corpus: programmatic, seeded, our own sentences.
# ----------------------------------------------------------------------------------------------------------

_SOKO_OBJS = ("Wall", "Goal", "Box", "Player", "Box on goal", "Player on goal", "Empty")
_SOKO_GRID_CHARS = "#_OX√PS"
_MOVES = ("up", "down", "left", "right")
_ALF_RECEPTACLES = (
    "cabinet", "countertop", "drawer", "fridge", "microwave", "sinkbasin", "stoveburner", "toaster",
    "coffeemachine", "garbagecan", "shelf", "sidetable", "diningtable", "desk", "dresser", "bed", "sofa",
    "armchair", "safe", "bathtubbasin", "toilet", "cart", "coffeetable", "desklamp", "floorlamp",
)
_ALF_OBJECTS = (
    "apple", "book", "bowl", "bread", "butterknife", "candle", "cd", "cellphone", "cloth", "creditcard",
    "cup", "egg", "fork", "kettle", "keychain", "knife", "lettuce", "mug", "newspaper", "pan", "pen",
    "pencil", "pillow", "plate", "pot", "potato", "remotecontrol", "soapbar", "spatula", "spoon",
    "tissuebox", "tomato", "vase", "watch", "glassbottle", "saltshaker", "peppershaker",
)
_SCI_ROOMS = ("kitchen", "hallway", "bathroom", "workshop", "greenhouse", "art studio", "bedroom",
              "living room", "foundry", "outside")
_SCI_THINGS = (
    "thermometer", "beaker", "stove", "sink", "freezer", "oven", "lighter", "battery", "wire", "light bulb",
    "seed jar", "flower pot", "water", "orange juice", "ice", "soil", "red paint", "blue paint", "bee hive",
    "metal pot", "glass cup", "electric motor", "solar panel", "switch", "door to the hallway",
)
_SCI_ACTIONS = (
    "open OBJ", "close OBJ", "activate OBJ", "deactivate OBJ", "connect OBJ to OBJ", "disconnect OBJ",
    "use OBJ", "use OBJ on OBJ", "look around", "look at OBJ", "look in OBJ", "read OBJ", "move OBJ to OBJ",
    "pick up OBJ", "put down OBJ", "pour OBJ into OBJ", "dunk OBJ into OBJ", "mix OBJ", "go OBJ", "teleport OBJ",
    "eat OBJ", "flush OBJ", "focus on OBJ", "wait", "wait1",
)
_DISTRACTORS = (
    "Broken crate", "Sealed door", "Pile of rubble", "Faded sign", "Leaking pipe", "Loose tile",
)
_DISTRACTOR_DESCS = ("outside the room", "beyond the wall", "inaccessible", "behind a collapsed wall",
                     "on a blocked corridor")
_ENGLISH = (
    "The quick brown fox jumps over the lazy dog.",
    "Nothing happens.",
    "You arrive at the location and look around carefully before deciding what to do next.",
    "It is important to check every container, because the object may be hidden inside.",
    "I should move toward the box first, then push it onto the goal without getting stuck.",
    "If the box is pushed into a corner it can never be moved again, so I must avoid that.",
    "The answer is correct. Well done! Let us try the next task.",
    "Reward: 1.0, done: True, success: True. Reward: -0.1, done: False.",
    "Hello, world! This is a test of the tokenizer: commas, periods; colons and (parentheses).",
    "Step 1: find the object. Step 2: take it. Step 3: put it in the receptacle.",
)


def _sokoban_lines(rng: random.Random) -> Iterable[str]:
    h, w = rng.choice([(6, 6), (7, 7), (8, 8), (6, 8), (10, 10)])
    inner = [(r, c) for r in range(1, h - 1) for c in range(1, w - 1)]
    placed = dict(zip(rng.sample(inner, 3), ("Goal", "Box", "Player")))
    if rng.random() < 0.2:  # sometimes the box already sits on the goal, or the player does
        pos = next(p for p, o in placed.items() if o == "Goal")
        placed[pos] = rng.choice(("Box on goal", "Player on goal"))
    cells = []
    for r in range(h):
        for c in range(w):
            if r in (0, h - 1) or c in (0, w - 1) or ((r, c) not in placed and rng.random() < 0.1):
                cells.append(f"Wall at ({r}, {c})")
            elif (r, c) in placed:
                cells.append(f"{placed[(r, c)]} at ({r}, {c})")
    yield " ".join(cells)
    yield "\n".join("".join(rng.choice(_SOKO_GRID_CHARS) for _ in range(w)) for _ in range(h))
    for _ in range(rng.randint(0, 2)):
        r, c = rng.choice([(-1, rng.randint(0, w)), (h + rng.randint(0, 3), rng.randint(-2, w))])
        yield (f"({r}, {c}) shows a {rng.choice(_DISTRACTORS)} ({rng.choice(_DISTRACTOR_DESCS)}; unreachable).")
    yield (
        "You are a Sokoban solver. Sokoban is a puzzle where you push a box onto the goal. The room is a "
        f"{h}x{w} grid. The state is listed row by row: each object and its (row, column) position. "
        "You can move up, down, left or right; you push a box by walking into it."
    )
    yield f"Your available actions are: {', '.join(_MOVES)}."


def _answer_lines(rng: random.Random, actions: Sequence[str]) -> Iterable[str]:
    action = rng.choice(actions)
    thought = rng.choice(_ENGLISH)
    yield f"<think>{thought} So I will {action}.</think><action>{action}</action>"
    yield f"<think>\n{thought}\n</think>\n\n<action>{action}</action>"
    yield f"<action>{action}</action>"
    yield rng.choice([ANSWER_FORMAT_THINKING, ANSWER_FORMAT_NO_THINKING])


def _alfworld_lines(rng: random.Random) -> Iterable[str]:
    recs = [f"a {r} {rng.randint(1, 6)}" for r in rng.sample(_ALF_RECEPTACLES, rng.randint(4, 12))]
    obj, rec = rng.choice(_ALF_OBJECTS), rng.choice(_ALF_RECEPTACLES)
    n, m = rng.randint(1, 4), rng.randint(1, 3)
    yield ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around "
           f"you, you see {', '.join(recs[:-1])}, and {recs[-1]}.")
    verb = rng.choice(["put a", "put a clean", "put a hot", "put a cool", "put two", "look at", "find two"])
    yield f"Your task is to: {verb} {obj} in {rec}."
    yield f"You arrive at {rec} {m}. On the {rec} {m}, you see a {obj} {n}, and a {rng.choice(_ALF_OBJECTS)} 1."
    yield f"The {rec} {m} is closed. You open the {rec} {m}. In it, you see nothing."
    actions = [f"go to {rec} {m}", f"take {obj} {n} from {rec} {m}", f"move {obj} {n} to {rec} {m}",
               f"open {rec} {m}", f"close {rec} {m}", f"heat {obj} {n} with microwave 1",
               f"cool {obj} {n} with fridge 1", f"clean {obj} {n} with sinkbasin 1", "look", "inventory",
               f"examine {rec} {m}", f"use desklamp {m}"]
    yield "Your admissible actions of the current situation are: [" + ", ".join(f"'{a}'" for a in actions) + "]."
    yield from _answer_lines(rng, actions)


def _sciworld_lines(rng: random.Random) -> Iterable[str]:
    room = rng.choice(_SCI_ROOMS)
    things = rng.sample(_SCI_THINGS, rng.randint(3, 8))
    yield f"This room is called the {room}. In it, you see: \n\t" + "\n\t".join(f"a {t}" for t in things)
    yield f"You also see:\n\tA door to the {rng.choice(_SCI_ROOMS)} (that is open)"
    t = rng.randint(-20, 120)
    yield f"The thermometer measures a temperature of {t} degrees celsius. The {things[0]} is on."
    yield (f"Your task is to boil water. For compounds without a boiling point, combining them is also "
           f"acceptable. First, focus on the substance. Then, take actions that will cause it to change its "
           f"state of matter. Score: {rng.randint(0, 100)}.")
    yield ("Available actions: " + ", ".join(_SCI_ACTIONS) + ". where you should replace the 'OBJ' with the "
           f"objects in the admissible objects list: [{', '.join(things)}]")
    actions = [a.replace("OBJ", rng.choice(things), 1).replace("OBJ", rng.choice(things)) for a in _SCI_ACTIONS]
    yield from _answer_lines(rng, actions)


def default_corpus(n_episodes: int = 120, seed: int = 0) -> list[str]:
    """Seeded env-like text: Sokoban, ALFWorld and ScienceWorld observations, prompts and answers."""
    rng = random.Random(seed)
    lines: list[str] = list(_ENGLISH)
    lines.append("0 1 2 3 4 5 6 7 8 9 10 11 12 100 2024 3.14 -1 -0.1 1e-5")
    lines.extend(role for role in ("system", "user", "assistant") for _ in range(150))
    for _ in range(n_episodes):
        lines.extend(_sokoban_lines(rng))
        lines.extend(_answer_lines(rng, _MOVES))
        lines.extend(_alfworld_lines(rng))
        lines.extend(_sciworld_lines(rng))
        k, step = rng.randint(1, 3), rng.randint(1, 20)
        lines.append(f"Prior to this step, you have already taken {step} step(s). Below are the most recent "
                     f"{k} observations and the corresponding actions you took:")
        lines.append(f"[Observation {step}: 'Nothing happens.', Action {step}: '{rng.choice(_MOVES)}']")
    return lines


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------


def _raw_tokenizer_model():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    # Newlines are isolated first, so no merge ever crosses a line break: chat pieces that end or start with a
    # newline then tokenize identically alone and in context (chat.py relies on this). Digits are split one
    # by one (coordinates, counts), then the GPT-2 byte-level regex does the rest.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


@gin.configurable
def train_tiny_tokenizer(vocab_size: int = 1024, corpus: Optional[Sequence[str]] = None):
    """Train the tiny byte-level BPE tokenizer; returns a `transformers.PreTrainedTokenizerFast`.

    vocab_size: size of the trained BPE vocabulary (256 bytes + 3 specials + merges); the 4 tag tokens
      (`<think>`, `</think>`, `<action>`, `</action>`) are added after it, so `len(tokenizer) == vocab_size + 4`
      when the corpus supports that many merges.
    corpus: lines of training text; default `default_corpus()`. Same corpus -> same tokenizer.

    Specials: `<|endoftext|>`=0 (eos, pad), `<|im_start|>`=1, `<|im_end|>`=2 (end of turn). The tokenizer adds
    no BOS/EOS by itself; the chat template carries its own markers.
    """
    from tokenizers import AddedToken, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
                         f"{256 + len(SPECIAL_TOKENS) + 1} (256 bytes + specials); use e.g. 1024.")
    lines = list(default_corpus() if corpus is None else corpus)
    if not lines or not all(isinstance(s, str) for s in lines):
        raise ValueError("corpus must be a non-empty sequence of strings (or None for the default corpus).")
    tok = _raw_tokenizer_model()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def padded_vocab_size(n_tokens: int, multiple: int = 8) -> int:
    """Embedding rows for `n_tokens`: rounded up to a multiple of 8 (friendlier matmul shapes; the extra rows
    are never produced by the tokenizer)."""
    return -(-n_tokens // multiple) * multiple


# ----------------------------------------------------------------------------------------------------------
# Config, weights, folder
# ----------------------------------------------------------------------------------------------------------


@gin.configurable
def tiny_config(vocab_size: int = 1032, bos_token_id: int = 0, eos_token_id: int = 0, pad_token_id: int = 0,
                **overrides) -> dict:
    """A small Llama config dict in transformers-5 format (RoPE under `rope_parameters`).

    vocab_size: embedding rows; `write_tiny_folder` passes the tokenizer size rounded up to a multiple of 8.
    overrides: any config.json field (e.g. num_hidden_layers=4, tie_word_embeddings=False).
    """
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab_size),
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": int(bos_token_id),
        "eos_token_id": int(eos_token_id),
        "pad_token_id": int(pad_token_id),
        "torch_dtype": "float32",
    }
    if {"rope_theta", "rope_scaling"} & set(overrides):
        # Accept the transformers-4 spelling but store it the transformers-5 way.
        rp = dict(cfg["rope_parameters"])
        if "rope_theta" in overrides:
            rp["rope_theta"] = float(overrides.pop("rope_theta"))
        if overrides.get("rope_scaling"):
            rp.update(overrides.pop("rope_scaling"))
        overrides.pop("rope_scaling", None)
        cfg["rope_parameters"] = rp
    cfg.update(overrides)
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ValueError(f"num_attention_heads={cfg['num_attention_heads']} must be a multiple of "
                         f"num_key_value_heads={cfg['num_key_value_heads']}.")
    return cfg


def random_llama_weights(cfg: dict, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """Random float32 weights under Hugging Face Llama tensor names, shaped (out, in) like torch Linear."""
    rng = np.random.default_rng(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    nq, nkv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def normal(*shape):
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    w = {"model.embed_tokens.weight": normal(v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal(nq, d)
        w[p + "self_attn.k_proj.weight"] = normal(nkv, d)
        w[p + "self_attn.v_proj.weight"] = normal(nkv, d)
        w[p + "self_attn.o_proj.weight"] = normal(d, nq)
        w[p + "mlp.gate_proj.weight"] = normal(f, d)
        w[p + "mlp.up_proj.weight"] = normal(f, d)
        w[p + "mlp.down_proj.weight"] = normal(d, f)
        w[p + "input_layernorm.weight"] = np.ones(d, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
    w["model.norm.weight"] = np.ones(d, np.float32)
    if not cfg.get("tie_word_embeddings", True):
        w["lm_head.weight"] = normal(v, d)
    return w


def save_tokenizer_files(tokenizer, folder: str | os.PathLike) -> None:
    """`save_pretrained` plus the chat template inside tokenizer_config.json (older readers look there)."""
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    cfg_path = folder / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text())
    if tokenizer.chat_template and "chat_template" not in tcfg:
        tcfg["chat_template"] = tokenizer.chat_template
        cfg_path.write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n")
    smap = folder / "special_tokens_map.json"
    if not smap.exists():
        m = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
             if getattr(tokenizer, k, None)}
        extra = list(getattr(tokenizer, "extra_special_tokens", None) or
                     getattr(tokenizer, "additional_special_tokens", None) or [])
        if extra:
            m["additional_special_tokens"] = extra
        smap.write_text(json.dumps(m, indent=2) + "\n")


def write_generation_config(folder: str | os.PathLike, eos_ids: Sequence[int], pad_id: int,
                            bos_id: Optional[int] = None) -> None:
    gen = {"eos_token_id": [int(i) for i in eos_ids], "pad_token_id": int(pad_id)}
    if bos_id is not None:
        gen["bos_token_id"] = int(bos_id)
    (Path(folder) / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


@gin.configurable
def write_tiny_folder(folder: str | os.PathLike, vocab_size: int = 1024, seed: int = 0,
                      **config_overrides) -> Path:
    """Write a complete Hugging Face folder for the tiny model with random weights; returns the folder.

    vocab_size: BPE vocabulary target for `train_tiny_tokenizer`. The config's vocab is the tokenizer size
      rounded up to a multiple of 8. seed: weight init seed. config_overrides: passed to `tiny_config`.
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tiny_tokenizer(vocab_size)
    eot = tok.convert_tokens_to_ids(ENDOFTEXT)
    cfg = tiny_config(vocab_size=padded_vocab_size(len(tok)), bos_token_id=eot, eos_token_id=eot,
                      pad_token_id=eot, **config_overrides)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_tokenizer_files(tok, folder)
    write_generation_config(folder, [tok.convert_tokens_to_ids(IM_END), eot], pad_id=eot, bos_id=eot)
    save_file(random_llama_weights(cfg, seed=seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def atomic_build(target: Path, build) -> Path:
    """Run `build(tmp_folder)` and move the result to `target` in one rename (safe when several test processes
    race to build the same cache entry: the loser's copy is discarded)."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        # mkdtemp makes the folder private; the cache is shared by everyone on the machine.
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ".complete").exists():
                # A stale, incomplete folder from a crashed build: replace it.
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@gin.configurable
def ensure_tiny_folder(cache_dir: Optional[str | os.PathLike] = None, vocab_size: int = 1024, seed: int = 0,
                       **config_overrides) -> Path:
    """The tiny model folder under the cache (`$AGENTRL_CACHE`, default `<repo>/cache`), built once.

    The folder name carries a hash of the settings, so different settings never share a folder and a second
    call is a cheap existence check.
    """
    key = json.dumps({"v": TINY_FORMAT_VERSION, "vocab": vocab_size, "seed": seed, "cfg": config_overrides},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    target = cache_root(cache_dir) / f"tiny-llama-{digest}"
    return atomic_build(target, lambda tmp: write_tiny_folder(tmp, vocab_size=vocab_size, seed=seed,
                                                              **config_overrides))
