#!/usr/bin/env bash
# Runs on a TPU VM worker, started there by train.sh and pretokenize.sh
# through `gcloud compute tpus tpu-vm ssh --worker=all`: runs one command of
# this project, keeps its output in ~/parti_logs/NAME_HOSTNAME.log and shows it
# on stdout, and records its process id so that a later call can stop it.
set -euo pipefail

usage() {
  cat <<EOF
Usage: tpu_scripts/worker_run.sh --log_name=NAME [options] -- COMMAND [ARGS...]
       tpu_scripts/worker_run.sh --log_name=NAME --stop

Runs on each TPU VM worker (train.sh and pretokenize.sh start it there; you
need not call it yourself). Runs COMMAND with its output appended to
\$PARTI_LOG_DIR/NAME_\$(hostname).log (default PARTI_LOG_DIR: ~/parti_logs)
and followed on stdout, and exits with COMMAND's status. The command runs
apart from the ssh session: if the connection drops, it goes on and keeps
logging.

One run of a NAME at a time. If the run started earlier still goes on:
the same COMMAND is followed instead of started again, and its status is
this call's (gcloud, when an ssh connection drops, runs the command again on
that worker: it picks the run up); another command is refused (status $STATUS_ALREADY_RUNNING);
with --stop_previous the earlier run is stopped first.

Options:
  --log_name=NAME       names the log and the run (train, pretokenize)
  --stop_previous       stop the earlier run of NAME if it still goes on (SIGTERM:
                        training saves a checkpoint), then start COMMAND
  --stop                only stop the run of NAME (SIGTERM, then SIGKILL after
                        --stop_timeout); its launcher then exits with status $STATUS_STOPPED
  --stop_timeout=SECONDS  how long a stopped run may take to save (default 300)
$COMMON_FLAGS_HELP

Exit status: COMMAND's; $STATUS_USAGE for bad arguments; $STATUS_ALREADY_RUNNING when another command of NAME
still runs; $STATUS_STOPPED when the run was stopped with --stop.
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACCEPTS_EXTRA=1
LOG_NAME=""
STOP=0
STOP_PREVIOUS=0
STOP_TIMEOUT=300

while (($# > 0)); do
  split_flag "$1"
  case $FLAG in
    --log_name)
      flag_value "$@"
      LOG_NAME=$FLAG_VALUE
      ;;
    --stop)
      no_value "$1"
      STOP=1
      ;;
    --stop_previous)
      no_value "$1"
      STOP_PREVIOUS=1
      ;;
    --stop_timeout)
      flag_value "$@"
      STOP_TIMEOUT=$FLAG_VALUE
      ;;
    *) parse_common_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done

if [[ -z $LOG_NAME ]]; then
  die "missing --log_name"
fi
if ! matches "$LOG_NAME" '^[a-z][a-z0-9_]*$'; then
  die "bad --log_name '$LOG_NAME': lowercase letters, digits and '_'"
fi
require_int --stop_timeout "$STOP_TIMEOUT" 0
if ((STOP)) && ((${#EXTRA_ARGS[@]})); then
  die "--stop takes no command"
fi
if ((!STOP)) && ((${#EXTRA_ARGS[@]} == 0)); then
  die "missing the command to run, after --"
fi

LOG_DIR=${PARTI_LOG_DIR:-$HOME/parti_logs}
HOST=$(hostname)
LOG_FILE=$LOG_DIR/${LOG_NAME}_$HOST.log
PID_FILE=$LOG_DIR/$LOG_NAME.pid
COMMAND_FILE=$LOG_DIR/$LOG_NAME.command
STATUS_FILE=$LOG_DIR/$LOG_NAME.status
STOP_MARKER=$LOG_DIR/$LOG_NAME.stopped

# running_pid: RUNNING_PID = the process of the earlier run if it is alive.
# After a reboot the recorded id may belong to another process: it must be
# one of this project's commands (its command line names parti_jax).
running_pid() {
  local pid
  RUNNING_PID=""
  [[ -s $PID_FILE ]] || return 1
  pid=$(<"$PID_FILE")
  matches "$pid" '^[0-9]+$' || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r /proc/$pid/cmdline ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q parti_jax; then
    return 1
  fi
  RUNNING_PID=$pid
}
RUNNING_PID=""

# stop_run PID: SIGTERM (the training job saves its step and exits), then
# SIGKILL if it is still there after STOP_TIMEOUT seconds.
stop_run() {
  local pid=$1 waited=0
  show kill -TERM "$pid"
  if ((DRY_RUN)); then
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited >= STOP_TIMEOUT)); then
      note "pid $pid on $HOST did not stop in ${STOP_TIMEOUT}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      return 0
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

# follow_run PID: shows the log of the run PID until it ends, then exits
# with the status its launcher records.
follow_run() {
  local pid=$1 tries
  note "the same command already runs on $HOST (pid $pid): following it"
  show tail -n 0 -f --pid="$pid" "$LOG_FILE"
  if ((DRY_RUN)); then
    exit 0
  fi
  tail -n 0 -s 0.2 --pid="$pid" -f "$LOG_FILE" || true
  for ((tries = 0; tries < 50; tries++)); do
    if [[ -s $STATUS_FILE ]] && matches "$(<"$STATUS_FILE")" "^$pid [0-9]+\$"; then
      exit "$(cut -d' ' -f2 <"$STATUS_FILE")"
    fi
    sleep 0.2
  done
  note "the run (pid $pid) ended without recording its status"
  exit 1
}

if ((!DRY_RUN)); then
  mkdir -p "$LOG_DIR"
fi

if ((STOP)); then
  if running_pid; then
    note "stopping the $LOG_NAME run on $HOST (pid $RUNNING_PID)"
    if ((!DRY_RUN)); then
      touch "$STOP_MARKER"
    fi
    stop_run "$RUNNING_PID"
  else
    note "no $LOG_NAME run is going on $HOST"
  fi
  exit 0
fi

join_quoted "${EXTRA_ARGS[@]}"
COMMAND_LINE=$JOINED
if running_pid; then
  if ((STOP_PREVIOUS)); then
    note "stopping the earlier $LOG_NAME run on $HOST (pid $RUNNING_PID)"
    stop_run "$RUNNING_PID"
  elif [[ -f $COMMAND_FILE && $(<"$COMMAND_FILE") == "$COMMAND_LINE" ]]; then
    follow_run "$RUNNING_PID"
  else
    note "error: another $LOG_NAME command still runs on $HOST (pid $RUNNING_PID): $(cat "$COMMAND_FILE" 2>/dev/null); wait for it, or stop it with --stop"
    exit "$STATUS_ALREADY_RUNNING"
  fi
fi

if ((DRY_RUN)); then
  show "${EXTRA_ARGS[@]}"
  exit 0
fi

rm -f "$STOP_MARKER" "$STATUS_FILE"
printf '%s\n' "$COMMAND_LINE" >"$COMMAND_FILE"
touch "$LOG_FILE"
first_new_line=$(($(wc -l <"$LOG_FILE") + 1))
printf '=== %s on %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$HOST" "$COMMAND_LINE" >>"$LOG_FILE"

# The command writes to the log file, never to the ssh session, so a dropped
# connection cannot stop it; `tail` shows the log meanwhile. (A simple command
# started with & is its own process: $! is the command's id.)
PYTHONUNBUFFERED=1 "${EXTRA_ARGS[@]}" >>"$LOG_FILE" 2>&1 </dev/null &
command_pid=$!
printf '%s\n' "$command_pid" >"$PID_FILE"
tail -n "+$first_new_line" -s 0.2 --pid="$command_pid" -f "$LOG_FILE" &
tail_pid=$!
status=0
wait "$command_pid" || status=$?
wait "$tail_pid" || true

if [[ -s $PID_FILE ]] && [[ $(<"$PID_FILE") == "$command_pid" ]]; then
  rm -f "$PID_FILE"
fi
if [[ -e $STOP_MARKER ]]; then
  rm -f "$STOP_MARKER"
  printf '=== stopped by --stop (status %s)\n' "$status" >>"$LOG_FILE"
  status=$STATUS_STOPPED
fi
# Recorded before anything goes to stdout, which may be a dropped connection.
printf '%s %s\n' "$command_pid" "$status" >"$STATUS_FILE"
printf '=== exit status %s\n' "$status" >>"$LOG_FILE"
printf '=== %s on %s: exit status %s (log: %s)\n' "$LOG_NAME" "$HOST" "$status" "$LOG_FILE"
exit "$status"
