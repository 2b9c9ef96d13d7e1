"""The public API is the sorted __all__ of hierfit; changing it is a deliberate act."""

from __future__ import annotations

import doctest
import importlib
import sys

import pytest

import hierfit

PUBLIC = [
    "ENGINES",
    "Comparison",
    "ConvergenceError",
    "DataError",
    "Design",
    "EngineError",
    "FitResult",
    "FormulaError",
    "Hierarchy",
    "HierarchyError",
    "HierfitError",
    "HierfitWarning",
    "LevelSim",
    "ModelSpec",
    "PersistenceError",
    "Simulation",
    "SpecError",
    "TrainingRowsUnavailableError",
    "UnseenGroupsWarning",
    "build_design",
    "compare",
    "compare_loo",
    "datagrid",
    "fit",
    "fit_design",
    "get_engine",
    "load",
    "lrt",
    "make_spec",
    "parse_formula",
    "ppc",
    "priors",
    "simulate",
    "stan_code",
]


def test_all_is_sorted_and_pinned() -> None:
    assert hierfit.__all__ == sorted(hierfit.__all__)
    assert hierfit.__all__ == sorted(PUBLIC)
    for name in hierfit.__all__:
        assert hasattr(hierfit, name)


def test_importing_hierfit_imports_no_heavy_engine_library() -> None:
    heavy = ("pymc", "torch", "lightgbm", "stan", "arviz")
    code = "import hierfit, sys; print(','.join(m for m in %r if m in sys.modules))" % (heavy,)
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_import_hierfit_takes_under_half_a_second() -> None:
    """The public names load on first use: ``import hierfit`` must not pull in pandas or scipy."""
    import subprocess

    code = "import hierfit, sys; print(','.join(m for m in ('pandas', 'scipy', 'formulaic') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == ""
    best = float("inf")
    for _ in range(3):  # the best of three: a busy machine only ever slows an import down
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import hierfit"], capture_output=True,
                             text=True, check=True).stderr
        line = next(ln for ln in err.splitlines() if ln.rstrip().endswith("| hierfit"))
        best = min(best, int(line.split("|")[1]) / 1e6)  # cumulative microseconds
    assert best < 0.5, f"import hierfit took {best:.2f} s"


def _all_modules() -> list[str]:
    """Every module of hierfit (its docstring examples are documentation that must stay true)."""
    import pkgutil

    names = [m.name for m in pkgutil.walk_packages(hierfit.__path__, "hierfit.")]
    return sorted(n for n in names if not n.endswith("__main__"))


ALL_MODULES = _all_modules()


@pytest.mark.parametrize("module", ALL_MODULES)
def test_docstring_examples_run(module) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
