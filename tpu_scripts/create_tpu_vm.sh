#!/usr/bin/env bash
# Creates a Cloud TPU VM slice (directly, or through a queued resource).
set -euo pipefail

usage() {
  cat <<EOF
Usage: tpu_scripts/create_tpu_vm.sh --name=NAME --zone=ZONE --accelerator_type=TYPE [options] [-- GCLOUD_ARGS...]

Creates the TPU VM NAME:
  gcloud compute tpus tpu-vm create NAME --zone=ZONE --accelerator-type=TYPE --version=RUNTIME
or, with --queued, requests it through a queued resource of the same name,
which waits in Cloud TPU's queue until the capacity is there:
  gcloud compute tpus queued-resources create NAME --zone=ZONE --node-id=NAME \\
      --accelerator-type=TYPE --runtime-version=RUNTIME
Then run setup_tpu_vm.sh.

Options:
$TPU_FLAGS_HELP
  --accelerator_type=TYPE  the slice (required):
                        v4-N, v5p-N     N TensorCores, 2 a chip: v4-32 is 16 chips on 4 hosts
                        v5litepod-N, v6e-N  N chips (1, 4, 8 on one host; 16 ... 256 on N/4)
  --runtime_version=VERSION  the TPU VM image (default by generation: v4
                        tpu-ubuntu2204-base, v5p v2-alpha-tpuv5, v5litepod
                        v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
  --spot                a Spot TPU VM: cheaper, and preempted at any time
                        (train.sh --relaunch resumes after maintenance events;
                        a preempted Spot VM must be deleted and created again)
  --preemptible         a preemptible TPU VM (the older kind; not with --queued)
  --queued              request it as a queued resource (delete it with
                        delete_tpu_vm.sh --queued)
$COMMON_FLAGS_HELP
  -- GCLOUD_ARGS        more flags for the gcloud create command, e.g. --network=NET
                        --subnetwork=SUBNET, --reserved, --internal-ips
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACCEPTS_EXTRA=1
ACCELERATOR_TYPE=""
RUNTIME_VERSION=""
SPOT=0
PREEMPTIBLE=0
QUEUED=0

while (($# > 0)); do
  split_flag "$1"
  case $FLAG in
    --accelerator_type)
      flag_value "$@"
      ACCELERATOR_TYPE=$FLAG_VALUE
      ;;
    --runtime_version)
      flag_value "$@"
      RUNTIME_VERSION=$FLAG_VALUE
      ;;
    --spot)
      no_value "$1"
      SPOT=1
      ;;
    --preemptible)
      no_value "$1"
      PREEMPTIBLE=1
      ;;
    --queued)
      no_value "$1"
      QUEUED=1
      ;;
    *) parse_tpu_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done

check_tpu_flags
if [[ -z $ACCELERATOR_TYPE ]]; then
  die "missing --accelerator_type (e.g. v4-32, v5p-128, v5litepod-16, v6e-64)"
fi
parse_accelerator "$ACCELERATOR_TYPE"
if [[ -z $RUNTIME_VERSION ]]; then
  case $ACCEL_GENERATION in
    v4) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    v5p) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v5litepod) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v6e) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
  esac
elif ! matches "$RUNTIME_VERSION" '^[a-z0-9][-a-z0-9.]*$'; then
  die "bad --runtime_version '$RUNTIME_VERSION' (e.g. tpu-ubuntu2204-base, v2-alpha-tpuv6e)"
fi
if ((SPOT && PREEMPTIBLE)); then
  die "--spot and --preemptible exclude each other (Spot is the newer kind)"
fi
if ((QUEUED && PREEMPTIBLE)); then
  die "--preemptible is not available with --queued; use --spot"
fi

PROVISIONING=()
if ((SPOT)); then
  PROVISIONING=(--spot)
elif ((PREEMPTIBLE)); then
  PROVISIONING=(--preemptible)
fi

note "$ACCELERATOR_TYPE: $ACCEL_CHIPS chips (jax.device_count() = $ACCEL_CHIPS) on $ACCEL_HOSTS host(s), runtime $RUNTIME_VERSION"
if ((QUEUED)); then
  run "$GCLOUD" compute tpus queued-resources create "$NAME" "${TPU_FLAGS[@]}" "--node-id=$NAME" \
    "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$RUNTIME_VERSION" \
    ${PROVISIONING[@]+"${PROVISIONING[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
  join_quoted "$GCLOUD" compute tpus queued-resources describe "$NAME" "${TPU_FLAGS[@]}"
  note "queued: the TPU VM exists once \`$JOINED\` says ACTIVE; then run setup_tpu_vm.sh"
else
  run "$GCLOUD" compute tpus tpu-vm create "$NAME" "${TPU_FLAGS[@]}" \
    "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION" \
    ${PROVISIONING[@]+"${PROVISIONING[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
  note "next: tpu_scripts/setup_tpu_vm.sh --name=$NAME ${TPU_FLAGS[*]}"
fi
