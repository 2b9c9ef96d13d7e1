"""learn_transform_state(): what a population formula's stateful transforms learn, from a streamed source.

formulaic's stateful transforms remember what they learned from the fitting rows, so that
new rows are encoded the same way (``ModelSpec.transform_state``). In memory they see every
row at once; a streamed design learns the same state from the source in folds over its
batches, and hands it to the population ModelSpec before any batch is encoded:

=========================  ==================================  ===================================
transform                  state                               learned from
=========================  ==================================  ===================================
``center(x)``              the mean                            moments (Chan's pairwise merge)
``scale(x)``,              the centre and the root mean        moments; ``center=``/``scale=``
``standardize(x)``         square about it (``ddof``)          given as numbers are kept as given
``bs(x, df=...)``          the boundary knots (minimum,        the range, and exact order
                           maximum) and interior knots         statistics (radix selection below)
                           (quantiles of ``x``)
``poly(x, degree=d)``      the recurrence coefficients of      one pass per degree (compensated
                           the orthogonal polynomials          sums of ``P_j^2`` and ``x P_j^2``)
=========================  ==================================  ===================================

How exact: the knots equal formulaic's bit for bit. ``np.nanquantile`` (the "linear" rule)
interpolates between two order statistics of the sorted sample; those are found out of core
by a *radix selection* on the bits of the numbers (mapped to unsigned keys that sort as the
numbers do): the first pass counts the keys by their top :data:`FIRST_BITS` bits, which
locates each needed rank in one bucket; a bucket of at most ``collect_limit`` rows is then
gathered in full and sorted, a larger one is counted again by its next bits (at most three
more passes: a key has 64 bits, and a bucket of one key is its value). numpy's own
interpolation is then applied to the two values (:func:`linear_quantiles`). Means, scales and
polynomial coefficients come from compensated, mergeable sums: they agree with numpy's
pairwise sums to a few units in the last place, not bit for bit (numpy sums all rows in one
order, a stream cannot).

What is refused, with what to do instead: ``cr``/``cs``/``cc`` (knots are quantiles of the
*distinct* values, and a centring constraint needs the whole basis), a stateful transform
inside another (``scale(center(x))``), options that are not literal values, and any other
stateful transform. A transform that learns nothing from the data
(``poly(x, degree=2, raw=True)``) needs no pass.

The population ModelSpec itself (its columns, categories) is built on placeholder rows
(:func:`placeholder_rows`: distinct numbers, inside a spline's given bounds, so that every
transform evaluates); only what its transforms learned there is replaced
(:func:`with_transform_state`).

Examples
--------
>>> import numpy as np, pyarrow as pa
>>> from formulaic import Formula
>>> from hierfit.design.sources import open_source
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=1000)
>>> placeholders = placeholder_rows(pa.table({"x": [1.0]}).to_pandas(), "bs(x, df=5)")  # the columns' kinds
>>> spec = Formula("bs(x, df=5)").get_model_matrix(placeholders).model_spec
>>> with open_source(pa.table({"x": x}), batch_size=64) as source:
...     state = learn_transform_state("bs(x, df=5)", spec, source)
>>> memory = Formula("bs(x, df=5)").get_model_matrix(pa.table({"x": x}).to_pandas()).model_spec
>>> state["bs(x, df=5)"]["knots"] == memory.transform_state["bs(x, df=5)"]["knots"]
True
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from formulaic.transforms import TRANSFORMS
from formulaic.transforms.basis_spline import SplineExtrapolation
from formulaic.utils.layered_mapping import LayeredMapping
from formulaic.utils.stateful_transforms import stateful_eval

from hierfit.design.build import _check_finite, _check_missing_values
from hierfit.design.moments import ColumnMoments
from hierfit.design.sources import Batch, CompensatedSum, Source
from hierfit.exceptions import DataError, SpecError

__all__ = ["COLLECT_LIMIT", "FIRST_BITS", "TransformCall", "learn_transform_state", "linear_quantiles",
           "placeholder_rows", "stateful_columns", "transform_calls", "with_transform_state"]

#: bits of the keys counted by the first pass (sign, exponent and 8 bits of mantissa: a bucket
#: per 1/256 of a binade)
FIRST_BITS = 20
#: bits counted by each later pass, in the buckets too large to gather
NEXT_BITS = 16
#: rows of one bucket gathered in full (8 bytes each) rather than counted again
COLLECT_LIMIT = 1 << 18

_SIGN = np.uint64(1 << 63)


@dataclass(frozen=True)
class TransformCall:
    """One stateful transform of the formula, as formulaic keys its state.

    Attributes
    ----------
    key
        formulaic's key of its state: ``"bs(x2, df=4)"``.
    name
        The transform: ``"bs"``.
    argument
        The expression of the data it transforms: ``"x2"``, ``"np.log(x2)"``.
    options
        Every other argument, defaults filled in.
    """

    key: str
    name: str
    argument: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class KnotSample:
    """The values whose quantiles a spline's knots are: an argument's, within explicit bounds
    when values outside them are clipped or dropped (``extrapolation`` "clip", "na", "zero")."""

    argument: str
    lower: float | None = None
    upper: float | None = None

    def values(self, x: np.ndarray) -> np.ndarray:
        keep = ~np.isnan(x)  # np.nanquantile ignores NaN
        if self.lower is not None:
            keep &= x >= self.lower
        if self.upper is not None:
            keep &= x <= self.upper
        return x[keep]


# ----------------------------------------------------------------------------- the order statistics
def order_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned keys that sort as the (non-NaN) float64 ``values`` do (``-0.0`` is taken as ``0.0``)."""
    bits = np.ascontiguousarray(np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    return np.where((bits & _SIGN) != 0, ~bits, bits | _SIGN)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float64 values of :func:`order_keys`' keys."""
    keys = np.asarray(keys, dtype=np.uint64)
    return np.ascontiguousarray(np.where((keys & _SIGN) != 0, keys & ~_SIGN, ~keys)).view(np.float64)


def linear_quantiles(n: int, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """numpy's "linear" quantile rule for ``n`` values: the ranks below and above each quantile
    and the interpolation, with numpy's own arithmetic (``numpy.lib._function_base_impl._quantile``).

    Returns ``(lower_ranks, upper_ranks, interpolate)``; ``interpolate(a, b)`` of the sorted
    values at those ranks is ``np.quantile(values, q)`` bit for bit.

    Examples
    --------
    >>> x = np.array([3.0, 1.0, 4.0, 1.5, 9.0, 2.6])
    >>> q = np.linspace(0, 1, 5)
    >>> lo, hi, interpolate = linear_quantiles(len(x), q)
    >>> s = np.sort(x)
    >>> bool(np.array_equal(interpolate(s[lo], s[hi]), np.quantile(x, q)))
    True
    """
    virtual = (n - 1) * np.asarray(q, dtype=np.float64)
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = -1
    following[above] = -1
    below = virtual < 0
    previous[below] = 0
    following[below] = 0
    previous_i, following_i = previous.astype(np.intp), following.astype(np.intp)
    # gamma is taken against the adjusted index (-1 at the top), as numpy does: the interpolation
    # of two equal values is then exact whatever gamma is
    gamma = np.asarray(virtual - previous_i, dtype=virtual.dtype)

    def interpolate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        diff = b - a
        return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)

    return np.where(previous_i < 0, n - 1, previous_i), np.where(following_i < 0, n - 1, following_i), interpolate


def _merge_counts(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    prefixes = np.concatenate([p for p, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    unique, inverse = np.unique(prefixes, return_inverse=True)
    total = np.zeros(len(unique), dtype=np.int64)
    np.add.at(total, inverse, counts)
    return unique, total


@dataclass(frozen=True, eq=False)
class _Request:
    """One pass's work on one knot sample: count by the next ``bits`` the keys under ``split``
    (prefixes of ``depth`` bits), and gather the keys under ``collect``."""

    sample: KnotSample
    depth: int
    split: np.ndarray
    bits: int
    collect: np.ndarray

    def summarise(self, keys: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        top = keys >> np.uint64(64 - self.depth) if self.depth else np.zeros(len(keys), dtype=np.uint64)
        counted = keys[np.isin(top, self.split)] if self.depth else keys
        shifted = counted >> np.uint64(64 - self.depth - self.bits)
        if self.depth == 0:  # at most 2**FIRST_BITS buckets: counted densely, in linear time (not a sort)
            dense = np.bincount(shifted.astype(np.intp))
            prefixes = np.flatnonzero(dense).astype(np.uint64)
            counts = dense[prefixes.astype(np.intp)]
        else:
            prefixes, counts = np.unique(shifted, return_counts=True)
        gathered = keys[np.isin(top, self.collect)] if len(self.collect) else keys[:0]
        return (prefixes, counts.astype(np.int64)), gathered


@dataclass(frozen=True, eq=False)
class _ValueSummary:
    moments: dict[str, ColumnMoments]
    counts: dict[KnotSample, tuple[np.ndarray, np.ndarray]]
    gathered: dict[KnotSample, np.ndarray]


def _merge(parts: Sequence[_ValueSummary]) -> _ValueSummary:
    moments = {a: ColumnMoments.merge([p.moments[a] for p in parts]) for a in parts[0].moments}
    counts = {s: _merge_counts([p.counts[s] for p in parts]) for s in parts[0].counts}
    gathered = {s: np.concatenate([p.gathered[s] for p in parts]) for s in parts[0].gathered}
    return _ValueSummary(moments, counts, gathered)


def _evaluate(argument: str, frame: pd.DataFrame) -> np.ndarray:
    """The values of ``argument`` in some rows, evaluated as formulaic evaluates a factor."""
    if argument in frame.columns:
        values: Any = frame[argument]
    else:
        env = LayeredMapping({str(c): frame[c] for c in frame.columns}, TRANSFORMS)
        try:
            values = stateful_eval(argument, env, None, {}, None)
        except (ArithmeticError, AttributeError, KeyError, NameError, TypeError, ValueError) as exc:  # the user's expression
            raise DataError(f"Cannot evaluate {argument!r}: {type(exc).__name__}: {exc}") from None
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != 1 or len(out) != len(frame):
        raise SpecError(f"{argument!r} gives an array of shape {out.shape} for {len(frame)} rows; a stateful transform "
                        "is learned here from one column of values. Transform a single column.")
    return out


@dataclass(frozen=True, eq=False)
class _ValuePass:
    """The per-batch work of a pass: the moments of ``arguments`` and the radix ``requests``."""

    arguments: tuple[str, ...]
    columns: tuple[str, ...]
    requests: tuple[_Request, ...]

    def __call__(self, batch: Batch) -> _ValueSummary:
        frame = batch.frame
        # the same refusals, in the same words, as the in-memory design
        _check_missing_values(frame, list(self.columns))
        _check_finite(frame, list(self.columns))
        needed = dict.fromkeys([*self.arguments, *(r.sample.argument for r in self.requests)])
        values = {a: _evaluate(a, frame) for a in needed}
        moments = {a: ColumnMoments.of(values[a][:, None]) for a in self.arguments}
        counts, gathered = {}, {}
        for r in self.requests:
            counts[r.sample], gathered[r.sample] = r.summarise(order_keys(r.sample.values(values[r.sample.argument])))
        return _ValueSummary(moments, counts, gathered)


class _Selection:
    """The search for some ranks of one knot sample, bucket by bucket (see the module doc)."""

    def __init__(self, sample: KnotSample, ranks: np.ndarray, counts: tuple[np.ndarray, np.ndarray], limit: int):
        self.sample, self.limit, self.depth = sample, limit, FIRST_BITS
        self.found: dict[int, np.uint64] = {}
        self.ranks = np.unique(ranks)
        self.prefix, self.count, self.offset = self._locate(counts, self.ranks)

    @staticmethod
    def _locate(counts: tuple[np.ndarray, np.ndarray], offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prefixes, n = counts
        cum = np.cumsum(n)
        idx = np.searchsorted(cum, offsets, side="right")
        return prefixes[idx], n[idx], offsets - (cum[idx] - n[idx])

    def request(self) -> _Request | None:
        if self.depth == 64:  # a bucket of one key: the key is its prefix
            self.found.update({int(r): p for r, p in zip(self.ranks, self.prefix)})
            self.ranks = self.ranks[:0]
        if not len(self.ranks):
            return None
        small = self.count <= self.limit
        return _Request(self.sample, self.depth, np.unique(self.prefix[~small]), min(NEXT_BITS, 64 - self.depth),
                        np.unique(self.prefix[small]))

    def advance(self, request: _Request, counts: tuple[np.ndarray, np.ndarray], gathered: np.ndarray) -> None:
        shift = np.uint64(64 - self.depth)
        keys = np.sort(gathered)
        tops = keys >> shift
        small = np.isin(self.prefix, request.collect)
        for r, p, off in zip(self.ranks[small], self.prefix[small], self.offset[small]):
            at = int(np.searchsorted(tops, p, side="left")) + int(off)
            if at >= len(keys) or tops[at] != p:
                raise _changed(self.sample)
            self.found[int(r)] = keys[at]
        rank, prefix, offset = self.ranks[~small], self.prefix[~small], self.offset[~small]
        children, n = counts
        parents = children >> np.uint64(request.bits)
        new_prefix, new_count, new_offset = (np.empty(len(rank), dtype=np.uint64), np.empty(len(rank), dtype=np.int64),
                                             np.empty(len(rank), dtype=np.int64))
        for i, (p, off) in enumerate(zip(prefix, offset)):
            lo, hi = np.searchsorted(parents, p, side="left"), np.searchsorted(parents, p, side="right")
            if off >= n[lo:hi].sum():
                raise _changed(self.sample)
            located = self._locate((children[lo:hi], n[lo:hi]), np.array([off]))
            new_prefix[i], new_count[i], new_offset[i] = located[0][0], located[1][0], located[2][0]
        self.ranks, self.prefix, self.count, self.offset = rank, new_prefix, new_count, new_offset
        self.depth += request.bits


def _changed(sample: KnotSample) -> DataError:
    return DataError(f"The values of {sample.argument!r} differ between two passes over the source: the source changed "
                     "while the fit read it. Fit a source that stays the same while it is read.")


# ----------------------------------------------------------------------------- the transforms
def _scale_state(m: ColumnMoments, center: Any, scale: Any, ddof: Any) -> dict[str, Any]:
    """formulaic's ``scale`` state (``formulaic.transforms.scale``) from the moments of the data."""
    state: dict[str, Any] = {"ddof": ddof}
    mean = np.float64(m.mean[0])
    if isinstance(center, bool) and center:
        state["center"], shift = mean, np.float64(0.0)
    elif not isinstance(center, bool):
        state["center"] = np.array(center)
        shift = mean - state["center"]
    else:
        state["center"], shift = None, mean
    if isinstance(scale, bool) and scale:
        # the sum of squares about the centre: M2 about the mean, moved to the centre
        squares = np.float64(m.m2[0, 0]) + m.n * shift * shift
        with np.errstate(divide="ignore", invalid="ignore"):  # n <= ddof: inf, as in memory (then refused as non-finite)
            state["scale"] = np.sqrt(squares / np.float64(m.n - ddof))
    elif not isinstance(scale, bool):
        state["scale"] = np.array(scale)
    else:
        state["scale"] = None
    return state


def _bs_sample(call: TransformCall) -> tuple[KnotSample, np.ndarray] | None:
    o = call.options
    if o["knots"] is not None or not o["df"]:
        return None
    nknots = o["df"] - o["degree"] - (1 if o["include_intercept"] else 0)
    restrict = SplineExtrapolation(o["extrapolation"]) in (SplineExtrapolation.CLIP, SplineExtrapolation.NA,
                                                             SplineExtrapolation.ZERO)
    lower = float(o["lower_bound"]) if restrict and o["lower_bound"] is not None else None
    upper = float(o["upper_bound"]) if restrict and o["upper_bound"] is not None else None
    return KnotSample(call.argument, lower, upper), np.linspace(0, 1, nknots + 2)


def _bs_state(call: TransformCall, m: ColumnMoments, quantiles: np.ndarray | None) -> dict[str, Any]:
    """formulaic's ``bs`` state (``formulaic.transforms.basis_spline``), its steps in its order."""
    o = call.options
    lower = o["lower_bound"] if o["lower_bound"] is not None else float(m.lo[0])
    upper = o["upper_bound"] if o["upper_bound"] is not None else float(m.hi[0])
    knots = [] if o["knots"] is None else list(o["knots"])
    if quantiles is not None:
        knots = quantiles[1:-1].tolist()
    knots.insert(0, lower)
    knots.append(upper)
    return {"lower_bound": lower, "upper_bound": upper, "knots": np.pad(knots, o["degree"], mode="edge").tolist()}


def _poly_columns(x: np.ndarray, alpha: Sequence[float], norms2: Sequence[float]) -> np.ndarray:
    """``P_j(x)`` for ``j = len(alpha)``: formulaic's monic three-term recurrence
    (``formulaic.transforms.poly``), with the coefficients of the degrees below."""
    previous, current = np.zeros_like(x), np.ones_like(x)
    for i in range(1, len(alpha) + 1):
        following = (x - alpha[i - 1]) * current
        if i >= 2:
            following -= (norms2[i - 1] / norms2[i - 2]) * previous
        previous, current = current, following
    return current


@dataclass(frozen=True, eq=False)
class _PolyPass:
    """Pass ``j`` of orthogonal polynomials: ``sum P_j^2`` and ``sum x P_j^2`` per argument, ``P_j``
    from the coefficients of the passes before (``polys``: argument, alphas, squared norms)."""

    columns: tuple[str, ...]
    polys: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]

    def __call__(self, batch: Batch) -> CompensatedSum:
        frame = batch.frame
        _check_missing_values(frame, list(self.columns))
        _check_finite(frame, list(self.columns))
        sums = []
        for argument, alpha, norms2 in self.polys:
            x = _evaluate(argument, frame)
            x = x[~np.isnan(x)]  # formulaic's poly leaves NaN rows out
            squares = _poly_columns(x, alpha, norms2) ** 2
            sums.append(np.array([np.sum(squares), np.sum(x * squares)]))
        return CompensatedSum.of(sums)


def _learn_polys(source: Source, columns: tuple[str, ...], calls: Sequence[TransformCall],
                 moments: Mapping[str, ColumnMoments]) -> dict[str, tuple[dict[int, Any], dict[int, Any]]]:
    """Each poly call's ``alpha`` and ``norms2``, one pass per degree (degree 0 from the moments)."""
    alpha = {c.key: [np.float64(moments[c.argument].mean[0])] for c in calls}
    norms2 = {c.key: [np.float64(moments[c.argument].n)] for c in calls}
    for j in range(1, max(c.options["degree"] for c in calls) + 1):
        todo = [c for c in calls if c.options["degree"] >= j]
        polys = tuple((c.argument, tuple(alpha[c.key][:j]), tuple(norms2[c.key][:j])) for c in todo)
        sums = source.fold(_PolyPass(columns, polys), CompensatedSum.merge, columns, what="polynomial pass").values()
        for c, (square, moment) in zip(todo, sums):
            norms2[c.key].append(np.float64(square))
            alpha[c.key].append(np.float64(moment / square))
    out = {}
    for c in calls:
        d = c.options["degree"]
        # formulaic's dicts, keys in the order its recurrence first asks for them
        order = [0, 1] if d == 1 else [1, 0, *range(2, d + 1)] if d >= 2 else [0]
        out[c.key] = ({k: alpha[c.key][k] for k in range(d)}, {k: norms2[c.key][k] for k in order})
    return out


@dataclass(frozen=True)
class _Learned:
    """What the passes learned about one transform's argument."""

    moments: ColumnMoments
    quantiles: np.ndarray | None = None
    poly: tuple[dict[int, Any], dict[int, Any]] | None = None


@dataclass(frozen=True)
class _Rule:
    """How one transform's state is learned: the knot sample it needs (if any), whether it needs
    the polynomial passes, then its state from what was learned."""

    state: Callable[[TransformCall, _Learned], dict[str, Any]]
    sample: Callable[[TransformCall], tuple[KnotSample, np.ndarray] | None] = lambda call: None
    polynomial: bool = False


RULES: dict[str, _Rule] = {
    "center": _Rule(lambda c, k: _scale_state(k.moments, True, False, 1)),
    "scale": _Rule(lambda c, k: _scale_state(k.moments, c.options["center"], c.options["scale"], c.options["ddof"])),
    "standardize": _Rule(lambda c, k: _scale_state(k.moments, c.options["center"], c.options["rescale"],
                                                   c.options["ddof"])),
    "bs": _Rule(lambda c, k: _bs_state(c, k.moments, k.quantiles), _bs_sample),
    "poly": _Rule(lambda c, k: {"alpha": k.poly[0], "norms2": k.poly[1]} if k.poly else {}, polynomial=True),
}

#: stateful transforms a stream cannot learn exactly, and what to write instead
REFUSED: dict[str, str] = {
    "cr": "its knots are quantiles of the distinct values of x and its centring constraint needs the whole basis; "
          "use bs(x, df=...), whose knots a streamed fit learns exactly",
}
REFUSED["cs"] = REFUSED["cc"] = REFUSED["cr"]


def _literal(node: ast.expr, key: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise SpecError(f"The argument {ast.unparse(node)!r} of {key!r} is not a literal value; a streamed fit reads "
                        "a transform's options from the formula text. Write its value (e.g. df=4).") from None


def _is_stateful(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and bool(getattr(TRANSFORMS.get(node.func.id), "__is_stateful_transform__", False)))


def _call(key: str, population: str) -> TransformCall:
    supported = ", ".join(sorted(RULES))
    try:
        node = ast.parse(key, mode="eval").body
    except SyntaxError:
        node = None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise SpecError(f"The population part {population!r} uses the stateful transform {key!r}, which a streamed fit "
                        f"cannot learn batch by batch (it learns {supported}). Compute that column first.")
    name = node.func.id
    if name in REFUSED or name not in RULES:
        why = REFUSED.get(name, f"a streamed fit learns the state of {supported} only")
        raise SpecError(f"The population part {population!r} uses {key!r}, whose state a streamed fit cannot learn "
                        f"exactly batch by batch: {why}. Or fit a pandas DataFrame, which holds every row.")
    function = TRANSFORMS[name]
    signature = inspect.signature(function)
    first = next(iter(signature.parameters))
    data = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == first), None)
    if data is None:
        raise SpecError(f"{key!r} names no data to transform; write {name}(x, ...).")
    if any(_is_stateful(n) for n in ast.walk(data)):
        raise SpecError(f"{key!r} nests a stateful transform inside another; a streamed fit learns the state of one "
                        f"transform of a column. Apply {name}() to the column itself, or compute the inner column first.")
    args = [_literal(a, key) for a in node.args[1:]]
    kwargs = {k.arg: _literal(k.value, key) for k in node.keywords if k.arg != first and k.arg is not None}
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        raise SpecError(f"{key!r} has arguments {name}() does not take ({exc}).") from None
    bound.apply_defaults()
    options = {k: v for k, v in bound.arguments.items() if k != first and not k.startswith("_")}
    return TransformCall(key, name, ast.unparse(data), options)


def transform_calls(population: str, population_spec: Any) -> tuple[TransformCall, ...]:
    """The stateful transforms of ``population_spec`` (a formulaic ModelSpec) that learn from the
    data, each checked to be learnable from a stream (else a :class:`SpecError` says what to do).

    A transform whose state stays empty on formulaic's own evaluation (raw polynomials, ``Q``)
    learns nothing and is left out.
    """
    state = dict(getattr(population_spec, "transform_state", {}) or {})
    return tuple(_call(str(key), population) for key, value in state.items() if value)


def _argument_columns(argument: str, columns: Sequence[str]) -> list[str]:
    names = {n.id for n in ast.walk(ast.parse(argument, mode="eval")) if isinstance(n, ast.Name)}
    return [c for c in columns if c in names]


def learn_transform_state(population: str, population_spec: Any, source: Source, *,
                          collect_limit: int = COLLECT_LIMIT) -> dict[str, dict[str, Any]]:
    """The ``transform_state`` formulaic learns from all the rows of ``source``, learned in passes.

    ``population`` is the population formula's text (for messages), ``population_spec`` the
    formulaic ModelSpec built on placeholder rows (its state is ignored, its keys are kept).
    Returns ``{}`` when no transform learns from the data; else the whole state, to be put on
    the ModelSpec with :func:`with_transform_state`. ``collect_limit`` bounds the rows of one
    bucket gathered in memory (see the module docstring).
    """
    calls = transform_calls(population, population_spec)
    if not calls:
        return {}
    columns = tuple(dict.fromkeys(c for call in calls for c in _argument_columns(call.argument, source.columns)))
    arguments = tuple(dict.fromkeys(call.argument for call in calls))
    needs = {call.key: w for call in calls if (w := RULES[call.name].sample(call)) is not None}
    samples = tuple(dict.fromkeys(sample for sample, _ in needs.values()))
    first = tuple(_Request(s, 0, np.zeros(1, dtype=np.uint64), FIRST_BITS, np.zeros(0, dtype=np.uint64)) for s in samples)
    summary = source.fold(_ValuePass(arguments, columns, first), _merge, columns, what="transform pass")
    sizes = {s: int(summary.counts[s][1].sum()) for s in samples}
    for key, (sample, _) in needs.items():
        if sizes[sample] == 0:
            raise DataError(f"No value of {sample.argument!r} lies within the bounds ({sample.lower}, {sample.upper}) of "
                            f"{key!r}, so its knots cannot be placed. Widen the bounds, or give knots=[...].")
    plans = {key: (sample, linear_quantiles(sizes[sample], q)) for key, (sample, q) in needs.items()}
    ranks: dict[KnotSample, list[np.ndarray]] = {s: [] for s in samples}
    for sample, (lo, hi, _) in plans.values():
        ranks[sample] += [lo, hi]
    selections = [_Selection(s, np.concatenate(ranks[s]), summary.counts[s], collect_limit) for s in samples]
    while True:
        requests = [(sel, r) for sel in selections if (r := sel.request()) is not None]
        if not requests:
            break
        found = source.fold(_ValuePass((), columns, tuple(r for _, r in requests)), _merge, columns, what="spline knots pass")
        for sel, r in requests:
            sel.advance(r, found.counts[r.sample], found.gathered[r.sample])
    chosen = {sel.sample: sel.found for sel in selections}
    polys = [c for c in calls if RULES[c.name].polynomial]
    learned_polys = _learn_polys(source, columns, polys, summary.moments) if polys else {}
    state: dict[str, dict[str, Any]] = {str(k): dict(v) for k, v in population_spec.transform_state.items()}
    for call in calls:
        quantiles = None
        if call.key in plans:
            sample, (lo, hi, interpolate) = plans[call.key]
            keys = chosen[sample]
            a = key_values(np.array([keys[int(r)] for r in lo], dtype=np.uint64))
            b = key_values(np.array([keys[int(r)] for r in hi], dtype=np.uint64))
            quantiles = interpolate(a, b)
        learned = _Learned(summary.moments[call.argument], quantiles, learned_polys.get(call.key))
        state[call.key] = RULES[call.name].state(call, learned)
    return state


def _literal_bound(node: ast.Call, name: str) -> float | None:
    for k in node.keywords:
        if k.arg == name:
            try:
                value = ast.literal_eval(k.value)
            except ValueError:
                return None
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None


def stateful_columns(population: str, columns: Sequence[str]) -> dict[str, tuple[float, float]]:
    """The data columns read inside a stateful transform of the population formula ``population``,
    each with a range of placeholder values inside the bounds the formula gives the transform
    (``bs(x, lower_bound=5, upper_bound=9)``: 5 to 9; else 1 to 2)."""
    from formulaic import Formula

    found: dict[str, tuple[float, float] | None] = {}  # None: no bounds given (yet)
    for term in Formula(population):
        for factor in term.factors:
            try:
                tree = ast.parse(factor.expr, mode="eval")
            except SyntaxError:  # backticked names: formulaic evaluates them, nothing here to spread
                continue
            for node in ast.walk(tree):
                if not _is_stateful(node):
                    continue
                assert isinstance(node, ast.Call)
                lower, upper = _literal_bound(node, "lower_bound"), _literal_bound(node, "upper_bound")
                for n in ast.walk(node):
                    if not (isinstance(n, ast.Name) and n.id in columns):
                        continue
                    seen = found.setdefault(n.id, None)
                    # a bare column lies within its transform's bounds (within all of them, if several)
                    if node.args and node.args[0] is n and (lower is not None or upper is not None):
                        lo = lower if lower is not None else (upper if upper is not None else 2.0) - 1.0
                        hi = upper if upper is not None else lo + 1.0
                        if seen is not None and max(lo, seen[0]) <= min(hi, seen[1]):
                            lo, hi = max(lo, seen[0]), min(hi, seen[1])
                        found[n.id] = (lo, hi)
    return {c: found[c] or (1.0, 2.0) for c in columns if c in found}


#: rows of the placeholder frame a formula with stateful transforms is first built on
PLACEHOLDER_ROWS = 64


def placeholder_rows(frame: pd.DataFrame, population: str) -> pd.DataFrame:
    """``frame`` (placeholder rows that tell formulaic the columns' kinds) with distinct numbers in
    the columns stateful transforms read: a transform then has something to learn from
    (``scale`` of one row is 0/0, ``poly`` and ``cr`` need several distinct values, a spline's
    values must lie within its given bounds), so the columns it builds are known; what it
    learned from them is replaced by :func:`learn_transform_state`.
    """
    ranges = stateful_columns(population, [str(c) for c in frame.columns])
    spread = {c: r for c, r in ranges.items()
              if pd.api.types.is_numeric_dtype(frame[c].dtype) and not pd.api.types.is_bool_dtype(frame[c].dtype)}
    if not spread:
        return frame
    size = max(PLACEHOLDER_ROWS, len(frame))
    out = {c: pd.Series(np.resize(frame[c].to_numpy(), size), dtype=frame[c].dtype) for c in frame.columns}
    for c, (lo, hi) in spread.items():
        values = np.linspace(lo, hi, size)
        if pd.api.types.is_integer_dtype(frame[c].dtype):
            # whole numbers: distinct ones unless the transform's bounds say where they must lie
            values = np.arange(1.0, size + 1.0) if (lo, hi) == (1.0, 2.0) else np.round(values)
        out[c] = pd.Series(values.astype(frame[c].dtype))
    return pd.DataFrame(out)


def with_transform_state(population_spec: Any, state: Mapping[str, Mapping[str, Any]]) -> Any:
    """``population_spec`` (a formulaic ModelSpec) with ``state`` as its transforms' state (``{}``: as it is).

    Nothing is re-evaluated: the columns a spec builds do not depend on the values its
    transforms learned, only on their options, so every batch is then encoded with ``state``.
    """
    if not state:
        return population_spec
    return population_spec.update(transform_state={k: dict(v) for k, v in state.items()})
