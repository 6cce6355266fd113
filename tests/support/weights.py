"""How long each test module takes, so the slowest start first (tests/conftest.py).

``scripts/test`` hands whole modules to two processes (pytest-xdist ``--dist loadfile``
with ``--no-loadscope-reorder``), in the order of the collection. A module of several
minutes that starts last keeps one process busy while the other has nothing left to do,
so the collection puts the heaviest modules first, by the seconds below: each module's
summed test time (setup and teardown included) in a full run of ``scripts/test``, measured
with a plugin that logs each test's duration. Modules missing here (new ones, and those
under five seconds) keep their places after these. Only the order depends on this table:
a stale figure costs some balance between the two processes, never a test.
"""

from __future__ import annotations

import pytest

__all__ = ["WEIGHTS", "pytest_collection_modifyitems", "weight"]

# seconds per module in a full run (2026-12-03, two processes on 2 cores)
WEIGHTS = {
    "test_faults.py": 368,
    "test_openapi.py": 263,
    "test_import_guarantees.py": 217,
    "test_secured_elasticsearch.py": 166,
    "test_telemetry_clients.py": 107,
    "test_query_contract.py": 102,
    "test_ticks_contract.py": 100,
    "test_telemetry.py": 97,
    "test_attacker_cost.py": 96,
    "test_sites.py": 87,
    "test_probe.py": 84,
    "test_cli_errors.py": 82,
    "test_retention.py": 81,
    "test_insights_live.py": 79,
    "test_tock_contract.py": 78,
    "test_site_adoption.py": 78,
    "test_queue_input.py": 75,
    "test_live.py": 74,
    "test_collectors.py": 68,
    "test_sites_fail_closed.py": 63,
    "test_hostile_input.py": 62,
    "test_destinations.py": 51,
    "test_kibana.py": 47,
    "test_logs_pipeline.py": 44,
    "test_log_formats.py": 41,
    "test_import_counts.py": 39,
    "test_privacy.py": 39,
    "test_dashboard_journeys.py": 38,
    "test_serve_workers.py": 37,
    "test_dashboard.py": 37,
    "test_forget.py": 34,
    "test_monitors.py": 34,
    "test_tick_paths.py": 34,
    "test_journeys.py": 29,
    "test_funnels.py": 28,
    "test_middleware.py": 27,
    "test_opensearch.py": 27,
    "test_archive_s3.py": 26,
    "test_client.py": 26,
    "test_forecast_query.py": 24,
    "test_templates_elasticsearch.py": 24,
    "test_private_files.py": 24,
    "test_query_fuzz.py": 23,
    "test_docs.py": 22,
    "test_long_lines.py": 22,
    "test_telemetry_apps.py": 21,
    "test_http_edges.py": 20,
    "test_ingest_refusals.py": 20,
    "test_forward_input.py": 19,
    "test_rabbitmq_support.py": 19,
    "test_concurrency_report.py": 18,
    "test_forwarded_ticks.py": 17,
    "test_referrer_spam.py": 17,
    "test_typed_events.py": 16,
    "test_sqlite_many_workers.py": 16,
    "test_tracker.py": 15,
    "test_rejects_file.py": 14,
    "test_ingest_fuzz.py": 14,
    "test_errors.py": 14,
    "test_config.py": 14,
    "test_related.py": 14,
    "test_cursor_forgery.py": 13,
    "test_body_timeouts.py": 11,
    "test_cli.py": 8,
    "test_spool.py": 6,
}


def weight(path: str) -> int:
    """The seconds a module took (``tests/test_x.py`` or ``test_x.py``), else 0."""
    return WEIGHTS.get(path.rsplit("/", 1)[-1], 0)


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture parameters
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest modules first; tests that need compose (built in the background from
    source the first time: minutes) last. The sort is stable: each module keeps the order
    pytest gave it. (A plugin of tests/conftest.py, which marks ``compose`` first.)"""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("compose") is not None,
            -weight(item.path.name),
        )
    )
