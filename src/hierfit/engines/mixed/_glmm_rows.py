"""Per-row likelihood terms of a GLMM family: value, score and weights in the linear predictor.

For a row with linear predictor ``eta``, prior weight ``w``, trials ``t`` and the family's
log-density ``l(y | mu(eta))`` the Laplace fit needs

* ``dev = -2 w l`` (its sum is the conditional part of glmer's Laplace deviance),
* ``d1 = d dev / d eta``,
* the weight of the row in ``H = Lambda'Z' W Z Lambda + I``: the expected (Fisher)
  information ``w t mu'^2 / V(mu)`` (glmer) or the observed one ``d2 dev / d eta^2 / 2``
  (TMB, glmmTMB); for canonical links they coincide,
* the observed weight (the exact Hessian of the penalised deviance in ``u``, used by the
  implicit derivative of the conditional modes) and ``dW/deta`` (gradient of ``log|H|``).

Everything is computed from the family row (link derivatives, variance function and its
derivatives), so any family/link pair of the table works.  The common canonical pairs
have compiled single-pass versions (``_FAST``, keyed by family and link name), which
agree with the generic formulas to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hierfit.model.family import Family

from ._glmm_kernels import HAVE_NUMBA

__all__ = ["RowModel", "RowTerms", "row_chunks", "working_response"]

#: Fewest and most rows per chunk of the one-off row statistics (the constant of the compiled
#: passes, the deviance and Pearson sums at the end of a fit).
CHUNK_ROWS = (256, 1 << 13)


def row_chunks(n: int) -> list[slice]:
    """Slices of ``n`` rows in chunks of at most ``n / 64`` rows (within ``CHUNK_ROWS``).

    The generic family functions make a dozen temporaries per row; chunked, they stay a
    small fraction of one row vector at any ``n`` (memory is per row, the fit's scale limit)
    while a million rows take only ~120 chunks of Python overhead.

    >>> [(s.start, s.stop) for s in row_chunks(600)]
    [(0, 256), (256, 512), (512, 600)]
    """
    size = min(max(n // 64, CHUNK_ROWS[0]), CHUNK_ROWS[1])
    return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]


@dataclass
class RowTerms:
    """Row terms at one linear predictor (arrays of length n).

    Attributes
    ----------
    dev : float
        ``sum(-2 w log p)``.
    d1 : numpy.ndarray
        ``d dev_i / d eta_i``.
    w : numpy.ndarray
        Weights of ``H`` (expected or observed information, per ``information``).
    wo : numpy.ndarray
        Observed weights ``d2 dev_i / d eta_i^2 / 2`` (the same object as ``w`` when equal).
    dw : numpy.ndarray or None
        ``d w_i / d eta_i`` (computed on request).
    """

    dev: float
    d1: np.ndarray
    w: np.ndarray
    wo: np.ndarray
    dw: np.ndarray | None


def _softplus_logit(eta, y, t, pw, grad, d1, w, dw):  # type: ignore[no-untyped-def]
    """Binomial-logit rows in one pass; returns ``sum w (y eta - t log(1 + e^eta))``."""
    ll = 0.0
    for i in range(eta.size):
        e = eta[i]
        a = _exp(-abs(e))
        inv = 1.0 / (1.0 + a)
        p = inv if e > 0 else a * inv
        sp = (e if e > 0 else 0.0) + _log1p01(a)
        ti = t[i]
        pwi = pw[i]
        ll += pwi * (y[i] * e - ti * sp)
        d1[i] = -2.0 * pwi * (y[i] - ti * p)
        wi = pwi * ti * a * inv * inv  # p (1 - p) without cancellation
        w[i] = wi
        if grad:
            # d p(1-p)/deta = p(1-p)(1-2p), and 1 - 2p = -sign(eta) (1 - a) / (1 + a)
            q = (1.0 - a) * inv
            dw[i] = -wi * q if e > 0 else wi * q
    return ll


def _exp_log(eta, y, t, pw, grad, d1, w, dw):  # type: ignore[no-untyped-def]
    """Poisson-log rows in one pass; returns ``sum w (y eta - e^eta)``."""
    ll = 0.0
    for i in range(eta.size):
        e = min(eta[i], 700.0)
        mu = _exp(e)
        pwi = pw[i]
        ll += pwi * (y[i] * e - mu)
        d1[i] = -2.0 * pwi * (y[i] - mu)
        wi = pwi * mu
        w[i] = wi
        if grad:
            dw[i] = wi
    return ll


def _working_shift(eta, xb, d1, w, out):  # type: ignore[no-untyped-def]
    """``out = eta - xb - d1 / (2 w)`` (0 shift where a row has no weight)."""
    for i in range(eta.size):
        wi = w[i]
        out[i] = eta[i] - xb[i] - (d1[i] / (2.0 * wi) if wi > 0.0 else 0.0)


def _np_logit(eta, y, t, pw, grad, d1, w, dw):  # type: ignore[no-untyped-def]
    a = np.exp(-np.abs(eta))
    sp = np.maximum(eta, 0.0) + np.log1p(a)
    p = np.where(eta > 0, 1.0 / (1.0 + a), a / (1.0 + a))
    d1[:] = -2.0 * pw * (y - t * p)
    w[:] = pw * t * a / (1.0 + a) ** 2
    if grad:
        dw[:] = -w * np.tanh(0.5 * eta)
    return float(np.sum(pw * (y * eta - t * sp)))


def _np_log(eta, y, t, pw, grad, d1, w, dw):  # type: ignore[no-untyped-def]
    e = np.minimum(eta, 700.0)
    mu = np.exp(e)
    d1[:] = -2.0 * pw * (y - mu)
    w[:] = pw * mu
    if grad:
        dw[:] = w
    return float(np.sum(pw * (y * e - mu)))


if HAVE_NUMBA:
    import numba as _nb

    from ._glmm_fastmath import exp as _exp
    from ._glmm_fastmath import log1p01 as _log1p01

    _softplus_logit = _nb.njit(cache=True, nogil=True, fastmath={"contract"})(_softplus_logit)
    _exp_log = _nb.njit(cache=True, nogil=True, fastmath={"contract"})(_exp_log)
    _working_shift = _nb.njit(cache=True, nogil=True)(_working_shift)
else:  # pragma: no cover
    _softplus_logit, _exp_log = _np_logit, _np_log
    _working_shift = None  # type: ignore[assignment]


def working_response(eta: np.ndarray, xb: np.ndarray, d1: np.ndarray, w: np.ndarray,
                     use_numba: bool = True) -> np.ndarray:
    """PIRLS working response ``eta - xb - d1 / (2 w)`` for non-negative finite weights."""
    if use_numba and _working_shift is not None:
        out = np.empty(eta.size)
        _working_shift(eta, xb, d1, w, out)
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        return eta - xb - np.where(w > 0.0, d1 / (2.0 * w), 0.0)

FastFn = Callable[..., float]
#: Compiled row passes for canonical pairs, keyed by (family name, link name).  Each
#: returns the eta-dependent part of ``sum w log p``; the rest is a per-data constant.
_FAST: dict[tuple[str, str], tuple[FastFn, FastFn]] = {
    ("bernoulli", "logit"): (_softplus_logit, _np_logit),
    ("binomial", "logit"): (_softplus_logit, _np_logit),
    ("poisson", "log"): (_exp_log, _np_log),
}


class RowModel:
    """The per-row terms of one family on one data set.

    Parameters
    ----------
    family : Family
        Family row (with its link).
    y, trials, weights : numpy.ndarray
        Outcome (successes for binomial), trials (1 where the family has none) and prior
        weights, all ``(n,)``.
    information : {"expected", "observed"}
        Weights of ``H`` in the Laplace log-determinant.
    fast : bool
        Use the compiled pass for the pair when there is one.
    """

    def __init__(self, family: Family, y: np.ndarray, trials: np.ndarray, weights: np.ndarray,
                 information: str, fast: bool = True) -> None:
        if information not in ("expected", "observed"):
            raise ValueError("information must be 'expected' or 'observed'")
        self.family = family
        self.y = y
        self.t = trials
        self.pw = weights
        self.information = information
        self.canonical_pair = _is_canonical_pair(family)
        key = (family.name, family.link.name)
        self._fast = _FAST.get(key) if (fast and self.canonical_pair) else None
        self._const: dict[float | None, float] = {}

    @property
    def n(self) -> int:
        """Rows."""
        return int(self.y.size)

    def start_eta(self) -> np.ndarray:
        """glmer's starting linear predictor ``link(mustart)`` (without the offset)."""
        return np.asarray(self.family.link.link(self.family.start(self.y, self.t)), dtype=float)

    def fast_const(self, disp: float | None) -> float:
        """``sum w log p - (fast pass value)``: the eta-free part (binomial coefficients, y!)."""
        if disp not in self._const:
            assert self._fast is not None
            fam, total = self.family, 0.0
            # in chunks: the generic log-density makes a dozen temporaries per row, which on
            # the whole data would be the fit's peak memory (the sum is all that is kept)
            for sl in row_chunks(self.n):
                y, t, pw = self.y[sl], self.t[sl], self.pw[sl]
                eta0 = np.asarray(fam.link.link(fam.start(y, t)), dtype=float)
                k = y.size
                ll_var = self._fast[1](eta0, y, t, pw, False, np.empty(k), np.empty(k), np.empty(k))
                ll = fam.logpdf(y, fam.link.inverse(eta0), t, _arr(disp))
                total += float(np.sum(pw * ll)) - ll_var
            self._const[disp] = total
        return self._const[disp]

    def terms(self, eta: np.ndarray, disp: float | None, grad: bool = False) -> RowTerms:
        """Row terms at ``eta`` (``disp``: the NB size, else ``None``)."""
        n = self.n
        if self._fast is not None:
            d1, w = np.empty(n), np.empty(n)
            dw = np.empty(n) if grad else None
            fn = self._fast[0]
            ll = fn(eta, self.y, self.t, self.pw, grad, d1, w, w if dw is None else dw)
            return RowTerms(-2.0 * (ll + self.fast_const(disp)), d1, w, w, dw)
        return self._generic(eta, disp, grad)

    def row_deviance(self, eta: np.ndarray, disp: float | None) -> np.ndarray:
        """Per-row ``-2 w log p`` (adaptive quadrature sums them by group)."""
        mu = self.family.link.inverse(eta)
        return -2.0 * self.pw * self.family.logpdf(self.y, mu, self.t, _arr(disp))

    def _generic(self, eta: np.ndarray, disp_: float | None, grad: bool) -> RowTerms:
        fam, link = self.family, self.family.link
        disp = _arr(disp_)
        y, t, pw = self.y, self.t, self.pw
        mu = link.inverse(eta)
        m1 = link.mu_eta(eta)
        m2 = link.mu_eta_deriv(eta)
        V = fam.variance(mu, disp)
        V1 = fam.variance_deriv(mu, disp)
        res = y - t * mu
        s = res / V
        s_mu = -t / V - res * V1 / V ** 2
        fisher = t * m1 ** 2 / V
        observed = -(s_mu * m1 ** 2 + s * m2)
        d1 = -2.0 * pw * s * m1
        dev = float(np.sum(-2.0 * pw * fam.logpdf(y, mu, t, disp)))
        wo = pw * observed
        if self.canonical_pair:
            w = wo
        else:
            w = pw * fisher if self.information == "expected" else wo
        dw = None
        if grad:
            if self.information == "expected" or self.canonical_pair:
                dw = pw * t * (2.0 * m1 * m2 / V - m1 ** 3 * V1 / V ** 2)
            else:
                m3 = link.mu_eta_deriv2(eta)
                V2 = fam.variance_deriv2(mu, disp)
                s_mumu = 2.0 * t * V1 / V ** 2 + res * (2.0 * V1 ** 2 - V * V2) / V ** 3
                dw = -pw * (s_mumu * m1 ** 3 + 3.0 * s_mu * m1 * m2 + s * m3)
        return RowTerms(dev, d1, w, wo, dw)


def _arr(disp: float | None) -> np.ndarray | None:
    """A dispersion as the family functions take it."""
    return None if disp is None else np.asarray(disp, dtype=float)


def _is_canonical_pair(family: Family) -> bool:
    """Whether observed and expected information coincide (``V'(mu) mu'^2 = V(mu) mu''``).

    Checked numerically on a grid of linear predictors (with a size of 1 for families with
    a dispersion): true exactly for canonical links in the GLM sense (logit-binomial,
    log-Poisson), false e.g. for the negative binomial's log link or probit.
    """
    eta = np.linspace(-2.0, 2.0, 9)
    link = family.link
    disp = np.ones(1) if family.has_dispersion else None
    mu = link.inverse(eta)
    lhs = family.variance_deriv(mu, disp) * link.mu_eta(eta) ** 2
    rhs = family.variance(mu, disp) * link.mu_eta_deriv(eta)
    return bool(np.allclose(lhs, rhs, rtol=1e-10, atol=1e-14))
