# shellcheck shell=bash
# Launching logic shared by benchmark/mujoco.sh, ablation.sh and multigoal.sh (sourced by them, not run directly).
#
# The sourcing script defines `usage` (its --help text) and `handle_option NAME VALUE` (returns 1 for an option it
# does not know), calls `launch_parse_args "$@"`, queues runs with `add_job ENV EXP_NAME SEED [FLAGS...]` (or
# `add_script_job SCRIPT ENV EXP_NAME SEED [FLAGS...]` for another training script) and ends with `launch_jobs`.
# Locally every run is one shell line, the training command and a redirection to its log file, run by xargs -P;
# --dry-run prints these lines. With --slurm, launch_jobs writes one sbatch script with a job array (one task per
# run) and submits it; --dry-run prints that script. Before any of that, every distinct configuration is run once
# with the training script's own --dry-run, by the interpreter the runs will use (its absolute path goes into every
# command): a flag or env id it refuses, or an interpreter without the packages, stops the launch with one line.
# A launch appends its runs to LOG_DIR/planned_runs.txt, which report.py --planned reads.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$REPO_ROOT/dacerv2_continuous.py"
PYTHON="${PYTHON:-python}"
SEEDS="1 2 3 4 5"
WORKERS=1
LOG_DIR="logs"
DRY_RUN=0
FORWARD=()
COMMANDS=() # the queued runs: each one's command, and its log file in LOGS
LOGS=()
declare -A QUEUED=()
CHECKS=() # one --dry-run command per configuration (the runs' commands but for the seed), its label in CHECK_LABELS
CHECK_LABELS=()
declare -A CHECKED=()
SLURM=0
SLURM_PARTITION=""
SLURM_TIME="24:00:00"
SLURM_CPUS=1
SLURM_MEM="8G"
SLURM_GPUS=0
SLURM_MAX_PARALLEL=""
SLURM_EXTRA=""
# Under --slurm the training script's runs get a fixed folder, continue from its checkpoint when requeued, and write
# one every 50,000 iterations and at the end, with the replay buffer (an exact resume); flags after -- override these.
SLURM_RUN_FLAGS=(--resume-if-exists --save-model --checkpoint-buffer --checkpoint-frequency 50000)
SLURM_SAC_FLAGS=(--resume-if-exists --checkpoint-frequency 50000)  # the SAC baseline's: SB3's model and buffer

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
  --dry-run           print the exact command of every run, one per line (with --slurm: the sbatch script), and exit
  -h, --help          show this help and exit
  -- ARGS...          everything after -- is passed to every run of dacerv2_continuous.py

Runs are written to runs/ under the current directory (TensorBoard event files); summarise them with
  python benchmark/report.py runs --out results
The Python interpreter is \$PYTHON (default: the python on the PATH), written with its absolute path into every
command; each configuration is checked with it (the training script's --dry-run) before anything runs or is
submitted. Launches append their runs to LOG_DIR/planned_runs.txt (report.py --planned lists the missing ones).
The training script is $SCRIPT.

Slurm (README "Running on a cluster"): one job array, one task per run, submitted with sbatch.
  --slurm             submit the runs to Slurm instead of running them here
  --partition P       the partition (default: the cluster's default)
  --time T            each task's time limit, e.g. 12:00:00 or 2-00:00:00 (default: $SLURM_TIME); a task that
                      reaches it (or is pre-empted) saves a checkpoint, is requeued and continues from it
  --cpus-per-task N   CPUs per task (default: $SLURM_CPUS)
  --mem M             memory per task, e.g. 8G (default: $SLURM_MEM)
  --gpus N            GPUs per task (default: $SLURM_GPUS; pass -- --cuda to train on them)
  --max-parallel N    at most N tasks at once (default: no limit)
  --sbatch "OPTS"     more sbatch options, e.g. --sbatch "--account=lab --qos=low"
Under --slurm each run of the training script gets ${SLURM_RUN_FLAGS[*]}
(the SAC baseline's: ${SLURM_SAC_FLAGS[*]}).
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
            --slurm) SLURM=1 ;;
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
                    --partition) SLURM_PARTITION="$2" ;;
                    --time) SLURM_TIME="$2" ;;
                    --cpus-per-task) SLURM_CPUS="$2" ;;
                    --mem) SLURM_MEM="$2" ;;
                    --gpus) SLURM_GPUS="$2" ;;
                    --max-parallel) SLURM_MAX_PARALLEL="$2" ;;
                    --sbatch) SLURM_EXTRA="$2" ;;
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
    local seed resolved
    for seed in $SEEDS; do
        ((${#seed} <= 10 && 10#$seed < 4294967296)) || launch_die "--seeds: each seed must be below 2^32, got $seed"
    done
    resolved="$(type -P "$PYTHON")" || launch_die "no Python interpreter '$PYTHON' here: activate the project's venv, \
or set PYTHON=/path/to/.venv/bin/python"
    PYTHON="$(cd "$(dirname "$resolved")" && pwd)/$(basename "$resolved")" # absolute (a venv's link is kept as it is)
    # Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
    [[ $SLURM_TIME =~ ^([0-9]+|[0-9]+:[0-9]{1,2}|[0-9]+:[0-9]{1,2}:[0-9]{1,2}|[0-9]+-[0-9]+(:[0-9]{1,2}){0,2})$ ]] ||
        launch_die "--time needs a Slurm time limit such as 12:00:00 or 2-00:00:00, got '$SLURM_TIME'"
    [[ $SLURM_CPUS =~ ^[1-9][0-9]*$ ]] || launch_die "--cpus-per-task needs a positive integer, got '$SLURM_CPUS'"
    [[ $SLURM_MEM =~ ^[1-9][0-9]*[KMGT]?$ ]] || launch_die "--mem needs a size such as 8G or 8000M, got '$SLURM_MEM'"
    [[ $SLURM_GPUS =~ ^[0-9]+$ ]] || launch_die "--gpus needs a non-negative integer, got '$SLURM_GPUS'"
    [[ -z $SLURM_MAX_PARALLEL || $SLURM_MAX_PARALLEL =~ ^[1-9][0-9]*$ ]] ||
        launch_die "--max-parallel needs a positive integer, got '$SLURM_MAX_PARALLEL'"
    [[ -z $SLURM_PARTITION || $SLURM_PARTITION =~ ^[A-Za-z0-9_.-]+$ ]] ||
        launch_die "--partition needs a partition name, got '$SLURM_PARTITION'"
}

# Queue one run of the training script (ENV EXP_NAME SEED [FLAGS...]); an identical run queued twice runs once.
add_job() {
    add_script_job "$SCRIPT" "$@"
}

# Queue one run of SCRIPT (SCRIPT ENV EXP_NAME SEED [FLAGS...]).
add_script_job() {
    local script="$1" env="$2" exp="$3" seed="$4" cmd log resumable=()
    shift 4
    if ((SLURM)) && [[ $script == "$SCRIPT" ]]; then
        resumable=("${SLURM_RUN_FLAGS[@]}")
    elif ((SLURM)) && [[ $script == */sac_baseline.py ]]; then
        resumable=("${SLURM_SAC_FLAGS[@]}")
    fi
    printf -v cmd '%q ' "$PYTHON" "$script" --env-id "$env" --seed "$seed" --exp-name "$exp" "$@" \
        "${resumable[@]}" "${FORWARD[@]}"
    printf -v log '%q' "$LOG_DIR/${env//\//_}__${exp}__${seed}.log"
    [[ -n ${QUEUED[$cmd]+queued} ]] && return 0
    QUEUED[$cmd]=1
    COMMANDS+=("${cmd% }")
    LOGS+=("$log")
    local config="${cmd/ --seed $seed / }" # the configuration: the command but for its seed
    [[ -n ${CHECKED[$config]+checked} ]] && return 0
    CHECKED[$config]=1
    CHECKS+=("${cmd}--dry-run")
    CHECK_LABELS+=("$env / $exp / seed $seed")
}

# Run the training script's --dry-run once per configuration, all CPUs at a time; the first refusal (in queue order)
# ends the launch with its error line, and nothing runs or is submitted.
launch_check() {
    local dir i message
    dir="$(mktemp -d)"
    for i in "${!CHECKS[@]}"; do printf '%s\n' "${CHECKS[$i]}" >"$dir/$i.cmd"; done
    # shellcheck disable=SC2016  # $1 is expanded by the worker shell
    printf '%s\0' "${!CHECKS[@]}" | xargs -0 -n 1 -P "$(nproc 2>/dev/null || echo 2)" bash -c '
        eval "$(cat "$0/$1.cmd")" >"$0/$1.out" 2>&1; echo $? >"$0/$1.rc"' "$dir"
    for i in "${!CHECKS[@]}"; do
        if [[ $(cat "$dir/$i.rc") != 0 ]]; then
            message="$(grep -m 1 '^error: ' "$dir/$i.out" || # else tyro's box (its first line), else the last line
                sed -n 's/^│ *\(.*[^ ]\) *│$/\1/p' "$dir/$i.out" | grep -m 1 . || grep . "$dir/$i.out" | tail -n 1 ||
                true)"
            message="${message:-exit status $(cat "$dir/$i.rc"), no output}"
            [[ $message == *"No module named"* ]] &&
                message+=" (is $PYTHON the project's environment? activate its venv, or set PYTHON)"
            rm -rf "$dir"
            # the training script's own refusal: no "(see --help)" of this launcher
            echo "$(basename "$0"): error: ${CHECK_LABELS[$i]}: ${message#error: }; nothing was launched" >&2
            exit 2
        fi
    done
    rm -rf "$dir"
}

# Print the queued jobs (--dry-run) or run them, WORKERS at a time; exit 1 if any run failed. With --slurm, submit.
launch_jobs() {
    ((${#COMMANDS[@]})) || launch_die "nothing to launch"
    [[ -f $SCRIPT ]] || launch_die "training script not found: $SCRIPT"
    launch_check
    if ((SLURM)); then
        slurm_submit
        return
    fi
    local jobs=() i # each run as one shell line: its command and the redirection to its log
    for i in "${!COMMANDS[@]}"; do jobs+=("${COMMANDS[$i]} > ${LOGS[$i]} 2>&1"); done
    if ((DRY_RUN)); then
        printf '%s\n' "${jobs[@]}"
        return 0
    fi
    mkdir -p "$LOG_DIR"
    printf '%s\n' "${COMMANDS[@]}" >>"$LOG_DIR/planned_runs.txt"
    echo "launching ${#jobs[@]} runs, $WORKERS at a time; logs in $LOG_DIR/" >&2
    echo "report: $PYTHON $REPO_ROOT/benchmark/report.py runs --out results --planned $LOG_DIR/planned_runs.txt" >&2
    # shellcheck disable=SC2016  # $1 and $(date) are expanded by the worker shell
    printf '%s\0' "${jobs[@]}" | xargs -0 -n 1 -P "$WORKERS" bash -c '
        echo "[$(date +%T)] start: $1" >&2
        eval "$1" || { rc=$?; echo "[$(date +%T)] FAILED (exit $rc): $1" >&2; exit 1; }
        echo "[$(date +%T)] done: $1" >&2' _ || {
        echo "some runs failed: see the FAILED lines above and their logs in $LOG_DIR/" >&2
        exit 1
    }
}

# The sbatch script of the queued runs: a job array whose task i runs COMMANDS[i], appending to LOGS[i]. The batch
# shell gets SIGTERM 120 s before the time limit (and on pre-emption or requeue), passes it to the training script,
# which finishes its iteration and writes its checkpoint; the task then requeues itself and, started again, continues
# from that checkpoint (--resume-if-exists).
slurm_script() {
    local i
    cat <<EOF
#!/bin/bash
#SBATCH --job-name=dacerv2-$(basename "$0" .sh)
#SBATCH --array=0-$((${#COMMANDS[@]} - 1))${SLURM_MAX_PARALLEL:+%$SLURM_MAX_PARALLEL}
#SBATCH --time=$SLURM_TIME
#SBATCH --cpus-per-task=$SLURM_CPUS
#SBATCH --mem=$SLURM_MEM
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=$LOG_DIR/slurm-%A_%a.out
EOF
    [[ -z $SLURM_PARTITION ]] || echo "#SBATCH --partition=$SLURM_PARTITION"
    ((SLURM_GPUS == 0)) || echo "#SBATCH --gpus=$SLURM_GPUS"
    for i in $SLURM_EXTRA; do echo "#SBATCH $i"; done
    printf 'cd %q\n' "$PWD"
    echo 'commands=('
    for i in "${!COMMANDS[@]}"; do # single-quoted when it can be, for reading
        if [[ ${COMMANDS[$i]} == *"'"* ]]; then printf '    %q\n' "${COMMANDS[$i]}"; else printf "    '%s'\n" "${COMMANDS[$i]}"; fi
    done
    echo ')'
    echo 'logs=('
    for i in "${!LOGS[@]}"; do printf '    %s\n' "${LOGS[$i]}"; done
    echo ')'
    cat <<'EOF'
task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
log="${logs[$SLURM_ARRAY_TASK_ID]}"
mkdir -p "$(dirname "$log")"
echo "[$(date +%FT%T)] slurm task $task on $(hostname), start ${SLURM_RESTART_COUNT:-0}" >>"$log"
eval "exec ${commands[$SLURM_ARRAY_TASK_ID]}" >>"$log" 2>&1 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
status=0
wait "$child" || status=$?
while kill -0 "$child" 2>/dev/null; do # wait returned for the trapped signal: wait for the checkpoint
    status=0
    wait "$child" || status=$?
done
# Stopped by SIGTERM with a checkpoint written. While the job still runs, the signal was a warning (the time limit's,
# or a user's scancel --signal=TERM): requeue it, to continue later from the checkpoint. Otherwise Slurm is ending it
# itself (scancel, scontrol requeue, pre-emption) and requeues it or not as it was told.
state="$(squeue -h -j "$task" -o %T 2>/dev/null)"
echo "[$(date +%FT%T)] slurm task $task exited with status $status; job state ${state:-unknown}" >>"$log"
if ((status == 143)) && [[ $state == RUNNING ]]; then
    scontrol requeue "$task" >>"$log" 2>&1 && echo "[$(date +%FT%T)] slurm task $task requeued" >>"$log"
fi
exit "$status"
EOF
}

# --slurm: print the sbatch script (--dry-run) or write it to LOG_DIR and submit it; prints how to follow the job.
slurm_submit() {
    if ((DRY_RUN)); then
        slurm_script
        return 0
    fi
    command -v sbatch >/dev/null || launch_die "--slurm needs sbatch on the PATH (is this a Slurm login node?)"
    local file job_id new_log_dir=0
    [[ -d $LOG_DIR ]] || new_log_dir=1
    mkdir -p "$LOG_DIR"
    file="$LOG_DIR/$(basename "$0" .sh)_$(date +%Y%m%d_%H%M%S).sbatch"
    slurm_script >"$file"
    if ! job_id="$(sbatch --parsable "$file" 2>&1)"; then
        rm -f "$file" # a refused job leaves nothing behind
        ((new_log_dir)) && rmdir "$LOG_DIR" 2>/dev/null
        launch_die "sbatch refused the job: $(echo "$job_id" | grep -m 1 . | sed 's/^sbatch: error: //')"
    fi
    job_id="${job_id%%;*}"
    printf '%s\n' "${COMMANDS[@]}" >>"$LOG_DIR/planned_runs.txt"
    cat <<EOF
submitted job array $job_id: ${#COMMANDS[@]} runs (sbatch script: $file)
logs:   $LOG_DIR/{env}__{exp_name}__{seed}.log; Slurm's own output: $LOG_DIR/slurm-${job_id}_N.out
watch:  squeue -j $job_id; when it has ended: sacct -j $job_id (where accounting is on)
report: $PYTHON $REPO_ROOT/benchmark/report.py runs --out results --planned $LOG_DIR/planned_runs.txt
        (it lists the runs that are not complete yet, and those that never started)
EOF
}
