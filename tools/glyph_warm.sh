#!/usr/bin/env bash
# The glyph study's third round (docs/ABLATIONS.md, "Third round"): the budget-conditioned model started from the
# finished full-width dense net (train.init_from) and trained 2 more epochs, with and without in-place
# distillation; and, so that the class-agnostic curve gets the same extra training, each dense net of the sweep
# trained 2 more epochs from its own weights at the same learning rate. The sweep's dense nets are linked in, so
# the curve holds both the 4-epoch and the 6-epoch nets.
#   tools/glyph_warm.sh [SWEEP=runs/glyph-sweep] [OUT=runs/glyph-warm]
#   hypersan study glyphs --runs runs/glyph-warm --out runs/glyph-study-warm --peer-steps 0
set -euo pipefail
sweep=$(realpath "${1:-runs/glyph-sweep}")
out=${2:-runs/glyph-warm}
mkdir -p "$out"
for w in 2 4 8 16; do
    [ -f "$sweep/dense-w$w/done" ] || { echo "error: $sweep/dense-w$w is not finished (tools/glyph_sweep.sh)"; exit 1; }
    [ -e "$out/dense-w$w" ] || ln -s "$sweep/dense-w$w" "$out/dense-w$w"
done
source "$(dirname "$0")/train_run.sh"
more=("train.epochs=2" "train.lr=0.02" "train.warmup_epochs=0.1")   # the extra epochs, alike for every net
dense=("subtasks.dense_share=1.0" "loss.gamma=0")
widths() { case $1 in 2) echo "model.widths=[2,4,8]";; 4) echo "model.widths=[4,8,16]";;
                      8) echo "model.widths=[8,16,32]";; 16) echo "model.widths=[16,32,64]";; esac; }
lane_a() {
    CONFIG=configs/glyphs_budget.toml run budget-warm "${more[@]}" "train.init_from=$sweep/dense-w16"
    run dense-w16-e6 "${dense[@]}" "${more[@]}" "$(widths 16)" "train.init_from=$sweep/dense-w16"
}
lane_b() {
    for w in 2 4 8; do run "dense-w$w-e6" "${dense[@]}" "${more[@]}" "$(widths "$w")" "train.init_from=$sweep/dense-w$w"; done
    CONFIG=configs/glyphs_budget.toml run budget-warm-distill "${more[@]}" "train.init_from=$sweep/dense-w16" \
        loss.distill=0.5
}
lane_a & a=$!
lane_b & b=$!
wait $a; wait $b
