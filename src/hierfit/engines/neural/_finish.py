"""From a trained ensemble to a NeuralFit: data units, the identifying projection, tables.

The projection: each member's MLP output ``g`` (over the fitting rows) is split as
``g = R delta + (g - R delta)`` where ``R`` is the linear model's row matrix and ``delta`` is
the least-squares projection of ``g`` on ``R``'s columns: the nonlinear part that remains is
orthogonal, over the fitting rows, to the population columns and to every group's columns
(zero mean in every group, no within-group trend along a varying slope). Nested group columns
are collinear (a market is the sum of its submarkets), so a vanishing ridge
``PROJECTION_RIDGE · s² Sigma⁻¹`` splits what moves between levels in proportion to the
learned prior variances. ``delta`` moves into the linear parameters and out of the nonlinear
part, for the fitting rows and for any new rows alike, so predictions are unchanged.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scipy.sparse import linalg as splinalg

from hierfit.checks import Diagnostic
from hierfit.design import Design
from hierfit.engines.base import Draws, NoUncertainty, PosteriorDraws, variance_table
from hierfit.engines.layout import ParameterLayout
from hierfit.engines.neural._coords import LinearCoords
from hierfit.engines.neural._model import HierEnsemble

if TYPE_CHECKING:
    from hierfit.engines.heldout_gain import HeldoutGain
from hierfit.engines.neural._options import OPTIONS, Settings
from hierfit.engines.neural._posterior import (
    likelihood_weights,
    polish,
    posterior_draws,
)
from hierfit.engines.neural._prep import Scaling, spread_factor
from hierfit.engines.neural._result import NeuralFit, network_output
from hierfit.formula import INTERCEPT
from hierfit.model import Family, ModelSpec

PROJECTION_RIDGE = 1e-6  # relative to the prior precision: only breaks ties between nested levels
SINGULAR_SD = 1e-3
POSTERIOR_DRAWS = 200  # Gaussian draws of the linear part, shared out over the members  # an SD below this share of the outcome's scale is reported as ~0


def finish(design: Design, spec: ModelSpec, model: HierEnsemble, data, scaling: Scaling, settings: Settings,
           options: OPTIONS, histories: list, diagnostics: list[Diagnostic], gain: HeldoutGain | None = None) -> NeuralFit:
    model = model.cpu().eval()
    M = model.n_members
    family = spec.family
    beta, b = member_linear(model, scaling, design)
    # float64 inference: a row's value must not depend on its position in the batch
    module_f64 = copy.deepcopy(model).double().eval()
    g = network_output(module_f64, scaling, design)  # members × rows, data units
    layout = ParameterLayout.from_design(design)
    R = layout.row_matrix(design)
    # the exact solves run in standardised coordinates (see _coords): raw columns of a large-mean
    # outcome or a far-from-zero predictor would lose every digit
    coords = LinearCoords.from_design(design, scaling, layout)
    R_t, y_t, g_t = coords.R, coords.design_t.y, coords.g_t(g)
    covs_t, sigma_t = member_variances(model, scaling, family)
    if family.normal_errors and options.reml_variances and design.terms:
        covs_t, sigma_t = reml_variances(coords.design_t, g_t)
    covs, sigma = coords.covs(covs_t), coords.sigma(sigma_t)
    noise2_t = sigma_t**2 if sigma_t is not None else np.full(M, 1.0 / _mean_glm_weight(design.y, family))
    delta = np.stack([coords.direction(_project(R_t, g_t[m], covs_t, design, layout, noise2_t[m])) for m in range(M)])
    theta_m = layout.flatten(beta, b)
    if not options.bootstrap:
        # exact conditional MAP of the linear part given each network (removes SGD jitter);
        # the bootstrap members keep their own (weighted) solutions, whose spread is the point
        theta_m = coords.theta(np.stack([
            polish(R_t, layout, y_t, g_t[m], coords.theta_t(theta_m[m]), [c[m] for c in covs_t],
                   None if sigma_t is None else float(sigma_t[m]), family)
            for m in range(M)
        ]))
    theta_m = theta_m + delta
    eta_m = np.asarray(R @ theta_m.T).T + (g - np.asarray(R @ delta.T).T)
    draws: np.ndarray | None
    if options.bootstrap:
        # the members themselves are the draws (their spread includes the linear part's)
        draws = theta_m if M > 1 else None
        member_of_draw = np.arange(M)
    else:
        rng = np.random.default_rng(options.seed)
        per = int(np.ceil(POSTERIOR_DRAWS / M))
        draws = coords.theta(np.concatenate([
            posterior_draws(R_t, layout, coords.theta_t(theta_m[m]),
                            likelihood_weights(eta_m[m], None if sigma_t is None else sigma_t[m], family),
                            [c[m] for c in covs_t], per, rng)
            for m in range(M)
        ]))
        member_of_draw = np.repeat(np.arange(M), per)
    statistics = _statistics(design, spec, eta_m, histories, settings, sigma)
    if gain is not None:
        statistics.update(nonlinear_gain=gain.gain, nonlinear_gain_se=gain.std_error, nonlinear_kept=float(gain.keep))
    theta = theta_m.mean(0)
    fit = NeuralFit(
        module=model, scaling=scaling, settings=settings, options=options, member_theta=theta_m,
        member_of_draw=member_of_draw, delta=delta, spread=spread_factor(M, options.bootstrap),
        engine="neural", design=design, beta=theta[: len(design.x_names)], b=layout.unflatten(theta)[1],
        sigma=None if sigma is None else float(np.sqrt(np.mean(sigma**2))),
        variance_table=_variance_table(design, covs, sigma),
        uncertainty=NoUncertainty() if draws is None else PosteriorDraws(Draws(draws, sigma)),
        statistics=statistics, diagnostics=diagnostics + _singular(design, covs, covs_t), seed=options.seed,
    )
    fit._module_f64 = module_f64
    return fit


def member_linear(model: HierEnsemble, scaling: Scaling, design: Design) -> tuple[np.ndarray, list[np.ndarray]]:
    """The members' trained ``beta`` (members × p) and ``b`` (members × groups × k), in data units."""
    s = scaling.y_scale
    with torch.no_grad():
        beta = s * model.beta.detach().cpu().double().numpy() @ scaling.x_map.matrix().T
        if INTERCEPT in design.x_names:
            beta[:, design.x_names.index(INTERCEPT)] += scaling.y_center
        b = [s * model.b[t].detach().cpu().double().numpy() @ zm.matrix().T for t, zm in enumerate(scaling.z_maps)]
    return beta, b


def member_variances(model: HierEnsemble, scaling: Scaling, family: Family) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The members' learned ``Sigma_t`` (members × k × k per term) and sigma, in the network's
    standardised units (see :mod:`._coords` for the map to data units)."""
    with torch.no_grad():
        covs = []
        for t in range(len(scaling.z_maps)):
            L = model.cholesky(t).detach().cpu().double().numpy()
            covs.append(L @ L.transpose(0, 2, 1))
        sigma = np.exp(model.log_sigma.detach().cpu().double().numpy()) if family.normal_errors else None
    return covs, sigma


def reml_variances(design: Design, g: np.ndarray, rows: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Per member, REML variance components and residual SD with its network as an offset.

    ``rows`` (a boolean mask) restricts the fit to those rows; groups without rows there
    simply get no data (their deviations stay at the prior). Called with the standardised
    design of :mod:`._coords` and its ``g_t``, the results are in standardised units.
    """
    from hierfit.engines.mixed.engine import random_blocks
    from hierfit.engines.mixed.lmm import RandomBlock, fit_lmm

    blocks = random_blocks(design)
    X, y = design.X, design.y
    if rows is not None:
        blocks = [RandomBlock(b.group_index[rows], b.n_groups, b.Z[rows], b.correlated, b.parent) for b in blocks]
        X, y, g = X[rows], y[rows], g[:, rows]
    sols = [fit_lmm(X, y - g[m], blocks, reml=True) for m in range(len(g))]
    covs = [np.stack([sol.covariances[t] for sol in sols]) for t in range(len(design.terms))]
    return covs, np.array([sol.sigma for sol in sols])


def _project(R: sparse.csr_matrix, g: np.ndarray, covs: list[np.ndarray], design: Design, layout: ParameterLayout,
             noise2: float) -> np.ndarray:
    p = len(design.x_names)
    RtR = sparse.csc_matrix(R.T @ R)
    blocks = [sparse.identity(p) * 1e-9 * max(float(RtR.diagonal()[:p].mean()) if p else 1.0, 1e-12)]
    for t, term in enumerate(layout.terms):
        Sigma = covs[t].mean(0)
        prec = np.linalg.inv(Sigma + 1e-12 * np.eye(len(Sigma))) * noise2 * PROJECTION_RIDGE
        blocks.append(sparse.kron(sparse.identity(term.n_groups), sparse.csr_matrix(prec)))
    A = (RtR + sparse.block_diag(blocks, format="csc")).tocsc()
    return np.asarray(splinalg.spsolve(A, R.T @ g)).ravel()


def _mean_glm_weight(y: np.ndarray, family: Family) -> float:
    """The Fisher weight of a row at the overall mean outcome."""
    m = family.clip_mean(np.array([float(np.mean(y))]))
    return float(family.fisher_weights(family.link.link(m))[0])


def _variance_table(design: Design, covs: list[np.ndarray], sigma: np.ndarray | None) -> pd.DataFrame:
    """The members' average covariances and root-mean-square sigma, as one table."""
    return variance_table(design, [C.mean(0) for C in covs], None if sigma is None else float(np.sqrt(np.mean(sigma**2))))


def _statistics(design, spec, eta_m, histories, settings, sigma) -> dict[str, float]:
    first = histories[0]
    mu = spec.family.inverse_link(eta_m.mean(0))
    stats = {
        "n_obs": float(design.n),
        "n_members": float(eta_m.shape[0]),
        "epochs": float(np.mean(first.best_epoch + 1)),
        "epochs_run": float(first.epochs_run),
        "validation_nll": float(np.mean(first.best_loss)),
        "train_seconds": float(sum(h.seconds for h in histories)),
        "seconds_per_epoch": float(first.seconds / max(first.epochs_run, 1)),
        "batch_size": float(settings.batch_size),
        "rmse": float(np.sqrt(np.mean((design.y - mu) ** 2))),
    }
    if sigma is not None:
        stats["sigma"] = float(np.sqrt(np.mean(sigma**2)))
    return stats


def _singular(design: Design, covs: list[np.ndarray], covs_t: list[np.ndarray]) -> list[Diagnostic]:
    """SDs at ~0, judged in the standardised units (``covs_t``): the verdict does not depend on units."""
    out = []
    for td, C, C_t in zip(design.terms, covs, covs_t):
        sds = np.sqrt(np.diag(C.mean(0)))
        sds_std = np.sqrt(np.maximum(np.diag(C_t.mean(0)), 0.0))
        for coef, sd, sd_std in zip(td.coefficients, sds, sds_std):
            if sd_std < SINGULAR_SD:
                out.append(Diagnostic(
                    "singular",
                    f"The SD of {td.level!r} deviations in {coef!r} is estimated at ~0 ({sd:.3g}): the groups do not "
                    f"differ beyond noise. Drop {coef!r} from the {td.level!r} term or check the grouping column.",
                ))
    return out
