"""The linear part in standardised coordinates, for the exact solves that follow training.

After training, each member's linear part is solved exactly given its network (the conditional
MAP, the identifying projection, Gaussian posterior draws: :mod:`._posterior`, :mod:`._finish`).
Those sparse solves on the raw columns lose every digit when the outcome has a large mean or a
predictor sits far from zero (at ``y + 1e12`` the MAP was off by hundreds of standard
deviations). So they run in the network's own standardised coordinates (:class:`._prep.Scaling`):

``theta = T theta_t + shift``, ``R theta = s R_t theta_t + c``, ``g = s g_t``, ``offset = s offset_t``,
``Sigma = s^2 B Sigma_t B'``, ``sigma = s sigma_t``

where ``s, c`` are the outcome's scale and centre, ``T`` holds ``s A`` on the population part
and ``s B`` on each group's coefficients (the column maps of :mod:`hierfit.engines.mixed`), and
``shift`` puts ``c`` on the intercept. The map is exact, so nothing changes but the rounding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from hierfit.design import Design, TermDesign
from hierfit.engines.layout import ParameterLayout
from hierfit.engines.neural._prep import Scaling
from hierfit.formula import INTERCEPT


@dataclass(frozen=True, eq=False)
class LinearCoords:
    """Standardised row matrix of a design's rows and the map back to the user's units."""

    design_t: Design
    R: sparse.csr_matrix
    T: sparse.csr_matrix
    T_inv: sparse.csr_matrix
    shift: np.ndarray
    scaling: Scaling

    @classmethod
    def from_design(cls, design: Design, scaling: Scaling, layout: ParameterLayout) -> LinearCoords:
        X_t = scaling.x_map.apply(design.X.T).T if design.X.shape[1] else design.X
        terms = tuple(TermDesign(td.term, zm.apply(td.Z.T).T) for td, zm in zip(design.terms, scaling.z_maps))
        # the offset is part of the linear predictor, so it is scaled like the outcome (not centred)
        design_t = dataclasses.replace(design, X=np.ascontiguousarray(X_t), terms=terms,
                                       y=(design.y - scaling.y_center) / scaling.y_scale,
                                       offset=None if design.offset is None else design.offset / scaling.y_scale)
        R = layout.row_matrix(design_t)
        s = scaling.y_scale
        fwd = [sparse.csr_matrix(s * scaling.x_map.matrix())]
        inv = [sparse.csr_matrix(scaling.x_map.inverse() / s)]
        for t, zm in zip(layout.terms, scaling.z_maps):
            fwd.append(sparse.kron(sparse.identity(t.n_groups), sparse.csr_matrix(s * zm.matrix())))
            inv.append(sparse.kron(sparse.identity(t.n_groups), sparse.csr_matrix(zm.inverse() / s)))
        shift = np.zeros(layout.size)
        if INTERCEPT in layout.x_names:
            shift[layout.x_names.index(INTERCEPT)] = scaling.y_center
        return cls(design_t, R, sparse.block_diag(fwd, format="csr"), sparse.block_diag(inv, format="csr"), shift, scaling)

    def theta(self, theta_t: np.ndarray) -> np.ndarray:
        """User-unit parameters from standardised ones (rows of ``(..., P)``)."""
        return np.asarray(self.T @ np.atleast_2d(theta_t).T).T.reshape(np.shape(theta_t)) + self.shift

    def direction(self, delta_t: np.ndarray) -> np.ndarray:
        """User-unit change of parameters from a standardised one (no shift)."""
        return np.asarray(self.T @ np.atleast_2d(delta_t).T).T.reshape(np.shape(delta_t))

    def theta_t(self, theta: np.ndarray) -> np.ndarray:
        """Standardised parameters from user-unit ones."""
        return np.asarray(self.T_inv @ np.atleast_2d(theta - self.shift).T).T.reshape(np.shape(theta))

    def y_t(self, y: np.ndarray) -> np.ndarray:
        return (y - self.scaling.y_center) / self.scaling.y_scale

    def g_t(self, g: np.ndarray) -> np.ndarray:
        """Network output (or any part of the linear predictor without the centre) in standard units."""
        return g / self.scaling.y_scale

    def sigma_t(self, sigma: float | None) -> float | None:
        return None if sigma is None else sigma / self.scaling.y_scale

    def covs(self, covs_t: list[np.ndarray]) -> list[np.ndarray]:
        """Each term's covariances in user units from standardised ones: ``s^2 B Sigma_t B'``."""
        s2 = self.scaling.y_scale ** 2
        return [s2 * (zm.matrix() @ C @ zm.matrix().T) for C, zm in zip(covs_t, self.scaling.z_maps)]

    def sigma(self, sigma_t: np.ndarray | None) -> np.ndarray | None:
        return None if sigma_t is None else sigma_t * self.scaling.y_scale

    def covs_t(self, covs: list[np.ndarray]) -> list[np.ndarray]:
        """Each term's covariances (``(..., k, k)``) in standardised units: ``B^-1 Sigma B^-T / s^2``."""
        s2 = self.scaling.y_scale ** 2
        out = []
        for C, zm in zip(covs, self.scaling.z_maps):
            Binv = zm.inverse()
            out.append(Binv @ C @ Binv.T / s2)
        return out
