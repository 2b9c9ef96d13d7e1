"""Posterior predictive checks and LOO/WAIC comparison of Bayesian fits.

``ppc(result, data)`` replicates the outcome from posterior draws and returns the draws
with a plot; ``compare_loo({"a": fit_a, "b": fit_b})`` ranks fits by expected log
predictive density (PSIS-LOO or WAIC, through ArviZ).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hierfit.exceptions import EngineError, SpecError


@dataclass(frozen=True, eq=False)
class PPC:
    """Replicated outcomes ``draws`` (n_draws × rows) beside the observed ``observed`` (rows)."""

    observed: np.ndarray
    draws: np.ndarray

    def summary(self) -> pd.DataFrame:
        """Mean, SD and quantiles of the data vs the replications, with posterior predictive p-values."""
        stats: dict[str, Callable[..., Any]] = {
            "mean": np.mean,
            "sd": np.std,
            "q05": lambda a, axis=None: np.quantile(a, 0.05, axis=axis),
            "q95": lambda a, axis=None: np.quantile(a, 0.95, axis=axis),
        }
        rows = []
        for name, f in stats.items():
            obs = float(f(self.observed))
            rep = np.asarray(f(self.draws, axis=1))
            rows.append({"statistic": name, "observed": obs, "replicated_mean": float(rep.mean()), "p_value": float((rep >= obs).mean())})
        return pd.DataFrame(rows)

    def plot(self, ax=None, max_lines: int = 50):
        """Densities of replicated outcomes (thin) over the observed one (thick); returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        lo, hi = np.quantile(np.concatenate([self.observed, self.draws[:max_lines].ravel()]), [0.001, 0.999])
        bins = np.linspace(lo, hi, 60) if lo < hi else 30
        discrete = np.allclose(self.observed, np.round(self.observed))
        if discrete:
            bins = np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.5)
        for rep in self.draws[:max_lines]:
            h, e = np.histogram(rep, bins=bins, density=True)
            ax.step(e[:-1], h, where="post", color="C0", alpha=0.15, lw=0.8)
        h, e = np.histogram(self.observed, bins=bins, density=True)
        ax.step(e[:-1], h, where="post", color="k", lw=2, label="observed")
        ax.plot([], [], color="C0", alpha=0.5, label="replicated")
        ax.set_xlabel("outcome")
        ax.set_ylabel("density")
        ax.legend()
        ax.set_title("posterior predictive check")
        return ax


def ppc(result, data: pd.DataFrame, *, n_draws: int = 100, seed: int = 0) -> PPC:
    """Posterior predictive check: replicate the outcome of ``data`` from posterior draws.

    Parameters
    ----------
    result
        A :class:`hierfit.FitResult` of an engine with draws (``pymc``, ``stan``).
    data
        Rows with the response column (usually the fitting data).
    n_draws
        Number of posterior draws to replicate from (evenly spaced over the chains).

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.engines.bayes import ppc
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=2, rows_per_submarket=15, seed=2)
    >>> fit = hierfit.fit("y ~ x1 + (1 | market)", sim.data, engine="pymc", draws=100, tune=100,
    ...                   chains=2, progressbar=False, checks={"few_groups": "ignore", "ess": "ignore"})
    >>> check = ppc(fit, sim.data, n_draws=20)
    >>> check.draws.shape
    (20, 120)
    """
    engine_fit = result.engine_fit
    draws = getattr(engine_fit, "draws", None)
    if draws is None:
        raise EngineError(f"ppc() needs posterior draws; engine {result.engine!r} has none. Fit with engine='pymc' or 'stan'.")
    design = result.encoding.apply_observed(data)
    pick = np.linspace(0, len(draws) - 1, min(n_draws, len(draws))).round().astype(int)
    fam = result.spec.family
    eta = engine_fit.layout.eta_draws(design, draws[pick], slice(0, design.n))
    sigma = engine_fit.sigma_draws[pick][:, None] if engine_fit.sigma_draws is not None else None
    reps = fam.sample(np.random.default_rng(seed), fam.inverse_link(eta), design.trials, sigma)
    return PPC(observed=np.asarray(design.y, dtype=float), draws=reps)


def compare_loo(results: Mapping[str, object] | Sequence[object], *, ic: str = "loo") -> pd.DataFrame:
    """Rank fits by expected log predictive density (ArviZ ``compare``).

    Parameters
    ----------
    results
        ``{"name": FitResult}`` or a list (named ``model_0, model_1, ...``) of fits of the same
        rows with a stored pointwise log-likelihood (``pymc``/``stan`` fits store it by default
        up to 5e7 draws × rows; otherwise refit with ``log_likelihood=True``).
    ic
        ``"loo"`` (PSIS-LOO) or ``"waic"``.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.engines.bayes import compare_loo
    >>> sim = hierfit.simulate(n_markets=4, n_submarkets=2, rows_per_submarket=15, seed=2)
    >>> kw = dict(engine="pymc", draws=100, tune=100, chains=2, progressbar=False,
    ...           checks={"few_groups": "ignore", "ess": "ignore"})
    >>> table = compare_loo({"intercepts": hierfit.fit("y ~ x1 + (1 | market)", sim.data, **kw),
    ...                      "pooled": hierfit.fit("y ~ x1 + (1 | market:submarket)", sim.data, **kw)})
    >>> sorted(table.index)
    ['intercepts', 'pooled']
    """
    import arviz as az

    if ic not in ("loo", "waic"):
        raise SpecError(f"'ic' must be 'loo' or 'waic'; got {ic!r}.")
    named = dict(results) if isinstance(results, Mapping) else {f"model_{i}": r for i, r in enumerate(results)}
    if len(named) < 2:
        raise SpecError(f"compare_loo() needs at least two fits; got {len(named)}.")
    idatas = {}
    for name, res in named.items():
        idata = res.native() if hasattr(res, "native") else None
        if idata is None or not hasattr(idata, "groups") or "log_likelihood" not in idata.groups():
            raise EngineError(
                f"Fit {name!r} has no pointwise log-likelihood: compare_loo() needs Bayesian fits (engine 'pymc' or "
                "'stan') fitted with log_likelihood=True (the default only up to 5e7 draws x rows)."
            )
        idatas[name] = idata
    sizes = {name: int(i.log_likelihood.sizes["obs"]) for name, i in idatas.items()}
    if len(set(sizes.values())) > 1:
        raise SpecError(f"compare_loo() compares fits of the same rows; the fits have {sizes} rows.")
    return az.compare(idatas, ic=ic)  # type: ignore[arg-type]  # 'ic' was checked above
