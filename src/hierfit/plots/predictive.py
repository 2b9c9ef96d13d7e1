"""Posterior / predictive check: does data simulated from the fit look like the data?

Left: the observed outcome's distribution (black) over replicated data sets drawn from the
fit's predictive distribution (thin lines). Right: the probability integral transform (PIT),
the predictive CDF at each observed value, which is uniform when the predictive distribution
is calibrated (a U shape: intervals too narrow; a hump: too wide); for families or engines
without a predictive CDF, observed against predicted values instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hierfit.model import Family
from hierfit.plots._common import engine_color, new_figure


class PredictiveCheckDisplay:
    """Replicated vs observed outcomes and the PIT histogram of one fit.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.plots import PredictiveCheckDisplay
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="ols")
    >>> d = PredictiveCheckDisplay.from_result(fit, sim.data)
    >>> d.method, d.replicates.shape, d.figure_ is not None
    ('t', (30, 240), True)
    """

    def __init__(self, y: np.ndarray, mean: np.ndarray, replicates: np.ndarray | None, pit: np.ndarray | None, *, engine: str, method: str, family: Family, title: str) -> None:
        self.y = y
        self.mean = mean
        self.replicates = replicates
        self.pit = pit
        self.engine = engine
        self.method = method
        self.family = family
        self.title = title

    @classmethod
    def from_result(cls, result: Any, data: pd.DataFrame, n_rep: int = 30, seed: int = 0, title: str = "", *,
                    ax: Any = None) -> PredictiveCheckDisplay:
        """Draw ``n_rep`` replicated data sets for the rows of ``data`` (which need the response), and plot them."""
        from hierfit.evaluate.predictive import predictive
        from hierfit.exceptions import DataError

        response = result.spec.response
        if response not in data.columns:
            raise DataError(f"The predictive check compares with the observed {response!r}, which is not in the data; pass the data the model was fitted on.")
        dist = predictive(result, data)
        y = data[response].to_numpy(dtype=float)
        reps = dist.sample(n_rep, np.random.default_rng(seed))
        pit = dist.cdf(y)
        return cls(y, dist.mean, reps, pit, engine=result.engine, method=dist.method, family=dist.family, title=title).plot(ax=ax)

    def plot(self, ax: Any = None) -> PredictiveCheckDisplay:
        """Draw both panels (or only the replicated-vs-observed panel on ``ax``); keep ``ax_`` and
        ``figure_``; return the display."""
        if ax is None:
            fig = new_figure((11.0, 4.2))
            ax1, ax2 = fig.subplots(1, 2)
        else:
            fig, ax1, ax2 = ax.figure, ax, None
        color = engine_color(self.engine)
        discrete = self.family.discrete
        if discrete:
            top = int(max(np.max(self.y), np.max(self.replicates) if self.replicates is not None else 0))
            bins = np.arange(-0.5, min(top, 60) + 1.5)
        else:
            lo, hi = np.percentile(self.y, [0.5, 99.5])
            pad = 0.15 * (hi - lo)
            bins = np.linspace(lo - pad, hi + pad, 40)
        centers = (bins[:-1] + bins[1:]) / 2
        if self.replicates is not None:
            for i, rep in enumerate(self.replicates):
                h, _ = np.histogram(rep, bins=bins, density=True)
                ax1.plot(centers, h, color=color, alpha=0.25, lw=0.8, label="replicated data" if i == 0 else None)
        h, _ = np.histogram(self.y, bins=bins, density=True)
        ax1.plot(centers, h, color="black", lw=2, label="observed")
        ax1.set_xlabel("outcome", fontsize=9)
        ax1.set_ylabel("density" if not discrete else "share of rows", fontsize=9)
        ax1.set_title("observed vs replicated" + ("" if self.replicates is not None else " (no predictive distribution)"), fontsize=10)
        ax1.legend(fontsize=8, frameon=False)
        if ax2 is not None:
            if self.pit is not None:
                nb = 20
                ax2.hist(self.pit, bins=np.linspace(0, 1, nb + 1), density=True, color=color, alpha=0.7, edgecolor="white")
                ax2.axhline(1.0, color="black", ls="--", lw=1, label="calibrated (uniform)")
                # 95% band for a bin's height under uniformity (binomial counts).
                n = len(self.pit)
                p = 1 / nb
                band = 1.96 * np.sqrt(n * p * (1 - p)) / (n * p)
                ax2.axhspan(1 - band, 1 + band, color="0.85", zorder=0)
                ax2.set_xlabel("PIT: predictive CDF at the observed value", fontsize=9)
                ax2.set_ylabel("density", fontsize=9)
                ax2.set_title("calibration (flat = calibrated)", fontsize=10)
                ax2.legend(fontsize=8, frameon=False, loc="lower center")
            else:
                ax2.scatter(self.mean, self.y, s=5, alpha=0.35, color=color)
                lims = [min(self.mean.min(), self.y.min()), max(self.mean.max(), self.y.max())]
                ax2.plot(lims, lims, color="0.4", ls="--", lw=0.8)
                ax2.set_xlabel("predicted", fontsize=9)
                ax2.set_ylabel("observed", fontsize=9)
                ax2.set_title("observed vs predicted", fontsize=10)
        for a in (ax1, ax2):
            if a is not None:
                a.tick_params(labelsize=8)
        what = "no predictive distribution" if self.method == "none" else f"{self.method} predictive distribution"
        fig.suptitle(self.title or f"{self.engine}: predictive check ({what})", fontsize=11)
        self.figure_ = fig
        self.ax_ = [a for a in (ax1, ax2) if a is not None]
        return self
