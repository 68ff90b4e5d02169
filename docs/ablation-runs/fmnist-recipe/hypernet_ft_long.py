"""hypernet_ft_long on the recipe ablation's subsets (added after the main run): the hypernetwork's own nets + the
peer's 2,000-step fine-tune; its rows go in a step of their own, then the reports are rewritten."""
import dataclasses
from hypersan.io import atomic_write_json
from hypersan.research.ablate import Ablation, load_ablation_config
from hypersan.research.report import write_reports
cfg = load_ablation_config("configs/ablation_fmnist_recipe.toml")  # lists hypernet_ft_long
ab = Ablation(cfg, "runs/ablation-recipe", threads=2)
ab.eval_per_subset(0, gamma=4.0, methods=["hypernet_ft_long"])
atomic_write_json(ab.out / "ablation.json", dataclasses.asdict(cfg))
print(write_reports(ab.out, ab.all_rows(), ab.extras()))
