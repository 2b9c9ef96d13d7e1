"""Scores of held-out predictions, and recovery of simulated truth.

Held-out scores: RMSE and MAE of the point prediction of the outcome (for a binomial, the
expected successes ``trials × p``), mean log predictive density (MLPD; higher is better) where
the engine has a predictive distribution, and coverage and mean width of the prediction
interval. By family, beside them:

* probabilities (bernoulli, binomial): **log loss** and the **Brier score** per trial, the
  **AUC** (each trial a case: ``y`` positives and ``trials - y`` negatives at the row's ``p``),
  and the **calibration error** (the trial-weighted mean gap between the observed share of
  successes and the mean prediction over ten bins of predicted probability: the number behind
  the calibration curve of the predictive check);
* counts (poisson, negative binomial): the mean **Poisson deviance** of the predicted mean (the
  dispersion-free count score, scikit-learn's ``mean_poisson_deviance``).

:func:`primary_metric` names the score a family is judged by (RMSE, log loss, deviance).
Recovery: for data from :func:`hierfit.simulate`, the error of every level's estimated effects
against the true ones, and how often intervals cover them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from hierfit.exceptions import DataError
from hierfit.model import Family

#: metric name -> (label, True when larger is better)
METRICS: dict[str, tuple[str, bool]] = {
    "rmse": ("RMSE", False),
    "mae": ("MAE", False),
    "mlpd": ("mean log predictive density", True),
    "coverage": ("interval coverage", True),
    "width": ("mean interval width", False),
    "log_loss": ("log loss", False),
    "brier": ("Brier score", False),
    "auc": ("AUC", True),
    "calibration": ("calibration error", False),
    "deviance": ("mean Poisson deviance", False),
    "fit_seconds": ("fit time (s)", False),
}
#: scores that apply to some families only (NaN for the others)
FAMILY_SCORES = ("log_loss", "brier", "auc", "calibration", "deviance")
#: the scores :func:`score` returns (every one, NaN where it does not apply)
SCORES = ("rmse", "mae", "mlpd", "coverage", "width", *FAMILY_SCORES)
_P_EPS = 1e-15  # probabilities are kept this far from 0 and 1 in the log loss (as scikit-learn)

RECOVERY_COLUMNS = ["engine", "level", "term", "kind", "n", "rmse", "mae", "coverage"]


def is_probability(family: Family | None) -> bool:
    """Whether the family's mean is a probability (bernoulli, binomial)."""
    return family is not None and family.mean_range == (0.0, 1.0)


def is_count(family: Family | None) -> bool:
    """Whether the outcome is an unbounded count (poisson, negative binomial)."""
    return family is not None and family.discrete and family.mean_range == (0.0, np.inf)


def primary_metric(family: Family | None) -> str:
    """The held-out score a family's engines are ranked by: log loss for probabilities, the
    Poisson deviance for counts, RMSE otherwise.

    >>> from hierfit.model import FAMILIES
    >>> {name: primary_metric(family) for name, family in FAMILIES.items()}["negative_binomial"]
    'deviance'
    >>> primary_metric(FAMILIES["bernoulli"]), primary_metric(FAMILIES["gaussian"])
    ('log_loss', 'rmse')
    """
    return "log_loss" if is_probability(family) else "deviance" if is_count(family) else "rmse"


def score(y: np.ndarray, prediction: np.ndarray, lower: np.ndarray, upper: np.ndarray, logpd: np.ndarray,
          family: Family | None = None, trials: np.ndarray | None = None) -> dict[str, float]:
    """Every score in :data:`SCORES` of one set of held-out rows.

    ``prediction`` is the response-scale mean (a probability per trial for a binomial, whose
    ``trials`` give the expected successes). NaN bounds or densities (engines without
    uncertainty) give NaN coverage, width and MLPD; scores of another family are NaN.

    Examples
    --------
    >>> y = np.array([0.0, 1.0, 2.0])
    >>> s = score(y, y + 1, y - 2, y + 0.5, np.full(3, -1.0))
    >>> s["rmse"], s["mae"], s["coverage"], s["width"], s["mlpd"]
    (1.0, 1.0, 1.0, 2.5, -1.0)
    >>> from hierfit.model import get_family
    >>> b = score(np.array([1.0, 0.0]), np.array([0.8, 0.4]), np.zeros(2), np.ones(2), np.zeros(2), get_family("bernoulli"))
    >>> round(b["brier"], 3), b["auc"]
    (0.1, 1.0)
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(prediction, dtype=float)
    n = np.ones_like(y) if trials is None else np.asarray(trials, dtype=float)
    expected = n * p if family is not None and family.has_trials else p
    err = y - expected
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    has_bounds = bool(np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)))
    logpd = np.asarray(logpd, dtype=float)
    out = {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "mlpd": float(np.mean(logpd)) if np.all(np.isfinite(logpd)) else np.nan,
        "coverage": float(np.mean((y >= lower) & (y <= upper))) if has_bounds else np.nan,
        "width": float(np.mean(upper - lower)) if has_bounds else np.nan,
        **dict.fromkeys(FAMILY_SCORES, np.nan),
    }
    if is_probability(family) and len(y):
        failures = n - y
        pc = np.clip(p, _P_EPS, 1 - _P_EPS)
        out["log_loss"] = float(-(y @ np.log(pc) + failures @ np.log1p(-pc)) / n.sum())
        out["brier"] = float((y @ (1 - p) ** 2 + failures @ p**2) / n.sum())
        out["auc"] = weighted_auc(p, y, failures)
        bins = calibration_bins(y, p, n)
        out["calibration"] = float(np.abs(bins["observed"] - bins["predicted"]) @ bins["weight"] / bins["weight"].sum())
    elif is_count(family) and len(y):
        mu = np.maximum(p, 1e-300)
        out["deviance"] = float(np.mean(2 * (special.xlogy(y, y / mu) - (y - mu))))
    return out


def calibration_bins(y: np.ndarray, p: np.ndarray, trials: np.ndarray | None, n_bins: int = 10) -> pd.DataFrame:
    """Rows binned at the quantiles of the predicted probability ``p``: per bin the
    trial-weighted mean prediction, the observed share of successes, and the trials.

    >>> t = calibration_bins(np.array([0, 1, 1, 1.0]), np.array([0.2, 0.4, 0.6, 0.8]), None, n_bins=2)
    >>> t.round(2).values.tolist()
    [[0.3, 0.5, 2.0], [0.7, 1.0, 2.0]]
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    n = np.ones_like(p) if trials is None else np.asarray(trials, dtype=float)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    weight = np.bincount(which, weights=n)
    keep = weight > 0
    predicted = np.bincount(which, weights=n * p)[keep] / weight[keep]
    observed = np.bincount(which, weights=y)[keep] / weight[keep]
    return pd.DataFrame({"predicted": predicted, "observed": observed, "weight": weight[keep]})


def weighted_auc(score_: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve with ``positives`` and ``negatives`` cases at each score (ties
    count one half): the Mann-Whitney probability that a positive outscores a negative.

    >>> weighted_auc(np.array([0.1, 0.4, 0.4, 0.9]), np.array([0, 1, 0, 1.0]), np.array([1, 0, 1, 0.0]))
    0.875
    """
    pos_total, neg_total = float(np.sum(positives)), float(np.sum(negatives))
    if pos_total <= 0 or neg_total <= 0:
        return np.nan
    values, inverse = np.unique(np.asarray(score_, dtype=float), return_inverse=True)
    pos = np.bincount(inverse, weights=positives, minlength=len(values))
    neg = np.bincount(inverse, weights=negatives, minlength=len(values))
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (pos_total * neg_total))


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
