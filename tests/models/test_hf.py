"""Hugging Face folder I/O without torch: round trips, sharding, dtypes, tokenizer, clear errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from agentrl_jax.models import ModelConfig, load_pretrained, random_model, save_pretrained
from agentrl_jax.models.hf import read_config

CFG = dict(vocab_size=1032, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
           rope_theta=10000.0, rms_norm_eps=1e-5)


def params(model):
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_params(a, b):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype, k
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.fixture(scope="module")
def tokenizer():
    from agentrl_jax.models.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer()


@pytest.mark.parametrize("family", [
    dict(model_type="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    dict(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True),
    dict(model_type="qwen3", qk_norm=True, head_dim=16),
    dict(model_type="llama", qkv_bias=True, o_proj_bias=True),  # attention_bias=True
    dict(model_type="qwen3", qk_norm=True, qkv_bias=True, o_proj_bias=True),
])
def test_round_trip_is_bit_exact(tmp_path, family, tokenizer):
    cfg = ModelConfig(**{**CFG, **family}, eos_token_ids=(2, 0))
    model = random_model(cfg, seed=1, norm_std=0.1, bias_std=0.1)
    written = save_pretrained(model, tokenizer, tmp_path)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(written)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert ("lm_head.weight" in names) == (not cfg.tie_word_embeddings)
    assert "model.layers.1.self_attn.o_proj.weight" in names
    assert ("model.layers.1.self_attn.o_proj.bias" in names) == cfg.o_proj_bias
    assert ("model.layers.1.self_attn.k_proj.bias" in names) == cfg.qkv_bias
    loaded, tok = load_pretrained(tmp_path)
    assert loaded.cfg == cfg
    assert_same_params(model, loaded)
    text = "Box at (2, 3). <action>up</action>"
    assert tok.encode(text) == tokenizer.encode(text)
    assert tok.chat_template == tokenizer.chat_template


def test_many_layers_keep_their_order(tmp_path):
    """Layer 2 must not receive layer 10's weights (string vs integer ordering of list keys)."""
    cfg = ModelConfig(**{**CFG, "vocab_size": 64, "num_layers": 12})
    model = random_model(cfg, seed=6)
    save_pretrained(model, None, tmp_path)
    w = load_file(str(tmp_path / "model.safetensors"))
    loaded, _ = load_pretrained(tmp_path, load_tokenizer=False)
    for i in range(12):
        np.testing.assert_array_equal(np.asarray(loaded.layers[i].mlp.up_proj.kernel[...]).T,
                                      w[f"model.layers.{i}.mlp.up_proj.weight"])
    assert_same_params(model, loaded)


def test_hf_layout_matches_transformers_conventions(tmp_path):
    """Linear weights are stored [out, in]; q_proj rows are head-major (head h = rows h*hd:(h+1)*hd)."""
    cfg = ModelConfig(**CFG)
    model = random_model(cfg, seed=2)
    save_pretrained(model, None, tmp_path)
    w = load_file(str(tmp_path / "model.safetensors"))
    q = np.asarray(model.layers[0].attn.q_proj.kernel[...])  # [D, H, hd]
    hf_q = w["model.layers.0.self_attn.q_proj.weight"]
    assert hf_q.shape == (cfg.num_heads * cfg.head_dim, cfg.hidden_size)
    np.testing.assert_array_equal(hf_q[cfg.head_dim:2 * cfg.head_dim], q[:, 1, :].T)
    o = np.asarray(model.layers[0].attn.o_proj.kernel[...])  # [H, hd, D]
    np.testing.assert_array_equal(w["model.layers.0.self_attn.o_proj.weight"], o.reshape(-1, cfg.hidden_size).T)
    np.testing.assert_array_equal(w["lm_head.weight"], np.asarray(model.lm_head.kernel[...]).T)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    assert hf_cfg["architectures"] == ["LlamaForCausalLM"]
    assert hf_cfg["num_hidden_layers"] == 2 and hf_cfg["rope_parameters"]["rope_theta"] == 10000.0


def test_sharded_save_writes_index_and_loads(tmp_path):
    cfg = ModelConfig(**CFG)
    model = random_model(cfg, seed=3)
    written = save_pretrained(model, None, tmp_path, max_shard_size="100KB")
    shards = sorted(f for f in written if f.startswith("model-"))
    assert len(shards) > 2 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    assert not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in params(model).values())
    for f in shards[:-1]:  # every full shard respects the limit unless a single tensor is larger
        with safe_open(str(tmp_path / f), "np") as h:
            sizes = [h.get_tensor(k).nbytes for k in h.keys()]
        assert sum(sizes) <= 100_000 or len(sizes) == 1
    loaded, tok = load_pretrained(tmp_path, load_tokenizer=False)
    assert tok is None
    assert_same_params(model, loaded)


def test_bf16_checkpoint_stays_bf16_and_upcasts_exactly(tmp_path):
    cfg = ModelConfig(**CFG, dtype="bfloat16", param_dtype="bfloat16")
    model = random_model(cfg, seed=4)
    save_pretrained(model, None, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "np") as h:
        assert h.get_tensor("model.embed_tokens.weight").dtype == jnp.bfloat16
    loaded, _ = load_pretrained(tmp_path, load_tokenizer=False)
    assert loaded.cfg.param_dtype == "bfloat16" and loaded.cfg.dtype == "bfloat16"
    assert_same_params(model, loaded)
    up, _ = load_pretrained(tmp_path, param_dtype="float32", load_tokenizer=False)
    assert up.cfg.param_dtype == "float32" and up.cfg.dtype == "float32"
    for k, v in params(up).items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, params(model)[k].astype(np.float32))
    mixed, _ = load_pretrained(tmp_path, dtype="float32", load_tokenizer=False, remat=True)
    assert mixed.cfg.dtype == "float32" and mixed.cfg.param_dtype == "bfloat16" and mixed.cfg.remat


def test_generation_config_eos_ids_are_read(tmp_path):
    model = random_model(ModelConfig(**CFG), seed=0)
    save_pretrained(model, None, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["eos_token_id"] = 0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert read_config(str(tmp_path)).eos_token_ids == (2, 7, 0)


def test_load_with_mesh_places_params_on_logical_shardings(tmp_path):
    save_pretrained(random_model(ModelConfig(**CFG), seed=5), None, tmp_path)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(1, 4, 2), ("data", "fsdp", "tensor"))
    model, _ = load_pretrained(tmp_path, load_tokenizer=False, mesh=mesh)
    P = jax.sharding.PartitionSpec
    assert model.embed_tokens.embedding[...].sharding.spec == P("tensor", "fsdp")
    assert model.layers[0].mlp.down_proj.kernel[...].sharding.spec == P("tensor", "fsdp")
    assert model.layers[0].attn.k_proj.kernel[...].sharding.spec == P("fsdp", "tensor", None)


def test_tiny_folder_from_tiny_module_loads(tmp_path):
    """The tiny HF folder (written by agentrl_jax.models.tiny without our code) loads and runs."""
    from agentrl_jax.models.tiny import ensure_tiny_folder

    folder = ensure_tiny_folder(tmp_path)
    model, tok = load_pretrained(folder)
    ids = jnp.asarray([tok.encode("Box at (1, 2).")], jnp.int32)
    logits = nnx.jit(lambda m, x: m(x))(model, ids)
    assert logits.shape == (1, ids.shape[1], model.cfg.vocab_size)
    assert np.isfinite(np.asarray(logits)).all()
    assert model.cfg.eos_token_ids  # from its generation_config.json
    assert tok.convert_ids_to_tokens(model.cfg.eos_token_ids[0]) in ("<|im_end|>", "<|endoftext|>")


# ---------------------------------------------------------------- errors


def _saved(tmp_path, **kw):
    save_pretrained(random_model(ModelConfig(**{**CFG, **kw}), seed=0), None, tmp_path)
    return tmp_path


def test_error_missing_folder_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        load_pretrained(tmp_path)


def test_error_missing_weights(tmp_path):
    folder = _saved(tmp_path)
    os.remove(folder / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=rf"no weights in {folder}.*model\.safetensors"):
        load_pretrained(folder, load_tokenizer=False)


def test_error_index_names_a_missing_shard(tmp_path):
    folder = tmp_path
    save_pretrained(random_model(ModelConfig(**CFG), seed=0), None, folder, max_shard_size="100KB")
    os.remove(folder / "model-00002-of-" f"{len(list(folder.glob('model-*'))):05d}.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-.*does not exist"):
        load_pretrained(folder, load_tokenizer=False)


def test_error_unsupported_model_type(tmp_path):
    folder = _saved(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gemma"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json.*'gemma'.*\['llama', 'qwen2', 'qwen3'\]"):
        load_pretrained(folder)


def test_error_wrong_shape_names_file_and_tensor(tmp_path):
    folder = _saved(tmp_path)
    w = load_file(str(folder / "model.safetensors"))
    w["model.layers.1.mlp.up_proj.weight"] = np.zeros((47, 32), np.float32)
    save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor model\.layers\.1\.mlp\.up_proj\.weight has "
                                         r"shape \(47, 32\).*\(48, 32\)"):
        load_pretrained(folder, load_tokenizer=False)


def test_error_missing_tensor_and_warning_for_extra(tmp_path):
    folder = _saved(tmp_path)
    w = load_file(str(folder / "model.safetensors"))
    del w["model.layers.0.self_attn.k_proj.weight"]
    w["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(4, np.float32)  # ignored silently
    save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks tensors model\.layers\.0\.self_attn\.k_proj\.weight"):
        load_pretrained(folder, load_tokenizer=False)
    w["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 32), np.float32)
    w["model.extra.weight"] = np.zeros(3, np.float32)
    save_file(w, str(folder / "model.safetensors"))
    with pytest.warns(UserWarning, match=r"ignoring 1 tensors.*model\.extra\.weight"):
        load_pretrained(folder, load_tokenizer=False)


def test_error_for_a_bias_the_config_has_no_place_for(tmp_path):
    """An o_proj bias with attention_bias=false in config.json would be dropped: refuse, don't warn."""
    folder = _saved(tmp_path)
    w = load_file(str(folder / "model.safetensors"))
    w["model.layers.1.self_attn.o_proj.bias"] = np.ones(32, np.float32)
    save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"has tensors model\.layers\.1\.self_attn\.o_proj\.bias .*"
                                         r"attention_bias"):
        load_pretrained(folder, load_tokenizer=False)


def test_error_missing_tokenizer_and_bad_shard_size(tmp_path):
    folder = _saved(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer files.*load_tokenizer=False"):
        load_pretrained(folder)
    model = random_model(ModelConfig(**CFG), seed=0)
    with pytest.raises(ValueError, match="max_shard_size 'lots'"):
        save_pretrained(model, None, tmp_path / "x", max_shard_size="lots")
    with pytest.raises(ValueError, match="needs a CausalLM"):
        save_pretrained({"a": 1}, None, tmp_path / "y")
