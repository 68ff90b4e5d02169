"""Safe directory writes, JSON files and checked safetensors loading.

Every directory hypersan writes carries a marker file, `.hypersan.json` = {"kind": ..., "format": 1}, so that
hypersan only ever replaces a folder it wrote itself, of the kind it is writing ("checkpoint", "artifact",
"ablation"); anything else at the target is left alone and reported (see `check_output_dir`).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Optional

if TYPE_CHECKING:  # torch and safetensors load when tensors are read or written: JSON alone needs neither
    import torch

MARKER = ".hypersan.json"
MARKER_FORMAT = 1
STALE_AFTER_S = 3600.0  # a temporary folder this old is a crashed write's, whatever its owner's pid says
MAX_SAFETENSORS_HEADER = 1 << 24  # bytes; a header lists names and shapes, ~100 bytes a tensor
_MAX_MARKER_BYTES = 4096


class ArtifactError(RuntimeError):
    """A checkpoint or artifact on disk is missing, truncated or does not match what was expected."""


class OutputExistsError(ArtifactError):
    """The output folder exists and may not be replaced (not hypersan's, another kind, or no force).

    A subclass of ArtifactError (not FileExistsError) so that every caller, and the CLI's one error handler,
    that reports on-disk problems as a clear one-line message reports this one too.
    """


# ------------------------------------------------------------------ markers and the output check

def _marker_kind(path: Path) -> Optional[str]:
    """The kind in a real folder's marker file, or None where there is no readable marker."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return None
        m = path / MARKER
        st = os.lstat(m)
        # a symlinked or huge marker is not one hypersan wrote
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_MARKER_BYTES:
            return None
        data = json.loads(m.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"the kind of a hypersan folder is a non-empty string (e.g. 'artifact'), got {kind!r}")


def is_hypersan_dir(path: str | os.PathLike, kind: str) -> bool:
    """Whether `path` is a folder (not a symlink) whose marker says hypersan wrote it as a `kind`."""
    _check_kind(kind)
    return _marker_kind(Path(path)) == kind


def _first_entries(path: Path, n: int = 3) -> list[str]:
    """Up to n names in a folder (without listing a huge folder whole)."""
    out = []
    with os.scandir(path) as it:
        for e in it:
            out.append(e.name)
            if len(out) > n:
                break
    return out


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, what: str = "writing") -> Iterator[None]:
    """Hold an exclusive lock on `path` for as long as one process writes it: a second writer (a `--resume`
    started while the run still trains, say) is refused at once with OutputExistsError naming the first one's
    pid, instead of both replacing the same checkpoint in turn. The lock is a file beside `path`
    (`.NAME.lock`, removed on exit); where the platform has no flock it is not taken."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here: one writer per folder is then the user's to keep
        yield
        return
    p = Path(path)
    lock = p.parent / f".{p.name}.lock"
    p.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputExistsError(f"another process (pid {holder}) is {what} {p}; wait for it to finish, or "
                                    "write to another folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not a file its last holder just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def check_output_dir(path: str | os.PathLike, kind: str, force: bool = False) -> None:
    """Raise OutputExistsError unless `atomic_dir(path, kind, force)` may write `path` (the same check, up front).

    Allowed: no such path, an empty folder, or (with force) a folder hypersan wrote as the same kind.
    Everything else is refused, force or not: a file, a symlink, a folder of another kind or without a marker.
    """
    _check_kind(kind)
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    refuse = "; refusing to replace it, even with force=True (--force): choose another folder"
    if stat.S_ISLNK(st.st_mode):
        raise OutputExistsError(f"{p} is a symbolic link, not a hypersan {kind} folder{refuse}, or name the "
                                "folder it points to")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputExistsError(f"{p} exists and is not a folder, so not a hypersan {kind} folder{refuse}")
    found = _marker_kind(p)
    if found == kind:
        if force:
            return
        raise OutputExistsError(f"{p} already holds a hypersan {kind}; pass force=True (--force on the command "
                                "line) to replace it, or choose another folder")
    if found is not None:
        raise OutputExistsError(f"{p} holds a hypersan {found}, not a {kind}{refuse}")
    names = _first_entries(p)
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise OutputExistsError(f"{p} is not empty (it holds {shown}) and has no {MARKER}, so it is not a hypersan "
                                f"{kind} folder{refuse}, or empty it yourself (a folder written by a hypersan older "
                                "than the marker files has none either)")


# ------------------------------------------------------------------ durable, atomic replacement

def _fsync_dir(path: Path) -> None:
    """fsync a folder, so that the names created or renamed in it survive a power loss."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # some file systems cannot sync a folder; nothing lost
            raise
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync one file, so that its bytes survive a power loss once renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = _fsync_dir  # the public names of the two syncs every writer of hypersan uses


def _flush_tree(root: Path, umask: int) -> None:
    """fsync every file and folder under root (folders after their contents), giving them ordinary permissions."""
    for d, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            f = os.path.join(d, name)
            if not stat.S_ISREG(os.lstat(f).st_mode):
                continue
            os.chmod(f, 0o666 & ~umask)  # temporary files may be private; the result gets ordinary permissions
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(d, 0o777 & ~umask)  # mkdtemp made the top folder private
        _fsync_dir(Path(d))


def _load_renameat2():
    """libc's renameat2 (glibc >= 2.28), or None where this system has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # no syscall, or a file system without
        return False
    raise OSError(err, os.strerror(err), str(b))


def host_tag() -> str:
    """This machine's name as it goes into temporary names (letters, digits and _)."""
    # the host goes into temporary names so that a pid is only ever checked on the machine that owns it
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:32] or "host"


def _temp_prefix(path: Path, what: str) -> str:
    """`.<name>.<what>-<host>-<pid>-`: the name of a temporary beside `path`, before its random part."""
    return f".{path.name}.{what}-{host_tag()}-{os.getpid()}-"


_TEMP_TAIL = re.compile(r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]{1,10})-[A-Za-z0-9_]+")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except (OverflowError, OSError):
        return False
    return True


def sweep_stale(path: str | os.PathLike) -> list[Path]:
    """Remove leftovers of crashed writes of `path` (`.<name>.tmp-*`, `.<name>.old-*`); returns what was removed.

    An old tree (`.old-`, with its marker) left while `path` is missing is the only copy of the data (a crash
    between the two renames of the fallback path): it is renamed back to `path`, never removed.

    A leftover goes when its owner (the host and pid in its name) is this host's and no longer alive, or when it
    is older than STALE_AFTER_S; this process's own are kept (another thread may be writing). Nothing else is
    touched: only folders whose whole name has the form atomic_dir gives them.
    """
    path = Path(os.path.abspath(path))
    host, me, now, removed = host_tag(), os.getpid(), time.time(), []
    prefixes = tuple(f".{path.name}.{what}-" for what in ("tmp", "old"))
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for e in entries:
        prefix = next((p for p in prefixes if e.name.startswith(p)), None)
        m = _TEMP_TAIL.fullmatch(e.name[len(prefix):]) if prefix else None
        if m is None:
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        pid, mine = int(m["pid"]), m["host"] == host
        if mine and pid == me:
            continue
        if (mine and not _pid_alive(pid)) or now - st.st_mtime > STALE_AFTER_S:
            if (prefix.endswith(".old-") and not os.path.lexists(path)
                    and os.path.isfile(os.path.join(e.path, MARKER))):
                # a crash between the fallback's two renames: the old tree is the only copy; put it back
                try:
                    os.rename(e.path, path)
                    _fsync_dir(path.parent)
                    continue
                except OSError:
                    pass
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(Path(e.path))
    return removed


def _empty_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode) and not _first_entries(path, 0)
    except OSError:
        return False


def _replaceable(path: Path, kind: str) -> bool:
    return _empty_dir(path) or _marker_kind(path) == kind


def _changed(path: Path) -> OutputExistsError:
    return OutputExistsError(f"{path} changed while it was being written and is no longer a folder hypersan may "
                             "replace; it was left as it is, and nothing was written: check it, then retry")


def _user_entries(old: Path, new: Path) -> list[str]:
    """Top-level entries of a hypersan tree that hypersan did not write there (its marker lists what it wrote; a
    marker without the list: whatever the new tree lacks), and that the new tree does not hold."""
    try:
        written = json.loads((old / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        written = None
    out = []
    for e in sorted(os.scandir(old), key=lambda e: e.name):
        if e.name == MARKER or os.path.lexists(new / e.name):
            continue
        if written is None or e.name not in written:
            out.append(e.name)
    return out


def _carry_user_files(old: Path, new: Path) -> None:
    """Copy what a user put inside a hypersan folder into the tree that replaces it: nothing of theirs is lost."""
    if not os.path.isdir(old) or os.path.islink(old):
        return
    for name in _user_entries(old, new):
        src, dst = old / name, new / name
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)


def _commit(tmp: Path, path: Path, kind: str, force: bool) -> None:
    """Put the finished tree `tmp` at `path`; on any failure `path` is as it was and `tmp` is gone. Files a user
    put inside the old tree are carried into the new one."""
    new_at: Optional[Path] = tmp  # where the new tree is while it is not yet at `path`
    old: Optional[Path] = None
    try:
        check_output_dir(path, kind, force)  # again: the folder may have changed while the tree was written
        if os.path.lexists(path) and not _empty_dir(path):
            _carry_user_files(path, tmp)
        if not os.path.lexists(path) or _empty_dir(path):
            try:
                os.rename(tmp, path)  # atomic; it replaces an empty folder, never a file or a non-empty folder
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise _changed(path) from None
                raise
            new_at = None
        elif _exchange(tmp, path):
            # one atomic step: `path` always names a complete tree, the old one before, the new one after
            new_at, old = None, tmp
            if not _replaceable(old, kind):  # swapped in since the check: put it back, delete nothing of it
                if _exchange(tmp, path):
                    new_at = tmp
                raise _changed(path)
        else:
            # Fallback without renameat2 (not Linux, or a file system without RENAME_EXCHANGE): two renames,
            # between which there is no folder at `path` for a moment; a crash there leaves the old tree
            # complete under the .old- name beside it.
            old = path.parent / (_temp_prefix(path, "old") + secrets.token_hex(4))
            os.rename(path, old)
            if not _replaceable(old, kind):
                os.rename(old, path)
                old = None
                raise _changed(path)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                old = None
                raise
            new_at = None
        _fsync_dir(path.parent)
    except BaseException:
        if new_at is not None:
            shutil.rmtree(new_at, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # a crash here leaves a leftover that sweep_stale removes


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `path` (with a marker of `kind`), on failure it is removed.

    `path` must be free, an empty folder, or (with force) a hypersan folder of the same kind; anything else
    raises OutputExistsError before the block runs, and again, untouched, if it changed meanwhile. A reader
    never sees a half-written tree at `path`; every file is fsynced before it appears there.
    """
    _check_kind(kind)
    target = Path(os.path.abspath(path))
    if not target.name:
        raise ValueError(f"cannot write a hypersan folder at {str(path)!r}; name a folder")
    check_output_dir(path, kind, force)  # fail before the caller spends any work
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target, "tmp"), dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        files = sorted(e.name for e in os.scandir(tmp))  # what hypersan wrote: anything else there is a user's
        write_json(tmp / MARKER, {"kind": kind, "format": MARKER_FORMAT, "files": files})
        _flush_tree(tmp, umask)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _commit(tmp, target, kind, force)


# ------------------------------------------------------------------ JSON and safetensors

def _atomic_file(path: str | os.PathLike, write) -> None:
    """Write a file whole or not at all: `write(tmp)` fills a temporary sibling, which is fsynced, then renamed
    over the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file whole or not at all: a temporary sibling, fsynced, then renamed over the path."""
    _atomic_file(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, data) -> None:
    """Write a JSON file whole or not at all (atomic_write_text)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_json(path: Path, data) -> None:
    """Write JSON, indented with sorted keys (use it inside atomic_dir, which makes the write durable)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, max_bytes: Optional[int] = None):
    """Parse a JSON file; ArtifactError if it is missing, corrupt, or larger than max_bytes (None: no limit)."""
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise ArtifactError(f"{path} is {path.stat().st_size} bytes, more than the {max_bytes} such a file can "
                            "need; it is corrupt or not a hypersan file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); the file is truncated or corrupt") from None
    except RecursionError:
        raise ArtifactError(f"{path}: JSON nested too deeply to parse; the file is corrupt") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """save_tensors whole or not at all: a temporary sibling, fsynced, then renamed over the path."""
    _atomic_file(path, lambda tmp: save_tensors(tmp, tensors))


def user_cache_dir() -> Path:
    """Where hypersan keeps what it can compute again (dense logits of an evaluation): $HYPERSAN_CACHE, else
    $XDG_CACHE_HOME/hypersan, else ~/.cache/hypersan."""
    if os.environ.get("HYPERSAN_CACHE"):
        return Path(os.environ["HYPERSAN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hypersan"


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{path}: cannot read safetensors ({e}); the file is truncated or corrupt") from None


_ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}  # by torch dtype name


def _st_dtype(dtype) -> Optional[str]:
    """The safetensors name of a torch dtype (None when it has none)."""
    return _ST_DTYPES.get(str(dtype).removeprefix("torch."))


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(JSON header, size of the data section) of a safetensors file, read without touching the tensors."""
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ArtifactError(f"{path}: {size} bytes is too short for a safetensors file; it is truncated or corrupt")
        n = int.from_bytes(head, "little")  # the format: a little-endian u64 header length, then the header
        if n > size - 8:
            raise ArtifactError(f"{path}: its header length {n} is larger than the file ({size} bytes); the file is "
                                "truncated or corrupt")
        if n > MAX_SAFETENSORS_HEADER:
            raise ArtifactError(f"{path}: a header of {n} bytes is more than the {MAX_SAFETENSORS_HEADER} this "
                                "loader accepts; the file is corrupt or not a hypersan file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ArtifactError(f"{path}: its header is not valid JSON; the file is truncated or corrupt") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: its header is not a JSON object; the file is corrupt")
    return header, size - 8 - n


def expected_tensors(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} of a module's state dict (works on the meta device, allocating nothing)."""
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def _listing(label: str, names: list[str]) -> str:
    return f"{label}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"


def check_safetensors(path: Path, expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                      source: Optional[str] = None) -> None:
    """Check a safetensors file's names, shapes, dtypes and data offsets against `expected`, reading only its header.

    After this passes, loading the file allocates exactly what `expected` describes, no more than the file holds.
    """
    source = source or str(path)
    header, body = read_safetensors_header(path)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, e in entries.items():
        ok = (isinstance(e, dict) and isinstance(e.get("dtype"), str) and isinstance(e.get("shape"), list)
              and all(type(d) is int and d >= 0 for d in e["shape"]) and isinstance(e.get("data_offsets"), list)
              and len(e["data_offsets"]) == 2 and all(type(o) is int and o >= 0 for o in e["data_offsets"]))
        if not ok:
            raise ArtifactError(f"{source}: the header entry of tensor {name!r} is malformed; the file is corrupt")
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    common = [k for k in expected if k in entries]
    shapes = [f"{k}: file {tuple(entries[k]['shape'])} vs model {expected[k][0]}"
              for k in common if tuple(entries[k]["shape"]) != expected[k][0]]
    dtypes = [f"{k}: file {entries[k]['dtype']} vs model {_st_dtype(expected[k][1]) or expected[k][1]}"
              for k in common if entries[k]["dtype"] != _st_dtype(expected[k][1])]
    _raise_mismatch(source, missing, unexpected, shapes, dtypes)
    # the tensors must tile the data section exactly: then the file's size bounds what loading allocates
    pos = 0
    for name in sorted(entries, key=lambda k: tuple(entries[k]["data_offsets"])):
        begin, end = entries[name]["data_offsets"]
        numel = 1
        for d in entries[name]["shape"]:
            numel *= d
        if begin != pos or end - begin != numel * expected[name][1].itemsize or end > body:
            raise ArtifactError(f"{source}: the data offsets [{begin}, {end}] of tensor {name!r} do not fit its shape "
                                f"and the {body}-byte data section; the file is truncated or corrupt")
        pos = end
    if pos != body:
        raise ArtifactError(f"{source}: {body - pos} bytes after the last tensor; the file is corrupt")


def load_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict, failing loudly on any missing, unexpected or mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    _raise_mismatch(source, missing, unexpected, shapes)
    module.load_state_dict(tensors, strict=True)


def _raise_mismatch(source: str, missing, unexpected, shapes, dtypes=()) -> None:
    """Raise one ArtifactError listing every kind of mismatch between a file's tensors and a model's."""
    problems = []
    if missing:
        problems.append(_listing("missing keys", missing))
    if unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if shapes:
        problems.append(f"wrong shapes: {'; '.join(shapes[:8])}")
    if dtypes:
        problems.append(f"wrong dtypes: {'; '.join(dtypes[:8])}")
    if problems:
        raise ArtifactError(f"{source} does not match the model it describes: " + " | ".join(problems))
