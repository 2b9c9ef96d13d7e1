"""The ``mixed`` engine's GLMM families on streaming sources equal the in-memory fit.

Real Parquet files in ``tmp_path``; a real ``LocalCluster`` of two worker processes.

Two ways of fitting (:func:`hierfit.engines.mixed._stream_glmm.glmm_route`), both tested:

* **gathered** (a source whose model rows fit in memory, no cluster): the rows are put back
  in source order and the in-memory core runs on them, so every number is the in-memory one
  up to the rounding of the batch-wise encoding (measured 0 difference). ``RTOL = 1e-10``
  (relative, on estimates, standard errors, theta and logLik) leaves room for a BLAS that sums
  a concatenated array in another blocking.
* **map-reduce** (a Dask frame on an active client; a source read again at every pass when
  the rows do not fit in memory, forced here with ``MEMORY_SHARE = 0``): every row pass is a
  sum of per-shard sums, so each sum is the in-memory one in another order. Estimates, theta,
  logLik and modes measured within 4e-14 of in memory (``RTOL`` holds). The standard errors
  come from a forward-difference Hessian of the exact gradient (step 1e-5 relative,
  ``_glmm_optim.hessian``), which divides that rounding by the step: measured 3e-10 to
  1.8e-9, so ``SE_RTOL = 1e-8`` for them on these paths.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.design import build_design
from hierfit.design.sources import open_source
from hierfit.design.streamed import build_streamed_design
from hierfit.engines.mixed import _stream_glmm
from hierfit.engines.mixed._stream_glmm import gather_design
from hierfit.exceptions import DataError, EngineError, HierfitWarning

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

# the poisson data carry prior weights, which inflate the Pearson ratio past the overdispersion check
pytestmark = pytest.mark.filterwarnings("ignore:.*overdispersed:hierfit.exceptions.FitWarning")

RTOL = 1e-10
#: standard errors of a map-reduce fit (see the module docstring)
SE_RTOL = 1e-8
#: family -> (formula, weights column, offset column)
MODELS = {
    "bernoulli": ("win ~ x1 + (1 | market/submarket)", None, None),
    "poisson": ("visits ~ x1 + (1 + x1 | market)", "w", "log_exposure"),
}


def _data(seed: int = 5, n: int = 1500) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    market = rng.integers(0, 10, n)
    sub = market * 3 + rng.integers(0, 3, n)
    x1 = rng.normal(size=n)
    log_exposure = np.log(rng.uniform(0.5, 2.0, n))
    eta = -0.2 + 0.5 * x1 + rng.normal(0, 0.6, 10)[market] + rng.normal(0, 0.3, 30)[sub]
    return pd.DataFrame({
        "market": [f"Market_{i}" for i in market], "submarket": [f"Sub_{i}" for i in sub], "x1": x1,
        "win": (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float),
        "visits": rng.poisson(np.exp(eta + log_exposure)).astype(float),
        "w": rng.choice([0.5, 1.0, 2.0], n), "log_exposure": log_exposure,
    })


DATA = _data()


def _spec(family: str) -> hierfit.ModelSpec:
    formula, weights, offset = MODELS[family]
    return hierfit.make_spec(formula, family=family, weights=weights, offset=offset)


@pytest.fixture(scope="module")
def reference() -> dict[str, hierfit.FitResult]:
    return {fam: hierfit.fit(_spec(fam), DATA, engine="mixed", n_draws=50) for fam in MODELS}


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


def _rel(a: object, b: object) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _fit_source(family: str, data: object, batch_size: int | None = None) -> hierfit.FitResult:
    # the public entry point: hierfit.fit opens the source and builds the streamed design itself
    return hierfit.fit(_spec(family), data, engine="mixed", n_draws=50, batch_size=batch_size)


def assert_same_fit(streamed: hierfit.FitResult, reference: hierfit.FitResult, se_rtol: float = RTOL) -> None:
    s, r = streamed.native(), reference.native()
    assert s.n_obs == r.n_obs and s.converged
    for name in ("beta", "theta", "loglik", "objective", "deviance"):
        assert _rel(getattr(s, name), getattr(r, name)) < RTOL, name
    assert _rel(s.se_beta, r.se_beta) < se_rtol
    for b_s, b_r in zip(s.ranef, r.ranef):
        assert _rel(b_s, b_r) < RTOL
    pd.testing.assert_frame_equal(streamed.group_effects(kind="deviation")[["level", "group", "n_rows"]],
                                  reference.group_effects(kind="deviation")[["level", "group", "n_rows"]])


def _write_parts(frame: pd.DataFrame, folder, n_files: int) -> None:
    folder.mkdir(exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), n_files)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[rows], preserve_index=False), folder / f"part-{i:02d}.parquet")


# -- equality with the in-memory fit ---------------------------------------------------------------------
@pytest.mark.parametrize("family", list(MODELS))
def test_parquet_folder_equals_in_memory(tmp_path, reference, family) -> None:
    _write_parts(DATA, tmp_path / "lake", 4)
    assert_same_fit(_fit_source(family, tmp_path / "lake", batch_size=170), reference[family])


@pytest.fixture(scope="module")
def arrow_fits() -> dict[str, hierfit.FitResult]:
    table = pa.Table.from_pandas(DATA, preserve_index=False)
    return {fam: _fit_source(fam, table, batch_size=97) for fam in MODELS}


@pytest.mark.parametrize("family", list(MODELS))
def test_arrow_table_in_small_batches_equals_in_memory(arrow_fits, reference, family) -> None:
    assert_same_fit(arrow_fits[family], reference[family])


@pytest.mark.parametrize("family", list(MODELS))
def test_dask_frame_on_the_cluster_equals_in_memory(client, reference, family) -> None:
    with client.as_current():
        fit = _fit_source(family, dd.from_pandas(DATA, npartitions=5))
    assert_same_fit(fit, reference[family], se_rtol=SE_RTOL)
    assert fit.source is not None and fit.source.kind == "dask"
    # map-reduce: the rows stayed on the workers (no per-row linear predictor came back)
    assert fit.native().linear_predictor.size == 0
    pd.testing.assert_frame_equal(fit.predict(DATA.iloc[:50]), reference[family].predict(DATA.iloc[:50]),
                                  rtol=SE_RTOL)


@pytest.fixture()
def beyond_memory(monkeypatch):
    """Every source counts as bigger than memory: the map-reduce fit reading the source per pass."""
    monkeypatch.setattr(_stream_glmm, "MEMORY_SHARE", 0.0)


@pytest.mark.parametrize("family", list(MODELS))
def test_parquet_beyond_memory_is_read_per_pass_and_equals_in_memory(tmp_path, reference, beyond_memory,
                                                                      family) -> None:
    _write_parts(DATA, tmp_path / "lake", 3)
    with pytest.warns(HierfitWarning, match=r"do not fit in this machine's memory, so every pass .* reads the source"):
        fit = _fit_source(family, tmp_path / "lake", batch_size=230)
    assert_same_fit(fit, reference[family], se_rtol=SE_RTOL)
    assert fit.native().linear_predictor.size == 0


def test_negative_binomial_beyond_memory_equals_in_memory(beyond_memory) -> None:
    # the NB size is estimated with the rest (observed information): its passes are sharded too.
    # Yardstick: the in-memory NB fit is itself row-order invariant only to its Newton stopping
    # rule in the flat size direction -- shuffled rows move beta ~6e-8, the size and the standard
    # errors ~5e-6 (relative) -- so the map-reduce fit is held to that, not to rounding.
    spec = hierfit.make_spec("visits ~ x1 + offset(log_exposure) + (1 | market)", family="negative_binomial")
    want = hierfit.fit(spec, DATA, engine="mixed", n_draws=50).native()
    with pytest.warns(HierfitWarning, match="reads the source"):
        got = hierfit.fit(spec, pa.Table.from_pandas(DATA, preserve_index=False), engine="mixed", n_draws=50,
                          batch_size=400).native()
    assert got.converged and got.n_obs == want.n_obs
    assert _rel(got.beta, want.beta) < 1e-6 and _rel(got.theta, want.theta) < 1e-6
    assert _rel(got.nb_theta, want.nb_theta) < 1e-4 and _rel(got.se_beta, want.se_beta) < 1e-4
    assert _rel(got.loglik, want.loglik) < 1e-12


def test_separation_beyond_memory_is_found_as_in_memory(beyond_memory) -> None:
    split = DATA.assign(cut=np.where(DATA["win"] > 0, 1.0, -1.0) + 0.1 * DATA["x1"])
    assert_found_once_as_in_memory(split, hierfit.make_spec("win ~ cut + (1 | market)", family="bernoulli"))


def test_binomial_trials_equal_in_memory() -> None:
    data = DATA.assign(n=3.0 + (DATA.index % 4), k=lambda d: np.minimum(d["visits"], d["n"]))
    data["fail"] = data["n"] - data["k"]
    spec = hierfit.make_spec("cbind(k, fail) ~ x1 + (1 | market)", family="binomial")
    want = hierfit.fit(spec, data, engine="mixed", n_draws=50)
    with open_source(pa.Table.from_pandas(data, preserve_index=False), batch_size=211) as source:
        got = hierfit.fit_design(build_streamed_design(spec, source), engine="mixed", n_draws=50)
    for name in ("beta", "theta", "loglik"):
        assert _rel(getattr(got.native(), name), getattr(want.native(), name)) < RTOL, name


# -- the result is the in-memory one: predict on a source, save/load ---------------------------------------
def test_predict_on_a_source_and_save_load(tmp_path, arrow_fits, reference) -> None:
    fit = arrow_fits["poisson"]
    new = DATA.sample(200, random_state=3).reset_index(drop=True)
    want = reference["poisson"].predict(new, interval="confidence")
    _write_parts(new, tmp_path / "new", 2)
    folder = fit.predict(tmp_path / "new", out=tmp_path / "pred", batch_size=64)
    written = pd.concat([pd.read_parquet(folder / f"part-{i:02d}.parquet") for i in range(2)], ignore_index=True)
    assert _rel(written["prediction"], want["prediction"]) < RTOL
    assert _rel(fit.predict(new, interval="confidence")[["lower", "upper"]], want[["lower", "upper"]]) < 1e-8
    back = hierfit.load(fit.save(tmp_path / "fit"))
    assert _rel(back.native().beta, fit.native().beta) < 1e-14
    pd.testing.assert_frame_equal(back.predict(new), fit.predict(new))


# -- bad input: clear errors, before the model rows are gathered --------------------------------------------
def test_quadrature_with_two_terms_is_refused() -> None:
    with open_source(pa.Table.from_pandas(DATA, preserve_index=False), batch_size=500) as source:
        design = build_streamed_design(_spec("bernoulli"), source)
        with pytest.raises(EngineError, match=r"n_agq=5 .*exactly one group-level term"):
            hierfit.fit_design(design, engine="mixed", n_agq=5)


def test_outcome_outside_the_family_in_one_batch() -> None:
    bad = DATA.copy()
    bad.loc[1400, "win"] = 2.0  # a count where 0/1 is due, in the last batch only
    with open_source(pa.Table.from_pandas(bad, preserve_index=False), batch_size=500) as source:
        design = build_streamed_design(_spec("bernoulli"), source)
        with pytest.raises(DataError, match=r"rows 1000-1499.*'bernoulli' needs 0/1 outcomes; column 'win'.*e\.g\. 2\.0"):
            hierfit.fit_design(design, engine="mixed")


def test_degenerate_outcome_is_refused_as_in_memory() -> None:
    zero = DATA.assign(win=0.0)
    with pytest.raises(DataError, match="degenerate_outcome"):
        hierfit.fit(_spec("bernoulli"), zero, engine="mixed")
    with open_source(pa.Table.from_pandas(zero, preserve_index=False), batch_size=500) as source, \
            pytest.raises(DataError, match=r"\[degenerate_outcome\] The outcome 'win' is 0 in every row"):
        build_streamed_design(_spec("bernoulli"), source)


def test_outcome_checks_are_those_of_the_family() -> None:
    # the design pass checked a gaussian twin; the gathered rows are checked against the family
    split = DATA.assign(cut=np.where(DATA["win"] > 0, 1.0, -1.0) + 0.1 * DATA["x1"])
    spec = hierfit.make_spec("win ~ cut + (1 | market)", family="bernoulli")
    with pytest.warns(UserWarning, match="separation"):
        want = build_design(spec, split)
    with open_source(pa.Table.from_pandas(split, preserve_index=False), batch_size=400) as source:
        streamed = build_streamed_design(spec, source)
        got = gather_design(streamed)  # found, not warned: the fit warns (below)
    assert [d.check for d in got.diagnostics] == [d.check for d in want.diagnostics]
    assert np.array_equal(got.X, want.X) and np.array_equal(got.y, want.y)
    assert_found_once_as_in_memory(split, spec)


def assert_found_once_as_in_memory(data: pd.DataFrame, spec: hierfit.ModelSpec) -> None:
    """A streamed fit warns the separation once and keeps it in its diagnostics, as in memory."""
    with pytest.warns(UserWarning) as seen:
        want = hierfit.fit(spec, data, engine="mixed", n_draws=50)
    with pytest.warns(UserWarning) as got_seen:
        got = hierfit.fit(spec, pa.Table.from_pandas(data, preserve_index=False), engine="mixed", n_draws=50,
                          batch_size=400)
    assert sum("[separation]" in str(w.message) for w in got_seen) == 1
    assert sum("[separation]" in str(w.message) for w in seen) == 1
    assert [d.message for d in got.diagnostics if d.check == "separation"] == \
        [d.message for d in want.diagnostics if d.check == "separation"] != []


# -- a worker lost between the passes of a map-reduce GLMM fit: its shards are rebuilt, the fit exact ------
def test_a_worker_killed_mid_fit_has_its_shards_rebuilt_and_the_fit_is_exact(client, reference, monkeypatch) -> None:
    """The shards live on the workers (futures); killing the worker that holds the first piece's
    shards before the third pass loses them. The scheduler rebuilds them from their lineage (the
    partition and the encoding) on a worker that is alive, and the pass -- and so the fit --
    comes out as if nothing had happened: never a sum short of a piece."""
    import os
    import signal

    from hierfit.engines.mixed import _glmm_shards

    original = _glmm_shards.DaskShards.map_sum
    killed: list[str] = []

    def map_sum(self, op, args):  # runs in this process: the driver of the fit
        if self.passes == 2 and not killed:
            holders = self.client.who_has(self.futures[:1])
            address = next(iter(holders.values()))[0]
            pid = self.client.run(os.getpid, workers=[address])[address]
            os.kill(pid, signal.SIGKILL)  # as an out-of-memory kill would end it
            killed.append(address)
        return original(self, op, args)

    monkeypatch.setattr(_glmm_shards.DaskShards, "map_sum", map_sum)
    with client.as_current():
        fit = _fit_source("bernoulli", dd.from_pandas(DATA, npartitions=5))
    assert killed  # a worker holding shards did die during the fit
    assert_same_fit(fit, reference["bernoulli"], se_rtol=SE_RTOL)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it: the module's cluster is whole again


def test_a_shards_compiled_passes_pickle_as_their_recipe() -> None:
    """A shard's fused passes come from a generated module, which exists only in the process
    that generated it; pickled (a shard moving between Dask workers), they are remade where they
    land -- here in a process that has never seen them -- and compute the same."""
    pytest.importorskip("numba")
    import subprocess
    import sys

    import cloudpickle

    from hierfit.engines.mixed._blocks import RandomBlock
    from hierfit.engines.mixed._glmm_setup import prepare
    from hierfit.model.family import get_family

    rng = np.random.default_rng(0)
    g = rng.integers(0, 4, 60)
    X = np.column_stack([np.ones(60), rng.normal(size=60)])
    y = (rng.uniform(size=60) < 0.5).astype(float)
    setup = prepare(X, y, [RandomBlock(g, 4, np.ones((60, 1)))], get_family("bernoulli"), trials=None, weights=None,
                    offset=None, n_agq=1, information=None, nb_theta=None, use_numba=True)
    fused = setup.prob.fused
    assert fused is not None
    payload = cloudpickle.dumps(fused)
    # a fresh interpreter: the generated module's name means nothing there
    code = ("import pickle, sys; m = pickle.loads(sys.stdin.buffer.read()); "
            "print(sorted(n for n in ('step', 'grad_a', 'grad_b') if callable(getattr(m, n))))")
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, check=True, timeout=300)
    assert out.stdout.decode().strip() == "['grad_a', 'grad_b', 'step']"
