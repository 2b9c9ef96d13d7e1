"""Checks of the outcome against the model, made when the design is built.

* ``degenerate_outcome`` (error by default): an outcome that never varies -- a bernoulli or
  binomial outcome that is always 0 or always a success, a count that is always 0, a constant
  gaussian outcome. Maximum likelihood then runs off to infinity (intercepts of -35 were
  reported as estimates) or has nothing to estimate.
* ``separation`` (warn by default): a population predictor that splits the binary outcome
  perfectly (complete separation: every 1 above a threshold, every 0 below; quasi-complete when
  they meet at the threshold). Its coefficient is then infinite for maximum likelihood and
  large and unstable everywhere else.
* ``zero_trials`` (warn by default): binomial rows with no trials, named by their row labels;
  the fit leaves them out of the likelihood (as glmer, whose weights are the trials).

A row count at or below the number of population coefficients is refused outright.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hierfit.checks import Diagnostic
from hierfit.exceptions import DataError
from hierfit.formula import INTERCEPT
from hierfit.model import ModelSpec

__all__ = ["SeparationRanges", "check_enough_rows", "degenerate_outcome_check", "outcome_checks", "proportion", "separation_check",
           "zero_trials_check"]


def check_enough_rows(n: int, x_names: tuple[str, ...]) -> None:
    """Refuse fewer rows than population coefficients plus one (no residual degree of freedom)."""
    p = len(x_names)
    if n <= p:
        raise DataError(
            f"The data have {n} row{'s' if n != 1 else ''}, but the model has {p} population-level coefficient"
            f"{'s' if p != 1 else ''} ({', '.join(x_names)}); it needs more rows than coefficients (at least {p + 1}), "
            "and many more to estimate how groups differ. Fit more data or a smaller formula."
        )


def zero_trials_check(trials: np.ndarray | None, labels: Sequence[object]) -> list[Diagnostic]:
    """``zero_trials``: binomial rows with no trials (``cbind(0, 0)``), named by their row labels.

    Examples
    --------
    >>> import numpy as np
    >>> [d.check for d in zero_trials_check(np.array([3.0, 0.0, 2.0]), ["a", "b", "c"])]
    ['zero_trials']
    """
    if trials is None or not (trials == 0).any():
        return []
    zero = np.flatnonzero(trials == 0)
    shown = ", ".join(repr(labels[i]) for i in zero[:5]) + (", ..." if zero.size > 5 else "")
    return [Diagnostic(
        "zero_trials",
        f"{zero.size} row{'s have' if zero.size != 1 else ' has'} zero trials (successes + failures = 0; rows {shown}): "
        "they carry no information and are left out of the likelihood. Drop them, or check how the failures were computed.",
    )]


def proportion(y: np.ndarray, trials: np.ndarray | None) -> np.ndarray:
    """The outcome per trial (NaN for a row without trials); the outcome itself without trials."""
    return y if trials is None else np.divide(y, trials, out=np.full_like(y, np.nan), where=trials > 0)


def outcome_checks(spec: ModelSpec, y: np.ndarray, trials: np.ndarray | None, X: np.ndarray,
                   x_names: tuple[str, ...]) -> list[Diagnostic]:
    """Findings about the outcome (see the module docstring); their severities are applied by the caller.

    Examples
    --------
    >>> import numpy as np
    >>> from hierfit.model import make_spec
    >>> spec = make_spec("y ~ x + (1 | g)", family="bernoulli")
    >>> x = np.array([0.1, 0.5, 0.9, 1.3])
    >>> [d.check for d in outcome_checks(spec, np.array([0., 0., 1., 1.]), None, np.column_stack([np.ones(4), x]), ("Intercept", "x"))]
    ['separation']
    """
    family = spec.family
    p = proportion(y, trials)
    finite = np.isfinite(p)
    if not finite.any():
        return []
    lo, hi = float(np.min(p[finite])), float(np.max(p[finite]))
    found = degenerate_outcome_check(spec, lo, hi, int(finite.sum()))
    if found:
        return found
    if family.mean_range == (0.0, 1.0):
        found += _separation(spec.response, p, X, x_names)
    return found


def degenerate_outcome_check(spec: ModelSpec, lo: float, hi: float, n: int) -> list[Diagnostic]:
    """``degenerate_outcome`` from the range ``[lo, hi]`` of the outcome (a proportion for
    binomials) over its ``n`` rows: all a streamed design pass needs to keep of the outcome.

    Examples
    --------
    >>> from hierfit.model import make_spec
    >>> [d.check for d in degenerate_outcome_check(make_spec("y ~ 1 + (1 | g)"), 3.0, 3.0, 10)]
    ['degenerate_outcome']
    """
    family = spec.family
    response = spec.response
    found: list[Diagnostic] = []
    if lo == hi:
        at_bound = lo in family.mean_range
        if at_bound:
            low = lo == family.mean_range[0]
            what = ("0" if low else "1") + ((" (no successes)" if low else " (every trial a success)") if family.has_trials else "")
            direction = "-infinity" if low else "+infinity"
            found.append(Diagnostic(
                "degenerate_outcome",
                f"The outcome {response!r} is {what} in every row ({n} rows): a {family.name} model's intercept "
                f"runs off to {direction}, so there is nothing to estimate. Check how the outcome is coded and which rows "
                "were selected.",
            ))
        else:
            found.append(Diagnostic(
                "degenerate_outcome",
                f"The outcome {response!r} is {lo:g} in every row ({n} rows): there is no variation to model. "
                "Check the outcome column and the row filter.",
            ))
    return found


@dataclass(frozen=True)
class SeparationRanges:
    """What the separation check keeps of some rows: whether every proportion is 0 or 1, whether
    both occur, and per column of ``X`` its range among the 0 rows and among the 1 rows. The
    ranges of row shards merge (:meth:`merge`) into those of all their rows."""

    binary: bool
    zero: bool
    one: bool
    x0: np.ndarray  # (2, p): min, max over rows with proportion 0 (+inf, -inf when none)
    x1: np.ndarray

    @staticmethod
    def of(p: np.ndarray, X: np.ndarray) -> SeparationRanges:
        zero, one = p == 0.0, p == 1.0

        def span(rows: np.ndarray) -> np.ndarray:
            if not rows.any():
                return np.stack([np.full(X.shape[1], np.inf), np.full(X.shape[1], -np.inf)])
            return np.stack([X[rows].min(axis=0), X[rows].max(axis=0)])

        return SeparationRanges(bool((zero | one).all()), bool(zero.any()), bool(one.any()), span(zero), span(one))

    @staticmethod
    def merge(a: SeparationRanges, b: SeparationRanges) -> SeparationRanges:
        def both(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            return np.stack([np.minimum(u[0], v[0]), np.maximum(u[1], v[1])])

        return SeparationRanges(a.binary and b.binary, a.zero or b.zero, a.one or b.one, both(a.x0, b.x0), both(a.x1, b.x1))


def _separation(response: str, p: np.ndarray, X: np.ndarray, x_names: tuple[str, ...]) -> list[Diagnostic]:
    """Single predictors that split rows with proportion 0 from rows with proportion 1."""
    return separation_check(response, SeparationRanges.of(p, X), x_names)


def separation_check(response: str, r: SeparationRanges, x_names: tuple[str, ...]) -> list[Diagnostic]:
    """``separation`` findings from the :class:`SeparationRanges` of the rows."""
    if not r.binary or not r.zero or not r.one:
        return []  # some rows have proportions strictly between 0 and 1: no separation by one threshold
    out = []
    for j, name in enumerate(x_names):
        if name == INTERCEPT:
            continue
        x0_min, x0_max, x1_min, x1_max = r.x0[0, j], r.x0[1, j], r.x1[0, j], r.x1[1, j]
        if x0_max < x1_min or x1_max < x0_min:
            kind, threshold = "completely", (x0_max + x1_min) / 2 if x0_max < x1_min else (x1_max + x0_min) / 2
        elif x0_max == x1_min or x1_max == x0_min:
            kind, threshold = "quasi-completely", x0_max if x0_max == x1_min else x1_max
        else:
            continue
        up = "above" if x0_max <= x1_min else "below"
        out.append(Diagnostic(
            "separation",
            f"Predictor {name!r} {kind} separates the outcome {response!r}: every 1 lies {up} {threshold:.4g} and every 0 on "
            f"the other side, so its coefficient is infinite for maximum likelihood (large and unstable in any fit). Drop or "
            "coarsen the predictor, or use a Bayesian engine (pymc/stan), whose priors keep it finite.",
        ))
    return out
