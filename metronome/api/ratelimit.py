"""Token buckets for ingest: per client address (requests without a key) and per site.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second; one tick
costs one token. A request is let in while its bucket is not empty and then pays for all
its ticks, even into debt, so a batch larger than the burst still passes once and the
long-run rate is exact. An empty (or indebted) bucket answers ``429 rate_limited`` with
``Retry-After``: the seconds until it holds a token again.

Buckets live in each worker process: with ``METRONOME_WORKERS=4`` on two hosts, a client
can get up to 8 times the configured rate. IPv6 addresses are counted per /64 (one
subscriber's network), IPv4 addresses each on their own. Buckets that have refilled are
forgotten, so memory follows the number of recent senders.
"""

from __future__ import annotations

import ipaddress
import math
import time
from functools import lru_cache

from metronome.errors import RateLimited

__all__ = ["Buckets", "address_key"]

_SWEEP_EVERY_S = 30.0


@lru_cache(maxsize=8192)
def address_key(address: str) -> str:
    """What one client address is counted as: itself, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address


class Buckets:
    """Token buckets by key; ``rate`` 0 turns them off."""

    def __init__(self, rate: float, burst: int, what: str) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._what = what
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, updated]
        self._swept = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _tokens(self, key: str, now: float) -> list[float]:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
        elif bucket[1] != now:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        return bucket

    def check(self, key: str, now: float | None = None) -> None:
        """429 if ``key``'s bucket is empty; costs nothing (a cheap refusal before work)."""
        if self.rate <= 0 or key not in self._buckets:
            return
        bucket = self._tokens(key, time.monotonic() if now is None else now)
        if bucket[0] < 1:
            self._refuse(key, bucket[0])

    def spend(self, key: str, cost: int, now: float | None = None) -> None:
        """Let ``cost`` ticks in (possibly into debt), or 429 if the bucket is empty."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        if now - self._swept > _SWEEP_EVERY_S:
            self._sweep(now)
        bucket = self._tokens(key, now)
        if bucket[0] < 1:
            self._refuse(key, bucket[0])
        bucket[0] -= cost

    def _refuse(self, key: str, tokens: float) -> None:
        wait = max(1, math.ceil((1 - tokens) / self.rate))
        raise RateLimited(
            f"too many ticks from this {self._what}: the limit is {self.rate:g} a second"
            f" (bursts of {self.burst:g}); retry in {wait} s",
            retry_after_s=wait,
            limit=self.rate,
            burst=self.burst,
            per=self._what,
        )

    def _sweep(self, now: float) -> None:
        self._swept = now
        stale = [
            k
            for k, (tokens, updated) in self._buckets.items()
            if tokens + (now - updated) * self.rate >= self.burst
        ]
        for key in stale:
            del self._buckets[key]
