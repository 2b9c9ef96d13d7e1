"""Recovery and 90% interval coverage of the `mixed` engine's GLMM fits on simulated trees.

For each family (``bernoulli``, ``binomial``, ``poisson``, ``negative_binomial``) the script
simulates ``--reps`` market/submarket trees with :func:`hierfit.simulate` (the reference DGP:
10 markets x 5 submarkets, national intercept 1.0, slopes x1 = 0.5 and x2 = 0.6, market
intercept / x1-slope SDs 0.8 / 0.5 with correlation 0.3, submarket intercept SD 0.4;
``--rows`` rows per submarket, default 100), fits the true model

    y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)

(``cbind(y, n - y) ~ ...`` for binomial, with 1 to 19 trials per row; NB2 size 2 for the
negative binomial) with ``hierfit.fit(..., engine="mixed", family=...)`` and compares
``fit.group_effects(level=0.9)`` to ``sim.truth.group_effects()`` (as ``mixed_coverage.py``).

Printed per family:

* coverage of the 90% intervals per level / term / kind (deviation from the parent, total),
  with a binomial Monte-Carlo SE (intervals of one replicate are correlated, so this SE is
  optimistic for the market rows);
* the overall coverage with its Monte-Carlo SE from the replicate-to-replicate spread
  (each replicate's coverage is one observation), and whether it lies in 86-94%;
* recovery: mean estimate of each fixed effect, SD, correlation (and the NB size) against
  the truth, the mean bias with its MC SE, and the coverage of the fixed effects' 90% intervals.

Deviation intervals of the `mixed` engine come from the joint (beta, b) prediction-error
variance given the variance parameters; like lme4's they ignore the uncertainty of those
parameters, so with 10 markets the market rows may sit slightly below nominal.

Usage::

    python benchmarks/glmm_coverage.py --reps 100                  # all four families
    python benchmarks/glmm_coverage.py --family bernoulli --reps 20
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import pandas as pd

import hierfit

FAMILIES = ("bernoulli", "binomial", "poisson", "negative_binomial")


def one_rep(family: str, rep: int, rows: int, level: float, n_draws: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Coverage rows of one replicate and its parameter estimates vs truth."""
    sim = hierfit.simulate(family=family, rows_per_submarket=rows, seed=10_000 * (1 + FAMILIES.index(family)) + rep)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", hierfit.HierfitWarning)
        fit = hierfit.fit(sim.formula, sim.data, engine="mixed", family=family, n_draws=n_draws, seed=rep)
    notes = [f"{type(w.message).__name__}: {str(w.message)[:120]}" for w in caught if issubclass(w.category, hierfit.HierfitWarning)]
    est = fit.group_effects(level=level)
    truth = sim.truth.group_effects()
    m = truth.merge(est, on=["level", "group", "term", "kind"], suffixes=("_true", ""))
    m = m[m.level != "national"]
    m["covered"] = (m.lower <= m.estimate_true) & (m.estimate_true <= m.upper)
    m["error"] = m.estimate - m.estimate_true
    cov = m[["level", "term", "kind", "covered", "error"]].assign(rep=rep)
    # parameters: fixed effects (with interval coverage), SDs / correlations, NB size
    fe = fit.fixed_effects(level=level).merge(sim.truth.fixed_effects(), on="term", suffixes=("", "_true"))
    par = pd.DataFrame({"parameter": "fixed " + fe.term, "estimate": fe.estimate, "truth": fe.estimate_true,
                        "covered": (fe.lower <= fe.estimate_true) & (fe.estimate_true <= fe.upper)})
    vc = fit.variance_components().merge(sim.truth.variance_components(), on=["level", "term1", "term2"], suffixes=("", "_true"))
    name = np.where(vc.term2 == "", "sd " + vc.level + " " + vc.term1, "corr " + vc.level + " " + vc.term1 + ":" + vc.term2)
    name = np.where(vc.level == "dispersion", "NB size theta", name)
    par = pd.concat([par, pd.DataFrame({"parameter": name, "estimate": vc.sd_or_corr, "truth": vc.sd_or_corr_true,
                                        "covered": np.nan})], ignore_index=True).assign(rep=rep)
    return cov, par, notes


def study(family: str, reps: int, rows: int, level: float, n_draws: int) -> dict[str, float]:
    t0 = time.perf_counter()
    covs, pars, notes = [], [], []
    for rep in range(reps):
        c, p, nt = one_rep(family, rep, rows, level, n_draws)
        covs.append(c)
        pars.append(p)
        notes += [f"rep {rep}: {x}" for x in nt]
    elapsed = time.perf_counter() - t0
    allc, allp = pd.concat(covs), pd.concat(pars)
    print(f"\n=== {family}: {level:.0%} intervals over {reps} simulated trees (10 markets x 5 submarkets x {rows} rows; "
          f"{elapsed:.0f} s, {elapsed / reps:.2f} s per fit) ===")
    tab = allc.groupby(["level", "term", "kind"]).agg(coverage=("covered", "mean"), n_intervals=("covered", "size"),
                                                       rmse=("error", lambda e: float(np.sqrt(np.mean(e**2))))).reset_index()
    tab["mc_se"] = np.sqrt(tab.coverage * (1 - tab.coverage) / tab.n_intervals)
    per_rep_kind = allc.groupby(["level", "term", "kind", "rep"]).covered.mean().groupby(["level", "term", "kind"])
    tab["mc_se_reps"] = (per_rep_kind.std(ddof=1) / np.sqrt(per_rep_kind.size())).to_numpy()
    print(tab[["level", "term", "kind", "coverage", "n_intervals", "mc_se", "mc_se_reps", "rmse"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    per_rep = allc.groupby("rep").covered.mean()
    overall = float(allc.covered.mean())
    se = float(per_rep.std(ddof=1) / np.sqrt(len(per_rep))) if len(per_rep) > 1 else float("nan")
    inside = 0.86 <= overall <= 0.94
    print(f"overall coverage: {overall:.3f} (MC SE {se:.3f} over replicates; nominal {level:.2f}) -> "
          f"{'inside' if inside else 'OUTSIDE'} 86-94%")
    g = allp.groupby("parameter", sort=False)
    rec = pd.DataFrame({"truth": g.truth.first(), "mean_estimate": g.estimate.mean(),
                        "bias": g.estimate.mean() - g.truth.first(),
                        "bias_mc_se": g.estimate.std(ddof=1) / np.sqrt(g.size()),
                        "sd_estimate": g.estimate.std(ddof=1),
                        "ci_coverage": g.covered.mean()}).reset_index()
    n_zero = allp[allp.parameter.str.startswith("sd ")].assign(zero=lambda d: d.estimate < 1e-4).groupby("parameter").zero.sum()
    print("recovery (mean over replicates; ci_coverage: fixed effects' 90% intervals):")
    print(rec.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    if n_zero.sum():
        print("SD estimates at the boundary (< 1e-4): " + ", ".join(f"{k} {v}" for k, v in n_zero.items() if v))
    if notes:
        print(f"warnings in {len({n.split(':')[0] for n in notes})} of {reps} fits, e.g.: " + "; ".join(notes[:3]))
    return {"overall": overall, "se": se, "inside": float(inside)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default=",".join(FAMILIES), help="comma-separated, from " + ", ".join(FAMILIES))
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--rows", type=int, default=100, help="rows per submarket")
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--n-draws", type=int, default=1000, help="the engine's joint draws for intervals on totals")
    args = ap.parse_args()
    fams = args.family.split(",")
    for f in fams:
        if f not in FAMILIES:
            ap.error(f"unknown family {f!r}; choose from {', '.join(FAMILIES)}")
    print(f"load average (1, 5, 15 min) at start: {tuple(round(x, 2) for x in os.getloadavg())}")
    hierfit.simulate(seed=0)  # import-time work out of the first family's clock
    t0 = time.perf_counter()
    summary = {f: study(f, args.reps, args.rows, args.level, args.n_draws) for f in fams}
    print(f"\nload average (1, 5, 15 min) at end: {tuple(round(x, 2) for x in os.getloadavg())}; "
          f"total {time.perf_counter() - t0:.0f} s")
    print("\nsummary (target: overall coverage of 90% group-effect intervals in 86-94%):")
    for f, s in summary.items():
        print(f"  {f:<18} {s['overall']:.3f} +/- {s['se']:.3f}  {'met' if s['inside'] else 'NOT met'}")


if __name__ == "__main__":
    main()
