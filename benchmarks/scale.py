"""Bigger than memory: the gaussian mixed fit streamed from Parquet at 10M, 50M and 100M rows.

    y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)      1,000 markets x 20 submarkets

The rows come from the reference data-generating process (``hierfit.simulation``'s
``reference_levels``: the same level SDs, slope and correlation as ``hierfit.simulate``),
drawn in chunks that go straight to Parquet files (one file of 5M rows per chunk), so the
generation never holds more than one chunk. The 10M and 50M runs read the first 2 and 10
files of the same 100M. For each size, every path runs in a fresh subprocess (so its peak
RSS, ``getrusage(RUSAGE_SELF).ru_maxrss``, is its own):

* ``stream``: ``hierfit.fit(formula, "data/part-*.parquet", engine="mixed")`` in one process:
  one pass over the files (the design pass gathers every cell's moments, from which the
  mixed engine derives its statistics: no statistics pass since issue 18);
* ``cluster``: the same with ``workers=2`` (a 2-process ``LocalCluster``; RSS is the client's);
* ``memory``: ``pandas.read_parquet`` + the in-memory fit, skipped where its peak RSS,
  projected linearly from the smallest size, would pass ``--memory-limit-gb`` (12);
* ``scan``: the physical floor, a ``pyarrow.dataset`` scan of the same five columns alone.

Printed per path: wall seconds (after the libraries are imported and, for the in-process paths,
a warm-up fit of 50,000 rows has loaded the compiled kernels: neither is reading; the warm-up's
seconds are printed last),
rows/s, peak RSS, how many scans' time the path takes, the seconds spent in passes over the
rows (timed by a fold observer; the rest of a streamed fit is the engine's work on the merged
summaries, whatever the rows) and the *read rate*, those passes' time over the scan's, and the
largest relative difference of its estimates (fixed effects, variance components, residual SD)
from the streamed fit's.

After each size's table, the read rate of ``--repeat`` (3) stream/scan pairs run back to back,
and their median (this host's speed drifts between runs).

Run: ``python benchmarks/scale.py`` (``--sizes 10`` for a quick look: sizes in millions of
rows; ``--data DIR`` keeps the files in DIR and reuses them; without it they go to a
temporary folder that is deleted at the end).
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

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
N_MARKETS, N_SUBMARKETS = 1000, 20
ROWS_PER_FILE = 5_000_000
COLUMNS = ["y", "x1", "x2", "market", "submarket"]
PATHS = ("stream", "cluster", "memory", "scan")


def generate(folder: Path, n_rows: int, seed: int = 0) -> None:
    """Write ``n_rows`` rows of the reference model as ``part-NN.parquet`` files of 5M rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hierfit.simulation import reference_levels

    rng = np.random.default_rng(seed)
    market, sub = reference_levels(N_MARKETS, N_SUBMARKETS)
    dev_m = rng.multivariate_normal(np.zeros(2), market.covariance(), size=N_MARKETS)
    dev_s = rng.normal(0.0, np.sqrt(sub.covariance()[0, 0]), size=N_MARKETS * N_SUBMARKETS)
    # dictionary-encoded labels: how a real lake stores a low-cardinality text column
    m_names = pa.array([f"Market_{i + 1:04d}" for i in range(N_MARKETS)])
    s_names = pa.array([f"Sub_{j + 1}" for j in range(N_SUBMARKETS)])
    folder.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, n_rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, n_rows - start)
        chunk = np.random.default_rng([seed, k])
        leaf = chunk.integers(0, N_MARKETS * N_SUBMARKETS, n)
        m, s = leaf // N_SUBMARKETS, leaf % N_SUBMARKETS
        x1, x2 = chunk.standard_normal(n), chunk.standard_normal(n)
        y = 1.0 + 0.5 * x1 + 0.6 * x2 + dev_m[m, 0] + dev_m[m, 1] * x1 + dev_s[leaf] + chunk.standard_normal(n)
        table = pa.table({
            "y": y, "x1": x1, "x2": x2,
            "market": pa.DictionaryArray.from_arrays(pa.array(m.astype(np.int32)), m_names),
            "submarket": pa.DictionaryArray.from_arrays(pa.array(s.astype(np.int32)), s_names),
        })
        pq.write_table(table, folder / f"part-{k:02d}.parquet", row_group_size=1 << 20)


def files_for(folder: Path, millions: int) -> list[str]:
    n_files = millions * 1_000_000 // ROWS_PER_FILE
    files = sorted(str(p) for p in folder.glob("part-*.parquet"))[:n_files]
    if len(files) < n_files:
        raise SystemExit(f"{folder} holds {len(files)} files; {millions}M rows need {n_files}.")
    return files


def _estimates(result: object) -> list[float]:
    fixed = result.fixed_effects()["estimate"].to_numpy(dtype=float)  # type: ignore[attr-defined]
    var = result.variance_components()["variance"].to_numpy(dtype=float)  # type: ignore[attr-defined]
    return [*fixed.tolist(), *var.tolist()]


class _PassClock:
    """A fold observer (``hierfit.design.sources.observe_folds``) that adds up the time spent in
    the passes over the rows: the part of a fit that reads, against which the scan is set."""

    def __init__(self) -> None:
        self.seconds, self.passes = 0.0, 0

    def start(self, what: str, pieces: int) -> None:
        self._t0 = time.perf_counter()
        self.passes += 1

    def advance(self, *, batches: int = 0, pieces: int = 0) -> None:
        pass

    def finish(self) -> None:
        self.seconds += time.perf_counter() - self._t0


def child(path: str, files: list[str], folder: str) -> dict[str, object]:
    """One path, timed, in this (fresh) process; the libraries it uses are imported first (an
    import is not reading: pandas, scipy and numba cost seconds on a cold machine)."""
    import pyarrow.dataset  # noqa: F401

    import hierfit.design.streamed  # noqa: F401
    import hierfit.engines.mixed._stream  # noqa: F401
    from hierfit.design.sources import observe_folds

    whole = len(files) == len(list(Path(folder).glob("part-*.parquet")))
    source = str(Path(folder) / "part-*.parquet") if whole else _subset_folder(files)
    warm_up = _warm_up(path, files[0])
    clock = _PassClock()
    try:
        t0 = time.perf_counter()
        with observe_folds(clock):
            estimates = _run_path(path, files, source)
        wall = time.perf_counter() - t0
    finally:
        if not whole:
            shutil.rmtree(source)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"wall": wall, "rss": rss, "estimates": estimates, "passes": clock.seconds, "n_passes": clock.passes,
            "warm_up": warm_up}


def _warm_up(path: str, first_file: str) -> float:
    """Seconds of a fit of the first 50,000 rows, before the clock (the in-process paths): it
    loads the compiled kernels from numba's cache and the engine's lazily imported modules, a
    one-off cost of a process (reported apart) that is not reading."""
    if path not in ("stream", "memory"):
        return 0.0
    import warnings

    import pyarrow.parquet as pq

    import hierfit

    t0 = time.perf_counter()
    rows = pq.ParquetFile(first_file).read_row_group(0, columns=COLUMNS).slice(0, 50_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        hierfit.fit(FORMULA, rows if path == "stream" else rows.to_pandas(), engine="mixed")
    return time.perf_counter() - t0


def _run_path(path: str, files: list[str], source: str) -> list[float]:
    """Run one path; its estimates (none for the scan)."""
    import warnings

    import hierfit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierfit.HierfitWarning)
        if path == "scan":
            import pyarrow.dataset as ds

            for _ in ds.dataset(files, format="parquet").to_batches(columns=COLUMNS):
                pass
            return []
        if path == "memory":
            import pandas as pd

            frame = pd.read_parquet(files, columns=COLUMNS)
            return _estimates(hierfit.fit(FORMULA, frame, engine="mixed"))
        workers = 2 if path == "cluster" else None
        return _estimates(hierfit.fit(FORMULA, source, engine="mixed", workers=workers))


def _subset_folder(files: list[str]) -> str:
    """A folder of links to some of the files (a source is a file, a folder or a glob)."""
    folder = Path(tempfile.mkdtemp(prefix="hierfit-scale-"))
    for f in files:
        os.symlink(os.path.abspath(f), folder / os.path.basename(f))
    return str(folder)


def run_child(path: str, files: list[str], folder: Path) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", path, "--data", str(folder), "--files", *files]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rel_diff(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-300)))


def report(millions: int, results: dict[str, dict[str, object]], skipped: str | None, paths: list[str]) -> None:
    n = millions * 1_000_000
    scan = float(results["scan"]["wall"])  # type: ignore[arg-type]
    ref = results["stream"]["estimates"]
    print(f"\n{millions}M rows ({n:,})")
    print(f"  {'path':<8} {'wall s':>8} {'rows/s':>12} {'peak RSS GB':>11} {'x scan':>7} {'passes s':>9} "
          f"{'read x scan':>11} {'max rel diff':>12} {'warm-up s':>9}")
    for path in [p for p in PATHS if p in paths]:
        if path not in results:
            print(f"  {path:<8} skipped: {skipped}")
            continue
        r = results[path]
        wall = float(r["wall"])  # type: ignore[arg-type]
        est = r["estimates"]
        diff = f"{rel_diff(est, ref):.1e}" if est else "-"  # type: ignore[arg-type]
        passes = float(r.get("passes", 0.0))  # type: ignore[arg-type]
        read = f"{passes:>9.1f} {passes / scan:>11.2f}" if passes else f"{'-':>9} {'-':>11}"
        warm = float(r.get("warm_up", 0.0))  # type: ignore[arg-type]
        print(f"  {path:<8} {wall:>8.1f} {n / wall:>12,.0f} {float(r['rss']) / 1e9:>11.2f} {wall / scan:>7.2f} {read} "  # type: ignore[arg-type]
              f"{diff:>12} {f'{warm:.1f}' if warm else '-':>9}")


def report_read_rate(first: dict[str, dict[str, object]], more: list[tuple[dict[str, object], dict[str, object]]]) -> None:
    """The read rate of the table's run and of more stream/scan pairs, each pair run back to
    back, and their median: on a host whose speed drifts by a quarter between runs, one pair
    alone says little."""
    pairs = [(first["stream"], first["scan"]), *more]
    rates = [float(st["passes"]) / float(sc["wall"]) for st, sc in pairs]  # type: ignore[arg-type]
    print(f"  read x scan in {len(rates)} stream/scan pairs: {', '.join(f'{r:.2f}' for r in rates)}; "
          f"median {float(np.median(rates)):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10, 50, 100], help="millions of rows")
    ap.add_argument("--data", type=Path, default=None, help="folder of the Parquet files (kept, reused)")
    ap.add_argument("--memory-limit-gb", type=float, default=12.0)
    ap.add_argument("--paths", nargs="*", default=list(PATHS))
    ap.add_argument("--repeat", type=int, default=3, help="stream/scan pairs per size for the read rate's median")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.files, str(args.data))))
        return
    folder = args.data or Path(tempfile.mkdtemp(prefix="hierfit-scale-data-"))
    need = max(args.sizes)
    try:
        if len(list(folder.glob("part-*.parquet"))) * ROWS_PER_FILE < need * 1_000_000:
            t0 = time.perf_counter()
            generate(folder, need * 1_000_000)
            print(f"generated {need}M rows in {time.perf_counter() - t0:.0f} s ({folder})")
        print(f"formula: {FORMULA}; {N_MARKETS} markets x {N_SUBMARKETS} submarkets; {os.cpu_count()} CPUs")
        rss_per_row: float | None = None
        for millions in sorted(args.sizes):
            files = files_for(folder, millions)
            results: dict[str, dict[str, object]] = {}
            skipped = None
            for path in [p for p in PATHS if p in args.paths]:
                if path == "memory" and rss_per_row is not None and rss_per_row * millions * 1e6 > args.memory_limit_gb * 1e9:
                    skipped = (f"projected peak RSS {rss_per_row * millions * 1e6 / 1e9:.0f} GB > "
                               f"{args.memory_limit_gb:.0f} GB")
                    continue
                results[path] = run_child(path, files, folder)
                if path == "memory" and rss_per_row is None:
                    rss_per_row = float(results[path]["rss"]) / (millions * 1e6)  # type: ignore[arg-type]
            report(millions, results, skipped, args.paths)
            if args.repeat > 1 and {"stream", "scan"} <= set(results):
                report_read_rate(results, [(run_child("stream", files, folder), run_child("scan", files, folder))
                                           for _ in range(args.repeat - 1)])
    finally:
        if args.data is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
