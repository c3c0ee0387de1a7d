#!/usr/bin/env bash
# The older name of launch/gpu.sh, without its install step: launch/gpu_host.sh gin/experiments/X.gin [flags]
set -euo pipefail
exec "$(dirname "$0")/gpu.sh" --no_install "$@"
