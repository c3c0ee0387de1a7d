"""Which XLA:CPU matmul kernels a program is compiled with (no effect on other backends).

XLA:CPU's default hands matmuls to YNNPACK, which is the faster choice for decode's few-row products; for tall
ones ([tokens, hidden] activations: prefill, the scoring pass and the train step) Eigen's kernels ran faster on
this project's CPUs (2-core Xeon: 8192x768x2048 fp32 166 vs 107 GFLOP/s; 2-core Zen 4 EPYC: the hidden-256
train step of `benchmarks/train_step.py` ~1.9 vs ~2.1 s). So each program kind picks its kernels.
"""
from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp

Options = Tuple[Tuple[str, str], ...]
EIGEN_DOTS: Options = (("xla_cpu_experimental_ynn_fusion_type", ""),)


def eigen_dot_options(enabled: bool = True) -> Options:
    """Compiler options that give a program Eigen's matmuls on the CPU backend; () elsewhere, when disabled,
    or when this XLA does not know the (experimental) option."""
    if enabled and jax.default_backend() == "cpu" and accepts(EIGEN_DOTS):
        return EIGEN_DOTS
    return ()


@functools.lru_cache(maxsize=None)
def accepts(options: Options) -> bool:
    """Whether this XLA knows these options; an XLA without them keeps its default kernels."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros((), jnp.float32)).compile()
        return True
    except Exception:  # noqa: BLE001 - XLA reports an unknown option as a generic runtime error
        return False
