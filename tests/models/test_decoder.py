"""The NNX decoder on its own: config checks, sharding metadata, cache/padding semantics, remat, value head."""
import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agentrl_jax.models import (CausalLM, KVCache, ModelConfig, ValueHead, config_from_hf, config_to_hf,
                                random_model)
from agentrl_jax.partitioning import axis_rules

SMALL = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4, num_kv_heads=2,
             rope_theta=10000.0, rms_norm_eps=1e-5)


def make(seed=0, **kw):
    # numpy init (no per-shape compiles) with weights larger than the usual 0.02, so logits are far from uniform
    # and the tests can tell things apart; random norm scales and biases exercise those params too.
    return random_model(ModelConfig(**{**SMALL, **kw}), seed=seed, std=0.15, norm_std=0.2, bias_std=0.2)


@nnx.jit
def fwd(model, ids, mask=None, positions=None, cache=None):
    """Jitted model.forward: one compile per shape instead of one per eager op."""
    return model.forward(ids, positions, mask, cache)


def logits_of(model, ids, **kw):
    return fwd(model, ids, **kw)[0]


def rand_ids(shape, seed=0, vocab=96):
    return jnp.asarray(np.random.RandomState(seed).randint(3, vocab, shape), jnp.int32)


# ---------------------------------------------------------------- config


def test_head_dim_resolved_and_hashable():
    cfg = ModelConfig(**SMALL, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert cfg.head_dim == 12
    assert hash(cfg) == hash(ModelConfig(**SMALL, rope_scaling={"factor": 2.0, "rope_type": "linear"}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_layers = 3


@pytest.mark.parametrize("bad, match", [
    (dict(num_kv_heads=3), "multiple of num_kv_heads"),
    (dict(model_type="gpt2"), "llama.*qwen2.*qwen3"),
    (dict(hidden_size=50), "set head_dim"),
    (dict(dtype="float64"), "dtype"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_type 'yarn'"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "missing"),
    (dict(num_layers=0), "num_layers"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**SMALL, **bad})


def test_config_from_hf_v4_and_v5_rope_layouts():
    base = dict(model_type="llama", vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    v4 = config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **scaling}})
    v5 = config_from_hf({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **scaling}})
    assert v4 == v5
    assert v4.rope_theta == 5e5 and v4.rope_type == "llama3" and v4.rope_scaling["factor"] == 8.0
    # "type" (older spelling) and a default rope type are understood too.
    old = config_from_hf({**base, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert old.rope_type == "linear"
    assert config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}).rope_scaling is None
    # Round trip through our writer.
    assert config_from_hf(config_to_hf(v5)) == v5


def test_config_from_hf_families():
    base = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
    q2 = config_from_hf({**base, "model_type": "qwen2", "tie_word_embeddings": True})
    assert q2.qkv_bias and not q2.qk_norm and q2.tie_word_embeddings
    q3 = config_from_hf({**base, "model_type": "qwen3", "head_dim": 32})
    assert q3.qk_norm and not q3.qkv_bias and q3.head_dim == 32
    with pytest.raises(ValueError, match=r"supported model types: \['llama', 'qwen2', 'qwen3'\]"):
        config_from_hf({**base, "model_type": "mistral"})


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_attention_bias_means_q_k_v_and_o_proj_biases(model_type):
    """As transformers' LlamaAttention / Qwen3Attention: attention_bias puts a bias on all four projections."""
    base = dict(model_type=model_type, vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    cfg = config_from_hf(base)
    assert cfg.qkv_bias and cfg.o_proj_bias
    assert config_to_hf(cfg)["attention_bias"] is True and config_from_hf(config_to_hf(cfg)) == cfg
    assert not config_from_hf({**base, "attention_bias": False}).o_proj_bias
    q2 = config_from_hf({**base, "model_type": "qwen2"})  # Qwen2: q/k/v biases always, never on o_proj
    assert q2.qkv_bias and not q2.o_proj_bias
    # Only all four or none is a representable checkpoint.
    with pytest.raises(ValueError, match="qkv_bias=True, o_proj_bias=False: set both"):
        config_to_hf(dataclasses.replace(cfg, o_proj_bias=False))
    with pytest.raises(ValueError, match="no o_proj bias"):
        config_to_hf(dataclasses.replace(q2, o_proj_bias=True))


@pytest.mark.parametrize("window, refused", [
    (dict(use_sliding_window=True, sliding_window=64, max_window_layers=1), "layers \\[1\\]"),
    (dict(use_sliding_window=True, sliding_window=64, max_window_layers=0), "layers \\[0, 1\\]"),
    (dict(use_sliding_window=True, sliding_window=64), None),  # max_window_layers defaults to 28 >= 2 layers
    (dict(use_sliding_window=True, sliding_window=64, max_window_layers=2), None),
    (dict(use_sliding_window=True, sliding_window=None, max_window_layers=0), None),  # no window size: full
    (dict(use_sliding_window=False, sliding_window=64, max_window_layers=0), None),
    (dict(use_sliding_window=True, sliding_window=64, max_window_layers=0,
          layer_types=["full_attention", "sliding_attention"]), "layers \\[1\\]"),  # layer_types wins
    (dict(use_sliding_window=True, sliding_window=64, max_window_layers=0,
          layer_types=["full_attention", "full_attention"]), None),
])
@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_sliding_window_is_refused_where_it_would_apply(model_type, window, refused):
    base = dict(model_type=model_type, vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, **window)
    if refused is None:
        config_from_hf(base)
    else:
        with pytest.raises(ValueError, match="use_sliding_window=True with sliding_window=64 .*" + refused):
            config_from_hf(base)


def test_model_config_is_gin_configurable():
    with gin.unlock_config():
        gin.parse_config("ModelConfig.num_layers = 3")
    try:
        cfg = ModelConfig(**{k: v for k, v in SMALL.items() if k != "num_layers"})
        assert cfg.num_layers == 3
    finally:
        gin.clear_config()


# ---------------------------------------------------------------- params & sharding metadata


@pytest.mark.slow  # compiles a random initializer per param shape
def test_constructor_with_rngs_runs():
    """The contract constructor `CausalLM(cfg, rngs=...)` (random init through JAX) works and is deterministic."""
    cfg = ModelConfig(**{**SMALL, "num_layers": 1})
    a, b = CausalLM(cfg, rngs=nnx.Rngs(0)), CausalLM(cfg, rngs=nnx.Rngs(0))
    out = logits_of(a, rand_ids((1, 4)))
    assert out.shape == (1, 4, 96) and np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(a.embed_tokens.embedding[...], b.embed_tokens.embedding[...])
    np.testing.assert_array_equal(a.layers[0].input_norm.scale[...], 1.0)


def test_params_carry_logical_axis_names():
    cfg = ModelConfig(**{**SMALL, "qkv_bias": True, "o_proj_bias": True, "qk_norm": True, "model_type": "qwen3"})
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    specs = nnx.get_partition_spec(nnx.state(abstract, nnx.Param))
    flat = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(specs)}
    P = jax.sharding.PartitionSpec
    assert flat["embed_tokens/embedding"] == P("vocab", "embed")
    assert flat["layers/0/attn/q_proj/kernel"] == P("embed", "heads", "kv")
    assert flat["layers/1/attn/k_proj/kernel"] == P("embed", "kv_heads", "kv")
    assert flat["layers/0/attn/o_proj/kernel"] == P("heads", "kv", "embed")
    assert flat["layers/0/attn/q_proj/bias"] == P("heads", "kv")
    assert flat["layers/0/attn/o_proj/bias"] == P("embed")
    assert flat["layers/0/attn/q_norm/scale"] == P("kv")
    assert flat["layers/0/mlp/down_proj/kernel"] == P("mlp", "embed")
    assert flat["layers/0/mlp/gate_proj/kernel"] == P("embed", "mlp")
    assert flat["norm/scale"] == P("embed")
    assert flat["lm_head/kernel"] == P("embed", "vocab")
    # Every param has a spec of the same rank as its value, and the count matches the formula.
    params = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    assert params.keys() == flat.keys()
    for name, value in params.items():
        assert len(flat[name]) == len(value.shape), name
    assert sum(int(np.prod(v.shape)) for v in params.values()) == cfg.num_params()


def test_tied_model_has_no_lm_head_and_uses_embedding():
    model = make(tie_word_embeddings=True)
    assert model.lm_head is None
    ids = rand_ids((1, 5))
    logits, hidden, _ = fwd(model, ids)
    np.testing.assert_allclose(logits, hidden @ model.embed_tokens.embedding[...].T, rtol=1e-5, atol=1e-5)


def test_sharded_forward_matches_unsharded():
    """On a 2x2x2 mesh, params placed by their logical specs (default rules) give the same logits."""
    from agentrl_jax.partitioning import DEFAULT_RULES

    model = make()
    ids = rand_ids((4, 8))
    ref = logits_of(model, ids)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharded = random_model(model.cfg, seed=0, std=0.15, norm_std=0.2, bias_std=0.2, mesh=mesh)
    q = sharded.layers[0].attn.q_proj.kernel[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    graphdef, state = nnx.split(sharded)
    with axis_rules(mesh, DEFAULT_RULES):
        out = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- forward semantics


def test_forward_shapes_and_dtypes_bf16():
    model = make(dtype="bfloat16", param_dtype="bfloat16")
    assert model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    ids = rand_ids((2, 7))
    logits, hidden, cache = fwd(model, ids)
    assert logits.shape == (2, 7, 96) and logits.dtype == jnp.float32
    assert hidden.shape == (2, 7, 48) and hidden.dtype == jnp.bfloat16
    assert cache is None
    ref = make()  # same seed: the same weights, kept in float32
    ref_logits = np.asarray(logits_of(ref, ids))
    err = np.abs(ref_logits - np.asarray(logits)).max()
    assert 0 < err < 0.1 * np.abs(ref_logits).max()


def test_causal_future_tokens_do_not_change_the_past():
    model = make()
    a = rand_ids((1, 10), seed=1)
    b = a.at[0, 6:].set(rand_ids((1, 4), seed=2)[0])
    la, lb = logits_of(model, a), logits_of(model, b)
    np.testing.assert_allclose(la[0, :6], lb[0, :6], rtol=1e-5, atol=1e-5)
    assert not np.allclose(la[0, 6:], lb[0, 6:], atol=1e-3)


def test_left_padding_gives_the_unpadded_logits():
    model = make()
    ids = rand_ids((2, 6))
    padded = jnp.concatenate([jnp.zeros((2, 3), jnp.int32), ids], axis=1)
    mask = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9])
    padded = padded.at[1].set(jnp.concatenate([ids[1, :3], ids[1]]))
    out = logits_of(model, padded, mask=mask)
    ref = logits_of(model, ids)
    np.testing.assert_allclose(out[0, 3:], ref[0], rtol=1e-5, atol=1e-5)
    # Without the mask the pads are attended to and the logits differ (the mask matters).
    assert not np.allclose(logits_of(model, padded)[0, 3:], ref[0], atol=1e-3)


def test_positions_argument_is_used():
    model = make()
    ids = rand_ids((1, 5))
    base = logits_of(model, ids)
    # RoPE is relative: shifting every position leaves logits unchanged (up to float error) ...
    np.testing.assert_allclose(logits_of(model, ids, positions=jnp.arange(5)[None] + 7), base, rtol=1e-4, atol=1e-4)
    # ... but changing relative distances does not.
    assert not np.allclose(logits_of(model, ids, positions=jnp.arange(5)[None] * 3), base, atol=1e-3)


def test_chunked_prefill_with_cache_equals_full_forward():
    model = make(qkv_bias=True, o_proj_bias=True)
    ids = rand_ids((2, 12), seed=3)
    full = logits_of(model, ids)
    cache = model.init_cache(2, 16)
    l1, _, cache = fwd(model, ids[:, :6], cache=cache)
    l2, _, cache = fwd(model, ids[:, 6:], cache=cache)
    np.testing.assert_allclose(jnp.concatenate([l1, l2], 1), full, rtol=1e-4, atol=1e-4)
    assert int(cache.index) == 12
    np.testing.assert_array_equal(cache.lengths, [12, 12])
    np.testing.assert_array_equal(cache.mask[:, :12], True)
    np.testing.assert_array_equal(cache.mask[:, 12:], False)


def test_cache_with_padded_chunks_skips_pad_slots():
    """Row 0 gets its tokens in two left-padded chunks (pads in between); it matches an unpadded forward."""
    model = make()
    ids = rand_ids((1, 7), seed=4)
    cache = model.init_cache(2, 12)
    c1 = jnp.array([[0, 0, ids[0, 0], ids[0, 1], ids[0, 2], ids[0, 3]], [5, 6, 7, 8, 9, 10]])
    m1 = jnp.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    _, _, cache = fwd(model, c1, mask=m1, cache=cache)
    c2 = jnp.array([[0, 0, 0, ids[0, 4], ids[0, 5], ids[0, 6]], [11, 12, 13, 14, 15, 16]])
    m2 = jnp.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    l2, _, cache = fwd(model, c2, mask=m2, cache=cache)
    np.testing.assert_array_equal(cache.lengths, [7, 12])
    ref = logits_of(model, jnp.concatenate([jnp.concatenate([ids, ids[:, :5]], 1), jnp.arange(5, 17)[None]]))
    np.testing.assert_allclose(l2[0, 3:], ref[0, 4:7], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(l2[1], ref[1, 6:], rtol=1e-4, atol=1e-4)


def test_forward_input_errors_are_clear():
    model = make()
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model.forward(jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model.forward(jnp.zeros((2, 4), jnp.int32), attention_mask=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="cache has batch size 3"):
        model.forward(jnp.zeros((2, 4), jnp.int32), cache=model.init_cache(3, 8))
    with pytest.raises(ValueError, match="does not fit"):
        model.forward(jnp.zeros((1, 9), jnp.int32), cache=model.init_cache(1, 8))
    with pytest.raises(ValueError, match="ModelConfig"):
        CausalLM({"vocab_size": 3}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="positive batch_size"):
        model.init_cache(0, 8)


def test_kv_cache_logical_axes_match_tree():
    model = make()
    cache = model.init_cache(2, 8)
    axes = KVCache.logical_axes(model.cfg.num_layers)
    is_names = lambda x: isinstance(x, tuple) and all(isinstance(n, str) for n in x)  # noqa: E731
    leaves, names = jax.tree.leaves(cache), jax.tree.leaves(axes, is_leaf=is_names)
    assert len(leaves) == len(names) == 2 * model.cfg.num_layers + 3
    for leaf, n in zip(leaves, names):
        assert leaf.ndim == len(n)


@pytest.mark.slow
def test_remat_gives_same_loss_and_grads():
    ids = rand_ids((2, 6))

    @nnx.jit
    def loss_and_grad(model):
        return nnx.value_and_grad(lambda m: jnp.mean(jax.nn.log_softmax(m(ids))[..., 0]))(model)

    l1, g1 = loss_and_grad(make())
    l2, g2 = loss_and_grad(make(remat=True))
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(np.abs(np.asarray(a)).max() > 0 for a in jax.tree.leaves(g1))


# ---------------------------------------------------------------- value head


def test_value_head_shapes_dtype_and_grad():
    model = make(dtype="bfloat16")
    head = ValueHead(model.cfg.hidden_size, rngs=nnx.Rngs(1))
    _, hidden, _ = fwd(model, rand_ids((3, 5)))
    values = nnx.jit(lambda h, x: h(x))(head, hidden)
    assert values.shape == (3, 5) and values.dtype == jnp.float32
    np.testing.assert_allclose(values, hidden.astype(jnp.float32) @ head.kernel[...] + head.bias[...], rtol=1e-5,
                               atol=1e-6)
    grads = nnx.grad(lambda h: jnp.sum(h(hidden)))(head)
    np.testing.assert_allclose(grads["bias"].get_value(), 15.0)
    np.testing.assert_allclose(grads["kernel"].get_value(), hidden.astype(jnp.float32).sum((0, 1)), rtol=1e-5)
    assert nnx.get_partition_spec(nnx.state(head))["kernel"].get_value() == jax.sharding.PartitionSpec("embed")
    with pytest.raises(ValueError, match="hidden_size"):
        ValueHead(0, rngs=nnx.Rngs(0))
