"""Read lme4/brms formula text into a :class:`ParsedFormula`.

The scanner only has to find the group-level terms ``( expr | group )`` and ``( expr || group )``
at the top level of the right-hand side; everything else is the population part, which is
handed to formulaic (it already knows ``C(x)``, interactions and transforms). Keeping the two
apart means every character offset here refers to the user's own text, so errors can mark the
exact span: ``y ~ x + ⟨|⟩ market``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hierfit.exceptions import FormulaError
from hierfit.formula.terms import GroupingFactor, GroupTerm, ParsedFormula

_NAME = r"[A-Za-z_.][A-Za-z0-9_.]*|`[^`]+`"
_NAME_RE = re.compile(rf"^(?:{_NAME})$")
_TOKEN_RE = re.compile(rf"\s*(?:(?P<name>{_NAME})|(?P<number>\d+(?:\.\d*)?)|(?P<op>[+-])|(?P<other>\S))")


@dataclass(frozen=True)
class _Piece:
    """A top-level additive piece of the right-hand side with its offsets in the formula."""

    sign: str  # "+" or "-"
    text: str
    start: int
    end: int


def parse_formula(text: str) -> ParsedFormula:
    """Parse ``response ~ population + (group-level | terms)``.

    Examples
    --------
    >>> p = parse_formula("y ~ x1 + x2 + (1 + x1 | market/submarket)")
    >>> p.response, p.population
    ('y', 'x1 + x2')
    >>> [(t.factor.label, t.coefficients) for t in p.group_terms]
    [('market', ('Intercept', 'x1')), ('market:submarket', ('Intercept', 'x1'))]
    """
    if not isinstance(text, str):
        raise FormulaError(f"The formula must be a string; got {type(text).__name__}.", repr(text))
    _check_parentheses(text)
    tildes = [i for i, ch in enumerate(text) if ch == "~"]
    if not tildes:
        raise FormulaError(
            "The formula has no '~': write it as 'response ~ predictors', e.g. 'y ~ x1 + (1 | market)'.",
            text,
            (0, len(text)),
        )
    if len(tildes) > 1:
        raise FormulaError("The formula has more than one '~'; keep exactly one.", text, (tildes[1], tildes[1] + 1))
    tilde = tildes[0]
    response, failures = _parse_response(text, tilde)
    if not response:
        raise FormulaError("The formula has no response left of '~'; name the outcome column, e.g. 'y ~ ...'.", text, (0, tilde + 1))
    if failures is None and not _NAME_RE.match(text[:tilde].strip()):
        start = len(text[:tilde]) - len(text[:tilde].lstrip())
        raise FormulaError(
            "The response must be a column name; compute transformed outcomes as a column first "
            "(e.g. data['log_y'] = np.log(data['y'])).",
            text,
            (start, start + len(text[:tilde].strip())),
        )
    pieces = _split_additive(text, tilde + 1)
    population: list[str] = []
    group_terms: list[GroupTerm] = []
    offsets: list[str] = []
    for piece in pieces:
        call = _OFFSET_RE.match(piece.text)
        if call and piece.text.endswith(")") and _closes_at_end(piece.text, call.end() - 1):
            if piece.sign == "-":
                raise FormulaError("An offset cannot be subtracted; write offset(-x) instead.", text, (piece.start, piece.end))
            inner = piece.text[call.end():-1].strip()
            if not inner:
                raise FormulaError("offset() needs an expression, e.g. offset(log(exposure)).", text, (piece.start, piece.end))
            offsets.append(inner)
            continue
        _check_doubled_parentheses(text, piece)
        if _is_group_term(piece):
            if piece.sign == "-":
                raise FormulaError("A group-level term cannot be subtracted; remove the '-'.", text, (piece.start, piece.end))
            group_terms.extend(_parse_group_term(text, piece))
        else:
            bar = piece.text.find("|")
            if bar >= 0:
                pos = piece.start + bar
                raise FormulaError(
                    "'|' is only allowed inside a group-level term in parentheses, e.g. (1 + x1 | market).",
                    text,
                    (pos, pos + 1),
                )
            population.append(piece.text if piece.sign == "+" else f"- {piece.text}")
    pop = " + ".join(p for p in population if not p.startswith("-"))
    minus = " ".join(p for p in population if p.startswith("-"))
    pop_text = (pop or "1") + (f" {minus}" if minus else "")
    _check_duplicate_coefficients(text, group_terms)
    return ParsedFormula(text=text, response=response, population=pop_text, group_terms=tuple(group_terms),
                         offsets=tuple(offsets), failures=failures)


_OFFSET_RE = re.compile(r"^offset\s*\(")
_CBIND_RE = re.compile(r"^\s*cbind\s*\((?P<inner>.*)\)\s*$", re.S)


def _closes_at_end(piece: str, open_at: int) -> bool:
    """Whether the parenthesis opened at ``open_at`` is the one closing the piece."""
    depth = 0
    for i in range(open_at, len(piece)):
        depth += piece[i] == "("
        depth -= piece[i] == ")"
        if depth == 0:
            return i == len(piece) - 1
    return False


def _parse_response(text: str, tilde: int) -> tuple[str, str | None]:
    """``y`` -> ("y", None); ``cbind(y, n - y)`` -> ("y", "n - y"), lme4's binomial outcome."""
    lhs = text[:tilde]
    lead = len(lhs) - len(lhs.lstrip())
    span = (lead, lead + len(lhs.strip()))
    if "|" in lhs:
        raise FormulaError(
            "The outcome is written as in lme4: for successes out of trials use cbind(successes, failures) ~ ..., e.g. "
            "cbind(y, n - y) ~ x + (1 | market) with family='binomial' (brms' 'y | trials(n)' is not read); prior weights "
            "and offsets go in fit(weights=..., offset=...) or offset(...) in the formula.",
            text, span,
        )
    m = _CBIND_RE.match(lhs)
    if not m:
        return _strip_name(lhs.strip()), None
    parts = _split_top_level_commas(m.group("inner"))
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise FormulaError("cbind() takes two arguments: the successes column and the failures, e.g. cbind(y, n - y).", text, span)
    successes, failures = parts[0].strip(), parts[1].strip()
    if not _NAME_RE.match(successes):
        raise FormulaError(
            "The first argument of cbind() must be the successes column (compute it into the data first).", text, span
        )
    return _strip_name(successes), failures


def _split_top_level_commas(inner: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return parts


def _check_doubled_parentheses(text: str, piece: _Piece) -> None:
    """``((1 | market))``: say so, instead of a confusing message about '|'."""
    t = piece.text
    if t.startswith("((") and t.endswith("))") and _closes_at_end(t, 0) and "|" in t:
        inner = _Piece(piece.sign, t[1:-1].strip(), piece.start + 1, piece.end - 1)
        if _is_group_term(inner):
            raise FormulaError(
                f"Doubled parentheses around a group-level term: write {inner.text}, not {t}.", text, (piece.start, piece.end)
            )


def _check_parentheses(text: str) -> None:
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "(":
            stack.append(i)
        elif ch == ")":
            if not stack:
                raise FormulaError("This ')' has no matching '('.", text, (i, i + 1))
            stack.pop()
    if stack:
        raise FormulaError("This '(' is never closed; add the matching ')'.", text, (stack[-1], stack[-1] + 1))


def _split_additive(text: str, offset: int) -> list[_Piece]:
    """Split ``text[offset:]`` on top-level ``+`` and ``-`` (inside no parentheses)."""
    pieces: list[_Piece] = []
    depth = 0
    sign = "+"
    start = offset
    for i in range(offset, len(text) + 1):
        ch = text[i] if i < len(text) else None
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch is None or (depth == 0 and ch in "+-"):
            raw = text[start:i]
            stripped = raw.strip()
            if stripped:
                lead = len(raw) - len(raw.lstrip())
                pieces.append(_Piece(sign, stripped, start + lead, start + lead + len(stripped)))
            elif ch is not None and i > offset and sign_seen_twice(pieces, text, start, i):
                raise FormulaError("Two operators in a row; remove one.", text, (i, i + 1))
            elif ch is None:
                raise FormulaError("The formula ends with an operator or has nothing after '~'; add a term.", text, (max(start - 1, 0), len(text)))
            sign = ch or "+"
            start = i + 1
    return pieces


def sign_seen_twice(pieces: list[_Piece], text: str, start: int, i: int) -> bool:
    """True when an empty piece sits between two operators (``x + + z``)."""
    before = text[:start].rstrip()
    return bool(pieces) and before.endswith(("+", "-"))


def _is_group_term(piece: _Piece) -> bool:
    if not (piece.text.startswith("(") and piece.text.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(piece.text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(piece.text) - 1:
            return False  # e.g. "(a + b):c" -- not one parenthesised term
        if ch == "|" and depth == 1:
            return True
    return False


def _parse_group_term(text: str, piece: _Piece) -> list[GroupTerm]:
    inner_start = piece.start + 1
    inner = piece.text[1:-1]
    bar = _top_level_bar(inner)
    if inner[bar : bar + 3] == "|||":
        pos = inner_start + bar
        raise FormulaError(
            "'|||' is not an operator: use '|' for correlated effects or '||' for uncorrelated ones, e.g. (1 + x1 || market).",
            text, (pos, pos + 3),
        )
    double = inner[bar : bar + 2] == "||"
    expr, group = inner[:bar], inner[bar + (2 if double else 1) :]
    intercept, slopes = _parse_group_expr(text, expr, inner_start)
    group_offset = inner_start + bar + (2 if double else 1)
    factors = _parse_grouping(text, group, group_offset)
    if not intercept and not slopes:
        raise FormulaError("This group-level term has no intercept and no slope; write e.g. (1 | market).", text, (piece.start, piece.end))
    return [GroupTerm(f, intercept, slopes, correlated=not double, text=piece.text) for f in factors]


def _top_level_bar(inner: str) -> int:
    depth = 0
    for i, ch in enumerate(inner):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "|" and depth == 0:
            return i
    raise AssertionError("caller checked for '|'")  # pragma: no cover


def _parse_group_expr(text: str, expr: str, offset: int) -> tuple[bool, tuple[str, ...]]:
    """Read ``1 + x1``, ``0 + x1``, ``x1 - 1`` into (intercept?, slopes)."""
    intercept = True
    slopes: list[str] = []
    sign = "+"
    expect_atom = True
    for m in _TOKEN_RE.finditer(expr):
        kind = m.lastgroup
        value = m.group(kind) if kind else ""
        span = (offset + m.start(kind), offset + m.end(kind)) if kind else None
        if kind == "op":
            if not expect_atom and value in "+-":
                sign, expect_atom = value, True
                continue
            if expect_atom and value == "-" and sign == "+":
                sign = "-"
                continue
            raise FormulaError("Two operators in a row; remove one.", text, span)
        if not expect_atom:
            raise FormulaError(
                "Group-level terms take '1', '0' and numeric column names joined by '+' (write a "
                "derived column into the data first, or put transforms in the population part).",
                text,
                (span[0], offset + len(expr.rstrip())) if span else None,
            )
        if kind == "number" and value in {"0", "1"}:
            intercept = (value == "1") == (sign == "+")
        elif kind == "name":
            if sign == "-":
                raise FormulaError("Only the intercept can be removed with '-' in a group-level term.", text, span)
            slopes.append(_strip_name(value))
        else:
            raise FormulaError(
                "Group-level terms take '1', '0' and numeric column names only (write the "
                "derived column into the data first, or put interactions in the population part).",
                text,
                (span[0], offset + len(expr.rstrip())) if span else None,
            )
        sign, expect_atom = "+", False
    if expect_atom and expr.strip():
        raise FormulaError("The group-level term ends with an operator.", text, (offset, offset + len(expr)))
    if not expr.strip():
        raise FormulaError("Nothing left of '|'; write e.g. (1 | market).", text, (offset - 1, offset + 1))
    if len(set(slopes)) != len(slopes):
        raise FormulaError("A slope appears twice in one group-level term.", text, (offset, offset + len(expr)))
    return intercept, tuple(slopes)


def _parse_grouping(text: str, group: str, offset: int) -> list[GroupingFactor]:
    """``a`` -> [a]; ``a/b/c`` -> [a, a:b, a:b:c]; ``a:b`` -> [a:b]."""
    stripped = group.strip()
    lead = len(group) - len(group.lstrip())
    span = (offset + lead, offset + lead + len(stripped))
    if not stripped:
        raise FormulaError("Nothing right of '|'; name the grouping column, e.g. (1 | market).", text, (offset - 1, offset + 1))
    if "/" in stripped and ":" in stripped:
        raise FormulaError("Use either '/' (nesting) or ':' (a combined factor) in one grouping, not both.", text, span)
    sep = "/" if "/" in stripped else ":"
    names = [p.strip() for p in stripped.split(sep)]
    for name in names:
        if not _NAME_RE.match(name):
            raise FormulaError(f"{name!r} is not a column name; a grouping is like 'market', 'market/submarket' or 'market:submarket'.", text, span)
    names = [_strip_name(n) for n in names]
    if len(set(names)) != len(names):
        raise FormulaError("A column appears twice in one grouping.", text, span)
    if sep == ":":
        return [GroupingFactor(tuple(names))]
    return [GroupingFactor(tuple(names[: i + 1])) for i in range(len(names))]


def _check_duplicate_coefficients(text: str, terms: list[GroupTerm]) -> None:
    seen: dict[tuple[GroupingFactor, str], GroupTerm] = {}
    for term in terms:
        for coef in term.coefficients:
            key = (term.factor, coef)
            if key in seen:
                start = text.find(term.text)
                raise FormulaError(
                    f"'{coef}' varies by '{term.factor.label}' in two group-level terms; keep it in one.",
                    text,
                    (start, start + len(term.text)) if start >= 0 else None,
                )
            seen[key] = term


def _strip_name(name: str) -> str:
    return name[1:-1] if name.startswith("`") and name.endswith("`") else name
