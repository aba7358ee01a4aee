#!/usr/bin/env bash
# Runs TensorBoard on worker 0 of a TPU VM and forwards its port here.
set -euo pipefail

usage() {
  cat <<EOF
Usage: tpu_scripts/tensorboard.sh --name=NAME --zone=ZONE --logdir=gs://BUCKET/RUN [options]

Starts TensorBoard on worker 0 of the TPU VM (from the venv setup_tpu_vm.sh
made) and forwards its port to this machine over ssh: open
http://localhost:PORT while it runs; Ctrl-C stops both. The training job
writes its summaries to its model_dir, so --logdir is train.sh's --model_dir.

Options:
$TPU_FLAGS_HELP
  --logdir=DIR          the summaries to show: a model_dir, or a folder holding
                        several (required)
  --port=PORT           the port, the same on both ends (default 6006)
$REMOTE_DIR_HELP
$COMMON_FLAGS_HELP
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LOGDIR=""
PORT=6006

while (($# > 0)); do
  split_flag "$1"
  case $FLAG in
    --logdir)
      flag_value "$@"
      LOGDIR=$FLAG_VALUE
      ;;
    --port)
      flag_value "$@"
      PORT=$FLAG_VALUE
      ;;
    *) parse_tpu_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done

check_tpu_flags
if [[ -z $LOGDIR ]]; then
  die "missing --logdir (train.sh's --model_dir, e.g. gs://my-bucket/parti_350m)"
fi
require_int --port "$PORT" 1
if ((PORT > 65535)); then
  die "bad --port '$PORT': at most 65535"
fi

join_quoted .venv/bin/tensorboard "--logdir=$LOGDIR" "--port=$PORT"
note "TensorBoard will be at http://localhost:$PORT (Ctrl-C stops it)"
# -t: a terminal on the worker, so that Ctrl-C here stops TensorBoard there
# too instead of leaving it holding the port.
gcloud_ssh 0 "cd $REMOTE_DIR && $JOINED" -- -t -L "$PORT:localhost:$PORT"
