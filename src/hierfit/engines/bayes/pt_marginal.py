"""The marginal gaussian log-likelihood as one PyTensor Op with an analytic gradient.

Why an Op: written as a PyTensor graph, the gradient of a (p+q)-square Cholesky costs
milliseconds here (PyTensor's C backend links no BLAS; JAX's CPU Cholesky is slow for small
matrices). The closed form below costs a few (p+q)³ LAPACK flops per evaluation, so a NUTS
step costs well under a millisecond whatever the number of rows.

With ``K = T'MT/σ²``, ``P = I + K``, ``r = W'y - Mμ``, ``c = T'r_I``, ``a = P⁻¹c`` and
``ll = -n log σ - ½ log|P| - q/(2σ²) + c'a/(2σ⁴)`` (constants dropped: ``-n/2 log 2π``):

* ``∂ll/∂σ  = -n/σ + tr(P⁻¹K)/σ + q/σ³ + a'Ka/σ⁵ - 2c'a/σ⁵``
* ``∂ll/∂T  = -MTP⁻¹/σ² + r_I a'/σ⁴ - (MTa) a'/σ⁶`` (summed over each term's diagonal blocks
  to give ``∂ll/∂Λ_t``)
* ``∂ll/∂β_S = r_S/σ² - M_SI T a/σ⁴``

The same formulas are computed on the tree of nested groups by
:func:`.tree_marginal.tree_value_and_grad` (``tr(P⁻¹)`` and the blocks of ``M T P⁻¹`` from the
selected inverse); :func:`value_and_grad` dispatches on the kind of summaries it is given.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from hierfit.engines.bayes.marginal import MarginalData, _right_T, _T_vec
from hierfit.engines.bayes.structure import BayesStructure
from hierfit.engines.bayes.tree_marginal import TreeMarginalData, tree_value_and_grad


def value_and_grad(md: MarginalData | TreeMarginalData, structure: BayesStructure, sigma: float, lambdas: list[np.ndarray],
                   beta_S: np.ndarray):
    """Marginal log-likelihood and its gradient w.r.t. ``sigma``, each ``Λ_t`` and ``beta_S``."""
    if isinstance(md, TreeMarginalData):
        return tree_value_and_grad(md, structure, sigma, lambdas, beta_S)
    return dense_value_and_grad(md, structure, sigma, lambdas, beta_S)


def dense_value_and_grad(md: MarginalData, structure: BayesStructure, sigma: float, lambdas: list[np.ndarray],
                         beta_S: np.ndarray):
    """:func:`value_and_grad` with the dense (d_I × d_I) algebra of the module docstring."""
    if not (np.isfinite(sigma) and sigma > 0):
        # a wild warm-up trajectory (sigma underflowed to 0): reject the point, NUTS marks it divergent
        return -np.inf, 0.0, [np.zeros_like(l) for l in lambdas], np.zeros_like(beta_S, dtype=float)
    mu = np.zeros(structure.size)
    mu[md.index_I] = md.m_I
    mu[md.index_S] = beta_S
    Mmu = md.M @ mu
    r = md.Wty - Mmu
    q = md.yty - 2 * mu @ md.Wty + mu @ Mmu
    lam1 = [l[None] for l in lambdas]
    rI = r[md.index_I]
    c = _T_vec(rI[None], md.s0, lam1, structure, transpose=True)[0]
    MT = _right_T(md.M_II[None], md.s0, lam1, structure)[0]
    TMT = _right_T(MT.T[None], md.s0, lam1, structure)[0]
    s2 = sigma * sigma
    dI = len(c)
    P = TMT / s2
    P[np.diag_indices(dI)] += 1.0
    # LAPACK directly: one evaluation per leapfrog step is a few small (d_I ~ 70) factorisations,
    # where scipy.linalg's checking wrappers cost as much as the arithmetic (measured)
    L, info = lapack.dpotrf(P, lower=1, clean=1, overwrite_a=1)
    if info != 0 or not np.isfinite(c).all():
        return -np.inf, np.nan, [np.full_like(l, np.nan) for l in lambdas], np.full_like(beta_S, np.nan)
    a, _ = lapack.dpotrs(L, c, lower=1)
    ca = c @ a
    ll = -md.n * np.log(sigma) - np.log(np.diag(L)).sum() - q / (2 * s2) + ca / (2 * s2 * s2)
    Pinv, _ = lapack.dpotri(L, lower=1)  # the lower triangle of P^-1
    Pinv = Pinv + np.tril(Pinv, -1).T
    tr_PinvK = dI - np.trace(Pinv)
    aKa = ca - a @ a
    g_sigma = -md.n / sigma + tr_PinvK / sigma + q / (s2 * sigma) + aKa / (s2 * s2 * sigma) - 2 * ca / (s2 * s2 * sigma)
    H = MT @ Pinv  # M T P⁻¹
    MTa = MT @ a
    g_lams = []
    off = len(md.s0)
    for t in structure.terms:
        blk = slice(off, off + t.size)
        Hb = H[blk, blk].reshape(t.n_groups, t.k, t.n_groups, t.k)
        diag_blocks = np.einsum("gigj->ij", Hb)
        A = a[blk].reshape(t.n_groups, t.k)
        R = rI[blk].reshape(t.n_groups, t.k)
        X = MTa[blk].reshape(t.n_groups, t.k)
        g_lams.append(-diag_blocks / s2 + R.T @ A / (s2 * s2) - X.T @ A / (s2 * s2 * s2))
        off += t.size
    if len(md.index_S):
        Ta = _T_vec(a[None], md.s0, lam1, structure, transpose=False)[0]
        g_beta = r[md.index_S] / s2 - md.M_SI @ Ta / (s2 * s2)
    else:
        g_beta = np.zeros(0)
    return float(ll), float(g_sigma), g_lams, g_beta


def _op_class():
    """The Op class, made on first use so importing this module does not import PyTensor."""
    global _OP_CLASS
    if _OP_CLASS is not None:
        return _OP_CLASS
    import pytensor.tensor as pt
    from pytensor.graph.basic import Apply
    from pytensor.graph.op import Op

    class MarginalLoglik(Op):
        """Outputs the value and its gradient pieces; see the module docstring.

        The gradient of output 0 refers to the other outputs of an identical node, which
        PyTensor merges, so value and gradient come from a single evaluation.
        """

        __props__ = ()

        def __init__(self, md: MarginalData | TreeMarginalData, structure: BayesStructure) -> None:
            self.md = md
            self.structure = structure

        def make_node(self, sigma, *rest):
            inputs = [pt.as_tensor_variable(sigma), *map(pt.as_tensor_variable, rest)]
            n_terms = len(self.structure.terms)
            outputs = [pt.dscalar(), pt.dscalar(), *[pt.dmatrix() for _ in range(n_terms)], pt.dvector()]
            return Apply(self, inputs, outputs)

        def perform(self, node, inputs, outputs):
            sigma, *lams, beta_S = inputs
            ll, gs, gl, gb = value_and_grad(self.md, self.structure, float(sigma), [np.asarray(l) for l in lams], np.asarray(beta_S))
            outputs[0][0] = np.asarray(ll)
            outputs[1][0] = np.asarray(gs)
            for i, g in enumerate(gl):
                outputs[2 + i][0] = np.asarray(g)
            outputs[-1][0] = np.asarray(gb, dtype=float)

        def grad(self, inputs, output_grads):
            # first derivatives of the value (output 0) only: all NUTS needs
            outs = self(*inputs)
            return [output_grads[0] * o for o in outs[1:]]

    _OP_CLASS = MarginalLoglik
    globals()["MarginalLoglik"] = MarginalLoglik  # picklable by name for multiprocess sampling
    MarginalLoglik.__module__ = __name__
    MarginalLoglik.__qualname__ = "MarginalLoglik"
    return MarginalLoglik


_OP_CLASS = None


def marginal_loglik_op(md: MarginalData | TreeMarginalData, structure: BayesStructure):
    """A function ``(sigma, [Λ_t], beta_S) -> ll`` (a PyTensor scalar with the analytic gradient)."""
    import pytensor.tensor as pt

    op = _op_class()(md, structure)

    def loglik(sigma, lambdas, beta_S):
        return op(sigma, *lambdas, pt.as_tensor_variable(beta_S).astype("float64"))[0]

    return loglik


def __getattr__(name: str):
    # unpickling in a sampler worker process looks the class up by name
    if name == "MarginalLoglik":
        return _op_class()
    raise AttributeError(name)
