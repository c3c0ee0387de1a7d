"""Mesh construction, parameter shardings and the sharded train step on 8 fake CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from agentrl_jax import optim, sharding
from agentrl_jax.partitioning import DEFAULT_RULES
from helpers.standin import StandinLM, lm_loss, make_batch, tiny_causal_lm

TOL = dict(rtol=1e-5, atol=1e-5)  # fp32, different reduction orders across meshes


def _factory():
    return StandinLM(vocab=64, hidden=32, mlp=64, layers=2, rngs=nnx.Rngs(0))


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def test_make_mesh_sizes_and_fill():
    assert len(jax.devices()) == 8
    assert dict(sharding.make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(sharding.make_mesh(data=2, fsdp=-1, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh(data=-1, fsdp=1, tensor=4).shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    one = sharding.make_mesh(devices=jax.devices()[:1])
    assert one.devices.size == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data=2, fsdp=2, tensor=1), "= 4 but there are 8 devices"),
        (dict(data=3, fsdp=-1), "not divisible by 3"),
        (dict(data=-1, fsdp=-1), "at most one axis"),
        (dict(tensor=0), "positive int or -1"),
    ],
)
def test_make_mesh_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(**kwargs)


def test_logical_rules_override_merges_by_name():
    rules = dict(sharding.logical_rules([("vocab", None), ("batch", ["data"]), ("extra", "tensor")]))
    assert rules["vocab"] is None and rules["batch"] == ("data",) and rules["extra"] == "tensor"
    assert rules["embed"] == dict(DEFAULT_RULES)["embed"]
    with pytest.raises(ValueError, match="logical_name"):
        sharding.logical_rules(["vocab"])


def test_causal_lm_params_are_sharded_by_their_logical_names():
    mesh = sharding.make_mesh(1, 2, 4)
    tx = optim.make_optimizer(learning_rate=1e-3)
    _, params, _, _ = sharding.create_sharded(tiny_causal_lm(), tx, mesh)
    specs = {jax.tree_util.keystr(p): x.sharding.spec for p, x in jax.tree_util.tree_leaves_with_path(params)}
    layer0 = "['layers'][0]"
    assert specs["['embed_tokens']['embedding'].value"] == P("tensor", "fsdp")  # (vocab, embed)
    assert specs[layer0 + "['attn']['q_proj']['kernel'].value"] == P("fsdp", "tensor", None)  # 4 heads / 4
    # 2 kv heads cannot be split 4 ways: that dim is replicated rather than failing to compile
    assert specs[layer0 + "['attn']['k_proj']['kernel'].value"] == P("fsdp", None, None)
    assert specs[layer0 + "['mlp']['down_proj']['kernel'].value"] == P("tensor", "fsdp")
    assert specs["['norm']['scale'].value"] == P("fsdp")


def test_params_are_created_sharded_on_fsdp():
    mesh = sharding.make_mesh(1, 8, 1)
    tx = optim.make_optimizer(learning_rate=1e-3)
    _, params, opt_state, sh = sharding.create_sharded(_factory, tx, mesh)
    emb = params["embed"]["embedding"][...]  # [vocab=64, embed=32]
    up = params["blocks"][0]["up"]["kernel"][...]  # [embed=32, mlp=64]
    assert emb.sharding.spec == P(None, "fsdp") and up.sharding.spec == P("fsdp", None)
    assert not emb.sharding.is_fully_replicated
    assert {s.data.shape for s in up.addressable_shards} == {(4, 64)}  # 32 / 8 rows per device
    # Adam moments follow their parameter; the step counters are replicated.
    mu = jax.tree.leaves(opt_state.inner_state)  # apply_if_finite wraps the chain
    assert any(getattr(x, "sharding", None) is not None and x.shape == up.shape
               and x.sharding.spec == P("fsdp", None) for x in mu)
    assert sh.batch.spec == P("fsdp")


def test_tensor_axis_and_indivisible_dims_are_replicated():
    mesh = sharding.make_mesh(1, 1, 8)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: StandinLM(vocab=60, hidden=32, mlp=64, rngs=nnx.Rngs(0)))
    sh = sharding.param_shardings(nnx.state(model, nnx.Param), mesh)
    # vocab=60 is not divisible by tensor=8 -> replicated instead of a compile error; mlp=64 is split.
    assert sh["embed"]["embedding"].get_value().spec == P(None, None)
    assert sh["blocks"][0]["up"]["kernel"].get_value().spec == P(None, "tensor")
    assert sh["blocks"][0]["up"]["bias"].get_value().spec == P("tensor")


def _run(mesh, steps=2, accum=1):
    tx = optim.make_optimizer(learning_rate=1e-3, weight_decay=0.01)
    graphdef, params, opt_state, sh = sharding.create_sharded(tiny_causal_lm(), tx, mesh)
    step = sharding.make_train_step(lm_loss, tx, mesh, sh, graphdef, accum_steps=accum)
    losses = []
    for i in range(steps):
        batch = {k: v.reshape((accum, -1) + v.shape[1:]) if accum > 1 else v for k, v in make_batch(0, i).items()}
        params, opt_state, m = step(params, opt_state, batch, jax.random.key(i))
        losses.append(float(m["loss"]))
    return losses, _np(params), m


@pytest.mark.slow
def test_same_loss_and_params_on_every_mesh(capfd):
    """The real CausalLM (tiny config): 2 steps on 1 device vs. (8,1,1), (1,8,1), (2,2,2), and with 2 micro-batches
    on (8,1,1) and (2,2,2) (gradients reduced across replicas once per step). No mesh makes XLA replicate a
    whole activation to reshard it (the embedding lookup did, with fsdp and tensor > 1)."""
    ref_losses, ref_params, _ = _run(sharding.make_mesh(devices=jax.devices()[:1]))
    assert ref_losses[1] < ref_losses[0]  # it trains
    for shape, accum in [((8, 1, 1), 1), ((1, 8, 1), 1), ((2, 2, 2), 1), ((8, 1, 1), 2), ((2, 2, 2), 2)]:
        losses, params, m = _run(sharding.make_mesh(*shape), accum=accum)
        np.testing.assert_allclose(losses, ref_losses, **TOL, err_msg=str(shape))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL, err_msg=str(shape)), params, ref_params)
        assert int(m["skipped"]) == 0 and float(m["learning_rate"]) == pytest.approx(1e-3)
    assert "Involuntary full rematerialization" not in capfd.readouterr().err


def test_train_step_rejects_bad_batches_clearly():
    mesh = sharding.make_mesh(1, 8, 1)
    tx = optim.make_optimizer(learning_rate=1e-3)
    graphdef, params, opt_state, sh = sharding.create_sharded(_factory, tx, mesh)
    step = sharding.make_train_step(lm_loss, tx, mesh, sh, graphdef)
    with pytest.raises(ValueError, match="not divisible by the data\\*fsdp mesh size 8"):
        step(params, opt_state, make_batch(0, 0, batch=12), jax.random.key(0))
    step4 = sharding.make_train_step(lm_loss, tx, mesh, sh, graphdef, accum_steps=4)
    with pytest.raises(ValueError, match="accum_steps=4"):
        step4(params, opt_state, make_batch(0, 0, batch=16), jax.random.key(0))


def test_model_with_non_param_state_is_rejected():
    class WithRngs(nnx.Module):
        def __init__(self):
            self.rngs = nnx.Rngs(0)
            self.w = nnx.Param(jnp.ones((8, 8)))

    mesh = sharding.make_mesh(1, 8, 1)
    with pytest.raises(ValueError, match="non-Param state"):
        sharding.create_sharded(WithRngs, optim.make_optimizer(learning_rate=1e-3), mesh)


def test_gin_rules_override_reaches_create_sharded():
    import gin

    gin.clear_config()
    try:
        gin.parse_config("logical_rules.rules = [('embed', None)]")
        _, params, _, sh = sharding.create_sharded(_factory, optim.make_optimizer(learning_rate=1e-3),
                                                   sharding.make_mesh(1, 8, 1))
        assert dict(sh.rules)["embed"] is None
        assert params["embed"]["embedding"].get_value().sharding.spec == P(None, None)  # no longer on fsdp
    finally:
        gin.clear_config()


def test_process_local_batches_must_come_from_disjoint_batch_shards():
    """2 hosts x 4 devices: a batch sharded over all 8 (fsdp) stitches; on mesh (1, 1, 8) the batch is
    replicated, each host would pass 'its half' of one shared batch and JAX would keep only one: refused."""
    devices = jax.devices()
    process_of = {d: i // 4 for i, d in enumerate(devices)}  # as if devices 0-3 were host 0, 4-7 host 1
    rules = sharding.logical_rules()
    for shape, ok in (((1, 8, 1), True), ((2, 4, 1), True), ((1, 1, 8), False), ((1, 2, 4), True)):
        mesh = sharding.make_mesh(*shape)
        rows = sharding.batch_sharding(mesh, rules).devices_indices_map((sharding.batch_divisor(mesh, rules),))
        problem = sharding.process_local_batch_problem(process_of, rows)
        assert (problem is None) == ok, (shape, problem)
    assert "span the processes" in sharding.process_local_batch_problem(
        process_of, sharding.batch_sharding(sharding.make_mesh(1, 1, 8), rules).devices_indices_map((1,)))
