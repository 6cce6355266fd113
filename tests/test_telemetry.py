"""Telemetry from installed software, through real HTTP against ``metronome serve`` on both
stores: the binoculars and upgrade-responder wire contracts, apps, bad input, and exact
fleet answers from ``POST /query`` on a hand-built dataset."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from metronome.config import Settings
from metronome.events.point import Point, point_document
from metronome.store import open_store
from tests.support.backends import Backend, running_backend
from tests.support.metronome_server import MetronomeServer

VERSIONS = {
    "versions": [
        {"name": "v1.5.0", "releaseDate": "2023-06-01T00:00:00Z", "tags": ["latest"]},
        {
            "name": "v1.4.2",
            "releaseDate": "2023-04-01T00:00:00Z",
            "tags": ["stable"],
            "minUpgradableVersion": "v1.3.0",
        },
    ]
}


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def telemetry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """A server on each store with three apps: ``longhorn`` (interval 30, a versions
    file), ``locked`` (a URL token, upgrade checks off) and ``tiny`` (2 metrics a
    request, 2 tags a metric). No rate limits here (test_telemetry_rate_limits has them)."""
    env = {
        "METRONOME_SITES_CACHE_S": "1",
        "METRONOME_TELEMETRY_RATE_PER_INSTANCE": "0",
        "METRONOME_TELEMETRY_RATE_PER_IP": "0",
        "METRONOME_TELEMETRY_ROLLUP_INTERVAL_S": "0",  # tests run the passes themselves
    }
    with running_backend(request, tmp_path_factory, request.param, env) as backend:
        versions = backend.server.data_dir.parent / f"versions-{request.param}.json"
        versions.write_text(json.dumps(VERSIONS))
        for args in (
            ("longhorn", "--interval", "30", "--versions", str(versions)),
            ("locked", "--new-token", "--disable", "checkupgrade", "--json"),
            ("tiny", "--max-metrics", "2", "--max-tags", "2"),
            ("narrow", "--max-field-names", "4"),
            (
                "rolled",
                "--rollup",
                "storage_capacity every 1h sum,min,max,last",
                "--rollup",
                "enabled_feature every 1h sum,max,last by instance_uuid,app_version",
            ),
        ):
            done = backend.server.run_cli("apps", "create", *args)
            assert done.returncode == 0, done.stderr
            if args[0] == "locked":
                backend.locked_token = json.loads(done.stdout)["token"]  # type: ignore[attr-defined]
        time.sleep(1.2)  # METRONOME_SITES_CACHE_S
        yield backend


def _raw_post(
    server: MetronomeServer, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST as Go's net/http does for ``http.Post(url, "application/json", body)``: Host,
    User-Agent, Content-Length, Content-Type and Accept-Encoding, nothing else."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        sent = {
            "User-Agent": "Go-http-client/1.1",
            "Content-Length": str(len(body)),
            "Content-Type": "application/json",
            "Accept-Encoding": "gzip",
            **(headers or {}),
        }
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(data) if data else None
    finally:
        conn.close()


def _query(backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
    backend.settle()
    resp = backend.client.post("/query", json={"source": "metrics", **body})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _stored(backend: Backend, app: str, metric: str | None = None) -> int:
    filters: list[Any] = [["is", "app", [app]]]
    if metric:
        filters.append(["is", "metric.name", [metric]])
    answer = _query(backend, {"range": "1d", "metrics": ["events"], "filters": filters})
    return int(answer["results"][0]["metrics"][0])


def _uid(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}"


# -- the binoculars contract ------------------------------------------------------------


def test_binoculars_post_answers_200_with_the_apps_interval_for_both_body_shapes(
    telemetry: Backend,
) -> None:
    instance = _uid("inst")
    wrapped = {
        "metrics": [
            {
                "name": "storage_capacity",
                "tags": {"instance_uuid": instance},
                "fields": {"value": 1e12},
            },
            {
                "name": "enabled_feature",
                "tags": {"instance_uuid": instance},
                "fields": {"node_selector": 1, "data_locality": True},
            },
        ]
    }
    status, headers, answer = _raw_post(
        telemetry.server, "/apps/longhorn/v1/metrics", json.dumps(wrapped).encode()
    )
    assert (status, answer) == (200, {"requestIntervalInMinutes": 30})
    assert headers["content-type"].startswith("application/json")
    bare = [{"name": "node_count", "tags": {"instance_uuid": instance}, "fields": {"value": 3}}]
    status, _, answer = _raw_post(
        telemetry.server, "/apps/longhorn/v1/metrics", json.dumps(bare).encode()
    )
    assert (status, answer) == (200, {"requestIntervalInMinutes": 30})

    rows = _query(
        telemetry,
        {
            "range": "1d",
            "metrics": ["events", {"sum": "fields.value"}, {"sum": "fields.data_locality"}],
            "dimensions": ["metric.name"],
            "filters": [["is", "tags.instance_uuid", [instance]]],
            "order_by": [["metric.name", "asc"]],
        },
    )["results"]
    assert [(r["dimensions"][0], r["metrics"]) for r in rows] == [
        ("enabled_feature", [1, 0, 1]),
        ("node_count", [1, 3, 0]),
        ("storage_capacity", [1, 1e12, 0]),
    ]


def test_default_app_answers_on_v1_and_healthcheck_answers_200(telemetry: Backend) -> None:
    body = [{"name": "up", "tags": {"instance_uuid": _uid("d")}, "fields": {"value": 1}}]
    status, _, answer = _raw_post(telemetry.server, "/v1/metrics", json.dumps(body).encode())
    assert (status, answer) == (200, {"requestIntervalInMinutes": 60})
    for path in ("/v1/healthcheck", "/apps/longhorn/v1/healthcheck"):
        resp = httpx.get(telemetry.server.url + path)
        assert resp.status_code == 200, resp.text


def test_a_retried_request_is_stored_once_and_stored_equals_acknowledged(
    telemetry: Backend,
) -> None:
    instances = [_uid(f"retry{i}") for i in range(7)]
    body = json.dumps(
        [
            {"name": "retry_probe", "tags": {"instance_uuid": i}, "fields": {"value": 2}}
            for i in instances
        ]
    ).encode()
    for _ in range(3):  # the client did not see the first two answers and sent again
        status, _, answer = _raw_post(telemetry.server, "/apps/longhorn/v1/metrics", body)
        assert status == 200 and "refused" not in answer
    assert _stored(telemetry, "longhorn", "retry_probe") == len(instances)


# -- the upgrade-responder contract -----------------------------------------------------


def test_checkupgrade_answers_the_versions_file_and_records_one_point(
    telemetry: Backend,
) -> None:
    user = _uid("user")
    old = {"appVersion": "v1.4.0", "extraInfo": {"kubernetesVersion": "v1.25.3", "user": user}}
    # the Go client sends nil maps as null
    old_go = {**old, "extraTagInfo": None, "extraFieldInfo": None}
    status, _, answer = _raw_post(
        telemetry.server,
        "/apps/longhorn/v1/checkupgrade",
        json.dumps(old_go).encode(),
        {"X-Forwarded-For": "81.2.69.160"},
    )
    assert status == 200
    assert answer == {
        "versions": [
            {"name": "v1.5.0", "releaseDate": "2023-06-01T00:00:00Z", "tags": ["latest"]},
            {
                "name": "v1.4.2",
                "releaseDate": "2023-04-01T00:00:00Z",
                "tags": ["stable"],
                "minUpgradableVersion": "v1.3.0",
            },
        ],
        "requestIntervalInMinutes": 30,
    }
    new = {
        "appVersion": "v1.5.0",
        "extraTagInfo": {"user": user, "arch": "arm64"},
        "extraFieldInfo": {"nodeCount": 4, "hostKernelVersion": "6.1"},
    }
    status, _, answer = _raw_post(
        telemetry.server, "/apps/longhorn/v1/checkupgrade", json.dumps(new).encode()
    )
    assert status == 200 and answer["requestIntervalInMinutes"] == 30
    assert answer["refused"] == [
        {
            "index": 0,
            "reason": "field 'hostKernelVersion' must be a number, not a string",
            "field": "hostKernelVersion",
        }
    ]
    rows = _query(
        telemetry,
        {
            "range": "1d",
            "metrics": ["events", {"sum": "fields.value"}, {"max": "fields.nodeCount"}],
            "dimensions": ["tags.app_version", "country", "tags.arch"],
            "filters": [["is", "metric.name", ["upgrade_request"]], ["is", "tags.user", [user]]],
            "order_by": [["tags.app_version", "asc"]],
        },
    )["results"]
    assert [(r["dimensions"], r["metrics"]) for r in rows] == [
        (["v1.4.0", "GB", None], [1, 1, None]),
        (["v1.5.0", None, "arm64"], [1, 1, 4]),
    ]
    # never the address
    assert "81.2.69.160" not in json.dumps(_documents(telemetry, user))


def _documents(backend: Backend, user: str) -> list[dict[str, Any]]:
    backend.settle()
    if backend.es_url:
        resp = httpx.post(
            f"{backend.es_url}/{backend.index_prefix}-metrics-*/_search",
            json={"query": {"term": {"tags.user": user}}, "size": 100},
            timeout=30,
        )
        return [hit["_source"] for hit in resp.json()["hits"]["hits"]]
    import sqlite3

    with sqlite3.connect(backend.server.data_dir / "metronome.sqlite3") as conn:
        rows = conn.execute(
            "SELECT doc FROM events WHERE dataset = 'metrics'"
            " AND json_extract(doc, '$.tags.user') = ?",
            (user,),
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


def test_points_of_an_app_go_to_its_own_daily_index_on_elasticsearch(telemetry: Backend) -> None:
    if not telemetry.es_url:
        return  # the embedded store keeps every app's points in its metrics rows
    body = [{"name": "own_index", "tags": {"instance_uuid": "x"}, "fields": {"value": 1}}]
    assert _raw_post(telemetry.server, "/apps/tiny/v1/metrics", json.dumps(body).encode())[0] == 200
    telemetry.settle()
    day = time.strftime("%Y.%m.%d", time.gmtime())
    resp = httpx.get(f"{telemetry.es_url}/{telemetry.index_prefix}-metrics-tiny-{day}/_mapping")
    assert resp.status_code == 200, resp.text
    (mapping,) = resp.json().values()
    properties = mapping["mappings"]["properties"]
    assert properties["tags"]["properties"]["instance_uuid"]["type"] == "keyword"
    assert properties["fields"]["properties"]["value"]["type"] == "double"


# -- bad input --------------------------------------------------------------------------


def test_bad_metrics_are_refused_one_by_one_and_the_rest_is_stored(telemetry: Backend) -> None:
    instance = _uid("bad")
    body = {
        "metrics": [
            {"name": "ok", "tags": {"instance_uuid": instance}, "fields": {"value": 1, "s": "x"}},
            {"name": "bad tags", "tags": {"instance_uuid": instance}, "fields": {"value": 1}},
            {"name": "nested", "tags": {"instance_uuid": {"a": 1}}, "fields": {"value": 1}},
            {"name": "nofields", "tags": {"instance_uuid": instance}, "fields": {"s": "x"}},
            {"name": "list_fields", "tags": {}, "fields": [1, 2]},
            "not an object",
            {"name": "ok2", "tags": {"instance_uuid": instance, "n": 5}, "fields": {"v": None}},
        ]
    }
    status, _, answer = _raw_post(
        telemetry.server, "/apps/longhorn/v1/metrics", json.dumps(body).encode()
    )
    assert status == 200
    assert answer["requestIntervalInMinutes"] == 30
    refused = {(r["index"], r.get("field")) for r in answer["refused"]}
    assert refused == {
        (0, "s"),
        (1, None),
        (2, None),
        (3, "s"),
        (3, None),
        (4, None),
        (5, None),
        (6, "v"),
        (6, None),
    }
    assert all(r["reason"] for r in answer["refused"])
    assert _stored_instance(telemetry, instance) == 1  # only metric 0 had a number to store
    metrics_text = httpx.get(telemetry.server.url + "/metrics").text
    assert 'metronome_telemetry_refused_total{app="longhorn",what="field"}' in metrics_text


def _stored_instance(backend: Backend, instance: str) -> int:
    answer = _query(
        backend,
        {
            "range": "1d",
            "metrics": ["events"],
            "filters": [["is", "tags.instance_uuid", [instance]]],
        },
    )
    return int(answer["results"][0]["metrics"][0])


HUGE = b"[" + b'{"name": "a", "fields": {"v": 1}},' * 9000 + b'{"name": "a"}]'  # > 256 KiB


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/apps/longhorn/v1/metrics", b"{not json", 400, "invalid_json"),
        ("/apps/longhorn/v1/metrics", b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
        ("/apps/longhorn/v1/metrics", b'{"metrics": 3}', 400, "invalid_field"),
        ("/apps/longhorn/v1/metrics", b'{"other": []}', 400, "invalid_field"),
        ("/apps/longhorn/v1/metrics", b" ", 400, "invalid_json"),
        ("/apps/longhorn/v1/metrics", HUGE, 413, "payload_too_large"),
        (
            "/apps/tiny/v1/metrics",
            json.dumps([{"name": "a", "fields": {"v": 1}}] * 3).encode(),
            400,
            "limit_exceeded",
        ),
        ("/apps/nope/v1/metrics", b"[]", 404, "unknown_app"),
        ("/apps/NOPE!/v1/metrics", b"[]", 404, "unknown_app"),
        ("/apps/nope/v1/checkupgrade", b"{}", 404, "unknown_app"),
        ("/apps/locked/v1/metrics", b"[]", 401, "invalid_app_token"),
        ("/apps/locked/v1/metrics?token=wrong", b"[]", 401, "invalid_app_token"),
        ("/apps/locked/v1/checkupgrade", b'{"appVersion": "v1"}', 403, "endpoint_disabled"),
        ("/apps/longhorn/v1/checkupgrade", b'{"appVersion": 3}', 400, "invalid_field"),
        (
            "/apps/longhorn/v1/checkupgrade",
            b'{"appVersion": "v1", "extraInfo": []}',
            400,
            "invalid_field",
        ),
        ("/apps/longhorn/v1/checkupgrade", b"[]", 400, "invalid_field"),
    ],
)
def test_bad_requests_get_a_clear_json_error_and_store_nothing(
    telemetry: Backend, path: str, body: bytes, status: int, code: str
) -> None:
    got, headers, answer = _raw_post(telemetry.server, path, body)
    assert (got, answer["error"]) == (status, code), answer
    assert answer["message"]
    assert headers["content-type"].startswith("application/json")


def test_wrong_media_type_and_method_are_json_errors(telemetry: Backend) -> None:
    resp = httpx.post(
        telemetry.server.url + "/apps/longhorn/v1/metrics",
        content=b"[]",
        headers={"Content-Type": "text/xml"},
    )
    assert (resp.status_code, resp.json()["error"]) == (415, "unsupported_media_type")
    resp = httpx.get(telemetry.server.url + "/apps/longhorn/v1/metrics")
    assert (resp.status_code, resp.json()["error"]) == (405, "method_not_allowed")
    resp = httpx.get(telemetry.server.url + "/apps/nope/v1/healthcheck")
    assert (resp.status_code, resp.json()["error"]) == (404, "unknown_app")
    resp = httpx.get(telemetry.server.url + "/apps/locked/v1/healthcheck")
    assert resp.status_code == 200


def test_an_app_with_a_token_takes_telemetry_with_it(telemetry: Backend) -> None:
    token = telemetry.locked_token  # type: ignore[attr-defined]
    instance = _uid("tok")
    body = [{"name": "t", "tags": {"instance_uuid": instance}, "fields": {"value": 1}}]
    status, _, answer = _raw_post(
        telemetry.server, f"/apps/locked/v1/metrics?token={token}", json.dumps(body).encode()
    )
    assert (status, answer) == (200, {"requestIntervalInMinutes": 60})
    assert _stored_instance(telemetry, instance) == 1


# -- fleet questions on a hand-built dataset ----------------------------------------------

DAY = 86_400_000
START = 1_793_491_200_000  # 2026-11-01T00:00:00Z


def _fleet_points(app: str) -> list[Point]:
    """Three instances over three days (hand-built):

    - ``a``: v1.4 on day 1, v1.5 from day 2; storage reported 3 times a day (the last
      value of the day counts); node_selector on, data_locality off.
    - ``b``: v1.4 all three days; storage twice a day; both features on from day 2.
    - ``c``: v1.5 on day 1 only, then stops reporting; storage once; no features.
    """
    points = []

    def add(instance: str, day: int, hour: int, name: str, version: str, **fields: float) -> None:
        points.append(
            Point(
                app,
                name,
                START + day * DAY + hour * 3_600_000,
                {"instance_uuid": instance, "app_version": version},
                {k: float(v) for k, v in fields.items()},
            )
        )

    for day in range(3):
        version = "v1.4" if day == 0 else "v1.5"
        for hour, value in ((1, 100 + day), (9, 200 + day), (17, 300 + day)):
            add("a", day, hour, "storage_capacity", version, value=value)
        add("a", day, 12, "enabled_feature", version, node_selector=1, data_locality=0)
        for hour, value in ((2, 1000 * (day + 1)), (20, 1500 * (day + 1))):
            add("b", day, hour, "storage_capacity", "v1.4", value=value)
        on = 1 if day > 0 else 0
        add("b", day, 12, "enabled_feature", "v1.4", node_selector=on, data_locality=on)
    add("c", 0, 5, "storage_capacity", "v1.5", value=7)
    add("c", 0, 6, "enabled_feature", "v1.5", node_selector=0, data_locality=0)
    return points


@pytest.fixture(scope="module")
def fleet(telemetry: Backend) -> str:
    """The hand-built dataset, written into the server's store; its app id."""
    app = "fleet"
    settings = Settings.from_env(telemetry.server.env)
    documents = [point_document(p) for p in _fleet_points(app)]

    async def _write() -> None:
        async with open_store(settings) as store:
            outcomes = await store.write(documents)
        assert all(o.ok for o in outcomes)

    asyncio.run(_write())
    telemetry.settle()
    return app


def _fleet_query(backend: Backend, app: str, body: dict[str, Any]) -> list[Any]:
    body = {
        "range": {"from": "2026-11-01", "to": "2026-11-03"},
        **body,
        "filters": [["is", "app", [app]], *body.get("filters", [])],
    }
    rows = _query(backend, body)["results"]
    return [(r["dimensions"], r["metrics"]) for r in rows]


def test_active_instances_per_day(telemetry: Backend, fleet: str) -> None:
    assert _fleet_query(
        telemetry, fleet, {"metrics": ["instances"], "dimensions": ["time:day"]}
    ) == [(["2026-11-01"], [3]), (["2026-11-02"], [2]), (["2026-11-03"], [2])]


def test_fleet_total_of_a_gauge_is_the_last_value_per_instance_summed(
    telemetry: Backend, fleet: str
) -> None:
    rows = _fleet_query(
        telemetry,
        fleet,
        {
            "metrics": [{"last_sum": "fields.value"}, {"sum": "fields.value"}],
            "dimensions": ["time:day"],
            "filters": [["is", "metric.name", ["storage_capacity"]]],
        },
    )
    # day 1: a 300, b 1500, c 7; day 2: a 301, b 3000; day 3: a 302, b 4500
    assert rows == [
        (["2026-11-01"], [1807, 100 + 200 + 300 + 1000 + 1500 + 7]),
        (["2026-11-02"], [3301, 101 + 201 + 301 + 2000 + 3000]),
        (["2026-11-03"], [4802, 102 + 202 + 302 + 3000 + 4500]),
    ]
    whole = _fleet_query(
        telemetry,
        fleet,
        {
            "metrics": [{"last_sum": "fields.value"}],
            "filters": [["is", "metric.name", ["storage_capacity"]]],
        },
    )
    assert whole == [([], [302 + 4500 + 7])]  # c's last report still counts over the range


def test_feature_adoption_per_feature_and_version(telemetry: Backend, fleet: str) -> None:
    rows = _fleet_query(
        telemetry,
        fleet,
        {
            "metrics": [
                "instances",
                {"last_avg": "fields.node_selector"},
                {"last_avg": "fields.data_locality"},
            ],
            "dimensions": ["tags.app_version"],
            "filters": [["is", "metric.name", ["enabled_feature"]]],
        },
    )
    # v1.4: a (day 1, on/off) and b (last: on/on); v1.5: a (on/off) and c (off/off)
    assert sorted(rows) == [(["v1.4"], [2, 1.0, 0.5]), (["v1.5"], [2, 0.5, 0.0])]


def test_version_spread_over_time(telemetry: Backend, fleet: str) -> None:
    rows = _fleet_query(
        telemetry,
        fleet,
        {"metrics": ["instances"], "dimensions": ["time:day", "tags.app_version"]},
    )
    assert rows == [
        (["2026-11-01", "v1.4"], [2]),
        (["2026-11-01", "v1.5"], [1]),
        (["2026-11-02", "v1.4"], [1]),
        (["2026-11-02", "v1.5"], [1]),
        (["2026-11-03", "v1.4"], [1]),
        (["2026-11-03", "v1.5"], [1]),
    ]


def test_breakdowns_take_time_zones_compare_and_cursors(telemetry: Backend, fleet: str) -> None:
    # in UTC-10 the first reports (before 10:00 UTC on Nov 1) fall on Oct 31
    rows = _fleet_query(
        telemetry,
        fleet,
        {
            "range": {"from": "2026-10-31", "to": "2026-11-01"},
            "tz": "Pacific/Honolulu",
            "metrics": ["instances", "events"],
            "dimensions": ["time:day"],
        },
    )
    assert rows == [(["2026-10-31"], [3, 5]), (["2026-11-01"], [2, 7])]
    first = _query(
        telemetry,
        {
            "range": {"from": "2026-11-01", "to": "2026-11-03"},
            "metrics": ["events"],
            "dimensions": ["tags.instance_uuid"],
            "filters": [["is", "app", [fleet]]],
            "order_by": [["tags.instance_uuid", "asc"]],
            "limit": 2,
        },
    )
    assert [r["dimensions"][0] for r in first["results"]] == ["a", "b"]
    after = _query(
        telemetry,
        {
            "range": {"from": "2026-11-01", "to": "2026-11-03"},
            "metrics": ["events"],
            "dimensions": ["tags.instance_uuid"],
            "filters": [["is", "app", [fleet]]],
            "order_by": [["tags.instance_uuid", "asc"]],
            "limit": 2,
            "after": first["meta"]["next"],
        },
    )
    assert [(r["dimensions"][0], r["metrics"][0]) for r in after["results"]] == [("c", 2)]
    compared = _query(
        telemetry,
        {
            "range": {"from": "2026-11-03", "to": "2026-11-03"},
            "metrics": ["instances"],
            "compare": "previous_period",
            "filters": [["is", "app", [fleet]]],
        },
    )
    (row,) = compared["results"]
    assert (row["metrics"], row["previous"]) == ([2], [2])


def test_fleet_metrics_need_the_metrics_source(telemetry: Backend) -> None:
    resp = telemetry.client.post(
        "/query", json={"source": "ticks", "metrics": [{"last_sum": "fields.value"}]}
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_query"
    assert "metrics" in resp.json()["message"]


# -- rate limits and pace ---------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    """A server with tight telemetry limits, on an Elasticsearch that cannot be reached
    (so the spool only grows: the pace rises), which trusts 127.0.0.1 as a proxy."""
    server = MetronomeServer(
        {
            "METRONOME_ELASTICSEARCH_URL": "http://127.0.0.1:9",
            "METRONOME_TRUSTED_PROXIES": "127.0.0.0/8",
            "METRONOME_TELEMETRY_RATE_PER_IP": "1",
            "METRONOME_TELEMETRY_RATE_PER_IP_BURST": "3",
            "METRONOME_TELEMETRY_RATE_PER_INSTANCE": "2",
            "METRONOME_TELEMETRY_BACKLOG_BYTES": "4096",
        },
        data_dir=tmp_path_factory.mktemp("limited"),
        workers=1,
    )
    server.start(wait_ready=False)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log_tail()
    assert "Traceback" not in server.log_path.read_text(), server.log_tail(80)


def _metric(instance: str, count: int = 1) -> bytes:
    tags = {"instance_uuid": instance, "pad": "x" * 200}
    return json.dumps(
        [{"name": "m", "tags": tags, "fields": {"v": i}} for i in range(count)]
    ).encode()


def test_one_address_over_its_rate_gets_429_before_its_body_is_read(
    limited: MetronomeServer,
) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    statuses = [
        _raw_post(limited, "/v1/metrics", _metric(_uid(f"ip{i}")), forwarded)[:2] for i in range(4)
    ]
    assert [s for s, _ in statuses] == [200, 200, 200, 429]
    assert int(statuses[3][1]["retry-after"]) >= 1
    status, _, answer = _raw_post(limited, "/v1/metrics", b"{not even json", forwarded)
    assert (status, answer["error"]) == (429, "rate_limited")  # refused before reading


def test_one_instance_over_its_rate_gets_429_from_any_address(limited: MetronomeServer) -> None:
    instance = _uid("chatty")
    statuses = [
        _raw_post(
            limited, "/v1/metrics", _metric(instance), {"X-Forwarded-For": f"198.51.100.{i}"}
        )[0]
        for i in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_the_interval_rises_while_the_spool_is_behind(limited: MetronomeServer) -> None:
    intervals = []
    for i in range(6):
        status, _, answer = _raw_post(
            limited,
            "/v1/metrics",
            _metric(_uid(f"pace{i}"), count=10),  # about 3 KB a request
            {"X-Forwarded-For": f"192.0.2.{i}"},
        )
        assert status == 200, answer
        intervals.append(answer["requestIntervalInMinutes"])
        time.sleep(1.1)  # the backlog is read at most once a second
    assert intervals[0] == 60
    assert intervals[-1] > 60, intervals
    assert intervals == sorted(intervals)
    assert Path(limited.data_dir, "spool").exists()


# -- rollups ----------------------------------------------------------------------------


def _write_points(backend: Backend, points: list[Point]) -> None:
    """Points stored as the shipper stores them, received now (whatever their time)."""
    settings = Settings.from_env(backend.server.env)
    now_ms = int(time.time() * 1000)
    documents = [point_document(p, received_ms=now_ms) for p in points]

    async def _write() -> None:
        async with open_store(settings) as store:
            for first in range(0, len(documents), 500):  # bulk requests of a shipper's size
                outcomes = await store.write(documents[first : first + 500])
                assert all(o.ok for o in outcomes)

    asyncio.run(_write())


def _roll(backend: Backend) -> dict[str, int]:
    done = backend.server.run_cli("apps", "roll", "--json")
    assert done.returncode == 0, done.stderr
    time.sleep(1.2)  # METRONOME_SITES_CACHE_S: the servers see the new watermark
    return json.loads(done.stdout)  # type: ignore[no-any-return]


ROLLED_QUERIES: list[dict[str, Any]] = [
    {
        "metrics": [
            "events",
            {"sum": "fields.value"},
            {"min": "fields.value"},
            {"max": "fields.value"},
        ],
        "dimensions": ["time:day"],
        "filters": [["is", "metric.name", ["storage_capacity"]]],
    },
    {
        "range": {"from": "2026-11-02", "to": "2026-11-02"},
        "metrics": ["events", {"sum": "fields.value"}],
        "dimensions": ["time:hour", "tags.instance_uuid"],
        "filters": [["is", "metric.name", ["storage_capacity"]]],
    },
    {
        "tz": "Europe/Berlin",
        "metrics": ["instances", {"max": "fields.value"}],
        "dimensions": ["time:day"],
        "filters": [
            ["is", "metric.name", ["storage_capacity"]],
            ["is_not", "tags.instance_uuid", ["c"]],
        ],
    },
    {
        "metrics": ["events", {"sum": "fields.node_selector"}, {"max": "fields.data_locality"}],
        "dimensions": ["tags.app_version"],
        "filters": [["is", "metric.name", ["enabled_feature"]]],
    },
    {
        "metrics": [{"last_sum": "fields.value"}, "instances"],
        "dimensions": ["time:day"],
        "filters": [["is", "metric.name", ["storage_capacity"]]],
    },
    {
        "metrics": [
            "instances",
            {"last_avg": "fields.node_selector"},
            {"last_avg": "fields.data_locality"},
        ],
        "dimensions": ["tags.app_version"],
        "filters": [["is", "metric.name", ["enabled_feature"]]],
    },
    {
        "range": {"from": "2026-11-03", "to": "2026-11-03"},
        "compare": "previous_period",
        "metrics": ["events", {"sum": "fields.value"}],
        "filters": [["is", "metric.name", ["storage_capacity"]]],
    },
]


def _both(backend: Backend, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    body = {
        "range": {"from": "2026-11-01", "to": "2026-11-03"},
        **body,
        "filters": [["is", "app", ["rolled"]], *body["filters"]],
    }
    return _query(backend, body), _query(backend, {**body, "rollups": "off"})


def test_rollups_catch_up_answer_like_raw_points_and_re_roll_late_points(
    telemetry: Backend,
) -> None:
    _write_points(telemetry, _fleet_points("rolled"))  # the worker was down meanwhile
    before, _ = _both(telemetry, ROLLED_QUERIES[0])
    assert "rollup" not in before["meta"]  # nothing rolled yet: raw points answer

    done = _roll(telemetry)  # catches up: every hour since the first point
    assert done["buckets"] > 0
    # one document per hour and instance (storage) and per hour, instance and version
    # (features): the hand-built data has 3 + 2 + 1 storage reports per day ...
    hours = {
        (p.timestamp_ms // 3_600_000, p.tags["instance_uuid"], p.name) for p in _fleet_points("x")
    }
    assert done["documents"] == len(hours)
    for body in ROLLED_QUERIES:
        rolled, raw = _both(telemetry, body)
        assert rolled["meta"].get("rollup"), body
        assert "rollup" not in raw["meta"]
        assert rolled["results"] == raw["results"], body
        assert rolled["results"], body

    # a late point for an old bucket: re-rolled by the next pass
    late = Point(
        "rolled",
        "storage_capacity",
        START + 3 * 3_600_000,
        {"instance_uuid": "d", "app_version": "v1.6"},
        {"value": 5000.0},
    )
    _write_points(telemetry, [late])
    # a pass trusts only what was stored over a second before it (points still on their
    # way, in another spool): the late point must be older than that to be rolled once
    time.sleep(1.2)
    again = _roll(telemetry)
    assert again["documents"] >= 1
    rolled, raw = _both(telemetry, ROLLED_QUERIES[0])
    assert rolled["meta"].get("rollup")
    assert rolled["results"] == raw["results"]
    assert rolled["results"][0]["metrics"][3] == 5000  # the day's max is the late point

    # a pass with nothing new writes nothing and changes nothing
    assert _roll(telemetry)["documents"] == 0
    assert _both(telemetry, ROLLED_QUERIES[0])[0]["results"] == rolled["results"]


def test_a_query_a_rollup_cannot_answer_reads_raw_points(telemetry: Backend) -> None:
    for extra in (
        {"metrics": [{"avg": "fields.value"}]},  # avg is not kept
        {"dimensions": ["tags.app_version"]},  # storage keeps only the instance tag
        {"metrics": [{"p95": "fields.value"}]},  # percentiles need every value
    ):
        body = {**ROLLED_QUERIES[0], **extra}
        rolled, raw = _both(telemetry, body)
        assert "rollup" not in rolled["meta"], extra
        assert rolled["results"] == raw["results"]


def _report(backend: Backend, name: str, **params: str) -> list[Any]:
    backend.settle()
    resp = backend.client.get(
        f"/reports/{name}", params={"from": "2026-11-01", "to": "2026-11-03", **params}
    )
    assert resp.status_code == 200, resp.text
    return [(r["dimensions"], r["metrics"]) for r in resp.json()["results"]]


def test_named_fleet_reports(telemetry: Backend, fleet: str) -> None:
    assert _report(telemetry, "active-instances", app=fleet) == [
        (["2026-11-01"], [3]),
        (["2026-11-02"], [2]),
        (["2026-11-03"], [2]),
    ]
    assert _report(telemetry, "fleet-total", app=fleet) == [
        (["2026-11-01"], [1807, 3]),
        (["2026-11-02"], [3301, 2]),
        (["2026-11-03"], [4802, 2]),
    ]
    adoption = _report(
        telemetry, "feature-adoption", app=fleet, features="node_selector,data_locality"
    )
    assert sorted(adoption) == [(["v1.4"], [2, 1.0, 0.5]), (["v1.5"], [2, 0.5, 0.0])]
    spread = _report(telemetry, "version-spread", app=fleet, metric="storage_capacity")
    assert spread[:2] == [(["2026-11-01", "v1.4"], [2, 5]), (["2026-11-01", "v1.5"], [1, 1])]
    resp = telemetry.client.get("/reports/active-instances")
    assert (resp.status_code, resp.json()["details"]["parameter"]) == (400, "app")


def test_reading_telemetry_needs_a_query_key_of_the_apps_site(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Once sites exist, an app's points belong to its site: that site's query keys read
    them, another site's keys see none, and no key gets 401."""
    server = MetronomeServer(
        {"METRONOME_SITES_CACHE_S": "1", "METRONOME_TELEMETRY_ROLLUP_INTERVAL_S": "0"},
        data_dir=tmp_path_factory.mktemp("scoped"),
        workers=1,
    )
    server.start()
    try:

        def cli(*args: str) -> Any:
            done = server.run_cli(*args, "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        ours = cli("sites", "create", "--name", "Storage team", "--id", "storage")
        other = cli("sites", "create", "--name", "Web", "--id", "web")
        cli("apps", "create", "longhorn", "--site", ours["id"])
        our_key = cli("keys", "create", "--site", ours["id"], "--scope", "query")["secret"]
        other_key = cli("keys", "create", "--site", other["id"], "--scope", "query")["secret"]
        time.sleep(1.2)
        body = [{"name": "m", "tags": {"instance_uuid": "i1"}, "fields": {"value": 1}}]
        status, _, _ = _raw_post(server, "/apps/longhorn/v1/metrics", json.dumps(body).encode())
        assert status == 200  # the clients still need no key
        from tests.support.backends import wait_for_drain

        wait_for_drain(server)
        question = {"source": "metrics", "range": "1d", "metrics": ["events", "instances"]}
        answers = {}
        for name, key in (("ours", our_key), ("other", other_key), ("none", None)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            resp = httpx.post(f"{server.url}/query", json=question, headers=headers)
            answers[name] = (resp.status_code, resp.json())
        assert answers["ours"][0] == 200
        assert answers["ours"][1]["results"][0]["metrics"] == [1, 1]
        assert answers["other"][1]["results"][0]["metrics"] == [0, 0]
        assert (answers["none"][0], answers["none"][1]["error"]) == (401, "key_required")
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log_path.read_text(), server.log_tail(80)


def test_raw_points_and_rollups_have_their_own_retention(telemetry: Backend) -> None:
    """Raw points kept 10 days go (the hand-built month is older); the rollups stay and
    still answer."""
    body = ROLLED_QUERIES[0]
    before, _ = _both(telemetry, body)
    assert before["meta"].get("rollup") and before["results"]
    done = telemetry.server.run_cli("apps", "update", "rolled", "--raw-days", "10")
    assert done.returncode == 0, done.stderr
    assert _roll(telemetry)["removed"] > 0
    rolled, raw = _both(telemetry, body)
    assert [r["metrics"][0] for r in raw["results"]] == [0, 0, 0]  # raw points are gone
    assert rolled["results"] == before["results"]


def test_instances_on_a_large_fleet_exact_here_estimated_on_elasticsearch(
    telemetry: Backend,
) -> None:
    """8,000 instances on one day: the embedded store counts them exactly; Elasticsearch's
    HyperLogLog++ (precision threshold 3,000) estimates, within 2 % (the guide quotes what
    this measures)."""
    instances = 8000
    day = START + 10 * DAY
    _write_points(
        telemetry,
        [
            Point("bigfleet", "up", day + i, {"instance_uuid": f"node-{i:05d}"}, {"value": 1.0})
            for i in range(instances)
        ],
    )
    answer = _query(
        telemetry,
        {
            "range": {"from": "2026-11-11", "to": "2026-11-11"},
            "metrics": ["instances", "events"],
            "filters": [["is", "app", ["bigfleet"]]],
        },
    )
    counted, events = answer["results"][0]["metrics"]
    assert events == instances
    error = abs(counted - instances) / instances
    print(f"instances on {telemetry.name}: {counted} of {instances} ({error:.3%} off)")
    if telemetry.es_url:
        assert error < 0.02, counted
        assert "estimate" in answer["meta"]["distinct_precision"]
    else:
        assert counted == instances


def test_the_worker_rolls_up_by_itself(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``metronome serve``'s worker makes the passes (every second here): points sent over
    HTTP show up as rollup documents without anyone running ``metronome apps roll``."""
    server = MetronomeServer(
        {"METRONOME_SITES_CACHE_S": "1", "METRONOME_TELEMETRY_ROLLUP_INTERVAL_S": "1"},
        data_dir=tmp_path_factory.mktemp("worker-rolls"),
        workers=1,
    )
    done = server.run_cli("apps", "create", "auto", "--rollup", "gauge every 1h sum,max")
    assert done.returncode == 0, done.stderr
    server.start()
    try:
        body = [
            {"name": "gauge", "tags": {"instance_uuid": f"i{n}"}, "fields": {"value": n}}
            for n in range(3)
        ]
        status, _, _ = _raw_post(server, "/apps/auto/v1/metrics", json.dumps(body).encode())
        assert status == 200
        import sqlite3

        deadline = time.monotonic() + 30
        rows: list[Any] = []
        while time.monotonic() < deadline and len(rows) < 3:
            time.sleep(0.5)
            with sqlite3.connect(server.data_dir / "metronome.sqlite3") as conn:
                rows = conn.execute(
                    "SELECT json_extract(doc, '$.tags.instance_uuid'),"
                    " json_extract(doc, '$.fields.value'), json_extract(doc, '$.rollup.count')"
                    " FROM events WHERE dataset = 'rollups' ORDER BY 1"
                ).fetchall()
        assert rows == [("i0", 0.0, 1), ("i1", 1.0, 1), ("i2", 2.0, 1)], server.log_tail()
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log_path.read_text(), server.log_tail(80)


def test_past_an_apps_field_names_limit_values_stay_in_source_unindexed(
    telemetry: Backend,
) -> None:
    """App ``narrow`` indexes 4 dynamic names in Elasticsearch; a metric with 10 is stored
    whole (the rest kept in ``_source``) and answered 200. The embedded store keeps
    documents as JSON and has no mapping to protect: every name stays queryable."""
    fields = {f"f{i}": i for i in range(8)}
    body = [{"name": "wide", "tags": {"instance_uuid": "w1", "zone": "a"}, "fields": fields}]
    status, _, answer = _raw_post(
        telemetry.server, "/apps/narrow/v1/metrics", json.dumps(body).encode()
    )
    assert (status, answer) == (200, {"requestIntervalInMinutes": 60})
    telemetry.settle()
    if not telemetry.es_url:
        rows = _query(
            telemetry,
            {
                "range": "1d",
                "metrics": [{"sum": "fields.f7"}],
                "filters": [["is", "app", ["narrow"]]],
            },
        )["results"]
        assert rows[0]["metrics"] == [7]
        return
    day = time.strftime("%Y.%m.%d", time.gmtime())
    index = f"{telemetry.index_prefix}-metrics-narrow-{day}"
    (mapping,) = httpx.get(f"{telemetry.es_url}/{index}/_mapping").json().values()
    properties = mapping["mappings"]["properties"]
    indexed = [
        *properties.get("tags", {}).get("properties", {}),
        *properties.get("fields", {}).get("properties", {}),
    ]
    assert len(indexed) == 4, indexed
    hits = httpx.post(f"{telemetry.es_url}/{index}/_search", json={"size": 5}).json()
    (hit,) = hits["hits"]["hits"]
    assert hit["_source"]["fields"] == {k: float(v) for k, v in fields.items()}
