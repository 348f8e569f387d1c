#!/usr/bin/env bash
# Paper ablations: Fig. 4 (L_g, time weighting, diffusion steps; Walker2d), Table 3 (eta) and Fig. 13 (grad-Q norm);
# and our --q-grad-one-step option against the spec's all-step L_g (not in the paper, not run by default).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"

ENV="Walker2d-v4"
HUMANOID_ENV="Humanoid-v4"
PAPER_GROUPS="qgrad timeweight steps eta norm"
ALL_GROUPS="$PAPER_GROUPS onestep"
SELECTED_GROUPS="$PAPER_GROUPS"

usage() {
    cat <<EOF
Usage: bash benchmark/ablation.sh [OPTIONS] [-- TRAINING FLAGS...]

Launch the paper's ablations; each configuration has its own exp_name so that report.py groups them:
  group       env            exp_name                   training flags
  qgrad       --env          ablation_full              (paper defaults: T = 5, time weight, grad-Q norm, eta)
                             ablation_no_qgrad          --q-grad-coef 0
  timeweight  --env          ablation_full
                             ablation_no_time_weight    --no-time-weight
  steps       --env          ablation_T2                --diffusion-steps 2
                             ablation_full              (T = 5)
                             ablation_T10               --diffusion-steps 10
  eta         --humanoid-env ablation_eta_0.1           --q-grad-coef 0.1   (likewise 0.01, 0.001, 0.012, 0.008)
  norm        --humanoid-env ablation_eta_0.01          --q-grad-coef 0.01  (with grad-Q normalisation)
                             ablation_no_q_grad_norm    --q-grad-coef 0.01 --no-q-grad-norm
  onestep     --env          ablation_full
                             ablation_q_grad_one_step   --q-grad-one-step   (L_g on one random step per state)
A run shared by several groups (ablation_full, ablation_eta_0.01) is launched once.

Options:
  --env ENV           env of the qgrad, timeweight, steps and onestep groups, paper Fig. 4 (default: $ENV)
  --humanoid-env ENV  env of the eta and norm groups, paper Table 3 and Fig. 13 (default: $HUMANOID_ENV)
  --groups "G ..."    groups to run, among: $ALL_GROUPS (default: the paper's, "$PAPER_GROUPS")
EOF
    launch_common_help
}

# Take the options only this script has.
handle_option() {
    case "$1" in
        --env) ENV="$2" ;;
        --humanoid-env) HUMANOID_ENV="$2" ;;
        --groups) SELECTED_GROUPS="$2" ;;
        *) return 1 ;;
    esac
}

# Print the runs of one group as lines "ENV EXP_NAME [FLAGS...]" (returns 1 for an unknown group).
group_configs() {
    local eta
    case "$1" in
        qgrad) printf '%s\n' "$ENV ablation_full" "$ENV ablation_no_qgrad --q-grad-coef 0" ;;
        timeweight) printf '%s\n' "$ENV ablation_full" "$ENV ablation_no_time_weight --no-time-weight" ;;
        steps) printf '%s\n' "$ENV ablation_T2 --diffusion-steps 2" "$ENV ablation_full" \
            "$ENV ablation_T10 --diffusion-steps 10" ;;
        eta) for eta in 0.1 0.01 0.001 0.012 0.008; do
            echo "$HUMANOID_ENV ablation_eta_$eta --q-grad-coef $eta"
        done ;;
        norm) printf '%s\n' "$HUMANOID_ENV ablation_eta_0.01 --q-grad-coef 0.01" \
            "$HUMANOID_ENV ablation_no_q_grad_norm --q-grad-coef 0.01 --no-q-grad-norm" ;;
        onestep) printf '%s\n' "$ENV ablation_full" "$ENV ablation_q_grad_one_step --q-grad-one-step" ;;
        *) return 1 ;;
    esac
}

launch_parse_args "$@"
for group in $SELECTED_GROUPS; do
    group_configs "$group" >/dev/null || launch_die "unknown group '$group' (choose from: $ALL_GROUPS)"
done
for seed in $SEEDS; do
    for group in $SELECTED_GROUPS; do
        while read -r -a config; do
            add_job "${config[0]}" "${config[1]}" "$seed" "${config[@]:2}"
        done < <(group_configs "$group")
    done
done
launch_jobs
