#!/usr/bin/env bash
# Run an experiment on this machine's CPU. With no gin file it runs the README's main job.
#   launch/local.sh                                      # gin/experiments/sokoban_tiny_learn.gin
#   launch/local.sh --gin_file=gin/experiments/alfworld_tiny_cpu.gin --gin_param='train.num_steps = 5'
#   launch/local.sh --processes=2 --num_cpu_devices=4    # a 2-process x 4-device jax.distributed job
#   launch/local.sh --dry_run                            # print the commands, run nothing
set -euo pipefail
SCRIPT=launch/local.sh
cd "$(dirname "$0")/.."
# shellcheck source=launch/_common.sh
source launch/_common.sh

DEFAULT_GIN=gin/experiments/sokoban_tiny_learn.gin
INSTALL=0
NUM_CPU_DEVICES=""
PROCESSES=1
PORT=12355
OUTPUT_DIR=""
PYTHON=python

usage() {
  cat <<EOF
Usage: $SCRIPT [flags] [--gin_file=FILE ...] [--gin_param='BINDING' ...] [-- extra train args]

Runs \`python -m agentrl_jax.train\` on the CPU (JAX_PLATFORMS=cpu). Without a gin file: $DEFAULT_GIN,
the README's main job.

Flags:
  --gin_file=FILE         gin file, repeatable (later files override); relative to the repository root
  --gin_param='BINDING'   gin binding, repeatable, e.g. --gin_param='train.num_steps = 5'
                          (--gin_bindings is the same; both reach train as --gin_bindings)
  --output_dir=DIR        bind OUTPUT_DIR (checkpoints, TensorBoard in DIR/tb); default: the gin file's
  --install               first run: pip install -e '.[envs,test]'
  --num_cpu_devices=N     split the CPU into N JAX devices (XLA_FLAGS) to exercise a sharded mesh
  --processes=N           start N processes joined by jax.distributed on localhost (default 1). Each gets
                          AGENTRL_COORDINATOR / AGENTRL_NUM_PROCESSES / AGENTRL_PROCESS_ID (read by
                          agentrl_jax.distributed.initialize); logs of process i in outputs/logs/local/process_i.log
  --port=PORT             coordinator port for --processes > 1 (default $PORT)
  --python=EXE            Python interpreter (default python)
  --entry=train|sft       the entry point: train (RL, default) or sft (python -m agentrl_jax.sft)
  --dry_run               print the exact commands and exit
  -h, --help              this text
EOF
}

flag_kind() {
  case $1 in
    --install) echo bool ;;
    --output_dir | --num_cpu_devices | --processes | --port | --python) echo value ;;
    *) echo unknown ;;
  esac
}

set_flag() {
  case $1 in
    --install) INSTALL=1 ;;
    --output_dir) OUTPUT_DIR=$2 ;;
    --num_cpu_devices) NUM_CPU_DEVICES=$2 ;;
    --processes) PROCESSES=$2 ;;
    --port) PORT=$2 ;;
    --python) PYTHON=$2 ;;
  esac
}

parse_args "$@"
if ! has_gin_file; then # the README's main job; listed first so that bindings given here apply to it
  [[ -f $DEFAULT_GIN ]] || die "$DEFAULT_GIN is missing from this checkout; pass --gin_file=FILE"
  GIN_ARGS=("--gin_file=$DEFAULT_GIN" ${GIN_ARGS[@]+"${GIN_ARGS[@]}"})
fi
[[ -z $NUM_CPU_DEVICES ]] || check_int --num_cpu_devices "$NUM_CPU_DEVICES" 1
check_int --processes "$PROCESSES" 1
check_int --port "$PORT" 1
[[ -z $OUTPUT_DIR ]] || GIN_ARGS+=("--gin_bindings=OUTPUT_DIR = '$OUTPUT_DIR'")
train_args

if ((INSTALL)); then
  run "$PYTHON" -m pip install -e '.[envs,test]'
fi
set_env JAX_PLATFORMS cpu
if [[ -n $NUM_CPU_DEVICES ]]; then
  set_env XLA_FLAGS "${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$NUM_CPU_DEVICES"
fi

if ((PROCESSES == 1)); then
  run "$PYTHON" "${TRAIN_ARGS[@]}"
  exit 0
fi

# Several processes on this host: all must start, or process 0 waits (agentrl_jax.distributed's watchdog
# ends the wait after AGENTRL_INIT_TIMEOUT seconds with a message naming the missing processes).
((DRY_RUN)) || mkdir -p outputs/logs/local
pids=()
for ((i = PROCESSES - 1; i >= 0; i--)); do
  cmd=(env "AGENTRL_COORDINATOR=localhost:$PORT" "AGENTRL_NUM_PROCESSES=$PROCESSES" "AGENTRL_PROCESS_ID=$i"
    "$PYTHON" "${TRAIN_ARGS[@]}")
  if ((DRY_RUN)); then
    echo "$(show_cmd "${cmd[@]}") > outputs/logs/local/process_$i.log 2>&1 &"
  else
    echo "+ $(show_cmd "${cmd[@]}") > outputs/logs/local/process_$i.log 2>&1 &" >&2
    "${cmd[@]}" >"outputs/logs/local/process_$i.log" 2>&1 &
    pids+=("$!")
  fi
done
if ((DRY_RUN)); then
  echo "tail -f outputs/logs/local/process_0.log"
  echo "wait"
  exit 0
fi
tail -n +1 -f outputs/logs/local/process_0.log &
tail_pid=$!
failed=0
for p in "${pids[@]}"; do
  wait "$p" || failed=1
done
kill "$tail_pid" 2>/dev/null || true
((failed == 0)) || die "a process failed; see outputs/logs/local/process_*.log"
