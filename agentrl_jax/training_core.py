"""The policy under training, shared by RL (`agentrl_jax.train.Trainer`) and SFT (`agentrl_jax.sft`).

One class holds what both need and nothing domain- or algorithm-specific: the model and tokenizer, the chat
format (thinking on/off), the parameters placed by the logical-axis rules, the sharded update program for a
given loss and optimizer, the saved/full views of the parameters (all of them, or with LoRA the adapters), host
minibatches placed on the mesh, and starting from another run's checkpoint (`init_from`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple

import gin
import jax
import numpy as np
from flax import nnx

from agentrl_jax import checkpoint as ckpt
from agentrl_jax import sharding, xla_cpu
from agentrl_jax.chat import ChatFormat
from agentrl_jax.models import lora
from agentrl_jax.policy import load_policy, rollout_params_fn


def checkpoints_folder(run_dir: str, binding: str = "init_from") -> str:
    """A run's checkpoints/ folder, or a ValueError naming `binding` when `run_dir` has none."""
    folder = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(folder):
        raise ValueError(f"{binding} {run_dir!r} has no checkpoints/ folder; point it at a finished RL or SFT run's "
                         f"output_dir.")
    return folder


@gin.configurable(module="train")
def update_compiler_options(cpu_eigen_dots: bool = True) -> xla_cpu.Options:
    """XLA options for the update (train step) and the scoring pass: their matmuls are all tall ([tokens,
    hidden] activations), where on the CPU backend Eigen's kernels beat the default YNNPACK ones (`xla_cpu`)."""
    return xla_cpu.eigen_dot_options(cpu_eigen_dots)


class PolicyCore:
    """model_path: a model folder (`load_policy`); thinking: the chat format's answer layout; with_value_head: a
    critic for PPO; logits_chunk_size: response positions per logits slice in the losses."""

    def __init__(self, *, model_path: str, mesh, thinking: bool, with_value_head: bool = False,
                 logits_chunk_size: Optional[int] = None):
        self.mesh, self.logits_chunk_size = mesh, logits_chunk_size
        policy, self.tokenizer = load_policy(model_path, with_value_head=with_value_head, mesh=mesh)
        self.model_path = model_path
        self.dtype = policy.cfg.dtype
        self.chat = ChatFormat.from_tokenizer(self.tokenizer, thinking=thinking)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError("the policy holds non-parameter state; only nnx.Param variables are supported")
        self.rules = sharding.logical_rules()
        self.param_sh = sharding.tree_shardings(params, mesh, self.rules)
        self.params = jax.device_put(params, self.param_sh)
        self._rollout_params = rollout_params_fn(policy.cfg.dtype, self.param_sh)
        # LoRA (gin lora.rank > 0): updates, optimizer state and checkpoints cover only the trainable part
        # (adapters, value head); the frozen base is this one copy, shared by every full state (and by the KL
        # reference, whose base is the same arrays).
        self.lora = lora.has_adapters(params)
        self._frozen = lora.split_trainable(self.params)[1] if self.lora else None
        self.train_sh = sharding.TrainShardings(
            params=self.param_sh, opt_state=None, batch=sharding.batch_sharding(mesh, self.rules),
            replicated=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), mesh=mesh, rules=self.rules)

    # ------------------------------------------------------------------------------------------- update
    def make_update(self, loss_fn, tx, params, accum_steps: int = 1):
        """(jitted sharded train step for `loss_fn`, optimizer state created sharded, its shardings).

        accum_steps > 1: each minibatch is split into that many micro-batches whose gradients are summed
        (`loss_fn` normalises by the whole minibatch's counts), which bounds activation memory for long
        prompts without changing the update; feed it through `shard(mb, accum_steps)`.
        """
        trainable, p_sh = (self.saved_params(params), self.saved_params(self.param_sh))
        o_sh = sharding.tree_shardings(jax.eval_shape(tx.init, trainable), self.mesh, self.rules)
        opt_state = jax.jit(tx.init, out_shardings=o_sh)(trainable)
        spec = dataclasses.replace(self.train_sh, params=p_sh, opt_state=o_sh)
        # accumulate="sum": the losses (learner.rl_loss / sft_loss) return their micro-batch's share of the
        # whole minibatch's loss, so accumulation is exact (a memory knob only).
        step = sharding.make_train_step(loss_fn, tx, self.mesh, spec, self.graphdef, accum_steps=accum_steps,
                                        donate=False, accumulate="sum",
                                        frozen_shardings=lora.split_trainable(self.param_sh)[1] if self.lora else None,
                                        compiler_options=update_compiler_options())
        if not self.lora:
            return step, opt_state, o_sh

        def lora_step(params, opt_state, batch, key):  # full state in and out, as without LoRA
            new, opt_state, metrics = step(self.saved_params(params), opt_state, batch, key, self._frozen)
            return self.full_params(new), opt_state, metrics

        return lora_step, opt_state, o_sh

    def saved_params(self, params):
        """What of a full param state is trained and checkpointed: all of it, or with LoRA the adapters (and
        value head) only. Also maps a tree of the params' shardings."""
        return lora.split_trainable(params)[0] if self.lora else params

    def full_params(self, saved):
        """`saved_params`' inverse: with LoRA, the trainable part joined to the frozen base."""
        return lora.join(self._frozen, saved) if self.lora else saved

    def shard(self, minibatch: Dict[str, np.ndarray], accum_steps: int = 1, process_local: bool = False):
        """A host minibatch placed on the mesh, batch dim over (data, fsdp); with `accum_steps` > 1 reshaped
        to [accum_steps, micro_batch, ...]. process_local: each process holds only its own rows of it."""
        if accum_steps > 1:
            minibatch = {k: v.reshape((accum_steps, -1) + v.shape[1:]) for k, v in minibatch.items()}
        # Host arrays go straight to their shards (no detour through one device).
        return sharding.shard_batch({k: np.asarray(v) for k, v in minibatch.items()}, self.train_sh, accum_steps,
                                    process_local=process_local)

    def abstract_state(self, params, opt_state, opt_shardings, key, with_ref: bool = False) -> Dict:
        """The checkpointed state's shapes and shardings (RL and SFT save the same layout: params, opt_state,
        key, and the KL reference when RL has one)."""
        abstract = {"params": sharding.abstract_with_shardings(self.saved_params(params),
                                                               self.saved_params(self.param_sh)),
                    "opt_state": sharding.abstract_with_shardings(opt_state, opt_shardings),
                    # Several processes: the key is a replicated global array (Orbax saves no single-device one).
                    "key": jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=None if jax.process_count() == 1
                                                else self.train_sh.replicated)}
        if with_ref:
            abstract["ref_params"] = abstract["params"]
        return abstract

    # ------------------------------------------------------------------------------------------- start
    def init_from(self, run_dir: str, params) -> Tuple[object, int]:
        """`params` with the language model's weights of another run's latest checkpoint (an RL or SFT run's
        output_dir), and that step. Only the model is read: this run's value head keeps its fresh initialisation, and
        the optimizer starts anew (a new run, not a resume). A LoRA source run's adapters are merged into its base
        (the same model_path as this run's), so this run starts on the function that run ended with. This run must
        fine-tune fully (refused with LoRA)."""
        if self.lora:
            # The adapters' checkpoints would not record which base they sit on: a resume and the evaluator would
            # join them to model_path's weights instead of this run's start.
            raise ValueError(f"init_from {run_dir!r} with LoRA (lora.rank > 0) is not supported: the run's adapters "
                             f"would be saved without the base they train on; use full fine-tuning (lora.rank = 0).")
        folder = checkpoints_folder(run_dir)
        # The evaluator's module registers a gin configurable; an entry point has parsed and locked its config by
        # now (`python -m agentrl_jax.train` with train.init_from crashed: "add a new configurable after the
        # config was locked"). A top-level import would register `evaluate` twice under `-m agentrl_jax.evaluate`.
        with gin.unlock_config():
            from agentrl_jax.evaluate import run_lora, run_settings  # noqa: PLC0415 (the source run's config)

        has_config = os.path.isfile(os.path.join(run_dir, "operative_config.gin"))
        source_lora = run_lora(run_dir) if has_config else lora.LoRAConfig()
        if source_lora.enabled and run_settings(run_dir).get("model_path") != self.model_path:
            raise ValueError(f"init_from {run_dir!r} is a LoRA run on model_path "
                             f"{run_settings(run_dir).get('model_path')!r}: its adapters are merged into that base, so "
                             f"this run needs the same model_path (it has {self.model_path!r}).")
        checkpointer = ckpt.Checkpointer(folder)
        try:
            step = checkpointer.latest_step()
            if step is None:
                raise ValueError(f"init_from {run_dir!r}: no checkpoint in {folder} yet (has the run finished?).")
            trainable, model = lora.split_trainable(params)  # model: every weight but adapters and value head
            model_sh = lora.split_trainable(self.param_sh)[1]
            if source_lora.enabled:
                restored = self._merged_adapters(checkpointer, step, params, source_lora, model_sh)
            else:
                restored = checkpointer.restore_params(step, sharding.abstract_with_shardings(model, model_sh))
        finally:
            checkpointer.close()
        return lora.join(restored, trainable), step

    def _merged_adapters(self, checkpointer, step: int, params, config, model_sh):
        """The model part of `params` (the base: model_path's weights) with a LoRA run's adapters of `step`
        merged into its projection kernels (`lora.merged_kernel`, as `save_pretrained` exports them)."""
        policy = nnx.merge(self.graphdef, params, copy=True)  # its own Variables: `params` stays the base
        lora.add_adapters(policy.lm, config, mesh=self.mesh, rules=self.rules)
        adapters = nnx.state(policy, nnx.LoRAParam)
        adapter_sh = sharding.tree_shardings(adapters, self.mesh, self.rules)
        nnx.update(policy, checkpointer.restore_params(step, sharding.abstract_with_shardings(adapters, adapter_sh)))
        for _, proj in lora.target_projs(policy.lm, config.target_modules):
            proj.kernel.set_value(lora.merged_kernel(proj))
        model = lora.split_trainable(nnx.state(policy, nnx.Not(nnx.LoRAParam)))[1]
        return jax.device_put(model, model_sh)

    def rollout_params(self, params):
        """The compute-dtype copy rollouts read (`policy.rollout_params_fn`)."""
        return self._rollout_params(params)
