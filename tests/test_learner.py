"""The learner on the real tiny policy: gradient accumulation is exactly a memory knob, chunked logits score
like whole ones, the KL-in-reward fold and the relative value clip."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from agentrl_jax import learner, rl, sharding
from agentrl_jax.policy import load_policy, response_outputs

P, N = 6, 5  # prompt slots, response slots


def _setup(data: int, fsdp: int):
    mesh = sharding.make_mesh(data, fsdp, 1, devices=jax.devices()[:data * fsdp])
    policy, _ = load_policy("tiny", with_value_head=True)
    graphdef, params = nnx.split(policy, nnx.Param)
    rules = sharding.logical_rules()
    p_sh = sharding.tree_shardings(params, mesh, rules)
    params = jax.device_put(params, p_sh)
    rng = np.random.default_rng(0)
    s = 5  # real samples: the minibatch of 8 gets 3 zero-weight padding rows
    lengths = rng.integers(1, N + 1, size=s)  # unequal response lengths
    samples = {
        "ids": rng.integers(3, policy.cfg.vocab_size, size=(s, P + N)).astype(np.int32),
        "attn": np.ones((s, P + N), np.int32),
        "response_mask": (np.arange(N)[None] < lengths[:, None]).astype(np.float32),
        "old_logprobs": rng.normal(-3.0, 0.5, size=(s, N)).astype(np.float32),
        "ref_logprobs": rng.normal(-3.0, 0.5, size=(s, N)).astype(np.float32),
        "advantages": rng.normal(size=s).astype(np.float32),
        "returns": rng.normal(size=s).astype(np.float32),
        "old_values": rng.normal(size=s).astype(np.float32),
    }
    samples["attn"][0, :2] = 0  # a left-padded prompt
    (mb,) = list(learner.minibatches(samples, 8, None, shuffle=False))
    return mesh, graphdef, params, p_sh, rules, mb


@pytest.fixture(scope="module")
def setup():
    """The tiny policy with a critic on a 2-device (fsdp) mesh, and a partly filled minibatch of 8 rows."""
    return _setup(1, 2)


def _sgd_update(setup, loss_fn, accum, accumulate="sum"):
    """One SGD step through the real sharded train step: returns (-gradient, metrics). The large rate keeps the
    parameter difference far above the parameters' float32 resolution."""
    mesh, graphdef, params, p_sh, rules, mb = setup
    lr = 1e4
    tx = optax.sgd(lr)
    o_sh = sharding.tree_shardings(jax.eval_shape(tx.init, params), mesh, rules)
    spec = sharding.TrainShardings(params=p_sh, opt_state=o_sh, batch=sharding.batch_sharding(mesh, rules),
                                   replicated=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                                   mesh=mesh, rules=rules)
    step = sharding.make_train_step(loss_fn, tx, mesh, spec, graphdef, accum_steps=accum, donate=False,
                                    accumulate=accumulate)
    batch = {k: v.reshape((accum, -1) + v.shape[1:]) if accum > 1 else v for k, v in mb.items()}
    new, _, metrics = step(params, tx.init(params), sharding.shard_batch(batch, spec, accum), jax.random.key(0))
    delta = jax.tree.map(lambda a, b: (np.asarray(a, np.float64) - np.asarray(b, np.float64)) / lr, new, params)
    return delta, {k: float(v) for k, v in metrics.items()}


def _assert_tree_close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        scale = max(float(np.abs(y).max()), 1e-3)
        np.testing.assert_allclose(x, y, atol=tol * scale, rtol=0)


@pytest.mark.parametrize("mode", rl.AGGREGATION_MODES)
def test_accumulation_gives_the_unsplit_update_in_every_mode(setup, mode):
    """Micro-batches of 4 and 2 rows (one of them all padding) give the same gradient, loss and metrics as
    the whole partly filled minibatch, for every loss term: policy, value, entropy and KL."""
    cfg = rl.RLConfig(algorithm="ppo", loss_aggregation=mode, entropy_coef=0.01, kl_coef=0.1, value_coef=0.5)
    loss_fn = functools.partial(learner.rl_loss, config=cfg, prompt_len=P, temperature=1.0)
    ref_delta, ref_m = _sgd_update(setup, loss_fn, accum=1)
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(ref_delta)) > 0
    for accum in (2, 4):
        delta, m = _sgd_update(setup, loss_fn, accum=accum)
        _assert_tree_close(delta, ref_delta)
        for k in ("loss", "pg_loss", "vf_loss", "kl_loss", "entropy", "clip_frac", "response_tokens"):
            assert m[k] == pytest.approx(ref_m[k], rel=1e-5, abs=1e-7), (accum, k)
    # What the old averaging of per-micro-batch means did: not the same update.
    old_delta, _ = _sgd_update(setup, loss_fn, accum=4, accumulate="mean")
    with pytest.raises(AssertionError):
        _assert_tree_close(old_delta, ref_delta)


def test_accumulation_over_replicas_reduces_once_and_gives_the_unsplit_update():
    """With a data axis (2 replicas x 2 fsdp shards) each replica group sums its micro-batch gradients locally
    and the step reduces across replicas once, after the scan: still exactly the unsplit update."""
    setup = _setup(2, 2)
    cfg = rl.RLConfig(algorithm="ppo", entropy_coef=0.01, kl_coef=0.1, value_coef=0.5)
    loss_fn = functools.partial(learner.rl_loss, config=cfg, prompt_len=P, temperature=1.0)
    ref_delta, ref_m = _sgd_update(setup, loss_fn, accum=1)
    delta, m = _sgd_update(setup, loss_fn, accum=2)
    _assert_tree_close(delta, ref_delta)
    for k in ("loss", "pg_loss", "vf_loss", "kl_loss", "entropy", "response_tokens"):
        assert m[k] == pytest.approx(ref_m[k], rel=1e-5, abs=1e-7), k


def test_sft_loss_accumulates_exactly(setup):
    loss_fn = functools.partial(learner.sft_loss, prompt_len=P)
    ref_delta, ref_m = _sgd_update(setup, loss_fn, accum=1)
    delta, m = _sgd_update(setup, loss_fn, accum=4)
    _assert_tree_close(delta, ref_delta)
    assert m["nll"] == pytest.approx(ref_m["nll"], rel=1e-5)


def test_chunked_logits_score_and_train_like_whole_ones(setup):
    _, graphdef, params, _, _, mb = setup
    policy = nnx.merge(graphdef, params)
    ids, attn = jnp.asarray(mb["ids"]), jnp.asarray(mb["attn"])
    whole = response_outputs(policy, ids, attn, P, 0.7, with_values=True)
    chunked = response_outputs(policy, ids, attn, P, 0.7, with_values=True, chunk_size=2)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

    def total(p, chunk):
        lp, ent, _ = response_outputs(nnx.merge(graphdef, p), ids, attn, P, 0.7, chunk_size=chunk)
        return jnp.sum(lp * mb["response_mask"]) + 0.1 * jnp.sum(ent)

    _assert_tree_close(jax.grad(total)(params, 2), jax.grad(total)(params, None))


def test_kl_in_reward_is_folded_into_turn_rewards_and_returns():
    samples = {"old_logprobs": np.array([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]], np.float32),
               "ref_logprobs": np.array([[-1.5, -2.0, 9.0], [-1.0, -1.0, -1.0]], np.float32),
               "response_mask": np.array([[1, 1, 0], [1, 1, 1]], np.float32)}
    penalty = learner.kl_reward_penalty(samples, kl_coef=0.5, estimator="k1")
    np.testing.assert_allclose(penalty, [0.5 * 0.5, 0.0])  # the masked third token does not count
    index = np.array([[0, 1], [1, 0]])
    reward = np.array([[0.0, 1.0], [2.0, 0.0]], np.float32)
    new_reward, new_returns = learner.penalised_rewards(reward, np.array([1.0, 2.0]), index, penalty)
    np.testing.assert_allclose(new_reward, [[0.0, 0.75], [2.0, 0.0]])
    np.testing.assert_allclose(new_returns, [0.75, 2.0])


def test_kl_in_reward_leaves_no_kl_term_in_the_loss(setup):
    """With kl_in_reward the loss has no KL part (it went into the rewards); without it, it has one."""
    *_, mb = setup
    lp = jnp.asarray(mb["old_logprobs"])
    args = (lp, lp, jnp.asarray(np.broadcast_to(mb["advantages"][:, None], lp.shape)), jnp.asarray(mb["response_mask"]))
    with_loss = rl.ppo_loss(rl.RLConfig(kl_coef=0.5), *args, ref_logprobs=jnp.asarray(mb["ref_logprobs"]))[1]
    in_reward = rl.ppo_loss(rl.RLConfig(kl_coef=0.5, kl_in_reward=True), *args,
                            ref_logprobs=jnp.asarray(mb["ref_logprobs"]))[1]
    assert float(with_loss["kl_loss"]) > 0 and "kl_loss" not in in_reward


def test_relative_value_clip_scales_with_the_returns(setup):
    """value_clip_scale='return_std': the clip range is the per-batch range the trainer puts in the batch."""
    _, graphdef, params, _, _, mb = setup
    policy = nnx.merge(graphdef, params)
    base = dataclasses.replace(rl.RLConfig(algorithm="ppo", kl_coef=0.0), value_clip=0.2)
    rel = dataclasses.replace(base, value_clip_scale="return_std")
    # Old values far above both the new values and the returns: a small clip range binds, a huge one does not.
    far = dict(mb, returns=np.full(8, -100.0, np.float32), old_values=np.full(8, 5.0, np.float32))
    loss = lambda cfg, batch: learner.rl_loss(policy, batch, None, config=cfg, prompt_len=P, temperature=1.0)[1]
    tight = loss(base, dict(far, value_clip=np.full(8, 0.2, np.float32)))
    wide = loss(rel, dict(far, value_clip=np.full(8, 1e6, np.float32)))
    same_as_absolute = loss(rel, dict(far, value_clip=np.full(8, 0.2, np.float32)))
    assert float(same_as_absolute["vf_loss"]) == pytest.approx(float(tight["vf_loss"]))
    assert float(tight["vf_clip_frac"]) > 0 and float(wide["vf_clip_frac"]) == 0.0
    with pytest.raises(ValueError, match="value_clip_scale"):
        rl.RLConfig(value_clip_scale="relative")


def test_explained_variance():
    r = np.array([1.0, 2.0, 3.0, 4.0])
    assert learner.explained_variance(r, r) == 1.0
    assert learner.explained_variance(r, np.zeros(4) + r.mean()) == pytest.approx(0.0)
    assert learner.explained_variance(np.ones(4), np.zeros(4)) == 0.0
