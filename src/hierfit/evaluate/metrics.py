"""Scores of held-out predictions, and recovery of simulated truth.

Held-out scores: RMSE and MAE of the point prediction, mean log predictive density (MLPD;
higher is better) where the engine has a predictive distribution, and coverage and mean width
of the prediction interval. Recovery: for data from :func:`hierfit.simulate`, the error of
every level's estimated effects against the true ones, and how often intervals cover them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hierfit.exceptions import DataError

#: metric name -> (label, True when larger is better)
METRICS: dict[str, tuple[str, bool]] = {
    "rmse": ("RMSE", False),
    "mae": ("MAE", False),
    "mlpd": ("mean log predictive density", True),
    "coverage": ("interval coverage", True),
    "width": ("mean interval width", False),
    "fit_seconds": ("fit time (s)", False),
}

RECOVERY_COLUMNS = ["engine", "level", "term", "kind", "n", "rmse", "mae", "coverage"]


def score(y: np.ndarray, prediction: np.ndarray, lower: np.ndarray, upper: np.ndarray, logpd: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, MLPD, interval coverage and width of one set of held-out rows.

    NaN bounds or densities (engines without uncertainty) give NaN coverage, width and MLPD.

    Examples
    --------
    >>> y = np.array([0.0, 1.0, 2.0])
    >>> s = score(y, y + 1, y - 2, y + 0.5, np.full(3, -1.0))
    >>> s["rmse"], s["mae"], s["coverage"], s["width"], s["mlpd"]
    (1.0, 1.0, 1.0, 2.5, -1.0)
    """
    y = np.asarray(y, dtype=float)
    err = y - np.asarray(prediction, dtype=float)
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    has_bounds = bool(np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)))
    logpd = np.asarray(logpd, dtype=float)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "mlpd": float(np.mean(logpd)) if np.all(np.isfinite(logpd)) else np.nan,
        "coverage": float(np.mean((y >= lower) & (y <= upper))) if has_bounds else np.nan,
        "width": float(np.mean(upper - lower)) if has_bounds else np.nan,
    }


def truth_effects(truth: Any) -> pd.DataFrame:
    """The true effects table from a :class:`hierfit.simulation.Truth` or a DataFrame.

    Group labels are read as text, so a table read back from CSV (where ``1`` may come back as
    a number) still matches the fitted groups.
    """
    table = truth.group_effects() if hasattr(truth, "group_effects") else truth
    needed = ["estimate", "group", "kind", "level", "term"]
    if not isinstance(table, pd.DataFrame) or not set(needed) <= set(table.columns):
        found = f" (its columns: {', '.join(map(str, table.columns))})" if isinstance(table, pd.DataFrame) else ""
        raise DataError(
            f"'truth' must be a simulation's truth (sim.truth) or a table with columns {', '.join(needed)}, as "
            f"`hierfit simulate --truth FILE` writes; got {type(truth).__name__}{found}."
        )
    return table.assign(group=table["group"].astype(str))


def recovery(result, truth: Any, engine: str | None = None, level: float = 0.9) -> pd.DataFrame:
    """Error of every level's estimated effects against the truth.

    One row per (level, term, kind): ``n`` groups compared, ``rmse``, ``mae`` and the
    ``coverage`` of the engine's intervals (NaN without uncertainty). The national root is
    matched whatever its name; ``level == "fixed"`` rows compare population coefficients when
    the truth carries them.

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=5, n_submarkets=4, rows_per_submarket=50, seed=2)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="ols")
    >>> rec = recovery(fit, sim.truth)
    >>> sorted(rec.query("kind == 'total'").level.unique())
    ['fixed', 'market', 'national', 'submarket']
    """
    true = truth_effects(truth).copy()
    est = result.group_effects("both", level=level).copy()
    for table in (true, est):
        # The root's label is a display name; match it by level.
        table.loc[table["level"] == "national", "group"] = ""
    keys = ["level", "group", "term", "kind"]
    merged = est.merge(true[keys + ["estimate"]].rename(columns={"estimate": "truth"}), on=keys, how="inner")
    fixed_truth = getattr(truth, "fixed", None)
    if isinstance(fixed_truth, pd.DataFrame):
        fx = result.fixed_effects(level=level).merge(fixed_truth.rename(columns={"estimate": "truth"})[["term", "truth"]], on="term")
        fx = fx.assign(level="fixed", group="", kind="total")
        merged = pd.concat([merged, fx[merged.columns.intersection(fx.columns)]], ignore_index=True)
    rows = []
    for (lv, term, kind), g in merged.groupby(["level", "term", "kind"], sort=False):
        err = g["estimate"].to_numpy() - g["truth"].to_numpy()
        lo, hi = g["lower"].to_numpy(), g["upper"].to_numpy()
        has = bool(np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)))
        cover = float(np.mean((g["truth"] >= lo) & (g["truth"] <= hi))) if has else np.nan
        rows.append(
            {
                "engine": engine or result.engine,
                "level": lv,
                "term": term,
                "kind": kind,
                "n": len(g),
                "rmse": float(np.sqrt(np.mean(err**2))),
                "mae": float(np.mean(np.abs(err))),
                "coverage": cover,
            }
        )
    return pd.DataFrame(rows, columns=RECOVERY_COLUMNS)
