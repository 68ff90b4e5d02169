"""Research: ablations, baselines, benchmarks and their reports.

Modules: `report` (tables, plots and the headline figures from `results.csv`), `baselines` (Torch-Pruning peers,
fine-tuning, scratch nets), `bench` (latency of pruned vs. dense nets), `ablate` (the ablation runner).

Imports: everything below it (`training` and lower); nothing imports it but the command line.
"""
