"""Which stores a contract module's ``backend`` tests run on, when it is more than the
default (tests/conftest.py: sqlite and Elasticsearch, plus the secured runs for modules
that say ``SECURED_CONTRACT = True`` and OpenSearch for ``OPENSEARCH_CONTRACT = True``).

Every credential kind over TLS for every contract test would cost the suite minutes it
does not have, so a module may instead run **all** its tests through TLS with one
credential kind (:data:`FULL_KIND`, an API key: what Elastic Cloud hands out) and a
representative subset (a write and a report) with each other kind. A module says so with
a ``pytest_generate_tests`` hook of its own::

    REPRESENTATIVE = {"test_a_write_and_a_report"}

    def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
        secured_contract.parametrize(metafunc, REPRESENTATIVE)

The hook runs before tests/conftest.py's and adds a ``parametrize`` mark for
``backend``; tests/conftest.py leaves a test that names its own backends alone, and
pytest turns the mark into the parameters (values starting with ``elasticsearch`` mark
the test ``elasticsearch``, ``opensearch`` marks it ``opensearch``).
"""

from __future__ import annotations

from collections.abc import Collection

import pytest

__all__ = ["FULL_KIND", "OTHER_KINDS", "backends", "parametrize"]

FULL_KIND = "elasticsearch-apikey"  # every test: TLS with CA verification and an API key
OTHER_KINDS = ["elasticsearch-basic", "elasticsearch-mtls"]  # the representative tests


def backends(representative: bool) -> list[str]:
    """The stores one test runs on: the embedded store, Elasticsearch plain and through
    TLS with :data:`FULL_KIND` (and :data:`OTHER_KINDS` for a representative test), and
    OpenSearch."""
    secured = [FULL_KIND, *(OTHER_KINDS if representative else [])]
    return ["sqlite", "elasticsearch", *secured, "opensearch"]


def _names_backend(metafunc: pytest.Metafunc) -> bool:
    return any(
        "backend" in str(marker.args[0]).replace(" ", "").split(",")
        for marker in metafunc.definition.iter_markers("parametrize")
    )


def parametrize(metafunc: pytest.Metafunc, representative: Collection[str]) -> None:
    """Give a test that uses ``backend`` (directly or through a fixture) its stores, unless
    it names its own; tests named in ``representative`` also run with :data:`OTHER_KINDS`."""
    if "backend" not in metafunc.fixturenames or _names_backend(metafunc):
        return
    kinds = backends(metafunc.definition.originalname in representative)
    metafunc.definition.add_marker(
        pytest.mark.parametrize("backend", kinds, indirect=True, scope="session")
    )
