"""The country database keeps its IPv4 first addresses in arrays (less memory, and no
pages copied by ``metronome import``'s forked parsing processes): its answers are the
ones the package gives with its own lists, read in a separate process."""

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


def test_compacted_database_answers_every_address_as_the_package_does() -> None:
    addresses = _addresses(4000, seed=24)
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
    chunks = sys.modules["geoip2fast.geoip2fast"].mainListFirstIP
    assert sum(len(c) for c in chunks if isinstance(c, array)) > 400_000  # it did compact
    assert sum(code not in ("", "--", "<not found in database>") for code, _ in expected) > 2000
