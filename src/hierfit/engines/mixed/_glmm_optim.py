"""Outer optimisation of a GLMM: L-BFGS-B, bound escapes, then Newton steps on a Hessian.

* L-BFGS-B handles lme4's bounds (diagonal theta >= 0) exactly and needs one gradient per
  iteration (exact for Laplace).
* A diagonal theta at 0 is a stationary point of the objective (it is even in that
  theta); the LMM core's probes (:func:`._optim._escape_bound`) look for descent off it.
* The Hessian at the optimum is needed anyway (glmer's ``vcov`` is its inverse), so it is
  computed there (central differences of the gradient; second differences of values where
  the gradient is itself a difference) and used for up to three bounded Newton steps.
  They take the result to the optimum well beyond what L-BFGS-B's stopping rule leaves,
  and convergence is judged on the last Newton step (relative to ``max(1, |x|)``, as the LMM
  core's check).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from ._glmm_objective import Objective
from ._optim import _Counted, _escape_bound

__all__ = ["OuterResult", "minimize_outer", "hessian"]

#: Largest relative Newton step still called converged (the LMM core's check uses 1e-3).
CONVERGED_STEP = 1e-3
#: Relative Newton step below which no further step is taken.
POLISHED_STEP = 1e-9


@dataclass(frozen=True)
class OuterResult:
    """Outcome of :func:`minimize_outer`."""

    x: np.ndarray
    fun: float
    gradient: np.ndarray
    hessian: np.ndarray | None
    converged: bool
    message: str
    status: int
    n_iterations: int
    newton_steps: int
    seconds: float


def hessian(obj: Objective, x: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Symmetrised difference Hessian of the objective at ``x``.

    Bounded coordinates are differenced symmetrically too: theta enters the model only
    through ``T T'``, so values just below a zero bound are well defined.
    """
    n = x.size
    H = np.empty((n, n))
    if obj.exact_gradient:
        for i in range(n):
            h = 1e-4 * max(1.0, abs(x[i]))
            e = np.zeros(n)
            e[i] = h
            H[:, i] = (obj.gradient(x + e) - obj.gradient(x - e)) / (2 * h)
    else:
        hs = 1e-3 * np.maximum(1.0, np.abs(x))
        f0 = obj.value(x, 1e-22)
        fp = np.empty(n)
        fm = np.empty(n)
        for i in range(n):
            e = np.zeros(n)
            e[i] = hs[i]
            fp[i], fm[i] = obj.value(x + e, 1e-22), obj.value(x - e, 1e-22)
            H[i, i] = (fp[i] - 2 * f0 + fm[i]) / hs[i] ** 2
        for i in range(n):
            for j in range(i + 1, n):
                ei = np.zeros(n)
                ej = np.zeros(n)
                ei[i], ej[j] = hs[i], hs[j]
                v = (obj.value(x + ei + ej, 1e-22) - obj.value(x + ei - ej, 1e-22)
                     - obj.value(x - ei + ej, 1e-22) + obj.value(x - ei - ej, 1e-22))
                H[i, j] = H[j, i] = v / (4 * hs[i] * hs[j])
    return 0.5 * (H + H.T)


def _lbfgsb(obj: Objective, counted: _Counted, x0: np.ndarray, lower: np.ndarray,
            maxiter: int) -> tuple[np.ndarray, float, str, int, int]:
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.maximum(np.asarray(x, dtype=float), lower)
        f, g = obj.value_grad(x)
        counted._record(x, f)
        return f, g

    res = optimize.minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                            options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-9,
                                     "maxcor": 20, "maxls": 40})
    return np.maximum(res.x, lower), float(res.fun), f"L-BFGS-B: {res.message}", int(res.status), int(res.nit)


def _newton_step(H: np.ndarray, g: np.ndarray, x: np.ndarray, lower: np.ndarray
                 ) -> np.ndarray | None:
    """Newton step on the coordinates not held at a bound; ``None`` if H is not PD there."""
    held = ((x - lower) <= 1e-10) & (g > 0)
    free = ~held
    step = np.zeros_like(x)
    if not np.any(free):
        return step
    Hf = H[np.ix_(free, free)]
    try:
        c = np.linalg.cholesky(Hf)
    except np.linalg.LinAlgError:
        return None
    step[free] = -np.linalg.solve(c.T, np.linalg.solve(c, g[free]))
    # Stay in the box: truncate the step at the first bound it would cross.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(step < 0, (lower - x) / step, np.inf)
    t = float(np.min(ratio[np.isfinite(ratio)], initial=1.0))
    return step * min(1.0, t)


def minimize_outer(obj: Objective, x0: np.ndarray, lower: np.ndarray,
                   below: dict[int, list[int]], *, maxiter: int = 1000,
                   compute_hessian: bool = True) -> OuterResult:
    """Minimise the objective within the bounds; see the module docstring."""
    t0 = time.perf_counter()
    lower = np.asarray(lower, dtype=float)
    counted = _Counted(obj.value, lower)
    x0 = np.maximum(np.asarray(x0, dtype=float), lower)
    x, fx, msg, status, nit = _lbfgsb(obj, counted, x0, lower, maxiter)
    for _ in range(5):
        probe = _escape_bound(counted, x, fx, lower, below)
        if probe is None:
            break
        x2, f2, msg2, status, nit2 = _lbfgsb(obj, counted, probe, lower, maxiter)
        nit += nit2
        if f2 < fx:
            x, fx, msg = x2, f2, msg2
    if counted.best_x is not None and counted.best_f < fx:
        x, fx = counted.best_x, counted.best_f
    fx, g = obj.value_grad(x)
    H = None
    steps = 0
    rel = np.inf
    if compute_hessian and np.isfinite(fx):
        H = hessian(obj, x, lower)
        for _ in range(3):
            step = _newton_step(H, g, x, lower)
            if step is None:
                break
            rel = float(np.max(np.abs(step) / np.maximum(1.0, np.abs(x)), initial=0.0))
            if rel <= POLISHED_STEP:
                break
            t = 1.0
            for _ in range(20):
                xt = np.maximum(x + t * step, lower)
                ft, gt = obj.value_grad(xt)
                if ft <= fx:
                    break
                t *= 0.5
            else:
                break
            x, fx, g = xt, ft, gt
            steps += 1
        final = _newton_step(H, g, x, lower)
        if final is not None:
            rel = float(np.max(np.abs(final) / np.maximum(1.0, np.abs(x)), initial=0.0))
    ok = np.isfinite(fx) and (rel <= CONVERGED_STEP if H is not None else status == 0)
    if H is not None and not np.isfinite(rel):
        msg += "; Hessian not positive definite at the optimum"
        ok = False
    elif not ok:
        msg += f"; largest relative Newton step at the optimum {rel:.3g}"
    return OuterResult(x, float(fx), g, H, bool(ok), msg, status, nit, steps,
                       time.perf_counter() - t0)
