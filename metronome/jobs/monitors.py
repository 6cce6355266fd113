"""Health monitors: TCP, HTTP(S) and TLS-expiry checks every interval, results as points,
state changes as events and webhook alerts.

Declared in the configuration file, one ``[[monitors]]`` table each (see
``docs/guides/platform-monitoring.md``): ``name``, one check (``tcp = "host:port"``,
``http = "https://..."``, ``tls = "host:port"``), ``interval``, ``timeout``, ``retries``,
``expect_status``, ``keyword``, ``ca_file``, ``verify``, ``min_days``, ``site``,
``region``, ``webhooks``.

Like collectors, each check period runs once across every worker sharing the store (a
lease per monitor and region, :mod:`metronome.store.leases`), and the lease keeps the
monitor's state: ``up`` or ``down``, the failures in a row, since when. A failed check is
retried next period; after ``retries`` more failures in a row the state turns ``down``,
and the first success turns it ``up`` again. Each check is a point
``metric.name="monitor"`` (``tags.monitor``, ``tags.kind``, ``tags.region``,
``tags.state``; ``fields.up`` (the state, 1 or 0), ``fields.ok`` (this check),
``fields.total_ms``, ``fields.dns_ms``, ``fields.connect_ms``, ``fields.tls_ms``,
``fields.first_byte_ms``, ``fields.status``, ``fields.body_bytes``, ``fields.days_left``
as the check measured them). A state change is a point ``metric.name="monitor_state"``
(``tags.from``, ``tags.to``, ``tags.down_from`` and, on recovery, ``tags.down_to``) and an
alert to each webhook (:mod:`metronome.jobs.webhooks`: signed, retried, deduplicated).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from metronome.errors import ConfigError, MetronomeError
from metronome.events import fields as F
from metronome.events.document import Document
from metronome.events.point import Point, point_document
from metronome.jobs.checks import CheckResult, HTTPCheck, TCPCheck, TLSCheck, split_host_port
from metronome.jobs.collectors import process_owner
from metronome.jobs.webhooks import Webhook, deliver, parse_webhooks
from metronome.pipeline import metrics
from metronome.store.base import Store
from metronome.store.leases import LeaseStore

__all__ = ["MonitorSpec", "parse_monitors", "run_monitors", "check_period", "check_documents"]

log = logging.getLogger("metronome.monitors")

_KINDS = ("tcp", "http", "tls")
_KEYS = (
    "name",
    "interval",
    "timeout",
    "retries",
    "expect_status",
    "keyword",
    "ca_file",
    "verify",
    "min_days",
    "site",
    "region",
    "webhooks",
)
_MAX_DELIVERED = 50  # delivery ids a monitor remembers (its latest alerts)


class Check(Protocol):
    def describe(self) -> str: ...

    async def run(self, timeout_s: float) -> CheckResult: ...


@dataclass(frozen=True, slots=True)
class MonitorSpec:
    name: str
    kind: str
    check: Check
    interval_s: int = 60
    timeout_s: float = 10.0
    retries: int = 2
    site: str = F.DEFAULT_SITE
    region: str = "local"
    webhooks: tuple[Webhook, ...] = ()

    def lease_name(self, region: str) -> str:
        return f"monitor:{self.name}:{region}"


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}", key=where)


def _parse_check(entry: Mapping[str, Any], kind: str, where: str) -> Check:
    target = entry[kind]
    if not isinstance(target, str):
        raise _fail(f"{where}.{kind}", "expected a string")
    if kind == "http":
        if not target.startswith(("http://", "https://")):
            raise _fail(f"{where}.http", "expected an http:// or https:// URL")
        expect = entry.get("expect_status", [])
        if isinstance(expect, int):
            expect = [expect]
        if not isinstance(expect, list) or not all(
            isinstance(s, int) and 100 <= s <= 599 for s in expect
        ):
            raise _fail(f"{where}.expect_status", "expected HTTP status codes")
        keyword = entry.get("keyword")
        if keyword is not None and not isinstance(keyword, str):
            raise _fail(f"{where}.keyword", "expected a string")
        ca_file = entry.get("ca_file")
        if ca_file is not None and not isinstance(ca_file, str):
            raise _fail(f"{where}.ca_file", "expected a path")
        return HTTPCheck(target, tuple(expect), keyword, ca_file, bool(entry.get("verify", True)))
    try:
        host, port = split_host_port(target, 443 if kind == "tls" else None)
    except ValueError as exc:
        raise _fail(f"{where}.{kind}", str(exc)) from None
    if kind == "tcp":
        return TCPCheck(host, port)
    min_days = entry.get("min_days", 14)
    if not isinstance(min_days, int | float) or isinstance(min_days, bool):
        raise _fail(f"{where}.min_days", "expected a number of days")
    return TLSCheck(host, port, float(min_days))


def parse_monitors(raw: Sequence[Mapping[str, Any]]) -> tuple[MonitorSpec, ...]:
    """The ``[[monitors]]`` section, checked; :class:`ConfigError` names the key."""
    specs: list[MonitorSpec] = []
    for index, entry in enumerate(raw):
        name = entry.get("name")
        if not isinstance(name, str) or not F.APP_ID_PATTERN.match(name):
            raise _fail(f"monitors[{index}].name", "1 to 64 lowercase letters, digits, '-' and '_'")
        where = f"monitors.{name}"
        if name in {s.name for s in specs}:
            raise _fail(where, f"two monitors are named {name!r}")
        unknown = sorted(set(entry) - set(_KEYS) - set(_KINDS))
        if unknown:
            raise _fail(
                where,
                f"unknown key {unknown[0]!r}; a monitor takes {', '.join(_KEYS)} and one of"
                f" {', '.join(_KINDS)}",
            )
        kinds = [k for k in _KINDS if k in entry]
        if len(kinds) != 1:
            raise _fail(where, "give exactly one check: tcp, http or tls")
        numbers = {}
        for key, default, low in (("interval", 60, 1), ("timeout", 10, 0.001), ("retries", 2, 0)):
            value = entry.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
                raise _fail(f"{where}.{key}", f"expected a number of at least {low}")
            numbers[key] = value
        region = entry.get("region", "local")
        site = entry.get("site", F.DEFAULT_SITE)
        if not isinstance(region, str) or not F.APP_ID_PATTERN.match(region):
            raise _fail(f"{where}.region", "expected a region name (like eu-west)")
        if not isinstance(site, str) or not F.SITE_ID_PATTERN.match(site):
            raise _fail(f"{where}.site", "expected a site id")
        try:
            hooks = parse_webhooks(entry.get("webhooks"), f"{where}.webhooks")
        except ValueError as exc:
            raise ConfigError(str(exc), key=where) from None
        specs.append(
            MonitorSpec(
                name=name,
                kind=kinds[0],
                check=_parse_check(entry, kinds[0], where),
                interval_s=int(numbers["interval"]),
                timeout_s=float(numbers["timeout"]),
                retries=int(numbers["retries"]),
                site=site,
                region=region,
                webhooks=hooks,
            )
        )
    return tuple(specs)


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One check and what it did to the monitor's state."""

    result: CheckResult
    state: str
    previous: str | None
    failures: int
    since_ms: int

    @property
    def changed(self) -> bool:
        return (
            self.previous is not None
            and self.previous != self.state
            or (self.previous is None and self.state == "down")
        )


def next_state(state: Mapping[str, Any], result: CheckResult, retries: int, now_ms: int) -> Outcome:
    """The monitor's state after ``result``: down after ``retries + 1`` failures in a row,
    up at the first success (a new monitor starts up)."""
    previous = state.get("state")
    failures = 0 if result.up else int(state.get("failures", 0)) + 1
    current = previous or "up"
    if result.up:
        current = "up"
    elif failures > retries:
        current = "down"
    since = int(state.get("since_ms", now_ms)) if current == previous else now_ms
    return Outcome(result, current, previous, failures, since)


def check_documents(
    spec: MonitorSpec, region: str, at_ms: int, outcome: Outcome, down_since_ms: int | None
) -> list[Document]:
    """The check's point and, on a state change, the change's point."""
    tags = {"monitor": spec.name, "kind": spec.kind, "region": region, "state": outcome.state}
    fields = {
        "up": 1.0 if outcome.state == "up" else 0.0,
        "ok": 1.0 if outcome.result.up else 0.0,
        **{k: float(v) for k, v in outcome.result.measured.items()},
    }
    sender = f"monitor:{spec.name}:{region}"
    docs = [
        point_document(
            Point(spec.name, "monitor", at_ms, tags, fields, spec.site), sender=f"{sender}:{at_ms}"
        )
    ]
    if outcome.changed:
        change = {
            "monitor": spec.name,
            "kind": spec.kind,
            "region": region,
            "from": outcome.previous or "up",
            "to": outcome.state,
        }
        if outcome.state == "down":
            change["down_from"] = _iso(at_ms)
        elif down_since_ms is not None:
            change["down_from"] = _iso(down_since_ms)
            change["down_to"] = _iso(at_ms)
        docs.append(
            point_document(
                Point(
                    spec.name, "monitor_state", at_ms, change, {"at_ms": float(at_ms)}, spec.site
                ),
                sender=f"{sender}:state:{at_ms}",
            )
        )
    return docs


async def _alert(
    spec: MonitorSpec,
    region: str,
    outcome: Outcome,
    at_ms: int,
    down_since_ms: int | None,
    delivered: set[str],
) -> None:
    if not spec.webhooks:
        return
    recovered = outcome.state == "up"
    payload: dict[str, Any] = {
        "monitor": spec.name,
        "region": region,
        "check": spec.check.describe(),
        "state": outcome.state,
        "previous": outcome.previous or "up",
        "at": _iso(at_ms),
        "reason": outcome.result.reason,
        "message": (
            f"{spec.name} is back up in {region}"
            + (f" after {(at_ms - down_since_ms) / 1000:.0f}s down" if down_since_ms else "")
            if recovered
            else f"{spec.name} is down in {region}: {outcome.result.reason}"
        ),
    }
    if down_since_ms is not None:
        payload["down_since"] = _iso(down_since_ms)
    delivery_id = f"{spec.name}:{region}:{outcome.state}:{outcome.since_ms}"
    for hook in spec.webhooks:
        result = await deliver(hook, payload, delivery_id, delivered=delivered)
        if not result.ok:
            log.error(
                "monitor_alert_failed monitor=%s url=%s attempts=%d error=%s",
                spec.name,
                hook.url,
                result.attempts,
                result.error,
            )


async def check_period(
    spec: MonitorSpec,
    store: Store,
    leases: LeaseStore,
    period: int,
    owner: str,
    *,
    region: str | None = None,
) -> Outcome | None:
    """Run ``spec``'s check for ``period`` if this process wins the lease; store its
    points, alert on a state change. None when another process has this period."""
    region = region or spec.region
    now = int(time.time() * 1000)
    ttl_ms = int((spec.timeout_s + 60) * 1000)
    name = spec.lease_name(region)
    claim = await leases.claim(name, period, owner, now, ttl_ms)
    if not claim.won:
        return None
    state = dict(claim.previous.state) if claim.previous is not None else {}
    result = await spec.check.run(spec.timeout_s)
    at_ms = int(time.time() * 1000)
    outcome = next_state(state, result, spec.retries, at_ms)
    down_since = state.get("since_ms") if outcome.previous == "down" else None
    metrics.MONITOR_CHECKS.labels(spec.name, "up" if result.up else "down").inc()
    try:
        docs = check_documents(spec, region, at_ms, outcome, down_since)
        refused = [o for o in await store.write(docs) if not o.ok]
        if refused:
            log.warning("monitor_points_refused monitor=%s reason=%s", spec.name, refused[0].reason)
    except MetronomeError as exc:
        log.warning("monitor_points_unstored monitor=%s reason=%s", spec.name, exc.message)
    delivered = set(state.get("delivered", []))
    if outcome.changed:
        log.warning(
            "monitor_state_changed monitor=%s region=%s from=%s to=%s reason=%s",
            spec.name,
            region,
            outcome.previous or "up",
            outcome.state,
            result.reason,
        )
        await _alert(spec, region, outcome, at_ms, down_since, delivered)
    state.update(
        {
            "state": outcome.state,
            "failures": outcome.failures,
            "since_ms": outcome.since_ms,
            "last_check_ms": at_ms,
            "last_reason": result.reason,
            "delivered": sorted(delivered)[-_MAX_DELIVERED:],
        }
    )
    await leases.release(name, period, owner, state)
    return outcome


async def run_periodically(
    every_s: float, jitter_s: float, stop: asyncio.Event, job: Callable[[int], Any], what: str
) -> None:
    """``job(period)`` at the start of every period until ``stop``."""
    every_ms = every_s * 1000
    while not stop.is_set():
        period = int(time.time() * 1000 // every_ms)
        try:
            await job(period)
        except MetronomeError as exc:
            log.warning("job_deferred job=%s reason=%s", what, exc.message)
        except Exception:
            log.exception("job_crashed job=%s", what)
        next_start = (period + 1) * every_ms + random.uniform(0, jitter_s * 1000)
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, (next_start - time.time() * 1000) / 1000))
        except TimeoutError:
            pass


async def run_monitors(
    specs: Sequence[MonitorSpec], store: Store, leases: LeaseStore, stop: asyncio.Event
) -> None:
    """Run every monitor until ``stop`` (the worker's scheduler)."""
    owner = process_owner()

    def job(spec: MonitorSpec) -> Callable[[int], Any]:
        return lambda period: check_period(spec, store, leases, period, owner)

    await asyncio.gather(
        *(run_periodically(s.interval_s, 0, stop, job(s), f"monitor:{s.name}") for s in specs)
    )
