"""From a spec and data to numbers: the tree of groups, arrays, and the encoding for new data."""

from hierfit.design.build import NATIONAL_LEVEL, Design, DesignEncoding, RowColumns, RowDesign, TermDesign, build_design
from hierfit.design.hierarchy import Hierarchy, Level, build_hierarchy
from hierfit.design.streamed import StreamedDesign, build_streamed_design

__all__ = [
    "NATIONAL_LEVEL",
    "Design",
    "DesignEncoding",
    "Hierarchy",
    "Level",
    "RowColumns",
    "RowDesign",
    "StreamedDesign",
    "TermDesign",
    "build_design",
    "build_hierarchy",
    "build_streamed_design",
]
