"""Diagnostics of a GLMM fit as data: the engine turns them into named user warnings.

* PIRLS / outer non-convergence and singular fits (lme4's ``isSingular`` rule).
* Separation: a fixed effect "running off to infinity" -- the objective keeps falling when
  the estimate is pushed further out (checked by doubling a large standardised
  coefficient: a finite optimum rises steeply there) -- or conditional modes running off:
  a term with a huge SD whose groups have every row at one boundary of the outcome with
  the fitted mean pinned there; those groups are named.
* Pearson dispersion ``sum w (y - t mu)^2 / (t V(mu)) / (n - n_params)`` with its chi-square
  test; flagged as overdispersion for families whose row names an alternative (Poisson ->
  negative binomial).
* Rows excluded from the likelihood: non-finite offsets and zero trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from hierfit.model.family import Family

from ._glmm_rows import row_chunks

__all__ = ["EndSums", "GlmmDiagnostics", "SeparationFlag", "end_sums", "pearson", "pinned_rows", "separated_groups"]

#: Standardised size above which a coefficient or theta is tested for running off.
SEPARATION_CANDIDATE = 4.0
#: A fitted mean (per trial) this close to the boundary its outcome sits on is pinned there.
PINNED = 1e-3


@dataclass(frozen=True)
class SeparationFlag:
    """One estimate that runs off to infinity.

    Attributes
    ----------
    kind : {"fixed", "random"}
        A fixed effect or a random-effects SD.
    index : int
        Column of ``X`` (fixed) or random-effects term (random).
    column : int or None
        Column within the term (random).
    direction : int
        Sign of the runaway (+1 / -1); +1 for an SD.
    estimate : float
        The estimate where the optimiser stopped (caller's coordinates; an SD for random).
    groups : tuple of int
        Random: the term's groups whose rows all sit at one boundary of the outcome (all
        zeros, or all successes), largest conditional modes first (at most 10).
    """

    kind: str
    index: int
    column: int | None
    direction: int
    estimate: float
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class GlmmDiagnostics:
    """Everything a user should be warned about, as data.

    Attributes
    ----------
    pirls_converged, outer_converged : bool
        Inner (conditional modes at the optimum) and outer (parameters) convergence.
    outer_message : str
    pirls_failures : int
        Evaluations during the optimisation whose inner loop did not converge.
    singular : bool
    singular_terms : list of (int, int)
    separation : tuple of SeparationFlag
    pearson_chi2 : float
    residual_df : int
    dispersion_ratio : float
        ``pearson_chi2 / residual_df``.
    overdispersion_pvalue : float
        Upper chi-square tail of ``pearson_chi2`` on ``residual_df``.
    overdispersed : bool
        Ratio above 1 with p < 0.05, for families with a named alternative.
    suggested_family : str or None
        The family row's alternative when ``overdispersed``.
    nonfinite_offset_rows, zero_trial_rows : int
        Rows excluded from the likelihood for that reason.
    nonfinite_offset_index, zero_trial_index : numpy.ndarray
        Their first (at most 10) row indices.
    """

    pirls_converged: bool
    outer_converged: bool
    outer_message: str
    pirls_failures: int
    singular: bool
    singular_terms: list[tuple[int, int]]
    separation: tuple[SeparationFlag, ...]
    pearson_chi2: float
    residual_df: int
    dispersion_ratio: float
    overdispersion_pvalue: float
    overdispersed: bool
    suggested_family: str | None
    nonfinite_offset_rows: int
    nonfinite_offset_index: np.ndarray
    zero_trial_rows: int
    zero_trial_index: np.ndarray

    @property
    def separated(self) -> bool:
        """Whether any estimate runs off to infinity."""
        return bool(self.separation)


def pearson(family: Family, y: np.ndarray, mu: np.ndarray, trials: np.ndarray,
            weights: np.ndarray, disp: float | None, n_params: int
            ) -> tuple[float, int, float, float]:
    """Pearson chi-square, residual df, ratio and upper-tail p-value."""
    chi2, used = pearson_sums(family, y, mu, trials, weights, disp)
    return pearson_test(chi2, used, n_params)


def pearson_sums(family: Family, y: np.ndarray, mu: np.ndarray, trials: np.ndarray,
                 weights: np.ndarray, disp: float | None) -> tuple[float, int]:
    """Pearson chi-square of some rows and the rows it uses (sums over shards add up)."""
    chi2, used = 0.0, 0
    d = None if disp is None else np.asarray(disp)
    for sl in row_chunks(y.size):  # in chunks: a dozen temporaries per row otherwise
        use = (weights[sl] > 0) & (trials[sl] > 0)
        m, t = mu[sl][use], trials[sl][use]
        V = family.variance(m, d)
        chi2 += float(np.sum(weights[sl][use] * (y[sl][use] - t * m) ** 2 / (t * np.maximum(V, 1e-300))))
        used += int(np.count_nonzero(use))
    return chi2, used


def pearson_test(chi2: float, used: int, n_params: int) -> tuple[float, int, float, float]:
    """``(chi2, df, ratio, p)`` of the overdispersion test from the Pearson sums."""
    df = used - n_params
    if df <= 0:
        return chi2, df, float("nan"), float("nan")
    return chi2, df, chi2 / df, float(stats.chi2.sf(chi2, df))


def pinned_rows(family: Family, y: np.ndarray, mu: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Per row: -1 / +1 where the outcome sits at its lower / upper boundary (0, or all
    trials for a mean bounded by the trials) *and* the fitted mean is pinned there (within
    ``PINNED`` per trial); 0 otherwise."""
    upper_bounded = bool(family.link.inverse(np.array([40.0]))[0] <= 1.0)
    out = np.where((y == 0) & (mu <= PINNED), -1, 0)
    if upper_bounded:
        out = np.where((y == trials) & (trials > 0) & (1.0 - mu <= PINNED), 1, out)
    return out.astype(np.int8)


def separated_groups(codes: np.ndarray, n_groups: int, side: np.ndarray, modes: np.ndarray,
                     weights: np.ndarray) -> tuple[int, ...]:
    """Groups whose weighted rows all sit at one boundary, largest ``|mode|`` first."""
    return separated_from_counts(boundary_counts(codes, n_groups, side, weights), modes)


def boundary_counts(codes: np.ndarray, n_groups: int, side: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(3, n_groups)``: per group its weighted rows, and those pinned at the lower and at the
    upper boundary (:func:`pinned_rows`); counts of row shards add up."""
    use = weights > 0
    return np.stack([np.bincount(codes[use], minlength=n_groups).astype(float),
                     np.bincount(codes[use], weights=(side[use] == -1), minlength=n_groups),
                     np.bincount(codes[use], weights=(side[use] == 1), minlength=n_groups)])


def separated_from_counts(counts: np.ndarray, modes: np.ndarray) -> tuple[int, ...]:
    """The groups of :func:`separated_groups` from their :func:`boundary_counts`."""
    cnt, lo, hi = counts
    sep = np.flatnonzero((cnt > 0) & ((lo == cnt) | (hi == cnt)))
    order = np.argsort(-np.abs(modes[sep]))
    return tuple(int(g) for g in sep[order][:10])



@dataclass(frozen=True)
class EndSums:
    """What the end of a fit reads from the rows at the modes, as sums (shards' sums add up).

    Attributes
    ----------
    deviance : float
        lme4's GLMM deviance: the weighted unit deviances.
    chi2 : float
        Pearson chi-square, over ``used`` rows (positive weight and trials).
    counts : tuple of numpy.ndarray
        Per term, its :func:`boundary_counts` (the separation check of group effects).
    """

    deviance: float
    chi2: float
    used: int
    counts: tuple[np.ndarray, ...]

    @staticmethod
    def add(a: EndSums, b: EndSums) -> EndSums:
        return EndSums(a.deviance + b.deviance, a.chi2 + b.chi2, a.used + b.used,
                       tuple(x + y for x, y in zip(a.counts, b.counts)))


def end_sums(family: Family, y: np.ndarray, mu: np.ndarray, trials: np.ndarray, weights: np.ndarray,
             disp: float | None, codes: Sequence[np.ndarray], n_groups: Sequence[int]) -> EndSums:
    """The :class:`EndSums` of some rows at fitted means ``mu`` (``codes``: each term's group codes)."""
    d = None if disp is None else np.asarray(disp)
    deviance = 0.0
    for sl in row_chunks(mu.size):  # in chunks: a dozen temporaries per row otherwise
        deviance += float(np.sum(weights[sl] * family.unit_deviance(y[sl], mu[sl], trials[sl], d)))
    chi2, used = pearson_sums(family, y, mu, trials, weights, disp)
    side = pinned_rows(family, y, mu, trials)
    counts = tuple(boundary_counts(np.asarray(c), int(m), side, weights) for c, m in zip(codes, n_groups))
    return EndSums(deviance, chi2, used, counts)
