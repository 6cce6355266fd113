"""Apps: installed software that reports telemetry, and how Metronome answers it.

An **app** (``metronome apps create longhorn``) has an id (part of its index names, so the
same grammar as a site id), the interval its clients are told to wait between reports
(``requestIntervalInMinutes``), the versions ``/v1/checkupgrade`` answers (the JSON file
its developers keep), the tag that tells its instances apart (``instance_uuid``), the
site its points belong to (whose ``query`` keys read them), an optional URL token, the
endpoints it switched off, its limits, its rollups and its retention.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from metronome.events import fields as F
from metronome.events.point import NAME_PATTERN, PointLimits

__all__ = [
    "ENDPOINTS",
    "STATS",
    "App",
    "Rollup",
    "Version",
    "parse_rollup",
    "parse_versions",
]

ENDPOINTS = ("metrics", "checkupgrade", "healthcheck")
STATS = ("sum", "avg", "min", "max", "last")
ROLLUP_INTERVALS = {"1h": "hour", "1d": "day"}
_ROLLUP = re.compile(r"^\s*(\S+)\s+every\s+(\S+)\s+(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Version:
    """One entry of ``/v1/checkupgrade``'s ``versions``."""

    name: str
    release_date: str
    tags: tuple[str, ...] = ()
    min_upgradable_version: str | None = None
    extra_info: tuple[tuple[str, str], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "releaseDate": self.release_date,
            "tags": list(self.tags),
        }
        if self.min_upgradable_version:
            out["minUpgradableVersion"] = self.min_upgradable_version
        if self.extra_info:
            out["extraInfo"] = dict(self.extra_info)
        return out


def parse_versions(raw: Any) -> tuple[Version, ...]:
    """The versions file: ``{"versions": [{"name", "releaseDate", "tags"}]}`` or the bare
    list. Raises ValueError naming the entry that is wrong."""
    items = raw.get("versions") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ValueError('the versions file holds {"versions": [...]} or a JSON array')
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"versions[{index}] needs a 'name' (a string)")
        date = item.get("releaseDate", "")
        tags = item.get("tags") or []
        if not isinstance(date, str) or not isinstance(tags, list):
            raise ValueError(f"versions[{index}]: 'releaseDate' is text, 'tags' a list")
        if not all(isinstance(t, str) for t in tags):
            raise ValueError(f"versions[{index}]: every tag is a string")
        minimum = item.get("minUpgradableVersion") or None
        extra = item.get("extraInfo") or {}
        if not (minimum is None or isinstance(minimum, str)) or not isinstance(extra, dict):
            raise ValueError(
                f"versions[{index}]: 'minUpgradableVersion' is text, 'extraInfo' an object"
            )
        if not all(isinstance(v, str) for v in extra.values()):
            raise ValueError(f"versions[{index}]: 'extraInfo' values are strings")
        out.append(Version(item["name"], date, tuple(tags), minimum, tuple(sorted(extra.items()))))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Rollup:
    """``enabled_feature every 1h sum``: for points of metric ``metric``, per ``interval``
    bucket and tag set, the ``stats`` of every field."""

    metric: str
    interval: str  # "hour" or "day"
    stats: tuple[str, ...]

    @property
    def text(self) -> str:
        every = next(k for k, v in ROLLUP_INTERVALS.items() if v == self.interval)
        return f"{self.metric} every {every} {','.join(self.stats)}"


def parse_rollup(text: str) -> Rollup:
    """``METRIC every 1h|1d STAT[,STAT...]``; ValueError saying what is wrong."""
    match = _ROLLUP.match(text)
    if not match:
        raise ValueError(f"{text!r}: write a rollup as 'METRIC every 1h|1d sum,avg,min,max,last'")
    metric, every, stats_text = match.groups()
    if not NAME_PATTERN.match(metric):
        raise ValueError(f"{metric!r} is not a metric name")
    if every not in ROLLUP_INTERVALS:
        raise ValueError(f"{every!r}: rollups are every 1h or 1d")
    stats = tuple(s.strip() for s in stats_text.replace(" ", ",").split(",") if s.strip())
    bad = [s for s in stats if s not in STATS]
    if bad or not stats:
        raise ValueError(f"{bad[0] if bad else stats_text!r}: stats are {', '.join(STATS)}")
    return Rollup(metric, ROLLUP_INTERVALS[every], tuple(dict.fromkeys(stats)))


@dataclass(frozen=True, slots=True)
class App:
    """One app's settings (see the module docstring)."""

    id: str
    interval_min: int = 60
    versions: tuple[Version, ...] = ()
    site_id: str = F.DEFAULT_SITE
    instance_tag: str = "instance_uuid"
    token: str | None = None
    disabled: frozenset[str] = frozenset()
    limits: PointLimits = field(default_factory=PointLimits)
    rollups: tuple[Rollup, ...] = ()
    raw_days: int | None = None  # retention of raw points; None: the server's
    rollup_days: int | None = None
    created_ms: int = 0

    def allows(self, endpoint: str) -> bool:
        return endpoint not in self.disabled

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "interval_min": self.interval_min,
            "versions": [v.to_wire() for v in self.versions],
            "site": self.site_id,
            "instance_tag": self.instance_tag,
            "token": self.token,
            "disabled": sorted(self.disabled),
            "limits": {
                "max_metrics": self.limits.max_metrics,
                "max_tags": self.limits.max_tags,
                "max_fields": self.limits.max_fields,
                "max_name_length": self.limits.max_name_length,
                "max_tag_length": self.limits.max_tag_length,
            },
            "rollups": [r.text for r in self.rollups],
            "raw_days": self.raw_days,
            "rollup_days": self.rollup_days,
            "created": self.created_ms,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> App:
        limits = raw.get("limits") or {}
        return cls(
            id=str(raw["id"]),
            interval_min=int(raw.get("interval_min", 60)),
            versions=parse_versions(raw.get("versions") or []),
            site_id=str(raw.get("site") or F.DEFAULT_SITE),
            instance_tag=str(raw.get("instance_tag") or "instance_uuid"),
            token=raw.get("token") or None,
            disabled=frozenset(raw.get("disabled") or ()),
            limits=replace(PointLimits(), **{k: int(v) for k, v in limits.items()}),
            rollups=tuple(parse_rollup(r) for r in raw.get("rollups") or ()),
            raw_days=raw.get("raw_days"),
            rollup_days=raw.get("rollup_days"),
            created_ms=int(raw.get("created", 0)),
        )

    def public_dict(self) -> dict[str, Any]:
        """What ``metronome apps list`` shows: the token only as set or not."""
        out = self.to_dict()
        out["token"] = "(set)" if self.token else None
        out["versions"] = len(self.versions)
        return out
