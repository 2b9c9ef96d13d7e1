"""hierfit: hierarchical (multilevel) regression over a tree of nested groups.

One model spec (lme4/brms formula syntax), several engines, one kind of result::

    import hierfit
    sim = hierfit.simulate(seed=1)
    fit = hierfit.fit("y ~ x1 + x2 + (1 + x1 | market/submarket)", sim.data,
                      engine="ols", national="United_state")
    fit.group_effects()          # national, market and submarket effects with intervals
    fit.decompose(sim.data)      # per-row national + market + submarket + slope parts

``import hierfit`` is quick: the public names below are imported on first use (PEP 562), so
pandas, scipy and formulaic load only when a fit, a spec or a simulation is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hierfit._version import __version__ as __version__
from hierfit.exceptions import (
    ConvergenceError,
    DataError,
    EngineError,
    FormulaError,
    HierarchyError,
    HierfitError,
    HierfitWarning,
    PersistenceError,
    SpecError,
    TrainingRowsUnavailableError,
    UnseenGroupsWarning,
)

#: public name -> (module, attribute): imported on first access
_LAZY: dict[str, tuple[str, str]] = {
    "Comparison": ("hierfit.evaluate", "Comparison"),
    "Design": ("hierfit.design", "Design"),
    "ENGINES": ("hierfit.engines", "ENGINES"),
    "FitResult": ("hierfit.results", "FitResult"),
    "Hierarchy": ("hierfit.design.hierarchy", "Hierarchy"),
    "LevelSim": ("hierfit.simulation", "LevelSim"),
    "ModelSpec": ("hierfit.model", "ModelSpec"),
    "Simulation": ("hierfit.simulation", "Simulation"),
    "build_design": ("hierfit.design", "build_design"),
    "compare": ("hierfit.evaluate", "compare"),
    "compare_loo": ("hierfit.engines.bayes", "compare_loo"),
    "datagrid": ("hierfit.results.marginal", "datagrid"),
    "fit": ("hierfit.api", "fit"),
    "fit_design": ("hierfit.fitting", "fit_design"),
    "get_engine": ("hierfit.engines", "get_engine"),
    "load": ("hierfit.results", "load_fit"),
    "lrt": ("hierfit.engines.mixed.engine", "likelihood_ratio"),
    "make_spec": ("hierfit.model", "make_spec"),
    "parse_formula": ("hierfit.formula", "parse_formula"),
    "ppc": ("hierfit.engines.bayes", "ppc"),
    "priors": ("hierfit.priors", ""),
    "simulate": ("hierfit.simulation", "simulate"),
    "stan_code": ("hierfit.engines.bayes", "stan_code"),
}

if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from hierfit import priors
    from hierfit.api import fit
    from hierfit.design import Design, build_design
    from hierfit.design.hierarchy import Hierarchy
    from hierfit.engines import ENGINES, get_engine
    from hierfit.engines.bayes import compare_loo, ppc, stan_code
    from hierfit.engines.mixed.engine import likelihood_ratio as lrt
    from hierfit.evaluate import Comparison, compare
    from hierfit.fitting import fit_design
    from hierfit.formula import parse_formula
    from hierfit.model import ModelSpec, make_spec
    from hierfit.results import FitResult
    from hierfit.results import load_fit as load
    from hierfit.results.marginal import datagrid
    from hierfit.simulation import LevelSim, Simulation, simulate


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'hierfit' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attribute:
        value = getattr(value, attribute)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Comparison",
    "ConvergenceError",
    "DataError",
    "Design",
    "ENGINES",
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
