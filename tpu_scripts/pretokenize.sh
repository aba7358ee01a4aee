#!/usr/bin/env bash
# Runs `python -m parti_jax.data.pretokenize` on every worker of a TPU VM
# slice at once: each worker tokenizes its own share of the data.
set -euo pipefail

usage() {
  cat <<EOF
Usage: tpu_scripts/pretokenize.sh --name=NAME --zone=ZONE --gin_file=data/FILE.gin \\
           --tokenizer_dir=DIR --output_dir=gs://BUCKET/TOKENS [options] [-- ARGS...]

Runs, on all workers of the TPU VM at once, in the folder setup_tpu_vm.sh made:
  python -m parti_jax.data.pretokenize --gin_file=FILE ... --gin.NAME=VALUE ... \\
      --tokenizer_dir=DIR --output_dir=DIR ARGS
Each worker (jax process) reads its share of the task's examples and writes its
own shards, tokens-pPPP-SSSSS.tfrecord; its output goes to
~/parti_logs/pretokenize_\$(hostname).log and here. Shards are written whole or
not at all: after a failure or a preemption, the same command again skips the
finished ones. Train on the result with --gin_file=data/pretokenized.gin and
--gin=TOKENS_DIR="'OUTPUT_DIR'".

Options:
$TPU_FLAGS_HELP
$GIN_FLAGS_HELP
                        e.g. --gin_file=data/tar.gin --gin=TAR_PATTERN="'gs://b/shards/*.tar'"
  --tokenizer_dir=DIR   the trained image tokenizer's checkpoints (gs://, or a path
                        that exists on every worker) (required)
  --output_dir=DIR      where the shards go: gs://BUCKET/PATH (required)
  --allow_local_output_dir  accept an output_dir that is not gs:// (each worker
                        then writes its shards on its own disk)
  --stop                stop a running pretokenization on every worker instead
$REMOTE_DIR_HELP
$COMMON_FLAGS_HELP
  -- ARGS               further arguments for parti_jax.data.pretokenize, e.g.
                        --examples_per_shard=4096 --batch_size=64 --split=validation
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACCEPTS_EXTRA=1
TOKENIZER_DIR=""
OUTPUT_DIR=""
ALLOW_LOCAL_OUTPUT_DIR=0
STOP=0

while (($# > 0)); do
  split_flag "$1"
  case $FLAG in
    --tokenizer_dir)
      flag_value "$@"
      TOKENIZER_DIR=$FLAG_VALUE
      ;;
    --output_dir)
      flag_value "$@"
      OUTPUT_DIR=$FLAG_VALUE
      ;;
    --allow_local_output_dir)
      no_value "$1"
      ALLOW_LOCAL_OUTPUT_DIR=1
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

if ((STOP)); then
  gcloud_ssh all "cd $REMOTE_DIR && bash tpu_scripts/worker_run.sh --log_name=pretokenize --stop"
  exit 0
fi

if [[ -z $TOKENIZER_DIR ]]; then
  die "missing --tokenizer_dir (the tokenizer's checkpoints, e.g. gs://my-bucket/tokenizer/checkpoints)"
fi
if [[ -z $OUTPUT_DIR ]]; then
  die "missing --output_dir (e.g. --output_dir=gs://my-bucket/tokens)"
fi
if ((!ALLOW_LOCAL_OUTPUT_DIR)) && ! matches "$OUTPUT_DIR" '^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$'; then
  die "bad --output_dir '$OUTPUT_DIR': must be gs://BUCKET/PATH, which the trainer's workers all read (or pass --allow_local_output_dir)"
fi
check_gin_flags data/tar.gin ""

join_quoted .venv/bin/python -m parti_jax.data.pretokenize "${GIN_ARGS[@]}" \
  "--tokenizer_dir=$TOKENIZER_DIR" "--output_dir=$OUTPUT_DIR" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
REMOTE_COMMAND="cd $REMOTE_DIR && bash tpu_scripts/worker_run.sh --log_name=pretokenize -- $JOINED"

if ((DRY_RUN)); then
  echo "# on each worker: $REMOTE_COMMAND"
fi
status=0
gcloud_ssh all "$REMOTE_COMMAND" || status=$?
if ((status == STATUS_ALREADY_RUNNING)); then
  note "a pretokenization started earlier still runs on a worker; stop it with: $SCRIPT_NAME --name=$NAME ${TPU_FLAGS[*]} --stop"
elif ((status)); then
  note "exit status $status; the same command again resumes: finished shards are skipped (the output: ~/parti_logs/pretokenize_*.log on the workers)"
fi
exit "$status"
