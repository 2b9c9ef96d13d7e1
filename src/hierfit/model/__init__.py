"""What to fit, independent of data and engine: ModelSpec, the family table, priors.

Everything here is inert: constructors store and validate arguments; nothing reads data.
"""

from hierfit.model.family import FAMILIES, Family, get_family
from hierfit.model.priors import Prior
from hierfit.model.spec import DEFAULT_NATIONAL, ModelSpec, make_spec

__all__ = [
    "DEFAULT_NATIONAL",
    "FAMILIES",
    "Family",
    "ModelSpec",
    "Prior",
    "get_family",
    "make_spec",
]
