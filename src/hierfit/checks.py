"""Named data and fit checks with a severity the user can set (like lme4's lmerControl).

Each check has a default severity; ``hierfit.fit(..., checks={"few_groups": "ignore"})``
changes it. Results travel on the FitResult (``result.diagnostics``) whatever the severity;
``"warn"`` also emits a warning and ``"error"`` raises.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hierfit.exceptions import (
    DataCheckWarning,
    DataError,
    FitWarning,
    HierfitError,
    SpecError,
)

Severity = Literal["ignore", "warn", "error"]
SEVERITIES: tuple[str, ...] = ("error", "ignore", "warn")

#: check name -> (default severity, what it flags)
CHECKS: dict[str, tuple[Severity, str]] = {
    "few_groups": ("warn", "a level has fewer than 5 groups, so its SD is poorly estimated"),
    "single_row_groups": ("warn", "groups with a single row (their effect is nearly all shrinkage)"),
    "singular": ("warn", "a variance component at zero or a correlation at ±1 (singular fit)"),
    "convergence": ("warn", "the optimiser stopped without meeting its convergence criteria"),
    "divergences": ("warn", "divergent transitions in Hamiltonian Monte Carlo"),
    "rhat": ("warn", "R-hat above 1.01 (chains disagree)"),
    "ess": ("warn", "effective sample size below 400"),
    "treedepth": ("warn", "NUTS hit its maximum tree depth"),
    "early_stopping": ("warn", "training stopped at its epoch limit before early stopping"),
    "rank_deficient": ("error", "population-level columns are collinear (warn/ignore: drop the dependent ones, as lme4)"),
    "degenerate_outcome": ("error", "the outcome never varies (always 0, always 1, constant): nothing to estimate"),
    "separation": ("warn", "a predictor splits a binary outcome perfectly: its coefficient is infinite for maximum likelihood"),
    "zero_trials": ("warn", "binomial rows with zero trials: they carry no information and are left out of the likelihood"),
    "overdispersion": ("warn", "a Poisson fit's Pearson dispersion is well above 1: its intervals are too narrow"),
    "variance_components": ("warn", "the neural engine's group SDs are a training-time approximation (no marginal-likelihood fit)"),
    # separate terms (1|s) + (1|d) are lme4's way to say "crossed"; warn to be told anyway
    # (labels meant to be read within a parent, such as Sub_1 under every market, look the same)
    "crossed_factors": ("ignore", "a factor's labels repeat under several groups of another: each label is one group across them (crossed)"),
}

#: checks about the data (DataError / DataCheckWarning); the others are about a fit
DATA_CHECKS = frozenset({"few_groups", "single_row_groups", "rank_deficient", "degenerate_outcome", "separation", "zero_trials",
                         "crossed_factors"})

FEW_GROUPS = 5


@dataclass(frozen=True)
class Diagnostic:
    """One finding: which check, how severe, and a message that says what to do next."""

    check: str
    message: str
    severity: Severity = "warn"

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


def resolve_severities(overrides: Mapping[str, str] | None) -> dict[str, Severity]:
    """Defaults from :data:`CHECKS`, updated by the user's overrides (validated)."""
    out: dict[str, Severity] = {name: sev for name, (sev, _) in CHECKS.items()}
    for name, sev in (overrides or {}).items():
        if name not in CHECKS:
            raise SpecError(f"Unknown check {name!r} in 'checks'. Known checks: {', '.join(sorted(CHECKS))}.")
        if sev not in SEVERITIES:
            raise SpecError(f"Check {name!r} must be set to one of: {', '.join(SEVERITIES)}. Got {sev!r}.")
        out[name] = sev  # type: ignore[assignment]
    return out


def data_checks(design, *, pooling: bool = True) -> list[Diagnostic]:
    """Checks on the fitting design: few groups per level (when the engine pools), single-row groups."""
    found: list[Diagnostic] = []
    for lv in design.hierarchy.levels:
        if pooling and lv.n_groups < FEW_GROUPS:
            found.append(
                Diagnostic(
                    "few_groups",
                    f"Level {lv.name!r} has {lv.n_groups} groups; a group-level SD is poorly estimated "
                    f"from fewer than {FEW_GROUPS}. Treat {lv.name!r} as a population-level (fixed) "
                    "predictor or give its SD an informative prior.",
                )
            )
        for other in (o for name, o in design.hierarchy.crossed if name == lv.name):
            found.append(
                Diagnostic(
                    "crossed_factors",
                    f"Labels of {lv.name!r} repeat under several {other!r} groups, so {lv.name!r} is fitted as "
                    f"crossed with {other!r} (each label one group across all of {other!r}). If equal labels under "
                    f"different {other!r} groups are different groups, write (... | {other}:{lv.name}) or "
                    f"(... | {other}/{lv.name}).",
                )
            )
        singles = np.flatnonzero(lv.sizes == 1)
        if singles.size:
            examples = ", ".join(repr(lv.groups[i]) for i in singles[:3])
            found.append(
                Diagnostic(
                    "single_row_groups",
                    f"Level {lv.name!r} has {singles.size} groups with a single row (e.g. {examples}); "
                    "their effects are mostly shrinkage toward the parent and their slopes are not "
                    "identified on their own. Collect more rows or merge them into their parent.",
                )
            )
    return found


def apply_severities(found: list[Diagnostic], severities: Mapping[str, Severity], *, stacklevel: int = 3) -> list[Diagnostic]:
    """Stamp each finding with its severity, warn or raise accordingly; return them all."""
    out = []
    for d in found:
        sev = severities.get(d.check, "warn")
        d = Diagnostic(d.check, d.message, sev)
        out.append(d)
        if sev == "error":
            cls = DataError if d.check in DATA_CHECKS else HierfitError
            raise cls(f"{d} (this check is set to 'error'; set checks={{'{d.check}': 'warn'}} to continue).")
        if sev == "warn":
            category = DataCheckWarning if d.check in DATA_CHECKS else FitWarning
            warnings.warn(str(d), category, stacklevel=stacklevel)
    return out
