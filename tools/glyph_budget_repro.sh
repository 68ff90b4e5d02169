#!/usr/bin/env bash
# Reruns of the chosen glyph budget model (tools/glyph_budget_warm.sh's budget-nested-b0.05: nested nets, budgets
# from 0.05, the body's 2 more epochs) that say what a training run's bits depend on (docs/BUDGETS.md, "Guarded
# budgets"), one lane after the other:
# - budget-nested-b0.05-again: the same settings on the same machine (weights identical to a run there before?);
# - budget-nested-b0.05-cbwr-avx2: the same under MKL_CBWR=AVX2 (MKL's AVX2 matrix kernels on any CPU);
# - budget-nested-b0.05-s1: seed 1 again (its first run's checkpoint was trained on another machine).
# Each is scored as budget_study.py scores any budget model, with and without the guard:
#   tools/glyph_budget_repro.sh [SWEEP=runs/glyph-sweep] [OUT=runs/repro]
#   hypersan study budget --budget runs/repro/budget-nested-b0.05-s1 [--guard] \
#       --family-from docs/ablation-runs/glyphs-seed0/budget-warm/nested-b0.05/budget_study.json \
#       --out runs/glyph-budget-warm/report-nested-b0.05-s1b[-guard]
source "$(dirname "$0")/glyph_body.sh" "${1:-runs/glyph-sweep}" "${2:-runs/repro}"
nested+=("loss.distill=0")
export CONFIG=configs/glyphs_budget.toml
run budget-nested-b0.05-again "${more[@]}" "${nested[@]}"
MKL_CBWR=AVX2 run budget-nested-b0.05-cbwr-avx2 "${more[@]}" "${nested[@]}"
run budget-nested-b0.05-s1 "${more[@]}" "${nested[@]}" train.seed=1
