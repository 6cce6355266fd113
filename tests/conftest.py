"""Fixtures that describe the world: a real Elasticsearch, running Metronome servers.

Each outside service starts on first use by a test that needs it, never for a run that
does not: ``python -m pytest tests/test_logs_parse.py`` starts no Elasticsearch, installs
no Chromium and builds no ``docker compose``.

- ``es_url`` is ``METRONOME_TEST_ELASTICSEARCH_URL`` when set, else the server this run
  downloads (once, cached) and starts when the first test asks for it; it is stopped when
  the session ends. ``es_server`` is that server itself (tests may stop and start it).
- ``docker_compose`` is built from source the first time (minutes): when the selected
  tests need it, the build starts in the background as soon as collection ends, and the
  tests that need it run last.
- ``rabbitmq`` is a RabbitMQ node (tests/support/rabbitmq.py), started on first use.
- Chromium (``browser`` in tests/test_tracker.py) and moto's S3 server (``moto_url`` in
  tests/test_archive_s3.py) are module fixtures of the only modules that use them.

Tests are marked by what they need (``elasticsearch``, ``browser``, ``compose``, ``s3``,
``rabbitmq``;
registered in pyproject.toml), from the fixtures and parameters they use, so
``-m "not elasticsearch"`` selects the tests that run without it. If a service cannot
start, every test that needs it errors: nothing is skipped.

Helpers that test modules import live in ``tests/support/``, not here.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.support import compose, prefetch, shared
from tests.support.backends import Backend, running_backend
from tests.support.es_server import ElasticsearchServer, OpenSearchServer
from tests.support.rabbitmq import RabbitMQServer
from tests.support.secure_proxy import SecureProxy

_Server = TypeVar("_Server", bound=ElasticsearchServer)

# the slowest modules first: its pytest_collection_modifyitems orders the collection
pytest_plugins = ["tests.support.weights", "tests.support.browser_fixtures"]

# fixture -> the marker of the outside service it brings (its tests get the marker)
SERVICE_FIXTURES = {
    "os_url": "opensearch",
    "es_url": "elasticsearch",
    "es_server": "elasticsearch",
    "es_cluster": "elasticsearch",  # tests/test_cluster.py: three nodes of its own
    "browser": "browser",
    "docker_compose": "compose",
    "moto_url": "s3",
    "rabbitmq": "rabbitmq",
}
# A parameter with this value runs a test against Elasticsearch (``backend``, and the
# ``world``/``kind`` parameters that reach ``es_url`` through ``running_backend``).
ELASTICSEARCH_PARAM = "elasticsearch"
OPENSEARCH_PARAM = "opensearch"  # the same for OpenSearch (``os_url``)


def _is_controller(config: pytest.Config) -> bool:
    """Whether this process hands tests to pytest-xdist workers (``-n 2``)."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", 0))


def pytest_configure(config: pytest.Config) -> None:
    """With several test processes, give them a directory to share servers through."""
    if _is_controller(config) and not os.environ.get(shared.ENV):
        os.environ[shared.ENV] = tempfile.mkdtemp(prefix="metronome-test-run-")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the servers the test processes shared (each worker has ended by now)."""
    if _is_controller(config) and os.environ.get(shared.ENV):
        shared.stop_all(Path(os.environ.pop(shared.ENV)))


def _needs(item: pytest.Item) -> set[str]:
    names = set(getattr(item, "fixturenames", ()))
    needs = {marker for fixture, marker in SERVICE_FIXTURES.items() if fixture in names}
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(
        str(value).startswith(ELASTICSEARCH_PARAM) for value in callspec.params.values()
    ):
        needs.add("elasticsearch")
    if callspec is not None and OPENSEARCH_PARAM in callspec.params.values():
        needs.add("opensearch")
    return needs


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by the services it needs (the run's order, slowest modules first
    and tests that need compose last: tests/support/weights.py). Tests marked
    ``cluster`` (minutes each) run only when ``-m`` names that marker."""
    for item in items:
        for marker in sorted(_needs(item)):
            item.add_marker(marker)
    if "cluster" not in (config.option.markexpr or ""):
        cluster = [item for item in items if item.get_closest_marker("cluster") is not None]
        if cluster:
            config.hook.pytest_deselected(items=cluster)
            items[:] = [item for item in items if item.get_closest_marker("cluster") is None]


_compose_build: threading.Thread | None = None
_compose_built: dict[str, object] = {}


def _build_compose() -> None:
    try:
        _compose_built["config"] = compose.install()
    except BaseException as exc:  # reported by the docker_compose fixture
        _compose_built["error"] = exc


def pytest_collection_finish(session: pytest.Session) -> None:
    """When the selected tests need ``docker compose``, build it in the background now
    (from source the first time: minutes), while the others run; likewise install the
    Debian packages they need and the machine lacks (tests/support/prefetch.py)."""
    global _compose_build
    if session.config.option.collectonly or _compose_build is not None:
        return
    prefetch.start({name for item in session.items for name in getattr(item, "fixturenames", ())})
    if any(item.get_closest_marker("compose") for item in session.items):
        _compose_build = threading.Thread(target=_build_compose, name="compose-build", daemon=True)
        _compose_build.start()


@pytest.fixture(scope="session")
def docker_compose() -> compose.Compose:
    """The real ``docker compose`` CLI (see tests/support/compose.py)."""
    if _compose_build is None:
        _build_compose()
    else:
        _compose_build.join()
    if "error" in _compose_built:
        raise RuntimeError(f"docker compose is not available: {_compose_built['error']}")
    config = _compose_built["config"]
    assert isinstance(config, Path)
    return compose.Compose(config)


def _owned(server: _Server) -> Iterator[_Server]:
    """Start ``server`` (Elasticsearch or OpenSearch) and clean it up at the end."""
    try:
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.cleanup()


def _server_url(
    request: pytest.FixtureRequest, variable: str, owned: str, make: Callable[[], _Server]
) -> str:
    """The URL in ``variable`` (waited for until yellow), else the run's server: the one
    the test processes share (tests/support/shared.py), or this process's fixture ``owned``
    when it runs alone."""
    url = os.environ.get(variable)
    if url:
        httpx.get(
            f"{url}/_cluster/health",
            params={"wait_for_status": "yellow", "timeout": "60s"},
            timeout=70,
        )
        return url.rstrip("/")
    directory = shared.run_dir()
    if directory is not None:
        return shared.shared_server(directory, owned.removeprefix("_suite_"), make)
    server: ElasticsearchServer = request.getfixturevalue(owned)
    server.wait_ready()
    return server.url


@pytest.fixture(scope="session")
def _suite_elasticsearch() -> Iterator[ElasticsearchServer]:
    """The Elasticsearch server this run owns: started on first use, stopped at the end."""
    yield from _owned(ElasticsearchServer())


@pytest.fixture(scope="session")
def _own_elasticsearch() -> Iterator[ElasticsearchServer]:
    """An Elasticsearch server of this test process alone (for tests that stop it)."""
    yield from _owned(ElasticsearchServer())


@pytest.fixture(scope="session")
def es_server(request: pytest.FixtureRequest) -> ElasticsearchServer:
    """The Elasticsearch server this run owns (tests may stop and start it)."""
    if os.environ.get("METRONOME_TEST_ELASTICSEARCH_URL"):
        pytest.fail(
            "this test needs the suite's own Elasticsearch server; "
            "unset METRONOME_TEST_ELASTICSEARCH_URL"
        )
    # with several test processes the shared server stays up: this one is the process's own
    owned = "_own_elasticsearch" if shared.run_dir() is not None else "_suite_elasticsearch"
    server: ElasticsearchServer = request.getfixturevalue(owned)
    server.wait_ready()
    return server


@pytest.fixture(scope="session")
def es_url(request: pytest.FixtureRequest) -> str:
    """``METRONOME_TEST_ELASTICSEARCH_URL`` (waited for until yellow), else the suite's own."""
    return _server_url(
        request, "METRONOME_TEST_ELASTICSEARCH_URL", "_suite_elasticsearch", ElasticsearchServer
    )


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    """A real RabbitMQ node for this run (Debian's package, installed with apt when
    missing), started on first use on free ports, stopped at the end. Tests may
    :meth:`~tests.support.rabbitmq.RabbitMQServer.kill` and ``start`` it again; each test
    uses its own queues and exchanges."""
    server = RabbitMQServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _suite_opensearch() -> Iterator[OpenSearchServer]:
    """The OpenSearch server this run owns: started on first use, stopped at the end."""
    yield from _owned(OpenSearchServer())


@pytest.fixture(scope="session")
def os_url(request: pytest.FixtureRequest) -> str:
    """``METRONOME_TEST_OPENSEARCH_URL`` (waited for until yellow), else the suite's own
    OpenSearch (the integ-test distribution from Maven Central, like Elasticsearch)."""
    return _server_url(
        request, "METRONOME_TEST_OPENSEARCH_URL", "_suite_opensearch", OpenSearchServer
    )


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> Backend:
    """Metronome on each backend in turn, with no sites: nothing needs a key
    (tests/test_sites.py has servers with sites). One server per backend for the test
    process, shared by every module that takes ``backend`` (each test uses fresh items):
    pytest ends a parametrized fixture whenever the next test wants another value, which
    with whole modules handed out by weight (tests/support/weights.py) would restart every
    store's server in nearly every module; ``_backend_<kind>`` keeps each until the end."""
    started: Backend = request.getfixturevalue("_backend_" + request.param.replace("-", "_"))
    return started


def _one_backend(kind: str) -> Callable[..., Iterator[Backend]]:
    """The session fixture of ``kind``'s server (stopped, and checked, at the end; before
    the Elasticsearch, OpenSearch or proxy it uses, which it asked for while starting)."""

    def fixture(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Backend]:
        with running_backend(request, tmp_path_factory, kind, {}) as started:
            yield started

    fixture.__doc__ = f"The ``backend`` server on {kind} for the whole test process."
    return fixture


# the contract modules that say ``SECURED_CONTRACT = True`` run on these too: Elasticsearch
# through nginx with TLS and each credential kind (tests/support/secure_proxy.py)
SECURED_BACKENDS = ["elasticsearch-basic", "elasticsearch-apikey", "elasticsearch-mtls"]
# and those that say ``OPENSEARCH_CONTRACT = True`` on OpenSearch as well (the suite's
# time: every store added to every ``backend`` test would take the run past 15 minutes)
OPENSEARCH_BACKENDS = ["opensearch"]

# ``backend``'s servers, one per store, each kept until the test process ends
_backend_sqlite = pytest.fixture(_one_backend("sqlite"), scope="session", name="_backend_sqlite")
_backend_elasticsearch = pytest.fixture(
    _one_backend("elasticsearch"), scope="session", name="_backend_elasticsearch"
)
_backend_elasticsearch_basic = pytest.fixture(
    _one_backend("elasticsearch-basic"), scope="session", name="_backend_elasticsearch_basic"
)
_backend_elasticsearch_apikey = pytest.fixture(
    _one_backend("elasticsearch-apikey"), scope="session", name="_backend_elasticsearch_apikey"
)
_backend_elasticsearch_mtls = pytest.fixture(
    _one_backend("elasticsearch-mtls"), scope="session", name="_backend_elasticsearch_mtls"
)
_backend_opensearch = pytest.fixture(
    _one_backend("opensearch"), scope="session", name="_backend_opensearch"
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``backend`` runs each test on each store: sqlite and elasticsearch, and the secured
    ones and OpenSearch in the modules that ask for them."""
    chosen = any(
        "backend" in str(marker.args[0]).replace(" ", "").split(",")
        for marker in metafunc.definition.iter_markers("parametrize")
    )  # a test that names its own backends keeps them
    if "backend" in metafunc.fixturenames and not chosen:
        secured = SECURED_BACKENDS if getattr(metafunc.module, "SECURED_CONTRACT", False) else []
        opensearch = (
            OPENSEARCH_BACKENDS if getattr(metafunc.module, "OPENSEARCH_CONTRACT", False) else []
        )
        metafunc.parametrize(
            "backend",
            ["sqlite", "elasticsearch", *secured, *opensearch],
            indirect=True,
            scope="session",
        )


@pytest.fixture(scope="session")
def secure_proxy(es_url: str) -> Iterator[SecureProxy]:
    """nginx in front of the suite's Elasticsearch: TLS, Basic auth, API keys, client
    certificates (a test double of a secured cluster's door; see its module)."""
    proxy = SecureProxy.create(es_url)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def item() -> str:
    """A fresh item id, so tests sharing a server never see each other's ticks."""
    return "item-" + uuid.uuid4().hex[:12]
