# shellcheck shell=bash
# Shared by launch/local.sh, launch/gpu.sh and launch/tpu_pod.sh (sourced, not run).
# Bash 3.2 compatible (macOS's /bin/bash runs tpu_pod.sh from a laptop): no associative arrays, and empty
# arrays are expanded as ${a[@]+"${a[@]}"} because `set -u` rejects "${a[@]}" there.
#
# Each launcher defines usage(), flag_kind NAME (prints bool / value / unknown) and set_flag NAME VALUE,
# then calls parse_args "$@". The train flags are handled here, the same way for all three.

SCRIPT=${SCRIPT:-$0}
DRY_RUN=0
ENTRY=train        # --entry: the entry point every worker runs, python -m agentrl_jax.$ENTRY
GIN_ARGS=()        # --gin_file=... / --gin_bindings=... / --gin_search_paths=..., in the order given
EXTRA_TRAIN_ARGS=() # everything after a bare `--`, passed to `python -m agentrl_jax.$ENTRY` verbatim

die() {
  echo "error: $*" >&2
  exit 2
}

# Quote one word for a POSIX shell: as is when it is plainly safe, else in single quotes.
shquote() {
  local s=$1
  if [[ -n $s && $s != *[!A-Za-z0-9_./:=,+@%-]* ]]; then
    printf '%s' "$s"
  elif [[ $s == *\'* && $s != *[\"\$\`\\!]* ]]; then
    printf '"%s"' "$s" # a gin binding with quoted strings reads better in double quotes
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# The words of a command as one shell line that reproduces them exactly.
show_cmd() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(shquote "$w")"
  done
  printf '%s' "$out"
}

# Print a command (dry run: on stdout, nothing runs), or print it on stderr and run it.
run() {
  if ((DRY_RUN)); then
    show_cmd "$@"
    echo
  else
    echo "+ $(show_cmd "$@")" >&2
    "$@"
  fi
}

# Export a variable, printing the line that does it (so a dry run's output can be pasted into a shell).
set_env() {
  export "$1=$2"
  if ((DRY_RUN)); then
    echo "export $1=$(shquote "$2")"
  else
    echo "+ export $1=$(shquote "$2")" >&2
  fi
}

note() {
  if ((DRY_RUN)); then echo "# $*"; else echo "[$(basename "$SCRIPT")] $*" >&2; fi
}

# A gin file must exist relative to the repository root (the launchers run from there) or to gin/.
add_gin_file() {
  local f=$1
  [[ -n $f ]] || die "--gin_file needs a path, e.g. --gin_file=gin/experiments/sokoban_tiny_cpu.gin"
  if [[ ! -f $f && ! -f gin/$f ]]; then
    die "gin file '$f' not found (paths are relative to the repository root, $(pwd)). Pick one of gin/experiments/*.gin, e.g. --gin_file=gin/experiments/sokoban_tiny_cpu.gin"
  fi
  GIN_ARGS+=("--gin_file=$f")
}

has_gin_file() {
  local a
  for a in ${GIN_ARGS[@]+"${GIN_ARGS[@]}"}; do
    [[ $a == --gin_file=* ]] && return 0
  done
  return 1
}

# The last gin file given (for the default output folder).
last_gin_file() {
  local a last=""
  for a in ${GIN_ARGS[@]+"${GIN_ARGS[@]}"}; do
    [[ $a == --gin_file=* ]] && last=${a#--gin_file=}
  done
  printf '%s' "$last"
}

# Values must be plain: a number, a name, a path.
check_int() {  # NAME VALUE MIN
  if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < $3)); then
    die "$1 must be an integer >= $3, got '$2'"
  fi
}

parse_args() {
  local arg name val has kind
  while (($#)); do
    arg=$1
    shift
    if [[ $arg == -- ]]; then
      EXTRA_TRAIN_ARGS+=("$@")
      return 0
    fi
    if [[ $arg != -* ]]; then
      # Positional gin file, the older launchers' form: launch/X.sh gin/experiments/Y.gin [flags]
      [[ $arg == *.gin ]] || die "unexpected argument '$arg'. Flags are --name=value (see $SCRIPT --help); a gin file is --gin_file=FILE"
      add_gin_file "$arg"
      continue
    fi
    if [[ $arg == --*=* ]]; then
      name=${arg%%=*}
      val=${arg#*=}
      has=1
    else
      name=$arg
      val=""
      has=0
    fi
    case $name in
      -h | --help) kind=help ;;
      --dry_run) kind=bool ;;
      --gin_file | --gin_param | --gin_bindings | --gin_search_paths | --entry) kind=value ;;
      *) kind=$(flag_kind "$name") ;;
    esac
    case $kind in
      help)
        usage
        exit 0
        ;;
      bool)
        ((has == 0)) || die "$name takes no value (got '$arg'); write just $name"
        val=1
        ;;
      value)
        if ((has == 0)); then
          (($#)) || die "$name needs a value: $name=VALUE (see $SCRIPT --help)"
          [[ $1 != --* ]] || die "$name needs a value, got the flag '$1' instead: $name=VALUE"
          val=$1
          shift
        fi
        ;;
      *)
        die "unknown flag '$name'. See $SCRIPT --help; train's own flags go through as --gin_file=FILE, --gin_param='BINDING', or after a bare --"
        ;;
    esac
    case $name in
      --dry_run) DRY_RUN=1 ;;
      --entry)
        case $val in
          train | sft) ENTRY=$val ;;
          *) die "--entry=$val: use train (RL, the default) or sft (supervised); both run on every worker of a multi-host job. The study runner (python -m agentrl_jax.study) drives its stages from one host" ;;
        esac
        ;;
      --gin_file) add_gin_file "$val" ;;
      --gin_param | --gin_bindings)
        [[ -n $val ]] || die "$name needs a binding, e.g. $name='train.num_steps = 5'"
        GIN_ARGS+=("--gin_bindings=$val")
        ;;
      --gin_search_paths) GIN_ARGS+=("--gin_search_paths=$val") ;;
      *) set_flag "$name" "$val" ;;
    esac
  done
}

# The train (or --entry) command's arguments: gin files and bindings in order, then the verbatim extras.
train_args() {
  # shellcheck disable=SC2034  # read by the launcher that sourced this file
  TRAIN_ARGS=(-m "agentrl_jax.$ENTRY" ${GIN_ARGS[@]+"${GIN_ARGS[@]}"} ${EXTRA_TRAIN_ARGS[@]+"${EXTRA_TRAIN_ARGS[@]}"})
}

# The jax version range setup.py pins, e.g. ">=0.10.2,<0.11" (accelerator wheels must match it).
jax_pin() {
  local pin
  pin=$(sed -n 's/^[[:space:]]*"jax\([<>=!~][^"]*\)",.*$/\1/p' setup.py | head -n 1)
  [[ -n $pin ]] || die "could not read the jax pin from setup.py (expected a line like \"jax>=0.10.2,<0.11\",)"
  printf '%s' "$pin"
}

# OUTPUT_DIR as the given gin files and bindings set it (last one wins; includes are not followed).
gin_output_dir() {
  local a f out=""
  for a in ${GIN_ARGS[@]+"${GIN_ARGS[@]}"}; do
    case $a in
      --gin_file=*)
        f=${a#--gin_file=}
        [[ -f $f ]] || f=gin/$f
        f=$(sed -n "s/^OUTPUT_DIR[[:space:]]*=[[:space:]]*['\"]\([^'\"]*\)['\"][[:space:]]*$/\1/p" "$f" | tail -n 1)
        [[ -z $f ]] || out=$f
        ;;
      --gin_bindings=*)
        f=$(printf '%s\n' "${a#--gin_bindings=}" | sed -n "s/^[[:space:]]*OUTPUT_DIR[[:space:]]*=[[:space:]]*['\"]\([^'\"]*\)['\"][[:space:]]*$/\1/p")
        [[ -z $f ]] || out=$f
        ;;
    esac
  done
  printf '%s' "$out"
}
