"""Adopting sites hides nothing: the first ``metronome sites create`` also creates site
``default``, which keeps every event collected before sites existed, and every setting or
flag that names a site must name one that exists."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metronome.errors import UnknownSite
from metronome.sites.model import Site, Snapshot
from metronome.sites.registry import check_site
from tests.support.fuzz import fuzz
from tests.support.metronome_server import MetronomeServer

DAY = {"from": "2026-04-02", "to": "2026-04-02"}
LINE = '8.8.8.8 - - [02/Apr/2026:10:00:00 +0000] "GET /datasets/{item} HTTP/1.1" 200 5 "-" "curl/8"'


@pytest.fixture(params=["sqlite", "elasticsearch"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetronomeServer]:
    """A fresh ``metronome serve`` with no sites, on each store."""
    env = {"METRONOME_SITES_CACHE_S": "1", "METRONOME_URL_RULES": "/datasets/{id}"}
    es_url = None
    if request.param == "elasticsearch":
        es_url = request.getfixturevalue("es_url")
        prefix = "mt-" + uuid.uuid4().hex[:10]
        env |= {"METRONOME_ELASTICSEARCH_URL": es_url, "METRONOME_INDEX_PREFIX": prefix}
    started = MetronomeServer(env, data_dir=tmp_path / "data")
    started.start()
    try:
        yield started
    finally:
        code = started.stop()
        if es_url:
            httpx.delete(f"{es_url}/{prefix}-*", params={"expand_wildcards": "all"}, timeout=30)
            httpx.delete(f"{es_url}/_index_template/{prefix}-*", timeout=30)
            httpx.delete(f"{es_url}/_component_template/{prefix}-*", timeout=30)
    assert code == 0, started.log_tail()
    assert "Traceback" not in started.log_path.read_text(), started.log_tail(80)


def _cli(server: MetronomeServer, *args: str) -> Any:
    result = server.run_cli(*args, timeout_s=60)
    assert result.returncode == 0, result.stderr
    return result


def _views(server: MetronomeServer, item: str, key: str, **params: str) -> int:
    """Views of ``item`` on DAY read with ``key``, once the shipper and caches caught up."""
    deadline = time.monotonic() + 30
    while True:
        resp = httpx.get(
            f"{server.url}/tock/{item}",
            params={**DAY, **params},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the workers' caches have not seen the key yet
    assert resp.status_code == 200, resp.text
    return sum(resp.json()["views"].values())


def _eventually(expected: int, read: Any) -> None:
    deadline = time.monotonic() + 30
    while (got := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.3)
    assert got == expected


def test_the_first_site_adopts_what_was_collected_before_and_says_so(
    server: MetronomeServer, item: str, tmp_path: Path
) -> None:
    resp = httpx.post(f"{server.url}/tick", json={"id": item, "ts": "2026-04-02T09:00:00Z"})
    assert resp.status_code == 202, resp.text
    log = tmp_path / "access.log"
    log.write_text(LINE.format(item=item) + "\n")
    _cli(server, "import", str(log))

    first = _cli(server, "sites", "create", "--name", "Shop", "--json")
    shop = json.loads(first.stdout)["id"]
    assert "created site default" in first.stderr
    assert "collected before sites existed" in first.stderr
    listed = json.loads(_cli(server, "sites", "list", "--json").stdout)
    assert sorted(s["id"] for s in listed) == sorted(["default", shop])
    second = _cli(server, "sites", "create", "--name", "Blog")
    assert "default" not in second.stderr  # only the first site adopts

    admin = json.loads(
        _cli(server, "keys", "create", "--all-sites", "--scope", "admin", "--json").stdout
    )["secret"]
    reader = json.loads(
        _cli(server, "keys", "create", "--site", "default", "--scope", "query", "--json").stdout
    )["secret"]
    _eventually(2, lambda: _views(server, item, admin, site="default"))  # the tick and the line
    assert _views(server, item, reader) == 2
    assert _views(server, item, admin, site=shop) == 0

    # import keeps writing to site default, which exists now: still visible
    log.write_text(LINE.format(item=item) + "\n" + LINE.format(item=item) + "\n")
    again = _cli(server, "import", str(log))
    assert "stored 1, already stored 1" in again.stderr
    _eventually(3, lambda: _views(server, item, reader))
    # and into the new site when told so
    shop_log = tmp_path / "shop.log"
    shop_log.write_text(LINE.format(item=item).replace("10:00:00", "11:00:00") + "\n")
    to_shop = _cli(server, "import", "--site", shop, str(shop_log))
    assert "stored 1, already stored 0" in to_shop.stderr
    _eventually(1, lambda: _views(server, item, admin, site=shop))
    assert _views(server, item, reader) == 3


@pytest.mark.parametrize(
    ("args", "env", "named_by"),
    [
        (("import", "{log}"), {"METRONOME_LOG_SITE": "nosuch"}, "METRONOME_LOG_SITE"),
        (("import", "--site", "nosuch", "{log}"), {}, "--site"),
        (("ship", "--site", "nosuch", "{log}"), {}, "--site"),
        (
            ("forget", "--where", '[["is", "item", ["x"]]]', "--site", "nosuch", "--yes"),
            {},
            "--site",
        ),
        (("keys", "create", "--site", "nosuch", "--scope", "query"), {}, "nosuch"),
        (
            ("worker",),
            {"METRONOME_FORWARD": "on", "METRONOME_LOG_SITE": "nosuch"},
            "METRONOME_LOG_SITE",
        ),
        (("worker",), {"METRONOME_RETENTION": "400d,nosuch=30d"}, "METRONOME_RETENTION"),
    ],
)
@pytest.mark.parametrize("with_sites", [False, True], ids=["no-sites", "with-sites"])
def test_a_site_named_by_a_setting_or_flag_must_exist(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], named_by: str, with_sites: bool
) -> None:
    log = tmp_path / "access.log"
    log.write_text(LINE.format(item="x") + "\n")
    runner = MetronomeServer(env, data_dir=tmp_path / "data")  # never started: the CLI only
    if with_sites:
        _cli(runner, "sites", "create", "--name", "Shop")
    result = runner.run_cli(*(a.format(log=log) for a in args), timeout_s=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'nosuch'" in lines[0] and named_by in lines[0], lines[0]
    assert not (tmp_path / "data" / "spool").exists() or not any(
        (tmp_path / "data" / "spool").iterdir()
    )


_names = st.text(st.sampled_from("abc-_0default"), min_size=1, max_size=10)


@fuzz(300)
@given(existing=st.sets(_names.filter(lambda n: n[0] not in "-_"), max_size=4), name=_names)
def test_a_site_name_is_taken_only_when_that_site_exists(existing: set[str], name: str) -> None:
    snapshot = Snapshot({s: Site(s, s) for s in existing}, ())
    allowed = name in existing or (not existing and name == "default")
    if allowed:
        check_site(snapshot, name, "--site")
        return
    with pytest.raises(UnknownSite) as raised:
        check_site(snapshot, name, "--site")
    assert repr(name) in raised.value.message and "--site" in raised.value.message
    assert raised.value.details == {"site": name}
