#!/usr/bin/env bash
# Runs on every worker VM of a TPU slice; launch/tpu_pod.sh starts it on all of them at once
# (gcloud compute tpus tpu-vm ssh --worker=all). Not meant to be started by hand on one worker: a pod's
# jax.distributed start-up waits for every host.
#   bash launch/tpu_worker.sh --log=outputs/logs/RUN.log [--output_dir=DIR --tb_gcs=gs://...] -- python3 -m agentrl_jax.train ...
# Runs the command, appends its output to --log on this worker and streams it prefixed with the worker id.
# On worker 0 (the process that writes TensorBoard), --tb_gcs copies DIR/tb to the bucket every minute and
# once at the end, so `tensorboard --logdir gs://...` can watch the run from anywhere.
set -euo pipefail

LOG=""
OUTPUT_DIR=""
TB_GCS=""
SYNC_EVERY=60
while (($#)); do
  case $1 in
    --log=*) LOG=${1#*=} ;;
    --output_dir=*) OUTPUT_DIR=${1#*=} ;;
    --tb_gcs=*) TB_GCS=${1#*=} ;;
    --sync_every=*) SYNC_EVERY=${1#*=} ;;
    --) shift; break ;;
    *) echo "error: tpu_worker.sh: unknown argument '$1' (expected --log=, --output_dir=, --tb_gcs=, --sync_every=, then -- COMMAND)" >&2; exit 2 ;;
  esac
  shift
done
(($#)) || { echo "error: tpu_worker.sh: no command after --" >&2; exit 2; }
[[ -n $LOG ]] || { echo "error: tpu_worker.sh: --log=FILE is required" >&2; exit 2; }
[[ -z $TB_GCS || -n $OUTPUT_DIR ]] || { echo "error: tpu_worker.sh: --tb_gcs needs --output_dir" >&2; exit 2; }

# The worker's index in the slice, from the TPU VM metadata (what JAX's own TPU cluster detection reads).
worker=$(curl -sf -m 5 -H 'Metadata-Flavor: Google' \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo "${TPU_WORKER_ID:-0}")

sync_tb() {
  if [[ -d $OUTPUT_DIR/tb ]]; then
    gcloud storage rsync --recursive --quiet "$OUTPUT_DIR/tb" "$TB_GCS" || echo "[worker $worker] warning: TensorBoard sync to $TB_GCS failed" >&2
  fi
}

sync_pid=""
if [[ $worker == 0 && -n $TB_GCS ]]; then
  (while sleep "$SYNC_EVERY"; do sync_tb; done) &
  sync_pid=$!
fi

mkdir -p "$(dirname "$LOG")"
echo "[worker $worker] $(date -u +%FT%TZ) start: $*" >>"$LOG"
set +e
"$@" 2>&1 | tee -a "$LOG" | sed -u "s/^/[worker $worker] /"
rc=${PIPESTATUS[0]}
set -e
echo "[worker $worker] $(date -u +%FT%TZ) exit status $rc" | tee -a "$LOG"
if [[ -n $sync_pid ]]; then
  kill "$sync_pid" 2>/dev/null || true
  sync_tb
fi
exit "$rc"
