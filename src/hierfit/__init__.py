"""hierfit: hierarchical (multilevel) regression over a tree of nested groups.

One model spec (lme4/brms formula syntax), several engines, one kind of result::

    import hierfit
    sim = hierfit.simulate(seed=1)
    fit = hierfit.fit("y ~ x1 + x2 + (1 + x1 | market/submarket)", sim.data,
                      engine="ols", national="United_state")
    fit.group_effects()          # national, market and submarket effects with intervals
    fit.decompose(sim.data)      # per-row national + market + submarket + slope parts
"""

from hierfit import priors
from hierfit._version import __version__ as __version__
from hierfit.api import fit
from hierfit.design import Design, build_design
from hierfit.design.hierarchy import Hierarchy
from hierfit.engines import ENGINES, get_engine
from hierfit.engines.bayes import compare_loo, ppc, stan_code
from hierfit.engines.mixed.engine import likelihood_ratio as lrt
from hierfit.evaluate import Comparison, compare
from hierfit.exceptions import (
    ConvergenceError,
    DataError,
    EngineError,
    FormulaError,
    HierarchyError,
    HierfitError,
    HierfitWarning,
    SpecError,
    UnseenGroupsWarning,
)
from hierfit.fitting import fit_design
from hierfit.formula import parse_formula
from hierfit.model import ModelSpec, make_spec
from hierfit.results import FitResult
from hierfit.results import load_fit as load
from hierfit.simulate import LevelSim, Simulation, simulate

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
