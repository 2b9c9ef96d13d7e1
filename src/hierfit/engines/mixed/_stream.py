"""The gaussian mixed model of a streamed design: its statistics gathered batch by batch.

A :class:`~hierfit.design.streamed.StreamedDesign` holds no rows, but everything the linear
core needs to *plan* the fit: the tree of groups, the cells (distinct combinations of the
grouping columns, from which nesting is found exactly as from the rows) and the moments of
``[X, y, offset, Z]`` (from which the same centring and scaling as in memory is chosen,
:func:`._standardize.standardize_from_moments`). One more fold over the source then gathers
the per-group sufficient statistics: every batch is encoded with the design's encoding, its
statistics computed by the very :func:`._suffstats.compute_rows` of an in-memory fit (with the
global plan, maps and all-ones flags), and the batches' statistics added with compensated sums
(:class:`~hierfit.design.sources.CompensatedSum`). The fit proper -- optimisation, solution,
draws, save -- is the in-memory one, from :func:`.lmm.devfun_from_system` on.

When the design pass gathered the moments of every *cell* (distinct combination of the
grouping columns: :class:`~hierfit.design.moments.CellMoments`), the source is not read again.
Every group is a union of cells, and every statistic is a sum over rows of a product of two
standardised columns, so per cell it is ``n u u' + S' M2 S`` (``u`` the cell's standardised
mean, ``S`` the column maps' scaling). :func:`cell_rows` writes each cell as ``1 + q`` *pseudo
rows* with exactly those sums of products -- ``sqrt(n) u`` and the columns of a square root of
the cell's co-moment matrix -- and the same :func:`._suffstats.compute_rows` gathers the
statistics from them: no second implementation of the statistics, and no pass over the rows.

Equality with the in-memory fit of the same rows: the statistics differ only by the rounding
of each batch's own sums, so estimates agree to ~1e-12 relative or better whatever the
batching, partitioning and row order (``tests/test_sources.py`` measures it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from hierfit.design import DesignEncoding
from hierfit.design.columns import weights_vector
from hierfit.design.moments import CellMoments, ColumnMoments
from hierfit.design.sources import Batch, CompensatedSum
from hierfit.design.streamed import StreamedDesign, encode_batch, stream_labels
from hierfit.exceptions import EngineError

from ._blocks import Plan, RandomBlock, make_plan, term_blocks
from ._factor import System
from ._standardize import Standardization, standardize_from_moments
from ._suffstats import ColumnAffine, Layout, compute_rows, make_layout
from .lmm import LmmSolution, _warn_if_slow, choose_solver, devfun_from_system, lmm_solution, optimize_lmm, standardization_maps

__all__ = ["StatisticsPass", "cell_rows", "fit_streamed_lmm", "stream_plan"]

#: largest ``|X_t c - 1|`` over the rows for which a constant counts as in the span of ``X``
#: (the in-memory rule of :func:`._standardize.standardize`)
ONES_TOL = 1e-10


def stream_plan(design: StreamedDesign, solver: str) -> tuple[list[RandomBlock], Plan]:
    """The terms' structure and the elimination plan, found from the design's cells.

    Nesting, shared factors and the chain/root split only depend on which combinations of
    groups occur, so the plan made from the cells is the one the rows would give. The
    all-ones flags of the factors' columns come from the moments (over all rows).
    """
    n_cells = design.cell_rows.size
    blocks = term_blocks(design, design.cell_codes, lambda td: np.ones((n_cells, td.k)))
    plan, _ = make_plan(blocks, n_cells, warn=False)
    kind, plan = choose_solver(plan, solver)
    if kind == "crossed":
        raise EngineError(
            "Engine 'mixed': this crossed design would be eliminated with the sparse crossed solver, which a streamed fit "
            "does not offer yet. Pass solver='blocked' (the dense-root elimination; the same fit, slower per evaluation)."
        )
    _warn_if_slow(plan, kind)
    ones = design.column_moments.is_ones()
    for fac in plan.factors:
        fac.is_ones = [bool(ones[j]) for b in fac.blocks for j in design.layout.terms[b]]
    return blocks, plan


def _batch_plan(skeleton: Plan, levels: tuple[str, ...], group_index: dict[str, np.ndarray],
                columns: list[list[np.ndarray]]) -> Plan:
    """The skeleton's plan with one batch's group codes and model columns."""
    factors = []
    for fac in skeleton.factors:
        g = np.ascontiguousarray(group_index[levels[fac.blocks[0]]], dtype=np.int64)
        cols = [c for b in fac.blocks for c in columns[b]]
        factors.append(replace(fac, group_index=g, columns=cols, is_ones=list(fac.is_ones)))
    return Plan(factors, skeleton.chain, skeleton.root, skeleton.parent_maps)


@dataclass(frozen=True, eq=False)
class BatchStatistics:
    """The PLS rows of some batches (plus ``sum log w``, last), positive-weight rows, and the
    largest ``|X_t c - 1|`` seen (0 when no constant is to be confirmed)."""

    sums: CompensatedSum
    positive: int
    ones_residual: float

    @staticmethod
    def merge(parts: list[BatchStatistics]) -> BatchStatistics:
        return BatchStatistics(CompensatedSum.merge([p.sums for p in parts]), sum(p.positive for p in parts),
                               max(p.ones_residual for p in parts))


@dataclass(frozen=True, eq=False)
class StatisticsPass:
    """Per batch: the unscaled rows of the mixed-model equations with the fit's global plan
    and maps (see the module docstring). It travels to Dask workers: plain data and code only."""

    encoding: DesignEncoding
    levels: tuple[str, ...]
    skeleton: Plan
    layout: Layout
    xy_map: ColumnAffine
    factor_maps: tuple[ColumnAffine, ...]
    x_ones: tuple[bool, ...]
    ones_coef: np.ndarray | None
    #: grouping columns read as categoricals of their dictionary codes (see :func:`hierfit.design.streamed.stream_labels`)
    labels: tuple[str, ...] = ()

    def __call__(self, batch: Batch) -> BatchStatistics:
        d = encode_batch(self.encoding, batch.frame)
        y = d.y if d.offset is None else d.y - d.offset
        w = weights_vector(self.encoding.spec, batch.frame, require_positive=False)
        columns = [[np.asarray(td.Z[:, a], dtype=np.float64) for a in range(td.Z.shape[1])] for td in d.terms]
        plan = _batch_plan(self.skeleton, self.levels, d.group_index, columns)
        rows = compute_rows(d.X, y, plan, self.layout, self.xy_map, list(self.factor_maps), weights=w, x_ones=self.x_ones)
        log_w = 0.0 if w is None else float(np.sum(np.log(w[w > 0])))
        positive = d.n if w is None else int(np.count_nonzero(w > 0))
        residual = 0.0
        if self.ones_coef is not None and d.n:
            center, scale = self.xy_map[0][:-1], self.xy_map[1][:-1]
            residual = float(np.max(np.abs(((d.X - center) / scale) @ self.ones_coef - 1.0)))
        return BatchStatistics(CompensatedSum.of([*rows, np.array([log_w])]), positive, residual)


def _outcome_moments(design: StreamedDesign) -> tuple[float, float]:
    """Mean and ``sum (r - mean)^2`` of the modelled outcome ``r = y - offset`` (the gaussian
    model of ``y`` with a known part of its mean is the model of what is left)."""
    m, lay = design.column_moments, design.layout
    if lay.offset is None:
        return float(m.mean[lay.y]), float(m.m2[lay.y, lay.y])
    y, o = lay.y, lay.offset
    return float(m.mean[y] - m.mean[o]), float(m.m2[y, y] - 2.0 * m.m2[y, o] + m.m2[o, o])


def stream_standardization(design: StreamedDesign) -> Standardization:
    """The column maps an in-memory fit of the same rows would choose, from the moments."""
    m = design.column_moments
    y_mean, y_m2 = _outcome_moments(design)
    terms: list[ColumnMoments] = [m.select(idx) for idx in design.layout.terms]
    return standardize_from_moments(m.select(design.layout.x), y_mean, y_m2, terms,
                                    [td.term.correlated for td in design.terms])


def _without_shift(std: Standardization, design: StreamedDesign) -> Standardization:
    """The maps when no constant lies in the span of ``X``: the outcome is only scaled."""
    y_mean, y_m2 = _outcome_moments(design)
    n = max(design.n, 1)
    s = float(np.sqrt(max(y_m2, 0.0) / n + y_mean ** 2))
    return replace(std, y_center=0.0, ones_coef=None, y_scale=s if np.isfinite(s) and s > 0 else 1.0)


def fit_streamed_lmm(design: StreamedDesign, *, reml: bool, maxiter: int, n_starts: int, seed: int,
                     solver: str) -> LmmSolution:
    """REML/ML fit of a streamed design: plan, one statistics pass over the source, optimise.

    Examples
    --------
    >>> import pyarrow as pa, hierfit
    >>> from hierfit.design import build_streamed_design
    >>> from hierfit.design.sources import open_source
    >>> sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=8, seed=4)
    >>> spec = hierfit.make_spec("y ~ x1 + (1 | market/submarket)")
    >>> with open_source(pa.Table.from_pandas(sim.data), batch_size=25) as source:
    ...     sol = fit_streamed_lmm(build_streamed_design(spec, source), reml=True, maxiter=1000, n_starts=1, seed=0,
    ...                            solver="auto")
    >>> mem = hierfit.fit("y ~ x1 + (1 | market/submarket)", sim.data, engine="mixed").native()
    >>> bool(np.allclose(sol.beta, mem.beta, rtol=1e-10)), bool(np.isclose(sol.loglik, mem.loglik, rtol=1e-12))
    (True, True)
    """
    t0 = time.perf_counter()
    blocks, plan = stream_plan(design, solver)
    std = stream_standardization(design)
    p = len(design.x_names)
    layout = make_layout(plan, p)
    ones = design.column_moments.is_ones()
    x_ones = tuple(bool(ones[j]) for j in design.layout.x)
    confirm = std.ones_coef is not None and std.x.intercept is None
    if design.cell_moments is not None and design.spec.weights is None and not confirm:
        # every statistic from the cells' moments: the design pass was the only read
        stats = _from_cells(design, design.cell_moments, plan, layout, std)
    else:
        stats = _gather(design, plan, layout, std, x_ones, confirm)
    if confirm and stats.ones_residual > ONES_TOL:
        # the moments suggested a constant in the span of X that the rows do not confirm:
        # gather again without shifting the outcome (as the in-memory rule decides)
        std = _without_shift(std, design)
        stats = _gather(design, plan, layout, std, x_ones, False)
    values = stats.sums.values()
    sysm = System(plan, layout, values[:-1])
    n = stats.positive if design.spec.weights is not None else design.n
    log_weights = float(values[-1][0]) if design.spec.weights is not None else 0.0
    devfun = devfun_from_system(sysm, blocks, std, n, p, reml=reml, data_seconds=time.perf_counter() - t0,
                                log_weights=log_weights)
    optsum = optimize_lmm(devfun, maxiter=maxiter, n_starts=n_starts, seed=seed)
    return lmm_solution(devfun, optsum)


def _gather(design: StreamedDesign, plan: Plan, layout: Layout, std: Standardization, x_ones: tuple[bool, ...],
            confirm: bool) -> BatchStatistics:
    xy_map, factor_maps = standardization_maps(std, plan)
    # the skeleton travels to every worker: drop the cells' codes it was planned from
    skeleton = Plan([replace(f, group_index=np.zeros(0, dtype=np.int64), columns=[]) for f in plan.factors],
                    plan.chain, plan.root, plan.parent_maps)
    task = StatisticsPass(design.encoding, tuple(td.level for td in design.terms), skeleton, layout, xy_map,
                          tuple(factor_maps), x_ones, std.ones_coef if confirm else None,
                          stream_labels(design.spec, design.source.schema))
    return design.source.fold(task, BatchStatistics.merge, design.read_columns, what="statistics pass")


def _column_maps(design: StreamedDesign, plan: Plan, std: Standardization) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every standardised column of ``[X y]`` and of each factor (in that order) as
    ``(a' x - center) / scale`` of the raw moment columns ``x``: ``A`` (``a`` per column; the
    outcome is ``y - offset``), the centres and the scales."""
    lay = design.layout
    xy_map, factor_maps = standardization_maps(std, plan)
    raw: list[tuple[int, ...]] = [(j,) for j in lay.x]
    raw.append((lay.y,) if lay.offset is None else (lay.y, -1 - lay.offset))
    centers, scales = [xy_map[0]], [xy_map[1]]
    for fac, (center, scale) in zip(plan.factors, factor_maps):
        raw += [(j,) for b in fac.blocks for j in lay.terms[b]]
        centers.append(center)
        scales.append(scale)
    q = design.column_moments.mean.size
    A = np.zeros((q, len(raw)))
    for k, cols in enumerate(raw):
        for j in cols:
            A[j if j >= 0 else -1 - j, k] = 1.0 if j >= 0 else -1.0
    return A, np.concatenate(centers), np.concatenate(scales)


def cell_rows(cells: CellMoments, A: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(m (1 + q), k)`` pseudo rows, ``1 + q`` per cell (cell by cell), whose sums of products
    in each cell equal those of the cell's real rows for the ``k`` columns ``(A' x - center) / scale``.

    Row 0 of a cell is ``sqrt(n) u`` (``u``: the cell's standardised mean); rows ``1..q`` are
    ``S' R`` with ``R R' = M2`` (its co-moments), from an eigendecomposition of ``M2`` scaled to
    unit diagonal (columns of very different sizes keep their own digits). The mean is taken
    about the moments' origin first, so a large-mean column (``y`` near 1e8) loses nothing.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> x = rng.normal(loc=[1e8, 0.0], size=(50, 2))
    >>> cells = CellMoments.of(x, np.zeros(50, dtype=np.int64), 1)
    >>> rows = cell_rows(cells, np.eye(2), np.array([1e8, 0.0]), np.ones(2))
    >>> t = x - [1e8, 0.0]
    >>> bool(np.allclose(rows.T @ rows, t.T @ t, rtol=1e-12))
    True
    """
    m, q = cells.mean.shape
    # (main raw column's origin - center) first: both near the mean of a large column, so their
    # difference is exact; a second raw column (an offset, subtracted) is added to that after
    main = np.argmax(A != 0.0, axis=0)
    k = np.arange(A.shape[1])
    rest = A.copy()
    rest[main, k] = 0.0
    shift = (cells.origin[main] * A[main, k] - center) + cells.origin @ rest
    u = (shift[None, :] + cells.mean @ A) / scale
    M2 = cells.full_m2()
    sd = np.sqrt(np.maximum(np.diagonal(M2, axis1=1, axis2=2), 0.0))
    unit = np.where(sd > 0, sd, 1.0)
    corr = M2 / unit[:, :, None] / unit[:, None, :]
    lam, V = np.linalg.eigh(corr)
    R = sd[:, :, None] * V * np.sqrt(np.maximum(lam, 0.0))[:, None, :]  # (m, q, q): R R' = M2
    rows = np.empty((m, 1 + q, A.shape[1]))
    rows[:, 0] = np.sqrt(cells.count)[:, None] * u
    rows[:, 1:] = np.einsum("mjr,jk->mrk", R, A) / scale
    return rows.reshape(m * (1 + q), A.shape[1])


def _from_cells(design: StreamedDesign, cells: CellMoments, plan: Plan, layout: Layout,
                std: Standardization) -> BatchStatistics:
    """The statistics of the fit from the cells' moments (see the module docstring)."""
    A, center, scale = _column_maps(design, plan, std)
    rows = cell_rows(cells, A, center, scale)
    per_cell = 1 + cells.q
    p = len(design.layout.x)
    X, y = rows[:, :p], rows[:, p]
    start = p + 1
    factors = []
    for fac in plan.factors:
        cols = [np.ascontiguousarray(rows[:, start + a]) for a in range(fac.K)]
        start += fac.K
        # each pseudo row belongs to its cell's group; the columns are standardised already
        g = np.repeat(np.asarray(design.cell_codes[design.terms[fac.blocks[0]].level], dtype=np.int64), per_cell)
        factors.append(replace(fac, group_index=g, columns=cols, is_ones=[False] * fac.K))
    pseudo = Plan(factors, plan.chain, plan.root, plan.parent_maps)
    sums = compute_rows(X, y, pseudo, layout, None, None, weights=None, x_ones=[False] * p)
    return BatchStatistics(CompensatedSum.of([*sums, np.zeros(1)]), design.n, 0.0)
