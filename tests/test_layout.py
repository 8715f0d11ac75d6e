"""The package layout (issue 12): layers hold, documented names stay, the loop's hook is exact."""

import ast
import importlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from archrefine import Config, simulate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("archrefine", ["Config", "simulate", "Result"]),
        ("archrefine.space", ["VOCAB", "LENGTH", "is_valid", "build", "to_source", "explain",
                              "KNOWN", "InvalidArchitecture"]),
        ("archrefine.evaluate.sandbox", ["run_code", "SandboxPool", "TrainSpec", "Outcome"]),
        ("archrefine.candidates", ["CandidateStore"]),
        ("archrefine.cli", ["main", "app"]),
    ],
)  # fmt: skip
def test_documented_names_stay_importable(module, names):
    mod = importlib.import_module(module)
    assert [n for n in names if not hasattr(mod, n)] == []


def test_every_folder_says_what_it_does_and_may_import():
    for init in sorted((ROOT / "src/archrefine").glob("*/__init__.py")):
        doc = (init.read_text().split('"""') + ["", ""])[1]
        assert "import" in doc.lower(), f"{init.parent.name}/__init__.py: what may it import?"


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="needs import-linter")
def test_import_contracts_hold():
    done = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]


def test_on_candidates_sees_the_values_the_metrics_average():
    seen = []
    config = Config(trials=3, seed=1).with_overrides({"loop.cycles": 4})
    frame = simulate(config, on_candidates=lambda c, v, f, n: seen.append((c, v, f, n))).metrics
    assert [c for c, *_ in seen] == [1, 2, 3, 4]
    validity = np.stack([v.mean(axis=1) for _, v, _, _ in seen], axis=1)  # (trials, cycles)
    novelty = np.stack([n.mean(axis=1) for _, _, _, n in seen], axis=1)
    table = frame.sort_values(["trial", "cycle"])
    np.testing.assert_allclose(table["validity"].to_numpy(), validity.ravel())
    np.testing.assert_allclose(table["novelty"].to_numpy(), novelty.ravel())
    assert np.array_equal(frame.to_numpy(), simulate(config).metrics.to_numpy(), equal_nan=True)


# ---- no module uses another's private names; long modules say why (issue 12) ----------------

SRC = ROOT / "src"
LONG = 400


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(dotted: str) -> bool:
    path = SRC.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _defined_private(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, assigned names and attributes."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.id if isinstance(node, ast.Name) else node.attr)
    return {n for n in out if _private(n)}


def private_uses(module: str, source: str, elsewhere: set[str] = frozenset()) -> list[str]:
    """Where `module` (dotted, under archrefine) uses another archrefine module's private name:
    `from archrefine.x import _n` (or relative), `x._n` with x an imported archrefine module,
    and `obj._n` where `_n` is defined in another archrefine module (`elsewhere`), not here."""
    tree = ast.parse(source)
    package = module.rpartition(".")[0]
    own = _defined_private(tree)
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            source_mod = ".".join(base + [node.module] if node.module else base)
            if node.level == 0:
                source_mod = node.module or ""
            if source_mod.split(".")[0] != "archrefine":
                continue
            for a in node.names:
                if _private(a.name):
                    found.append(f"{module}:{node.lineno}: from {source_mod} import {a.name}")
                elif _is_module(f"{source_mod}.{a.name}"):
                    aliases[a.asname or a.name] = f"{source_mod}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "archrefine":
                    aliases[a.asname or "archrefine"] = a.name if a.asname else "archrefine"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in aliases:
            if aliases[value.id] != module:
                found.append(f"{module}:{node.lineno}: {aliases[value.id]}.{node.attr}")
        elif isinstance(value, ast.Attribute) and ast.unparse(value).split(".")[0] in aliases:
            target = ast.unparse(value)  # archrefine.a.b._n
            if target != module and _is_module(target):
                found.append(f"{module}:{node.lineno}: {target}.{node.attr}")
        elif (
            isinstance(value, ast.Name)
            and value.id not in ("self", "cls")
            and node.attr in elsewhere
            and node.attr not in own
        ):
            found.append(f"{module}:{node.lineno}: {value.id}.{node.attr}")
    return found


def _modules() -> dict[str, tuple[Path, str]]:
    out = {}
    for path in sorted((SRC / "archrefine").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts)  # a package is `pkg.__init__`: its relative imports start at pkg
        out[name] = (path, path.read_text())
    return out


def test_no_module_uses_another_modules_private_names():
    modules = _modules()
    defined = {m: _defined_private(ast.parse(text)) for m, (_, text) in modules.items()}
    found = []
    for module, (_, text) in modules.items():
        elsewhere = set().union(*(d for m, d in defined.items() if m != module))
        found += private_uses(module, text, elsewhere)
    assert found == [], "make the name public (with a docstring) or move it:\n" + "\n".join(found)


def test_the_private_name_scan_finds_each_kind_of_use():
    mod = "archrefine.experiments.loo"
    assert private_uses(mod, "from archrefine.experiments.calibrate import spread, _spread") == [
        f"{mod}:1: from archrefine.experiments.calibrate import _spread"
    ]
    assert private_uses(mod, "from .calibrate import _spread") == [
        f"{mod}:1: from archrefine.experiments.calibrate import _spread"
    ]
    assert private_uses(mod, "from ..core.config import _Strict") == [
        f"{mod}:1: from archrefine.core.config import _Strict"
    ]
    assert private_uses(mod, "from archrefine.experiments import calibrate as c\nc._get(1)") == [
        f"{mod}:2: archrefine.experiments.calibrate._get"
    ]
    assert private_uses(mod, "import archrefine.core.config\narchrefine.core.config._Strict") == [
        f"{mod}:2: archrefine.core.config._Strict"
    ]
    assert private_uses(mod, "def f(store):\n    return store._db", {"_db"}) == [
        f"{mod}:2: store._db"
    ]
    ok = "_x = 1\nclass A:\n    def f(self, other):\n        self._db = other._db\n"
    assert private_uses(mod, ok, {"_db", "_x"}) == []  # its own names, on any object
    assert private_uses(mod, "from archrefine.core.config import ConfigError as _E") == []
    assert private_uses(mod, "import numpy as np\nnp._core") == []


def test_every_module_over_400_lines_says_why_at_its_top():
    long = {
        m: len(text.splitlines())
        for m, (_, text) in _modules().items()
        if len(text.splitlines()) > LONG
        and "Over 400 lines because" not in (ast.get_docstring(ast.parse(text)) or "")
    }
    assert long == {}, f"split these, or say 'Over 400 lines because …' in the docstring: {long}"
