"""Speed of the Bayesian engines on the reference model, against the plain per-row PyMC model.

For N = 5k, 50k, 500k rows of the reference DGP (10 markets x 5 submarkets; ``sim.formula``)
it fits

* ``hierfit pymc`` -- default options: gaussian effects integrated out from sufficient
  statistics, 4 chains x (1000 tune + 1000 draws);
* ``plain pymc`` -- the same model with the per-row likelihood and PyMC's own NUTS
  (``likelihood="rows", sampler="pymc"``), 4 chains x (1000 + 1000) on 2 cores; skipped at a
  size where its time, extrapolated linearly in rows from the previous size, exceeds
  ``--plain-limit`` seconds (the estimate is printed);
* ``hierfit stan`` -- the generated Stan program (compile time reported apart from sampling).

It prints wall time, the minimum bulk ESS over all parameters (fixed effects, every group
effect, SDs, correlations, sigma), ESS per second and the ratio to the plain model, then
hierfit's time at the largest N over its time at 5k. ``--coverage K`` adds a recovery study:
K simulated data sets, the share of 90% intervals of group effects covering the truth.

Run: ``PYTHONPATH=src python benchmarks/bayes_speed.py [--sizes 5000 50000 500000] [--coverage 20]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import hierfit

#: a shorter run per simulation than the defaults (2 chains x 500 + 500): coverage needs many fits
COVERAGE_OPTIONS = {"chains": 2, "tune": 500, "draws": 500}
QUIET = {"few_groups": "ignore", "ess": "ignore", "rhat": "ignore", "divergences": "ignore", "treedepth": "ignore"}


def min_bulk_ess(idata) -> float:
    import arviz as az

    ess = az.ess(idata.posterior, method="bulk")
    vals = np.concatenate([np.asarray(v, dtype=float).ravel() for v in ess.data_vars.values()])
    return float(np.nanmin(vals))


def run(sim, engine: str, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        result = hierfit.fit(sim.formula, sim.data, engine=engine, national=sim.national, checks=QUIET, progressbar=False, **options)
        wall = time.perf_counter() - t0
    idata = result.native()
    ess = min_bulk_ess(idata)
    div = int(np.asarray(idata.sample_stats["diverging"]).sum())
    import arviz as az

    rhat = float(np.nanmax(np.concatenate([np.asarray(v).ravel() for v in az.rhat(idata.posterior).data_vars.values()])))
    return result, wall, ess, div, rhat


def line(label: str, n: int, wall: float, ess: float, div: int, rhat: float, extra: str = "") -> str:
    return f"{label:<14} N={n:>7,}  wall {wall:8.1f} s  min bulk ESS {ess:7.0f}  ESS/s {ess / wall:8.2f}  divergences {div:4d}  max R-hat {rhat:.3f}{extra}"


def speed(sizes: list[int], plain_limit: float, engines: list[str], seed: int) -> None:
    hier_time: dict[int, float] = {}
    plain_rate: float | None = None  # seconds per row of the plain model, from the last size run
    for n in sizes:
        sim = hierfit.simulate(rows_per_submarket=max(1, n // 50), seed=seed)
        hier_rate = None
        if "pymc" in engines:
            res, wall, ess, div, rhat = run(sim, "pymc")
            hier_time[n] = wall
            info = res.engine_fit.info
            print(line("hierfit pymc", n, wall, ess, div, rhat, f"  [{info['sampler']}, {info['likelihood']}, sampling {info['sampling_seconds']:.1f} s]"), flush=True)
            hier_rate = ess / wall
        estimate = plain_rate * n if plain_rate is not None else None
        if "plain" not in engines:
            pass
        elif estimate is not None and estimate > plain_limit:
            print(f"plain pymc     N={n:>7,}  skipped: estimated {estimate:,.0f} s (> {plain_limit:.0f} s) from the previous size, linear in rows", flush=True)
        else:
            _, pwall, pess, pdiv, prhat = run(sim, "pymc", likelihood="rows", sampler="pymc", cores=2)
            plain_rate = pwall / n
            vs = f"  -> hierfit ESS/s ratio {hier_rate / (pess / pwall):.1f}x, wall ratio {pwall / hier_time[n]:.1f}x" if hier_rate else ""
            print(line("plain pymc", n, pwall, pess, pdiv, prhat, vs), flush=True)
        if "stan" in engines:
            sres, swall, sess, sdiv, srhat = run(sim, "stan")
            sinfo = sres.engine_fit.info
            print(
                line("hierfit stan", n, swall, sess, sdiv, srhat,
                     f"  [compile/build {sinfo['compile_seconds']:.1f} s ({'compiled' if sinfo['compiled'] else 'cached'}), sampling {sinfo['sampling_seconds']:.1f} s]"),
                flush=True,
            )
    if len(hier_time) > 1:
        lo, hi = min(hier_time), max(hier_time)
        print(f"hierfit pymc wall time at N={hi:,} / at N={lo:,}: {hier_time[hi] / hier_time[lo]:.2f} (target <= 2)", flush=True)


def coverage(k: int, seed: int, rows: int) -> None:
    """Share of 90% intervals of group-effect deviations covering the truth over k data sets."""
    hits, total, per_level = 0, 0, {}
    t0 = time.perf_counter()
    for i in range(k):
        sim = hierfit.simulate(rows_per_submarket=rows, seed=seed + 1000 + i)
        res, *_ = run(sim, "pymc", seed=i, **COVERAGE_OPTIONS)
        est = res.group_effects("deviation", level=0.9).set_index(["level", "group", "term"])
        truth = sim.truth.group_effects("deviation").set_index(["level", "group", "term"])["estimate"]
        est = est[est.index.get_level_values("level") != "national"]
        inside = (est["lower"] <= truth.loc[est.index]) & (truth.loc[est.index] <= est["upper"])
        hits += int(inside.sum())
        total += len(inside)
        for (level, _, term), ok in inside.items():
            h, t = per_level.get((level, term), (0, 0))
            per_level[(level, term)] = (h + int(ok), t + 1)
        print(f"  simulation {i + 1}/{k}: {int(inside.sum())}/{len(inside)} covered; running {hits / total:.3f}", flush=True)
    print(f"coverage of 90% intervals for group effects over {k} simulations ({rows * 50} rows each): {hits / total:.3f} ({hits}/{total}), {time.perf_counter() - t0:.0f} s", flush=True)
    for (level, term), (h, t) in sorted(per_level.items()):
        print(f"  {level}[{term}]: {h / t:.3f} ({h}/{t})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 50_000, 500_000])
    parser.add_argument("--plain-limit", type=float, default=600.0, help="skip the plain model above this estimated time (s)")
    parser.add_argument("--engines", nargs="+", default=["pymc", "plain", "stan"], choices=["pymc", "plain", "stan"])
    parser.add_argument("--coverage", type=int, default=0, help="number of simulations for the coverage study")
    parser.add_argument("--coverage-rows", type=int, default=40, help="rows per submarket in the coverage study")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    if args.sizes and args.sizes != [0]:
        speed(sorted(args.sizes), args.plain_limit, args.engines, args.seed)
    if args.coverage:
        coverage(args.coverage, args.seed, args.coverage_rows)


if __name__ == "__main__":
    main()
