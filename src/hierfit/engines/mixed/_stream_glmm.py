"""The GLMM of a streamed design: map-reduce passes over its shards, or its model rows gathered.

A :class:`~hierfit.design.streamed.StreamedDesign` leaves the rows in their source (a Parquet
lake, an Arrow table read in batches, a Dask DataFrame). A non-gaussian family is fitted in
one of two ways (:func:`glmm_route` chooses):

* **map-reduce** (:mod:`._glmm_shards`): every PIRLS iteration, gradient and end-of-fit
  statistic is one pass of per-group sums over the shards of the rows -- kept on the workers
  of an active ``dask.distributed`` client (the rows never reach this process), or read again
  from the source at every pass when the model rows do not fit in memory here;
* **gathered** (the rest of this module), when the model rows fit in memory here and no
  cluster holds them, and for what the map-reduce fit does not do (adaptive quadrature,
  ``n_agq > 1``; Fisher information of a non-canonical link). The mixed engine reads the
  source once more: every batch (Dask partition) is encoded with the design's
encoding (:meth:`~hierfit.design.DesignEncoding.apply_observed`, the very encoding of an
in-memory fit: population columns, dropped collinear columns, global group codes) and keeps
only the *model* arrays -- ``X``, ``y``, trials, prior weights, offset, the group codes and the
terms' ``Z`` columns. The batches are put back in source order (piece, then row) and joined
into one :class:`~hierfit.design.Design`, which the in-memory GLMM core fits: PIRLS, the
Laplace gradient, the optimiser, draws, ``save``/``load`` are the in-memory ones, so the
fit is the in-memory fit of the same rows to rounding (the same rows in the same order give
the same numbers; ``tests/test_sources_glmm.py`` measures it).

What gathering buys and what it does not: the raw columns (strings, unused columns, a whole
lake) are never loaded together, and Dask partitions are encoded on the workers, but the model
arrays -- ``p + sum k + 5`` numbers per row -- live in this process during the fit; one fold
and then the fastest in-memory passes.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass

import numpy as np

from hierfit.checks import Diagnostic
from hierfit.design import Design, DesignEncoding, TermDesign
from hierfit.design.columns import weights_vector
from hierfit.design.outcome import outcome_checks, separation_check, zero_trials_check
from hierfit.design.sources import Batch
from hierfit.design.sources.runner import DaskRunner, active_client
from hierfit.design.streamed import StreamedDesign, encode_batch
from hierfit.exceptions import DataError, HierfitWarning

from ._glmm_setup import resolve_dispersion
from ._glmm_shards import ShardInfo, prepare_sharded, sharded_families
from .glmm import GlmmSolution

__all__ = ["GatherRows", "ModelRows", "fit_sharded_glmm", "gather_design", "glmm_route", "row_findings"]

#: checks of the outcome against the family (:mod:`hierfit.design.outcome`): the design pass
#: made them for the gaussian twin, so they are made again on the gathered rows
OUTCOME_CHECKS = ("degenerate_outcome", "separation", "zero_trials")


@dataclass(frozen=True, eq=False)
class RowChunk:
    """The model arrays of one batch, with where it sits in the source (for the order)."""

    key: tuple[int, int]
    X: np.ndarray
    y: np.ndarray
    trials: np.ndarray | None
    weights: np.ndarray | None
    offset: np.ndarray | None
    group_index: dict[str, np.ndarray]
    Z: tuple[np.ndarray, ...]


@dataclass(frozen=True, eq=False)
class ModelRows:
    """The model arrays of some batches, in no particular order until :meth:`design`."""

    chunks: tuple[RowChunk, ...]

    @staticmethod
    def merge(parts: list[ModelRows]) -> ModelRows:
        return ModelRows(tuple(c for p in parts for c in p.chunks))

    def design(self, streamed: StreamedDesign) -> Design:
        """The rows joined in source order (piece, then row) as an in-memory fitting design."""
        chunks = sorted(self.chunks, key=lambda c: c.key)
        first = chunks[0]

        def join(get):  # type: ignore[no-untyped-def]
            return np.concatenate([get(c) for c in chunks])

        def optional(get):  # type: ignore[no-untyped-def]
            return None if get(first) is None else join(get)

        y = join(lambda c: c.y)
        trials = optional(lambda c: c.trials)
        X = join(lambda c: c.X) if first.X.shape[1] else np.zeros((y.size, 0))
        found = outcome_checks(streamed.spec, y, trials, X, streamed.x_names)
        found += zero_trials_check(trials, range(y.size))
        # a finding the design pass made already (the same check and message) is not raised twice
        seen = {(d.check, d.message): d for d in streamed.diagnostics}
        # new findings are not warned here: the engine hands them to its fit (row_findings), whose
        # diagnostics hierfit.fit stamps with the user's severities and warns about once
        fresh = [d for d in found if (d.check, d.message) not in seen]
        again = [seen[(d.check, d.message)] for d in found if (d.check, d.message) in seen]
        kept = [d for d in streamed.diagnostics if d.check not in OUTCOME_CHECKS]
        terms = tuple(TermDesign(td.term, join(lambda c, i=i: c.Z[i])) for i, td in enumerate(streamed.terms))
        return Design(
            X=X,
            x_names=streamed.x_names,
            group_index={lv: join(lambda c, lv=lv: c.group_index[lv]) for lv in first.group_index},
            terms=terms,
            encoding=streamed.encoding,
            trials=trials,
            offset=optional(lambda c: c.offset),
            y=y,
            weights=optional(lambda c: c.weights),
            diagnostics=(*kept, *again, *fresh),
        )


@dataclass(frozen=True, eq=False)
class GatherRows:
    """Per batch: its model arrays under the fitted encoding. It travels to Dask workers:
    plain data and code only."""

    encoding: DesignEncoding

    def __call__(self, batch: Batch) -> ModelRows:
        d = encode_batch(self.encoding, batch.frame)
        w = weights_vector(self.encoding.spec, batch.frame, require_positive=False)
        start = int(batch.frame.index[0]) if len(batch.frame.index) else 0
        chunk = RowChunk((int(batch.piece), start), np.ascontiguousarray(d.X, dtype=np.float64), d.y, d.trials, w,
                         d.offset, dict(d.group_index), tuple(np.asarray(td.Z, dtype=np.float64) for td in d.terms))
        return ModelRows((chunk,))


def gather_design(streamed: StreamedDesign) -> Design:
    """One fold over the source: the in-memory fitting design of its rows.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa, hierfit
    >>> from hierfit.design.sources import open_source
    >>> from hierfit.design.streamed import build_streamed_design
    >>> sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=8, seed=2)
    >>> sim.data["y"] = (sim.data["y"] > sim.data["y"].median()).astype(float)
    >>> spec = hierfit.make_spec("y ~ x1 + (1 | market)", family="bernoulli")
    >>> with open_source(pa.Table.from_pandas(sim.data), batch_size=25) as source:
    ...     design = gather_design(build_streamed_design(spec, source))
    >>> design.n, bool(np.array_equal(design.y, sim.data["y"].to_numpy()))
    (144, True)
    """
    _check_memory(streamed)
    rows = streamed.source.fold(GatherRows(streamed.encoding), ModelRows.merge, streamed.read_columns,
                                what="model rows")
    return rows.design(streamed)


#: the gathered model arrays may take at most this share of the machine's physical memory
MEMORY_SHARE = 0.5


def _model_bytes(streamed: StreamedDesign) -> tuple[int, float, float]:
    """Numbers per model row, the bytes of all of them, and this machine's memory (inf: unknown)."""
    width = len(streamed.x_names) + sum(t.k for t in streamed.terms) + 5 + len(streamed.hierarchy.levels)
    try:
        physical = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound known
        physical = float("inf")
    return width, 8.0 * streamed.n * width, physical


def _check_memory(streamed: StreamedDesign) -> None:
    """Refuse, before the fold, a source whose model arrays would not fit in memory (clearly, not
    by the operating system killing the process half way)."""
    width, need, physical = _model_bytes(streamed)
    if need > MEMORY_SHARE * physical:
        raise DataError(
            f"A streamed {streamed.spec.family.name} GLMM holds its model arrays in memory ({width} numbers per row): "
            f"{streamed.n:,} rows need {need / 2**30:.1f} GB, over half of this machine's {physical / 2**30:.1f} GB. "
            "Fit a sample of the rows (e.g. one file per group of the lake), or aggregate rows that share their "
            "predictors and groups into binomial counts (cbind(successes, failures))."
        )


def glmm_route(streamed: StreamedDesign, n_agq: int, information: str | None, nb_theta: float | None) -> str:
    """How a streamed GLMM is fitted: ``"cluster"`` (map-reduce over shards kept on the workers of
    the active ``dask.distributed`` client), ``"source"`` (map-reduce reading the source at every
    pass: the model rows do not fit in memory here) or ``"gather"`` (see the module docstring)."""
    family = streamed.spec.family
    _, information = resolve_dispersion(family, nb_theta, information)
    if n_agq != 1 or not sharded_families(family, information):
        return "gather"
    if isinstance(streamed.source.runner, DaskRunner) and active_client() is not None:
        return "cluster"
    _, need, physical = _model_bytes(streamed)
    if need <= MEMORY_SHARE * physical:
        return "gather"
    warnings.warn(
        f"The {family.name} GLMM's model rows ({streamed.n:,}, {need / 2**30:.1f} GB) do not fit in this machine's memory, "
        f"so every pass of the fit reads the source again ({streamed.source.description}): a fit takes a few hundred "
        "passes. A dask.distributed cluster (workers=N, or an active Client) keeps the rows on its workers instead.",
        HierfitWarning, stacklevel=5,
    )
    return "source"


def fit_sharded_glmm(streamed: StreamedDesign, route: str, *, maxiter: int, information: str | None = None,
                     use_numba: bool = True) -> tuple[GlmmSolution, StreamedDesign]:
    """The Laplace fit of a streamed design by map-reduce passes (:mod:`._glmm_shards`), and the
    design with the outcome checks of its rows (separation, zero trials) in its diagnostics.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa, hierfit
    >>> from hierfit.design.sources import open_source
    >>> from hierfit.design.streamed import build_streamed_design
    >>> sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=8, seed=2)
    >>> sim.data["y"] = (sim.data["y"] > sim.data["y"].median()).astype(float)
    >>> formula = "y ~ x1 + (1 | market)"
    >>> with open_source(pa.Table.from_pandas(sim.data), batch_size=25) as source:
    ...     sol, _ = fit_sharded_glmm(build_streamed_design(hierfit.make_spec(formula, family="bernoulli"), source),
    ...                               "source", maxiter=1000)
    >>> mem = hierfit.fit(formula, sim.data, family="bernoulli", engine="mixed").native()
    >>> bool(np.allclose(sol.beta, mem.beta, rtol=1e-8)), bool(np.isclose(sol.loglik, mem.loglik, rtol=1e-10))
    (True, True)
    """
    import time

    from ._glmm_results import run_fit

    t0 = time.perf_counter()
    client = active_client() if route == "cluster" else None
    setup, info = prepare_sharded(streamed, streamed.spec.family, n_agq=1, information=information, nb_theta=None,
                                  use_numba=use_numba, client=client)
    timings = {"setup": time.perf_counter() - t0}
    assert setup.prob.shards is not None
    try:
        sol = run_fit(setup, maxiter=maxiter, compute_vcov=True, timings=timings)
    finally:
        setup.prob.shards.close()
    return sol, _with_row_checks(streamed, info)


def _with_row_checks(streamed: StreamedDesign, info: ShardInfo) -> StreamedDesign:
    """The design with the separation and zero-trials findings of its rows (not yet warned:
    see :func:`row_findings`)."""
    found = [] if info.ranges is None or any(d.check == "degenerate_outcome" for d in streamed.diagnostics) \
        else separation_check(streamed.spec.response, info.ranges, streamed.x_names)
    if info.zero_trials.size:
        found += zero_trials_check(np.zeros(info.zero_trials.size), [int(i) for i in info.zero_trials])
    kept = [d for d in streamed.diagnostics if d.check not in ("separation", "zero_trials")]
    return dataclasses.replace(streamed, diagnostics=(*kept, *found))


def row_findings(before: Design | StreamedDesign, after: Design | StreamedDesign) -> list[Diagnostic]:
    """The findings on the model rows that the design pass could not make (the outcome checked
    against the family: separation, zero trials): in ``after``'s diagnostics, not in ``before``'s.

    They go into the engine fit's diagnostics, so that :func:`hierfit.fitting.fit_design` applies
    the user's ``checks`` severities to them and warns once, as it does for an in-memory fit's.
    """
    seen = {(d.check, d.message) for d in before.diagnostics}
    return [d for d in after.diagnostics if (d.check, d.message) not in seen]
