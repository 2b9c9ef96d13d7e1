"""A GLMM whose rows stay where they live: every row pass is one map-reduce over shards.

The Laplace fit of :mod:`._glmm_results` reads the rows only through a handful of passes, each
a sum over rows of per-group pieces: the PIRLS system of the next Newton step and the
deviance (:func:`._glmm_pirls._pass`), the joint ``(beta, u)`` system of the start
(:func:`._glmm_pirls._joint_pass`), the two passes of the exact gradient
(:func:`._glmm_laplace.leverage_sums`, :func:`._glmm_laplace.score_sums`), the moment sums of a
negative-binomial size and the deviance, Pearson and separation sums at the end
(:func:`._glmm_diagnostics.end_sums`). A *shard* is a batch of rows (a Dask partition's, or a
record batch of a Parquet file) held as an in-memory :class:`._glmm_pirls.Problem` with the
fit's global structure -- plan, layouts, standardisation, theta parametrisation -- and only its
own rows. Each pass runs the very in-memory function on every shard and adds the results; the
driver's :class:`._glmm_pirls.Problem` has the structure and no rows, and its PIRLS loop,
optimiser, draws and results are the in-memory ones. So the fit is the in-memory fit to the
rounding of the sums (``tests/test_sources_glmm.py`` measures it).

Where the shards live (a :class:`ShardStore`):

* :class:`DaskShards` -- on the workers of the active ``dask.distributed`` client: each piece of
  the source is encoded once into its shards on a worker and kept there (a future); a pass
  sends the parameters (O(groups) numbers) and gets back one sum per piece. The client never
  holds a row. A lost worker's shards are rebuilt from the source by the scheduler (their
  lineage), so a pass either completes with every piece or fails with an error.
* :class:`SourceShards` -- nowhere: every pass reads the source again, batch by batch (a lake
  bigger than memory on one machine). Each pass then costs one read of the source.

Only the canonical-weight case is sharded (a canonical link, or observed information): there
the Newton weights of PIRLS are the weights of ``H`` and of its observed twin, so a pass yields
one system and the rows need no second visit at the mode.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hierfit.design import DesignEncoding
from hierfit.design.columns import weights_vector
from hierfit.design.outcome import SeparationRanges, proportion
from hierfit.design.sources import Batch, Source
from hierfit.design.sources.runner import SILENT, dask_failures, summarise_piece
from hierfit.design.streamed import StreamedDesign, encode_batch
from hierfit.exceptions import DataError
from hierfit.model.family import Family

from ._blocks import Plan
from ._factor import System
from ._glmm_diagnostics import EndSums, end_sums
from ._glmm_kernels import linpred, make_row_layout
from ._glmm_laplace import leverage_sums, score_sums
from ._glmm_pirls import Problem, _joint_pass, _pass
from ._glmm_rows import RowModel
from ._glmm_setup import FitSetup, clean_rows, fused_for, resolve_dispersion
from ._standardize import ColumnMap, Standardization
from ._stream import _batch_plan, stream_plan, stream_standardization
from ._suffstats import Layout, make_layout
from ._theta import ThetaSpec
from .lmm import _factor_map

__all__ = ["DaskShards", "ShardSpec", "Shards", "SourceShards", "prepare_sharded", "sharded_families"]


def sharded_families(family: Family, information: str) -> bool:
    """Whether a fit of ``family`` with that information of ``H`` can be sharded (see the
    module docstring): its Newton weights are the weights of ``H``."""
    return RowModel(family, np.zeros(0), np.zeros(0), np.zeros(0), information).canonical_pair or information == "observed"


# ---------------------------------------------------------------------------------------- shards
@dataclass(eq=False)
class Shard:
    """Some rows as an in-memory problem with the fit's global structure.

    ``start`` is the source position of its first row (for the rows named in diagnostics);
    ``codes`` the group codes of every term (the separation check of group effects).
    """

    prob: Problem
    codes: tuple[np.ndarray, ...]
    start: int
    bad_offset: np.ndarray
    zero_trials: np.ndarray
    ranges: SeparationRanges | None


@dataclass(frozen=True, eq=False)
class ShardSpec:
    """How a batch becomes a shard. It travels to Dask workers: plain data and code only."""

    encoding: DesignEncoding
    levels: tuple[str, ...]
    skeleton: Plan
    lay0: Layout
    layf: Layout
    factor_maps: tuple[tuple[np.ndarray, np.ndarray], ...]
    xmap: ColumnMap
    theta: ThetaSpec
    family: Family
    information: str
    use_numba: bool

    def __call__(self, batch: Batch) -> Shard:
        d = encode_batch(self.encoding, batch.frame)
        start = int(batch.frame.index[0]) if len(batch.frame.index) else 0
        weights = weights_vector(self.encoding.spec, batch.frame, require_positive=False)
        try:
            y, t, w, o, bad, zero = clean_rows(self.family, np.asarray(d.y, dtype=np.float64), d.trials, weights, d.offset)
        except ValueError as exc:
            raise DataError(f"Rows {start}-{start + d.n - 1} of the source: {exc}. Fix those rows of the outcome.") from None
        X = np.ascontiguousarray(d.X, dtype=np.float64)
        columns = [[np.ascontiguousarray(td.Z[:, a], dtype=np.float64) for a in range(td.Z.shape[1])] for td in d.terms]
        plan = _batch_plan(self.skeleton, self.levels, d.group_index, columns)
        rl = make_row_layout(plan, self.lay0, list(self.factor_maps))
        rows = RowModel(self.family, y, t, w, self.information, fast=self.use_numba)
        prob = Problem(X, o, self.xmap, rows, rl, plan, self.theta, System(plan, self.lay0, []),
                       System(plan, self.layf, []), self.use_numba, fused_for(rows, rl, self.use_numba))
        ranges = None
        if self.family.mean_range == (0.0, 1.0):
            keep = w > 0
            ranges = SeparationRanges.of(proportion(d.y[keep], None if d.trials is None else d.trials[keep]), X[keep])
        codes = tuple(np.asarray(d.group_index[lv], dtype=np.int64) for lv in self.levels)
        return Shard(prob, codes, start, bad + start, zero + start, ranges)


# ------------------------------------------------------------------- the passes on one shard
def _step(sh: Shard, Ts: list[np.ndarray], beta_t: np.ndarray, disp: float | None, u: np.ndarray
          ) -> tuple[float, list[np.ndarray]]:
    prob = sh.prob
    pd, _, _, raw, _ = _pass(prob, Ts, prob.xbeta(beta_t), disp, u, False)
    raw[-1][0, -1, -1] -= 1.0  # the pad is added once, to the sum
    return pd - float(u @ u), raw


def _joint(sh: Shard, Ts: list[np.ndarray], disp: float | None, beta_t: np.ndarray, u: np.ndarray, start: bool
           ) -> tuple[float, list[np.ndarray]]:
    pd, raw, _ = _joint_pass(sh.prob, Ts, disp, beta_t, u, start=start)
    raw[-1][0, -1, -1] -= 1.0
    return pd - float(u @ u), raw


def _eta_terms(sh: Shard, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None
               ) -> tuple[np.ndarray, Any]:
    prob = sh.prob
    eta = linpred(prob.rl, prob.xbeta(beta_t), prob.lam(Ts, u), prob.use_numba)
    return eta, (None if prob.fused is not None else prob.rows.terms(eta, disp, True))


def _leverage(sh: Shard, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None,
              sig: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    eta, terms = _eta_terms(sh, Ts, beta_t, u, disp)
    zdwh, zd1, _ = leverage_sums(sh.prob, eta, terms, Ts, sig)
    return zdwh, zd1


def _scores(sh: Shard, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None,
            sig: list[np.ndarray], v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # the per-row W'h of the first pass is recomputed here: no row state outlives a pass
    eta, terms = _eta_terms(sh, Ts, beta_t, u, disp)
    _, _, dwh = leverage_sums(sh.prob, eta, terms, Ts, sig)
    return score_sums(sh.prob, eta, terms, dwh, Ts, v)


def _moments(sh: Shard, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray) -> np.ndarray:
    from ._glmm_start import moment_sums

    return moment_sums(sh.prob, beta_t, Ts, u)


def _ends(sh: Shard, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None,
          n_groups: tuple[int, ...]) -> EndSums:
    rows = sh.prob.rows
    eta, _ = _eta_terms(sh, Ts, beta_t, u, disp)
    return end_sums(rows.family, rows.y, rows.family.link.inverse(eta), rows.t, rows.pw, disp, sh.codes, n_groups)


@dataclass(frozen=True)
class ShardInfo:
    """What the fit needs to know of the rows before it starts (merged over shards)."""

    n_obs: int
    bad_offset: np.ndarray
    zero_trials: np.ndarray
    ranges: SeparationRanges | None


#: rows named per kind of left-out row (the in-memory diagnostics keep the first 10)
NAMED_ROWS = 10


def _info(sh: Shard) -> ShardInfo:
    return ShardInfo(int(np.count_nonzero(sh.prob.rows.pw > 0)), sh.bad_offset, sh.zero_trials, sh.ranges)


def _add(a: Any, b: Any) -> Any:
    """The sum of two pass results of the same shape (numbers, arrays, lists, tuples, sums)."""
    if isinstance(a, EndSums):
        return EndSums.add(a, b)
    if isinstance(a, ShardInfo):
        ranges = a.ranges if b.ranges is None else b.ranges if a.ranges is None else SeparationRanges.merge(a.ranges, b.ranges)
        return ShardInfo(a.n_obs + b.n_obs, np.concatenate([a.bad_offset, b.bad_offset]),
                         np.concatenate([a.zero_trials, b.zero_trials]), ranges)
    if isinstance(a, list | tuple):
        return type(a)(_add(x, y) for x, y in zip(a, b))
    return a + b


def _total(parts: Sequence[Any]) -> Any:
    total = parts[0]
    for p in parts[1:]:
        total = _add(total, p)
    return total


# ------------------------------------------------------------------------------------- stores
class ShardStore(ABC):
    """Where the shards live; :meth:`map_sum` runs one pass on every shard and adds the results."""

    @abstractmethod
    def map_sum(self, op: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """``op(shard, *args)`` summed over every shard."""

    def close(self) -> None:
        """Release the shards."""


@dataclass(frozen=True, eq=False)
class _OnPiece:
    """One pass over the shards of one piece (on its worker), summed there."""

    op: Callable[..., Any]

    def __call__(self, shards: list[Shard], args: tuple[Any, ...]) -> Any:
        return _total([self.op(sh, *args) for sh in shards])


def _build_piece(piece: Any, index: int, spec: ShardSpec, columns: list[str], batch_size: int) -> list[Shard]:
    return summarise_piece(piece, index, lambda b: [spec(b)], _concat, columns, batch_size, SILENT) or []


def _concat(parts: list[list[Shard]]) -> list[Shard]:
    return [sh for p in parts for sh in p]


class DaskShards(ShardStore):
    """The shards of every piece kept on the workers of a ``dask.distributed`` client."""

    def __init__(self, client: Any, source: Source, spec: ShardSpec, columns: Sequence[str]) -> None:
        import dask

        self.client = client
        # as the source's own folds (:class:`~hierfit.design.sources.runner.DaskRunner`): a piece may be
        # a Dask partition (a delayed object computed where it lives), and the spec travels once
        shared = dask.delayed(spec, pure=True)
        built = [dask.delayed(_build_piece, pure=False)(piece, i, shared, list(columns), source.batch_size)
                 for i, piece in enumerate(source.pieces)]
        self.futures = client.compute(built)
        self.passes = 0

    def map_sum(self, op: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        client = self.client
        with dask_failures("during a pass of the GLMM fit", "during a pass of the GLMM fit", "estimate"):
            shared = _scatter(client, _Args(args))
            futures = client.map(_on_piece_args, self.futures, run=_OnPiece(op), shared=shared, pure=False)
            try:
                parts = client.gather(futures)
            finally:
                for f in futures:
                    f.release()
                shared.release()
        self.passes += 1
        present = [p for p in parts if p is not None]
        return _total(present)

    def close(self) -> None:
        for f in self.futures:
            f.release()
        self.futures = []


#: tries of a pass's scatter before its failure is the cluster's
SCATTER_TRIES = 5


def _scatter(client: Any, value: Any) -> Any:
    """``client.scatter(value)``, tried again while the worker it went to has just died.

    A worker killed between two passes is still listed by the scheduler for a moment; the
    scatter to it then fails with a closed connection. By the next try the scheduler has
    dropped it (and is rebuilding its shards elsewhere), so the parameters go to a live one.
    """
    for attempt in range(SCATTER_TRIES - 1):
        try:
            return client.scatter(value, broadcast=False, hash=False)
        except OSError:  # distributed's CommClosedError and StreamClosedError are OSErrors
            time.sleep(0.2 * 2 ** attempt)
    return client.scatter(value, broadcast=False, hash=False)  # the last try: its failure is the cluster's


@dataclass(frozen=True)
class _Args:
    """A pass's parameters as one object (scattered once, not once per piece)."""

    values: tuple[Any, ...]


def _on_piece_args(shards: list[Shard], run: _OnPiece, shared: _Args) -> Any:
    return run(shards, shared.values) if shards else None


@dataclass(frozen=True, eq=False)
class _OnBatch:
    """One pass on the shard of one batch, made from the batch as it is read."""

    spec: ShardSpec
    op: Callable[..., Any]
    args: tuple[Any, ...]

    def __call__(self, batch: Batch) -> Any:
        return self.op(self.spec(batch), *self.args)


class SourceShards(ShardStore):
    """No shard is kept: every pass reads the source again (a lake bigger than memory)."""

    def __init__(self, source: Source, spec: ShardSpec, columns: Sequence[str]) -> None:
        self.source, self.spec, self.columns = source, spec, list(columns)
        self.passes = 0

    def map_sum(self, op: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        self.passes += 1
        return self.source.fold(_OnBatch(self.spec, op, args), _total, self.columns, what="GLMM pass")


# ------------------------------------------------------------------------------------ driver
class Shards:
    """The row passes of :class:`._glmm_pirls.Shards`, summed over a store's shards."""

    def __init__(self, store: ShardStore, n_groups: tuple[int, ...]) -> None:
        self.store = store
        self.n_groups = n_groups

    def close(self) -> None:
        """Release the shards (the futures on the workers)."""
        self.store.close()

    def step(self, Ts: list[np.ndarray], beta_t: np.ndarray, disp: float | None, u: np.ndarray
             ) -> tuple[float, list[np.ndarray]]:
        dev, raw = self.store.map_sum(_step, (Ts, beta_t, disp, u))
        return float(dev), raw

    def joint_step(self, Ts: list[np.ndarray], disp: float | None, beta_t: np.ndarray, u: np.ndarray,
                   start: bool) -> tuple[float, list[np.ndarray]]:
        dev, raw = self.store.map_sum(_joint, (Ts, disp, beta_t, u, start))
        return float(dev), raw

    def leverage(self, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None,
                 sig: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        zdwh, zd1 = self.store.map_sum(_leverage, (Ts, beta_t, u, disp, sig))
        return zdwh, zd1

    def scores(self, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None,
               sig: list[np.ndarray], v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        zc, g_beta = self.store.map_sum(_scores, (Ts, beta_t, u, disp, sig, v))
        return zc, g_beta

    def moment_sums(self, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray) -> np.ndarray:
        return np.asarray(self.store.map_sum(_moments, (Ts, beta_t, u)))

    def end_sums(self, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, disp: float | None) -> EndSums:
        return self.store.map_sum(_ends, (Ts, beta_t, u, disp, self.n_groups))  # type: ignore[no-any-return]

    def info(self) -> ShardInfo:
        return self.store.map_sum(_info, ())  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------- set-up
def prepare_sharded(design: StreamedDesign, family: Family, *, n_agq: int, information: str | None,
                    nb_theta: float | None, use_numba: bool, client: Any) -> tuple[FitSetup, ShardInfo]:
    """The fit's structures from the streamed design (cells and moments, as the gaussian streamed
    fit), its shards on the ``client``'s workers (or re-read from the source when ``None``), and
    what the rows say before the fit (rows carrying likelihood, rows left out, separation)."""
    if n_agq != 1:
        raise ValueError("a sharded GLMM is fitted by Laplace (n_agq=1)")
    estimate_disp, information = resolve_dispersion(family, nb_theta, information)
    blocks, plan = stream_plan(design, "blocked")
    std: Standardization = replace(stream_standardization(design), y_center=0.0, y_scale=1.0, ones_coef=None)
    p = len(design.x_names)
    factor_maps = tuple(_factor_map(std, fac.blocks) for fac in plan.factors)
    lay0, layf = make_layout(plan, 0), make_layout(plan, p)
    rl = make_row_layout(plan, lay0, list(factor_maps))  # the cells as rows: only the structure is read
    theta = ThetaSpec.from_blocks(blocks)
    skeleton = Plan([replace(f, group_index=np.zeros(0, dtype=np.int64), columns=[]) for f in plan.factors],
                    plan.chain, plan.root, plan.parent_maps)
    spec = ShardSpec(design.encoding, tuple(td.level for td in design.terms), skeleton, lay0, layf, factor_maps,
                     std.x, theta, family, information, use_numba)
    store: ShardStore = (DaskShards(client, design.source, spec, design.read_columns) if client is not None
                         else SourceShards(design.source, spec, design.read_columns))
    shards = Shards(store, tuple(b.n_groups for b in blocks))
    try:
        info = shards.info()
    except BaseException:
        store.close()
        raise
    if info.n_obs == 0:
        store.close()
        raise DataError(f"No row of the source ({design.source.description}) carries likelihood: every row has zero "
                        "weight, zero trials or a non-finite offset. Check those columns.")
    empty = np.zeros(0)
    rows = RowModel(family, empty, empty, empty, information, fast=use_numba)
    prob = Problem(np.zeros((0, p)), empty, std.x, rows, rl, plan, theta, System(plan, lay0, []),
                   System(plan, layf, []), use_numba, None, shards=shards)
    bad, zero = np.sort(info.bad_offset), np.sort(info.zero_trials)
    setup = FitSetup(prob, std, blocks, family, empty, empty, empty, 1, information, estimate_disp,
                     None if nb_theta is None else float(nb_theta), bad, zero, shard_n_obs=info.n_obs)
    return setup, info
