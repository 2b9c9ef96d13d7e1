"""lme4/brms formula syntax -> terms. Its objects stay inside hierfit's spec and design stages."""

from hierfit.formula.parser import parse_formula
from hierfit.formula.terms import INTERCEPT, GroupingFactor, GroupTerm, ParsedFormula

__all__ = ["INTERCEPT", "GroupTerm", "GroupingFactor", "ParsedFormula", "parse_formula"]
