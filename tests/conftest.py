"""Every test sees 8 fake CPU devices, so sharding code runs on a laptop the way it runs on a pod."""
import os

# Must happen before jax is imported anywhere.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The 48-game ALFWorld subset and the WebShop small set are vendored under data/ (licences inside).
REPO_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "data"))
os.environ.setdefault("ALFWORLD_DATA", os.path.join(REPO_DATA, "alfworld"))
