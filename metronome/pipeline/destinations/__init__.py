"""Destinations: a site's accepted events forwarded to other tools, after they are spooled.

- :mod:`.spec`: the ``[[destinations]]`` tables of the configuration file;
- :mod:`.mapping`: how an event becomes each destination's event, declared once;
- :mod:`.senders`: one per type (webhook, amplitude, ga4, metronome, rabbitmq);
- :mod:`.cursor`: each destination's durable cursor in the spool, what the spool keeps;
- :mod:`.forwarder`: the loop ``metronome worker`` runs per destination, and its figures.

See ``docs/guides/destinations.md``.
"""

from __future__ import annotations

# The forwarder (and with it prometheus_client) is imported from its module by those who
# run it: `metronome serve` checks the tables before it names the Prometheus multiprocess
# directory, and importing prometheus_client first would leave its workers' counts out.
from metronome.pipeline.destinations.cursor import Cursor, holds, prune, read_state
from metronome.pipeline.destinations.mapping import mapping_table
from metronome.pipeline.destinations.spec import KINDS, Destination, parse_destinations

__all__ = [
    "KINDS",
    "Cursor",
    "Destination",
    "holds",
    "mapping_table",
    "parse_destinations",
    "prune",
    "read_state",
]
