"""A TEST DOUBLE of Kibana's saved objects import endpoint, on a free loopback port.

Kibana cannot run on the test machines (it needs its own Node.js distribution, which no
package registry we can reach ships), so this small server plays the one endpoint
``metronome kibana import`` talks to, the way Kibana 8.x documents it:

- ``POST /api/saved_objects/_import`` and ``POST /s/<space>/api/saved_objects/_import``,
  query parameter ``overwrite``; anything else answers 404 like Kibana;
- the ``kbn-xsrf`` header is required (400 otherwise), the body must be
  ``multipart/form-data`` with one ``file`` part of NDJSON saved objects;
- optional authentication: basic or ``ApiKey``, 401 in Kibana's error shape otherwise;
- objects are kept per space; an object that exists is a ``conflict`` error unless
  ``overwrite=true``; a reference to an object neither in the file nor in the space is a
  ``missing_references`` error; the rest are imported, and the answer is Kibana's
  ``{"success", "successCount", "successResults", "errors", "warnings"}``;
- the requests it saw are kept in :attr:`KibanaDouble.requests` for assertions.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["KibanaDouble", "SeenRequest"]

_PATH = re.compile(r"(?:/s/([a-z0-9_-]+))?/api/saved_objects/_import")


@dataclass
class SeenRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    file_name: str | None = None
    file_type: str | None = None
    objects: list[dict[str, Any]] = field(default_factory=list)


class KibanaDouble:
    """Plays Kibana's import API; ``with KibanaDouble() as kibana: kibana.url``."""

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        spaces: tuple[str, ...] = ("default",),
    ) -> None:
        self.username, self.password, self.api_key = username, password, api_key
        self.spaces: dict[str, dict[tuple[str, str], dict[str, Any]]] = {s: {} for s in spaces}
        self.requests: list[SeenRequest] = []
        self.not_ready = 0  # answer this many requests with 503 first, as a starting Kibana
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                double._handle(self)

            def do_POST(self) -> None:
                double._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> KibanaDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- Kibana's behaviour -------------------------------------------------------------

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _error(
        self, handler: BaseHTTPRequestHandler, status: int, error: str, message: str
    ) -> None:
        self._answer(handler, status, {"statusCode": status, "error": error, "message": message})

    def _authenticated(self, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        if self.api_key is not None and given == f"ApiKey {self.api_key}":
            return True
        if self.username is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            if given == f"Basic {token}":
                return True
        return self.api_key is None and self.username is None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        length = int(headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        seen = SeenRequest(handler.command, parts.path, parse_qs(parts.query), headers)
        self.requests.append(seen)
        if self.not_ready > 0:
            self.not_ready -= 1
            return self._error(
                handler, 503, "Service Unavailable", "Kibana server is not ready yet"
            )
        match = _PATH.fullmatch(parts.path)
        if handler.command != "POST" or not match:
            return self._error(handler, 404, "Not Found", "Not Found")
        if not self._authenticated(headers):
            return self._error(
                handler, 401, "Unauthorized", "[security_exception]: unable to authenticate user"
            )
        space = match[1] or "default"
        if space not in self.spaces:
            return self._error(handler, 404, "Not Found", "Not Found")
        if "kbn-xsrf" not in headers:
            return self._error(
                handler, 400, "Bad Request", "Request must contain a kbn-xsrf header."
            )
        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return self._error(handler, 415, "Unsupported Media Type", "Unsupported Media Type")
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body
        )
        files = [
            p
            for p in message.iter_parts()
            if p.get_param("name", header="content-disposition") == "file"
        ]
        if len(files) != 1:
            return self._error(
                handler, 400, "Bad Request", "[request body.file]: expected value of type [Stream]"
            )
        part = files[0]
        seen.file_name = part.get_filename()
        seen.file_type = part.get_content_type()
        if not (seen.file_name or "").endswith(".ndjson"):
            return self._error(handler, 400, "Bad Request", "Invalid file extension .txt")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)  # a file part, not a nested multipart
        try:
            seen.objects = [json.loads(line) for line in payload.decode().splitlines() if line]
        except ValueError as exc:
            return self._error(handler, 400, "Bad Request", f"Unexpected token: {exc}")
        overwrite = seen.query.get("overwrite", ["false"])[0] == "true"
        self._answer(handler, 200, self._import(self.spaces[space], seen.objects, overwrite))
        return None

    @staticmethod
    def _import(
        stored: dict[tuple[str, str], dict[str, Any]],
        objects: list[dict[str, Any]],
        overwrite: bool,
    ) -> dict[str, Any]:
        in_file = {(o["type"], o["id"]) for o in objects}
        errors, results = [], []
        for obj in objects:
            key = (obj["type"], obj["id"])
            meta = {"title": obj["attributes"].get("title", ""), "icon": obj["type"]}
            missing = [
                {"type": r["type"], "id": r["id"]}
                for r in obj.get("references", [])
                if (r["type"], r["id"]) not in in_file | stored.keys()
            ]
            if missing:
                errors.append(
                    {
                        "id": obj["id"],
                        "type": obj["type"],
                        "meta": meta,
                        "title": meta["title"],
                        "error": {"type": "missing_references", "references": missing},
                    }
                )
            elif key in stored and not overwrite:
                errors.append(
                    {
                        "id": obj["id"],
                        "type": obj["type"],
                        "meta": meta,
                        "title": meta["title"],
                        "error": {"type": "conflict"},
                    }
                )
            else:
                result = {"type": obj["type"], "id": obj["id"], "meta": meta}
                if key in stored:
                    result["overwrite"] = True
                results.append(result)
        for result in results:
            key = (result["type"], result["id"])
            stored[key] = next(o for o in objects if (o["type"], o["id"]) == key)
        body: dict[str, Any] = {"success": not errors, "successCount": len(results), "warnings": []}
        if results:
            body["successResults"] = results
        if errors:
            body["errors"] = errors
        return body
