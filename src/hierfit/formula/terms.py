"""Terms a formula resolves to: the population part and the group-level terms."""

from __future__ import annotations

from dataclasses import dataclass

INTERCEPT = "Intercept"


@dataclass(frozen=True)
class GroupingFactor:
    """The columns whose combined values identify a group, e.g. ``market:submarket``.

    A factor of several columns identifies a group by its whole path, so ``Sub_1`` under
    ``Market_1`` and ``Sub_1`` under ``Market_2`` are two groups. The level is named after
    the last column (``submarket``), as users name levels.

    Examples
    --------
    >>> f = GroupingFactor(("market", "submarket"))
    >>> f.level, f.label
    ('submarket', 'market:submarket')
    """

    columns: tuple[str, ...]

    @property
    def level(self) -> str:
        return self.columns[-1]

    @property
    def label(self) -> str:
        return ":".join(self.columns)


@dataclass(frozen=True)
class GroupTerm:
    """One group-level term such as ``(1 + x1 | market)``.

    ``correlated`` is False for ``||`` (lme4's diagonal covariance).
    """

    factor: GroupingFactor
    intercept: bool
    slopes: tuple[str, ...]
    correlated: bool = True
    text: str = ""

    @property
    def coefficients(self) -> tuple[str, ...]:
        """Coefficient names in order: ``Intercept`` first when present, then slopes."""
        return ((INTERCEPT,) if self.intercept else ()) + self.slopes

    @property
    def level(self) -> str:
        return self.factor.level


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into its parts.

    ``population`` is the right-hand side without group-level terms and offsets, in formulaic
    syntax (``"1"`` when nothing else is left); ``group_terms`` are expanded (``a/b`` becomes
    ``a`` and ``a:b``). ``offsets`` are the expressions inside ``offset(...)`` terms (added to
    the linear predictor with coefficient 1, as in lme4). For a binomial outcome written
    ``cbind(successes, failures) ~ ...``, ``response`` is the successes column and ``failures``
    the expression of the failures (``n - y``), so trials are ``successes + failures``.
    """

    text: str
    response: str
    population: str
    group_terms: tuple[GroupTerm, ...]
    offsets: tuple[str, ...] = ()
    failures: str | None = None

    @property
    def factors(self) -> tuple[GroupingFactor, ...]:
        """Distinct grouping factors in order of first appearance."""
        seen: dict[GroupingFactor, None] = {}
        for term in self.group_terms:
            seen.setdefault(term.factor, None)
        return tuple(seen)

    @property
    def slope_columns(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for term in self.group_terms:
            for s in term.slopes:
                seen.setdefault(s, None)
        return tuple(seen)
