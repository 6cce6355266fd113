"""Typed events: per-site JSON Schemas for tick events, declared in ``[event_schemas]``.

A tick whose ``event`` is a declared type (``file.uploaded``, ``extraction.finished``,
...) is checked against that type's JSON Schema (the whole flat tick object); a tick that
breaks it is refused naming the field. The schema's properties that are not tick keys
(``id``, ``url``, ...) are the type's *typed fields*: they are stored under
``typed.<name>`` with their JSON type (numbers as numbers, summable; text as keywords)
instead of ``params.*``. Events of undeclared types are free ticks, as before.

The configuration file declares a type as a table (every site) or an array of tables
(one schema per group of sites)::

    [event_schemas."file.deleted"]
    sites = ["research"]        # optional: only these sites (default: every site)
    negative = ["bytes"]        # optional: numbers stored negated, so sums net out
    [event_schemas."file.deleted".schema]
    type = "object"
    required = ["bytes", "space"]
    properties = { bytes = { type = "integer", minimum = 0 }, space = { type = "string" } }

A typed field has one JSON type (``integer``/``number``, ``string`` or ``boolean``)
across every declared schema, because every site's documents share one index mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from metronome.errors import ConfigError, InvalidField

__all__ = ["FIELD_NAME", "EventSchemas", "EventType", "TypedKind"]

TypedKind = Literal["number", "keyword", "boolean"]
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
"""What a typed field may be called: no dots, so ``typed.<name>`` is one level deep."""

_EVENT_NAME = re.compile(r"^[\w.:-]{1,64}$")
_KINDS: dict[str, TypedKind] = {
    "integer": "number",
    "number": "number",
    "string": "keyword",
    "boolean": "boolean",
}
_TICK_KEYS = frozenset({"id", "event", "format", "url", "referrer", "referer", "ts", "site"})
_ENTRY_KEYS = ("schema", "sites", "negative")


@dataclass(frozen=True, slots=True)
class EventType:
    """One declared event type for some sites (``sites`` None: every site)."""

    name: str
    sites: frozenset[str] | None
    validator: Draft202012Validator = field(repr=False, compare=False)
    typed: tuple[str, ...]
    negative: frozenset[str]

    def typed_fields(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Validate the tick ``raw`` against the schema and return its typed fields.
        Raises :class:`InvalidField` naming the first field at fault."""
        error = best_match(self.validator.iter_errors(raw))
        if error is not None:
            path = list(error.absolute_path)
            if path:
                name = str(path[0])
            elif error.validator == "required" and isinstance(error.validator_value, list):
                missing = [k for k in error.validator_value if k not in raw]
                name = str(missing[0]) if missing else "(tick)"
            else:
                name = "(tick)"
            message = error.message if len(error.message) < 200 else error.message[:200] + "..."
            raise InvalidField(
                f"{self.name!r} event: {name!r}: {message}", field=name, event=self.name
            )
        typed: dict[str, Any] = {}
        for key in self.typed:
            if key in raw and raw[key] is not None:
                value = raw[key]
                typed[key] = -value if key in self.negative else value
        return typed


@dataclass(frozen=True, slots=True)
class EventSchemas:
    """Every declared event type, and the kind of each typed field."""

    types: Mapping[str, tuple[EventType, ...]] = field(default_factory=dict)
    kinds: Mapping[str, TypedKind] = field(default_factory=dict)

    def find(self, site_id: str, event: str) -> EventType | None:
        """The type a tick of ``event`` from ``site_id`` must follow, if it is declared."""
        for entry in self.types.get(event, ()):
            if entry.sites is None or site_id in entry.sites:
                return entry
        return None

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], where: str = "event_schemas") -> EventSchemas:
        """Parse the ``[event_schemas]`` section; :class:`ConfigError` names the key."""
        types: dict[str, tuple[EventType, ...]] = {}
        kinds: dict[str, TypedKind] = {}
        origin: dict[str, str] = {}
        for name, value in raw.items():
            key = f"{where}.{name}"
            if not _EVENT_NAME.match(name):
                _fail(key, "an event name is 1 to 64 letters, digits, '_', '.', ':' and '-'")
            entries = value if isinstance(value, list) else [value]
            parsed = []
            for index, entry in enumerate(entries):
                entry_key = key if len(entries) == 1 else f"{key}[{index}]"
                parsed.append(_entry(name, entry, entry_key, kinds, origin))
            general = [e for e in parsed if e.sites is None]
            if len(general) > 1:
                _fail(key, "only one schema may apply to every site; give the others 'sites'")
            # a site's own schema wins over the one for every site
            types[name] = tuple(sorted(parsed, key=lambda e: e.sites is None))
        return cls(types, kinds)


def _fail(key: str, message: str) -> NoReturn:
    raise ConfigError(f"{key}: {message}", key=key)


def _entry(
    name: str,
    entry: Any,
    key: str,
    kinds: dict[str, TypedKind],
    origin: dict[str, str],
) -> EventType:
    if not isinstance(entry, dict):
        _fail(key, "expected a table with 'schema' (and optional 'sites', 'negative')")
    unknown = sorted(set(entry) - set(_ENTRY_KEYS))
    if unknown:
        _fail(key, f"unknown key {unknown[0]!r}; a type takes {', '.join(_ENTRY_KEYS)}")
    schema = entry.get("schema")
    if not isinstance(schema, dict):
        _fail(f"{key}.schema", "expected a table holding a JSON Schema")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        _fail(f"{key}.schema", f"not a valid JSON Schema: {exc.message}")
    if schema.get("type", "object") != "object":
        _fail(f"{key}.schema", "a tick is an object: the schema's type must be 'object'")
    properties = schema.get("properties", {})
    typed = []
    for prop, spec in properties.items():
        if prop in _TICK_KEYS:
            continue
        where = f"{key}.schema.properties.{prop}"
        if not FIELD_NAME.match(prop):
            _fail(where, "a typed field is 1 to 64 letters, digits and '_', starting with a letter")
        json_type = spec.get("type") if isinstance(spec, dict) else None
        if json_type not in _KINDS:
            _fail(where, "give the field one 'type': integer, number, string or boolean")
        kind = _KINDS[json_type]
        if prop in kinds and kinds[prop] != kind:
            _fail(
                where,
                f"typed field {prop!r} is {kind} here but {kinds[prop]} in {origin[prop]};"
                " a field has one type across every event type and site",
            )
        kinds[prop] = kind
        origin.setdefault(prop, key)
        typed.append(prop)
    sites = entry.get("sites")
    if sites is not None and (
        not isinstance(sites, list) or not sites or not all(isinstance(s, str) for s in sites)
    ):
        _fail(f"{key}.sites", "expected a non-empty array of site ids")
    negative = entry.get("negative", [])
    if not isinstance(negative, list) or any(
        n not in typed or kinds.get(n) != "number" for n in negative
    ):
        _fail(f"{key}.negative", "expected an array of this type's numeric typed fields")
    return EventType(
        name,
        None if sites is None else frozenset(sites),
        Draft202012Validator(schema),
        tuple(typed),
        frozenset(negative),
    )
