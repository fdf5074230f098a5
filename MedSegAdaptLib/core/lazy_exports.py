"""Package attributes imported on first use (PEP 562), so that command-line parsers build without torch."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[list[str], Callable[[str], object]]:
    """(__all__, __getattr__) for `package`, whose attribute `name` lives in submodule `names[name]`."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{names[name]}", package), name)

    return sorted(names), __getattr__
