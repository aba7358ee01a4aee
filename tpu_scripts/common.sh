# shellcheck shell=bash disable=SC2034
# (SC2034: the variables set here are read by the scripts that source it.)
# Shared by the tpu_scripts: flag parsing, validation of names, zones and
# accelerator types, and running commands (or, with --dry-run, only printing
# them). Sourced by each script, never run on its own.
#
# Every command a script runs is printed first, one line each, as
#   + gcloud compute tpus tpu-vm ssh NAME --zone=ZONE ...
# with its words quoted for a POSIX shell, so a printed line can be pasted
# into a terminal. GCLOUD=/path/to/gcloud replaces the gcloud binary (the
# tests point it at a fake one).
#
# Written for bash 3.2 and later (macOS's /bin/bash included): no
# associative arrays, no namerefs, no mapfile.

GCLOUD=${GCLOUD:-gcloud}
SCRIPT_NAME=$(basename "$0")
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)

# Flags every script shares.
DRY_RUN=0
NAME=""
ZONE=""
PROJECT=""
REMOTE_DIR=parti-jax
# Words after `--`, for the scripts that accept them (ACCEPTS_EXTRA=1).
EXTRA_ARGS=()
ACCEPTS_EXTRA=0

# Set by split_flag / flag_value for the parse loops.
FLAG=""
FLAG_VALUE=""
FLAG_SHIFT=1

# Exit statuses of tpu_scripts/worker_run.sh, besides its command's own.
readonly STATUS_USAGE=2 STATUS_ALREADY_RUNNING=3 STATUS_STOPPED=4

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  printf "run '%s --help' for usage\n" "$SCRIPT_NAME" >&2
  exit "$STATUS_USAGE"
}

# A remark for the person at the terminal: on stderr, so that stdout holds
# only the commands.
note() {
  printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2
}

# split_flag ARG: FLAG = the flag's name with '-' spelled '_' after the
# leading '--' (--accelerator-type and --accelerator_type are one flag).
split_flag() {
  local name=${1%%=*}
  FLAG_SHIFT=1
  if [[ $name == --?* ]]; then
    name=${name#--}
    FLAG=--${name//-/_}
  else
    FLAG=$name
  fi
}

# flag_value "$@": the value of the flag in $1, written --flag=VALUE or
# --flag VALUE; sets FLAG_VALUE and FLAG_SHIFT (the words it took).
flag_value() {
  if [[ $1 == *=* ]]; then
    FLAG_VALUE=${1#*=}
    FLAG_SHIFT=1
  elif (($# >= 2)) && [[ $2 != --* ]]; then
    FLAG_VALUE=$2
    FLAG_SHIFT=2
  else
    die "$FLAG needs a value"
  fi
  if [[ -z $FLAG_VALUE ]]; then
    die "$FLAG needs a value"
  fi
}

# no_value ARG: a switch, which takes no value.
no_value() {
  if [[ $1 == *=* ]]; then
    die "$FLAG takes no value"
  fi
  FLAG_SHIFT=1
}

# parse_common_flag "$@": --help, --dry-run, `--` and unknown flags; call it
# last in a script's parse loop. Needs the script's `usage` function.
parse_common_flag() {
  case $FLAG in
    -h | --help)
      usage
      exit 0
      ;;
    --dry_run)
      no_value "$1"
      DRY_RUN=1
      ;;
    --)
      if ((!ACCEPTS_EXTRA)); then
        die "$SCRIPT_NAME takes no arguments after --"
      fi
      shift
      EXTRA_ARGS=("$@")
      FLAG_SHIFT=$(($# + 1))
      ;;
    -*) die "unknown flag $1" ;;
    *) die "unexpected argument '$1' (flags are written --flag=value)" ;;
  esac
}

# parse_tpu_flag "$@": --name, --zone, --project, --remote_dir, then the
# common flags.
parse_tpu_flag() {
  case $FLAG in
    --name)
      flag_value "$@"
      NAME=$FLAG_VALUE
      ;;
    --zone)
      flag_value "$@"
      ZONE=$FLAG_VALUE
      ;;
    --project)
      flag_value "$@"
      PROJECT=$FLAG_VALUE
      ;;
    --remote_dir)
      flag_value "$@"
      REMOTE_DIR=$FLAG_VALUE
      ;;
    *) parse_common_flag "$@" ;;
  esac
}

# parse_gin_flag "$@": --gin_file and --gin (repeatable), then the TPU flags.
parse_gin_flag() {
  case $FLAG in
    --gin_file)
      flag_value "$@"
      GIN_FILES+=("$FLAG_VALUE")
      ;;
    --gin)
      flag_value "$@"
      GIN_BINDINGS+=("$FLAG_VALUE")
      ;;
    *) parse_tpu_flag "$@" ;;
  esac
}
GIN_FILES=()
GIN_BINDINGS=()

# check_gin_flags EXAMPLE_FILE RESERVED: GIN_ARGS = the --gin_file=FILE and
# --gin.NAME=VALUE arguments of the gin flags given, in order; at least one
# gin file; no --gin binding of RESERVED (a macro the script sets itself).
check_gin_flags() {
  local file binding root
  if ((${#GIN_FILES[@]} == 0)); then
    die "missing --gin_file (e.g. --gin_file=$1)"
  fi
  GIN_ARGS=()
  root=$(cd "$SCRIPT_DIR/.." && pwd)
  for file in "${GIN_FILES[@]}"; do
    if [[ ! -f $root/gin_configs/$file && ! -f $root/$file ]]; then
      note "warning: --gin_file=$file is not in $root/gin_configs; the workers must have it"
    fi
    GIN_ARGS+=("--gin_file=$file")
  done
  for binding in ${GIN_BINDINGS[@]+"${GIN_BINDINGS[@]}"}; do
    if ! matches "$binding" '^[A-Za-z_][A-Za-z0-9_./]*=.' || [[ $binding == *$'\n'* ]]; then
      die "bad --gin '$binding': expected NAME=VALUE on one line, e.g. --gin=TRAIN_STEPS=1000"
    fi
    if [[ -n $2 && ${binding%%=*} == "$2" ]]; then
      die "set $2 with its own flag, not --gin=$2=..."
    fi
    GIN_ARGS+=("--gin.$binding")
  done
}
GIN_ARGS=()

readonly GIN_FLAGS_HELP="  --gin_file=FILE       a gin file, resolved on the workers against gin_configs/
                        (repeatable, in order; at least one)
  --gin=NAME=VALUE      a gin binding, passed on as --gin.NAME=VALUE (repeatable);
                        gin strings keep their quotes: --gin=TOKENS_DIR=\"'gs://b/tokens'\""

readonly TPU_FLAGS_HELP="  --name=NAME           the TPU VM (required)
  --zone=ZONE           its zone, e.g. us-central2-b (required)
  --project=PROJECT     the Google Cloud project (default: gcloud's configured one)"

readonly COMMON_FLAGS_HELP="  --dry-run             print the commands, one a line, and run nothing
  -h, --help            this text"

readonly REMOTE_DIR_HELP="  --remote_dir=DIR      the project's folder on the workers, under the home
                        folder (default: parti-jax, as setup_tpu_vm.sh makes it)"

matches() {
  [[ $1 =~ $2 ]]
}

# Checks --name, --zone, --project and --remote_dir; builds TPU_FLAGS, the
# flags every gcloud command here takes.
check_tpu_flags() {
  if [[ -z $NAME ]]; then
    die "missing --name (the TPU VM's name)"
  fi
  if ! matches "$NAME" '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'; then
    die "bad --name '$NAME': use lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen, at most 63 characters"
  fi
  if [[ -z $ZONE ]]; then
    die "missing --zone (for example us-central2-b for TPU v4)"
  fi
  if ! matches "$ZONE" '^[a-z]+-[a-z]+[0-9]+-[a-z]$'; then
    die "bad --zone '$ZONE': expected a zone such as us-central2-b or europe-west4-a"
  fi
  if [[ -n $PROJECT ]] &&
    ! matches "$PROJECT" '^([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$'; then
    die "bad --project '$PROJECT': a project id has 6 to 30 lowercase letters, digits and hyphens"
  fi
  # Relative to the home folder, and plain enough to go into remote commands
  # unquoted: no spaces, no '..', no hidden folders.
  if ! matches "$REMOTE_DIR" '^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$'; then
    die "bad --remote_dir '$REMOTE_DIR': a folder under the home folder, e.g. parti-jax (letters, digits, '_', '-', '.')"
  fi
  TPU_FLAGS=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then
    TPU_FLAGS+=("--project=$PROJECT")
  fi
}
TPU_FLAGS=()

# parse_accelerator TYPE: checks a Cloud TPU accelerator type and sets
# ACCEL_GENERATION (v4, v5p, v5litepod, v6e), ACCEL_CHIPS (= JAX devices) and
# ACCEL_HOSTS (= TPU VM workers). v4 and v5p count TensorCores in the name
# (2 per chip, one JAX device per chip); v5e (v5litepod) and v6e count chips.
parse_accelerator() {
  local type=$1 size
  if matches "$type" '^(v4|v5p)-([1-9][0-9]*)$'; then
    ACCEL_GENERATION=${BASH_REMATCH[1]}
    size=${BASH_REMATCH[2]}
    if ((size < 8 || size % 8 || size > 20000)); then
      die "bad --accelerator_type '$type': ${ACCEL_GENERATION}-N counts TensorCores, a multiple of 8 (${ACCEL_GENERATION}-8, ${ACCEL_GENERATION}-32, ${ACCEL_GENERATION}-128, ...)"
    fi
    ACCEL_CHIPS=$((size / 2))
    ACCEL_HOSTS=$(((ACCEL_CHIPS + 3) / 4))
  elif matches "$type" '^(v5litepod|v6e)-([1-9][0-9]*)$'; then
    ACCEL_GENERATION=${BASH_REMATCH[1]}
    size=${BASH_REMATCH[2]}
    case $size in
      1 | 4 | 8) ACCEL_HOSTS=1 ;;
      16 | 32 | 64 | 128 | 256) ACCEL_HOSTS=$((size / 4)) ;;
      *) die "bad --accelerator_type '$type': ${ACCEL_GENERATION}-N counts chips, one of 1, 4, 8, 16, 32, 64, 128, 256" ;;
    esac
    ACCEL_CHIPS=$size
  elif matches "$type" '^v5e-([0-9]+)$'; then
    die "bad --accelerator_type '$type': Cloud TPU names v5e slices v5litepod-N (v5litepod-${BASH_REMATCH[1]})"
  else
    die "bad --accelerator_type '$type': expected v4-N or v5p-N (N TensorCores: v4-8 ... v4-4096), v5litepod-N or v6e-N (N chips: 1, 4, 8, ... 256)"
  fi
}
ACCEL_GENERATION=""
ACCEL_CHIPS=0
ACCEL_HOSTS=0

# require_int FLAG VALUE MIN: VALUE is an integer >= MIN.
require_int() {
  if ! matches "$2" '^(0|[1-9][0-9]{0,8})$' || (($2 < $3)); then
    die "bad $1 '$2': expected a whole number, at least $3"
  fi
}

# shell_quote WORD: QUOTED = WORD quoted for a POSIX shell: left alone when
# it holds only safe characters, else in single quotes; one that holds a
# single quote goes in double quotes (a remote command line reads better so),
# unless it also holds a '$', '`' or '!', which double quotes would not keep,
# and then is written as Python's shlex.quote writes it. Python's shlex.split
# and every POSIX shell read all three forms back to WORD. Character by
# character, because bash versions disagree on quotes inside
# ${var//pattern/replacement}.
shell_quote() {
  local word=$1 out="" char i double=1
  if matches "$word" '^[A-Za-z0-9_@%+=:,./-]+$'; then
    QUOTED=$word
    return
  fi
  if [[ $word != *\'* ]]; then
    QUOTED="'$word'"
    return
  fi
  case $word in
    *[\$\`!]*) double=0 ;;
  esac
  for ((i = 0; i < ${#word}; i++)); do
    char=${word:i:1}
    if ((double)); then
      case $char in
        \\ | \") out+="\\$char" ;;
        *) out+=$char ;;
      esac
    else
      case $char in
        \') out+="'\"'\"'" ;;
        *) out+=$char ;;
      esac
    fi
  done
  if ((double)); then
    QUOTED="\"$out\""
  else
    QUOTED="'$out'"
  fi
}
QUOTED=""

# join_quoted WORDS...: JOINED = the words, each quoted, joined by spaces: a
# command line a shell splits back into exactly these words.
join_quoted() {
  local word line=""
  for word in "$@"; do
    shell_quote "$word"
    line+="${line:+ }$QUOTED"
  done
  JOINED=$line
}
JOINED=""

# show COMMAND...: prints `+ COMMAND` (quoted), the form of every command here.
show() {
  join_quoted "$@"
  printf '+ %s\n' "$JOINED"
}

# run COMMAND...: shows it, then runs it unless --dry-run; its status is the
# command's (callers under set -e write `run ... || status=$?`).
run() {
  show "$@"
  if ((DRY_RUN)); then
    return 0
  fi
  "$@"
}

# The gcloud commands, with the TPU's flags.
gcloud_ssh() {  # gcloud_ssh WORKER REMOTE_COMMAND [-- SSH_ARGS...]
  local worker=$1 command=$2
  shift 2
  run "$GCLOUD" compute tpus tpu-vm ssh "$NAME" "${TPU_FLAGS[@]}" "--worker=$worker" \
    "--command=$command" "$@"
}
