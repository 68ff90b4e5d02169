#!/usr/bin/env bash
# The nested budget-conditioned glyph model trained with the monotony hinge (loss.budget_monotone; docs/BUDGETS.md,
# "The model" and "Glyphs, started from the body"): every image also runs at a larger budget, and its loss there
# may not exceed its loss at the smaller one. Same start and extra training as tools/glyph_budget_warm.sh (the
# sweep's dense body, 2 epochs at learning rate 0.02, budgets from 0.05), two hinge weights, one picked on
# validation. Then two runs without the pull from below (loss.budget_under = 0) and with a dearer channel
# (γ = 1, 4): a net grows with the budget only while the task loss pays for it, so past its own size a larger
# budget changes it by a few channels only. The fixed-γ family and the reference are glyph_budget_warm.sh's:
#   tools/glyph_budget_monotone.sh [SWEEP=runs/glyph-sweep] [OUT=runs/glyph-budget-warm]
#   python tools/budget_study.py --budget runs/glyph-budget-warm/budget-nested-b0.05-m1 \
#       --fixed runs/glyph-budget-warm/hypernet-g{2,4,8,12,16,20,24,32} --dense runs/glyph-warm/dense-w16-e6 \
#       --out runs/glyph-budget-warm/report-nested-b0.05-m1
source "$(dirname "$0")/glyph_body.sh" "$@"
nested+=("loss.distill=0")
export CONFIG=configs/glyphs_budget.toml
run budget-nested-b0.05-m1 "${more[@]}" "${nested[@]}" loss.budget_monotone=1 &
a=$!
run budget-nested-b0.05-m4 "${more[@]}" "${nested[@]}" loss.budget_monotone=4 &
b=$!
wait $a; wait $b
run budget-nested-b0.05-u0-g1 "${more[@]}" "${nested[@]}" loss.budget_under=0 loss.gamma=1 &
a=$!
run budget-nested-b0.05-u0-g4 "${more[@]}" "${nested[@]}" loss.budget_under=0 loss.gamma=4 &
b=$!
wait $a; wait $b
