"""Bayesian engines (``pymc``, ``stan``) and what they share.

* :mod:`.priors` -- default priors scaled to the data and the user's engine-neutral priors;
* :mod:`.structure` -- term layout and the gaussian sufficient statistics;
* :mod:`.marginal` -- the exact marginalised gaussian likelihood and conditional draws;
* :mod:`.tree`, :mod:`.tree_marginal` -- the same for nested levels in O(groups): block
  statistics, a leaves-first block Cholesky and selected inversion over the tree of groups;
* :mod:`.cost` -- which gaussian likelihood ``likelihood="auto"`` runs, from the problem's sizes;
* :mod:`.aggregate` -- rows sharing covariates, groups, offset and weight summed (exact for
  bernoulli, binomial, poisson);
* :mod:`.result` -- draws -> ArviZ InferenceData and the result contract;
* :mod:`.diagnostics` -- divergences, tree depth, R-hat, ESS as Diagnostics;
* :mod:`.checks_ppc` -- posterior predictive checks and LOO/WAIC comparison;
* :mod:`.pymc_engine`, :mod:`.stan_engine` (with :mod:`.stancode`) -- the engines.

Nothing here imports pymc, stan or arviz at import time.
"""

from __future__ import annotations

from typing import Any

from hierfit.engines.bayes.checks_ppc import PPC, compare_loo, ppc

__all__ = ["PPC", "compare_loo", "ppc", "stan_code", "stan_data"]


def stan_code(spec_or_design: Any, data: object = None, *, likelihood: str = "auto", family: str = "gaussian") -> str:
    """Stan program for a formula, spec or design (see :func:`hierfit.engines.bayes.stancode.stan_code`).

    Examples
    --------
    >>> "model {" in stan_code("y ~ x1 + (1 + x1 | market)")
    True
    """
    from hierfit.engines.bayes.stancode import stan_code as _stan_code

    return _stan_code(spec_or_design, data, likelihood=likelihood, family=family)


def stan_data(design) -> dict:
    """Data dict for :func:`stan_code`'s program (see :func:`hierfit.engines.bayes.stancode.stan_data`)."""
    from hierfit.engines.bayes.stancode import stan_data as _stan_data

    return _stan_data(design)
