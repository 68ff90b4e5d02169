"""The package's modules import one way only: each from modules below it, never above (no hidden circles)."""
import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hypersan"

# The subpackages, bottom to top. A module may import from a lower layer, or from its own package.
LAYERS = {"": 0, "language": 1, "data": 2, "nn": 3, "deploy": 4, "prune": 5, "training": 6, "research": 7,
          "serve": 7, "cli": 8, "__main__": 9}

# Within a package, bottom to top: a module may import modules of its own package of its rank or below.
RANKS = {
    "version": 0, "info": 0, "shipped": 0, "lazy": 0, "config": 1, "io": 1, "__init__": 2, "__main__": 0,
    "language.words": 0, "language.vocabulary": 1, "language.text": 1, "language.descriptions": 1,
    "language.grounding": 2, "language.budgets": 3, "language.__init__": 4,
    "data.imagefolder": 0, "data.subtasks": 0, "data.datasets": 1, "data.glyphs": 2, "data.__init__": 3,
    "nn.backbones": 0, "nn.graph": 0, "nn.custom": 1, "nn.masks": 0, "nn.bn": 0, "nn.losses": 0, "nn.checkpoint": 0, "nn.generators": 1, "nn.subnet": 1,
    "nn.model": 2, "nn.__init__": 3,
    "deploy.quantize": 0, "deploy.export": 1, "deploy.runtimes": 2, "deploy.__init__": 3,
    "prune.metrics": 0, "prune.stats": 0, "prune.surgery": 1, "prune.budget": 1, "prune.engine": 2, "prune.__init__": 3,
    "training.optim": 0, "training.distributed": 0, "training.finetune": 0, "training.evaluate": 0, "training.train": 1,
    "training.adapt": 2, "training.__init__": 3,
    "research.report": 0, "research.baselines": 0, "research.isa": 0, "research.bench": 0, "research.ablate": 1,
    "research.budget_study": 1, "research.glyph_study": 2, "research.sweep": 0,
    "research.questions": 2, "research.adaptivity": 2, "research.reach": 1, "research.grounding_eval": 0,
    "research.phrasings": 0, "research.rounding": 1, "research.ship_budget": 0, "research.variants": 2,
    "research.__init__": 3,
    "serve.wire": 0, "serve.service": 0, "serve.schemas": 1, "serve.v1": 2, "serve.v2": 2, "serve.app": 3,
    "serve.__init__": 4,
    "cli.demo": 0, "cli.commands": 1, "cli.__init__": 2,
}


def _name(path: Path) -> str:
    """hypersan/prune/engine.py -> 'prune.engine'"""
    return ".".join(path.relative_to(PKG).with_suffix("").parts)


def _package(name: str) -> str:
    return name.rpartition(".")[0] if "." in name else ("__main__" if name == "__main__" else "")


def _imports(path: Path) -> dict[str, set[str]]:
    """Package modules a file imports anywhere (module level or inside functions), each with the names it takes."""
    me = _name(path)
    here = me.split(".")[:-1]  # the module's package (an __init__'s own package)
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = here[:len(here) - node.level + 1]  # one package up per dot after the first
            target = [*base, *(node.module.split(".") if node.module else [])]
        elif (node.module or "").startswith("hypersan."):
            target = node.module.split(".")[1:]
        else:
            continue
        dotted = ".".join(target)
        for a in node.names:
            sub = f"{dotted}.{a.name}" if dotted else a.name
            if sub in RANKS or (PKG / sub.replace(".", "/")).is_dir():  # `from . import module`
                out.setdefault(sub if sub in RANKS else f"{sub}.__init__", set())
            else:
                out.setdefault(dotted or "__init__", set()).add(a.name)
    return {(m if m in RANKS or m.endswith("__init__") else f"{m}.__init__"): n for m, n in out.items()}


def _python(code: str) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter in the repository root (nothing of hypersan imported before)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in PKG.rglob("*.py") if "pretrained" not in p.parts}


def test_every_module_has_a_rank_and_every_package_a_layer():
    modules = _modules()
    assert set(modules) == set(RANKS), f"unranked: {set(modules) - set(RANKS)}; gone: {set(RANKS) - set(modules)}"
    assert {_package(m) for m in modules} == set(LAYERS)


def test_imports_point_down_only():
    bad = []
    for m, path in _modules().items():
        for i in _imports(path):
            pm, pi = _package(m), _package(i)
            if pm == pi:
                if RANKS[i] > RANKS[m]:
                    bad.append(f"{m} (rank {RANKS[m]}) imports {i} (rank {RANKS[i]})")
            elif LAYERS[pi] >= LAYERS[pm]:
                bad.append(f"{m} (layer {pm or 'root'}) imports {i} (layer {pi or 'root'})")
    assert not bad, "; ".join(bad)


def test_no_private_name_crosses_a_module_boundary():
    bad = [f"{m} imports {name} from {i}" for m, path in _modules().items() for i, names in _imports(path).items()
           for name in names if name.startswith("_") and name != "__version__"]
    for tool in (PKG.parent / "tools").glob("*.py"):  # tests may test private helpers; tools use the API
        for node in ast.walk(ast.parse(tool.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hypersan"):
                bad += [f"{tool.name} imports {a.name} from {node.module}" for a in node.names
                        if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, "; ".join(bad)


def test_grounding_depends_on_data_alone():
    for m in ("language.grounding", "language.vocabulary", "language.words"):
        assert set(_imports(PKG / f"{m.replace('.', '/')}.py")) <= {
            "info", "language.vocabulary", "language.words", "language.text"}, m


def test_the_old_module_names_still_import_with_a_warning():
    code = ("import warnings\n"
            "warnings.simplefilter('error')\n"
            "from hypersan.prune.engine import PruningEngine as new\n"
            "try:\n"
            "    from hypersan.engine import PruningEngine\n"
            "except DeprecationWarning as w:\n"
            "    print(w)\n"
            "warnings.simplefilter('ignore')\n"
            "from hypersan.engine import PruningEngine as old\n"
            "import hypersan.ablation_report, hypersan.research.report\n"
            "from hypersan.data import load_dataset\n"
            "from hypersan.serve import create_app\n"
            "from hypersan import PruningEngine as top\n"
            "print(old is new is top, hypersan.ablation_report is hypersan.research.report)\n")
    out = _python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert "hypersan.engine moved to hypersan.prune.engine" in lines[0] and lines[-1] == "True True"


def test_resolving_a_request_by_its_words_imports_no_torch():
    """`hypersan resolve` with lexical hits (names, synonyms, groups) answers without loading torch, which alone
    takes seconds to import; the sentence encoder loads it only when a request needs embedding."""
    code = ("import sys\n"
            "from hypersan.cli.commands import main\n"
            "assert main(['resolve', 'sneakers and bags']) == 0\n"
            "assert main(['resolve', '--checkpoint', 'fmnist', '--json', 'shoes']) == 0\n"
            "print('torch' in sys.modules)\n")
    out = _python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False" and '"Sandal"' in out.stdout


def test_each_module_imports_on_its_own():
    code = ("import importlib, sys\n"
            f"for m in {sorted(m.removesuffix('.__init__') for m in RANKS if m not in ('__init__', '__main__'))!r}:\n"
            "    for k in [k for k in sys.modules if k == 'hypersan' or k.startswith('hypersan.')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module('hypersan.' + m)\n"
            "print('ok')\n")
    out = _python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
