"""Speed of the ``neural`` engine on 500k rows: time per epoch, epochs and time to convergence.

Target (issue 6): a full fit of 500k rows (default options: ensemble, early stopping, the
identifying projection) in under 2 minutes on a 2-core CPU. The ``mixed`` engine (or ``ols``
where ``mixed`` is not registered) is timed on the same data for a ratio, and the holdout
RMSE of both is printed against the noise floor.

Run::

    PYTHONPATH=src python benchmarks/neural_speed.py [--rows 500000] [--members N] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

import hierfit
from hierfit.exceptions import HierfitWarning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--members", type=int, default=None, help="ensemble size (default: the engine's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--nonlinear", action="store_true", help="simulate the nonlinear DGP")
    args = parser.parse_args()
    # 50 markets × 20 submarkets: 1,000 leaf groups of ~500 rows
    per_sub = max(1, args.rows // 1000)
    sim = hierfit.simulate(n_markets=50, n_submarkets=20, rows_per_submarket=per_sub, seed=1,
                           nonlinear="all" if args.nonlinear else None)
    df = sim.data
    holdout = np.random.default_rng(0).random(len(df)) < 0.02
    train, test = df[~holdout], df[holdout]
    floor = float(np.sqrt(np.mean((sim.truth.mean[holdout] - test.y) ** 2)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"rows {len(train):,} (holdout {len(test):,}), cpu cores {os.cpu_count()}, load average {load:.1f}")

    options = {"progress": False, "device": args.device}
    if args.members:
        options["n_members"] = args.members
    reference = "mixed" if "mixed" in hierfit.ENGINES else "ols"
    results = {}
    cpu_seconds: dict[str, float] = {}
    for engine, opts in ((reference, {}), ("neural", options)):
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HierfitWarning)
            fit = hierfit.fit(sim.formula, train, engine=engine, **opts)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        rmse = float(np.sqrt(np.mean((fit.predict(test)["prediction"] - test.y) ** 2)))
        results[engine] = (seconds, rmse, fit)
        cpu_seconds[engine] = cpu
        # on a shared machine wall time overstates; CPU seconds / threads is the idle-machine wall time
        print(f"{engine:>7}: fit {seconds:7.1f} s wall, {cpu:7.1f} s CPU, holdout RMSE {rmse:.4f} "
              f"(noise floor {floor:.4f}, ratio {rmse / floor:.4f})")
    seconds, _, fit = results["neural"]
    cpu = cpu_seconds["neural"]
    st = fit.statistics
    print(
        f"neural: {int(st['n_members'])} members, batch {int(st['batch_size'])}, "
        f"{st['seconds_per_epoch']:.2f} s/epoch wall (all members), {int(st['epochs_run'])} epochs run, "
        f"best epoch (mean) {st['epochs']:.1f}, training {st['train_seconds']:.1f} s wall, "
        f"everything else (design, MLP gate, projection) {seconds - st['train_seconds']:.1f} s wall"
    )
    if "nonlinear_kept" in st:
        print(f"MLP {'kept' if st['nonlinear_kept'] else 'dropped'}: held-out gain {st['nonlinear_gain']:+.4f} "
              f"± {st['nonlinear_gain_se']:.4f} log-density per row")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end {load:.1f} (above the core count, wall times are inflated)")
    print(f"neural / {reference} fit time: {seconds / results[reference][0]:.1f}x wall")
    # the fit runs one thread by default, so its CPU seconds are its wall time on an idle machine
    print(f"target < 120 s: wall {seconds:.0f} s ({'met' if seconds < 120 else 'not met'}), "
          f"CPU {cpu:.0f} s = idle-machine wall time ({'met' if cpu < 120 else 'not met'})")

if __name__ == "__main__":
    main()
