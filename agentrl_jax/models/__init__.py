"""Decoder models (Llama-3 / Qwen2 / Qwen3), value head and Hugging Face checkpoint I/O."""
from agentrl_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, config_from_hf, config_to_hf
from agentrl_jax.models.decoder import CausalLM, KVCache, build_model, init_cache, random_model
from agentrl_jax.models.hf import load_pretrained, save_pretrained
from agentrl_jax.models.value_head import ValueHead

__all__ = [
    "SUPPORTED_MODEL_TYPES", "ModelConfig", "config_from_hf", "config_to_hf", "CausalLM", "KVCache", "init_cache",
    "build_model", "random_model",
    "load_pretrained", "save_pretrained", "ValueHead",
]
