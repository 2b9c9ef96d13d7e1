"""Engines ``lightgbm`` and ``boosted-mixed`` on streaming sources, trained with ``lightgbm.dask``.

A real ``LocalCluster`` of two worker processes and real Parquet files in ``tmp_path``.

Tolerance, and why it is not the mixed engine's 1e-10: LightGBM's distributed dataset finds
its histogram bins from each worker's rows and the streamed fit holds out other validation
rows (chosen per row by hash, not by the in-memory ranks), so the trees differ from the
serial fit of the same rows. What must agree is the fitted function: the RMSE between the
two fits' prediction vectors, relative to the outcome's SD (measured 0.20-0.24 for lightgbm,
0.08-0.12 for boosted-mixed on these data; bounds 0.3 and 0.2), and the RMSE on held-out rows
of the same groups (measured: lightgbm 1.22 streamed vs 1.13 in memory, bound 15% worse;
boosted-mixed 1.05 vs 1.06, bound 10%). The mixed part of boosted-mixed must give the same
variance components (SDs within 0.1 of the in-memory ones; measured within 0.03). A fitted
result's predictions of a Dask source equal its in-memory predictions of the same rows to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.engines.boosting._distributed import RowSplit, early_stopping_point, row_hash
from hierfit.exceptions import EngineError, SpecError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pytest.importorskip("lightgbm")

FORMULA = "y ~ x1 + x2 + (1 + x1 | market/submarket)"
_ALL = hierfit.simulate(n_markets=6, n_submarkets=4, rows_per_submarket=50, nonlinear="sin", seed=3).data
#: 40 rows of each submarket to fit; its other 10 rows, for the held-out metric
_FIT = _ALL.groupby(["market", "submarket"]).cumcount() < 40
DATA, HELD_OUT = _ALL[_FIT].reset_index(drop=True), _ALL[~_FIT].reset_index(drop=True)
LGB = {"num_boost_round": 60, "learning_rate": 0.1, "early_stopping_rounds": 10, "pd_rows_per_group": 10, "num_threads": 1}
BOOSTED = {"trees_per_round": 10, "learning_rate": 0.1, "max_rounds": 2, "patience": 2, "min_data_in_leaf": 20, "num_threads": 1}


def _relative_rmse(a: object, b: object) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.sqrt(np.mean((a - b) ** 2)) / DATA["y"].std())


def _rmse(fit: hierfit.FitResult, frame: pd.DataFrame) -> float:
    return float(np.sqrt(np.mean((fit.predict(frame)["prediction"].to_numpy() - frame["y"].to_numpy()) ** 2)))


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


def _assert_predicts_sources(fit: hierfit.FitResult, client, folder) -> None:
    """Predict and decompose a Dask source lazily: equal to the in-memory calls on the same rows;
    and a saved and loaded fit predicts the same."""
    want = fit.predict(DATA)
    back = hierfit.load(fit.save(folder))
    assert back.source == fit.source
    pd.testing.assert_frame_equal(back.predict(DATA), want)
    with client.as_current():
        lazy = fit.predict(dd.from_pandas(DATA, npartitions=3))
        assert isinstance(lazy, dd.DataFrame)
        got = lazy.compute()
        parts = fit.decompose(dd.from_pandas(DATA, npartitions=3)).compute()
    np.testing.assert_allclose(got["prediction"].to_numpy(), want["prediction"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(parts.sum(axis=1).to_numpy(), want["prediction"].to_numpy(), rtol=1e-10)


def test_lightgbm_on_a_dask_frame_matches_in_memory(tmp_path, client) -> None:
    memory = hierfit.fit(FORMULA, DATA, engine="lightgbm", **LGB)
    with client.as_current():
        fit = hierfit.fit(FORMULA, dd.from_pandas(DATA, npartitions=2), engine="lightgbm", **LGB)
    assert fit.source is not None and fit.source.kind == "dask"
    s = fit.engine_fit.statistics
    assert s["n_train"] + s["n_valid"] == len(DATA) and 0.05 < s["n_valid"] / len(DATA) < 0.15
    assert 1 <= s["n_trees"] <= LGB["num_boost_round"]
    assert _relative_rmse(fit.predict(DATA)["prediction"], memory.predict(DATA)["prediction"]) < 0.3
    assert _rmse(fit, HELD_OUT) < 1.15 * _rmse(memory, HELD_OUT)
    # derived effects: the same groups, and the same national level within a tenth of the outcome's SD
    effects, mem_effects = fit.group_effects(), memory.group_effects()
    assert list(effects["group"]) == list(mem_effects["group"])
    national = effects["level"] == "national"
    assert abs(effects.loc[national, "estimate"].iloc[0] - mem_effects.loc[national, "estimate"].iloc[0]) < 0.1 * DATA["y"].std()
    _assert_predicts_sources(fit, client, tmp_path / "fit")


def test_boosted_mixed_on_parquet_files_matches_in_memory(tmp_path, client) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(DATA)), 3)):
        pq.write_table(pa.Table.from_pandas(DATA.iloc[rows], preserve_index=False), lake / f"part-{i}.parquet")
    with pytest.warns(hierfit.exceptions.FitWarning):  # few rounds: the loss may still improve; a near-zero slope SD
        memory = hierfit.fit(FORMULA, DATA, engine="boosted-mixed", **BOOSTED)
    with client.as_current(), pytest.warns(hierfit.exceptions.FitWarning):
        fit = hierfit.fit(FORMULA, str(lake / "*.parquet"), engine="boosted-mixed", **BOOSTED)
    assert fit.source is not None and fit.source.kind == "parquet" and fit.source.n_pieces == 3
    assert fit.engine_fit.statistics["n_trees"] > 0  # the trees earn their place on a sine signal
    assert _relative_rmse(fit.predict(DATA)["prediction"], memory.predict(DATA)["prediction"]) < 0.2
    assert _rmse(fit, HELD_OUT) < 1.1 * _rmse(memory, HELD_OUT)
    vc, mem_vc = fit.variance_components(), memory.variance_components()
    assert list(vc[["level", "term1", "term2"]].itertuples(index=False)) == list(mem_vc[["level", "term1", "term2"]].itertuples(index=False))
    sds = (vc["term2"] == "").to_numpy()
    np.testing.assert_allclose(vc["sd_or_corr"][sds], mem_vc["sd_or_corr"][sds], atol=0.1)
    parts = fit.decompose(DATA)
    assert abs(parts["nonlinear"].mean()) < 1e-8  # centred over all rows: the intercept keeps its meaning
    _assert_predicts_sources(fit, client, tmp_path / "fit")


# -- the pieces: a split that does not depend on partitioning; LightGBM's early-stopping rule --------------
def test_row_split_does_not_depend_on_partitioning() -> None:
    d = hierfit.build_design(hierfit.make_spec(FORMULA), DATA)
    split = RowSplit(0.1, 0)
    whole = split.valid(d)
    parts = np.concatenate([split.valid(d.encoding.apply_observed(DATA.iloc[rows])) for rows in np.array_split(np.arange(len(DATA)), 7)])
    assert (parts == whole).all() and 0.05 < whole.mean() < 0.15
    assert not (row_hash(d, 1) == row_hash(d, 0)).all()


def test_early_stopping_point_is_lightgbms_rule() -> None:
    lgb = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 3)), rng.normal(size=300)
    Xv, yv = rng.normal(size=(100, 3)), rng.normal(size=100)
    params = {"objective": "regression", "verbosity": -1, "learning_rate": 0.3, "num_threads": 1, "deterministic": True}
    train = lgb.Dataset(X, y)
    stopped = lgb.train(params, train, 100, valid_sets=[lgb.Dataset(Xv, yv, reference=train)], callbacks=[lgb.early_stopping(5, verbose=False)])
    full = lgb.train(params, lgb.Dataset(X, y), 100)
    curve = np.array([np.mean((full.predict(Xv, num_iteration=k) - yv) ** 2) for k in range(1, 101)])
    assert early_stopping_point(curve, 5) == stopped.best_iteration


# -- refused, with the reason and what to do ---------------------------------------------------------------
def test_other_families_are_refused_before_any_pass() -> None:
    with pytest.raises(SpecError, match="engine='lightgbm' with family='gaussian'"):
        hierfit.fit(FORMULA, pa.Table.from_pandas(DATA), engine="lightgbm", family="poisson")


@pytest.mark.parametrize("engine", ["lightgbm", "boosted-mixed"])
def test_grouped_validation_is_refused(engine) -> None:
    with pytest.raises(SpecError, match="validation='random'"):
        hierfit.fit(FORMULA, pa.Table.from_pandas(DATA), engine=engine, validation="grouped")


def test_an_effects_engine_that_cannot_stream_is_refused() -> None:
    with pytest.raises(EngineError, match="effects_engine='ols'; pass effects_engine='mixed'"):
        hierfit.fit(FORMULA, pa.Table.from_pandas(DATA), engine="boosted-mixed", effects_engine="ols")
