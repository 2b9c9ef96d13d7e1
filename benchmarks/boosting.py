"""Boosting on hierarchical data: ``lightgbm``, ``boosted-mixed``, GPBoost, ``mixed``, ``neural``.

For the linear and the nonlinear (``nonlinear="all"``) reference DGP at each size, on a tree of
20 markets x 10 submarkets, one submarket per market is held out entirely (its rows are
*unseen* groups) and 10% of the other rows are a seen-group test set. Every engine is fitted on
the rest and scored on the same subsample (``--eval-rows``) of each test set:

* ``seen``         holdout RMSE against y on rows of groups seen in fitting;
* ``seen_truth``   RMSE against the true mean (no noise: differences are sharper);
* ``unseen``       holdout RMSE against y on rows of the held-out submarkets;
* ``unseen_ideal`` RMSE against the best possible prediction for an unseen submarket (the
                   true mean without that submarket's own deviation, which nobody can know).

``lightgbm`` runs with its default ``slope_features="auto"`` (here: one ``x1 * [market g]`` column
per market). Also measured: ``lightgbm[trees]`` (slopes left to trees splitting on market and x1
together, the other choice of ``slope_features``) and
``lightgbm[native]`` (LightGBM's own handling of an unknown category -- its 'other' branch --
instead of hierfit's parent average). GPBoost is used when installed (``pip install gpboost``;
benchmark only, not a hierfit dependency); ``mixed`` and ``neural`` when registered.

Run: ``PYTHONPATH=src python benchmarks/boosting.py [--sizes 50000 500000] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

import numpy as np
import pandas as pd

import hierfit
from hierfit.engines import ENGINES

N_MARKETS, N_SUBMARKETS = 20, 10


def make_data(size: int, dgp: str, seed: int) -> tuple[hierfit.Simulation, dict[str, np.ndarray], np.ndarray]:
    rows = max(1, size // (N_MARKETS * N_SUBMARKETS))
    sim = hierfit.simulate(n_markets=N_MARKETS, n_submarkets=N_SUBMARKETS, rows_per_submarket=rows,
                           nonlinear="all" if dgp == "nonlinear" else None, seed=seed, national_name="United_state")
    df = sim.data
    rng = np.random.default_rng(seed)
    key = (df["market"] + ":" + df["submarket"]).to_numpy()
    held = [f"{m}:Sub_{rng.integers(1, N_SUBMARKETS + 1):0{len(str(N_SUBMARKETS))}d}" for m in sorted(df["market"].unique())]
    unseen = np.isin(key, held)
    test = ~unseen & (rng.random(len(df)) < 0.1)
    truth = sim.truth.group_effects("deviation")
    sub = truth[truth.level == "submarket"].set_index("group")["estimate"]
    ideal = sim.truth.mean - sub.reindex(key).to_numpy()
    masks = {"train": ~unseen & ~test, "test": test, "unseen": unseen}
    return sim, masks, ideal


def evaluation_rows(masks: dict[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    out = {}
    for name in ("test", "unseen"):
        idx = np.flatnonzero(masks[name])
        out[name] = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return out


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def score(pred_seen, pred_unseen, sim, ideal, ev) -> dict[str, float]:
    y = sim.data["y"].to_numpy()
    return {
        "seen": rmse(pred_seen, y[ev["test"]]),
        "seen_truth": rmse(pred_seen, sim.truth.mean[ev["test"]]),
        "unseen": rmse(pred_unseen, y[ev["unseen"]]),
        "unseen_ideal": rmse(pred_unseen, ideal[ev["unseen"]]),
    }


def run_engine(engine: str, options: dict, sim, masks, ideal, ev) -> tuple[dict, object]:
    df = sim.data
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = hierfit.fit(sim.formula, df[masks["train"]], engine=engine, national="United_state", **options)
        t1 = time.perf_counter()
        seen = fit.predict(df.iloc[ev["test"]])["prediction"].to_numpy()
        unseen = fit.predict(df.iloc[ev["unseen"]])["prediction"].to_numpy()
    t2 = time.perf_counter()
    out = {"fit_s": t1 - t0, "predict_s": t2 - t1, **score(seen, unseen, sim, ideal, ev)}
    return out, fit


def native_unseen(fit, sim, ideal, ev) -> dict:
    """LightGBM's own prediction for unknown categories (the group column set to missing)."""
    ef = fit.engine_fit
    df = sim.data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        design = fit.encoding.apply(df.iloc[ev["unseen"]])
    pred = ef.predict_raw(ef.features.matrix(design))
    y = df["y"].to_numpy()
    return {"fit_s": np.nan, "predict_s": np.nan, "seen": np.nan, "seen_truth": np.nan,
            "unseen": rmse(pred, y[ev["unseen"]]), "unseen_ideal": rmse(pred, ideal[ev["unseen"]])}


def run_gpboost(sim, masks, ideal, ev, threads: int, seed: int) -> dict:
    """GPBoost: trees for f(x) + grouped random effects (market intercept and x1 slope, submarket)."""
    import gpboost as gpb

    df = sim.data
    market = pd.factorize(df["market"])[0]
    sub = pd.factorize(df["market"] + ":" + df["submarket"])[0]
    groups = np.column_stack([market, sub])
    X = df[["x1", "x2"]].to_numpy()
    y = df["y"].to_numpy()
    train = np.flatnonzero(masks["train"])
    rng = np.random.default_rng(seed)
    valid = rng.random(len(train)) < 0.1
    tr, va = train[~valid], train[valid]
    params = {"learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50, "verbose": -1, "num_threads": threads, "seed": seed}
    t0 = time.perf_counter()
    gp_model = gpb.GPModel(group_data=groups[tr], group_rand_coef_data=X[tr, :1], ind_effect_group_rand_coef=[1], likelihood="gaussian",
                           num_parallel_threads=threads)
    gp_model.set_prediction_data(group_data_pred=groups[va], group_rand_coef_data_pred=X[va, :1])
    dtrain = gpb.Dataset(X[tr], y[tr])
    dvalid = gpb.Dataset(X[va], y[va], reference=dtrain)
    booster = gpb.train(params=params, train_set=dtrain, gp_model=gp_model, num_boost_round=2000, valid_sets=[dvalid],
                        early_stopping_rounds=20, use_gp_model_for_validation=True, verbose_eval=False)
    t1 = time.perf_counter()

    def predict(rows):
        p = booster.predict(data=X[rows], group_data_pred=groups[rows], group_rand_coef_data_pred=X[rows, :1], predict_var=False, pred_latent=False)
        return p["response_mean"]

    # unseen submarkets keep their market code and get a submarket code GPBoost never saw
    unseen_groups = groups.copy()
    unseen_groups[masks["unseen"], 1] += groups[:, 1].max() + 1
    seen = predict(ev["test"])
    p = booster.predict(data=X[ev["unseen"]], group_data_pred=unseen_groups[ev["unseen"]],
                        group_rand_coef_data_pred=X[ev["unseen"], :1], predict_var=False, pred_latent=False)["response_mean"]
    t2 = time.perf_counter()
    return {"fit_s": t1 - t0, "predict_s": t2 - t1, **score(seen, p, sim, ideal, ev)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000])
    parser.add_argument("--dgps", nargs="+", default=["linear", "nonlinear"])
    # one thread: on a shared 2-core machine, OpenMP with 2 threads spin-waits and runs 3-10x slower
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-rows", type=int, default=10_000)
    parser.add_argument("--variants-up-to", type=int, default=60_000, help="largest size with the lightgbm[trees] variant")
    parser.add_argument("--gpboost-up-to", type=int, default=60_000, help="largest size for GPBoost (slow at 500k)")
    parser.add_argument("--skip", nargs="*", default=[], help="engines to skip, e.g. neural gpboost")
    parser.add_argument("--only", nargs="*", default=None, help="run only these, e.g. neural gpboost")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    have_gpboost = importlib.util.find_spec("gpboost") is not None
    if not have_gpboost:
        print("GPBoost not installed (pip install gpboost): skipped.")
    for name in ("mixed", "neural"):
        if name not in ENGINES:
            print(f"engine {name!r} is not registered in this checkout: skipped.")
    all_rows = []
    for size in args.sizes:
        for dgp in args.dgps:
            sim, masks, ideal = make_data(size, dgp, args.seed)
            ev = evaluation_rows(masks, args.eval_rows, args.seed)
            print(f"\n== {dgp} DGP, {len(sim.data)} rows ({masks['train'].sum()} fitting, {masks['unseen'].sum()} in 20 unseen "
                  f"submarkets); scored on {len(ev['test'])} seen + {len(ev['unseen'])} unseen rows ==", flush=True)
            runs: list[tuple[str, str, dict]] = [("lightgbm", "lightgbm", {"num_threads": args.threads})]
            if size <= args.variants_up_to:
                runs.append(("lightgbm[trees]", "lightgbm", {"num_threads": args.threads, "slope_features": "trees"}))
            runs.append(("boosted-mixed", "boosted-mixed", {"num_threads": args.threads}))
            for name in ("mixed", "neural"):
                if name in ENGINES and name not in args.skip:
                    runs.append((name, name, {}))
            if args.only is not None:
                runs = [r for r in runs if r[0] in args.only]
            results = {}
            for label, engine, options in runs:
                out, fit = run_engine(engine, options, sim, masks, ideal, ev)
                results[label] = out
                print(f"  {label:18s} fit {out['fit_s']:7.1f}s  seen {out['seen']:.4f}  unseen {out['unseen']:.4f}", flush=True)
                if label == "lightgbm":
                    results["lightgbm[native]"] = native_unseen(fit, sim, ideal, ev)
            wanted = args.only is None or "gpboost" in args.only
            if have_gpboost and wanted and "gpboost" not in args.skip and size > args.gpboost_up_to:
                print(f"  gpboost skipped above {args.gpboost_up_to} rows (see --gpboost-up-to)")
            elif have_gpboost and wanted and "gpboost" not in args.skip:
                results["gpboost"] = run_gpboost(sim, masks, ideal, ev, args.threads, args.seed)
                print(f"  {'gpboost':18s} fit {results['gpboost']['fit_s']:7.1f}s", flush=True)
            table = pd.DataFrame(results).T
            if "lightgbm" in table.index:
                for col in ("seen", "unseen"):
                    table[f"{col}/lgbm"] = table[col] / table.loc["lightgbm", col]
            print(table.to_string(float_format=lambda v: f"{v:.4f}"), flush=True)
            all_rows.append(table.assign(size=len(sim.data), dgp=dgp))
    summary = pd.concat(all_rows)
    if not {"boosted-mixed", "lightgbm"} <= set(summary.index):
        return
    print("\nboosted-mixed vs lightgbm (ratios < 1: boosted-mixed better):")
    for (size, dgp), t in summary.groupby(["size", "dgp"]):
        bm, lg = t.loc["boosted-mixed"], t.loc["lightgbm"]
        print(f"  {dgp:9s} {size:7d} rows: seen {bm['seen'] / lg['seen']:.3f}, seen_truth {bm['seen_truth'] / lg['seen_truth']:.3f}, "
              f"unseen {bm['unseen'] / lg['unseen']:.3f}, unseen_ideal {bm['unseen_ideal'] / lg['unseen_ideal']:.3f}, "
              f"fit time {bm['fit_s'] / lg['fit_s']:.2f}x")


if __name__ == "__main__":
    main()
