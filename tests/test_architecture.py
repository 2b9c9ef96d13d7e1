"""The shape of the code, checked: layers import only downwards; families are data.

Layers, bottom first (a module may import its own layer and those below it, never above):

    exceptions, checks, _version, storage, threads   (storage: sealed, atomically replaced save
                     folders; threads: the thread budget of the work around a fit)
    formula
    model            the inert spec: ModelSpec, the family table, priors
    design           numbers from a spec and data; the tree of groups
    engines          the engines, their registry and shared linear machinery
    results          FitResult and persistence
    fitting, simulation   the stages of a fit; the simulator
    evaluate         cross-validation and comparison
    plots
    report
    api, cli, demo, examples, io, priors, sklearn, __init__   the face
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hierfit"

LAYERS: list[set[str]] = [
    {"exceptions", "checks", "_version", "storage", "threads"},
    {"formula"},
    {"model"},
    {"design"},
    {"engines"},
    {"results"},
    {"fitting", "simulation"},
    {"evaluate"},
    {"plots"},
    {"report"},
    {"api", "cli", "demo", "examples", "io", "priors", "sklearn", "__init__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _hierfit_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level hierfit package)`` of every import in a module, nested ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "hierfit" else [f"hierfit.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "hierfit":
                out.append((node.lineno, parts[1] if len(parts) > 1 else "__init__"))
    return out


MODULES = sorted(p for p in SRC.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    tops = {_top(p) for p in MODULES}
    assert tops <= set(LAYER_OF), f"modules without a layer: {sorted(tops - set(LAYER_OF))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downwards(path: Path) -> None:
    own = LAYER_OF[_top(path)]
    bad = [(line, pkg) for line, pkg in _hierfit_imports(path) if LAYER_OF.get(pkg, 99) > own]
    assert not bad, f"{path.relative_to(SRC)} (layer {own}) imports from above: " + ", ".join(
        f"hierfit.{pkg} (layer {LAYER_OF.get(pkg)}) at line {line}" for line, pkg in bad)


FAMILY_NAMES = "gaussian|bernoulli|binomial|poisson|negative_binomial"
#: a family name compared with something: ``== "poisson"``, ``"poisson" !=``, ``in ("bernoulli", ...)``
COMPARISON = re.compile(
    rf"""(==|!=|\bin\b|\bis\b)\s*\(?\s*["']({FAMILY_NAMES})["']|["']({FAMILY_NAMES})["']\s*(==|!=|\bin\b)"""
)
FAMILY_TABLE = SRC / "model" / "family.py"


def test_no_code_branches_on_a_family_name() -> None:
    """Families are rows of one table: engines read its fields and translate names with dicts."""
    found = []
    for path in MODULES:
        if path == FAMILY_TABLE:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if COMPARISON.search(code):
                found.append(f"{path.relative_to(SRC)}:{lineno}: {line.strip()}")
    assert not found, "family names compared outside the family table:\n" + "\n".join(found)


def test_the_family_check_can_fail() -> None:
    """The pattern catches the shapes it is meant to catch (a check that cannot fail proves nothing)."""
    for bad in ('if family == "gaussian":', 'x = "bernoulli" != f', 'if fam in ("poisson", "binomial"):'):
        assert COMPARISON.search(bad), bad
    for fine in ('OBJECTIVES = {"gaussian": "regression"}', 'family: str = "gaussian"', 'get_family("poisson")'):
        assert not COMPARISON.search(fine), fine
