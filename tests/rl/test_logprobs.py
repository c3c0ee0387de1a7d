"""token_logprobs / entropy against log_softmax gathers and numpy; chunked equals unchunked."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentrl_jax.rl import (entropy_from_logits, token_logprobs, token_logprobs_and_entropy,
                            token_logprobs_from_hidden)

lp_jit = jax.jit(token_logprobs, static_argnames="chunk_size")
ent_jit = jax.jit(entropy_from_logits, static_argnames="chunk_size")


def _data(b=2, t=7, v=11, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(scale=scale, size=(b, t, v)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    return logits, targets


def _numpy_logprobs(logits, targets, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]


def test_matches_log_softmax_gather_and_numpy():
    logits, targets = _data()
    got = lp_jit(logits, targets)
    assert got.dtype == jnp.float32 and got.shape == (2, 7)
    want = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, _numpy_logprobs(logits, targets), rtol=1e-5, atol=1e-6)
    # temperature divides the logits
    np.testing.assert_allclose(lp_jit(logits, targets, temperature=0.7),
                               _numpy_logprobs(logits, targets, 0.7), rtol=1e-5, atol=1e-6)


@functools.partial(jax.jit, static_argnames="chunk")
def _lp_ent_and_grad(logits, targets, chunk):
    """Values of both functions and the gradient of a scalar mixing them, at one chunk size."""
    f = lambda x: (token_logprobs(x, targets, chunk_size=chunk), entropy_from_logits(x, chunk_size=chunk))
    lp, ent = f(logits)
    grad = jax.grad(lambda x: jnp.sum(f(x)[0] * f(x)[1]))(logits)
    return lp, ent, grad


@functools.lru_cache(maxsize=None)
def _unchunked():
    return _lp_ent_and_grad(*_data(), chunk=None)


@pytest.mark.parametrize("chunk", [3, 16])   # 3 leaves a remainder of 1; 16 is longer than T
def test_chunked_equals_unchunked_values_and_grads(chunk):
    got = _lp_ent_and_grad(*_data(), chunk=chunk)
    for a, b in zip(got, _unchunked()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_entropy_uniform_and_onehot():
    v = 13
    np.testing.assert_allclose(ent_jit(jnp.zeros((2, 3, v))), np.full((2, 3), np.log(v)), rtol=1e-6)
    peaked = jnp.zeros((1, 1, v)).at[0, 0, 4].set(1e4)
    np.testing.assert_allclose(ent_jit(peaked), [[0.0]], atol=1e-6)
    # temperature: entropy of (2 * logits) at temperature 2 equals entropy of logits
    logits, _ = _data()
    np.testing.assert_allclose(ent_jit(2 * logits, temperature=2.0), ent_jit(logits),
                               rtol=1e-5, atol=1e-6)
    # and matches -sum p log p
    p = jax.nn.softmax(logits, -1)
    np.testing.assert_allclose(ent_jit(logits), -jnp.sum(p * jnp.log(p), -1), rtol=1e-5, atol=1e-6)


def test_bfloat16_logits_and_combined():
    logits, targets = _data(t=9)
    lb = logits.astype(jnp.bfloat16)
    lp, ent = jax.jit(token_logprobs_and_entropy, static_argnames="chunk_size")(lb, targets, chunk_size=4)
    assert lp.dtype == jnp.float32 and ent.dtype == jnp.float32
    # same as the float32 computation on the (rounded) bf16 values
    np.testing.assert_allclose(lp, lp_jit(lb.astype(jnp.float32), targets), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ent, ent_jit(lb.astype(jnp.float32)), rtol=1e-6, atol=1e-6)


def test_bad_inputs_raise():
    logits, targets = _data()
    with pytest.raises(ValueError, match="logits.shape"):
        token_logprobs(logits, targets[:, :-1])
    with pytest.raises(ValueError, match="integer"):
        token_logprobs(logits, targets.astype(jnp.float32))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, targets, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_from_logits(logits, chunk_size=0)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        entropy_from_logits(logits[0])


def _hidden_data(b=2, t=9, d=5, v=13, seed=4):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
    tg = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    return h, w, tg


@functools.partial(jax.jit, static_argnames="chunk")
def _from_hidden_and_grads(h, w, tg, chunk):
    f = lambda h, w: token_logprobs_from_hidden(h, w, tg, temperature=0.8, chunk_size=chunk, with_entropy=True)
    lp, ent = f(h, w)
    grads = jax.grad(lambda h, w: _mix(*f(h, w)), argnums=(0, 1))(h, w)
    return lp, ent, grads


def _mix(lp, ent):
    return jnp.sum(lp) + 0.1 * jnp.sum(ent)


def test_from_hidden_equals_logits_path_values_and_grads():
    h, w, tg = _hidden_data()

    @jax.jit
    def reference(h, w):
        f = lambda h, w: token_logprobs_and_entropy(jnp.einsum("btd,dv->btv", h, w), tg, temperature=0.8)
        lp, ent = f(h, w)
        grads = jax.grad(lambda h, w: _mix(*f(h, w)), argnums=(0, 1))(h, w)
        return lp, ent, grads

    want = jax.tree.leaves(reference(h, w))
    for chunk in (None, 4):   # 4 leaves a tail of 1 position
        got = jax.tree.leaves(_from_hidden_and_grads(h, w, tg, chunk))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_from_hidden_chunking_bounds_compiled_memory():
    # A compile-time property (no timing): with chunks the backward pass never holds [B, T, V] float32 logits.
    b, t, d, v = 2, 256, 16, 4096
    full_logits_bytes = b * t * v * 4
    h = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    tg = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def temp_bytes(chunk):
        loss = lambda h, w, tg: jnp.sum(token_logprobs_from_hidden(h, w, tg, chunk_size=chunk))
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(h, w, tg).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    unchunked, chunked = temp_bytes(None), temp_bytes(16)
    assert unchunked >= full_logits_bytes          # the plain path holds the whole logit tensor
    assert chunked < full_logits_bytes / 4         # the chunked path holds a few [B, 16, V] slices


def test_from_hidden_bad_unembed():
    h, w, tg = _hidden_data()
    with pytest.raises(ValueError, match="unembed must be"):
        token_logprobs_from_hidden(h, w.T, tg)
