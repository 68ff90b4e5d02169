#!/usr/bin/env bash
# The budget-conditioned glyph model in Fashion-MNIST's protocol (docs/BUDGETS.md, "Glyphs, started from the
# body"): every model of the comparison starts from the sweep's finished full-width dense net (train.init_from)
# and trains 2 more epochs alike (learning rate 0.02), the budget models and the fixed-γ family they are
# measured against. The budget models nest their nets across budgets (generator.budget_nested) and train on
# budgets from 0.05, with and without in-place distillation from the unmasked net. The non-nested budget models
# with the same extra training are tools/glyph_warm.sh's budget-warm and budget-warm-distill.
#   tools/glyph_budget_warm.sh [SWEEP=runs/glyph-sweep] [OUT=runs/glyph-budget-warm]
#   hypersan study budget --budget runs/glyph-budget-warm/budget-nested-d0.5-b0.05 \
#       --fixed runs/glyph-budget-warm/hypernet-g{2,4,8,12,16,20,24,32} --dense runs/glyph-warm/dense-w16-e6 \
#       --out runs/glyph-budget-warm/report-nested-d0.5-b0.05
source "$(dirname "$0")/glyph_body.sh" "$@"
lane_a() {
    CONFIG=configs/glyphs_budget.toml run budget-nested-d0.5-b0.05 "${more[@]}" "${nested[@]}" loss.distill=0.5
    run hypernet-g2 "${more[@]}" loss.gamma=2
    run hypernet-g8 "${more[@]}" loss.gamma=8
    run hypernet-g16 "${more[@]}" loss.gamma=16   # the family between γ = 8 (0.21 of the MACs) and 32 (0.003)
    run hypernet-g20 "${more[@]}" loss.gamma=20   # γ = 16 lands at 0.10: the family's point near the 0.08 budget
    CONFIG=configs/glyphs_budget.toml run budget-nested-b0.05-s2 "${more[@]}" "${nested[@]}" loss.distill=0 \
        train.seed=2   # more training seeds: how much the rising share moves from run to run
    run hypernet-g20-s1 "${more[@]}" loss.gamma=20 train.seed=1   # the family's small end, a second seed
    CONFIG=configs/glyphs_budget.toml run budget-nested-b0.05-s4 "${more[@]}" "${nested[@]}" loss.distill=0 \
        train.seed=4   # two more seeds for the guard's spread over runs (docs/BUDGETS.md, "Guarded budgets")
}
lane_b() {
    CONFIG=configs/glyphs_budget.toml run budget-nested-b0.05 "${more[@]}" "${nested[@]}" loss.distill=0
    CONFIG=configs/glyphs_budget.toml run budget-nested-b0.05-s1 "${more[@]}" "${nested[@]}" loss.distill=0 \
        train.seed=1   # the model chosen on validation, a second training seed
    run hypernet-g4 "${more[@]}" loss.gamma=4     # 0.42 of the MACs: started from a dense body, the nets stay wide
    run hypernet-g32 "${more[@]}" loss.gamma=32   # so the family's small end takes a larger γ (0.5 is not run)
    run hypernet-g12 "${more[@]}" loss.gamma=12
    run hypernet-g24 "${more[@]}" loss.gamma=24
    CONFIG=configs/glyphs_budget.toml run budget-nested-b0.05-s3 "${more[@]}" "${nested[@]}" loss.distill=0 \
        train.seed=3
    run hypernet-g24-s1 "${more[@]}" loss.gamma=24 train.seed=1
    CONFIG=configs/glyphs_budget.toml run budget-nested-b0.05-s5 "${more[@]}" "${nested[@]}" loss.distill=0 \
        train.seed=5
}
lane_a & a=$!
lane_b & b=$!
wait $a; wait $b
