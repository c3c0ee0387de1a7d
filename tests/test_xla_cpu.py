"""`xla_cpu.host_cpu`: the CPU line every benchmark prints (kernel speeds and peer ratios depend on it)."""
import os

import pytest

from agentrl_jax import xla_cpu

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl
processor\t: 1
model name\t: a second entry is never read
"""


def test_names_the_model_and_the_kernel_relevant_isa():
    line = xla_cpu.host_cpu(ZEN4)
    assert line.startswith("AMD EPYC 9R14 (family 25 model 17); ")
    assert line.endswith("; avx512f avx512_bf16")  # no AMX on a Zen 4; only the flags that change kernels
    assert "second entry" not in line
    assert xla_cpu.host_cpu("model name\t: Old CPU\nflags\t: sse2 avx2\n").endswith("; no AVX-512 or AMX")


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="Linux only")
def test_reads_this_hosts_cpuinfo():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    flags = set(next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")))
    line = xla_cpu.host_cpu()
    assert line == xla_cpu.host_cpu(text) and line.startswith(name)
    assert f"; {len(os.sched_getaffinity(0))} cores for this process;" in line
    for flag in xla_cpu.KERNEL_FLAGS:
        assert (flag in line.split("; ")[-1].split()) == (flag in flags)
