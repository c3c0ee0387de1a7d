"""The RL math gives the same numbers on sharded inputs (8 fake CPU devices) as on one device."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from agentrl_jax.rl import RLConfig, gae, group_advantages, ppo_loss, token_logprobs_and_entropy


def test_sharded_batch_and_vocab_match_single_device():
    assert jax.device_count() >= 8
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("data", "tensor"))
    rng = np.random.default_rng(0)
    b, t, v = 4, 6, 16
    logits = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    mask = jnp.asarray(rng.random((b, t)) < 0.7, jnp.float32)
    rewards = jnp.asarray(rng.normal(size=(b, t)), jnp.float32) * mask
    values = jnp.asarray(rng.normal(size=(b, t)), jnp.float32)
    old_lp = jnp.asarray(rng.normal(scale=0.1, size=(b, t)), jnp.float32)
    cfg = RLConfig(algorithm="ppo", entropy_coef=0.01)

    def step(logits, targets, mask, rewards, values, old_lp):
        lp, ent = token_logprobs_and_entropy(logits, targets, chunk_size=4)
        adv, ret = gae(rewards, values, mask, 0.99, 0.95)
        grpo = group_advantages(jnp.sum(rewards, axis=1).reshape(2, 2))
        loss, _ = ppo_loss(cfg, lp, lp + old_lp, adv, mask, entropy=ent, values=values + 0.1,
                           old_values=values, returns=ret)
        return loss, adv, grpo

    want = jax.jit(step)(logits, targets, mask, rewards, values, old_lp)
    rows = NamedSharding(mesh, P("data", None))
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    got = jax.jit(step)(put(logits, P("data", None, "tensor")), jax.device_put(targets, rows),
                        jax.device_put(mask, rows), jax.device_put(rewards, rows), jax.device_put(values, rows),
                        jax.device_put(old_lp, rows))
    for a, b_ in zip(got, want):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6)
