"""The ``mixed`` engine's results: a linear mixed model (:class:`MixedFit`) or a GLMM (:class:`GlmmFit`).

Both report, through the result contract, what lme4 reports -- fixed effects with Wald
intervals from ``vcov``, variance components as ``as.data.frame(VarCorr(fit))``, conditional
modes -- and take the intervals of group effects, totals (national + market + submarket) and
predictions from joint draws of (beta, b) given the variance parameters (as ``arm::sim``), so
they carry all correlations and the uncertainty of the national level. For a GLMM the draws
come from the Gaussian approximation at the mode (the penalised-IRLS system's curvature) and
are mapped through the inverse link row by row.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import stats

from hierfit.checks import Diagnostic
from hierfit.design import Design, RowDesign
from hierfit.design.streamed import StreamedDesign
from hierfit.engines.base import FIXED_COLUMNS, GROUP_COLUMNS, Draws, LazyDraws, LinearEngineFit, variance_table
from hierfit.engines.state import StateWriter

from ._crossed import CrossedSystem
from ._glmm_persist import save_glmm
from ._persist import save_solution
from .glmm import GlmmSolution
from .lmm import LmmSolution


class _ModeFit(LinearEngineFit):
    """What LMM and GLMM fits share: conditional modes, Wald fixed effects, lazy joint draws.

    ``solution`` is the core's object (:class:`LmmSolution` or :class:`GlmmSolution`); the
    subclass says which dispersion each draw carries.
    """

    solution: Any
    n_draws: int

    @abstractmethod
    def _dispersion(self) -> float | None:
        """The dispersion each draw carries (gaussian sigma, negative-binomial size, or None)."""

    def _joint_draws(self) -> Draws:
        beta, b = self.solution.sample_effects(self.n_draws, np.random.default_rng(self.seed))
        disp = self._dispersion()
        return Draws(self.layout.flatten(beta, b), None if disp is None else np.full(self.n_draws, disp))

    def native(self) -> Any:
        return self.solution

    def native_linear_predictor(self, design: RowDesign) -> np.ndarray:
        """``X beta + offset + Z b`` from the solver's solution (conditional modes; unseen groups add 0)."""
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


class MixedFit(_ModeFit):
    """A linear mixed model; ``native()`` is the core's :class:`LmmSolution`."""

    def __init__(self, design: Design | StreamedDesign, solution: LmmSolution, n_draws: int, seed: int,
                 diagnostics: list[Diagnostic]) -> None:
        self.solution = solution
        self.n_draws = n_draws
        # the layout and the variance table read only the design's structure (names, terms,
        # tree), which a streamed design has as well; the shared code is typed for Design
        structure = cast(Design, design)
        super().__init__(
            engine="mixed",
            design=structure,
            beta=solution.beta,
            b=solution.ranef,
            sigma=solution.sigma,
            variance_table=variance_table(structure, solution.covariances, solution.sigma),
            # joint draws of (beta, b) are made on first use: a fit that only needs estimates
            # never pays for them
            uncertainty=LazyDraws(self._joint_draws),
            statistics=lmm_statistics(solution),
            diagnostics=diagnostics,
            seed=seed,
        )

    def _dispersion(self) -> float | None:
        return float(self.solution.sigma)

    def summary_lines(self) -> list[str]:
        s = self.solution
        crit = f"REML criterion {s.reml_criterion:.4f}" if s.reml else f"deviance {s.deviance:.4f}"
        lines = [f"{'REML' if s.reml else 'ML'} fit: {crit}; logLik {s.loglik:.4f}; AIC {s.aic:.4f}; BIC {s.bic:.4f}; "
                 f"{s.n_evaluations} evaluations; converged: {s.converged}"]
        if isinstance(s._system, CrossedSystem):
            plan, names = s._system.plan, [t.level for t in self.layout.terms]
            first = names[plan.factors[plan.chain[0]].blocks[0]]
            rest = sorted({names[plan.factors[f].blocks[0]] for f in plan.root})
            lines.append(f"crossed elimination: {first!r} block diagonal, its coupling to {', '.join(map(repr, rest))} sparse, "
                         f"those {s._system.q_root} columns one dense block")
        return lines

    def save(self, state: StateWriter) -> None:
        """The linear parts and the solution's statistics; the joint draws are regenerated, not saved."""
        self.save_linear(state, uncertainty=False)
        state.put("core", "lmm")
        state.put("n_draws", self.n_draws)
        save_solution(self.solution, state.child("lmm"))


class GlmmFit(_ModeFit):
    """A generalized linear mixed model (Laplace or adaptive quadrature); ``native()`` is the
    core's :class:`GlmmSolution`."""

    def __init__(self, design: Design | StreamedDesign, solution: GlmmSolution, n_draws: int, seed: int,
                 diagnostics: list[Diagnostic]) -> None:
        self.solution = solution
        self.n_draws = n_draws
        family = design.spec.family
        structure = cast(Design, design)  # as MixedFit: only the design's structure is read
        super().__init__(
            engine="mixed",
            design=structure,
            beta=solution.beta,
            b=solution.ranef,
            sigma=solution.nb_theta,
            variance_table=variance_table(structure, solution.covariances, solution.nb_theta, family.dispersion),
            uncertainty=LazyDraws(self._joint_draws),
            statistics=glmm_statistics(solution),
            diagnostics=diagnostics,
            seed=seed,
        )

    def _dispersion(self) -> float | None:
        return None if self.solution.nb_theta is None else float(self.solution.nb_theta)

    def summary_lines(self) -> list[str]:
        s = self.solution
        method = "Laplace" if s.n_agq == 1 else f"adaptive Gauss-Hermite quadrature ({s.n_agq} nodes)"
        size = f"; negative-binomial size theta {s.nb_theta:.4g}" if s.nb_theta is not None else ""
        return [f"ML fit by {method}, {s.information} information: logLik {s.loglik:.4f}; AIC {s.aic:.4f}; BIC {s.bic:.4f}; "
                f"deviance {s.deviance:.4f}; Pearson dispersion ratio {s.diagnostics.dispersion_ratio:.3f}{size}; "
                f"{s.n_evaluations} evaluations; converged: {s.converged}"]

    def save(self, state: StateWriter) -> None:
        """The linear parts and the solution (its numbers and its system at the modes); draws are regenerated."""
        self.save_linear(state, uncertainty=False)
        state.put("core", "glmm")
        state.put("n_draws", self.n_draws)
        save_glmm(self.solution, state.child("glmm"))


def lmm_statistics(sol: LmmSolution) -> dict[str, float]:
    """Fit statistics of a linear mixed model (lme4's names where it has them)."""
    out = {
        "n_obs": float(sol.n_obs),
        "n_params": float(sol.n_params),
        "sigma": sol.sigma,
        "loglik": sol.loglik,
        "aic": sol.aic,
        "bic": sol.bic,
        "n_evaluations": float(sol.n_evaluations),
    }
    out = {k: float(v) for k, v in out.items()}
    if sol.reml_criterion is not None:
        out["reml_criterion"] = float(sol.reml_criterion)
    if sol.deviance is not None:
        out["deviance"] = float(sol.deviance)
    return out


def glmm_statistics(sol: GlmmSolution) -> dict[str, float]:
    """Fit statistics of a GLMM: glmer's logLik, AIC, BIC, deviance; the Pearson dispersion."""
    out = {
        "n_obs": float(sol.n_obs),
        "n_params": float(sol.n_params),
        "loglik": sol.loglik,
        "aic": sol.aic,
        "bic": sol.bic,
        "deviance": sol.deviance,
        "n_agq": float(sol.n_agq),
        "pearson_chi2": sol.diagnostics.pearson_chi2,
        "dispersion_ratio": sol.diagnostics.dispersion_ratio,
        "n_evaluations": float(sol.n_evaluations),
    }
    out = {k: float(v) for k, v in out.items()}  # plain floats (numpy scalars print as np.float64(...))
    if sol.nb_theta is not None:
        out["nb_theta"] = float(sol.nb_theta)
    return out
