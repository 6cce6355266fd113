"""Telemetry from installed software: apps, their points, the wire contracts, rollups.

:mod:`.model` (apps), :mod:`.registry` (where apps are kept), :mod:`.wire` (the binoculars
and upgrade-responder bodies and answers), :mod:`.commands` (``metronome apps``). Points
themselves are :mod:`metronome.events.point`; ``POST /query`` with ``"source": "metrics"``
reads them.
"""
