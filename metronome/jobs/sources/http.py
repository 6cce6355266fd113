"""An HTTP source: a GET of a JSON document and a JSONPath per point (``jsonpath-ng``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from metronome.jobs.sources import Measured, count_of

__all__ = ["HTTPSource", "parse"]

_KEYS = ("url", "points", "headers")


@dataclass(frozen=True, slots=True)
class HTTPSource:
    url: str
    points: dict[str, str]  # type -> JSONPath
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"http {self.url}"

    async def measure(self, default_type: str, timeout_s: float) -> Measured:
        from jsonpath_ng.ext.parser import parse as jsonpath

        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as client:
            response = await client.get(self.url, headers=self.headers)
        if response.status_code != 200:
            raise ValueError(f"GET {self.url} answered {response.status_code}")
        try:
            document = response.json()
        except ValueError:
            raise ValueError(f"GET {self.url} did not answer JSON") from None
        measured: Measured = []
        for kind, path in self.points.items():
            found = [match.value for match in jsonpath(path).find(document)]
            if len(found) != 1:
                raise ValueError(
                    f"points.{kind}: {path!r} matched {len(found)} values in the answer; it"
                    " must match one number"
                )
            measured.append((kind, count_of(found[0], f"points.{kind} ({path})")))
        return measured


def parse(table: Any, key: str) -> HTTPSource:
    from jsonpath_ng.ext.parser import parse as jsonpath

    if not isinstance(table, dict):
        raise ValueError(f"{key}: expected a table with url and points")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ValueError(f"{key}: unknown key {unknown[0]!r}; http takes {', '.join(_KEYS)}")
    url = table.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"{key}.url: expected an http:// or https:// URL")
    points = table.get("points")
    if not isinstance(points, dict) or not points:
        raise ValueError(f"{key}.points: expected a table of type = JSONPath")
    for kind, path in points.items():
        if not isinstance(path, str):
            raise ValueError(f"{key}.points.{kind}: expected a JSONPath string")
        try:
            jsonpath(path)
        except Exception as exc:  # the library raises several kinds for a bad path
            raise ValueError(f"{key}.points.{kind}: not a JSONPath: {exc}") from None
    headers = table.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError(f"{key}.headers: expected a table of strings")
    return HTTPSource(url, dict(points), dict(headers))
