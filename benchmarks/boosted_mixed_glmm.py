"""``boosted-mixed`` for a binary (or count) outcome against ``lightgbm`` and the ``mixed`` GLMM.

Data: the reference tree (``hierfit.simulate``) of 20 markets x 10 submarkets x 15 rows
(3,000 rows; 200 small submarkets: the regime where pooling matters), with a bernoulli
outcome whose logit is the national level, group deviations (market SD 1.0 with a varying
``x1`` slope, submarket SD 0.8) and linear slopes, plus -- for the *nonlinear* DGP -- every
nonlinear term of the simulator (``1.2 sin 2 x2``, a threshold ``[x1 > 0.5]``, ``0.6 x1 x2``)
times 1.5. 30% of the rows (seen groups) are held out; each engine is fitted on the rest with
its default options and scored on them by

* ``nll``   held-out negative log-likelihood per row (log loss for a binary outcome);
* ``trees`` the trees ``boosted-mixed`` kept (0: its gate fell back to the GLMM).

Printed: one row per seed and DGP, then the mean log loss per engine and the ratios
``boosted-mixed / lightgbm`` and ``boosted-mixed / mixed`` (below 1: boosted-mixed better) with
the number of seeds it won. On the linear DGP ``boosted-mixed`` should keep no trees and equal
``mixed`` exactly.

Run: ``PYTHONPATH=src python benchmarks/boosted_mixed_glmm.py [--seeds 0 1 2 3 4] [--family bernoulli] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import hierfit

ENGINES = ("mixed", "lightgbm", "boosted-mixed")


def make_data(dgp: str, family: str, seed: int) -> tuple[hierfit.Simulation, np.ndarray]:
    """The simulation and its held-out mask (30% of the rows, seen groups)."""
    sim = hierfit.simulate(n_markets=20, n_submarkets=10, rows_per_submarket=15, family=family, seed=seed,
                           nonlinear="all" if dgp == "nonlinear" else None, nonlinear_scale=1.5,
                           market_sd=1.0, submarket_sd=0.8, national=0.0 if family in ("bernoulli", "binomial") else 0.5)
    test = np.random.default_rng(seed + 100).random(len(sim.data)) < 0.3
    return sim, test


def holdout_nll(fit: hierfit.FitResult, data: pd.DataFrame) -> float:
    family = fit.spec.family
    mu = fit.predict(data)["prediction"].to_numpy()
    trials = data["n"].to_numpy(float) if family.has_trials else None
    theta = fit.statistics.get("nb_theta")
    return float(-np.mean(family.logpdf(data["y"].to_numpy(float), mu, trials, theta)))


def run(seeds: list[int], family: str, threads: int) -> pd.DataFrame:
    rows = []
    for dgp in ("nonlinear", "linear"):
        for seed in seeds:
            sim, test = make_data(dgp, family, seed)
            train_df, test_df = sim.data[~test], sim.data[test]
            row: dict[str, object] = {"dgp": dgp, "seed": seed}
            preds = {}
            for engine in ENGINES:
                options = {} if engine == "mixed" else {"num_threads": threads}
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = hierfit.fit(sim.formula, train_df, engine=engine, family=family, **options)
                row[f"{engine} s"] = time.perf_counter() - start
                row[f"{engine} nll"] = holdout_nll(fit, test_df)
                preds[engine] = fit.predict(test_df)["prediction"].to_numpy()
                if engine == "boosted-mixed":
                    row["trees"] = int(fit.statistics["n_trees"])
            row["equals mixed"] = bool(np.array_equal(preds["boosted-mixed"], preds["mixed"]))
            rows.append(row)
            print(f"  {dgp:9s} seed {seed}: " + "  ".join(f"{e} {row[f'{e} nll']:.4f}" for e in ENGINES)
                  + f"  trees {row['trees']}", flush=True)
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    out = []
    for dgp, g in table.groupby("dgp", sort=False):
        bm = g["boosted-mixed nll"].to_numpy()
        entry: dict[str, object] = {"dgp": dgp, "seeds": len(g)}
        for engine in ENGINES:
            entry[f"{engine} nll"] = g[f"{engine} nll"].mean()
        for other in ("lightgbm", "mixed"):
            ref = g[f"{other} nll"].to_numpy()
            entry[f"bm/{other}"] = bm.mean() / ref.mean()
            entry[f"wins vs {other}"] = f"{int((bm < ref).sum())}/{len(g)}"
        entry["trees (mean)"] = g["trees"].mean()
        entry["seeds with 0 trees"] = f"{int((g['trees'] == 0).sum())}/{len(g)}"
        entry["bm s (mean)"] = g["boosted-mixed s"].mean()
        out.append(entry)
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--family", default="bernoulli", choices=["bernoulli", "poisson", "negative_binomial"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"boosted-mixed vs lightgbm vs mixed: {args.family}, 20 markets x 10 submarkets x 15 rows, 30% held out")
    table = run(args.seeds, args.family, args.threads)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        print("\nper seed (held-out negative log-likelihood per row; seconds per fit)")
        print(table.to_string(index=False))
        print("\nsummary (bm = boosted-mixed; ratio < 1: boosted-mixed better)")
        print(summarise(table).to_string(index=False))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
