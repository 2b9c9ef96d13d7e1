"""hierfit.fit(): parse -> design -> engine fit -> result, each stage a public function."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from hierfit.checks import apply_severities, data_checks, resolve_severities
from hierfit.design import Design, build_design
from hierfit.engines import default_engine, get_engine
from hierfit.engines.base import parse_options
from hierfit.exceptions import SpecError
from hierfit.model import DEFAULT_NATIONAL, ModelSpec, Prior, make_spec
from hierfit.results import FitResult


def fit_design(design: Design, *, engine: str, checks: Mapping[str, str] | None = None, **engine_options: Any) -> FitResult:
    """Fit an already built design with one engine (the last two stages of :func:`fit`)."""
    entry = get_engine(engine)
    spec = design.spec
    if spec.family not in entry.capabilities.families:
        raise SpecError(
            f"Engine {engine!r} fits families {', '.join(entry.capabilities.families)}; got family={spec.family!r}. "
            "Choose another engine (see `hierfit engines`)."
        )
    if not entry.capabilities.varying_slopes and any(t.slopes for t in spec.formula.group_terms):
        raise SpecError(f"Engine {engine!r} does not fit varying slopes; drop them from the formula or choose another engine.")
    severities = resolve_severities(checks)
    pooling = entry.capabilities.pooling == "partial"
    found = apply_severities(data_checks(design, pooling=pooling), severities, stacklevel=4)
    module = entry.load()
    options = parse_options(module.OPTIONS, dict(engine_options), engine)
    t0 = time.perf_counter()
    engine_fit = module.fit(design, spec, options)
    elapsed = time.perf_counter() - t0
    found += apply_severities(list(engine_fit.diagnostics), severities, stacklevel=4)
    return FitResult(
        spec=spec,
        engine=engine,
        engine_fit=engine_fit,
        encoding=design.encoding,
        n_obs=design.n,
        diagnostics=found,
        timings={"fit_seconds": elapsed},
        options=dict(engine_options),
    )


def fit(
    formula: str | ModelSpec,
    data: pd.DataFrame,
    *,
    engine: str | None = None,
    family: str = "gaussian",
    national: str = DEFAULT_NATIONAL,
    hierarchy: Sequence[str] | None = None,
    priors: Mapping[str, Prior] | None = None,
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
        ``"gaussian"``, ``"bernoulli"`` or ``"poisson"``.
    national
        Name of the national root (the population intercept), e.g. ``"United_state"``.
    hierarchy
        Optional explicit level order (top first) when level labels are unique identifiers;
        every child must then have exactly one parent.
    priors
        Engine-neutral priors for Bayesian engines (see :mod:`hierfit.priors`).
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
    spec = make_spec(formula, family=family, national=national, hierarchy=hierarchy, priors=priors)
    if isinstance(formula, ModelSpec) and (family != "gaussian" or national != DEFAULT_NATIONAL or hierarchy or priors):
        raise SpecError("Pass family/national/hierarchy/priors either in the ModelSpec or to fit(), not both.")
    name = engine if engine is not None else default_engine()
    get_engine(name)  # fail on a bad engine name before the (possibly long) design pass
    design = build_design(spec, data)
    return fit_design(design, engine=name, checks=checks, **engine_options)
