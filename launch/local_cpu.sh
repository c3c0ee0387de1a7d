#!/usr/bin/env bash
# Run an experiment on this machine's CPU (the README's main job uses this).
#   launch/local_cpu.sh gin/experiments/sokoban_tiny_cpu.gin [--gin_bindings='...']
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=${1:?usage: launch/local_cpu.sh gin/experiments/X.gin [extra flags]}
shift
export JAX_PLATFORMS=cpu
exec python -m agentrl_jax.train --gin_file="$EXP" "$@"
