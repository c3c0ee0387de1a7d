#!/usr/bin/env bash
# Run an experiment on one multi-GPU host: all its (selected) GPUs form the mesh of one JAX process.
#   launch/gpu.sh --gin_file=gin/experiments/sokoban_smollm2.gin
#   launch/gpu.sh --num_gpus=8 --gin_file=gin/experiments/sokoban_llama8b_study.gin \
#       --gin_param="MODEL_PATH = '/data/Llama-3.1-8B-Instruct'"
#   launch/gpu.sh --dry_run --gin_file=...      # print the commands, run nothing
set -euo pipefail
SCRIPT=launch/gpu.sh
cd "$(dirname "$0")/.."
# shellcheck source=launch/_common.sh
source launch/_common.sh

NUM_GPUS=0
CUDA=12
INSTALL=1
OUTPUT_DIR=""
PYTHON=python
MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

usage() {
  cat <<EOF
Usage: $SCRIPT --gin_file=FILE [flags] [--gin_param='BINDING' ...] [-- extra train args]

On one GPU host: installs the CUDA build of the pinned jax, checks that JAX sees the GPUs asked for
(refuses otherwise), then runs \`python -m agentrl_jax.train\` with every selected GPU in the mesh.

Flags:
  --gin_file=FILE         gin file, repeatable (later files override); relative to the repository root
  --gin_param='BINDING'   gin binding, repeatable (--gin_bindings is the same)
  --num_gpus=N            use GPUs 0..N-1 (sets CUDA_VISIBLE_DEVICES unless it is set) and refuse to start
                          with fewer; default 0 = every visible GPU, at least one
  --cuda=12|13            CUDA major version of the jax wheel (default 12): pip install 'jax[cuda12]...'
  --no_install            skip the pip install lines (the environment is ready)
  --output_dir=DIR        bind OUTPUT_DIR (checkpoints, TensorBoard in DIR/tb); default: the gin file's
  --mem_fraction=F        XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9: room for the env worker processes)
  --python=EXE            Python interpreter (default python)
  --entry=train|sft       the entry point: train (RL, default) or sft (python -m agentrl_jax.sft)
  --dry_run               print the exact commands and exit
  -h, --help              this text
EOF
}

flag_kind() {
  case $1 in
    --no_install) echo bool ;;
    --num_gpus | --cuda | --output_dir | --mem_fraction | --python) echo value ;;
    *) echo unknown ;;
  esac
}

set_flag() {
  case $1 in
    --no_install) INSTALL=0 ;;
    --num_gpus) NUM_GPUS=$2 ;;
    --cuda) CUDA=$2 ;;
    --output_dir) OUTPUT_DIR=$2 ;;
    --mem_fraction) MEM_FRACTION=$2 ;;
    --python) PYTHON=$2 ;;
  esac
}

parse_args "$@"
has_gin_file || die "pass the experiment: --gin_file=gin/experiments/<experiment>.gin (e.g. sokoban_smollm2.gin)"
check_int --num_gpus "$NUM_GPUS" 0
[[ $CUDA == 12 || $CUDA == 13 ]] || die "--cuda must be 12 or 13 (the CUDA major version of the jax wheel), got '$CUDA'"
[[ $MEM_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "--mem_fraction must be a fraction in (0, 1], e.g. --mem_fraction=0.9, got '$MEM_FRACTION'"
[[ -z $OUTPUT_DIR ]] || GIN_ARGS+=("--gin_bindings=OUTPUT_DIR = '$OUTPUT_DIR'")
train_args

if ((INSTALL)); then
  run "$PYTHON" -m pip install -e '.[envs]'
  # The CUDA plugin must match jaxlib exactly; the extra pins it, the range keeps setup.py's jax.
  run "$PYTHON" -m pip install -U "jax[cuda$CUDA]$(jax_pin)"
fi

if ((NUM_GPUS > 0)) && [[ -z ${CUDA_VISIBLE_DEVICES:-} ]]; then
  set_env CUDA_VISIBLE_DEVICES "$(seq -s, 0 $((NUM_GPUS - 1)))"
fi
set_env XLA_PYTHON_CLIENT_MEM_FRACTION "$MEM_FRACTION"

# Device count check: JAX silently falls back to the CPU when its CUDA plugin is missing or broken.
want=$((NUM_GPUS > 0 ? NUM_GPUS : 1))
check=("$PYTHON" -c 'import jax; print(sum(d.platform == "gpu" for d in jax.devices()))')
if ((DRY_RUN)); then
  echo "test \"\$($(show_cmd "${check[@]}"))\" -ge $want  # refuse with fewer than $want GPU(s)"
else
  echo "+ $(show_cmd "${check[@]}")" >&2
  have=$("${check[@]}" | tail -n 1) || die "python could not import jax ($PYTHON). Install it: drop --no_install, or run $PYTHON -m pip install -e '.[envs]' 'jax[cuda$CUDA]$(jax_pin)'"
  if ! [[ $have =~ ^[0-9]+$ ]] || ((have < want)); then
    die "JAX sees ${have:-no} GPU(s), this run asked for $want (--num_gpus=$NUM_GPUS). Check nvidia-smi and CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}, install the CUDA wheel (run without --no_install, or --cuda=13 for a CUDA 13 driver), or lower --num_gpus"
  fi
  echo "[gpu.sh] JAX sees $have GPU(s)" >&2
fi

run "$PYTHON" "${TRAIN_ARGS[@]}"
