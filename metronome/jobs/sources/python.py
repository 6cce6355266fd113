"""A Python source: an entry point ``module:function`` returning the counts.

The function takes no arguments and returns a number (one point of the collector's
type), a mapping ``{type: count}``, or an iterable of ``(type, count)`` pairs. It may be a
coroutine function (awaited, and cancelled at the timeout) or a plain one (run in a
daemon thread; at the timeout the run is recorded as timed out and the thread left to
finish).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from metronome.jobs.sources import Measured, count_of, in_daemon_thread

__all__ = ["PythonSource", "parse"]

_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True, slots=True)
class PythonSource:
    entry: str

    def describe(self) -> str:
        return f"python {self.entry}"

    def function(self) -> Callable[[], Any]:
        module_name, _, name = self.entry.partition(":")
        module = importlib.import_module(module_name)
        function = getattr(module, name, None)
        if not callable(function):
            raise ValueError(f"{self.entry}: {module_name} has no function {name!r}")
        return function  # type: ignore[no-any-return]

    async def measure(self, default_type: str, timeout_s: float) -> Measured:
        function = self.function()
        if inspect.iscoroutinefunction(function):
            value = await function()
        else:
            value = await in_daemon_thread(function, "collector-python")
        return to_points(value, default_type)


def to_points(value: Any, default_type: str) -> Measured:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(default_type, count_of(value, "the returned value"))]
    if isinstance(value, Mapping):
        return [(str(k), count_of(v, f"the count of {k!r}")) for k, v in value.items()]
    try:
        pairs = list(value)
    except TypeError:
        raise ValueError(
            f"returned {type(value).__name__}; return a number, {{type: count}} or"
            " (type, count) pairs"
        ) from None
    points: Measured = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"item {index} is not a (type, count) pair")
        points.append((str(pair[0]), count_of(pair[1], f"item {index}'s count")))
    return points


def parse(table: Any, key: str) -> PythonSource:
    entry = table.get("entry") if isinstance(table, dict) else table
    if not isinstance(entry, str) or not _ENTRY.match(entry):
        raise ValueError(f"{key}: expected an entry point 'module:function' (or entry = ...)")
    if isinstance(table, dict) and set(table) - {"entry"}:
        raise ValueError(f"{key}: python takes entry only")
    return PythonSource(entry)
