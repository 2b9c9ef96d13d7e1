"""build_design(): the numbers an engine needs, built from a spec and a data frame.

The :class:`DesignEncoding` kept on every design rebuilds the same columns for new data
(categorical levels, group vocabularies); groups it has not seen get index ``-1`` and the
prediction falls back to their deepest known ancestor.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic import Formula

from hierfit.checks import Diagnostic, apply_severities, resolve_severities
from hierfit.design.hierarchy import Hierarchy, build_hierarchy, factorize_factor
from hierfit.design.columns import expression_variables, offset_vector, trials_vector, weights_vector
from hierfit.design.outcome import check_enough_rows, outcome_checks, zero_trials_check
from hierfit.design.rank import rank_check
from hierfit.exceptions import DataError, SpecError
from hierfit.formula import INTERCEPT, GroupTerm
from hierfit.model import ModelSpec

NATIONAL_LEVEL = "national"


@dataclass(frozen=True, eq=False)
class TermDesign:
    """One group-level term's model columns: ``Z[:, j]`` multiplies coefficient ``j``."""

    term: GroupTerm
    Z: np.ndarray

    @property
    def level(self) -> str:
        return self.term.level

    @property
    def coefficients(self) -> tuple[str, ...]:
        return self.term.coefficients

    def column_names(self) -> list[str]:
        """Contribution column names, e.g. ``market[Intercept]``, ``market[x1]``."""
        return [f"{self.level}[{c}]" for c in self.coefficients]


@dataclass(frozen=True, eq=False, kw_only=True)
class RowDesign:
    """The arrays of some rows, built with a fitted encoding: what prediction needs.

    Attributes
    ----------
    X, x_names
        Population-level model matrix and its column names (``Intercept`` first if present).
    group_index
        Per level, each row's group index in ``hierarchy.level(name).groups``; ``-1`` = unseen.
    terms
        Group-level terms with their ``Z`` columns, in formula order.
    encoding
        How these arrays were built; it owns the tree of groups (:attr:`hierarchy`).
    unseen
        Per level, the labels not seen in fitting and their row counts.
    trials
        Binomial trials per row (``None``: one per row, or a family without trials).
    offset
        A known part of the linear predictor per row (``None``: zero).
    """

    X: np.ndarray
    x_names: tuple[str, ...]
    group_index: dict[str, np.ndarray]
    terms: tuple[TermDesign, ...]
    encoding: DesignEncoding
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)
    trials: np.ndarray | None = None
    offset: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def spec(self) -> ModelSpec:
        return self.encoding.spec

    @property
    def hierarchy(self) -> Hierarchy:
        """The tree as seen in the *fitting* data (one object, shared by every design and fit)."""
        return self.encoding.hierarchy

    def level_used(self) -> np.ndarray:
        """Per row, the deepest level(s) whose group is known (``"national"`` if none).

        Several independent trees (crossed factors) are joined with ``+``.
        """
        known = {name: idx >= 0 for name, idx in self.group_index.items()}
        used = np.full(self.n, "", dtype=object)
        for lv in self.hierarchy.levels:
            kids = self.hierarchy.children(lv.name)
            leafmost = known[lv.name].copy()
            for kid in kids:
                leafmost &= ~known[kid]
            sep = np.where(used == "", "", "+")
            used = np.where(leafmost, used + sep + lv.name, used)
        return np.where(used == "", NATIONAL_LEVEL, used)

    def contribution_columns(self) -> list[str]:
        """Names of the decomposition columns for this design's spec."""
        cols = [NATIONAL_LEVEL]
        for t in self.terms:
            cols.extend(t.column_names())
        cols.append("population")
        return cols


@dataclass(frozen=True, eq=False, kw_only=True)
class Design(RowDesign):
    """A fitting design: the rows' arrays with their outcome and prior weights.

    Attributes
    ----------
    y
        The outcome (successes for a binomial family).
    weights
        Prior weights per row (``None``: all one), as lme4's ``weights``.
    diagnostics
        Named checks found while building it (e.g. dropped collinear columns).
    """

    y: np.ndarray
    weights: np.ndarray | None = None
    diagnostics: tuple[Diagnostic, ...] = ()


@dataclass(frozen=True, eq=False)
class RowColumns:
    """The per-row arrays that do not depend on the tree of groups (see :meth:`DesignEncoding.columns`).

    ``y`` and ``trials`` are ``None`` for rows without their outcome.
    """

    X: np.ndarray
    x_names: tuple[str, ...]
    terms: tuple[TermDesign, ...]
    offset: np.ndarray | None = None
    y: np.ndarray | None = None
    trials: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0]


@dataclass(frozen=True, eq=False)
class DesignEncoding:
    """Everything needed to rebuild a design for new data.

    ``dropped`` lists population columns left out of the fit (collinear, by the
    ``rank_deficient`` check); new data leave them out the same way. ``population_columns``
    are the columns the population part built in fitting (before dropping): new data must
    build exactly these, or the encoding refuses them rather than misalign coefficients.
    """

    spec: ModelSpec
    population_spec: object  # formulaic ModelSpec
    hierarchy: Hierarchy
    dropped: tuple[str, ...] = ()
    population_columns: tuple[str, ...] | None = None

    def apply(self, data: pd.DataFrame) -> RowDesign:
        """Build the design of new rows with the fitted encoding (the outcome is not needed).

        Groups not seen in fitting get index -1 (recorded in ``RowDesign.unseen``).
        """
        return self._build(data, observed=False)

    def apply_observed(self, data: pd.DataFrame) -> Design:
        """Like :meth:`apply` for rows with their outcome (scoring, predictive checks)."""
        design = self._build(data, observed=True)
        assert isinstance(design, Design)
        return design

    def columns(self, data: pd.DataFrame, *, observed: bool) -> RowColumns:
        """The arrays of some rows that do not depend on the tree of groups, checked.

        What a streamed design pass reads from each batch before the tree is known
        (:mod:`hierfit.design.streamed`); :meth:`apply` adds the group indices.
        """
        _check_frame(data)
        spec = self.spec
        if observed and spec.response not in data.columns:
            raise DataError(_missing_column_message(spec.response, data, "response"))
        used = _used_columns(spec, data, include_response=observed)
        _check_missing_values(data, used)
        _check_finite(data, used)
        X, names = _population_matrix(self.population_spec, data)
        if self.population_columns is not None and names != self.population_columns:
            raise DataError(
                f"The population part built columns {list(names)} for these data, but the model was fitted on "
                f"{list(self.population_columns)}. Give the data the same columns and categories as in fitting."
            )
        _check_finite_matrix(X, names, data.index)
        X, names = _drop_columns(X, names, self.dropped)
        terms = tuple(TermDesign(t, _term_columns(t, data)) for t in spec.formula.group_terms)
        offset = offset_vector(spec, data)
        if not observed:
            return RowColumns(X, names, terms, offset)
        y = _response(spec, data)
        trials = trials_vector(spec, data, y)
        spec.family.check_outcome(y, spec.response, trials)
        return RowColumns(X, names, terms, offset, y, trials)

    def _build(self, data: pd.DataFrame, *, observed: bool) -> RowDesign:
        cols = self.columns(data, observed=observed)
        X, names = cols.X, cols.x_names
        group_index: dict[str, np.ndarray] = {}
        unseen: dict[str, dict[str, int]] = {}
        for lv in self.hierarchy.levels:
            codes, labels = factorize_factor(data, lv.factor)
            idx = pd.Index(lv.groups).get_indexer(labels).astype(np.int64)[codes]
            if lv.parent is not None and lv.parent_index is not None:
                # A known child listed under another parent than in fitting is not the same group.
                parent_idx = group_index[lv.parent]
                ok = idx >= 0
                moved = ok & (lv.parent_index[np.where(ok, idx, 0)] != parent_idx)
                idx[moved] = -1
            group_index[lv.name] = idx
            if (idx < 0).any():
                counts = np.bincount(codes[idx < 0], minlength=len(labels))
                unseen[lv.name] = {labels[g]: int(counts[g]) for g in np.argsort(-counts, kind="stable") if counts[g]}
        if observed:
            assert cols.y is not None
            return Design(X=X, x_names=names, group_index=group_index, terms=cols.terms, encoding=self, unseen=unseen,
                          y=cols.y, trials=cols.trials, offset=cols.offset)
        return RowDesign(X=X, x_names=names, group_index=group_index, terms=cols.terms, encoding=self, unseen=unseen,
                         offset=cols.offset)


def build_design(spec: ModelSpec, data: pd.DataFrame, *, checks: Mapping[str, str] | None = None) -> Design:
    """Build the fitting design: checks the data, builds the tree and all arrays.

    ``checks`` sets the severity of the checks made here (see :mod:`hierfit.checks`):
    ``rank_deficient`` (collinear population columns: ``"error"`` by default; ``"warn"`` or
    ``"ignore"`` drop the later of the dependent columns, as lme4's ``check.rankX``).

    Examples
    --------
    >>> import hierfit
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=1)
    >>> spec = hierfit.make_spec("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)")
    >>> d = build_design(spec, sim.data)
    >>> d.X.shape, d.x_names, [t.level for t in d.terms]
    ((30, 3), ('Intercept', 'x1', 'x2'), ['market', 'submarket'])
    """
    _check_frame(data)
    if spec.response not in data.columns:
        raise DataError(_missing_column_message(spec.response, data, "response"))
    used = _used_columns(spec, data, include_response=True)
    _check_missing_values(data, used)
    _check_finite(data, used)
    y = _response(spec, data)
    trials = trials_vector(spec, data, y)
    spec.family.check_outcome(y, spec.response, trials)
    offset = offset_vector(spec, data)
    weights = weights_vector(spec, data)
    formula = Formula(spec.formula.population)
    # formulaic only needs the population columns; handing it the whole frame costs seconds at 5M rows
    population_columns = [c for c in data.columns if c in _population_variables(formula, data)]
    X, names, population_spec = _fit_population_matrix(formula, data[population_columns])
    _check_finite_matrix(X, names, data.index)
    all_names = names
    severities = resolve_severities(checks)
    check_enough_rows(len(y), names)
    dropped, found = rank_check(X, names, severities["rank_deficient"])
    found += outcome_checks(spec, y, trials, X, names)
    found += zero_trials_check(trials, data.index)
    found = apply_severities(found, severities, stacklevel=3)
    X, names = _drop_columns(X, names, dropped)
    hierarchy, group_index = build_hierarchy(spec, data)
    terms = tuple(TermDesign(t, _term_columns(t, data)) for t in spec.formula.group_terms)
    encoding = DesignEncoding(spec, population_spec, hierarchy, dropped, all_names)
    return Design(X=X, x_names=names, group_index=group_index, terms=terms, encoding=encoding, y=y,
                  trials=trials, offset=offset, weights=weights, diagnostics=tuple(found))


def _population_variables(formula: Formula, data: pd.DataFrame) -> set[str]:
    """Data columns the population part reads.

    formulaic's ``required_variables`` leaves out the arguments of its stateful transforms
    (``center(x)``, ``bs(x, df=4)``), so names in the formula text that are data columns are
    added: a formula whose only use of ``x`` is ``bs(x)`` must still be handed ``x``.
    """
    names = {str(v) for v in formula.required_variables}
    names |= {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(formula)) if w in data.columns}
    return names


def _drop_columns(X: np.ndarray, names: tuple[str, ...], dropped: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    if not dropped:
        return X, names
    keep = [j for j, n in enumerate(names) if n not in dropped]
    return np.ascontiguousarray(X[:, keep]), tuple(names[j] for j in keep)


def _check_frame(data: object) -> None:
    if not isinstance(data, pd.DataFrame):
        raise DataError(
            f"Data must be a pandas DataFrame; got {type(data).__name__}. Wrap it with pd.DataFrame(...), or pass rows to "
            "stream: a pyarrow.Table, a Parquet file, folder or glob (or a list of files and globs), a Dask DataFrame."
        )
    if len(data) == 0:
        raise DataError("The data have no rows.")


def _missing_column_message(column: str, data: pd.DataFrame, role: str) -> str:
    return (
        f"The {role} column {column!r} is not in the data; columns are "
        f"{sorted(map(str, data.columns))}. Fix the formula or add the column."
    )


def _used_columns(spec: ModelSpec, data: pd.DataFrame, *, include_response: bool) -> list[str]:
    cols: list[str] = [spec.response] if include_response else []
    try:
        formula = Formula(spec.formula.population)
        required = formula.required_variables
    except Exception as exc:  # formulaic's own parse errors
        raise SpecError(f"The population part {spec.formula.population!r} of the formula cannot be read: {exc}") from None
    cols += sorted(v for v in _population_variables(formula, data) if v in data.columns)
    missing_vars = sorted(v for v in required if v not in data.columns and v not in {"np", "C"})
    if missing_vars:
        name = missing_vars[0]
        if re.search(rf"(?<![\w.]){re.escape(name)}\s*\(", spec.formula.population):
            raise SpecError(
                f"The formula calls {name}(...), which is neither a data column nor a transform hierfit knows "
                "(numpy functions such as np.log(x), C(x) for categories, I(x ** 2) for arithmetic, offset(x) for an "
                "offset); compute it into a column first."
            )
        raise DataError(_missing_column_message(name, data, "predictor"))
    extra = [v for expr in spec.formula.offsets for v in sorted(expression_variables(expr))]
    if include_response and spec.formula.failures is not None:
        extra += sorted(expression_variables(spec.formula.failures))
    extra += [c for c in (spec.offset, spec.weights if include_response else None) if c is not None]
    for c in extra:
        if c not in data.columns and c != "np":
            raise DataError(_missing_column_message(c, data, "offset/trials/weights"))
    cols += [c for c in extra if c != "np"]
    for t in spec.formula.group_terms:
        for s in t.slopes:
            if s not in data.columns:
                raise DataError(_missing_column_message(s, data, "slope"))
            cols.append(s)
    return list(dict.fromkeys(cols))


def _row_examples(index: pd.Index, mask: np.ndarray, k: int = 3) -> str:
    rows = [repr(index[i]) for i in np.flatnonzero(mask)[:k]]
    return ", ".join(rows) + (", ..." if int(mask.sum()) > k else "")


def _check_finite(data: pd.DataFrame, columns: list[str]) -> None:
    """Numeric columns the model uses must be finite: +-inf is not silently kept or dropped."""
    for c in columns:
        col = data[c]
        if not pd.api.types.is_numeric_dtype(col) or col.dtype == bool:
            continue
        values = col.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            kinds = sorted({"+inf" if v > 0 else "-inf" for v in values[bad]})
            raise DataError(
                f"Column {c!r} has {int(bad.sum())} infinite value{'s' if bad.sum() > 1 else ''} ({', '.join(kinds)}; rows "
                f"{_row_examples(data.index, bad)}); hierfit needs finite numbers. Replace them or drop those rows, e.g. "
                f"data[np.isfinite(data[{c!r}])]."
            )


def _check_finite_matrix(X: np.ndarray, names: tuple[str, ...], index: pd.Index) -> None:
    """A transformation in the formula (``np.log(x)`` at 0) must not make a column infinite."""
    if X.size and not np.all(np.isfinite(X)):
        j = int(np.flatnonzero(~np.all(np.isfinite(X), axis=0))[0])
        bad = ~np.isfinite(X[:, j])
        raise DataError(
            f"The population-level column {names[j]!r} is not finite at {int(bad.sum())} rows ({_row_examples(index, bad)}): "
            "a transformation in the formula is undefined there (e.g. np.log of 0). Transform the data first or drop those rows."
        )


def _check_missing_values(data: pd.DataFrame, columns: list[str]) -> None:
    counts = {c: int(data[c].isna().sum()) for c in columns}
    bad = {c: n for c, n in counts.items() if n}
    if bad:
        rows = int(data[list(bad)].isna().any(axis=1).sum())
        detail = ", ".join(f"{c} ({n})" for c, n in sorted(bad.items()))
        raise DataError(
            f"{rows} of {len(data)} rows have missing values in columns the model uses: {detail}. "
            f"hierfit does not drop rows silently; drop or impute them first, e.g. "
            f"data.dropna(subset={sorted(bad)!r})."
        )


def _response(spec: ModelSpec, data: pd.DataFrame) -> np.ndarray:
    col = data[spec.response]
    if col.dtype == bool:
        return col.to_numpy(dtype=np.float64)
    if not pd.api.types.is_numeric_dtype(col):
        raise DataError(
            f"The response column {spec.response!r} must be numeric; it has dtype {col.dtype}. "
            "Convert it first (e.g. 0/1 for a bernoulli outcome)."
        )
    return col.to_numpy(dtype=np.float64)


def _term_columns(term: GroupTerm, data: pd.DataFrame) -> np.ndarray:
    if term.intercept and not term.slopes:
        # a read-only view of one 1.0: intercept-only terms (most levels of a deep tree) cost
        # no memory per row
        return np.broadcast_to(np.ones((1, 1)), (len(data), 1))
    cols = []
    if term.intercept:
        cols.append(np.ones(len(data)))
    for s in term.slopes:
        if s not in data.columns:
            raise DataError(_missing_column_message(s, data, "slope"))
        col = data[s]
        if not (pd.api.types.is_numeric_dtype(col) or col.dtype == bool):
            raise DataError(
                f"Slope column {s!r} in {term.text!r} must be numeric; it has dtype {col.dtype}. "
                f"For a categorical slope, make 0/1 indicator columns and use those."
            )
        cols.append(col.to_numpy(dtype=np.float64))
    # column-major: each column is one contiguous run of rows, which the row passes of the
    # mixed-model core read in place instead of copying (memory is per row at scale)
    Z = np.empty((len(data), len(cols)), order="F")
    for j, c in enumerate(cols):
        Z[:, j] = c
    return Z


def _fit_population_matrix(formula: Formula, data: pd.DataFrame):
    try:
        # numpy output: no intermediate DataFrame, so the peak memory stays near one X
        with np.errstate(all="ignore"):  # a non-finite result is reported by _check_finite_matrix
            mm = formula.get_model_matrix(data, na_action="raise", output="numpy")
    except Exception as exc:
        raise DataError(f"Cannot build the population part {str(formula)!r}: {exc}") from None
    X = np.ascontiguousarray(mm.view(np.ndarray), dtype=np.float64)
    names = tuple(_rename_intercept(c) for c in mm.model_spec.column_names)
    return X, names, mm.model_spec


def _population_matrix(population_spec, data: pd.DataFrame) -> tuple[np.ndarray, tuple[str, ...]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with np.errstate(all="ignore"):  # a non-finite result is reported by _check_finite_matrix
                mm = population_spec.get_model_matrix(data, na_action="raise", output="numpy")
        except Exception as exc:
            raise DataError(f"Cannot build the population part for new data: {exc}") from None
    for w in caught:
        if "categories outside" in str(w.message):
            raise DataError(
                f"New data have categories the model never saw: {w.message}. "
                "Map them to known categories or refit with them."
            )
    X = np.ascontiguousarray(mm.view(np.ndarray), dtype=np.float64)
    return X, tuple(_rename_intercept(c) for c in mm.model_spec.column_names)


def _rename_intercept(name: str) -> str:
    return INTERCEPT if name == "Intercept" else str(name)
