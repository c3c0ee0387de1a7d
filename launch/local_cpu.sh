#!/usr/bin/env bash
# The older name of launch/local.sh (same flags): launch/local_cpu.sh gin/experiments/X.gin [flags]
set -euo pipefail
exec "$(dirname "$0")/local.sh" "$@"
