"""Parity with transformers' PyTorch models: logits, greedy continuations (cached, uncached, left-padded), and
transformers reading what we save. Also the real SmolLM2-135M-Instruct when its converted folder is present."""
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agentrl_jax.generate import GenerationConfig, generate, pad_batch, unpad  # noqa: E402
from agentrl_jax.models import load_pretrained, save_pretrained  # noqa: E402

pytestmark = pytest.mark.torch

V = 128
COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, rms_norm_eps=1e-5)
FAMILIES = {
    "llama3": lambda: transformers.LlamaConfig(
        **COMMON, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 16}),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=32),
    # attention_bias=True: biases on q, k, v and o_proj (issue 19, point 10: o_proj's used to be dropped).
    "llama_bias": lambda: transformers.LlamaConfig(**COMMON, attention_bias=True),
    "qwen3_bias": lambda: transformers.Qwen3Config(**COMMON, head_dim=32, attention_bias=True),
}


@nnx.jit
def _logits(model, ids, mask):
    return model.forward(ids, attention_mask=mask)[0]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    """(torch model, our model, folder) with the same random weights, via transformers' save_pretrained."""
    torch.manual_seed(0)
    tm = transformers.AutoModelForCausalLM.from_config(FAMILIES[request.param]()).eval()
    with torch.no_grad():  # non-trivial norm scales and biases, so those code paths are checked too
        for name, p in tm.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(request.param)
    tm.save_pretrained(folder)
    ours, _ = load_pretrained(folder, load_tokenizer=False)
    return tm, ours, folder


def test_config_is_read_as_intended(pair):
    tm, ours, _ = pair
    mt = tm.config.model_type
    biased = bool(getattr(tm.config, "attention_bias", False))
    assert ours.cfg.model_type == mt
    assert ours.cfg.qkv_bias == (mt == "qwen2" or biased) and ours.cfg.qk_norm == (mt == "qwen3")
    assert ours.cfg.o_proj_bias == biased
    assert ours.cfg.tie_word_embeddings == (mt == "qwen2")
    assert ours.cfg.rope_type == ("llama3" if mt == "llama" and not biased else "default")
    # As many weights as transformers' model (nothing dropped, e.g. o_proj.bias when biased).
    assert ours.cfg.num_params() == sum(p.numel() for p in tm.parameters())


def test_logits_match_torch(pair):
    tm, ours, _ = pair
    ids = np.random.RandomState(0).randint(0, V, (2, 40))
    with torch.no_grad():
        ref = tm(torch.tensor(ids)).logits.numpy()
    out = np.asarray(_logits(ours, jnp.asarray(ids, jnp.int32), jnp.ones(ids.shape, bool)))
    assert np.abs(ref).max() > 1.0  # logits are not trivially small
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_gradients_match_torch(pair):
    """Every weight's gradient of the next-token NLL equals transformers' backward pass (our weight gradients
    come from `decoder.contract`'s hand-written VJP, not from autodiff's transpose)."""
    from agentrl_jax.models import hf

    tm, ours, _ = pair
    ids = np.random.RandomState(2).randint(0, V, (2, 24))
    tm.zero_grad()
    logp = torch.log_softmax(tm(torch.tensor(ids[:, :-1])).logits, -1)
    (-logp.gather(-1, torch.tensor(ids[:, 1:, None])).mean()).backward()
    ref = {name: p.grad.numpy() for name, p in tm.named_parameters()}

    graphdef, params = nnx.split(ours)
    target = jnp.asarray(ids[:, 1:, None], jnp.int32)

    def nll(params):
        logits = nnx.merge(graphdef, params)(jnp.asarray(ids[:, :-1], jnp.int32))
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), target, -1).mean()

    grads = jax.jit(jax.grad(nll))(params)
    checked = 0
    for path, g in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]:
        keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
        name = hf._hf_name(keys)
        if name not in ref:  # tied lm_head: transformers lists the shared tensor once, as the embedding
            continue
        np.testing.assert_allclose(hf._to_hf(keys, np.asarray(g)), ref[name], atol=2e-6, rtol=2e-4, err_msg=name)
        checked += 1
    assert checked == len(ref)
    assert max(np.abs(r).max() for r in ref.values()) > 1e-3  # gradients are not trivially small


def test_left_padded_logits_match_torch(pair):
    tm, ours, _ = pair
    ids, mask = pad_batch([list(range(5, 17)), list(range(40, 45))], length=16)
    with torch.no_grad():
        pos = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))
        ref = tm(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=pos).logits.numpy()
    out = np.asarray(_logits(ours, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(out[mask], ref[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_greedy_32_tokens_match_torch_with_and_without_cache(pair):
    tm, ours, _ = pair
    rs = np.random.RandomState(1)
    prompts = [rs.randint(3, V, n).tolist() for n in (6, 11, 3)]
    refs = []
    for p in prompts:
        with torch.no_grad():
            out = tm.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        refs.append(out[0, len(p):].tolist())
    assert len({tuple(r) for r in refs}) == 3
    ids, mask = pad_batch(prompts)  # left-padded batch of different lengths
    res = generate(ours, ids, mask, config=GenerationConfig(max_new_tokens=32, temperature=0.0))
    assert unpad(res) == refs
    # Without a cache: recompute the full (left-padded) sequence each step, argmax of the last position.
    seqs = [list(p) for p in prompts]
    total = max(len(p) for p in prompts) + 32
    for _ in range(32):
        ids_, mask_ = pad_batch(seqs, length=total)
        nxt = np.asarray(_logits(ours, jnp.asarray(ids_), jnp.asarray(mask_)))[:, -1].argmax(-1)
        for s, t in zip(seqs, nxt):
            s.append(int(t))
    assert [s[len(p):] for s, p in zip(seqs, prompts)] == refs


def test_transformers_loads_what_we_save(pair, tmp_path):
    tm, ours, _ = pair
    save_pretrained(ours, None, tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(back) is type(tm)
    ids = torch.tensor(np.random.RandomState(2).randint(0, V, (1, 24)))
    with torch.no_grad():
        np.testing.assert_array_equal(back(ids).logits.numpy(), tm(ids).logits.numpy())
    for (n1, p1), (n2, p2) in zip(tm.state_dict().items(), back.state_dict().items()):
        assert n1 == n2
        assert torch.equal(p1, p2), n1


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_sliding_window_refused_only_where_transformers_applies_it(family, tmp_path):
    """use_sliding_window=True is refused when a layer would be windowed, loaded when none is."""
    make = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[family]
    ids = torch.tensor(np.random.RandomState(3).randint(0, V, (1, 24)))
    windowed = {}
    for max_window_layers in (2, 1):  # 2 = all layers full attention; 1 = layer 1 windowed
        torch.manual_seed(0)
        cfg = make(**COMMON, use_sliding_window=True, sliding_window=4, max_window_layers=max_window_layers)
        tm = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        folder = tmp_path / f"w{max_window_layers}"
        tm.save_pretrained(folder)
        with torch.no_grad():
            windowed[max_window_layers] = tm(ids).logits.numpy()
        if max_window_layers == 2:
            ours, _ = load_pretrained(folder, load_tokenizer=False)
            out = np.asarray(_logits(ours, jnp.asarray(ids.numpy(), jnp.int32), jnp.ones(ids.shape, bool)))
            np.testing.assert_allclose(out, windowed[2], atol=1e-4, rtol=1e-4)
        else:
            with pytest.raises(ValueError, match=r"use_sliding_window=True with sliding_window=4 .*layers \[1\]"):
                load_pretrained(folder, load_tokenizer=False)
    # The refusal is needed: the window changes transformers' outputs (same weights, seeded alike).
    assert np.abs(windowed[1] - windowed[2]).max() > 1e-2


# ---------------------------------------------------------------- the real model


def _smollm2_folder():
    root = Path(os.environ.get("AGENTRL_CACHE", Path(__file__).resolve().parents[2] / "cache"))
    folder = root / "smollm2-135m-instruct"
    return folder if (folder / "config.json").exists() and (folder / "model.safetensors").exists() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_folder() is None,
                    reason="SmolLM2 folder absent: run scripts/fetch_smollm2.py (cache/smollm2-135m-instruct)")
def test_smollm2_matches_transformers_and_knows_paris():
    folder = _smollm2_folder()
    ours, tok = load_pretrained(folder)
    assert ours.cfg.num_layers == 30 and ours.cfg.tie_word_embeddings
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt)
    tm = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = tm(torch.tensor([prompt])).logits.numpy()
    out = np.asarray(_logits(ours, jnp.asarray([prompt], jnp.int32), jnp.ones((1, len(prompt)), bool)))
    np.testing.assert_allclose(out, ref, atol=2e-3, rtol=1e-3)
    ids, mask = pad_batch([prompt])
    res = generate(ours, ids, mask, config=GenerationConfig(max_new_tokens=24, temperature=0.0,
                                                            stop_ids=ours.cfg.eos_token_ids))
    answer = tok.decode(unpad(res)[0], skip_special_tokens=True)
    assert "Paris" in answer, answer
