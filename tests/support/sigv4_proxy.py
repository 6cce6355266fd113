"""A test double of AWS OpenSearch Service's door: a local proxy that checks SigV4 signatures.

AWS cannot be reached from the tests, so this stands in for it, and says so: a small HTTP
server that recomputes each request's AWS Signature Version 4 with **botocore's own
signer** (``botocore.auth.SigV4Auth``: the canonical request, the string to sign, the
signature) from the one access key it knows, refuses a request whose signature, key,
region or service differ (403, with AWS's message), and forwards the others to a real
OpenSearch. What it proves: Metronome signs every request the way botocore says AWS
checks it. What it does not: AWS's own endpoint, IAM policies, or temporary credentials
expiring.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.es_server import free_port

__all__ = ["SigV4Proxy"]

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<headers>[^,]+),"
    r" ?Signature=(?P<sig>[0-9a-f]{64})"
)


@dataclass
class SigV4Proxy:
    """Checks SigV4 for ``access_key``/``secret_key`` in ``region`` for ``service``,
    forwards to ``upstream``; ``checked`` and ``refused`` count requests."""

    upstream: str
    region: str = "eu-west-1"
    service: str = "es"
    access_key: str = field(default_factory=lambda: "AKIA" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    checked: int = 0
    refused: int = 0
    port: int = field(default_factory=free_port)
    _server: ThreadingHTTPServer | None = None
    _client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def verdict(self, method: str, path: str, headers: dict[str, str], body: bytes) -> str | None:
        """Why the request's signature is wrong, or None when botocore computes the same."""
        match = _AUTHORIZATION.fullmatch(headers.get("authorization", ""))
        if match is None:
            return "Authorization header requires a SigV4 signature"
        if match["key"] != self.access_key:
            return "The security token included in the request is invalid."
        if (match["region"], match["service"]) != (self.region, self.service):
            return f"Credential should be scoped to {self.region}/{self.service}"
        amz_date = headers.get("x-amz-date", "")
        signed = match["headers"].split(";")
        request = AWSRequest(
            method=method,
            url=f"http://{headers.get('host', '')}{path}",
            data=body,
            headers={name: headers.get(name, "") for name in signed},
        )
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), self.service, self.region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not secrets.compare_digest(expected, match["sig"]):
            return (
                "The request signature we calculated does not match the signature you"
                " provided. Check your AWS Secret Access Key and signing method."
            )
        return None

    def start(self) -> None:
        proxy = self
        client = self._client = httpx.Client(base_url=self.upstream, timeout=120)

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                reason = proxy.verdict(self.command, self.path, headers, body)
                if reason is not None:
                    proxy.refused += 1
                    answer = json.dumps({"message": reason}).encode()
                    self.send_response(403)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                proxy.checked += 1
                parts = urlsplit(self.path)
                resp = client.request(
                    self.command,
                    parts.path,
                    params=parts.query,
                    content=body,
                    headers={"content-type": headers.get("content-type", "application/json")},
                )
                self.send_response(resp.status_code)
                for name in ("content-type",):
                    if name in resp.headers:
                        self.send_header(name, resp.headers[name])
                self.send_header("content-length", str(len(resp.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.content)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._client is not None:
            self._client.close()

    def env(self) -> dict[str, str]:
        """Metronome's settings for the proxy, credentials from the boto3 chain's
        environment variables."""
        return {
            "METRONOME_OPENSEARCH_URL": self.url,
            "METRONOME_OPENSEARCH_AWS_SIGV4": "on",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }
