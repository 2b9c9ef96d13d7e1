"""Engine options as a declarative table: each engine's ``OPTIONS`` dataclass, checked up front.

Every option is a dataclass field whose type annotation says what it accepts and whose
:func:`option` metadata says the allowed range, so :func:`parse_options` can refuse a bad value
before any work starts (``n_draws='abc'``, ``chains='two'``, ``draws=-10``, ``reml="no"``),
with a message naming the option, the value and what is allowed:

    Engine 'mixed': option 'n_draws' must be an integer >= 10; got 'abc' (str).

Types understood: ``int`` (integral numbers, not bools), ``float`` (any real number), ``bool``,
``str``, ``Literal[...]`` (one of the listed values), ``X | None``, ``tuple[int, ...]`` (a list
or tuple of them), ``dict[str, Any]`` and ``Any``.
"""

from __future__ import annotations

import dataclasses
import numbers
import operator
import types
import typing
from collections.abc import Mapping
from typing import Any

from hierfit.exceptions import EngineError

__all__ = ["option", "parse_options"]


def option(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with an allowed range, e.g. ``n_draws: int = option(1000, ge=10)``."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"bounds": bounds})
    return dataclasses.field(default=default, metadata={"bounds": bounds})


_BOUND_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "True or False"
    if tp is str:
        return "a string"
    if tp is Any:
        return "anything"
    if origin is typing.Literal:
        return "one of: " + ", ".join(repr(v) for v in sorted(typing.get_args(tp), key=str))
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in parts) + (" or None" if len(parts) < len(typing.get_args(tp)) else "")
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(inner, _describe(inner))
    if origin in (dict, Mapping) or tp is dict:
        return "a dict"
    return getattr(tp, "__name__", str(tp))


class _Refused(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``, or raise :class:`_Refused`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a)
            except _Refused:
                continue
        raise _Refused
    if origin is typing.Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise _Refused
    if tp is bool:
        if isinstance(value, (bool, getattr(__import__("numpy"), "bool_"))):
            return bool(value)
        raise _Refused
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return operator.index(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            return int(float(value))
        raise _Refused
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise _Refused
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Refused
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            inner = typing.get_args(tp)[0]
            return tuple(_coerce(v, inner) for v in value)
        raise _Refused
    if origin in (dict, Mapping) or tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise _Refused
    return value


def _allowed(tp: Any, bounds: Mapping[str, float]) -> str:
    """``an integer >= 10``, ``a number > 0 and < 1 (or None)``: what an option accepts, in words."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    inner = [a for a in typing.get_args(tp) if a is not type(None)] if optional else [tp]
    words = " or ".join(_describe(a) for a in inner)
    limits = " and ".join(f"{_BOUND_WORDS[k]} {b:g}" for k, b in bounds.items())
    return words + (f" {limits}" if limits else "") + (" (or None)" if optional else "")


def _check_bounds(engine: str, name: str, value: Any, bounds: Mapping[str, float], tp: Any) -> None:
    if value is None or not isinstance(value, numbers.Real) or isinstance(value, bool):
        return
    v = float(value)
    ok = all({"ge": v >= b, "gt": v > b, "le": v <= b, "lt": v < b}[k] for k, b in bounds.items())
    if not ok:
        raise EngineError(f"Engine {engine!r}: option {name!r} must be {_allowed(tp, bounds)}; got {value!r}.")


def parse_options(options_type: type, options: Mapping[str, Any], engine: str) -> Any:
    """Build an engine's options dataclass, refusing unknown names and bad values up front.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class OPTIONS:
    ...     n_draws: int = option(1000, ge=10)
    >>> parse_options(OPTIONS, {"n_draws": 200.0}, "demo")
    OPTIONS(n_draws=200)
    >>> parse_options(OPTIONS, {"n_draws": "abc"}, "demo")
    Traceback (most recent call last):
    ...
    hierfit.exceptions.EngineError: Engine 'demo': option 'n_draws' must be an integer >= 10; got 'abc' (str).
    """
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise EngineError(
            f"Engine {engine!r} has no option {unknown[0]!r}. Its options are: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(options_type)
    values: dict[str, Any] = {}
    for name, value in options.items():
        tp = hints[name]
        bounds = fields[name].metadata.get("bounds", {})
        try:
            values[name] = _coerce(value, tp)
        except _Refused:
            raise EngineError(
                f"Engine {engine!r}: option {name!r} must be {_allowed(tp, bounds)}; got {value!r} ({type(value).__name__})."
            ) from None
        _check_bounds(engine, name, values[name], bounds, tp)
    return options_type(**values)
