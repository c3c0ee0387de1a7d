"""Generation on a small random model: cache vs recompute, continuation, sampling, stops, compile counts."""
import dataclasses
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agentrl_jax import generate as gen
from agentrl_jax import xla_cpu
from agentrl_jax.generate import (GenerationConfig, bucket_length, continue_generation, filter_logits, generate,
                                  generate_fn, pad_batch, prefill_compiler_options, sample_token, trace_count,
                                  unpad)
from agentrl_jax.models import ModelConfig, random_model

V = 96


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=V, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4, num_kv_heads=2,
                      qkv_bias=True)
    return random_model(cfg, seed=0, std=0.2, norm_std=0.2, bias_std=0.2)


@nnx.jit
def _logits(model, ids, mask):
    return model.forward(ids, attention_mask=mask)[0]


def prompts(seed=0, lengths=(5, 9, 3)):
    rs = np.random.RandomState(seed)
    return [rs.randint(3, V, n).tolist() for n in lengths]


def teacher_forced(model, seqs, total=32):
    """log-softmax over the whole of each (unpadded) sequence in one forward; right padding keeps positions."""
    ids, mask = pad_batch(seqs, length=total, side="right")
    return np.asarray(jax.nn.log_softmax(_logits(model, jnp.asarray(ids), jnp.asarray(mask)), axis=-1))


GREEDY = GenerationConfig(max_new_tokens=10, temperature=0.0)


@pytest.fixture(scope="module")
def greedy_run(model):
    ps = prompts()
    ids, mask = pad_batch(ps)
    return ps, generate(model, ids, mask, config=GREEDY)


def test_cached_greedy_equals_full_recompute_argmax(model, greedy_run):
    ps, res = greedy_run
    assert res.tokens.shape == (3, 10) and res.tokens.dtype == jnp.int32
    np.testing.assert_array_equal(res.lengths, 10)
    assert not np.asarray(res.stopped).any()
    outs = unpad(res)
    logp = teacher_forced(model, [p + o for p, o in zip(ps, outs)])
    for i, (p, o) in enumerate(zip(ps, outs)):
        steps = logp[i, len(p) - 1: len(p) + len(o) - 1]
        np.testing.assert_array_equal(steps.argmax(-1), o)
        # Greedy logprobs are those of the temperature-1 distribution at the chosen tokens.
        np.testing.assert_allclose(res.logprobs[i], steps[np.arange(len(o)), o], rtol=1e-4, atol=1e-4)
    assert len({tuple(o) for o in outs}) == 3  # the rows really differ


def test_sampled_logprobs_equal_log_softmax_of_a_forward(model):
    ps = prompts(1)
    ids, mask = pad_batch(ps)
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0)
    res = generate(model, ids, mask, key=jax.random.key(3), config=cfg)
    outs = unpad(res)
    logp = teacher_forced(model, [p + o for p, o in zip(ps, outs)])
    for i, (p, o) in enumerate(zip(ps, outs)):
        expect = logp[i, np.arange(len(p) - 1, len(p) + len(o) - 1), o]
        np.testing.assert_allclose(res.logprobs[i], expect, rtol=1e-4, atol=1e-4)
    # Same key, same samples; another key, other samples.
    again = generate(model, ids, mask, key=jax.random.key(3), config=cfg)
    np.testing.assert_array_equal(again.tokens, res.tokens)
    other = generate(model, ids, mask, key=jax.random.key(4), config=cfg)
    assert not np.array_equal(other.tokens, res.tokens)


def test_top_k_one_equals_greedy(model, greedy_run):
    _, res = greedy_run
    ids, mask = pad_batch(prompts())
    topk = generate(model, ids, mask, key=jax.random.key(0),
                    config=GenerationConfig(max_new_tokens=10, temperature=0.7, top_k=1))
    np.testing.assert_array_equal(topk.tokens, res.tokens)
    np.testing.assert_allclose(topk.logprobs, 0.0, atol=1e-6)  # the filtered distribution is one-hot


def test_filter_logits_top_k_top_p_temperature():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda x: np.isfinite(np.asarray(x))[0].tolist()  # noqa: E731
    assert keep(filter_logits(logits, 1.0, top_k=2)) == [True, True, False, False, False]
    assert keep(filter_logits(logits, 1.0, top_p=0.5)) == [True, False, False, False, False]
    assert keep(filter_logits(logits, 1.0, top_p=0.6)) == [True, True, False, False, False]
    assert keep(filter_logits(logits, 1.0, top_p=0.86)) == [True, True, True, True, False]
    np.testing.assert_allclose(filter_logits(logits, 0.5), logits * 2, rtol=1e-6)
    probs = jax.nn.softmax(filter_logits(logits, 1.0, top_p=0.6))
    np.testing.assert_allclose(probs[0, :2], [0.5 / 0.7, 0.2 / 0.7], rtol=1e-5)


def test_sampling_draws_the_softmax_distribution_and_never_a_filtered_token():
    """The inverse-CDF sampler (`GenerationConfig.sampler = 'inverse_cdf'`) draws softmax(x) (frequencies within 4 sigma of the probabilities over 200k
    draws), never a token filtered to -inf, also in a vocabulary that is not a multiple of its 128-token blocks
    with mass in the last, partial block; its logprobs are log_softmax's; greedy is argmax's first maximum."""
    v = 300
    probs = np.zeros(v)
    probs[[0, 5, 127, 128, 200, 299]] = [0.3, 0.05, 0.15, 0.2, 0.1999, 0.1]
    probs[260] = 1e-4  # a rare token in the partial block
    x = jnp.asarray(np.log(np.where(probs > 0, probs, 1.0)), jnp.float32)
    x = jnp.where(jnp.asarray(probs) > 0, x, -jnp.inf)[None]
    cfg = GenerationConfig(max_new_tokens=1, temperature=1.0, sampler="inverse_cdf")
    n = 200_000
    toks, lps = jax.jit(jax.vmap(lambda k: sample_token(x, k, cfg)))(jax.random.split(jax.random.key(0), n))
    freq = np.bincount(np.asarray(toks[:, 0]), minlength=v) / n
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(probs))
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / n))
    want = np.asarray(jax.nn.log_softmax(x))[0]
    np.testing.assert_allclose(np.asarray(lps[:, 0]), want[np.asarray(toks[:, 0])], rtol=1e-5, atol=1e-5)
    y = jnp.asarray(np.random.default_rng(0).standard_normal((6, 257)), jnp.float32).at[2, 9].set(9).at[2, 40].set(9)
    greedy, _ = sample_token(y, jax.random.key(0), GenerationConfig(max_new_tokens=1, temperature=0.0))
    np.testing.assert_array_equal(greedy, np.argmax(np.asarray(y), -1))  # ties: the first maximum, as argmax
    with pytest.raises(ValueError, match="use one of"):
        GenerationConfig(sampler="fast")


def test_stop_ids_end_rows_and_the_loop_exits_early(model, greedy_run):
    ps, res = greedy_run
    outs = unpad(res)
    stop = outs[0][3]
    first = [o.index(stop) if stop in o else None for o in outs]
    ids, mask = pad_batch(ps)
    cfg = dataclasses.replace(GREEDY, stop_ids=(stop, V + 5), pad_id=1)
    stopped = generate(model, ids, mask, config=cfg)
    for i, o in enumerate(outs):
        n = 10 if first[i] is None else first[i] + 1
        assert int(stopped.lengths[i]) == n
        assert bool(stopped.stopped[i]) == (first[i] is not None)
        np.testing.assert_array_equal(stopped.tokens[i, :n], o[:n])
        np.testing.assert_array_equal(stopped.tokens[i, n:], 1)  # pad_id after the stop
        np.testing.assert_array_equal(stopped.logprobs[i, n:], 0.0)
    # All rows stopping early ends the loop early: fewer slots are used than prompt + max_new_tokens.
    if all(f is not None for f in first):
        assert int(stopped.cache.index) == ids.shape[1] + max(f + 1 for f in first)
    else:
        assert int(stopped.cache.index) == ids.shape[1] + 10
    # The stop token itself is in the cache (counted in lengths), nothing after it.
    np.testing.assert_array_equal(stopped.cache.lengths, [len(p) + int(n) for p, n in zip(ps, stopped.lengths)])


def test_loop_stops_when_every_row_is_done(model):
    ids, mask = pad_batch(prompts())
    res = generate(model, ids, mask, config=dataclasses.replace(GREEDY, stop_ids=tuple(range(V))))
    np.testing.assert_array_equal(res.lengths, 1)
    assert int(res.cache.index) == ids.shape[1] + 1


def test_inactive_rows_generate_nothing_and_cost_no_decode_steps(model, greedy_run):
    ps, res = greedy_run
    outs = unpad(res)
    stop = outs[0][3]
    n0 = outs[0].index(stop) + 1
    cfg = dataclasses.replace(GREEDY, stop_ids=(stop,), pad_id=1)
    ids, mask = pad_batch(ps)
    live = generate(model, ids, mask, config=cfg)
    assert int(live.steps) == int(np.max(live.lengths)) > n0  # all rows live: the loop waits for the longest
    only0 = generate(model, ids, mask, config=cfg, active=[True, False, False])
    # The loop ends with the one active row; the others produce only pad tokens, logprob 0, length 0.
    assert int(only0.steps) == n0 and int(only0.cache.index) == ids.shape[1] + n0
    np.testing.assert_array_equal(only0.tokens[0, :n0], outs[0][:n0])
    np.testing.assert_array_equal(only0.lengths, [n0, 0, 0])
    np.testing.assert_array_equal(only0.stopped, [True, False, False])
    np.testing.assert_array_equal(only0.tokens[1:], 1)
    np.testing.assert_array_equal(only0.logprobs[1:], 0.0)
    with pytest.raises(ValueError, match="active must be"):
        generate(model, ids, mask, config=cfg, active=[True, False])


def test_compacted_or_grown_cache_continues_exactly(model):
    """Compaction frees padding and dropped rows' slots, growing adds slots; neither changes what the kept
    rows generate next."""
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.0)
    ps = prompts(6, lengths=(3, 9, 5))
    ids, mask = pad_batch(ps, length=16)
    turn1 = generate(model, ids, mask, config=cfg, cache_length=48)
    cids, cmask = pad_batch(prompts(7, lengths=(4, 2, 6)), length=16)
    copies = [jax.tree.map(jnp.copy, turn1.cache) for _ in range(2)]
    ref = continue_generation(model, cids, cmask, turn1.cache, config=cfg)
    compact = gen.compact_cache(copies[0], jnp.asarray([True, True, False]))
    real = [len(p) + 5 for p in ps]
    assert int(compact.index) == max(real[:2]) < 16 + 5
    np.testing.assert_array_equal(np.asarray(compact.mask).sum(1), real[:2] + [0])
    res = continue_generation(model, cids, cmask, compact, config=cfg)
    np.testing.assert_array_equal(res.tokens[:2], ref.tokens[:2])
    np.testing.assert_allclose(res.logprobs[:2], ref.logprobs[:2], rtol=1e-5, atol=1e-5)
    grown = gen.grow_cache(copies[1], 64)
    assert grown.max_length == 64
    res = continue_generation(model, cids, cmask, grown, config=cfg)
    np.testing.assert_array_equal(res.tokens, ref.tokens)
    np.testing.assert_allclose(res.logprobs, ref.logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_continuation_equals_fresh_prefill_of_the_history(model):
    ps = prompts(2)
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.0)
    ids, mask = pad_batch(ps, length=16)
    turn1 = generate(model, ids, mask, config=cfg, cache_length=64)
    obs = prompts(3, lengths=(4, 2, 7))
    cids, cmask = pad_batch(obs, length=16)
    turn2 = continue_generation(model, cids, cmask, turn1.cache, config=cfg)
    history = [p + o + c for p, o, c in zip(ps, unpad(turn1), obs)]
    fids, fmask = pad_batch(history, length=32)
    fresh = generate(model, fids, fmask, config=cfg)
    np.testing.assert_array_equal(turn2.tokens, fresh.tokens)
    np.testing.assert_allclose(turn2.logprobs, fresh.logprobs, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(turn2.cache.lengths, [len(h) + 6 for h in history])


@pytest.mark.slow
def test_one_compile_per_bucket_across_turns(model):
    cfg = GenerationConfig(max_new_tokens=4, temperature=0.0, stop_ids=(7,))
    ids, mask = pad_batch(prompts(4, lengths=(3, 11, 6)), length=16)
    before = trace_count()
    res = generate(model, ids, mask, config=cfg, cache_length=128)  # makes its cache inside: its own program
    assert trace_count() - before == 1
    for turn in range(3):
        obs = prompts(5 + turn, lengths=(2 + turn, 9, 5 - turn))
        cids, cmask = pad_batch(obs, min_size=16)
        res = continue_generation(model, cids, cmask, res.cache, config=cfg)
    assert trace_count() - before == 2  # every continuation of the bucket shares one program
    # A new bucket is a new program.
    cids, cmask = pad_batch(prompts(9, lengths=(20, 3, 4)))
    assert cids.shape[1] == 32
    continue_generation(model, cids, cmask, res.cache, config=cfg)
    assert trace_count() - before == 3


@pytest.mark.slow
def test_generate_fn_inside_jit_and_scan_matches_python_turns(model):
    """The pure core runs inside a jitted lax.scan over turns (as the on-device episode does)."""
    cfg = GenerationConfig(max_new_tokens=4, temperature=1.0, top_p=0.9, stop_ids=(5,))
    graphdef, state = nnx.split(model)
    chunks = [pad_batch(prompts(10 + t, lengths=(3, 4)), length=8) for t in range(3)]
    chunk_ids = jnp.stack([jnp.asarray(c[0]) for c in chunks])
    chunk_mask = jnp.stack([jnp.asarray(c[1]) for c in chunks])
    keys = jax.random.split(jax.random.key(0), 3)

    @jax.jit
    def episode(state, cache):
        def turn(cache, xs):
            ids, m, key = xs
            r = generate_fn(graphdef, state, ids, m, cache, key, cfg)
            return r.cache, (r.tokens, r.logprobs, r.lengths)
        return jax.lax.scan(turn, cache, (chunk_ids, chunk_mask, keys))

    cache, (tokens, logprobs, lengths) = episode(state, model.init_cache(2, 64))
    ref_cache = model.init_cache(2, 64)
    for t in range(3):
        r = generate(model, chunk_ids[t], chunk_mask[t], cache=ref_cache, key=keys[t], config=cfg)
        ref_cache = r.cache
        np.testing.assert_array_equal(tokens[t], r.tokens)
        np.testing.assert_allclose(logprobs[t], r.logprobs, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(lengths[t], r.lengths)
    np.testing.assert_array_equal(cache.lengths, ref_cache.lengths)


def test_generation_errors_are_clear(model):
    ids, mask = pad_batch(prompts())
    with pytest.raises(ValueError, match="KV cache too short.*init_cache"):
        generate(model, ids, mask, config=GREEDY, cache=model.init_cache(3, 20))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        generate(model, ids, mask, config=GenerationConfig(temperature=1.0))
    with pytest.raises(ValueError, match="cache batch size 2"):
        generate(model, ids, mask, config=GREEDY, cache=model.init_cache(2, 64))
    with pytest.raises(ValueError, match="prompt_mask shape"):
        generate(model, ids, mask[:, 1:], config=GREEDY)
    with pytest.raises(ValueError, match="needs the cache"):
        continue_generation(model, ids, mask, None, config=GREEDY)
    for bad, match in [(dict(temperature=-1), "temperature"), (dict(top_p=0.0), "top_p"),
                       (dict(top_k=-2), "top_k"), (dict(max_new_tokens=0), "max_new_tokens")]:
        with pytest.raises(ValueError, match=match):
            GenerationConfig(**bad)


def test_bucketing_helpers():
    assert [bucket_length(n) for n in (0, 1, 16, 17, 100)] == [16, 16, 16, 32, 128]
    assert [bucket_length(n, multiple=64) for n in (0, 1, 64, 65)] == [64, 64, 64, 128]
    ids, mask = pad_batch([[5, 6], [7], []], pad_id=9, length=4)
    np.testing.assert_array_equal(ids, [[9, 9, 5, 6], [9, 9, 9, 7], [9, 9, 9, 9]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    ids, mask = pad_batch([[5, 6], [7]], side="right", min_size=4)
    np.testing.assert_array_equal(ids, [[5, 6, 0, 0], [7, 0, 0, 0]])
    with pytest.raises(ValueError, match="does not fit"):
        pad_batch([[1, 2, 3]], length=2)
    assert GenerationConfig(stop_ids=3).stop_ids == (3,)


def test_generation_config_is_gin_configurable():
    with gin.unlock_config():
        gin.parse_config("GenerationConfig.temperature = 0.25\nGenerationConfig.stop_ids = [2, 0]")
    try:
        cfg = GenerationConfig()
        assert cfg.temperature == 0.25 and cfg.stop_ids == (2, 0)
        hash(cfg)
    finally:
        gin.clear_config()


def test_prefill_and_decode_are_compiled_apart_with_their_own_kernels(model):
    """On CPU the prefill program uses Eigen's matmuls and decode the kernels `generate.decode_kernels` picks
    (here XLA's default, YNNPACK); the two-program path gives the single-program `generate_fn` tokens and
    logprobs."""
    assert jax.default_backend() == "cpu"
    opts = prefill_compiler_options()
    assert opts == (("xla_cpu_experimental_ynn_fusion_type", ""),)
    assert prefill_compiler_options(cpu_eigen_dots=False) == ()
    assert not xla_cpu.accepts((("xla_cpu_no_such_option", "1"),))  # an unknown option is refused, not fatal
    prefill, decode = gen._phase_jits(opts)
    graphdef, state = nnx.split(model)
    ids, mask = (jnp.asarray(a) for a in pad_batch(prompts(), length=16))
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0)
    key = jax.random.key(3)
    prefill_hlo = prefill.lower(graphdef, state, ids, mask, model.init_cache(3, 32)).compile().as_text()
    logits = jnp.zeros((3, V), jnp.float32)
    decode_hlo = decode.lower(graphdef, state, logits, model.init_cache(3, 32), key, cfg).compile().as_text()
    assert "__ynn_fusion" not in prefill_hlo and "__ynn_fusion" in decode_hlo
    split = gen.generate_jit(graphdef, state, ids, mask, model.init_cache(3, 32), key, cfg)
    whole = jax.jit(generate_fn, static_argnames=("graphdef", "config"))(
        graphdef, state, ids, mask, model.init_cache(3, 32), key, cfg)
    np.testing.assert_array_equal(split.tokens, whole.tokens)
    np.testing.assert_allclose(split.logprobs, whole.logprobs, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(split.cache.lengths, whole.cache.lengths)


def test_decode_kernels_choice_gives_the_same_generation(model):
    """'default' is XLA's kernels, 'eigen' Eigen's, 'auto' one of the two (measured on this host); a decode
    compiled with either generates the same tokens; a bad choice is refused naming the binding."""
    eigen = (("xla_cpu_experimental_ynn_fusion_type", ""),)
    assert xla_cpu.dot_options("default", 64) == () and xla_cpu.dot_options("eigen", 64) == eigen
    assert xla_cpu.dot_options("auto", 16) in ((), eigen)
    with pytest.raises(ValueError, match="use one of"):
        xla_cpu.dot_options("fast", 16)
    graphdef, state = nnx.split(model)
    ids, mask = (jnp.asarray(a) for a in pad_batch(prompts(), length=16))
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0)
    runs = []
    for options in ((), eigen):
        prefill, decode = gen._phase_jits(prefill_compiler_options(), options)
        logits, cache = prefill(graphdef, state, ids, mask, model.init_cache(3, 32), None)
        hlo = decode.lower(graphdef, state, logits, model.init_cache(3, 32), jax.random.key(3), cfg).compile().as_text()
        assert ("__ynn_fusion" in hlo) == (options == ())
        runs.append(decode(graphdef, state, logits, cache, jax.random.key(3), cfg))
    np.testing.assert_array_equal(runs[0].tokens, runs[1].tokens)
    np.testing.assert_allclose(runs[0].logprobs, runs[1].logprobs, rtol=1e-4, atol=1e-4)
    gin.bind_parameter("generate.decode_kernels.kernels", "fast")
    try:
        with pytest.raises(ValueError, match="generate.decode_kernels.kernels"):
            gen.decode_compiler_options(16)
    finally:
        gin.clear_config()


# ------------------------------------------------------------------------------------------- bf16 without casts
@pytest.fixture(scope="module")
def bf16_model():
    """bf16 compute on fp32 (master) weights, as the trainer runs a bf16 model."""
    cfg = ModelConfig(vocab_size=V, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4, num_kv_heads=2,
                      qkv_bias=True, dtype="bfloat16", param_dtype="float32")
    return random_model(cfg, seed=0, std=0.2, norm_std=0.2, bias_std=0.2)


def _weight_converts(text: str, weight_shapes) -> list:
    """Lines of an HLO or StableHLO program that convert a tensor of a weight's shape (batch 3 keeps every
    activation's shape apart from the weights')."""
    found = []
    for line in text.splitlines():
        if "stablehlo.convert" in line:  # `%y = stablehlo.convert %x : (tensor<48x80xf32>) -> tensor<48x80xbf16>`
            shapes = [tuple(int(d) for d in m.split("x") if d)
                      for m in re.findall(r"tensor<([0-9x]+)x(?:bf16|f32)>", line)]
        elif re.search(r"\sconvert\(", line):  # `%convert.3 = bf16[48,80]{1,0} convert(...)`
            shapes = [tuple(int(d) for d in m.split(",") if d)
                      for m in re.findall(r"=\s*(?:bf16|f32)\[([0-9,]+)\]", line)]
        else:
            continue
        if any(s in weight_shapes for s in shapes):
            found.append(line.strip())
    return found


def _loop_text(hlo: str) -> str:
    """The computations of a compiled HLO module that run inside a while loop (bodies, conditions and all they
    call), as one text."""
    comps, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if head:
            name = head.group(1)
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    refs = {n: set(re.findall(r"(?:body|condition|calls|to_apply)=%([\w.\-]+)", "\n".join(body)))
            | set(re.findall(r"%([\w.\-]+)", " ".join(re.findall(r"branch_computations=\{([^}]*)\}", "\n".join(body)))))
            for n, body in comps.items()}
    todo = [n for body in comps.values() for n in re.findall(r"(?:body|condition)=%([\w.\-]+)", "\n".join(body))]
    seen = set()
    while todo:
        n = todo.pop()
        if n not in seen and n in comps:
            seen.add(n)
            todo.extend(refs[n])
    return "\n".join(line for n in seen for line in comps[n])


def test_bf16_decode_loop_holds_no_weight_converts(bf16_model):
    """The split generation runs on is a bf16 copy made once: our decode program (StableHLO, what any backend
    compiles) converts no weight anywhere, and the compiled loop converts none; on the fp32 master weights the
    same program converts every weight in every step."""
    graphdef, state = gen.generation_split(bf16_model)
    assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16_model))} == {jnp.dtype(jnp.float32)}  # master kept
    weight_shapes = {tuple(x.shape) for x in jax.tree.leaves(state)}
    cfg = GenerationConfig(max_new_tokens=4, temperature=1.0)
    _, decode = gen._phase_jits(prefill_compiler_options())
    logits, key = jnp.zeros((3, V), jnp.float32), jax.random.key(0)
    cache = bf16_model.init_cache(3, 32)
    assert cache.k[0].dtype == jnp.bfloat16

    def programs(st):
        lowered = decode.lower(graphdef, st, logits, cache, key, cfg)
        return lowered.as_text(), lowered.compile().as_text()

    stablehlo, hlo = programs(state)
    loop = _loop_text(hlo)
    assert "stablehlo.while" in stablehlo and "dot_general" in loop  # the loop and its matmuls were found
    assert _weight_converts(stablehlo, weight_shapes) == []
    assert _weight_converts(loop, weight_shapes) == []
    # (XLA:CPU itself runs bf16 matmuls in f32: its compiled program upcasts the bf16 weights once per call,
    # before the loop, and hoists our per-step casts there too. GPU and TPU multiply bf16 natively.)
    _, master = nnx.split(bf16_model)
    stablehlo, _ = programs(master)  # the control: casting inside the program is visible to this check
    assert len(_weight_converts(stablehlo, weight_shapes)) >= len(jax.tree.leaves(state)) - 1
    # Same rounding once as in every step: the same tokens and logprobs.
    ids, mask = (jnp.asarray(a) for a in pad_batch(prompts(), length=16))
    once = gen.generate_jit(graphdef, state, ids, mask, None, key, cfg, cache_length=32)
    each = gen.generate_jit(graphdef, master, ids, mask, None, key, cfg, cache_length=32)
    np.testing.assert_array_equal(once.tokens, each.tokens)
    np.testing.assert_allclose(once.logprobs, each.logprobs, rtol=1e-6, atol=1e-6)


def test_rollout_params_cast_once_and_keep_what_is_already_there(bf16_model):
    from agentrl_jax.policy import rollout_params_fn
    _, master = nnx.split(bf16_model)
    to_bf16 = rollout_params_fn("bfloat16")
    copy = to_bf16(master)
    for a, b in zip(jax.tree.leaves(master), jax.tree.leaves(copy)):
        assert a.dtype == jnp.float32 and b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a.astype(jnp.bfloat16)))
    assert to_bf16(copy) is copy  # already in the compute dtype: no copy
    assert rollout_params_fn("float32")(master) is master
    ints = {"w": jnp.ones((2,), jnp.float32), "n": jnp.arange(3)}
    out = to_bf16(ints)
    assert out["w"].dtype == jnp.bfloat16 and out["n"].dtype == ints["n"].dtype


# ------------------------------------------------------------------------------ per-call host work, cached
def test_split_is_cached_per_model_and_follows_in_place_updates():
    cfg = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2, num_kv_heads=1)
    m, other = random_model(cfg, seed=1, std=0.3), random_model(cfg, seed=2, std=0.3)
    ids, mask = pad_batch(prompts(6), length=16)
    n0 = gen.split_count()
    first = generate(m, ids, mask, config=GREEDY)
    again = generate(m, ids, mask, config=GREEDY)
    assert gen.split_count() == n0 + 1  # split once, reused by the second call
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert gen.generation_split(m)[1] is gen.generation_split(m)[1]
    nnx.update(m, nnx.state(other))  # an optimizer step applied in place
    updated = generate(m, ids, mask, config=GREEDY)
    assert gen.split_count() == n0 + 2
    np.testing.assert_array_equal(updated.tokens, generate(other, ids, mask, config=GREEDY).tokens)
    assert not np.array_equal(updated.tokens, first.tokens)


def test_cache_made_inside_the_prefill_equals_a_passed_one(model):
    ids, mask = pad_batch(prompts(7), length=16)
    cfg = GenerationConfig(max_new_tokens=5, temperature=1.0)
    inside = generate(model, ids, mask, key=jax.random.key(1), config=cfg, cache_length=24)
    passed = generate(model, ids, mask, key=jax.random.key(1), config=cfg, cache=model.init_cache(3, 24))
    np.testing.assert_array_equal(inside.tokens, passed.tokens)
    np.testing.assert_array_equal(inside.logprobs, passed.logprobs)
    for a, b in zip(jax.tree.leaves(inside.cache), jax.tree.leaves(passed.cache)):
        np.testing.assert_array_equal(a, b)
    assert inside.cache.max_length == 24
    with pytest.raises(ValueError, match="cache_length >= 21"):
        generate(model, ids, mask, key=jax.random.key(1), config=cfg, cache_length=20)


def test_power_of_two_mlp_width_is_padded_for_generation_with_the_same_outputs():
    """With `xla_cpu.generation_mlp_padding.mode = 'on'` the weights generation reads get a 1,024-wide MLP grown to
    1,040 zero-padded units (`decoder.pad_mlp_width`: Eigen's GEMM can alias on a [K, 2^n] operand); tokens and
    logprobs stay those of the unpadded weights, the model keeps its shapes, the rollout copy is padded the same
    way; 'off' leaves fp32 params as they are; 'auto' is a timed choice; a bad mode names the binding."""
    from agentrl_jax.models.decoder import MLP_PAD, pad_mlp_width
    from agentrl_jax.policy import rollout_params_fn

    cfg = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=1024, num_layers=2, num_heads=4, num_kv_heads=2)
    wide = random_model(cfg, seed=1, std=0.2, norm_std=0.2)
    ids, mask = (jnp.asarray(a) for a in pad_batch(prompts(), length=16))
    cfg_s = GenerationConfig(max_new_tokens=6, temperature=1.0)
    key = jax.random.key(5)
    _, plain = nnx.split(wide)
    gin.bind_parameter("xla_cpu.generation_mlp_padding.mode", "on")
    try:
        graphdef, state = gen.generation_split(wide)
        to_rollout = rollout_params_fn("float32")
        copy = to_rollout(plain)
        assert to_rollout(copy) is copy  # a padded copy passed again (evaluation does) is not padded or copied again
        gin.bind_parameter("xla_cpu.generation_mlp_padding.mode", "off")
        assert rollout_params_fn("float32")(plain) is plain
        gin.bind_parameter("xla_cpu.generation_mlp_padding.mode", "sometimes")
        with pytest.raises(ValueError, match="xla_cpu.generation_mlp_padding.mode"):
            rollout_params_fn("float32")
    finally:
        gin.clear_config()
        gen.generation_split.cache_clear()
    assert xla_cpu.generation_mlp_padding() in (True, False)  # 'auto': timed on this host
    widths = {p[-3].key + "/" + p[-2].key: x.shape for p, x in jax.tree_util.tree_leaves_with_path(state)
              if any(getattr(k, "key", None) == "mlp" for k in p)}
    assert widths["gate_proj/kernel"] == (32, 1024 + MLP_PAD) and widths["down_proj/kernel"] == (1024 + MLP_PAD, 32)
    assert wide.layers[0].mlp.gate_proj.kernel.shape == (32, 1024)  # the model itself is untouched
    assert jax.tree.map(lambda a: a.shape, copy) == jax.tree.map(lambda a: a.shape, state)
    padded_out = gen.generate_jit(graphdef, state, ids, mask, None, key, cfg_s, cache_length=32)
    plain_out = gen.generate_jit(graphdef, plain, ids, mask, None, key, cfg_s, cache_length=32)
    np.testing.assert_array_equal(np.asarray(padded_out.tokens), np.asarray(plain_out.tokens))
    np.testing.assert_allclose(np.asarray(padded_out.logprobs), np.asarray(plain_out.logprobs), atol=1e-5)
    # widths that are no power of two, or narrower than 1,024, are left as they are
    narrow = nnx.split(random_model(dataclasses.replace(cfg, intermediate_size=1536)))[1]
    assert jax.tree.map(lambda a: a.shape, pad_mlp_width(narrow)) == jax.tree.map(lambda a: a.shape, narrow)
