"""NeuralFit: the linear-engine contract plus a ``nonlinear`` column and ensemble intervals."""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats

from hierfit.design import RowDesign
from hierfit.engines.base import LinearEngineFit, thin_draws
from hierfit.engines.state import LoadContext, StateReader, StateWriter
from hierfit.exceptions import PersistenceError
from hierfit.model import Family

CHUNK = 65536
WEIGHTS_FILE = "weights.npz"
MIN_QUANTILE_DRAWS = 50  # below this (member draws only) intervals use a t approximation


class NeuralFit(LinearEngineFit):
    """Result of the ``neural`` engine.

    ``theta`` (the reported linear parameters) is the mean of the members' identified linear
    parameters ``member_theta``. ``draws`` (behind every interval) are Gaussian posterior draws
    of each member's linear parameters (``member_of_draw`` says whose), or with
    ``bootstrap=True`` the members themselves. ``delta`` holds each member's projection of its
    MLP onto the linear columns (see :mod:`hierfit.engines.neural._finish`), subtracted from
    its nonlinear part.

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=40, seed=4)
    >>> fit = hierfit.fit(sim.formula, sim.data, engine="neural", n_members=2, max_epochs=3)
    >>> type(fit.native()).__name__
    'HierEnsemble'
    """

    def __init__(self, *, module: Any, scaling: Any, settings: Any, options: Any, member_theta: np.ndarray,
                 member_of_draw: np.ndarray, delta: np.ndarray, spread: float, **linear: Any) -> None:
        """``linear`` holds :class:`LinearEngineFit`'s arguments; the rest is the ensemble's own state.

        ``spread`` turns the members' SD into a standard error (balanced bootstrap correction).
        """
        super().__init__(**linear)
        self._module = module
        self._module_f64: Any = None
        self.config = dict(module.config)
        self.scaling = scaling
        self.settings = asdict(settings)
        self.options = asdict(options)
        self.member_theta = member_theta
        self.member_of_draw = member_of_draw
        self.delta = delta
        self.spread = spread

    # -- rows -------------------------------------------------------------------------------
    def nonlinear_members(self, design: RowDesign, R: sparse.csr_matrix | None = None) -> np.ndarray:
        """Each member's identified nonlinear part ``g - R delta`` (members × rows)."""
        R = self.layout_row_matrix(design) if R is None else R
        return nonlinear_raw(self, design) - np.asarray(R @ self.delta.T).T

    def contributions(self, design: RowDesign) -> pd.DataFrame:
        parts = super().contributions(design)
        parts["nonlinear"] = self.nonlinear_members(design).mean(axis=0)
        return parts

    def native_linear_predictor(self, design: RowDesign) -> np.ndarray:
        """The members' own predictors, averaged: each member's linear part gathered directly from
        its parameters plus its network's forward pass, less its identifying projection."""
        g = nonlinear_raw(self, design)
        beta, b = self.layout.unflatten(self.member_theta - self.delta)
        eta = beta @ design.X.T + g + (0.0 if design.offset is None else design.offset)
        for td, bt in zip(design.terms, b):
            idx = design.group_index[td.level]
            known = idx >= 0
            picked = bt[:, np.where(known, idx, 0), :]  # members × rows × k
            eta = eta + np.where(known, np.einsum("ij,mij->mi", td.Z, picked), 0.0)
        return eta.mean(axis=0)

    def linear_predictor_draws(self, design: RowDesign, max_draws: int) -> np.ndarray | None:
        """Draws of ``R theta_d + nonlinear_{member(d)}``, as behind :meth:`interval`.

        With only member draws (``bootstrap=True``, a handful) the members' deviations from their
        mean are widened by ``spread``, so their SD is the standard error the intervals use.
        """
        if self.draws is None:
            return None
        R = self.layout_row_matrix(design)
        nl = self.nonlinear_members(design, R) + _offset(design)
        if len(self.draws) < MIN_QUANTILE_DRAWS:
            eta = np.asarray(R @ self.draws.T).T + nl
            centre = eta.mean(axis=0)
            return centre + (eta - centre) * self.spread
        keep = thin_draws(len(self.draws), max_draws)
        return np.asarray(R @ self.draws[keep].T).T + nl[self.member_of_draw[keep]]

    def interval(self, design: RowDesign, kind: str, level: float,
                 scale: str = "response") -> tuple[np.ndarray, np.ndarray] | None:
        """Quantiles over the draws of ``R theta_d + nonlinear_{member(d)}`` (plus outcome noise).

        With only member draws (``bootstrap=True``, a handful), mean ± t_{M-1} × SD instead.
        """
        if self.draws is None:
            return None
        family = self.family
        R = self.layout_row_matrix(design)
        nl = self.nonlinear_members(design, R) + _offset(design)  # the known part rides with each member
        if len(self.draws) < MIN_QUANTILE_DRAWS:
            return self._member_interval(np.asarray(R @ self.draws.T).T + nl, kind, level, family, design.trials, scale)
        rng = np.random.default_rng(self.seed)
        owner = self.member_of_draw
        q = [(1 - level) / 2, (1 + level) / 2]
        lower, upper = np.empty(design.n), np.empty(design.n)
        step = max(1, 2_000_000 // len(self.draws))
        new_sd = self.new_group_sd(design)
        for start in range(0, design.n, step):
            rows = slice(start, min(start + step, design.n))
            eta = np.asarray(R[rows] @ self.draws.T).T + nl[owner][:, rows]
            if new_sd[rows].any():  # unseen groups: their own effect is unknown
                eta = eta + rng.standard_normal(eta.shape) * new_sd[rows]
            if scale == "link":
                lower[rows], upper[rows] = np.quantile(eta, q, axis=0)
                continue
            mu = family.inverse_link(eta)
            if kind == "prediction":
                disp = None if self.sigma_draws is None else self.sigma_draws[owner][:, None]
                mu = family.sample(rng, mu, None if design.trials is None else design.trials[rows], disp)
            lower[rows], upper[rows] = np.quantile(mu, q, axis=0)
        return lower, upper

    def _member_interval(self, eta: np.ndarray, kind: str, level: float, family: Family,
                         trials: np.ndarray | None, scale: str = "response") -> tuple[np.ndarray, np.ndarray]:
        M = eta.shape[0]
        center = eta.mean(axis=0)
        # t with M-1 df: the members' SD is itself estimated from M draws
        tq = stats.t.ppf(0.5 + level / 2, M - 1)
        half = tq * eta.std(axis=0, ddof=1) * self.spread
        if kind == "confidence" and scale == "link":
            return center - half, center + half
        if kind == "confidence":
            return family.inverse_link(center - half), family.inverse_link(center + half)
        if family.normal_errors and self.sigma_draws is not None:
            noise = stats.norm.ppf(0.5 + level / 2) * float(np.sqrt(np.mean(self.sigma_draws**2)))
            total = np.sqrt(half**2 + noise**2)
            return center - total, center + total
        rng = np.random.default_rng(self.seed)
        lower, upper = np.empty_like(center), np.empty_like(center)
        for start in range(0, len(center), 2000):
            rows = slice(start, start + 2000)
            draws = center[rows] + half[rows] / tq * rng.standard_normal((1000, len(center[rows])))
            disp = None if self.sigma_draws is None or not family.has_dispersion else float(np.mean(self.sigma_draws))
            y = family.sample(rng, family.inverse_link(draws), None if trials is None else trials[rows], disp)
            lower[rows], upper[rows] = np.quantile(y, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lower, upper

    def _summarise(self, M: sparse.spmatrix, level: float) -> pd.DataFrame:
        """Posterior draws: the base class's quantiles. Member draws only: estimate ± t_{M-1} × SD."""
        if self.draws is not None and len(self.draws) >= MIN_QUANTILE_DRAWS:
            return super()._summarise(M, level)
        est = np.asarray(M @ self.theta).ravel()
        se = lower = upper = np.full(M.shape[0], np.nan)
        if self.draws is not None and len(self.draws) > 1:
            values = np.asarray(M @ self.draws.T).T
            se = values.std(axis=0, ddof=1) * self.spread
            q = stats.t.ppf(0.5 + level / 2, len(self.draws) - 1)
            lower, upper = est - q * se, est + q * se
        return pd.DataFrame({"estimate": est, "std_error": se, "lower": lower, "upper": upper})

    # -- the engine's own objects -------------------------------------------------------------
    def native(self) -> Any:
        """The trained :class:`~hierfit.engines.neural._model.HierEnsemble` (members stacked on axis 0)."""
        return self._module

    def summary_lines(self) -> list[str]:
        dims = [lv["dim"] for lv in self.config["levels"]]
        lines = [
            (f"network: MLP hidden {tuple(self.config['hidden'])}, embedding dims per level {dims}, "
             f"{self.config['n_members']} ensemble members"),
            (f"training: {self.statistics.get('epochs', float('nan')):.0f} epochs (mean best), batch size "
             f"{self.settings['batch_size']}, {self.statistics.get('train_seconds', float('nan')):.1f} s"),
        ]
        if "nonlinear_kept" in self.statistics:
            verdict = "kept" if self.statistics["nonlinear_kept"] else "dropped (the fit is the linear hierarchical model)"
            lines.append(
                f"MLP {verdict}: held-out log-density gain {self.statistics['nonlinear_gain']:+.4f} "
                f"± {self.statistics['nonlinear_gain_se']:.4f} per row (nonlinear='always' keeps it regardless)"
            )
        return lines

    def save(self, state: StateWriter) -> None:
        """The linear parts with their draws, the ensemble's own state, and the torch ``state_dict`` as arrays."""
        self.save_linear(state)
        state.put("config", self.config)
        state.put("settings", self.settings)
        state.put("options", self.options)
        sc = self.scaling
        state.put("scaling", {"y_center": sc.y_center, "y_scale": sc.y_scale, "feature_names": list(sc.feature_names),
                              "x_intercept": sc.x_map.intercept, "z_intercepts": [m.intercept for m in sc.z_maps]})
        state.put_arrays("scaling_x_map", [sc.x_map.center, sc.x_map.scale])
        state.put_arrays("scaling_z_centers", [m.center for m in sc.z_maps])
        state.put_arrays("scaling_z_scales", [m.scale for m in sc.z_maps])
        state.put_array("scaling_f_mean", sc.f_mean)
        state.put_array("scaling_f_scale", sc.f_scale)
        state.put_array("member_theta", self.member_theta)
        state.put_array("member_of_draw", self.member_of_draw)
        state.put_array("delta", self.delta)
        state.put("spread", self.spread)
        # the state_dict's tensors as plain arrays: the weights load without unpickling anything
        state.put_npz(WEIGHTS_FILE, {k: v.detach().cpu().numpy() for k, v in self._module.state_dict().items()})

    @classmethod
    def load_state(cls, state: StateReader, context: LoadContext) -> NeuralFit:
        """Rebuild a fit from :meth:`save`'s state (the network from its weights, in evaluation mode)."""
        import torch

        from hierfit.engines.mixed import ColumnMap
        from hierfit.engines.neural._model import HierEnsemble
        from hierfit.engines.neural._prep import Scaling

        fit = cls.restore(state, context)
        fit.config = state.get_dict("config")
        fit.settings = state.get_dict("settings")
        fit.options = state.get_dict("options")
        sc = state.get_dict("scaling")
        x_map = state.get_arrays("scaling_x_map", ndim=1)
        z_centers, z_scales = state.get_arrays("scaling_z_centers", ndim=1), state.get_arrays("scaling_z_scales", ndim=1)
        z_intercepts = sc["z_intercepts"]
        if len(x_map) != 2 or not len(z_centers) == len(z_scales) == len(z_intercepts) == len(fit.layout.terms):
            raise state.fail("one column map per term is expected")
        fit.scaling = Scaling(
            float(sc["y_center"]), float(sc["y_scale"]), ColumnMap(x_map[0], x_map[1], _index(state, sc["x_intercept"])),
            tuple(ColumnMap(c, z, _index(state, i)) for c, z, i in zip(z_centers, z_scales, z_intercepts)),
            tuple(str(n) for n in sc["feature_names"]), state.get_array("scaling_f_mean", ndim=1), state.get_array("scaling_f_scale", ndim=1),
        )
        fit.member_theta = state.get_array("member_theta", ndim=2)
        fit.member_of_draw = state.get_array("member_of_draw", kind="i", ndim=1)
        fit.delta = state.get_array("delta", ndim=2)
        fit.spread = state.get_float("spread")
        try:
            module = HierEnsemble(fit.config)
            module.load_state_dict({k: torch.from_numpy(v) for k, v in state.get_npz(WEIGHTS_FILE).items()}, strict=True)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise PersistenceError(f"{state.files.where(WEIGHTS_FILE)} does not fit the saved network ({exc}). Refit and save again.") from None
        fit._module = module.eval()
        fit._module_f64 = None
        M = module.n_members
        draws = fit.draws
        if fit.member_theta.shape != (M, fit.layout.size) or fit.delta.shape != (M, fit.layout.size) or (
                draws is not None and (len(fit.member_of_draw) != len(draws) or fit.member_of_draw.max(initial=0) >= M)):
            raise state.fail("the ensemble's arrays do not match its network")
        return fit


def _offset(design: RowDesign) -> np.ndarray | float:
    """The rows' offset (a known part of the linear predictor), or 0."""
    return 0.0 if design.offset is None else design.offset


def _index(state: StateReader, value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise state.fail(f"a column index or null was expected, not {value!r}")


def nonlinear_raw(fit: NeuralFit, design: RowDesign) -> np.ndarray:
    """The members' MLP output in data units (members × rows), before the projection."""
    # float64 inference: a row's value must not depend on its position in the batch
    # (float32 kernels can round differently at tile edges), so row order never matters
    module = fit.__dict__.get("_module_f64")
    if module is None:
        module = copy.deepcopy(fit._module).double().eval()
        fit._module_f64 = module
    return network_output(module, fit.scaling, design)


def network_output(module: Any, scaling: Any, design: RowDesign) -> np.ndarray:
    """``module``'s MLP output for the rows of ``design``, in data units (members × rows)."""
    import torch

    from hierfit.engines.neural._prep import scaled_arrays

    dtype = next(module.parameters()).dtype
    arrays = scaled_arrays(design, scaling)
    out = np.empty((module.n_members, design.n))
    feats = torch.as_tensor(arrays["F"], dtype=dtype)
    levels = [torch.as_tensor(i, dtype=torch.long) for i in arrays["level_index"]]
    with torch.no_grad():
        for start in range(0, design.n, CHUNK):
            rows = slice(start, start + CHUNK)
            out[:, rows] = module.nonlinear(feats[rows], [i[rows] for i in levels]).double().numpy()
    return out * scaling.y_scale
