"""A month as dense as a year of 10,000,000 events, by day and by month and each kind of field.

Issue 24 goal 3 asks for any ``/query`` with one time and one keyword dimension over a
month in 1 s at 10,000,000 events over a year. A month of that year holds about 830,000
events (27,400 a day); loading the whole year takes long, so this loads 931,500 events
over 34 days (the last whole month and a few days around it, at the same density) and
measures, with :mod:`benchmarks.growth`, the reports by day and by month and each kind of
field: a column of the rollups (``referrer``), fields with few values a day (``domain``,
``country``: ``rollup_fields``), and fields with about a value per item or per event
(``path``, ``visitor``: ``rollup_values``). Every option of :mod:`benchmarks.growth`
applies; the results are in ``benchmarks/results/growth_month.json``.

    python -m benchmarks.growth_month [--seed 24]
"""

from __future__ import annotations

from benchmarks.growth import main

if __name__ == "__main__":
    main(
        "growth_month",
        __doc__.splitlines()[0],
        sizes="931500",
        days=34,
        intervals="day,month",
        skip_elasticsearch=True,
        baseline_requests=3,
        requests=20,
    )
