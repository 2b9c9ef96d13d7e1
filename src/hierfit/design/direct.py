"""The model's columns of a batch read straight from its arrays, for the plainest formulas.

A streamed pass builds ``[X, y, offset, Z]`` for every batch. Through formulaic
(:meth:`~hierfit.design.build.DesignEncoding.columns`) that costs about as much as reading
the batch, even when the population part is only an intercept and numeric columns
(``y ~ x1 + x2 + (1 + x1 | market)``), whose model columns are the data columns themselves.
For such a formula a :class:`DirectPlan` (learned once from the fitted formulaic spec) takes
the columns' numpy arrays as they are -- zero-copy for float64 columns -- and says which model
columns are the constant 1 and which repeat another (a slope that is also a population column),
so that :class:`~hierfit.design.moments.CellMoments` neither copies nor sums them again.

Anything else takes the formulaic path, which gives its own errors: a transform, a categorical
or an interaction in the population part (no plan), and, batch by batch, a column that is not
a plain numpy number (text, boolean, nullable extension types) or holds a missing or infinite
value. The values are the same as formulaic's: each model column is its data column as float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hierfit.design.build import DesignEncoding, _rename_intercept, _used_columns
from hierfit.design.columns import offset_vector, trials_vector

__all__ = ["DirectColumns", "DirectPlan", "direct_columns", "direct_plan"]

#: the name formulaic gives the intercept's factor
_ONE = "1"


@dataclass(frozen=True, eq=False)
class DirectPlan:
    """How to read the kept population columns of a plain formula from a batch.

    ``x`` holds, per kept population column, the data column it is (``None``: the intercept).
    """

    x: tuple[str | None, ...]
    names: tuple[str, ...]
    #: per set of batch columns, the columns the model uses (what the formulaic path checks)
    _used: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict, repr=False)

    def used(self, encoding: DesignEncoding, frame: pd.DataFrame) -> tuple[str, ...]:
        key = tuple(map(str, frame.columns))
        if key not in self._used:
            self._used[key] = tuple(_used_columns(encoding.spec, frame, include_response=True))
        return self._used[key]


@dataclass(frozen=True, eq=False)
class DirectColumns:
    """A batch's model columns ``[X, y, offset, Z_1, ..., Z_T]`` without a copy of their own.

    ``arrays`` are the distinct float64 columns; ``source[j]`` says what model column ``j`` is:
    an index into ``arrays``, or a float for a column that holds that constant on every row.
    """

    arrays: tuple[np.ndarray, ...]
    source: tuple[int | float, ...]
    has_offset: bool
    n: int
    #: each array's minimum and maximum (found while checking that its values are finite)
    ranges: tuple[tuple[float, float], ...] = ()

    def matrix(self) -> np.ndarray:
        """The columns as one column-major ``(n, q)`` array (what the formulaic path builds)."""
        C = np.empty((self.n, len(self.source)), dtype=np.float64, order="F")
        for j, s in enumerate(self.source):
            C[:, j] = self.arrays[s] if isinstance(s, int) else s
        return C


def direct_plan(encoding: DesignEncoding) -> DirectPlan | None:
    """The plan of an encoding whose population part is an intercept and plain numeric columns
    (``None`` for anything else: those batches take formulaic's path).

    Examples
    --------
    >>> import hierfit, pyarrow as pa
    >>> from hierfit.design.sources import open_source
    >>> from hierfit.design.streamed import build_streamed_design
    >>> sim = hierfit.simulate(n_markets=3, n_submarkets=2, rows_per_submarket=5, seed=1)
    >>> def plan(formula):
    ...     with open_source(pa.Table.from_pandas(sim.data)) as source:
    ...         return direct_plan(build_streamed_design(hierfit.make_spec(formula), source).encoding)
    >>> plan("y ~ x1 + x2 + (1 + x1 | market)").x
    (None, 'x1', 'x2')
    >>> plan("y ~ center(x1) + (1 | market)") is None, plan("y ~ x1:x2 + (1 | market)") is None
    (True, True)
    """
    ps: object = encoding.population_spec
    formula, structure = getattr(ps, "formula", None), getattr(ps, "structure", None)
    encoder_state = getattr(ps, "encoder_state", None)
    if formula is None or structure is None or encoder_state is None or getattr(ps, "transform_state", None):
        return None
    columns: list[str | None] = []
    names: list[str] = []
    for term, encoded in zip(formula, structure):
        factors = list(getattr(term, "factors", ()))
        if len(factors) != 1 or len(encoded.columns) != 1:
            return None  # an interaction, or a term that makes several columns (a categorical)
        factor = factors[0]
        method = getattr(factor.eval_method, "value", factor.eval_method)
        expr, made = str(factor.expr), str(encoded.columns[0])
        if method == "literal" and expr == _ONE and made == "Intercept":
            columns.append(None)
        elif (method == "lookup" and made == expr
              and getattr(encoder_state.get(expr, (None,))[0], "value", None) == "numerical"):
            columns.append(expr)
        else:
            return None  # a transform, I(...), a categorical variable
        names.append(_rename_intercept(str(encoded.columns[0])))
    if len(columns) != len(structure) or (encoding.population_columns is not None
                                          and tuple(names) != tuple(encoding.population_columns)):
        return None
    keep = [j for j, nm in enumerate(names) if nm not in encoding.dropped]
    return DirectPlan(tuple(columns[j] for j in keep), tuple(names[j] for j in keep))


def _plain_numbers(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, tuple[np.ndarray, float, float]] | None:
    """Each column as float64 (a view where it is float64 already) with its minimum and maximum,
    or ``None`` if one is not a plain numpy number or holds a missing or infinite value."""
    out: dict[str, tuple[np.ndarray, float, float]] = {}
    for c in columns:
        if c not in frame.columns:
            return None
        dtype = frame[c].dtype
        if not isinstance(dtype, np.dtype) or dtype.kind not in "fiu":
            return None
        values = frame[c].to_numpy(dtype=np.float64)
        # a NaN makes the minimum NaN, an infinity the minimum or maximum infinite: two
        # reductions (needed anyway) instead of a finiteness mask over the rows
        lo, hi = float(values.min()), float(values.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return None
        out[c] = (values, lo, hi)
    return out


def direct_columns(plan: DirectPlan, encoding: DesignEncoding, frame: pd.DataFrame) -> DirectColumns | None:
    """The model columns of a batch with its outcome, read directly, or ``None`` where the
    formulaic path must build them (see the module doc: it gives the errors)."""
    spec = encoding.spec
    if len(frame) == 0 or spec.response not in frame.columns:
        return None
    used = plan.used(encoding, frame)
    numbers = _plain_numbers(frame, used)
    if numbers is None:
        return None
    index: dict[str, int] = {}
    arrays: list[np.ndarray] = []
    ranges: list[tuple[float, float]] = []

    def column(name: str) -> int:
        if name not in index:
            index[name] = len(arrays)
            values, lo, hi = numbers[name]
            arrays.append(values)
            ranges.append((lo, hi))
        return index[name]

    source: list[int | float] = [1.0 if c is None else column(c) for c in plan.x]
    source.append(column(spec.response))
    offset = offset_vector(spec, frame)
    if offset is not None:
        source.append(len(arrays))
        arrays.append(offset)
        ranges.append((float(offset.min()), float(offset.max())))
    y = numbers[spec.response][0]
    # the formulaic path's checks of the outcome, in its order; a gaussian outcome's support is
    # the finite numbers, which _plain_numbers checked
    if not spec.family.normal_errors:
        spec.family.check_outcome(y, spec.response, trials_vector(spec, frame, y))
    for t in spec.formula.group_terms:
        if t.intercept:
            source.append(1.0)
        source.extend(column(s) for s in t.slopes)
    return DirectColumns(tuple(arrays), tuple(source), offset is not None, len(frame), tuple(ranges))
