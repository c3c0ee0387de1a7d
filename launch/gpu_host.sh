#!/usr/bin/env bash
# Run an experiment on one GPU host (all local GPUs form the mesh).
#   launch/gpu_host.sh gin/experiments/X.gin [--gin_bindings='...']
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=${1:?usage: launch/gpu_host.sh gin/experiments/X.gin [extra flags]}
shift
# Let XLA use most of the GPU memory, but leave room for the env workers' processes.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m agentrl_jax.train --gin_file="$EXP" "$@"
