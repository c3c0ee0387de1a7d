#!/usr/bin/env bash
# Launch an experiment on every worker of a Cloud TPU VM pod slice.
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh gin/experiments/X.gin [--gin_bindings='...']
# Each host runs the same command; jax.distributed.initialize() needs no arguments on TPU pods
# (agentrl_jax.distributed does it). The repository must already be at $REPO_DIR on every worker
# (e.g. `gcloud compute tpus tpu-vm scp --recurse . $TPU_NAME:$REPO_DIR --worker=all`), set up with
# `pip install -e .[envs]` and `pip install 'jax[tpu]'`.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
EXP=${1:?usage: launch/tpu_pod.sh gin/experiments/X.gin [extra flags]}
shift
REPO_DIR=${REPO_DIR:-agentrl_jax}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="
  cd $REPO_DIR && \
  AGENTRL_DISTRIBUTED=1 python -m agentrl_jax.train --gin_file=$EXP$ARGS 2>&1 | tee -a run_\$(hostname).log"
