"""The marginal gaussian likelihood of :mod:`.marginal`, computed on the tree of nested groups.

The likelihood is the one of :mod:`.marginal` (``P = I + T'M_II T/σ²``, ``c = T'r_I``,
``ll = -n log σ - ½ log|P| - q/(2σ²) + c'P⁻¹c/(2σ⁴)``) with its gradient as in
:mod:`.pt_marginal`; only the algebra differs. Order the integrated coordinates as the
nodes of :mod:`.tree` (deepest level first) and then the integrated population
coefficients (the dense *border*, ``d_B`` of them). ``P`` has the pattern of ``M``: node
``g`` meets its ancestors' nodes and the border. Block Cholesky ``P = LL'`` in that order
fills nothing outside the pattern (a node's ancestors form a chain), so with, per node,

* ``S_g`` its pivot block (``P_gg`` less the updates from its descendants), ``S_g = L_g L_g'``,
* ``F_g`` its coupling to its ancestors and the border, ``V_g = L_g⁻¹ F_g``,

eliminating a level updates its parents: ``S_x -= Σ_children V_x'V_x``, ``F_{x,y} -= Σ V_x'V_y``
(segment sums over each parent's children, batched over all nodes of a level). Then

* ``log|P| = 2 Σ log diag L`` (nodes and border),
* ``c'P⁻¹c = |w|²`` with ``L w = c`` (leaves up), ``a = P⁻¹c`` from ``L'a = w`` (top down),
* the blocks of ``Σ = P⁻¹`` on the pattern by selected inversion (Takahashi), top down:
  with ``U_g = S_g⁻¹F_g``, ``Σ_{g,A} = -U_g Σ_{A,A}`` and ``Σ_gg = S_g⁻¹ - Σ_{g,A} U_g'``
  (``A`` = the node's ancestors and the border, whose blocks are already known);

which is all the gradient needs: ``tr(P⁻¹)`` and the diagonal blocks of ``M T P⁻¹`` summed over
each term's groups, ``[M T Σ]_gg = Σ_y M_gy T_y Σ_yg`` over the ``y`` that ``M`` couples to
``g`` (itself, ancestors, descendants, border) -- all on the pattern. Every step costs
O(groups × K × (K + Σ K_a + d_B)²) flops in O(levels²) numpy calls; no q × q matrix is formed.

Node arrays are stored *group-last*, ``(K, K', G)``: numpy's batched ``matmul`` on stacks of
tiny matrices costs ~60 ns per matrix (1.2 ms for 20,000 2 × 2 products, measured), while
``einsum`` over a contiguous group axis costs ~2.5 ns per product (54 µs).

Conditional draws ``z | y ~ N(P⁻¹c/σ², P⁻¹)`` are ``z = L'⁻¹(w/σ² + ε)``, one back-substitution
on the same factor per draw (the same distribution as :func:`.marginal.conditional_draws`,
whose dense factor is in another order, so a seed gives other draws).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.linalg import lapack

from hierfit.engines.bayes.crossed import BorderTerm, CrossedTreeLayout
from hierfit.engines.bayes.structure import BayesStructure
from hierfit.engines.bayes.tree import TreeLayout, TreeStats


def _last(x: np.ndarray) -> np.ndarray:
    """(G, ...) → (..., G), contiguous."""
    return np.ascontiguousarray(np.moveaxis(x, 0, -1))


@dataclass(frozen=True, eq=False)
class TreeMarginalData:
    """The constants of the marginal likelihood in block form.

    ``integrated`` / ``sampled``: population columns integrated out (normal prior, mean
    ``m_I``, SD ``s0``) or sampled; ``stats``: the block sufficient statistics. The cached
    arrays are the node blocks group-last.
    """

    stats: TreeStats
    integrated: np.ndarray
    sampled: np.ndarray
    m_I: np.ndarray
    s0: np.ndarray

    @property
    def layout(self) -> TreeLayout:
        return self.stats.layout

    @property
    def n(self) -> int:
        return self.stats.n

    @property
    def log_weights(self) -> float:
        return self.stats.log_weights

    @property
    def index_S(self) -> np.ndarray:
        return self.sampled

    @property
    def border_terms(self) -> tuple[BorderTerm, ...]:
        """Crossed terms whose coefficients sit in the dense border (:mod:`.crossed`)."""
        return self.layout.border_terms if isinstance(self.layout, CrossedTreeLayout) else ()

    @cached_property
    def border(self) -> np.ndarray:
        """Columns of the statistics in the border: the integrated population ones, then the crossed terms'."""
        p = len(self.integrated) + len(self.sampled)
        return np.concatenate([self.integrated, np.arange(p, self.stats.XtX.shape[0])]).astype(np.int64)

    @cached_property
    def m_B(self) -> np.ndarray:
        """Prior means of the border coordinates (crossed group effects have mean 0)."""
        return np.concatenate([self.m_I, np.zeros(len(self.border) - len(self.integrated))])

    @cached_property
    def border_u_index(self) -> np.ndarray:
        """Position in ``u`` of every column of the statistics (population columns first)."""
        if isinstance(self.layout, CrossedTreeLayout):
            return self.layout.border_u_index
        return np.arange(self.layout.p)

    @property
    def size_I(self) -> int:
        """Integrated coordinates: border plus every node's coefficients."""
        return len(self.border) + sum(lv.size for lv in self.layout.levels)

    @cached_property
    def ZtZ(self) -> tuple[np.ndarray, ...]:
        """Node blocks (K, K, G) per level."""
        return tuple(_last(x) for x in self.stats.ZtZ)

    @cached_property
    def ZtZ_up(self) -> tuple[tuple[np.ndarray, ...], ...]:
        """Node × ancestor blocks (K, K_a, G) per level and ancestor level."""
        return tuple(tuple(_last(x) for x in row) for row in self.stats.ZtZ_up)

    @cached_property
    def E_I(self) -> tuple[np.ndarray, ...]:
        """Node × border blocks (K, d_B, G) of ``M``."""
        return tuple(_last(x[:, :, self.border]) for x in self.stats.ZtX)

    @cached_property
    def E_S(self) -> tuple[np.ndarray, ...]:
        """Node × sampled-population blocks (K, d_S, G) of ``M``."""
        return tuple(_last(x[:, :, self.sampled]) for x in self.stats.ZtX)

    @cached_property
    def M_BB(self) -> np.ndarray:
        """The border's block of ``M``."""
        return self.xtx(self.border, self.border)

    @cached_property
    def r0(self) -> tuple[np.ndarray, ...]:
        """Node residuals (K, G) at the border's prior mean: ``Z'y - E_I m_B``."""
        return tuple(_last(zy) - np.einsum("kbg,b->kg", e, self.m_B) for zy, e in zip(self.stats.Zty, self.E_I))

    @cached_property
    def at_prior_mean(self) -> tuple[float, np.ndarray, np.ndarray]:
        """``q``, ``r_B``, ``r_S`` at ``beta_S = 0`` (the sampled betas enter linearly and quadratically)."""
        st, ib, sb = self.stats, self.border, self.sampled
        m = self.m_B
        q0 = st.yty - 2.0 * m @ st.Xty[ib] + m @ self.M_BB @ m
        return float(q0), st.Xty[ib] - self.M_BB @ m, st.Xty[sb] - self.xtx(sb, ib) @ m

    @cached_property
    def XtX_SI(self) -> np.ndarray:
        return self.xtx(self.sampled, self.border)

    @cached_property
    def XtX_SS(self) -> np.ndarray:
        return self.xtx(self.sampled, self.sampled)

    @cached_property
    def u_index(self) -> tuple[np.ndarray, ...]:
        """Positions in ``u`` of the node coefficients, (K, G) per level."""
        return tuple(np.ascontiguousarray(lv.u_index.T) for lv in self.layout.levels)

    def xtx(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.stats.XtX[np.ix_(rows, cols)]

    def border_transform(self, lambdas: list[np.ndarray]) -> BorderTransform:
        """The border's ``T`` at ``lambdas``: ``diag(s0)``, then ``I ⊗ Λ_t`` per crossed term."""
        p, n_i = len(self.integrated) + len(self.sampled), len(self.integrated)
        blocks = tuple((slice(n_i + bt.start - p, n_i + bt.start - p + bt.size), bt.n_groups, bt.k,
                        np.asarray(lambdas[bt.term], dtype=float)) for bt in self.border_terms)
        return BorderTransform(self.s0, blocks)

    @cached_property
    def _fixed_border(self) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
        """:func:`_border_blocks` without crossed terms, where ``T_B = diag(s0)`` is a constant."""
        TB = BorderTransform(self.s0, ())
        MT = TB.right(self.M_BB, 1)
        return tuple(TB.right(e, 1) for e in self.E_I), TB.right(MT, 0), MT


@dataclass(frozen=True, eq=False)
class BorderTransform:
    """``T_B``, block diagonal: ``diag(s0)`` on the integrated population coordinates, then for each
    crossed term ``I_m ⊗ Λ_t`` on its ``m × k`` coefficients (``blocks``: border slice, ``m``, ``k``, ``Λ_t``)."""

    s0: np.ndarray
    blocks: tuple[tuple[slice, int, int, np.ndarray], ...]

    def right(self, A: np.ndarray, axis: int) -> np.ndarray:
        """``A T_B`` along ``axis`` (``out_c = Σ_b A_b T_bc``): on axis 0 of a matrix, ``T_B' A``."""
        A = np.moveaxis(np.asarray(A, dtype=float), axis, 0)
        out = np.empty_like(A)
        n = len(self.s0)
        out[:n] = A[:n] * self.s0.reshape((-1,) + (1,) * (A.ndim - 1))
        for sl, m, k, lam in self.blocks:
            blk = A[sl].reshape((m, k) + A.shape[1:])
            out[sl] = np.einsum("js...,st->jt...", blk, lam).reshape((m * k,) + A.shape[1:])
        return np.moveaxis(out, 0, axis)

    def left(self, x: np.ndarray) -> np.ndarray:
        """``T_B x`` for a border vector: each crossed group's ``Λ_t z_j``."""
        out = np.empty_like(x)
        n = len(self.s0)
        out[:n] = self.s0 * x[:n]
        for sl, m, k, lam in self.blocks:
            out[sl] = (x[sl].reshape(m, k) @ lam.T).ravel()
        return out


def _border_blocks(md: TreeMarginalData, TB: BorderTransform) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """``E T_B`` per level (node × border blocks of ``MT``), ``T_B'M_BB T_B`` and ``M_BB T_B``."""
    if not TB.blocks:
        return md._fixed_border
    MT = TB.right(md.M_BB, 1)
    return tuple(TB.right(e, 1) for e in md.E_I), TB.right(MT, 0), MT


def tree_marginal_data(structure: BayesStructure, stats: TreeStats) -> TreeMarginalData:
    """Integrated and sampled population columns and their prior moments, with the block stats."""
    ib = structure.integrated_beta
    priors = [structure.priors.beta[j] for j in ib]
    m_I = np.array([p.param("mu") for p in priors], dtype=float)
    s0 = np.array([p.param("sigma") for p in priors], dtype=float)
    return TreeMarginalData(stats, ib, structure.sampled_beta, m_I, s0)


# -- products of stacked small matrices, groups on the last axis -----------------------------
# A contraction over an index of length 1 is a broadcast product, ~3× cheaper than einsum on long
# group axes (leaves usually carry one coefficient): each helper takes that shortcut.
def _mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A_g B_g``: (i, j, G) × (j, k, G) → (i, k, G)."""
    return A * B if A.shape[1] == 1 else np.einsum("ijg,jkg->ikg", A, B)


def _tm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A_g' B_g``: (j, i, G) × (j, k, G) → (i, k, G)."""
    return A.transpose(1, 0, 2) * B if A.shape[0] == 1 else np.einsum("jig,jkg->ikg", A, B)


def _mt(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A_g B_g'``: (i, j, G) × (k, j, G) → (i, k, G)."""
    return A * B.transpose(1, 0, 2) if A.shape[1] == 1 else np.einsum("ijg,kjg->ikg", A, B)


def _mv(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``A_g x_g``: (i, j, G) × (j, G) → (i, G)."""
    return A[:, 0] * x if A.shape[1] == 1 else np.einsum("ijg,jg->ig", A, x)


def _tv(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``A_g' x_g``: (j, i, G) × (j, G) → (i, G)."""
    return A[0] * x if A.shape[0] == 1 else np.einsum("jig,jg->ig", A, x)


def _sandwich(L: np.ndarray, A: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``L' A_g R`` for constant ``L``, ``R``: (i, m), (i, j, G), (j, k) → (m, k, G)."""
    return np.einsum("ijg,jk->ikg", np.einsum("im,ijg->mjg", L, A), R)


def _sum_mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``Σ_g A_g B_g``."""
    return np.einsum("ijg,jkg->ik", A, B)


def _sum_mt(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``Σ_g A_g B_g'`` (one GEMM: the (j, g) pairs are contiguous in both)."""
    return A.reshape(A.shape[0], -1) @ B.reshape(B.shape[0], -1).T


def _chol_inv(S: np.ndarray) -> tuple[float, np.ndarray]:
    """``Σ_g log|S_g|`` and ``L_g⁻¹`` (lower, (K, K, G)) for stacked SPD blocks ``S`` (K, K, G).

    Column by column on whole group vectors for small ``K`` (a few vector operations instead of
    one LAPACK call per group); LinAlgError where a pivot is not positive (or not finite).
    """
    K = S.shape[0]
    if K > 4:
        Lc = np.linalg.cholesky(np.moveaxis(S, -1, 0))
        return 2.0 * float(np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum()), _last(np.linalg.inv(Lc))
    L = np.zeros_like(S)
    logdet = 0.0
    for j in range(K):
        d = S[j, j] - (L[j, :j] ** 2).sum(axis=0)
        if not (d > 0).all():
            raise np.linalg.LinAlgError("a pivot is not positive")
        logdet += float(np.log(d).sum())
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, K):
            L[i, j] = (S[i, j] - (L[i, :j] * L[j, :j]).sum(axis=0)) / L[j, j]
    Li = np.zeros_like(S)
    for j in range(K):
        Li[j, j] = 1.0 / L[j, j]
        for i in range(j + 1, K):
            Li[i, j] = -(L[i, j:i] * Li[j:i, j]).sum(axis=0) / L[i, i]
    return logdet, Li


def _T(A: np.ndarray) -> np.ndarray:
    """Transpose the two block axes of (i, j, G)."""
    return A.transpose(1, 0, 2)


# -- the factorisation -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TreeFactor:
    """``P = LL'`` in tree order: per level ``Li`` (``L_g⁻¹``), ``V[l][a]``, ``VB[l]``; border ``LB``."""

    layout: TreeLayout
    Li: tuple[np.ndarray, ...]
    V: tuple[tuple[np.ndarray, ...], ...]
    VB: tuple[np.ndarray, ...]
    LB: np.ndarray
    logdet: float

    @property
    def pivots(self) -> list[np.ndarray]:
        """The elimination's pivots (squared diagonal of ``L``): (K, G) per level, then the border's."""
        out = [1.0 / np.diagonal(li, axis1=0, axis2=1).T ** 2 for li in self.Li]
        return out + [np.diag(self.LB) ** 2]


def block_matrix(ZtZ: tuple[np.ndarray, ...], ZtZ_up: tuple[tuple[np.ndarray, ...], ...], T: list[np.ndarray],
                 EB: tuple[np.ndarray, ...], BB: np.ndarray, scale: float,
                 ridge: float) -> tuple[list, list, list, np.ndarray]:
    """Blocks of ``ridge·I + scale·T'MT`` on the pattern: ``S[l]``, ``F[l][a]``, ``FB[l]``, ``SB``.

    ``T[l]`` is the node transform of level ``l``; ``EB[l]`` the node × border blocks of ``M``
    and ``BB`` the border's own, both already multiplied by the border's (diagonal) transform.
    """
    S, F, FB = [], [], []
    for l, Tl in enumerate(T):
        k = Tl.shape[0]
        S_l = _sandwich(Tl * scale, ZtZ[l], Tl)
        S_l[range(k), range(k)] += ridge
        S.append(S_l)
        F.append([_sandwich(Tl * scale, ZtZ_up[l][a], T[a]) for a in range(l)])
        FB.append(np.einsum("im,ijg->mjg", Tl * scale, EB[l]))
    SB = BB * scale
    SB[np.diag_indices(SB.shape[0])] += ridge
    return S, F, FB, SB


def factorize(layout: TreeLayout, S: list, F: list, FB: list, SB: np.ndarray) -> TreeFactor:
    """Block Cholesky leaves first (the lists are consumed); raises LinAlgError if not PD."""
    n_levels = len(layout.levels)
    Li: list[np.ndarray] = [np.empty(0)] * n_levels
    V: list[tuple[np.ndarray, ...]] = [()] * n_levels
    VB: list[np.ndarray] = [np.empty(0)] * n_levels
    logdet = 0.0
    for l in reversed(range(n_levels)):
        ld, Li[l] = _chol_inv(S[l])
        logdet += ld
        V[l] = tuple(_mm(Li[l], F[l][a]) for a in range(l))
        VB[l] = _mm(Li[l], FB[l])
        for a in range(l):
            S[a] = S[a] - layout.segment_sum(_tm(V[l][a], V[l][a]), l, a)
            for b in range(a):
                F[a][b] = F[a][b] - layout.segment_sum(_tm(V[l][a], V[l][b]), l, a)
            FB[a] = FB[a] - layout.segment_sum(_tm(V[l][a], VB[l]), l, a)
        flat = _T(VB[l]).reshape(SB.shape[0], -1)  # (d_B, K·G)
        SB = SB - flat @ flat.T
    LB = np.zeros((0, 0))
    if SB.shape[0]:
        LB, info = lapack.dpotrf(SB, lower=1, clean=1)
        if info != 0:
            raise np.linalg.LinAlgError("the border pivot is not positive definite")
        logdet += 2.0 * float(np.log(np.diag(LB)).sum())
    return TreeFactor(layout, tuple(Li), tuple(V), tuple(VB), LB, logdet)


def forward(fac: TreeFactor, c: list[np.ndarray], c_B: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Solve ``L w = c`` leaves up: ``w_g = L_g⁻¹ ĉ_g``, then ``ĉ_x -= V_x' w_g`` for its ancestors/border."""
    layout = fac.layout
    n_levels = len(layout.levels)
    c = list(c)
    w: list[np.ndarray] = [np.empty(0)] * n_levels
    for l in reversed(range(n_levels)):
        w[l] = _mv(fac.Li[l], c[l])
        for a in range(l):
            c[a] = c[a] - layout.segment_sum(_tv(fac.V[l][a], w[l]), l, a)
        c_B = c_B - np.einsum("kbg,kg->b", fac.VB[l], w[l])
    w_B = lapack.dtrtrs(fac.LB, c_B, lower=1)[0] if len(c_B) else c_B
    return w, w_B


def backward(fac: TreeFactor, w: list[np.ndarray], w_B: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Solve ``L'a = w`` top down: ``a_g = L_g'⁻¹ (w_g - Σ_x V_x a_x)`` over its ancestors and the border."""
    layout = fac.layout
    a_B = lapack.dtrtrs(fac.LB, w_B, lower=1, trans=1)[0] if len(w_B) else w_B
    a: list[np.ndarray] = []
    for l in range(len(layout.levels)):
        t = w[l] - np.einsum("kbg,b->kg", fac.VB[l], a_B)
        for x in range(l):
            t = t - _mv(fac.V[l][x], layout.up(a[x], l, x))
        a.append(_tv(fac.Li[l], t))
    return a, a_B


@dataclass(frozen=True, eq=False)
class SelectedInverse:
    """Blocks of ``Σ = P⁻¹`` on the pattern (group-last): ``diag[l]`` (K, K, G), ``up[l][a]``
    (K, K_a, G) with the ancestor at level ``a``, ``border[l]`` (K, d_B, G), and ``BB``."""

    diag: tuple[np.ndarray, ...]
    up: tuple[tuple[np.ndarray, ...], ...]
    border: tuple[np.ndarray, ...]
    BB: np.ndarray

    def trace(self) -> float:
        return float(sum(np.einsum("iig->", d) for d in self.diag) + np.trace(self.BB))


def _between_ancestors(layout: TreeLayout, diag: list[np.ndarray], up: list[tuple[np.ndarray, ...]], l: int, a: int,
                       b: int) -> np.ndarray:
    """``Σ[ancestor at a, ancestor at b]`` per node of level ``l`` (K_a, K_b, G_l), from the levels above."""
    if a == b:
        return layout.up(diag[a], l, a)
    if a > b:
        return layout.up(up[a][b], l, a)
    return _T(layout.up(up[b][a], l, b))


def selected_inverse(fac: TreeFactor) -> SelectedInverse:
    """Takahashi's recursion top down (see the module docstring), batched per level."""
    layout = fac.layout
    SBB = np.zeros((0, 0))
    if fac.LB.shape[0]:
        LBi = lapack.dtrtri(fac.LB, lower=1)[0]
        SBB = LBi.T @ LBi
    diag: list[np.ndarray] = []
    up: list[tuple[np.ndarray, ...]] = []
    border: list[np.ndarray] = []
    for l in range(len(layout.levels)):
        Li = fac.Li[l]
        U = [_tm(Li, v) for v in fac.V[l]]  # S⁻¹F = L'⁻¹V
        UB = _tm(Li, fac.VB[l])
        anc_B = [layout.up(border[a], l, a) for a in range(l)]  # Σ[ancestor a, border]
        ups = []
        for b in range(l):
            acc = _mt(UB, anc_B[b])
            for a in range(l):
                acc = acc + _mm(U[a], _between_ancestors(layout, diag, up, l, a, b))
            ups.append(-acc)
        border_l = -np.einsum("kbg,bc->kcg", UB, SBB)
        for a in range(l):
            border_l = border_l - _mm(U[a], anc_B[a])
        d = _tm(Li, Li) - _mt(border_l, UB)
        for b in range(l):
            d = d - _mt(ups[b], U[b])
        diag.append(d)
        up.append(tuple(ups))
        border.append(border_l)
    return SelectedInverse(tuple(diag), tuple(up), tuple(border), SBB)


# -- the likelihood --------------------------------------------------------------------------
def node_transforms(md: TreeMarginalData, lambdas: list[np.ndarray]) -> list[np.ndarray]:
    """``T`` of one node per level: block diagonal in the level's terms' ``Λ_t``."""
    out = []
    for lv in md.layout.levels:
        if len(lv.terms) == 1:
            out.append(np.asarray(lambdas[lv.terms[0]], dtype=float))
            continue
        T = np.zeros((lv.k, lv.k))
        for i, s in zip(lv.terms, lv.slots):
            T[s, s] = lambdas[i]
        out.append(T)
    return out


def _residuals(md: TreeMarginalData, beta_S: np.ndarray) -> tuple[float, list[np.ndarray], np.ndarray, np.ndarray]:
    """``q`` (RSS at the prior mean μ), ``r = W'y - Mμ`` at the nodes, the border and the sampled betas.

    With ``μ = [m_I, beta_S]``: ``q = q0 - 2 β'r_S0 + β'M_SS β``, ``r_B = r_B0 - M_IS β``, ``r_S = r_S0 - M_SS β``.
    """
    q0, rB0, rS0 = md.at_prior_mean
    if not len(md.sampled):
        return q0, list(md.r0), rB0, rS0
    MSSb = md.XtX_SS @ beta_S
    q = q0 - 2.0 * beta_S @ rS0 + beta_S @ MSSb
    r = [r0 - np.einsum("ksg,s->kg", e, beta_S) for r0, e in zip(md.r0, md.E_S)]
    return float(q), r, rB0 - md.XtX_SI.T @ beta_S, rS0 - MSSb


def _c(r: list[np.ndarray], r_B: np.ndarray, T: list[np.ndarray], TB: BorderTransform) -> tuple[list[np.ndarray], np.ndarray]:
    """``c = T'r`` at the nodes (K, G) and the border."""
    return [Tl.T @ rl for rl, Tl in zip(r, T)], TB.right(r_B, 0)


def _factor_at(md: TreeMarginalData, T: list[np.ndarray], TB: BorderTransform, sigma: float) -> TreeFactor:
    """The factor of ``P = I + T'M_II T/σ²``."""
    EB, BB, _ = _border_blocks(md, TB)
    S, F, FB, SB = block_matrix(md.ZtZ, md.ZtZ_up, T, EB, BB, 1.0 / (sigma * sigma), 1.0)
    return factorize(md.layout, S, F, FB, SB)


def _M_times(md: TreeMarginalData, v: list[np.ndarray], v_B: np.ndarray) -> list[np.ndarray]:
    """``(M_II v)`` at the nodes, for node vectors ``v`` (K, G) and border vector ``v_B``."""
    layout = md.layout
    n_levels = len(layout.levels)
    out = []
    for l in range(n_levels):
        acc = _mv(md.ZtZ[l], v[l]) + np.einsum("kbg,b->kg", md.E_I[l], v_B)
        for a in range(l):
            acc = acc + _mv(md.ZtZ_up[l][a], layout.up(v[a], l, a))
        for m in range(l + 1, n_levels):
            acc = acc + layout.segment_sum(_tv(md.ZtZ_up[m][l], v[m]), m, l)
        out.append(acc)
    return out


def _border_M_times(md: TreeMarginalData, v: list[np.ndarray], v_B: np.ndarray) -> np.ndarray:
    """``(M_II v)`` at the border."""
    out = md.M_BB @ v_B
    for e, vl in zip(md.E_I, v):
        out = out + np.einsum("kbg,kg->b", e, vl)
    return out


def _H_border(md: TreeMarginalData, T: list[np.ndarray], MT: np.ndarray, sel: SelectedInverse,
              sl: slice, m: int, k: int) -> np.ndarray:
    """``Σ_j [M T Σ]_jj`` over the groups ``j`` of a crossed term (k × k), on the pattern."""
    Y = (MT[sl] @ sel.BB[:, sl]).reshape(m, k, m, k)
    H = np.einsum("jsjt->st", Y)
    for l, Tl in enumerate(T):
        K, G = Tl.shape[0], md.layout.levels[l].n_groups
        X1 = np.einsum("kj,kbg->jbg", Tl, md.E_I[l][:, sl]).reshape(K, m, k, G)
        H = H + np.einsum("kmsg,kmtg->st", X1, sel.border[l][:, sl].reshape(K, m, k, G))
    return H


def _H_sums(md: TreeMarginalData, T: list[np.ndarray], EB: tuple[np.ndarray, ...], sel: SelectedInverse) -> list[np.ndarray]:
    """``Σ_g [M T Σ]_gg`` per level (K × K): only pattern blocks of ``M`` and ``Σ`` enter."""
    n_levels = len(md.layout.levels)
    out = []
    for l in range(n_levels):
        H = _sum_mm(np.einsum("ijg,jk->ikg", md.ZtZ[l], T[l]), sel.diag[l]) + _sum_mt(EB[l], sel.border[l])
        for a in range(l):
            H = H + _sum_mt(np.einsum("ijg,jk->ikg", md.ZtZ_up[l][a], T[a]), sel.up[l][a])
        for m in range(l + 1, n_levels):
            H = H + _sum_mm(np.einsum("jig,jk->ikg", md.ZtZ_up[m][l], T[m]), sel.up[m][l])
        out.append(H)
    return out


def _rejected(lambdas: list[np.ndarray], beta_S: np.ndarray, value: float, fill: float):
    return value, fill, [np.full_like(np.asarray(l, dtype=float), fill) for l in lambdas], np.full(len(beta_S), fill)


def tree_value_and_grad(md: TreeMarginalData, structure: BayesStructure, sigma: float, lambdas: list[np.ndarray],
                        beta_S: np.ndarray) -> tuple[float, float, list[np.ndarray], np.ndarray]:
    """Marginal log-likelihood (less ``n/2 log 2π``) and its gradient, as :func:`.pt_marginal.value_and_grad`."""
    if not (np.isfinite(sigma) and sigma > 0):
        return _rejected(lambdas, beta_S, -np.inf, 0.0)
    beta_S = np.asarray(beta_S, dtype=float)
    T = node_transforms(md, lambdas)
    TB = md.border_transform(lambdas)
    q, r, r_B, r_S = _residuals(md, beta_S)
    c, c_B = _c(r, r_B, T, TB)
    try:
        fac = _factor_at(md, T, TB, sigma)
    except np.linalg.LinAlgError:
        return _rejected(lambdas, beta_S, -np.inf, np.nan)
    w, w_B = forward(fac, c, c_B)
    a, a_B = backward(fac, w, w_B)
    s2 = sigma * sigma
    ca = float(sum(np.vdot(x, x) for x in w) + w_B @ w_B)  # c'P⁻¹c
    ll = -md.n * np.log(sigma) - 0.5 * fac.logdet - q / (2 * s2) + ca / (2 * s2 * s2)
    if not np.isfinite(ll):
        return _rejected(lambdas, beta_S, -np.inf, np.nan)
    sel = selected_inverse(fac)
    aa = float(sum(np.vdot(x, x) for x in a) + a_B @ a_B)
    tr_PinvK = md.size_I - sel.trace()
    aKa = ca - aa  # K a = P a - a = c - a
    g_sigma = -md.n / sigma + tr_PinvK / sigma + q / (s2 * sigma) + aKa / (s2 * s2 * sigma) - 2 * ca / (s2 * s2 * sigma)
    v = [Tl @ al for al, Tl in zip(a, T)]  # T a at the nodes
    v_B = TB.left(a_B)
    MTa = _M_times(md, v, v_B)
    EB, _, MT = _border_blocks(md, TB)
    H = _H_sums(md, T, EB, sel)
    g_lams: list[np.ndarray] = [np.empty(0)] * len(structure.terms)
    for l, lv in enumerate(md.layout.levels):
        for i, s in zip(lv.terms, lv.slots):
            A = a[l][s]
            g_lams[i] = -H[l][s, s] / s2 + r[l][s] @ A.T / (s2 * s2) - MTa[l][s] @ A.T / (s2 * s2 * s2)
    if TB.blocks:  # crossed terms in the border: the same three pieces over their groups
        MTa_B = _border_M_times(md, v, v_B)
        for bt, (sl, m, k, _) in zip(md.border_terms, TB.blocks):
            A_B, R_B, N_B = a_B[sl].reshape(m, k), r_B[sl].reshape(m, k), MTa_B[sl].reshape(m, k)
            g_lams[bt.term] = (-_H_border(md, T, MT, sel, sl, m, k) / s2 + R_B.T @ A_B / (s2 * s2)
                               - N_B.T @ A_B / (s2 * s2 * s2))
    g_beta = np.zeros(0)
    if len(md.sampled):
        MSI_Ta = md.XtX_SI @ v_B
        for l in range(len(v)):
            MSI_Ta = MSI_Ta + np.einsum("ksg,kg->s", md.E_S[l], v[l])
        g_beta = r_S / s2 - MSI_Ta / (s2 * s2)
    return float(ll), float(g_sigma), g_lams, g_beta


def tree_conditional_draws(md: TreeMarginalData, structure: BayesStructure, sigma: np.ndarray, lambdas: list[np.ndarray],
                           beta_S: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact draws of ``u = [beta, b]`` given each draw of ``(σ, Λ_t, beta_S)``: (S, d), ``u`` order.

    Per draw one factorisation and one back-substitution, ``z = L'⁻¹(L⁻¹c/σ² + ε)``: O(groups).
    """
    layout = md.layout
    S = len(sigma)
    out = np.zeros((S, layout.size))
    nb, n_i = len(md.border), len(md.integrated)
    crossed_u = md.border_u_index[len(md.integrated) + len(md.sampled):]
    for s in range(S):
        lams = [np.asarray(l[s], dtype=float) for l in lambdas]
        T = node_transforms(md, lams)
        TB = md.border_transform(lams)
        _, r, r_B, _ = _residuals(md, np.asarray(beta_S[s], dtype=float))
        s2 = float(sigma[s]) ** 2
        fac = _factor_at(md, T, TB, float(sigma[s]))
        w, w_B = forward(fac, *_c(r, r_B, T, TB))
        eps = rng.standard_normal(md.size_I)
        rhs, off = [], nb
        for l, lv in enumerate(layout.levels):
            rhs.append(w[l] / s2 + eps[off : off + lv.size].reshape(lv.k, lv.n_groups))
            off += lv.size
        z, z_B = backward(fac, rhs, w_B / s2 + eps[:nb])
        u = out[s]
        coef_B = md.m_B + TB.left(z_B)
        u[md.integrated] = coef_B[:n_i]
        u[crossed_u] = coef_B[n_i:]
        u[md.sampled] = beta_S[s]
        for l in range(len(layout.levels)):
            u[md.u_index[l]] = T[l] @ z[l]
    return out


def ridge_solution(md: TreeMarginalData, relative: float = 1e-8) -> tuple[np.ndarray, float, int]:
    """``u = (M + δI)⁻¹ W'y`` with ``δ = relative · tr(M)/d`` (all population columns in the border),
    its residual sum of squares, and the rank of ``M`` counted as the pivots above 1e-4 of their
    diagonal entry (a deficient direction keeps a pivot of order ``δ``) -- the sampler's start."""
    st = md.stats
    layout = md.layout
    trace = np.trace(st.XtX) + sum(np.einsum("gii->", z) for z in st.ZtZ)
    delta = relative * trace / layout.size
    T = [np.eye(lv.k) for lv in layout.levels]
    S, F, FB, SB = block_matrix(md.ZtZ, md.ZtZ_up, T, tuple(_last(x) for x in st.ZtX), st.XtX, 1.0, delta)
    fac = factorize(layout, S, F, FB, SB)
    w, w_B = forward(fac, [_last(z) for z in st.Zty], st.Xty.copy())
    a, a_B = backward(fac, w, w_B)
    u = np.zeros(layout.size)
    u[md.border_u_index] = a_B
    for l in range(len(layout.levels)):
        u[md.u_index[l]] = a[l]
    uc = float(sum(np.vdot(x, x) for x in w) + w_B @ w_B)  # u'(M + δI)u = u'W'y
    rss = st.yty - uc - delta * float(u @ u)
    diagonals = [np.einsum("iig->ig", z) for z in md.ZtZ] + [np.diag(st.XtX)]
    rank = int(sum(((piv > 1e-4 * (dg + delta)) & (dg > 0)).sum() for piv, dg in zip(fac.pivots, diagonals)))
    return u, float(rss), rank
