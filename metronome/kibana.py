"""Kibana saved objects: find them, adapt them to the index prefix, import them.

``metronome/kibana_objects/metronome.ndjson`` holds data views for ``<prefix>-ticks-*``,
``<prefix>-logs-*`` and ``<prefix>-metrics-*`` and dashboards on them.
:func:`import_saved_objects` sends it through Kibana's saved objects import API
(``POST /api/saved_objects/_import``, multipart ``file``, header ``kbn-xsrf``), into a
space when one is named, and turns Kibana's answer
into a :class:`ImportSummary` a person can read.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

__all__ = [
    "ImportSummary",
    "KibanaError",
    "import_saved_objects",
    "load_saved_objects",
    "saved_objects_path",
]

FILE_NAME = "metronome.ndjson"
DEFAULT_PREFIX = "metronome"
_SPACE = re.compile(r"[a-z0-9_-]+")
_KINDS = {
    "index-pattern": "data views",
    "lens": "visualizations",
    "visualization": "visualizations",
    "dashboard": "dashboards",
}


class KibanaError(Exception):
    """The import did not happen, or not completely; the message says why."""


def saved_objects_path() -> Path:
    """``metronome/kibana_objects/metronome.ndjson``, package data."""
    path = resources.files("metronome") / "kibana_objects" / FILE_NAME
    if not isinstance(path, Path):  # only a zipped install gives anything else
        raise FileNotFoundError(f"kibana_objects/{FILE_NAME} must be a file on disk, not {path}")
    return path


def load_saved_objects(
    prefix: str = DEFAULT_PREFIX, path: Path | None = None
) -> list[dict[str, Any]]:
    """The saved objects, with data views pointing at ``<prefix>-<dataset>-*``."""
    objects = [
        orjson.loads(line)
        for line in (path or saved_objects_path()).read_bytes().splitlines()
        if line.strip()
    ]
    if prefix != DEFAULT_PREFIX:
        for obj in objects:
            attributes = obj["attributes"]
            if obj["type"] == "index-pattern" and attributes["title"].startswith(
                DEFAULT_PREFIX + "-"
            ):
                attributes["title"] = prefix + attributes["title"][len(DEFAULT_PREFIX) :]
    return objects


@dataclass
class ImportSummary:
    """What Kibana did with the file."""

    imported: Counter[str] = field(default_factory=Counter)  # by kind, e.g. "dashboards"
    overwritten: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def line(self, target: str) -> str:
        total = sum(self.imported.values())
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.imported.items()))
        text = f"imported {total} saved objects into {target}"
        if kinds:
            text += f" ({kinds})"
        if self.overwritten:
            text += f", {self.overwritten} of them replaced existing ones"
        return text


def _describe(error: dict[str, Any]) -> str:
    """One of Kibana's per-object import errors as a sentence."""
    title = error.get("title") or (error.get("meta") or {}).get("title") or ""
    who = f"{error.get('type', '?')} {error.get('id', '?')}" + (f" ({title})" if title else "")
    detail = error.get("error") or {}
    kind = detail.get("type", "unknown")
    if kind in ("conflict", "ambiguous_conflict"):
        why = "already exists in Kibana; run again with --overwrite to replace it"
    elif kind == "missing_references":
        refs = ", ".join(f"{r.get('type')} {r.get('id')}" for r in detail.get("references", []))
        why = f"refers to objects Kibana does not have: {refs}"
    elif kind == "unsupported_type":
        why = "is a type this Kibana does not know (is it older than 8.x?)"
    else:
        why = detail.get("message") or kind
    return f"{who}: {why}"


def _summarise(body: dict[str, Any]) -> ImportSummary:
    summary = ImportSummary()
    for result in body.get("successResults") or []:
        summary.imported[_KINDS.get(result.get("type", ""), result.get("type", "?"))] += 1
        if result.get("overwrite"):
            summary.overwritten += 1
    if not body.get("successResults") and body.get("successCount"):
        summary.imported["objects"] = int(body["successCount"])
    summary.errors = [_describe(e) for e in body.get("errors") or []]
    if not body.get("success", False) and not summary.errors:
        summary.errors.append("Kibana reported the import as failed without saying why")
    return summary


def _refusal(resp: httpx.Response, space: str | None) -> str:
    try:
        body = resp.json()
        message = body.get("message") or body.get("error") or resp.text
    except ValueError:
        message = resp.text.strip()[:300] or resp.reason_phrase
    text = f"Kibana refused the import ({resp.status_code} {resp.reason_phrase}): {message}"
    if resp.status_code in (401, 403):
        text += (
            " -- set METRONOME_KIBANA_API_KEY, or METRONOME_KIBANA_USERNAME and"
            " METRONOME_KIBANA_PASSWORD, for a user allowed to manage saved objects"
        )
    elif resp.status_code == 404 and space:
        text += f" -- does the space {space!r} exist?"
    elif resp.status_code == 404:
        text += " -- is this the URL of Kibana (not of Elasticsearch)?"
    return text


def import_saved_objects(
    url: str,
    *,
    space: str | None = None,
    overwrite: bool = False,
    prefix: str = DEFAULT_PREFIX,
    username: str | None = None,
    password: str | None = None,
    api_key: str | None = None,
    wait_s: float = 0.0,
    timeout_s: float = 60.0,
    path: Path | None = None,
) -> ImportSummary:
    """POST the saved objects to Kibana at ``url``; raise :class:`KibanaError` when it
    cannot be reached or refuses the request. Waits up to ``wait_s`` for a Kibana that is
    still starting (connection refused, or 503 "not ready yet")."""
    if space is not None and space != "default" and not _SPACE.fullmatch(space):
        raise KibanaError(
            f"{space!r} is not a Kibana space id (lowercase letters, digits, '_' and '-')"
        )
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise KibanaError(f"{url!r} is not an http:// or https:// URL")
    endpoint = base + (f"/s/{quote(space)}" if space and space != "default" else "")
    endpoint += "/api/saved_objects/_import"
    objects = load_saved_objects(prefix, path)
    payload = b"".join(orjson.dumps(o) + b"\n" for o in objects)
    headers = {"kbn-xsrf": "true"}
    auth: httpx.BasicAuth | None = None
    if api_key:
        headers["Authorization"] = f"ApiKey {api_key}"
    elif username:
        auth = httpx.BasicAuth(username, password or "")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            resp = httpx.post(
                endpoint,
                params={"overwrite": "true"} if overwrite else None,
                headers=headers,
                auth=auth,
                timeout=timeout_s,
                files={"file": (FILE_NAME, payload, "application/ndjson")},
            )
        except httpx.TransportError as exc:
            if time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise KibanaError(f"Kibana at {base} is unreachable: {exc}") from None
        if resp.status_code == 503 and time.monotonic() < deadline:
            time.sleep(2)
            continue
        break
    if resp.status_code != 200:
        raise KibanaError(_refusal(resp, space))
    try:
        body = resp.json()
    except ValueError:
        raise KibanaError(
            f"Kibana answered 200 but not with JSON: {resp.text[:200]!r}"
            " -- is this the URL of Kibana?"
        ) from None
    if not isinstance(body, dict) or "success" not in body:
        raise KibanaError(f"Kibana's answer is not an import result: {resp.text[:200]!r}")
    return _summarise(body)
