"""``compare()`` on a streaming source: folds of groups, each fold's fit streamed, scores as sums.

A ``pyarrow.Table``, Parquet files (a file, folder or glob) or a Dask DataFrame is compared
without its rows ever being held together:

1. **Folds from the groups.** The design pass of the full-data fit finds the groups of every
   level (:func:`~hierfit.design.streamed.build_streamed_design`); the tree it builds is the
   one the same rows give in memory (sorted groups, the same parents), so
   :func:`~hierfit.evaluate.splits.group_folds` deals the held-out groups into exactly the folds
   the in-memory :func:`~hierfit.evaluate.compare` makes from the same seed.
2. **Each fold's training rows are the source restricted to the other groups**, read lazily:
   every Parquet file or Arrow table is read batch by batch and the held-out groups' rows are
   dropped from each batch (:class:`GroupsPiece`); a Dask DataFrame is filtered partition by
   partition (``map_partitions``, where the partitions live). The fold's design and fit are
   the public streamed stages (``build_streamed_design`` then ``fit_design``), so each fold's
   passes run where the source's do: on the active ``dask.distributed`` client, or here.
3. **Held-out rows are scored as sums.** The held-out groups' rows are predicted a batch (or a
   partition) at a time and each batch is reduced to sums -- squared and absolute errors, log
   predictive densities, rows covered, interval widths (:class:`ScoreSums`) -- merged over the
   pieces like every other fold over a source. No per-row vector is collected, so the
   comparison has ``folds`` and pooled ``summary()`` scores but no ``predictions`` table.

Scores that need every held-out row at once (the AUC and calibration error of probability
outcomes), K-fold by row (a row's fold needs its position among all rows) and engines without
streaming (``Capabilities.streaming_families``) are refused before any pass, naming what to do.
Groups are matched by their labels (``"Market_1:Sub_2"`` for a path factor), computed from
each batch by the same :func:`~hierfit.design.hierarchy.group_labels` that builds the tree.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hierfit.design.build import _used_columns
from hierfit.design.hierarchy import group_labels
from hierfit.design.sources import Batch, CompensatedSum, Source, dask_client, open_source
from hierfit.design.sources.runner import FoldObserver, current_observer, observe_folds
from hierfit.design.streamed import StreamedDesign, _probe_frame, build_streamed_design
from hierfit.engines import ENGINES
from hierfit.threads import limit_threads, thread_budget
from hierfit.evaluate.compare import _START_SHARE, _Budget, _expected_cost, _first_lines, _Progress, _quiet_fit, _refit_seconds
from hierfit.evaluate.comparison import Comparison
from hierfit.evaluate.metrics import FAMILY_SCORES, is_count, is_probability, recovery
from hierfit.evaluate.predictive import predictive
from hierfit.evaluate.splits import CVScheme, check_cv_level, group_folds
from hierfit.exceptions import HierfitError, HierfitWarning, SpecError
from hierfit.formula import GroupingFactor
from hierfit.model import Family, ModelSpec

__all__ = ["GroupsPiece", "ScoreSums", "compare_source", "restrict_to_groups", "streaming_engines"]

#: the sums a batch of held-out rows is reduced to, in this order
_SUMS = ("sq_error", "abs_error", "logpd", "covered", "width", "deviance")


@dataclass(frozen=True, eq=False)
class ScoreSums:
    """Held-out rows reduced to sums from which every additive score follows.

    ``sums`` holds, over the rows, the squared and absolute errors, log predictive densities,
    rows inside their interval, interval widths and (counts) Poisson deviances, as compensated
    sums, so merging pieces in any order gives the same value. ``finite_logpd`` and
    ``finite_bounds`` say whether every row had a density and an interval (the in-memory scores
    are NaN otherwise); ``methods`` are the predictive methods used (:func:`predictive`).

    Examples
    --------
    >>> from hierfit.model import get_family
    >>> y = np.array([0.0, 1.0, 2.0])
    >>> a = ScoreSums.of(y[:1], y[:1] + 1, y[:1] - 2, y[:1] + 0.5, np.full(1, -1.0), get_family("gaussian"), "t")
    >>> b = ScoreSums.of(y[1:], y[1:] + 1, y[1:] - 2, y[1:] + 0.5, np.full(2, -1.0), get_family("gaussian"), "t")
    >>> s = ScoreSums.merge([a, b]).scores(get_family("gaussian"))
    >>> s["rmse"], s["mae"], s["coverage"], s["width"], s["mlpd"]
    (1.0, 1.0, 1.0, 2.5, -1.0)
    """

    n: int
    sums: CompensatedSum
    finite_logpd: bool
    finite_bounds: bool
    methods: frozenset[str]

    @classmethod
    def of(cls, y: np.ndarray, prediction: np.ndarray, lower: np.ndarray, upper: np.ndarray, logpd: np.ndarray,
           family: Family, method: str) -> ScoreSums:
        """The sums of one batch (the same quantities :func:`~hierfit.evaluate.metrics.score` averages)."""
        y = np.asarray(y, dtype=float)
        err = y - np.asarray(prediction, dtype=float)
        lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        logpd = np.asarray(logpd, dtype=float)
        bounds = bool(np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)))
        finite = bool(np.all(np.isfinite(logpd)))
        deviance = 0.0
        if is_count(family):
            from scipy import special

            mu = np.maximum(np.asarray(prediction, dtype=float), 1e-300)
            deviance = float(np.sum(2 * (special.xlogy(y, y / mu) - (y - mu))))
        values = [float(err @ err), float(np.abs(err).sum()), float(logpd.sum()) if finite else 0.0,
                  float(np.sum((y >= lower) & (y <= upper))) if bounds else 0.0,
                  float(np.sum(upper - lower)) if bounds else 0.0, deviance]
        return cls(len(y), CompensatedSum.of([np.array(values)]), finite, bounds, frozenset([method]))

    @classmethod
    def merge(cls, parts: Sequence[ScoreSums]) -> ScoreSums:
        """The sums of several batches (associative, and insensitive to their order)."""
        return cls(sum(p.n for p in parts), CompensatedSum.merge([p.sums for p in parts]),
                   all(p.finite_logpd for p in parts), all(p.finite_bounds for p in parts),
                   frozenset().union(*(p.methods for p in parts)))

    def scores(self, family: Family) -> dict[str, float]:
        """Every score of :data:`~hierfit.evaluate.metrics.SCORES` (NaN where it does not apply)."""
        total = dict(zip(_SUMS, (float(v) for v in self.sums.values()[0])))
        n = max(self.n, 1)
        out = {
            "rmse": float(np.sqrt(total["sq_error"] / n)),
            "mae": total["abs_error"] / n,
            "mlpd": total["logpd"] / n if self.finite_logpd else np.nan,
            "coverage": total["covered"] / n if self.finite_bounds else np.nan,
            "width": total["width"] / n if self.finite_bounds else np.nan,
            **dict.fromkeys(FAMILY_SCORES, np.nan),
        }
        if is_count(family) and self.n:
            out["deviance"] = total["deviance"] / n
        return out


# -- a source restricted to some groups ---------------------------------------------------------
def _rows_in_groups(frame: pd.DataFrame, factor: GroupingFactor, groups: Collection[str], inside: bool) -> pd.DataFrame:
    """The rows of ``frame`` in ``groups`` of ``factor`` (``inside``), or every other row."""
    held = pd.Index(group_labels(frame, factor)).isin(list(groups))
    return frame[held if inside else ~held]


@dataclass(frozen=True, eq=False)
class GroupsPiece:
    """A piece of a source (a Parquet file, an Arrow table) read with only the rows of some
    groups (``inside=True``) or without them: each batch is filtered as it is read, so the
    rows left out are never kept and the piece's row positions stay those of the file.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from hierfit.design.sources.arrow import ArrowPiece
    >>> table = pa.table({"y": [1.0, 2.0, 3.0], "g": ["a", "b", "a"]})
    >>> piece = GroupsPiece(ArrowPiece(table), GroupingFactor(("g",)), frozenset({"a"}), inside=False)
    >>> [b.frame["y"].tolist() for b in piece.batches(["y"], 10, 0)]
    [[2.0]]
    """

    piece: Any
    factor: GroupingFactor
    groups: frozenset[str]
    inside: bool
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", str(self.piece.label))

    # a Parquet source's files are checked by their footers before a pass: the file's are ours
    @property
    def path(self) -> str:
        return str(self.piece.path)

    @property
    def partition(self) -> tuple[tuple[str, Any], ...]:
        return tuple(getattr(self.piece, "partition", ()))

    def batches(self, columns: Sequence[str], batch_size: int, index: int, labels: Collection[str] = ()) -> Iterator[Batch]:
        wanted = list(columns)
        read = list(dict.fromkeys([*wanted, *self.factor.columns]))  # the groups' columns, even if the pass needs none
        for batch in self.piece.batches(read, batch_size, index, labels):
            rows = _rows_in_groups(batch.frame, self.factor, self.groups, self.inside)
            if len(rows):
                yield Batch(rows[wanted], batch.where, batch.piece)


def restrict_to_groups(source: Source, data: Any, factor: GroupingFactor, groups: Collection[str], *,
                       inside: bool, what: str) -> Source:
    """``source`` with only the rows of ``groups`` of ``factor`` (``inside``), or without them.

    Parquet files and Arrow tables are filtered batch by batch as they are read
    (:class:`GroupsPiece`); a Dask DataFrame ``data`` partition by partition on the cluster
    (one ``map_partitions``), so its rows stay on the workers. ``what`` names the restriction in
    the source's description (``"fold 2's training rows"``).
    """
    held = frozenset(str(g) for g in groups)
    description = f"{source.description}, {what}"
    if source.kind == "dask":
        part = data.map_partitions(_rows_in_groups, factor, held, inside, meta=data._meta)
        return dataclasses.replace(source, description=description, pieces=tuple(part.to_delayed()))
    pieces = tuple(GroupsPiece(p, factor, held, inside) for p in source.pieces)
    return dataclasses.replace(source, description=description, pieces=pieces)


# -- scoring held-out rows as a fold over the source ----------------------------------------------
@dataclass(frozen=True, eq=False)
class HeldOutScorer:
    """Summarise one batch of held-out rows: ``result``'s prediction, interval and predictive
    density of each row, reduced to :class:`ScoreSums` (it travels to Dask workers: it pickles)."""

    result: Any
    level: float

    def __call__(self, batch: Batch) -> ScoreSums:
        spec = self.result.spec
        frame = batch.frame
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # held-out groups fall back to their parent by design
            pred = self.result.predict(frame, interval="prediction", level=self.level)
            dist = predictive(self.result, frame)
        y = frame[spec.response].to_numpy(dtype=float)
        return ScoreSums.of(y, pred["prediction"].to_numpy(), pred["lower"].to_numpy(), pred["upper"].to_numpy(),
                            dist.logpdf(y), spec.family, dist.method)


def score_columns(spec: ModelSpec, source: Source) -> list[str]:
    """The columns a held-out batch needs: the model's (the response included) and the groups'."""
    grouping = [c for f in spec.formula.factors for c in f.columns]
    return list(dict.fromkeys([*_used_columns(spec, _probe_frame(source.schema), include_response=True), *grouping]))


def score_source(result: Any, source: Source, level: float, *, what: str = "scoring pass") -> ScoreSums:
    """The :class:`ScoreSums` of every row of ``source`` under ``result`` (one pass)."""
    return source.fold(HeldOutScorer(result, level), ScoreSums.merge, score_columns(result.spec, source), what=what)


# -- what can be compared on a stream -------------------------------------------------------------
def streaming_engines(family: Family) -> list[str]:
    """Registered engines that fit ``family`` on a streaming source, sorted.

    Examples
    --------
    >>> from hierfit.model import get_family
    >>> "mixed" in streaming_engines(get_family("gaussian"))
    True
    """
    return sorted(name for name, entry in ENGINES.items() if family.name in entry.capabilities.streaming_families)


def check_streamable(spec: ModelSpec, names: Sequence[str], scheme: CVScheme) -> None:
    """Refuse, before any pass, what a comparison on a streaming source cannot do, naming what would."""
    family = spec.family
    able = streaming_engines(family)
    refused = [n for n in names if n not in able]
    if refused:
        raise SpecError(
            f"compare() on a streaming source refits every engine on each fold's rows streamed from the source, and "
            f"{', '.join(map(repr, refused))} cannot stream a {family.name} model (engines that can: "
            f"{', '.join(able) or 'none'}). Drop {'it' if len(refused) == 1 else 'them'} (engines={able!r}), or compare "
            "on a pandas DataFrame of a sample of the rows (e.g. pandas.read_parquet of some files)."
        )
    if scheme.level is None:
        raise SpecError(
            f"cv={scheme.describe()!r} deals rows into folds by their position among all rows, which a streaming source "
            "never holds at once; hold out whole groups instead, e.g. cv='submarket:5' (groups are found by a pass "
            "over the source)."
        )
    check_cv_level(spec, scheme.level)
    if is_probability(family):
        raise SpecError(
            f"The held-out scores of a {family.name} outcome include the AUC and the calibration error, which rank or "
            "bin every held-out row at once; a streaming comparison only adds up sums over batches. Compare on a pandas "
            "DataFrame of the rows."
        )


class _Steps:
    """A :class:`FoldObserver` that names the comparison's step in front of each pass
    (``"mixed fold 2/3: statistics pass"``), for the command line's progress lines."""

    def __init__(self, inner: FoldObserver) -> None:
        self.inner = inner
        self.step = ""

    def start(self, what: str, pieces: int) -> None:
        self.inner.start(f"{self.step}: {what}" if self.step else what, pieces)

    def advance(self, *, batches: int = 0, pieces: int = 0) -> None:
        self.inner.advance(batches=batches, pieces=pieces)

    def finish(self) -> None:
        self.inner.finish()


# -- the comparison --------------------------------------------------------------------------------
@dataclass
class _FoldSources:
    """Each fold's training and held-out sources, and its training design (built once, for every engine)."""

    source: Source
    data: Any
    factor: GroupingFactor
    held: list[tuple[str, ...]]
    checks: Mapping[str, str] | None
    designs: dict[int, StreamedDesign] = dataclasses.field(default_factory=dict)

    def training(self, spec: ModelSpec, k: int) -> StreamedDesign:
        if k not in self.designs:
            train = restrict_to_groups(self.source, self.data, self.factor, self.held[k], inside=False,
                                       what=f"without the {len(self.held[k])} {self.factor.level} groups of fold {k + 1}")
            try:
                self.designs[k] = build_streamed_design(spec, train, checks=self.checks)
            except HierfitError as exc:
                raise HierfitError(f"the training rows of fold {k + 1} do not make a design: {exc}") from None
        return self.designs[k]

    def held_out(self, k: int) -> Source:
        return restrict_to_groups(self.source, self.data, self.factor, self.held[k], inside=True,
                                  what=f"the {len(self.held[k])} {self.factor.level} groups of fold {k + 1}")


def compare_source(spec: ModelSpec, data: Any, names: list[str], scheme: CVScheme, *, options: Mapping[str, Mapping[str, Any]],
                   checks: Mapping[str, str] | None, truth: Any, true_effects: pd.DataFrame | None, level: float,
                   time_budget: float | None, workers: int, batch_size: int | None, progress: bool) -> Comparison:
    """:func:`hierfit.evaluate.compare` of a streaming source ``data`` (see the module docstring)."""
    check_streamable(spec, names, scheme)
    assert scheme.level is not None
    steps = _Steps(current_observer())
    with dask_client(workers=workers if workers > 1 else None), open_source(data, batch_size=batch_size) as source, \
            observe_folds(steps), _Progress(progress, total=len(names) * (scheme.folds + 1)) as bar:
        steps.step = "all rows"
        design = build_streamed_design(spec, source, checks=checks)
        tree = design.hierarchy
        group_fold = group_folds(tree, scheme.level, scheme.folds, np.random.default_rng(scheme.seed))
        lv = tree.level(scheme.level)
        groups = np.asarray(lv.groups, dtype=object)
        held = [tuple(groups[group_fold == k]) for k in range(scheme.folds)]
        comp = Comparison(spec=spec, cv=scheme, level=level, engines=list(names), data=source.schema.copy(),
                          truth=true_effects, source=source.info, n_rows=design.n)
        folds = _FoldSources(source, data, lv.factor, held, checks)
        budget = _Budget(time_budget)
        for name in sorted(names, key=_expected_cost):
            _engine(comp, design, folds, name, checks, options.get(name, {}), truth, budget, bar, steps)
    for name, message in comp.failures.items():
        warnings.warn(f"Engine {name!r} failed in compare(): {message}", HierfitWarning, stacklevel=3)
    return comp


def _engine(comp: Comparison, design: StreamedDesign, folds: _FoldSources, name: str, checks: Any, opts: Mapping[str, Any],
            truth: Any, budget: Any, bar: Any, steps: _Steps) -> None:
    """One engine: its fit on every row, recovery of the truth, then every fold, as the budget allows."""
    k_all = comp.cv.folds
    left = budget.left()
    if left is not None and budget.seconds is not None and comp.fits and left < _START_SHARE[_expected_cost(name)] * budget.seconds:
        comp.notes.append(f"{name}: not fitted: {max(left, 0):.0f} s of the {budget.seconds:.0f} s budget were left at its turn.")
        bar.advance(k_all + 1)
        return
    bar.describe(f"{name}: fit on all {design.n} rows")
    steps.step = f"{name} on all rows"
    try:
        comp.fits[name] = _quiet_fit(design, name, checks, opts)
    except Exception as exc:  # noqa: BLE001 -- one failing engine must not sink the comparison
        comp.failures[name] = _first_lines(exc)
        bar.advance(k_all + 1)
        return
    bar.advance(1)
    if truth is not None:
        comp.recovery_parts.append(recovery(comp.fits[name], truth, engine=name, level=comp.level))
    estimate = _refit_seconds(comp.fits[name]) * k_all
    left = budget.left()
    if left is not None and estimate > left:
        comp.notes.append(f"{name}: not cross-validated: {k_all} folds would take about {estimate:.0f} s "
                          f"and {max(left, 0):.0f} s of the {budget.seconds:.0f} s budget were left.")
        bar.advance(k_all)
        return
    for k in range(k_all):
        bar.describe(f"{name}: fold {k + 1} of {k_all}")
        steps.step = f"{name} fold {k + 1}/{k_all}"
        try:
            comp.fold_rows.append(_fold(comp, folds, name, k, checks, opts))
        except Exception as exc:  # noqa: BLE001 -- the first failing fold ends the engine's cross-validation
            comp.failures[name] = f"fold {k + 1}: {_first_lines(exc)}"
            bar.advance(k_all - k)
            return
        bar.advance(1)


def _fold(comp: Comparison, folds: _FoldSources, name: str, k: int, checks: Any, opts: Mapping[str, Any]) -> dict[str, Any]:
    """Fit ``name`` on the rows outside fold ``k`` and score the rows of fold ``k``: its row of ``folds``."""
    train = folds.training(comp.spec, k)
    with limit_threads(thread_budget()) as use:
        result = _quiet_fit(train, name, checks, opts)
    t0 = time.perf_counter()
    sums = score_source(result, folds.held_out(k), comp.level, what="held-out scoring pass")
    predict_seconds = time.perf_counter() - t0
    comp.fold_diagnostics.extend({"engine": name, "fold": k, "check": d.check, "message": d.message} for d in result.diagnostics)
    return {
        "engine": name,
        "fold": k,
        "n_train": int(train.n),
        "n_test": int(sums.n),
        **sums.scores(comp.spec.family),
        "fit_seconds": float(result.timings.get("fit_seconds", np.nan)),
        "predict_seconds": predict_seconds,
        "mlpd_method": ",".join(sorted(sums.methods)),
        "n_diagnostics": len(result.diagnostics),
        "threads": use.used,
    }
