"""Posterior / predictive check: does data simulated from the fit look like the data?

The panels follow the family, as the checks each outcome needs:

* continuous (gaussian) -- left, the observed outcome's distribution (black) over replicated
  data sets drawn from the fit's predictive distribution (thin lines); right, the probability
  integral transform (PIT), the predictive CDF at each observed value, uniform when the
  predictive distribution is calibrated (a U shape: intervals too narrow; a hump: too wide);
* probabilities (bernoulli, binomial) -- left, a calibration (reliability) curve: rows binned
  by predicted probability, the observed share of successes in each bin with its 95% interval
  against the diagonal; right, how the predicted probabilities spread (sharpness), split by
  outcome for 0/1 data;
* counts (poisson, negative binomial) -- left, a hanging rootogram (Kleiber & Zeileis 2016):
  bars of ``sqrt(observed frequency)`` of each count hang from the curve of
  ``sqrt(expected frequency)``, so a bar ending above or below zero shows too few or too many
  predicted rows with that count (excess zeros, overdispersion); right, the randomised PIT.

Engines without a predictive distribution get observed-against-predicted panels instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hierfit.model import Family
from hierfit.plots._common import engine_color, new_figure

#: the rootogram shows counts 0..MAX_COUNT (the rest of the mass is summed into the last bar's note)
MAX_COUNT = 40
#: rows used for the rootogram's expected frequencies (a seeded subsample of larger data)
ROOTOGRAM_ROWS = 5_000
CALIBRATION_BINS = 10


class PredictiveCheckDisplay:
    """The family's predictive check of one fit (see the module doc for the panels).

    Attributes (besides the inputs): ``kind`` (``"density"``, ``"calibration"`` or
    ``"rootogram"``), ``calibration_`` (per bin: ``predicted``, ``observed``, ``lower``,
    ``upper``, ``weight``) and ``rootogram_`` (per count: ``count``, ``observed``,
    ``expected``), each ``None`` where the panel is not drawn.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.plots import PredictiveCheckDisplay
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="ols")
    >>> d = PredictiveCheckDisplay.from_result(fit, sim.data)
    >>> d.kind, d.method, d.replicates.shape, d.figure_ is not None
    ('density', 't', (30, 240), True)
    >>> counts = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=20, seed=1, family="poisson")
    >>> fit = hierfit.fit(counts.formula, counts.data, engine="mixed", family="poisson")
    >>> d = PredictiveCheckDisplay.from_result(fit, counts.data)
    >>> d.kind, list(d.rootogram_.columns)
    ('rootogram', ['count', 'observed', 'expected'])
    """

    def __init__(self, y: np.ndarray, mean: np.ndarray, replicates: np.ndarray | None, pit: np.ndarray | None, *,
                 engine: str, method: str, family: Family, title: str, trials: np.ndarray | None = None,
                 rootogram: pd.DataFrame | None = None) -> None:
        from hierfit.evaluate.metrics import is_count, is_probability

        self.y = y
        self.mean = mean
        self.replicates = replicates
        self.pit = pit
        self.engine = engine
        self.method = method
        self.family = family
        self.title = title
        self.trials = trials
        self.kind = "calibration" if is_probability(family) else "rootogram" if is_count(family) else "density"
        self.calibration_ = calibration_table(y, mean, trials) if self.kind == "calibration" else None
        self.rootogram_ = rootogram if self.kind == "rootogram" else None

    @classmethod
    def from_result(cls, result: Any, data: pd.DataFrame, n_rep: int = 30, seed: int = 0, title: str = "", *,
                    ax: Any = None) -> PredictiveCheckDisplay:
        """Draw ``n_rep`` replicated data sets for the rows of ``data`` (which need the response), and plot them."""
        from hierfit.evaluate.metrics import is_count
        from hierfit.evaluate.predictive import predictive
        from hierfit.exceptions import DataError

        response = result.spec.response
        if response not in data.columns:
            raise DataError(f"The predictive check compares with the observed {response!r}, which is not in the data; pass the data the model was fitted on.")
        rng = np.random.default_rng(seed)
        rootogram = None
        if is_count(result.spec.family):
            # expected frequencies cost one density per row and count: a seeded subsample of large data
            rows = data if len(data) <= ROOTOGRAM_ROWS else data.sample(ROOTOGRAM_ROWS, random_state=seed)
            rootogram = rootogram_table(predictive(result, rows), rows[response].to_numpy(dtype=float))
        dist = predictive(result, data)
        y = data[response].to_numpy(dtype=float)
        reps = dist.sample(n_rep, rng)
        pit = dist.pit(y, rng)
        return cls(y, dist.mean, reps, pit, engine=result.engine, method=dist.method, family=dist.family, title=title,
                   trials=dist.trials, rootogram=rootogram).plot(ax=ax)

    def plot(self, ax: Any = None) -> PredictiveCheckDisplay:
        """Draw both panels (or only the left one on ``ax``); keep ``ax_`` and ``figure_``;
        return the display."""
        if ax is None:
            fig = new_figure((11.0, 4.2))
            ax1, ax2 = fig.subplots(1, 2)
        else:
            fig, ax1, ax2 = ax.figure, ax, None
        color = engine_color(self.engine)
        if self.kind == "calibration":
            self._plot_calibration(ax1, color)
            if ax2 is not None:
                self._plot_sharpness(ax2, color)
        else:
            if self.kind == "rootogram" and self.rootogram_ is not None:
                self._plot_rootogram(ax1, color)
            else:
                self._plot_replicates(ax1, color)
            if ax2 is not None:
                self._plot_pit(ax2, color)
        for a in (ax1, ax2):
            if a is not None:
                a.tick_params(labelsize=8)
        what = "no predictive distribution" if self.method == "none" else f"{self.method} predictive distribution"
        fig.suptitle(self.title or f"{self.engine}: predictive check ({what})", fontsize=11)
        self.figure_ = fig
        self.ax_ = [a for a in (ax1, ax2) if a is not None]
        return self

    # -- panels -----------------------------------------------------------------------------
    def _plot_replicates(self, ax: Any, color: str) -> None:
        if self.family.discrete:
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
                ax.plot(centers, h, color=color, alpha=0.25, lw=0.8, label="replicated data" if i == 0 else None)
        h, _ = np.histogram(self.y, bins=bins, density=True)
        ax.plot(centers, h, color="black", lw=2, label="observed")
        ax.set_xlabel("outcome", fontsize=9)
        ax.set_ylabel("density" if not self.family.discrete else "share of rows", fontsize=9)
        ax.set_title("observed vs replicated" + ("" if self.replicates is not None else " (no predictive distribution)"), fontsize=10)
        ax.legend(fontsize=8, frameon=False)

    def _plot_pit(self, ax: Any, color: str) -> None:
        if self.pit is None:
            self._plot_observed_vs_predicted(ax, color)
            return
        nb = 20
        ax.hist(self.pit, bins=np.linspace(0, 1, nb + 1), density=True, color=color, alpha=0.7, edgecolor="white")
        ax.axhline(1.0, color="black", ls="--", lw=1, label="calibrated (uniform)")
        # 95% band for a bin's height under uniformity (binomial counts).
        n = len(self.pit)
        p = 1 / nb
        band = 1.96 * np.sqrt(n * p * (1 - p)) / (n * p)
        ax.axhspan(1 - band, 1 + band, color="0.85", zorder=0)
        randomised = " (randomised for counts)" if self.family.discrete else ""
        ax.set_xlabel("PIT: predictive CDF at the observed value" + randomised, fontsize=9)
        ax.set_ylabel("density", fontsize=9)
        ax.set_title("calibration (flat = calibrated)", fontsize=10)
        ax.legend(fontsize=8, frameon=False, loc="lower center")

    def _plot_observed_vs_predicted(self, ax: Any, color: str) -> None:
        ax.scatter(self.mean, self.y, s=5, alpha=0.35, color=color)
        lims = [min(self.mean.min(), self.y.min()), max(self.mean.max(), self.y.max())]
        ax.plot(lims, lims, color="0.4", ls="--", lw=0.8)
        ax.set_xlabel("predicted", fontsize=9)
        ax.set_ylabel("observed", fontsize=9)
        ax.set_title("observed vs predicted", fontsize=10)

    def _plot_calibration(self, ax: Any, color: str) -> None:
        t = self.calibration_
        assert t is not None, "a calibration display has its table"
        ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=0.8, label="calibrated")
        ax.errorbar(t["predicted"], t["observed"], yerr=[t["observed"] - t["lower"], t["upper"] - t["observed"]],
                    fmt="o-", color=color, ms=4, lw=1.2, capsize=2, label="observed share (95% interval)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability (bin mean)", fontsize=9)
        ax.set_ylabel("observed share of successes", fontsize=9)
        ax.set_title("calibration: rows binned by predicted probability", fontsize=10)
        ax.legend(fontsize=8, frameon=False, loc="upper left")

    def _plot_sharpness(self, ax: Any, color: str) -> None:
        bins = np.linspace(0, 1, 26)
        weight = np.ones_like(self.mean) if self.trials is None else self.trials
        if self.trials is None or np.all(self.trials == 1):
            for outcome, style in ((1.0, "-"), (0.0, "--")):
                rows = self.y == outcome
                ax.hist(self.mean[rows], bins=bins, histtype="step", color=color, ls=style, lw=1.5,
                        label=f"rows with outcome {outcome:g}")
            ax.legend(fontsize=8, frameon=False)
        else:
            ax.hist(self.mean, bins=bins, weights=weight, color=color, alpha=0.7, edgecolor="white")
        ax.set_xlabel("predicted probability", fontsize=9)
        ax.set_ylabel("rows" if self.trials is None else "trials", fontsize=9)
        ax.set_title("sharpness: spread of the predicted probabilities", fontsize=10)

    def _plot_rootogram(self, ax: Any, color: str) -> None:
        t = self.rootogram_
        assert t is not None, "a rootogram display has its table"
        top = np.sqrt(t["expected"].to_numpy())
        bar = np.sqrt(t["observed"].to_numpy())
        ax.bar(t["count"], bar, bottom=top - bar, width=0.8, color=color, alpha=0.45, edgecolor="white",
               label="sqrt(observed), hanging")
        ax.plot(t["count"], top, "o-", color="#D55E00", ms=3, lw=1.2, label="sqrt(expected)")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("count", fontsize=9)
        ax.set_ylabel("sqrt(frequency)", fontsize=9)
        ax.set_title("hanging rootogram (bars should end at 0)", fontsize=10)
        ax.legend(fontsize=8, frameon=False)


def calibration_table(y: np.ndarray, mean: np.ndarray, trials: np.ndarray | None,
                      n_bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Rows binned at the quantiles of the predicted probability: per bin the trial-weighted
    mean prediction, the observed share of successes and its 95% Wilson interval.

    >>> import numpy as np
    >>> p = np.linspace(0.05, 0.95, 200)
    >>> y = (np.random.default_rng(0).random(200) < p).astype(float)
    >>> t = calibration_table(y, p, None, n_bins=4)
    >>> list(t.columns), len(t), bool((t.lower <= t.observed).all() and (t.observed <= t.upper).all())
    (['predicted', 'observed', 'lower', 'upper', 'weight'], 4, True)
    """
    from hierfit.evaluate.metrics import calibration_bins

    table = calibration_bins(y, mean, trials, n_bins)
    bounds = [_wilson(share, total) for share, total in zip(table["observed"], table["weight"])]
    table.insert(2, "lower", [lo for lo, _ in bounds])
    table.insert(3, "upper", [hi for _, hi in bounds])
    return table


def _wilson(share: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (good near 0 and 1, unlike the Wald one)."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def rootogram_table(dist: Any, y: np.ndarray, max_count: int = MAX_COUNT) -> pd.DataFrame | None:
    """Observed and expected number of rows with each count ``0..K`` (``K`` the largest observed
    count, at most ``max_count``); ``None`` when the fit has no predictive distribution.

    ``expected`` sums each row's predictive probability of the count, so over all counts it
    sums to the number of rows (less the mass above ``K``).
    """
    top = int(min(max(np.max(y), 1), max_count))
    counts = np.arange(top + 1)
    expected = dist.expected_frequencies(counts)
    if expected is None:
        return None
    observed = np.array([(y == k).sum() for k in counts], dtype=float)
    return pd.DataFrame({"count": counts, "observed": observed, "expected": expected})
