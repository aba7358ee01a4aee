#!/usr/bin/env bash
# Puts the project on every worker of a TPU VM slice, installs it into a venv
# there, and checks that jax sees the TPU chips.
set -euo pipefail

usage() {
  cat <<EOF
Usage: tpu_scripts/setup_tpu_vm.sh --name=NAME --zone=ZONE [--git_url=URL] [options]

On every worker of the TPU VM (--worker=all):
  1. the project: by default this checkout's commit --ref (git archive, copied
     with gcloud compute tpus tpu-vm scp); with --git_url, cloned there from URL
     and checked out at --ref. Uncommitted changes are not copied.
  2. a venv, .venv in the project folder (Python from --python, installed with
     apt if missing), and pip install -e '.[tpu]'
  3. a check that the workers join up as the training job does
     (parti_jax.multihost.initialize()) and see the chips: each prints
     jax.process_index(), jax.process_count(), jax.device_count() and
     jax.local_device_count() (a v4-32: "process 0 of 4: 16 devices, 4 here").
Running it again updates the code and keeps the venv.

Options:
$TPU_FLAGS_HELP
  --git_url=URL         clone from URL on the workers instead of copying this checkout
  --ref=REF             the commit, branch or tag to put there (default HEAD)
  --python=PYTHON       the workers' Python for the venv (default python3.11)
$REMOTE_DIR_HELP
$COMMON_FLAGS_HELP
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GIT_URL=""
REF=HEAD
PYTHON=python3.11

while (($# > 0)); do
  split_flag "$1"
  case $FLAG in
    --git_url)
      flag_value "$@"
      GIT_URL=$FLAG_VALUE
      ;;
    --ref)
      flag_value "$@"
      REF=$FLAG_VALUE
      ;;
    --python)
      flag_value "$@"
      PYTHON=$FLAG_VALUE
      ;;
    *) parse_tpu_flag "$@" ;;
  esac
  shift "$FLAG_SHIFT"
done

check_tpu_flags
if ! matches "$PYTHON" '^python3(\.[0-9]+)?$'; then
  die "bad --python '$PYTHON': python3 or python3.N"
fi
if ! matches "$REF" '^[A-Za-z0-9_][A-Za-z0-9_./~^-]*$'; then
  die "bad --ref '$REF': a commit, branch or tag"
fi
if [[ -n $GIT_URL ]] && ! matches "$GIT_URL" '^(https://|ssh://|git@)[^[:space:]]+$'; then
  die "bad --git_url '$GIT_URL': an https://, ssh:// or git@ URL"
fi

DIR=$REMOTE_DIR
shell_quote "$REF"
QUOTED_REF=$QUOTED

if [[ -z $GIT_URL ]]; then
  ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
  if ! git -C "$ROOT" rev-parse --verify --quiet "$REF^{commit}" >/dev/null; then
    die "--ref '$REF' is not a commit of the checkout in $ROOT"
  fi
  if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    note "warning: $ROOT has uncommitted changes; only the commit $REF is copied"
  fi
  TARBALL=${TMPDIR:-/tmp}/parti-jax-$NAME.tar.gz
  REMOTE_TARBALL=parti-jax-src.tar.gz
  # Unpacked next to the old folder, which then gives up only its .venv: files
  # deleted from the project do not linger on the workers.
  FETCH="rm -rf $DIR.new && mkdir -p $DIR.new && tar -xzf $REMOTE_TARBALL -C $DIR.new"
  FETCH+=" && rm -f $REMOTE_TARBALL && if [ -d $DIR/.venv ]; then mv $DIR/.venv $DIR.new/; fi"
  FETCH+=" && rm -rf $DIR && mv $DIR.new $DIR"
else
  shell_quote "$GIT_URL"
  FETCH="if [ ! -d $DIR/.git ]; then git clone --quiet $QUOTED $DIR; fi"
  FETCH+=" && git -C $DIR fetch --quiet origin $QUOTED_REF"
  FETCH+=" && git -C $DIR checkout --quiet --force FETCH_HEAD"
fi
INSTALL="cd $DIR && if ! $PYTHON -c \"import ensurepip, venv\" 2>/dev/null; then"
INSTALL+=" sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PYTHON $PYTHON-venv; fi"
INSTALL+=" && if [ ! -x .venv/bin/python ]; then $PYTHON -m venv .venv; fi"
INSTALL+=" && .venv/bin/python -m pip install --quiet --upgrade pip"
INSTALL+=" && .venv/bin/python -m pip install --quiet -e \".[tpu]\""
# jax joins the workers the way train.py does it (parti_jax.multihost).
CHECK="cd $DIR && .venv/bin/python -c 'from parti_jax import multihost; multihost.initialize(); import jax;"
CHECK+=" print(\"process %d of %d: %d devices, %d here\" % (jax.process_index(), jax.process_count(),"
CHECK+=" jax.device_count(), jax.local_device_count()))'"

if [[ -z $GIT_URL ]]; then
  trap 'rm -f "$TARBALL"' EXIT
  run git -C "$ROOT" archive --format=tar.gz "--output=$TARBALL" "$REF"
  run "$GCLOUD" compute tpus tpu-vm scp "$TARBALL" "$NAME:$REMOTE_TARBALL" "${TPU_FLAGS[@]}" \
    --worker=all
fi
gcloud_ssh all "$FETCH && $INSTALL"
gcloud_ssh all "$CHECK"
if ((!DRY_RUN)); then
  note "each worker printed its process, jax.device_count() (the slice's chips) and jax.local_device_count() (its own)"
fi
