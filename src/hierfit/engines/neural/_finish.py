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
from hierfit.engines.neural._variances import (
    approximate_variances_diagnostic,
    laplace_variances,
    member_variances,
    reml_variances,
)
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
    offset = np.zeros(design.n) if design.offset is None else design.offset
    offset_t = coords.g_t(offset)
    trials, prior = design.trials, design.weights
    covs_t, disp_t = fitted_variances(coords.design_t, model, scaling, family, g_t, options, diagnostics)
    covs = coords.covs(covs_t)
    # the dispersion in data units: sigma scales with the outcome, a negative-binomial size does not
    disp = coords.sigma(disp_t) if family.normal_errors else disp_t
    noise2_t = disp_t**2 if family.normal_errors and disp_t is not None else np.array(
        [1.0 / _mean_glm_weight(design, family, None if disp_t is None else float(disp_t[m])) for m in range(M)])
    delta = np.stack([coords.direction(_project(R_t, g_t[m], covs_t, design, layout, noise2_t[m])) for m in range(M)])
    theta_m = layout.flatten(beta, b)

    def member_disp(m: int) -> float | None:
        return None if disp_t is None else float(disp_t[m])

    if not options.bootstrap:
        # exact conditional MAP of the linear part given each network (removes SGD jitter);
        # the bootstrap members keep their own (weighted) solutions, whose spread is the point
        theta_m = coords.theta(np.stack([
            polish(R_t, layout, y_t, g_t[m] + offset_t, coords.theta_t(theta_m[m]), [c[m] for c in covs_t],
                   member_disp(m), family, trials, prior)
            for m in range(M)
        ]))
    theta_m = theta_m + delta
    eta_m = np.asarray(R @ theta_m.T).T + (g - np.asarray(R @ delta.T).T) + offset
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
                            likelihood_weights(eta_m[m], member_disp(m), family, trials, prior),  # (gaussian: 1/sigma_t², any eta)
                            [c[m] for c in covs_t], per, rng)
            for m in range(M)
        ]))
        member_of_draw = np.repeat(np.arange(M), per)
    statistics = _statistics(design, spec, eta_m, histories, settings, disp)
    if gain is not None:
        statistics.update(nonlinear_gain=gain.gain, nonlinear_gain_se=gain.std_error, nonlinear_kept=float(gain.keep))
    theta = theta_m.mean(0)
    fit = NeuralFit(
        module=model, scaling=scaling, settings=settings, options=options, member_theta=theta_m,
        member_of_draw=member_of_draw, delta=delta, spread=spread_factor(M, options.bootstrap),
        engine="neural", design=design, beta=theta[: len(design.x_names)], b=layout.unflatten(theta)[1],
        sigma=reported_dispersion(family, disp),
        variance_table=_variance_table(design, covs, disp, family),
        uncertainty=NoUncertainty() if draws is None else PosteriorDraws(Draws(draws, disp)),
        statistics=statistics, diagnostics=diagnostics + _singular(design, covs, covs_t), seed=options.seed,
    )
    fit._module_f64 = module_f64
    return fit


def fitted_variances(design_t: Design, model: HierEnsemble, scaling: Scaling, family: Family, g_t: np.ndarray,
                     options: OPTIONS, diagnostics: list[Diagnostic]) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The members' variance components and dispersion (standardised units) that the fit reports:
    by the marginal likelihood given each network (:mod:`._variances`) unless
    ``reml_variances=False``, when the trained ones are kept with a diagnostic saying so.
    Appends to ``diagnostics``."""
    covs_t, disp_t = member_variances(model, scaling, family)
    if not design_t.terms:
        return covs_t, disp_t  # no group terms: nothing is shrunk, training's ML dispersion stands
    if not options.reml_variances:
        diagnostics.append(approximate_variances_diagnostic(family))
        return covs_t, disp_t
    if family.normal_errors:
        return reml_variances(design_t, g_t)
    covs_t, disp_t, found = laplace_variances(design_t, g_t, family, (covs_t, disp_t))
    diagnostics.extend(found)
    return covs_t, disp_t


def reported_dispersion(family: Family, disp: np.ndarray | None) -> float | None:
    """One number for the ensemble: the root-mean-square sigma, or the mean negative-binomial size."""
    if disp is None:
        return None
    return float(np.sqrt(np.mean(disp**2))) if family.normal_errors else float(np.mean(disp))


def member_linear(model: HierEnsemble, scaling: Scaling, design: Design) -> tuple[np.ndarray, list[np.ndarray]]:
    """The members' trained ``beta`` (members × p) and ``b`` (members × groups × k), in data units."""
    s = scaling.y_scale
    with torch.no_grad():
        beta = s * model.beta.detach().cpu().double().numpy() @ scaling.x_map.matrix().T
        if INTERCEPT in design.x_names:
            beta[:, design.x_names.index(INTERCEPT)] += scaling.y_center
        b = [s * model.b[t].detach().cpu().double().numpy() @ zm.matrix().T for t, zm in enumerate(scaling.z_maps)]
    return beta, b


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


def _mean_glm_weight(design: Design, family: Family, dispersion: float | None) -> float:
    """The Fisher weight of one trial at the overall mean outcome per trial."""
    n = np.ones(design.n) if design.trials is None else design.trials
    m = family.clip_mean(np.array([float(np.sum(design.y) / max(float(np.sum(n)), 1e-300))]))
    return float(family.fisher_weights(family.link.link(m), None, dispersion)[0])


def _variance_table(design: Design, covs: list[np.ndarray], disp: np.ndarray | None, family: Family) -> pd.DataFrame:
    """The members' average covariances and dispersion (:func:`reported_dispersion`), as one table
    (a negative-binomial size as the ``dispersion`` row, as the ``mixed`` engine reports it)."""
    return variance_table(design, [C.mean(0) for C in covs], reported_dispersion(family, disp), family.dispersion)


def _statistics(design, spec, eta_m, histories, settings, disp) -> dict[str, float]:
    first = histories[0]
    family = spec.family
    mu = family.inverse_link(eta_m.mean(0)) * (1.0 if design.trials is None else design.trials)
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
    point = reported_dispersion(family, disp)
    if point is not None:
        # the mixed engine's names: gaussian sigma, the negative binomial's nb_theta
        stats["sigma" if family.normal_errors else "nb_theta"] = point
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
