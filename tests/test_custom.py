"""`[model] arch = "custom"`: a user's own network (tests/models, no hypersan code inside) trained subtask-adaptively
through hooks, pruned by the engine (pruned == masked), exported and reloaded from its factory in a fresh process."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from hypersan.config import ConfigError, load_config
from hypersan.data.datasets import DatasetError, save_folder_dataset

from .conftest import PATTERN_CLASSES as CLASSES
from .conftest import ROOT
from .conftest import pattern_images as _images

tp = pytest.importorskip("torch_pruning")

from hypersan.nn.custom import load_factory, make_network  # noqa: E402
from hypersan.nn.graph import GraphError  # noqa: E402
from hypersan.prune.engine import vector_block  # noqa: E402
from hypersan.prune.metrics import kept_widths  # noqa: E402

FACTORIES = {"resnet18": ("tests.models.resnet18:build", "{in_channels = 3, width = 4}"),
             "mobilenet": ("tests.models.mobilenet:build", "{in_channels = 3, width = 4}"),
             "densenet": ("tests.models.densenet:build", "{in_channels = 3, growth = 4}")}


def _config(tmp_path, model: str, *extra):
    folder = tmp_path / "data"
    if not folder.exists():
        save_folder_dataset(folder, CLASSES, _images(96, 0), _images(32, 1))
    factory, kwargs = FACTORIES[model]
    return load_config(None, [
        'data.dataset="folder"', f'data.data_dir="{folder}"', "data.val_size=16", 'model.arch="custom"',
        f'model.factory="{factory}"', f"model.kwargs={kwargs}", "generator.hidden=16", "train.epochs=1",
        "train.batch_size=32", "train.eval_every=0", "train.progress=false", "train.threads=2", "calib.batches=1",
        "calib.batch_size=32", "subtasks.size_weights=[1, 1, 1]", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(model): a trained custom model's engine (one per model for the module), its generator then
    randomized so that its masks drop channels."""
    from hypersan.prune.engine import PruningEngine
    from hypersan.training.train import train

    engines = {}

    def get(model: str):
        if model not in engines:
            tmp = tmp_path_factory.mktemp(model)
            train(_config(tmp, model), tmp / "run", log=lambda m: None)
            engine = PruningEngine.from_pretrained(tmp / "run")
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in engine.model.generator.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)  # utilities |v| around the threshold 0.1
            engines[model] = engine
        return engines[model]
    return get


@pytest.mark.parametrize("model", list(FACTORIES))
def test_a_custom_network_trains_and_its_pruned_net_equals_the_masked_one(trained, model):
    engine = trained(model)
    assert engine.model.backbone.arch["arch"] == "custom"
    x = torch.from_numpy(_images(8, 2)[0]).float() / 255
    for classes in (["circle", "cross"], ["square", "cross", "stripes"]):
        idx = [CLASSES.index(c) for c in classes]
        net = engine.subnet(classes, round_to=0)  # the exact widths
        assert net.classes == classes and net.channels_last  # its forward gives the same outputs channels-last
        widths = kept_widths(engine.masks(tuple(idx), round_to=0)[0], engine.model.sites)
        full = engine.model.backbone.arch["site_widths"]
        assert any(widths[g] < full[g] for g in full), "the randomized generator should drop channels"
        assert engine.cost(net)["mac_ratio"] < 1
        with torch.no_grad():
            pruned = net(x)
        masked = engine.predict(x, classes, round_to=0)[:, idx]
        assert torch.allclose(pruned, masked, atol=1e-4), (pruned - masked).abs().max()
        # the masked form as a plain net (physical=False): the dense widths, its masked channels zeroed
        zeroed = engine.subnet(classes, physical=False, round_to=0)
        assert zeroed.arch["site_widths"] == full and zeroed.classes == classes
        assert engine.cost(zeroed)["mac_ratio"] > 0.99  # the dense net's cost, less the head's cut rows
        with torch.no_grad():
            assert torch.allclose(zeroed(x), masked, atol=1e-4), (zeroed(x) - masked).abs().max()
        # by default a custom network's widths are rounded up to the CPU's vector block, in the net and the
        # masked module alike
        block = vector_block()
        default = engine.subnet(classes)
        assert all(w % block == 0 or w == full[g] for g, w in default.arch["site_widths"].items())
        assert all(default.arch["site_widths"][g] >= widths[g] for g in full)
        with torch.no_grad():
            assert torch.allclose(default(x), engine.predict(x, classes)[:, idx], atol=1e-4)


def test_the_default_rounding_is_the_cpus_vector_block_for_custom_networks_only(trained):
    from hypersan.prune.engine import PruningEngine

    engine = trained("mobilenet")
    assert engine.round_multiple(None) == engine.round_multiple("auto") == vector_block() in (8, 16)
    assert engine.round_multiple(0) == 0 and engine.round_multiple(4) == 4
    with pytest.raises(ValueError, match="'auto'"):
        engine.round_multiple("fast")
    assert PruningEngine.from_pretrained("fmnist_b16").round_multiple(None) == 0  # built-ins: the exact widths


def test_a_custom_networks_exports_load_in_a_fresh_process(trained, tmp_path):
    onnx = pytest.importorskip("onnx")
    x = torch.from_numpy(_images(4, 3)[0]).float() / 255
    np.save(tmp_path / "x.npy", x.numpy())
    want, arts = {}, {}
    for model in FACTORIES:
        engine = trained(model)
        arts[model] = tmp_path / model
        summary = engine.export(["circle", "cross"], arts[model], ["safetensors", "pt2", "onnx"])
        assert summary["classes"] == ["circle", "cross"] and 0 < summary["mac_ratio"] < 1, model
        # the net runs channels-last in eager PyTorch; the ONNX export traces it in the default layout, where its
        # ONNX graph has no shape arithmetic (traced channels-last, the MobileNet's grew Shape, Range, Gather, ...)
        net = engine.subnet(["circle", "cross"])
        assert net.channels_last, model
        ops = {n.op_type for n in onnx.load(str(arts[model] / "model.onnx")).graph.node}
        assert not ops & {"Shape", "Range", "Gather"}, (model, ops)
        with torch.no_grad():
            want[model] = net(x)
    # every model's three files, loaded in one fresh process
    code = f"""
import json, numpy as np, torch, onnxruntime
from hypersan.deploy.export import load_subnet
x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))
got = {{}}
for model, art in {json.dumps({m: str(a) for m, a in arts.items()})}.items():
    net = load_subnet(art)
    a = net(x).detach()
    b = torch.export.load(art + '/model.pt2').module()(x).detach()
    s = onnxruntime.InferenceSession(art + '/model.onnx', providers=["CPUExecutionProvider"])
    c = s.run(None, {{s.get_inputs()[0].name: x.numpy()}})[0]
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    got[model] = {{"classes": net.classes, "a": a.tolist(), "b": b.tolist(), "c": c.tolist(), "bns": bns}}
print(json.dumps(got))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    got_all = json.loads(r.stdout.strip().splitlines()[-1])
    for model in FACTORIES:
        engine, got, art = trained(model), got_all[model], arts[model]
        assert got["classes"] == ["circle", "cross"], model
        arch = json.loads((art / "config.json").read_text())["arch"]
        dense_bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in engine.model.backbone.net.modules())
        if model == "densenet":  # pre-activation: no BN follows a conv alone, so none is folded
            assert arch["folded"] == [] and got["bns"] == dense_bns
        else:  # exports fold every BN that follows a conv alone: the rebuilt net has none left
            assert len(arch["folded"]) == dense_bns and got["bns"] == 0, model
        for key in ("a", "b", "c"):
            assert torch.allclose(torch.tensor(got[key]), want[model], atol=1e-5), (model, key)
        if arch["folded"]:  # an artifact whose folded pairs the network does not have is refused, with the reason
            from hypersan.deploy.export import load_subnet
            from hypersan.io import ArtifactError

            cfg_path = art / "config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["arch"]["folded"][0][0] = "no.such.conv"
            cfg_path.write_text(json.dumps(cfg))
            with pytest.raises(ArtifactError, match="folds BN into convs"):
                load_subnet(art)


def test_bad_factories_and_configs_are_clear_errors(tmp_path):
    with pytest.raises(GraphError, match="'package.module:function'"):
        load_factory("tests.models.resnet18.build")
    with pytest.raises(GraphError, match="cannot be imported"):
        load_factory("no_such_package_here.models:build")
    with pytest.raises(GraphError, match="has no 'nope'"):
        load_factory("tests.models.resnet18:nope")
    with pytest.raises(GraphError, match="not an nn.Module"):
        make_network("builtins:dict", {}, 3)  # returns {"num_classes": 3}
    with pytest.raises(GraphError, match="num_classes = 5 but the data set has 4"):
        make_network("tests.models.resnet18:build", {"num_classes": 5}, 4)
    with pytest.raises(ConfigError, match="model.factory"):
        _config(tmp_path, "resnet18", 'model.factory=""')
    with pytest.raises(ConfigError, match="read with model.arch = 'custom' only"):
        _config(tmp_path, "resnet18", 'model.arch="resnet"')
    with pytest.raises(ConfigError, match="model.scaling = false is read with model.arch = 'custom' only"):
        load_config(None, ["model.scaling=false"])


def test_a_custom_model_is_served(trained, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from hypersan.serve.app import create_app

    engine = trained("mobilenet")
    with TestClient(create_app(engine, cache_dir=tmp_path / "cache", max_images=8)) as c:
        r = c.post("/v1/subnets", json={"classes": ["cross", "circle"]})
        assert r.status_code == 201, r.text
        info = r.json()
        assert info["classes"] == ["circle", "cross"] and 0 < info["mac_ratio"] < 1
        x = torch.from_numpy(_images(2, 4)[0])
        with torch.no_grad():
            want = torch.sigmoid(engine.subnet(["circle", "cross"])(x.float() / 255))
        r = c.post("/v1/predict", json={"subnet": info["id"], "images": x.tolist()})
        assert r.status_code == 200, r.text
        got = [[p["scores"][k] for k in ("circle", "cross")] for p in r.json()["predictions"]]
        assert torch.allclose(torch.tensor(got), want, atol=1e-5)
        assert c.get(f"/v1/subnets/{info['id']}/model.onnx").status_code == 200


def _image_folder(root, n: int = 48, mixed: bool = False):
    """12 x 12 PNGs; `mixed`: every third one enlarged to 18 x 15, as photos come in sizes of their own."""
    from PIL import Image

    x, y = _images(n, 5)
    for split in ("train", "test"):
        for i, (img, c) in enumerate(zip(x, y)):
            d = root / split / CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(img.transpose(1, 2, 0))
            (im.resize((18, 15)) if mixed and i % 3 == 0 else im).save(d / f"{i}.png")
    return root


def test_adapt_trains_a_factory_on_an_image_folder(tmp_path):
    import hypersan
    from tests.models import densenet

    folder = _image_folder(tmp_path / "images", mixed=True)  # photos of two sizes: data.image_size brings them to one
    tiny = ["data.val_size=8", "generator.hidden=16", "train.epochs=1", "train.min_steps=0", "train.batch_size=16",
            "train.eval_every=0", "train.progress=false", "calib.batches=1", "calib.batch_size=16", "subtasks.size_weights=[1, 1]"]
    with pytest.raises(DatasetError, match="data.image_size = N"):
        hypersan.adapt(densenet.build, folder, tmp_path / "run", kwargs={"growth": 4, "in_channels": 3},
                       overrides=tiny, log=lambda m: None)
    assert not (tmp_path / "run").exists()  # refused before anything is written
    engine = hypersan.adapt(densenet.build, folder, tmp_path / "run", kwargs={"growth": 4, "in_channels": 3},
                            overrides=tiny + ["data.image_size=12", "data.crop_scale=0.5"], log=lambda m: None,
                            mean=[0.485, 0.456, 0.406], std=(0.229, 0.224, 0.225))  # ImageNet's, as weights expect
    assert engine.model.config.data.image_size == 12 and tuple(engine.model.info.input_shape) == (3, 12, 12)
    assert engine.model.info.mean == (0.485, 0.456, 0.406) and engine.model.config.data.std == [0.229, 0.224, 0.225]
    assert engine.calib_spec().augmentation.crop_scale == 0.5  # random resized crops, in training and calibration
    assert engine.model.config.model.factory == "tests.models.densenet:build"
    assert engine.model.config.train.min_steps == 0  # overrides replace adapt's defaults (tiny asks for 0)
    from hypersan.config import load_config
    from hypersan.training.adapt import DEFAULTS
    from .conftest import ROOT

    # with no config, adapt trains as many steps as configs/folder.toml, however small the folder
    folder_cfg = load_config(ROOT / "configs" / "folder.toml").train.min_steps
    assert load_config(None, list(DEFAULTS)).train.min_steps == folder_cfg >= 300
    # and in blocks of 16 channels, as configs/folder.toml: the overrides above leave that default in place
    assert engine.model.config.generator.keep_multiple == 16 == load_config(ROOT / "configs" / "folder.toml").generator.keep_multiple
    assert engine.model.config.model.kwargs == {"growth": 4, "in_channels": 3}
    assert engine.model.classes == sorted(CLASSES)  # the class folders, in order
    net = engine.subnet(["cross", "circle"])
    assert net.classes == ["circle", "cross"] and net(torch.rand(2, 3, 12, 12)).shape == (2, 2)
    with pytest.raises(ConfigError, match="not a built network"):
        hypersan.adapt(densenet.build(), folder, tmp_path / "x")
    with pytest.raises(ConfigError, match="cannot be imported by name"):
        hypersan.adapt(lambda num_classes: densenet.build(num_classes), folder, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("model", list(FACTORIES))
def test_each_user_model_learns_fashion_mnist_on_the_tiny_config_and_prunes_exactly(tmp_path, model):
    """The issue's proof on real images: the tiny config's schedule (configs/tiny.toml: two epochs) on 1,024
    Fashion-MNIST images; the dense net learns (well above chance), and the pruned net of a pair equals its masked form."""
    from .conftest import HAVE_FMNIST

    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist` (CI installs it)")
    from hypersan.data.datasets import load_split
    from hypersan.prune.engine import PruningEngine
    from hypersan.training.train import train

    factory, kwargs = FACTORIES[model]
    cfg = load_config(ROOT / "configs" / "tiny.toml", [
        'model.arch="custom"', f'model.factory="{factory}"', f"model.kwargs={kwargs.replace('3', '1')}",
        "data.train_limit=1024", "data.val_size=128", "train.batch_size=64", "train.eval_every=0"])
    train(cfg, tmp_path / "run", log=lambda m: None)
    engine = PruningEngine.from_pretrained(tmp_path / "run")
    x, y, _ = load_split(cfg.data, "test")
    x = x[:256].float() / 255
    y = y[:256]
    with torch.no_grad():
        acc = (engine.subnet(None)(x).argmax(1) == y).float().mean().item()
    assert acc > 0.15, acc  # ten classes: chance is 0.1 (32 steps give 0.21-0.45 here, seeded)
    pair = ["Sneaker", "Bag"]
    idx = [engine.model.classes.index(c) for c in pair]
    net = engine.subnet(pair, fold_bn=True)
    with torch.no_grad():
        pruned = net(x[:32])
    masked = engine.predict(x[:32], pair)[:, idx]
    assert torch.allclose(pruned, masked, atol=1e-4), (pruned - masked).abs().max()


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_training_starts_from_the_users_trained_weights(tmp_path, fmt):
    from safetensors.torch import save_file

    from hypersan.training.train import train
    factory, _ = FACTORIES["resnet18"]
    mine = make_network(factory, {"in_channels": 3, "width": 4}, len(CLASSES))
    with torch.no_grad():
        for p in mine.parameters():
            p.normal_(0, 0.5)  # "trained": far from any fresh initialization
    path = tmp_path / f"mine.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in mine.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in mine.state_dict().items()}}, path)
    lines = []
    cfg = _config(tmp_path, "resnet18", f'model.weights="{path}"', "train.lr=1e-9", "train.generator_lr=1e-9")
    run = train(cfg, tmp_path / "run", log=lines.append)
    assert any("network weights loaded from" in m for m in lines)
    got = run.backbone.net.state_dict()
    for k, v in mine.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):  # BN statistics move in training
            assert torch.allclose(got[k], v, atol=1e-4), k
    # weights trained on 7 classes start a run on these 4 with model.new_head: the head is the factory's own
    other = make_network(factory, {"in_channels": 3, "width": 4}, 7)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "seven.safetensors"))
    lines = []
    cfg = _config(tmp_path, "resnet18", f'model.weights="{tmp_path / "seven.safetensors"}"', "model.new_head=true",
                  "train.lr=1e-9", "train.generator_lr=1e-9")
    got = train(cfg, tmp_path / "run7", log=lines.append).backbone.net.state_dict()
    assert any("the head (linear.weight, linear.bias) starts afresh for 4 classes" in m for m in lines), lines[:3]
    assert got["linear.weight"].shape == (4, 32) and torch.allclose(got["conv1.weight"], other.conv1.weight, atol=1e-4)


def test_user_weights_that_do_not_fit_are_named(tmp_path):
    from safetensors.torch import save_file

    from hypersan.training.train import load_user_weights
    factory, _ = FACTORIES["resnet18"]
    net = make_network(factory, {"in_channels": 3, "width": 4}, len(CLASSES))
    other = make_network(factory, {"in_channels": 3, "width": 4}, 7)  # a head of 7 classes
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match=r"is \(7, .*\) in .* but \(4, .*\).*model.new_head = true"):
        load_user_weights(net, str(tmp_path / "w.safetensors"))
    # trained on other classes: every tensor but the head's is loaded, the head stays as the factory built it
    head = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("linear.")}
    assert load_user_weights(net, str(tmp_path / "w.safetensors"), new_head="linear") == list(head)
    for k, v in net.state_dict().items():
        assert torch.equal(v, head[k] if k in head else other.state_dict()[k]), k
    sd = net.state_dict()
    first = next(iter(sd))
    save_file({k: v.contiguous() for k, v in sd.items() if k != first}, str(tmp_path / "m.safetensors"))
    with pytest.raises(ConfigError, match=f"missing from the file, first '{first}'"):
        load_user_weights(net, str(tmp_path / "m.safetensors"))
    with pytest.raises(ConfigError, match="no file"):
        load_user_weights(net, str(tmp_path / "nowhere.pt"))
    torch.save({"not": "tensors"}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="no state_dict"):
        load_user_weights(net, str(tmp_path / "bad.pt"))
    with pytest.raises(ConfigError, match="train.init_from"):
        load_config(None, ['model.weights="w.pt"'])
    with pytest.raises(ConfigError, match="model.new_head = true starts the head afresh where model.weights"):
        load_config(None, ['model.arch="custom"', 'model.factory="tests.models.resnet18:build"', "model.new_head=true"])


@pytest.mark.parametrize("model", list(FACTORIES))
def test_scaling_sites_of_a_custom_network_are_folded_exactly(model):
    from hypersan.nn.custom import CustomBackbone
    from hypersan.prune.surgery import prune_backbone

    factory, _ = FACTORIES[model]
    kwargs = {"in_channels": 3, **({"growth": 4} if model == "densenet" else {"width": 4})}
    plain = CustomBackbone(factory, kwargs, 3, 4, [3, 28, 28], [0.5] * 3, [0.25] * 3)
    bb = CustomBackbone(factory, kwargs, 3, 4, [3, 28, 28], [0.5] * 3, [0.25] * 3, scaling=True)
    assert not [s for s in plain.sites() if s.kind == "scaling"]
    scaling = [s for s in bb.sites() if s.kind == "scaling"]
    assert scaling and all(s.name.endswith(".scale") for s in scaling)
    assert bb.arch["site_widths"] == plain.arch["site_widths"]  # widths name the utility sites only
    gen = torch.Generator().manual_seed(1)
    masks = {}
    for s in bb.sites():
        if s.kind == "utility":
            m = (torch.rand(s.size, generator=gen) < 0.6).float()
            m[0] = 1.0
        else:
            m = 1 + 0.5 * torch.randn(s.size, generator=gen)
        masks[s.name] = m[None]
    x = torch.rand(3, 3, 28, 28, generator=gen)
    utility = {k: v for k, v in masks.items() if not k.endswith(".scale")}
    bb.eval()
    with torch.no_grad():
        scaled, unscaled = bb(x, masks), bb(x, utility)
        assert (scaled - unscaled).abs().max() > 1e-3  # the scalings change the function
        for physical in (True, False):
            net = prune_backbone(bb, masks, [0, 2], physical=physical)
            assert torch.allclose(net(x), scaled[:, [0, 2]], atol=1e-4), physical


@pytest.mark.parametrize("model", list(FACTORIES))
def test_the_mac_model_of_a_custom_network_counts_its_pruned_nets_exactly(model):
    from hypersan.nn.custom import CustomBackbone
    from hypersan.prune.budget import MacModel
    from hypersan.prune.metrics import count_macs
    from hypersan.prune.surgery import prune_backbone

    factory, _ = FACTORIES[model]
    kwargs = {"in_channels": 3, **({"growth": 4} if model == "densenet" else {"width": 4})}
    bb = CustomBackbone(factory, kwargs, 3, 4, [3, 28, 28], [0.5] * 3, [0.25] * 3)
    mac = MacModel(bb, [3, 28, 28])
    assert mac.dense == count_macs(bb.net, (3, 28, 28))
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        masks = {}
        for s in bb.sites():
            m = (torch.rand(s.size, generator=gen) < 0.5).float()
            m[int(torch.randint(s.size, (1,), generator=gen))] = 1.0
            masks[s.name] = m[None]
        net = prune_backbone(bb, masks, [1, 3])
        widths = {k: int(v.sum()) for k, v in masks.items()}
        assert mac(widths, 2) == count_macs(net, (3, 28, 28))
    prices = mac.prices()  # the derivative, a mean of one per channel
    sizes = {s.name: s.size for s in bb.sites()}
    assert sum(prices[n] * sizes[n] for n in sizes) / sum(sizes.values()) == pytest.approx(1.0)


class _FlatHead(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 7 * 7, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


class _ViewHead(_FlatHead):
    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(h.view(h.size(0), -1))  # raises on channels-last strides


def test_a_custom_net_runs_channels_last_only_where_its_forward_gives_the_same_outputs(monkeypatch, tmp_path):
    import types

    import hypersan.nn.custom as custom
    from hypersan.deploy.export import load_subnet, save_subnet
    from hypersan.nn.custom import CustomBackbone
    from hypersan.prune.surgery import prune_backbone

    checks = []
    check = custom.channels_last_if_exact
    monkeypatch.setattr(custom, "channels_last_if_exact", lambda net, x: checks.append(1) or check(net, x))
    for name, cls, fast in (("flatnets", _FlatHead, True), ("viewnets", _ViewHead, False)):
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(build=lambda num_classes, c=cls: c(num_classes)))
        torch.manual_seed(0)
        bb = CustomBackbone(f"{name}:build", {}, 3, 4, [3, 28, 28], [0.5] * 3, [0.25] * 3).eval()
        x = bb.probe(3)
        for fold in (False, True):
            net = prune_backbone(bb, None, [0, 2], fold_bn=fold, input_shape=[3, 28, 28])
            assert net.channels_last is fast, (name, fold)
            w = net.net.conv.weight  # laid out channels-last in eval mode where the net runs so, and only there
            assert (w.stride() == torch.empty_like(w, memory_format=torch.channels_last).stride()) is fast
            with torch.no_grad():
                assert torch.allclose(net(x), bb(x)[:, [0, 2]], atol=1e-5), (name, fold)
        assert len(checks) == 1  # checked at the network's first build only: the answer is its code's
        save_subnet(net, tmp_path / name)  # an artifact rebuilt elsewhere makes the same check
        back = load_subnet(tmp_path / name)
        assert back.channels_last is fast and len(checks) == 2
        checks.clear()
        with torch.no_grad():
            assert torch.allclose(back(x), net(x), atol=1e-6)


def test_a_head_on_flattened_maps_has_no_mac_model(monkeypatch):
    import types

    from hypersan.nn.custom import CustomBackbone
    from hypersan.prune.budget import MacModel

    monkeypatch.setitem(sys.modules, "flatnets", types.SimpleNamespace(build=lambda num_classes: _FlatHead(num_classes)))
    bb = CustomBackbone("flatnets:build", {}, 3, 4, [3, 28, 28], [0.5] * 3, [0.25] * 3)
    with pytest.raises(GraphError, match="flatten"):
        MacModel(bb, [3, 28, 28])


def test_budgets_and_the_guard_on_a_custom_network(tmp_path):
    import copy

    from hypersan.nn.generators import BudgetError
    from hypersan.prune.engine import PruningEngine
    from hypersan.prune.stats import set_bn_stats
    from hypersan.training.train import train

    train(_config(tmp_path, "mobilenet", "generator.budget=true", "generator.budget_min=0.1",
                  'loss.sparsity_price="macs"'), tmp_path / "run", log=lambda m: None)
    engine = PruningEngine.from_pretrained(tmp_path / "run")
    x = torch.from_numpy(_images(6, 4)[0]).float() / 255
    idx = [CLASSES.index("circle"), CLASSES.index("cross")]
    with pytest.raises(BudgetError, match="round_to=0 allows smaller nets"):  # these narrow nets round to all
        engine.subnet(["circle", "cross"], budget=0.3)
    for budget in (0.6, 0.3):
        net = engine.subnet(["circle", "cross"], budget=budget, round_to=0)
        assert engine.cost(net)["mac_ratio"] <= budget + 1e-9  # the budget rule: met exactly
        masks, _ = engine.masks(tuple(sorted(idx)), budget=budget, round_to=0)  # the generator's, cut to fit
        body = copy.deepcopy(engine.model.backbone).eval()
        set_bn_stats(body, engine.statistics(tuple(sorted(idx)), budget=budget, round_to=0))
        with torch.no_grad():
            assert torch.allclose(net(x), body(x, masks)[:, sorted(idx)], atol=1e-4)
    guarded = engine.subnet(["circle", "cross"], budget=0.6, guard=True, round_to=0)
    assert guarded.guard["requested"] == 0.6 and guarded.guard["budget"] <= 0.6


def test_the_rounding_study_holds_the_exact_widths_against_rounded_ones_on_a_custom_net(trained, tmp_path, capsys):
    """`hypersan study rounding` on a custom net: its "pruned" column is the unrounded net (round_to=0), not the
    default rounding to the CPU's block that custom nets get."""
    import json

    from hypersan.research import rounding

    engine = trained("mobilenet")
    engine.save_pretrained(tmp_path / "ckpt")
    assert rounding.main(["--checkpoint", str(tmp_path / "ckpt"), "--subtasks", "circle,cross", "--round-to", "8",
                          "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["subtasks"][0]
    exact = {k: v for k, v in engine.subnet(["circle", "cross"], round_to=0).arch["site_widths"].items()}
    assert row["pruned"]["widths"] == exact
    full = engine.subnet(None).arch["site_widths"]
    assert all(w % 8 == 0 or w == full[k] for k, w in row["up"]["widths"].items())  # a multiple, or all of them
    assert row["up"]["widths"] != exact
    assert row["up"]["mac_ratio"] >= row["pruned"]["mac_ratio"] - 1e-9


def test_eval_scores_the_exact_widths_or_the_rounded_ones_as_asked(trained):
    from hypersan.training.evaluate import evaluate

    engine = trained("mobilenet")
    x, y = _images(32, 3)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    t = (CLASSES.index("circle"), CLASSES.index("cross"))
    got = {r: evaluate(engine, x, y, [t], progress=False, round_to=r)["subtasks"][0] for r in (0, 8)}
    assert got[0]["widths"] == dict(engine.subnet(list(t), round_to=0).arch["site_widths"])
    assert got[8]["widths"] == dict(engine.subnet(list(t), round_to=8).arch["site_widths"]) != got[0]["widths"]
    assert got[8]["mac_ratio"] > got[0]["mac_ratio"]


@pytest.mark.parametrize("model", ["resnet18", "mobilenet"])
def test_a_custom_networks_net_fine_tunes_and_folds_its_bn_exactly_afterwards(trained, tmp_path, model):
    from hypersan.deploy.export import load_subnet
    from hypersan.prune.surgery import fold_subnet_bn
    from hypersan.training.finetune import finetune_subnet

    engine = trained(model)
    net = finetune_subnet(engine, ["circle", "cross"], 3, fold_bn=False, batch_size=16)
    x = torch.from_numpy(_images(4, 3)[0]).float() / 255
    folded = fold_subnet_bn(net, engine.model.backbone)
    assert folded.bn_folded and folded.arch["folded"] and not any(
        isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert (folded(x) - net(x)).abs().max().item() < 1e-4
        assert (net(x) - engine.subnet(["circle", "cross"])(x)).abs().max().item() > 1e-4  # the steps moved it
    engine.export(None, tmp_path / "art", ["safetensors"], net=folded)
    with torch.no_grad():
        assert (load_subnet(tmp_path / "art")(x) - folded(x)).abs().max().item() < 1e-5


def test_the_widths_bench_times_each_net_settled_and_cold_beside_the_dense_one():
    from hypersan.research.bench import fixed_floor, run_width_bench

    r = run_width_bench("tests.models.mobilenet:build", {"width": 8}, [1, 12, 12], 4, [0.4], [8], ["eager"], [2],
                        threads=1, repeats=2, warmup=0, settle=1)
    assert r["settle"] == 1 and [(row["multiple"], row["batch"]) for row in r["rows"]] == [(1, 2), (8, 2)]
    exact, rounded = r["rows"]
    assert max(exact["mac_ratio"], rounded["mac_ratio"]) <= 0.4 + 1e-9  # both at most the target
    assert all(w % 8 == 0 for w in rounded["widths"].values())
    assert not all(w % 8 == 0 for w in exact["widths"].values())
    for row in r["rows"]:
        assert row["latency_ratio"] > 0 and row["cold_latency_ratio"] > 0
        assert row["bound_met"] == (row["latency_ratio"] <= 1.2 * row["mac_ratio"] + 0.05)
        # each net's one-pixel latency, and the floor they give (node counts are onnxruntime's only)
        assert row["fixed_ms"]["dense"] > 0 and row["fixed_ms"]["pruned"] > 0 and row["nodes"] is None
        assert row["fixed_floor"] == fixed_floor(row["dense_ms"], row["mac_ratio"], row["fixed_ms"]["dense"],
                                                 row["fixed_ms"]["pruned"]) > 0


def test_the_floor_adds_each_nets_fixed_cost_to_kernels_scaled_by_macs():
    from hypersan.research.bench import fixed_floor

    # dense 100 us, 20 of them fixed: 80 us of kernels; half the MACs with 20 us fixed: 20 + 40
    assert abs(fixed_floor(0.1, 0.5, 0.02, 0.02) - 0.6) < 1e-9
    assert abs(fixed_floor(0.1, 0.5, 0.02, 0.03) - 0.7) < 1e-9  # 10 us more fixed (layout conversions)
    assert abs(fixed_floor(100.0, 0.5, 0.02, 0.02) - 0.5) < 1e-3  # a long call: the MAC ratio


def test_one_pixel_copies_and_onnxruntime_node_counts(tmp_path):
    from onnx import TensorProto, helper

    from hypersan.nn.custom import CustomBackbone
    from hypersan.prune.surgery import prune_backbone
    from hypersan.research.bench import one_pixel, onnx_node_count

    bb = CustomBackbone("tests.models.mobilenet:build", {"width": 8}, 1, 4, [1, 12, 12], [0.5], [0.25]).eval()
    net = prune_backbone(bb, None, [0, 1, 2, 3], fold_bn=True)
    small = one_pixel(net)
    assert small.input_shape == [1, 1, 1] and net.input_shape == [1, 12, 12]  # a copy: the net is untouched
    with torch.no_grad():
        assert small(torch.rand(3, 1, 1, 1)).shape == (3, 4)
    names = ["images", "t1", "t2", "t3", "t4", "logits"]
    chain = [helper.make_node("Relu", [a], [b]) for a, b in zip(names, names[1:])]
    graph = helper.make_graph(chain, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "chain.onnx").write_bytes(model.SerializeToString())
    assert onnx_node_count(tmp_path / "chain.onnx", 1, np.zeros((1, 4), np.float32)) == 5


def test_a_net_on_a_fixed_spatial_size_has_no_one_pixel_form():
    from hypersan.research.bench import one_pixel

    class Fixed(nn.Module):
        input_shape = [1, 4, 4]

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(x.flatten(1))

    assert one_pixel(Fixed()) is None


def test_a_custom_network_calibrates_channels_last_and_gets_its_own_tensors_back(trained, monkeypatch):
    from hypersan.prune.stats import recalibrate

    engine = trained("mobilenet")
    bb = engine.model.backbone
    t = engine.model.resolve(["circle", "cross"])
    masks, _ = engine.masks(t)
    ptrs = {n: (p.data_ptr(), p.stride()) for n, p in bb.named_parameters() if p.dim() == 4}
    want = recalibrate(bb, lambda x: bb(x, masks), engine.calib_spec().stream(engine.images(), "cpu"))  # default
    engine.cache.clear()
    layouts = []
    hook = bb.norm.register_forward_pre_hook(lambda m, a: layouts.append(
        not a[0].is_contiguous() and a[0].is_contiguous(memory_format=torch.channels_last)))
    got = engine.statistics(t)
    hook.remove()
    assert layouts and all(layouts)  # every calibration batch went in channels-last
    assert {n: (p.data_ptr(), p.stride()) for n, p in bb.named_parameters() if p.dim() == 4} == ptrs
    assert want.keys() == got.keys() and all(torch.allclose(want[k], got[k], rtol=1e-4, atol=1e-6) for k in want)
    # a network whose forward needs the default layout (a .view of a feature map) is calibrated in that layout
    real = bb.norm.forward

    def picky(x):
        if not x.is_contiguous():
            raise RuntimeError("view size is not compatible with input tensor's size and stride")
        return real(x)

    monkeypatch.setattr(bb.norm, "forward", picky)
    engine.cache.clear()
    again = engine.statistics(t)
    assert all(torch.equal(again[k], want[k]) for k in want)
    assert {n: (p.data_ptr(), p.stride()) for n, p in bb.named_parameters() if p.dim() == 4} == ptrs
