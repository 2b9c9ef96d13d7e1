"""build_design(): arrays, group indices, parent maps, stored encoding for new data."""

from hierfit.design.build import NATIONAL_LEVEL, Design, DesignEncoding, TermDesign, build_design

__all__ = ["NATIONAL_LEVEL", "Design", "DesignEncoding", "TermDesign", "build_design"]
