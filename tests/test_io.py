import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hypersan.io as hio
from hypersan.io import (ArtifactError, OutputExistsError, atomic_dir, check_output_dir, check_safetensors,
                         is_hypersan_dir, read_json)


def _tree(root: Path) -> dict:
    """Every path under root (relative), with the bytes of each file: equal trees compare equal."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _write(path, kind, text="v1", force=False):
    with atomic_dir(path, kind, force) as tmp:
        (tmp / "config.json").write_text(text)
        (tmp / "deep").mkdir()
        (tmp / "deep" / "w.bin").write_bytes(text.encode() * 3)


def _user_folder(tmp_path) -> Path:
    d = tmp_path / "out"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes\n")
    (d / "sub" / "data.bin").write_bytes(bytes(range(256)))
    return d


def test_a_new_folder_gets_its_files_and_the_marker(tmp_path):
    _write(tmp_path / "x" / "out", "artifact")
    d = tmp_path / "x" / "out"
    assert (d / "config.json").read_text() == "v1" and (d / "deep" / "w.bin").read_bytes() == b"v1v1v1"
    assert json.loads((d / ".hypersan.json").read_text()) == {"kind": "artifact", "format": 1,
                                                                "files": ["config.json", "deep"]}
    assert is_hypersan_dir(d, "artifact") and not is_hypersan_dir(d, "checkpoint")
    umask = os.umask(0)
    os.umask(umask)
    assert (d.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's private 0o700
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["out"]


@pytest.mark.parametrize("force", [False, True])
def test_a_user_folder_is_refused_and_left_byte_identical(tmp_path, force):
    d = _user_folder(tmp_path)
    before = _tree(d)
    ran = []
    with pytest.raises(OutputExistsError, match=r"out is not empty \(it holds .*\) and has no \.hypersan\.json, so it "
                                                r"is not a hypersan checkpoint folder; refusing to replace it, even "
                                                r"with force=True \(--force\)"):
        with atomic_dir(d, "checkpoint", force) as tmp:
            ran.append(tmp)
    assert ran == []  # refused before the caller spent any work
    assert _tree(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(OutputExistsError):
        check_output_dir(d, "checkpoint", force)


def test_the_same_kind_is_replaced_only_with_force(tmp_path):
    d = tmp_path / "out"
    _write(d, "checkpoint", "v1")
    before = _tree(d)
    with pytest.raises(OutputExistsError, match=r"out already holds a hypersan checkpoint; pass force=True "
                                                r"\(--force on the command line\) to replace it, or choose another"):
        _write(d, "checkpoint", "v2")
    assert _tree(d) == before
    (d / "deep" / "stale.bin").write_bytes(b"from v1")
    _write(d, "checkpoint", "v2", force=True)
    assert (d / "config.json").read_text() == "v2" and not (d / "deep" / "stale.bin").exists()
    assert is_hypersan_dir(d, "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("force", [False, True])
def test_another_kind_a_file_and_a_symlink_are_refused(tmp_path, force):
    art = tmp_path / "art"
    _write(art, "artifact")
    before = _tree(art)
    with pytest.raises(OutputExistsError, match="art holds a hypersan artifact, not a checkpoint; refusing"):
        _write(art, "checkpoint", "v2", force)
    assert _tree(art) == before
    f = tmp_path / "file"
    f.write_text("mine")
    with pytest.raises(OutputExistsError, match="file exists and is not a folder"):
        _write(f, "checkpoint", force=force)
    assert f.read_text() == "mine"
    link = tmp_path / "link"
    link.symlink_to(art)
    with pytest.raises(OutputExistsError, match="link is a symbolic link"):
        _write(link, "artifact", force=force)
    assert link.is_symlink() and _tree(art) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "file", "link"]


def test_an_empty_folder_is_accepted(tmp_path):
    (tmp_path / "out").mkdir()
    check_output_dir(tmp_path / "out", "artifact")
    _write(tmp_path / "out", "artifact")
    assert is_hypersan_dir(tmp_path / "out", "artifact")


@pytest.mark.parametrize("exchange", [True, False])
def test_an_error_in_the_block_leaves_the_old_folder_and_no_temporary(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(hio, "_renameat2", None)
    d = tmp_path / "out"
    _write(d, "artifact")
    before = _tree(d)
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(d, "artifact", force=True) as tmp:
            (tmp / "config.json").write_text("half")
            raise RuntimeError("killed")
    assert _tree(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.skipif(hio._renameat2 is None, reason="no renameat2 here")
def test_replacing_never_leaves_the_path_without_a_folder(tmp_path, monkeypatch):
    d = tmp_path / "out"
    _write(d, "artifact", "v1")
    calls = []

    def watch(fn):
        def wrapped(*args):
            out = fn(*args)
            calls.append(fn.__name__)
            assert d.is_dir(), f"no folder at the path after {fn.__name__}{args}"
            return out
        return wrapped

    monkeypatch.setattr(hio.os, "rename", watch(os.rename))
    monkeypatch.setattr(hio, "_exchange", watch(hio._exchange))
    _write(d, "artifact", "v2", force=True)
    assert calls == ["_exchange"]
    assert (d / "config.json").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_fallback_without_renameat2_replaces_too(tmp_path, monkeypatch):
    monkeypatch.setattr(hio, "_renameat2", None)
    d = tmp_path / "out"
    _write(d, "artifact", "v1")
    _write(d, "artifact", "v2", force=True)
    assert (d / "config.json").read_text() == "v2" and is_hypersan_dir(d, "artifact")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("exchange", [True, False])
def test_a_folder_that_changed_during_the_write_is_not_replaced(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(hio, "_renameat2", None)
    d = tmp_path / "out"
    _write(d, "artifact")
    with pytest.raises(OutputExistsError, match="changed while it was being written|not a hypersan artifact folder"):
        with atomic_dir(d, "artifact", force=True) as tmp:
            (tmp / "config.json").write_text("v2")
            (d / ".hypersan.json").unlink()  # meanwhile someone made it theirs
            (d / "notes.txt").write_text("mine")
    assert (d / "notes.txt").read_text() == "mine" and (d / "config.json").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("exchange", [True, False])
def test_the_swap_puts_back_a_folder_that_appeared_after_the_last_check(tmp_path, monkeypatch, exchange):
    # the swap re-checks what it took out: a user folder that slipped in after check_output_dir is put back
    if not exchange:
        monkeypatch.setattr(hio, "_renameat2", None)
    mine = _user_folder(tmp_path)
    before = _tree(mine)
    monkeypatch.setattr(hio, "check_output_dir", lambda *a: None)  # as if `mine` appeared just after the check
    with pytest.raises(OutputExistsError, match="changed while it was being written"):
        with atomic_dir(mine, "artifact", force=True) as tmp:
            (tmp / "config.json").write_text("v2")
    assert _tree(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temporaries_are_swept_and_live_ones_kept(tmp_path):
    host, old = hio.host_tag(), time.time() - 2 * hio.STALE_AFTER_S
    names = {
        f".out.tmp-{host}-{_dead_pid()}-abc": False,  # a crashed write on this host
        f".out.old-{host}-{_dead_pid()}-abc": False,
        f".out.tmp-{host}-{os.getppid()}-abc": True,  # its writer is alive
        f".out.tmp-{host}-{os.getpid()}-abc": True,  # ours
        ".out.tmp-otherhost-1-abc": True,  # another machine's, recent: its pid means nothing here
        ".out.tmp-otherhost-2-old": False,  # another machine's, older than STALE_AFTER_S
        ".out.tmp-notes": True,  # not a name atomic_dir gives
        ".out.backup": True,
        f".other.tmp-{host}-{_dead_pid()}-abc": True,  # beside another folder
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    os.utime(tmp_path / ".out.tmp-otherhost-2-old", (old, old))
    a_file = f".out.tmp-{host}-{_dead_pid()}-file"
    (tmp_path / a_file).write_text("a file, not a leftover folder")
    _write(tmp_path / "out", "artifact")
    assert {p.name for p in tmp_path.iterdir()} == {n for n, keep in names.items() if keep} | {"out", a_file}


def test_a_kind_is_required(tmp_path):
    with pytest.raises(TypeError):
        with atomic_dir(tmp_path / "x"):
            pass
    assert not (tmp_path / "x").exists()


def test_a_bad_marker_is_not_a_marker(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    for text in ("{", "[]", '{"kind": 3}', json.dumps({"kind": "artifact", "pad": "x" * 5000})):
        (d / ".hypersan.json").write_text(text)
        assert not is_hypersan_dir(d, "artifact")
        with pytest.raises(OutputExistsError, match="has no .hypersan.json"):
            check_output_dir(d, "artifact", force=True)


def test_read_json_bounds_and_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"a": 1}')
    assert read_json(p, max_bytes=100) == {"a": 1}
    with pytest.raises(ArtifactError, match="more than the 4 such a file can need"):
        read_json(p, max_bytes=4)
    p.write_text("[" * 100000)
    with pytest.raises(ArtifactError, match="not valid JSON|nested too deeply"):
        read_json(p)
    with pytest.raises(ArtifactError, match="missing"):
        read_json(tmp_path / "none.json")


def test_check_safetensors_wants_the_tensors_to_tile_the_file(tmp_path):
    p = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.int64)}, str(p))
    want = {"a": ((2, 3), torch.float32), "b": ((4,), torch.int64)}
    check_safetensors(p, want)
    data = p.read_bytes()
    p.write_bytes(data + b"\0" * 8)
    with pytest.raises(ArtifactError, match="8 bytes after the last tensor"):
        check_safetensors(p, want)
    p.write_bytes(data[:-4])
    with pytest.raises(ArtifactError, match="do not fit .* truncated or corrupt"):
        check_safetensors(p, want)
    p.write_bytes(data)
    with pytest.raises(ArtifactError, match=r"wrong shapes: a: file \(2, 3\) vs model \(3, 2\)"):
        check_safetensors(p, dict(want, a=((3, 2), torch.float32)))


def test_an_orphaned_old_tree_is_restored_not_swept(tmp_path):
    # the fallback path (no RENAME_EXCHANGE) crashed between its two renames: the old tree is the only copy
    _write(tmp_path / "out", "checkpoint", text="epoch 50")
    before = _tree(tmp_path / "out")
    orphan = tmp_path / f".out.old-{hio.host_tag()}-{_dead_pid()}-abc"
    os.rename(tmp_path / "out", orphan)
    removed = hio.sweep_stale(tmp_path / "out")
    assert orphan not in removed and not orphan.exists()
    assert _tree(tmp_path / "out") == before  # the epoch-50 checkpoint is back where it was
    # the next write goes on from it as usual
    _write(tmp_path / "out", "checkpoint", text="epoch 51", force=True)
    assert (tmp_path / "out" / "config.json").read_text() == "epoch 51"


def test_a_forced_replace_keeps_what_a_user_put_in_the_folder(tmp_path):
    _write(tmp_path / "run", "checkpoint", text="epoch 1")
    (tmp_path / "run" / "my_notes.md").write_text("lr 0.1 looked unstable")
    (tmp_path / "run" / "plots").mkdir()
    (tmp_path / "run" / "plots" / "a.png").write_bytes(b"png")
    _write(tmp_path / "run", "checkpoint", text="epoch 2", force=True)
    assert (tmp_path / "run" / "config.json").read_text() == "epoch 2"
    assert (tmp_path / "run" / "my_notes.md").read_text() == "lr 0.1 looked unstable"
    assert (tmp_path / "run" / "plots" / "a.png").read_bytes() == b"png"
    _write(tmp_path / "run", "checkpoint", text="epoch 3", force=True)  # and at every later write
    assert (tmp_path / "run" / "my_notes.md").exists() and (tmp_path / "run" / "config.json").read_text() == "epoch 3"
