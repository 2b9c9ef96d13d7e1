"""Affine invariance per engine: the worst deviation under ``y -> a + b y`` and ``x -> c + d x``.

A hierarchical model with an intercept is the same model after shifting or scaling the outcome
or a predictor, so every engine's predictions should transform exactly (up to the rounding of
the transformed data itself). The data are put on a binary grid (multiples of 2**-10) so that
``y + 1e12`` is an exact double. For each engine and case the script fits, maps the predictions
back (``(pred - a) / b``) and prints the worst deviation from the untransformed fit relative to
the predictions' spread, and the worst relative deviation of the variance components (SDs
scale with ``b``; they do not move with ``x``).

    PYTHONPATH=src python benchmarks/affine_invariance.py [--engines ols,mixed,...] [--bayes]

With ``--bayes`` the samplers (pymc, stan) are included (seeded; their default priors scale
with the data, so they are invariant up to the sampler's own rounding).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import pandas as pd

import hierfit
from hierfit.engines import ENGINES

OUTCOME_CASES = [(1e6, 1.0), (1e12, 1.0), (0.0, 1e-9), (0.0, 1e12)]
PREDICTOR_CASES = [(1e6, 1.0), (1e12, 1.0), (0.0, 1e-9), (0.0, 1e12)]
QUICK = ["ols", "mixed", "neural", "lightgbm", "boosted-mixed"]


def _grid(v: pd.Series) -> np.ndarray:
    return np.round(v.to_numpy(dtype=float) * 1024.0) / 1024.0


def _fit(engine: str, data: pd.DataFrame, formula: str) -> hierfit.FitResult:
    options = ENGINES[engine].fast_options()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hierfit.fit(formula, data, engine=engine, national="United_state", **options)


def _sds(fit: hierfit.FitResult) -> np.ndarray:
    vc = fit.variance_components()
    return vc.loc[vc["term2"] == "", "sd_or_corr"].to_numpy(dtype=float)


def run(engines: list[str]) -> pd.DataFrame:
    sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=40, seed=3, nonlinear="sin", national_name="United_state")
    data = sim.data.copy()
    for col in ("y", "x1", "x2"):
        data[col] = _grid(data[col])
    rows = []
    for engine in engines:
        t0 = time.perf_counter()
        base = _fit(engine, data, sim.formula)
        p0 = base.predict(data)["prediction"].to_numpy()
        sd0 = _sds(base)
        spread = float(np.std(p0))
        worst_pred = worst_sd = 0.0
        for a, b in OUTCOME_CASES:
            d = data.copy()
            d["y"] = a + b * d["y"]
            f = _fit(engine, d, sim.formula)
            p = (f.predict(d)["prediction"].to_numpy() - a) / b
            worst_pred = max(worst_pred, float(np.max(np.abs(p - p0))) / spread)
            if sd0.size:
                worst_sd = max(worst_sd, float(np.max(np.abs(_sds(f) / b - sd0) / np.maximum(sd0, 1e-300))))
        worst_x = worst_x_sd = 0.0
        for c, dd in PREDICTOR_CASES:
            d = data.copy()
            d["x2"] = c + dd * d["x2"]  # a population predictor (x1 also carries a correlated slope)
            d["x1"] = c + dd * d["x1"]
            f = _fit(engine, d, sim.formula)
            p = f.predict(d)["prediction"].to_numpy()
            worst_x = max(worst_x, float(np.max(np.abs(p - p0))) / spread)
            resid = f.variance_components()
            resid0 = base.variance_components()
            r1 = resid.loc[resid["level"] == "residual", "sd_or_corr"].to_numpy()
            r0 = resid0.loc[resid0["level"] == "residual", "sd_or_corr"].to_numpy()
            if r0.size:
                worst_x_sd = max(worst_x_sd, float(np.max(np.abs(r1 - r0) / r0)))
        rows.append({"engine": engine, "y: worst pred dev / sd": worst_pred, "y: worst SD rel dev": worst_sd,
                     "x: worst pred dev / sd": worst_x, "x: worst residual-SD rel dev": worst_x_sd,
                     "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(QUICK))
    parser.add_argument("--bayes", action="store_true", help="also pymc and stan")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    if args.bayes:
        engines += ["pymc", "stan"]
    engines = [e for e in engines if ENGINES[e].available]
    table = run(engines)
    print(f"affine_invariance.py -- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} with "
          f"{os.cpu_count()} cores; cases y -> a + b y: {OUTCOME_CASES}; x1, x2 -> c + d x: {PREDICTOR_CASES}")
    with pd.option_context("display.float_format", lambda v: f"{v:.2e}", "display.width", 200):
        print(table.to_string(index=False))
    print("pred dev / sd: worst |prediction mapped back - untransformed prediction| / SD of the predictions; "
          "at shifts of 1e12 the floor is the rounding of the data themselves (~1e-4 of a unit).")
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
