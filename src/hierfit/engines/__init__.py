"""Engines behind one protocol, registered in one table (see :mod:`hierfit.engines.registry`)."""

from hierfit.engines.registry import (
    ENGINES,
    Capabilities,
    EngineEntry,
    check_capabilities,
    default_engine,
    get_engine,
    register,
)

__all__ = ["ENGINES", "Capabilities", "EngineEntry", "check_capabilities", "default_engine", "get_engine", "register"]
