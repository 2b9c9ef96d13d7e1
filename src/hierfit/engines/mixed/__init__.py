"""The ``mixed`` engine and its public mixed-model core.

The core (:mod:`hierfit.engines.mixed.lmm`) works on arrays, as lme4's modular functions do:
``lmm_devfun`` (``mkLmerDevfun``: one pass over the rows, then the profiled criterion as a
function of theta) → ``optimize_lmm`` (``optimizeLmer``, recorded in an ``OptSummary``) →
``lmm_solution`` (``mkMerMod``: an ``LmmSolution`` in lme4's conventions); ``fit_lmm`` runs all
three. ``random_blocks(design)`` (in :mod:`.engine`, lme4's ``reTrms``) builds the random-effects
terms of a hierfit design. Other engines use only these public names.
"""

from hierfit.engines.mixed._standardize import ColumnMap, Standardization, column_map, standardize
from hierfit.engines.mixed.lmm import (
    LmmDevfun,
    LmmSolution,
    OptSummary,
    RandomBlock,
    evaluated_at,
    fit_lmm,
    likelihood_ratio_test,
    lmm_devfun,
    lmm_solution,
    optimize_lmm,
)

__all__ = [
    "ColumnMap",
    "LmmDevfun",
    "LmmSolution",
    "OptSummary",
    "RandomBlock",
    "Standardization",
    "column_map",
    "evaluated_at",
    "fit_lmm",
    "likelihood_ratio_test",
    "lmm_devfun",
    "lmm_solution",
    "optimize_lmm",
    "standardize",
]
