"""Engine ``ols``: fixed effects without pooling, in nested sum-to-zero (effects) coding.

How does the model know which coefficient is the national (``United_state``) level? By its
coding. Every group-level coefficient gets one column per group *except the last child of
each parent*, whose deviation is minus the sum of its siblings'. So

* market deviations sum to zero over markets, submarket deviations sum to zero within their
  market (and likewise for every varying slope), and
* the population intercept is the unweighted grand mean of the market totals: the national
  level. Each population slope is the national slope in the same way.

The column space is exactly that of plain dummy coding (a group's total is free), so
predictions equal a dummy-coded OLS on the same columns; only the labelling of coefficients
changes. Estimation is least squares by the normal equations on sparse columns, with a
pseudo-inverse that reports (rather than hides) rank deficiency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, sparse

from hierfit.checks import Diagnostic
from hierfit.design import Design, RowDesign
from hierfit.engines.base import VARIANCE_COLUMNS, ExactGaussian, GaussianCoefficients, LinearEngineFit
from hierfit.exceptions import SpecError
from hierfit.model import ModelSpec


@dataclass(frozen=True)
class OPTIONS:
    """The ``ols`` engine has no tuning options; ``rcond`` sets the rank tolerance."""

    rcond: float = 1e-10


class OlsFit(LinearEngineFit):
    """Result of the ``ols`` engine (see :class:`LinearEngineFit`).

    ``coefficients`` are the least-squares estimates of the effects-coded columns (named
    ``market[Intercept]:Market_1``, ...), the engine's own parametrisation.
    """

    def __init__(self, *, coefficients: pd.Series, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.coefficients = coefficients

    def native(self) -> dict[str, object]:
        """The effects-coded coefficients and their covariance."""
        return {"coefficients": self.coefficients, "cov": self.gaussian.cov if self.gaussian else None}

    def native_linear_predictor(self, design: RowDesign) -> np.ndarray:
        """``C gamma``: the effects-coded columns times their least-squares coefficients.

        Only for rows whose groups were all seen in fitting (the coding has no column for a
        new group).
        """
        if any((design.group_index[td.level] < 0).any() for td in design.terms):
            raise SpecError("The effects coding has no columns for groups not seen in fitting; use predict() for those rows.")
        C, _, _ = effects_coding(design)
        return np.asarray(C @ self.coefficients.to_numpy()).ravel()


def effects_coding(design: RowDesign) -> tuple[sparse.csr_matrix, sparse.csr_matrix, list[str]]:
    """Columns ``C`` (n × m) and map ``K`` (flat parameter vector ← effects coefficients).

    ``K`` has one row per entry of the flat vector ``[beta, b_0, b_1, ...]``: beta entries map
    to themselves; ``b[g, j]`` maps to its contrast coefficient, or to minus the sum of its
    siblings' for the last child of each parent.
    """
    n, p = design.X.shape
    col_blocks = [sparse.csr_matrix(design.X)]
    k_rows: list[np.ndarray] = [np.arange(p)]
    k_cols: list[np.ndarray] = [np.arange(p)]
    k_vals: list[np.ndarray] = [np.ones(p)]
    names = list(design.x_names)
    flat_offset, coef_offset = p, p
    for td in design.terms:
        lv = design.hierarchy.level(td.level)
        parent = lv.parent_index if lv.parent_index is not None else np.zeros(lv.n_groups, dtype=np.int64)
        # position of each group among its siblings (groups are sorted, so stable)
        order = np.lexsort((np.arange(lv.n_groups), parent))
        n_siblings = np.bincount(parent)
        first = np.concatenate([[0], np.cumsum(n_siblings)[:-1]])
        pos = np.empty(lv.n_groups, dtype=np.int64)
        pos[order] = np.arange(lv.n_groups) - first[parent[order]]
        n_cols_parent = np.maximum(n_siblings - 1, 0)
        base = np.concatenate([[0], np.cumsum(n_cols_parent)[:-1]])
        m_t = int(n_cols_parent.sum())
        is_last = pos == n_siblings[parent] - 1
        rows_idx = design.group_index[td.level]
        k = len(td.coefficients)
        for j, coef in enumerate(td.coefficients):
            z = td.Z[:, j]
            g = rows_idx
            # rows in a non-last child: one column; rows in a last child: -z in all sibling columns
            own = ~is_last[g]
            r1 = np.flatnonzero(own)
            c1 = base[parent[g[own]]] + pos[g[own]]
            v1 = z[own]
            last_rows = np.flatnonzero(~own)
            reps = n_cols_parent[parent[g[last_rows]]]
            r2 = np.repeat(last_rows, reps)
            starts = np.repeat(base[parent[g[last_rows]]], reps)
            c2 = starts + _ranges(reps)
            v2 = -np.repeat(z[last_rows], reps)
            C = sparse.csr_matrix(
                (np.concatenate([v1, v2]), (np.concatenate([r1, r2]), np.concatenate([c1, c2]))), shape=(n, m_t)
            )
            col_blocks.append(C)
            # K rows for b[:, j]
            flat_rows = flat_offset + np.arange(lv.n_groups) * k + j
            nl = ~is_last
            k_rows.append(flat_rows[nl])
            k_cols.append(coef_offset + base[parent[nl]] + pos[nl])
            k_vals.append(np.ones(int(nl.sum())))
            lr = np.flatnonzero(is_last)
            reps_k = n_cols_parent[parent[lr]]
            k_rows.append(np.repeat(flat_rows[lr], reps_k))
            k_cols.append(coef_offset + np.repeat(base[parent[lr]], reps_k) + _ranges(reps_k))
            k_vals.append(-np.ones(int(reps_k.sum())))
            names.extend(f"{td.level}[{coef}]:{lv.groups[gi]}" for gi in np.flatnonzero(nl))
            coef_offset += m_t
        flat_offset += lv.n_groups * k
    C_all = sparse.hstack(col_blocks, format="csr")
    K = sparse.csr_matrix(
        (np.concatenate(k_vals), (np.concatenate(k_rows), np.concatenate(k_cols))), shape=(flat_offset, coef_offset)
    )
    return C_all, K, names


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(n)`` for each ``n`` in ``lengths``."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.arange(total) - np.repeat(ends - lengths, lengths)


def fit(design: Design, spec: ModelSpec, options: OPTIONS) -> OlsFit:
    """Least squares on the effects-coded columns."""
    C, K, names = effects_coding(design)
    y = design.y
    CtC = (C.T @ C).toarray()
    Cty = C.T @ y
    # Symmetric eigen-decomposition: a stable pseudo-inverse that also tells the rank.
    evals, evecs = linalg.eigh(CtC)
    keep = evals > options.rcond * max(evals.max(), 1e-300)
    inv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    gamma = inv @ Cty
    resid = y - C @ gamma
    n, rank = len(y), int(keep.sum())
    df = n - rank
    rss = float(resid @ resid)
    sigma2 = rss / df if df > 0 else np.nan
    cov = inv * sigma2
    theta = K @ gamma
    layout_p = design.X.shape[1]
    beta = theta[:layout_p]
    b = []
    off = layout_p
    for td in design.terms:
        g, k = design.hierarchy.level(td.level).n_groups, len(td.coefficients)
        b.append(theta[off : off + g * k].reshape(g, k))
        off += g * k
    diagnostics = []
    if rank < C.shape[1]:
        diagnostics.append(
            Diagnostic(
                "convergence",
                f"The fixed-effects design has rank {rank} < {C.shape[1]} columns: some group slopes are not "
                "identified (a group whose slope predictor does not vary). Their estimates are minimum-norm; "
                "drop the varying slope or use the 'mixed' engine, which pools them.",
            )
        )
    if df <= 0:
        diagnostics.append(Diagnostic("convergence", f"No residual degrees of freedom ({n} rows, rank {rank}); standard errors are undefined."))
    sigma = float(np.sqrt(sigma2)) if np.isfinite(sigma2) else None
    loglik = -0.5 * n * (np.log(2 * np.pi * rss / n) + 1)
    tss = float(((y - y.mean()) ** 2).sum())
    variance = pd.DataFrame(
        [{"level": "residual", "term1": "", "term2": "", "variance": sigma2, "sd_or_corr": sigma}], columns=VARIANCE_COLUMNS
    )
    return OlsFit(
        coefficients=pd.Series(gamma, index=names),
        engine="ols",
        design=design,
        beta=beta,
        b=b,
        sigma=sigma,
        variance_table=variance,
        uncertainty=ExactGaussian(GaussianCoefficients(sparse.csr_matrix(K), cov, float(df) if df > 0 else np.inf)),
        statistics={
            "n_obs": float(n),
            "rank": float(rank),
            "df_resid": float(df),
            "sigma": float(sigma) if sigma else np.nan,
            "r_squared": 1 - rss / tss if tss > 0 else np.nan,
            "loglik": float(loglik),
            "aic": float(-2 * loglik + 2 * (rank + 1)),
            "bic": float(-2 * loglik + np.log(n) * (rank + 1)),
        },
        diagnostics=diagnostics,
    )
