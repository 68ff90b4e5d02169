"""hypersan serve: the v1 and Open Inference Protocol endpoints, bad input, tokens, ids, the cache (restart, killed
builds, concurrency) and one real uvicorn on a loopback port."""
import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from hypersan import PruningEngine  # noqa: E402
from hypersan.serve.app import CACHE_KIND, ID_RE, create_app  # noqa: E402
from hypersan.serve.wire import InputError, PNG_SIGNATURE, decode_png, encode_png  # noqa: E402

from .conftest import ROOT, needs_fmnist  # noqa: E402

TOKEN = "s3cret-token"
PAIR = ["Sneaker", "Bag"]  # the shipped model's statistics cache holds every pair: no calibration needed


@pytest.fixture(scope="module")
def engine():
    return PruningEngine.from_pretrained("fmnist_b16")


@pytest.fixture
def client(engine, tmp_path):
    with TestClient(create_app(engine, cache_dir=tmp_path / "cache", cache_size=4, max_images=8,
                               max_body_bytes=200_000)) as c:
        yield c


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def _service(c):
    return c.app.state.service


# ------------------------------------------------------------------ PNG

def _png(pixels: np.ndarray, color: int, filters, depth: int = 8) -> bytes:
    """A PNG of (H, W, bpp) uint8 pixels with the given filter type per row (the encoder side of each filter)."""
    h, w, bpp = pixels.shape
    rows, prev = [], np.zeros(w * bpp, dtype=np.int64)
    for r in range(h):
        line = pixels[r].reshape(-1).astype(np.int64)
        left = np.concatenate([np.zeros(bpp, dtype=np.int64), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, dtype=np.int64), prev[:-bpp]])
        f = filters[r % len(filters)]
        if f == 0:
            out = line
        elif f == 1:
            out = line - left
        elif f == 2:
            out = line - prev
        elif f == 3:
            out = line - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            out = line - pred
        rows.append(bytes([f]) + (out & 0xFF).astype(np.uint8).tobytes())
        prev = line

    def chunk(kind, body):
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([depth, color, 0, 0, 0])
    return (PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("color,bpp,keep", [(0, 1, 1), (4, 2, 1), (2, 3, 3), (6, 4, 3)])
def test_png_decoder_undoes_every_filter(color, bpp, keep):
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (28, 28, bpp), dtype=np.uint8)
    out = decode_png(_png(px, color, [0, 1, 2, 3, 4]), keep, 28, 28)
    assert out.shape == (keep, 28, 28) and out.dtype == np.uint8
    assert np.array_equal(out, px[:, :, :keep].transpose(2, 0, 1))


def test_png_decoder_matches_pillow():
    Image = pytest.importorskip("PIL.Image")
    import io

    px = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px, mode="L").save(buf, format="PNG", optimize=True)
    assert np.array_equal(decode_png(buf.getvalue(), 1, 28, 28)[0], px)
    assert np.array_equal(decode_png(encode_png(px), 1, 28, 28)[0], px)


def test_png_decoder_refuses_bad_files_before_inflating():
    px = np.zeros((28, 28, 1), dtype=np.uint8)
    good = _png(px, 0, [0])
    with pytest.raises(InputError, match="32x28 pixels"):
        decode_png(_png(np.zeros((28, 32, 1), np.uint8), 0, [0]), 1, 28, 28)
    with pytest.raises(InputError, match="16-bit"):
        decode_png(_png(px, 0, [0], depth=16), 1, 28, 28)
    with pytest.raises(InputError, match="RGB, but this subnet takes 1-channel"):
        decode_png(_png(np.zeros((28, 28, 3), np.uint8), 2, [0]), 1, 28, 28)
    with pytest.raises(InputError, match="CRC"):
        decode_png(good[:40] + bytes([good[40] ^ 1]) + good[41:], 1, 28, 28)
    with pytest.raises(InputError, match="truncated"):
        decode_png(good[:-20], 1, 28, 28)
    with pytest.raises(InputError, match="signature"):
        decode_png(b"GIF89a" + good, 1, 28, 28)
    # a "bomb": IHDR says 28x28, the data inflates to 100 MB; refused after inflating one byte more than 28x29
    bomb_data = zlib.compress(b"\x00" * 100_000_000, 9)

    def chunk(kind, body):
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    bomb = PNG_SIGNATURE + good[8:33] + chunk(b"IDAT", bomb_data) + chunk(b"IEND", b"")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="more bytes"):
        decode_png(bomb, 1, 28, 28)
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------ health, tokens, limits (no build needed)

def test_health_endpoints_and_token(engine, tmp_path):
    app = create_app(engine, cache_dir=tmp_path / "c", token=TOKEN)
    with TestClient(app) as c:
        for path in ("/healthz", "/v2/health/live", "/v2/health/ready"):  # health needs no token
            assert c.get(path).status_code == 200, path
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/healthz").json() == {"status": "ok"}  # liveness only without the token
        full = c.get("/healthz", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert full["status"] == "ok" and "checkpoint" in full and "rss_bytes" in full
        for method, path in (("post", "/v1/subnets"), ("get", "/v1/subnets/" + "0" * 24), ("post", "/v1/predict"),
                             ("get", "/v2/models/" + "0" * 24), ("post", f"/v2/models/{'0' * 24}/infer"),
                             ("get", "/openapi.json"), ("get", "/docs")):
            r = getattr(c, method)(path, json={}) if method == "post" else c.get(path)
            assert r.status_code == 401, path
            assert "Bearer" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
            r = getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}, **({"json": {}} if method == "post"
                                                                                       else {}))
            assert r.status_code == 401 and "wrong" in r.json()["error"]
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/openapi.json", headers=ok).status_code == 200
        assert c.get("/v1/subnets/" + "0" * 24, headers=ok).status_code == 404  # past the token: unknown id
        assert c.post("/v1/subnets", headers=ok, json={"classes": ["Airplane"]}).status_code == 422


def test_bad_input_is_never_a_500(client):
    r = client.post("/v1/subnets", json={"request": "airplanes and submarines"})
    assert r.status_code == 422
    body = r.json()
    assert "could not understand" in body["error"] and body["grounding"]["unknown"]
    r = client.post("/v1/subnets", json={"classes": ["Sneakr", "Bag"]})
    assert r.status_code == 422 and "did you mean 'Sneaker'" in r.json()["error"]
    for bad in ({"classes": []}, {"classes": [3, 3]}, {"classes": [99]}, {}, {"request": "bag", "classes": [1]},
                {"request": "   "}, {"classes": PAIR, "round_to": -1}, {"classes": PAIR, "typo": 1}):
        r = client.post("/v1/subnets", json=bad)
        assert r.status_code == 422 and r.json()["error"], bad
    # malformed JSON, a body that is not an object, JSON nested too deep
    r = client.post("/v1/subnets", content=b'{"classes": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    assert client.post("/v1/predict", json=[1, 2]).status_code == 422
    r = client.post("/v1/predict", content=b"[" * 50_000 + b"]" * 50_000, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    # a body over the limit (200,000 bytes here), with and without Content-Length
    r = client.post("/v1/predict", content=b" " * 200_001, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = client.post("/v1/predict", content=iter([b" " * 150_000, b" " * 150_000]),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # unknown ids, and ids that try to leave the cache folder
    # ("..": HTTP clients normalize it away before sending; its encoded forms reach the server)
    for sid in ("0" * 24, "abc", "...%2F..%2Fetc", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "0" * 23 + "G", "0" * 25):
        for path in (f"/v1/subnets/{sid}", f"/v1/subnets/{sid}/config.json", f"/v2/models/{sid}",
                     f"/v2/models/{sid}/ready"):
            r = client.get(path)
            assert r.status_code == 404 and r.json()["error"], path
    r = client.post("/v1/predict", json={"subnet": "0" * 24, "images": [[[0] * 28] * 28]})
    assert r.status_code == 404
    r = client.post(f"/v2/models/{'0' * 24}/infer", json={"inputs": [{"name": "images", "shape": [1, 28, 28],
                                                                       "datatype": "UINT8", "data": [0] * 784}]})
    assert r.status_code == 404 and set(r.json()) == {"error"}  # a V2 error body
    r = client.post(f"/v2/models/{'0' * 24}/infer", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and set(r.json()) == {"error"}
    r = client.post(f"/v2/models/{'0' * 24}/infer", json={"inputs": "x"})
    assert r.status_code == 400 and set(r.json()) == {"error"}
    cache = _service(client).dir
    assert sorted(os.listdir(cache)) == [".hypersan.json"]  # nothing was written, anywhere


def test_cache_dir_that_is_not_ours_is_refused(engine, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(Exception, match="not a hypersan serve cache"):
        create_app(engine, cache_dir=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    app = create_app(engine, cache_dir=tmp_path / "new")
    assert (tmp_path / "new" / ".hypersan.json").read_text().count(CACHE_KIND) == 1
    app.state.service.close()


def test_openapi_documents_the_endpoints_with_examples(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/subnets", "/v1/subnets/{subnet_id}", "/v1/subnets/{subnet_id}/{filename}", "/v1/predict",
                 "/healthz", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
                 "/v2/models/{model_name}/ready", "/v2/models/{model_name}/infer"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    for name in ("SubnetRequest", "PredictRequest", "SubnetInfo", "PredictResponse", "V2InferenceRequest"):
        assert schemas[name].get("examples"), name
    assert "201" in spec["paths"]["/v1/subnets"]["post"]["responses"]


# ------------------------------------------------------------------ building, files, predictions

@needs_fmnist
def test_subnets_ids_files_and_predictions(client, engine):
    r = client.post("/v1/subnets", json={"classes": PAIR})
    assert r.status_code == 201
    info = r.json()
    assert set(info) >= {"id", "classes", "mac_ratio", "param_ratio", "links"}
    assert ID_RE.fullmatch(info["id"]) and info["classes"] == PAIR
    assert 0 < info["mac_ratio"] < 0.5 and 0 < info["param_ratio"] < 0.5
    sid = info["id"]
    # the same class set in any form gives the same id, and is not built again
    for same in ({"classes": ["bag", "sneaker"]}, {"classes": [8, 7]}, {"request": "sneakers and bags"}):
        r = client.post("/v1/subnets", json=same)
        assert r.status_code == 200 and r.json()["id"] == sid, same
    assert _service(client).counts["builds"] == 1
    other = client.post("/v1/subnets", json={"classes": ["Sneaker", "Sandal"]}).json()["id"]
    assert other != sid
    assert client.get(f"/v1/subnets/{sid}").json() == {**info, "links": info["links"]}
    # files: config.json and safetensors at once, ONNX and .pt2 exported on the first download
    cfg = client.get(info["links"]["config"]).json()
    assert cfg["classes"] == PAIR and cfg["serve"]["id"] == sid
    assert client.get(info["links"]["safetensors"]).content[8:9] == b"{"
    onnx = client.get(info["links"]["onnx"])
    assert onnx.status_code == 200 and len(onnx.content) > 10_000
    assert client.get(f"/v1/subnets/{sid}/config.json").json()["files"]["onnx"] == "model.onnx"
    assert client.get(f"/v1/subnets/{sid}/model.pt2").content[:2] == b"PK"  # a zip archive
    assert client.get(f"/v1/subnets/{sid}/model.pickle").status_code == 404
    # predictions equal the engine's own pruned net; arrays, [H][W] and PNG give the same answer
    x = _images(3)
    expected = torch.sigmoid(engine.subnet(PAIR, fold_bn=True)(x.float() / 255)).detach().numpy()
    images = [x[0].tolist(), x[1, 0].tolist(), base64.b64encode(encode_png(x[2].numpy())).decode()]
    r = client.post("/v1/predict", json={"subnet": sid, "images": images})
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"subnet", "classes", "predictions", "latency_ms"}
    assert body["subnet"] == sid and body["classes"] == PAIR and body["latency_ms"] > 0
    assert len(body["predictions"]) == 3
    for p, e in zip(body["predictions"], expected):
        assert set(p) == {"class", "scores"}
        assert np.allclose([p["scores"][c] for c in PAIR], e, atol=1e-5)
        assert p["class"] == (PAIR[int(np.argmax(e))] if max(e) > 0.5 else None)  # null: no class fires
    assert body["threshold"] == 0.5
    by_request = client.post("/v1/predict", json={"request": "sneakers and bags", "images": images}).json()
    assert by_request["subnet"] == sid and by_request["predictions"] == body["predictions"]
    # bad images: shape, dtype, range, count, base64 that is no PNG
    for bad in ([[[0] * 27] * 28], [[[0.5] * 28] * 28], [[[True] * 28] * 28], [[[300] * 28] * 28], ["!!"],
                [base64.b64encode(b"not a png").decode()], [{"x": 1}], [[[0] * 28] * 27 + [[0] * 3]], []):
        r = client.post("/v1/predict", json={"subnet": sid, "images": bad})
        assert r.status_code == 422 and r.json()["error"], bad
    r = client.post("/v1/predict", json={"subnet": sid, "images": [x[0].tolist()] * 9})
    assert r.status_code == 422 and "at most 8" in r.json()["error"]


@needs_fmnist
def test_open_inference_protocol(client, engine):
    sid = client.post("/v1/subnets", json={"classes": PAIR}).json()["id"]
    assert client.get(f"/v2/models/{sid}/ready").json() == {"name": sid, "ready": True}
    meta = client.get(f"/v2/models/{sid}").json()
    assert meta["name"] == sid and meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"logits": [-1, 2], "probabilities": [-1, 2],
                                                               "class": [-1]}
    x = _images(2, seed=3)
    logits = engine.subnet(PAIR, fold_bn=True)(x.float() / 255).detach().numpy()
    req = {"id": "r1", "inputs": [{"name": "images", "shape": [2, 1, 28, 28], "datatype": "UINT8",
                                   "data": x.reshape(-1).tolist()}]}
    r = client.post(f"/v2/models/{sid}/infer", json=req)
    assert r.status_code == 200
    out = r.json()
    assert out["model_name"] == sid and out["id"] == "r1"
    got = {o["name"]: o for o in out["outputs"]}
    assert got["logits"]["datatype"] == "FP32" and got["logits"]["shape"] == [2, 2]
    assert np.allclose(np.array(got["logits"]["data"]).reshape(2, 2), logits, atol=1e-4)
    assert got["class"]["datatype"] == "BYTES" and got["class"]["data"] == [PAIR[i] for i in logits.argmax(1)]
    # FP32 (pixels / 255), nested data, one requested output
    fp = {"inputs": [{"name": "images", "shape": [2, 28, 28], "datatype": "FP32",
                      "data": (x[:, 0].float() / 255).tolist()}], "outputs": [{"name": "probabilities"}]}
    out = client.post(f"/v2/models/{sid}/infer", json=fp).json()
    assert [o["name"] for o in out["outputs"]] == ["probabilities"]
    assert np.allclose(out["outputs"][0]["data"], torch.sigmoid(torch.from_numpy(logits)).reshape(-1), atol=1e-4)
    bad_inputs = [
        {"name": "images", "shape": [1, 1, 28, 28], "datatype": "INT64", "data": [0] * 784},
        {"name": "images", "shape": [1, 1, 28, 27], "datatype": "UINT8", "data": [0] * 756},
        {"name": "images", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 783},
        {"name": "images", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [256] * 784},
        {"name": "images", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [255.0] * 784},
        {"name": "images", "shape": [9, 1, 28, 28], "datatype": "UINT8", "data": [0] * 784 * 9},
        {"name": "images", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": ["a"] * 784},
    ]
    for bad in bad_inputs:
        r = client.post(f"/v2/models/{sid}/infer", json={"inputs": [bad]})
        assert r.status_code == 400 and set(r.json()) == {"error"}, bad
    r = client.post(f"/v2/models/{sid}/infer", json={**req, "outputs": [{"name": "embeddings"}]})
    assert r.status_code == 400 and "embeddings" in r.json()["error"]


@needs_fmnist
def test_ids_are_deterministic_across_servers(engine, tmp_path):
    ids = []
    for i in range(2):
        with TestClient(create_app(engine, cache_dir=None)) as c:
            ids.append(c.post("/v1/subnets", json={"classes": ["Coat", "Trouser"]}).json()["id"])
            ids.append(c.post("/v1/subnets", json={"classes": ["Coat", "Trouser"], "round_to": 32}).json()["id"])
            # fmnist_b16's widths are multiples of 16 already: rounding to 16 gives the same subnet, so one id
            ids.append(c.post("/v1/subnets", json={"classes": ["Coat", "Trouser"], "round_to": 16}).json()["id"])
    assert ids[0] == ids[3] and ids[1] == ids[4] and ids[0] != ids[1]
    assert ids[2] == ids[0] and ids[5] == ids[0]


@needs_fmnist
def test_restarted_server_serves_from_the_cache_folder_without_building(engine, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    with TestClient(create_app(engine, cache_dir=cache)) as c:
        info = c.post("/v1/subnets", json={"classes": PAIR}).json()
        c.get(f"/v1/subnets/{info['id']}/model.onnx")
        first = c.post("/v1/predict", json={"subnet": info["id"], "images": [_images(1)[0].tolist()]}).json()

    calls = []
    monkeypatch.setattr(engine, "subnet", lambda *a, **k: calls.append(a) or pytest.fail("rebuilt"))
    with TestClient(create_app(engine, cache_dir=cache)) as c:
        sid = info["id"]
        assert c.get(f"/v2/models/{sid}/ready").json()["ready"] is True
        assert c.get(f"/v1/subnets/{sid}").json()["mac_ratio"] == info["mac_ratio"]
        again = c.post("/v1/predict", json={"subnet": sid, "images": [_images(1)[0].tolist()]}).json()
        assert again["predictions"] == first["predictions"]
        assert c.post("/v1/subnets", json={"request": "sneakers and bags"}).status_code == 200
        assert c.get(f"/v1/subnets/{sid}/model.onnx").status_code == 200
        counts = _service(c).counts
        assert counts["builds"] == 0 and counts["exports"] == 0 and counts["loads"] == 1
    assert calls == []

    # a class set built before the restart is found while the build worker is busy with another one
    import threading

    gate = threading.Event()
    with TestClient(create_app(engine, cache_dir=cache)) as c:
        busy = _service(c)._build_pool.submit(gate.wait, 60)  # a long build holds the one build worker
        try:
            r = c.post("/v1/subnets", json={"classes": PAIR})
            assert r.status_code == 200 and r.json()["id"] == info["id"] and not busy.done()
        finally:
            gate.set()


@needs_fmnist
def test_lru_keeps_at_most_cache_size_and_reloads_evicted(engine, tmp_path):
    with TestClient(create_app(engine, cache_dir=None, cache_size=2)) as c:
        ids = [c.post("/v1/subnets", json={"classes": [a, b]}).json()["id"] for a, b in ((0, 1), (0, 2), (0, 3))]
        svc = _service(c)
        assert svc.in_memory() == ids[1:]
        r = c.post("/v1/predict", json={"subnet": ids[0], "images": [_images(1)[0].tolist()]})
        assert r.status_code == 200
        assert svc.counts["builds"] == 3 and svc.counts["loads"] == 1 and len(svc.in_memory()) == 2
        tmp = svc.dir
    assert not tmp.exists()  # the private folder of a server without --cache-dir goes with it


@needs_fmnist
def test_failed_build_leaves_nothing_and_is_retried(client, monkeypatch):
    import hypersan.deploy.export as export

    real = export.save_tensors

    def half_then_fail(path, tensors):
        Path(path).write_bytes(b"\0" * 100)  # half-written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_tensors", half_then_fail)
    r = client.post("/v1/subnets", json={"classes": ["Coat", "Bag"]})
    assert r.status_code == 503 and "No space left" in r.json()["error"]
    cache = _service(client).dir
    assert sorted(os.listdir(cache)) == [".hypersan.json"]
    monkeypatch.setattr(export, "save_tensors", real)
    r = client.post("/v1/subnets", json={"classes": ["Coat", "Bag"]})
    assert r.status_code == 201
    assert sorted(os.listdir(cache)) == [".hypersan.json", r.json()["id"]]


KILLED_BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import hypersan.deploy.export as export
    from fastapi.testclient import TestClient
    from hypersan import PruningEngine
    from hypersan.serve.app import create_app

    def stall(path, tensors):
        Path(path).write_bytes(b"half")
        Path(sys.argv[2]).write_text("writing")
        time.sleep(60)

    export.save_tensors = stall
    with TestClient(create_app(PruningEngine.from_pretrained("fmnist_b16"), cache_dir=sys.argv[1])) as c:
        c.post("/v1/subnets", json={"classes": ["Trouser", "Dress"]})
""")


@needs_fmnist
def test_killed_build_leaves_no_half_written_files(engine, tmp_path):
    cache, flag = tmp_path / "cache", tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(cache), str(flag)], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not flag.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert flag.exists(), "the build never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    visible = [n for n in os.listdir(cache) if not n.startswith(".")]
    assert visible == []  # the half-written tree is only in a hidden temporary, never under the id
    assert any(".tmp-" in n for n in os.listdir(cache))
    with TestClient(create_app(engine, cache_dir=cache)) as c:  # a restart sweeps the dead process's leftovers
        assert sorted(os.listdir(cache)) == [".hypersan.json"]
        r = c.post("/v1/subnets", json={"classes": ["Trouser", "Dress"]})
        assert r.status_code == 201 and _service(c).counts["builds"] == 1
        assert c.get(f"/v1/subnets/{r.json()['id']}/config.json").json()["classes"] == ["Trouser", "Dress"]


@needs_fmnist
def test_concurrent_identical_requests_build_once_and_builds_do_not_stall_predictions(engine, tmp_path,
                                                                                      monkeypatch):
    app = create_app(engine, cache_dir=tmp_path / "cache")
    svc = app.state.service
    real, calls, release = engine.subnet, [], threading.Event()

    def slow_subnet(*a, **k):
        calls.append(a)
        release.wait(30)
        return real(*a, **k)

    async def scenario():
        ready, _ = await svc.create((0, 9))  # built before the slow build starts
        monkeypatch.setattr(engine, "subnet", slow_subnet)
        builds = [asyncio.ensure_future(svc.create((3, 6))) for _ in range(8)]
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        logits, _ = await svc.forward(ready, _images(4).numpy())  # while the build is held
        served = time.perf_counter() - t0
        assert not any(b.done() for b in builds)
        release.set()
        results = await asyncio.gather(*builds)
        return results, served, logits

    try:
        results, served, logits = asyncio.run(scenario())
    finally:
        release.set()
        svc.close()
    assert len(calls) == 1 and svc.counts["builds"] == 2  # (0, 9) first, then (3, 6) once for the eight requests
    assert len({sub.id for sub, _ in results}) == 1
    assert served < 5 and logits.shape == (4, 2)


# ------------------------------------------------------------------ a real server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_uvicorn_on_a_loopback_port(engine, tmp_path):
    import httpx
    import uvicorn

    port = _free_port()
    app = create_app(engine, cache_dir=tmp_path / "cache", token=TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
        assert httpx.post(f"{base}/v1/subnets", json={"classes": PAIR}).status_code == 401
        r = httpx.post(f"{base}/v1/subnets", json={"request": "airplanes"},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert r.status_code == 422 and r.json()["grounding"]["unknown"] == ["airplanes"]
        r = httpx.post(f"{base}/v1/predict", content=b"x" * (9 << 20), headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 413
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_cli_serve_passes_its_options_and_checks_them(monkeypatch, capsys):
    import hypersan.serve.app as serve_mod
    from hypersan.cli.commands import build_parser, main

    seen = {}
    monkeypatch.setattr(serve_mod, "serve", lambda *a, **k: seen.update(args=a))
    monkeypatch.setenv("HYPERSAN_SERVE_TOKEN", "from-env")
    assert main(["serve", "--cache-dir", "c", "--cache-size", "5", "--port", "8123"]) == 0
    assert seen["args"][:6] == (None, "127.0.0.1", 8123, "from-env", "c", 5)
    assert main(["serve", "--cache-size", "0"]) == 2
    assert "--cache-size must be at least 1" in capsys.readouterr().err
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    assert all(a.help for a in sub._actions if a.dest != "help")


def test_an_internal_error_is_logged_and_answered_without_its_text(engine, tmp_path, caplog):
    app = create_app(engine, cache_dir=tmp_path / "c")

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret path /home/alice/key")

    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level("ERROR", "hypersan.serve"):
        r = c.get("/boom")
    assert r.status_code == 500 and "secret" not in r.text and "reference" in r.json()["error"]
    assert any("secret path" in str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info)


def test_the_token_can_come_from_a_file(tmp_path, capsys):
    from hypersan.cli.commands import main

    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["serve", "--token-file", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["serve", "--token", "a", "--token-file", str(empty)]) == 2
    assert "not both" in capsys.readouterr().err


def test_pngs_with_alpha_are_read_and_their_alpha_dropped():
    import zlib

    from hypersan.serve.wire import InputError, decode_png

    def png(pixels, color):  # (H, W, C) uint8, filter none
        h, w, _ = pixels.shape
        raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))

        def chunk(kind, body):
            return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, color, 0, 0, 0])
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                + chunk(b"IEND", b""))

    g = np.random.default_rng(0)
    gray_alpha = g.integers(0, 256, (4, 5, 2), dtype=np.uint8)
    assert np.array_equal(decode_png(png(gray_alpha, 4), 1, 4, 5)[0], gray_alpha[..., 0])
    rgba = g.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    assert np.array_equal(decode_png(png(rgba, 6), 3, 4, 5), rgba[..., :3].transpose(2, 0, 1))
    with pytest.raises(InputError, match="RGBA, but this subnet takes 1-channel"):
        decode_png(png(rgba, 6), 1, 4, 5)


def test_the_server_holds_bounded_resources(engine, tmp_path):
    import asyncio

    from hypersan.serve.app import ServeError, SubnetService

    before = len(engine.cache)
    app = create_app(engine, cache_dir=tmp_path / "c", cache_size=1, disk_items=2, stats_entries=3)
    pairs = [["Sneaker", "Bag"], ["Sandal", "Bag"], ["Trouser", "Bag"], ["Coat", "Bag"]]
    with TestClient(app) as c:
        ids = [c.post("/v1/subnets", json={"classes": p}).json()["id"] for p in pairs]
        service = _service(c)
        on_disk = [p.name for p in (tmp_path / "c").iterdir() if len(p.name) == 24]
        assert len(service.in_memory()) == 1 and len(on_disk) <= 2  # memory and disk within their bounds
        assert ids[-1] in on_disk  # the most recent is kept; the least recently used went first
        assert c.get(f"/v1/subnets/{ids[-1]}/model.safetensors").status_code == 200
        assert len(engine.cache) <= before + 3
    # a full build queue answers 503 with Retry-After, and never queues more
    svc = SubnetService(engine, tmp_path / "q", queue_size=1)

    async def full():
        svc._inflight[("subnet", "0" * 24)] = asyncio.get_running_loop().create_future()
        with pytest.raises(ServeError) as e:
            await svc.create((5, 7))
        return e.value

    err = asyncio.run(full())
    assert err.status == 503 and err.headers["Retry-After"] == "1" and "queue-size" in err.message


def test_the_statistics_cache_drops_the_least_recently_used():
    from hypersan.prune.stats import StatsCache

    eng = PruningEngine.from_pretrained("fmnist_b16")
    keys = eng.cache.keys()[:3]
    small = StatsCache(eng.model.backbone, max_entries=2)
    small.put(keys[0], eng.cache.get(keys[0]))
    small.put(keys[1], eng.cache.get(keys[1]))
    assert small.get(keys[0]) is not None  # used: now the most recent
    small.put(keys[2], eng.cache.get(keys[2]))
    assert set(small.keys()) == {keys[0], keys[2]}
