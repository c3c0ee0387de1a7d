"""Greedy generation throughput: our jitted KV-cache decode vs transformers' `generate` (PyTorch, CPU).

Both run the SAME weights: a Llama-style model is random-initialised with transformers/torch, written with
`save_pretrained`, and loaded into ours with `load_pretrained`. Same prompt (random ids), greedy, no stop, for
each batch size. Reported: tokens/s of the decode (batch * new tokens / wall time of a full call), time to
first token (a call with max_new_tokens=1: prefill + one token), and our compile time separately (first call
minus a warm call). Also whether both produce the same greedy tokens.

    python benchmarks/generate.py                 # ~134M params: hidden 768, 12 layers, vocab 32k
    python benchmarks/generate.py --quick         # small model, for a smoke run
    python benchmarks/generate.py --batches 1,16,64 --new_tokens 128 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


def _timed(fn, repeats=1):
    best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small model and few tokens (smoke run)")
    p.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv_heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting (best is reported)")
    p.add_argument("--json", default=None, help="write results to this path")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.vocab = 256, 4, 4, 4, 512, 8000
        args.new_tokens = min(args.new_tokens, 32)
        args.batches = "1,4" if args.batches == "1,16,64" else args.batches
    batches = [int(b) for b in args.batches.split(",")]

    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from agentrl_jax.generate import GenerationConfig, generate
    from agentrl_jax.models import load_pretrained

    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048, initializer_range=0.05, tie_word_embeddings=False,
    )
    tm = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    n_params = sum(p.numel() for p in tm.parameters())
    with tempfile.TemporaryDirectory() as folder:
        tm.save_pretrained(folder)
        ours, _ = load_pretrained(folder, load_tokenizer=False)

    P, N = args.prompt_len, args.new_tokens
    rs = np.random.RandomState(0)
    prompt = rs.randint(3, args.vocab, (1, P))
    rows = []
    print(f"model: {n_params / 1e6:.1f}M params (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}); "
          f"prompt {P}, new tokens {N}; jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
          f"{os.cpu_count()} CPUs (shared machine: numbers are noisy)")
    for b in batches:
        ids = np.repeat(prompt, b, axis=0).astype(np.int32)
        cfg_n = GenerationConfig(max_new_tokens=N, temperature=0.0)
        cfg_1 = GenerationConfig(max_new_tokens=1, temperature=0.0)

        def ours_run(cfg):
            r = generate(ours, jnp.asarray(ids), None, config=cfg, cache_length=P + N)
            r.tokens.block_until_ready()
            return r

        first, _ = _timed(lambda: ours_run(cfg_n))
        t_ours, res = _timed(lambda: ours_run(cfg_n), args.repeats)
        first1, _ = _timed(lambda: ours_run(cfg_1))
        ttft_ours, _ = _timed(lambda: ours_run(cfg_1), args.repeats)

        tids = torch.tensor(ids, dtype=torch.long)

        def hf_run(n):
            with torch.no_grad():
                return tm.generate(tids, attention_mask=torch.ones_like(tids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, eos_token_id=None, pad_token_id=0)

        hf_run(2)  # warm-up
        t_hf, hf_out = _timed(lambda: hf_run(N), args.repeats)
        ttft_hf, _ = _timed(lambda: hf_run(1), args.repeats)
        same = float(np.mean(np.asarray(res.tokens) == hf_out[:, P:].numpy()))
        row = dict(batch=b, ours_tok_s=b * N / t_ours, hf_tok_s=b * N / t_hf, speedup=t_hf / t_ours,
                   ours_ttft_ms=1e3 * ttft_ours, hf_ttft_ms=1e3 * ttft_hf,
                   ours_compile_s=(first - t_ours) + (first1 - ttft_ours), same_tokens=same)
        rows.append(row)
        print(f"  batch {b}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items()), flush=True)

    hdr = f"{'batch':>5} | {'ours tok/s':>10} | {'HF tok/s':>9} | {'speedup':>7} | {'ours TTFT ms':>12} | " \
          f"{'HF TTFT ms':>10} | {'ours compile s':>14} | {'same greedy':>11}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['batch']:>5} | {r['ours_tok_s']:>10.1f} | {r['hf_tok_s']:>9.1f} | {r['speedup']:>6.2f}x | "
              f"{r['ours_ttft_ms']:>12.1f} | {r['hf_ttft_ms']:>10.1f} | {r['ours_compile_s']:>14.1f} | "
              f"{r['same_tokens']:>10.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"params": n_params, "args": vars(args), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
