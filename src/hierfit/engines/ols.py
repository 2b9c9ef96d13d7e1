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
changes. Estimation is least squares by the normal equations on sparse, centred and scaled
columns (mapped back exactly, so results do not depend on the location or scale of the outcome
or the predictors). Columns that earlier ones already span (an unidentified coefficient) are
named in a ``rank_deficient`` finding, an error by default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, sparse

from hierfit.checks import Diagnostic
from hierfit.design import Design, RowDesign, TermDesign
from hierfit.design.rank import dependent_columns as _dependencies
from hierfit.engines._ols_glm import at_boundary, fit_glm
from hierfit.engines.base import ExactGaussian, GaussianCoefficients, LinearEngineFit, variance_table
from hierfit.engines.mixed import Standardization, standardize
from hierfit.engines.options import option
from hierfit.engines.state import LoadContext, StateReader, StateWriter
from hierfit.exceptions import SpecError
from hierfit.formula import INTERCEPT
from hierfit.model import ModelSpec


@dataclass(frozen=True)
class OPTIONS:
    """The ``ols`` engine has no tuning options; ``rcond`` sets the rank tolerance."""

    rcond: float = option(1e-10, gt=0, lt=1)


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

    def save(self, state: StateWriter) -> None:
        """The linear parts (exact Gaussian uncertainty included) and the effects-coded coefficients."""
        self.save_linear(state)
        state.put_array("coefficients", self.coefficients.to_numpy())
        state.put("coefficient_names", list(self.coefficients.index))


def load(state: StateReader, context: LoadContext) -> OlsFit:
    """Rebuild an :class:`OlsFit` from what :meth:`OlsFit.save` wrote."""
    fit = OlsFit.restore(state, context)
    values, names = state.get_array("coefficients", ndim=1), state.get_str_list("coefficient_names")
    if len(values) != len(names):
        raise state.fail(f"{len(values)} coefficients but {len(names)} names")
    fit.coefficients = pd.Series(values, index=names)
    return fit


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


def _standardized(design: Design) -> tuple[Design, Standardization]:
    """The design with centred and scaled columns (see :mod:`hierfit.engines.mixed.lmm`).

    Least squares is invariant to the location and scale of the outcome and of each predictor
    (beside an intercept), but the normal equations of raw columns are not: at ``y + 1e12`` or
    ``x1 + 1e6`` they lose every digit. Slope columns of a term with an intercept are centred
    (the term's intercept columns absorb the shift: the same column space).
    """
    term_cols = [[td.Z[:, j] for j in range(td.Z.shape[1])] for td in design.terms]
    std = standardize(design.X, design.y, term_cols, [True] * len(design.terms))
    X_t = std.x.apply(design.X.T).T if design.X.shape[1] else design.X
    terms = tuple(TermDesign(td.term, td.Z if std.z[t].identity else std.z[t].apply(td.Z.T).T)
                  for t, td in enumerate(design.terms))
    y_t = (design.y - std.y_center) / std.y_scale
    return dataclasses.replace(design, X=np.ascontiguousarray(X_t), y=y_t, terms=terms), std


def _back_map(design: Design, std: Standardization) -> sparse.csr_matrix:
    """``T`` with ``theta = T theta_t + shift``: the flat parameters from standardised ones."""
    blocks = [sparse.csr_matrix(std.y_scale * std.x.matrix())]
    for t, td in enumerate(design.terms):
        g = design.hierarchy.level(td.level).n_groups
        blocks.append(sparse.kron(sparse.identity(g), sparse.csr_matrix(std.y_scale * std.z[t].matrix())))
    return sparse.block_diag(blocks, format="csr")


def _unidentified(design: Design, names: list[str], dependent: list[int], rank: int, n_cols: int) -> Diagnostic:
    """The ``rank_deficient`` finding naming the coefficients least squares cannot identify."""
    p = design.X.shape[1]
    population = [names[j] for j in dependent if j < p]
    groups = [names[j] for j in dependent if j >= p]
    parts = []
    if population:
        parts.append(
            f"population column{'s' if len(population) > 1 else ''} {', '.join(repr(c) for c in population)} "
            "(constant within every group of a level that has its own intercept, e.g. a market-level "
            "predictor beside market effects: no pooling cannot separate them; the 'mixed' engine can)"
        )
    if groups:
        shown = ", ".join(repr(c) for c in groups[:5]) + (f" and {len(groups) - 5} more" if len(groups) > 5 else "")
        parts.append(f"group coefficient{'s' if len(groups) > 1 else ''} {shown} (a group whose slope predictor does not vary)")
    return Diagnostic(
        "rank_deficient",
        f"Engine 'ols': the effects-coded design has rank {rank} < {n_cols} columns, so these are not identified: "
        + "; ".join(parts) + ". Drop the term, or use the 'mixed' engine, which pools them; with "
        "checks={'rank_deficient': 'warn'} they are left out (reported as their parent's value, standard error 0).",
    )


def fit(design: Design, spec: ModelSpec, options: OPTIONS) -> OlsFit:
    """Least squares (gaussian) or IRLS (every other family) on the effects-coded columns of the
    standardised design, with prior weights and an offset when the spec has them."""
    family = spec.family
    design_t, std = _standardized(design)
    if not family.normal_errors:  # counts and successes keep their units: only the columns are standardised
        std = dataclasses.replace(std, y_center=0.0, y_scale=1.0, ones_coef=None)
    C, K, names = effects_coding(design_t)
    n = len(design.y)
    prior = np.ones(n) if design.weights is None else np.asarray(design.weights, dtype=float)
    offset = np.zeros(n) if design.offset is None else np.asarray(design.offset, dtype=float)
    counted = prior > 0  # rows of weight 0 are left out (R's lm and glm)
    C_counted = C[counted]
    CtC = (C_counted.T @ C_counted).toarray()
    d = np.sqrt(np.maximum(np.diag(CtC), 1e-300))
    unit = CtC / np.outer(d, d)
    dependent: list[int] = []
    if unit.size and linalg.eigvalsh(unit)[0] <= options.rcond:
        # columns not identified by those before them: named and left out (the sequential
        # search runs only when the eigenvalues show a deficiency). The intercept and the group
        # columns go first, so a predictor that is constant within the groups of a level is the
        # one named (its effect is the groups'), not an arbitrary group.
        p = design.X.shape[1]
        first = [j for j in range(p) if design.x_names[j] == INTERCEPT]
        order = np.array(first + list(range(p, C.shape[1])) + [j for j in range(p) if j not in first])
        dependent = sorted(int(order[j]) for j, _ in _dependencies(unit[np.ix_(order, order)]))
    keep_cols = np.setdiff1d(np.arange(C.shape[1]), dependent)
    Ck = C[:, keep_cols]
    n_counted = int(counted.sum())
    if family.normal_errors:
        solved = _least_squares(Ck, design_t.y - offset / std.y_scale, prior, options.rcond)
    else:
        trials = np.ones(n) if design.trials is None else np.asarray(design.trials, dtype=float)
        solved = _generalised(Ck, design.y, trials, offset, prior, family)
    gamma_t = np.zeros(C.shape[1])
    gamma_t[keep_cols] = solved.gamma
    inv = np.zeros((C.shape[1], C.shape[1]))
    inv[np.ix_(keep_cols, keep_cols)] = solved.cov
    T = _back_map(design, std)
    theta = T @ (K @ gamma_t)
    shift = std.beta(np.zeros(design.X.shape[1])) if design.X.shape[1] else np.zeros(0)
    theta[: shift.size] += shift
    layout_p = design.X.shape[1]
    beta = theta[:layout_p]
    b = []
    off = layout_p
    for td in design.terms:
        g, k = design.hierarchy.level(td.level).n_groups, len(td.coefficients)
        b.append(theta[off : off + g * k].reshape(g, k))
        off += g * k
    diagnostics = list(solved.notes)
    if dependent or solved.rank < len(keep_cols):
        diagnostics.append(_unidentified(design, names, dependent, solved.rank, C.shape[1]))
    df = n_counted - solved.rank
    if family.normal_errors and df <= 0:
        diagnostics.append(Diagnostic("convergence", f"No residual degrees of freedom ({n_counted} rows, rank {solved.rank}); standard errors are undefined."))
    TK = sparse.csr_matrix(T @ K)
    # the effects-coded coefficients in the user's units: K gamma = theta (K has full column rank)
    gamma = linalg.lstsq((K.T @ K).toarray(), K.T @ theta)[0] if K.shape[1] else np.zeros(0)
    sigma = solved.dispersion * std.y_scale if solved.dispersion is not None and family.normal_errors else solved.dispersion
    statistics = {"n_obs": float(n), "rank": float(solved.rank), **solved.statistics(std.y_scale, family.normal_errors)}
    return OlsFit(
        coefficients=pd.Series(gamma, index=names),
        engine="ols",
        design=design,
        beta=beta,
        b=b,
        sigma=sigma,
        variance_table=variance_table(design, [], sigma, family.dispersion),
        uncertainty=ExactGaussian(GaussianCoefficients(TK, inv, float(df) if family.normal_errors and df > 0 else np.inf)),
        statistics=statistics,
        diagnostics=diagnostics,
    )


@dataclass(frozen=True, eq=False)
class _Solved:
    """One solve on the kept columns (standardised units): coefficients, their covariance, the
    rank, the dispersion and what the fit statistics need."""

    gamma: np.ndarray
    cov: np.ndarray
    rank: int
    dispersion: float | None
    loglik: float
    deviance: float
    n_counted: int
    extra: dict[str, float]
    notes: tuple[Diagnostic, ...] = ()

    def statistics(self, y_scale: float, normal: bool) -> dict[str, float]:
        """In the user's units: a gaussian outcome was divided by ``y_scale`` (its density
        gains ``log y_scale`` per row and its residual sum of squares ``y_scale^2``)."""
        k = self.rank + (1 if self.dispersion is not None else 0)
        loglik = self.loglik - self.n_counted * np.log(y_scale)
        out = dict(self.extra)
        if normal:
            out["sigma"] = float(self.dispersion * y_scale) if self.dispersion is not None else np.nan
        return {
            **out,
            "loglik": float(loglik),
            "deviance": float(self.deviance * y_scale**2),
            "aic": float(-2 * loglik + 2 * k),
            "bic": float(-2 * loglik + np.log(max(self.n_counted, 1)) * k),
        }


def _least_squares(Ck: sparse.csr_matrix, y_t: np.ndarray, prior: np.ndarray, rcond: float) -> _Solved:
    """Weighted least squares by the normal equations (residual variance ``sigma^2 / w``)."""
    W = Ck.multiply(prior[:, None]).tocsr()
    A = (Ck.T @ W).toarray()
    # Symmetric eigen-decomposition of the identified columns: a stable inverse.
    evals, evecs = linalg.eigh(A)
    ok = evals > rcond * max(evals.max(), 1e-300) if evals.size else np.zeros(0, dtype=bool)
    inv = (evecs[:, ok] / evals[ok]) @ evecs[:, ok].T
    gamma = inv @ (W.T @ y_t)
    resid = y_t - Ck @ gamma
    counted = prior > 0
    n, rank = int(counted.sum()), int(ok.sum())
    df = n - rank
    rss_t = float(prior @ resid**2)
    sigma2_t = rss_t / df if df > 0 else np.nan
    mean = float(prior @ y_t / prior.sum())
    tss_t = float(prior @ (y_t - mean) ** 2)
    # R's logLik.lm with weights: the MLE sigma^2 = rss / n, and sum(log w) / 2
    loglik_t = 0.5 * float(np.log(prior[counted]).sum()) - 0.5 * n * (np.log(2 * np.pi * rss_t / n) + 1)
    sigma_t = float(np.sqrt(sigma2_t)) if np.isfinite(sigma2_t) else None
    return _Solved(gamma, inv * sigma2_t, rank, sigma_t, loglik_t, rss_t, n,
                   {"df_resid": float(df), "r_squared": 1 - rss_t / tss_t if tss_t > 0 else np.nan})


def _generalised(Ck: sparse.csr_matrix, y: np.ndarray, trials: np.ndarray, offset: np.ndarray, prior: np.ndarray,
                 family: Any) -> _Solved:
    """IRLS (:mod:`hierfit.engines._ols_glm`); boundary fits are named, as R's glm warns."""
    sol = fit_glm(Ck, y, trials, offset, prior, family)
    mu = family.inverse_link(sol.eta)
    counted = prior > 0
    loglik = float(np.sum(prior[counted] * family.logpdf(y[counted], mu[counted], trials[counted], sol.dispersion)))
    rank = Ck.shape[1]  # the kept columns are the identified ones (settled on the unweighted columns)
    notes: list[Diagnostic] = []
    if not sol.converged:
        notes.append(Diagnostic("convergence", f"Engine 'ols': IRLS did not converge in {sol.iterations} iterations; "
                                "the estimates may be off. Check for separation or use the 'mixed' engine."))
    lo, hi = family.mean_range
    edge = counted & at_boundary(family, mu)
    if edge.any():
        notes.append(Diagnostic(
            "separation",
            f"Engine 'ols': {int(edge.sum())} rows have fitted means numerically at {lo:g}"
            + (f" or {hi:g}" if np.isfinite(hi) else "")
            + " (R's 'fitted probabilities numerically 0 or 1'): a group whose outcomes are all at the boundary has an "
            "infinite coefficient without pooling, and its standard error means nothing. Use the 'mixed' engine, which "
            "pools such groups toward their parent.",
        ))
    return _Solved(sol.gamma, sol.inverse_information, rank, sol.dispersion, loglik, sol.deviance, int(counted.sum()),
                   {"iterations": float(sol.iterations)}, tuple(notes))
