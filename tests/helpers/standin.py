"""A small stand-in language model with the same annotation convention as the real CausalLM.

Every nnx.Param carries logical axis names via ``nnx.with_partitioning`` and activations are constrained
with ``partitioning.constrain``, so the sharding / checkpoint code sees what it will see with the real model.
Also shared by the subprocess scripts in this folder.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agentrl_jax.partitioning import constrain


def _init(names, base=None):
    return nnx.with_partitioning(base or nnx.initializers.normal(0.02), names)


class Block(nnx.Module):
    def __init__(self, hidden: int, mlp: int, rngs: nnx.Rngs):
        self.norm = nnx.Param(jnp.ones((hidden,)), out_sharding=("embed",))
        self.up = nnx.Linear(hidden, mlp, use_bias=True, kernel_init=_init(("embed", "mlp")),
                             bias_init=_init(("mlp",), nnx.initializers.zeros), rngs=rngs)
        self.down = nnx.Linear(mlp, hidden, use_bias=False, kernel_init=_init(("mlp", "embed")), rngs=rngs)

    def __call__(self, x):
        h = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * self.norm[...]
        h = constrain(jax.nn.gelu(self.up(h)), ("batch", "length", "act_mlp"))
        return x + constrain(self.down(h), ("batch", "length", "act_embed"))


class StandinLM(nnx.Module):
    """Embedding -> residual MLP blocks (with a causal running-mean token mixer) -> tied output."""

    def __init__(self, vocab: int = 64, hidden: int = 32, mlp: int = 64, layers: int = 2, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, hidden, embedding_init=_init(("vocab", "embed")), rngs=rngs)
        self.blocks = nnx.List([Block(hidden, mlp, rngs) for _ in range(layers)])

    def __call__(self, ids):
        x = constrain(self.embed(ids), ("batch", "length", "act_embed"))
        for blk in self.blocks:
            # causal mixing so position t sees tokens <= t
            x = x + jnp.cumsum(x, axis=1) / jnp.arange(1, x.shape[1] + 1)[None, :, None]
            x = blk(x)
        return constrain(self.embed.attend(x), ("batch", "length", "act_vocab"))


def lm_loss(model, batch, key):
    """Next-token cross-entropy averaged over examples (per-example mean over positions)."""
    del key
    ids = batch["ids"]
    logits = model(ids[:, :-1]).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits)
    tok = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    per_ex = -tok.mean(-1)
    loss = per_ex.mean()
    return loss, {"ppl": jnp.exp(loss)}


def make_batch(seed: int, step: int, batch: int = 16, length: int = 9, vocab: int = 64):
    """Deterministic data from (seed, step): a learnable pattern (next = prev + 1 mod vocab) with noise."""
    rng = np.random.default_rng([seed, step])
    start = rng.integers(0, vocab, size=(batch, 1))
    ids = (start + np.arange(length)[None]) % vocab
    noise = rng.random(ids.shape) < 0.1
    ids = np.where(noise, rng.integers(0, vocab, size=ids.shape), ids)
    return {"ids": ids.astype(np.int32)}


# ------------------------------------------------------------------------------ the real model, tiny
def tiny_causal_lm_config(vocab: int = 64):
    from agentrl_jax.models import ModelConfig

    # 4 query heads / 2 kv heads: kv_heads is indivisible by tensor=8 and must fall back to replication.
    return ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def tiny_causal_lm(seed: int = 0, vocab: int = 64):
    from agentrl_jax.models import CausalLM

    cfg = tiny_causal_lm_config(vocab)
    return lambda: CausalLM(cfg, rngs=nnx.Rngs(seed))
