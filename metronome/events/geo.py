"""Country of an IP address, from an offline database bundled with the package.

The database is the one ``geoip2fast`` ships (IPv4 and IPv6 country data derived from
MaxMind GeoLite2, CC BY-SA 4.0: "This product includes GeoLite2 data created by MaxMind,
available from https://www.maxmind.com"). No network access, loaded once per process on
first use (about 0.2 s), lookups cached per address.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

__all__ = ["country_iso_code"]

_DATABASE: Any = None


def _database() -> Any:
    global _DATABASE
    if _DATABASE is None:
        from geoip2fast import GeoIP2Fast

        _DATABASE = GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz", verbose=False)
    return _DATABASE


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
