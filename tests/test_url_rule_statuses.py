"""URL rules count successful responses only (2xx and 304) unless a rule says otherwise:
a 404 for /datasets/roads is not a view of roads."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metronome.logs.parse import ParsedLine, build_log_document, compile_format
from metronome.logs.rules import DEFAULT_STATUSES, Match, RuleError, UrlRules
from tests.support.fuzz import fuzz

RULES = UrlRules.parse("/datasets/{id}/download.{format} -> download; /datasets/{id}")
LINE = '8.8.8.8 - - [05/May/2026:10:00:00 +0000] "GET {path} HTTP/1.1" {status} 512 "-" "curl/8"'


def _source(path: str, status: int, rules: UrlRules = RULES) -> dict[str, Any]:
    parsed = compile_format("combined").parse(LINE.format(path=path, status=status))
    assert isinstance(parsed, ParsedLine), parsed
    document = build_log_document(
        parsed,
        source_id="2049:77:0",
        offset=0,
        rules=rules,
        trusted_proxies=(),
        received_ms=1_778_000_000_000,
    )
    return document.source


def test_a_not_found_page_is_not_a_view_of_the_item() -> None:
    missing = _source("/datasets/roads", 404)
    assert "action" not in missing["event"] and "item" not in missing
    assert missing["http"]["response"]["status_code"] == 404  # the request is still stored
    failed = _source("/datasets/roads/download.csv", 500)
    assert "action" not in failed["event"] and "item" not in failed


@pytest.mark.parametrize("status", [200, 204, 206, 304])
def test_successful_and_not_modified_responses_count(status: int) -> None:
    source = _source("/datasets/roads", status)
    assert source["event"]["action"] == "view"
    assert source["item"] == {"id": "roads"}


def test_a_rule_names_the_statuses_it_takes_and_later_rules_get_the_rest() -> None:
    rules = UrlRules.parse(
        "/datasets/{id} -> missing status=404,410\n/go/{id} -> click status=3xx\n/datasets/{id}"
    )
    assert rules.match("/datasets/a", 404) == Match("a", "missing", None)
    assert rules.match("/datasets/a", 200) == Match("a", "view", None)
    assert rules.match("/datasets/a", 500) is None
    assert rules.match("/go/x", 302) == Match("x", "click", None)
    assert rules.match("/go/x", 200) is None
    assert _source("/datasets/a", 410, rules)["event"]["action"] == "missing"
    assert _source("/datasets/a", 200, rules)["event"]["action"] == "view"
    anything = UrlRules.parse("/datasets/{id} -> hit status=any")
    assert all(anything.match("/datasets/a", s) for s in (101, 200, 404, 599))
    ranged = UrlRules.parse("/d/{id} status=400-403")
    assert ranged.match("/d/a", 403) == Match("a", "view", None)
    assert ranged.match("/d/a", 404) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("/d/{id} -> view status=", "is not a status"),
        ("/d/{id} -> view status=600", "is not a status"),
        ("/d/{id} -> view status=4x", "is not a status"),
        ("/d/{id} status=404-400", "from low to high"),
    ],
)
def test_a_status_list_it_cannot_read_is_refused_naming_the_rule(text: str, problem: str) -> None:
    with pytest.raises(RuleError, match=problem) as raised:
        UrlRules.parse(text)
    assert raised.value.rule == text


@fuzz(300)
@given(
    status=st.integers(100, 599),
    item=st.text(st.sampled_from("abcxyz019-_."), min_size=1, max_size=12),
    download=st.booleans(),
    explicit=st.none() | st.sets(st.integers(100, 599), min_size=1, max_size=4),
)
def test_a_line_counts_for_its_item_exactly_when_a_rule_takes_its_status(
    status: int, item: str, download: bool, explicit: set[int] | None
) -> None:
    taken = DEFAULT_STATUSES if explicit is None else frozenset(explicit)
    suffix = f" status={','.join(map(str, sorted(explicit)))}" if explicit else ""
    rules = UrlRules.parse(
        f"/datasets/{{id}}/download.{{format}} -> download{suffix}; /datasets/{{id}}{suffix}"
    )
    path = f"/datasets/{item}/download.csv" if download else f"/datasets/{item}"
    # the same path twice: the second answer comes from the caches, and must agree
    for _ in range(2):
        source = _source(path, status, rules)
        if status in taken:
            assert source["event"]["action"] == ("download" if download else "view")
            assert source["item"]["id"] == item
        else:
            assert "action" not in source["event"] and "item" not in source
        ok = _source(path, 200, rules)
        assert ("item" in ok) == (200 in taken)
