"""Destinations: a site's accepted events forwarded to other tools, after they are spooled.

- :mod:`.spec`: the ``[[destinations]]`` tables of the configuration file;
- :mod:`.mapping`: how an event becomes each destination's event, declared once;
- :mod:`.senders`: one per type (webhook, amplitude, ga4, metronome, rabbitmq);
- :mod:`.cursor`: each destination's durable cursor in the spool, what the spool keeps;
- :mod:`.forwarder`: the loop ``metronome worker`` runs per destination, and its figures.

See ``docs/guides/destinations.md``.
"""

from __future__ import annotations

from metronome.pipeline.destinations.cursor import Cursor, holds, prune, read_state
from metronome.pipeline.destinations.forwarder import (
    DestinationCollector,
    Forwarder,
    ForwarderStats,
    dead_letter_path,
)
from metronome.pipeline.destinations.mapping import mapping_table
from metronome.pipeline.destinations.spec import KINDS, Destination, parse_destinations

__all__ = [
    "KINDS",
    "Cursor",
    "Destination",
    "DestinationCollector",
    "Forwarder",
    "ForwarderStats",
    "dead_letter_path",
    "holds",
    "mapping_table",
    "parse_destinations",
    "prune",
    "read_state",
]
