"""Which document fields a query may use, and how: read from the index templates.

The templates in ``index_templates/`` are the schema of every document, so the catalog
is built from them: a field's mapping type says whether it can be a dimension (keyword,
boolean, integer, ip), a numeric metric (any number) or a text filter (keyword). Free
tick parameters are ``params.<name>``: keywords, and numbers where the value is one
(``params.<name>.num`` in Elasticsearch).

Short aliases (``event``, ``format``, ``browser``, ...) name the common fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from types import MappingProxyType
from typing import Literal

from metronome.events import fields as F
from metronome.store.query import FieldRef, Kind
from metronome.store.templates import mapped_fields

__all__ = ["ALIASES", "FieldRef", "catalog", "resolve", "typed_fields"]

Purpose = Literal["dimension", "filter", "text", "number"]

_NUMBER_TYPES = {
    "long",
    "integer",
    "short",
    "byte",
    "double",
    "float",
    "half_float",
    "scaled_float",
    "unsigned_long",
}
_INTEGER_TYPES = {"long", "integer", "short", "byte", "unsigned_long"}
PARAM_NAME = re.compile(r"^params\.([\w\-:@$]{1,64})$")
TYPED_NAME = re.compile(r"^typed\.([A-Za-z][A-Za-z0-9_]{0,63})$")
_TYPED: ContextVar[Mapping[str, str]] = ContextVar(
    "metronome_typed_fields", default=MappingProxyType({})
)


@contextmanager
def typed_fields(kinds: Mapping[str, str]) -> Iterator[None]:
    """While in this block, :func:`resolve` knows the typed events' fields (``typed.<name>``
    -> ``number``, ``keyword`` or ``boolean``: :class:`metronome.events.typed.EventSchemas`)."""
    token = _TYPED.set(kinds)
    try:
        yield
    finally:
        _TYPED.reset(token)


POINT_NAME = re.compile(r"^(tags|fields)\.([A-Za-z_][A-Za-z0-9_\-:]{0,63})$")
"""A point's tag (keyword) or field (number), in the ``metrics`` dataset."""

ALIASES: dict[str, str] = {
    "event": F.EVENT_ACTION,
    "item": F.ITEM_ID,
    "format": F.ITEM_FORMAT,
    "referrer": F.REFERRER_PAGE,
    "referrer_domain": F.REFERRER_DOMAIN,
    "domain": F.URL_DOMAIN,
    "path": F.URL_PATH,
    "browser": F.USER_AGENT_NAME,
    "os": F.USER_AGENT_OS_NAME,
    "device": F.USER_AGENT_DEVICE_NAME,
    "country": F.CLIENT_GEO_COUNTRY_ISO_CODE,
    "status": F.HTTP_RESPONSE_STATUS_CODE,
    "method": F.HTTP_REQUEST_METHOD,
    "bytes": F.HTTP_RESPONSE_BODY_BYTES,
    "duration": F.EVENT_DURATION,
    "visitor": F.VISITOR_ID,
    "entry_page": F.VISIT_ENTRY,  # visits
    "exit_page": F.VISIT_EXIT,
    "visit_duration": F.VISIT_DURATION_MS,
}


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict[str, str]]:
    """Per dataset (``ticks``, ``logs``): every mapped field and its Elasticsearch type,
    as the index templates map them (read once)."""
    return mapped_fields()


def _kind(es_type: str) -> Kind | None:
    if es_type == "keyword":
        return "keyword"
    if es_type in _INTEGER_TYPES:
        return "integer"
    if es_type in _NUMBER_TYPES:
        return "number"
    if es_type in ("boolean", "ip", "date"):
        return es_type  # type: ignore[return-value]
    return None


_ALLOWED: dict[Purpose, set[str]] = {
    "dimension": {"keyword", "integer", "boolean", "ip"},
    "filter": {"keyword", "integer", "number", "boolean", "ip"},
    "text": {"keyword"},
    "number": {"integer", "number"},
}
_WHAT = {
    "dimension": "a keyword, boolean, whole-number or IP field",
    "filter": "a keyword, number, boolean or IP field",
    "text": "a keyword field",
    "number": "a numeric field (such as bytes, duration or params.<name>)",
}


class UnknownField(ValueError):
    """The name is no field of the chosen datasets, or not one usable this way."""


def resolve(name: str, datasets: tuple[str, ...], purpose: Purpose) -> FieldRef:
    """The field ``name`` (or an alias) for ``purpose``; :class:`UnknownField` otherwise."""
    field = ALIASES.get(name, name)
    typed = TYPED_NAME.match(field)
    if typed:
        return _typed(name, typed[1], datasets, purpose)
    match = PARAM_NAME.match(field)
    if match:
        if "ticks" not in datasets:
            raise UnknownField(f"{name!r}: free parameters exist on ticks only")
        return FieldRef(field, "number" if purpose == "number" else "keyword", param=True)
    point = POINT_NAME.match(field)
    if point:
        if F.POINT_DATASET not in datasets:
            raise UnknownField(f"{name!r}: tags and fields exist on metrics (points) only")
        kind: Kind = "keyword" if point[1] == "tags" else "number"
        if kind not in _ALLOWED[purpose]:
            raise UnknownField(f"{name!r} is a field of type {kind}; this needs {_WHAT[purpose]}")
        return FieldRef(field, kind)
    types = {catalog()[d][field] for d in datasets if field in catalog().get(d, {})}
    if not types:
        known = ", ".join(sorted(ALIASES))
        raise UnknownField(
            f"{name!r} is not a field of {' or '.join(datasets)}; use a document field such"
            f" as url.path, an alias ({known}), params.<name> (ticks) or tags.<name> and"
            " fields.<name> (metrics)"
        )
    kinds = {_kind(t) for t in types}
    if len(kinds) != 1 or None in kinds:
        raise UnknownField(f"{name!r} cannot be used in a query")
    (found,) = kinds
    assert found is not None
    kind = found
    if kind not in _ALLOWED[purpose]:
        raise UnknownField(f"{name!r} is a field of type {kind}; this needs {_WHAT[purpose]}")
    return FieldRef(field, kind)


def _typed(name: str, field: str, datasets: tuple[str, ...], purpose: Purpose) -> FieldRef:
    if "ticks" not in datasets:
        raise UnknownField(f"{name!r}: typed events' fields exist on ticks only")
    kind = _TYPED.get().get(field)
    if kind is None:
        declared = ", ".join(f"typed.{f}" for f in sorted(_TYPED.get())) or "none"
        raise UnknownField(
            f"{name!r} is no field of a declared event type ([event_schemas]; declared: {declared})"
        )
    ref_kind: Kind = "number" if kind == "number" else "boolean" if kind == "boolean" else "keyword"
    if ref_kind not in _ALLOWED[purpose]:
        raise UnknownField(f"{name!r} is a field of type {ref_kind}; this needs {_WHAT[purpose]}")
    return FieldRef(f"typed.{field}", ref_kind)
