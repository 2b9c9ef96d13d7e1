"""Streaming sources fitted by the gaussian marginal paths of ``pymc`` and ``stan``.

The statistics a streamed Bayesian fit reads (the dense ``W'ΩW, W'Ωy, y'Ωy`` and their blocks on
the tree of groups, :mod:`hierfit.engines.bayes.stream`) must equal the in-memory ones to 1e-10
relative, from Parquet files in small batches and from a Dask DataFrame on a real two-worker
``LocalCluster``; so must the default priors scaled from them.

The posterior: the streamed statistics differ from the in-memory ones in their last bits (each
batch's own rounding), not bit for bit, and NUTS amplifies a difference in the last bit of the
log-density into other trajectories within a few hundred iterations. So the draws are not
identical; the posteriors are the same distribution, and their means agree within a small
multiple of their Monte Carlo errors (ArviZ's MCSE, which accounts for autocorrelation).

Stan compiles the marginal program of the reference formula, which ``tests/engines`` already
compile (its program depends on the spec only), so no new program is compiled here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.design import build_design
from hierfit.design.sources import TrainingRowsUnavailableError, open_source
from hierfit.design.streamed import build_streamed_design
from hierfit.engines.bayes.stream import gather_statistics, scale_design, stream_tree_layout
from hierfit.engines.bayes.structure import make_structure, sufficient_stats
from hierfit.engines.bayes.tree import tree_layout, tree_stats
from hierfit.exceptions import SpecError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pytest.importorskip("pymc")

#: the reference formula: the Stan program tests/engines compile already
FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
RTOL = 1e-10
QUIET = {"few_groups": "ignore", "ess": "ignore", "rhat": "ignore", "divergences": "ignore", "treedepth": "ignore"}
SAMPLING = {"draws": 80, "tune": 80, "chains": 2, "progressbar": False, "seed": 7}
#: pymc on the tree algebra (block statistics; its chains in this process: forking two chain workers
#: costs more than these few draws), stan on the dense statistics of its marginal program
ENGINE_OPTIONS = {"pymc": {"cores": 1, "likelihood": "marginal", "tune": 60, "draws": 60}, "stan": {}}
ALGEBRA = {"pymc": "tree", "stan": None}


def _data() -> pd.DataFrame:
    sim = hierfit.simulate(n_markets=5, n_submarkets=3, rows_per_submarket=16, seed=21)
    df = sim.data.copy()
    rng = np.random.default_rng(21)
    df["w"] = rng.uniform(0.5, 2.0, len(df))
    df.loc[:7, "w"] = 0.0  # weight-0 rows carry no likelihood (and do not scale the priors)
    df["exposure"] = rng.normal(size=len(df))
    df["y"] = df["y"] + 50.0  # a mean far from 0: the sums are not centred
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


DATA = _data()


def _rel(a: object, b: object) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("bayes_lake")
    for i, rows in enumerate(np.array_split(np.arange(len(DATA)), 3)):
        pq.write_table(pa.Table.from_pandas(DATA.iloc[rows], preserve_index=False), folder / f"part-{i}.parquet")
    return str(folder)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


SPECS = {
    "plain": (FORMULA, {}),
    "weights+offset": ("y ~ x1 + offset(exposure) + (1 + x1 | market/submarket)", {"weights": "w"}),
}


@pytest.mark.parametrize("where", ["parquet", "dask"])
@pytest.mark.parametrize("which", sorted(SPECS))
def test_statistics_and_priors_equal_in_memory(where, which, lake, client) -> None:
    formula, kw = SPECS[which]
    spec = hierfit.make_spec(formula, **kw)
    memory = build_design(spec, DATA)
    m_structure = make_structure(memory, marginal=True)
    m_layout = tree_layout(memory, m_structure)
    assert m_layout is not None
    data = lake if where == "parquet" else dd.from_pandas(DATA, npartitions=4)
    with client.as_current(), open_source(data, batch_size=23) as source:
        design = build_streamed_design(spec, source)
        layout = stream_tree_layout(design, make_structure(scale_design(design), marginal=True))
        assert layout is not None
        tree = gather_statistics(design, layout)
        dense = gather_statistics(design, None)
    assert [lv.name for lv in layout.levels] == [lv.name for lv in m_layout.levels]
    for a, b in zip(layout.levels, m_layout.levels):
        np.testing.assert_array_equal(a.order, b.order)
        np.testing.assert_array_equal(a.u_index, b.u_index)
    ts = tree_stats(memory, m_layout)
    assert _rel(tree.stats.dense(), ts.dense()) < RTOL
    assert _rel(tree.stats.dense_Wty(), ts.dense_Wty()) < RTOL
    ss = sufficient_stats(memory)
    assert _rel(dense.stats.WtW, ss.WtW) < RTOL and _rel(dense.stats.Wty, ss.Wty) < RTOL
    for s in (tree.stats, dense.stats):
        assert s.n == ss.n == (memory.n if "weights" not in kw else int((memory.weights > 0).sum()))
        assert _rel(s.yty, ss.yty) < RTOL and _rel(s.log_weights, ss.log_weights) < RTOL
    # the default priors are scaled to the same data (rounded to 3 digits, so equal)
    assert make_structure(scale_design(design, tree.outcome), marginal=True).priors == m_structure.priors


def _mcse_close(streamed: hierfit.FitResult, memory: hierfit.FitResult) -> None:
    import arviz as az

    a, b = streamed.native().posterior, memory.native().posterior
    names = sorted(v for v in a.data_vars if not str(v).startswith("r_"))  # sigma, beta, SDs, correlations
    assert {"sigma", "beta", "cor_market"} <= set(names)
    err_a, err_b = az.mcse(a[names]), az.mcse(b[names])
    for v in names:
        diff = np.abs(a[v].mean(("chain", "draw")).values - b[v].mean(("chain", "draw")).values)
        bound = 5 * np.sqrt(err_a[v].values ** 2 + err_b[v].values ** 2)
        assert (diff <= bound).all(), (v, diff, bound)


def _check_result(streamed: hierfit.FitResult, memory: hierfit.FitResult, tmp_path, engine: str) -> None:
    info = streamed.engine_fit.info
    assert info["likelihood"] == memory.engine_fit.info["likelihood"] == "marginal"
    assert info.get("marginal_algebra") == memory.engine_fit.info.get("marginal_algebra") == ALGEBRA[engine]
    assert "Parquet" in info["streamed_from"] and streamed.n_obs == memory.n_obs
    assert streamed.source is not None and streamed.source.kind == "parquet"
    assert "log_likelihood" not in streamed.native().groups() and "observed_data" not in streamed.native().groups()
    assert "fitted from statistics gathered in one pass" in streamed.summary()
    _mcse_close(streamed, memory)
    # prediction and decomposition of new rows, in memory and on a source, as for any fit
    rows = DATA.head(40)
    pred = streamed.predict(rows)
    np.testing.assert_allclose(streamed.decompose(rows).sum(axis=1).to_numpy(), pred["prediction"].to_numpy(), rtol=1e-10)
    on_source = streamed.predict(pa.Table.from_pandas(rows, preserve_index=False))
    np.testing.assert_allclose(on_source["prediction"].to_numpy(), pred["prediction"].to_numpy(), rtol=1e-12)
    loaded = hierfit.load(streamed.save(tmp_path / f"{engine}.hfit"))
    pd.testing.assert_frame_equal(loaded.predict(rows), pred)
    pd.testing.assert_frame_equal(loaded.variance_components(), streamed.variance_components())


@pytest.mark.parametrize("engine", ["pymc", "stan"])
def test_posterior_from_parquet_matches_in_memory(engine, lake, tmp_path) -> None:
    if engine == "stan":
        pytest.importorskip("hierfit.engines.bayes.stan_engine")._import_stan()
    options = {**SAMPLING, **ENGINE_OPTIONS[engine]}
    memory = hierfit.fit(FORMULA, DATA, engine=engine, checks=QUIET, **options)
    streamed = hierfit.fit(FORMULA, lake, engine=engine, batch_size=29, checks=QUIET, **options)
    _check_result(streamed, memory, tmp_path, engine)


@pytest.mark.parametrize("engine", ["pymc", "stan"])
def test_what_needs_the_training_rows_is_refused(engine) -> None:
    table = pa.Table.from_pandas(DATA.head(60), preserve_index=False)
    with pytest.raises(SpecError, match=r"likelihood='rows'.*streamed.*likelihood='auto'"):
        hierfit.fit(FORMULA, table, engine=engine, likelihood="rows", **SAMPLING)
    with pytest.raises(TrainingRowsUnavailableError, match=r"log_likelihood=True.*Arrow table of 60 rows.*Drop"):
        hierfit.fit(FORMULA, table, engine=engine, log_likelihood=True, **SAMPLING)
    with pytest.raises(TrainingRowsUnavailableError, match=r"posterior_predictive=True.*ppc"):
        hierfit.fit(FORMULA, table, engine=engine, posterior_predictive=True, **SAMPLING)
