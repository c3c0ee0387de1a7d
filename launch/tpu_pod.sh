#!/usr/bin/env bash
# Launch an experiment on every worker of a Cloud TPU VM (a single host or a multi-host pod slice), from any
# machine with gcloud: create or reuse the TPU, copy the code, install, run the same command on all workers.
#   launch/tpu_pod.sh --tpu_name=my-v5p --gin_file=gin/experiments/sokoban_llama8b_study.gin \
#       --model_gcs=gs://my-bucket/models/Llama-3.1-8B-Instruct --tb_gcs=gs://my-bucket/tb/sokoban_llama8b
#   launch/tpu_pod.sh --dry_run --tpu_name=my-v5p --gin_file=...   # print every command, call nothing
# The older form still works: TPU_NAME=my-pod ZONE=us-east5-a launch/tpu_pod.sh gin/experiments/X.gin [flags]
set -euo pipefail
SCRIPT=launch/tpu_pod.sh
cd "$(dirname "$0")/.."
# shellcheck source=launch/_common.sh
source launch/_common.sh

LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html
TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-us-east5-a}
PROJECT=${PROJECT:-}
ACCEL=v5p-32
ACCEL_SET=0
RUNTIME=""
SPOT=0
CREATE=1
CODE=scp
GIT_URL=""
GIT_REF=""
REPO_DIR=agentrl_jax
INSTALL=1
PYTHON=python3
WORKER=all
OUTPUT_DIR=""
TB_GCS=""
MODEL_GCS=""
INIT_TIMEOUT=600
RUN_NAME=""
DETACH=0

usage() {
  cat <<EOF
Usage: $SCRIPT --tpu_name=NAME --gin_file=FILE [flags] [--gin_param='BINDING' ...] [-- extra train args]

1. describe the TPU VM NAME; create it if it does not exist (--no_create: refuse instead)
2. copy the code to every worker (--code), 3. install it and jax[tpu] (the libtpu index),
4. run \`python3 -m agentrl_jax.train\` on all workers at once (gcloud ... ssh --worker=all), streaming
   their output here (prefixed [worker i]; copies in outputs/logs/tpu/RUN.log here and in
   REPO_DIR/outputs/logs/RUN.log on each worker). On a multi-host slice it binds agentrl_jax.distributed.initialize.tpu_pod = True, so every
   process joins jax.distributed (JAX finds the other workers from the TPU metadata), and sets
   AGENTRL_INIT_TIMEOUT. It refuses to start on only some workers of a multi-host slice: the started ones
   would wait for the others until the timeout (the known partial-pod hang).

TPU:
  --tpu_name=NAME          TPU VM name (or env TPU_NAME); required
  --zone=ZONE              (or env ZONE) default $ZONE
  --project=PROJECT        (or env PROJECT) default: gcloud's configured project
  --accelerator_type=TYPE  used when creating, checked when reusing; default $ACCEL (4 hosts).
                           Hosts: v2/v3/v4/v5p-N -> N/8, v5litepod/v6e-N -> 1 up to N=8, else N/4
  --runtime_version=V      default by generation: v2-v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5,
                           v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e
  --spot                   create a Spot TPU (preemptible; the trainer resumes from its last checkpoint)
  --no_create              never create: fail if the TPU does not exist
  --worker=all             the workers to run on; on a multi-host slice only 'all' (or every index) is accepted
Code and install:
  --code=scp|git|none      scp (default): this checkout's tracked + untracked-not-ignored files, as a tarball;
                           git: clone --git_url on each worker and check out --git_ref; none: already there
  --git_url=URL            default: this checkout's origin remote
  --git_ref=REF            branch, tag or commit; default: this checkout's HEAD commit
  --repo_dir=DIR           folder on each worker, relative to the home folder or absolute (default $REPO_DIR)
  --no_install             skip pip install -e '.[envs]' 'jax[tpu]...'
  --python=EXE             Python on the workers (default python3)
  --model_gcs=gs://.../M   copy a Hugging Face folder to REPO_DIR/cache/models/M on each worker (once) and
                           bind MODEL_PATH to it
Run:
  --gin_file=FILE          gin file, repeatable; relative to the repository root
  --gin_param='BINDING'    gin binding, repeatable (--gin_bindings is the same)
  --output_dir=DIR         bind OUTPUT_DIR (relative to REPO_DIR on the workers); default: the gin file's
  --tb_gcs=gs://BUCKET/P   worker 0 copies OUTPUT_DIR/tb there every minute: tensorboard --logdir gs://BUCKET/P
                           (without it, TensorBoard stays on worker 0; the end of the run prints the
                           port-forward command)
  --init_timeout=S         AGENTRL_INIT_TIMEOUT, seconds all hosts get to join (default $INIT_TIMEOUT)
  --run_name=NAME          log file name (default: the experiment name and a UTC timestamp)
  --detach                 start the job under nohup (it survives this terminal) and follow worker 0's log
  --entry=train|sft        the entry point: train (RL, default) or sft (python -m agentrl_jax.sft)
  --dry_run                print the exact commands, call nothing (no cloud account needed)
  -h, --help               this text
EOF
}

flag_kind() {
  case $1 in
    --spot | --no_create | --no_install | --detach) echo bool ;;
    --tpu_name | --zone | --project | --accelerator_type | --runtime_version | --code | --git_url | --git_ref | \
      --repo_dir | --python | --worker | --output_dir | --tb_gcs | --model_gcs | --init_timeout | --run_name) echo value ;;
    *) echo unknown ;;
  esac
}

set_flag() {
  case $1 in
    --spot) SPOT=1 ;;
    --no_create) CREATE=0 ;;
    --no_install) INSTALL=0 ;;
    --detach) DETACH=1 ;;
    --tpu_name) TPU_NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --project) PROJECT=$2 ;;
    --accelerator_type) ACCEL=$2 ACCEL_SET=1 ;;
    --runtime_version) RUNTIME=$2 ;;
    --code) CODE=$2 ;;
    --git_url) GIT_URL=$2 ;;
    --git_ref) GIT_REF=$2 ;;
    --repo_dir) REPO_DIR=$2 ;;
    --python) PYTHON=$2 ;;
    --worker) WORKER=$2 ;;
    --output_dir) OUTPUT_DIR=$2 ;;
    --tb_gcs) TB_GCS=$2 ;;
    --model_gcs) MODEL_GCS=$2 ;;
    --init_timeout) INIT_TIMEOUT=$2 ;;
    --run_name) RUN_NAME=$2 ;;
  esac
}

# Worker VMs of an accelerator type (Cloud TPU naming: v2-v5p count TensorCores, 8 per host; v5e/v6e count
# chips, up to 8 on one host, 4 per host in multi-host slices).
tpu_hosts() {
  local gen=${1%-*} n=${1##*-}
  case $gen in
    v2 | v3 | v4 | v5p) echo $((n <= 8 ? 1 : n / 8)) ;;
    v5litepod | v5e | v6e) echo $((n <= 8 ? 1 : n / 4)) ;;
    *) return 1 ;;
  esac
}

default_runtime() {
  case ${1%-*} in
    v2 | v3 | v4) echo tpu-ubuntu2204-base ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v5litepod | v5e) echo v2-alpha-tpuv5-lite ;;
    v6e) echo v2-alpha-tpuv6e ;;
  esac
}

# --worker=all, or a list/range that names every worker, is accepted; anything else on >1 host is refused.
check_workers() {  # SPEC HOSTS
  local spec=$1 hosts=$2 part lo hi i seen=" " missing=""
  [[ $spec == all ]] && return 0
  [[ $spec =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || die "--worker must be 'all' or worker indices like 0,1 or 0-3, got '$spec'"
  IFS=, read -r -a parts <<<"$spec"
  for part in "${parts[@]}"; do
    lo=${part%-*}
    hi=${part#*-}
    for ((i = lo; i <= hi; i++)); do
      ((i < hosts)) || die "--worker=$spec names worker $i, but $TPU_NAME ($ACCEL) has workers 0..$((hosts - 1))"
      seen+="$i "
    done
  done
  for ((i = 0; i < hosts; i++)); do
    [[ $seen == *" $i "* ]] || missing+="${missing:+,}$i"
  done
  if [[ -n $missing ]]; then
    die "refusing to start: $TPU_NAME ($ACCEL) has $hosts hosts and --worker=$spec leaves out worker(s) $missing. A pod slice's jax.distributed start-up waits for every host, so a partial start hangs until AGENTRL_INIT_TIMEOUT. Use --worker=all (the default)."
  fi
}

parse_args "$@"

# --- flag checks: each names the fix ---------------------------------------------------------------------
[[ -n $TPU_NAME ]] || die "pass --tpu_name=NAME (the TPU VM to create or reuse), or set TPU_NAME"
[[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--tpu_name '$TPU_NAME': lower-case letters, digits and '-', starting with a letter"
[[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' is not a zone name like us-east5-a (gcloud compute tpus locations list)"
[[ -z $PROJECT || $PROJECT =~ ^[a-z][-a-z0-9:.]{4,60}[a-z0-9]$ ]] || die "--project '$PROJECT' is not a project id like my-project-123"
if ! [[ $ACCEL =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] || ! HOSTS=$(tpu_hosts "$ACCEL"); then
  die "--accelerator_type '$ACCEL' is not a TPU type like v5p-32, v4-8, v5litepod-16 or v6e-8"
fi
RUNTIME=${RUNTIME:-$(default_runtime "$ACCEL")}
case $CODE in scp | git | none) ;; *) die "--code must be scp, git or none, got '$CODE'" ;; esac
[[ $REPO_DIR =~ ^[A-Za-z0-9_./-]+$ ]] || die "--repo_dir '$REPO_DIR': use a plain path (no ~, spaces or quotes), relative to the home folder or absolute"
[[ $PYTHON =~ ^[A-Za-z0-9_./-]+$ ]] || die "--python '$PYTHON': a plain executable name or path"
check_int --init_timeout "$INIT_TIMEOUT" 1
[[ -z $TB_GCS || $TB_GCS =~ ^gs://[a-z0-9][-a-z0-9_.]+(/.*)?$ ]] || die "--tb_gcs must be a gs://bucket/path URL, got '$TB_GCS'"
[[ -z $MODEL_GCS || $MODEL_GCS =~ ^gs://[a-z0-9][-a-z0-9_.]+/.*[^/]$ ]] || die "--model_gcs must be gs://bucket/path/MODEL_FOLDER (no trailing /), got '$MODEL_GCS'"
has_gin_file || die "pass the experiment: --gin_file=gin/experiments/<experiment>.gin (e.g. sokoban_llama8b_study.gin)"
[[ -n $RUN_NAME ]] || RUN_NAME="$(basename "$(last_gin_file)" .gin)-$(date -u +%Y%m%d-%H%M%S)"
[[ $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run_name '$RUN_NAME': letters, digits, '.', '_' and '-' only"

if [[ $CODE == git ]]; then
  if [[ -z $GIT_URL ]]; then
    GIT_URL=$(git remote get-url origin 2>/dev/null) || die "--code=git needs --git_url=URL (this checkout has no origin remote)"
  fi
  if [[ -z $GIT_REF ]]; then
    GIT_REF=$(git rev-parse HEAD 2>/dev/null) || die "--code=git needs --git_ref=REF (could not read this checkout's HEAD)"
  fi
elif [[ $CODE == scp ]]; then
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "--code=scp packs this checkout with git ls-files, but $(pwd) is not a git checkout: use --code=git --git_url=URL or --code=none"
fi

# Refuse a partial pod before anything is created or run (checked again below if the TPU exists as another type).
check_workers "$WORKER" "$HOSTS"

GC=(gcloud compute tpus tpu-vm)
LOC=(--zone="$ZONE")
[[ -z $PROJECT ]] || LOC+=(--project="$PROJECT")

# --- 1. create or reuse ------------------------------------------------------------------------------------
create_cmd=("${GC[@]}" create "$TPU_NAME" "${LOC[@]}" --accelerator-type="$ACCEL" --version="$RUNTIME")
((SPOT == 0)) || create_cmd+=(--spot)
describe_cmd=("${GC[@]}" describe "$TPU_NAME" "${LOC[@]}" --format='value(acceleratorType,state)')

if ((DRY_RUN)); then
  note "$TPU_NAME: $ACCEL = $HOSTS host(s), runtime $RUNTIME"
  run "${describe_cmd[@]}"
  if ((CREATE)); then
    note "only if it does not exist:"
    run "${create_cmd[@]}"
  fi
else
  echo "+ $(show_cmd "${describe_cmd[@]}")" >&2
  if ! desc=$("${describe_cmd[@]}" 2>/tmp/agentrl_tpu_describe.$$); then
    err=$(cat /tmp/agentrl_tpu_describe.$$)
    rm -f /tmp/agentrl_tpu_describe.$$
    if [[ $err != *NOT_FOUND* && $err != *"not found"* ]]; then
      die "gcloud could not describe $TPU_NAME: $err (check gcloud auth login, --project and --zone)"
    fi
    ((CREATE)) || die "TPU $TPU_NAME does not exist in $ZONE; drop --no_create to create it, or fix --tpu_name/--zone"
    run "${create_cmd[@]}"
    desc=$("${describe_cmd[@]}")
  fi
  rm -f /tmp/agentrl_tpu_describe.$$
  read -r have_type state <<<"$desc"
  if [[ $have_type != "$ACCEL" ]]; then
    ((ACCEL_SET == 0)) || die "$TPU_NAME exists as $have_type, not $ACCEL: pass --accelerator_type=$have_type to reuse it, or another --tpu_name to create a $ACCEL"
    ACCEL=$have_type
    HOSTS=$(tpu_hosts "$ACCEL") || die "unknown accelerator type $ACCEL of $TPU_NAME"
  fi
  [[ $state == READY ]] || die "$TPU_NAME is $state, not READY: wait, or delete it (${GC[*]} delete $TPU_NAME --zone=$ZONE) and run again"
  note "$TPU_NAME: $ACCEL = $HOSTS host(s), READY"
fi

check_workers "$WORKER" "$HOSTS"
ssh_all() {  # REMOTE_COMMAND
  run "${GC[@]}" ssh "$TPU_NAME" "${LOC[@]}" --worker=all --command="$1"
}
qdir=$(shquote "$REPO_DIR")

# --- 2. code -------------------------------------------------------------------------------------------------
case $CODE in
  scp)
    tarball=${TMPDIR:-/tmp}/agentrl_jax-code.tar.gz
    run bash -c "git ls-files -co --exclude-standard -z | tar --null -T - -czf $(shquote "$tarball")"
    run "${GC[@]}" scp "$tarball" "$TPU_NAME:agentrl_jax-code.tar.gz" "${LOC[@]}" --worker=all
    ssh_all "mkdir -p $qdir && tar -xzf agentrl_jax-code.tar.gz -C $qdir && rm agentrl_jax-code.tar.gz"
    ;;
  git)
    qurl=$(shquote "$GIT_URL")
    ssh_all "(test -d $qdir/.git || git clone --quiet $qurl $qdir) && git -C $qdir fetch --quiet $qurl $(shquote "$GIT_REF") && git -C $qdir checkout --quiet --force --detach FETCH_HEAD"
    ;;
  none) note "--code=none: the code must already be in $REPO_DIR on every worker" ;;
esac

# --- 3. model weights and install ----------------------------------------------------------------------------
if [[ -n $MODEL_GCS ]]; then
  model=${MODEL_GCS##*/}
  [[ $model =~ ^[A-Za-z0-9_.-]+$ ]] || die "--model_gcs: the folder name '$model' must be letters, digits, '.', '_' or '-'"
  dest="$REPO_DIR/cache/models"
  ssh_all "test -d $(shquote "$dest/$model") || (rm -rf $(shquote "$dest/.partial") && mkdir -p $(shquote "$dest/.partial") && gcloud storage cp --recursive $(shquote "$MODEL_GCS") $(shquote "$dest/.partial/") && mv $(shquote "$dest/.partial/$model") $(shquote "$dest/$model"))"
  GIN_ARGS+=("--gin_bindings=MODEL_PATH = 'cache/models/$model'")
fi
if ((INSTALL)); then
  ssh_all "cd $qdir && $(show_cmd "$PYTHON" -m pip install -e '.[envs]' "jax[tpu]$(jax_pin)" -f "$LIBTPU_INDEX")"
fi

# --- 4. run on every worker ------------------------------------------------------------------------------
if [[ -n $TB_GCS && -z $OUTPUT_DIR ]]; then
  OUTPUT_DIR=$(gin_output_dir)
  [[ -n $OUTPUT_DIR ]] || die "--tb_gcs needs the run's output folder: pass --output_dir=DIR"
fi
[[ -z $OUTPUT_DIR ]] || GIN_ARGS+=("--gin_bindings=OUTPUT_DIR = '$OUTPUT_DIR'")
if ((HOSTS > 1)); then
  # Every process joins jax.distributed; TPU_WORKER_HOSTNAMES is not always in an ssh session's environment.
  GIN_ARGS+=("--gin_bindings=agentrl_jax.distributed.initialize.tpu_pod = True")
fi
train_args
worker_cmd=(env "AGENTRL_INIT_TIMEOUT=$INIT_TIMEOUT" bash launch/tpu_worker.sh "--log=outputs/logs/$RUN_NAME.log")
[[ -z $OUTPUT_DIR ]] || worker_cmd+=("--output_dir=$OUTPUT_DIR")
[[ -z $TB_GCS ]] || worker_cmd+=("--tb_gcs=$TB_GCS")
worker_cmd+=(-- "$PYTHON" "${TRAIN_ARGS[@]}")
local_log=outputs/logs/tpu/$RUN_NAME.log
((DRY_RUN)) || mkdir -p outputs/logs/tpu

if ((DETACH)); then
  ssh_all "cd $qdir && nohup setsid $(show_cmd "${worker_cmd[@]}") >/dev/null 2>&1 </dev/null &"
  follow=("${GC[@]}" ssh "$TPU_NAME" "${LOC[@]}" --worker=0 --command="tail -n +1 -F $qdir/outputs/logs/$RUN_NAME.log")
  note "the job runs on; Ctrl-C stops only this view of worker 0's log. Follow it again with:"
  run "${follow[@]}"
else
  run_cmd=("${GC[@]}" ssh "$TPU_NAME" "${LOC[@]}" --worker=all --command="cd $qdir && $(show_cmd "${worker_cmd[@]}")")
  if ((DRY_RUN)); then
    echo "$(show_cmd "${run_cmd[@]}") 2>&1 | tee -a $local_log"
  else
    echo "+ $(show_cmd "${run_cmd[@]}") 2>&1 | tee -a $local_log" >&2
    "${run_cmd[@]}" 2>&1 | tee -a "$local_log"
  fi
fi

# --- TensorBoard ---------------------------------------------------------------------------------------------
tb_dir=${OUTPUT_DIR:-$(gin_output_dir)}
tb_dir=${tb_dir:-OUTPUT_DIR}/tb
if [[ -n $TB_GCS ]]; then
  note "TensorBoard (worker 0 syncs $tb_dir to $TB_GCS every minute): tensorboard --logdir $TB_GCS"
else
  note "TensorBoard lives on worker 0 in $REPO_DIR/$tb_dir; to watch it at http://localhost:6006 run:"
  note "$(show_cmd "${GC[@]}" ssh "$TPU_NAME" "${LOC[@]}" --worker=0 --command="cd $qdir && $PYTHON -m pip install -q tensorboard && $PYTHON -m tensorboard.main --logdir $(shquote "$tb_dir") --port 6006" -- -L 6006:localhost:6006)"
fi
