"""Multi-host: two CPU processes on localhost form one 8-device mesh; a lone process fails fast and clearly."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from agentrl_jax import distributed
from helpers import multihost_step

HELPER = os.path.join(os.path.dirname(__file__), "helpers", "multihost_step.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _spawn(port, pid, nproc, out, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRL_") and k != "XLA_FLAGS"}
    env.update(PYTHONPATH=REPO, AGENTRL_COORDINATOR=f"localhost:{port}", AGENTRL_NUM_PROCESSES=str(nproc),
               AGENTRL_PROCESS_ID=str(pid))
    return subprocess.Popen([sys.executable, HELPER, "--out", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_single_process_default_does_nothing(monkeypatch):
    for k in ("AGENTRL_COORDINATOR", "AGENTRL_NUM_PROCESSES", "AGENTRL_PROCESS_ID", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(k, raising=False)
    info = distributed.initialize()
    assert (info.process_index, info.process_count, info.device_count) == (0, 1, 8)


@pytest.mark.parametrize(
    "kwargs, env, match",
    [
        (dict(num_processes=2, process_id=0), {}, "needs a coordinator"),
        (dict(coordinator_address="localhost:1234"), {}, "num_processes is None"),
        (dict(coordinator_address="localhost", num_processes=2, process_id=0), {}, "host:port"),
        (dict(coordinator_address="localhost:1", num_processes=2, process_id=2), {}, r"process_id=2 must be in \[0, 2\)"),
        ({}, {"AGENTRL_NUM_PROCESSES": "two"}, "must be an integer"),
    ],
)
def test_misconfiguration_is_a_clear_error(monkeypatch, kwargs, env, match):
    for k in ("AGENTRL_COORDINATOR", "AGENTRL_NUM_PROCESSES", "AGENTRL_PROCESS_ID", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lone_process_told_two_fails_fast_with_message(tmp_path):
    proc = _spawn(_free_port(), 0, 2, tmp_path / "x.npz", "--timeout", "5")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == distributed.EXIT_INIT_TIMEOUT, err[-2000:]
    assert "process 0 of 2 waited 5 s for all processes to join" in err
    assert "AGENTRL_NUM_PROCESSES=1" in err
    assert "done" not in out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_processes_match_one_process_with_eight_devices(tmp_path):
    port = _free_port()
    out = tmp_path / "multi.npz"
    procs = [_spawn(port, pid, 2, out, "--local_devices", "4", "--timeout", "240") for pid in (0, 1)]
    logs = [p.communicate(timeout=500) for p in procs]
    for p, (o, e) in zip(procs, logs):
        assert p.returncode == 0, e[-3000:]
        assert "4 local, 8 global devices" in o and "done" in o
        assert "process_local ok" in o  # per-process rows stitch on (2,4,1), refused on (1,1,8)

    ref_losses, ref_params = multihost_step.run_steps()  # this process: 8 local devices, same (2,4,1) mesh
    got = np.load(out)
    np.testing.assert_allclose(got["__losses__"], ref_losses, rtol=1e-5, atol=1e-5)
    assert sorted(k for k in got.files if k != "__losses__") == sorted(ref_params)
    for k, v in ref_params.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5, err_msg=k)
