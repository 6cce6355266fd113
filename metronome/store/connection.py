"""How Metronome connects to Elasticsearch: nodes, credentials, TLS, and what failures mean.

One place builds the client options from the settings (several node URLs or an Elastic
Cloud ID; an API key, or a user and password; a CA file or fingerprint; a client
certificate for mutual TLS; timeout and retries), for the store and the sites registry
alike, and one place turns the client's errors into a sentence a person can act on:
an untrusted or expired certificate, a host name the certificate does not cover, refused
credentials, a privilege the role lacks (named). No message ever holds a secret: the URLs
carry none (``config.py`` refuses credentials in them), and the credentials are never
put into a message.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, TlsError
from elasticsearch import ApiError
from elasticsearch import ConflictError as EsConflict
from elasticsearch import NotFoundError as EsNotFound
from opensearchpy import exceptions as opensearch_errors

from metronome.config import Settings
from metronome.errors import StoreUnavailable

# the two clients' errors, side by side: the store catches these tuples, never one client's
UNREACHABLE: tuple[type[Exception], ...] = (
    TransportConnectionError,
    ConnectionTimeout,
    opensearch_errors.ConnectionError,  # its TLS and timeout errors are kinds of it
)
"""Connection, TLS and timeout errors (catch them before :data:`API_ERRORS`)."""
API_ERRORS: tuple[type[Exception], ...] = (ApiError, opensearch_errors.TransportError)
"""The cluster answered with an error status."""
NOT_FOUND: tuple[type[Exception], ...] = (EsNotFound, opensearch_errors.NotFoundError)
CONFLICT: tuple[type[Exception], ...] = (EsConflict, opensearch_errors.ConflictError)
_TLS: tuple[type[Exception], ...] = (TlsError, opensearch_errors.SSLError)


def status_of(exc: Exception) -> int | None:
    """The HTTP status of an answered error, from either client."""
    if isinstance(exc, ApiError):
        return int(exc.meta.status)
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def body_of(exc: Exception) -> Any:
    """The error's answer body (a dict when the cluster answered JSON)."""
    if isinstance(exc, ApiError):
        return exc.body
    return getattr(exc, "info", None)


def message_of(exc: Exception) -> str:
    """The error's short message: its type and reason as the cluster gave them."""
    if isinstance(exc, ApiError):
        return str(exc.message)
    body = body_of(exc)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('type', '')}: {error.get('reason', '')}".strip(": ")
    return str(getattr(exc, "error", exc))


__all__ = [
    "API_ERRORS",
    "CONFLICT",
    "NOT_FOUND",
    "UNREACHABLE",
    "answering",
    "body_of",
    "client_options",
    "message_of",
    "open_client",
    "opensearch_options",
    "search",
    "status_of",
    "denied_reason",
    "explain",
    "has_credentials",
    "nodes",
    "unverified_warning",
]

log = logging.getLogger("metronome.store")

SHARD_WAITS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
"""How long :func:`search` waits, one pause per try, for an index's shards to start."""

_PRIVILEGE = re.compile(
    r"is unauthorized for (?:user|API key id) \[([^\]]*)\].*?"
    r"granted by the (cluster|index) privileges \[([^\]]+)\]",
    re.S,
)
_ACTION = re.compile(r"action \[([^\]]+)\]")


def nodes(settings: Settings) -> str:
    """Where the store is, for messages: the node URLs (they hold no credentials) or the
    Elastic Cloud deployment's name."""
    if settings.elasticsearch_cloud_id:
        name = settings.elasticsearch_cloud_id.partition(":")[0] or "(unnamed)"
        return f"the Elastic Cloud deployment {name!r}"
    urls = settings.opensearch_url or settings.elasticsearch_url or ""
    return ", ".join(urls.split(","))


def open_client(settings: Settings, **extra: Any) -> Any:
    """The asynchronous client of the configured engine: ``AsyncElasticsearch`` or
    ``AsyncOpenSearch`` (``extra``: more options for the Elasticsearch client)."""
    if settings.search_engine == "opensearch":
        from opensearchpy import AsyncOpenSearch

        return AsyncOpenSearch(**opensearch_options(settings))
    from elasticsearch import AsyncElasticsearch

    return AsyncElasticsearch(**client_options(settings), **extra)


def opensearch_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for the OpenSearch client: the same settings, its own names."""
    hosts = (settings.opensearch_url or "").split(",")
    options: dict[str, Any] = {
        "hosts": hosts,
        "timeout": settings.elasticsearch_timeout_s,
        "max_retries": settings.elasticsearch_retries,
        "retry_on_timeout": True,
        "retry_on_status": (502, 503, 504),
    }
    if settings.opensearch_aws_sigv4:
        import boto3
        from opensearchpy import AWSV4SignerAsyncAuth

        session = boto3.Session()
        credentials = session.get_credentials()
        if credentials is None or not session.region_name:
            from metronome.errors import ConfigError

            raise ConfigError(
                "METRONOME_OPENSEARCH_AWS_SIGV4 is on, but the boto3 chain gives no"
                f" {'credentials' if credentials is None else 'region'} (set AWS_DEFAULT_REGION,"
                " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or a role)",
                variable="METRONOME_OPENSEARCH_AWS_SIGV4",
            )
        from opensearchpy import AsyncHttpConnection

        options["http_auth"] = AWSV4SignerAsyncAuth(
            credentials, session.region_name, settings.opensearch_aws_service
        )
        options["connection_class"] = AsyncHttpConnection  # the one that signs each request
    elif settings.elasticsearch_username:
        options["http_auth"] = (
            settings.elasticsearch_username,
            settings.elasticsearch_password or "",
        )
    if any(h.startswith("https://") for h in hosts):
        options["use_ssl"] = True
        options["verify_certs"] = settings.elasticsearch_verify_certs
        options["ssl_show_warn"] = False
        if settings.elasticsearch_ca_certs:
            options["ca_certs"] = settings.elasticsearch_ca_certs
        if settings.elasticsearch_ca_fingerprint:
            options["ssl_assert_fingerprint"] = settings.elasticsearch_ca_fingerprint
        if settings.elasticsearch_client_cert:
            options["client_cert"] = settings.elasticsearch_client_cert
            options["client_key"] = settings.elasticsearch_client_key
    return options


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for the Elasticsearch client, from the settings."""
    options: dict[str, Any] = {
        "request_timeout": settings.elasticsearch_timeout_s,
        "max_retries": settings.elasticsearch_retries,
        "retry_on_timeout": True,
    }
    if settings.elasticsearch_cloud_id:
        options["cloud_id"] = settings.elasticsearch_cloud_id
    else:
        options["hosts"] = (settings.elasticsearch_url or "").split(",")
    key = settings.elasticsearch_api_key
    if key:
        key_id, colon, secret = key.partition(":")
        options["api_key"] = (key_id, secret) if colon else key
    elif settings.elasticsearch_username:
        options["basic_auth"] = (
            settings.elasticsearch_username,
            settings.elasticsearch_password or "",
        )
    tls: dict[str, Any] = {}
    if settings.elasticsearch_ca_certs:
        tls["ca_certs"] = settings.elasticsearch_ca_certs
    if settings.elasticsearch_ca_fingerprint:
        tls["ssl_assert_fingerprint"] = settings.elasticsearch_ca_fingerprint
    if settings.elasticsearch_client_cert:
        tls["client_cert"] = settings.elasticsearch_client_cert
        if settings.elasticsearch_client_key:
            tls["client_key"] = settings.elasticsearch_client_key
    if not settings.elasticsearch_verify_certs:
        # our own warning (unverified_warning) replaces the client's Python warning
        tls |= {"verify_certs": False, "ssl_show_warn": False}
    if tls and (
        settings.elasticsearch_cloud_id or "https://" in (settings.elasticsearch_url or "")
    ):
        options |= tls
    return options


def has_credentials(settings: Settings) -> bool:
    """Whether Metronome authenticates to the cluster (so it has privileges to check)."""
    return bool(
        settings.elasticsearch_api_key
        or settings.elasticsearch_username
        or settings.elasticsearch_client_cert
    )


def unverified_warning(settings: Settings) -> str | None:
    """The warning every start logs while certificate checking is off."""
    if settings.elasticsearch_verify_certs:
        return None
    return (
        "METRONOME_ELASTICSEARCH_VERIFY_CERTS is off: the cluster's TLS certificate is not"
        " checked, so anyone between Metronome and the cluster can read and change what"
        " they exchange (credentials included)"
    )


def _tls_reason(exc: Exception) -> str:
    text = str(exc)
    if "certificate has expired" in text or "not yet valid" in text:
        return "its TLS certificate has expired (or is not valid yet)"
    if "Hostname mismatch" in text or "doesn't match" in text or "IP address mismatch" in text:
        return (
            "its TLS certificate is not valid for this host name; connect by a name the"
            " certificate lists"
        )
    if "FingerprintMismatch" in text or "Fingerprints did not match" in text:
        return "its certificate does not match METRONOME_ELASTICSEARCH_CA_FINGERPRINT"
    if "unable to get local issuer" in text or "self-signed" in text or "self signed" in text:
        return (
            "its TLS certificate is not signed by a CA Metronome trusts; set"
            " METRONOME_ELASTICSEARCH_CA_CERTS to the cluster's CA certificate (or"
            " METRONOME_ELASTICSEARCH_CA_FINGERPRINT to its fingerprint)"
        )
    if "certificate required" in text or "handshake failure" in text:
        return (
            "it asks for a client certificate Metronome did not give or it does not trust;"
            " check METRONOME_ELASTICSEARCH_CLIENT_CERT and _CLIENT_KEY"
        )
    if "wrong version number" in text or "record layer failure" in text:
        return "it does not speak TLS on this port; use an http:// URL, or the TLS port"
    reason = text.rsplit("] ", 1)[-1].split(" (_ssl.c")[0]
    return f"the TLS handshake failed: {reason}"


def _server_reason(exc: Exception) -> str:
    body = body_of(exc)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        reason = str(error.get("reason") or error.get("type") or "")
        extra = error.get("additional_unsuccessful_credentials")
        return f"{reason} ({extra})" if extra else reason
    return str(error or message_of(exc))


def _refused_credentials(exc: Exception) -> str:
    reason = _server_reason(exc)
    said = f"; the cluster said: {reason}" if reason and reason != "None" else ""
    return (
        "refused the credentials (401): a wrong user name or password, or an API key"
        " that is wrong, expired or revoked; check METRONOME_ELASTICSEARCH_USERNAME and"
        f" _PASSWORD, or METRONOME_ELASTICSEARCH_API_KEY{said}"
    )


def _missing_privilege(exc: Exception, what: str) -> str:
    return denied_reason(_server_reason(exc), what)


def denied_reason(reason: str, what: str) -> str:
    """What a 403 ``security_exception``'s ``reason`` means: who lacks which privilege."""
    match = _PRIVILEGE.search(reason)
    if match:
        who, kind, privileges = match.groups()
        least = privileges.split(",")[0]
        action = _ACTION.search(reason)
        on = f" for {action[1]}" if action else ""
        return (
            f"Elasticsearch user {who!r} lacks the {kind} privilege {least!r}{on}, needed for"
            f" {what}"
            f" (`metronome elasticsearch role` prints the roles Metronome needs)"
        )
    return f"Elasticsearch denied {what} (403): {reason}"


def explain(exc: Exception, what: str) -> str | None:
    """A sentence saying why the cluster did not do ``what``, for the clients' errors that
    mean a configuration or connection problem; None for other errors."""
    if isinstance(exc, _TLS) or "FingerprintMismatch" in str(exc):
        return f"Elasticsearch cannot be trusted: {_tls_reason(exc)}"
    if isinstance(exc, UNREACHABLE):
        cause = str(exc).split(" caused by: ")[-1]
        return f"Elasticsearch is unreachable: {cause}"
    status = status_of(exc)
    if status in (400, 495, 496):
        # a TLS proxy in front of the cluster (nginx) answers a missing or refused client
        # certificate with an HTTP error rather than failing the handshake as Elasticsearch does
        if "SSL certificate" in f"{body_of(exc)} {message_of(exc)}":
            return (
                "Elasticsearch (or the proxy in front of it) asks for a client certificate"
                " Metronome did not give or it does not trust; check"
                " METRONOME_ELASTICSEARCH_CLIENT_CERT and _CLIENT_KEY"
            )
    if status == 401:
        return f"Elasticsearch {_refused_credentials(exc)}"
    if _shards_unavailable(exc):
        return _shards_reason(what)
    if status == 403:
        return _missing_privilege(exc, what)
    return None


def _shards_reason(what: str) -> str:
    """Why a search was refused when some shards had no started copy."""
    return (
        f"Elasticsearch could not search every shard for {what}: some have no started"
        " copy (a node is down, or the cluster cannot allocate them; see GET"
        " _cluster/health and GET _cluster/allocation/explain). Metronome gives no"
        " answer rather than an incomplete one"
    )


def _unstarted(failures: Any) -> list[bool]:
    """For each of a search's shard failures, whether it failed for want of a started
    copy (``no_shard_available_action_exception``) rather than for a reason of its own."""
    return [
        (f.get("reason") or {}).get("type") == "no_shard_available_action_exception"
        for f in failures or ()
        if isinstance(f, dict)
    ]


def _shards_unavailable(exc: Exception) -> bool:
    """Whether a search failed only because its shards have no started copy.

    That is every new index for a moment: the cluster answers ``503
    search_phase_execution_exception`` for a search that reaches only an index created by
    the first document of a new day or dataset, until its primary shard starts a fraction
    of a second later. It is also a node lost with no replica of its shards. The failed
    shards (grouped by reason) say ``no_shard_available_action_exception``, or OpenSearch
    lists none; a started shard that failed says why.
    """
    if status_of(exc) != 503:
        return False
    body = body_of(exc)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or error.get("type") != "search_phase_execution_exception":
        return False
    return all(_unstarted(error.get("failed_shards")))


def _unsearched(resp: Any) -> int:
    """How many of an answered search's shards had no started copy: those counted in
    ``total`` but neither ``successful`` (which includes the skipped) nor ``failed``, and
    those listed as failed for want of a started copy."""
    shards = resp.get("_shards") or {}
    uncounted = (
        int(shards.get("total", 0))
        - int(shards.get("successful", 0))
        - int(shards.get("failed", 0))
    )
    return uncounted + sum(_unstarted(shards.get("failures")))


async def search(client: Any, **request: Any) -> Any:
    """``client.search(**request)`` over every shard or not at all, waiting up to about
    three seconds for shards that are starting (the client's own errors otherwise, for
    the caller's :func:`answering`).

    A search that reaches an index whose shard has no started copy fails if that is the
    only index, and otherwise answers 200 counting only the other indices (the missing
    shard listed as failed, or not even that): a report that is silently low. The first
    happens to every new index for a moment (at midnight, or a dataset's first event),
    until its primary shard starts a few hundred milliseconds later; both happen for as
    long as a node without replicas is down. So such a search is asked again after each
    pause of :data:`SHARD_WAITS_S`, and refused (StoreUnavailable) if shards are still
    missing after the last. (Shards that fail the query itself keep the cluster's own
    answer.)
    """
    for pause in SHARD_WAITS_S:
        try:
            resp = await client.search(**request)
        except API_ERRORS as exc:
            if not _shards_unavailable(exc):
                raise
        else:
            if _unsearched(resp) <= 0:
                return resp
        await asyncio.sleep(pause)
    resp = await client.search(**request)  # the last try: its error, or missing shards, stand
    if _unsearched(resp) > 0:
        raise StoreUnavailable(_shards_reason("a search"))
    return resp


@contextmanager
def answering(what: str) -> Iterator[None]:
    """Turn the client's connection and API errors into StoreUnavailable naming ``what``."""
    try:
        yield
    except UNREACHABLE as exc:
        raise StoreUnavailable(
            explain(exc, what) or f"Elasticsearch is unreachable: {exc}"
        ) from exc
    except API_ERRORS as exc:
        raise StoreUnavailable(
            explain(exc, what)
            or f"Elasticsearch refused {what} ({status_of(exc)}): {message_of(exc)}"
        ) from exc
