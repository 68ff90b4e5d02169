"""The specializing recipe: loss shares, negatives at the natural rate, MAC-priced sparsity, micro-batches of one
class set, the sandwich rule, distillation over the subset (docs/RECIPE.md)."""
import json

import pytest
import torch
import torch.nn.functional as F

from hypersan.config import ConfigError, load_config
from hypersan.data.subtasks import Holdout, SubtaskSampler, microbatch_sizes, sample_grouped
from hypersan.nn.backbones import build_backbone
from hypersan.nn.generators import mean_utility
from hypersan.nn.losses import output_weights, subset_kl, subset_share_of_beta, subtask_weighted_bce
from hypersan.prune.budget import MacModel
from hypersan.training.train import train

from .conftest import ROOT, needs_fmnist

TINY = ["data.train_limit=512", "data.test_limit=256", "data.val_size=128", "train.epochs=2", "train.batch_size=64",
        "train.eval_every=0", "train.eval_subtasks=2"]
RECIPE = ["loss.subset_share=1.0", "loss.sparsity_price=\"macs\"", "subtasks.sampling=\"natural\"",
          "subtasks.sets_per_batch=4", "train.sandwich=true", "loss.distill=0.5", "loss.distill_over=\"subset\""]


def test_share_of_beta_is_the_shares_the_docs_state():
    assert subset_share_of_beta(4.0, 2, 135) == pytest.approx(8 / 141)
    assert subset_share_of_beta(4.0, 10, 135) == pytest.approx(40 / 165)
    assert subset_share_of_beta(4.0, 2, 10) == pytest.approx(0.5)


def test_a_share_reproduces_the_beta_weighting_it_stands_for():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(6, 9, generator=g), torch.randint(0, 9, (6,), generator=g)
    in_task = torch.zeros(6, 9, dtype=torch.bool)
    in_task[:, [1, 4, 7]] = True  # one size for every row, so one share stands for beta
    share = subset_share_of_beta(5.0, 3, 9)
    by_beta = subtask_weighted_bce(logits, labels, in_task, 5.0)
    by_share = subtask_weighted_bce(logits, labels, in_task, 123.0, share=share)  # beta is not read
    assert torch.allclose(by_beta, by_share, atol=1e-6)


def test_share_weights_sum_to_the_class_count_and_split_as_asked():
    in_task = torch.tensor([[True, False, False, False, False], [True, True, False, False, False],
                            [True, True, True, True, True]])
    w = output_weights(in_task, beta=4.0, share=0.75)
    assert torch.allclose(w.sum(dim=1), torch.full((3,), 5.0))
    assert (w[0, 0] / 5).item() == pytest.approx(0.75) and (w[1, :2].sum() / 5).item() == pytest.approx(0.75)
    assert torch.equal(w[2], torch.ones(5))  # every class in the subtask: nothing outside to share with
    top = output_weights(in_task, beta=4.0, share=1.0)
    assert torch.equal(top[0, 1:], torch.zeros(4)) and torch.equal(top[1, 2:], torch.zeros(3))


def test_at_share_one_outputs_outside_the_subtask_get_no_gradient_and_negatives_stay():
    logits = torch.zeros(2, 4, requires_grad=True)
    labels = torch.tensor([0, 3])  # the second image is of another class: a negative on the subtask's outputs
    in_task = torch.tensor([[True, True, False, False], [True, True, False, False]])
    subtask_weighted_bce(logits, labels, in_task, 4.0, share=1.0).backward()
    assert torch.equal(logits.grad[:, 2:], torch.zeros(2, 2))
    assert (logits.grad[1, :2] > 0).all()  # target 0 on the subtask's outputs: pushed down


def test_size_power_one_weighs_each_subtask_output_one():
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(3, 6, generator=g), torch.tensor([0, 1, 5])
    in_task = torch.zeros(3, 6, dtype=torch.bool)
    in_task[0, :2] = True  # a pair
    in_task[1, :4] = True  # four classes
    in_task[2, :] = True  # every class
    per = F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, 6).float(), reduction="none")
    plain = (per * in_task).sum(dim=1)  # each subtask output weighs 1, the rest 0
    scaled = subtask_weighted_bce(logits, labels, in_task, 4.0, share=1.0, reduce=False, size_power=1.0)
    assert torch.allclose(scaled, plain, atol=1e-6)
    half = subtask_weighted_bce(logits, labels, in_task, 4.0, share=1.0, reduce=False, size_power=0.5)
    flat = subtask_weighted_bce(logits, labels, in_task, 4.0, share=1.0, reduce=False)
    assert torch.allclose(half, flat * torch.tensor([2 / 6, 4 / 6, 1.0]).sqrt(), atol=1e-6)
    assert torch.allclose(half[2], flat[2])  # the all-classes request keeps its scale


def test_subset_kl_reads_the_subtask_classes_only():
    a = torch.tensor([[1.0, 2.0, 50.0]])
    b = torch.tensor([[1.0, 2.0, -50.0]])
    in_task = torch.tensor([[True, True, False]])
    assert subset_kl(a, b, in_task).item() == pytest.approx(0.0, abs=1e-6)
    c = torch.tensor([[2.0, 1.0, 0.0]])
    p = torch.softmax(torch.tensor([1.0, 2.0]), 0)
    q = torch.softmax(torch.tensor([2.0, 1.0]), 0)
    assert subset_kl(c, a, in_task).item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)


def test_subset_distillation_adds_the_weighted_kl():
    g = torch.Generator().manual_seed(2)
    logits, teacher = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    labels = torch.randint(0, 6, (4,), generator=g)
    in_task = torch.rand(4, 6, generator=g) > 0.4
    in_task[:, 0] = True
    hard = subtask_weighted_bce(logits, labels, in_task, 3.0, reduce=False, share=0.9)
    got = subtask_weighted_bce(logits, labels, in_task, 3.0, teacher, 0.25, reduce=False, share=0.9,
                               distill_over="subset")
    assert torch.allclose(got, 0.75 * hard + 0.25 * 6 * subset_kl(logits, teacher, in_task), atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet", "vgg"])
def test_channel_prices_are_the_mac_derivative_normalised_to_a_mean_of_one(arch):
    bb = build_backbone({"arch": arch, "in_channels": 1, "num_classes": 10, "widths": [8, 16], "blocks": [1, 1],
                         "mean": [0.5], "std": [0.5]})
    mac = MacModel(bb, (1, 16, 16))
    prices = mac.prices()
    sizes = mac.sizes
    assert sum(prices[n] * sizes[n] for n in sizes) / sum(sizes.values()) == pytest.approx(1.0)
    # a channel's price is the MACs lost with it (the polynomial is bilinear: exact for one channel, unless a
    # site feeds itself), relative to the others
    lost = {n: mac.dense - mac({**sizes, n: sizes[n] - 1}, 10) for n in sizes}
    first = next(iter(sizes))
    for n in sizes:
        assert prices[n] / prices[first] == pytest.approx(lost[n] / lost[first], rel=1e-6)
    assert max(prices.values()) > 2 * min(prices.values())  # early, wide-image channels cost more


def test_priced_sparsity_weighs_each_site_by_its_price():
    from hypersan.nn.backbones import Site
    sites = [Site("a", 2, "utility"), Site("b", 4, "utility"), Site("a.in", 2, "scaling")]
    raw = {"a": torch.tensor([[1.0, 1.0]]), "b": torch.tensor([[1.0, 0.0, 0.0, 1.0]]), "a.in": torch.ones(1, 2)}
    assert mean_utility(raw, sites).item() == pytest.approx(4 / 6)
    assert mean_utility(raw, sites, {"a": 3.0, "b": 0.5}).item() == pytest.approx((3 * 2 + 0.5 * 2) / 6)


def test_natural_sampling_meets_negatives_at_the_rate_of_use():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (20000,), generator=gen)
    natural = SubtaskSampler(10, list(range(10)), [0, 1], 0.8, Holdout(10), "natural")  # pairs only
    own = SubtaskSampler(10, list(range(10)), [0, 1], 0.8, Holdout(10), "own")
    rate = lambda s: s.sample(labels, gen)[torch.arange(len(labels)), labels].float().mean().item()  # noqa: E731
    assert rate(natural) == pytest.approx(0.2, abs=0.01)  # |T| / |C|
    assert rate(own) == pytest.approx(0.8 + 0.2 * 0.2, abs=0.01)  # else a random pair holds it 2 times in 10
    with pytest.raises(ValueError, match="natural"):
        SubtaskSampler(10, list(range(10)), [1], 0.8, Holdout(10), "blind")


def test_the_size_tail_reaches_every_size_up_to_all_classes():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 12, (6000,), generator=gen)
    short = SubtaskSampler(12, list(range(12)), [1, 1], 0.8, Holdout(12), "natural")
    tail = SubtaskSampler(12, list(range(12)), [1, 1], 0.8, Holdout(12), "natural", size_tail=0.5)
    assert short.size_probs.tolist() == [0.5, 0.5] + [0.0] * 10
    assert tail.size_probs.tolist() == pytest.approx([1 / 7, 1 / 7] + [0.5 / 7] * 10)
    sizes = tail.sample(labels, gen).sum(1)
    assert sizes.max().item() == 12 and set(sizes.unique().tolist()) == set(range(1, 13))  # all classes too
    assert short.sample(labels, gen).sum(1).max().item() == 2


def test_one_class_set_per_micro_batch():
    assert microbatch_sizes(10, 4) == [3, 3, 2, 2] and microbatch_sizes(3, 4) == [1, 1, 1]
    sampler = SubtaskSampler(10, list(range(10)), [1, 1, 1], 0.8, Holdout(10), "natural")
    rows = sample_grouped(sampler, 10, 4, torch.Generator().manual_seed(0))
    start = 0
    for n in microbatch_sizes(10, 4):
        assert (rows[start:start + n] == rows[start]).all()
        start += n
    assert len({tuple(r.tolist()) for r in rows}) > 1
    with pytest.raises(ValueError, match="natural"):
        sample_grouped(SubtaskSampler(10, list(range(10)), [1], 0.8, Holdout(10), "own"), 10, 4,
                       torch.Generator())


@pytest.mark.parametrize("over, match", [
    (["subtasks.sets_per_batch=4"], "natural"),
    (["subtasks.sampling=\"natural\"", "subtasks.sets_per_batch=999"], "at least one image"),
    (["train.sandwich=true", "generator.budget=true"], "sandwich"),
    (["loss.sparsity_price=\"flat\""], "sparsity_price"),
    (["loss.distill_over=\"some\""], "distill_over"),
    (["subtasks.sampling=\"blind\""], "subtasks.sampling"),
    (["loss.subset_share=1.5"], "subset_share"),
])
def test_recipe_settings_refuse_what_cannot_work(over, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ROOT / "configs" / "tiny.toml", over)


@needs_fmnist
def test_the_recipe_trains_and_resumes_as_an_uninterrupted_run(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.toml", TINY + RECIPE)
    full = train(cfg, tmp_path / "full", log=lambda m: None)
    train(cfg, tmp_path / "part", log=lambda m: None, stop_after_epoch=1)
    resumed = train(cfg, tmp_path / "part", resume=True, log=lambda m: None)
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["loss"]["subset_share"] == 1.0 and saved["train"]["sandwich"] is True
    # each switch changes what is trained: the recipe's weights differ from the legacy run's
    legacy = train(load_config(ROOT / "configs" / "tiny.toml", TINY), tmp_path / "legacy", log=lambda m: None)
    name = next(k for k in a if k.startswith("backbone") and k.endswith("weight"))
    assert not torch.equal(legacy.state_dict()[name], a[name])


@needs_fmnist
def test_a_run_saved_before_the_recipe_keys_resumes_with_the_legacy_recipe(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.toml", TINY)
    train(cfg, tmp_path / "run", log=lambda m: None, stop_after_epoch=1)
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    for section, key in (("loss", "subset_share"), ("loss", "sparsity_price"), ("loss", "distill_over"),
                         ("subtasks", "sampling"), ("subtasks", "sets_per_batch"), ("train", "sandwich"),
                         ("subtasks", "size_tail"), ("model", "scaling")):
        del saved[section][key]
    path.write_text(json.dumps(saved))
    train(cfg, tmp_path / "run", resume=True, log=lambda m: None)
    with pytest.raises(ConfigError, match="subset_share"):
        train(load_config(ROOT / "configs" / "tiny.toml", TINY + ["loss.subset_share=1.0"]), tmp_path / "run",
              resume=True, log=lambda m: None)
