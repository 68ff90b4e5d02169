#!/usr/bin/env bash
# The nested budget-conditioned glyph model trained with the agreement term (loss.budget_agree; docs/BUDGETS.md,
# "Holding predictions across budgets"): every image also runs at a larger budget, and the two nets' predictions
# over its subtask's classes are pulled together (a symmetric KL), so that a larger budget decides fewer images
# differently. Same start and extra training as tools/glyph_budget_warm.sh (the sweep's dense body, 2 epochs at
# learning rate 0.02, budgets from 0.05), two weights, one picked on validation. The fixed-γ family and the
# reference are glyph_budget_warm.sh's; a study that scored them stands in for their checkpoints:
#   tools/glyph_budget_agree.sh [SWEEP=runs/glyph-sweep] [OUT=runs/glyph-budget-warm]
#   python tools/budget_study.py --budget runs/glyph-budget-warm/budget-nested-b0.05-a1 \
#       --family-from docs/ablation-runs/glyphs-seed0/budget-warm/nested-b0.05/budget_study.json \
#       --out runs/glyph-budget-warm/report-nested-b0.05-a1
source "$(dirname "$0")/glyph_body.sh" "$@"
nested+=("loss.distill=0")
export CONFIG=configs/glyphs_budget.toml
run budget-nested-b0.05-a1 "${more[@]}" "${nested[@]}" loss.budget_agree=1 &
a=$!
run budget-nested-b0.05-a4 "${more[@]}" "${nested[@]}" loss.budget_agree=4 &
b=$!
wait $a; wait $b
