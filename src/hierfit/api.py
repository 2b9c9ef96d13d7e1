"""hierfit.fit(): the face of the library; it only composes the stages of :mod:`hierfit.fitting`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from hierfit.design import build_design
from hierfit.design.sources import is_source, open_source
from hierfit.design.streamed import build_streamed_design
from hierfit.engines import check_capabilities, default_engine, get_engine
from hierfit.exceptions import SpecError
from hierfit.fitting import check_streaming, fit_design
from hierfit.model import DEFAULT_NATIONAL, ModelSpec, Prior, make_spec
from hierfit.results import FitResult

__all__ = ["fit", "fit_design"]


def fit(
    formula: str | ModelSpec,
    data: pd.DataFrame | Any,
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
    batch_size: int | None = None,
    workers: int | None = None,
    **engine_options: Any,
) -> FitResult:
    """Fit a hierarchical model with one engine and return the common :class:`FitResult`.

    Parameters
    ----------
    formula
        lme4/brms syntax, e.g. ``"y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"``,
        or a :class:`ModelSpec`.
    data
        One row per observation; grouping columns hold group labels. A pandas DataFrame, or a
        *streaming source* whose rows need not fit in memory: a ``pyarrow.Table``, a Parquet
        file, folder or glob (``"lake/*.parquet"``, read in record batches), or a Dask
        DataFrame (summarised partition by partition on the active ``dask.distributed``
        client). Which engines and families stream is each engine's
        ``capabilities.streaming_families``: ``mixed`` (gaussian from per-group statistics merged
        over the batches, estimates equal to the same rows in memory; the GLMM families by
        gathering the model's arrays, which must fit in memory), ``pymc`` and ``stan`` (gaussian,
        statistics-based likelihoods), ``lightgbm`` and ``boosted-mixed`` (gaussian, trained with
        ``lightgbm.dask``). See :mod:`hierfit.design.streamed` and the README's "Bigger than memory".
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
    batch_size
        Streaming sources: rows per batch at most (default 524,288).
    workers
        Streaming sources: start a Dask ``LocalCluster`` of this many worker processes for the
        fit (and close it after); Parquet files are then read one task per file.
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
    entry = get_engine(name)
    check_capabilities(entry, spec)
    if is_source(data):
        check_streaming(entry, spec)
        with open_source(data, batch_size=batch_size, workers=workers) as source:
            streamed = build_streamed_design(spec, source, checks=checks)
            return fit_design(streamed, engine=name, checks=checks, **engine_options)
    if batch_size is not None or workers is not None:
        raise SpecError(
            "'batch_size' and 'workers' apply to streaming sources (a pyarrow.Table, Parquet files, a Dask DataFrame); "
            "a pandas DataFrame is fitted in memory. Drop them, or pass e.g. pyarrow.Table.from_pandas(data)."
        )
    design = build_design(spec, data, checks=checks)
    return fit_design(design, engine=name, checks=checks, **engine_options)
