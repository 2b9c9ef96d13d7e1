"""A :class:`~.glmm.GlmmSolution` saved as data: its reported numbers and its system at the modes.

A GLMM's optimum cannot be recomputed without the rows (every PIRLS step reads them), so the
reported quantities are saved as they are. What the joint draws of (beta, b) need -- the
penalised-IRLS system at the modes (per-group cross-products with the final weights), the
relative covariance factors, the spherical modes and the column standardisation -- is saved
too, and the factorisation is recomputed from it with the same code on load, so seeded
draws after loading are those of the fit that was saved. The saved standardisation must
map the internal fixed effects onto the reported ones, else the save is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hierfit.engines.state import StateReader, StateWriter
from hierfit.exceptions import PersistenceError
from hierfit.model.family import Family

from ._factor import System
from ._glmm_diagnostics import GlmmDiagnostics, SeparationFlag
from ._persist import read_standardization, read_system, save_standardization, save_system
from .glmm import GlmmSolution, OptSummary
from .lmm import _single_thread_blas

_SCALARS = ("nb_theta", "loglik", "objective", "deviance", "aic", "bic", "n_obs", "n_params", "n_agq",
            "information", "converged", "message", "n_evaluations", "singular")
_PER_TERM = ("covariances", "sds", "correlations", "ranef", "ranef_condsd", "ranef_condcov")
_OPT_ARRAYS = ("initial_theta", "initial_beta", "final_theta", "final_beta")
_DIAG_ARRAYS = ("nonfinite_offset_index", "zero_trial_index")


def save_glmm(sol: GlmmSolution, state: StateWriter) -> None:
    """Write every reported quantity of ``sol`` and the system its draws come from."""
    for key in _SCALARS:
        state.put(key, getattr(sol, key))
    for key in ("beta", "vcov_beta", "se_beta", "theta", "theta_lower", "linear_predictor"):
        state.put_array(key, getattr(sol, key))
    state.put("theta_entries", [list(e) for e in sol.theta_entries])
    for key in _PER_TERM:
        state.put_arrays(key, getattr(sol, key))
    state.put("singular_terms", [list(t) for t in sol.singular_terms])
    state.put("timings", sol.timings)
    opt = dataclasses.asdict(sol.opt_summary)
    for key in _OPT_ARRAYS:
        state.put_array("opt_" + key, opt.pop(key))
    state.put("opt", opt)
    diag = dataclasses.asdict(sol.diagnostics)
    for key in _DIAG_ARRAYS:
        state.put_array("diag_" + key, diag.pop(key))
    separation = diag.pop("separation")
    state.put("diag", diag)
    state.put("diag_separation", [[f["kind"], f["index"], f["column"], f["direction"], f["estimate"], list(f["groups"])]
                                  for f in separation])
    # the draws' system: statistics at the modes, factors, modes, standardisation
    save_system(sol._system, state)
    state.put_arrays("factor_T", sol._factor_T)
    state.put_arrays("u", sol._u)
    state.put("terms", [list(t) for t in sol._terms])
    state.put_array("beta_t", sol._beta_t)
    save_standardization(sol._std, state)


def restore_glmm(state: StateReader, family: Family) -> GlmmSolution:
    """The solution :func:`save_glmm` wrote (``family`` is the fit's, from its spec)."""
    try:
        return _restore(state, family)
    except PersistenceError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, np.linalg.LinAlgError) as exc:
        raise state.fail(f"the GLMM solution cannot be rebuilt ({type(exc).__name__}: {exc})") from None


def _restore(state: StateReader, family: Family) -> GlmmSolution:
    values: dict[str, Any] = {key: state.get(key) for key in _SCALARS}
    arrays: dict[str, Any] = {key: state.get_array(key) for key in ("beta", "vcov_beta", "se_beta", "theta", "theta_lower", "linear_predictor")}
    per_term: dict[str, Any] = {key: state.get_arrays(key) for key in _PER_TERM}
    opt = state.get_dict("opt")
    opt.update({key: state.get_array("opt_" + key, ndim=1) for key in _OPT_ARRAYS})
    diag = state.get_dict("diag")
    diag.update({key: state.get_array("diag_" + key, kind="i", ndim=1) for key in _DIAG_ARRAYS})
    diag["singular_terms"] = [tuple(t) for t in diag["singular_terms"]]
    diag["separation"] = tuple(SeparationFlag(str(k), int(i), None if c is None else int(c), int(d), float(e), tuple(int(g) for g in gs))
                               for k, i, c, d, e, gs in state.get("diag_separation"))
    sysm = read_system(state)
    if not isinstance(sysm, System):  # the GLMM eliminates crossed factors as one dense block
        raise state.fail("a GLMM's statistics must be those of the blocked elimination")
    factor_T = state.get_arrays("factor_T", ndim=2)
    u = state.get_arrays("u", ndim=2)
    terms = [(int(a), int(b), int(c), int(d), int(e)) for a, b, c, d, e in state.get("terms")]
    beta_t = state.get_array("beta_t", ndim=1)
    std = read_standardization(state, len(terms))
    with _single_thread_blas():
        fz = sysm.factorize(factor_T, keep=True)
    # the draws' internal coordinates must map back onto the reported fixed effects
    beta = arrays["beta"]
    if beta.shape != beta_t.shape or not np.allclose(std.beta(beta_t), beta, rtol=1e-10,
                                                      atol=1e-10 * max(1.0, float(np.abs(beta).max(initial=0.0)))):
        raise state.fail("the saved standardisation does not map the internal fixed effects onto the reported ones")
    n_terms = len(terms)
    if any(len(v) != n_terms for v in per_term.values()):
        raise state.fail(f"per-term results do not match the {n_terms} terms")
    return GlmmSolution(
        **arrays, theta_entries=tuple((int(b), int(i), int(j)) for b, i, j in state.get("theta_entries")),
        **per_term, **values,
        singular_terms=[(int(t), int(c)) for t, c in state.get("singular_terms")],
        diagnostics=GlmmDiagnostics(**diag), opt_summary=OptSummary(**opt), timings=state.get_float_dict("timings"),
        family=family, _system=sysm, _fz=fz, _u=u, _terms=terms, _factor_T=factor_T, _std=std, _beta_t=beta_t,
    )
