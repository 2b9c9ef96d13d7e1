"""The model spec: what to fit, independent of data and engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hierfit.exceptions import SpecError
from hierfit.formula import ParsedFormula, parse_formula
from hierfit.model.family import Family, get_family
from hierfit.model.priors import Prior, validate_priors

DEFAULT_NATIONAL = "national"


@dataclass(frozen=True)
class ModelSpec:
    """An inert, engine-neutral description of a hierarchical model.

    Build it with :func:`make_spec`; engines translate it to their own terms.

    Attributes
    ----------
    formula
        The parsed formula (response, population part, group-level terms).
    family
        The outcome family row (:data:`hierfit.model.family.FAMILIES`), its link included.
    national
        Display name of the root of the tree (the population intercept), e.g. ``"United_state"``.
    hierarchy
        Optional explicit order of levels, top first (``("market", "submarket")``). When given,
        labels at each level are identifiers and every child must sit under exactly one parent.
    priors
        Engine-neutral priors by target (see :mod:`hierfit.model.priors`).
    offset, weights
        Names of the data columns holding a known part of the linear predictor (added to any
        ``offset(...)`` in the formula) and prior weights (lme4's ``weights``), or ``None``.
    """

    formula: ParsedFormula
    family: Family = field(default_factory=lambda: get_family("gaussian"))
    national: str = DEFAULT_NATIONAL
    hierarchy: tuple[str, ...] | None = None
    priors: Mapping[str, Prior] = field(default_factory=dict)
    offset: str | None = None
    weights: str | None = None

    @property
    def has_offset(self) -> bool:
        """Whether the linear predictor has a known part (``offset(...)`` or ``offset=``)."""
        return bool(self.formula.offsets) or self.offset is not None

    @property
    def text(self) -> str:
        return self.formula.text

    @property
    def response(self) -> str:
        return self.formula.response

    @property
    def levels(self) -> tuple[str, ...]:
        """Level names in order of first appearance in the formula."""
        return tuple(f.level for f in self.formula.factors)


def make_spec(
    formula: str | ModelSpec,
    *,
    family: str | Family = "gaussian",
    link: str | None = None,
    national: str = DEFAULT_NATIONAL,
    hierarchy: Sequence[str] | None = None,
    priors: Mapping[str, Prior] | None = None,
    offset: str | None = None,
    weights: str | None = None,
) -> ModelSpec:
    """Parse and validate a formula into a :class:`ModelSpec`.

    ``offset`` and ``weights`` name data columns (see :class:`ModelSpec`). A binomial outcome is
    written as in lme4, ``cbind(successes, failures) ~ ...``, with ``family="binomial"``.

    Examples
    --------
    >>> spec = make_spec("y ~ x1 + (1 + x1 | market/submarket)", national="United_state")
    >>> spec.levels, spec.national
    (('market', 'submarket'), 'United_state')
    """
    if isinstance(formula, ModelSpec):
        return formula
    parsed = parse_formula(formula)
    fam = family.with_link(link) if isinstance(family, Family) else get_family(family, link)
    if fam.has_trials and parsed.failures is None:
        raise SpecError(
            f"Family {fam.name!r} counts successes out of trials: write the outcome as cbind(successes, failures) ~ ..., "
            "e.g. cbind(y, n - y) ~ x + (1 | market) (for a 0/1 outcome use family='bernoulli')."
        )
    if parsed.failures is not None and not fam.has_trials:
        raise SpecError(
            f"cbind(successes, failures) is the binomial outcome; pass family='binomial' (got family={fam.name!r})."
        )
    for role, column in (("offset", offset), ("weights", weights)):
        if column is not None and not (isinstance(column, str) and column.strip()):
            raise SpecError(
                f"The {role!r} argument names a data column (e.g. {role}='exposure'); got {type(column).__name__}. "
                "Put the values in a column of the data."
            )
    if not isinstance(national, str) or not national.strip():
        raise SpecError(f"The 'national' name must be a non-empty string; got {national!r}.")
    levels = [f.level for f in parsed.factors]
    labels = [f.label for f in parsed.factors]
    duplicated = sorted({lv for lv in levels if levels.count(lv) > 1})
    if duplicated:
        raise SpecError(
            f"Two grouping factors end in the same column {duplicated[0]!r} ({', '.join(l for l in labels if l.endswith(duplicated[0]))}); "
            "levels are named after their last column, so rename one column."
        )
    if national in levels:
        raise SpecError(f"The national name {national!r} is also a level name; pick another national name.")
    hier: tuple[str, ...] | None = None
    if hierarchy is not None:
        hier = tuple(hierarchy)
        nested = [f.label for f in parsed.factors if len(f.columns) > 1]
        if nested:
            raise SpecError(
                f"hierarchy={hier!r} reads each level's labels as identifiers (every child under exactly one parent), but "
                f"the formula nests with '/' or ':' ({', '.join(repr(n) for n in nested)}), which reads labels within their "
                "parent. Use one of the two: drop hierarchy= to keep the nesting, or write the terms as (1 | market) + "
                "(1 | submarket) and declare the order with hierarchy=."
            )
        unknown = [h for h in hier if h not in levels]
        if unknown or len(set(hier)) != len(hier):
            raise SpecError(
                f"The 'hierarchy' argument lists levels {list(hier)!r}, but the formula's levels are "
                f"{sorted(levels)!r}; list each of those at most once, top level first."
            )
    return ModelSpec(parsed, fam, national, hier, validate_priors(priors or {}), offset, weights)
