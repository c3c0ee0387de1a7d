"""Every test sees 8 fake CPU devices, so sharding code runs on a laptop the way it runs on a pod."""
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache per test session, inherited by the processes the tests start: trainer
# runs, resumes and restarts build the same programs again (fresh closures, fresh processes), and on 2 CPU
# cores compiling them is most of their time. It starts empty each session, so every program is still compiled
# once per run of the suite; a JAX_COMPILATION_CACHE_DIR set by the caller is used as is.
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="agentrl-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


# The 48-game ALFWorld subset and the WebShop small set are vendored under data/ (licences inside).
REPO_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "data"))
os.environ.setdefault("ALFWORLD_DATA", os.path.join(REPO_DATA, "alfworld"))
