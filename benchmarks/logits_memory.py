"""Compiled peak memory of the RL scoring pass and train step: the old way (whole minibatch, whole [B, N, V]
float32 logits) against the trainer's (training-sized micro-batches, logits in slices of the response).

    python benchmarks/logits_memory.py                       # Llama-3.1-8B vocabulary, the study's lengths
    python benchmarks/logits_memory.py --layers 1 --hidden 1024 --minibatch 64

Nothing runs: every program is compiled from abstract shapes and XLA's own memory analysis
(`compiled.memory_analysis()`: arguments + outputs + temporaries) gives its peak, so an 8B-vocabulary
program "fits" a laptop. The trunk is cut to `--layers` layers (the logits part, what this measures, does not
depend on depth; activations per layer are listed separately by the temp size). One device.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from agentrl_jax import learner, rl  # noqa: E402
from agentrl_jax.models import CausalLM  # noqa: E402
from agentrl_jax.models.config import ModelConfig  # noqa: E402
from agentrl_jax.policy import Policy  # noqa: E402

GIB = 2.0**30


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=128_256, help="Llama-3.1-8B's vocabulary")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=2048, help="the study's prompt buffer")
    ap.add_argument("--response", type=int, default=512, help="the study's max response tokens")
    ap.add_argument("--minibatch", type=int, default=256, help="the study's minibatch (gin/runs/grpo.gin)")
    ap.add_argument("--micro", type=int, default=16, help="train.micro_batch_size (gin/runs/grpo.gin)")
    ap.add_argument("--chunk", type=int, default=128, help="train.logits_chunk_size")
    return ap.parse_args(argv)


def _config(a) -> ModelConfig:
    return ModelConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=int(3.5 * a.hidden),
                       num_layers=a.layers, num_heads=a.hidden // 128, num_kv_heads=8 if a.hidden >= 1024 else 2,
                       head_dim=128, tie_word_embeddings=False, max_position_embeddings=a.prompt + a.response)


def _abstract_batch(b: int, a) -> dict:
    t, n = a.prompt + a.response, a.response
    f32, i32 = jnp.float32, jnp.int32
    shapes = {"ids": ((b, t), i32), "attn": ((b, t), i32), "response_mask": ((b, n), f32),
              "old_logprobs": ((b, n), f32), "ref_logprobs": ((b, n), f32), "advantages": ((b,), f32),
              "weight": ((b,), f32), **{k: ((b,), f32) for k in learner.COUNT_KEYS}}
    return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}


def peak_bytes(fn, *args) -> tuple:
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return total, m.temp_size_in_bytes


def measure(a) -> list:
    cfg = _config(a)
    policy = nnx.eval_shape(lambda: Policy(CausalLM(cfg, rngs=nnx.Rngs(0))))
    graphdef, params = nnx.split(policy, nnx.Param)
    rl_cfg = rl.RLConfig(kl_coef=0.01)

    def score(chunk):
        return lambda p, mb: learner.score_samples(nnx.merge(graphdef, p), mb, a.prompt, 1.0, False, chunk)

    def grad(chunk):
        loss = functools.partial(learner.rl_loss, config=rl_cfg, prompt_len=a.prompt, temperature=1.0,
                                 chunk_size=chunk)
        return lambda p, mb: jax.grad(lambda q: loss(nnx.merge(graphdef, q), mb, None)[0])(p)

    rows = []
    for name, fn, b, chunk in (
        ("score, old: whole minibatch, whole logits", score, a.minibatch, None),
        ("score, new: micro-batch, logits in slices", score, a.micro, a.chunk),
        ("train grad, old: micro-batch, whole logits", grad, a.micro, None),
        ("train grad, new: micro-batch, logits in slices", grad, a.micro, a.chunk),
    ):
        total, temp = peak_bytes(fn(chunk), params, _abstract_batch(b, a))
        rows.append({"program": name, "rows": b, "chunk": chunk, "peak_gib": total / GIB, "temp_gib": temp / GIB})
    return rows


def main(argv=None):
    a = parse(argv)
    rows = measure(a)
    logits = a.minibatch * a.response * a.vocab * 4 / GIB
    print(f"vocab {a.vocab}, hidden {a.hidden}, {a.layers} layer(s), prompt {a.prompt} + response {a.response}; "
          f"whole-minibatch fp32 response logits alone: {logits:.1f} GiB; device: {jax.devices()[0].device_kind}")
    print("| program | rows | logits chunk | compiled peak GiB | of which temporaries GiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['program']} | {r['rows']} | {r['chunk'] or 'all'} | {r['peak_gib']:.2f} | {r['temp_gib']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
