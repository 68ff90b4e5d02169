import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hypersan import __version__
from hypersan.backbones import build_backbone
from hypersan.export import (ARTIFACT_FORMAT, file_sha256, load_subnet, parse_formats, save_subnet)
from hypersan.io import ArtifactError, load_tensors
from hypersan.surgery import prune_backbone

from .test_surgery import ARCHS, _masks, _model, _randomize, _images


def _net(arch="resnet", seed=0):
    torch.manual_seed(seed)
    net = _randomize(build_backbone(dict(ARCHS[arch], num_classes=4))).eval()
    c = ARCHS[arch]["in_channels"]
    return prune_backbone(net, _masks(net, torch.Generator().manual_seed(seed)), [0, 2, 3],
                          ["cat", "dog", "eel"], input_shape=(c, 12, 12))


def _x(net, b=3):
    return torch.rand(b, *net.input_shape, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("folded", [False, True])
def test_artifact_round_trip(tmp_path, arch, folded):
    net = _net(arch)
    if folded:
        from hypersan.subnet import fold_bn
        net = fold_bn(net)
    files = save_subnet(net, tmp_path / "a", subtask=[0, 2, 3])
    assert files == {"safetensors": tmp_path / "a" / "model.safetensors"}
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["format"] == ARTIFACT_FORMAT and cfg["hypersan_version"] == __version__
    assert cfg["classes"] == ["cat", "dog", "eel"] and cfg["subtask"] == [0, 2, 3]
    assert cfg["input_shape"] == [ARCHS[arch]["in_channels"], 12, 12]
    assert cfg["site_widths"] == net.arch["site_widths"] and cfg["bn_folded"] is folded
    back = load_subnet(tmp_path / "a")
    assert back.classes == net.classes and back.input_shape == net.input_shape
    x = _x(net)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_artifact_records_the_source_checkpoint_hash(tmp_path):
    model = _model()
    model.calibrate(model.resolve(["Bag", "Coat"]), _images())
    model.save_pretrained(tmp_path / "ckpt")
    net = model.subnet(["Bag", "Coat"])
    save_subnet(net, tmp_path / "a", source=str(tmp_path / "ckpt"))
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["source_sha256"] == file_sha256(tmp_path / "ckpt" / "model.safetensors")
    assert len(cfg["source_sha256"]) == 64


def _saved(tmp_path):
    save_subnet(_net(), tmp_path / "a")
    return tmp_path / "a"


def test_load_rejects_a_wrong_shape(tmp_path):
    d = _saved(tmp_path)
    t = load_tensors(d / "model.safetensors")
    t["head.weight"] = torch.zeros(3, t["head.weight"].shape[1] + 1)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"wrong shapes: head.weight"):
        load_subnet(d)


def test_load_rejects_a_missing_key(tmp_path):
    d = _saved(tmp_path)
    t = load_tensors(d / "model.safetensors")
    del t["stem.1.running_var"]
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"missing keys: stem.1.running_var"):
        load_subnet(d)


@pytest.mark.parametrize("name,msg", [("model.safetensors", "truncated or corrupt"), ("config.json", "not valid JSON")])
def test_load_rejects_a_truncated_file(tmp_path, name, msg):
    d = _saved(tmp_path)
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=msg):
        load_subnet(d)


def test_load_rejects_an_unknown_format_version(tmp_path):
    d = _saved(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["format"] = ARTIFACT_FORMAT + 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match=f"artifact format {ARTIFACT_FORMAT + 1} is not supported"):
        load_subnet(d)


def test_failed_export_leaves_the_previous_artifact_intact(tmp_path, monkeypatch):
    import hypersan.export

    d = _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def crash(net, path):
        Path(path).write_bytes(b"half an onnx file")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(hypersan.export, "export_onnx", crash)
    with pytest.raises(RuntimeError, match="killed mid-export"):
        save_subnet(_net(seed=1), d, formats=["safetensors", "onnx"])
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary directory left behind
    with pytest.raises(RuntimeError):
        save_subnet(_net(seed=1), tmp_path / "new", formats=["onnx"])
    assert not (tmp_path / "new").exists()


def test_parse_formats():
    assert parse_formats("onnx, safetensors,onnx") == ["onnx", "safetensors"]
    with pytest.raises(ValueError, match="unknown export format.*pickle"):
        parse_formats("safetensors,pickle")


# ------------------------------------------------------------------ portable exports, loaded without hypersan

_RUNNER = r"""
import sys
sys.path[:0] = {paths!r}
try:
    import hypersan
except ImportError:
    pass
else:
    raise SystemExit("hypersan is importable in the fresh process: " + hypersan.__file__)
import json
import torch
x = torch.load(sys.argv[2], weights_only=True)
if sys.argv[1] == "torchscript":
    m = torch.jit.load(sys.argv[3])
    with torch.no_grad():
        outs = [m(x), m(x[:1])]
    classes = list(m.classes)
else:
    import onnx, onnxruntime
    s = onnxruntime.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"])
    outs = [torch.from_numpy(s.run(["logits"], {{"images": a.numpy()}})[0]) for a in (x, x[:1])]
    classes = json.loads({{p.key: p.value for p in onnx.load(sys.argv[3]).metadata_props}}["classes"])
torch.save(outs, sys.argv[4])
print(json.dumps(classes))
"""


def _site_packages() -> list[str]:
    import numpy
    import onnx
    import onnxruntime

    return sorted({str(Path(m.__file__).resolve().parents[1]) for m in (torch, numpy, onnx, onnxruntime)})


@pytest.mark.parametrize("fmt,arch", [("torchscript", "resnet"), ("onnx", "resnet"), ("onnx", "vgg")])
def test_portable_export_runs_without_hypersan(tmp_path, fmt, arch):
    net = _net(arch)
    files = save_subnet(net, tmp_path / "a", formats=[fmt])
    x = _x(net, 5)  # the export traced a batch of 2: 5 and 1 check the dynamic batch
    torch.save(x, tmp_path / "x.pt")
    script = _RUNNER.format(paths=_site_packages())
    env = {"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    # -I: no PYTHONPATH, no user site, no script dir; -S: no site-packages .pth (an editable install)
    r = subprocess.run([sys.executable, "-I", "-S", "-c", script, fmt, str(tmp_path / "x.pt"), str(files[fmt]),
                        str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == net.classes
    full, one = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        want = net(x)
    assert full.shape == (5, 3) and one.shape == (1, 3)
    assert (full - want).abs().max().item() <= 1e-4
    assert (one - want[:1]).abs().max().item() <= 1e-4
