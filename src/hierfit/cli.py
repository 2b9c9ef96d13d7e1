"""The ``hierfit`` command line: a thin shell over the public API.

Errors hierfit raises on purpose print as one line ``error: ...`` and exit with code 2.

``fit``, ``predict`` and ``compare`` stream their DATA when it is a glob (``'lake/*.parquet'``),
a folder of Parquet files, or when ``--batch-size``, ``--workers`` or ``--scheduler`` is given:
the rows are then read in record batches and never held together (see
:mod:`hierfit.design.sources`, and :mod:`hierfit.evaluate.streamed` for ``compare``), with one
progress line per pass on stderr when it is a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from hierfit.exceptions import DataError, HierfitError, HierfitWarning

_GLOB = set("*?[")


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; values read as int, float, bool or str."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"Engine options are key=value; got {pair!r}.", param_hint="--option")
        out[key.strip()] = _coerce(raw.strip())
    return out


def _coerce(raw: str) -> object:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _output(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check an output path before any work: its folder must exist (nothing is created silently)."""
    from hierfit.io import check_output_folder

    return None if value is None else str(check_output_folder(value))


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one line (``warning: ...``), without the source line Python shows."""
    click.echo(f"warning: {' '.join(str(message).split())}", err=True)


def _data(values: tuple[str, ...]) -> str | list[str]:
    """DATA as given: one path, or -- several (a glob the shell expanded, files listed) -- a list
    of Parquet files, which is streamed."""
    return values[0] if len(values) == 1 else list(values)


def _streams(data: str | list[str], *flags: object) -> bool:
    """Whether DATA is read as a streaming source rather than one in-memory table."""
    if isinstance(data, list):
        return True
    return any(ch in _GLOB for ch in data) or os.path.isdir(data) or any(f is not None for f in flags)


def _stream_options(command: Any) -> Any:
    """``--batch-size``, ``--workers`` and ``--scheduler``, shared by fit, predict and compare."""
    for option in reversed((
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Stream DATA in record batches of at most this many rows (default 1,048,576)."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Stream DATA on a local Dask cluster of this many worker processes (one task per file)."),
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Stream DATA on the Dask cluster at ADDRESS (e.g. tcp://10.0.0.5:8786); the client is closed after."),
    )):
        command = option(command)
    return command


class _PassProgress:
    """A :class:`~hierfit.design.sources.FoldObserver` drawing one rich line per pass on stderr:
    pieces (files or partitions) done of all, and batches read where they are counted here."""

    def __init__(self, unit: str, console: Any = None) -> None:
        from rich.console import Console

        self.unit = unit
        self.console = console if console is not None else Console(stderr=True)
        self._bar: Any = None

    def start(self, what: str, pieces: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn(f"{self.unit}{{task.fields[batches]}}"), TimeElapsedColumn(),
                             console=self.console, transient=False)
        self._bar.start()
        self._task = self._bar.add_task(what, total=pieces, batches="")
        self._batches = 0

    def advance(self, *, batches: int = 0, pieces: int = 0) -> None:
        # batches are counted where they are read here; a Dask task only reports its piece
        self._batches += batches
        self._bar.update(self._task, advance=pieces, batches=f" · {self._batches} batches" if self._batches else "")

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextlib.contextmanager
def _streaming(unit: str, workers: int | None, scheduler: str | None) -> Iterator[None]:
    """The Dask client the options ask for, and the progress lines when stderr is a terminal."""
    from hierfit.design.sources import dask_client, observe_folds

    show = bool(getattr(sys.stderr, "isatty", lambda: False)())
    with dask_client(workers=workers, scheduler=scheduler):
        if not show:
            yield
            return
        with observe_folds(_PassProgress(unit)):
            yield


class _Group(click.Group):
    """One line and exit code 2 for hierfit's errors; a clean abort (exit 130) on Ctrl-C."""

    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        with warnings.catch_warnings():
            # each distinct warning once, as one line (a fit's warnings must not repeat)
            warnings.simplefilter("once", HierfitWarning)
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except HierfitError as exc:
                first = str(exc).splitlines()
                click.echo(f"error: {' '.join(line.strip() for line in first)}", err=True)
                sys.exit(2)
            except KeyboardInterrupt:
                click.echo("interrupted: nothing was written", err=True)
                # leave at once: an interrupted fit's native pools (torch, BLAS) and display
                # threads held interpreter shutdown for over 20 s on a loaded machine, and a
                # second Ctrl-C then killed it mid-exit. Nothing is left to clean up: saves are
                # atomic and removed their temporary folders on the way here.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="hierfit")
def main() -> None:
    """hierfit: hierarchical regression over a tree of nested groups."""


@main.command()
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), callback=_output, help="Data file to write (.csv or .parquet).")
@click.option("--truth", "truth_out", type=click.Path(dir_okay=False), callback=_output, help="Also write the true group effects here.")
@click.option("--n-markets", default=10, show_default=True)
@click.option("--n-submarkets", default=5, show_default=True)
@click.option("--rows", "rows_per_submarket", default=100, show_default=True, help="Rows per submarket (mean if --unbalanced).")
@click.option("--unbalanced", is_flag=True, help="Draw unequal group sizes.")
@click.option("--nonlinear", type=click.Choice(["all", "interaction", "sin", "threshold"]), default=None)
@click.option("--family", default="gaussian", show_default=True, help="An outcome family (see hierfit.model.FAMILIES).")
@click.option("--trials", default=10, show_default=True, help="binomial: rows have 1 to 2*TRIALS-1 trials (column n).")
@click.option("--dispersion", default=2.0, show_default=True, help="negative_binomial: the size theta.")
@click.option("--exposure", is_flag=True, help="Count families: an exposure column whose log is an offset.")
@click.option("--seed", default=0, show_default=True)
def simulate(out, truth_out, n_markets, n_submarkets, rows_per_submarket, unbalanced, nonlinear, family, trials, dispersion,
             exposure, seed) -> None:
    """Simulate the reference hierarchy (national -> markets -> submarkets) with known truth."""
    from hierfit.io import write_table
    from hierfit.simulation import simulate as run

    sim = run(
        n_markets=n_markets,
        n_submarkets=n_submarkets,
        rows_per_submarket=rows_per_submarket,
        unbalanced=unbalanced,
        nonlinear=nonlinear,
        family=family,
        trials=trials,
        dispersion=dispersion,
        exposure=exposure,
        seed=seed,
    )
    write_table(sim.data, out)
    click.echo(f"wrote {len(sim.data)} rows to {out}")
    click.echo(f"true model: {sim.formula}")
    if truth_out:
        write_table(sim.truth.group_effects(), truth_out)
        click.echo(f"wrote true group effects to {truth_out}")


@main.command()
@click.argument("data", nargs=-1, required=True)
@click.option("--formula", "-f", required=True, help="lme4/brms formula, e.g. 'y ~ x1 + (1 + x1 | market/submarket)'.")
@click.option("--engine", "-e", default=None, help="Engine name (see `hierfit engines`); default mixed, else ols.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), callback=_output, help="Directory to save the fit in.")
@click.option("--family", default="gaussian", show_default=True)
@click.option("--national", default="national", show_default=True, help="Name of the national root.")
@click.option("--link", default=None, help="Link function (default: the family's canonical link; binomial also probit, cloglog).")
@click.option("--weights", "weights", default=None, help="Column of prior weights (lme4 semantics: a row of weight w counts as w rows).")
@click.option("--offset", "offset", default=None, help="Column added to the linear predictor as is (a log exposure for counts).")
@click.option("--option", "-o", "options", multiple=True, help="Engine option key=value (repeatable), e.g. n_agq=9.")
@click.option("--overwrite", is_flag=True, help="Replace an existing hierfit save in --out (never a folder of other files).")
@_stream_options
def fit(data, formula, engine, out, family, national, link, weights, offset, options, overwrite, batch_size, workers,
        scheduler) -> None:
    """Fit a model to DATA and save it to --out (atomically: readers see the old save or the new one).

    DATA is a .csv or .parquet file, or -- streamed -- a glob ('lake/*.parquet'), a folder, or
    several Parquet files (an unquoted glob the shell expanded).
    """
    import hierfit
    from hierfit.io import read_table
    from hierfit.storage import check_target

    data = _data(data)
    # refuse an occupied --out before the (possibly long) fit, not after it
    check_target(out, overwrite)
    common = dict(engine=engine, family=family, link=link, national=national, weights=weights, offset=offset,
                  **_parse_options(options))
    if _streams(data, batch_size, workers, scheduler):
        with _streaming("files", workers, scheduler):
            result = hierfit.fit(formula, data, batch_size=batch_size, **common)
    else:
        result = hierfit.fit(formula, read_table(data), **common)
    result.save(out, overwrite=overwrite)
    click.echo(result.summary())
    click.echo(f"\nsaved to {out}")


@main.command()
@click.argument("fit_dir", type=click.Path(file_okay=False))
@click.option("--table", type=click.Choice(["fixed", "group", "variance"]), default="group", show_default=True)
@click.option("--kind", type=click.Choice(["both", "deviation", "total"]), default="both", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), callback=_output, help="Write the table to .csv/.parquet instead of printing.")
def effects(fit_dir, table, kind, out) -> None:
    """Print (or write) the effects tables of a saved fit."""
    import hierfit
    from hierfit.io import write_table

    result = hierfit.load(fit_dir)
    frame = {
        "fixed": result.fixed_effects,
        "variance": result.variance_components,
        "group": lambda: result.group_effects(kind=kind),
    }[table]()
    if out:
        write_table(frame, out)
        click.echo(f"wrote {len(frame)} rows to {out}")
    else:
        with _wide_pandas():
            click.echo(frame.to_string(index=False))


@main.command()
@click.argument("fit_dir", type=click.Path(file_okay=False))
@click.argument("data", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(), callback=_output,
              help="Predictions file (.csv/.parquet); for streamed DATA a new or empty folder of Parquet files.")
@click.option("--interval", type=click.Choice(["confidence", "prediction"]), default=None)
@click.option("--level", default=0.9, show_default=True)
@_stream_options
def predict(fit_dir, data, out, interval, level, batch_size, workers, scheduler) -> None:
    """Predict DATA with a saved fit; rows keep their order.

    Streamed DATA (a glob, a folder or several Parquet files) is predicted a batch at a time into the
    folder --out: one output file per input file, row i predicting the input file's row i
    (with --workers/--scheduler: one file per Dask partition, written on the cluster).
    """
    import warnings

    import hierfit
    from hierfit.io import read_table, write_table

    result = hierfit.load(fit_dir)
    data = _data(data)
    streamed = _streams(data, batch_size, workers, scheduler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", hierfit.UnseenGroupsWarning)
        if streamed:
            rows = _predict_source(result, data, out, interval, level, batch_size, workers, scheduler)
        else:
            pred = result.predict(read_table(data), interval=interval, level=level)
            write_table(pred, out)
            rows = len(pred)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    click.echo(f"wrote {rows} predictions to {out}")


def _predict_source(result: Any, data: str | list[str], out: str, interval: str | None, level: float, batch_size: int | None,
                    workers: int | None, scheduler: str | None) -> int:
    """Predict a streamed source into the folder ``out``; the number of rows written."""
    import pyarrow.parquet as pq

    if Path(out).suffix.lower() in (".csv", ".parquet", ".pq"):
        raise DataError(f"Predictions of a streamed source are written as Parquet files into a folder; --out {out!r} names a "
                        "file. Give a new or empty folder, e.g. --out predictions/.")
    options = {"interval": interval, "level": level}
    with _streaming("files", workers, scheduler):
        if workers is None and scheduler is None:
            result.predict(data, out=out, batch_size=batch_size, **options)
        else:
            result.predict(_dask_frame(data), out=out, **options)
    return sum(pq.read_metadata(f).num_rows for f in sorted(Path(out).glob("**/*.parquet")))


def _dask_frame(data: str | list[str]) -> Any:
    """DATA as a Dask DataFrame (one partition per file), for predicting on a cluster."""
    try:
        import dask.dataframe as dd
    except ImportError:
        from hierfit.design.sources.source import DASK_MISSING
        from hierfit.exceptions import EngineError

        raise EngineError(DASK_MISSING) from None
    return dd.read_parquet(data)


@main.command()
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--formula", "-f", required=True, help="lme4/brms formula.")
@click.option("--family", default="gaussian", show_default=True)
@click.option("--national", default="national", show_default=True)
@click.option("--data-out", "data_out", type=click.Path(dir_okay=False), callback=_output, help="Also write the Stan data dict as JSON.")
def stancode(data, formula, family, national, data_out) -> None:
    """Print the Stan program hierfit generates for FORMULA on DATA (as brms's make_stancode)."""
    import json

    import numpy as np

    from hierfit.design import build_design
    from hierfit.engines.bayes import stan_code, stan_data
    from hierfit.io import read_table
    from hierfit.model import make_spec

    design = build_design(make_spec(formula, family=family, national=national), read_table(data))
    click.echo(stan_code(design))
    if data_out:
        payload = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in stan_data(design).items()}
        Path(data_out).write_text(json.dumps(payload))
        click.echo(f"// data written to {data_out}", err=True)


@main.command()
def engines() -> None:
    """List engines with their capabilities and whether they are installed."""
    from rich.console import Console
    from rich.table import Table

    from hierfit.engines import ENGINES

    table = Table(title="hierfit engines")
    for col in ("engine", "installed", "pooling", "uncertainty", "slopes", "families", "decomposition", "nonlinear", "summary"):
        table.add_column(col)
    for name in sorted(ENGINES):
        e = ENGINES[name]
        c = e.capabilities
        slopes = "correlated" if c.correlated_slopes else ("yes" if c.varying_slopes else "no")
        installed = "yes" if e.available else f"no: pip install 'hierfit[{e.extra or name}]'"
        table.add_row(name, installed, c.pooling, c.uncertainty, slopes, ",".join(c.families), c.decomposition, "yes" if c.nonlinear else "no", e.summary)
    Console(width=200).print(table)


@main.command()
@click.argument("data", nargs=-1, required=True)
@click.option("--formula", "-f", required=True, help="lme4/brms formula, e.g. 'y ~ x1 + (1 + x1 | market/submarket)'.")
@click.option("--engines", "-e", default=None, help="Comma-separated engines, e.g. mixed,pymc,ols; default every installed engine.")
@click.option("--cv", default="kfold", show_default=True, help="kfold (rows), or a level to hold out whole groups of: submarket, market, ...")
@click.option("--folds", "-k", default=5, show_default=True, help="Number of folds.")
@click.option("--out", "out", type=click.Path(file_okay=False), callback=_output, help="Directory to save the comparison in (fits, tables, report.html).")
@click.option("--family", default="gaussian", show_default=True)
@click.option("--national", default="national", show_default=True, help="Name of the national root.")
@click.option("--link", default=None, help="Link function (default: the family's canonical link; binomial also probit, cloglog).")
@click.option("--weights", "weights", default=None, help="Column of prior weights (lme4 semantics: a row of weight w counts as w rows).")
@click.option("--offset", "offset", default=None, help="Column added to the linear predictor as is (a log exposure for counts).")
@click.option("--option", "-o", "options", multiple=True, help="Engine option ENGINE.key=value (repeatable), e.g. pymc.draws=500.")
@click.option("--fast", is_flag=True, help="Start from each engine's FAST_OPTIONS (quick fits).")
@click.option("--level", default=0.9, show_default=True, help="Prediction-interval probability.")
@click.option("--time-budget", type=float, default=None, help="Seconds for the whole comparison; slow engines are then fitted but not cross-validated.")
@click.option("--seed", default=0, show_default=True, help="Seed of the fold assignment.")
@click.option("--truth", "truth", type=click.Path(dir_okay=False), default=None,
              help="True group effects (from `hierfit simulate --truth`): adds recovery of the truth to the scores and report.")
@click.option("--report/--no-report", default=True, show_default=True, help="Also write DIR/report.html (with --out).")
@click.option("--overwrite", is_flag=True, help="Replace an existing hierfit save in --out (never a folder of other files).")
@_stream_options
def compare(data, formula, engines, cv, folds, out, family, national, link, weights, offset, options, fast, level, time_budget, seed,
            truth, report, overwrite, batch_size, workers, scheduler) -> None:
    """Fit several engines to DATA, cross-validate them, and print the scores.

    DATA is a .csv or .parquet file, or -- streamed, for the engines that stream the family
    (mixed, gaussian) and with --cv naming a level -- a glob ('lake/*.parquet'), a folder or
    several Parquet files: the folds hold out groups found by a pass over the files, every fold's fit
    streams the other groups' rows, and the held-out rows are scored batch by batch.
    """
    import warnings

    from hierfit.engines import get_engine
    from hierfit.evaluate import available_engines, parse_cv
    from hierfit.evaluate import compare as run
    from hierfit.evaluate.metrics import truth_effects
    from hierfit.io import read_table
    from hierfit.storage import check_target

    if out:
        check_target(out, overwrite)
    data = _data(data)
    streamed = _streams(data, batch_size, workers, scheduler)
    names = [e.strip() for e in engines.split(",") if e.strip()] if engines else None
    per_engine: dict[str, dict[str, object]] = {}
    if fast:
        for name in names or available_engines():
            per_engine[name] = get_engine(name).fast_options()
    for pair in options:
        target, dot, rest = pair.partition(".")
        if not dot:
            raise click.BadParameter(f"Engine options are ENGINE.key=value; got {pair!r}.", param_hint="--option")
        per_engine.setdefault(target, {}).update(_parse_options((rest,)))
    true = truth_effects(read_table(truth)) if truth else None  # a bad file fails before any fit
    scheme = parse_cv(cv if ":" in cv else f"{cv}:{folds}", seed=seed)
    common = {"engines": names, "cv": scheme, "family": family, "link": link, "national": national, "weights": weights,
              "offset": offset, "options": per_engine, "truth": true, "level": level, "time_budget": time_budget}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are echoed below, one line each
        if streamed:
            # one progress line per pass (named by engine and fold) instead of the bar over folds
            with _streaming("files", workers, scheduler):
                comp = run(formula, data, batch_size=batch_size, progress=False, **common)
        else:
            comp = run(formula, read_table(data), progress=True, **common)
    with _wide_pandas():
        click.echo(comp.shown_summary().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for note in comp.notes:
        click.echo(f"note: {note}")
    for name, msg in comp.failures.items():
        click.echo(f"failed: {name}: {msg}", err=True)
    if out:
        from hierfit.report import build_report

        # the report is written into the save before it is sealed: one atomic folder
        comp.save(out, overwrite=overwrite, extra=(lambda folder: build_report(comp, folder / "report.html")) if report else None)
        click.echo(f"saved to {out}")
        if report:
            click.echo(f"report: {Path(out) / 'report.html'}")


@main.command()
@click.argument("source", type=click.Path(file_okay=False))
@click.option("--out", "out", default="report.html", show_default=True, type=click.Path(dir_okay=False), callback=_output, help="HTML file to write.")
@click.option("--data", "data", type=click.Path(dir_okay=False), help="Data of a single fit (adds the data summary, predictive check, decomposition).")
@click.option("--truth", "truth", type=click.Path(dir_okay=False), help="True group effects (from `hierfit simulate --truth`), for a single fit.")
@click.option("--title", default=None, help="Page title.")
def report(source, out, data, truth, title) -> None:
    """Write a self-contained HTML report of a saved fit or comparison directory SOURCE."""
    from hierfit.io import read_table
    from hierfit.report import build_report

    frame = read_table(data) if data else None
    true = read_table(truth) if truth else None
    build_report(source, out, data=frame, truth=true, title=title)
    click.echo(f"report: {Path(out).resolve()}")


@main.command()
@click.option("--out", "out", default=None, type=click.Path(), callback=_output, help="Report to write (default demo-report.html; music: music-report.html).")
@click.option("--seed", default=0, show_default=True)
@click.option("--budget", default=200.0, show_default=True, help="Seconds for fitting and cross-validating all engines (quick ones first).")
@click.option("--engines", "-e", default=None, help="Comma-separated engines (default: every installed engine).")
@click.option("--example", type=click.Choice(["music", "reference"]), default="reference", show_default=True,
              help="'music': artist popularity from track popularity (a SYNTHETIC catalogue unless --data).")
@click.option("--data", "data", type=click.Path(dir_okay=False), default=None,
              help="With --example music: your Spotify songs table (CSV/Parquet) instead of the synthetic catalogue.")
def demo(out, seed, budget, engines, example, data) -> None:
    """Simulate the reference tree, compare every available engine, write an HTML report."""
    if example == "music":
        from hierfit.examples.music.demo import run_music_demo

        run_music_demo(Path(out or "music-report.html"), data=Path(data) if data else None, seed=seed, echo=click.echo)
        return
    if data:
        raise click.BadParameter("--data goes with --example music.", param_hint="--data")
    from hierfit.demo import run_demo

    names = [e.strip() for e in engines.split(",") if e.strip()] if engines else None
    run_demo(out=Path(out or "demo-report.html"), seed=seed, echo=click.echo, engines=names, budget=budget)


class _wide_pandas:
    def __enter__(self):
        import pandas as pd

        self._ctx = pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_rows", 500)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


if __name__ == "__main__":  # pragma: no cover
    main()
