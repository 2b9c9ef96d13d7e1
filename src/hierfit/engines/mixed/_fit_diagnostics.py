"""The core's findings, as named checks whose messages say what to do next.

The LMM and GLMM cores report convergence, singular fits and (GLMM) separation,
overdispersion as data; here they become :class:`~hierfit.checks.Diagnostic`
rows named after :data:`hierfit.checks.CHECKS`, whose severities the user sets.
"""

from __future__ import annotations

from hierfit.checks import Diagnostic
from hierfit.design import Design
from hierfit.design.streamed import StreamedDesign

from ._glmm_diagnostics import SeparationFlag
from .glmm import GlmmSolution
from .lmm import LmmSolution

#: at most this many group or row names in one message
_SHOWN = 5
#: largest count / NB size below which the size is taken to have run off to infinity
POISSON_LIMIT = 1e-3


def lmm_diagnostics(design: Design | StreamedDesign, sol: LmmSolution) -> list[Diagnostic]:
    """Convergence and singular fits of a linear mixed model."""
    found = []
    if not sol.converged:
        found.append(Diagnostic(
            "convergence",
            f"The optimiser did not converge ({sol.message}). Rescale predictors, simplify the "
            "group-level terms, or retry with n_starts=5 / a larger maxiter.",
        ))
    if sol.singular:
        found.append(_singular(design, sol.singular_terms))
    return found


def glmm_diagnostics(design: Design | StreamedDesign, sol: GlmmSolution) -> list[Diagnostic]:
    """Convergence, singular fits, separation and overdispersion of a GLMM."""
    d = sol.diagnostics
    found = []
    if _at_poisson_limit(design, sol):
        # theta -> infinity has no finite optimum, so the optimiser (and PIRLS at a huge theta)
        # report non-convergence; the cause, and the fix, is the missing overdispersion
        found.append(Diagnostic(
            "convergence",
            f"The negative-binomial size theta ran off to {sol.nb_theta:.3g}: these counts show no overdispersion "
            "(their variance is their mean), so theta has no finite estimate and the fit is the Poisson limit. "
            "Refit with family='poisson'.",
        ))
    elif not d.pirls_converged:
        found.append(Diagnostic(
            "convergence",
            "Penalised IRLS did not converge at the final estimates, so the conditional modes (and the Laplace "
            "likelihood) are not reliable. Look for separation or extreme offsets, simplify the group-level terms, "
            "or retry with a larger maxiter.",
        ))
    if not d.outer_converged and not _at_poisson_limit(design, sol):
        found.append(Diagnostic(
            "convergence",
            f"The optimiser of the variance parameters and fixed effects did not converge ({d.outer_message}). "
            "Rescale predictors, simplify the group-level terms, or retry with a larger maxiter.",
        ))
    if sol.singular:
        found.append(_singular(design, sol.singular_terms))
    data_found_separation = any(x.check == "separation" for x in design.diagnostics)
    for flag in d.separation:
        if flag.kind == "fixed" and data_found_separation:
            continue  # the data check already named it
        found.append(_separation(design, flag))
    if d.overdispersed:
        found.append(Diagnostic(
            "overdispersion",
            f"The {design.spec.family.name} fit is overdispersed: Pearson chi-square {d.pearson_chi2:.1f} on "
            f"{d.residual_df} residual degrees of freedom (ratio {d.dispersion_ratio:.2f}, p = {d.overdispersion_pvalue:.2g}), "
            "so its standard errors and intervals are too narrow. Refit with "
            f"family={d.suggested_family!r}, or add an observation-level term such as (1 | row_id).",
        ))
    return found  # zero-trial rows are a data check (hierfit.design.outcome), named by their labels


def _at_poisson_limit(design: Design | StreamedDesign, sol: GlmmSolution) -> bool:
    """An estimated NB size so large that the overdispersion ``mu / theta`` is under 0.1% at the largest count."""
    if sol.nb_theta is None or not design.spec.family.has_dispersion:
        return False
    if isinstance(design, StreamedDesign):  # the rows' largest count, from the design pass
        top = float(design.column_moments.hi[design.layout.y]) if design.n else 0.0
    else:
        top = float(design.y.max(initial=0.0))
    largest = max(1.0, top)
    return largest / float(sol.nb_theta) < POISSON_LIMIT


def _singular(design: Design | StreamedDesign, terms: list[tuple[int, int]]) -> Diagnostic:
    parts = []
    for t, col in terms:
        td = design.terms[t]
        parts.append(f"{td.coefficients[col]!r} at level {td.level!r}")
    return Diagnostic(
        "singular",
        "Singular fit: the variance of " + ", ".join(parts) + " is estimated at (or near) zero, "
        "or a correlation at ±1. Simplify the model (drop that varying term, or use '||' to drop "
        "the correlation), or use engine='pymc' whose priors keep variances off the boundary.",
    )


def _separation(design: Design | StreamedDesign, flag: SeparationFlag) -> Diagnostic:
    if flag.kind == "fixed":
        name = design.x_names[flag.index]
        return Diagnostic(
            "separation",
            f"The coefficient of {name!r} runs off to {'+' if flag.direction > 0 else '-'}infinity (stopped at "
            f"{flag.estimate:.3g}): the predictors separate the outcome (quasi-)completely, so maximum likelihood has "
            f"no finite estimate and its standard error is meaningless. Drop or merge {name!r}, or use engine='pymc' "
            "whose priors keep it finite.",
        )
    td = design.terms[flag.index]
    level = design.hierarchy.level(td.level)
    groups = ", ".join(repr(str(level.groups[g])) for g in flag.groups[:_SHOWN])
    return Diagnostic(
        "separation",
        f"The SD of {td.coefficients[flag.column or 0]!r} at level {td.level!r} runs off (stopped at {flag.estimate:.3g}): "
        f"groups whose rows all sit at one boundary of the outcome ({groups}) pull their effects to infinity. "
        "Merge or drop those groups, or use engine='pymc' whose priors keep the SD finite.",
    )
