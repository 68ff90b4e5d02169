# Sourced by tools/glyph_budget_warm.sh and tools/glyph_budget_monotone.sh, with their arguments: the models that
# start from the glyph sweep's full-width dense net. Sets sweep and out (arguments 1 and 2), the run() step of
# train_run.sh, `more` (2 more epochs at learning rate 0.02 from that net, alike for every model) and `nested`
# (nets nested across budgets, budgets from 0.05).
set -euo pipefail
sweep=$(realpath "${1:-runs/glyph-sweep}")
out=${2:-runs/glyph-budget-warm}
[ -f "$sweep/dense-w16/done" ] || { echo "error: $sweep/dense-w16 is not finished (tools/glyph_sweep.sh)"; exit 1; }
mkdir -p "$out"
source "$(dirname "${BASH_SOURCE[0]}")/train_run.sh"
more=("train.epochs=2" "train.lr=0.02" "train.warmup_epochs=0.1" "train.init_from=$sweep/dense-w16")
nested=("generator.budget_nested=true" "generator.budget_min=0.05")
