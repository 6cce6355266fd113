"""What is kept about visitors: no raw address unless asked, daily visitor ids, salts."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from metronome.events.enrich import stored_address
from metronome.events.visitor import VisitorIds
from tests.support.backends import wait_for_drain
from tests.support.metronome_server import MetronomeServer

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def _docs(server: MetronomeServer) -> list[dict]:
    wait_for_drain(server)
    with sqlite3.connect(server.data_dir / "metronome.sqlite3") as conn:
        return [
            json.loads(r[0])
            for r in conn.execute(
                "SELECT doc FROM events WHERE dataset != 'visits' ORDER BY ts, id"
            )
        ]


@pytest.mark.parametrize(
    ("policy", "stored"), [(None, None), ("truncate", "81.2.69.0"), ("keep", "81.2.69.160")]
)
def test_client_addresses_are_dropped_unless_configured(
    tmp_path: Path, policy: str | None, stored: str | None
) -> None:
    env = {"METRONOME_TRUSTED_PROXIES": "127.0.0.0/8"}
    if policy:
        env["METRONOME_CLIENT_IP"] = policy
    server = MetronomeServer(env, data_dir=tmp_path / "data")
    server.start()
    try:
        for agent in (FIREFOX, FIREFOX, "curl/8.5.0"):
            resp = httpx.post(
                f"{server.url}/tick",
                json={"id": "page"},
                headers={"X-Forwarded-For": "81.2.69.160", "User-Agent": agent},
            )
            assert resp.status_code == 202
        log = tmp_path / "access.log"
        log.write_text(
            f'81.2.69.160 - - [04/Jun/2019:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "{FIREFOX}"\n'
        )
        assert server.run_cli("import", str(log)).returncode == 0
        docs = _docs(server)
    finally:
        server.stop()
    ticks = [d for d in docs if d["event"]["dataset"] == "metronome.ticks"]
    (line,) = [d for d in docs if d["event"]["dataset"] == "metronome.logs"]
    for doc in ticks:
        assert doc["client"].get("ip") == stored
        assert doc["client"]["geo"] == {"country_iso_code": "GB"}  # still known
    assert line.get("source", {}).get("ip") == stored
    assert line["client"]["geo"] == {"country_iso_code": "GB"}
    # the same browser is one visitor all day; another browser at that address is another
    ids = [d["visitor"]["id"] for d in ticks]
    assert ids[0] == ids[1] != ids[2]
    assert "81.2.69" not in json.dumps(ids)


def test_truncation_keeps_only_the_network() -> None:
    assert stored_address("203.0.113.77", "truncate") == "203.0.113.0"
    assert stored_address("2001:db8:abcd:12::7", "truncate") == "2001:db8:abcd::"
    assert stored_address("2001:db8::7", "drop") is None
    assert stored_address(None, "keep") is None


def test_salts_rotate_daily_and_old_ones_are_deleted(tmp_path: Path) -> None:
    ids = VisitorIds(tmp_path)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    today = ids.visitor_id(now_ms, "198.51.100.1", FIREFOX)
    assert today == VisitorIds(tmp_path).visitor_id(now_ms, "198.51.100.1", FIREFOX)
    tomorrow = ids.visitor_id(now_ms + 86_400_000, "198.51.100.1", FIREFOX)
    assert tomorrow != today  # a new day, a new salt: not linkable
    assert ids.visitor_id(now_ms, "198.51.100.1", FIREFOX, scope="site-b") != today
    assert ids.visitor_id(now_ms, None, FIREFOX) is None
    old = VisitorIds(tmp_path).visitor_id(now_ms - 10 * 86_400_000, "198.51.100.1", FIREFOX)
    assert old != today
    salts = sorted(p.name for p in (tmp_path / "salts").iterdir())
    day = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    assert day.strftime("%Y-%m-%d") in salts
    # the salt of ten days ago was made for that import and deleted at once
    assert len(salts) <= 2 and all(len((tmp_path / "salts" / s).read_bytes()) == 32 for s in salts)


def test_a_visitor_id_is_blake2b_keyed_with_the_days_salt(tmp_path: Path) -> None:
    """The id the module documents, so ids made before and after an upgrade on the same
    day (and by several processes) agree."""
    ids = VisitorIds(tmp_path)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    first = ids.visitor_id(now_ms, "198.51.100.1", FIREFOX, scope="site-a")
    day = datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y-%m-%d")
    salt = (tmp_path / "salts" / day).read_bytes()
    expected = hashlib.blake2b(
        f"site-a\x00198.51.100.1\x00{FIREFOX}".encode(), key=salt, digest_size=12
    ).hexdigest()
    assert first == expected
    # another client: a new id from the same day's key, not a cached one
    assert (
        ids.visitor_id(now_ms, "198.51.100.2", FIREFOX, scope="site-a")
        == hashlib.blake2b(
            f"site-a\x00198.51.100.2\x00{FIREFOX}".encode(), key=salt, digest_size=12
        ).hexdigest()
    )
    assert (
        ids.visitor_id(now_ms, "198.51.100.1", None, scope="site-a")
        == hashlib.blake2b(b"site-a\x00198.51.100.1\x00", key=salt, digest_size=12).hexdigest()
    )


def test_with_sites_only_a_site_that_opted_in_stores_addresses(tmp_path: Path) -> None:
    server = MetronomeServer(
        {"METRONOME_TRUSTED_PROXIES": "127.0.0.0/8"}, data_dir=tmp_path / "data"
    )
    keys = {}
    for site, extra in (("quiet", []), ("opted", ["--store-ip"])):
        made = server.run_cli("sites", "create", "--id", site, "--name", site, *extra)
        assert made.returncode == 0, made.stderr
        key = server.run_cli("keys", "create", "--site", site, "--scope", "ingest", "--json")
        keys[site] = json.loads(key.stdout)["secret"]
    server.start()
    try:
        for site, key in keys.items():
            resp = httpx.post(
                f"{server.url}/tick",
                json={"id": f"page-{site}"},
                headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": "81.2.69.160"},
            )
            assert resp.status_code == 202, resp.text
        docs = {d["item"]["id"]: d for d in _docs(server)}
    finally:
        server.stop()
    assert docs["page-quiet"]["client"] == {"geo": {"country_iso_code": "GB"}}
    assert docs["page-opted"]["client"] == {"ip": "81.2.69.0", "geo": {"country_iso_code": "GB"}}
    assert docs["page-quiet"]["site"] == {"id": "quiet"}
