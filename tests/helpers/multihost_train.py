"""The gin trainer as one process of a multi-process CPU job (run as subprocesses by
tests/test_multihost_train.py), or alone as the single-process reference (AGENTRL_NUM_PROCESSES unset).

    AGENTRL_COORDINATOR=localhost:PORT AGENTRL_NUM_PROCESSES=2 AGENTRL_PROCESS_ID=i \\
        python tests/helpers/multihost_train.py --out result.json --local_devices 4 \\
        --gin_file gin/experiments/sokoban_tiny_cpu.gin --gin_bindings 'train.num_steps = 2' ...

Process 0 writes `--out`: each step's metrics as the trainer logged them and the returned last metrics.
"""
import argparse
import json
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--local_devices", type=int, default=4)
    ap.add_argument("--gin_file", action="append", default=[])
    ap.add_argument("--gin_bindings", action="append", default=[])
    a = ap.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path[:0] = [os.path.dirname(os.path.dirname(HERE))]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from agentrl_jax import distributed
    from agentrl_jax import train as T
    from agentrl_jax.logging import MetricsLogger

    info = distributed.initialize()
    print(f"process {info.process_index}/{info.process_count}: {info.local_device_count} local, "
          f"{info.device_count} global devices", flush=True)
    logged = {}
    real_scalars = MetricsLogger.scalars

    def record(self, step, metrics, progress=True):  # what process 0 writes to TensorBoard, kept for the test
        logged.setdefault(str(step), {}).update({k: float(v) for k, v in metrics.items()})
        return real_scalars(self, step, metrics, progress)

    MetricsLogger.scalars = record
    os.chdir(os.path.dirname(os.path.dirname(HERE)))  # gin paths are relative to the repo
    T.parse_gin(a.gin_file, a.gin_bindings)
    last = T.train()
    if info.process_index == 0:
        with open(a.out, "w") as f:
            json.dump({"steps": logged, "last": last}, f)
    print("done", flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    main()
