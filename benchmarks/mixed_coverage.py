"""Coverage of the `mixed` engine's 90% intervals for group effects over repeated simulations.

Simulates the reference DGP (10 markets × 5 submarkets × 100 rows) `--reps` times, fits
`y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)`, and counts how often the 90%
intervals of each kind of group effect contain the simulated truth.

Deviations use lme4's conditional SDs (given the variance parameters and beta); totals use
joint draws of (beta, b). Both ignore the uncertainty of the variance parameters, so with only
10 markets the market-level coverage is expected slightly below nominal (as for lme4).

Run: python benchmarks/mixed_coverage.py --reps 100
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import hierfit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--level", type=float, default=0.9)
    args = parser.parse_args()
    rows = []
    t0 = time.perf_counter()
    for rep in range(args.reps):
        sim = hierfit.simulate(seed=1000 + rep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hierfit.HierfitWarning)
            fit = hierfit.fit(sim.formula, sim.data, engine="mixed", n_draws=1000, seed=rep)
        est = fit.group_effects(level=args.level)
        truth = sim.truth.group_effects()
        m = truth.merge(est, on=["level", "group", "term", "kind"], suffixes=("_true", ""))
        m = m[m.level != "national"]
        m["covered"] = (m.lower <= m.estimate_true) & (m.estimate_true <= m.upper)
        rows.append(m[["level", "term", "kind", "covered"]].assign(rep=rep))
    allrows = pd.concat(rows)
    table = allrows.groupby(["level", "term", "kind"]).covered.agg(["mean", "count"]).reset_index()
    table["mc_se"] = np.sqrt(table["mean"] * (1 - table["mean"]) / table["count"])
    print(f"mixed engine: {args.level:.0%} interval coverage over {args.reps} simulations of the reference DGP "
          f"({time.perf_counter() - t0:.1f} s)")
    print(table.rename(columns={"mean": "coverage", "count": "n_intervals"}).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    overall = allrows.covered.mean()
    print(f"overall coverage: {overall:.3f} (nominal {args.level:.2f})")


if __name__ == "__main__":
    main()
