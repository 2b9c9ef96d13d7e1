"""Run a prepared GLMM fit and assemble every reported quantity in the caller's coordinates."""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg as sla

from ._glmm_agq import agq_objective
from ._glmm_diagnostics import (
    SEPARATION_CANDIDATE,
    EndSums,
    GlmmDiagnostics,
    SeparationFlag,
    end_sums,
    pearson_test,
    separated_from_counts,
)
from ._glmm_objective import FD_PIRLS_TOL, Objective
from ._glmm_optim import OuterResult, minimize_outer
from ._glmm_pirls import Mode, full_system_and_eta
from ._glmm_setup import FitSetup
from ._glmm_start import start_values
from ._theta import sd_and_correlation
from .glmm import GlmmSolution, OptSummary
from .lmm import SINGULAR_TOL, _factor_condcov, _factor_u, _single_thread_blas

__all__ = ["run_fit"]


def _below(fit: FitSetup) -> dict[int, list[int]]:
    """For each diagonal theta: the theta entries below it in its column of T."""
    spec = fit.prob.spec
    return {d: [t for t, (bt, it, jt) in enumerate(spec.entries) if bt == b and jt == j and it > j]
            for d, (b, i, j) in enumerate(spec.entries) if i == j}


def run_fit(fit: FitSetup, *, maxiter: int, compute_vcov: bool,
            timings: dict[str, float]) -> GlmmSolution:
    """Optimise and assemble (see :func:`.glmm.fit_glmm`)."""
    prob = fit.prob
    with _single_thread_blas():
        t0 = time.perf_counter()
        theta0, beta0, u0, disp0, P = start_values(fit)
        obj = Objective(prob, fit.n_agq, beta0, P, disp0, fit.estimate_disp, u0)
        x0 = obj.pack(theta0, beta0, disp0)
        f0 = obj.value_grad(x0)[0] if obj.exact_gradient else obj.value(x0)
        timings["start"] = time.perf_counter() - t0
        p = prob.p
        lower = np.concatenate([prob.spec.lower, np.full(p + int(fit.estimate_disp), -np.inf)])
        res = minimize_outer(obj, x0, lower, _below(fit), maxiter=maxiter,
                             compute_hessian=compute_vcov)
        timings["optimize"] = time.perf_counter() - t0 - timings["start"]
        t1 = time.perf_counter()
        sol = _assemble(fit, obj, res, x0, f0, timings)
        timings["finalize"] = time.perf_counter() - t1
    return sol


def _terms(fit: FitSetup) -> list[tuple[int, int, int, int, int]]:
    """Per term: (level, root segment, first factor column, k, factor id)."""
    plan = fit.prob.plan
    out = []
    for b, blk in enumerate(fit.blocks):
        f = next(i for i, fac in enumerate(plan.factors) if b in fac.blocks)
        c0 = plan.factors[f].col_offsets[plan.factors[f].blocks.index(b)]
        if f in plan.chain:
            out.append((plan.chain.index(f), 0, c0, blk.k, f))
        else:
            out.append((len(plan.chain), plan.root.index(f), c0, blk.k, f))
    return out


def _vcov_t(fit: FitSetup, obj: Objective, res: OuterResult, RX: np.ndarray) -> np.ndarray:
    """Covariance of the standardised fixed effects: Hessian-based, else ``(R_X'R_X)^{-1}``."""
    nt, p = obj.nt, fit.prob.p
    if res.hessian is not None:
        try:
            Vx = 2.0 * np.linalg.inv(res.hessian)
            Vpsi = Vx[nt:nt + p, nt:nt + p]
            V = obj.P @ Vpsi @ obj.P.T
            V = 0.5 * (V + V.T)
            if np.all(np.isfinite(V)) and (p == 0 or np.linalg.eigvalsh(V)[0] > 0):
                return V
        except np.linalg.LinAlgError:
            pass
    Rinv = sla.solve_triangular(RX, np.eye(p), lower=True)
    return Rinv.T @ Rinv


def _assemble(fit: FitSetup, obj: Objective, res: OuterResult, x0: np.ndarray, f0: float,
              timings: dict[str, float]) -> GlmmSolution:
    prob, std, spec = fit.prob, fit.std, fit.prob.spec
    theta_t, beta_t, disp = obj.unpack(res.x)
    Ts = prob.factor_T(theta_t)
    mode: Mode = obj.mode(res.x, tol=FD_PIRLS_TOL)
    if obj.rule is None:
        f = mode.objective
    else:
        f = agq_objective(prob, mode, Ts, prob.xbeta(beta_t), disp, *obj.rule)
    # Full PIRLS system at the modes (X columns included): draws and the R_X fallback.
    sysf = prob.sysf
    # The pass recomputes eta at (beta, u) -- the same numbers as the mode's -- so the mode's
    # copy is dropped first: the end of a fit holds the most row-sized arrays.
    mode.eta = np.empty(0)
    sysf.raw_rows, eta = full_system_and_eta(prob, Ts, disp, beta_t, mode.u)
    fz_full = sysf.factorize(Ts, keep=True)
    RX = fz_full.LM[:prob.p, :prob.p]
    vcov = std.vcov(_vcov_t(fit, obj, res, RX))
    sysm = prob.sys0
    sysm.raw_rows = mode.raw
    diag = sysm.diag_inverse(mode.fz)
    u_lv = prob.rl.split_vector(mode.u)
    u3 = [x[..., None] for x in u_lv]
    terms = _terms(fit)
    bT = spec.block_T(theta_t)
    theta = np.empty(spec.size)
    covs, sds, cors, modes, condsd, condcov = [], [], [], [], [], []
    for b, (lvl, seg, c0, k, fac) in enumerate(terms):
        T = std.term_T(b, bT[b])
        for t, (bt, i, j) in enumerate(spec.entries):
            if bt == b:
                theta[t] = T[i, j]
        cov = T @ T.T
        sd, cor = sd_and_correlation(cov)
        covs.append(cov)
        sds.append(sd)
        cors.append(cor)
        bf = (Ts[fac] @ _factor_u(sysm, u3, lvl, seg))[:, c0:c0 + k, 0]
        cc = Ts[fac] @ _factor_condcov(sysm, diag, lvl, seg) @ Ts[fac].T
        cc = std.ranef_cov(b, cc[:, c0:c0 + k, c0:c0 + k])
        modes.append(std.ranef(b, bf))
        condcov.append(cc)
        condsd.append(np.sqrt(np.diagonal(cc, axis1=1, axis2=2)))
    n_params = prob.p + spec.size + int(fit.estimate_disp)
    n_obs = fit.n_obs
    # a sharded fit's eta has no rows: its solution keeps none (fitted() is empty)
    ends = _end_sums(fit, Ts, beta_t, mode.u, eta, disp)
    sing = [(b, i) for val, (b, i, j), lo in zip(theta_t, spec.entries, spec.lower)
            if lo == 0.0 and val < SINGULAR_TOL]
    converged = bool(res.converged and mode.converged)
    message = res.message if mode.converged else "PIRLS did not converge at the optimum; " + res.message
    diagnostics = _diagnostics(fit, obj, res, mode, ends, sing, modes, n_params)
    theta0_t, beta0_t, disp0 = obj.unpack(x0)
    opt = OptSummary(
        initial_theta=_theta_caller(fit, theta0_t), initial_beta=std.beta(beta0_t),
        initial_nb_theta=disp0 if fit.family.has_dispersion else None, initial_objective=f0,
        final_theta=theta, final_beta=std.beta(beta_t),
        final_nb_theta=disp if fit.family.has_dispersion else None, final_objective=f,
        n_evaluations=obj.n_eval, n_gradients=obj.n_grad, n_iterations=res.n_iterations,
        newton_steps=res.newton_steps,
        optimizer="L-BFGS-B + Newton steps, " + ("exact Laplace gradient" if obj.rule is None
                                                 else "central-difference gradient"),
        return_status=res.message, status=res.status, converged=converged,
        seconds=res.seconds, n_agq=fit.n_agq, information=fit.information)
    return GlmmSolution(
        beta=std.beta(beta_t), vcov_beta=vcov, se_beta=np.sqrt(np.diag(vcov)), theta=theta,
        theta_lower=spec.lower.copy(), theta_entries=spec.entries, covariances=covs, sds=sds,
        correlations=cors, ranef=modes, ranef_condsd=condsd, ranef_condcov=condcov,
        nb_theta=disp if fit.family.has_dispersion else None, loglik=-0.5 * f, objective=f,
        deviance=ends.deviance, aic=f + 2.0 * n_params, bic=f + np.log(n_obs) * n_params,
        n_obs=n_obs, n_params=n_params, n_agq=fit.n_agq, information=fit.information,
        converged=converged, message=message, n_evaluations=obj.n_eval, singular=bool(sing),
        singular_terms=sing, linear_predictor=eta, diagnostics=diagnostics,
        opt_summary=opt, timings=timings, family=fit.family, _system=sysf, _fz=fz_full,
        _u=u_lv, _terms=terms, _factor_T=Ts, _std=std, _beta_t=beta_t)


def _theta_caller(fit: FitSetup, theta_t: np.ndarray) -> np.ndarray:
    """Theta in the caller's coordinates from standardised theta."""
    spec, std = fit.prob.spec, fit.std
    Tb = [std.term_T(b, T) for b, T in enumerate(spec.block_T(theta_t))]
    return np.array([Tb[b][i, j] for b, i, j in spec.entries])


def _separation(fit: FitSetup, obj: Objective, res: OuterResult, modes: list[np.ndarray],
                ends: EndSums) -> tuple[SeparationFlag, ...]:
    """Estimates running off to infinity (see :mod:`._glmm_diagnostics`)."""
    prob, spec = fit.prob, fit.prob.spec
    theta_t, beta_t, disp = obj.unpack(res.x)
    flags: list[SeparationFlag] = []
    beta = fit.std.beta(beta_t)
    u_keep = obj.u.copy()
    for j in range(prob.p):
        if abs(beta_t[j]) < SEPARATION_CANDIDATE or (fit.std.x.intercept == j):
            continue
        bt = beta_t.copy()
        bt[j] *= 2.0
        ft = obj.value(obj.pack(theta_t, bt, disp), FD_PIRLS_TOL)
        if np.isfinite(ft) and ft <= res.fun + 1e-6 * max(1.0, abs(res.fun)):
            flags.append(SeparationFlag("fixed", j, None, int(np.sign(beta[j])), float(beta[j])))
    obj.u = u_keep
    for t, (b, i, jj) in enumerate(spec.entries):
        if i != jj or theta_t[t] < SEPARATION_CANDIDATE:
            continue
        groups = separated_from_counts(ends.counts[b], modes[b][:, i])
        if groups:
            sd = float(np.sqrt(np.sum(fit.std.term_T(b, spec.block_T(theta_t)[b]) ** 2, axis=1))[i])
            flags.append(SeparationFlag("random", b, i, 1, sd, groups))
    return tuple(flags)


def _end_sums(fit: FitSetup, Ts: list[np.ndarray], beta_t: np.ndarray, u: np.ndarray, eta: np.ndarray,
              disp: float | None) -> EndSums:
    """Deviance, Pearson and separation sums at the modes (from ``eta``, or the shards')."""
    if fit.prob.shards is not None:
        return fit.prob.shards.end_sums(Ts, beta_t, u, disp)
    mu = fit.family.link.inverse(eta)
    return end_sums(fit.family, fit.y, mu, fit.trials, fit.weights, disp,
                    [blk.group_index for blk in fit.blocks], [blk.n_groups for blk in fit.blocks])


def _diagnostics(fit: FitSetup, obj: Objective, res: OuterResult, mode: Mode, ends: EndSums,
                 sing: list[tuple[int, int]], modes: list[np.ndarray],
                 n_params: int) -> GlmmDiagnostics:
    chi2, df, ratio, pval = pearson_test(ends.chi2, ends.used, n_params)
    alt = None if fit.family.has_dispersion else fit.family.overdispersed_alternative
    over = bool(alt is not None and np.isfinite(pval) and ratio > 1.0 and pval < 0.05)
    return GlmmDiagnostics(
        pirls_converged=bool(mode.converged), outer_converged=bool(res.converged),
        outer_message=res.message, pirls_failures=obj.pirls_failures, singular=bool(sing),
        singular_terms=sing, separation=_separation(fit, obj, res, modes, ends), pearson_chi2=chi2,
        residual_df=df, dispersion_ratio=ratio, overdispersion_pvalue=pval, overdispersed=over,
        suggested_family=alt if over else None,
        nonfinite_offset_rows=int(fit.nonfinite_offset.size),
        nonfinite_offset_index=fit.nonfinite_offset[:10].copy(),
        zero_trial_rows=int(fit.zero_trials.size), zero_trial_index=fit.zero_trials[:10].copy())
