"""The stages of a fit, each a public function with typed inputs and outputs.

As lme4's ``lmer()`` is ``lFormula → mkLmerDevfun → optimizeLmer → mkMerMod``, a hierfit fit is::

    make_spec(formula, family=..., ...)        -> ModelSpec     (hierfit.model: what to fit)
    build_design(spec, data, checks=...)       -> Design        (hierfit.design: numbers from data)
      or build_streamed_design(spec, source)   -> StreamedDesign  (rows left in Parquet / Dask)
    check_capabilities(entry, spec)                             (hierfit.engines: can the engine?)
    parse_engine_options(entry, options)       -> the engine's OPTIONS
    run_data_checks(design, entry, severities) -> [Diagnostic]
    fit_engine(design, entry, options)         -> EngineFit     (the engine's own work, timed)
    assemble_result(design, entry, ...)        -> FitResult     (hierfit.results: the one result)

:func:`hierfit.fit`, :func:`fit_design` and :func:`hierfit.evaluate.compare` only compose these;
each can be called by hand and what it returns inspected.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from hierfit.checks import Diagnostic, Severity, apply_severities, data_checks, resolve_severities
from hierfit.design import Design
from hierfit.design.streamed import StreamedDesign
from hierfit.engines import ENGINES, EngineEntry, check_capabilities, get_engine
from hierfit.engines.base import EngineFit
from hierfit.engines.options import parse_options
from hierfit.exceptions import EngineError, HierfitError, SpecError
from hierfit.model import ModelSpec
from hierfit.results import FitResult
from hierfit.results.variance_partition import DesignMoments

__all__ = [
    "assemble_result",
    "check_capabilities",
    "check_streaming",
    "fit_design",
    "fit_engine",
    "parse_engine_options",
    "run_data_checks",
]

#: warnings raised inside these stages point at the user's call of hierfit.fit / fit_design
_STACKLEVEL = 5


def check_streaming(entry: EngineEntry, spec: ModelSpec) -> None:
    """Refuse, before any pass over the source, an engine or family that cannot be streamed.

    Examples
    --------
    >>> from hierfit.engines import get_engine
    >>> from hierfit.model import make_spec
    >>> check_streaming(get_engine("ols"), make_spec("y ~ x + (1 | g)"))
    Traceback (most recent call last):
    ...
    hierfit.exceptions.SpecError: streaming sources are supported by engine='boosted-mixed' with family='gaussian'; ... got engine='ols' with family='gaussian'. ...
    """
    if spec.family.name not in entry.capabilities.streaming_families:
        supported = "; ".join(
            f"engine={name!r} with family={' or '.join(map(repr, row.capabilities.streaming_families))}"
            for name, row in sorted(ENGINES.items()) if row.capabilities.streaming_families
        )
        raise SpecError(
            f"streaming sources are supported by {supported}; got engine={entry.name!r} with family={spec.family.name!r}. "
            "Fit that model on a pandas DataFrame of rows that fit in memory (e.g. a sample read with "
            "pandas.read_parquet), or fit engine='mixed' on a gaussian outcome."
        )


def parse_engine_options(entry: EngineEntry, options: Mapping[str, Any]) -> Any:
    """The engine's ``OPTIONS`` dataclass from keyword options (unknown names are an error)."""
    return parse_options(entry.load().OPTIONS, dict(options), entry.name)


def run_data_checks(design: Design | StreamedDesign, entry: EngineEntry, severities: Mapping[str, Severity]) -> list[Diagnostic]:
    """The named data checks that depend on the engine (few groups matter only when it pools).

    The design's own findings (made, and warned about, when it was built) come first.
    """
    found = data_checks(design, pooling=entry.capabilities.pooling == "partial")
    return list(design.diagnostics) + apply_severities(found, severities, stacklevel=_STACKLEVEL)


def fit_engine(design: Design | StreamedDesign, entry: EngineEntry, options: Any) -> tuple[EngineFit, float]:
    """Run the engine on the design; return its fit and the wall seconds it took.

    Errors from inside an engine that are not already :class:`~hierfit.exceptions.HierfitError`
    (a numerical library's ``ValueError``, ``LinAlgError``, ``LightGBMError``, ...) are translated
    here, at the boundary, so users only ever see hierfit's error tree (the original stays
    chained as ``__cause__``); an interrupt or running out of memory passes through.
    """
    module = entry.load()
    t0 = time.perf_counter()
    try:
        engine_fit: EngineFit = module.fit(design, design.spec, options)
    except HierfitError:
        raise
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # a numerical library's error: translated, with the original chained
        raise EngineError(
            f"Engine {entry.name!r} could not fit this model: {exc}. Check the data for constant or collinear "
            "columns and tiny groups, or try another engine."
        ) from exc
    return engine_fit, time.perf_counter() - t0


def assemble_result(design: Design | StreamedDesign, entry: EngineEntry, engine_fit: EngineFit, diagnostics: list[Diagnostic],
                    seconds: float, options: Mapping[str, Any]) -> FitResult:
    """Wrap an engine's fit into the one result type."""
    if isinstance(design, StreamedDesign):
        moments, source = DesignMoments.from_streamed(design), design.source.info
    else:
        moments, source = DesignMoments.from_design(design), None
    return FitResult(
        spec=design.spec,
        engine=entry.name,
        engine_fit=engine_fit,
        encoding=design.encoding,
        n_obs=design.n,
        diagnostics=diagnostics,
        timings={"fit_seconds": seconds},
        options=dict(options),
        moments=moments,
        source=source,
    )


def fit_design(design: Design | StreamedDesign, *, engine: str, checks: Mapping[str, str] | None = None,
               **engine_options: Any) -> FitResult:
    """Fit an already built design with one engine (every stage after :func:`build_design`).

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=10, seed=2)
    >>> design = hierfit.build_design(hierfit.make_spec("y ~ x1 + (1 | market)"), sim.data)
    >>> fit_design(design, engine="ols").engine
    'ols'
    """
    entry = get_engine(engine)
    check_capabilities(entry, design.spec)
    if isinstance(design, StreamedDesign):
        check_streaming(entry, design.spec)
    options = parse_engine_options(entry, engine_options)
    severities = resolve_severities(checks)
    found = run_data_checks(design, entry, severities)
    engine_fit, seconds = fit_engine(design, entry, options)
    found += apply_severities(list(engine_fit.diagnostics), severities, stacklevel=_STACKLEVEL - 1)
    return assemble_result(design, entry, engine_fit, found, seconds, engine_options)
