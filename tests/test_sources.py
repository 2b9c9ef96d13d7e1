"""Streaming sources: Arrow tables, Parquet files and Dask DataFrames fitted by the mixed engine.

A streamed fit must equal the in-memory fit of the same rows (fixed effects, variance
parameters, conditional modes, log-likelihood) to 1e-10 relative, whatever the batching,
partitioning and row order; bad sources must be refused naming the file or partition.
Real Parquet files in ``tmp_path``; a real ``LocalCluster`` of two worker processes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.design.sources import CompensatedSum, TrainingRowsUnavailableError, open_source
from hierfit.design.streamed import build_streamed_design
from hierfit.exceptions import DataError, HierarchyError, SpecError, UnseenGroupsWarning

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

FORMULA = "y ~ x1 + x2 + channel + (1 + x1 | market) + (1 | market:submarket)"
RTOL = 1e-10


def _data(seed: int = 11) -> pd.DataFrame:
    sim = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=25, seed=seed)
    df = sim.data.copy()
    rng = np.random.default_rng(seed)
    df["channel"] = rng.choice(["online", "retail", "wholesale"], len(df))
    df["y"] = df["y"] + 0.3 * (df["channel"] == "retail") + 1e3  # a large mean: the standardisation matters
    return df


DATA = _data()


@pytest.fixture(scope="module")
def reference() -> hierfit.FitResult:
    return hierfit.fit(FORMULA, DATA, engine="mixed", n_draws=50)


def _shuffled(seed: int) -> pd.DataFrame:
    return DATA.iloc[np.random.default_rng(seed).permutation(len(DATA))].reset_index(drop=True)


def _rel(a: object, b: object) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def assert_same_fit(streamed: hierfit.FitResult, reference: hierfit.FitResult) -> None:
    s, r = streamed.native(), reference.native()
    assert s.n_obs == r.n_obs
    for name in ("beta", "theta", "sigma", "loglik", "objective"):
        assert _rel(getattr(s, name), getattr(r, name)) < RTOL, name
    for b_s, b_r in zip(s.ranef, r.ranef):
        assert _rel(b_s, b_r) < RTOL
    pd.testing.assert_frame_equal(streamed.group_effects(kind="deviation")[["level", "group", "n_rows"]],
                                  reference.group_effects(kind="deviation")[["level", "group", "n_rows"]])


def _write_parts(frame: pd.DataFrame, folder, n_files: int) -> None:
    folder.mkdir(exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), n_files)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[rows], preserve_index=False), folder / f"part-{i:02d}.parquet")


# -- workers=N: hierfit starts and closes its own LocalCluster (first: no client is active yet) -----------
def test_workers_start_and_close_a_local_cluster(tmp_path, reference) -> None:
    _write_parts(_shuffled(1), tmp_path / "lake", 3)
    # one worker process: the test is of the cluster's lifecycle (the module's two-worker cluster
    # below exercises the distribution itself), and a worker's cold import costs seconds
    fit = hierfit.fit(FORMULA, str(tmp_path / "lake" / "*.parquet"), engine="mixed", workers=1, n_draws=50)
    assert_same_fit(fit, reference)
    with pytest.raises(ValueError):  # the cluster and its client are gone
        distributed.get_client()


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


# -- equality with the in-memory fit ---------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [16, 64, 100_000])
def test_parquet_folder_equals_in_memory(tmp_path, reference, batch_size) -> None:
    _write_parts(_shuffled(batch_size), tmp_path / "lake", 4)
    fit = hierfit.fit(FORMULA, tmp_path / "lake", engine="mixed", batch_size=batch_size, n_draws=50)
    assert_same_fit(fit, reference)
    assert fit.source is not None and fit.source.kind == "parquet" and fit.source.n_pieces == 4


def test_a_list_of_parquet_files_and_globs_equals_in_memory(tmp_path, reference) -> None:
    _write_parts(_shuffled(5), tmp_path / "lake", 4)
    files = sorted(tmp_path.joinpath("lake").glob("part-*.parquet"))
    # a file listed twice (directly and through a glob) is read once; the order given does not matter
    listed = [files[3], str(files[0]), str(tmp_path / "lake" / "part-0[12].parquet"), files[0]]
    fit = hierfit.fit(FORMULA, listed, engine="mixed", batch_size=40, n_draws=50)
    assert_same_fit(fit, reference)
    assert fit.source is not None and fit.source.n_pieces == 4
    with pytest.raises(DataError, match="is a folder; a list holds files and globs"):
        hierfit.fit(FORMULA, [files[0], tmp_path / "lake"], engine="mixed")
    with pytest.raises(DataError, match="No files match"):
        hierfit.fit(FORMULA, [files[0], str(tmp_path / "nothing-*.parquet")], engine="mixed")
    with pytest.raises(DataError, match=r"Wrap it with pd.DataFrame\(...\), or pass rows to stream"):
        hierfit.fit(FORMULA, [{"y": 1.0}], engine="mixed")


@pytest.mark.parametrize("seed", [2, 3])
def test_arrow_table_in_shuffled_batches_equals_in_memory(reference, seed) -> None:
    table = pa.Table.from_pandas(_shuffled(seed), preserve_index=False)
    assert_same_fit(hierfit.fit(FORMULA, table, engine="mixed", batch_size=53 + seed, n_draws=50), reference)


@pytest.mark.parametrize("npartitions", [2, 7])
def test_dask_frame_on_the_active_client_equals_in_memory(client, reference, npartitions) -> None:
    ddf = dd.from_pandas(_shuffled(npartitions), npartitions=npartitions)
    with client.as_current():
        fit = hierfit.fit(FORMULA, ddf, engine="mixed", n_draws=50)
    assert_same_fit(fit, reference)
    assert fit.source is not None and fit.source.kind == "dask"


def test_weights_offset_and_no_intercept_equal_in_memory() -> None:
    df = DATA.copy()
    rng = np.random.default_rng(5)
    df["w"] = rng.uniform(0.5, 2.0, len(df))
    df.loc[:9, "w"] = 0.0  # rows that weigh nothing are left out, as in memory
    df["exposure"] = rng.normal(size=len(df))
    table = pa.Table.from_pandas(df.iloc[rng.permutation(len(df))], preserve_index=False)
    for formula, kw in [("y ~ x1 + offset(exposure) + (1 + x1 || market/submarket)", {"weights": "w"}),
                        ("y ~ 0 + channel + x1 + (1 | market/submarket)", {})]:
        ref = hierfit.fit(formula, df, engine="mixed", n_draws=50, **kw)
        assert_same_fit(hierfit.fit(formula, table, engine="mixed", batch_size=41, n_draws=50, **kw), ref)


def test_a_grouping_column_that_is_also_a_categorical_predictor() -> None:
    # market is read once for the tree and once as C(market)'s levels: the pass reads the column once
    formula = "y ~ C(market) + x1 + (1 | market:submarket)"
    ref = hierfit.fit(formula, DATA, engine="mixed", n_draws=50)
    assert_same_fit(hierfit.fit(formula, pa.Table.from_pandas(DATA), engine="mixed", batch_size=53, n_draws=50), ref)


def test_compensated_merge_does_not_depend_on_order() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(scale=10.0 ** rng.integers(-8, 8), size=50) for _ in range(200)]
    sums = [CompensatedSum.of([p]) for p in parts]
    forward = CompensatedSum.merge(sums).values()[0]
    backward = CompensatedSum.merge(sums[::-1]).values()[0]
    tree = CompensatedSum.merge([CompensatedSum.merge(sums[i:i + 8]) for i in range(0, len(sums), 8)]).values()[0]
    exact = np.array([float(sum(map(np.longdouble, col))) for col in np.stack(parts).T])
    assert np.array_equal(forward, backward) and np.array_equal(forward, tree)
    assert np.max(np.abs(forward - exact) / np.abs(exact)) < 1e-15


# -- the result is a normal FitResult -----------------------------------------------------------------------
def test_predict_decompose_save_load(tmp_path, reference) -> None:
    fit = hierfit.fit(FORMULA, pa.Table.from_pandas(_shuffled(4)), engine="mixed", batch_size=97, n_draws=50)
    new = DATA.head(20).copy()
    new.loc[new.index[:3], "submarket"] = "Sub_new"  # unseen: falls back to the market
    with pytest.warns(UnseenGroupsWarning):
        got = fit.predict(new, interval="confidence")
    with pytest.warns(UnseenGroupsWarning):
        want = reference.predict(new, interval="confidence")
    assert _rel(got["prediction"], want["prediction"]) < RTOL
    assert list(got["level_used"]) == list(want["level_used"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnseenGroupsWarning)
        parts = fit.decompose(new)
    assert np.allclose(parts.sum(axis=1), got["prediction"], rtol=1e-12)
    assert "streamed from an Arrow table" in fit.summary()
    assert _rel(fit.variance_partition()["estimate"], reference.variance_partition()["estimate"]) < 1e-9
    back = hierfit.load(fit.save(tmp_path / "fit"))
    assert back.source == fit.source
    assert _rel(back.native().beta, fit.native().beta) < 1e-14
    pd.testing.assert_frame_equal(back.predict(DATA.head(20)), fit.predict(DATA.head(20)))


def test_predict_and_decompose_a_source_piece_by_piece(tmp_path, client, reference) -> None:
    new = _shuffled(6)
    new.loc[:4, "market"] = "Market_new"  # unseen: the national level
    with pytest.warns(UnseenGroupsWarning):
        want = reference.predict(new, interval="confidence")
    with pytest.warns(UnseenGroupsWarning):
        parts_want = reference.decompose(new)
    with client.as_current():
        lazy = reference.predict(dd.from_pandas(new, npartitions=3), interval="confidence")
        assert isinstance(lazy, dd.DataFrame)
        got = lazy.compute()
        parts = reference.decompose(dd.from_pandas(new, npartitions=3)).compute()
    assert _rel(got["prediction"], want["prediction"]) < 1e-14 and list(got["level_used"]) == list(want["level_used"])
    assert _rel(parts.to_numpy(), parts_want.to_numpy()) < 1e-14 and list(parts.columns) == list(parts_want.columns)
    _write_parts(new, tmp_path / "lake", 2)
    with pytest.warns(UnseenGroupsWarning, match="5 rows at 'national'"):
        folder = reference.predict(tmp_path / "lake", out=tmp_path / "pred", batch_size=64)
    written = pd.concat([pd.read_parquet(folder / f"part-{i:02d}.parquet") for i in range(2)], ignore_index=True)
    assert _rel(written["prediction"], want["prediction"]) < 1e-14
    with pytest.raises(SpecError, match="give out="):
        reference.predict(tmp_path / "lake")


def test_design_checks_come_from_the_pass() -> None:
    df = DATA.copy()
    df.loc[0, "submarket"] = "Lonely"  # a group of one row, seen only in one batch
    ref = hierfit.fit(FORMULA, df, engine="mixed", n_draws=50, checks={"single_row_groups": "ignore"})
    fit = hierfit.fit(FORMULA, pa.Table.from_pandas(df), engine="mixed", batch_size=50, n_draws=50,
                      checks={"single_row_groups": "ignore"})
    assert sorted(d.check for d in fit.diagnostics) == sorted(d.check for d in ref.diagnostics)
    assert "single_row_groups" in {d.check for d in fit.diagnostics}


def test_training_rows_are_not_available() -> None:
    spec = hierfit.make_spec(FORMULA)
    with open_source(pa.Table.from_pandas(DATA), batch_size=100) as source:
        design = build_streamed_design(spec, source)
        with pytest.raises(TrainingRowsUnavailableError, match="never held in memory"):
            design.X  # noqa: B018
        with pytest.raises(TrainingRowsUnavailableError, match="model columns"):
            design.terms[0].Z  # noqa: B018
        with pytest.raises(SpecError, match="streaming sources are supported by .*got engine='ols'"):
            hierfit.fit_design(design, engine="ols")


# -- refused: engines, families and transforms a stream cannot take ----------------------------------------
@pytest.mark.parametrize(("kw", "got"), [({"engine": "ols"}, "engine='ols' with family='gaussian'"),
                                         ({"engine": "lightgbm", "family": "poisson"}, "engine='lightgbm' with family='poisson'")])
def test_other_engines_and_families_are_refused(kw, got) -> None:
    # the message lists every engine that streams, with its families, from the registry
    with pytest.raises(SpecError, match=rf"streaming sources are supported by .*engine='mixed' with family='gaussian' or .*got {got}"):
        hierfit.fit(FORMULA, pa.Table.from_pandas(DATA), **kw)


def test_stateful_transform_is_refused() -> None:
    # center/scale/standardize/bs/poly are learned from the source (tests/test_sources_transforms.py);
    # cubic regression splines (knots at quantiles of the distinct values) are not
    with pytest.raises(SpecError, match=r"uses 'cr\(x1, df=4\)', whose state a streamed fit cannot learn exactly"):
        hierfit.fit("y ~ cr(x1, df=4) + (1 | market)", pa.Table.from_pandas(DATA), engine="mixed")


def test_workers_with_an_active_client_is_refused(client) -> None:
    with client.as_current(), pytest.raises(SpecError, match="a Dask client is already active"):
        hierfit.fit(FORMULA, dd.from_pandas(DATA, npartitions=2), engine="mixed", workers=2)


# -- bad sources: errors name the file or partition and the value -------------------------------------------
def test_parquet_schema_differs_between_files(tmp_path) -> None:
    lake = tmp_path / "lake"
    _write_parts(DATA, lake, 2)
    odd = DATA.iloc[300:].assign(x1=DATA["x1"].iloc[300:].astype(str))
    pq.write_table(pa.Table.from_pandas(odd, preserve_index=False), lake / "part-01.parquet")
    with pytest.raises(DataError, match=r"Column 'x1' is string in file 'part-01.parquet' but floating-point in "
                                        r"file 'part-00.parquet'"):
        hierfit.fit(FORMULA, lake, engine="mixed")


def test_column_missing_in_one_partition(client) -> None:
    parts = [dask.delayed(DATA.iloc[:300].copy()), dask.delayed(DATA.iloc[300:].drop(columns="x2"))]
    ddf = dd.from_delayed(parts, meta=DATA.iloc[:0], verify_meta=False)
    with client.as_current(), pytest.raises(DataError, match=r"Partition 1 has no column 'x2'"):
        hierfit.fit(FORMULA, ddf, engine="mixed")


def test_group_under_two_parents_in_different_files(tmp_path) -> None:
    df = DATA.copy()
    df["store"] = df["market"] + "/" + df["submarket"]  # identifiers, one parent each ...
    first, second = df["market"].unique()[:2]
    moved = df.index[df["market"] == second][:2]
    df.loc[moved, "store"] = f"{first}/Sub_1"  # ... except a store seen under two markets
    lake = tmp_path / "lake"
    lake.mkdir()
    for i, m in enumerate(df["market"].unique()):
        pq.write_table(pa.Table.from_pandas(df[df["market"] == m], preserve_index=False), lake / f"m{i}.parquet")
    with pytest.raises(HierarchyError, match=rf"Store '{first}/Sub_1' appears under 2 market groups \('{first}' in file "
                                             rf"'m0.parquet' \(rows 0-99\), '{second}' in file 'm1.parquet'"):
        hierfit.fit("y ~ x1 + (1 | market) + (1 | store)", lake, engine="mixed", hierarchy=("market", "store"))


def test_non_finite_value_in_one_batch(tmp_path) -> None:
    df = DATA.copy()
    df.loc[437, "x2"] = -np.inf
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "all.parquet")
    with pytest.raises(DataError, match=r"In file 'all.parquet' \(rows 400-499\): Column 'x2' has 1 infinite value "
                                        r"\(-inf; rows 437\)"):
        hierfit.fit(FORMULA, tmp_path / "all.parquet", engine="mixed", batch_size=100)


def test_non_finite_value_in_one_partition(client) -> None:
    df = _shuffled(9)
    df.loc[17, "x1"] = np.inf
    with client.as_current(), pytest.raises(DataError, match=r"In partition 0 \(rows 0-199\): Column 'x1' has 1 infinite"):
        hierfit.fit(FORMULA, dd.from_pandas(df, npartitions=3), engine="mixed")


# -- a worker dying mid-pass: rerun by the scheduler (the exact answer), or a clear error ----------------
def _kill_worker_once(frame: pd.DataFrame, marker: str, always: bool = False) -> pd.DataFrame:
    """A partition function that kills the worker process computing it (the first time only,
    unless ``always``): a worker lost mid-pass, as an out-of-memory kill would lose it."""
    import os
    import signal

    distributed.get_worker()  # only ever kill a worker process, never the test's own
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if not always:
            return frame
    else:
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    return frame  # pragma: no cover


def _dying(marker, always: bool = False) -> dd.DataFrame:
    frame = dd.from_pandas(_shuffled(8), npartitions=4)
    return frame.map_partitions(_kill_worker_once, str(marker), always, meta=frame._meta)


def test_a_worker_killed_mid_pass_is_rerun_and_the_fit_is_exact(tmp_path, client, reference) -> None:
    marker = tmp_path / "killed"
    with client.as_current():
        fit = hierfit.fit(FORMULA, _dying(marker), engine="mixed", n_draws=50)
    assert marker.exists()  # a worker did die during the pass
    assert_same_fit(fit, reference)


def test_workers_that_keep_dying_fail_the_fit_clearly(tmp_path) -> None:
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as c, c.as_current(), \
            pytest.raises(hierfit.HierfitError, match="Dask workers died while summarising"):
        hierfit.fit(FORMULA, _dying(tmp_path / "killed", always=True), engine="mixed")


# -- dictionary-encoded labels: each file its own dictionary, read as sorted categoricals ----------------
def _categorical_parts(frame: pd.DataFrame, folder) -> None:
    """Files written from pandas categoricals, each with another category order and an unused category."""
    folder.mkdir(exist_ok=True)
    markets = sorted(DATA["market"].unique())
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        part = frame.iloc[rows].copy()
        order = (markets[::-1] if i % 2 else markets) + [f"Unused_{i}"]
        part["market"] = pd.Categorical(part["market"], categories=order)
        part["submarket"] = part["submarket"].astype("category")
        part.to_parquet(folder / f"part-{i}.parquet", index=False)


def test_dictionary_labels_with_their_own_dictionary_per_file(tmp_path, reference) -> None:
    _categorical_parts(_shuffled(9), tmp_path / "lake")
    assert pq.read_schema(tmp_path / "lake" / "part-0.parquet").field("market").type.value_type == pa.string()
    fit = hierfit.fit(FORMULA, str(tmp_path / "lake"), engine="mixed", n_draws=50, batch_size=64)
    assert_same_fit(fit, reference)


def test_missing_label_in_a_dictionary_column_names_the_file(tmp_path) -> None:
    frame = _shuffled(10)
    frame.loc[len(frame) - 3, "market"] = None  # in the last file
    _categorical_parts(frame, tmp_path / "lake")
    with pytest.raises(DataError, match=r"In file 'part-2.parquet' \(rows .*\): Grouping column 'market' has 1 missing"):
        hierfit.fit(FORMULA, str(tmp_path / "lake"), engine="mixed")
