"""Posterior draws -> InferenceData and the result contract, shared by ``pymc`` and ``stan``.

Both engines hand over the same arrays (the dispersion, ``Λ_t`` per term, and either sampled
coefficients or what the marginal model needs to draw them), so the two produce identical
variable names: ``beta[coef]``, ``r_<term>[group, coef]``, ``sd_<term>[coef]``,
``cor_<term>[pair]`` (each distinct correlation of a correlated term, e.g. ``Intercept:x1``),
and the family's dispersion (``Family.dispersion``): ``sigma`` (gaussian) or ``theta`` (the
negative-binomial size, ``Var = mu + mu^2 / theta``).

The dispersion is reported as the ``mixed`` engine reports it: a ``residual`` row of the
variance components for sigma (posterior mean), a ``dispersion`` / ``theta`` row and the
statistic ``nb_theta`` for the NB size -- its posterior *median*: the default prior on
``1 / sqrt(theta)`` has positive density at 0 (the Poisson limit), so ``theta``'s posterior
mean need not exist (draws near the Poisson limit are astronomically large).

The pointwise log-likelihood (LOO/WAIC) and the posterior predictive are computed from the
draws for every fitting row -- also when the sampler saw aggregated cells (:mod:`.aggregate`) --
with lme4's prior weights: row ``i``'s log-likelihood times ``w_i`` (gaussian: the density of
``N(mu, sigma^2 / w_i)``; 0 for rows of weight 0, which carry none). Replicated outcomes of
weighted gaussian rows have variance ``sigma^2 / w_i`` (``sigma^2`` where ``w_i = 0``); the
weights of the other families have no generative meaning and are not used there.
Predictions are means per trial (a probability for the binomial families, as ``mixed`` and
``ols``) and use the offset of the rows predicted; prediction intervals of binomial rows
that carry trials bound the count of successes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from hierfit.design import Design, RowDesign, StreamedDesign
from hierfit.engines.base import VARIANCE_COLUMNS, Draws, LinearEngineFit, NoUncertainty, PosteriorDraws
from hierfit.engines.bayes.diagnostics import sampler_diagnostics
from hierfit.engines.bayes.marginal import MarginalData, conditional_draws
from hierfit.engines.bayes.structure import BayesStructure
from hierfit.engines.bayes.tree_marginal import TreeMarginalData
from hierfit.engines.layout import ParameterLayout
from hierfit.engines.state import LoadContext, StateReader, StateWriter
from hierfit.exceptions import PersistenceError, TrainingRowsUnavailableError
from hierfit.model import Family

#: above this many draws × rows the pointwise log-likelihood is skipped unless asked for
LOG_LIK_LIMIT = 50_000_000
POSTERIOR_FILE = "posterior.nc"
STAN_FILE = "model.stan"


class BayesFit(LinearEngineFit):
    """Posterior of a Bayesian engine: contract tables from the draws, InferenceData as ``native()``.

    ``lambda_draws`` are each term's ``Λ = diag(sd) L`` per draw (new groups' effects are drawn
    from them); ``new_groups`` is ``"sample"`` or ``"parent"`` (see :meth:`new_group_sd`).
    """

    def __init__(self, *, idata: Any, info: dict, prior_lines: list[str], new_groups: str,
                 lambda_draws: list[np.ndarray], draw_variables: tuple[str, ...], **linear: Any) -> None:
        super().__init__(**linear)
        self.idata = idata
        self.info = info
        self.prior_lines = prior_lines
        self.new_groups = new_groups
        self.lambda_draws = lambda_draws
        # the posterior variables holding beta and each term's effects, in the layout's order:
        # a saved fit reads its draws back from the InferenceData rather than storing them twice
        self.draw_variables = draw_variables

    @property
    def stan_code(self) -> str | None:
        """The generated Stan program (``stan`` engine), else ``None``."""
        code = self.info.get("stan_code")
        return None if code is None else str(code)

    def native_linear_predictor(self, design: RowDesign) -> np.ndarray:
        """The posterior mean of the linear predictor, averaged over the draws row by row."""
        assert self.draws is not None
        return self.layout.eta_draws(design, self.draws, slice(None)).mean(axis=0)

    def covariance_draws(self) -> list[np.ndarray]:
        """Per group-level term, ``(n_draws, k, k)`` posterior draws of its covariance ``Λ Λ'``
        (in the layout's term order; the variance partition's posterior intervals read them)."""
        return [lam @ np.swapaxes(lam, 1, 2) for lam in self.lambda_draws]

    def native(self) -> Any:
        """The ArviZ InferenceData (posterior, sample_stats, observed_data, log_likelihood, ...)."""
        return self.idata

    def summary_lines(self) -> list[str]:
        info = self.info
        lines = [
            (f"sampling: {info.get('sampler')} NUTS, likelihood '{info.get('likelihood')}'"
             + (f" ({info['marginal_algebra']} algebra)" if "marginal_algebra" in info else "") + ", "
             f"{info.get('chains')} chains x {info.get('draws')} draws, {info.get('sampling_seconds', float('nan')):.1f} s"),
        ]
        if "aggregated_cells" in info:
            lines.append(f"likelihood evaluated on {info['aggregated_cells']} cells of rows sharing covariates, groups, offset "
                         f"and weight ({info['aggregated_rows']} rows; exact)")
        theta = self.sigma_draws if self.family.dispersion == "theta" else None
        if theta is not None:
            lo, mid, hi = np.quantile(theta, [0.05, 0.5, 0.95])
            lines.append(f"negative-binomial size theta (Var = mu + mu^2/theta): posterior median {mid:.4g}, "
                         f"90% interval {lo:.4g} to {hi:.4g}")
        if info.get("streamed_from"):
            lines.append(f"fitted from statistics gathered in one pass over {info['streamed_from']}; no pointwise "
                         "log-likelihood (LOO/WAIC need every row in memory)")
        elif not info.get("log_likelihood"):
            lines.append("pointwise log-likelihood not stored (refit with log_likelihood=True for LOO/WAIC)")
        return lines + self.prior_lines

    # persistence: the InferenceData as netCDF (the draws are stored there, once), the Stan
    # program as text, the rest as data
    def save(self, state: StateWriter) -> None:
        self.save_linear(state, uncertainty=False)
        info = {k: v for k, v in self.info.items() if k != "stan_code"}
        state.put("info", info)
        if self.stan_code is not None:
            state.put_text(STAN_FILE, self.stan_code)
        state.put("prior_lines", list(self.prior_lines))
        state.put("new_groups", self.new_groups)
        state.put_arrays("lambda_draws", self.lambda_draws)
        state.put("draw_variables", list(self.draw_variables))
        state.put("has_dispersion", self.sigma_draws is not None)
        self.idata.to_netcdf(str(state.native_path(POSTERIOR_FILE)), engine="h5netcdf")

    @classmethod
    def load_state(cls, state: StateReader, context: LoadContext) -> BayesFit:
        """Rebuild a fit from :meth:`save`'s state; the draws come from the netCDF posterior."""
        import arviz as az

        fit = cls.restore(state, context, uncertainty=NoUncertainty())
        try:
            idata = az.from_netcdf(io.BytesIO(state.get_bytes(POSTERIOR_FILE)), engine="h5netcdf")
            for group in idata.groups():
                getattr(idata, group).load()  # into memory: nothing refers to the bytes afterwards
        except (OSError, ValueError, KeyError) as exc:
            raise PersistenceError(f"{state.files.where(POSTERIOR_FILE)} cannot be read as InferenceData ({exc}). Refit and save again.") from None
        names = state.get_str_list("draw_variables")
        posterior = idata.posterior
        disp_name = str(fit.family.dispersion) if state.get_bool("has_dispersion") else None
        missing = [v for v in names + ([disp_name] if disp_name else []) if v not in posterior]
        if missing:
            raise state.fail(f"the posterior in {POSTERIOR_FILE} has no variables {missing}")
        n_draws = posterior.sizes["chain"] * posterior.sizes["draw"]
        flat = np.concatenate([np.asarray(posterior[v].values, dtype=float).reshape(n_draws, -1) for v in names], axis=1)
        if flat.shape[1] != fit.layout.size or not np.allclose(flat.mean(axis=0), fit.theta, rtol=1e-10, atol=1e-12):
            raise state.fail(f"the posterior draws in {POSTERIOR_FILE} do not match the saved estimates")
        sigma = np.asarray(posterior[disp_name].values, dtype=float).reshape(-1) if disp_name else None
        fit.uncertainty = PosteriorDraws(Draws(flat, sigma))
        fit.idata = idata
        fit.info = state.get_dict("info")
        if state.files.has(STAN_FILE):
            fit.info["stan_code"] = state.get_text(STAN_FILE)
        fit.prior_lines = state.get_str_list("prior_lines")
        fit.new_groups = state.get_str("new_groups")
        fit.lambda_draws = state.get_arrays("lambda_draws", ndim=3)
        fit.draw_variables = tuple(names)
        if len(fit.lambda_draws) != len(fit.layout.terms) or any(len(lam) != n_draws for lam in fit.lambda_draws):
            raise state.fail("the saved group-level scales do not match the draws")
        return fit

    # unseen groups: "sample" draws each one's effect from the group distribution of every
    # posterior draw (the Bayesian predictive); "parent" gives the parent's interval alone.
    def new_group_sd(self, design: RowDesign) -> np.ndarray:
        if self.new_groups == "parent":
            return np.zeros(design.n)
        return super().new_group_sd(design)

    def _draw_interval(self, design: RowDesign, kind: str, alpha: float, family: Family,
                       scale: str = "response") -> tuple[np.ndarray, np.ndarray]:
        unseen = any((design.group_index[t.level] < 0).any() for t in design.terms)
        draws = self.draws
        if self.new_groups != "sample" or not unseen or draws is None:
            return super()._draw_interval(design, kind, alpha, family, scale)
        rng = np.random.default_rng(self.seed + 1)
        lower, upper = np.empty(design.n), np.empty(design.n)
        chunk = max(1, 2_000_000 // max(len(draws), 1))
        for start in range(0, design.n, chunk):
            rows = slice(start, min(start + chunk, design.n))
            eta = self.layout.eta_draws(design, draws, rows)
            for td, lam in zip(design.terms, self.lambda_draws):
                new = np.flatnonzero(design.group_index[td.level][rows] < 0)
                if new.size:
                    # one fresh effect per posterior draw and row: b = Λ_s ε (rows' intervals are marginal)
                    eps = rng.standard_normal((len(lam), new.size, lam.shape[1]))
                    b_new = np.einsum("sjk,snk->snj", lam, eps)
                    eta[:, new] += np.einsum("snj,nj->sn", b_new, td.Z[rows][new])
            if scale == "link":
                lower[rows], upper[rows] = np.quantile(eta, [alpha, 1 - alpha], axis=0)
                continue
            mu = family.inverse_link(eta)
            if kind == "prediction":
                disp = None if self.sigma_draws is None else self.sigma_draws[:, None]
                mu = family.sample(rng, mu, None if design.trials is None else design.trials[rows], disp)
            lower[rows], upper[rows] = np.quantile(mu, [alpha, 1 - alpha], axis=0)
        return lower, upper


def sd_cor(lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SDs (S, k) and correlation matrices (S, k, k) from ``Λ = diag(sd) L`` draws."""
    cov = lam @ np.swapaxes(lam, 1, 2)
    sd = np.sqrt(np.einsum("sjj->sj", cov))
    cor = cov / (sd[:, :, None] * sd[:, None, :])
    return sd, cor


def _posterior_dataset(design: Design, structure: BayesStructure, flat: np.ndarray, arrays: dict, shape: tuple[int, int]):
    import xarray as xr

    chains, draws = shape
    layout = ParameterLayout.from_design(design)
    beta, bs = layout.unflatten(flat)
    coords: dict = {"chain": np.arange(chains), "draw": np.arange(draws), "coef": list(structure.x_names)}
    data: dict[str, tuple[tuple[str, ...], np.ndarray]] = {"beta": (("chain", "draw", "coef"), beta.reshape(chains, draws, -1))}
    for t, b, lam in zip(structure.terms, bs, arrays["lambdas"]):
        coords[f"{t.name}_group"] = list(design.hierarchy.level(t.level).groups)
        coords[f"{t.name}_coef"] = list(t.coefficients)
        data[f"r_{t.name}"] = (("chain", "draw", f"{t.name}_group", f"{t.name}_coef"), b.reshape(chains, draws, t.n_groups, t.k))
        sd, cor = sd_cor(lam)
        data[f"sd_{t.name}"] = (("chain", "draw", f"{t.name}_coef"), sd.reshape(chains, draws, t.k))
        if t.correlated:
            # the distinct correlations only: the unit diagonal (and the mirrored half) are
            # constants that break ArviZ's R-hat and KDE (NaN rows, OverflowError in plot_trace)
            i, j = np.tril_indices(t.k, -1)
            coords[f"{t.name}_pair"] = [f"{t.coefficients[b]}:{t.coefficients[a]}" for a, b in zip(i, j)]
            data[f"cor_{t.name}"] = (("chain", "draw", f"{t.name}_pair"), cor[:, i, j].reshape(chains, draws, len(i)))
    if arrays.get("dispersion") is not None:
        data[str(structure.family.dispersion)] = (("chain", "draw"), arrays["dispersion"].reshape(chains, draws))
    return xr.Dataset(data, coords=coords)


def _pointwise(design: Design, layout: ParameterLayout, flat: np.ndarray, disp: np.ndarray | None, family: Family,
               shape: tuple[int, int], rng: np.random.Generator | None = None) -> np.ndarray:
    """Pointwise log-likelihood draws (prior weights applied), or replicated outcomes when ``rng`` is given."""
    out = np.empty((len(flat), design.n))
    d = None if disp is None else np.asarray(disp)[:, None]
    w = design.weights
    chunk = max(1, 5_000_000 // max(len(flat), 1))
    for start in range(0, design.n, chunk):
        rows = slice(start, min(start + chunk, design.n))
        mu = family.inverse_link(layout.eta_draws(design, flat, rows))
        trials = None if design.trials is None else design.trials[rows]
        d_rows = d
        if w is not None and family.normal_errors and d is not None:
            # lme4's gaussian weights: residual SD sigma / sqrt(w) (sigma where w = 0)
            wr = w[rows]
            d_rows = d / np.sqrt(np.where(wr > 0, wr, 1.0))
        if rng is not None:
            out[:, rows] = family.sample(rng, mu, trials, d_rows)
            continue
        ll = family.logpdf(design.y[rows], mu, trials, d_rows)
        if w is not None:
            wr = w[rows]
            ll = np.where(wr > 0, ll, 0.0) if family.normal_errors else ll * wr
        out[:, rows] = ll
    return out.reshape(*shape, design.n)


def dispersion_estimate(family: Family, draws: np.ndarray | None) -> float | None:
    """The dispersion's point estimate: sigma's posterior mean, theta's posterior median (see the module docstring)."""
    if draws is None:
        return None
    return float(np.median(draws)) if family.dispersion == "theta" else float(np.mean(draws))


def variance_table(structure: BayesStructure, lambdas: list[np.ndarray], disp: np.ndarray | None) -> pd.DataFrame:
    """Posterior means of SDs, correlations and covariances (lme4's VarCorr schema), and the
    dispersion's row (``residual`` sigma, or ``dispersion`` theta as the ``mixed`` engine)."""
    rows = []
    for t, lam in zip(structure.terms, lambdas):
        sd, cor = sd_cor(lam)
        for j, c in enumerate(t.coefficients):
            rows.append({"level": t.level, "term1": c, "term2": "", "variance": float((sd[:, j] ** 2).mean()), "sd_or_corr": float(sd[:, j].mean())})
        if t.correlated:
            for i in range(t.k):
                for j in range(i + 1, t.k):
                    cov = sd[:, i] * sd[:, j] * cor[:, i, j]
                    rows.append({"level": t.level, "term1": t.coefficients[i], "term2": t.coefficients[j], "variance": float(cov.mean()), "sd_or_corr": float(cor[:, i, j].mean())})
    if disp is not None and structure.family.dispersion == "sigma":
        rows.append({"level": "residual", "term1": "", "term2": "", "variance": float((disp**2).mean()), "sd_or_corr": float(disp.mean())})
    elif disp is not None:
        theta = dispersion_estimate(structure.family, disp)
        rows.append({"level": "dispersion", "term1": str(structure.family.dispersion), "term2": "", "variance": theta,
                     "sd_or_corr": theta})
    return pd.DataFrame(rows, columns=VARIANCE_COLUMNS)


def assemble_fit(
    *,
    engine: str,
    design: Design,
    structure: BayesStructure,
    md: MarginalData | TreeMarginalData | None,
    arrays: dict,
    sample_stats,
    shape: tuple[int, int],
    seed: int,
    new_groups: str,
    log_likelihood: bool | None,
    posterior_predictive: bool,
    info: dict,
    max_treedepth: int = 10,
) -> BayesFit:
    """Turn an engine's posterior arrays into a :class:`BayesFit` with its InferenceData.

    ``arrays`` holds ``dispersion`` (S,: sigma or theta) or None, ``lambdas`` (list of (S, k, k)), and either
    ``beta_S`` (marginal model: effects are drawn here from their exact conditional posterior)
    or ``beta`` (S, p) and ``b`` (list of (S, g, k)).
    """
    import arviz as az
    import xarray as xr

    rng = np.random.default_rng([seed, 20260511])
    layout = ParameterLayout.from_design(design)
    sigma = arrays.get("dispersion")
    if "beta_S" in arrays:
        assert md is not None and sigma is not None, "the marginal model carries its data and sigma"
        flat = conditional_draws(md, structure, sigma, arrays["lambdas"], arrays["beta_S"], rng)
    else:
        flat = layout.flatten(arrays["beta"], arrays["b"])
    posterior = _posterior_dataset(design, structure, flat, arrays, shape)
    groups = {"posterior": posterior, "sample_stats": sample_stats}
    # a streamed design has no rows: nothing per row is stored (the engines refuse asking for it)
    rows = not isinstance(design, StreamedDesign)
    if isinstance(design, StreamedDesign):
        if log_likelihood or posterior_predictive:
            raise TrainingRowsUnavailableError(f"The rows of {design.source.description} were streamed: the pointwise "
                                               "log-likelihood and the posterior predictive need every row. Drop those options.")
    else:
        groups["observed_data"] = xr.Dataset({"y": (("obs",), design.y)})
    store_ll = rows and (log_likelihood if log_likelihood is not None else len(flat) * design.n <= LOG_LIK_LIMIT)
    if store_ll:
        ll = _pointwise(design, layout, flat, sigma, structure.family, shape)
        groups["log_likelihood"] = xr.Dataset({"y": (("chain", "draw", "obs"), ll)})
    if posterior_predictive:
        yrep = _pointwise(design, layout, flat, sigma, structure.family, shape, rng=rng)
        groups["posterior_predictive"] = xr.Dataset({"y": (("chain", "draw", "obs"), yrep)})
    idata = az.InferenceData(**groups)
    diagnostics = sampler_diagnostics(idata, structure, max_treedepth=max_treedepth)
    mean = flat.mean(axis=0)
    beta, b = layout.unflatten(mean)
    table = variance_table(structure, arrays["lambdas"], sigma)
    n_draws = len(flat)
    stats_out = {"n_obs": float(design.n), "n_draws": float(n_draws), "sampling_seconds": float(info.get("sampling_seconds", np.nan))}
    if "compile_seconds" in info:
        stats_out["compile_seconds"] = float(info["compile_seconds"])
    point = dispersion_estimate(structure.family, sigma)
    if point is not None:
        stats_out["sigma" if structure.family.dispersion == "sigma" else "nb_theta"] = point
    for key in ("aggregated_rows", "aggregated_cells"):
        if key in info:
            stats_out[key] = float(info[key])
    return BayesFit(
        idata=idata,
        info={**info, "chains": shape[0], "draws": shape[1], "log_likelihood": bool(store_ll)},
        prior_lines=structure.priors.lines(structure.x_names, structure.term_labels()),
        new_groups=new_groups,
        lambda_draws=[np.asarray(lam) for lam in arrays["lambdas"]],
        draw_variables=("beta", *(f"r_{t.name}" for t in structure.terms)),
        engine=engine,
        design=design,
        beta=beta,
        b=b,
        sigma=point,
        variance_table=table,
        uncertainty=PosteriorDraws(Draws(flat, sigma)),
        statistics=stats_out,
        diagnostics=diagnostics,
        seed=seed,
    )
