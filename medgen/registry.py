"""Name -> constructor tables: methods, datasets (phantoms and real data), metrics.

Modules register themselves on import with the decorators below; :func:`lookup` gives a
one-line error that names the unknown entry and suggests the closest known one.

This module is a leaf: it imports nothing from medgen, so the tables are filled only by
importing the packages that register into them. A caller imports what it looks up::

    import medgen.methods  # noqa: F401 -- fills METHODS
    import medgen.data  # noqa: F401 -- fills DATASETS and PHANTOMS (medgen.data.phantoms: PHANTOMS only)
    import medgen.metrics  # noqa: F401 -- fills METRICS

>>> from medgen import registry
>>> @registry.register(registry.METRICS, "my_metric")
... def my_metric(pred, target, *, data_range, mask=None): ...
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, TypeVar

T = TypeVar("T")

METHODS: dict[str, Callable[..., Any]] = {}  # method name -> class (cfg: RunConfig) -> Method
DATASETS: dict[str, Callable[..., Any]] = {}  # dataset name -> (cfg: DataConfig, split: str) -> Dataset
METRICS: dict[str, Callable[..., Any]] = {}  # metric name -> fn(pred, target, *, data_range, mask) -> [B]
PHANTOMS: dict[str, Any] = {}  # anatomy name -> medgen.data.phantoms.base.PhantomSpec

_TABLE_NAMES = {id(METHODS): "method", id(DATASETS): "dataset", id(METRICS): "metric",
                id(PHANTOMS): "phantom"}


class UnknownNameError(KeyError):
    """An unknown registry name; ``str()`` is one line with a suggestion."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register(table: dict[str, Any], name: str) -> Callable[[T], T]:
    """Decorator that adds the decorated object to ``table`` under ``name``."""

    def deco(obj: T) -> T:
        if name in table and table[name] is not obj:
            raise ValueError(f"{_TABLE_NAMES.get(id(table), 'entry')} '{name}' registered twice")
        table[name] = obj
        return obj

    return deco


def lookup(table: dict[str, Any], name: str) -> Any:
    """``table[name]`` with a helpful one-line error for unknown names.

    The caller must have imported the package that fills ``table`` (see the module docstring);
    an empty table gives the same one-line error, listing ``known: none``.
    """
    if name in table:
        return table[name]
    kind = _TABLE_NAMES.get(id(table), "entry")
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UnknownNameError(f"unknown {kind} '{name}' (known: {', '.join(sorted(table)) or 'none'}){hint}")

