"""Engine comparison chart: one small panel per cross-validation metric, a bar per engine
(the score pooled over all held-out rows) with the per-fold scores as dots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hierfit.evaluate.metrics import METRICS, is_count, is_probability
from hierfit.plots._common import check_choice, engine_color, new_figure

DEFAULT_METRICS = ("rmse", "mae", "mlpd", "coverage", "width", "fit_seconds")
#: the panels for a binary or binomial outcome, and for counts
PROBABILITY_METRICS = ("log_loss", "brier", "auc", "calibration", "mlpd", "fit_seconds")
COUNT_METRICS = ("deviance", "rmse", "mlpd", "coverage", "width", "fit_seconds")


def default_metrics(family: Any) -> tuple[str, ...]:
    """The panels for the outcome's family: log loss, Brier, AUC and calibration error for probabilities, the
    Poisson deviance for counts, RMSE and MAE otherwise."""
    return PROBABILITY_METRICS if is_probability(family) else COUNT_METRICS if is_count(family) else DEFAULT_METRICS


class ComparisonDisplay:
    """CV metrics of several engines side by side.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.evaluate import compare
    >>> from hierfit.plots import ComparisonDisplay
    >>> sim = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=20, seed=1)
    >>> comp = compare(sim.formula, sim.data, engines=["ols"], cv="kfold:3", progress=False)
    >>> d = ComparisonDisplay.from_comparison(comp)
    >>> d.metrics, len(d.ax_)
    (['rmse', 'mae', 'mlpd', 'coverage', 'width', 'fit_seconds'], 6)
    """

    def __init__(self, summary: pd.DataFrame, folds: pd.DataFrame, metrics: list[str], *, cv: str, level: float) -> None:
        self.summary = summary
        self.folds = folds
        self.metrics = metrics
        self.cv = cv
        self.level = level

    @classmethod
    def from_comparison(cls, comparison: Any, metrics: Sequence[str] | None = None, *, ax: Any = None) -> ComparisonDisplay:
        """Take the pooled and per-fold scores of a :class:`~hierfit.evaluate.Comparison` and plot them
        (default panels: :func:`default_metrics` of its family)."""
        metrics = list(metrics if metrics is not None else default_metrics(comparison.spec.family))
        for m in metrics:
            check_choice("metrics", m, list(METRICS))
        return cls(comparison.summary(), comparison.folds, metrics, cv=comparison.cv.describe(), level=comparison.level).plot(ax=ax)

    def plot(self, ax: Any = None) -> ComparisonDisplay:
        """Draw one panel per metric (``ax``: a sequence of Axes, one per metric); keep ``ax_`` and
        ``figure_``; return the display."""
        k = len(self.metrics)
        engines = list(self.summary["engine"])
        ncols = min(k, 3)
        nrows = int(np.ceil(k / ncols))
        if ax is None:
            fig = new_figure((4.0 * ncols, max(1.9, 0.42 * len(engines) + 1.3) * nrows))
            axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
        else:
            axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
            fig = axes[0].figure
        y = np.arange(len(engines))
        for a, metric in zip(axes, self.metrics):
            label, larger = METRICS[metric]
            values = self.summary[metric].to_numpy(dtype=float)
            colors = [engine_color(e) for e in engines]
            finite = np.isfinite(values)
            for i, e in enumerate(engines):
                f = self.folds[self.folds["engine"] == e][metric].to_numpy(dtype=float)
                f = f[np.isfinite(f)]
                if len(f):
                    a.hlines(i, f.min(), f.max(), color=colors[i], alpha=0.5, lw=1.2)
                    a.scatter(f, np.full(len(f), i), s=12, color="0.35", alpha=0.8, zorder=3)
                if finite[i]:
                    a.scatter([values[i]], [i], s=90, color=colors[i], edgecolor="0.1", linewidth=0.7, zorder=4)
                else:
                    a.text(0.02, i, "n/a", transform=a.get_yaxis_transform(), va="center", fontsize=8, color="0.4")
            if finite.sum() > 1 and metric != "width":  # the narrowest interval is not best unless it covers
                if metric == "coverage":
                    best = int(np.nanargmin(np.abs(values - self.level)))
                else:
                    best = int(np.nanargmax(values) if larger else np.nanargmin(values))
                a.annotate("best", (values[best], best), xytext=(0, 8), textcoords="offset points", ha="center", fontsize=7, color="0.2")
            a.margins(x=0.15)
            if metric == "coverage":
                a.axvline(self.level, color="black", ls="--", lw=1)
                folds_cov = self.folds["coverage"].to_numpy(dtype=float)
                low = np.nanmin(np.concatenate([values[finite], folds_cov[np.isfinite(folds_cov)], [self.level - 0.1]]))
                a.set_xlim(max(0.0, low - 0.03), 1.005)
            if metric == "fit_seconds" and finite.any() and np.nanmax(values) / max(np.nanmin(values[finite]), 1e-9) > 30:
                a.set_xscale("log")
            a.set_yticks(y, engines, fontsize=9)
            a.set_ylim(len(engines) - 0.5, -0.5)
            if metric == "coverage":
                title = f"{label} (nominal {self.level:.0%})"
            elif metric == "width":
                title = f"{label} (narrow is good if coverage holds)"
            else:
                title = f"{label} ({'higher' if larger else 'lower'} is better)"
            a.set_title(title, fontsize=9)
            a.tick_params(axis="x", labelsize=8)
            a.grid(axis="x", color="0.9")
        for a in axes[k:]:
            a.set_visible(False)
        fig.suptitle(f"cross-validation: {self.cv} (large dots: pooled over held-out rows; small: folds)", fontsize=11)
        self.figure_ = fig
        self.ax_ = axes[:k]
        return self
