"""The flat parameter vector of a linear predictor and the linear maps built on it.

Every linear engine's estimates are ``beta`` (population coefficients) and one ``b`` array
(groups × coefficients) per group-level term. Flattened into one vector ``theta``, every
reported quantity is a linear map of it:

* a row's linear predictor ``eta = R @ theta`` (contributions are the pieces of that sum);
* every group effect -- a deviation ``b[g, c]`` or a total ``beta[c] + b_market[..] + b_sub[g, c]``
  -- is a row of one sparse matrix ``M``.

So point estimates, posterior draws (``draws @ M.T``) and exact Gaussian standard errors
(``diag(M Σ Mᵀ)``) all come from the same two maps, and no engine re-derives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from hierfit.design import NATIONAL_LEVEL, Design, RowDesign
from hierfit.design.hierarchy import Hierarchy
from hierfit.formula import INTERCEPT

EFFECT_KEYS = ["level", "group", "parent", "term", "kind"]


@dataclass(frozen=True)
class TermLayout:
    level: str
    coefficients: tuple[str, ...]
    n_groups: int
    offset: int

    @property
    def size(self) -> int:
        return self.n_groups * len(self.coefficients)


@dataclass(frozen=True)
class ParameterLayout:
    """Where ``beta`` and each term's ``b`` sit in the flat vector (``b`` row-major)."""

    x_names: tuple[str, ...]
    terms: tuple[TermLayout, ...]

    @classmethod
    def from_design(cls, design: Design) -> ParameterLayout:
        offset = len(design.x_names)
        terms = []
        for t in design.terms:
            n_groups = design.hierarchy.level(t.level).n_groups
            terms.append(TermLayout(t.level, t.coefficients, n_groups, offset))
            offset += n_groups * len(t.coefficients)
        return cls(tuple(design.x_names), tuple(terms))

    @property
    def size(self) -> int:
        return len(self.x_names) + sum(t.size for t in self.terms)

    def to_json(self) -> dict[str, Any]:
        """Plain data for a save: the names and, per term, its level, coefficients and groups."""
        return {"x_names": list(self.x_names),
                "terms": [{"level": t.level, "coefficients": list(t.coefficients), "n_groups": t.n_groups} for t in self.terms]}

    @classmethod
    def from_json(cls, value: Any, hierarchy: Hierarchy) -> ParameterLayout:
        """The layout :meth:`to_json` wrote, checked against the fit's tree of groups.

        Raises ``ValueError`` naming what does not fit (the loader turns it into a
        ``PersistenceError`` naming the file).

        Examples
        --------
        >>> import hierfit
        >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=0)
        >>> d = hierfit.build_design(hierfit.make_spec("y ~ x1 + (1 | market)"), sim.data)
        >>> lay = ParameterLayout.from_design(d)
        >>> ParameterLayout.from_json(lay.to_json(), d.hierarchy) == lay
        True
        """
        if not isinstance(value, dict) or not isinstance(value.get("x_names"), list) or not isinstance(value.get("terms"), list):
            raise ValueError("the parameter layout is malformed")
        offset = len(value["x_names"])
        terms = []
        for t in value["terms"]:
            level, coefficients, n_groups = t["level"], tuple(t["coefficients"]), int(t["n_groups"])
            if level not in hierarchy.names or hierarchy.level(level).n_groups != n_groups:
                raise ValueError(f"the layout's level {level!r} with {n_groups} groups is not in the fit's tree of groups")
            terms.append(TermLayout(str(level), tuple(str(c) for c in coefficients), n_groups, offset))
            offset += n_groups * len(coefficients)
        return cls(tuple(str(x) for x in value["x_names"]), tuple(terms))

    def flatten(self, beta: np.ndarray, b: list[np.ndarray] | tuple[np.ndarray, ...]) -> np.ndarray:
        """``(beta, [b_t])`` -> flat vector; works on draws with a leading axis."""
        beta = np.asarray(beta, dtype=float)
        lead = beta.shape[:-1]
        parts = [beta] + [np.asarray(bt, dtype=float).reshape(*lead, -1) for bt in b]
        return np.concatenate(parts, axis=-1)

    def unflatten(self, theta: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        theta = np.asarray(theta, dtype=float)
        lead = theta.shape[:-1]
        p = len(self.x_names)
        b = [theta[..., t.offset : t.offset + t.size].reshape(*lead, t.n_groups, len(t.coefficients)) for t in self.terms]
        return theta[..., :p], b

    # -- the linear maps -------------------------------------------------------------------
    def row_matrix(self, design: RowDesign) -> sparse.csr_matrix:
        """Sparse ``R`` with ``eta = R @ theta`` for the rows of ``design`` (unseen groups: 0).

        Examples
        --------
        >>> import hierfit
        >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=0)
        >>> d = hierfit.build_design(hierfit.make_spec("y ~ x1 + (1 | market)"), sim.data)
        >>> ParameterLayout.from_design(d).row_matrix(d).shape  # 2 population + 3 market columns
        (30, 5)
        """
        n = design.n
        blocks = [sparse.csr_matrix(design.X)]
        for td, t in zip(design.terms, self.terms):
            idx = design.group_index[td.level]
            known = idx >= 0
            k = len(t.coefficients)
            rows = np.repeat(np.arange(n)[known], k)
            cols = (idx[known][:, None] * k + np.arange(k)).ravel()
            vals = td.Z[known].ravel()
            blocks.append(sparse.csr_matrix((vals, (rows, cols)), shape=(n, t.size)))
        return sparse.hstack(blocks, format="csr")

    def effect_map(self, hierarchy: Hierarchy) -> tuple[pd.DataFrame, sparse.csr_matrix]:
        """Rows describing every group effect, and ``M`` with ``effects = M @ theta``.

        Deviations are a group's own coefficient; totals add the population coefficient of the
        same name (``Intercept`` is the national level) and every ancestor's deviation.
        The national rows carry the population coefficients that some level varies; their
        ``n_rows`` is every row under the root.
        """
        rows: list[dict] = []
        cols: list[np.ndarray] = []
        r_idx: list[np.ndarray] = []
        n_rows = 0
        varied = {c for t in self.terms for c in t.coefficients}
        for c in [c for c in self.x_names if c in varied or c == INTERCEPT]:
            j = self.x_names.index(c)
            for kind in ("deviation", "total"):
                rows.append(dict(level=NATIONAL_LEVEL, group=hierarchy.national, parent="", term=c, kind=kind, n_rows=hierarchy.n_rows))
                r_idx.append(np.array([n_rows]))
                cols.append(np.array([j]))
                n_rows += 1
        for t in self.terms:
            lv = hierarchy.level(t.level)
            if lv.parent is not None and lv.parent_index is not None:
                parent_groups = hierarchy.level(lv.parent).groups
                parents = [parent_groups[i] for i in lv.parent_index]
            else:
                parents = [hierarchy.national] * lv.n_groups
            for ci, c in enumerate(t.coefficients):
                own = t.offset + np.arange(t.n_groups) * len(t.coefficients) + ci
                for kind in ("deviation", "total"):
                    block = np.arange(n_rows, n_rows + t.n_groups)
                    r_idx.append(block)
                    cols.append(own)
                    if kind == "total":
                        if c in self.x_names:
                            r_idx.append(block)
                            cols.append(np.full(t.n_groups, self.x_names.index(c)))
                        for anc in hierarchy.ancestors(lv.name):
                            for other in self.terms:
                                if other.level == anc and c in other.coefficients:
                                    anc_idx = hierarchy.ancestor_index(lv.name, anc)
                                    r_idx.append(block)
                                    cols.append(other.offset + anc_idx * len(other.coefficients) + other.coefficients.index(c))
                    for g, group in enumerate(lv.groups):
                        rows.append(dict(level=lv.name, group=group, parent=parents[g], term=c, kind=kind, n_rows=int(lv.sizes[g])))
                    n_rows += t.n_groups
        r = np.concatenate(r_idx)
        cidx = np.concatenate(cols)
        M = sparse.csr_matrix((np.ones(len(r)), (r, cidx)), shape=(n_rows, self.size))
        table = pd.DataFrame(rows)
        return table, M

    def contributions(self, design: RowDesign, beta: np.ndarray, b: list[np.ndarray]) -> pd.DataFrame:
        """Per row: national, each term's coefficient parts, population (non-intercept) part."""
        out: dict[str, np.ndarray] = {}
        beta = np.asarray(beta, dtype=float)
        x_names = list(design.x_names)
        national = np.zeros(design.n)
        if INTERCEPT in x_names:
            j = x_names.index(INTERCEPT)
            national = design.X[:, j] * beta[j]
        out[NATIONAL_LEVEL] = national
        for td, bt in zip(design.terms, b):
            idx = design.group_index[td.level]
            known = idx >= 0
            safe = np.where(known, idx, 0)
            for j, name in enumerate(td.column_names()):
                out[name] = np.where(known, td.Z[:, j] * bt[safe, j], 0.0)
        mask = np.array([n != INTERCEPT for n in x_names], dtype=bool)
        out["population"] = design.X[:, mask] @ beta[mask] if mask.any() else np.zeros(design.n)
        if design.offset is not None:
            out["offset"] = design.offset  # the known part of the linear predictor (coefficient 1)
        return pd.DataFrame(out)

    def eta_draws(self, design: RowDesign, theta_draws: np.ndarray, rows: slice) -> np.ndarray:
        """Linear predictor draws ``(n_draws, n_rows_in_slice)`` for a block of rows."""
        beta, b = self.unflatten(theta_draws)
        eta = beta @ design.X[rows].T
        if design.offset is not None:
            eta = eta + design.offset[rows]
        for td, bt in zip(design.terms, b):
            idx = design.group_index[td.level][rows]
            known = idx >= 0
            safe = np.where(known, idx, 0)
            for j in range(td.Z.shape[1]):
                eta += np.where(known, td.Z[rows, j] * bt[:, safe, j], 0.0)
        return eta
