# shellcheck shell=bash
# Launching logic shared by benchmark/mujoco.sh and benchmark/ablation.sh (sourced by them, not run directly).
#
# The sourcing script defines `usage` (its --help text) and `handle_option NAME VALUE` (returns 1 for an option it
# does not know), calls `launch_parse_args "$@"`, queues runs with `add_job ENV EXP_NAME SEED [FLAGS...]` and ends
# with `launch_jobs`. Every job is one shell line: the training command followed by a redirection to its log file;
# --dry-run prints exactly these lines.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$REPO_ROOT/dacerv2_continuous.py"
PYTHON="${PYTHON:-python}"
SEEDS="1 2 3 4 5"
WORKERS=1
LOG_DIR="logs"
DRY_RUN=0
FORWARD=()
JOBS=()
declare -A QUEUED=()

# Print an error and the --help hint to stderr, then exit 2.
launch_die() {
    echo "$(basename "$0"): error: $1 (see --help)" >&2
    exit 2
}

# Print the --help lines of the options every benchmark script accepts.
launch_common_help() {
    cat <<EOF
  --seeds "S ..."     seeds to run (default: "$SEEDS")
  --workers N         number of runs at once, via xargs -P (default: $WORKERS)
  --log-dir DIR       where each run's stdout/stderr goes, as DIR/{env}__{exp_name}__{seed}.log (default: $LOG_DIR)
  --dry-run           print the exact command of every run, one per line, and exit
  -h, --help          show this help and exit
  -- ARGS...          everything after -- is passed to every run of dacerv2_continuous.py

Runs are written to runs/ under the current directory (TensorBoard event files); summarise them with
  python benchmark/report.py runs --out results
The Python interpreter is \$PYTHON (default: python); the training script is $SCRIPT.
EOF
}

# Parse the command line: common options here, the rest through the caller's handle_option.
launch_parse_args() {
    while (($#)); do
        case "$1" in
            -h | --help)
                usage
                exit 0
                ;;
            --dry-run) DRY_RUN=1 ;;
            --)
                shift
                FORWARD=("$@")
                break
                ;;
            --*)
                (($# >= 2)) || launch_die "option $1 needs a value"
                case "$1" in
                    --seeds) SEEDS="$2" ;;
                    --workers) WORKERS="$2" ;;
                    --log-dir) LOG_DIR="$2" ;;
                    *) handle_option "$1" "$2" || launch_die "unknown option $1" ;;
                esac
                shift
                ;;
            *) launch_die "unexpected argument '$1' (flags for the training script go after --)" ;;
        esac
        shift
    done
    [[ $WORKERS =~ ^[1-9][0-9]*$ ]] || launch_die "--workers needs a positive integer, got '$WORKERS'"
    [[ $SEEDS =~ ^[[:space:]]*[0-9]+([[:space:]]+[0-9]+)*[[:space:]]*$ ]] ||
        launch_die "--seeds needs a space-separated list of integers, got '$SEEDS'"
}

# Queue one run (ENV EXP_NAME SEED [FLAGS...]); an identical run queued twice is launched once.
add_job() {
    local env="$1" exp="$2" seed="$3" cmd log
    shift 3
    printf -v cmd '%q ' "$PYTHON" "$SCRIPT" --env-id "$env" --seed "$seed" --exp-name "$exp" "$@" "${FORWARD[@]}"
    printf -v log '%q' "$LOG_DIR/${env//\//_}__${exp}__${seed}.log"
    cmd="$cmd> $log 2>&1"
    [[ -n ${QUEUED[$cmd]+queued} ]] && return 0
    QUEUED[$cmd]=1
    JOBS+=("$cmd")
}

# Print the queued jobs (--dry-run) or run them, WORKERS at a time; exit 1 if any run failed.
launch_jobs() {
    ((${#JOBS[@]})) || launch_die "nothing to launch"
    if ((DRY_RUN)); then
        printf '%s\n' "${JOBS[@]}"
        return 0
    fi
    [[ -f $SCRIPT ]] || launch_die "training script not found: $SCRIPT"
    mkdir -p "$LOG_DIR"
    echo "launching ${#JOBS[@]} runs, $WORKERS at a time; logs in $LOG_DIR/" >&2
    # shellcheck disable=SC2016  # $1 and $(date) are expanded by the worker shell
    printf '%s\0' "${JOBS[@]}" | xargs -0 -n 1 -P "$WORKERS" bash -c '
        echo "[$(date +%T)] start: $1" >&2
        eval "$1" || { rc=$?; echo "[$(date +%T)] FAILED (exit $rc): $1" >&2; exit 1; }
        echo "[$(date +%T)] done: $1" >&2' _ || {
        echo "some runs failed: see the FAILED lines above and their logs in $LOG_DIR/" >&2
        exit 1
    }
}
