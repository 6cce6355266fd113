"""Sites and keys: the registry (:mod:`.registry`), each process's cached copy
(:mod:`.cache`), and the model (:mod:`.model`). The HTTP side is :mod:`metronome.api.guard`.
"""

from __future__ import annotations

from metronome.events import fields as F
from metronome.reports.model import IsFilter

__all__ = ["site_filter"]


def site_filter(site_id: str) -> IsFilter:
    """The filter every report of ``site_id`` carries. The default site's also matches
    events stored before sites existed (no ``site.id``)."""
    return IsFilter(F.SITE_ID, (site_id,), or_missing=site_id == F.DEFAULT_SITE)
