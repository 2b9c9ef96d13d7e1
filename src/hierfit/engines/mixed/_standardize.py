"""Centring and scaling of the model columns, undone exactly in the reported estimates.

The sufficient statistics are cross-products of the columns of ``[Z X y]``.  For an outcome
with a large mean (prices in the millions) or a predictor far from zero, those sums are
dominated by the mean and the Cholesky factor of the system loses every significant digit
of what is left after the mean is removed: at ``y + 1e8`` each variance came out wrong.
The cure is the usual one (lme4 advises it, MixedModels.jl centres in its examples): fit
the model to centred and scaled columns, which is an exact reparametrisation of the same
model, and map the estimates back.

* ``X -> X A`` with ``A`` centring every non-intercept column at its mean (only when an
  intercept column is present: then the shift is absorbed by the intercept) and scaling
  each column to unit spread.  ``beta = A beta_t``.
* ``y -> (y - a) / s`` with ``a = mean(y)`` when a constant lies in the span of ``X`` (the
  shift is then absorbed by ``beta``) and ``s`` the spread of what is left.
* ``Z -> Z B`` per term: a correlated term with an intercept column has its other columns
  centred and scaled (``Sigma = B Sigma_t B'`` is again an unstructured covariance, so the
  model is the same); other terms are only scaled (a diagonal covariance stays diagonal
  under scaling, not under centring).  ``b = s B b_t``.

The likelihood changes only by the Jacobian of the map: ``2 n log s`` (ML) or
``2 (n - p) log s - 2 log|det A|`` (REML).  ``theta`` is relative to sigma and so
unaffected by ``s``; the per-term ``T`` becomes the lower-triangular root of ``B T_t T_t' B'``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hierfit.design.moments import ColumnMoments

__all__ = ["ColumnMap", "Standardization", "standardize", "standardize_from_moments"]


@dataclass(frozen=True)
class ColumnMap:
    """``column_t = (column - center) / scale`` for a group of columns.

    Attributes
    ----------
    center, scale : numpy.ndarray
        Per column; ``center`` is 0 for an intercept column and for every column of a group
        without one (centring needs a constant column to absorb the shift).
    intercept : int or None
        Index of the all-ones column of the group, if any.
    """

    center: np.ndarray
    scale: np.ndarray
    intercept: int | None

    @property
    def identity(self) -> bool:
        """Whether the map changes nothing (columns used as they are)."""
        return bool(np.all(self.center == 0.0) and np.all(self.scale == 1.0))

    def matrix(self) -> np.ndarray:
        """``M`` with ``coef = M coef_t``: original coefficients from standardised ones."""
        k = self.scale.size
        M = np.diag(1.0 / self.scale)
        if self.intercept is not None:
            M[self.intercept, :] -= self.center / self.scale
            M[self.intercept, self.intercept] = 1.0
        return M[:k, :k]

    def inverse(self) -> np.ndarray:
        """``M^{-1}``: standardised coefficients from original ones."""
        k = self.scale.size
        Minv = np.diag(self.scale)
        if self.intercept is not None:
            Minv[self.intercept, :] += self.center
            Minv[self.intercept, self.intercept] = 1.0
        return Minv[:k, :k]

    def apply(self, cols: np.ndarray) -> np.ndarray:
        """Standardise ``cols`` of shape ``(k, n)`` (a new array)."""
        return (cols - self.center[:, None]) / self.scale[:, None]


@dataclass(frozen=True)
class Standardization:
    """The maps of ``X``, ``y`` and every random-effects term of one fit.

    Attributes
    ----------
    x : ColumnMap
        Population-level columns.
    y_center, y_scale : float
        ``y_t = (y - y_center) / y_scale``.
    ones_coef : numpy.ndarray or None
        ``c`` with ``X_t c = 1`` when a constant lies in the span of ``X`` (else ``None``,
        and ``y_center`` is 0): ``beta_t`` of the unshifted outcome is
        ``y_scale * beta_t' + y_center * c``.
    z : list of ColumnMap
        One per random-effects term, in caller order.
    """

    x: ColumnMap
    y_center: float
    y_scale: float
    ones_coef: np.ndarray | None
    z: list[ColumnMap]

    # ---------------------------------------------------------------- estimates back
    def beta(self, beta_t: np.ndarray) -> np.ndarray:
        """Original fixed effects from standardised ones; ``beta_t`` is ``(..., p)``."""
        b = self.y_scale * np.asarray(beta_t, dtype=float)
        if self.ones_coef is not None:
            b = b + self.y_center * self.ones_coef
        return b @ self.x.matrix().T

    def vcov(self, vcov_t: np.ndarray) -> np.ndarray:
        """Original ``vcov`` of the fixed effects."""
        A = self.x.matrix()
        return self.y_scale ** 2 * (A @ vcov_t @ A.T)

    def ranef(self, term: int, b_t: np.ndarray) -> np.ndarray:
        """Original effects of ``term`` from standardised ones; ``b_t`` is ``(..., k)``."""
        return self.y_scale * (np.asarray(b_t) @ self.z[term].matrix().T)

    def ranef_cov(self, term: int, cov_t: np.ndarray) -> np.ndarray:
        """Original ``(..., k, k)`` covariances of a term's effects."""
        B = self.z[term].matrix()
        return self.y_scale ** 2 * (B @ cov_t @ B.T)

    def term_T(self, term: int, T_t: np.ndarray) -> np.ndarray:
        """Original relative covariance factor: lower-triangular root of ``B T_t T_t' B'``."""
        return _lower_root(self.z[term].matrix() @ T_t)

    def term_T_standardized(self, term: int, T: np.ndarray) -> np.ndarray:
        """Standardised relative covariance factor from an original one."""
        return _lower_root(self.z[term].inverse() @ T)

    def criterion(self, crit_t: float, n: int, reml: bool) -> float:
        """Original profiled criterion from the standardised one (the map's Jacobian)."""
        p = self.x.scale.size
        if reml:
            return crit_t + 2.0 * (n - p) * np.log(self.y_scale) + 2.0 * float(np.sum(np.log(self.x.scale)))
        return crit_t + 2.0 * n * np.log(self.y_scale)


def _lower_root(M: np.ndarray) -> np.ndarray:
    """Lower-triangular ``T`` with non-negative diagonal and ``T T' = M M'`` (via QR of ``M'``).

    A diagonal ``M`` (uncorrelated terms, scaling only) is returned as ``|M|``.
    """
    if np.count_nonzero(M - np.diag(np.diag(M))) == 0:
        return np.abs(M)
    _, R = np.linalg.qr(M.T)
    T = R.T
    signs = np.where(np.diag(T) < 0, -1.0, 1.0)
    return T * signs[None, :]


def _usable(d: float) -> float:
    return d if np.isfinite(d) and d > 0.0 else 1.0


def _spread(col: np.ndarray, center: float) -> float:
    """Root mean square of ``col - center``; 1 for a constant (nothing to scale)."""
    return _usable(float(np.sqrt(np.mean(np.square(col - center)))) if col.size else 0.0)


def _is_ones(col: np.ndarray) -> bool:
    return bool(col.size) and bool(np.all(col == 1.0))


def _column_map(is_ones: Sequence[bool], mean: Callable[[int], float], spread: Callable[[int, float], float],
                center: bool) -> ColumnMap:
    """The map's decisions, from what is known of each column (rows in memory, or moments)."""
    k = len(is_ones)
    ones = [j for j in range(k) if is_ones[j]]
    intercept = ones[0] if ones else None
    c = np.zeros(k)
    s = np.ones(k)
    for j in range(k):
        if j == intercept:
            continue
        if center and intercept is not None:
            c[j] = mean(j)
        s[j] = spread(j, c[j])
    return ColumnMap(c, s, intercept)


def column_map(columns: Sequence[np.ndarray], center: bool) -> ColumnMap:
    """The map of one group of columns (centred only if ``center`` and an intercept exists)."""
    return _column_map([_is_ones(c) for c in columns], lambda j: float(np.mean(columns[j])) if columns[j].size else 0.0,
                       lambda j, c: _spread(columns[j], c), center)


def column_map_from_moments(moments: ColumnMoments, center: bool) -> ColumnMap:
    """:func:`column_map` from the columns' moments (a streamed source): the same decisions,
    with ``rms(x - c) = sqrt(M2 / n + (mean - c)^2)``."""
    n = max(moments.n, 1)
    return _column_map(list(moments.is_ones()), lambda j: float(moments.mean[j]),
                       lambda j, c: _usable(float(np.sqrt(max(moments.m2[j, j], 0.0) / n + (moments.mean[j] - c) ** 2))),
                       center)


def _ones_coefficients(X: np.ndarray, xmap: ColumnMap) -> np.ndarray | None:
    """``c`` with ``X_t c = 1`` if a constant lies in the span of ``X`` (to ~1e-10), else None."""
    n, p = X.shape
    if p == 0 or n == 0:
        return None
    if xmap.intercept is not None:
        c = np.zeros(p)
        c[xmap.intercept] = 1.0
        return c
    Xt = xmap.apply(X.T).T
    c, *_ = np.linalg.lstsq(Xt, np.ones(n), rcond=None)
    resid = float(np.max(np.abs(Xt @ c - 1.0)))
    return c if resid <= 1e-10 else None


#: mean squared residual of ``X_t c = 1`` below which moments say a constant may lie in the span
#: of ``X`` (the normal equations resolve no finer; the rows then confirm it: :mod:`._stream`)
ONES_MOMENT_TOL = 1e-12


def _ones_from_moments(x: ColumnMoments, xmap: ColumnMap) -> np.ndarray | None:
    """A candidate ``c`` with ``X_t c = 1`` from the moments of ``X`` (``None``: no constant in its span)."""
    n, p = x.n, x.mean.size
    if p == 0 or n == 0:
        return None
    if xmap.intercept is not None:
        c = np.zeros(p)
        c[xmap.intercept] = 1.0
        return c
    # no intercept, so no column is centred: X_t = X / s
    s = xmap.scale
    G = (x.m2 + n * np.outer(x.mean, x.mean)) / np.outer(s, s)
    b = n * x.mean / s
    c, *_ = np.linalg.lstsq(G, b, rcond=None)
    resid = n - 2.0 * float(b @ c) + float(c @ G @ c)
    return c if resid <= ONES_MOMENT_TOL * n else None


def standardize_from_moments(x: ColumnMoments, y_mean: float, y_m2: float, terms: Sequence[ColumnMoments],
                             term_correlated: Sequence[bool]) -> Standardization:
    """:func:`standardize` from moments instead of rows (a streamed source; :mod:`._stream`).

    ``x`` are the moments of ``X``, ``y_mean`` and ``y_m2`` (``sum (y - mean)^2``) the outcome's,
    ``terms`` each term's ``Z``. Without an intercept column, a constant in the span of ``X``
    is only a candidate here (``ones_coef``): the caller confirms it on the rows.
    """
    xmap = column_map_from_moments(x, center=True)
    ones = _ones_from_moments(x, xmap)
    a = y_mean if (ones is not None and x.n) else 0.0
    n = max(x.n, 1)
    s = _usable(float(np.sqrt(max(y_m2, 0.0) / n + (y_mean - a) ** 2)))
    zmaps = [column_map_from_moments(m, center=corr) for m, corr in zip(terms, term_correlated)]
    return Standardization(xmap, a, s, ones, zmaps)


def standardize(X: np.ndarray, y: np.ndarray, term_columns: Sequence[Sequence[np.ndarray]],
                term_correlated: Sequence[bool]) -> Standardization:
    """Choose the maps for one fit from the data.

    Parameters
    ----------
    X : numpy.ndarray
        ``(n, p)`` population-level model matrix.
    y : numpy.ndarray
        ``(n,)`` outcome.
    term_columns : sequence of sequence of numpy.ndarray
        Per random-effects term, its ``k`` model columns.
    term_correlated : sequence of bool
        Per term, whether its covariance is unstructured (centring allowed).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.column_stack([np.ones(4), [1e6, 1e6 + 1, 1e6 + 2, 1e6 + 3]])
    >>> std = standardize(X, np.array([5e8, 5e8 + 2, 5e8 + 1, 5e8 + 3]), [[np.ones(4)]], [True])
    >>> float(std.x.center[1]), float(std.y_center)
    (1000001.5, 500000001.5)
    """
    xmap = column_map([X[:, j] for j in range(X.shape[1])], center=True)
    ones = _ones_coefficients(X, xmap)
    a = float(np.mean(y)) if (ones is not None and y.size) else 0.0
    s = _spread(y, a)
    zmaps = [column_map(cols, center=corr) for cols, corr in zip(term_columns, term_correlated)]
    return Standardization(xmap, a, s, ones, zmaps)
