"""Lazy public names for packages: ``import vla_rl_lib`` stays fast, and a missing optional
dependency only matters to the part that needs it."""
from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str], eager: tuple[str, ...] = ()):
    """Return ``(__getattr__, __dir__, __all__)`` for ``package``, whose names in ``exports``
    (name -> module) are imported on first use and then cached in the package."""
    names = sorted(set(exports) | set(eager))

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return names

    return __getattr__, __dir__, names
