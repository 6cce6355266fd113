"""Webhook delivery: a JSON body POSTed with an HMAC signature, retried, deduplicated.

Any job that alerts (monitors' state changes; insights later) builds a :class:`Webhook`
from its configuration and calls :func:`deliver` with a payload and a delivery id:

- the body is the payload as compact JSON; ``X-Metronome-Signature: sha256=<hex>`` is the
  HMAC-SHA256 of the body with the webhook's secret (when it has one), so a receiver
  checks it came from Metronome (compare with :func:`signature`, in constant time);
- ``X-Metronome-Delivery`` is the delivery id: the same alert always carries the same id,
  so a receiver that sees an id twice (a retry whose answer was lost) can drop it; the
  sender also remembers the ids it delivered (``delivered``) and never sends one again;
- a connection error, a timeout, 429 or a 5xx answer is retried with doubling backoff up
  to ``attempts`` times; any other 4xx is final (the receiver refused the body).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Mapping, MutableSet
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

__all__ = ["Delivery", "Webhook", "deliver", "parse_webhooks", "signature"]

log = logging.getLogger("metronome.webhooks")

SIGNATURE_HEADER = "X-Metronome-Signature"
DELIVERY_HEADER = "X-Metronome-Delivery"


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str | None = None
    timeout_s: float = 10.0
    attempts: int = 5
    backoff_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one delivery: ``ok`` (the receiver answered 2xx), after how many
    attempts, with the last status or error; ``duplicate``: it was delivered before."""

    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None
    duplicate: bool = False


def signature(secret: str, body: bytes) -> str:
    """The ``X-Metronome-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def parse_webhooks(raw: Any, where: str) -> tuple[Webhook, ...]:
    """An array of tables ``{url, secret, timeout, attempts}``; ValueError names the key."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected an array of tables {{url, secret}}")
    hooks = []
    for index, entry in enumerate(raw):
        key = f"{where}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ValueError(f"{key}: expected a table with url (and secret)")
        unknown = sorted(set(entry) - {"url", "secret", "timeout", "attempts"})
        if unknown:
            raise ValueError(f"{key}: unknown key {unknown[0]!r}")
        if not entry["url"].startswith(("http://", "https://")):
            raise ValueError(f"{key}.url: expected an http:// or https:// URL")
        secret = entry.get("secret")
        if secret is not None and not isinstance(secret, str):
            raise ValueError(f"{key}.secret: expected a string")
        timeout = entry.get("timeout", 10)
        attempts = entry.get("attempts", 5)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError(f"{key}.timeout: expected seconds")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ValueError(f"{key}.attempts: expected a whole number of at least 1")
        hooks.append(Webhook(entry["url"], secret, float(timeout), attempts))
    return tuple(hooks)


async def deliver(
    hook: Webhook,
    payload: Mapping[str, Any],
    delivery_id: str,
    *,
    delivered: MutableSet[str] | None = None,
    client: httpx.AsyncClient | None = None,
) -> Delivery:
    """POST ``payload`` to ``hook``, retrying as the module says. ``delivered``: ids sent
    before (this one is added once it is delivered)."""
    key = f"{hook.url} {delivery_id}"
    if delivered is not None and key in delivered:
        return Delivery(True, 0, duplicate=True)
    body = orjson.dumps(payload)
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery_id}
    if hook.secret:
        headers[SIGNATURE_HEADER] = signature(hook.secret, body)
    own = client is None
    http = client or httpx.AsyncClient(timeout=hook.timeout_s)
    status: int | None = None
    error: str | None = None
    delay = hook.backoff_s
    try:
        for attempt in range(1, hook.attempts + 1):
            try:
                response = await http.post(hook.url, content=body, headers=headers)
                status, error = response.status_code, None
                if 200 <= status < 300:
                    if delivered is not None:
                        delivered.add(key)
                    return Delivery(True, attempt, status)
                if status != 429 and status < 500:
                    return Delivery(False, attempt, status, f"refused with {status}")
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: not an HTTPError
                status, error = None, f"{type(exc).__name__}: {exc}"
            log.warning(
                "webhook_retry url=%s delivery=%s attempt=%d status=%s error=%s",
                hook.url,
                delivery_id,
                attempt,
                status,
                error,
            )
            if attempt < hook.attempts:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay *= 2
    finally:
        if own:
            await http.aclose()
    return Delivery(False, hook.attempts, status, error or f"answered {status}")
