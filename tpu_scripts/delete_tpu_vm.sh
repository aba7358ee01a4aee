#!/usr/bin/env bash
# Deletes a Cloud TPU VM slice (or the queued resource that holds it).
set -euo pipefail

usage() {
  cat <<EOF
Usage: tpu_scripts/delete_tpu_vm.sh --name=NAME --zone=ZONE [--queued] [--yes] [options]

Deletes the TPU VM NAME and its disks (checkpoints in gs:// stay):
  gcloud compute tpus tpu-vm delete NAME --zone=ZONE
or, with --queued, the queued resource NAME together with its TPU VM:
  gcloud compute tpus queued-resources delete NAME --zone=ZONE --force
gcloud asks for confirmation unless --yes.

Options:
$TPU_FLAGS_HELP
  --queued              the TPU VM came from create_tpu_vm.sh --queued
  --yes                 do not ask (gcloud --quiet)
$COMMON_FLAGS_HELP
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

QUEUED=0
QUIET=()

while (($# > 0)); do
  split_flag "$1"
  case $FLAG in
    --queued)
      no_value "$1"
      QUEUED=1
      ;;
    --yes)
      no_value "$1"
      QUIET=(--quiet)
      ;;
    *) parse_tpu_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done

check_tpu_flags
if ((QUEUED)); then
  run "$GCLOUD" compute tpus queued-resources delete "$NAME" "${TPU_FLAGS[@]}" --force \
    ${QUIET[@]+"${QUIET[@]}"}
else
  run "$GCLOUD" compute tpus tpu-vm delete "$NAME" "${TPU_FLAGS[@]}" ${QUIET[@]+"${QUIET[@]}"}
fi
