"""Where collectors read their counts: one module per kind of source.

Each kind parses its table of a ``[[collectors]]`` entry (``parse``, raising ValueError
naming the key) and measures (``measure``, async, returning ``(type, count)`` pairs):
:mod:`.sql` (a SQLAlchemy URL and a query), :mod:`.http` (a GET of JSON and a JSONPath
per point), :mod:`.python` (an entry point ``module:function``).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

__all__ = ["Measured", "count_of", "in_daemon_thread"]

T = TypeVar("T")

Measured = list[tuple[str, float]]
"""What one run measured: ``(type, count)`` pairs, one point each."""


def count_of(value: Any, what: str) -> float:
    """``value`` as a count (a finite number, not a boolean), or ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"{what} is {type(value).__name__} {str(value)[:40]!r}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} is not a finite number")
    return number


async def in_daemon_thread(function: Callable[[], T], name: str) -> T:
    """``function()`` in a daemon thread of its own. Cancelling the wait (a timeout) leaves
    the thread to finish on its own without holding up the process's exit: a database
    driver's call or a platform's function cannot be interrupted from Python."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def _settle(result: Any, exc: BaseException | None) -> None:
        if done.done():  # the wait was cancelled
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)

    def _run() -> None:
        try:
            result = function()
        except BaseException as exc:  # handed to the waiting coroutine
            loop.call_soon_threadsafe(_settle, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, result, None)

    threading.Thread(target=_run, name=name, daemon=True).start()
    return await done
