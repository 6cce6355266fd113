"""A forged ``/query`` cursor never reaches the store with a value of the wrong type or
out of range: every paging mode, every kind of dimension key, on every store, answers the
page or ``400 invalid_cursor``, in time, with nothing logged as an error.

The cursor is not signed: it holds only where a page starts (an offset, or the last keys
of the previous page), which a caller could ask for anyway with a filter; so validation,
not a secret, is what keeps it harmless."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metronome.reports.query import parse_query
from tests.support.backends import Backend
from tests.support.fuzz import fuzz

DAY = "2013-03-15"
TIME_BOUND_S = 10.0
LOG_ERROR = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")
# one dimension of each kind a dimension can be: keyword, IP, boolean (and, on ticks,
# no whole-number field; test_query_fuzz covers integers as filter values)
DIMENSIONS = ["item", "client.ip", "bot"]
MODES = {
    "paged": {"dimensions": DIMENSIONS, "order_by": [[d, "asc"] for d in DIMENSIONS]},
    "top": {"dimensions": DIMENSIONS},
    "whole": {"dimensions": ["time:hour", *DIMENSIONS]},
}

IPS = ["127.0.0.1", "::1", "::ffff:1.2.3.4", "300.1.1.1", "1.2.3.4/8", "not an ip", "", "x" * 1000]
KEY = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(IPS)
)
# the last keys of a page: right in length, each key right or wrong for its dimension
LAST_KEYS = st.tuples(
    st.text(max_size=5) | KEY, st.sampled_from(IPS) | KEY, st.booleans() | KEY
).map(list)
PAYLOAD = st.fixed_dictionaries(
    {},
    optional={
        "a": LAST_KEYS | st.lists(KEY, min_size=0, max_size=4) | KEY,
        "o": st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.booleans() | KEY,
    },
)


def _encode(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.fixture(scope="module")
def event(backend: Backend) -> str:
    name = "forge-" + uuid.uuid4().hex[:8]
    for n in range(3):
        backend.tick(id=f"{name}-{n}", event=name, ts=f"{DAY}T12:00:00Z")
    backend.settle()
    return name


@pytest.mark.parametrize("mode", list(MODES))
def test_a_forged_cursor_is_a_page_or_invalid_cursor_in_every_paging_mode(
    backend: Backend, event: str, mode: str
) -> None:
    body = {
        **MODES[mode],
        "range": {"from": DAY, "to": DAY},
        "filters": [["is", "event", [event]]],
        "limit": 1,
    }
    fingerprint = parse_query(body).fingerprint
    first = backend.client.post("/query", json=body).json()
    assert first["meta"]["next"], first  # three rows, one a page
    second = backend.client.post("/query", json={**body, "after": first["meta"]["next"]})
    assert second.status_code == 200 and second.json()["results"], second.text
    log = backend.server.log_path
    offset = log.stat().st_size

    @given(payload=PAYLOAD)
    @fuzz(60)
    def send(payload: dict[str, Any]) -> None:
        nonlocal offset
        started = time.monotonic()
        resp = backend.client.post(
            "/query", json={**body, "after": _encode({"q": fingerprint, **payload})}
        )
        assert time.monotonic() - started < TIME_BOUND_S
        assert resp.status_code in (200, 400), (payload, resp.text)
        if resp.status_code == 400:
            assert resp.json()["error"] == "invalid_cursor", (payload, resp.json())
        with log.open("rb") as handle:
            handle.seek(offset)
            new = handle.read().decode(errors="replace")
        offset += len(new.encode())
        assert not LOG_ERROR.search(new), (payload, new[-3000:])

    send()
