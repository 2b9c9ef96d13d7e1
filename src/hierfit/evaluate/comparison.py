"""The result of :func:`hierfit.compare`: scores per fold, pooled scores, fits, persistence.

Saved layout (``Comparison.save(dir)``; the format of :mod:`hierfit.results.persistence`)::

    DIR/hierfit.json              manifest: kind "comparison", spec, CV scheme, level, engines,
                                  fitted engines, failures, notes; checksums of every other file
    DIR/SHA256SUMS                SHA-256 of every file (sha256sum -c SHA256SUMS)
    DIR/folds.parquet             one row per engine and fold
    DIR/predictions.parquet       out-of-fold predictions, one row per engine and held-out row
    DIR/recovery.parquet          effects vs truth (empty without a truth)
    DIR/fold_diagnostics.parquet  diagnostics of the fold fits
    DIR/data.parquet              the data compared on, with its fold number (``__fold__``)
    DIR/truth.parquet             the true effects, when given
    DIR/fits/ENGINE/              each engine's full-data fit, a complete fit save
                                  (``hierfit.load`` reads it on its own)
    DIR/report.html               the HTML report, when the command line wrote one

The whole folder is written atomically and verified on load, as a fit is.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hierfit.design.columns import trials_vector
from hierfit.design.sources.base import SourceInfo
from hierfit.evaluate.metrics import FAMILY_SCORES, METRICS, RECOVERY_COLUMNS, SCORES, primary_metric, score
from hierfit.evaluate.paired import paired_differences
from hierfit.evaluate.splits import CVScheme
from hierfit.exceptions import HierfitError, PersistenceError
from hierfit.model import ModelSpec
from hierfit.results.manifest import spec_from_json, spec_to_json
from hierfit.results.persistence import load_fit_files, write_fit
from hierfit.storage import MANIFEST, SavedFiles, atomic_save, new_manifest, read_save, saved_kind, seal

DIAGNOSTIC_COLUMNS = ["engine", "fold", "check", "message"]
FOLD_COLUMNS = [
    "engine", "fold", "n_train", "n_test", *SCORES,
    "fit_seconds", "predict_seconds", "mlpd_method", "n_diagnostics", "threads",
]  # fmt: skip
PREDICTION_COLUMNS = ["engine", "row", "fold", "y", "prediction", "lower", "upper", "logpd", "level_used"]
SUMMARY_COLUMNS = ["engine", "pooling", "uncertainty", "n_folds", *SCORES, "fit_seconds", "full_fit_seconds", "mlpd_method"]


@dataclass(eq=False)
class Comparison:
    """Engines compared on one spec and data by cross-validation.

    Attributes
    ----------
    spec, cv, level
        What was fitted, how the rows were split, the interval probability.
    engines
        Engines asked for, in order.
    fits
        Each engine's fit on all the data (``FitResult``).
    failures
        Engine -> why it failed (its other results are absent or partial).
    notes
        Other things to know (engines skipped for time).
    data, truth
        The data compared on; the true effects table when given. A comparison on a streaming
        source (:mod:`hierfit.evaluate.streamed`) keeps no rows: ``data`` is then an empty
        frame with the source's columns, ``source`` says what was streamed and ``n_rows`` how
        many rows it had; its pooled scores are the fold scores weighted by their held-out rows
        (the same numbers pooling the rows gives), and there is no ``predictions`` table.
    """

    spec: ModelSpec
    cv: CVScheme
    level: float
    engines: list[str]
    data: pd.DataFrame
    truth: pd.DataFrame | None = None
    fits: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fold_of_row: np.ndarray | None = None
    fold_rows: list[dict[str, Any]] = field(default_factory=list)
    prediction_parts: list[pd.DataFrame] = field(default_factory=list)
    recovery_parts: list[pd.DataFrame] = field(default_factory=list)
    fold_diagnostics: list[dict[str, Any]] = field(default_factory=list)
    source: SourceInfo | None = None
    n_rows: int | None = None

    @property
    def rows(self) -> int:
        """Rows compared on (in memory or in the streamed source)."""
        return len(self.data) if self.n_rows is None else self.n_rows

    # -- tables ---------------------------------------------------------------------------
    @property
    def folds(self) -> pd.DataFrame:
        """One row per engine and fold: sizes, scores, fit time, how MLPD was computed."""
        return pd.DataFrame(self.fold_rows, columns=FOLD_COLUMNS)

    @property
    def predictions(self) -> pd.DataFrame:
        """Out-of-fold predictions: one row per engine and held-out row (``row`` = position)."""
        if not self.prediction_parts:
            return pd.DataFrame(columns=PREDICTION_COLUMNS)
        return pd.concat(self.prediction_parts, ignore_index=True)[PREDICTION_COLUMNS]

    @property
    def recovery(self) -> pd.DataFrame:
        """Effects vs truth per engine, level, term and kind (empty without a truth)."""
        if not self.recovery_parts:
            return pd.DataFrame(columns=RECOVERY_COLUMNS)
        return pd.concat(self.recovery_parts, ignore_index=True)[RECOVERY_COLUMNS]

    def summary(self) -> pd.DataFrame:
        """One row per engine: scores pooled over all held-out rows, mean fit time per fold,
        and, when a truth was given, recovery of the truth.

        Pooling over rows (rather than averaging fold scores) weighs every held-out row alike
        when folds differ in size, as leave-groups-out folds do. With a truth, one column
        ``recovery_rmse_<level>[<term>]`` per level and term holds the RMSE of the full-data
        fit's total effects (national + deviations down to the group) against the true ones;
        :attr:`recovery` has every row (deviations, coverage, population coefficients).
        """
        from hierfit.engines import ENGINES

        preds = self.predictions
        folds = self.folds
        family = self.spec.family
        trials = self._trials()
        rows = []
        for name in self.engines:
            entry = ENGINES.get(name)
            caps = entry.capabilities if entry is not None else None
            p = preds[preds["engine"] == name]
            f = folds[folds["engine"] == name]
            row: dict[str, Any] = {
                "engine": name,
                "pooling": caps.pooling if caps else "",
                "uncertainty": caps.uncertainty if caps else "",
                "n_folds": len(f),
            }
            if len(p):
                n = None if trials is None else trials[p["row"].to_numpy(dtype=int)]
                row.update(score(p["y"], p["prediction"], p["lower"], p["upper"], p["logpd"], family, n))
            elif self.source is not None and len(f):
                row.update(pooled_fold_scores(f))
            else:
                row.update({k: np.nan for k in SCORES})
            row["fit_seconds"] = float(f["fit_seconds"].mean()) if len(f) else np.nan
            full = self.fits.get(name)
            row["full_fit_seconds"] = float(full.timings.get("fit_seconds", np.nan)) if full is not None else np.nan
            row["mlpd_method"] = ",".join(sorted(set(f["mlpd_method"]))) if len(f) else ""
            rows.append(row)
        table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        return table.join(self._recovery_columns(), on="engine") if len(self.recovery) else table

    def shown_summary(self) -> pd.DataFrame:
        """:meth:`summary` without the family scores that do not apply to this outcome (log loss
        for a gaussian one, RMSE's companions stay): what the report and the command line show."""
        table = self.summary()
        return table[[c for c in table.columns if c not in FAMILY_SCORES or table[c].notna().any()]]

    def _trials(self) -> np.ndarray | None:
        """Trials of every row of the data (binomial outcomes), else ``None``."""
        if self.spec.response not in self.data.columns:
            return None
        return trials_vector(self.spec, self.data, self.data[self.spec.response].to_numpy(dtype=float))

    @property
    def primary_metric(self) -> str:
        """The score engines are ranked by for this family (:func:`~hierfit.evaluate.metrics.primary_metric`)."""
        return primary_metric(self.spec.family)

    def _recovery_columns(self) -> pd.DataFrame:
        """RMSE of total effects against the truth, engines by ``recovery_rmse_<level>[<term>]``."""
        rec = self.recovery
        total = rec[(rec["kind"] == "total") & (rec["level"] != "fixed")]
        wide = total.pivot_table(index="engine", columns=["level", "term"], values="rmse", sort=False)
        wide.columns = [f"recovery_rmse_{level}[{term}]" for level, term in wide.columns]
        return wide

    def tidy(self) -> pd.DataFrame:
        """Long table ``engine, fold, metric, value``; ``fold == "all"`` holds the pooled scores."""
        per_fold = self.folds.melt(id_vars=["engine", "fold"], value_vars=list(METRICS), var_name="metric")
        per_fold["fold"] = per_fold["fold"].astype(str)
        pooled = self.summary().melt(id_vars=["engine"], value_vars=list(METRICS), var_name="metric")
        pooled.insert(1, "fold", "all")
        return pd.concat([per_fold, pooled], ignore_index=True)[["engine", "fold", "metric", "value"]]

    def paired(self, reference: str = "ols", metric: str = "rmse") -> pd.DataFrame:
        """Every other engine against ``reference`` on ``metric``, fold by fold.

        The mean of the per-fold differences, its standard error, and a verdict that says
        ``better`` or ``worse`` only beyond noise (more than 2 SE), else ``indistinguishable``;
        see :func:`hierfit.evaluate.paired.paired_differences`.

        Examples
        --------
        >>> import hierfit
        >>> sim = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=20, seed=1)
        >>> comp = hierfit.compare(sim.formula, sim.data, engines=["ols", "mixed"], cv="submarket:4", progress=False)
        >>> row = comp.paired("ols").iloc[0]
        >>> row.engine, int(row.n_folds), row.verdict in ("better", "worse", "indistinguishable")
        ('mixed', 4, True)
        """
        return paired_differences(self.folds, reference, metric, engines=[e for e in self.engines if e != reference])

    def best(self, metric: str | None = None) -> str:
        """The engine with the best pooled ``metric`` (default: the family's :attr:`primary_metric`)."""
        metric = metric or self.primary_metric
        larger = METRICS[metric][1]
        s = self.summary().dropna(subset=[metric])
        if s.empty:
            raise HierfitError(f"No engine has a {metric!r} score; every engine failed or was not cross-validated.")
        return str(s.loc[s[metric].idxmax() if larger else s[metric].idxmin(), "engine"])

    def __repr__(self) -> str:
        return f"<Comparison engines={self.engines} cv={self.cv.describe()!r} rows={self.rows}>"

    def _repr_html_(self) -> str:
        """Jupyter's display: spec, CV scheme, the summary table, notes and failures."""
        from hierfit.results import notebook

        facts = [f"formula {self.spec.text}", f"cross-validation {self.cv.describe()}", f"{self.rows} rows"]
        if self.source is not None:
            facts.append(f"streamed from {self.source.description}")
        blocks = [notebook.block("summary (held-out scores per engine)", notebook.table(self.summary()))]
        warnings = list(self.notes) + [f"{name} failed: {msg}" for name, msg in self.failures.items()]
        return notebook.fragment(f"hierfit comparison of {len(self.engines)} engines", facts, blocks, warnings)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False, extra: Callable[[Path], object] | None = None) -> Path:
        """Write every table, the data and each full-data fit to folder ``path``, atomically.

        An existing hierfit save at ``path`` is replaced only with ``overwrite=True``.
        ``extra(folder)`` may add files (the command line's ``report.html``) before the folder
        is sealed, so they are part of the save and its checksums.
        """
        return atomic_save(path, lambda staging: self._write(staging, extra), overwrite=overwrite)

    def _write(self, directory: Path, extra: Callable[[Path], object] | None) -> None:
        self.folds.to_parquet(directory / "folds.parquet", index=False)
        self.predictions.to_parquet(directory / "predictions.parquet", index=False)
        self.recovery.to_parquet(directory / "recovery.parquet", index=False)
        pd.DataFrame(self.fold_diagnostics, columns=DIAGNOSTIC_COLUMNS).to_parquet(directory / "fold_diagnostics.parquet", index=False)
        data = self.data.copy()
        data["__fold__"] = self.fold_of_row if self.fold_of_row is not None else -1
        data.to_parquet(directory / "data.parquet", index=False)
        if self.truth is not None:
            self.truth.to_parquet(directory / "truth.parquet", index=False)
        for name, result in self.fits.items():
            write_fit(result, directory / "fits" / name)
        if extra is not None:
            extra(directory)
        seal(directory, new_manifest(
            "comparison",
            spec=spec_to_json(self.spec),
            cv={"level": self.cv.level, "folds": int(self.cv.folds), "seed": int(self.cv.seed)},
            level=float(self.level),
            engines=list(self.engines),
            fitted=sorted(self.fits),
            failures=dict(self.failures),
            notes=list(self.notes),
            truth=self.truth is not None,
            source=None if self.source is None else self.source.to_json(),
            n_rows=self.n_rows,
        ))

    @classmethod
    def load(cls, path: str | Path) -> Comparison:
        """Read a folder written by :meth:`save`, verifying every file first (fits included).

        A fit that cannot be rebuilt here (its engine is not installed) is left out and
        recorded in ``failures``; the tables are kept.
        """
        manifest, files = read_save(path, "comparison")
        where = files.where(MANIFEST)
        try:
            cv = manifest["cv"]
            scheme = CVScheme(None if cv["level"] is None else str(cv["level"]), int(cv["folds"]), int(cv["seed"]))
            level = float(manifest["level"])
            engines = [str(e) for e in manifest["engines"]]
            fitted = [str(e) for e in manifest["fitted"]]
            failures = {str(k): str(v) for k, v in manifest["failures"].items()}
            notes = [str(n) for n in manifest["notes"]]
            has_truth = bool(manifest["truth"])
            # saves from before streamed comparisons have neither field
            source = None if manifest.get("source") is None else SourceInfo.from_json(manifest["source"])
            n_rows = None if manifest.get("n_rows") is None else int(manifest["n_rows"])
        except (KeyError, TypeError, ValueError, AttributeError, HierfitError) as exc:
            raise PersistenceError(f"{where}: malformed comparison fields ({type(exc).__name__}: {exc}).") from None
        data = _table(files, "data.parquet")
        if "__fold__" not in data.columns:
            raise PersistenceError(f"{files.where('data.parquet')} has no '__fold__' column. Run the comparison again and save it.")
        fold_of_row = data.pop("__fold__").to_numpy()
        comp = cls(spec=spec_from_json(manifest.get("spec"), where), cv=scheme, level=level, engines=engines, data=data,
                   truth=_table(files, "truth.parquet") if has_truth else None, failures=failures, notes=notes, fold_of_row=fold_of_row,
                   source=source, n_rows=n_rows)
        comp.fold_rows = _table(files, "folds.parquet").to_dict("records")
        preds = _table(files, "predictions.parquet")
        if len(preds):
            comp.prediction_parts = [preds]
        rec = _table(files, "recovery.parquet")
        if len(rec):
            comp.recovery_parts = [rec]
        comp.fold_diagnostics = _table(files, "fold_diagnostics.parquet").to_dict("records")
        for name in fitted:
            try:
                comp.fits[name] = load_fit_files(files.sub(f"fits/{name}"))
            except PersistenceError as exc:  # e.g. its engine is not installed here: keep the tables
                comp.failures[name] = f"its saved full-data fit cannot be loaded ({exc}); install its engine or refit to see its effects."
        return comp


#: scores that are a mean over held-out rows, so the fold scores weighted by their rows pool them
#: (RMSE through its square); the rest (AUC, calibration, the trial-weighted probability scores)
#: need the rows themselves
_ROW_MEANS = ("mae", "mlpd", "coverage", "width", "deviance")


def pooled_fold_scores(folds: pd.DataFrame) -> dict[str, float]:
    """Scores pooled over every held-out row from one engine's fold scores: each fold's mean
    weighted by its held-out rows (RMSE as the root of the weighted mean square).

    Examples
    --------
    >>> folds = pd.DataFrame({"n_test": [1, 3], "rmse": [2.0, 0.0], "mae": [2.0, 0.0], "mlpd": [-1.0, -3.0],
    ...                       "coverage": [1.0, 0.0], "width": [1.0, 1.0], "deviance": [np.nan, np.nan]})
    >>> s = pooled_fold_scores(folds)
    >>> s["rmse"], s["mae"], s["mlpd"], s["coverage"]
    (1.0, 0.5, -2.5, 0.25)
    """
    n = folds["n_test"].to_numpy(dtype=float)
    out = dict.fromkeys(SCORES, np.nan)
    total = n.sum()
    if total <= 0:
        return out
    out["rmse"] = float(np.sqrt(n @ folds["rmse"].to_numpy(dtype=float) ** 2 / total))
    for name in _ROW_MEANS:
        out[name] = float(n @ folds[name].to_numpy(dtype=float) / total)
    return out


def _table(files: SavedFiles, name: str) -> pd.DataFrame:
    """A Parquet table of a verified save."""
    try:
        return pd.read_parquet(io.BytesIO(files.read(name)))
    except (ValueError, OSError) as exc:
        raise PersistenceError(f"{files.where(name)} is not a readable Parquet table ({exc}). Run the comparison again and save it.") from None


def is_comparison_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a saved :class:`Comparison` (of any format; loading checks it)."""
    return saved_kind(path) == "comparison"
