"""Lazy public names for a package (PEP 562): each imported from its module on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    namespace: dict[str, Any], table: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package with lazy names.

    Parameters
    ----------
    namespace : dict
        The package's ``globals()``: a name, once imported, is stored there, so later
        lookups skip ``__getattr__``; ``__dir__`` lists it and ``namespace["__all__"]``.
    table : mapping of str to str
        Public name → module that defines it, relative to the package (``".dect"``).

    Returns
    -------
    (__getattr__, __dir__)
        To assign at the package's module level.
    """
    package = str(namespace["__name__"])

    def __getattr__(name: str) -> object:
        if name in table:
            value = getattr(importlib.import_module(table[name], package), name)
            namespace[name] = value  # later lookups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
