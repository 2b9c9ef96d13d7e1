"""Bounded optimisation of the profiled criterion over theta.

lme4 uses BOBYQA.  Here: L-BFGS-B (it handles the ``theta_ii >= 0`` bounds exactly) on
the exact gradient of :mod:`._gradient` or, as a fallback, central finite differences;
then probes off active zero bounds (a diagonal theta at 0 is a stationary point that
gradient methods cannot leave by themselves).  Convergence is judged on the projected
gradient relative to the curvature scale, with a Nelder-Mead rescue when that check
fails; failures are reported, never silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import optimize

__all__ = ["OptimResult", "minimize_theta"]


@dataclass(frozen=True)
class OptimResult:
    """Outcome of :func:`minimize_theta`."""

    theta: np.ndarray
    fun: float
    converged: bool
    message: str
    n_evaluations: int


class _Counted:
    """Criterion wrapper counting evaluations and remembering the best point seen."""

    def __init__(self, f: Callable[[np.ndarray], float], lower: np.ndarray) -> None:
        self.f = f
        self.lower = lower
        self.n = 0
        self.best_x: np.ndarray | None = None
        self.best_f = np.inf

    def __call__(self, x: np.ndarray) -> float:
        # Clip into the box: Nelder-Mead and finite differences may step just outside.
        x = np.maximum(np.asarray(x, dtype=float), self.lower)
        self.n += 1
        v = float(self.f(x))
        self._record(x, v)
        return v

    def _record(self, x: np.ndarray, v: float) -> None:
        """Remember ``x`` if it is the best point so far."""
        if v < self.best_f:
            self.best_f, self.best_x = v, x.copy()


GradFn = Callable[[np.ndarray], "tuple[float, np.ndarray]"]


def _gradient(f: _Counted, x: np.ndarray, fx: float, lower: np.ndarray,
              central: bool = True) -> np.ndarray:
    """Finite-difference gradient.

    ``central``: central differences (second-order one-sided at an active bound), step
    ``1e-5``; otherwise forward differences with step ``1e-7`` (near ``sqrt(eps)``: the
    criterion is accurate to ~1e-14 relative, so truncation and rounding errors both stay
    far below what moves theta at the 1e-5 level) at half the number of evaluations.
    """
    g = np.empty_like(x)
    for i in range(x.size):
        h = (1e-5 if central else 1e-7) * max(1.0, abs(x[i]))
        e = np.zeros_like(x)
        e[i] = h
        if not central:
            g[i] = (f(x + e) - fx) / h
        elif x[i] - h < lower[i]:
            g[i] = (-3.0 * fx + 4.0 * f(x + e) - f(x + 2 * e)) / (2 * h)
        else:
            g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def _projected(g: np.ndarray, x: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Gradient with components that push into an active bound zeroed (those are optimal)."""
    at_bound = (x - lower) <= 1e-8
    return np.where(at_bound & (g > 0), 0.0, g)


def _lbfgsb(f: _Counted, x0: np.ndarray, lower: np.ndarray, maxiter: int,
            central: bool = True, grad: GradFn | None = None
            ) -> tuple[np.ndarray, float, str, bool]:
    """L-BFGS-B from ``x0``; ABNORMAL line-search exits are judged by the gradient check.

    ``grad`` (value and exact gradient) replaces finite differences when given.
    """
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        if grad is not None:
            x = np.maximum(np.asarray(x, dtype=float), lower)
            f.n += 1
            fx, g = grad(x)
            f._record(x, fx)
            return fx, g
        fx = f(x)
        return fx, _gradient(f, x, fx, lower, central)

    res = optimize.minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                            options={"maxiter": maxiter, "ftol": 1e-12,
                                     "gtol": 1e-10, "maxcor": 20})
    ok = bool(res.success) or "ABNORMAL" in str(res.message)
    return np.maximum(res.x, lower), float(res.fun), f"L-BFGS-B: {res.message}", ok


def _nelder_mead(f: _Counted, x: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, float, str]:
    """Derivative-free rescue from ``x`` (used only when the gradient check fails)."""
    simplex = [x]
    for i in range(x.size):
        xi = x.copy()
        xi[i] += 1e-2 * max(1.0, abs(x[i]))
        simplex.append(xi)
    nm = optimize.minimize(f, x, method="Nelder-Mead",
                           bounds=[(lo if np.isfinite(lo) else None, None) for lo in lower],
                           options={"initial_simplex": np.array(simplex), "xatol": 1e-9,
                                    "fatol": 1e-12, "maxiter": 400 * max(1, x.size)})
    return np.maximum(nm.x, lower), float(nm.fun), f"Nelder-Mead: {nm.message}"


def _escape_bound(f: _Counted, x: np.ndarray, fx: float, lower: np.ndarray,
                  below: dict[int, list[int]]) -> np.ndarray | None:
    """A better point off an active zero bound, or None if every probe is worse.

    ``below[i]`` lists the theta indices under diagonal element ``i`` in its column of
    ``T``.  With ``T_jj = 0`` the sign of that column does not change ``T T'`` but decides
    which way a correlation can grow, so both signs are probed.
    """
    for i in np.flatnonzero((lower == 0.0) & (x <= 1e-4)):
        for sign in (1.0, -1.0):
            if sign < 0 and not below.get(int(i)):
                continue
            for delta in (1e-3, 1e-2, 1e-1, 0.5):
                xt = x.copy()
                xt[below.get(int(i), [])] *= sign
                xt[i] = delta
                if f(xt) < fx - 1e-12 * max(1.0, abs(fx)):
                    return xt
    return None


def _check(f: _Counted, x: np.ndarray, fx: float, lower: np.ndarray,
           grad: GradFn | None = None) -> tuple[bool, float]:
    """lme4-like convergence check: projected gradient small relative to the curvature.

    Passes when a Newton step would move every theta by less than ``1e-3`` (relative to
    ``max(1, |theta|)``); the criterion is flat enough there for 1e-6 logLik parity.
    """
    if grad is not None:
        f.n += 1
        g = _projected(np.asarray(grad(x)[1], dtype=float), x, lower)
    else:
        g = _projected(_gradient(f, x, fx, lower), x, lower)
    h = np.empty_like(x)
    for i in range(x.size):
        step = 1e-4 * max(1.0, abs(x[i]))
        e = np.zeros_like(x)
        e[i] = step
        if x[i] - step < lower[i]:
            h[i] = (f(x + 2 * e) - 2 * f(x + e) + fx) / step ** 2
        else:
            h[i] = (f(x + e) - 2 * fx + f(x - e)) / step ** 2
    newton = np.abs(g) / np.maximum(np.abs(h), 1e-12)
    worst = float(np.max(newton / np.maximum(1.0, np.abs(x)))) if x.size else 0.0
    return worst <= 1e-3, worst


def minimize_theta(crit: Callable[[np.ndarray], float], x0: np.ndarray, lower: np.ndarray,
                   *, maxiter: int = 1000, n_starts: int = 1, seed: int = 0,
                   below: dict[int, list[int]] | None = None,
                   grad: GradFn | None = None) -> OptimResult:
    """Minimise a profiled criterion over theta within lme4's bounds.

    Parameters
    ----------
    crit : callable
        Criterion ``theta -> float`` (``inf`` where the system is not positive definite).
    x0 : numpy.ndarray
        Start.
    lower : numpy.ndarray
        Lower bounds (``-inf`` for free elements).
    maxiter : int
        Iteration cap for L-BFGS-B.
    n_starts : int
        Number of starts; extra ones perturb ``x0`` (seeded).
    seed : int
        Seed for the perturbations.
    below : dict of int -> list of int, optional
        For each diagonal theta index, the indices below it in the same column of ``T``.
    grad : callable, optional
        ``theta -> (criterion, gradient)``; exact gradients make L-BFGS-B need a few
        evaluations per iteration instead of ``2 len(theta) + 1``.

    Returns
    -------
    OptimResult
    """
    lower = np.asarray(lower, dtype=float)
    f = _Counted(crit, lower)
    x0 = np.maximum(np.asarray(x0, dtype=float), lower)
    if not np.isfinite(f(x0)):
        return OptimResult(x0, np.inf, False, "criterion not finite at the start", f.n)
    rng = np.random.default_rng(seed)
    starts = [x0] + [np.maximum(x0 * rng.uniform(0.3, 3.0, x0.size)
                                + rng.normal(0, 0.3, x0.size), lower)
                     for _ in range(max(0, n_starts - 1))]
    best: tuple[np.ndarray, float, str, bool] | None = None
    for s in starts:
        out = _lbfgsb(f, s, lower, maxiter, grad=grad)
        for _ in range(5):
            # A diagonal theta at 0 is a stationary point of the criterion (it is even in a
            # scalar theta), so gradient methods can stall there although the criterion
            # decreases away from the bound.  Probe and restart, as BOBYQA would explore.
            probe = _escape_bound(f, out[0], out[1], lower, below or {})
            if probe is None:
                break
            out = _lbfgsb(f, probe, lower, maxiter, grad=grad)
        if best is None or out[1] < best[1]:
            best = out
    assert best is not None
    x, fx, msg, ok = best
    if f.best_x is not None and f.best_f < fx:
        x, fx = f.best_x, f.best_f
    grad_ok, worst = _check(f, x, fx, lower, grad)
    if not (grad_ok and ok) and np.isfinite(fx):
        # Rescue: a simplex search does not rely on (possibly noisy) gradients.
        xn, fn, msg_nm = _nelder_mead(f, x, lower)
        msg = f"{msg}; {msg_nm}"
        if fn < fx:
            x, fx = xn, fn
        grad_ok, worst = _check(f, x, fx, lower, grad)
        ok = grad_ok
    if not np.isfinite(fx):
        ok, msg = False, "criterion not finite at the optimum; " + msg
    elif not grad_ok:
        ok = False
        msg = f"gradient check failed (max relative Newton step {worst:.3g}); " + msg
    return OptimResult(np.asarray(x, dtype=float), float(fx), bool(ok), msg, f.n)
