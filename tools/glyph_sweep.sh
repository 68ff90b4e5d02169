#!/usr/bin/env bash
# The glyph study's training runs (docs/ABLATIONS.md, "Glyphs"): the width check (dense nets at 1/8, 1/4, 1/2 and
# full width), the hypernetwork at four values of gamma, and the budget-conditioned model (configs/glyphs_budget.toml)
# with and without in-place distillation, and with its nets nested across budgets (generator.budget_nested). An
# all-classes net pruned in training (every batch masked for the all-classes request) is configured in lane_b and
# was not run (budget).
# Two lanes of one thread each (small convolutions use two lanes better than one lane of two threads).
#   tools/glyph_sweep.sh [OUT=runs/glyph-sweep]
# Every run resumes where it stopped; a finished run (its log ends with the checkpoint) is skipped.
set -euo pipefail
out=${1:-runs/glyph-sweep}
mkdir -p "$out"
source "$(dirname "$0")/train_run.sh"   # run NAME [--set overrides...], into $out
dense=("subtasks.dense_share=1.0" "loss.gamma=0")  # every batch unmasked: a dense net
# every batch masked for the all-classes request (size 135 only), no held-out combinations
every="subtasks.size_weights=[$(printf '0,%.0s' $(seq 134))1]"
agnostic=("subtasks.dense_share=0" "$every" "subtasks.holdout_fraction=0")
lane_a() {
    while [ -n "${WAIT_A:-}" ] && kill -0 "$WAIT_A" 2>/dev/null; do sleep 20; done
    run dense-w16 "${dense[@]}"
    run hypernet-g2 loss.gamma=2
    run hypernet-g32 loss.gamma=32
    CONFIG=configs/glyphs_budget.toml run budget
    CONFIG=configs/glyphs_budget.toml run budget-nested generator.budget_nested=true   # nets nested across budgets
}
lane_b() {
    while [ -n "${WAIT_B:-}" ] && kill -0 "$WAIT_B" 2>/dev/null; do sleep 20; done
    run dense-w2 "${dense[@]}" "model.widths=[2,4,8]"
    run dense-w4 "${dense[@]}" "model.widths=[4,8,16]"
    run dense-w8 "${dense[@]}" "model.widths=[8,16,32]"
    run hypernet-g0.5 loss.gamma=0.5
    run hypernet-g8 loss.gamma=8
    CONFIG=configs/glyphs_budget.toml run budget-distill loss.distill=0.5   # in-place distillation
    # run agnostic-g8 "${agnostic[@]}" loss.gamma=8   # the all-classes net pruned in training: not run (budget)
}
lane_a & a=$!
lane_b & b=$!
wait $a; wait $b
