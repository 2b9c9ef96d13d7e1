"""The gaussian Bayesian models of a streamed design: their statistics gathered batch by batch.

A :class:`~hierfit.design.streamed.StreamedDesign` holds no rows, but the statistics-based
likelihoods of ``pymc`` and ``stan`` (the dense and tree marginals, ``suffstats``) read the rows
only through sums over them: ``W'ΩW, W'Ωy, y'Ωy`` (:func:`.structure.sufficient_stats`) or their
blocks on the tree of groups (:func:`.tree.tree_stats`). One fold over the source computes those
very functions on every batch -- each batch encoded with the design's encoding, as the mixed
engine's statistics pass does -- and adds the batches' sums with compensated sums
(:class:`~hierfit.design.sources.CompensatedSum`), by a tree reduction where the data live.
The samplers then run unchanged on the merged statistics.

What else an in-memory fit reads of the rows comes from the design's summaries:

* the tree layout (nesting) from the design's *cells* (distinct combinations of the grouping
  columns: they nest exactly when the rows do);
* the default priors (:mod:`.priors`, scaled by the SDs of the outcome and of the columns) from
  the moments: :func:`scale_design` is a two-row design whose columns have exactly the means and
  SDs of all the rows, which is all :func:`.priors.resolve_priors` reads. The outcome's moments
  over the rows of positive weight (what the in-memory priors use) are gathered by the same pass.

The per-row likelihood, the pointwise log-likelihood and the posterior predictive need every row:
on a streamed design they are refused with :class:`~hierfit.exceptions.TrainingRowsUnavailableError`.

Examples
--------
>>> import pyarrow as pa, hierfit
>>> from hierfit.design import build_design
>>> from hierfit.design.sources import open_source
>>> from hierfit.design.streamed import build_streamed_design
>>> from hierfit.engines.bayes.structure import make_structure, sufficient_stats
>>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=6, seed=2)
>>> spec = hierfit.make_spec("y ~ x1 + (1 | market)")
>>> with open_source(pa.Table.from_pandas(sim.data), batch_size=7) as source:
...     streamed = gather_statistics(build_streamed_design(spec, source), None)
>>> memory = sufficient_stats(build_design(spec, sim.data))
>>> bool(np.allclose(streamed.stats.WtW, memory.WtW, rtol=1e-12)), streamed.stats.n
(True, 36)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import cast

import numpy as np

from hierfit.design import Design, DesignEncoding, TermDesign
from hierfit.design.columns import weights_vector
from hierfit.design.hierarchy import Hierarchy
from hierfit.design.moments import ColumnMoments
from hierfit.design.sources import Batch, CompensatedSum
from hierfit.design.streamed import StreamedDesign, encode_batch, stream_labels
from hierfit.engines.bayes.cost import LikelihoodChoice, predicted_seconds, problem_size
from hierfit.engines.bayes.priors import _outcome_scale
from hierfit.engines.bayes.structure import BayesStructure, SufficientStats, sufficient_stats
from hierfit.engines.bayes.tree import TreeLayout, TreeStats, tree_layout, tree_stats
from hierfit.exceptions import SpecError, TrainingRowsUnavailableError

__all__ = ["BayesStatisticsPass", "StreamedStatistics", "check_streamed_options", "choose_streamed_likelihood",
           "gather_statistics", "scale_design", "stream_tree_layout"]

#: the likelihoods that read the rows only through their statistics
STATISTICS_LIKELIHOODS = ("marginal", "suffstats")


def check_streamed_options(design: StreamedDesign, engine: str, likelihood: str, log_likelihood: bool | None,
                           posterior_predictive: bool) -> None:
    """Refuse, before any pass, what needs the training rows (see the module docstring)."""
    where = design.source.description
    if likelihood == "rows":
        raise SpecError(
            f"likelihood='rows' evaluates the likelihood row by row at every sampler step, but the rows of {where} are "
            f"streamed, never held in memory. Use likelihood='auto' (or 'marginal'): engine {engine!r} then fits from "
            "statistics gathered in one pass over the source, the same posterior; or fit a pandas DataFrame."
        )
    if log_likelihood:
        raise TrainingRowsUnavailableError(
            f"log_likelihood=True stores one log-likelihood per training row and draw, but the rows of {where} are "
            "streamed, never held in memory. Drop log_likelihood (LOO/WAIC need every row: fit a pandas DataFrame)."
        )
    if posterior_predictive:
        raise TrainingRowsUnavailableError(
            f"posterior_predictive=True replicates the outcome of every training row, but the rows of {where} are "
            "streamed, never held in memory. Drop it, and replicate rows you read with hierfit's ppc(result, data)."
        )


def stream_tree_layout(design: StreamedDesign, structure: BayesStructure) -> TreeLayout | None:
    """:func:`.tree.tree_layout` read from the design's cells: they nest exactly when the rows do."""
    return tree_layout(cast(Design, _Cells(design.hierarchy, design.cell_codes)), structure)


@dataclass(frozen=True)
class _Cells:
    """What :func:`.tree.tree_layout` reads of a design: the tree, and a group index per level."""

    hierarchy: Hierarchy
    group_index: dict[str, np.ndarray]


def choose_streamed_likelihood(structure: BayesStructure, requested: str, rows: int,
                               layout: TreeLayout | None) -> LikelihoodChoice:
    """The cheapest statistics-based likelihood by :mod:`.cost` (``"auto"``), or the one asked for."""
    size = problem_size(structure, rows, layout)
    seconds = predicted_seconds(size)
    if requested == "marginal":
        return LikelihoodChoice("marginal", "tree" if layout is not None else "dense", seconds)
    if requested == "suffstats":
        return LikelihoodChoice("suffstats", None, seconds)
    candidates = {k: v for k, v in seconds.items() if k.partition("/")[0] in STATISTICS_LIKELIHOODS}
    if not candidates:
        raise SpecError(
            f"This model has {size.integrated} integrated coefficients on crossed factors: too many for a dense marginal "
            "likelihood or sufficient statistics, and a streamed fit cannot evaluate the likelihood row by row. Fit a "
            "pandas DataFrame, or simplify the crossed terms."
        )
    best = min(candidates, key=candidates.__getitem__)
    likelihood, _, algebra = best.partition("/")
    return LikelihoodChoice(likelihood, algebra or None, seconds)


def _pair(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Two rows per column with exactly that mean and (population) SD: ``mean ± sd``."""
    return np.vstack([mean - sd, mean + sd])


def scale_design(design: StreamedDesign, outcome: ColumnMoments | None = None) -> Design:
    """A two-row design whose columns have the means and SDs of all the rows: what the default
    priors read (:func:`.priors.resolve_priors`); the structure's sizes are the design's.

    ``outcome`` is the moments of the outcome scale (net of the offset, rows of positive weight);
    without it, the outcome column's moments over all rows (enough for the sizes and prior families
    a likelihood is chosen by).
    """
    m, lay = design.column_moments, design.layout
    n = max(m.n, 1)
    sd = np.sqrt(np.maximum(np.diag(m.m2), 0.0) / n)
    if outcome is None:
        y_mean, y_sd = m.mean[lay.y], sd[lay.y]
    else:
        y_mean, y_sd = outcome.mean[0], np.sqrt(max(float(outcome.m2[0, 0]), 0.0) / max(outcome.n, 1))
    cols = lambda idx: _pair(m.mean[list(idx)], sd[list(idx)]) if idx else np.zeros((2, 0))
    terms = tuple(TermDesign(td.term, cols(idx)) for td, idx in zip(design.terms, lay.terms))
    return Design(X=cols(lay.x), x_names=design.x_names, group_index={lv.name: np.zeros(2, dtype=np.int64)
                                                                       for lv in design.hierarchy.levels},
                  terms=terms, encoding=design.encoding, y=_pair(np.array([y_mean]), np.array([y_sd]))[:, 0])


@dataclass(frozen=True, eq=False)
class BayesBatch:
    """Some batches' statistics (flattened, compensated) and the moments of their outcome scale."""

    sums: CompensatedSum
    outcome: ColumnMoments

    @staticmethod
    def merge(parts: list[BayesBatch]) -> BayesBatch:
        return BayesBatch(CompensatedSum.merge([p.sums for p in parts]), ColumnMoments.merge([p.outcome for p in parts]))


def _tree_arrays(ts: TreeStats) -> list[np.ndarray]:
    out = [*ts.ZtZ, *(a for up in ts.ZtZ_up for a in up), *ts.ZtX, *ts.Zty, ts.XtX, ts.Xty]
    return out + [np.array([ts.yty, float(ts.n), ts.log_weights])]


def _tree_from(arrays: list[np.ndarray], layout: TreeLayout) -> TreeStats:
    L = len(layout.levels)
    it = iter(arrays)
    ZtZ = tuple(next(it) for _ in range(L))
    ZtZ_up = tuple(tuple(next(it) for _ in range(l)) for l in range(L))
    ZtX = tuple(next(it) for _ in range(L))
    Zty = tuple(next(it) for _ in range(L))
    XtX, Xty, last = next(it), next(it), next(it)
    return TreeStats(layout, ZtZ, ZtZ_up, ZtX, Zty, XtX, Xty, float(last[0]), round(float(last[1])), float(last[2]))


@dataclass(frozen=True, eq=False)
class BayesStatisticsPass:
    """Per batch: the in-memory statistics functions on the batch's design (block statistics on
    ``layout``, the dense ``W'ΩW`` when it is ``None``). Plain data and code: it travels to Dask workers."""

    encoding: DesignEncoding
    layout: TreeLayout | None
    #: grouping columns read as categoricals of their dictionary codes (see :func:`hierfit.design.streamed.stream_labels`)
    labels: tuple[str, ...] = ()

    def __call__(self, batch: Batch) -> BayesBatch:
        d = encode_batch(self.encoding, batch.frame)
        d = replace(d, weights=weights_vector(self.encoding.spec, batch.frame, require_positive=False))
        if self.layout is None:
            s = sufficient_stats(d)
            arrays = [s.WtW, s.Wty, np.array([s.yty, float(s.n), s.log_weights])]
        else:
            arrays = _tree_arrays(tree_stats(d, self.layout))
        return BayesBatch(CompensatedSum.of(arrays), ColumnMoments.of(_outcome_scale(d)[:, None]))


@dataclass(frozen=True, eq=False)
class StreamedStatistics:
    """The merged statistics (dense or on the tree) and the outcome scale's moments."""

    stats: SufficientStats | TreeStats
    outcome: ColumnMoments


def gather_statistics(design: StreamedDesign, layout: TreeLayout | None) -> StreamedStatistics:
    """One fold over the source: block statistics on ``layout``, or the dense ones (``None``)."""
    task = BayesStatisticsPass(design.encoding, layout, stream_labels(design.spec, design.source.schema))
    merged = design.source.fold(task, BayesBatch.merge, design.read_columns, what="statistics pass")
    values = merged.sums.values()
    if layout is not None:
        return StreamedStatistics(_tree_from(values, layout), merged.outcome)
    last = values[2]
    stats = SufficientStats(values[0], values[1], float(last[0]), round(float(last[1])), float(last[2]))
    return StreamedStatistics(stats, merged.outcome)
