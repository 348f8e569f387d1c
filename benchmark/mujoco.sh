#!/usr/bin/env bash
# Paper Table 2: DACERv2 (and, with --algos, the DACER baseline) on the eight MuJoCo tasks x 5 seeds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

ENVS="Humanoid-v4 Ant-v4 HalfCheetah-v4 Walker2d-v4 InvertedDoublePendulum-v4 Hopper-v4 HumanoidStandup-v4 Swimmer-v4"
ALGOS="dacerv2"
ALGO_NAMES="dacerv2 dacerv2_short dacerv2_short_td dacer sac"  # the cases of algo_flags

usage() {
    cat <<EOF
Usage: bash benchmark/mujoco.sh [OPTIONS] [-- TRAINING FLAGS...]

Launch the paper's MuJoCo benchmark (Table 2): every env x seed x algorithm, each run in its own process.
Algorithms (run names use them as exp_name):
  dacerv2   DACERv2 with the paper's defaults (T = 5, per-task eta)
  dacerv2_short  DACERv2 with --preset short (ours, for short budgets; README "Implementation details")
  dacerv2_short_td  the same with --critic-loss td (plain TD critics instead of DSAC-T's; ours)
  dacer     the DACER baseline: --diffusion-steps 20 --q-grad-coef 0
  sac       Stable-Baselines3's SAC, benchmark/sac_baseline.py (pip install -r benchmark/requirements.txt); it
            takes the flags that both scripts have (env, budget, envs, warm-up, evaluation)

Options:
  --envs "ENV ..."    env ids (default: "$ENVS")
  --algos "A ..."     algorithms among: $ALGO_NAMES (default: "$ALGOS")
EOF
    launch_common_help
    cat <<EOF

Example: bash benchmark/mujoco.sh --envs "Hopper-v4 Walker2d-v4" --algos "dacerv2 dacer" --workers 4 -- --cuda
EOF
}

# Take the options only this script has.
handle_option() {
    case "$1" in
        --envs) ENVS="$2" ;;
        --algos) ALGOS="$2" ;;
        *) return 1 ;;
    esac
}

# Print the training flags of one algorithm (returns 1 for an unknown one).
algo_flags() {
    case "$1" in
        dacerv2) echo "" ;;
        dacerv2_short) echo "--preset short" ;;
        dacerv2_short_td) echo "--preset short --critic-loss td" ;;
        dacer) echo "--diffusion-steps 20 --q-grad-coef 0" ;;
        sac) echo "" ;;
        *) return 1 ;;
    esac
}

launch_parse_args "$@"
for algo in $ALGOS; do
    algo_flags "$algo" >/dev/null || launch_die "unknown algorithm '$algo' (choose from: $ALGO_NAMES)"
done
for seed in $SEEDS; do
    for env in $ENVS; do
        for algo in $ALGOS; do
            read -r -a flags <<<"$(algo_flags "$algo")"
            if [[ $algo == sac ]]; then
                add_script_job "$REPO_ROOT/benchmark/sac_baseline.py" "$env" "$algo" "$seed" "${flags[@]}"
            else
                add_job "$env" "$algo" "$seed" "${flags[@]}"
            fi
        done
    done
done
launch_jobs
