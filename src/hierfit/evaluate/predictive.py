"""The predictive distribution of a fit at new rows: densities, CDFs and replicates.

Which distribution depends on what the engine knows (its ``Capabilities.uncertainty``):

* ``draws`` -- posterior or ensemble draws of the linear predictor (and of ``sigma``): the
  predictive density is the mixture over draws, ``mean_d p(y | mu_d, sigma_d)`` (at least
  20 draws, one ``sigma`` each, and no nonlinear part; otherwise ``interval`` below);
* ``t`` / ``normal`` -- an exact Gaussian sampling distribution of the coefficients (``ols``):
  a new outcome is ``mu_hat + e`` with variance ``se(mu_hat)^2 + sigma^2``, Student-t with the
  residual degrees of freedom (exact for ordinary least squares under normal errors);
* ``interval`` -- the engine's own 90% prediction interval: a normal matched to it (engines
  without draws or Gaussian coefficients, and ensembles with a nonlinear part);
* ``draws`` also for a GLM with a Gaussian sampling distribution of its coefficients (``ols``
  and ``mixed`` fits of non-gaussian families without draws): linear-predictor draws
  ``eta_d ~ N(eta, se(eta)^2)`` row by row (a row's density or replicate needs only its own
  marginal), at the point dispersion;
* ``plugin`` -- no uncertainty: the outcome distribution at the point prediction (and the
  engine's point dispersion, e.g. a negative binomial's ``theta``);
* ``none`` -- nothing to score densities with; log densities are NaN.

Engines whose fit is not a :class:`~hierfit.engines.base.LinearEngineFit` may offer draws by
defining ``predictive_draws(design, n_draws) -> (mu_draws, sigma_draws or None)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

from hierfit.engines.base import LinearEngineFit, thin_draws
from hierfit.model import Family

MAX_DRAWS = 400
MIN_DRAWS = 20  # fewer draws (a handful of ensemble members) make a lumpy mixture density
_Z90 = float(stats.norm.ppf(0.95))


@dataclass(frozen=True, eq=False)
class Predictive:
    """Predictive distribution of the outcome at ``n`` rows.

    Attributes
    ----------
    method
        ``draws``, ``t``, ``normal``, ``interval``, ``plugin`` or ``none`` (see the module doc).
    family
        The outcome family row.
    mean
        Point prediction on the response scale (as ``FitResult.predict``).
    scale, df
        Per-row scale and degrees of freedom (``t``/``normal``/``interval``).
    mu_draws, sigma_draws
        ``(n_draws, n)`` response-scale means and ``(n_draws,)`` dispersions (``draws``).
    trials
        ``(n,)`` trials per row for binomial outcomes (else ``None``: one).
    dispersion
        The point dispersion of a ``plugin`` distribution (``None``: the family has none).
    """

    method: str
    family: Family
    mean: np.ndarray
    scale: np.ndarray | None = None
    df: float = np.inf
    mu_draws: np.ndarray | None = None
    sigma_draws: np.ndarray | None = None
    trials: np.ndarray | None = None
    dispersion: float | None = None

    @property
    def available(self) -> bool:
        return self.method != "none"

    @property
    def _means(self) -> np.ndarray:
        assert self.mu_draws is not None, "a 'draws' predictive carries its draws"
        return self.mu_draws

    @property
    def _scale(self) -> np.ndarray:
        assert self.scale is not None, "a 't'/'normal'/'interval' predictive carries its scale"
        return self.scale

    def logpdf(self, y: np.ndarray) -> np.ndarray:
        """Log predictive density (mass for discrete families) of each observed ``y``."""
        y = np.asarray(y, dtype=float)
        if self.method == "none":
            return np.full(len(y), np.nan)
        if self.method == "draws":
            lp = self.family.logpdf(y[None, :], self._means, self.trials, _per_draw(self.sigma_draws))
            return special.logsumexp(lp, axis=0) - np.log(lp.shape[0])
        if self.method == "plugin":
            return self.family.logpdf(y, self.mean, self.trials, self.dispersion)
        return stats.t.logpdf(y, self.df, loc=self.mean, scale=self._scale)

    def cdf(self, y: np.ndarray) -> np.ndarray | None:
        """Predictive CDF ``P(Y <= y)`` at each row's ``y`` (``None`` without a distribution)."""
        y = np.asarray(y, dtype=float)
        if self.method == "none":
            return None
        if self.family.discrete:
            if self.method == "draws":
                return self.family.cdf(y[None, :], self._means, self.trials, _per_draw(self.sigma_draws)).mean(axis=0)
            if self.method == "plugin":
                return self.family.cdf(y, self.mean, self.trials, self.dispersion)
            return None
        if self.method == "plugin":
            return None
        if self.method == "draws":
            sd = self.sigma_draws if self.sigma_draws is not None else np.ones(len(self._means))
            return stats.norm.cdf((y[None, :] - self._means) / sd[:, None]).mean(axis=0)
        return stats.t.cdf(y, self.df, loc=self.mean, scale=self._scale)

    def pit(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Probability integral transform of the observed ``y``: uniform on (0, 1) when the
        predictive distribution is calibrated. For a discrete outcome the randomised PIT
        ``F(y - 1) + V (F(y) - F(y - 1))``, ``V`` uniform (Czado, Gneiting & Held 2009), which is
        uniform too, where ``F(y)`` alone would pile up at the atoms."""
        upper = self.cdf(y)
        if upper is None or not self.family.discrete:
            return upper
        lower = self.cdf(np.asarray(y, dtype=float) - 1.0)
        assert lower is not None, "a discrete distribution with a CDF at y has one at y - 1"
        return lower + rng.random(len(upper)) * (upper - lower)

    def expected_frequencies(self, values: np.ndarray) -> np.ndarray | None:
        """``sum_i P(Y_i = k)`` for each ``k`` in ``values``: the expected number of rows with
        outcome ``k`` (a rootogram's curve); discrete outcomes with a distribution only."""
        if not self.family.discrete or self.method not in ("draws", "plugin"):
            return None
        n = len(self.mean)
        return np.array([np.exp(self.logpdf(np.full(n, float(k)))).sum() for k in values])

    def sample(self, n_rep: int, rng: np.random.Generator) -> np.ndarray | None:
        """``(n_rep, n)`` replicated outcomes, or ``None`` without a distribution."""
        n = len(self.mean)
        if self.method == "none":
            return None
        if self.method == "draws":
            pick = rng.integers(0, len(self._means), n_rep)
            mu = self._means[pick]
            disp = None if self.sigma_draws is None else self.sigma_draws[pick]
            return self.family.sample(rng, mu, self.trials, _per_draw(disp))
        if self.method == "plugin":
            return self.family.sample(rng, np.broadcast_to(self.mean, (n_rep, n)), self.trials, self.dispersion)
        noise = rng.standard_t(self.df, (n_rep, n)) if np.isfinite(self.df) else rng.standard_normal((n_rep, n))
        return self.mean + noise * self._scale


def predictive(result, data: pd.DataFrame) -> Predictive:
    """The predictive distribution of ``result`` (a FitResult) at the rows of ``data``.

    Groups not seen in fitting fall back to their deepest known ancestor, as in ``predict``.

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=3, rows_per_submarket=20, seed=1)
    >>> fit = hierfit.fit("y ~ x1 + (1 | market/submarket)", sim.data, engine="ols")
    >>> pred = predictive(fit, sim.data)
    >>> pred.method, bool(np.all(np.isfinite(pred.logpdf(sim.data["y"]))))
    ('t', True)
    """
    ef = result.engine_fit
    family = result.spec.family
    # rows with their outcome carry their binomial trials (cbind(y, n - y) needs y to know n)
    observed = result.spec.response in data.columns
    design = result.encoding.apply_observed(data) if observed else result.encoding.apply(data)
    eta = ef.contributions(design).to_numpy().sum(axis=1)
    mean = family.inverse_link(eta)
    hook = getattr(ef, "predictive_draws", None)
    if callable(hook):
        mu_draws, sigma_draws = hook(design, MAX_DRAWS)
        return Predictive("draws", family, mean, mu_draws=np.asarray(mu_draws), sigma_draws=sigma_draws, trials=design.trials)
    if isinstance(ef, LinearEngineFit):
        R = ef.layout_row_matrix(design)
        # Engines with a nonlinear part add columns beyond the linear predictor; carry them
        # as a fixed offset so draws of the linear part still centre on the prediction. (The
        # model's own offset is in the draws already: eta_draws adds it.)
        linear = np.asarray(R @ ef.theta).ravel() + (0.0 if design.offset is None else design.offset)
        offset = eta - linear
        new_sd = ef.new_group_sd(design)
        draws = ef.draws
        if draws is not None and _plain_draws(ef, offset):
            keep = thin_draws(len(draws), MAX_DRAWS)  # densities converge well before
            eta_d = ef.layout.eta_draws(design, draws[keep], slice(None)) + offset
            if new_sd.any():
                # rows of unseen groups: each draw also draws the new group's own effect, as the
                # intervals do (its mean is 0, its variance the fitted variance components)
                eta_d = eta_d + np.random.default_rng(ef.seed).standard_normal(eta_d.shape) * new_sd
            sigma_d = None
            if family.has_dispersion:
                sigma_d = ef.sigma_draws[keep] if ef.sigma_draws is not None else np.full(len(keep), ef.sigma or 1.0)
            return Predictive("draws", family, mean, mu_draws=family.inverse_link(eta_d), sigma_draws=sigma_d,
                              trials=design.trials)
        if ef.gaussian is not None and family.normal_errors and ef.sigma is not None:
            se = ef.gaussian.std_errors(R)
            df = float(ef.gaussian.df)
            scale = np.sqrt(se**2 + new_sd**2 + ef.sigma**2)
            return Predictive("t" if np.isfinite(df) else "normal", family, mean, scale=scale, df=df)
        disp = point_dispersion(ef, family)
        if ef.gaussian is not None and not family.normal_errors and (disp is not None or not family.has_dispersion):
            # the sampling distribution of a GLM's linear predictor, row by row (at most ~2e7 values)
            se = np.sqrt(ef.gaussian.std_errors(R) ** 2 + new_sd**2)
            n_draws = int(min(MAX_DRAWS, max(MIN_DRAWS, 20_000_000 // max(design.n, 1))))
            eta_d = eta + se * np.random.default_rng(ef.seed).standard_normal((n_draws, design.n))
            sigma_d = None if disp is None else np.full(n_draws, disp)
            return Predictive("draws", family, mean, mu_draws=family.inverse_link(eta_d), sigma_draws=sigma_d,
                              trials=design.trials)
    if family.normal_errors:
        bounds = ef.interval(design, "prediction", 0.9)
        if bounds is not None and np.all(np.isfinite(bounds[0])) and np.all(np.isfinite(bounds[1])):
            scale = np.maximum((bounds[1] - bounds[0]) / (2 * _Z90), 1e-12)
            return Predictive("interval", family, mean, scale=scale, df=np.inf)
        return Predictive("none", family, mean)
    disp = point_dispersion(ef, family)
    if family.has_dispersion and disp is None:
        return Predictive("none", family, mean)  # the plug-in needs a dispersion the engine did not give
    return Predictive("plugin", family, mean, trials=design.trials, dispersion=disp)


def point_dispersion(ef, family: Family) -> float | None:
    """The engine's point estimate of the family's dispersion (``None`` if it has none or the
    engine gave none): its ``sigma`` attribute, else the variance table's dispersion row."""
    if not family.has_dispersion:
        return None
    sigma = getattr(ef, "sigma", None)
    if sigma is not None:
        return float(sigma)
    table = ef.variance_components()
    rows = table[table["level"] == "dispersion"]
    return float(rows["sd_or_corr"].iloc[0]) if len(rows) else None


def _plain_draws(ef: LinearEngineFit, offset: np.ndarray) -> bool:
    """Whether the draws alone describe the predictive distribution: enough of them, one
    ``sigma`` per draw, and no nonlinear part varying across them (engines with such structure,
    e.g. ensembles whose members each carry a network, are scored through their own interval
    machinery instead, or define ``predictive_draws``)."""
    if ef.draws is None or len(ef.draws) < MIN_DRAWS:
        return False
    if ef.sigma_draws is not None and len(ef.sigma_draws) != len(ef.draws):
        return False
    return bool(np.allclose(offset, 0.0, atol=1e-9))


def _per_draw(dispersion: np.ndarray | None) -> np.ndarray | None:
    """One dispersion per draw as a column, to broadcast over ``(n_draws, n)`` means."""
    return None if dispersion is None else np.asarray(dispersion, dtype=float)[:, None]
