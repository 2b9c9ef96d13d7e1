"""hierfit.fit(): the face of the library; it only composes the stages of :mod:`hierfit.fitting`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from hierfit.design import build_design
from hierfit.engines import check_capabilities, default_engine, get_engine
from hierfit.exceptions import SpecError
from hierfit.fitting import fit_design
from hierfit.model import DEFAULT_NATIONAL, ModelSpec, Prior, make_spec
from hierfit.results import FitResult

__all__ = ["fit", "fit_design"]


def fit(
    formula: str | ModelSpec,
    data: pd.DataFrame,
    *,
    engine: str | None = None,
    family: str | None = None,
    link: str | None = None,
    national: str = DEFAULT_NATIONAL,
    hierarchy: Sequence[str] | None = None,
    priors: Mapping[str, Prior] | None = None,
    weights: str | None = None,
    offset: str | None = None,
    checks: Mapping[str, str] | None = None,
    **engine_options: Any,
) -> FitResult:
    """Fit a hierarchical model with one engine and return the common :class:`FitResult`.

    Parameters
    ----------
    formula
        lme4/brms syntax, e.g. ``"y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"``,
        or a :class:`ModelSpec`.
    data
        One row per observation; grouping columns hold group labels.
    engine
        A name from ``hierfit.engines.ENGINES`` (``hierfit engines`` lists them); default
        ``mixed`` where installed, else ``ols``.
    family
        A name from ``hierfit.model.FAMILIES``: ``"gaussian"``, ``"bernoulli"``,
        ``"binomial"``, ``"poisson"`` or ``"negative_binomial"`` (each engine says which it fits);
        default ``"gaussian"``.
    link
        A non-default link of the family (``"probit"``, ``"cloglog"`` for the binomials).
    national
        Name of the national root (the population intercept), e.g. ``"United_state"``.
    hierarchy
        Optional explicit level order (top first) when level labels are unique identifiers;
        every child must then have exactly one parent.
    priors
        Engine-neutral priors for Bayesian engines (see :mod:`hierfit.priors`).
    weights
        A column of prior weights (lme4's ``weights``): each row's log-likelihood is multiplied
        by its weight (gaussian: residual variance ``sigma^2 / w``); rows of weight 0 are left out.
    offset
        A column added to the linear predictor with coefficient 1 (e.g. ``log(exposure)``),
        like ``offset(...)`` in the formula.
    checks
        Severity per named check, e.g. ``{"single_row_groups": "ignore"}``.
    **engine_options
        Passed to the engine (each engine's ``OPTIONS`` lists them).

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(seed=1)
    >>> result = hierfit.fit("y ~ x1 + x2 + (1 + x1 | market/submarket)", sim.data, engine="ols",
    ...                      national="United_state")
    >>> result.group_effects(kind="total").iloc[0][["level", "group", "term"]].tolist()
    ['national', 'United_state', 'Intercept']
    """
    if isinstance(formula, ModelSpec) and (family or link or national != DEFAULT_NATIONAL or hierarchy or priors or weights or offset):
        raise SpecError("Pass family/link/national/hierarchy/priors/weights/offset either in the ModelSpec or to fit(), not both.")
    spec = make_spec(formula, family=family or "gaussian", link=link, national=national, hierarchy=hierarchy, priors=priors,
                     weights=weights, offset=offset)
    name = engine if engine is not None else default_engine()
    # fail on a bad engine name or a spec it cannot fit before the (possibly long) design pass
    check_capabilities(get_engine(name), spec)
    design = build_design(spec, data, checks=checks)
    return fit_design(design, engine=name, checks=checks, **engine_options)
