"""How much of the variation is national, market, submarket: ICC and Nakagawa's R² per level.

The definitions are those of R's ``performance`` / ``insight`` (Nakagawa, Johnson & Schielzeth
2017; Johnson 2014 for random slopes), so the numbers can be checked against them:

* ``var_fixed``: the variance of the population part ``X beta`` over the fitted rows (``n - 1``
  denominator);
* ``var_random`` of a level: the mean over the fitted rows of ``z_i' Sigma z_i`` (for a random
  intercept, its variance);
* ``var_residual``: gaussian ``sigma^2``; binomial on the latent scale ``pi^2 / 3`` (logit),
  ``1`` (probit), ``pi^2 / 6`` (cloglog);
* ``ICC_adjusted = var_random / (var_random + var_residual)``, ``ICC_conditional =
  var_random / total``, ``R2_marginal = var_fixed / total``, ``R2_conditional = (var_fixed +
  var_random) / total``, each level's ``share`` its variance over ``total``.

Only the fitted rows' moments enter (``Cov(X)`` and each level's ``E[z z']``); they are
gathered when the model is fitted (:class:`DesignMoments`), so a partition needs no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hierfit.exceptions import SpecError

__all__ = ["DesignMoments", "variance_partition"]

#: rows per chunk of the centred covariance of X
_CHUNK = 1 << 16

#: latent-scale variance of the binomial's link distribution (Nakagawa et al. 2017, Table 1)
LATENT_VARIANCE = {"logit": np.pi ** 2 / 3.0, "probit": 1.0, "cloglog": np.pi ** 2 / 6.0}

#: families partitioned on the latent scale -> their link's distribution variance
LATENT_FAMILIES = {"bernoulli": LATENT_VARIANCE, "binomial": LATENT_VARIANCE}


@dataclass(frozen=True)
class DesignMoments:
    """The fitted rows' second moments the partition reads.

    Attributes
    ----------
    x_names : tuple of str
        Population-level columns.
    x_cov : numpy.ndarray
        ``(p, p)`` covariance of those columns over the rows (``n - 1`` denominator).
    levels : tuple of str
        Grouping levels, in the design's order of first appearance.
    coefficients : tuple of tuple of str
        Per level, the coefficients of its terms (together).
    z_second : tuple of numpy.ndarray
        Per level, ``(k, k)`` mean over the rows of ``z_i z_i'``.
    """

    x_names: tuple[str, ...]
    x_cov: np.ndarray
    levels: tuple[str, ...]
    coefficients: tuple[tuple[str, ...], ...]
    z_second: tuple[np.ndarray, ...]

    @classmethod
    def from_design(cls, design: Any) -> DesignMoments:
        """Gather the moments of a fitting design (one pass over its columns)."""
        X = np.asarray(design.X, dtype=float)
        n, p = X.shape
        # centred chunk by chunk: X'X - n mu mu' cancels for large-mean columns, and a centred
        # copy of X would double a large fit's memory
        mean = X.mean(axis=0) if n else np.zeros(p)
        x_cov = np.zeros((p, p))
        for start in range(0, n, _CHUNK):
            c = X[start:start + _CHUNK] - mean
            x_cov += c.T @ c
        x_cov /= max(n - 1, 1)
        levels: list[str] = []
        cols: dict[str, list[np.ndarray]] = {}
        names: dict[str, list[str]] = {}
        for td in design.terms:
            if td.level not in cols:
                levels.append(td.level)
                cols[td.level], names[td.level] = [], []
            cols[td.level].append(np.asarray(td.Z, dtype=float))
            names[td.level].extend(td.coefficients)
        z_second = []
        for lv in levels:
            blocks = cols[lv]  # cross-products term by term: no concatenated copy of Z
            z_second.append(np.block([[a.T @ b for b in blocks] for a in blocks]) / max(n, 1))
        return cls(tuple(design.x_names), x_cov, tuple(levels), tuple(tuple(names[lv]) for lv in levels), tuple(z_second))

    @classmethod
    def from_streamed(cls, design: Any) -> DesignMoments:
        """The same moments from a streamed design's merged column moments (no rows):
        ``Cov(X) = M2 / (n - 1)`` and ``E[z z'] = (M2 + n mean mean') / n`` per level."""
        m, lay = design.column_moments, design.layout
        x = m.select(lay.x)
        x_cov = x.m2 / max(x.n - 1, 1)
        levels: list[str] = []
        index: dict[str, list[int]] = {}
        names: dict[str, list[str]] = {}
        for td, cols in zip(design.terms, lay.terms):
            if td.level not in index:
                levels.append(td.level)
                index[td.level], names[td.level] = [], []
            index[td.level].extend(cols)
            names[td.level].extend(td.coefficients)
        z_second = tuple(m.select(index[lv]).second_moment() for lv in levels)
        return cls(tuple(design.x_names), x_cov, tuple(levels), tuple(tuple(names[lv]) for lv in levels), z_second)

    def to_json(self) -> dict[str, Any]:
        """Plain data for a save."""
        return {"x_names": list(self.x_names), "x_cov": self.x_cov.tolist(), "levels": list(self.levels),
                "coefficients": [list(c) for c in self.coefficients], "z_second": [z.tolist() for z in self.z_second]}

    @classmethod
    def from_json(cls, value: Any) -> DesignMoments:
        """The moments :meth:`to_json` wrote (shapes checked)."""
        x_names = tuple(str(n) for n in value["x_names"])
        x_cov = np.asarray(value["x_cov"], dtype=float).reshape(len(x_names), len(x_names))
        coefficients = tuple(tuple(str(c) for c in cs) for cs in value["coefficients"])
        z_second = tuple(np.asarray(z, dtype=float).reshape(len(c), len(c)) for z, c in zip(value["z_second"], coefficients))
        levels = tuple(str(lv) for lv in value["levels"])
        if not len(levels) == len(coefficients) == len(z_second):
            raise ValueError("levels, coefficients and moments disagree in number")
        return cls(x_names, x_cov, levels, coefficients, z_second)


def _level_covariance(vc: pd.DataFrame, level: str, coefficients: tuple[str, ...]) -> np.ndarray:
    """A level's covariance matrix over ``coefficients`` from a variance-components table."""
    k = len(coefficients)
    cov = np.zeros((k, k))
    index = {c: i for i, c in enumerate(coefficients)}
    for row in vc[vc["level"] == level].itertuples(index=False):
        i = index.get(str(row.term1))
        if i is None:
            continue
        j = i if row.term2 in ("", None) or pd.isna(row.term2) else index.get(str(row.term2))
        if j is None:
            continue
        cov[i, j] = cov[j, i] = float(row.variance)
    return cov


def _residual_variance(family: Any, vc: pd.DataFrame) -> float:
    if family.normal_errors:
        res = vc[vc["level"] == "residual"]
        return float(res["variance"].iloc[0])
    by_link = LATENT_FAMILIES.get(family.name)
    if by_link is not None:
        link = family.link.name
        if link not in by_link:
            raise SpecError(f"variance_partition: no latent-scale variance for the {family.name} {link!r} link; "
                            f"it is defined for {', '.join(sorted(by_link))}.")
        return float(by_link[link])
    raise SpecError(
        f"variance_partition is defined here for gaussian and binomial outcomes; a {family.name} model's latent-scale "
        "residual variance (insight's log1p(1/mu) with mu from a refitted intercept-only model) needs the data, which a "
        "fit does not keep. Report the variance components (fit.variance_components()) instead."
    )


def variance_partition(fit: Any, level: float = 0.9) -> pd.DataFrame:
    """ICC per level, Nakagawa's marginal and conditional R², and each component's share.

    Returns a long table ``quantity, level, estimate, lower, upper``: ``variance`` and
    ``share`` rows for ``population``, every level and ``residual``; ``ICC_adjusted`` and
    ``ICC_conditional`` per level and for ``all`` levels together; ``R2_marginal`` and
    ``R2_conditional``. ``estimate`` is the partition of the fit's estimates (for a Bayesian
    engine, of the posterior means); ``lower``/``upper`` are the ``level`` posterior interval
    of each quantity, computed draw by draw (NaN for engines without posterior draws of their
    variances).

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=20, seed=1)
    >>> fit = hierfit.fit("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)", sim.data, engine="mixed")
    >>> vp = fit.variance_partition()
    >>> shares = vp[vp["quantity"] == "share"]["estimate"]
    >>> bool(abs(shares.sum() - 1.0) < 1e-12)
    True
    """
    moments: DesignMoments | None = getattr(fit, "moments", None)
    if moments is None:
        raise SpecError("variance_partition needs the fitted rows' moments, which this fit does not hold "
                        "(it was saved by an older hierfit); refit the model.")
    fe = fit.fixed_effects().set_index("term")["estimate"]
    beta = np.array([float(fe.get(name, 0.0)) for name in moments.x_names])
    vc = fit.variance_components()
    missing = [lv for lv in moments.levels if not (vc["level"] == lv).any()]
    if missing:
        raise SpecError(
            f"variance_partition: engine {fit.engine!r} estimates no variance for level(s) {', '.join(map(repr, missing))} "
            "(its group effects are not pooled), so their share is undefined. Use a pooling engine such as 'mixed'."
        )
    if fit.spec.family.normal_errors and not (vc["level"] == "residual").any():
        raise SpecError(f"variance_partition: engine {fit.engine!r} reports no residual variance.")
    covs = [_level_covariance(vc, lv, coefs)[None] for lv, coefs in zip(moments.levels, moments.coefficients)]
    var_res = np.array([_residual_variance(fit.spec.family, vc)])
    labels, point = _partition(moments, beta[None], covs, var_res)
    table = pd.DataFrame(labels, columns=["quantity", "level"])
    table["estimate"] = point[:, 0]
    table["lower"] = table["upper"] = np.nan
    draws = _posterior_draws(fit, moments)
    if draws is not None:
        _, values = _partition(moments, *draws)
        table["lower"], table["upper"] = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return table


def _partition(moments: DesignMoments, beta: np.ndarray, covs: list[np.ndarray],
               var_res: np.ndarray) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Every quantity's ``(quantity, level)`` label and its values, one column per draw.

    ``beta`` is ``(S, p)``, ``covs`` one ``(S, k, k)`` covariance per level, ``var_res`` ``(S,)``
    (``S = 1`` for the point estimate).
    """
    var_fixed = np.einsum("sp,pq,sq->s", beta, moments.x_cov, beta)
    var_levels = {lv: np.einsum("skl,lk->s", cov, z) for lv, cov, z in zip(moments.levels, covs, moments.z_second)}
    var_random = sum(var_levels.values(), np.zeros_like(var_fixed))
    var_res = np.broadcast_to(var_res, var_fixed.shape)
    total = var_fixed + var_random + var_res
    parts: list[tuple[str, str, np.ndarray]] = [("variance", "population", var_fixed)]
    parts += [("variance", lv, v) for lv, v in var_levels.items()]
    parts.append(("variance", "residual", var_res))
    parts += [("share", level, value / total) for _, level, value in list(parts)]
    for lv, v in list(var_levels.items()) + [("all", var_random)]:
        parts.append(("ICC_adjusted", lv, v / (var_random + var_res)))
        parts.append(("ICC_conditional", lv, v / total))
    parts.append(("R2_marginal", "", var_fixed / total))
    parts.append(("R2_conditional", "", (var_fixed + var_random) / total))
    return [(q, lv) for q, lv, _ in parts], np.stack([v for _, _, v in parts])


def _posterior_draws(fit: Any, moments: DesignMoments) -> tuple[np.ndarray, list[np.ndarray], np.ndarray] | None:
    """``(beta, per-level covariances, residual variance)`` per posterior draw, for engines
    with draws of their variance components (``covariance_draws``); else ``None``."""
    ef = fit.engine_fit
    hook = getattr(ef, "covariance_draws", None)
    if not callable(hook) or ef.draws is None:
        return None
    term_covs = hook()
    n_draws = len(ef.draws)
    x_index = [list(ef.layout.x_names).index(name) for name in moments.x_names]
    beta = ef.draws[:, x_index]
    covs = []
    for lv, coefs in zip(moments.levels, moments.coefficients):
        cov = np.zeros((n_draws, len(coefs), len(coefs)))
        at = 0  # the level's terms in the design's order, as DesignMoments stacked them
        for term, tc in zip(ef.layout.terms, term_covs):
            if term.level == lv:
                k = len(term.coefficients)
                cov[:, at:at + k, at:at + k] = tc
                at += k
        covs.append(cov)
    family = fit.spec.family
    if family.normal_errors:
        if ef.sigma_draws is None:
            return None
        var_res = np.asarray(ef.sigma_draws, dtype=float) ** 2
    else:
        var_res = np.full(n_draws, _residual_variance(family, fit.variance_components()))
    return beta, covs, var_res
