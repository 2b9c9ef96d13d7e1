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
* ``plugin`` -- no uncertainty but a family with no dispersion (bernoulli, poisson): the
  outcome distribution at the point prediction;
* ``none`` -- nothing to score densities with; log densities are NaN.

Engines whose fit is not a :class:`~hierfit.engines.base.LinearEngineFit` may offer draws by
defining ``predictive_draws(design, n_draws) -> (mu_draws, sigma_draws or None)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

from hierfit.engines.base import LinearEngineFit
from hierfit.model import get_family

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
        Outcome family name.
    mean
        Point prediction on the response scale (as ``FitResult.predict``).
    scale, df
        Per-row scale and degrees of freedom (``t``/``normal``/``interval``).
    mu_draws, sigma_draws
        ``(n_draws, n)`` response-scale means and ``(n_draws,)`` residual SDs (``draws``).
    """

    method: str
    family: str
    mean: np.ndarray
    scale: np.ndarray | None = None
    df: float = np.inf
    mu_draws: np.ndarray | None = None
    sigma_draws: np.ndarray | None = None

    @property
    def available(self) -> bool:
        return self.method != "none"

    def logpdf(self, y: np.ndarray) -> np.ndarray:
        """Log predictive density (mass for discrete families) of each observed ``y``."""
        y = np.asarray(y, dtype=float)
        if self.method == "none":
            return np.full(len(y), np.nan)
        if self.method == "draws":
            lp = outcome_logpdf(self.family, y[None, :], self.mu_draws, self.sigma_draws)
            return special.logsumexp(lp, axis=0) - np.log(lp.shape[0])
        if self.method == "plugin":
            return outcome_logpdf(self.family, y[None, :], self.mean[None, :], None)[0]
        return stats.t.logpdf(y, self.df, loc=self.mean, scale=self.scale)

    def cdf(self, y: np.ndarray) -> np.ndarray | None:
        """Predictive CDF at ``y`` (probability integral transform); gaussian family only."""
        y = np.asarray(y, dtype=float)
        if self.family != "gaussian" or self.method in ("none", "plugin"):
            return None
        if self.method == "draws":
            sd = self.sigma_draws if self.sigma_draws is not None else np.ones(len(self.mu_draws))
            return stats.norm.cdf((y[None, :] - self.mu_draws) / sd[:, None]).mean(axis=0)
        return stats.t.cdf(y, self.df, loc=self.mean, scale=self.scale)

    def sample(self, n_rep: int, rng: np.random.Generator) -> np.ndarray | None:
        """``(n_rep, n)`` replicated outcomes, or ``None`` without a distribution."""
        n = len(self.mean)
        if self.method == "none":
            return None
        if self.method == "draws":
            pick = rng.integers(0, len(self.mu_draws), n_rep)
            mu = self.mu_draws[pick]
            sd = None if self.sigma_draws is None else self.sigma_draws[pick]
            return _sample_outcome(self.family, mu, sd, rng)
        if self.method == "plugin":
            return _sample_outcome(self.family, np.broadcast_to(self.mean, (n_rep, n)), None, rng)
        noise = rng.standard_t(self.df, (n_rep, n)) if np.isfinite(self.df) else rng.standard_normal((n_rep, n))
        return self.mean + noise * self.scale


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
    family = get_family(result.spec.family)
    design = result.encoding.apply(data)
    eta = ef.contributions(design).to_numpy().sum(axis=1)
    mean = family.inverse_link(eta)
    hook = getattr(ef, "predictive_draws", None)
    if callable(hook):
        mu_draws, sigma_draws = hook(design, MAX_DRAWS)
        return Predictive("draws", family.name, mean, mu_draws=np.asarray(mu_draws), sigma_draws=sigma_draws)
    if isinstance(ef, LinearEngineFit):
        R = ef.layout_row_matrix(design)
        # Engines with a nonlinear part add columns beyond the linear predictor; carry them
        # as a fixed offset so draws of the linear part still centre on the prediction.
        offset = eta - np.asarray(R @ ef.theta).ravel()
        new_sd = ef.new_group_sd(design)
        if _plain_draws(ef, offset):
            keep = _thin(len(ef.draws))
            eta_d = ef.layout.eta_draws(design, ef.draws[keep], slice(None)) + offset
            if new_sd.any():
                # rows of unseen groups: each draw also draws the new group's own effect, as the
                # intervals do (its mean is 0, its variance the fitted variance components)
                eta_d = eta_d + np.random.default_rng(ef.seed).standard_normal(eta_d.shape) * new_sd
            sigma_d = None
            if family.name == "gaussian":
                sigma_d = ef.sigma_draws[keep] if ef.sigma_draws is not None else np.full(len(keep), ef.sigma or 1.0)
            return Predictive("draws", family.name, mean, mu_draws=family.inverse_link(eta_d), sigma_draws=sigma_d)
        if ef.gaussian is not None and family.name == "gaussian" and ef.sigma is not None:
            se = ef.gaussian.std_errors(R)
            df = float(ef.gaussian.df)
            scale = np.sqrt(se**2 + new_sd**2 + ef.sigma**2)
            return Predictive("t" if np.isfinite(df) else "normal", family.name, mean, scale=scale, df=df)
    if family.name == "gaussian":
        bounds = ef.interval(design, "prediction", 0.9)
        if bounds is not None and np.all(np.isfinite(bounds[0])) and np.all(np.isfinite(bounds[1])):
            scale = np.maximum((bounds[1] - bounds[0]) / (2 * _Z90), 1e-12)
            return Predictive("interval", family.name, mean, scale=scale, df=np.inf)
        return Predictive("none", family.name, mean)
    return Predictive("plugin", family.name, mean)


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


def _thin(n: int) -> np.ndarray:
    """Evenly spaced draw indices, at most :data:`MAX_DRAWS` (densities converge well before)."""
    return np.unique(np.linspace(0, n - 1, min(n, MAX_DRAWS)).round().astype(int))


def outcome_logpdf(family: str, y: np.ndarray, mu: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
    """Log density of outcomes ``y`` at means ``mu`` (draws × rows); ``sigma`` one per draw (gaussian).

    Examples
    --------
    >>> import numpy as np
    >>> outcome_logpdf("bernoulli", np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]), None).round(4)
    array([[-0.6931, -0.6931]])
    """
    if family == "gaussian":
        sd = np.ones(mu.shape[0]) if sigma is None else np.asarray(sigma)
        return stats.norm.logpdf(y, loc=mu, scale=sd[:, None])
    if family == "bernoulli":
        p = np.clip(mu, 1e-12, 1 - 1e-12)
        return np.where(y > 0.5, np.log(p), np.log1p(-p))
    return stats.poisson.logpmf(y, np.maximum(mu, 1e-12))


def _sample_outcome(family: str, mu: np.ndarray, sd: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if family == "gaussian":
        s = np.ones(mu.shape[0]) if sd is None else np.asarray(sd)
        return mu + rng.standard_normal(mu.shape) * s[:, None]
    if family == "bernoulli":
        return (rng.random(mu.shape) < mu).astype(float)
    return rng.poisson(np.maximum(mu, 0)).astype(float)
