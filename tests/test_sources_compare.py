"""compare() and ``hierfit compare`` on streaming sources: Parquet files, Arrow tables, Dask DataFrames.

A streamed comparison must make the in-memory folds (groups dealt from the same seed) and
give the same fold and pooled scores. RMSE, MAE and the fold sizes are sums over rows and
match to 1e-9 whatever the batching. Coverage, width and MLPD come from seeded Monte Carlo
draws (the engine's prediction intervals, the predictive density of unseen groups) laid out
over the rows predicted in one call, so they match to 1e-9 when the held-out rows are scored
in one batch, as in memory, and to Monte Carlo precision when batches split them.
Real Parquet files in a temporary folder; a real ``LocalCluster`` of two worker processes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

import hierfit
from hierfit.cli import _PassProgress, main
from hierfit.design.sources import observe_folds
from hierfit.evaluate import Comparison, compare
from hierfit.evaluate.streamed import streaming_engines
from hierfit.exceptions import SpecError
from hierfit.model import get_family

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
CV = "submarket:3"
RTOL = 1e-9
#: draws-based scores of the same rows in one call: the fits agree to ~1e-10 (tests/test_sources.py)
#: and interval quantiles and log densities carry that a little further
RTOL_DRAWS = 1e-8
#: the engine whose streamed fit equals its in-memory fit (tests/test_sources.py): its streamed
#: comparison must equal the in-memory one. (lightgbm and boosted-mixed stream too, on a Dask
#: cluster of their own, with other numbers than in memory and tens of seconds per fit.)
ENGINES = ["mixed"]
#: quick fits, the same options in memory and streamed (fewer joint draws for the intervals)
OPTIONS = {"mixed": {"n_draws": 200}}
EXACT = ["n_train", "n_test", "rmse", "mae"]
#: Monte Carlo precision of the draws-based scores (200 joint draws, 500 held-out rows per fold;
#: widths are about 3.6)
MC_ABS = {"mlpd": 0.02, "coverage": 0.04, "width": 0.15}

SIM = hierfit.simulate(n_markets=6, n_submarkets=5, rows_per_submarket=50, seed=7)
DATA = SIM.data.iloc[np.random.default_rng(1).permutation(len(SIM.data))].reset_index(drop=True)


def _compare(data: object, **kw: object) -> Comparison:
    options = {e: OPTIONS.get(e, {}) for e in ENGINES}
    with warnings.catch_warnings():
        warnings.simplefilter("error", hierfit.HierfitWarning)  # an engine failing in compare() fails the test
        return compare(FORMULA, data, engines=ENGINES, cv=CV, options=options, progress=False, **kw)


@pytest.fixture(scope="module")
def in_memory() -> Comparison:
    return _compare(DATA)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    """The rows in three Parquet files of unequal sizes; the glob that reads them."""
    folder = tmp_path_factory.mktemp("lake")
    for i, rows in enumerate(np.split(np.arange(len(DATA)), [400, 1000])):
        pq.write_table(pa.Table.from_pandas(DATA.iloc[rows], preserve_index=False), folder / f"part-{i}.parquet")
    return str(folder / "*.parquet")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


def _rel(a: object, b: object) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def assert_same_scores(streamed: Comparison, memory: Comparison, *, batched: bool) -> None:
    """Fold by fold and pooled: the sums to 1e-9; the draws-based scores to 1e-9 unless ``batched``."""
    assert not streamed.failures and streamed.engines == memory.engines
    got, want = streamed.folds, memory.folds
    assert list(got.engine) == list(want.engine) and list(got.fold) == list(want.fold)
    for col in EXACT:
        assert _rel(got[col], want[col]) < RTOL, col
    for col in [] if batched else list(MC_ABS):
        assert _rel(got[col], want[col]) < RTOL_DRAWS, col
    for col, tol in MC_ABS.items():
        assert np.max(np.abs(got[col] - want[col])) < tol, col
    assert list(got.mlpd_method) == list(want.mlpd_method)
    s, m = streamed.summary(), memory.summary()
    assert list(s.columns) == list(m.columns)
    for col in ["rmse", "mae"]:
        assert _rel(s[col], m[col]) < RTOL, col
    for col in [] if batched else list(MC_ABS):
        assert _rel(s[col], m[col]) < RTOL_DRAWS, col
    for col, tol in MC_ABS.items():
        assert np.max(np.abs(s[col] - m[col])) < tol, col
    assert streamed.rows == len(DATA) and streamed.source is not None
    assert streamed.predictions.empty  # no per-row vector is collected


def test_parquet_glob_equals_in_memory(lake, in_memory) -> None:
    buffer = io.StringIO()
    # the command line's progress: one line per pass, named by the step of the comparison
    with observe_folds(_PassProgress("files", Console(file=buffer, force_terminal=True, width=150))):
        streamed = _compare(lake, batch_size=97)
    text = buffer.getvalue()
    for step in ("all rows: design pass", "mixed fold 1/3: design pass", "mixed fold 3/3: held-out scoring pass"):
        assert step in text, step
    assert streamed.source.kind == "parquet" and streamed.source.n_pieces == 3
    assert_same_scores(streamed, in_memory, batched=True)
    # the same held-out groups: every fold trains on the rows in memory's fold trains on
    assert (streamed.folds.n_train + streamed.folds.n_test == len(DATA)).all()


def test_arrow_table_in_one_batch_equals_in_memory_in_every_score(in_memory) -> None:
    # the held-out rows of each fold are predicted in one call, in the in-memory order:
    # then even the Monte Carlo scores are the in-memory ones
    streamed = _compare(pa.Table.from_pandas(DATA, preserve_index=False))
    assert_same_scores(streamed, in_memory, batched=False)


def test_dask_frame_on_the_active_client_equals_in_memory(client, in_memory) -> None:
    ddf = dd.from_pandas(DATA, npartitions=2)
    with client.as_current():
        streamed = _compare(ddf)
    assert streamed.source.kind == "dask"
    assert_same_scores(streamed, in_memory, batched=True)
    # every pass ran on the cluster's workers, one task per partition
    assert "summarise_piece" in client.cluster.scheduler.task_prefixes


def test_engines_that_cannot_stream_are_refused_before_any_pass(lake) -> None:
    assert set(ENGINES) <= set(streaming_engines(get_family("gaussian")))
    with pytest.raises(SpecError, match=r"'ols' cannot stream a gaussian model \(engines that can: .*mixed.*\)\. Drop it"):
        compare(FORMULA, lake, engines=["mixed", "ols"], cv=CV, progress=False)
    with pytest.raises(SpecError, match=r"by their position among all rows.*cv='submarket:5'"):
        compare(FORMULA, lake, engines=["mixed"], cv="kfold:3", progress=False)
    with pytest.raises(SpecError, match="'batch_size' applies to streaming sources"):
        compare(FORMULA, DATA, engines=["mixed"], cv=CV, progress=False, batch_size=10)


def test_cli_compare_on_a_parquet_glob_prints_and_saves_the_same_table(tmp_path, lake, in_memory) -> None:
    args = ["compare", lake, "-f", FORMULA, "-e", ",".join(ENGINES), "--cv", "submarket", "-k", "3", "--batch-size", "97",
            "--out", str(tmp_path / "cmp"), "--no-report"]
    for engine, opts in OPTIONS.items():
        args += [f"-o{engine}.{k}={v}" for k, v in opts.items() if engine in ENGINES]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    saved = Comparison.load(tmp_path / "cmp")
    assert_same_scores(saved, in_memory, batched=True)
    printed = res.output.splitlines()
    header = printed[0].split()
    assert header[:4] == ["engine", "pooling", "uncertainty", "n_folds"] and "rmse" in header
    rmse = in_memory.summary().set_index("engine")["rmse"]
    for line in printed[1:1 + len(ENGINES)]:
        cells = line.split()
        assert cells[header.index("rmse")] == f"{rmse[cells[0]]:.4g}"
