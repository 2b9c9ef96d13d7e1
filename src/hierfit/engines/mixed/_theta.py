"""lme4's relative covariance parametrisation ``theta`` and the profiled criteria.

Each term's covariance is ``sigma^2 T T'`` with ``T`` lower triangular (diagonal for
uncorrelated terms); ``theta`` lists, term by term in caller order, the lower triangle of
``T`` column by column, exactly as ``getME(fit, "theta")`` does within a term.  Diagonal
entries are bounded below by 0 (lme4's ``lower``), off-diagonal ones are free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._blocks import Plan, RandomBlock
from ._factor import Factorization

__all__ = ["ThetaSpec", "profiled_criterion", "sd_and_correlation"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class ThetaSpec:
    """Positions of theta inside the per-term and per-factor ``T`` matrices.

    Attributes
    ----------
    block_k : tuple of int
        Columns per term.
    entries : tuple of tuple of (int, int, int)
        Per theta element: (term index, row, column) in the term's ``T``.
    lower : numpy.ndarray
        Lower bounds (0 on diagonals, ``-inf`` elsewhere).
    """

    block_k: tuple[int, ...]
    entries: tuple[tuple[int, int, int], ...]
    lower: np.ndarray

    @classmethod
    def from_blocks(cls, blocks: Sequence[RandomBlock]) -> ThetaSpec:
        """Build the spec for a list of terms."""
        entries: list[tuple[int, int, int]] = []
        for b, blk in enumerate(blocks):
            k = blk.k
            for j in range(k):
                rows = range(j, k) if blk.correlated else (j,)
                entries.extend((b, i, j) for i in rows)
        lower = np.array([0.0 if i == j else -np.inf for _, i, j in entries])
        return cls(tuple(blk.k for blk in blocks), tuple(entries), lower)

    @property
    def size(self) -> int:
        """Number of theta elements."""
        return len(self.entries)

    def start(self) -> np.ndarray:
        """lme4's default start: identity ``T`` for every term."""
        return np.array([1.0 if i == j else 0.0 for _, i, j in self.entries])

    def block_T(self, theta: np.ndarray) -> list[np.ndarray]:
        """Per-term ``T`` matrices."""
        Ts = [np.zeros((k, k)) for k in self.block_k]
        for val, (b, i, j) in zip(theta, self.entries):
            Ts[b][i, j] = val
        return Ts

    def factor_T(self, theta: np.ndarray, plan: Plan) -> list[np.ndarray]:
        """Per-factor block-diagonal ``T`` (terms sharing a grouping factor are stacked)."""
        bT = self.block_T(theta)
        out: list[np.ndarray] = []
        for fac in plan.factors:
            T = np.zeros((fac.K, fac.K))
            for b, c0 in zip(fac.blocks, fac.col_offsets):
                k = self.block_k[b]
                T[c0:c0 + k, c0:c0 + k] = bT[b]
            out.append(T)
        return out


    def gradient(self, grads: list[np.ndarray], plan: Plan) -> np.ndarray:
        """Per-factor ``d/dT`` matrices -> the gradient over the theta entries."""
        g = np.empty(self.size)
        for t, (b, r, col) in enumerate(self.entries):
            f = next(fi for fi, fac in enumerate(plan.factors) if b in fac.blocks)
            fac = plan.factors[f]
            c0 = fac.col_offsets[fac.blocks.index(b)]
            g[t] = grads[f][c0 + r, c0 + col]
        return g


def profiled_criterion(fz: Factorization, n: int, p: int, reml: bool) -> float:
    """lme4's profiled deviance (ML) or REML criterion from a factorisation.

    ML:   ``log|L|^2 + n (1 + log(2 pi r^2 / n))``
    REML: ``log|L|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p)))``
    (Bates et al. 2015, eqs. 34 and 42.)
    """
    LM = fz.LM
    r2 = float(LM[p, p]) ** 2
    if not np.isfinite(r2) or r2 <= 0.0:
        return np.inf
    if reml:
        nu = n - p
        logdet_rx = 2.0 * float(np.sum(np.log(np.abs(np.diag(LM)[:p]))))
        return fz.logdet_L + logdet_rx + nu * (1.0 + _LOG_2PI + np.log(r2 / nu))
    return fz.logdet_L + n * (1.0 + _LOG_2PI + np.log(r2 / n))


def sd_and_correlation(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SDs and correlation matrix of one term's covariance (unit diagonal even for a zero SD)."""
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        cor = cov / np.outer(sd, sd)
    np.fill_diagonal(cor, 1.0)
    return sd, cor
