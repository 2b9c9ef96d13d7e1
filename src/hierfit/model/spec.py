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
    """

    formula: ParsedFormula
    family: Family = field(default_factory=lambda: get_family("gaussian"))
    national: str = DEFAULT_NATIONAL
    hierarchy: tuple[str, ...] | None = None
    priors: Mapping[str, Prior] = field(default_factory=dict)

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
) -> ModelSpec:
    """Parse and validate a formula into a :class:`ModelSpec`.

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
        unknown = [h for h in hier if h not in levels]
        if unknown or len(set(hier)) != len(hier):
            raise SpecError(
                f"The 'hierarchy' argument lists levels {list(hier)!r}, but the formula's levels are "
                f"{sorted(levels)!r}; list each of those at most once, top level first."
            )
    return ModelSpec(parsed, fam, national, hier, validate_priors(priors or {}))
