#!/usr/bin/env bash
# Budget-conditioned Fashion-MNIST from a trained body (docs/BUDGETS.md, "Started from the shipped body"): the
# budget model and the fixed-γ hypernetworks it is measured against, each started from the shipped fmnist model's
# backbone (50 epochs) and trained 3 more epochs at the same learning rate, so that every model of the comparison
# has had the same training. Each budget run states its settings, whatever configs/fmnist_budget.toml says today.
# budget-nested*: the same budget model with nets nested across budgets (generator.budget_nested), alone and with
# in-place distillation from the unmasked net, and the latter trained on budgets from 0.05 (not 0.02) up, with
# a second training seed.
#   tools/budget_warm.sh [OUT=runs/budget-warm]
#   hypersan study budget --budget runs/budget-warm/budget --fixed runs/budget-warm/hypernet-g{0.25,1,4} \
#       --dense runs/ablation/models/dense-g4-s0 --out runs/budget-warm/report
set -euo pipefail
out=${1:-runs/budget-warm}
mkdir -p "$out"
source "$(dirname "$0")/train_run.sh"
more=("train.epochs=3" "train.lr=0.02" "train.warmup_epochs=0.1" "train.eval_every=0" "train.init_from=fmnist")
lane_a() {
    CONFIG=configs/fmnist_budget.toml run budget "${more[@]}" generator.budget_nested=false loss.distill=0 \
        generator.budget_min=0.02
    CONFIG=configs/fmnist.toml run hypernet-g4 "${more[@]}" loss.gamma=4
    CONFIG=configs/fmnist_budget.toml run budget-nested "${more[@]}" generator.budget_nested=true loss.distill=0 \
        generator.budget_min=0.02
    CONFIG=configs/fmnist_budget.toml run budget-nested-d0.5-b0.05 "${more[@]}" generator.budget_nested=true \
        loss.distill=0.5 generator.budget_min=0.05
    CONFIG=configs/fmnist.toml run hypernet-g64 "${more[@]}" loss.gamma=64   # collapsed: 0.002 of the MACs
    CONFIG=configs/fmnist.toml run hypernet-g16 "${more[@]}" loss.gamma=16   # the family below 0.14 of the MACs
    CONFIG=configs/fmnist.toml run hypernet-g8 "${more[@]}" loss.gamma=8     # and between 0.04 and 0.14
}
lane_b() {
    CONFIG=configs/fmnist.toml run hypernet-g1 "${more[@]}" loss.gamma=1
    CONFIG=configs/fmnist.toml run hypernet-g0.25 "${more[@]}" loss.gamma=0.25
    CONFIG=configs/fmnist_budget.toml run budget-nested-d0.5 "${more[@]}" generator.budget_nested=true \
        loss.distill=0.5 generator.budget_min=0.02
    CONFIG=configs/fmnist.toml run hypernet-g0.02 "${more[@]}" loss.gamma=0.02   # and above 0.27
    CONFIG=configs/fmnist.toml run hypernet-g0.08 "${more[@]}" loss.gamma=0.08
    # the chosen budget model again with another training seed (same body)
    CONFIG=configs/fmnist_budget.toml run budget-nested-d0.5-b0.05-s1 "${more[@]}" generator.budget_nested=true \
        loss.distill=0.5 generator.budget_min=0.05 train.seed=1
}
lane_a & a=$!
lane_b & b=$!
wait $a; wait $b
