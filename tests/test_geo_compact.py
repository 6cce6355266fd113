"""The country database keeps its per-network values (first addresses, IPv4 and IPv6,
prefix lengths, countries) in arrays (a third of the memory, and no pages copied by
``metronome import``'s forked parsing processes): its answers are the ones the package
gives with its own lists, read in a separate process."""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys
from array import array

from metronome.events import geo

_PLAIN = """
import json, sys
from geoip2fast import GeoIP2Fast
db = GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz", verbose=False)
addresses = json.load(sys.stdin)
print(json.dumps([[r.country_code, r.is_private] for r in map(db.lookup, addresses)]))
"""


def _addresses(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    found = ["81.2.69.160", "8.8.8.8", "10.1.2.3", "127.0.0.1", "2001:db8::1", "::1"]
    while len(found) < count:
        if rng.random() < 0.7:
            found.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        else:  # mostly global unicast (2000::/3), some anywhere
            bits = rng.getrandbits(125) | (1 << 125) if rng.random() < 0.8 else rng.getrandbits(128)
            found.append(str(ipaddress.IPv6Address(bits)))
    return found


def _edges() -> list[str]:
    """The first and last networks' first addresses of every chunk, and their neighbours:
    where a bisection goes wrong first."""
    geo.country_iso_code("192.0.2.1")  # loads and compacts the database
    found = []
    for chunk in sys.modules["geoip2fast.geoip2fast"].mainListFirstIP:
        for value in (chunk[0], chunk[len(chunk) - 1], chunk[len(chunk) // 2]):
            for near in (value - 1, value, value + 1):
                if 0 <= near < 1 << 32:
                    found.append(str(ipaddress.IPv4Address(near)))
                elif (1 << 32) <= near < 1 << 128:
                    found.append(str(ipaddress.IPv6Address(near)))
    return found


def test_compacted_database_answers_every_address_as_the_package_does() -> None:
    addresses = _addresses(4000, seed=24) + _edges()
    plain = subprocess.run(
        [sys.executable, "-c", _PLAIN],
        input=json.dumps(addresses),
        capture_output=True,
        text=True,
        check=True,
    )
    expected = json.loads(plain.stdout)
    database = geo._database()
    compacted = [[r.country_code, r.is_private] for r in map(database.lookup, addresses)]
    assert compacted == expected
    package = sys.modules["geoip2fast.geoip2fast"]
    chunks = package.mainListFirstIP
    assert sum(len(c) for c in chunks if isinstance(c, array)) > 400_000  # it did compact
    wide = [c for c in chunks if isinstance(c, geo._WideAddresses)]  # IPv6, two arrays
    assert sum(map(len, wide)) > 200_000
    assert not any(isinstance(c, list) for c in chunks)
    for per_network in (package.mainListNetlength, package.mainListIDCountryCodes):
        assert all(isinstance(c, array) and c.itemsize <= 2 for c in per_network)
    assert sum(code not in ("", "--", "<not found in database>") for code, _ in expected) > 2000
