#!/usr/bin/env bash
# Paper Fig. 2: DACERv2 and the DACER baseline on the multi-goal task with 4, 5 and 6 goals, then figure and table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

SEEDS="1 2 3" # ~6 min per DACERv2 run and ~10 per DACER run on one CPU core at the default budget
ENVS="MultiGoal4-v0 MultiGoal5-v0 MultiGoal6-v0"
TOTAL_TIMESTEPS=200000 # 10,000 iterations x 20 envs (the paper gives no budget): README "Results"
OUT_DIR="results/multigoal"
ETA="" # DACERv2's eta: empty = the script's default for MultiGoal

usage() {
    cat <<EOF
Usage: bash benchmark/multigoal.sh [OPTIONS] [-- TRAINING FLAGS...]

Train on the multi-goal task (paper Fig. 2), every env x seed x algorithm in its own process, each with
--total-timesteps $TOTAL_TIMESTEPS --preset short --save-model (the settings for runs this short; flags after --
override them).
Algorithms (run names use them as exp_name):
  dacerv2   DACERv2 (T = 5) with the script's MultiGoal eta (100; see README "Results"), or --eta
  dacer     the DACER baseline: --diffusion-steps 20 --q-grad-coef 0
Afterwards (also when some runs failed) the checkpoints under runs/ are evaluated with
  \$PYTHON benchmark/multigoal_report.py runs --out OUT
which writes OUT/multigoal.png (the 2 x 3 grid of Fig. 2) and OUT/multigoal.md (goals reached, success rate,
uniformity, min/max ratio, mean steps to the goal, path efficiency, mean return; beside the untrained networks
and uniform random actions).

Options:
  --envs "ENV ..."    multi-goal env ids (default: "$ENVS")
  --out DIR           where the figure and table go (default: $OUT_DIR)
  --eta ETA           DACERv2's Q-gradient coefficient (e.g. 1, paper Table 5 as reconstructed); DACER keeps 0
EOF
    launch_common_help
    cat <<EOF

Example: bash benchmark/multigoal.sh --seeds "1 2 3 4 5" --workers 2 -- --total-timesteps 6000000
EOF
}

# Take the options only this script has.
handle_option() {
    case "$1" in
        --envs) ENVS="$2" ;;
        --out) OUT_DIR="$2" ;;
        --eta) ETA="$2" ;;
        *) return 1 ;;
    esac
}

launch_parse_args "$@"
for env in $ENVS; do
    [[ $env =~ ^MultiGoal[456]?-v0$ ]] || launch_die "'$env' is not MultiGoal-v0 or MultiGoal{4,5,6}-v0"
done
[[ -z $ETA || $ETA =~ ^[0-9]+([.][0-9]+)?$ ]] || launch_die "--eta must be a non-negative number, got '$ETA'"
run_flags=(--total-timesteps "$TOTAL_TIMESTEPS" --preset short --save-model)
eta_flags=(${ETA:+--q-grad-coef "$ETA"})
for seed in $SEEDS; do
    for env in $ENVS; do
        add_job "$env" dacerv2 "$seed" "${eta_flags[@]}" "${run_flags[@]}"
        add_job "$env" dacer "$seed" --diffusion-steps 20 --q-grad-coef 0 "${run_flags[@]}"
    done
done
# launch_jobs exits when a run fails: run it in a subshell so that the runs that finished are still reported
status=0
(launch_jobs) || status=$?
if ((DRY_RUN || SLURM || status == 2)); then
    ((!SLURM || DRY_RUN || status)) || echo "when the job has ended: $PYTHON $REPO_ROOT/benchmark/multigoal_report.py runs --out $OUT_DIR"
    exit "$status"
fi
echo "evaluating the checkpoints: figure and table in $OUT_DIR/" >&2
report_status=0
"$PYTHON" "$REPO_ROOT/benchmark/multigoal_report.py" runs --out "$OUT_DIR" || report_status=$?
exit $((status ? status : report_status))
