"""Health checks a monitor runs: TCP connect, HTTP(S) GET, TLS certificate days left.

Each returns a :class:`CheckResult`: up or down, why, and what it measured in
milliseconds (and bytes, days). The HTTP check times DNS itself (``getaddrinfo``) and the
rest through the client's trace hooks (httpcore: TCP connect, TLS handshake, time to the
response's headers, total).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["CheckResult", "HTTPCheck", "TCPCheck", "TLSCheck", "split_host_port"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    up: bool
    reason: str | None = None
    measured: dict[str, float] = field(default_factory=dict)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        if default_port is None:
            raise ValueError(f"{text!r}: expected host:port")
        return text, default_port
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class TCPCheck:
    host: str
    port: int

    def describe(self) -> str:
        return f"tcp {self.host}:{self.port}"

    async def run(self, timeout_s: float) -> CheckResult:
        started = time.perf_counter()
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout_s
            )
        except TimeoutError:
            return CheckResult(False, f"no connection in {timeout_s:g}s")
        except OSError as exc:
            return CheckResult(False, f"connect failed: {exc.strerror or exc}")
        connect_ms = _ms(started)
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return CheckResult(True, None, {"connect_ms": connect_ms, "total_ms": connect_ms})


def _tls_context(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True, slots=True)
class HTTPCheck:
    url: str
    expect_status: tuple[int, ...] = ()  # empty: any status below 400
    keyword: str | None = None
    ca_file: str | None = None
    verify: bool = True

    def describe(self) -> str:
        return f"http {self.url}"

    async def run(self, timeout_s: float) -> CheckResult:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        measured: dict[str, float] = {}
        started = time.perf_counter()
        marks: dict[str, float] = {}

        async def trace(name: str, info: dict[str, Any]) -> None:
            marks[name] = time.perf_counter()

        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.getaddrinfo(host, port), timeout_s)
            measured["dns_ms"] = _ms(started)
            verify: Any = _tls_context(self.ca_file, self.verify)
            # the client's own timeouts (connect, each read) end a slow answer cleanly
            async with httpx.AsyncClient(verify=verify, timeout=timeout_s) as client:
                response = await client.get(self.url, extensions={"trace": trace})
                body = response.content
        except (TimeoutError, httpx.TimeoutException):
            return CheckResult(False, f"no answer in {timeout_s:g}s", measured)
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            return CheckResult(False, f"{type(exc).__name__}: {exc}"[:300], measured)
        measured["total_ms"] = _ms(started)
        tcp = marks.get("connection.connect_tcp.complete")
        if tcp is not None and "connection.connect_tcp.started" in marks:
            measured["connect_ms"] = round(
                (tcp - marks["connection.connect_tcp.started"]) * 1000, 3
            )
        tls = marks.get("connection.start_tls.complete")
        if tls is not None and "connection.start_tls.started" in marks:
            measured["tls_ms"] = round((tls - marks["connection.start_tls.started"]) * 1000, 3)
        for name in (
            "http11.receive_response_headers.complete",
            "http2.receive_response_headers.complete",
        ):
            if name in marks:
                measured["first_byte_ms"] = round((marks[name] - started) * 1000, 3)
        measured["status"] = float(response.status_code)
        measured["body_bytes"] = float(len(body))
        if self.expect_status:
            if response.status_code not in self.expect_status:
                return CheckResult(False, f"answered {response.status_code}", measured)
        elif response.status_code >= 400:
            return CheckResult(False, f"answered {response.status_code}", measured)
        if self.keyword is not None and self.keyword not in response.text:
            return CheckResult(False, f"{self.keyword!r} is not in the page", measured)
        return CheckResult(True, None, measured)


@dataclass(frozen=True, slots=True)
class TLSCheck:
    """Days until the server's certificate expires; down below ``min_days``."""

    host: str
    port: int
    min_days: float = 14.0

    def describe(self) -> str:
        return f"tls {self.host}:{self.port}"

    async def run(self, timeout_s: float) -> CheckResult:
        from cryptography import x509

        context = _tls_context(None, verify=False)  # expiry is the question, not trust
        started = time.perf_counter()
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=context, server_hostname=self.host
                ),
                timeout_s,
            )
        except TimeoutError:
            return CheckResult(False, f"no TLS handshake in {timeout_s:g}s")
        except (OSError, ssl.SSLError) as exc:
            return CheckResult(False, f"TLS failed: {exc}"[:300])
        handshake_ms = _ms(started)
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
        if not der:
            return CheckResult(False, "the server sent no certificate")
        certificate = x509.load_der_x509_certificate(der)
        left_s = (certificate.not_valid_after_utc - datetime.now(UTC)).total_seconds()
        days = round(left_s / 86400, 3)
        measured = {"days_left": days, "tls_ms": handshake_ms, "total_ms": handshake_ms}
        if days < self.min_days:
            reason = "expired" if days < 0 else f"expires in {days:.1f} days"
            return CheckResult(False, f"the certificate {reason}", measured)
        return CheckResult(True, None, measured)
