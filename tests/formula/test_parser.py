"""The formula stage: lme4/brms syntax into terms, and errors that mark the span."""

from __future__ import annotations

import pytest

from hierfit.exceptions import FormulaError
from hierfit.formula import parse_formula


def terms(text: str) -> list[tuple[str, tuple[str, ...], bool]]:
    return [(t.factor.label, t.coefficients, t.correlated) for t in parse_formula(text).group_terms]


@pytest.mark.parametrize(
    ("text", "population", "expected"),
    [
        (
            "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)",
            "x1 + x2",
            [("market", ("Intercept", "x1"), True), ("market:submarket", ("Intercept",), True)],
        ),
        (
            "y ~ x2 + (1 + x1 | market/submarket)",
            "x2",
            [("market", ("Intercept", "x1"), True), ("market:submarket", ("Intercept", "x1"), True)],
        ),
        ("y ~ (0 + x1 | market)", "1", [("market", ("x1",), True)]),
        ("y ~ (x1 - 1 | market)", "1", [("market", ("x1",), True)]),
        ("y ~ (x1 | market)", "1", [("market", ("Intercept", "x1"), True)]),
        ("y ~ x1 + (x1 || market)", "x1", [("market", ("Intercept", "x1"), False)]),
        (
            "y ~ 1 + (1 | region/market/submarket/store)",
            "1",
            [
                ("region", ("Intercept",), True),
                ("region:market", ("Intercept",), True),
                ("region:market:submarket", ("Intercept",), True),
                ("region:market:submarket:store", ("Intercept",), True),
            ],
        ),
        ("y ~ C(kind) + x1*x2 + np.log(z) + (1 | g)", "C(kind) + x1*x2 + np.log(z)", [("g", ("Intercept",), True)]),
        ("y ~ x1 - 1 + (1 | g)", "x1 - 1", [("g", ("Intercept",), True)]),
    ],
)
def test_formula_cases(text: str, population: str, expected: list) -> None:
    parsed = parse_formula(text)
    assert parsed.response == "y"
    assert parsed.population == population
    assert terms(text) == expected


def test_levels_are_named_after_their_own_column() -> None:
    parsed = parse_formula("y ~ (1 | market/submarket)")
    assert [f.level for f in parsed.factors] == ["market", "submarket"]


@pytest.mark.parametrize(
    ("text", "reason", "marked"),
    [
        ("y ~ x + | market", "'|' is only allowed inside", "y ~ x + ⟨|⟩ market"),
        ("y x1", "has no '~'", "⟨y x1⟩"),
        ("y ~ x + (1 | market", "never closed", "y ~ x + ⟨(⟩1 | market"),
        ("y ~ x + 1 | market)", "no matching '('", "y ~ x + 1 | market⟨)⟩"),
        ("y ~ (1 | )", "Nothing right of '|'", None),
        ("y ~ (C(x) | g)", "numeric column names", None),
        ("y ~ x + + z", "Two operators in a row", "y ~ x + ⟨+⟩ z"),
        ("log(y) ~ x", "response must be a column name", "⟨log(y)⟩ ~ x"),
        ("y ~ (1 | g) + (1 | g)", "in two group-level terms", None),
        ("y ~ (1 | a/b:c)", "either '/'", "y ~ (1 | ⟨a/b:c⟩)"),
        ("~ x", "no response", None),
        ("y ~ x ~ z", "more than one '~'", "y ~ x ⟨~⟩ z"),
    ],
)
def test_formula_errors_quote_and_mark(text: str, reason: str, marked: str | None) -> None:
    with pytest.raises(FormulaError) as info:
        parse_formula(text)
    message = str(info.value)
    assert reason in message
    assert "⟨" in message and "⟩" in message
    if marked is not None:
        assert message.splitlines()[-1].strip() == marked
