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
    "Simulation",
    "SpecError",
    "UnseenGroupsWarning",
    "build_design",
    "compare",
    "compare_loo",
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


CORE_MODULES = [
    "hierfit.api",
    "hierfit.design.build",
    "hierfit.engines.registry",
    "hierfit.exceptions",
    "hierfit.formula.parser",
    "hierfit.formula.terms",
    "hierfit.results.fit_result",
    "hierfit.results.persistence",
    "hierfit.simulate",
    "hierfit.spec.family",
    "hierfit.spec.hierarchy",
    "hierfit.spec.model",
    "hierfit.spec.priors",
]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_docstring_examples_run(module) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
