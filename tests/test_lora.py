"""LoRA (issue 17): nnx.LoRA adapters on the tiny model's projections, the merged export, and a real train() run
in which only the adapters change, the optimizer and checkpoints hold only them, and the KL reference is the
frozen base without a copy."""
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from agentrl_jax import sharding
from agentrl_jax import train as T
from agentrl_jax.models import load_pretrained, lora, save_pretrained
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.policy import load_policy

TINY_FILES = ["gin/experiments/sokoban_tiny_cpu.gin"]
IDS = np.array([[5, 17, 300, 42, 9, 811, 77, 3], [1, 2, 64, 65, 66, 900, 12, 13]], np.int32)


@pytest.fixture(scope="module")
def tiny_folder():
    return str(ensure_tiny_folder())


def _with_adapters(folder, rank=4, targets=lora.TARGETS, seed=0):
    lm, _ = load_pretrained(folder, load_tokenizer=False)
    return lora.add_adapters(lm, lora.LoRAConfig(rank=rank, alpha=2.0 * rank, target_modules=tuple(targets),
                                                 seed=seed))


def _randomise_b(lm, seed=1, std=0.05):
    """Non-zero lora_b (a fresh adapter's is 0), as after training."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(lm, nnx.LoRAParam)):
        if var.get_value().shape[0] == 4:  # lora_b [rank, out]
            var.set_value(jnp.asarray(std * rng.standard_normal(var.get_value().shape), jnp.float32))


def test_gin_errors_name_the_binding():
    with pytest.raises(ValueError, match="lora.rank"):
        lora.lora_config(rank=-1)
    with pytest.raises(ValueError, match="lora.target_modules"):
        lora.lora_config(rank=4, target_modules=["q_proj", "qproj"])
    with pytest.raises(ValueError, match="lora.alpha"):
        lora.lora_config(rank=4, alpha=0.0)
    assert lora.lora_config(rank=8).scale == 1.0 and lora.lora_config(rank=8, alpha=32).scale == 4.0
    assert not lora.lora_config().enabled


def test_adapters_start_as_the_base_and_carry_sharding_names(tiny_folder):
    base, _ = load_pretrained(tiny_folder, load_tokenizer=False)
    lm = _with_adapters(tiny_folder, targets=("q_proj", "o_proj", "down_proj"))
    np.testing.assert_array_equal(np.asarray(lm(jnp.asarray(IDS))), np.asarray(base(jnp.asarray(IDS))))
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(lm, nnx.LoRAParam))}
    assert len(flat) == 2 * 3 * lm.cfg.num_layers  # a and b per target per layer, nothing else
    q_a, q_b = flat["layers/0/attn/q_proj/lora/lora_a"], flat["layers/0/attn/q_proj/lora/lora_b"]
    c = lm.cfg
    assert q_a.get_value().shape == (c.hidden_size, 4) and q_b.get_value().shape == (4, c.num_heads * c.head_dim)
    assert q_a.get_metadata()["out_sharding"] == ("embed", None)
    assert q_b.get_metadata()["out_sharding"] == (None, "heads")
    assert flat["layers/1/attn/o_proj/lora/lora_a"].get_metadata()["out_sharding"] == ("heads", None)
    assert flat["layers/1/mlp/down_proj/lora/lora_a"].get_metadata()["out_sharding"] == ("mlp", None)
    # The shardings the trainer builds from that metadata (8 fake CPU devices, fsdp=2 x tensor=4).
    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
    sh = sharding.tree_shardings(nnx.state(lm, nnx.Param), mesh)
    spec = {"/".join(map(str, k)): v.get_value().spec for k, v in nnx.to_flat_state(sh)}
    assert spec["layers/0/attn/q_proj/lora/lora_b"] == jax.sharding.PartitionSpec(None, "tensor")
    assert spec["layers/0/attn/q_proj/lora/lora_a"] == jax.sharding.PartitionSpec("fsdp", None)
    with pytest.raises(ValueError, match="already carries"):
        lora.add_adapters(lm, lora.LoRAConfig(rank=2))


def test_merged_export_equals_the_adapter_forward(tiny_folder, tmp_path):
    lm = _with_adapters(tiny_folder)
    _randomise_b(lm)
    base, _ = load_pretrained(tiny_folder, load_tokenizer=False)
    adapter_logits = np.asarray(lm(jnp.asarray(IDS)))
    # The adapters matter (else the comparison below could not fail).
    assert np.abs(adapter_logits - np.asarray(base(jnp.asarray(IDS)))).max() > 1e-2
    save_pretrained(lm, None, str(tmp_path / "merged"))
    with open(tmp_path / "merged" / "config.json") as f:
        assert "lora" not in f.read()
    back, _ = load_pretrained(str(tmp_path / "merged"), load_tokenizer=False)
    assert not lora.has_adapters(back)
    np.testing.assert_allclose(np.asarray(back(jnp.asarray(IDS))), adapter_logits, atol=1e-5, rtol=0)


def test_train_step_changes_only_the_adapters(tiny_folder):
    """The sharded step with the base passed frozen: adapters move, the base stays bit-identical, and the
    optimizer state covers the adapters only."""
    import optax

    lm = _with_adapters(tiny_folder, rank=2)
    graphdef, params, _ = nnx.split(lm, nnx.Param, ...)
    trainable, frozen = lora.split_trainable(params)
    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
    p_sh = sharding.tree_shardings(params, mesh)
    t_sh, f_sh = lora.split_trainable(p_sh)
    trainable, frozen = jax.device_put(trainable, t_sh), jax.device_put(frozen, f_sh)
    frozen_before = jax.tree.map(np.asarray, frozen)
    tx = optax.adam(1e-2)
    opt_state = tx.init(trainable)
    o_sh = sharding.tree_shardings(opt_state, mesh)
    spec = sharding.TrainShardings(params=t_sh, opt_state=o_sh, batch=sharding.batch_sharding(mesh),
                                   replicated=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                                   mesh=mesh, rules=sharding.logical_rules())

    def loss_fn(model, batch, key):  # next-token NLL
        logits = model(batch["ids"][:, :-1])
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["ids"][:, 1:, None], -1).mean()
        return nll, {"nll": nll}

    step = sharding.make_train_step(loss_fn, tx, mesh, spec, graphdef, donate=False, frozen_shardings=f_sh)
    batch = {"ids": np.concatenate([IDS] * 4)}
    with pytest.raises(ValueError, match="frozen"):
        step(trainable, opt_state, batch, jax.random.PRNGKey(0))
    new, opt_state, m = step(trainable, opt_state, batch, jax.random.PRNGKey(0), frozen)
    new, opt_state, m2 = step(new, opt_state, batch, jax.random.PRNGKey(1), frozen)
    assert float(m2["nll"]) < float(m["nll"])
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen)):
        np.testing.assert_array_equal(a, np.asarray(b))
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(trainable), jax.tree.leaves(new))]
    assert all(moved)  # every lora_b (and lora_a after step 1) moved
    assert lora.param_bytes(opt_state) == 2 * lora.param_bytes(trainable) + 4  # adam mu, nu + a step count


def _key(path):
    """A leaf's path as plain strings (a restored dict says '0' where an nnx.State says 0; no `.value`)."""
    names = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return tuple(n for n in names if n not in ("value", "raw_value"))


def _bindings(out_dir, **over):
    # As tests/test_train.py: 8 episodes a step, 8 held-out episodes at the rollout temperature (one program).
    b = {"OUTPUT_DIR": repr(str(out_dir)), "train.num_steps": 1, "train.tasks_per_step": 2, "train.group_size": 4,
         "train.minibatch_size": 32, "train.eval_episodes": 8, "train.sft_steps": 0, "train.eval_every": 1,
         "train.checkpoint_every": 1, "train.sample_every": 0, "train.eval_temperature": 1.0,
         "Sokoban.max_steps": 3, "lora.rank": 4, "lora.alpha": 8.0,
         "agentrl_jax.rl.RLConfig.kl_coef": 0.05}
    b.update(over)
    return [f"{k} = {v}" for k, v in b.items()]


@pytest.mark.slow
def test_train_with_lora_keeps_the_base_and_checkpoints_only_adapters(tmp_path, monkeypatch):
    seen = []
    real = T._rl_iteration

    def record(tr, *args, **kwargs):  # the real iteration; keeps what it returns
        out = real(tr, *args, **kwargs)
        seen.append((tr, out[0]))
        return out

    monkeypatch.setattr(T, "_rl_iteration", record)
    gin.clear_config()
    T.parse_gin(TINY_FILES, _bindings(tmp_path))
    try:
        metrics = T.train()
        policy, _ = load_policy("tiny")  # the same gin: base from the tiny folder, fresh adapters
    finally:
        gin.clear_config()
    assert "kl_loss" in metrics and "eval/success_rate" in metrics
    (tr, params), = seen
    assert tr.lora
    _, fresh, _ = nnx.split(policy, nnx.Param, ...)
    fresh_adapters, fresh_base = lora.split_trainable(fresh)
    adapters, base = lora.split_trainable(params)
    # The base after the update: bit-identical to the loaded one, and the very arrays the trainer holds.
    for a, b, c in zip(jax.tree.leaves(fresh_base), jax.tree.leaves(base), jax.tree.leaves(tr._frozen)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b is c
    # The KL reference: the base itself (shared arrays, no copy) with the untrained adapters (lora_b = 0).
    ref_adapters, ref_base = lora.split_trainable(tr.ref_params)
    assert all(a is b for a, b in zip(jax.tree.leaves(ref_base), jax.tree.leaves(tr._frozen)))
    for path, v in nnx.to_flat_state(ref_adapters):
        if path[-1] == "lora_b":
            assert not np.asarray(v.get_value()).any()
    # The adapters did train.
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(fresh_adapters), jax.tree.leaves(adapters)))
    # The checkpoint: adapters (+ the KL reference's adapters) and an optimizer state for them, no base weight.
    state = ocp.PyTreeCheckpointer().restore(os.path.join(tmp_path, "checkpoints", "1", "state"))
    for key in ("params", "ref_params"):
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state[key])]
        assert paths and all("lora_a" in p or "lora_b" in p for p in paths), paths[:4]
    saved = {_key(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state["params"])}
    assert len(saved) == len(jax.tree.leaves(adapters))
    adapter_bytes = lora.param_bytes(adapters)
    assert lora.param_bytes(state["opt_state"]) < 3 * adapter_bytes < lora.param_bytes(base) / 4

    # The evaluator and env_properties rebuild the run's adapters from its operative config and restore them onto
    # the base: exactly the trained policy.
    from agentrl_jax import env_properties as EP  # noqa: PLC0415
    from agentrl_jax import evaluate as E  # noqa: PLC0415

    (row,) = E.build_rows(None, {"lora_run": str(tmp_path)}, "last", 1, start_thinking=False)
    assert (row.lora.rank, row.lora.alpha, row.steps) == (4, 8.0, (1,))
    _, evaluated, _ = E.PolicyCache(tr.mesh).params(row, 1)
    measured = EP.load_measurement_policy("tiny", run_dir=str(tmp_path)).params
    want = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(params) if "value_head" not in p}
    for got in (evaluated, measured):
        flat = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(got)}
        assert flat.keys() == want.keys()
        for p, v in want.items():
            np.testing.assert_array_equal(flat[p], v, err_msg=str(p))

    # A restart resumes from that checkpoint: its abstract target is the adapters' tree (nothing left to run).
    restored = []
    real_restore = T.ckpt.Checkpointer.restore_latest

    def restore_latest(self, abstract):
        out = real_restore(self, abstract)
        restored.append(out)
        return out

    monkeypatch.setattr(T.ckpt.Checkpointer, "restore_latest", restore_latest)
    gin.clear_config()
    T.parse_gin(TINY_FILES, _bindings(tmp_path))
    try:
        T.train()
    finally:
        gin.clear_config()
    (step, back, _), = restored
    assert step == 1
    for p, x in jax.tree_util.tree_leaves_with_path(back["params"]):
        np.testing.assert_array_equal(np.asarray(x), saved[_key(p)])
