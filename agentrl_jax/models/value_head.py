"""Scalar value head for PPO critics: final-norm hidden states → one float32 value per token."""
from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
from flax import nnx


@gin.configurable
class ValueHead(nnx.Module):
    """Linear map hidden [B, L, D] → values [B, L] (float32, computed in float32 whatever the model dtype).

    init_scale: stddev of the kernel init (small, so initial values are near zero and do not swamp early
    advantages).
    """

    def __init__(self, hidden_size: int, *, rngs: nnx.Rngs, init_scale: float = 0.01):
        if hidden_size <= 0:
            raise ValueError(f"ValueHead needs a positive hidden_size, got {hidden_size}")
        init = nnx.initializers.normal(stddev=init_scale)
        self.kernel = nnx.Param(init(rngs.params(), (hidden_size,), jnp.float32), out_sharding=("embed",),
                                eager_sharding=False)
        self.bias = nnx.Param(jnp.zeros((), jnp.float32), out_sharding=(), eager_sharding=False)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return jnp.einsum("...d,d->...", hidden.astype(jnp.float32), self.kernel[...]) + self.bias[...]
