"""Process-wide logging: one line per event on stderr, configured once per process."""

from __future__ import annotations

import logging
import sys

from metronome.config import Settings, masked_url

__all__ = ["MaskingFormatter", "configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class MaskingFormatter(logging.Formatter):
    """Formats a record, tracebacks included, with every URL's password masked."""

    def format(self, record: logging.LogRecord) -> str:
        return masked_url(super().format(record))


def configure_logging(settings: Settings) -> None:
    """Send Metronome's logs to stderr at ``METRONOME_LOG_LEVEL``."""
    root = logging.getLogger("metronome")
    if getattr(root, "_metronome_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    root.propagate = False
    root._metronome_configured = True  # type: ignore[attr-defined]  # our own flag
