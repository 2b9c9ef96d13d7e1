"""Engine ``mixed``: exact REML/ML linear mixed models with lme4's results, fast.

The numerical core (:mod:`.lmm`) evaluates lme4's profiled criterion from per-group
sufficient statistics gathered in one pass over the data, so each likelihood evaluation costs
the same at 5 thousand or 5 million rows. This module maps a hierfit ``Design`` onto that core
and its solution onto the result contract:

* fixed effects with lme4's ``vcov`` and Wald intervals;
* variance components as lme4's ``as.data.frame(VarCorr(fit))``;
* group effects are the conditional modes (BLUPs); their intervals, those of totals
  (national + market + submarket) and of predictions come from joint draws of (beta, b) given
  the variance parameters (as ``arm::sim``), so they carry all correlations and the
  uncertainty of the national level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from hierfit.checks import Diagnostic
from hierfit.design import Design, RowDesign
from hierfit.engines.base import FIXED_COLUMNS, GROUP_COLUMNS, Draws, LazyDraws, LinearEngineFit, NoUncertainty, variance_table
from hierfit.engines.mixed._persist import restore_solution, save_solution
from hierfit.engines.mixed.lmm import LmmSolution, RandomBlock, fit_lmm
from hierfit.engines.options import option
from hierfit.engines.state import LoadContext, StateReader, StateWriter
from hierfit.exceptions import SpecError
from hierfit.model import ModelSpec


@dataclass(frozen=True)
class OPTIONS:
    """Options of the ``mixed`` engine.

    Attributes
    ----------
    reml
        REML (default, as lme4) or maximum likelihood (``False``; needed to compare models
        with different population terms by likelihood ratio).
    n_draws
        Joint draws of (beta, b) used for intervals on totals and predictions.
    maxiter
        Optimiser iteration cap.
    n_starts
        Extra seeded random restarts of the optimiser (the best optimum wins).
    seed
        Seed for restarts and draws.
    """

    reml: bool = True
    n_draws: int = option(1000, ge=10)
    maxiter: int = option(1000, ge=1)
    n_starts: int = option(1, ge=1)
    seed: int = 0


FAST_OPTIONS: dict[str, object] = {"n_draws": 400}


def random_blocks(design: Design) -> list[RandomBlock]:
    """One core block per group-level term, with the nesting hint from the hierarchy."""
    first_term_of_level: dict[str, int] = {}
    blocks = []
    for i, td in enumerate(design.terms):
        lv = design.hierarchy.level(td.level)
        parent = None
        if lv.parent is not None and lv.parent in first_term_of_level and lv.parent_index is not None:
            parent = (first_term_of_level[lv.parent], lv.parent_index)
        first_term_of_level.setdefault(td.level, i)
        blocks.append(RandomBlock(design.group_index[td.level], lv.n_groups, td.Z, td.term.correlated, parent))
    return blocks


class MixedFit(LinearEngineFit):
    """Result of the ``mixed`` engine; ``native()`` is the core's :class:`LmmSolution`."""

    def __init__(self, design: Design, solution: LmmSolution, options: OPTIONS, diagnostics: list[Diagnostic]) -> None:
        self.solution = solution
        self.n_draws = options.n_draws
        super().__init__(
            engine="mixed",
            design=design,
            beta=solution.beta,
            b=solution.ranef,
            sigma=solution.sigma,
            variance_table=variance_table(design, solution.covariances, solution.sigma),
            # joint draws of (beta, b) are made on first use: a fit that only needs estimates
            # never pays for them
            uncertainty=LazyDraws(self._joint_draws),
            statistics=_statistics(solution),
            diagnostics=diagnostics,
            seed=options.seed,
        )

    def _joint_draws(self) -> Draws:
        beta, b = self.solution.sample_effects(self.n_draws, np.random.default_rng(self.seed))
        return Draws(self.layout.flatten(beta, b), np.full(self.n_draws, self.solution.sigma))

    def native(self) -> LmmSolution:
        return self.solution

    def native_linear_predictor(self, design: RowDesign) -> np.ndarray:
        """``X beta + Z b`` from the solver's solution (conditional modes; unseen groups add 0)."""
        eta = design.X @ self.solution.beta
        if design.offset is not None:
            eta = eta + design.offset
        for td, b in zip(design.terms, self.solution.ranef):
            idx = design.group_index[td.level]
            known = idx >= 0
            eta = eta + np.where(known, np.einsum("ij,ij->i", td.Z, b[np.where(known, idx, 0)]), 0.0)
        return eta

    def fixed_effects(self, level: float) -> pd.DataFrame:
        """lme4's estimates and standard errors; Wald intervals (``confint(method="Wald")``)."""
        z = stats.norm.ppf(0.5 + level / 2)
        est, se = self.solution.beta, self.solution.se_beta
        return pd.DataFrame(
            {"term": list(self.layout.x_names), "estimate": est, "std_error": se, "lower": est - z * se, "upper": est + z * se}
        )[FIXED_COLUMNS]

    def group_effects(self, level: float) -> pd.DataFrame:
        """Conditional modes; intervals from joint draws of (beta, b) given the variances.

        lme4's ``condVar`` SDs are conditional on beta as well and understate the error of a
        deviation when the national level itself is uncertain (10 markets: 65% coverage for a
        nominal 90%, see benchmarks/RESULTS.md); the joint draws give Henderson's prediction
        error variance instead. lme4's values stay available as ``native().ranef_condsd``.
        National rows use lme4's ``vcov`` (Wald), which the draws reproduce.
        """
        table = super().group_effects(level)
        national = (table["level"] == "national").to_numpy()
        fe = self.fixed_effects(level).set_index("term")
        for col in ("std_error", "lower", "upper"):
            table.loc[national, col] = fe.loc[table.loc[national, "term"], col].to_numpy()
        return table[GROUP_COLUMNS]

    def summary_lines(self) -> list[str]:
        s = self.solution
        crit = f"REML criterion {s.reml_criterion:.4f}" if s.reml else f"deviance {s.deviance:.4f}"
        return [f"{'REML' if s.reml else 'ML'} fit: {crit}; logLik {s.loglik:.4f}; AIC {s.aic:.4f}; BIC {s.bic:.4f}; "
                f"{s.n_evaluations} evaluations; converged: {s.converged}"]

    def save(self, state: StateWriter) -> None:
        """The linear parts and the solution's statistics; the joint draws are regenerated, not saved."""
        self.save_linear(state, uncertainty=False)
        state.put("n_draws", self.n_draws)
        save_solution(self.solution, state.child("lmm"))


def load(state: StateReader, context: LoadContext) -> MixedFit:
    """Rebuild a :class:`MixedFit`: the solution from its statistics, the draws from it and the seed."""
    fit = MixedFit.restore(state, context, uncertainty=NoUncertainty())
    fit.solution = restore_solution(state.child("lmm"))
    fit.n_draws = state.get_int("n_draws")
    rebuilt = fit.layout.flatten(fit.solution.beta, fit.solution.ranef)
    scale = max(1.0, float(np.abs(fit.theta).max(initial=0.0)))
    if rebuilt.shape != fit.theta.shape or not np.allclose(rebuilt, fit.theta, rtol=1e-8, atol=1e-8 * scale):
        raise state.fail("the rebuilt mixed-model solution does not reproduce the saved estimates")
    fit.uncertainty = LazyDraws(fit._joint_draws)
    return fit


def _statistics(sol: LmmSolution) -> dict[str, float]:
    out = {
        "n_obs": float(sol.n_obs),
        "n_params": float(sol.n_params),
        "sigma": sol.sigma,
        "loglik": sol.loglik,
        "aic": sol.aic,
        "bic": sol.bic,
        "n_evaluations": float(sol.n_evaluations),
    }
    if sol.reml_criterion is not None:
        out["reml_criterion"] = float(sol.reml_criterion)
    if sol.deviance is not None:
        out["deviance"] = float(sol.deviance)
    return out


def _diagnostics(design: Design, sol: LmmSolution) -> list[Diagnostic]:
    found = []
    if not sol.converged:
        found.append(
            Diagnostic(
                "convergence",
                f"The optimiser did not converge ({sol.message}). Rescale predictors, simplify the "
                "group-level terms, or retry with n_starts=5 / a larger maxiter.",
            )
        )
    if sol.singular:
        parts = []
        for t, col in sol.singular_terms:
            td = design.terms[t]
            parts.append(f"{td.coefficients[col]!r} at level {td.level!r}")
        found.append(
            Diagnostic(
                "singular",
                "Singular fit: the variance of " + ", ".join(parts) + " is estimated at (or near) zero, "
                "or a correlation at ±1. Simplify the model (drop that varying term, or use '||' to drop "
                "the correlation), or use engine='pymc' whose priors keep variances off the boundary.",
            )
        )
    return found


def fit(design: Design, spec: ModelSpec, options: OPTIONS) -> MixedFit:
    """Fit by REML or ML with the sufficient-statistic core."""
    # an offset is a known part of the mean: the gaussian model of y - offset is the same model
    y = design.y if design.offset is None else design.y - design.offset
    sol = fit_lmm(design.X, y, random_blocks(design), reml=options.reml, maxiter=options.maxiter, n_starts=options.n_starts, seed=options.seed)
    return MixedFit(design, sol, options, _diagnostics(design, sol))


def likelihood_ratio(small, big) -> pd.DataFrame:
    """Likelihood-ratio comparison of two nested ``mixed`` fits, like lme4's ``anova()``.

    Both fits must use ML (``reml=False``), or REML with identical population terms.

    Returns
    -------
    DataFrame with rows for each model: ``npar, AIC, BIC, logLik, deviance, Chisq, Df, p_value``.
    """
    from hierfit.engines.mixed.lmm import likelihood_ratio_test

    for f in (small, big):
        if getattr(f, "engine", None) != "mixed":
            raise SpecError(f"Likelihood-ratio tests compare fits of engine 'mixed'; got {getattr(f, 'engine', f)!r}.")
    a, b = small.native(), big.native()
    if a.n_params > b.n_params:
        a, b = b, a
        small, big = big, small
    if a.reml != b.reml or (a.reml and list(small.fixed_effects().term) != list(big.fixed_effects().term)):
        raise SpecError(
            "These fits cannot be compared by likelihood ratio: refit both with reml=False "
            "(REML likelihoods are comparable only with identical population terms)."
        )
    stat, df, p = likelihood_ratio_test(a, b)
    rows = []
    for name, s in (("small", a), ("big", b)):
        rows.append({"model": name, "formula": (small if name == "small" else big).spec.text, "npar": s.n_params,
                     "AIC": s.aic, "BIC": s.bic, "logLik": s.loglik, "deviance": -2 * s.loglik})
    out = pd.DataFrame(rows)
    out["Chisq"] = [np.nan, stat]
    out["Df"] = [np.nan, df]
    out["p_value"] = [np.nan, p]
    return out
