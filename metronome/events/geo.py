"""Country of an IP address, from an offline database bundled with the package.

The database is the one ``geoip2fast`` ships (IPv4 and IPv6 country data derived from
MaxMind GeoLite2, CC BY-SA 4.0: "This product includes GeoLite2 data created by MaxMind,
available from https://www.maxmind.com"). No network access, loaded once per process on
first use (about 0.2 s), lookups cached per address.
"""

from __future__ import annotations

import operator
import sys
from array import array
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import repeat
from typing import Any

__all__ = ["compact_database", "country_iso_code"]

_DATABASE: Any = None


def _database() -> Any:
    global _DATABASE
    if _DATABASE is None:
        from geoip2fast import GeoIP2Fast

        _DATABASE = GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz", verbose=False)
        compact_database()
    return _DATABASE


_MAX_U64 = (1 << 64) - 1


class _WideAddresses(Sequence[int]):
    """A chunk of IPv6 first addresses as two arrays (the high and low 64 bits): the
    values of the package's list of ints, for its bisection and indexing, in 16 bytes
    each rather than an int object (about 50 bytes) and its pointer."""

    __slots__ = ("_high", "_low")

    def __init__(self, values: list[int]) -> None:
        # OverflowError for a value outside 0..2**128-1, TypeError for one not an int
        self._high = array("Q", map(operator.rshift, values, repeat(64)))
        self._low = array("Q", map(operator.and_, values, repeat(_MAX_U64)))

    def __len__(self) -> int:
        return len(self._low)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return (self._high[index] << 64) | self._low[index]


def _addresses(chunk: list[Any]) -> Sequence[int]:
    try:
        return array("Q", chunk)  # IPv4 (and any chunk whose addresses fit 64 bits)
    except OverflowError:
        return _WideAddresses(chunk)


def _small_ints(chunk: list[Any]) -> Sequence[int]:
    for code in "BH":
        try:
            return array(code, chunk)
        except OverflowError:
            continue
    return array("I", chunk)


def _compact(chunks: Any, convert: Callable[[list[Any]], Sequence[int]]) -> None:
    """Replace each list of ``chunks`` by ``convert(list)``; a list ``convert`` refuses
    (a value that is not a small enough unsigned int) stays as it is."""
    if not isinstance(chunks, list):
        return
    for number, chunk in enumerate(chunks):
        if isinstance(chunk, list) and chunk:
            try:
                chunks[number] = convert(chunk)
            except (OverflowError, TypeError):
                continue


def compact_database() -> None:
    """Keep the database's per-network values in arrays.

    ``geoip2fast`` holds each network's first address, prefix length and country as
    Python ints in lists (790,000 networks, about 30 MB); a lookup bisects the addresses
    and so writes the reference counts of the ints it reads, which makes a forked
    process (``metronome import``'s parsing processes share the database loaded before
    the fork) copy each page it reads from. Each chunk becomes arrays of the same values:
    IPv4 addresses an ``array('Q')``, IPv6 ones two (:class:`_WideAddresses`), prefix
    lengths and country numbers the smallest unsigned array that holds them (the array
    checks each value as it takes it). The same bisection and indexing, the same
    answers, with no object to write to, in 11 MB rather than 30 (issue 24: 14 MiB less
    at the peak of a 1,000,000-line import; an IPv6 lookup bisects in Python, about 14
    microseconds more, once per address: the answers are cached). Nothing is changed if
    the package keeps them otherwise."""
    module = sys.modules.get("geoip2fast.geoip2fast")
    _compact(getattr(module, "mainListFirstIP", None), _addresses)
    _compact(getattr(module, "mainListNetlength", None), _small_ints)
    _compact(getattr(module, "mainListIDCountryCodes", None), _small_ints)


@lru_cache(maxsize=65536)
def country_iso_code(address: str) -> str | None:
    """``"GB"`` for 81.2.69.160; None for private, reserved or unknown addresses."""
    try:
        result = _database().lookup(address)
    except Exception:  # noqa: BLE001 - an odd address has no country, never an error
        return None
    code = getattr(result, "country_code", None)
    if not code or len(code) != 2 or not code.isalpha() or getattr(result, "is_private", False):
        return None
    return str(code)
