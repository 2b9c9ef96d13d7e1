"""The one-pass streamed mixed fit: per-cell moments in the design pass, no statistics pass.

The design pass gathers, per cell (distinct combination of the grouping columns), the means and
co-moments of the model's columns (:class:`hierfit.design.moments.CellMoments`); the mixed
engine derives every group's statistics from them (:func:`hierfit.engines.mixed._stream.cell_rows`)
instead of reading the source a second time. It must equal the in-memory fit to 1e-10 relative
whatever the batching, the files' own label dictionaries and the row order -- also for an
outcome of mean 1e8 and SD 1, whose digits a sum of raw squares would lose -- and equal the
two-pass path (the statistics pass), which remains for prior weights and too many cells.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import hierfit
from hierfit.design import passes
from hierfit.design.moments import CellMoments
from hierfit.design.passes import ROWS, DesignPass, merge_summaries
from hierfit.design.sources import Batch, observe_folds, open_source
from hierfit.design.streamed import build_streamed_design
from hierfit.engines.mixed._stream import fit_streamed_lmm

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
RTOL = 1e-10


def _data(seed: int = 3) -> pd.DataFrame:
    sim = hierfit.simulate(n_markets=8, n_submarkets=4, rows_per_submarket=20, seed=seed)
    df = sim.data[["y", "x1", "x2", "market", "submarket"]].copy()
    rng = np.random.default_rng(seed)
    # mean 1e8, SD ~1: raw sums of squares would keep ~0 significant digits of the variance
    df["y"] = 1e8 + df["y"] - df["y"].mean()
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


DATA = _data()


class _Passes:
    """Counts the folds run (their names), to tell which path a fit took."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def start(self, what: str, pieces: int) -> None:
        self.names.append(what)

    def advance(self, *, batches: int = 0, pieces: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


def _rel(a: object, b: object) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _assert_same(sol, ref) -> None:
    for name in ("beta", "theta", "sigma", "loglik", "objective"):
        assert _rel(getattr(sol, name), getattr(ref, name)) < RTOL, name
    for b_s, b_r in zip(sol.ranef, ref.ranef):
        assert _rel(b_s, b_r) < RTOL


def _fit(design):
    return fit_streamed_lmm(design, reml=True, maxiter=1000, n_starts=1, seed=0, solver="auto")


@pytest.fixture(scope="module")
def reference():
    return hierfit.fit(FORMULA, DATA, engine="mixed").native()


def _dictionary_parts(frame: pd.DataFrame, folder, n_files: int) -> None:
    """Files whose label columns are dictionary-encoded with a dictionary of their own: the
    labels they hold, in an order of their own (reversed in every other file)."""
    folder.mkdir(exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), n_files)):
        part = frame.iloc[rows]
        columns = {c: pa.array(part[c].to_numpy()) for c in ("y", "x1", "x2")}
        for c in ("market", "submarket"):
            values = sorted(part[c].unique(), reverse=bool(i % 2))
            codes = pd.Index(values).get_indexer(part[c])
            columns[c] = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values))
        pq.write_table(pa.table(columns), folder / f"part-{i:02d}.parquet")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fastpath") / "lake"
    _dictionary_parts(DATA, folder, 3)
    return folder


@pytest.mark.parametrize("batch_size", [7, 64, None])
def test_one_pass_over_files_with_their_own_dictionaries_equals_in_memory(lake, reference, batch_size) -> None:
    seen = _Passes()
    with observe_folds(seen), open_source(str(lake / "*.parquet"), batch_size=batch_size) as source:
        design = build_streamed_design(hierfit.make_spec(FORMULA), source)
        sol = _fit(design)
    assert seen.names == ["design pass"]  # the statistics came from the cells: no second read
    assert design.cell_moments is not None and design.cell_moments.n_cells == design.cell_rows.size == 32
    _assert_same(sol, reference)


def test_large_mean_outcome_through_the_public_api(lake, reference) -> None:
    fit = hierfit.fit(FORMULA, str(lake / "*.parquet"), engine="mixed", batch_size=50)
    _assert_same(fit.native(), reference)
    assert float(fit.fixed_effects()["estimate"].iloc[0]) == pytest.approx(1e8, rel=1e-6)


def test_both_paths_give_the_same_statistics(reference) -> None:
    table = pa.Table.from_pandas(DATA, preserve_index=False)
    with open_source(table, batch_size=37) as source:
        design = build_streamed_design(hierfit.make_spec(FORMULA), source)
        seen = _Passes()
        with observe_folds(seen):
            two_pass = _fit(dataclasses.replace(design, cell_moments=None))
        assert seen.names == ["statistics pass"]
        one_pass = _fit(design)
    _assert_same(one_pass, two_pass)
    _assert_same(one_pass, reference)


def test_weights_and_a_categorical_variable_keep_the_passes_they_need() -> None:
    df = DATA.assign(w=np.random.default_rng(5).uniform(0.5, 2.0, len(DATA)),
                     channel=np.random.default_rng(6).choice(["a", "b", "c"], len(DATA)))
    table = pa.Table.from_pandas(df, preserve_index=False)
    for formula, kw, expected in [
        (FORMULA, {"weights": "w"}, ["design pass", "statistics pass"]),  # weighted cells: not gathered
        ("y ~ x1 + channel + (1 + x1 | market) + (1 | market:submarket)", {}, ["design pass", "moments pass"]),
    ]:
        seen = _Passes()
        with observe_folds(seen):
            streamed = hierfit.fit(formula, table, engine="mixed", batch_size=40, **kw)
        assert seen.names == expected
        _assert_same(streamed.native(), hierfit.fit(formula, df, engine="mixed", **kw).native())


def test_too_many_cells_falls_back_to_the_statistics_pass(monkeypatch, reference) -> None:
    monkeypatch.setattr(passes, "MAX_CELL_VALUES", 100)
    with open_source(pa.Table.from_pandas(DATA, preserve_index=False), batch_size=30) as source:
        design = build_streamed_design(hierfit.make_spec(FORMULA), source)
        assert design.cell_moments is None
        _assert_same(_fit(design), reference)


def test_cell_summaries_merge_in_any_order() -> None:
    spec = hierfit.make_spec(FORMULA)
    with open_source(pa.Table.from_pandas(DATA.iloc[:10], preserve_index=False)) as source:
        encoding = build_streamed_design(spec, source).encoding
    task = DesignPass(("market", "submarket"), encoding=encoding, per_cell=True)
    parts = [task(Batch(DATA.iloc[i:i + 45], f"rows {i}", 0)) for i in range(0, len(DATA), 45)]
    a, b = merge_summaries(parts), merge_summaries(parts[::-1][:2] + [merge_summaries(parts[::-1][2:])])
    pd.testing.assert_frame_equal(a.cells.drop(columns="__first__"), b.cells.drop(columns="__first__"))
    assert a.cell_moments is not None and b.cell_moments is not None
    # the origins differ with the order; the means about them do not
    ma, mb = a.cell_moments, b.cell_moments
    assert _rel(ma.origin + ma.mean, mb.origin + mb.mean) < 1e-15
    for name in ("count", "m2"):
        assert _rel(getattr(ma, name), getattr(mb, name)) < 1e-12, name
    # and they are the moments of each cell's rows, computed directly
    first = a.cells.iloc[0]
    rows = DATA[(DATA["market"] == first["market"]) & (DATA["submarket"] == first["submarket"])]
    assert int(first[ROWS]) == len(rows)
    direct = CellMoments.of(rows[["x1", "y"]].to_numpy(), np.zeros(len(rows), dtype=np.int64), 1)
    y_col = 3  # [Intercept, x1, x2, y, market: Intercept, x1, submarket: Intercept]
    got = a.cell_moments.full_m2()[0]
    assert got[y_col, y_col] == pytest.approx(direct.full_m2()[0][1, 1], rel=1e-12)
    assert got[1, y_col] == pytest.approx(direct.full_m2()[0][0, 1], rel=1e-12)
    assert a.cell_moments.origin[y_col] + a.cell_moments.mean[0, y_col] == pytest.approx(rows["y"].mean(), rel=1e-15)


@pytest.mark.parametrize("seed", [0, 1])
def test_cell_moments_kernel_is_the_numpy_path_bit_for_bit(seed: int) -> None:
    """The compiled per-cell kernel does the numpy path's operations in its order (sums in row
    order, no fused multiply-add), so the moments are identical, not merely close -- also for
    a column of mean 1e8, a repeated column and a constant one."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    n, m = 5_000, 37
    arrays = [rng.normal(size=n), rng.normal(loc=1e8, size=n), np.round(rng.normal(size=n), 1)]
    cell = rng.integers(0, m, n)
    source = [1.0, 0, 1, 2, 0, 2]
    a = CellMoments.of_columns(arrays, source, cell, m, use_numba=True)
    b = CellMoments.of_columns(arrays, source, cell, m, use_numba=False)
    for name in ("origin", "count", "mean", "m2", "lo", "hi"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # and both are the cells' moments: cell 0's co-moment of the mean-1e8 column, two-pass
    rows = cell == 0
    x = arrays[1][rows]
    iu, ju = np.triu_indices(len(source))
    k = int(np.flatnonzero((iu == 2) & (ju == 2))[0])
    assert a.m2[0, k] == pytest.approx(float(np.sum((x - x.mean()) ** 2)), rel=1e-9)


def test_cell_merge_kernel_is_the_numpy_path_bit_for_bit(monkeypatch) -> None:
    """Merging aligned cells with the compiled kernel gives numpy's numbers exactly, and both
    are each cell's moments -- with a column that is constant in each part at a different value
    (it varies only between the parts) and an intercept (constant everywhere: no co-moments)."""
    pytest.importorskip("numba")
    from hierfit.design import moments

    rng = np.random.default_rng(3)
    m, sizes = 11, (400, 300, 500)
    parts, rows = [], []
    for k, n in enumerate(sizes):
        x = rng.normal(loc=1e6, size=n)
        C = np.column_stack([np.ones(n), x, np.full(n, 5.0 + 2 * k), rng.normal(size=n)])
        cell = np.r_[np.arange(m), rng.integers(0, m, n - m)]  # every part holds every cell
        parts.append(CellMoments.of(C, cell, m))
        rows.append((C, cell))
    index = [np.arange(m)] * len(parts)
    compiled = CellMoments.combine(parts, index, m)
    monkeypatch.setattr(moments, "_add_comoments", None)
    plain = CellMoments.combine(parts, index, m)
    for name in ("origin", "count", "mean", "m2", "lo", "hi"):
        assert np.array_equal(getattr(compiled, name), getattr(plain, name)), name
    C = np.concatenate([r[0] for r in rows])
    cell = np.concatenate([r[1] for r in rows])
    for c in (0, 7):
        direct = np.cov(C[cell == c].T, bias=True) * np.sum(cell == c)
        assert np.allclose(compiled.full_m2()[c], direct, rtol=1e-9, atol=1e-9), c
        assert compiled.full_m2()[c][0].tolist() == [0.0] * 4  # the intercept's row stays exactly 0
    assert np.allclose(compiled.origin + compiled.mean, [C[cell == c].mean(axis=0) for c in range(m)], rtol=1e-13)


@pytest.mark.parametrize("full", [True, False])
def test_cell_codes_kernel_is_the_numpy_path(monkeypatch, full: bool) -> None:
    pytest.importorskip("numba")
    rng = np.random.default_rng(4)
    n = 2_000
    a = rng.integers(0, 30, n).astype(np.int8)
    b = rng.integers(0, 7 if full else 900, n).astype(np.int16)
    rank = rng.permutation(30)  # the first column's categories unsorted: its codes re-ranked
    compiled = passes._dense_cells([a, b], [30, 7 if full else 900], [rank, None])
    monkeypatch.setattr(passes, "_fold_digit", None)
    plain = passes._dense_cells([a, b], [30, 7 if full else 900], [rank, None])
    assert compiled is not None and plain is not None
    assert np.array_equal(compiled[0], plain[0]) and np.array_equal(compiled[2], plain[2])
    assert all(np.array_equal(x, y) for x, y in zip(compiled[1], plain[1]))
    # the cells are the distinct pairs in lexicographic order, with their rows
    pairs = sorted(set(zip(rank[a].tolist(), b.tolist())))
    assert [tuple(map(int, t)) for t in zip(*compiled[1])] == pairs
    assert int(compiled[2].sum()) == n


def test_label_categoricals_follow_each_batch_dictionary() -> None:
    """Batches of a piece may carry different dictionaries (unsorted, with nulls): each batch's
    categorical holds its own labels, whatever the previous batch's dictionary was, and the
    cells rank them by value."""
    from hierfit.design.sources.arrow import LabelCategoricals

    labels = LabelCategoricals()
    first = labels.categorical("g", pa.array(["Sub_2", "Sub_10", None, "Sub_2"]).dictionary_encode())
    assert list(first.categories) == ["Sub_2", "Sub_10"] and first.codes.tolist() == [0, 1, -1, 0]
    again = labels.categorical("g", pa.array(["Sub_2", "Sub_10"]).dictionary_encode())
    assert again.dtype is first.dtype  # the same dictionary: the same categories, made once
    other = labels.categorical("g", pa.array(["b", "a", "c", "a"]).dictionary_encode())
    assert np.asarray(other).tolist() == ["b", "a", "c", "a"]
    codes, rank, uniques = passes._label_codes(pd.Series(other, name="g"), {})
    assert uniques.tolist() == ["a", "b", "c"] and rank[codes].tolist() == [1, 0, 2, 0]
    # a pass over two such batches finds the cells sorted by label
    task = DesignPass(("g",), labels=("g",))
    frames = [pd.DataFrame({"g": labels.categorical("g", pa.array(v).dictionary_encode())})
              for v in (["Sub_2", "Sub_10", "Sub_2"], ["b", "Sub_2", "a"])]
    merged = merge_summaries([task(Batch(f, "rows", 0)) for f in frames])
    assert merged.cells["g"].tolist() == ["Sub_10", "Sub_2", "a", "b"]
    assert merged.cells[ROWS].tolist() == [1, 3, 1, 1]


def test_missing_label_is_refused_with_its_count() -> None:
    df = DATA.copy()
    df.loc[[3, 9], "submarket"] = None
    with pytest.raises(hierfit.exceptions.DataError, match=r"'submarket' has 2 missing labels .*drop those rows"):
        hierfit.fit(FORMULA, pa.Table.from_pandas(df, preserve_index=False), engine="mixed", batch_size=1000)


@pytest.mark.parametrize(("formula", "mean"), [
    # the outcome is y - offset. (At mean 1e8 the in-memory fit rounds y - offset row by row,
    # ~1e-8 absolute each, which the cells' exact moments do not: they agree to ~3e-10 there.)
    ("y ~ x1 + offset(exposure) + (1 + x1 || market/submarket)", 1e3),
    ("y ~ 0 + x1 + x2 + (1 | market:submarket)", 0.0),  # no constant in X: the outcome is only scaled
])
@pytest.mark.filterwarnings("ignore::hierfit.exceptions.FitWarning")  # a singular fit, the same in both
def test_offset_and_no_intercept_on_the_one_pass_path(formula, mean) -> None:
    df = DATA.assign(exposure=np.random.default_rng(8).normal(loc=5.0, size=len(DATA)), y=DATA["y"] - 1e8 + mean)
    seen = _Passes()
    with observe_folds(seen):
        streamed = hierfit.fit(formula, pa.Table.from_pandas(df, preserve_index=False), engine="mixed", batch_size=90)
    assert seen.names == ["design pass"]
    _assert_same(streamed.native(), hierfit.fit(formula, df, engine="mixed").native())


# -- the direct read of plain formulas (hierfit.design.direct): the same numbers as formulaic --

_PLAIN = [
    FORMULA,
    "y ~ 0 + x1 + x2 + (1 | market:submarket)",
    "y ~ x1 + offset(exposure) + (1 + x1 + n | market)",  # an offset, an integer slope column
    "y ~ n + x2 + (0 + x2 | submarket)",  # an integer population column
]


def _arrow_variants(df: pd.DataFrame) -> dict[str, object]:
    """The same rows with plain string, dictionary-encoded and integer grouping columns."""
    plain = pa.Table.from_pandas(df, preserve_index=False)
    coded = plain
    for c in ("market", "submarket"):
        i = coded.schema.get_field_index(c)
        coded = coded.set_column(i, c, coded.column(c).dictionary_encode())
    numbered = df.assign(market=df["market"].str[-2:].astype(int))
    return {"string": plain, "dictionary": coded, "integer": pa.Table.from_pandas(numbered, preserve_index=False)}


def _summaries(formula: str, table, *, direct: bool, per_cell: bool = True, batch_size: int = 61):
    spec = hierfit.make_spec(formula)
    with open_source(table, batch_size=batch_size) as source:
        encoding = build_streamed_design(spec, source).encoding
        grouping = tuple(dict.fromkeys(c for f in spec.formula.factors for c in f.columns))
        task = DesignPass(grouping, encoding=encoding, labels=("submarket",), per_cell=per_cell, direct=direct)
        return task, source.fold(task, merge_summaries, list(table.column_names), what="test")


_EXTRA = {"exposure": np.random.default_rng(9).normal(loc=5.0, size=len(DATA)),
          "n": np.random.default_rng(10).integers(0, 7, len(DATA))}


@pytest.mark.parametrize("formula", _PLAIN)
@pytest.mark.parametrize("labels", ["string", "dictionary", "integer"])
def test_direct_read_equals_formulaic_bit_for_bit(formula, labels) -> None:
    table = _arrow_variants(DATA.assign(**_EXTRA))[labels]
    fast_task, fast = _summaries(formula, table, direct=True)
    slow_task, slow = _summaries(formula, table, direct=False)
    assert fast_task._plan is not None and slow_task._plan is None
    pd.testing.assert_frame_equal(fast.cells, slow.cells)
    for name in ("origin", "count", "mean", "m2", "lo", "hi"):
        assert np.array_equal(getattr(fast.cell_moments, name), getattr(slow.cell_moments, name)), name
    # without cells (prior weights, too many cells): the overall moments, from the same matrix
    _, fast_all = _summaries(formula, table, direct=True, per_cell=False)
    _, slow_all = _summaries(formula, table, direct=False, per_cell=False)
    for name in ("n", "mean", "m2", "lo", "hi"):
        assert np.array_equal(getattr(fast_all.moments, name), getattr(slow_all.moments, name)), name


def test_direct_columns_are_the_formulaic_model_columns() -> None:
    from hierfit.design.direct import direct_columns

    task, _ = _summaries(_PLAIN[2], _arrow_variants(DATA.assign(**_EXTRA))["string"], direct=True)
    frame = DATA.assign(**_EXTRA).iloc[:50]
    direct = direct_columns(task._plan, task.encoding, frame)
    assert direct is not None and direct.has_offset
    C, has_offset = passes.model_columns(task.encoding, frame)
    assert has_offset and np.array_equal(direct.matrix(), C)
    # [Intercept, x1, y, offset, market: Intercept, x1, n]: x1 is read once, the intercepts are constants
    assert direct.source == (1.0, 0, 1, 2, 1.0, 0, 3)
    assert np.shares_memory(direct.arrays[0], frame["x1"].to_numpy())  # float64: no copy


@pytest.mark.parametrize("formula", [
    "y ~ center(x1) + (1 | market)",  # a stateful transform
    "y ~ x1:x2 + (1 | market)",  # an interaction
    "y ~ I(2 * x1) + (1 | market)",  # arithmetic
    "y ~ x1 + channel + (1 | market)",  # a categorical variable
    "y ~ x1 * x2 + (1 | market)",
])
def test_other_formulas_keep_the_formulaic_path(formula) -> None:
    df = DATA.assign(channel=np.random.default_rng(6).choice(["a", "b"], len(DATA)))
    task, fast = _summaries(formula, pa.Table.from_pandas(df, preserve_index=False), direct=True)
    assert task._plan is None
    _, slow = _summaries(formula, pa.Table.from_pandas(df, preserve_index=False), direct=False)
    assert np.array_equal(fast.cell_moments.m2, slow.cell_moments.m2)


@pytest.mark.parametrize(("column", "value", "message"), [
    ("x1", None, r"1 of 61 rows have missing values in columns the model uses: x1 \(1\)"),
    ("y", np.inf, r"Column 'y' has 1 infinite value \(\+inf; rows 5\)"),
])
def test_a_batch_with_a_missing_or_infinite_value_falls_back_with_the_same_error(column, value, message) -> None:
    spec = hierfit.make_spec(FORMULA)
    with open_source(pa.Table.from_pandas(DATA, preserve_index=False)) as source:
        encoding = build_streamed_design(spec, source).encoding
    frame = DATA.iloc[:61].copy()
    frame.loc[5, column] = value
    errors = []
    for direct in (True, False):
        task = DesignPass(("market", "submarket"), encoding=encoding, per_cell=True, direct=direct)
        assert (task._plan is not None) == direct
        with pytest.raises(hierfit.exceptions.DataError, match=message) as info:
            task(Batch(frame, "rows 0-60", 0))
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    # and through the public API, from a table with an Arrow null
    table = pa.Table.from_pandas(DATA.assign(x1=DATA["x1"].where(DATA.index != 7)), preserve_index=False)
    with pytest.raises(hierfit.exceptions.DataError, match=r"missing values in columns the model uses: x1 \(1\)"):
        hierfit.fit(FORMULA, table, engine="mixed", batch_size=50)


def test_nullable_and_boolean_columns_take_the_formulaic_path() -> None:
    from hierfit.design.direct import direct_columns

    task, _ = _summaries(FORMULA, pa.Table.from_pandas(DATA, preserve_index=False), direct=True)
    frame = DATA.iloc[:20]
    assert direct_columns(task._plan, task.encoding, frame) is not None
    assert direct_columns(task._plan, task.encoding, frame.astype({"x2": "Float64"})) is None
    assert direct_columns(task._plan, task.encoding, frame.assign(x2=frame["x2"] > 0)) is None
    # a missing column: the formulaic path's own error, not a silent fallback
    with pytest.raises(hierfit.exceptions.DataError, match="predictor column 'x2' is not in the data"):
        direct_columns(task._plan, task.encoding, frame.drop(columns="x2"))


def test_the_one_pass_fit_over_dictionary_files_is_the_same_either_way(lake, monkeypatch) -> None:
    spec = hierfit.make_spec(FORMULA)
    with open_source(str(lake / "*.parquet"), batch_size=45) as source:
        fast = build_streamed_design(spec, source)
        monkeypatch.setattr(passes, "direct_plan", lambda encoding: None)
        slow = build_streamed_design(spec, source)
    for name in ("origin", "count", "mean", "m2", "lo", "hi"):
        assert np.array_equal(getattr(fast.cell_moments, name), getattr(slow.cell_moments, name)), name
    a, b = _fit(fast), _fit(slow)
    for name in ("beta", "theta", "sigma", "loglik"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_batches_summarised_at_once_follow_the_thread_budget_and_dask_tasks_take_one(monkeypatch) -> None:
    """A pass summarises two batches at once where it has the cores, one inside a compare fold
    given a single thread, and one per Dask task (a worker's threads are its tasks)."""
    dd = pytest.importorskip("dask.dataframe")
    from hierfit.design.sources import runner
    from hierfit.threads import available_cores, limit_threads

    task = DesignPass(("market", "submarket"))
    assert runner.batch_threads(task) == min(2, available_cores())
    with limit_threads(1):
        assert runner.batch_threads(task) == 1
    seen: list[int] = []
    plain = runner._summaries

    def spy(batches, summarise, threads):  # type: ignore[no-untyped-def]
        seen.append(threads)
        return plain(batches, summarise, threads)

    monkeypatch.setattr(runner, "_summaries", spy)
    with open_source(dd.from_pandas(DATA, npartitions=3), batch_size=50) as source:  # Dask's local scheduler
        merged = source.fold(task, merge_summaries, ["market", "submarket"])
    assert seen == [1, 1, 1] and merged is not None and merged.n == len(DATA)
