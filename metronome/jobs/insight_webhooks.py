"""Insight webhooks: one signed JSON POST per raised or recovered insight.

Written for KPIs (issue 22) while no shared webhook module existed. Each delivery carries
``X-Metronome-Event`` (``insight.raised`` or ``insight.recovered``), ``X-Metronome-Delivery``
(the insight's document id: a receiver that saw it already can drop it) and, with
``METRONOME_INSIGHT_WEBHOOK_SECRET``, ``X-Metronome-Signature: sha256=<hex HMAC-SHA256 of
the body>``. Failures (connection errors, 429, 5xx) are retried three times with backoff;
other answers are final.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any

import httpx
import orjson

__all__ = ["deliver", "sign"]

log = logging.getLogger("metronome.insights")

ATTEMPTS = 4
TIMEOUT_S = 5.0


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    *,
    event: str,
    delivery_id: str,
    secret: str | None,
) -> bool:
    """POST ``payload`` to ``url``; True once answered 2xx."""
    body = orjson.dumps(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "metronome-insights",
        "X-Metronome-Event": event,
        "X-Metronome-Delivery": delivery_id,
    }
    if secret:
        headers["X-Metronome-Signature"] = sign(secret, body)
    delay = 0.5
    for attempt in range(1, ATTEMPTS + 1):
        try:
            resp = await client.post(url, content=body, headers=headers, timeout=TIMEOUT_S)
            if resp.is_success:
                return True
            retriable = resp.status_code == 429 or resp.status_code >= 500
            reason = f"status {resp.status_code}"
        except httpx.HTTPError as exc:
            retriable, reason = True, type(exc).__name__
        log.warning(
            "insight_webhook_failed url=%s attempt=%d reason=%s", url[:200], attempt, reason
        )
        if not retriable or attempt == ATTEMPTS:
            return False
        await asyncio.sleep(delay)
        delay *= 2
    return False
