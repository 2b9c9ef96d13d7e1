"""Gradient-boosting engines: ``lightgbm`` (trees over the hierarchy columns) and
``boosted-mixed`` (trees for the population function, a mixed model for the hierarchy).

Each engine lives in its own module (imported lazily by the registry); LightGBM itself is
imported only inside functions.
"""
