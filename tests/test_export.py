import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hypersan import __version__
from hypersan.nn.backbones import build_backbone
from hypersan.deploy.export import (ARTIFACT_FORMAT, file_sha256, load_subnet, parse_formats, save_subnet)
from hypersan.io import ArtifactError, OutputExistsError, load_tensors
from hypersan.prune.surgery import prune_backbone

from .test_surgery import ARCHS, _masks, _randomize


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
        from hypersan.nn.subnet import fold_bn
        net = fold_bn(net)
    files = save_subnet(net, tmp_path / "a", subtask=[0, 2, 3])  # the default formats: safetensors and pt2
    assert files == {"safetensors": tmp_path / "a" / "model.safetensors", "pt2": tmp_path / "a" / "model.pt2"}
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
    src = tmp_path / "ckpt"
    src.mkdir()
    save_file({"w": torch.arange(4.0)}, str(src / "model.safetensors"))
    save_subnet(_net(), tmp_path / "a", formats=["safetensors"], source=str(src))
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["source_checkpoint"] == str(src)
    assert cfg["source_sha256"] == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    assert file_sha256(src / "model.safetensors") == cfg["source_sha256"]


def _saved(tmp_path):
    """An artifact to check or break: its weights and config (what load_subnet reads; no pt2 export to pay)."""
    save_subnet(_net(), tmp_path / "a", formats=["safetensors"])
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
    import hypersan.deploy.export

    d = _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def crash(net, path):
        Path(path).write_bytes(b"half an onnx file")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(hypersan.deploy.export, "export_onnx", crash)
    with pytest.raises(RuntimeError, match="killed mid-export"):
        save_subnet(_net(seed=1), d, formats=["safetensors", "onnx"], force=True)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary directory left behind
    with pytest.raises(RuntimeError):
        save_subnet(_net(seed=1), tmp_path / "new", formats=["onnx"])
    assert not (tmp_path / "new").exists()


def test_parse_formats():
    assert parse_formats("onnx, safetensors,onnx") == ["onnx", "safetensors"]
    with pytest.raises(ValueError, match="unknown export format.*pickle"):
        parse_formats("safetensors,pickle")


def _tree(root: Path) -> dict:
    """Every path under root (relative), with the bytes of each file: equal trees compare equal."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_save_subnet_replaces_an_artifact_only_with_force(tmp_path):
    d = _saved(tmp_path)
    before = _tree(d)
    with pytest.raises(OutputExistsError, match=r"already holds a hypersan artifact; pass force=True \(--force"):
        save_subnet(_net(seed=1), d)
    assert _tree(d) == before
    save_subnet(_net(seed=1), d, force=True)
    assert _tree(d) != before
    marker = json.loads((d / ".hypersan.json").read_text())
    assert marker["kind"] == "artifact" and marker["format"] == 1
    assert set(marker["files"]) == {p.name for p in d.iterdir()} - {".hypersan.json"}  # all of it hypersan's
    x = _x(_net(seed=1))
    with torch.no_grad():
        assert torch.equal(load_subnet(d)(x), _net(seed=1)(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize("force", [False, True])
def test_save_subnet_never_replaces_a_user_folder(tmp_path, force):
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes")
    (d / "sub" / "data.bin").write_bytes(bytes(range(256)))
    before = _tree(d)
    with pytest.raises(OutputExistsError, match=r"mine is not empty \(it holds .*\) and has no \.hypersan\.json"):
        save_subnet(_net(), d, force=force)
    assert _tree(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


# ------------------------------------------------------------------ load_subnet checks its input first

def _edit_config(d: Path, edit) -> None:
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit,msg", [
    (lambda c: c.update(bn_folded="false"), r"bn_folded must be a JSON boolean \(true or false\), not 'false'"),
    (lambda c: c.update(bn_folded=0), "bn_folded must be a JSON boolean"),
    (lambda c: c.update(classes=[]), "classes must be a non-empty list"),
    (lambda c: c.update(classes=["cat", "cat", "eel"]), "classes must name each class once; repeated: 'cat'"),
    (lambda c: c.update(classes=["cat", 1, "eel"]), "classes must be a non-empty list of class names"),
    (lambda c: c.update(input_shape=[3, 12]), r"input_shape must be \[channels, height, width\]"),
    (lambda c: c.update(input_shape=[3, 12, -1]), "input_shape must be"),
    (lambda c: c.update(input_shape=[3, 12, 12.0]), "input_shape must be"),
    (lambda c: c["arch"].update(depth=3), "arch must have exactly the keys .*; unknown: depth"),
    (lambda c: c["arch"].pop("std"), "arch must have exactly the keys .*; missing: std"),
    (lambda c: c["arch"].update(arch="mlp"), "arch.arch must be"),
    (lambda c: c["arch"].update(widths=[8, True]), "arch.widths must be"),
    (lambda c: c["arch"].update(blocks=[1, 0]), "arch.blocks must be"),
    (lambda c: c["arch"].update(blocks=[1, 5000]), "arch.blocks must be"),
    (lambda c: c["arch"].update(std=[float("nan")]), "arch.std must be a list"),
    (lambda c: c["arch"].update(std=[0.0]), "arch.std must be positive"),
    (lambda c: c.update(site_widths=[4, 4]), "site_widths must be a JSON object"),
    (lambda c: c["site_widths"].update(stage9=4), "site_widths names 'stage9', which is no site of this resnet"),
    (lambda c: c["site_widths"].update(stage0="4"), r"site_widths\['stage0'\] = '4' is not a width"),
    (lambda c: c["site_widths"].update(stage0=0), r"site_widths\['stage0'\] = 0 is not a width"),
    (lambda c: c.update(format=True), "artifact format True is not supported"),
])
def test_load_refuses_a_bad_config_field_by_name(tmp_path, edit, msg):
    d = _saved(tmp_path)
    _edit_config(d, edit)
    with pytest.raises(ArtifactError, match=msg):
        load_subnet(d)


def _no_body_reads(monkeypatch):
    import hypersan.deploy.export

    def fail(path):
        raise AssertionError(f"{path}: the tensors were read before the header was checked")
    monkeypatch.setattr(hypersan.deploy.export, "load_tensors", fail)


def test_load_refuses_a_huge_width_at_once(tmp_path, monkeypatch):
    import time

    d = _saved(tmp_path)
    _no_body_reads(monkeypatch)
    _edit_config(d, lambda c: c["site_widths"].update(stage0=10**9))
    t0 = time.perf_counter()
    with pytest.raises(ArtifactError, match=r"site_widths\['stage0'\] = 1000000000 is not a width from 1 to 65536"):
        load_subnet(d)
    # within the bound, yet not what the file holds: the header check refuses it before anything is allocated
    _edit_config(d, lambda c: c["site_widths"].update(stage0=60000))
    with pytest.raises(ArtifactError, match=r"wrong shapes: stem\.0\.weight: file \(\d+, \d+, 3, 3\) vs model "
                                            r"\(60000, \d+, 3, 3\)"):
        load_subnet(d)
    assert time.perf_counter() - t0 < 5


def _rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


@pytest.mark.parametrize("edit,msg", [
    (lambda h: h["stem.0.weight"].update(shape=[100000, 3, 3, 3]),
     r"wrong shapes: stem\.0\.weight: file \(100000, 3, 3, 3\)"),
    (lambda h: h["head.bias"].update(dtype="F64"), r"wrong dtypes: head\.bias: file F64 vs model F32"),
    (lambda h: h["stem.1.num_batches_tracked"].update(dtype="F32"), "wrong dtypes: stem.1.num_batches_tracked"),
    (lambda h: h["head.bias"].update(data_offsets=[0, 1 << 40]), r"data offsets \[0, 1099511627776\] of tensor "
                                                                  "'head.bias' do not fit"),
    (lambda h: h.update(extra={"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}), "unexpected keys: extra"),
    (lambda h: h["head.weight"].update(shape="big"), "header entry of tensor 'head.weight' is malformed"),
])
def test_load_checks_the_safetensors_header_before_reading_tensors(tmp_path, monkeypatch, edit, msg):
    d = _saved(tmp_path)
    _rewrite_header(d / "model.safetensors", edit)
    _no_body_reads(monkeypatch)
    with pytest.raises(ArtifactError, match=msg):
        load_subnet(d)


@pytest.mark.parametrize("data,msg", [
    ((10**12).to_bytes(8, "little") + b"{}", r"header length 1000000000000 is larger than the file \(10 bytes\)"),
    (b"\x01\x00", "2 bytes is too short for a safetensors file"),
    ((2).to_bytes(8, "little") + b"[]", "header is not a JSON object"),
    ((3).to_bytes(8, "little") + b"{\xff}", "header is not valid JSON"),
])
def test_load_refuses_a_broken_safetensors_header(tmp_path, monkeypatch, data, msg):
    d = _saved(tmp_path)
    (d / "model.safetensors").write_bytes(data)
    _no_body_reads(monkeypatch)
    with pytest.raises(ArtifactError, match=msg):
        load_subnet(d)


def test_load_refuses_an_oversized_config(tmp_path):
    d = _saved(tmp_path)
    with open(d / "config.json", "ab") as f:
        f.write(b" " * (4 << 20))
    with pytest.raises(ArtifactError, match="more than the 4194304 such a file can need"):
        load_subnet(d)


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
contracts = []
for job in json.loads(sys.argv[1]):  # each: {{"fmt", "path", "x", "out"}}
    fmt, path, x = job["fmt"], job["path"], torch.load(job["x"], weights_only=True)
    extra = {{"hypersan.json": ""}}
    if fmt == "torchscript":
        m = torch.jit.load(path, _extra_files=extra)
        with torch.no_grad():
            outs = [m(x), m(x[:1])]
        contract = json.loads(extra["hypersan.json"])
    elif fmt == "pt2":
        m = torch.export.load(path, extra_files=extra).module()
        with torch.no_grad():
            outs = [m(x), m(x[:1])]
        contract = json.loads(extra["hypersan.json"])
    else:
        import onnx, onnxruntime
        s = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        outs = [torch.from_numpy(s.run(["logits"], {{"images": a.numpy()}})[0]) for a in (x, x[:1])]
        contract = json.loads({{p.key: p.value for p in onnx.load(path).metadata_props}}["hypersan"])
    torch.save(outs, job["out"])
    contracts.append(contract)
print(json.dumps(contracts))
"""


def _site_packages() -> list[str]:
    import numpy
    import onnx
    import onnxruntime

    return sorted({str(Path(m.__file__).resolve().parents[1]) for m in (torch, numpy, onnx, onnxruntime)})


def run_without_hypersan(tmp_path, jobs) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    """For each job (format, file, x): (the file's own input contract, logits of x, logits of x[:1]), all from one
    fresh process where hypersan cannot be imported."""
    spec = []
    for i, (fmt, path, x) in enumerate(jobs):
        torch.save(x, tmp_path / f"x{i}.pt")
        spec.append({"fmt": fmt, "path": str(path), "x": str(tmp_path / f"x{i}.pt"),
                     "out": str(tmp_path / f"out{i}.pt")})
    script = _RUNNER.format(paths=_site_packages())
    env = {"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    # -I: no PYTHONPATH, no user site, no script dir; -S: no site-packages .pth (an editable install)
    r = subprocess.run([sys.executable, "-I", "-S", "-W", "ignore::DeprecationWarning", "-c", script, json.dumps(spec)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    contracts = json.loads(r.stdout.strip().splitlines()[-1])
    return [(c, *torch.load(job["out"], weights_only=True)) for c, job in zip(contracts, spec)]


PORTABLE = [("pt2", "resnet"), ("pt2", "vgg"), ("onnx", "resnet"), ("onnx", "vgg"), ("torchscript", "resnet")]


def test_portable_exports_run_without_hypersan(tmp_path):
    jobs, nets = [], []
    for fmt, arch in PORTABLE:
        net = _net(arch)
        out = tmp_path / f"{fmt}-{arch}"
        if fmt == "torchscript":  # legacy: torch's deprecation warning is expected here, and only here
            with pytest.warns(DeprecationWarning, match="torch.jit.script"):
                files = save_subnet(net, out, formats=[fmt])
        else:
            files = save_subnet(net, out, formats=[fmt])
        jobs.append((fmt, files[fmt], _x(net, 5)))  # the export traced a batch of 2: 5 and 1 check the dynamic batch
        nets.append(net)
    for (fmt, arch), net, (_, path, x), (contract, full, one) in zip(PORTABLE, nets, jobs,
                                                                     run_without_hypersan(tmp_path, jobs)):
        assert contract["classes"] == net.classes, (fmt, arch)
        assert contract["input"] == {"name": "images", "dtype": "float32", "layout": "NCHW", "range": [0.0, 1.0],
                                     "shape": ["batch", *net.input_shape]}, (fmt, arch)
        assert contract["normalization"]["inside_net"] is True, (fmt, arch)
        with torch.no_grad():
            want = net(x)
        assert full.shape == (5, 3) and one.shape == (1, 3), (fmt, arch)
        assert (full - want).abs().max().item() <= 1e-4, (fmt, arch)
        assert (one - want[:1]).abs().max().item() <= 1e-4, (fmt, arch)
        if fmt == "onnx":  # the spatial mean is one GlobalAveragePool (global_pools), which runtimes keep blocked
            import onnx

            ops = [n.op_type for n in onnx.load(str(path)).graph.node]
            assert "ReduceMean" not in ops and ops.count("GlobalAveragePool") == 1, arch


def _mean_graph(axes, keepdims, rank=4):
    """A one-node ONNX model: ReduceMean of a (2, 3, 4, 5)-shaped (or lower-rank) input over `axes`."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    shape = [2, 3, 4, 5][:rank]
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("axes,keepdims", [([2, 3], 1), ([-1, -2], 1), ([2, 3], 0), ([3, -2], 0)])
def test_spatial_means_become_global_pools_with_the_same_values(axes, keepdims):
    import numpy as np
    import onnxruntime

    from hypersan.deploy.export import global_pools

    m = _mean_graph(axes, keepdims)
    x = np.random.default_rng(0).random((2, 3, 4, 5), dtype=np.float32)

    def run(model):
        return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]

    want = run(m)
    assert global_pools(m) == 1
    ops = [n.op_type for n in m.graph.node]
    assert ops == (["GlobalAveragePool"] if keepdims else ["GlobalAveragePool", "Flatten"])
    assert [i.name for i in m.graph.initializer] == []  # the axes are read by nothing now
    got = run(m)
    assert got.shape == want.shape == ((2, 3, 1, 1) if keepdims else (2, 3))
    assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("axes,rank", [([1], 4), ([1, 2], 4), ([1, 2], 3)])
def test_other_means_are_left_as_they_are(axes, rank):
    from hypersan.deploy.export import global_pools

    m = _mean_graph(axes, 1, rank)
    assert global_pools(m) == 0
    assert [n.op_type for n in m.graph.node] == ["ReduceMean"]
