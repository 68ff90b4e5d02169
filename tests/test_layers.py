"""The package's modules import one way only: each from modules below it, never above (no hidden circles)."""
import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hypersan"

# The data flow, bottom to top. A module may import modules of its own rank or below, never above.
RANKS = {
    "shipped": 0, "words": 0, "quantize": 0, "version": 0, "info": 0,
    "config": 1, "io": 1, "data": 1, "ablation_report": 1, "imagefolder": 1,
    "subtasks": 2, "vocabulary": 2, "descriptions": 2, "text": 2, "glyphs": 2,
    "grounding": 3, "checkpoint": 3, "backbones": 3, "masks": 3, "losses": 3, "optim": 3,
    "generators": 4, "subnet": 4, "metrics": 4,
    "model": 5,
    "stats": 6,
    "surgery": 7,
    "export": 8,
    "engine": 9, "runtimes": 9,
    "evaluate": 10, "bench": 10, "distributed": 10,
    "train": 11, "baselines": 8,
    "ablate": 12, "demo": 12, "serve": 12,
    "cli": 13,
    "__main__": 14,
    "wire": 0,
}


def _imports(path: Path) -> set[str]:
    """Package modules a file imports anywhere (module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names if a.name != "__version__")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hypersan."):
            out.add(node.module.split(".")[1])
    return out


def test_every_module_has_a_rank():
    modules = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert modules == set(RANKS), f"unranked: {modules - set(RANKS)}; gone: {set(RANKS) - modules}"


def test_no_module_imports_one_above_it():
    bad = [f"{m} (rank {RANKS[m]}) imports {i} (rank {RANKS[i]})"
           for m in RANKS for i in _imports(PKG / f"{m}.py") if i in RANKS and RANKS[i] > RANKS[m]]
    assert not bad, "; ".join(bad)


def test_grounding_depends_on_data_alone():
    for m in ("grounding", "vocabulary", "words"):
        assert _imports(PKG / f"{m}.py") <= {"info", "vocabulary", "words", "text"}, m


def test_resolving_a_request_by_its_words_imports_no_torch():
    """`hypersan resolve` with lexical hits (names, synonyms, groups) answers without loading torch, which alone
    takes seconds to import; the sentence encoder loads it only when a request needs embedding."""
    code = ("import sys\n"
            "from hypersan.cli import main\n"
            "assert main(['resolve', 'sneakers and bags']) == 0\n"
            "assert main(['resolve', '--checkpoint', 'fmnist', '--json', 'shoes']) == 0\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False" and '"Sandal"' in out.stdout


def test_each_module_imports_on_its_own():
    code = ("import importlib, sys\n"
            f"for m in {sorted(RANKS)!r}:\n"
            "    for k in [k for k in sys.modules if k == 'hypersan' or k.startswith('hypersan.')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module('hypersan.' + m)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
