"""The rank check of the population-level columns (lme4's ``check.rankX``).

A column that is a linear combination of earlier ones (``x1b = 2 * x1``, a constant beside the
intercept, a dummy of every category beside the intercept) leaves its coefficient unidentified.
lme4 drops such columns with a message (``chkRank.drop.cols``); hierfit names them and, by
default, refuses (severity ``"error"``), because silently fitting a different model is worse
than asking. With ``checks={"rank_deficient": "warn"}`` the later of the dependent columns are
dropped, as lme4 does, and new data leave them out the same way.

The test is sequential Gram-Schmidt on the centred (beside an intercept) and scaled columns,
in formula order: a column is dependent when less than ``RANK_TOL`` of its norm is left after
projecting out the columns kept before it. (lme4's QR uses 1e-7 on the columns themselves; the
Gram matrix this works from rounds at ~1e-13 relative, so it cannot resolve finer than 1e-5.)
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from hierfit.checks import Diagnostic, Severity
from hierfit.formula import INTERCEPT

__all__ = ["RANK_TOL", "centred_gram", "dependent_columns", "rank_check", "rank_check_gram"]

#: relative norm of a column's residual below which it counts as dependent (squared: 1e-10,
#: the same as the eigenvalue tolerance of the ols engine)
RANK_TOL = 1e-5
_CHUNK = 1 << 18


def _gram(X: np.ndarray, center: np.ndarray) -> np.ndarray:
    """``(X - center)'(X - center)`` in chunks (no full-size centred copy)."""
    p = X.shape[1]
    G = np.zeros((p, p))
    for start in range(0, X.shape[0], _CHUNK):
        block = X[start:start + _CHUNK] - center
        G += block.T @ block
    return G


def dependent_columns(G: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Columns dependent on earlier kept ones, from a unit-diagonal Gram matrix ``G``:
    ``(j, coefficients of column j on the kept columns)``, in column order.

    Sequential Gram-Schmidt done as an incremental Cholesky factor of the kept columns' Gram
    block: O(p^3) in all.
    """
    p = G.shape[0]
    kept: list[int] = []
    L = np.zeros((p, p))  # lower Cholesky factor of G[kept, kept], grown row by row
    out: list[tuple[int, np.ndarray]] = []
    for j in range(p):
        k = len(kept)
        gjj = G[j, j]
        w = sla.solve_triangular(L[:k, :k], G[kept, j], lower=True) if k else np.zeros(0)
        resid = gjj - float(w @ w)
        if gjj <= 0.0 or resid <= (RANK_TOL ** 2) * gjj:
            full = np.zeros(p)
            if k:
                full[np.array(kept)] = sla.solve_triangular(L[:k, :k], w, lower=True, trans="T")
            out.append((j, full))
        else:
            L[k, :k] = w
            L[k, k] = np.sqrt(resid)
            kept.append(j)
    return out


def _describe(name: str, coef: np.ndarray, names: tuple[str, ...], centred: bool) -> str:
    parts = [f"{c:.4g}*{names[i]}" for i, c in enumerate(coef) if abs(c) > 1e-8 * max(1.0, np.abs(coef).max())]
    if not parts:
        return f"{name!r} is constant" + (" (the intercept already carries a constant)" if centred else " zero")
    return f"{name!r} = {' + '.join(parts)}" + (" + a constant" if centred else "")


def rank_check(X: np.ndarray, names: tuple[str, ...], severity: Severity) -> tuple[tuple[str, ...], list[Diagnostic]]:
    """Find dependent population columns; return those to drop and the finding.

    With severity ``"error"`` nothing is dropped (the finding raises when applied); otherwise
    the dependent columns are dropped.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(6.0)
    >>> X = np.column_stack([np.ones(6), x, 2 * x + 1])
    >>> dropped, found = rank_check(X, ("Intercept", "x1", "x1b"), "warn")
    >>> dropped, found[0].check
    (('x1b',), 'rank_deficient')
    """
    n, p = X.shape
    if p == 0 or n == 0:
        return (), []
    center = np.where(np.array([nm != INTERCEPT for nm in names]), X.mean(axis=0), 0.0) if INTERCEPT in names else np.zeros(p)
    return rank_check_gram(_gram(X, center), names, severity)


def centred_gram(n: int, mean: np.ndarray, m2: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """The Gram matrix :func:`rank_check` uses, from the columns' row count, means and
    co-moments about their means (``sum (x - mean)(x - mean)'``), as a streamed design pass
    gathers them: columns are centred beside an intercept and used as they are otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.column_stack([np.ones(4), [1.0, 2, 3, 5]])
    >>> m = X.mean(axis=0)
    >>> G = centred_gram(4, m, (X - m).T @ (X - m), ("Intercept", "x"))
    >>> G.tolist()
    [[4.0, 0.0], [0.0, 8.75]]
    """
    center = np.where(np.array([nm != INTERCEPT for nm in names]), mean, 0.0) if INTERCEPT in names else np.zeros(len(names))
    d = np.asarray(mean, dtype=float) - center
    return np.asarray(m2, dtype=float) + n * np.outer(d, d)


def rank_check_gram(G: np.ndarray, names: tuple[str, ...], severity: Severity) -> tuple[tuple[str, ...], list[Diagnostic]]:
    """:func:`rank_check` from the Gram matrix of the (centred) columns (see :func:`centred_gram`)."""
    if not names:
        return (), []
    centred = INTERCEPT in names
    # scale to unit diagonal (constant and zero columns keep a zero diagonal)
    d = np.sqrt(np.maximum(np.diag(G), 0.0))
    scale = np.where(d > 0, d, 1.0)
    deps = dependent_columns(G / np.outer(scale, scale))
    if centred:
        # beside an intercept a centred constant column is zero: say "constant" for it
        deps = [(j, c) for j, c in deps if names[j] != INTERCEPT]
    if not deps:
        return (), []
    # coefficients back on the columns' own scale
    described = [_describe(names[j], c * d[j] / scale, names, centred and names[j] != INTERCEPT) for j, c in deps]
    dropped = tuple(names[j] for j, _ in deps)
    listing = "; ".join(described)
    if severity == "error":
        message = (f"The population-level columns are collinear: {listing}, so {'their' if len(deps) > 1 else 'its'} "
                   f"coefficient is not identified. Drop {', '.join(repr(c) for c in dropped)} from the formula "
                   "(or let hierfit drop the dependent columns, as lme4 does).")
    else:
        message = (f"Dropped collinear population-level column{'s' if len(deps) > 1 else ''} "
                   f"{', '.join(repr(c) for c in dropped)} ({listing}); the fit uses the remaining columns. "
                   "Drop them from the formula to silence this.")
    return (() if severity == "error" else dropped), [Diagnostic("rank_deficient", message)]
