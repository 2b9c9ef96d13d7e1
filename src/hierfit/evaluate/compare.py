"""``hierfit.compare()``: fit several engines to the same spec, cross-validate, score, tabulate.

For every engine: one fit on all the data (kept for effects tables, plots and the report),
then one fit per fold, scored on the held-out rows. Every engine sees the same folds. When
the data came from :func:`hierfit.simulate`, ``truth=sim.truth`` adds the error of every
level's effects against the truth.

Folds run one after another in this process, or, with ``workers=W``, ``W`` at a time in worker
processes (forkserver on Unix, which starts them from a clean process: no threads or OpenMP
pools inherited). Each fit in a worker gets ``cores // W`` native threads and each full-data
fit every core (:mod:`hierfit.threads`), so thread pools never outnumber the cores.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np
import pandas as pd

from hierfit.design import Design, build_design
from hierfit.design.sources import is_source
from hierfit.engines import ENGINES, get_engine
from hierfit.engines.registry import Preparation
from hierfit.threads import fold_budget, limit_threads, thread_budget
from hierfit.evaluate.comparison import Comparison
from hierfit.evaluate.metrics import recovery, score, truth_effects
from hierfit.evaluate.predictive import predictive
from hierfit.evaluate.splits import CVScheme, parse_cv
from hierfit.exceptions import EngineError, HierfitError, HierfitWarning, SpecError
from hierfit.fitting import fit_design
from hierfit.model import DEFAULT_NATIONAL, ModelSpec, Prior, make_spec


def compare(
    spec_or_formula: str | ModelSpec,
    data: pd.DataFrame | Any,
    engines: Sequence[str] | None = None,
    cv: CVScheme | str | int | None = "kfold",
    *,
    family: str = "gaussian",
    link: str | None = None,
    national: str = DEFAULT_NATIONAL,
    hierarchy: Sequence[str] | None = None,
    priors: Mapping[str, Prior] | None = None,
    weights: str | None = None,
    offset: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    truth: Any = None,
    level: float = 0.9,
    checks: Mapping[str, str] | None = None,
    time_budget: float | None = None,
    workers: int = 1,
    progress: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
) -> Comparison:
    """Fit engines on the same spec and data, cross-validate them, and tabulate the scores.

    Parameters
    ----------
    spec_or_formula
        A formula (lme4/brms syntax) or a :class:`ModelSpec`.
    data
        The rows to fit and split: a pandas DataFrame, or a streaming source as in
        :func:`hierfit.fit` (a ``pyarrow.Table``, a Parquet file, folder or glob, a Dask
        DataFrame), whose rows are never held together: folds hold out groups found by a pass
        over it, each fold is fitted by streaming the other groups' rows (on the active
        ``dask.distributed`` client for a Dask DataFrame), and held-out rows are scored batch by
        batch as sums (see :mod:`hierfit.evaluate.streamed`). The scores equal those of the same
        rows in memory; the comparison then has no per-row ``predictions``.
    engines
        Engine names; default every registered engine whose dependencies are installed (for a
        streaming source: every one that streams the family).
    cv
        ``"kfold"`` / ``"kfold:K"`` (rows), a level name such as ``"submarket"`` or
        ``"market:5"`` (hold out whole groups of that level, keeping their parents), an int
        (K-fold) or a :class:`CVScheme`.
    family, link, national, hierarchy, priors, weights, offset
        As in :func:`hierfit.fit` (only with a formula).
    options
        Engine options per engine, e.g. ``{"pymc": {"draws": 500}}``.
    truth
        ``sim.truth`` (or a true effects table) to score recovery of every level's effects.
    level
        Prediction-interval probability for coverage and width.
    checks
        Check severities passed to every fit.
    time_budget
        Seconds for the whole comparison. Engines run quick ones first (samplers last), each
        fitted on all rows and then cross-validated; an engine whose folds would not fit in
        what is left (estimated as folds x full-fit time) is fitted but not cross-validated,
        and once the budget is spent the remaining engines are not fitted (at least one
        always is; a posterior sampler, which may compile first, starts only with a quarter
        of the budget left). Both are said in ``notes``. A single fit is never interrupted.
    workers
        Folds fitted at once, each in a worker process (default 1: one after another here).
        Each fold's fit then gets ``cores // workers`` threads for its native pools
        (LightGBM, BLAS) and each full-data fit every core; ``folds["threads"]`` records what
        each fold's fit used. Posterior samplers' folds stay here, one at a time (their chains
        are processes already). Worker processes import the calling script, so a script that
        passes ``workers`` needs the usual ``if __name__ == "__main__":`` guard. For a
        streaming source, ``workers > 1`` instead starts a Dask ``LocalCluster`` of that many
        worker processes for the comparison (closed after), on which every pass runs.
    progress
        Show a progress bar over engines x folds (rich, on stderr).
    seed
        Seed of the fold assignment when ``cv`` is not a :class:`CVScheme`.
    batch_size
        Streaming sources: rows per batch at most (default 524,288).

    Returns
    -------
    Comparison
        ``summary()`` (one row per engine), ``tidy()`` (long), ``folds``, ``predictions``,
        ``recovery``, the full-data ``fits``, ``failures`` and ``notes``.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.evaluate import compare
    >>> sim = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=20, seed=1)
    >>> comp = compare(sim.formula, sim.data, engines=["ols"], cv="submarket:3", truth=sim.truth, progress=False)
    >>> comp.summary()[["engine", "n_folds"]].values.tolist()
    [['ols', 3]]
    """
    if isinstance(spec_or_formula, ModelSpec):
        spec = spec_or_formula
    else:
        spec = make_spec(spec_or_formula, family=family, link=link, national=national, hierarchy=hierarchy, priors=priors,
                         weights=weights, offset=offset)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SpecError(f"'workers' must be a positive integer (folds fitted at once); got {workers!r}.")
    streamed = is_source(data)
    if streamed and engines is None:
        from hierfit.evaluate.streamed import streaming_engines

        engines = [n for n in streaming_engines(spec.family) if n in available_engines()]
        if not engines:
            raise EngineError(f"No installed engine streams a {spec.family.name} model; compare a pandas DataFrame of the rows.")
    elif not streamed and batch_size is not None:
        raise SpecError(
            "'batch_size' applies to streaming sources (a pyarrow.Table, Parquet files, a Dask DataFrame); a pandas "
            "DataFrame is compared in memory. Drop it, or pass e.g. pyarrow.Table.from_pandas(data)."
        )
    names = _resolve_engines(engines)
    options = dict(options or {})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise EngineError(f"'options' names engines that are not compared: {', '.join(unknown)}. Compared: {', '.join(names)}.")
    scheme = parse_cv(cv, seed=seed)
    true_effects = truth_effects(truth) if truth is not None else None
    if streamed:
        from hierfit.evaluate.streamed import compare_source

        return compare_source(spec, data, names, scheme, options=options, checks=checks, truth=truth, true_effects=true_effects,
                              level=level, time_budget=time_budget, workers=workers, batch_size=batch_size, progress=progress)
    design = build_design(spec, data)
    fold_of_row = scheme.assign(spec, data)
    comp = Comparison(spec=spec, cv=scheme, level=level, engines=list(names), data=data.reset_index(drop=True), truth=true_effects)
    comp.fold_of_row = fold_of_row
    budget = _Budget(time_budget)
    with _Progress(progress, total=len(names) * (scheme.folds + 1)) as bar, _FoldWorkers(comp, data, workers) as pool, \
            _Preparations(spec, names, options):
        # Quick engines first, each fitted and then cross-validated before the next starts,
        # so a time budget is spent on finishing engines rather than on starting them.
        for name in sorted(names, key=_expected_cost):
            if _expected_cost(name) == 2:
                pool.close()  # no pool thread may be alive when a sampler forks its chains
            _fit_and_cross_validate(comp, design, data, name, checks, options.get(name, {}), truth, budget, bar, pool)
    for name, message in comp.failures.items():
        warnings.warn(f"Engine {name!r} failed in compare(): {message}", HierfitWarning, stacklevel=2)
    return comp


class _Preparations:
    """Each engine's background preparation (:meth:`EngineEntry.prepare`: Stan compiles its
    program while the quicker engines fit), started on entry and stopped on exit if unused."""

    def __init__(self, spec: ModelSpec, names: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> None:
        self.started: list[Preparation] = []
        for name in names:
            try:
                handle = get_engine(name).prepare(spec, options.get(name, {}))
            except Exception:  # noqa: BLE001 -- preparing is only a head start: the fit reports any real problem
                handle = None
            if handle is not None:
                self.started.append(handle)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.started:
            handle.cancel()


class _Budget:
    """Seconds left of an optional time budget, from its start."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def left(self) -> float | None:
        return None if self.seconds is None else self.seconds - (time.perf_counter() - self.start)


def _fit_and_cross_validate(comp: Comparison, design: Design, data: pd.DataFrame, name: str, checks: Any,
                            opts: Mapping[str, Any], truth: Any, budget: _Budget, bar: _Progress, pool: _FoldWorkers) -> None:
    """One engine: fit on all rows, score recovery, then every fold (each step as the budget allows)."""
    folds = comp.cv.folds
    left = budget.left()
    if left is not None and budget.seconds is not None and comp.fits and left < _START_SHARE[_expected_cost(name)] * budget.seconds:
        comp.notes.append(
            f"{name}: not fitted: {max(left, 0):.0f} s of the {budget.seconds:.0f} s budget were left at its turn"
            + (" (samplers, which may compile first, start only with a quarter of it left)." if _expected_cost(name) == 2 else ".")
        )
        bar.advance(folds + 1)
        return
    bar.describe(f"{name}: fit on all {len(data)} rows")
    try:
        comp.fits[name] = _quiet_fit(design, name, checks, opts)
    except Exception as exc:  # noqa: BLE001 -- one failing engine must not sink the comparison
        comp.failures[name] = _first_lines(exc)
        bar.advance(folds + 1)
        return
    bar.advance(1)
    if truth is not None:
        comp.recovery_parts.append(recovery(comp.fits[name], truth, engine=name, level=comp.level))
    workers = min(pool.workers, folds)
    estimate = _refit_seconds(comp.fits[name]) * -(-folds // workers)
    left = budget.left()
    if left is not None and estimate > left:
        comp.notes.append(
            f"{name}: not cross-validated: {folds} folds would take about {estimate:.0f} s "
            f"and {max(left, 0):.0f} s of the {budget.seconds:.0f} s budget were left."
        )
        bar.advance(folds)
        return
    bar.describe(f"{name}: {folds} folds" + (f", {workers} at a time" if workers > 1 else ""))
    pending = [pool.run(name, k, checks, opts) for k in range(folds)]
    for k, outcome in enumerate(pending):
        try:
            _keep_fold(comp, outcome if isinstance(outcome, FoldOutput) else outcome.result())
        except Exception as exc:  # noqa: BLE001 -- the first failing fold ends the engine's cross-validation
            comp.failures[name] = f"fold {k + 1}: {_first_lines(exc)}"
            for later in pending[k + 1:]:
                if isinstance(later, Future):
                    later.cancel()
            bar.advance(folds - k)
            return
        bar.advance(1)


def _refit_seconds(result: Any) -> float:
    """What a fold's refit should take: the full fit's seconds less its one-time work (Stan's
    compile, or the wait for a background one), which the folds do not repeat."""
    info = getattr(result.engine_fit, "info", None) or {}
    return max(float(result.timings.get("fit_seconds", 0.0)) - float(info.get("compile_seconds", 0.0)), 0.0)


def available_engines() -> list[str]:
    """Registered engines whose dependencies are installed and whose module imports, sorted.

    Examples
    --------
    >>> "ols" in available_engines()
    True
    """
    names = []
    for name in sorted(ENGINES):
        entry = ENGINES[name]
        if not entry.available:
            continue
        try:
            entry.load()
        except Exception:  # noqa: BLE001, S112 -- an engine that cannot be imported is simply not available
            continue
        names.append(name)
    return names


def _resolve_engines(engines: Sequence[str] | None) -> list[str]:
    if engines is None:
        names = available_engines()
    else:
        if isinstance(engines, str):
            engines = [e.strip() for e in engines.split(",") if e.strip()]
        names = list(dict.fromkeys(engines))
        if not names:
            raise EngineError(f"'engines' is empty; name at least one of: {', '.join(sorted(ENGINES))}.")
        for n in names:
            entry = get_engine(n)
            entry.load()  # raises with the pip extra to install when a dependency is missing
    return names


#: share of the time budget that must be left to start an engine, by cost class
_START_SHARE = {0: 0.0, 1: 0.0, 2: 0.25}


def _expected_cost(name: str) -> int:
    """Fit engines that are usually quick first, so a time budget is spent on them first:
    no/frequentist uncertainty, then ensembles, then posterior samplers (which may compile)."""
    order = {"none": 0, "frequentist": 0, "ensemble": 1, "posterior": 2}
    return order.get(ENGINES[name].capabilities.uncertainty, 1)


def _first_lines(exc: Exception, lines: int = 2, chars: int = 400) -> str:
    """The head of an error (native tracebacks can run to pages)."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:lines])
    text = text if len(text) <= chars else text[: chars - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def _quiet_fit(design, name: str, checks, opts: Mapping[str, Any]):
    """Fit without emitting warnings: diagnostics travel on the result instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_design(design, engine=name, checks=checks, **dict(opts))


@dataclass(frozen=True)
class FoldOutput:
    """One engine's fit on one fold's training rows, scored on its held-out rows."""

    row: dict[str, Any]
    predictions: pd.DataFrame
    diagnostics: list[dict[str, Any]]


def run_fold(spec: ModelSpec, data: pd.DataFrame, fold_of_row: np.ndarray, name: str, k: int, checks: Any,
             opts: Mapping[str, Any], level: float) -> FoldOutput:
    """Fit ``name`` on every row outside fold ``k`` and score the rows of fold ``k``.

    A pure function of its arguments (it runs in worker processes too); ``row["threads"]`` is
    the thread count the fit's engine used (:attr:`hierfit.threads.ThreadUse.used`).
    """
    test = fold_of_row == k
    train_data, test_data = data.iloc[~test], data.iloc[test]
    try:
        train_design = build_design(spec, train_data)
    except HierfitError as exc:
        raise HierfitError(f"the training rows of fold {k + 1} do not make a design: {exc}") from None
    with limit_threads(thread_budget()) as use:  # records what the engine takes
        result = _quiet_fit(train_design, name, checks, opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # held-out groups fall back to their parent by design
        t0 = time.perf_counter()
        pred = result.predict(test_data, interval="prediction", level=level)
        dist = predictive(result, test_data)
        predict_seconds = time.perf_counter() - t0
    y = test_data[spec.response].to_numpy(dtype=float)
    logpd = dist.logpdf(y)
    scores = score(y, pred["prediction"].to_numpy(), pred["lower"].to_numpy(), pred["upper"].to_numpy(), logpd,
                   spec.family, dist.trials)
    row = {
        "engine": name,
        "fold": k,
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
        **scores,
        "fit_seconds": float(result.timings.get("fit_seconds", np.nan)),
        "predict_seconds": predict_seconds,
        "mlpd_method": dist.method,
        "n_diagnostics": len(result.diagnostics),
        "threads": use.used,
    }
    predictions = pd.DataFrame(
        {
            "engine": name,
            "row": np.flatnonzero(test),
            "fold": k,
            "y": y,
            "prediction": pred["prediction"].to_numpy(),
            "lower": pred["lower"].to_numpy(),
            "upper": pred["upper"].to_numpy(),
            "logpd": logpd,
            "level_used": pred["level_used"].to_numpy(),
        }
    )
    diagnostics = [{"engine": name, "fold": k, "check": d.check, "message": d.message} for d in result.diagnostics]
    return FoldOutput(row, predictions, diagnostics)


def _keep_fold(comp: Comparison, out: FoldOutput) -> None:
    comp.fold_rows.append(out.row)
    comp.prediction_parts.append(out.predictions)
    comp.fold_diagnostics.extend(out.diagnostics)


class _FoldWorkers:
    """Where folds are fitted: here, one at a time (``workers == 1``, or after :meth:`close`),
    or in a pool of ``workers`` processes started at the first fold and kept for the
    comparison, each fit in them with ``cores // workers`` threads."""

    def __init__(self, comp: Comparison, data: pd.DataFrame, workers: int) -> None:
        assert comp.fold_of_row is not None
        self.comp = comp
        self.args = (comp.spec, data, comp.fold_of_row)
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def run(self, name: str, k: int, checks: Any, opts: Mapping[str, Any]) -> FoldOutput | Future:
        """Fold ``k`` of engine ``name``: its :class:`FoldOutput`, or a ``Future`` of it."""
        if self.workers == 1:
            return run_fold(*self.args, name, k, checks, opts, self.comp.level)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=_worker_context(), initializer=_start_worker,
                                             initargs=(*self.args, fold_budget(self.workers)))
        return self._pool.submit(_worker_fold, name, k, checks, dict(opts), self.comp.level)

    def close(self) -> None:
        """Stop the pool (waiting for running folds); later folds run here."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self.workers = 1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker_context() -> Any:
    """A forkserver context (Unix), else spawn: workers start from a fresh process, never a
    fork of this one (its threads' locks and LightGBM's OpenMP pool would be inherited)."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["hierfit.evaluate.compare"])  # imported once, not per worker
        return ctx
    return multiprocessing.get_context("spawn")


_WORKER: dict[str, Any] = {}  # a worker process's data, spec and thread budget (set once)


def _start_worker(spec: ModelSpec, data: pd.DataFrame, fold_of_row: np.ndarray, threads: int) -> None:
    _WORKER.update(spec=spec, data=data, fold_of_row=fold_of_row, threads=threads)


def _worker_fold(name: str, k: int, checks: Any, opts: Mapping[str, Any], level: float) -> FoldOutput:
    with limit_threads(_WORKER["threads"]):
        return run_fold(_WORKER["spec"], _WORKER["data"], _WORKER["fold_of_row"], name, k, checks, opts, level)


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total

    def __enter__(self) -> Self:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]compare[/bold] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("starting", total=self.total)
        return self

    def describe(self, text: str) -> None:
        if self.enabled:
            self._progress.update(self._task, description=text)

    def advance(self, steps: int) -> None:
        if self.enabled:
            self._progress.advance(self._task, steps)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.enabled:
            self._progress.update(self._task, description="done")
            self._progress.__exit__(exc_type, exc, tb)
