"""Country of an IP address, from an offline database bundled with the package.

The database is the one ``geoip2fast`` ships (IPv4 and IPv6 country data derived from
MaxMind GeoLite2, CC BY-SA 4.0: "This product includes GeoLite2 data created by MaxMind,
available from https://www.maxmind.com"). No network access, loaded once per process on
first use (about 0.2 s), lookups cached per address.
"""

from __future__ import annotations

import sys
from array import array
from functools import lru_cache
from typing import Any

__all__ = ["compact_first_addresses", "country_iso_code"]

_DATABASE: Any = None


def _database() -> Any:
    global _DATABASE
    if _DATABASE is None:
        from geoip2fast import GeoIP2Fast

        _DATABASE = GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz", verbose=False)
        compact_first_addresses()
    return _DATABASE


_MAX_U64 = (1 << 64) - 1


def compact_first_addresses() -> int:
    """Keep the database's IPv4 networks' first addresses in arrays; returns how many.

    ``geoip2fast`` holds each network's first address as a Python int in lists (790,000,
    about 30 MB); a lookup bisects them and so writes the reference counts of the ints
    it reads, which makes a forked process (``metronome import``'s parsing processes
    share the database loaded before the fork) copy each page it reads from. A chunk
    whose addresses all fit 64 bits (the IPv4 ones) becomes an ``array('Q')`` of the
    same values: the same bisection and the same answers, with no object to write to
    (IPv6 chunks stay lists). Nothing is changed if the package keeps them otherwise."""
    module = sys.modules.get("geoip2fast.geoip2fast")
    chunks = getattr(module, "mainListFirstIP", None)
    if not isinstance(chunks, list):
        return 0
    compacted = 0
    for number, chunk in enumerate(chunks):
        if (
            isinstance(chunk, list)
            and chunk
            and all(type(value) is int and 0 <= value <= _MAX_U64 for value in chunk)
        ):
            chunks[number] = array("Q", chunk)
            compacted += len(chunk)
    return compacted


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
