"""ModelSpec, Hierarchy, Family and Prior tables."""

from hierfit.spec.family import FAMILIES, Family, get_family
from hierfit.spec.hierarchy import Hierarchy, Level, build_hierarchy
from hierfit.spec.model import DEFAULT_NATIONAL, ModelSpec, make_spec
from hierfit.spec.priors import Prior

__all__ = [
    "DEFAULT_NATIONAL",
    "FAMILIES",
    "Family",
    "Hierarchy",
    "Level",
    "ModelSpec",
    "Prior",
    "build_hierarchy",
    "get_family",
    "make_spec",
]
