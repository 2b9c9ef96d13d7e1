"""Stateful transforms in streamed fits: the state formulaic learns in memory, learned from a source.

``center``, ``scale`` and ``standardize`` learn moments; ``bs(x, df=...)`` learns its knots
(exact order statistics, found by a radix selection over passes); ``poly(x, degree=d)`` its
recurrence coefficients (one pass per degree). A streamed fit must equal
the in-memory fit (fixed effects, theta, logLik to 1e-10 relative), encode new data the same
way (predict, save/load), and the knots must equal formulaic's bit for bit. Transforms that
cannot be learned exactly are refused with what to do instead.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from formulaic import Formula

import hierfit
from hierfit.design.sources import open_source
from hierfit.design.transform_state import (
    FIRST_BITS,
    KnotSample,
    _Request,
    _ValuePass,
    key_values,
    learn_transform_state,
    linear_quantiles,
    order_keys,
    placeholder_rows,
)
from hierfit.exceptions import DataError, SpecError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

RTOL = 1e-10
SPLINES = "y ~ center(x1) + bs(x2, df=4) + poly(x3, degree=3) + channel + (1 | market)"
SCALED = ("y ~ scale(x1) + standardize(x3, ddof=1) + scale(x4, center=False) + bs(x2, df=6, degree=2) "
          "+ bs(x5, df=4, lower_bound=10, upper_bound=20) + (1 | market)")


def _data(seed: int = 5) -> pd.DataFrame:
    sim = hierfit.simulate(n_markets=6, n_submarkets=3, rows_per_submarket=20, seed=seed)
    df = sim.data.copy()
    rng = np.random.default_rng(seed)
    df["channel"] = rng.choice(["online", "retail"], len(df))
    df["x1"] = df["x1"] + 40.0  # a mean far from 0: centring matters
    df["x2"] = np.round(3 * df["x2"], 1)  # ties: knots fall on repeated values
    df["x3"] = rng.gamma(2.0, size=len(df))
    df["x4"] = rng.uniform(1.0, 3.0, size=len(df))
    df["x5"] = rng.uniform(11.0, 19.0, size=len(df))  # given bounds 10-20: placeholders must lie inside
    df["y"] = df["y"] + np.sin(df["x2"]) + 0.02 * df["x1"] + 0.1 * df["x3"] ** 2 + 0.3 * df["x4"] + np.cos(df["x5"])
    return df


DATA = _data()


@pytest.fixture(scope="module")
def in_memory() -> dict[str, hierfit.FitResult]:
    return {f: hierfit.fit(f, DATA, engine="mixed") for f in (SPLINES, SCALED)}


def _rel(a: object, b: object) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _assert_same_fit(streamed: hierfit.FitResult, reference: hierfit.FitResult) -> None:
    s, r = streamed.native(), reference.native()
    assert streamed.fixed_effects().index.tolist() == reference.fixed_effects().index.tolist()
    for name in ("beta", "theta", "loglik"):
        assert _rel(getattr(s, name), getattr(r, name)) < RTOL, name


def _state(fit: hierfit.FitResult) -> dict:
    return fit.encoding.population_spec.transform_state  # type: ignore[attr-defined]


def _assert_same_state(streamed: dict, memory: dict) -> None:
    assert list(streamed) == list(memory)
    for key, want in memory.items():
        got = streamed[key]
        assert list(got) == list(want), key
        for field, value in want.items():
            if field in ("knots", "lower_bound", "upper_bound", "ddof") or value is None:
                assert got[field] == value, (key, field)  # exact: order statistics and options
            elif isinstance(value, dict):  # poly's coefficients by degree, in formulaic's order
                assert list(got[field]) == list(value), (key, field)
                for k, v in value.items():
                    assert abs(got[field][k] - v) <= 1e-13 * abs(v), (key, field, k)
            else:  # moments: compensated merge vs numpy's pairwise sum, a few ulps apart
                assert abs(got[field] - value) <= 1e-14 * abs(value), (key, field)


def test_parquet_files_in_small_batches_equal_in_memory(tmp_path, in_memory) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    shuffled = DATA.iloc[np.random.default_rng(1).permutation(len(DATA))]
    for i, rows in enumerate(np.array_split(np.arange(len(DATA)), 3)):
        pq.write_table(pa.Table.from_pandas(shuffled.iloc[rows], preserve_index=False), lake / f"part-{i}.parquet")
    fit = hierfit.fit(SPLINES, str(lake), engine="mixed", batch_size=23)
    reference = in_memory[SPLINES]
    _assert_same_fit(fit, reference)
    _assert_same_state(_state(fit), _state(reference))
    # saved and loaded (the polynomial's coefficients are keyed by degree), new data encode the same
    back = hierfit.load(fit.save(tmp_path / "fit"))
    new = _data(seed=9).head(25)
    new["x2"] = new["x2"].clip(DATA["x2"].min(), DATA["x2"].max())  # inside the boundary knots
    assert _rel(back.predict(new)["prediction"], reference.predict(new)["prediction"]) < RTOL


def test_dask_partitions_merged_in_a_tree_equal_in_memory(in_memory) -> None:
    dd = pytest.importorskip("dask.dataframe")
    # Dask's default scheduler: the summaries of the partitions are merged by the same tree as on a cluster
    fit = hierfit.fit(SPLINES, dd.from_pandas(DATA, npartitions=4), engine="mixed", batch_size=40)
    _assert_same_fit(fit, in_memory[SPLINES])
    _assert_same_state(_state(fit), _state(in_memory[SPLINES]))


def test_arrow_table_equals_in_memory_and_encodes_new_data_the_same(tmp_path, in_memory) -> None:
    reference = in_memory[SCALED]
    fit = hierfit.fit(SCALED, pa.Table.from_pandas(DATA.iloc[::-1]), engine="mixed", batch_size=31)
    _assert_same_fit(fit, reference)
    _assert_same_state(_state(fit), _state(reference))
    new = _data(seed=9).head(25)
    for c in ("x2", "x5"):
        new[c] = new[c].clip(DATA[c].min(), DATA[c].max())  # inside the boundary knots
    want = reference.predict(new)
    assert _rel(fit.predict(new)["prediction"], want["prediction"]) < RTOL
    back = hierfit.load(fit.save(tmp_path / "fit"))
    pd.testing.assert_frame_equal(back.predict(new), fit.predict(new))


@pytest.mark.parametrize("limit", [4, 1 << 18])
def test_knots_equal_formulaic_exactly(limit) -> None:
    """Many ties, negatives, a narrow range and integers; ``limit=4`` forces every bucket to be
    counted again down to single keys (the passes after the first histogram)."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({
        "a": np.round(rng.standard_t(3, size=900), 2),
        "b": 1e6 + rng.random(900) * 1e-6,
        "k": rng.integers(-5, 6, size=900),
    })
    population = ("bs(a, df=7) + bs(b, df=5, degree=2) + bs(k, df=6) + bs(a, df=5, lower_bound=-1, upper_bound=2, "
                  "extrapolation='clip') + bs(np.exp(a / 4), df=4) + bs(b, df=4, lower_bound=999999.0, upper_bound=1000001.0, "
                  "extrapolation='zero')")
    memory = Formula(population).get_model_matrix(frame, output="numpy").model_spec.transform_state
    # built on placeholder rows, as a streamed design builds it: only its keys and options are used
    probe = Formula(population).get_model_matrix(placeholder_rows(frame.head(1), population), output="numpy").model_spec
    with open_source(pa.Table.from_pandas(frame), batch_size=101) as source:
        learned = learn_transform_state(population, probe, source, collect_limit=limit)
    assert learned == memory
    for key in memory:
        assert [float(v).hex() for v in learned[key]["knots"]] == [float(v).hex() for v in memory[key]["knots"]]


def test_linear_quantiles_match_numpy_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 7, 10, 64, 999]:
        for x in (rng.normal(size=n) * 10.0 ** rng.integers(-5, 6), np.round(rng.normal(size=n), 1)):
            for m in (2, 3, 5, 9):
                q = np.linspace(0, 1, m)
                lo, hi, interpolate = linear_quantiles(n, q)
                s = np.sort(x)
                assert np.array_equal(interpolate(s[lo], s[hi]), np.nanquantile(x, q))
    x = np.array([-np.inf, -3.5, -0.0, 0.0, 1e-310, 2.0, np.inf])
    assert np.array_equal(key_values(np.sort(order_keys(x))), np.sort(x))


def test_a_pass_pickles_for_a_distributed_run() -> None:
    sample = KnotSample("x2", -1.0, None)
    task = _ValuePass(("x2",), ("x2",), (_Request(sample, 0, np.zeros(1, np.uint64), FIRST_BITS, np.zeros(0, np.uint64)),))
    back = pickle.loads(pickle.dumps(task))
    assert back.requests[0].sample == sample and back.arguments == ("x2",)


@pytest.mark.parametrize(("term", "message"), [
    ("cr(x2, df=4)", r"'cr\(x2, df=4\)'.*cannot learn exactly.*distinct values.*use bs\(x, df=...\)"),
    ("cc(x2, df=4)", r"'cc\(x2, df=4\)'.*cannot learn exactly"),
    ("bs(x2, df=int(4))", r"The argument 'int\(4\)' of 'bs\(x2, df=int\(4\)\)' is not a literal value.*df=4"),
    ("scale(center(x1))", r"'scale\(center\(x1\)\)' nests a stateful transform inside another"),
])
def test_a_transform_that_cannot_be_learned_exactly_is_refused(term, message) -> None:
    with pytest.raises(SpecError, match=message):
        hierfit.fit(f"y ~ {term} + (1 | market)", pa.Table.from_pandas(DATA), engine="mixed")


def test_a_spline_without_values_within_its_bounds_is_refused() -> None:
    with pytest.raises(DataError, match=r"No value of 'x1' lies within the bounds \(0.0, 1.0\) of \"bs\(x1, df=4, "):
        hierfit.fit("y ~ bs(x1, df=4, lower_bound=0, upper_bound=1, extrapolation='clip') + (1 | market)",
                    pa.Table.from_pandas(DATA), engine="mixed")
