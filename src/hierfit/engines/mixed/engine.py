"""Engine ``mixed``: exact mixed models with lme4's results, fast -- gaussian (REML/ML, lmer) and
bernoulli, binomial, poisson and negative-binomial outcomes (Laplace / adaptive quadrature,
glmer; NB2 as glmer.nb / glmmTMB).

The linear core (:mod:`.lmm`) evaluates lme4's profiled criterion from per-group sufficient
statistics gathered in one pass over the data, so each likelihood evaluation costs the same at
5 thousand or 5 million rows. The GLMM core (:mod:`.glmm`) runs penalised IRLS with one pass
over the rows per step and block elimination along the tree of groups. This module maps a
hierfit ``Design`` onto the cores and their solutions onto the result contract
(:mod:`._fits`); prior weights and offsets reach both cores.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from hierfit.design import Design
from hierfit.design.streamed import StreamedDesign
from hierfit.engines.base import LazyDraws, NoUncertainty
from hierfit.engines.options import option
from hierfit.engines.state import LoadContext, StateReader
from hierfit.exceptions import EngineError, SpecError
from hierfit.model import ModelSpec

from ._blocks import term_blocks
from ._fit_diagnostics import glmm_diagnostics, lmm_diagnostics
from ._fits import GlmmFit, MixedFit
from ._glmm_persist import restore_glmm
from ._persist import restore_solution
from ._stream import fit_streamed_lmm
from ._stream_glmm import fit_sharded_glmm, gather_design, glmm_route, row_findings
from .glmm import fit_glmm
from .lmm import RandomBlock, fit_lmm

__all__ = ["FAST_OPTIONS", "OPTIONS", "GlmmFit", "MixedFit", "fit", "likelihood_ratio", "load", "random_blocks"]

#: rows above which a fit shows a progress display by default (on a terminal)
PROGRESS_ROWS = 200_000


@dataclass(frozen=True)
class OPTIONS:
    """Options of the ``mixed`` engine.

    Attributes
    ----------
    reml
        Gaussian outcomes: REML (the default, as lme4) or maximum likelihood (``False``;
        needed to compare models with different population terms by likelihood ratio).
        Other families are fitted by maximum likelihood, as glmer; ``reml=True`` is refused
        for them.
    n_agq
        GLMMs: 1 for the Laplace approximation (glmer's default), more for adaptive
        Gauss-Hermite quadrature with that many nodes (glmer's ``nAGQ``; only for a model
        with a single scalar group-level term, e.g. ``(1 | district)``).
    information
        GLMMs: the weights of the Laplace log-determinant -- ``"expected"`` (Fisher
        information: glmer, glmer.nb) or ``"observed"`` (the Hessian: glmmTMB). They differ
        only for non-canonical links and the negative binomial. ``None``: ``"observed"``
        for ``negative_binomial`` (glmmTMB's nbinom2), ``"expected"`` otherwise.
    n_draws
        Joint draws of (beta, b) used for intervals on totals and predictions.
    maxiter
        Optimiser iteration cap.
    n_starts
        Gaussian outcomes: extra seeded random restarts of the optimiser (the best optimum wins).
    solver
        Gaussian outcomes: how the mixed-model equations are eliminated. ``"blocked"``: nested
        factors as a chain of per-group blocks, crossed ones in one dense block; ``"crossed"``:
        the factor with the most levels block diagonal, its coupling to the others sparse and
        only the rest dense (MixedModels.jl; store x product, user x item); ``"auto"`` picks the
        one with fewer operations per likelihood evaluation. Both give the same fit to rounding.
    seed
        Seed for restarts and draws.
    progress
        Show a live display (elapsed time) while fitting; ``None``: when stderr is a terminal
        and the data have more than 200,000 rows.
    """

    reml: bool | None = None
    n_agq: int = option(1, ge=1, le=25)
    information: Literal["expected", "observed"] | None = None
    n_draws: int = option(1000, ge=10)
    maxiter: int = option(1000, ge=1)
    n_starts: int = option(1, ge=1)
    solver: Literal["auto", "blocked", "crossed"] = "auto"
    seed: int = 0
    progress: bool | None = None


FAST_OPTIONS: dict[str, object] = {"n_draws": 400, "progress": False}


def random_blocks(design: Design) -> list[RandomBlock]:
    """One core block per group-level term, with the nesting hint from the hierarchy."""
    return term_blocks(design, design.group_index, lambda td: td.Z)


def fit(design: Design | StreamedDesign, spec: ModelSpec, options: OPTIONS) -> MixedFit | GlmmFit:
    """Fit by REML/ML (gaussian) or by Laplace / adaptive quadrature (other families).

    A :class:`~hierfit.design.streamed.StreamedDesign` (rows left in a Parquet lake or a Dask
    DataFrame) is fitted from per-group statistics gathered batch by batch (:mod:`._stream`)
    when gaussian; other families gather their model rows in one fold (:mod:`._stream_glmm`)
    and are fitted by the in-memory GLMM core.
    """
    family = spec.family
    if isinstance(design, StreamedDesign):
        if not family.normal_errors:
            # the options are checked on the streamed structure first: a refused option costs no pass
            _check_glmm_options(design, spec, options)
            route = glmm_route(design, options.n_agq, options.information, None)
            with _progress(options.progress, design.n, f"{family.name} GLMM (streamed)"):
                if route == "gather":
                    gathered = gather_design(design)
                else:
                    glmm, streamed = fit_sharded_glmm(design, route, maxiter=options.maxiter, information=options.information)
            if route == "gather":
                fitted = fit(gathered, spec, options)
                fitted.diagnostics[:0] = row_findings(design, gathered)
                return fitted
            return GlmmFit(streamed, glmm, options.n_draws, options.seed,
                           row_findings(design, streamed) + glmm_diagnostics(streamed, glmm))
        _check_options_streamed(options)
        with _progress(options.progress, design.n, "linear mixed model (streamed)"):
            sol = fit_streamed_lmm(design, reml=options.reml is not False, maxiter=options.maxiter,
                                   n_starts=options.n_starts, seed=options.seed, solver=options.solver)
        return MixedFit(design, sol, options.n_draws, options.seed, lmm_diagnostics(design, sol))
    _check_options(design, spec, options)
    what = "linear mixed model" if family.normal_errors else f"{family.name} GLMM"
    with _progress(options.progress, design.n, what):
        if family.normal_errors:
            # an offset is a known part of the mean: the gaussian model of y - offset is the same model
            y = design.y if design.offset is None else design.y - design.offset
            sol = fit_lmm(design.X, y, random_blocks(design), reml=options.reml is not False, weights=design.weights,
                          maxiter=options.maxiter, n_starts=options.n_starts, seed=options.seed, solver=options.solver)
            return MixedFit(design, sol, options.n_draws, options.seed, lmm_diagnostics(design, sol))
        glmm = fit_glmm(design.X, design.y, random_blocks(design), family, trials=design.trials, weights=design.weights,
                        offset=design.offset, n_agq=options.n_agq, information=options.information, maxiter=options.maxiter)
    return GlmmFit(design, glmm, options.n_draws, options.seed, glmm_diagnostics(design, glmm))


def _check_options_streamed(options: OPTIONS) -> None:
    if options.n_agq != 1:
        raise EngineError(
            f"Engine 'mixed': option 'n_agq' ({options.n_agq}) applies to non-gaussian families (quadrature of a "
            "GLMM likelihood); a gaussian model's likelihood is exact. Drop n_agq."
        )


def _check_options(design: Design, spec: ModelSpec, options: OPTIONS) -> None:
    """Refuse options that do not apply to this model, naming what would."""
    family = spec.family
    if family.normal_errors:
        if options.n_agq != 1:
            raise EngineError(
                f"Engine 'mixed': option 'n_agq' ({options.n_agq}) applies to non-gaussian families (quadrature of a "
                "GLMM likelihood); a gaussian model's likelihood is exact. Drop n_agq."
            )
        return
    _check_glmm_options(design, spec, options)


def _check_glmm_options(design: Design | StreamedDesign, spec: ModelSpec, options: OPTIONS) -> None:
    family = spec.family
    if options.solver != "auto":
        raise EngineError(
            f"Engine 'mixed': option 'solver' ({options.solver!r}) applies to gaussian outcomes; a {family.name} "
            "model's penalised IRLS always uses the blocked elimination. Drop solver."
        )
    if options.reml:
        raise EngineError(
            f"Engine 'mixed': REML is defined for gaussian outcomes; a {family.name} model is fitted by maximum "
            "likelihood (Laplace, or n_agq > 1 for quadrature), as glmer. Drop reml=True."
        )
    if options.n_agq > 1:
        scalar = [td for td in design.terms if len(td.coefficients) == 1]
        if len(design.terms) != 1 or not scalar:
            terms = ", ".join(f"{td.level} ({', '.join(td.coefficients)})" for td in design.terms)
            raise EngineError(
                f"Engine 'mixed': n_agq={options.n_agq} (adaptive Gauss-Hermite quadrature) needs exactly one group-level "
                f"term with a single coefficient, as in glmer, e.g. (1 | district); this model has: {terms}. "
                "Use n_agq=1 (Laplace) for it."
            )


@contextlib.contextmanager
def _progress(enabled: bool | None, n_rows: int, what: str) -> Iterator[None]:
    """A live display with the elapsed time while the core fits (it has no iteration count to show)."""
    if enabled is None:
        enabled = n_rows > PROGRESS_ROWS and bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn(f"mixed: fitting a {what} on {n_rows:,} rows"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        bar.add_task("fit", total=None)
        yield


def load(state: StateReader, context: LoadContext) -> MixedFit | GlmmFit:
    """Rebuild a fit: an LMM from its statistics, a GLMM from its saved solution; draws from them and the seed."""
    core = state.get_str("core")
    if core not in ("lmm", "glmm"):
        raise state.fail(f"unknown mixed-model core {core!r}")
    cls: Any = MixedFit if core == "lmm" else GlmmFit
    fit = cls.restore(state, context, uncertainty=NoUncertainty())
    fit.solution = (restore_solution(state.child("lmm")) if core == "lmm"
                    else restore_glmm(state.child("glmm"), context.spec.family))
    fit.n_draws = state.get_int("n_draws")
    rebuilt = fit.layout.flatten(fit.solution.beta, fit.solution.ranef)
    scale = max(1.0, float(np.abs(fit.theta).max(initial=0.0)))
    if rebuilt.shape != fit.theta.shape or not np.allclose(rebuilt, fit.theta, rtol=1e-8, atol=1e-8 * scale):
        raise state.fail("the rebuilt mixed-model solution does not reproduce the saved estimates")
    fit.uncertainty = LazyDraws(fit._joint_draws)
    return fit


def likelihood_ratio(small, big) -> pd.DataFrame:
    """Likelihood-ratio comparison of two nested ``mixed`` fits, like lme4's ``anova()``.

    Gaussian fits must both use ML (``reml=False``), or REML with identical population terms.
    GLMMs (always ML) must share their family, their quadrature (``n_agq``) and their rows.

    Returns
    -------
    DataFrame with rows for each model: ``npar, AIC, BIC, logLik, deviance, Chisq, Df, p_value``.
    For a variance on the boundary the p-value is conservative (lme4's ``anova`` reports the same).
    """
    for f in (small, big):
        if getattr(f, "engine", None) != "mixed":
            raise SpecError(f"Likelihood-ratio tests compare fits of engine 'mixed'; got {getattr(f, 'engine', f)!r}.")
    if small.native().n_params > big.native().n_params:
        small, big = big, small
    a, b = small.native(), big.native()
    _check_comparable(small, big)
    stat = max(0.0, 2.0 * (b.loglik - a.loglik))
    df = b.n_params - a.n_params
    p = float(stats.chi2.sf(stat, df)) if df > 0 else float("nan")
    rows = []
    for name, fit_, s in (("small", small, a), ("big", big, b)):
        rows.append({"model": name, "formula": fit_.spec.text, "npar": s.n_params,
                     "AIC": s.aic, "BIC": s.bic, "logLik": s.loglik, "deviance": -2 * s.loglik})
    out = pd.DataFrame(rows)
    out["Chisq"] = [np.nan, stat]
    out["Df"] = [np.nan, df]
    out["p_value"] = [np.nan, p]
    return out


def _check_comparable(small, big) -> None:
    a, b = small.native(), big.native()
    fam_a, fam_b = small.spec.family, big.spec.family
    if (fam_a.name, fam_a.link.name) != (fam_b.name, fam_b.link.name):
        raise SpecError(f"These fits cannot be compared by likelihood ratio: their families differ ({fam_a} vs {fam_b}).")
    if a.n_obs != b.n_obs:
        raise SpecError(f"These fits cannot be compared by likelihood ratio: they use different rows ({a.n_obs} vs {b.n_obs}).")
    if fam_a.normal_errors:
        if a.reml != b.reml or (a.reml and list(small.fixed_effects().term) != list(big.fixed_effects().term)):
            raise SpecError(
                "These fits cannot be compared by likelihood ratio: refit both with reml=False "
                "(REML likelihoods are comparable only with identical population terms)."
            )
    elif a.n_agq != b.n_agq:
        raise SpecError(
            f"These fits cannot be compared by likelihood ratio: one uses n_agq={a.n_agq}, the other n_agq={b.n_agq} "
            "(different approximations of the likelihood). Refit both with the same n_agq."
        )
