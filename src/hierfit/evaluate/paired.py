"""Paired comparison of engines over the same cross-validation folds.

Every engine in a comparison is scored on the same folds, so the difference of two engines'
scores *fold by fold* cancels what a fold does to both (a hard held-out group is hard for
every engine). Over ``K`` folds the mean difference has standard error ``sd(d) / sqrt(K)``;
an engine is called ``better`` (or ``worse``) than the reference only when the mean
difference is more than :data:`NOISE_SE` standard errors in that direction, and otherwise
``indistinguishable``. Folds are the unit, not rows: rows of one held-out group share its
effect, so per-row differences would overstate how much is known. With few folds the
standard error is itself rough; the verdict is then usually, and rightly, "indistinguishable".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hierfit.evaluate.metrics import METRICS
from hierfit.exceptions import SpecError

#: standard errors a mean paired difference must exceed before one engine is called better
NOISE_SE = 2.0
#: metrics with a direction (coverage is good near the interval level, not when larger)
PAIRED_METRICS = ("auc", "brier", "calibration", "deviance", "log_loss", "mae", "mlpd", "rmse")
PAIRED_COLUMNS = ["engine", "reference", "metric", "n_folds", "score", "reference_score", "difference", "std_error", "z", "verdict"]


def paired_differences(folds: pd.DataFrame, reference: str, metric: str = "rmse",
                       engines: Sequence[str] | None = None) -> pd.DataFrame:
    """Each engine against ``reference``, fold by fold, on one metric.

    Parameters
    ----------
    folds
        One row per engine and fold with a column per metric (:attr:`Comparison.folds`).
    reference
        The engine every other one is compared with (``"ols"``: no pooling).
    metric
        One of :data:`PAIRED_METRICS`.
    engines
        Engines to compare (default: every engine in ``folds`` but the reference).

    Returns
    -------
    DataFrame
        One row per engine: ``n_folds`` scored by both, the mean fold ``score`` of each,
        ``difference`` (mean of engine minus reference), its ``std_error``, ``z`` (difference
        over its standard error) and ``verdict``: ``better``, ``worse``, ``indistinguishable``,
        ``too few folds`` (one fold with a score from both) or ``not scored`` (none: an engine
        without a predictive distribution has no MLPD, a failed one no folds).

    Examples
    --------
    >>> folds = pd.DataFrame({"engine": ["a"] * 4 + ["b"] * 4, "fold": [0, 1, 2, 3] * 2,
    ...                       "rmse": [1.0, 2.0, 1.5, 1.2, 0.9, 1.9, 1.4, 1.1]})
    >>> row = paired_differences(folds, "a").iloc[0]
    >>> row.engine, round(float(row.difference), 3), bool(row.std_error < 1e-9), row.verdict
    ('b', -0.1, True, 'better')
    """
    if metric not in PAIRED_METRICS:
        raise SpecError(f"'metric' of a paired comparison must be one of: {', '.join(PAIRED_METRICS)}. Got {metric!r}.")
    present = list(dict.fromkeys(folds["engine"]))
    if reference not in present:
        raise SpecError(
            f"The reference engine {reference!r} has no cross-validated folds; engines with folds: "
            f"{', '.join(sorted(present)) or 'none'}. Compare against one of them."
        )
    names = [e for e in (engines if engines is not None else present) if e != reference]
    larger_is_better = METRICS[metric][1]
    ref = folds.loc[folds["engine"] == reference].set_index("fold")[metric]
    rows = []
    for name in names:
        own = folds.loc[folds["engine"] == name].set_index("fold")[metric]
        both = pd.concat([own.rename("own"), ref.rename("ref")], axis=1, join="inner").dropna()
        rows.append(_row(name, reference, metric, both["own"].to_numpy(float), both["ref"].to_numpy(float), larger_is_better))
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _row(name: str, reference: str, metric: str, own: np.ndarray, ref: np.ndarray, larger_is_better: bool) -> dict:
    k = len(own)
    d = own - ref
    diff = float(d.mean()) if k else np.nan
    se = float(d.std(ddof=1) / np.sqrt(k)) if k >= 2 else np.nan
    if k < 2:  # no standard error from one fold
        z, verdict = np.nan, "not scored" if k == 0 else "too few folds"
    else:
        # every fold moved by the same amount (se 0) is a difference beyond noise too
        z = diff / se if se > 0 else (0.0 if diff == 0 else float(np.sign(diff)) * np.inf)
        gain = z if larger_is_better else -z
        verdict = "better" if gain > NOISE_SE else "worse" if gain < -NOISE_SE else "indistinguishable"
    return {
        "engine": name, "reference": reference, "metric": metric, "n_folds": k,
        "score": float(own.mean()) if k else np.nan, "reference_score": float(ref.mean()) if k else np.nan,
        "difference": diff, "std_error": se, "z": z, "verdict": verdict,
    }  # fmt: skip


def describe(row: pd.Series | dict, reference_label: str | None = None, digits: int = 4) -> str:
    """A :func:`paired_differences` row in words, with its standard error: ``better than``,
    ``worse than`` or ``indistinguishable from`` the reference (``reference_label`` names it).

    Examples
    --------
    >>> describe({"engine": "mixed", "reference": "ols", "metric": "rmse", "n_folds": 5, "difference": -0.0006,
    ...           "std_error": 0.0011, "z": -0.55, "verdict": "indistinguishable"}, "no pooling (ols)")
    'indistinguishable from no pooling (ols): RMSE difference -0.0006 ± 0.0011 (SE), paired over 5 folds'
    """
    ref = reference_label or str(row["reference"])
    if row["verdict"] in ("too few folds", "not scored"):
        return f"not compared with {ref} ({row['n_folds']} folds scored by both; a paired comparison needs 2)"
    word = {"better": "better than", "worse": "worse than"}.get(str(row["verdict"]), "indistinguishable from")
    label = METRICS[str(row["metric"])][0]
    return (f"{word} {ref}: {label} difference {row['difference']:+.{digits}f} ± {row['std_error']:.{digits}f} (SE), "
            f"paired over {row['n_folds']} folds")
