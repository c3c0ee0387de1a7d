"""Which XLA:CPU matmul kernels a program is compiled with (no effect on other backends).

XLA:CPU's default hands matmuls to YNNPACK. For tall ones ([tokens, hidden] activations: prefill, the scoring
pass and the train step) Eigen's kernels ran faster on this project's CPUs (2-core Xeon: 8192x768x2048 fp32 166
vs 107 GFLOP/s; 2-core Zen 4 EPYC: the hidden-256 train step of `benchmarks/train_step.py` ~1.9 vs ~2.1 s). For
decode's few-row products the winner depends on the host (YNNPACK on that Xeon, Eigen on the Zen 4 pinned to one
core, about even on its two cores), so decode can measure it (`dot_options('auto', rows)`).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import gin
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


PADDING_MODES = ("auto", "on", "off")


@gin.configurable(module="xla_cpu")
def generation_mlp_padding(mode: str = "auto") -> bool:
    """Whether the weights generation reads get power-of-two MLP widths padded by a few zero units
    (`models.decoder.pad_mlp_width`; same outputs, one padded copy per update, the trained params keep their
    shapes). CPU backend only: Eigen's GEMM can be slow for a [K, 2^n] operand (a 2-core Xeon: [512, 768] x
    [768, 2048] at 124 GFLOP/s, x [768, 2064] at 199). mode 'on', 'off', or 'auto': pad when, timed once per
    process, the padded product is faster on this host (a job of several processes does not pad, so that every
    process compiles the same shapes)."""
    if mode not in PADDING_MODES:
        raise ValueError(f"xla_cpu.generation_mlp_padding.mode = {mode!r}; use one of {PADDING_MODES}")
    if mode == "off" or jax.default_backend() != "cpu":
        return False
    if mode == "on":
        return True
    return jax.process_count() == 1 and _padding_is_faster()


@functools.lru_cache(maxsize=None)
def _padding_is_faster(rows: int = 64, width: int = 2048, pad: int = 16) -> bool:
    import numpy as np

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows, 768)), jnp.float32)
    plain, padded = (jnp.asarray(rng.standard_normal((768, n)), jnp.float32) for n in (width, width + pad))
    options = eigen_dot_options()
    plain_s = _matmul_seconds(x, plain, options, 16)
    return _matmul_seconds(x, padded, options, 16) < 0.95 * plain_s  # 0.8% more work: pad only for a clear gain


def _matmul_seconds(x, w, options: Options, reps: int) -> float:
    """Best of 5 timings of `reps` back-to-back x @ w products compiled with `options` (after a warm call)."""
    import time

    f = jax.jit(lambda a, b: a @ b, compiler_options=dict(options) or None)
    f(x, w).block_until_ready()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            out = f(x, w)
        out.block_until_ready()
        times.append(time.perf_counter() - t)
    return min(times)


# ISA extensions that change which matmul kernels win on a CPU (and torch's): printed with every benchmark.
KERNEL_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def host_cpu(cpuinfo: Optional[str] = None) -> str:
    """This host's CPU as the benchmarks print it, e.g. "Intel(R) Xeon(R) Processor (family 6 model 167); 2 cores
    for this process; avx512f avx512_bf16 amx_bf16 amx_int8". Kernel speeds and every peer ratio differ between
    CPU types (Eigen vs YNNPACK, torch's MKL), so a benchmark row means little without it. `cpuinfo`: the text
    of /proc/cpuinfo (read here on Linux); elsewhere only `platform.processor()` is known."""
    import os
    import platform

    if cpuinfo is None and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    fields = {}
    for line in (cpuinfo or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor's entry
            fields[key.strip()] = value.strip()
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = set(fields.get("flags", "").split())
    found = [f for f in KERNEL_FLAGS if f in flags]
    isa = " ".join(found) if found else ("no AVX-512 or AMX" if flags else "ISA flags unknown")
    return f"{name}; {cores} cores for this process; {isa}"


KERNELS = ("auto", "default", "eigen")


def dot_options(kernels: str, rows: int) -> Options:
    """Options for a program whose matmuls have about `rows` rows (decode: the batch).

    kernels: 'default' (XLA's, YNNPACK on CPU), 'eigen', or 'auto': whichever of the two multiplies a
    [rows, 1024] x [1024, 2048] fp32 matrix faster on this host, measured once per process and row bucket.
    Which wins depends on the CPU: YNNPACK on this project's 2-core Xeon for decode (100 vs 128 ms/step at batch
    16), Eigen at every row count on a 2-core Zen 4 EPYC (at 64 rows 94 vs 67 GFLOP/s)."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown matmul kernels {kernels!r}; use one of {KERNELS}")
    if kernels == "default" or not eigen_dot_options():
        return ()
    if kernels == "eigen":
        return EIGEN_DOTS
    if jax.process_count() > 1:  # a timing per process could give the processes of one job different programs
        return ()
    return _faster_of_two(1 << max(0, int(rows) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _faster_of_two(rows: int) -> Options:
    import numpy as np

    x = jnp.asarray(np.random.default_rng(0).standard_normal((rows, 1024)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((1024, 2048)), jnp.float32)
    reps = max(1, 4096 // rows)  # ~the same work per timing at every row count
    best = {options: _matmul_seconds(x, w, options, reps) for options in ((), EIGEN_DOTS)}
    return min(best, key=best.get)
