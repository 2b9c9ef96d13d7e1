"""What the boosting engines share when they fit a streamed source with ``lightgbm.dask``.

A :class:`~hierfit.design.streamed.StreamedDesign` holds no rows. The engines read its source
in two ways, both built from the design's encoding, so that every part of the source is
encoded exactly as new rows are at prediction time:

* **folds** (:meth:`Source.fold`) for summaries: the outcome's weighted moments, the early
  stopping curve, a sample of reference rows, residual sums;
* **a Dask DataFrame of features** (:func:`feature_frame`), one partition per piece of the
  source, each built where it is computed by a task (:class:`~dataclasses.dataclass` callables
  holding the encoding and the :class:`~._features.FeatureMap`), that ``lightgbm.dask``
  trains on. Only features leave the pieces, never the raw rows in bulk.

Where training runs: on the active ``dask.distributed`` client (``hierfit.fit(...,
workers=N)`` starts one for Parquet files and Dask DataFrames; ``client.as_current()`` or a
default client is found as well). Without one -- an Arrow table, or Parquet files read in this
process -- :func:`training_client` starts a ``LocalCluster`` of ``dask_workers`` processes for
the fit and closes it after: ``lightgbm.dask`` needs a distributed client.

Validation rows are chosen per row from a hash of the row's own values (:func:`row_hash`),
so the split does not depend on how the rows are partitioned or ordered. It is not the
in-memory split (that one ranks every row: :mod:`hierfit.engines.splits`), so a streamed fit
holds out other rows than the in-memory fit of the same data.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hierfit.design import Design, DesignEncoding
from hierfit.design.columns import weights_vector
from hierfit.design.sources import Batch, CompensatedSum, FramePiece, Source
from hierfit.design.sources.base import located
from hierfit.design.sources.runner import active_client
from hierfit.design.streamed import StreamedDesign
from hierfit.design.streamed import encode_batch as streamed_batch
from hierfit.engines.splits import _GOLDEN, _mix
from hierfit.exceptions import EngineError, HierfitError, SpecError

__all__ = [
    "LABEL",
    "VALID",
    "WEIGHT",
    "ReferencePass",
    "RowSplit",
    "TargetMoments",
    "TargetPass",
    "dask_train",
    "encode_batch",
    "feature_frame",
    "leaf_table",
    "require_random_validation",
    "row_hash",
    "target_standardisation",
    "training_client",
]

#: columns the feature partitions carry beside the features (names LightGBM never sees)
LABEL, WEIGHT, VALID = "__hierfit_label__", "__hierfit_weight__", "__hierfit_valid__"

DASK_LGB_MISSING = ("Fitting a streamed source with LightGBM needs lightgbm.dask and dask.distributed: "
                    "pip install 'hierfit[dask]' 'hierfit[lightgbm]'.")


def row_hash(design: Design, seed: int) -> np.ndarray:
    """A 64-bit key per row from the bits of its outcome and model columns and ``seed``.

    The same row gets the same key in any batch, partition or order (unlike
    :func:`hierfit.engines.splits.row_keys`, which ranks the row among all rows).

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=0)
    >>> d = hierfit.build_design(hierfit.make_spec("y ~ x1 + (1 | market)"), sim.data)
    >>> part = d.encoding.apply_observed(sim.data.iloc[[7, 2]])
    >>> bool((row_hash(part, 1) == row_hash(d, 1)[[7, 2]]).all())
    True
    """
    columns = [design.y, *(design.X[:, j] for j in range(design.X.shape[1]))]
    columns += [td.Z[:, j] for td in design.terms for j in range(td.Z.shape[1])]
    with np.errstate(over="ignore"):
        h = np.full(design.n, _mix(np.array([seed], dtype=np.uint64) + _GOLDEN)[0], dtype=np.uint64)
        for col in columns:
            # +0.0 for -0.0: equal values must give equal keys
            bits = (np.ascontiguousarray(col, dtype=np.float64) + 0.0).view(np.uint64)
            h = _mix(h ^ (bits + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return h


@dataclass(frozen=True)
class RowSplit:
    """Validation rows: those whose :func:`row_hash` falls below ``fraction`` of the key range."""

    fraction: float
    seed: int

    def valid(self, design: Design) -> np.ndarray:
        cut = np.uint64(min(int(self.fraction * 2.0**64), 2**64 - 1))
        return row_hash(design, self.seed) < cut


def require_random_validation(engine: str, validation: str) -> None:
    """Grouped validation needs every group's rows at once; a stream splits row by row."""
    if validation != "random":
        raise SpecError(
            f"Engine {engine!r} on a streamed source holds out validation rows one by one (validation='random'); "
            f"got validation={validation!r}, which holds out whole groups and needs all their rows at once. "
            "Pass validation='random', or fit a pandas DataFrame."
        )


def encode_batch(encoding: DesignEncoding, frame: pd.DataFrame) -> tuple[Design, np.ndarray | None]:
    """A batch's design (outcome included) and prior weights, refusing groups the design pass
    never saw: the source changed while it was read."""
    return streamed_batch(encoding, frame), weights_vector(encoding.spec, frame, require_positive=False)


# -- the outcome's standardisation --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TargetMoments:
    """Weighted count, mean and ``sum w (t - mean)^2`` of ``t = y - offset``, with the count and
    weight sum of the rows of positive weight (for relative case weights)."""

    w: float
    mean: float
    m2: float
    positive: int
    w_positive: float

    @staticmethod
    def merge(parts: list[TargetMoments]) -> TargetMoments:
        # Chan et al.'s pairwise update, weighted
        out = parts[0]
        for p in parts[1:]:
            w = out.w + p.w
            d = p.mean - out.mean
            mean = out.mean + d * (p.w / w) if w > 0 else 0.0
            m2 = out.m2 + p.m2 + (d * d * out.w * p.w / w if w > 0 else 0.0)
            out = TargetMoments(w, mean, m2, out.positive + p.positive, out.w_positive + p.w_positive)
        return out


@dataclass(frozen=True, eq=False)
class TargetPass:
    """Per batch: the :class:`TargetMoments` of its rows."""

    encoding: DesignEncoding

    def __call__(self, batch: Batch) -> TargetMoments:
        d, w = encode_batch(self.encoding, batch.frame)
        t = d.y if d.offset is None else d.y - d.offset
        w = np.ones(d.n) if w is None else w
        total = float(w.sum())
        mean = float(np.sum(w * t) / total) if total > 0 else 0.0
        return TargetMoments(total, mean, float(np.sum(w * (t - mean) ** 2)), int(np.count_nonzero(w > 0)),
                             float(w[w > 0].sum()))


def target_standardisation(design: StreamedDesign) -> tuple[float, float, float | None]:
    """``(centre, scale)`` of the gaussian target ``y - offset`` -- what
    :func:`._booster.outcome_standardisation` gives in memory -- and the mean positive weight
    (``None`` without weights). Unweighted, from the design's moments; weighted, by one fold."""
    if design.spec.weights is None:
        m, lay = design.column_moments, design.layout
        if lay.offset is None:
            mean, m2 = float(m.mean[lay.y]), float(m.m2[lay.y, lay.y])
        else:
            y, o = lay.y, lay.offset
            mean, m2 = float(m.mean[y] - m.mean[o]), float(m.m2[y, y] - 2.0 * m.m2[y, o] + m.m2[o, o])
        spread = float(np.sqrt(max(m2, 0.0) / max(m.n, 1)))
        return mean, (spread if np.isfinite(spread) and spread > 0 else 1.0), None
    tm = design.source.fold(TargetPass(design.encoding), TargetMoments.merge, design.read_columns, what="outcome pass")
    spread = float(np.sqrt(max(tm.m2, 0.0) / tm.w)) if tm.w > 0 else 1.0
    mean_w = tm.w_positive / tm.positive if tm.positive else 1.0
    return tm.mean, (spread if np.isfinite(spread) and spread > 0 else 1.0), mean_w


# -- the reference rows of the partial-dependence effects ---------------------------------------------------
_KEY, _LEAF = "__hierfit_key__", "__hierfit_leaf__"


@dataclass(frozen=True, eq=False)
class ReferencePass:
    """Per batch: the ``per_group`` rows of each deepest-level group with the smallest keys.

    Keeping the smallest keys is associative and order-free, so the merged sample is the
    same whatever the partitioning: up to ``per_group`` pseudo-random rows of every group.
    """

    encoding: DesignEncoding
    per_group: int
    seed: int

    def __call__(self, batch: Batch) -> pd.DataFrame:
        d, _ = encode_batch(self.encoding, batch.frame)
        frame = batch.frame.reset_index(drop=True).copy()
        # labels as plain values: batches of different files may carry different categories
        for c in frame.columns:
            if isinstance(frame[c].dtype, pd.CategoricalDtype):
                frame[c] = frame[c].astype(object)
        frame[_KEY] = row_hash(d, self.seed)
        frame[_LEAF] = d.group_index[self.encoding.hierarchy.levels[-1].name]
        return self.smallest([frame])

    def smallest(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        both = pd.concat(frames, ignore_index=True).sort_values([_LEAF, _KEY], kind="stable")
        return both.groupby(_LEAF, sort=False).head(self.per_group).reset_index(drop=True)

    def rows(self, source: Source, columns: Sequence[str]) -> pd.DataFrame:
        """The sample from every batch of ``source``, in a fixed order, without the helper columns."""
        sample = source.fold(self, self.smallest, columns, what="reference rows")
        return sample.drop(columns=[_KEY, _LEAF]).reset_index(drop=True)


# -- LightGBM's trees as a table: staged scores of every iteration at once ------------------------------------
def leaf_table(booster: Any) -> np.ndarray:
    """``(trees, max leaves)`` leaf values: the raw score after ``k`` trees is the sum of the first
    ``k`` trees' values at the rows' leaves (``predict(pred_leaf=True)``), which gives the whole
    early-stopping curve from one prediction per row."""
    info = booster.dump_model()["tree_info"]
    table = np.zeros((len(info), max([int(t["num_leaves"]) for t in info] + [1])))

    def walk(node: dict[str, Any], row: np.ndarray) -> None:
        if "leaf_value" in node:
            row[int(node.get("leaf_index", 0))] = float(node["leaf_value"])
            return
        walk(node["left_child"], row)
        walk(node["right_child"], row)

    for i, tree in enumerate(info):
        walk(tree["tree_structure"], table[i])
    return table


def staged_scores(booster: Any, table: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``(rows, trees)``: the raw score of each row after 1, 2, ... trees."""
    leaves = np.asarray(booster.predict(X, pred_leaf=True), dtype=np.int64).reshape(X.shape[0], -1)
    trees = np.arange(leaves.shape[1])
    return np.cumsum(table[trees, leaves], axis=1)


def early_stopping_point(curve: np.ndarray, patience: int) -> int:
    """The iterations LightGBM's ``early_stopping(patience)`` callback keeps on a validation
    loss ``curve`` (one value per tree): the best so far, when ``patience`` trees in a row did
    not improve on it strictly (or the curve ends).

    Examples
    --------
    >>> early_stopping_point(np.array([5.0, 4.0, 4.5, 4.2, 4.1, 3.0]), 3)
    2
    >>> early_stopping_point(np.array([5.0, 4.0, 3.5]), 3)
    3
    """
    best, best_i = np.inf, 0
    for i, value in enumerate(curve):
        if value < best:
            best, best_i = float(value), i
        elif i - best_i >= patience:
            break
    return best_i + 1


# -- Dask: the client, the feature frame and the training call ----------------------------------------------
@contextlib.contextmanager
def training_client(workers: int) -> Iterator[Any]:
    """The active ``dask.distributed`` client, or a ``LocalCluster`` of ``workers`` processes
    (one thread each) started for the block and closed after. It is current in the block
    (``lightgbm.dask`` waits on the current client)."""
    try:
        import lightgbm.dask  # noqa: F401
        from distributed import Client, LocalCluster
    except ImportError:
        raise EngineError(DASK_LGB_MISSING) from None
    client = active_client()
    if client is not None:
        with client.as_current():
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as started, started.as_current():
        yield started


def _identity(value: Any) -> Any:
    return value


def piece_frame(piece: Any, index: int, task: Callable[[Batch], pd.DataFrame], columns: list[str], batch_size: int,
                meta: pd.DataFrame) -> pd.DataFrame:
    """One piece of the source as the frame ``task`` makes of its batches (``meta`` when empty).

    ``piece`` is a :class:`~hierfit.design.sources.base.Piece` or, for a Dask partition
    computed on its worker, a pandas frame.
    """
    if isinstance(piece, pd.DataFrame):
        piece = FramePiece(piece, f"partition {index}")
    frames = []
    for batch in piece.batches(columns, batch_size, index, tuple(getattr(task, "labels", ()))):
        try:
            frames.append(task(batch))
        except HierfitError as exc:
            raise located(exc, batch.where) from None
    return pd.concat(frames, ignore_index=True) if frames else meta


def feature_frame(source: Source, task: Callable[[Batch], pd.DataFrame], columns: Sequence[str], meta: pd.DataFrame) -> Any:
    """A Dask DataFrame of one partition per piece of ``source``: ``task`` of its batches."""
    import dask
    import dask.dataframe as dd

    # the task (encoding, feature map, trees) is one graph node shipped once to each worker
    shared = dask.delayed(_identity, pure=True)(task)
    parts = [dask.delayed(piece_frame, pure=False)(piece, i, shared, list(columns), source.batch_size, meta)
             for i, piece in enumerate(source.pieces)]
    return dd.from_delayed(parts, meta=meta, verify_meta=False)


def dask_train(client: Any, frame: Any, names: Sequence[str], params: dict[str, Any], rounds: int, *,
               weighted: bool, categorical: Sequence[int] = (), init_model: Any = None) -> Any:
    """Train ``rounds`` trees with ``lightgbm.dask`` on the rows of the Dask ``frame`` (features
    ``names``, label :data:`LABEL`, case weights :data:`WEIGHT` when ``weighted``); returns the
    local ``Booster`` (with ``init_model``'s trees first, when given)."""
    from lightgbm.dask import DaskLGBMRegressor

    # Dask sets each worker's threads from its cores; num_threads here would only be ignored
    params = {k: v for k, v in params.items() if k not in ("num_threads", "n_jobs")}
    model = DaskLGBMRegressor(client=client, n_estimators=int(rounds), **params)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(frame[list(names)], frame[LABEL], sample_weight=frame[WEIGHT] if weighted else None,
                  feature_name=list(names), categorical_feature=list(categorical) or "auto", init_model=init_model)
    return model.booster_


def staged_sums(scores: np.ndarray, y: np.ndarray, w: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """Per iteration, ``sum w (y - score)^2`` over ``rows``, and the rows' weight."""
    if not rows.any():
        return np.zeros(scores.shape[1]), 0.0
    r = y[rows, None] - scores[rows]
    return np.einsum("i,ij->j", w[rows], r * r), float(w[rows].sum())


def compensated(arrays: Sequence[np.ndarray]) -> CompensatedSum:
    return CompensatedSum.of([np.asarray(a, dtype=np.float64) for a in arrays])
