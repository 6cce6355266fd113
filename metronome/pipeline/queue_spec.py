"""The ``[[queues]]`` tables of the configuration file, checked: what
:mod:`metronome.pipeline.queue_input` consumes. Apart from the consumer so that checking
the configuration (``metronome serve`` does it before it names the Prometheus multiprocess
directory) imports no metrics."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metronome.config import Settings, masked_url
from metronome.errors import ConfigError
from metronome.events import fields as F

__all__ = ["KINDS", "QueueSpec", "parse_queues"]

KINDS = ("tick", "ticks", "events", "points", "lines")

_KEYS = frozenset(
    {
        "name",
        "queue",
        "url",
        "kind",
        "site",
        "site_header",
        "app",
        "prefetch",
        "dead_letter_exchange",
        "dead_letter_routing_key",
    }
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One ``[[queues]]`` table."""

    name: str  # in metrics, logs and `metronome status`
    queue: str
    url: str = field(repr=False)  # holds a password: shown with masked_url only
    kind: str
    site: str
    site_header: str | None = None
    app: str = "telemetry"
    prefetch: int = 100
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None

    def describe(self) -> str:
        return f"{masked_url(self.url)} queue {self.queue!r} ({self.kind})"


def _text(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> Any:
    value = table.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where}.{key}: expected a non-empty string", key=f"{where}.{key}")
    return value


def parse_queues(raw: Sequence[Mapping[str, Any]], settings: Settings) -> list[QueueSpec]:
    """The ``[[queues]]`` tables as specs; a bad one raises :class:`ConfigError` naming it."""
    specs: list[QueueSpec] = []
    for index, table in enumerate(raw):
        where = f"queues[{index}]"
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r}; a queue takes {', '.join(sorted(_KEYS))}",
                key=where,
            )
        queue = _text(table, "queue", where)
        if queue is None:
            raise ConfigError(f"{where}.queue: the queue's name is required", key=where)
        name = _text(table, "name", where, queue.lower())
        if not _NAME.match(name):
            raise ConfigError(
                f"{where}.name: {name!r}: 1 to 64 lowercase letters, digits, '_', '-' and '.'"
                " (give `name` when the queue's own name is not one)",
                key=f"{where}.name",
            )
        url = _text(table, "url", where, settings.amqp_url)
        if url is None:
            raise ConfigError(
                f"{where}: no AMQP URL: give `url`, or set METRONOME_AMQP_URL", key=where
            )
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigError(
                f"{where}.url: {masked_url(url)!r} is not an amqp:// or amqps:// URL",
                key=f"{where}.url",
            )
        kind = _text(table, "kind", where)
        if kind not in KINDS:
            raise ConfigError(
                f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}",
                key=f"{where}.kind",
            )
        site_header = _text(table, "site_header", where)
        site = _text(table, "site", where, F.DEFAULT_SITE)
        if site_header is not None and "site" in table:
            raise ConfigError(
                f"{where}: give `site` (every message's site) or `site_header` (a header"
                " carrying a site's key), not both",
                key=where,
            )
        app = _text(table, "app", where, settings.telemetry_app)
        for key, value in (("site", site), ("app", app)):
            if not F.SITE_ID_PATTERN.match(value):
                raise ConfigError(
                    f"{where}.{key}: {value!r}: 1 to 64 lowercase letters, digits, '-' and '_',"
                    " starting with a letter or digit",
                    key=f"{where}.{key}",
                )
        prefetch = table.get("prefetch", 100)
        if (
            isinstance(prefetch, bool)
            or not isinstance(prefetch, int)
            or not 1 <= prefetch <= 65535
        ):
            raise ConfigError(
                f"{where}.prefetch: expected a whole number from 1 to 65535, got {prefetch!r}",
                key=f"{where}.prefetch",
            )
        specs.append(
            QueueSpec(
                name=name,
                queue=queue,
                url=url,
                kind=kind,
                site=site,
                site_header=site_header.lower() if site_header else None,
                app=app,
                prefetch=prefetch,
                dead_letter_exchange=_text(table, "dead_letter_exchange", where),
                dead_letter_routing_key=_text(table, "dead_letter_routing_key", where),
            )
        )
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"queues: two queues are named {name!r}; give each a `name`")
    return specs


# -- from message to documents (on the event loop) -------------------------------------------
