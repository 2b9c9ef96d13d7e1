"""An :class:`~.lmm.LmmSolution` saved as the sufficient statistics of its PLS system.

Everything a solution reports -- and the factorisation its joint draws of (beta, b) are made
from -- is a function of the system's per-group cross-products, the elimination plan, the
column standardisation and the optimum theta (see ``lmm._assemble``). Those are what is
saved: O(groups × random-effect columns × width) numbers, independent of the rows and of the
number of draws. Loading rebuilds the solution with the same code and the same inputs, so its
estimates and its seeded draws are those of the fit that was saved; the saved estimates are
kept to check that (a save from a hierfit whose core computes differently is refused, not
silently changed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hierfit.engines.state import StateReader, StateWriter
from hierfit.exceptions import PersistenceError

from ._blocks import Factor, Plan
from ._crossed import Coupling, CrossedSystem
from ._factor import System
from ._standardize import ColumnMap, Standardization
from ._suffstats import Layout, make_layout
from ._theta import ThetaSpec
from .lmm import LmmSolution, MixedSystem, OptSummary, _assemble, _blas_for

#: the rebuilt solution must reproduce the saved estimates to this relative precision
REBUILD_RTOL = 1e-8


def save_solution(sol: LmmSolution, state: StateWriter) -> None:
    """Write what rebuilds ``sol`` exactly: statistics, plan, standardisation, optimum."""
    sysm, opt = sol._system, sol.optsum
    state.put("n_obs", sol.n_obs)
    state.put("reml", sol.reml)
    save_system(sysm, state)
    state.put("theta_entries", [list(e) for e in sol.theta_entries])
    save_standardization(sol._std, state)
    state.put_array("opt_initial", opt.initial)
    state.put_array("opt_final", opt.final)
    state.put("opt", {"fmin": opt.fmin, "converged": opt.converged, "message": opt.message,
                      "n_evaluations": opt.n_evaluations, "optimizer": opt.optimizer, "seconds": opt.seconds})
    state.put("timings", sol.timings)
    state.put_array("beta", sol.beta)
    state.put("objective", sol.objective)
    state.put("log_weights", sol.log_weights)


def restore_solution(state: StateReader) -> LmmSolution:
    """The solution :func:`save_solution` wrote, rebuilt from its statistics."""
    try:
        sysm, spec, std, n, p, reml, optsum = _read_parts(state)
        with _blas_for(sysm):
            sol = _assemble(sysm, spec, std, n, p, reml, 0.0, optsum, state.get_float("log_weights"))
    except PersistenceError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, np.linalg.LinAlgError) as exc:
        raise state.fail(f"the mixed model cannot be rebuilt from its statistics ({type(exc).__name__}: {exc})") from None
    saved_beta = state.get_array("beta", ndim=1)
    objective = state.get_float("objective")
    scale = max(1.0, float(np.abs(saved_beta).max(initial=0.0)))
    if (sol.beta.shape != saved_beta.shape or not np.allclose(sol.beta, saved_beta, rtol=REBUILD_RTOL, atol=REBUILD_RTOL * scale)
            or not np.isclose(sol.objective, objective, rtol=REBUILD_RTOL, atol=REBUILD_RTOL)):
        raise state.fail("the statistics do not reproduce the saved estimates (saved by a hierfit whose mixed-model core differs?)")
    return dataclasses.replace(sol, timings=state.get_float_dict("timings"))


def save_system(sysm: MixedSystem, state: StateWriter) -> None:
    """The elimination plan and the per-group statistics of a mixed-model-equations system
    (the crossed elimination's sparse coupling as its (group, group) pairs and blocks)."""
    plan = sysm.plan
    state.put("p", sysm.layout.p)
    state.put("factors", [{"blocks": f.blocks, "col_offsets": f.col_offsets, "m": f.m, "K": f.K, "is_ones": f.is_ones}
                          for f in plan.factors])
    state.put("chain", plan.chain)
    state.put("root", plan.root)
    keys = sorted(plan.parent_maps)
    state.put("parent_map_keys", [[i, j] for i, j in keys])
    state.put_arrays("parent_maps", [plan.parent_maps[k] for k in keys])
    state.put_arrays("raw_rows", sysm.raw_rows)
    if isinstance(sysm, CrossedSystem):
        state.put("solver", "crossed")
        state.put_arrays("coupling_groups", sysm.coupling.groups)
        state.put_arrays("coupling_others", sysm.coupling.others)
        state.put_arrays("coupling_blocks", sysm.coupling.blocks)


def save_standardization(std: Standardization, state: StateWriter) -> None:
    """The column maps the statistics were gathered under."""
    state.put_array("std_x_center", std.x.center)
    state.put_array("std_x_scale", std.x.scale)
    state.put("std_x_intercept", std.x.intercept)
    state.put("std_y", [std.y_center, std.y_scale])
    state.put("std_has_ones", std.ones_coef is not None)
    state.put_array("std_ones_coef", std.ones_coef if std.ones_coef is not None else np.zeros(0))
    state.put_arrays("std_z_center", [m.center for m in std.z])
    state.put_arrays("std_z_scale", [m.scale for m in std.z])
    state.put("std_z_intercept", [m.intercept for m in std.z])


def read_system(state: StateReader) -> MixedSystem:
    """The system :func:`save_system` wrote, its statistics' shapes checked against the plan."""
    p = state.get_int("p")
    factors = []
    for f in _list(state, "factors"):
        if not isinstance(f, dict):
            raise state.fail("malformed factor")
        blocks, offsets, is_ones = (_ints(state, f.get(k)) for k in ("blocks", "col_offsets", "is_ones"))
        # only the data pass reads a factor's rows; a rebuilt factor keeps its structure alone
        factors.append(Factor(blocks, offsets, int(f["m"]), int(f["K"]), np.zeros(0, dtype=np.int64), [], [bool(x) for x in is_ones]))
    keys = [tuple(_ints(state, k)) for k in _list(state, "parent_map_keys")]
    maps = state.get_arrays("parent_maps", kind="i", ndim=1)
    if len(keys) != len(maps) or any(len(k) != 2 for k in keys):
        raise state.fail("parent maps and their keys disagree")
    plan = Plan(factors, state.get_int_list("chain"), state.get_int_list("root"),
                {(int(k[0]), int(k[1])): m for k, m in zip(keys, maps)})
    layout = make_layout(plan, p)
    rows = state.get_arrays("raw_rows", ndim=3)
    if state.has("solver") and state.get_str("solver") == "crossed":
        return _read_crossed(state, plan, layout, rows)
    expected = [(layout.m[i], layout.sizes[i], layout.total - layout.offsets[i]) for i in range(layout.n_levels)]
    if [r.shape for r in rows] != expected:
        raise state.fail(f"the statistics have shapes {[r.shape for r in rows]}, the plan needs {expected}")
    return System(plan, layout, rows)


def _read_crossed(state: StateReader, plan: Plan, layout: Layout, rows: list[np.ndarray]) -> CrossedSystem:
    """A :class:`CrossedSystem` from its rows and coupling, every shape and index checked."""
    if len(plan.chain) != 1 or not plan.root:
        raise state.fail("a crossed system needs one chain factor and a root")
    K0, m0, q, p = layout.sizes[0], layout.m[0], layout.sizes[1], layout.p
    expected = [(m0, K0, K0 + p + 1), (1, q, q + p + 1), (1, p + 1, p + 1)]
    if [r.shape for r in rows] != expected:
        raise state.fail(f"the statistics have shapes {[r.shape for r in rows]}, the plan needs {expected}")
    segs = [s for s in layout.segments if s.start >= layout.offsets[1]]
    groups = state.get_arrays("coupling_groups", kind="i", ndim=1)
    others = state.get_arrays("coupling_others", kind="i", ndim=1)
    blocks = state.get_arrays("coupling_blocks", ndim=3)
    if not len(groups) == len(others) == len(blocks) == len(segs):
        raise state.fail("the coupling has a different number of segments than the plan")
    for seg, g, h, b in zip(segs, groups, others, blocks):
        if not (g.shape == h.shape == b.shape[:1] and b.shape[1:] == (K0, seg.K)):
            raise state.fail("the coupling's pairs and blocks disagree in shape")
        if g.size and (g.min() < 0 or g.max() >= m0 or h.min() < 0 or h.max() >= seg.m):
            raise state.fail("the coupling names groups outside the plan")
    coupling = Coupling.from_pairs(segs, K0, q, layout.offsets[1], m0, list(groups), list(others), list(blocks))
    return CrossedSystem(plan, layout, rows, coupling)


def read_theta_spec(state: StateReader) -> ThetaSpec:
    """Where theta sits in each term's factor, from the saved ``theta_entries``."""
    entries = tuple((int(b), int(i), int(j)) for b, i, j in (_ints(state, e) for e in _list(state, "theta_entries")))
    n_blocks = 1 + max((b for b, _, _ in entries), default=-1)
    block_k = tuple(1 + max(i for bb, i, _ in entries if bb == b) for b in range(n_blocks))
    return ThetaSpec(block_k, entries, np.array([0.0 if i == j else -np.inf for _, i, j in entries]))


def read_standardization(state: StateReader, n_blocks: int) -> Standardization:
    """The column maps :func:`save_standardization` wrote."""
    y = state.get("std_y")
    z_int = _list(state, "std_z_intercept")
    zc, zs = state.get_arrays("std_z_center", ndim=1), state.get_arrays("std_z_scale", ndim=1)
    if not (isinstance(y, list) and len(y) == 2) or not len(z_int) == len(zc) == len(zs) == n_blocks:
        raise state.fail("malformed standardisation")
    return Standardization(
        ColumnMap(state.get_array("std_x_center", ndim=1), state.get_array("std_x_scale", ndim=1), _optional_int(state, state.get("std_x_intercept"))),
        float(y[0]), float(y[1]),
        state.get_array("std_ones_coef", ndim=1) if state.get_bool("std_has_ones") else None,
        [ColumnMap(c, s, _optional_int(state, i)) for c, s, i in zip(zc, zs, z_int)],
    )


def _read_parts(state: StateReader) -> tuple[MixedSystem, ThetaSpec, Standardization, int, int, bool, OptSummary]:
    n, reml = state.get_int("n_obs"), state.get_bool("reml")
    sysm = read_system(state)
    spec = read_theta_spec(state)
    std = read_standardization(state, len(spec.block_k))
    o = state.get_dict("opt")
    optsum = OptSummary(state.get_array("opt_initial", ndim=1), state.get_array("opt_final", ndim=1), float(o["fmin"]),
                        bool(o["converged"]), str(o["message"]), int(o["n_evaluations"]), str(o["optimizer"]), float(o["seconds"]))
    if optsum.final.shape != (spec.size,):
        raise state.fail(f"the optimum has {optsum.final.size} elements; the terms need {spec.size}")
    return sysm, spec, std, n, sysm.layout.p, reml, optsum


def _list(state: StateReader, key: str) -> list[Any]:
    value = state.get(key)
    if not isinstance(value, list):
        raise state.fail(f"{key!r} should be a list")
    return value


def _ints(state: StateReader, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, (int, bool)) for v in value):
        raise state.fail(f"expected a list of integers, got {value!r}")
    return [int(v) for v in value]


def _optional_int(state: StateReader, value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise state.fail(f"expected an integer or null, got {value!r}")
