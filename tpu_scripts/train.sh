#!/usr/bin/env bash
# Launches `python -m parti_jax.train` on every worker of a TPU VM slice at
# once, optionally relaunching it after preemptions.
set -euo pipefail

usage() {
  cat <<EOF
Usage: tpu_scripts/train.sh --name=NAME --zone=ZONE --model_dir=gs://BUCKET/RUN \\
           --gin_file=FILE [--gin_file=FILE ...] [--gin=NAME=VALUE ...] [options] [-- ARGS...]

Runs, on all workers of the TPU VM at once (gcloud compute tpus tpu-vm ssh
--worker=all), in the folder setup_tpu_vm.sh made:
  python -m parti_jax.train --gin_file=FILE ... --gin.MODEL_DIR="DIR" --gin.NAME=VALUE ... ARGS
Each worker appends the job's output to ~/parti_logs/train_\$(hostname).log and
shows it here. The job runs apart from the ssh connection: if that drops, the
job goes on, and the same command again follows it (rather than starting a
second). Once the job has ended, the same command resumes it from the newest
checkpoint in MODEL_DIR.

Options:
$TPU_FLAGS_HELP
  --model_dir=DIR       where checkpoints, summaries and the export go; a gs:// path
                        that every worker reaches (required)
  --allow_local_model_dir  accept a model_dir that is not gs:// (each worker then
                        writes its own folder: for a single-host slice only)
$GIN_FLAGS_HELP
  --relaunch            when the job exits with status 143 (preempted: it saved its
                        step) or the ssh connection drops (255), wait until the TPU
                        is READY again and run the same command, which resumes
  --max_relaunches=N    give up after N relaunches (default 10)
  --relaunch_wait=SECONDS  pause before checking the TPU and relaunching (default 60)
  --ready_timeout=SECONDS  how long to wait for the TPU to be READY (default 3600)
  --stop                stop the running job on every worker instead (SIGTERM: it
                        saves its step and exits; a --relaunch loop then ends)
$REMOTE_DIR_HELP
$COMMON_FLAGS_HELP
  -- ARGS               further arguments for parti_jax.train (e.g. --gin_search_paths=...)

Exit status: the job's (0 finished, 143 preempted, 1 stopped on a non-finite loss,
2 configuration error), $STATUS_ALREADY_RUNNING if a job with another command still runs on a
worker, $STATUS_STOPPED if it was stopped with --stop, 255 when ssh failed (gcloud gives the
first failing worker's status).

Example:
  tpu_scripts/train.sh --name=parti-v4-32 --zone=us-central2-b \\
      --gin_file=runs/parti_350m_v4_32.gin --gin_file=data/pretokenized.gin \\
      --gin=TOKENS_DIR="'gs://my-bucket/tokens'" --model_dir=gs://my-bucket/parti_350m --relaunch
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACCEPTS_EXTRA=1
MODEL_DIR=""
ALLOW_LOCAL_MODEL_DIR=0
RELAUNCH=0
MAX_RELAUNCHES=10
RELAUNCH_WAIT=60
READY_TIMEOUT=3600
STOP=0

while (($# > 0)); do
  split_flag "$1"
  case $FLAG in
    --model_dir)
      flag_value "$@"
      MODEL_DIR=$FLAG_VALUE
      ;;
    --allow_local_model_dir)
      no_value "$1"
      ALLOW_LOCAL_MODEL_DIR=1
      ;;
    --relaunch)
      no_value "$1"
      RELAUNCH=1
      ;;
    --max_relaunches)
      flag_value "$@"
      MAX_RELAUNCHES=$FLAG_VALUE
      ;;
    --relaunch_wait)
      flag_value "$@"
      RELAUNCH_WAIT=$FLAG_VALUE
      ;;
    --ready_timeout)
      flag_value "$@"
      READY_TIMEOUT=$FLAG_VALUE
      ;;
    --stop)
      no_value "$1"
      STOP=1
      ;;
    *) parse_gin_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done

check_tpu_flags
require_int --max_relaunches "$MAX_RELAUNCHES" 0
require_int --relaunch_wait "$RELAUNCH_WAIT" 0
require_int --ready_timeout "$READY_TIMEOUT" 0

if ((STOP)); then
  gcloud_ssh all "cd $REMOTE_DIR && bash tpu_scripts/worker_run.sh --log_name=train --stop"
  exit 0
fi

if [[ -z $MODEL_DIR ]]; then
  die "missing --model_dir (e.g. --model_dir=gs://my-bucket/parti_350m)"
fi
if ! matches "$MODEL_DIR" '^[^[:space:]"\\]+$'; then
  die "bad --model_dir '$MODEL_DIR': no spaces, quotes or backslashes"
fi
if ((!ALLOW_LOCAL_MODEL_DIR)) && ! matches "$MODEL_DIR" '^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$'; then
  die "bad --model_dir '$MODEL_DIR': must be gs://BUCKET/PATH, which every worker reads and writes (or pass --allow_local_model_dir)"
fi
check_gin_flags runs/parti_350m_v4_32.gin MODEL_DIR

# What each worker runs, as one shell command line.
TRAIN_ARGS=(.venv/bin/python -m parti_jax.train "${GIN_ARGS[@]}" "--gin.MODEL_DIR=\"$MODEL_DIR\""
  ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
join_quoted "${TRAIN_ARGS[@]}"
TRAIN_COMMAND=$JOINED

remote_command() {  # remote_command [--stop_previous]
  local options="--log_name=train${1:+ $1}"
  printf 'cd %s && bash tpu_scripts/worker_run.sh %s -- %s' "$REMOTE_DIR" "$options" \
    "$TRAIN_COMMAND"
}

# wait_until_ready: after a preemption or a lost connection, until the TPU VM
# says READY; fails if it will not come back (a preempted Spot TPU is gone).
wait_until_ready() {
  local state waited=0
  sleep "$RELAUNCH_WAIT"
  while true; do
    show "$GCLOUD" compute tpus tpu-vm describe "$NAME" "${TPU_FLAGS[@]}" '--format=value(state)'
    state=$("$GCLOUD" compute tpus tpu-vm describe "$NAME" "${TPU_FLAGS[@]}" \
      '--format=value(state)' 2>/dev/null) || state=""
    case $state in
      READY) return 0 ;;
      PREEMPTED | TERMINATED | DELETING)
        note "the TPU VM $NAME is $state and will not come back: delete it, create and set it up again (delete_tpu_vm.sh, create_tpu_vm.sh, setup_tpu_vm.sh), then run this command again; training resumes from the newest checkpoint in $MODEL_DIR"
        return 1
        ;;
      STOPPED | STOPPING)
        note "the TPU VM $NAME is $state: start it (gcloud compute tpus tpu-vm start $NAME ${TPU_FLAGS[*]}), then run this command again"
        return 1
        ;;
    esac
    if ((waited >= READY_TIMEOUT)); then
      note "the TPU VM $NAME is not READY after ${READY_TIMEOUT}s (state: ${state:-unknown}); giving up"
      return 1
    fi
    note "the TPU VM $NAME is ${state:-not reachable}; checking again in 30s"
    sleep 30
    waited=$((waited + 30))
  done
}

relaunches=0
options=""
while true; do
  status=0
  if ((DRY_RUN)); then
    echo "# on each worker: $(remote_command "$options")"
  fi
  gcloud_ssh all "$(remote_command "$options")" || status=$?
  if ((DRY_RUN)); then
    if ((RELAUNCH)); then
      echo "# --relaunch: on exit status 143 (preempted, checkpoint saved) or 255 (ssh connection lost),"
      echo "#   wait ${RELAUNCH_WAIT}s, wait until \`gcloud compute tpus tpu-vm describe $NAME\` says READY,"
      echo "#   then run the command again with --stop_previous (at most $MAX_RELAUNCHES times);"
      echo "#   stop on exit status 0 or any other."
    fi
    exit 0
  fi
  case $status in
    0)
      note "training finished"
      exit 0
      ;;
    143 | 255)
      if ((status == 143)); then
        reason="the job was preempted (status 143) and saved its step"
      else
        reason="the ssh connection was lost (status 255)"
      fi
      if ((!RELAUNCH)); then
        note "$reason; run the same command again to resume (or pass --relaunch)"
        exit "$status"
      fi
      if ((relaunches >= MAX_RELAUNCHES)); then
        note "$reason; not relaunching: --max_relaunches=$MAX_RELAUNCHES reached"
        exit "$status"
      fi
      relaunches=$((relaunches + 1))
      note "$reason; relaunch $relaunches of at most $MAX_RELAUNCHES after ${RELAUNCH_WAIT}s"
      wait_until_ready || exit "$status"
      options=--stop_previous
      ;;
    "$STATUS_ALREADY_RUNNING")
      note "a training job with another command still runs on a worker; let it finish, or stop it (it saves its step) with: $SCRIPT_NAME --name=$NAME ${TPU_FLAGS[*]} --stop"
      exit "$status"
      ;;
    "$STATUS_STOPPED")
      note "the job was stopped with --stop (it saved its step); not relaunching"
      exit "$status"
      ;;
    *)
      note "exit status $status; not relaunching (the job's output: ~/parti_logs/train_*.log on the workers)"
      exit "$status"
      ;;
  esac
done
