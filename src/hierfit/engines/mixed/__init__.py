"""The ``mixed`` engine and its public mixed-model core.

The linear core (:mod:`hierfit.engines.mixed.lmm`) works on arrays, as lme4's modular functions do:
``lmm_devfun`` (``mkLmerDevfun``: one pass over the rows, then the profiled criterion as a
function of theta) → ``optimize_lmm`` (``optimizeLmer``, recorded in an ``OptSummary``) →
``lmm_solution`` (``mkMerMod``: an ``LmmSolution`` in lme4's conventions); ``fit_lmm`` runs all
three. The GLMM core (:mod:`hierfit.engines.mixed.glmm`) is ``fit_glmm`` → ``GlmmSolution``
(glmer's Laplace and adaptive quadrature, glmmTMB's NB2). ``random_blocks(design)`` (in :mod:`.engine`, lme4's ``reTrms``) builds the random-effects
terms of a hierfit design. Other engines use only these public names.
"""

from hierfit.engines.mixed._standardize import ColumnMap, Standardization, column_map, standardize
from hierfit.engines.mixed.glmm import GlmmSolution, fit_glmm
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
    "GlmmSolution",
    "LmmDevfun",
    "LmmSolution",
    "OptSummary",
    "RandomBlock",
    "Standardization",
    "column_map",
    "evaluated_at",
    "fit_glmm",
    "fit_lmm",
    "likelihood_ratio_test",
    "lmm_devfun",
    "lmm_solution",
    "optimize_lmm",
    "standardize",
]
