"""The GLMM of a streamed design: its model rows gathered from the source in one fold.

A :class:`~hierfit.design.streamed.StreamedDesign` leaves the rows in their source (a Parquet
lake, an Arrow table read in batches, a Dask DataFrame). For a non-gaussian family the mixed
engine reads the source once more: every batch (Dask partition) is encoded with the design's
encoding (:meth:`~hierfit.design.DesignEncoding.apply_observed`, the very encoding of an
in-memory fit: population columns, dropped collinear columns, global group codes) and keeps
only the *model* arrays -- ``X``, ``y``, trials, prior weights, offset, the group codes and the
terms' ``Z`` columns. The batches are put back in source order (piece, then row) and joined
into one :class:`~hierfit.design.Design`, which the in-memory GLMM core fits: PIRLS, the
Laplace gradient, the optimiser, draws, ``save``/``load`` are the in-memory ones, so the
fit is the in-memory fit of the same rows to rounding (the same rows in the same order give
the same numbers; ``tests/test_sources_glmm.py`` measures it).

What this buys and what it does not: the raw columns (strings, unused columns, a whole lake)
are never loaded together, and Dask partitions are encoded on the workers, but the model
arrays -- ``p + sum k + 5`` numbers per row -- do live in this process during the fit. A fit
whose every PIRLS iteration is one map-reduce of per-group pieces over the partitions (no
rows held) is the next step (issue 18); it needs the row passes of :mod:`._glmm_pirls`,
:mod:`._glmm_laplace`, :mod:`._glmm_start` and :mod:`._glmm_results` behind one interface.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from hierfit.checks import apply_severities, resolve_severities
from hierfit.design import Design, DesignEncoding, TermDesign
from hierfit.design.columns import weights_vector
from hierfit.design.outcome import outcome_checks, zero_trials_check
from hierfit.design.sources import Batch
from hierfit.design.streamed import StreamedDesign, encode_batch
from hierfit.exceptions import DataError

__all__ = ["GatherRows", "ModelRows", "gather_design"]

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
        fresh = apply_severities([d for d in found if (d.check, d.message) not in seen], resolve_severities(None),
                                 stacklevel=5)
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


def _check_memory(streamed: StreamedDesign) -> None:
    """Refuse, before the fold, a source whose model arrays would not fit in memory (clearly, not
    by the operating system killing the process half way)."""
    width = len(streamed.x_names) + sum(t.k for t in streamed.terms) + 5 + len(streamed.hierarchy.levels)
    need = 8.0 * streamed.n * width
    try:
        physical = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound known
        return
    if need > MEMORY_SHARE * physical:
        raise DataError(
            f"A streamed {streamed.spec.family.name} GLMM holds its model arrays in memory ({width} numbers per row): "
            f"{streamed.n:,} rows need {need / 2**30:.1f} GB, over half of this machine's {physical / 2**30:.1f} GB. "
            "Fit a sample of the rows (e.g. one file per group of the lake), or aggregate rows that share their "
            "predictors and groups into binomial counts (cbind(successes, failures))."
        )
