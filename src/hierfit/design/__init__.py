"""From a spec and data to numbers: the tree of groups, arrays, and the encoding for new data."""

from hierfit.design.build import NATIONAL_LEVEL, Design, DesignEncoding, RowDesign, TermDesign, build_design
from hierfit.design.hierarchy import Hierarchy, Level, build_hierarchy

__all__ = [
    "NATIONAL_LEVEL",
    "Design",
    "DesignEncoding",
    "Hierarchy",
    "Level",
    "RowDesign",
    "TermDesign",
    "build_design",
    "build_hierarchy",
]
