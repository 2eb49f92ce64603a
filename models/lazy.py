"""A module named at the top of a file but imported where it is first used.

A serving worker imports the modules it shares with training and the monitor (the feature schema,
the registry, the prediction store), but it never uses pandas, which those modules use elsewhere:
imported, pandas (and pyarrow with it) would cost every worker about 100 MiB and most of a second
at start. Such a module names it as usual, and pandas is imported at the first ``pd.<name>``::

    if TYPE_CHECKING:
        import pandas as pd
    else:
        pd = lazy_module("pandas")

tests/unit/test_worker_imports.py holds a serving worker to it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``; imports it when one of its attributes is first read."""

    __slots__ = ("_lazy_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_lazy_name", name)

    @property
    def module(self) -> ModuleType:
        """The module itself (imported now if it was not yet)."""
        return importlib.import_module(self._lazy_name)  # after the first time: a sys.modules lookup

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.module, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"{self._lazy_name} is imported lazily here: set attributes on the module itself")

    def __repr__(self) -> str:
        return f"<module {self._lazy_name!r}, imported at first use>"


def lazy_module(name: str) -> Any:
    """The module ``name``, imported at the first use of one of its attributes (typed ``Any``:
    import the real module under ``TYPE_CHECKING`` for the type checker)."""
    return LazyModule(name)
