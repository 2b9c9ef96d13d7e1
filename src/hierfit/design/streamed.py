"""build_streamed_design(): the design of rows that stay in their source, built in one or two passes.

The in-memory :func:`~hierfit.design.build_design` holds every row's arrays; a
:class:`StreamedDesign` holds what a gaussian mixed model needs of them and nothing per row:

1. From the source's schema alone: the columns the model uses (every Parquet file is checked
   for them), and which population variables are categorical.
2. A pass over the batches (:mod:`.passes`), merged: the cells (distinct combinations of the
   grouping columns, with row counts) and the distinct values of categorical variables.
   The tree of groups is built from the cells by the same :func:`build_hierarchy` as in
   memory -- groups are sorted labels, so neither batching nor row order can change them --
   and a child under two parents is named with the files (or partitions) it was seen in.
3. The population encoding, learned from those values (formulaic, as in memory), and the
   moments of the model's columns ``[X, y, offset, Z]`` (a second pass, only when there are
   categorical variables: otherwise the encoding is known from the schema and step 2 gathers
   them too). The rank check, the outcome check and the variance partition read the moments.

Without prior weights, the moments pass gathers the moments per cell too (``cell_moments``):
the mixed engine derives its per-group statistics from them and reads the source no more
(:mod:`hierfit.engines.mixed._stream`); other engines, and weighted fits, read the source again
with the encoding. Other families get the design of their gaussian twin (nothing here reads the
outcome's support); the engine reads the outcome with the family.

The state of stateful transforms (``center(x)``, ``scale(x)``, ``bs(x, df=4)``: a mean,
spline knots) is learned from the source first, in passes of its own
(:mod:`.transform_state`), so that every batch, and new data later, are encoded as in memory;
those it cannot learn exactly are refused with what to do instead.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from formulaic import Formula

from hierfit.checks import Diagnostic, apply_severities, resolve_severities
from hierfit.design.build import (
    Design,
    DesignEncoding,
    _fit_population_matrix,
    _population_variables,
    _used_columns,
)
from hierfit.design.hierarchy import Hierarchy, build_hierarchy, group_labels
from hierfit.design.moments import CellMoments, ColumnMoments
from hierfit.design.outcome import check_enough_rows, degenerate_outcome_check
from hierfit.design.passes import FIRST, ROWS, DesignPass, DesignSummary, label_columns, merge_summaries
from hierfit.design.rank import centred_gram, rank_check_gram
from hierfit.design.sources import Source, TrainingRowsUnavailableError
from hierfit.design.transform_state import learn_transform_state, placeholder_rows, with_transform_state
from hierfit.exceptions import DataError, HierarchyError, SpecError
from hierfit.formula import GroupTerm
from hierfit.model import ModelSpec
from hierfit.model.family import get_family

__all__ = ["MomentLayout", "StreamedDesign", "TermShape", "build_streamed_design", "encode_batch", "stream_labels"]


@dataclass(frozen=True)
class MomentLayout:
    """Where each part of ``[X, y, offset, Z_1, ..., Z_T]`` sits among the moments' columns."""

    x: tuple[int, ...]
    y: int
    offset: int | None
    terms: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, eq=False)
class TermShape:
    """A group-level term of a streamed design: its structure, without per-row columns."""

    term: GroupTerm
    source: str

    @property
    def level(self) -> str:
        return self.term.level

    @property
    def coefficients(self) -> tuple[str, ...]:
        return self.term.coefficients

    @property
    def k(self) -> int:
        return len(self.term.coefficients)

    def column_names(self) -> list[str]:
        return [f"{self.level}[{c}]" for c in self.coefficients]

    @property
    def Z(self) -> np.ndarray:
        raise _rows_unavailable(self.source, f"the {self.level!r} term's model columns (Z)")


def _rows_unavailable(source: str, what: str) -> TrainingRowsUnavailableError:
    return TrainingRowsUnavailableError(
        f"This design was streamed from {source}: its rows were never held in memory, so {what} over the training rows "
        "are not available (fitted values, residuals and the model matrices need every row). Compute them batch by "
        "batch with predict()/decompose() on the rows you need, or fit a pandas DataFrame that fits in memory."
    )


@dataclass(frozen=True, eq=False, kw_only=True)
class StreamedDesign:
    """What a gaussian mixed model needs of rows that stay in their source (see the module doc).

    Attributes
    ----------
    encoding
        The fitted encoding (population columns, tree of groups): new rows are built with it.
    x_names
        Population-level columns used (after any dropped as collinear).
    terms
        Group-level terms (structure only).
    n_rows
        Rows in the source.
    column_moments, layout
        Moments of ``[X, y, offset, Z]`` over all rows, and where each part sits in them.
    cell_codes, cell_rows
        Per level, the group of each distinct combination of the grouping columns, and the
        rows of each combination (an engine finds nesting and plans its elimination from them).
    cell_moments
        The moments of ``[X, y, offset, Z]`` in each of those combinations (aligned with
        ``cell_rows``), from which the mixed engine derives its per-group statistics without
        reading the source again; ``None`` when not gathered (prior weights, too many cells).
    positive_weights
        Rows with a positive prior weight (all rows without weights).
    source
        The source, for the engine's own passes; ``read_columns`` are the columns they read.
    diagnostics
        Findings of the design checks.
    """

    encoding: DesignEncoding
    x_names: tuple[str, ...]
    terms: tuple[TermShape, ...]
    n_rows: int
    column_moments: ColumnMoments
    layout: MomentLayout
    cell_codes: dict[str, np.ndarray]
    cell_rows: np.ndarray
    positive_weights: int
    source: Source
    read_columns: tuple[str, ...]
    diagnostics: tuple[Diagnostic, ...] = field(default=())
    cell_moments: CellMoments | None = None

    @property
    def spec(self) -> ModelSpec:
        return self.encoding.spec

    @property
    def hierarchy(self) -> Hierarchy:
        return self.encoding.hierarchy

    @property
    def n(self) -> int:
        return self.n_rows

    def _unavailable(self, what: str) -> TrainingRowsUnavailableError:
        return _rows_unavailable(self.source.description, what)

    @property
    def X(self) -> np.ndarray:
        raise self._unavailable("the population model matrix (X)")

    @property
    def y(self) -> np.ndarray:
        raise self._unavailable("the outcome values")

    @property
    def group_index(self) -> dict[str, np.ndarray]:
        raise self._unavailable("the rows' group indices")


def _probe_frame(schema: pd.DataFrame) -> pd.DataFrame:
    """One row of placeholder values with the source's dtypes: enough for formulaic to tell a
    categorical variable from a numeric one and to name the columns a stateless formula makes."""
    values = {}
    for col in schema.columns:
        dtype = schema[col].dtype
        if pd.api.types.is_bool_dtype(dtype):
            value: object = True
        elif pd.api.types.is_numeric_dtype(dtype):
            value = 1
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            value = pd.Timestamp(0)
        else:
            value = "a"
        values[col] = pd.Series([value], dtype=None if isinstance(dtype, pd.CategoricalDtype) else dtype)
    return pd.DataFrame(values)


def _population_encoding(spec: ModelSpec, frame: pd.DataFrame,
                         state: Mapping[str, Mapping[str, object]] | None = None) -> tuple[tuple[str, ...], object]:
    """The population columns and formulaic spec, built on placeholder rows; ``state`` (learned
    from the source by :func:`learn_transform_state`) replaces what transforms learned from them."""
    formula = Formula(spec.formula.population)
    variables = [c for c in frame.columns if c in _population_variables(formula, frame)]
    frame = placeholder_rows(frame[variables], spec.formula.population)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # placeholder values may be outside a transform's domain
        _, names, population_spec = _fit_population_matrix(formula, frame[variables])
    return names, with_transform_state(population_spec, state or {})


def _categorical_variables(spec: ModelSpec, population_spec: object, columns: list[str]) -> tuple[str, ...]:
    """Variables of the categorical factors, refusing a term that reads several columns.

    (Stateful transforms are learned, or refused, before: :func:`learn_transform_state`.)
    """
    ps: object = population_spec
    found: list[str] = []
    for expr, (kind, _) in getattr(ps, "encoder_state", {}).items():
        if getattr(kind, "value", kind) != "categorical":
            continue
        variables = [c for c in columns if re.search(rf"(?<![\w.]){re.escape(c)}(?![\w])", str(expr))]
        if len(variables) != 1:
            raise SpecError(
                f"The categorical term {expr!r} reads {len(variables)} columns ({', '.join(variables)}); a streamed fit learns "
                "the categories of one column at a time. Combine those columns into one first."
            )
        found.extend(v for v in variables if v not in found)
    return tuple(found)


def _prototype(probe: pd.DataFrame, levels: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A frame holding every category once (other columns at their placeholder): formulaic
    learns from it the same levels, in the same order, as from all the rows."""
    size = max([len(v) for v in levels.values()] + [1])
    frame = {c: pd.Series(np.resize(probe[c].to_numpy(), size), dtype=probe[c].dtype) for c in probe.columns}
    for c, values in levels.items():
        if len(values):
            frame[c] = pd.Series(np.resize(values, size), dtype=probe[c].dtype)
    return pd.DataFrame(frame)


def _grouping_columns(spec: ModelSpec) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for f in spec.formula.factors for c in f.columns))


def encode_batch(encoding: DesignEncoding, frame: pd.DataFrame) -> Design:
    """A batch's rows under a streamed design's encoding, for a later pass of the fit.

    Every group was found by the design pass, so a group it did not see means the source
    changed between the passes: a clear error, never rows silently dropped from the sums.
    """
    d = encoding.apply_observed(frame)
    if d.unseen:
        level, groups = next(iter(d.unseen.items()))
        raise DataError(
            f"Level {level!r} has groups the design pass did not see ({', '.join(map(repr, list(groups)[:3]))}): the "
            "source changed between the passes of the fit. Fit a source that does not change while it is read."
        )
    return d


def stream_labels(spec: ModelSpec, schema: pd.DataFrame, *, include_response: bool = True) -> tuple[str, ...]:
    """The grouping columns a pass over a source with ``schema`` may read as categoricals of their dictionary codes
    (those no other part of the model reads: :func:`~hierfit.design.passes.label_columns`)."""
    return label_columns(_grouping_columns(spec), _used_columns(spec, _probe_frame(schema), include_response=include_response))


def _check_single_parents(spec: ModelSpec, summary: DesignSummary) -> None:
    """An explicit ``hierarchy=`` makes labels identifiers: name a child found under two
    parents together with the parts of the source each pairing was first seen in."""
    if not spec.hierarchy:
        return
    factors = {f.level: f for f in spec.formula.factors}
    cells = summary.cells
    for upper, lower in zip(spec.hierarchy, spec.hierarchy[1:]):
        pairs = pd.DataFrame({"child": group_labels(cells, factors[lower]), "parent": group_labels(cells, factors[upper]),
                              FIRST: cells[FIRST].to_numpy()})
        pairs = pairs.groupby(["child", "parent"], sort=True).agg(first=(FIRST, "min")).reset_index()
        counts = pairs.groupby("child", sort=True).size()
        bad = counts[counts > 1]
        if len(bad):
            child = str(bad.index[0])
            rows = pairs[pairs["child"] == child]
            seen = ", ".join(f"{r.parent!r} in {summary.where.get(int(r.first), 'the data')}" for r in rows.itertuples())
            more = f" ({len(bad)} {lower} labels have this problem)" if len(bad) > 1 else ""
            raise HierarchyError(
                f"{lower.capitalize()} {child!r} appears under {len(rows)} {upper} groups ({seen}): each child needs exactly "
                f"one parent{more}. If equal labels under different {upper} groups are different {lower} groups, write "
                f"the term as (1 | {upper}/{lower}) and leave {lower!r} out of 'hierarchy'."
            )


def _layout(x_count: int, has_offset: bool, spec: ModelSpec) -> MomentLayout:
    y = x_count
    offset = y + 1 if has_offset else None
    start = y + (2 if has_offset else 1)
    terms = []
    for t in spec.formula.group_terms:
        k = len(t.coefficients)
        terms.append(tuple(range(start, start + k)))
        start += k
    return MomentLayout(tuple(range(x_count)), y, offset, tuple(terms))


def build_streamed_design(spec: ModelSpec, source: Source, *, checks: Mapping[str, str] | None = None) -> StreamedDesign:
    """Build the design of a streamed source (see the module docstring); no row is kept.

    Examples
    --------
    >>> import pyarrow as pa, hierfit
    >>> from hierfit.design.sources import open_source
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=1)
    >>> with open_source(pa.Table.from_pandas(sim.data), batch_size=7) as source:
    ...     d = build_streamed_design(hierfit.make_spec("y ~ x1 + (1 | market/submarket)"), source)
    >>> d.n, d.x_names, [lv.n_groups for lv in d.hierarchy.levels]
    (30, ('Intercept', 'x1'), [3, 6])
    """
    if not spec.family.normal_errors:
        # Nothing of these passes depends on the family (the tree, the encoding, the moments): the
        # design of the gaussian twin, given the spec back. The engine's own fold then reads the
        # outcome with the real family (support checked, trials read).
        twin = build_streamed_design(replace(spec, family=get_family("gaussian")), source, checks=checks)
        return replace(twin, encoding=replace(twin.encoding, spec=spec))
    probe = _probe_frame(source.schema)
    if spec.response not in probe.columns:
        raise DataError(f"The response column {spec.response!r} is not in the data source ({source.description}); its "
                        f"columns are {sorted(map(str, probe.columns))}.")
    grouping = _grouping_columns(spec)
    used = _used_columns(spec, probe, include_response=True)
    read = tuple(dict.fromkeys([*used, *grouping]))
    labels = label_columns(grouping, used)
    source.check_columns(read)
    names, population_spec = _population_encoding(spec, probe)
    state = learn_transform_state(spec.formula.population, population_spec, source)
    population_spec = with_transform_state(population_spec, state)
    categorical = _categorical_variables(spec, population_spec, [str(c) for c in probe.columns])
    national_only = Hierarchy(spec.national, ())
    if categorical:
        discovered = source.fold(DesignPass(grouping, categorical, labels=labels), merge_summaries,
                                 list(dict.fromkeys([*grouping, *categorical])),
                                 what="design pass")
        prototype = _prototype(probe, discovered.levels)
        names, population_spec = _population_encoding(spec, prototype, state)
        provisional = DesignEncoding(spec, population_spec, national_only, (), names)
        measured = source.fold(DesignPass(grouping, discover=False, encoding=provisional, labels=labels,
                                          per_cell=_per_cell(spec)), merge_summaries, read,
                               what="moments pass")
    else:
        provisional = DesignEncoding(spec, population_spec, national_only, (), names)
        discovered = measured = source.fold(DesignPass(grouping, encoding=provisional, labels=labels,
                                                       per_cell=_per_cell(spec)),
                                            merge_summaries, read, what="design pass")
    moments = measured.overall_moments()
    assert moments is not None
    # the moments pass found the cells too when it gathered their moments (aligned with them)
    cells_from = measured if measured.cell_moments is not None else discovered
    return _finish(spec, source, cells_from, moments, measured.positive_weights, names, population_spec,
                   read, checks)


def _per_cell(spec: ModelSpec) -> bool:
    """Whether the moments pass gathers per-cell moments: the mixed engine's statistics then
    need no pass of their own. Prior weights would need weighted cell moments: not gathered."""
    return spec.weights is None


def _finish(spec: ModelSpec, source: Source, discovered: DesignSummary, moments: ColumnMoments, positive: int,
            names: tuple[str, ...], population_spec: object, read: tuple[str, ...],
            checks: Mapping[str, str] | None) -> StreamedDesign:
    """The tree, the checks and the kept columns, from the merged summaries."""
    _check_single_parents(spec, discovered)
    cells = discovered.cells
    grouping = _grouping_columns(spec)
    hierarchy, cell_codes = build_hierarchy(spec, cells[list(grouping)], counts=cells[ROWS].to_numpy(dtype=np.float64))
    n = int(discovered.n)
    if spec.weights is not None and positive == 0:
        raise DataError(f"Every weight in column {spec.weights!r} is 0: no row counts.")
    layout = _layout(len(names), spec.has_offset, spec)
    severities = resolve_severities(checks)
    check_enough_rows(n, names)
    x = moments.select(layout.x)
    dropped, found = rank_check_gram(centred_gram(x.n, x.mean, x.m2, names), names, severities["rank_deficient"])
    found += degenerate_outcome_check(spec, float(moments.lo[layout.y]), float(moments.hi[layout.y]), n)
    found = apply_severities(found, severities, stacklevel=4)
    keep = tuple(j for j, nm in enumerate(names) if nm not in dropped)
    layout = MomentLayout(tuple(layout.x[j] for j in keep), layout.y, layout.offset, layout.terms)
    encoding = DesignEncoding(spec, population_spec, hierarchy, dropped, names)
    terms = tuple(TermShape(t, source.description) for t in spec.formula.group_terms)
    return StreamedDesign(encoding=encoding, x_names=tuple(names[j] for j in keep), terms=terms, n_rows=n,
                          column_moments=moments, layout=layout, cell_codes=cell_codes,
                          cell_rows=cells[ROWS].to_numpy(dtype=np.int64), positive_weights=positive, source=source,
                          read_columns=read, diagnostics=tuple(found), cell_moments=discovered.cell_moments)
