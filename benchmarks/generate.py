"""Greedy generation throughput: our jitted KV-cache decode vs transformers' `generate` (PyTorch, CPU).

Both run the SAME weights: a Llama-style model is random-initialised with transformers/torch (seed 0), written
once with `save_pretrained` to a temp folder, and loaded from it by each side (ours via `load_pretrained`).
Same prompt (random ids, seed 0), greedy, no stop, for each batch size.

Method (low noise, fair): every measurement runs in its OWN fresh subprocess (this script re-invoked with
`--side ours|hf --batch B`, answering with one `RESULT {json}` line), so each side gets all cores with no other
framework's thread pool in the process (torch matmuls ran 4-15x slower right after JAX work in one process).
For each batch size the runs interleave ours, hf, ours, hf, ... (`--repeats` pairs); the table shows medians.

Reported per batch: tokens/s of the decode (batch * new tokens / wall time of a warm full call), the median
of the per-repeat ratios ours/hf, time to first token (a warm call with max_new_tokens=1: prefill + one
token), our compile time separately (first calls minus warm calls; every fresh process compiles again),
whether both produce the same greedy tokens, and os.getloadavg() (the 1-min value includes this benchmark's
own process, ~1). The parent process imports neither jax nor torch.

Per decode step (ms/step = (full call - TTFT) / (new tokens - 1)), beside a memory floor: the time to read every
fp32 weight plus the K/V cached so far (averaged over the call) once at this host's read bandwidth, measured in
its own fresh process (a jitted sum over 256 MB). It shows how far from the hardware each side is: on the 2-core
Xeon this project is built on, the default model's floor is ~36-38 ms/step at batch 16 while HF takes ~90-120
(128 new tokens: floor 38, ours 113, HF 120 ms/step), so 2x over HF there needs ~60 ms/step, 1.6x the floor.

    python benchmarks/generate.py                 # ~134M params (hidden 768, 12 layers, vocab 32k), batches
                                                  # 1,16,64, 32 new tokens, 3 repeats (~7-10 min on 2 idle cores, estimated)
    python benchmarks/generate.py --quick         # small model, for a smoke run
    python benchmarks/generate.py --tiny --batches 1,2 --new_tokens 4 --repeats 1   # ~1 min (process start-ups)
    python benchmarks/generate.py --new_tokens 128 --json out.json   # longer decode: roughly 3x the time
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)
_RESULT = "RESULT "  # prefix of the one line a child process answers with


def _prompt(vocab: int, prompt_len: int, batch: int) -> np.ndarray:
    """The shared prompt: one row of random ids (seed 0) repeated `batch` times, int32 [batch, prompt_len]."""
    row = np.random.RandomState(0).randint(3, vocab, (1, prompt_len))
    return np.repeat(row, batch, axis=0).astype(np.int32)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# ----------------------------------------------------------------------------------------------- child sides
def _side_init(args) -> dict:
    """Random-init the HF Llama model (seed 0) and write it to args.folder."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048, initializer_range=0.05, tie_word_embeddings=False,
    )
    tm = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    tm.save_pretrained(args.folder)
    return dict(params=sum(p.numel() for p in tm.parameters()), torch=torch.__version__,
                transformers=transformers.__version__)


def _side_ours(args) -> dict:
    """Ours in a fresh process: first (compiling) and warm calls of N tokens and of 1 token."""
    import jax
    import jax.numpy as jnp

    from agentrl_jax.generate import GenerationConfig, generate
    from agentrl_jax.models import load_pretrained

    model, _ = load_pretrained(args.folder, load_tokenizer=False)
    ids = jnp.asarray(_prompt(args.vocab, args.prompt_len, args.batch))
    P, N = args.prompt_len, args.new_tokens

    def run(n):
        r = generate(model, ids, None, config=GenerationConfig(max_new_tokens=n, temperature=0.0),
                     cache_length=P + N)
        r.tokens.block_until_ready()
        return r

    first_n, _ = _timed(lambda: run(N))
    load = os.getloadavg()[0]
    t_n, res = _timed(lambda: run(N))
    first_1, _ = _timed(lambda: run(1))
    t_1, _ = _timed(lambda: run(1))
    np.save(args.tokens_out, np.asarray(res.tokens))
    return dict(seconds=t_n, ttft_s=t_1, compile_s=max(0.0, first_n - t_n) + max(0.0, first_1 - t_1),
                load1=load, device=f"{jax.devices()[0].platform} x{jax.device_count()}", jax=jax.__version__)


def _side_hf(args) -> dict:
    """transformers' generate in a fresh process: a 2-token warm-up, then N tokens and 1 token."""
    import torch
    import transformers

    tm = transformers.AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32).eval()
    tids = torch.tensor(_prompt(args.vocab, args.prompt_len, args.batch), dtype=torch.long)

    def run(n):
        with torch.no_grad():
            return tm.generate(tids, attention_mask=torch.ones_like(tids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, eos_token_id=None, pad_token_id=0)

    run(2)  # warm-up (allocator, kernels)
    load = os.getloadavg()[0]
    t_n, out = _timed(lambda: run(args.new_tokens))
    t_1, _ = _timed(lambda: run(1))
    np.save(args.tokens_out, out[:, args.prompt_len:].numpy())
    return dict(seconds=t_n, ttft_s=t_1, load1=load, threads=torch.get_num_threads())


def _side_bandwidth(args) -> dict:
    """The host's memory read bandwidth: best of 5 jitted sums over a 256 MB float32 array (all threads)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((64 * 2**20,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(a).block_until_ready()
    best = min(_timed(lambda: total(a).block_until_ready())[0] for _ in range(5))
    return dict(read_gb_s=a.nbytes / best / 1e9)


def decode_floor_ms(params: int, batch: int, layers: int, kv_heads: int, head_dim: int, prompt_len: int,
                    new_tokens: int, read_gb_s: float) -> float:
    """Lower bound on one fp32 decode step: every weight and the K/V of the tokens cached so far (on average
    over the call) read once from memory at `read_gb_s`; compute, writes and the framework cost nothing."""
    avg_cached = prompt_len + new_tokens / 2
    kv_bytes = 2 * layers * batch * kv_heads * head_dim * 4 * avg_cached
    return 1e3 * (4 * params + kv_bytes) / (read_gb_s * 1e9)


_SIDES = {"init": _side_init, "ours": _side_ours, "hf": _side_hf, "bandwidth": _side_bandwidth}


def _child(args) -> None:
    out = _SIDES[args.side](args)
    print(_RESULT + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------------------- parent
def _spawn(args, side: str, folder: str, batch: int = 0, tokens_out: str = "") -> dict:
    """Re-invoke this script for one side in a fresh process; return its RESULT json (raise on failure)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--folder", folder,
           "--batch", str(batch), "--tokens_out", tokens_out, "--new_tokens", str(args.new_tokens),
           "--prompt_len", str(args.prompt_len), "--vocab", str(args.vocab), "--hidden", str(args.hidden),
           "--layers", str(args.layers), "--heads", str(args.heads), "--kv_heads", str(args.kv_heads),
           "--intermediate", str(args.intermediate)]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark side {side!r} (batch {batch}) failed with exit code {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return dict(json.loads(lines[-1][len(_RESULT):]), started=started)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small model (hidden 256, 4 layers) and <= 32 tokens")
    p.add_argument("--tiny", action="store_true", help="tiny model (hidden 64, 2 layers, vocab 512): seconds")
    p.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
    p.add_argument("--new_tokens", type=int, default=32,
                   help="tokens per call (32 keeps the default run under ~10 min on 2 cores; HF at batch 64 is slow)")
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv_heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved (ours, hf) pairs per batch size, each side in a fresh process; medians shown")
    p.add_argument("--json", default=None, help="write results to this path")
    # Internal: one side of one measurement, run by the parent in a fresh process.
    p.add_argument("--side", choices=sorted(_SIDES), default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tokens_out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick and args.tiny:
        p.error("pick one of --quick and --tiny")
    if args.quick:
        args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.vocab = 256, 4, 4, 4, 512, 8000
        args.new_tokens = min(args.new_tokens, 32)
        args.batches = "1,4" if args.batches == "1,16,64" else args.batches
    if args.tiny:
        args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.vocab = 64, 2, 4, 2, 128, 512
        args.new_tokens = min(args.new_tokens, 8)
        args.batches = "1,2" if args.batches == "1,16,64" else args.batches
    try:
        args.batch_list = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches must be comma-separated integers like 1,16,64, got {args.batches!r}")
    if not args.batch_list or min(args.batch_list) < 1:
        p.error(f"--batches must be positive, got {args.batches!r}")
    for name in ("new_tokens", "prompt_len", "repeats", "hidden", "layers", "heads", "kv_heads", "vocab"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        p.error(f"--hidden ({args.hidden}) must divide by --heads ({args.heads}), which must divide by "
                f"--kv_heads ({args.kv_heads})")
    if args.prompt_len + args.new_tokens > 2048:
        p.error("--prompt_len + --new_tokens must be <= 2048 (the model's max positions)")
    return args


def main(argv=None):
    args = _parse(argv)
    if args.side is not None:
        return _child(args)
    N = args.new_tokens
    step_ms = lambda x: 1e3 * (x["seconds"] - x["ttft_s"]) / max(N - 1, 1)  # noqa: E731  one decode step
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        folder = os.path.join(tmp, "model")
        info = _spawn(args, "init", folder)
        bw = _spawn(args, "bandwidth", folder)["read_gb_s"]
        print(f"model: {info['params'] / 1e6:.1f}M params (hidden {args.hidden}, {args.layers} layers, vocab "
              f"{args.vocab}); prompt {args.prompt_len}, new tokens {N}; torch {info['torch']}, transformers "
              f"{info['transformers']}; {os.cpu_count()} CPUs; each side in a fresh process, interleaved, "
              f"{args.repeats} repeat(s)", flush=True)
        for b in args.batch_list:
            runs = []
            for r in range(args.repeats):
                pair = {}
                for side in ("ours", "hf"):
                    path = os.path.join(tmp, f"{side}_{b}_{r}.npy")
                    pair[side] = _spawn(args, side, folder, b, path)
                    pair[side]["tokens"] = np.load(path)
                o, h = pair["ours"], pair["hf"]
                if o["tokens"].shape != h["tokens"].shape:
                    raise RuntimeError(f"token shapes differ: ours {o['tokens'].shape}, hf {h['tokens'].shape}")
                runs.append(dict(repeat=r, ours_tok_s=b * N / o["seconds"], hf_tok_s=b * N / h["seconds"],
                                 ours_step_ms=step_ms(o), hf_step_ms=step_ms(h),
                                 ratio=h["seconds"] / o["seconds"], ours_ttft_ms=1e3 * o["ttft_s"],
                                 hf_ttft_ms=1e3 * h["ttft_s"], ours_compile_s=o["compile_s"],
                                 same_tokens=float(np.mean(o["tokens"] == h["tokens"])),
                                 ours_load1=o["load1"], hf_load1=h["load1"], hf_threads=h["threads"],
                                 ours_started=o["started"], hf_started=h["started"],
                                 device=o["device"], jax=o["jax"]))
                print(f"  batch {b} repeat {r}: ours {runs[-1]['ours_tok_s']:.1f} tok/s, hf "
                      f"{runs[-1]['hf_tok_s']:.1f} tok/s, ratio {runs[-1]['ratio']:.2f}x", flush=True)
            med = lambda k: statistics.median(x[k] for x in runs)  # noqa: E731
            rows.append(dict(batch=b, ours_tok_s=med("ours_tok_s"), hf_tok_s=med("hf_tok_s"),
                             speedup=med("ratio"), ours_ttft_ms=med("ours_ttft_ms"), hf_ttft_ms=med("hf_ttft_ms"),
                             ours_step_ms=med("ours_step_ms"), hf_step_ms=med("hf_step_ms"),
                             floor_step_ms=decode_floor_ms(info["params"], b, args.layers, args.kv_heads,
                                                           args.hidden // args.heads, args.prompt_len, N, bw),
                             ours_compile_s=med("ours_compile_s"), same_tokens=min(x["same_tokens"] for x in runs),
                             loadavg=list(os.getloadavg()), repeats=args.repeats, device=runs[0]["device"],
                             jax=runs[0]["jax"],
                             hf_threads=runs[0]["hf_threads"], runs=runs))

    print(f"jax {rows[0]['jax']} on {rows[0]['device']}, torch "
          f"{rows[0]['hf_threads']} threads; medians of {args.repeats} interleaved fresh-process repeat(s); "
          f"speedup = median of per-repeat ratios; load = os.getloadavg() 1/5/15 min after the row; "
          f"total {time.perf_counter() - t0:.0f} s")
    print(f"ms/step = one decode step, (full call - TTFT) / (new tokens - 1); floor = every fp32 weight and the "
          f"cached K/V read once at this host's measured {bw:.1f} GB/s (a lower bound for any implementation once "
          f"the weights outgrow the CPU caches, as the default model's do); "
          f"'2x HF' = the step time a 2x speedup over HF's decode would need")
    hdr = f"{'batch':>5} | {'ours tok/s':>10} | {'HF tok/s':>9} | {'speedup':>7} | {'ours TTFT ms':>12} | " \
          f"{'HF TTFT ms':>10} | {'ours ms/step':>12} | {'HF ms/step':>10} | {'2x HF':>6} | {'floor':>6} | " \
          f"{'ours compile s':>14} | {'same greedy':>11} | {'load 1/5/15m':>14}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        load = "/".join(f"{x:.1f}" for x in r["loadavg"])
        print(f"{r['batch']:>5} | {r['ours_tok_s']:>10.1f} | {r['hf_tok_s']:>9.1f} | {r['speedup']:>6.2f}x | "
              f"{r['ours_ttft_ms']:>12.1f} | {r['hf_ttft_ms']:>10.1f} | {r['ours_step_ms']:>12.1f} | "
              f"{r['hf_step_ms']:>10.1f} | {r['hf_step_ms'] / 2:>6.1f} | {r['floor_step_ms']:>6.1f} | "
              f"{r['ours_compile_s']:>14.1f} | "
              f"{r['same_tokens']:>10.0%} | {load:>14}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"params": info["params"], "read_gb_s": bw, "args": {k: v for k, v in vars(args).items()
                                                           if k not in ("side", "folder", "batch", "tokens_out")},
                       "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
