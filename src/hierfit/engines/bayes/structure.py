"""The engine-neutral structure of a Bayesian hierarchical model, and its sufficient statistics.

Flat coefficient vector ``u = [beta, b_1, b_2, ...]`` in :class:`ParameterLayout` order
(each ``b_t`` is groups × coefficients, row-major), with the matching columns
``W = [X, Z_1, Z_2, ...]`` (``Z_t`` expanded to one column per group and coefficient).

Group effects are non-centred: ``b_t[g] = Λ_t z_t[g]`` with ``z ~ N(0, I)`` and
``Λ_t = diag(sd_t) L_t`` (``L_t`` the Cholesky factor of the term's correlation matrix, the
identity for ``||`` terms or a single coefficient).

For the gaussian family the likelihood depends on the data only through
``M = W'ΩW``, ``W'Ωy``, ``y'Ωy`` and ``n``, gathered here in one sparse pass: with
q = total group coefficients (70 in the reference model) they are (p+q)² numbers whatever
the number of rows. ``Ω = diag(w)`` holds the prior weights (lme4's: row ``i`` has residual
variance ``σ²/w_i``, so whitening by ``sqrt(w)`` makes it an unweighted model and the
statistics stay exact; rows of weight 0 leave them), and ``y`` is the outcome net of any
offset (the offset is a known part of the gaussian mean, as in the ``mixed`` engine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from hierfit.design import Design
from hierfit.engines.bayes.priors import ResolvedPriors, resolve_priors
from hierfit.model import Family


@dataclass(frozen=True)
class TermInfo:
    """One group-level term as the samplers see it.

    ``name`` labels its variables (``sd_<name>``, ``r_<name>``): the level name, suffixed by
    the term's position when a level has several terms.
    """

    name: str
    level: str
    coefficients: tuple[str, ...]
    n_groups: int
    offset: int
    correlated: bool

    @property
    def k(self) -> int:
        return len(self.coefficients)

    @property
    def size(self) -> int:
        return self.n_groups * self.k


@dataclass(frozen=True, eq=False)
class BayesStructure:
    """Everything both engines need to write the model, independent of the library.

    Attributes
    ----------
    integrated
        Boolean per population column: integrated out analytically (gaussian family with a
        normal prior) rather than sampled.
    """

    family: Family
    x_names: tuple[str, ...]
    terms: tuple[TermInfo, ...]
    priors: ResolvedPriors
    integrated: np.ndarray

    @property
    def p(self) -> int:
        return len(self.x_names)

    @property
    def size(self) -> int:
        return self.p + sum(t.size for t in self.terms)

    @property
    def sampled_beta(self) -> np.ndarray:
        return np.flatnonzero(~self.integrated)

    @property
    def integrated_beta(self) -> np.ndarray:
        return np.flatnonzero(self.integrated)

    def integrated_index(self) -> np.ndarray:
        """Positions in ``u`` of everything integrated out (integrated betas, then all ``b``)."""
        return np.concatenate([self.integrated_beta, np.arange(self.p, self.size)]).astype(np.int64)

    def term_labels(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(t.level, t.coefficients) for t in self.terms]


def make_structure(design: Design, *, marginal: bool) -> BayesStructure:
    """Term layout, resolved priors and which population coefficients are integrated out."""
    priors = resolve_priors(design)
    levels = [td.level for td in design.terms]
    terms = []
    offset = len(design.x_names)
    for i, td in enumerate(design.terms):
        name = td.level if levels.count(td.level) == 1 else f"{td.level}{levels[: i + 1].count(td.level)}"
        n_groups = design.hierarchy.level(td.level).n_groups
        correlated = bool(td.term.correlated and len(td.coefficients) > 1)
        terms.append(TermInfo(_safe(name), td.level, td.coefficients, n_groups, offset, correlated))
        offset += n_groups * len(td.coefficients)
    integrated = np.array(
        [marginal and design.spec.family.normal_errors and p.distribution == "normal" for p in priors.beta], dtype=bool
    )
    return BayesStructure(design.spec.family, tuple(design.x_names), tuple(terms), priors, integrated)


def _safe(name: str) -> str:
    """A variable-name-safe label (Stan identifiers: letters, digits, underscores)."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if out[:1].isalpha() else f"g_{out}"


def expanded_columns(design: Design, rows: slice | None = None) -> sparse.csr_matrix:
    """``W = [X, Z_1 ⊗ groups, ...]`` as a sparse matrix (unseen groups get no column)."""
    rows = rows if rows is not None else slice(0, design.n)
    X = design.X[rows]
    n = X.shape[0]
    blocks = [sparse.csr_matrix(X)]
    for td in design.terms:
        idx = design.group_index[td.level][rows]
        k = len(td.coefficients)
        g = design.hierarchy.level(td.level).n_groups
        known = np.flatnonzero(idx >= 0)
        r = np.repeat(known, k)
        c = (idx[known][:, None] * k + np.arange(k)).ravel()
        v = td.Z[rows][known].ravel()
        blocks.append(sparse.csr_matrix((v, (r, c)), shape=(n, g * k)))
    return sparse.hstack(blocks, format="csr")


@dataclass(frozen=True, eq=False)
class SufficientStats:
    """``W'ΩW``, ``W'Ωy``, ``y'Ωy`` and ``n``: all the gaussian likelihood needs.

    ``n`` counts the rows that carry likelihood (positive weight); ``log_weights`` is
    ``sum(log w)`` over them, the Jacobian of the weighted variances ``σ²/w`` (a constant:
    0 without weights).
    """

    WtW: np.ndarray
    Wty: np.ndarray
    yty: float
    n: int
    log_weights: float = 0.0


def sufficient_stats(design: Design, chunk: int = 1 << 18) -> SufficientStats:
    """One pass over the rows, in chunks so the expanded columns never exist in full.

    Examples
    --------
    >>> import hierfit
    >>> from hierfit.design import build_design
    >>> sim = hierfit.simulate(n_markets=2, n_submarkets=2, rows_per_submarket=5, seed=0)
    >>> d = build_design(hierfit.make_spec("y ~ x1 + (1 | market)"), sim.data)
    >>> s = sufficient_stats(d)
    >>> s.WtW.shape, s.n
    ((4, 4), 20)
    """
    y = net_outcome(design)
    w = design.weights
    d = expanded_columns(design, slice(0, 1)).shape[1]
    WtW = np.zeros((d, d))
    Wty = np.zeros(d)
    for start in range(0, design.n, chunk):
        rows = slice(start, min(start + chunk, design.n))
        W = expanded_columns(design, rows)
        WtO = W.T if w is None else W.T @ sparse.diags(w[rows])
        WtW += (WtO @ W).toarray()
        Wty += WtO @ y[rows]
    if w is None:
        return SufficientStats(WtW, Wty, float(y @ y), int(design.n))
    counted = w > 0
    return SufficientStats(WtW, Wty, float(y @ (w * y)), int(counted.sum()), float(np.log(w[counted]).sum()))


def net_outcome(design: Design) -> np.ndarray:
    """The gaussian outcome net of its offset, ``y - offset`` (the offset is known mean)."""
    y = np.asarray(design.y, dtype=float)
    return y if design.offset is None else y - design.offset


def canonical_rows(design: Design) -> Design:
    """The same design with its rows in a canonical order (sorted by every value they hold).

    The posterior depends on the multiset of rows only; sampling on canonically ordered rows
    makes floating-point sums -- and so the whole seeded MCMC run -- identical however the
    input rows were ordered (rows that tie on every value are interchangeable).
    """
    extras = [v for v in (design.trials, design.offset, design.weights) if v is not None]
    keys = [design.y] + [design.X[:, j] for j in range(design.X.shape[1])]
    for td in design.terms:
        keys += [td.Z[:, j] for j in range(td.Z.shape[1])]
    keys += [design.group_index[name] for name in sorted(design.group_index)] + extras
    return take_rows(design, np.lexsort(keys[::-1]))


def take_rows(design: Design, rows: np.ndarray) -> Design:
    """The design of ``rows`` (indices or a mask): every per-row array taken alike."""
    from dataclasses import replace

    from hierfit.design import TermDesign

    pick = lambda v: None if v is None else v[rows]
    return replace(
        design,
        y=design.y[rows],
        X=design.X[rows],
        group_index={k: v[rows] for k, v in design.group_index.items()},
        terms=tuple(TermDesign(td.term, td.Z[rows]) for td in design.terms),
        trials=pick(design.trials),
        offset=pick(design.offset),
        weights=pick(design.weights),
    )
