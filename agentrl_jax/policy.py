"""The trainable policy: a causal LM with an optional value head on its trunk (the PPO critic).

`Policy` is an NNX module holding `lm` (a `CausalLM`) and `value_head` (a `ValueHead` or None), so one
parameter tree, one optimizer and one checkpoint cover both. `response_outputs` is the single forward used
by every loss: it scores the response tokens of (prompt, response) samples without computing logits over
the prompt.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Optional, Tuple

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from agentrl_jax.models import CausalLM, ValueHead, load_pretrained
from agentrl_jax import xla_cpu
from agentrl_jax.models.decoder import compute_params, needs_cast, pad_mlp_width
from agentrl_jax.models import lora
from agentrl_jax.models.lora import add_adapters, lora_config
from agentrl_jax.models.tiny import ensure_tiny_folder
from agentrl_jax.rl import logprobs_from_hidden_fn
from agentrl_jax.sharding import abstract_with_shardings

TINY = "tiny"


class Policy(nnx.Module):
    def __init__(self, lm: CausalLM, value_head: Optional[ValueHead] = None):
        self.lm = lm
        self.value_head = value_head

    @property
    def cfg(self):
        return self.lm.cfg

    # The LM interface, so generation (`agentrl_jax.generate`) runs on a Policy as on a CausalLM.
    def forward(self, *args, **kwargs):
        return self.lm.forward(*args, **kwargs)

    def logits(self, hidden):
        return self.lm.logits(hidden)

    def init_cache(self, batch_size: int, max_length: int, dtype=None):
        return self.lm.init_cache(batch_size, max_length, dtype)


@gin.configurable
def tiny_model_overrides(**config_overrides):
    """config.json fields for the locally built tiny model (e.g. `tiny_model_overrides.hidden_size = 128`)."""
    return config_overrides


def resolve_model_path(model_path: str) -> str:
    """`"tiny"` → the locally built tiny model folder; anything else must be a local HF folder."""
    if model_path == TINY:
        return str(ensure_tiny_folder(**tiny_model_overrides()))
    if not os.path.isdir(model_path):
        raise FileNotFoundError(
            f"model_path {model_path!r} is not a folder. Point train.model_path (gin macro MODEL_PATH) at a local "
            "Hugging Face folder (config.json + *.safetensors + tokenizer files), or use 'tiny'. For SmolLM2 run "
            "`python scripts/fetch_smollm2.py` first.")
    return model_path


@gin.configurable(denylist=["model_path", "mesh"])
def load_policy(model_path: str, with_value_head: bool = False, dtype: Optional[str] = None,
                param_dtype: Optional[str] = None, remat: bool = False, value_seed: int = 0, mesh=None,
                lora_settings=None):
    """Load (policy, tokenizer) from a folder (or "tiny"), placed on `mesh` if given; with LoRA adapters on
    the target projections when gin sets `lora.rank` > 0 (`agentrl_jax.models.lora`), or as `lora_settings`
    (a `LoRAConfig`, e.g. a training run's, see `evaluate.run_lora`) says when given."""
    folder = resolve_model_path(model_path)
    overrides = {"remat": True} if remat else {}
    lm, tokenizer = load_pretrained(folder, dtype=dtype, param_dtype=param_dtype, mesh=mesh, **overrides)
    # LoRA (gin lora.rank > 0): only the adapters will train.
    add_adapters(lm, lora_config() if lora_settings is None else lora_settings, mesh=mesh)
    head = ValueHead(lm.cfg.hidden_size, rngs=nnx.Rngs(value_seed)) if with_value_head else None
    return Policy(lm, head), tokenizer


def restore_checkpoint_params(checkpointer, step: int, params, shardings):
    """`params` (a policy's param state on `shardings`) with a training checkpoint's policy restored into it:
    the whole state after full fine-tuning; after LoRA (the params carry adapters, built with the run's
    `lora.*`), the adapters the run saved, joined to the frozen base it never changed. The value head and
    optimizer state in the checkpoint are not read."""
    if not lora.has_adapters(params):
        return checkpointer.restore_params(step, abstract_with_shardings(params, shardings))
    (adapters, base), adapter_sh = lora.split_trainable(params), lora.split_trainable(shardings)[0]
    restored = checkpointer.restore_params(step, abstract_with_shardings(adapters, adapter_sh))
    return lora.join(base, restored)


def _padding_changes_shapes(params) -> bool:
    padded = jax.eval_shape(pad_mlp_width, params)
    return any(a.shape != b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(padded)))


def rollout_params_fn(dtype, shardings=None) -> Callable:
    """params -> the copy rollouts read: every floating leaf in the compute `dtype` (`load_policy.dtype`).

    Call it once per update (the trainer does, before each rollout and evaluation) and pass the result to
    generation: with fp32 master weights (`load_policy.param_dtype = 'float32'`) and bf16 compute, the decode
    loop then reads bf16 weights and holds no weight casts (otherwise every step converts every weight).
    The optimizer and the update keep the fp32 params. One jitted cast onto `shardings` (None: where XLA puts
    it); params already in `dtype` are returned as they are, without a copy. On CPU the copy also has its
    power-of-two MLP widths padded with zero units where that pays (`decoder.pad_mlp_width`,
    `xla_cpu.generation_mlp_padding`).
    """
    name = jnp.dtype(dtype).name
    pad = xla_cpu.generation_mlp_padding()  # on CPU: power-of-two MLP widths padded (`decoder.pad_mlp_width`)
    cast = jax.jit(functools.partial(compute_params, dtype=name), out_shardings=shardings)
    cast_and_pad = jax.jit(lambda p: pad_mlp_width(compute_params(p, name)), out_shardings=shardings)

    # (tree structure, leaf shapes) -> whether padding changes a shape: decided once for a run's params, and
    # an already padded copy passed in again (evaluation does) is returned as it is, not padded and copied again
    pads_layout = {}

    def to_compute(params):
        layout = (jax.tree.structure(params), tuple(x.shape for x in jax.tree.leaves(params)))
        if pad and layout not in pads_layout:
            pads_layout[layout] = _padding_changes_shapes(params)
        if pad and pads_layout[layout]:
            return cast_and_pad(params)
        return cast(params) if needs_cast(params, name) else params

    return to_compute


def response_outputs(policy: Policy, ids: jax.Array, attention_mask: jax.Array, prompt_len: int,
                     temperature: float = 1.0, with_values: bool = False, chunk_size: Optional[int] = None
                     ) -> Tuple[jax.Array, jax.Array, Optional[jax.Array]]:
    """Score the response part of packed samples.

    ids/attention_mask int32 [B, P + N]: a right-aligned prompt of P slots followed by N response slots.
    Returns (logprobs [B, N], entropy [B, N]) of the response tokens under logits / temperature, and the
    critic's value of the state (hidden at the last prompt token) [B] when `with_values`.
    chunk_size: the response's float32 logits exist only for this many positions at a time (forward and
    backward), never as a whole [B, N, V] tensor (at an 8B model's 128k vocabulary, 512 response tokens and a
    micro-batch of 16 that tensor alone is 4 GiB); None or >= N = all at once.
    """
    _, hidden, _ = policy.lm.forward(ids, attention_mask=attention_mask, return_logits=False)
    n = ids.shape[1] - prompt_len
    h = hidden[:, prompt_len - 1: prompt_len - 1 + n]
    lp, ent = logprobs_from_hidden_fn(h, policy.lm.logits, ids[:, prompt_len:], temperature, chunk_size,
                                      with_entropy=True)
    values = None
    if with_values:
        if policy.value_head is None:
            raise ValueError("PPO needs a critic: set load_policy.with_value_head = True (gin) for algorithm='ppo'.")
        values = policy.value_head(hidden[:, prompt_len - 1])
    return lp, ent, values
