#!/usr/bin/env bash
# Remedies for accuracy that falls as the budget rises, on the nested budget-conditioned glyph model
# (docs/BUDGETS.md, "The model", "Glyphs, started from the body" and "Holding answers across budgets"). Same start
# and extra training as tools/glyph_budget_warm.sh (the sweep's dense body, 2 epochs at learning rate 0.02,
# budgets from 0.05); each pair of runs side by side, one picked on validation:
# - the monotony hinge (loss.budget_monotone = 1, 4): every image also runs at a larger budget, and its loss there
#   may not exceed its loss at the smaller one;
# - no pull from below (loss.budget_under = 0) and a dearer channel (γ = 1, 4): a net grows with the budget only
#   while the task loss pays for it, so past its own size a larger budget changes it by a few channels only;
# - the agreement term (loss.budget_agree = 1, 4): the two budgets' answers are pulled together.
# The fixed-γ family and the reference are glyph_budget_warm.sh's; a study that scored them stands in for their
# checkpoints:
#   tools/glyph_budget_monotone.sh [SWEEP=runs/glyph-sweep] [OUT=runs/glyph-budget-warm]
#   hypersan study budget --budget runs/glyph-budget-warm/budget-nested-b0.05-a1 \
#       --family-from docs/ablation-runs/glyphs-seed0/budget-warm/nested-b0.05/budget_study.json \
#       --out runs/glyph-budget-warm/report-nested-b0.05-a1
source "$(dirname "$0")/glyph_body.sh" "$@"
nested+=("loss.distill=0")
export CONFIG=configs/glyphs_budget.toml
pair() {  # NAME1 OVERRIDES1 NAME2 OVERRIDES2: two runs side by side (overrides: space-separated, word-split)
    # shellcheck disable=SC2086
    run "$1" "${more[@]}" "${nested[@]}" $2 &
    local a=$!
    # shellcheck disable=SC2086
    run "$3" "${more[@]}" "${nested[@]}" $4 &
    local b=$!
    wait $a; wait $b
}
pair budget-nested-b0.05-m1 "loss.budget_monotone=1" budget-nested-b0.05-m4 "loss.budget_monotone=4"
pair budget-nested-b0.05-u0-g1 "loss.budget_under=0 loss.gamma=1" \
    budget-nested-b0.05-u0-g4 "loss.budget_under=0 loss.gamma=4"
pair budget-nested-b0.05-a1 "loss.budget_agree=1" budget-nested-b0.05-a4 "loss.budget_agree=4"
