"""The result of :func:`hierfit.compare`: scores per fold, pooled scores, fits, persistence.

Saved layout (``Comparison.save(dir)``)::

    DIR/comparison.json     formula, family, national, CV scheme, engines, failures, notes
    DIR/spec.pkl            the ModelSpec (priors included)
    DIR/folds.csv           one row per engine and fold
    DIR/predictions.parquet out-of-fold predictions, one row per engine and held-out row
    DIR/recovery.csv        effects vs truth (when the truth was given)
    DIR/data.parquet        the data compared on (with its fold number); truth.parquet
    DIR/fits/ENGINE/        each engine's full-data fit (hierfit.load reads it)
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hierfit.evaluate.metrics import METRICS, RECOVERY_COLUMNS, score
from hierfit.evaluate.splits import CVScheme
from hierfit.exceptions import HierfitError, PersistenceError
from hierfit.model import ModelSpec

FORMAT_VERSION = 1
FOLD_COLUMNS = [
    "engine", "fold", "n_train", "n_test", "rmse", "mae", "mlpd", "coverage", "width",
    "fit_seconds", "predict_seconds", "mlpd_method", "n_diagnostics",
]  # fmt: skip
PREDICTION_COLUMNS = ["engine", "row", "fold", "y", "prediction", "lower", "upper", "logpd", "level_used"]
SUMMARY_COLUMNS = ["engine", "pooling", "uncertainty", "n_folds", "rmse", "mae", "mlpd", "coverage", "width", "fit_seconds", "full_fit_seconds", "mlpd_method"]


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
        The data compared on; the true effects table when given.
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
        """One row per engine: scores pooled over all held-out rows, mean fit time per fold.

        Pooling over rows (rather than averaging fold scores) weighs every held-out row alike
        when folds differ in size, as leave-groups-out folds do.
        """
        from hierfit.engines import ENGINES

        preds = self.predictions
        folds = self.folds
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
                row.update(score(p["y"], p["prediction"], p["lower"], p["upper"], p["logpd"]))
            else:
                row.update({k: np.nan for k in ("rmse", "mae", "mlpd", "coverage", "width")})
            row["fit_seconds"] = float(f["fit_seconds"].mean()) if len(f) else np.nan
            full = self.fits.get(name)
            row["full_fit_seconds"] = float(full.timings.get("fit_seconds", np.nan)) if full is not None else np.nan
            row["mlpd_method"] = ",".join(sorted(set(f["mlpd_method"]))) if len(f) else ""
            rows.append(row)
        return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

    def tidy(self) -> pd.DataFrame:
        """Long table ``engine, fold, metric, value``; ``fold == "all"`` holds the pooled scores."""
        per_fold = self.folds.melt(id_vars=["engine", "fold"], value_vars=list(METRICS), var_name="metric")
        per_fold["fold"] = per_fold["fold"].astype(str)
        pooled = self.summary().melt(id_vars=["engine"], value_vars=list(METRICS), var_name="metric")
        pooled.insert(1, "fold", "all")
        return pd.concat([per_fold, pooled], ignore_index=True)[["engine", "fold", "metric", "value"]]

    def best(self, metric: str = "rmse") -> str:
        """The engine with the best pooled ``metric``."""
        larger = METRICS[metric][1]
        s = self.summary().dropna(subset=[metric])
        if s.empty:
            raise HierfitError(f"No engine has a {metric!r} score; every engine failed or was not cross-validated.")
        return str(s.loc[s[metric].idxmax() if larger else s[metric].idxmin(), "engine"])

    def __repr__(self) -> str:
        return f"<Comparison engines={self.engines} cv={self.cv.describe()!r} rows={len(self.data)}>"

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write every table, the data and each full-data fit under a directory (created)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "hierfit-comparison",
            "formula": self.spec.text,
            "family": str(self.spec.family),
            "national": self.spec.national,
            "cv": {"level": self.cv.level, "folds": int(self.cv.folds), "seed": int(self.cv.seed)},
            "level": self.level,
            "engines": self.engines,
            "fitted": sorted(self.fits),
            "failures": self.failures,
            "notes": self.notes,
        }
        (path / "comparison.json").write_text(json.dumps(meta, indent=2))
        with open(path / "spec.pkl", "wb") as fh:
            pickle.dump(self.spec, fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.folds.to_csv(path / "folds.csv", index=False)
        self.predictions.to_parquet(path / "predictions.parquet", index=False)
        self.recovery.to_csv(path / "recovery.csv", index=False)
        pd.DataFrame(self.fold_diagnostics, columns=["engine", "fold", "check", "message"]).to_csv(path / "fold_diagnostics.csv", index=False)
        data = self.data.copy()
        data["__fold__"] = self.fold_of_row if self.fold_of_row is not None else -1
        data.to_parquet(path / "data.parquet", index=False)
        if self.truth is not None:
            self.truth.to_parquet(path / "truth.parquet", index=False)
        for name, result in self.fits.items():
            result.save(path / "fits" / name)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Comparison:
        """Read a directory written by :meth:`save` (fits included)."""
        from hierfit.results import load_fit

        path = Path(path)
        if not is_comparison_dir(path):
            raise PersistenceError(f"{str(path)!r} is not a saved comparison (no comparison.json). Write one with Comparison.save(path).")
        meta = json.loads((path / "comparison.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise PersistenceError(f"{str(path)!r} has comparison format {meta.get('format_version')!r}; this hierfit reads {FORMAT_VERSION}.")
        with open(path / "spec.pkl", "rb") as fh:
            spec = pickle.load(fh)
        data = pd.read_parquet(path / "data.parquet")
        fold_of_row = data.pop("__fold__").to_numpy()
        truth = pd.read_parquet(path / "truth.parquet") if (path / "truth.parquet").exists() else None
        comp = cls(
            spec=spec,
            cv=CVScheme(meta["cv"]["level"], meta["cv"]["folds"], meta["cv"]["seed"]),
            level=meta["level"],
            engines=list(meta["engines"]),
            data=data,
            truth=truth,
            failures=dict(meta["failures"]),
            notes=list(meta["notes"]),
            fold_of_row=fold_of_row,
        )
        folds = pd.read_csv(path / "folds.csv")
        comp.fold_rows = folds.to_dict("records")
        preds = pd.read_parquet(path / "predictions.parquet")
        if len(preds):
            comp.prediction_parts = [preds]
        rec = pd.read_csv(path / "recovery.csv")
        if len(rec):
            comp.recovery_parts = [rec]
        diag = pd.read_csv(path / "fold_diagnostics.csv")
        comp.fold_diagnostics = diag.to_dict("records")
        for name in meta["fitted"]:
            try:
                comp.fits[name] = load_fit(path / "fits" / name)
            except Exception as exc:  # e.g. saved by an older engine version; keep the tables
                comp.failures[name] = f"its saved full-data fit cannot be loaded ({type(exc).__name__}: {exc}); refit to see its effects."
        return comp


def is_comparison_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a saved :class:`Comparison`."""
    return (Path(path) / "comparison.json").is_file()
