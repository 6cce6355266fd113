"""Documents own their data: a part several documents share (from a cache) is frozen."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from metronome.events.document import Document, FrozenDict, freeze
from metronome.events.tick import Limits, RequestInfo, build_tick
from metronome.logs.parse import ParsedLine, build_log_document, compile_format
from metronome.logs.rules import UrlRules
from tests.test_logs_parse import CHROME, COMBINED, GOOGLEBOT, PROXIES, RECEIVED_MS, RULES


def _dicts(obj: Any) -> Iterator[dict[str, Any]]:
    """Every dict in ``obj``, ``obj`` itself included."""
    if isinstance(obj, dict):
        yield obj
        for value in obj.values():
            yield from _dicts(value)


def _shared(first: Document, second: Document) -> list[dict[str, Any]]:
    """The dict objects both documents hold (the same object, not equal ones)."""
    theirs = {id(d) for d in _dicts(second.source)}
    return [d for d in _dicts(first.source) if id(d) in theirs]


def _log_document(line: str, offset: int, rules: UrlRules = RULES) -> Document:
    parsed = compile_format("combined").parse(line)
    assert isinstance(parsed, ParsedLine), parsed
    return build_log_document(
        parsed,
        source_id="2049:77:0",
        offset=offset,
        rules=rules,
        trusted_proxies=PROXIES,
        received_ms=RECEIVED_MS,
    )


@pytest.mark.parametrize("agent", [CHROME, GOOGLEBOT])
def test_log_documents_of_repeated_lines_share_only_frozen_parts(agent: str) -> None:
    line = COMBINED.replace(CHROME, agent)
    first, second = _log_document(line, 1), _log_document(line, 2)
    shared = _shared(first, second)
    assert shared, "the cached parts (url, user agent, client, site) are shared"
    assert all(isinstance(d, FrozenDict) for d in shared), [
        d for d in shared if not isinstance(d, FrozenDict)
    ]
    assert first.source is not second.source
    assert first.source["event"] is not second.source["event"]


def test_log_documents_of_a_line_with_a_host_share_only_frozen_parts() -> None:
    fmt = compile_format('$remote_addr [$time_local] "$request" $status "$host"')
    line = '203.0.113.7 [10/Oct/2000:13:55:36 -0700] "POST /datasets/x HTTP/1.1" 201 "ex.org"'
    documents = []
    for offset in (1, 2):
        parsed = fmt.parse(line)
        assert isinstance(parsed, ParsedLine), parsed
        documents.append(
            build_log_document(
                parsed,
                source_id=None,
                offset=offset,
                rules=RULES,
                trusted_proxies=(),
                received_ms=RECEIVED_MS,
            )
        )
    assert documents[0].source["url"]["domain"] == "ex.org"
    assert all(isinstance(d, FrozenDict) for d in _shared(*documents))


def test_ticks_from_one_browser_share_only_frozen_parts() -> None:
    info = RequestInfo(RECEIVED_MS, "203.0.113.7", CHROME, stored_ip="203.0.113.7")
    first = build_tick({"id": "a", "url": "https://ex.org/a"}, info, Limits())
    second = build_tick({"id": "a", "url": "https://ex.org/a"}, info, Limits())
    shared = _shared(first, second)
    assert first.source["user_agent"] in shared
    assert all(isinstance(d, FrozenDict) for d in shared)


MUTATIONS: dict[str, Callable[[dict[str, Any]], object]] = {
    "set": lambda d: d.__setitem__("name", "x"),
    "delete": lambda d: d.__delitem__("name"),
    "update": lambda d: d.update(name="x"),
    "merge in place": lambda d: d.__ior__({"name": "x"}),
    "setdefault": lambda d: d.setdefault("other", "x"),
    "pop": lambda d: d.pop("name"),
    "popitem": lambda d: d.popitem(),
    "clear": lambda d: d.clear(),
}


@pytest.mark.parametrize("change", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_changing_a_shared_part_is_refused(change: Callable[[dict[str, Any]], object]) -> None:
    agent = _log_document(COMBINED, 1).source["user_agent"]
    before = dict(agent)
    with pytest.raises(TypeError, match="shared with other documents"):
        change(agent)
    assert agent == before
    assert _log_document(COMBINED, 2).source["user_agent"] == before


def test_a_frozen_part_is_the_json_object_of_its_dict() -> None:
    plain = {"name": "Chrome", "os": {"name": "Windows"}, "tags": [1, 2]}
    frozen = freeze(plain)
    assert frozen == plain
    assert isinstance(frozen["os"], FrozenDict)
    assert orjson.dumps(frozen) == orjson.dumps(plain)
    assert pickle.loads(pickle.dumps(frozen)) == frozen
    changed = {**frozen, "name": "Firefox"}
    assert changed["name"] == "Firefox" and frozen["name"] == "Chrome"
    copy = frozen.copy()
    copy["name"] = "Edge"
    assert type(copy) is dict and frozen["name"] == "Chrome"
