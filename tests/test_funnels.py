"""Funnels with steps on events and parameters, and funnels saved per site: exact answers
on both stores, over real HTTP, on a server with two sites and their keys.

A hand-built clickstream on 2021-04-14 (no other test writes there), site ``a``; every
visitor's ticks go in one batch. Times are UTC; ``dl`` is a ``download`` event (no page):

    P  10:00 /dataset   10:01 dl   10:03 /signup plan=pro
    Q  10:00 /dataset   10:02 /pricing   10:04 dl   10:05 /signup plan=free
    R  11:00 /dataset   11:01 /about
    S  12:00 dl   12:01 /dataset
    T  13:00 dl   13:45 /signup plan=free   (45 minutes later: a second visit)

Site ``b`` has one visitor, U: 10:00 /dataset, 10:01 dl, 10:02 /signup plan=pro.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.backends import Backend, running_backend

DAY = {"from": "2021-04-14", "to": "2021-04-14"}
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
SITE = "https://a.example"


def _tick(at: str, page: str | None = None, **params: str) -> dict[str, Any]:
    tick: dict[str, Any] = {"ts": f"2021-04-14T{at}:00Z", **params}
    if page is None:
        return {**tick, "id": "file-1", "event": "download"}
    return {**tick, "id": page, "url": SITE + page}


CLICKS = {
    "10.2.0.1": [_tick("10:00", "/dataset"), _tick("10:01"), _tick("10:03", "/signup", plan="pro")],
    "10.2.0.2": [
        _tick("10:00", "/dataset"),
        _tick("10:02", "/pricing"),
        _tick("10:04"),
        _tick("10:05", "/signup", plan="free"),
    ],
    "10.2.0.3": [_tick("11:00", "/dataset"), _tick("11:01", "/about")],
    "10.2.0.4": [_tick("12:00"), _tick("12:01", "/dataset")],
    "10.2.0.5": [_tick("13:00"), _tick("13:45", "/signup", plan="free")],
}
CLICKS_B = {
    "10.2.0.9": [_tick("10:00", "/dataset"), _tick("10:01"), _tick("10:02", "/signup", plan="pro")]
}

DOWNLOAD_THEN_PRO = [
    {"page": "/dataset"},
    {"event": "download"},
    {"filters": [["is", "params.plan", ["pro"]]], "name": "pro signup"},
]


@dataclass
class World:
    backend: Backend
    a: str
    b: str
    key_a: str  # query and ingest on a
    key_b: str  # query and ingest on b
    admin: str  # admin on every site

    def call(
        self, method: str, path: str, key: str, body: Any = None, **params: str
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self.backend.client.request(
            method,
            path,
            headers=headers,
            params=params,
            content=None if body is None else json.dumps(body),
        )

    def funnel(self, key: str, **funnel: Any) -> dict[str, Any]:
        body = {"source": "visits", "range": DAY, "funnel": funnel}
        resp = self.call("POST", "/query", key, body)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with running_backend(
        request, tmp_path_factory, request.param, {"METRONOME_SITES_CACHE_S": "1"}
    ) as backend:

        def cli(*args: str) -> Any:
            result = backend.server.run_cli(*args, "--json", timeout_s=60)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        a = cli("sites", "create", "--name", "A", "--origin", SITE)["id"]
        b = cli("sites", "create", "--name", "B")["id"]
        keys = [
            cli("keys", "create", *args)["secret"]
            for args in (
                ("--site", a, "--scope", "ingest", "--scope", "query"),
                ("--site", b, "--scope", "ingest", "--scope", "query"),
                ("--all-sites", "--scope", "admin"),
            )
        ]
        world = World(backend, a, b, *keys)
        deadline = time.monotonic() + 10  # every worker's cache sees the sites
        while backend.client.post("/tick", json={"id": "x"}).status_code != 401:
            assert time.monotonic() < deadline, "keys not enforced"
            time.sleep(0.2)
        for key, clicks in ((world.key_a, CLICKS), (world.key_b, CLICKS_B)):
            for address, ticks in clicks.items():
                resp = backend.client.post(
                    "/ticks",
                    json=ticks,
                    headers={
                        "Authorization": f"Bearer {key}",
                        "User-Agent": FIREFOX,
                        "X-Forwarded-For": address,
                    },
                )
                assert resp.status_code == 202, resp.text
        backend.settle()
        yield world


def _steps(answer: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (s["reached"], s["from_previous"], s["from_start"], s["median_ms_from_previous"])
        for s in answer["funnel"]["steps"]
    ]


def test_a_funnel_of_a_page_an_event_and_a_parameter_value(world: World) -> None:
    answer = world.funnel(world.key_a, steps=DOWNLOAD_THEN_PRO)
    assert answer["funnel"]["unit"] == "visits"
    # P, Q, R and S viewed /dataset; P and Q downloaded after it (S only before); P went on
    # to a view with plan=pro, Q's signup was plan=free
    assert _steps(answer) == [
        (4, 1.0, 1.0, None),
        (2, 0.5, 0.5, 150_000),
        (1, 0.5, 0.25, 120_000),
    ]
    first, second, third = answer["funnel"]["steps"]
    assert (first["page"], second["event"], third["name"]) == ("/dataset", "download", "pro signup")
    assert third["filters"] == [["is", "params.plan", ["pro"]]]
    assert second["dropped_to"] == [{"page": "/about", "count": 1}, {"page": "exit", "count": 1}]
    assert third["dropped_to"] == [{"page": "/signup", "count": 1}]
    assert not answer["meta"]["truncated"]


def test_a_next_step_on_an_event_is_the_very_next_page_or_step_event(world: World) -> None:
    answer = world.funnel(
        world.key_a, steps=[{"page": "/dataset"}, {"event": "download", "next": True}]
    )
    assert [s["reached"] for s in answer["funnel"]["steps"]] == [4, 1]  # P only
    assert answer["funnel"]["steps"][1]["dropped_to"] == [
        {"page": "/about", "count": 1},
        {"page": "/pricing", "count": 1},
        {"page": "exit", "count": 1},
    ]


def test_a_funnel_on_events_within_a_window_for_a_visitor(world: World) -> None:
    steps = [
        {"event": "download"},
        {"page": "/signup", "filters": [["is", "params.plan", ["free", "pro"]]]},
    ]
    in_visit = world.funnel(world.key_a, steps=steps)
    # P, Q, S and T's first visit downloaded; T's signup came in its second visit
    assert [s["reached"] for s in in_visit["funnel"]["steps"]] == [4, 2]
    in_day = world.funnel(world.key_a, steps=steps, within="1d")
    assert in_day["funnel"]["unit"] == "visitors"
    assert _steps(in_day)[1] == (3, 0.75, 0.75, 120_000)  # 60 s, 120 s and 45 min


def test_a_funnel_counts_only_the_keys_site(world: World) -> None:
    answer = world.funnel(world.key_b, steps=DOWNLOAD_THEN_PRO)
    assert [s["reached"] for s in answer["funnel"]["steps"]] == [1, 1, 1]


@pytest.mark.parametrize(
    ("step", "says"),
    [
        ({"filters": [["is", "nope", ["x"]]]}, "query.funnel.steps[1].filters[0][1]: 'nope'"),
        ({"next": True}, "query.funnel.steps[1]"),
        ({"event": ""}, "query.funnel.steps[1].event"),
        ({"page": "/x", "color": "red"}, "color"),
    ],
)
def test_a_step_it_cannot_read_is_refused_naming_it(
    world: World, step: dict[str, Any], says: str
) -> None:
    body = {"source": "visits", "funnel": {"steps": [{"page": "/dataset"}, step]}}
    resp = world.call("POST", "/query", world.key_a, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_query"
    assert says in resp.json()["message"], resp.json()


# --- funnels saved per site ------------------------------------------------------------


def test_a_saved_funnel_reports_what_the_ad_hoc_funnel_answers(world: World) -> None:
    definition = {"id": "pro", "name": "Dataset to pro", "steps": DOWNLOAD_THEN_PRO}
    made = world.call("POST", "/funnels", world.key_a, definition)
    assert made.status_code == 201, made.text
    assert made.json()["site"] == world.a and made.json()["within"] == "visit"
    taken = world.call("POST", "/funnels", world.key_a, definition)
    assert taken.status_code == 400 and taken.json()["error"] == "invalid_funnel"
    assert "PUT /funnels/pro" in taken.json()["message"]

    report = world.call("GET", "/funnels/pro/report", world.key_a, **DAY)
    assert report.status_code == 200, report.text
    assert report.json()["saved"] == {"id": "pro", "name": "Dataset to pro"}
    assert report.json()["funnel"] == world.funnel(world.key_a, steps=DOWNLOAD_THEN_PRO)["funnel"]

    within = {**definition, "name": "Within a day", "within": "1d"}
    replaced = world.call("PUT", "/funnels/pro", world.key_a, within)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["created_ms"] == made.json()["created_ms"]
    again = world.call("GET", "/funnels/pro/report", world.key_a, **DAY).json()
    assert again["funnel"]["unit"] == "visitors"
    assert (
        again["funnel"] == world.funnel(world.key_a, steps=DOWNLOAD_THEN_PRO, within="1d")["funnel"]
    )
    listed = world.call("GET", "/funnels", world.key_a).json()["funnels"]
    assert [(f["id"], f["name"]) for f in listed] == [("pro", "Within a day")]

    assert world.call("DELETE", "/funnels/pro", world.key_a).status_code == 204
    gone = world.call("GET", "/funnels/pro/report", world.key_a, **DAY)
    assert gone.status_code == 404 and gone.json()["error"] == "unknown_funnel"


def test_a_site_key_sees_only_its_sites_funnels_and_an_admin_key_any(world: World) -> None:
    steps = [{"page": "/dataset"}, {"event": "download"}]
    made = world.call(
        "POST", "/funnels", world.key_b, {"id": "b-only", "name": "B", "steps": steps}
    )
    assert made.status_code == 201, made.text
    assert world.call("GET", "/funnels/b-only", world.key_a).status_code == 404
    assert world.call("DELETE", "/funnels/b-only", world.key_a).status_code == 404
    takeover = world.call("PUT", "/funnels/b-only", world.key_a, {"name": "A", "steps": steps})
    assert takeover.status_code == 404
    assert "b-only" not in {
        f["id"] for f in world.call("GET", "/funnels", world.key_a).json()["funnels"]
    }
    other = world.call("GET", "/funnels", world.key_a, site=world.b)
    assert other.status_code == 403 and other.json()["error"] == "site_forbidden"

    unnamed = world.call("GET", "/funnels", world.admin)
    assert unnamed.status_code == 400 and "name one with ?site=" in unnamed.json()["message"]
    seen = world.call("GET", "/funnels", world.admin, site=world.b).json()["funnels"]
    assert [f["id"] for f in seen] == ["b-only"]
    report = world.call("GET", "/funnels/b-only/report", world.admin, site=world.b, **DAY)
    assert report.status_code == 200, report.text
    assert [s["reached"] for s in report.json()["funnel"]["steps"]] == [1, 1]  # U, on site b
    renamed = world.call(
        "PUT", "/funnels/b-only", world.admin, {"name": "B, renamed", "steps": steps}, site=world.b
    )
    assert renamed.status_code == 200 and renamed.json()["site"] == world.b
    assert world.call("DELETE", "/funnels/b-only", world.admin, site=world.b).status_code == 204


@pytest.mark.parametrize(
    ("definition", "field", "says"),
    [
        ({"steps": DOWNLOAD_THEN_PRO}, "funnel", "'name' is a required property"),
        ({"name": "x", "steps": [{"page": "/a"}]}, "funnel.steps", "too short"),
        (
            {"name": "x", "steps": [{"page": "/a"}, {"filters": [["is", "nope", ["x"]]]}]},
            "funnel.steps[1].filters[0]",
            "'nope' is not a field",
        ),
        (
            {"name": "x", "steps": DOWNLOAD_THEN_PRO, "filters": [["is", "visit.source", [1]]]},
            "funnel.filters[0]",
            "takes text values",
        ),
        ({"name": "x", "steps": DOWNLOAD_THEN_PRO, "within": "1y"}, "funnel.within", "1y"),
        ({"name": "x", "steps": DOWNLOAD_THEN_PRO, "id": "No Spaces"}, "funnel.id", "match"),
    ],
)
def test_a_funnel_definition_it_cannot_count_is_refused_naming_the_part(
    world: World, definition: dict[str, Any], field: str, says: str
) -> None:
    resp = world.call("POST", "/funnels", world.key_a, definition)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"] == "invalid_funnel"
    assert body["details"]["field"].startswith(field), body
    assert says in body["message"], body
