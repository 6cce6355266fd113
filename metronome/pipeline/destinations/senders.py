"""Senders: one per destination type, each turning a batch of documents into requests.

``send(documents)`` answers :class:`Sent`: how many of the batch's leading documents the
destination has acknowledged (or refused for good: those are listed with the reason, for
the dead-letter file), and, when it stopped short, why and when to try again. A sender never
sleeps and never retries what may succeed later: the forwarder does (backoff, Retry-After).
The rules every HTTP sender shares:

- 2xx: acknowledged;
- 429, 5xx, a timeout or a connection error: try again later (``Retry-After`` honoured);
- 400, 413, 422 on more than one event: the batch is halved and each half sent on its own,
  so one bad event is dead-lettered alone and the rest still go (Amplitude's 400 names the
  bad events: only those are refused);
- any other 4xx: refused for good, with the status and the start of the answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
import orjson

from metronome.events.document import FORWARDED_HEADER, Document
from metronome.pipeline.destinations import mapping
from metronome.pipeline.destinations.spec import Destination

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Sender",
    "Sent",
    "open_sender",
    "webhook_signature",
]

SIGNATURE_HEADER = "X-Metronome-Signature"
TIMESTAMP_HEADER = "X-Metronome-Timestamp"
DELIVERY_HEADER = "X-Metronome-Delivery"
AMPLITUDE_MAX_BYTES = 1_000_000  # Amplitude HTTP V2: keep a request under 1 MB
_SPLIT = (400, 413, 422)


@dataclass
class Sent:
    """What became of a batch: its first ``acked`` documents are done (``refused`` maps
    the index of each one refused for good to the reason); the rest is to send again
    after ``retry_after_s`` (None: the forwarder's backoff), because of ``error``."""

    acked: int
    refused: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    retry_after_s: float | None = None


class Sender(Protocol):
    async def send(self, documents: Sequence[Document]) -> Sent: ...

    async def close(self) -> None: ...


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Metronome-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed with the
    destination's secret, of the timestamp header's value, a ``.``, and the body."""
    message = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _answer(response: httpx.Response) -> str:
    text = response.text[:200].replace("\n", " ")
    return (
        f"answered {response.status_code}: {text}" if text else f"answered {response.status_code}"
    )


async def _post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
) -> httpx.Response | Sent:
    """The answer, or a :class:`Sent` asking to retry (connection errors, timeouts)."""
    try:
        return await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Sent(0, error=f"{type(exc).__name__}: {exc}"[:300])


Post = Callable[[Sequence[Document]], Awaitable["httpx.Response | Sent"]]


async def _split_on_refusal(documents: Sequence[Document], post: Post) -> Sent:
    """Send with the shared HTTP rules; halve a batch the destination refuses as a whole."""
    answer = await post(documents)
    if isinstance(answer, Sent):
        return answer
    return await _by_status(answer, documents, lambda part: _split_on_refusal(part, post))


async def _by_status(
    answer: httpx.Response,
    documents: Sequence[Document],
    again: Callable[[Sequence[Document]], Awaitable[Sent]],
) -> Sent:
    """The shared HTTP rules for an answer to the whole batch; ``again`` sends a half."""
    status = answer.status_code
    if 200 <= status < 300:
        return Sent(len(documents))
    if status == 429 or status >= 500:
        return Sent(0, error=_answer(answer), retry_after_s=_retry_after(answer))
    if status in _SPLIT and len(documents) > 1:
        return await _halves(documents, again)
    reason = _answer(answer)
    return Sent(len(documents), {i: reason for i in range(len(documents))})


async def _halves(
    documents: Sequence[Document], send: Callable[[Sequence[Document]], Awaitable[Sent]]
) -> Sent:
    """Send the first half, then (if all of it is done) the second; indices renumbered."""
    middle = len(documents) // 2
    first = await send(documents[:middle])
    if first.acked < middle:
        return first
    second = await send(documents[middle:])
    refused = {**first.refused, **{middle + i: r for i, r in second.refused.items()}}
    return Sent(middle + second.acked, refused, second.error, second.retry_after_s)


class WebhookSender:
    """A JSON array of flat events (:func:`mapping.flat_event`) POSTed, signed with the
    timestamp against replay (:func:`webhook_signature`)."""

    def __init__(self, destination: Destination) -> None:
        assert destination.url is not None
        self._url = destination.url
        self._secret = destination.secrets["secret"]
        self._client = httpx.AsyncClient(timeout=destination.timeout_s)

    async def _post(self, documents: Sequence[Document]) -> httpx.Response | Sent:
        body = orjson.dumps([mapping.flat_event(d) for d in documents])
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: webhook_signature(self._secret, stamp, body),
            DELIVERY_HEADER: f"{documents[0].id}.{documents[-1].id}.{len(documents)}",
        }
        return await _post(self._client, self._url, body, headers)

    async def send(self, documents: Sequence[Document]) -> Sent:
        return await _split_on_refusal(documents, self._post)

    async def close(self) -> None:
        await self._client.aclose()


class AmplitudeSender:
    """Amplitude's HTTP V2 API: ``{api_key, events}``, under 1 MB and 2,000 events a
    request; a 400 that names bad events refuses only those; 413 halves the batch."""

    def __init__(self, destination: Destination) -> None:
        assert destination.url is not None
        self._url = destination.url
        self._key = destination.secrets["api_key"]
        self._client = httpx.AsyncClient(timeout=destination.timeout_s)

    async def send(self, documents: Sequence[Document]) -> Sent:
        events = [mapping.amplitude_event(d) for d in documents]
        body = orjson.dumps({"api_key": self._key, "events": events})
        if len(body) > AMPLITUDE_MAX_BYTES:
            if len(documents) > 1:
                return await _halves(documents, self.send)
            return Sent(1, {0: f"the event is {len(body)} bytes; Amplitude takes 1 MB a request"})
        answer = await _post(
            self._client, self._url, body, {"Content-Type": "application/json", "Accept": "*/*"}
        )
        if isinstance(answer, Sent):
            return answer
        status = answer.status_code
        if status == 400:
            bad = _amplitude_bad_events(answer)
            if bad and all(0 <= i < len(documents) for i in bad):
                reason = _answer(answer)
                keep = [d for i, d in enumerate(documents) if i not in bad]
                refused = {i: reason for i in bad}
                if not keep:
                    return Sent(len(documents), refused)
                rest = await self.send(keep)
                if rest.acked < len(keep):  # try the whole batch again later
                    return Sent(0, error=rest.error, retry_after_s=rest.retry_after_s)
                kept_index = [i for i in range(len(documents)) if i not in bad]
                for j, why in rest.refused.items():
                    refused[kept_index[j]] = why
                return Sent(len(documents), refused)
        return await _by_status(answer, documents, self.send)

    async def close(self) -> None:
        await self._client.aclose()


def _amplitude_bad_events(answer: httpx.Response) -> set[int]:
    """Indices Amplitude's 400 answer lists (``events_with_invalid_fields``,
    ``events_with_missing_fields``, ``silenced_events``...: field -> indices)."""
    try:
        body = answer.json()
    except ValueError:
        return set()
    bad: set[int] = set()
    if not isinstance(body, dict):
        return bad
    for key in ("events_with_invalid_fields", "events_with_missing_fields"):
        table = body.get(key)
        if isinstance(table, dict):
            for indices in table.values():
                if isinstance(indices, list):
                    bad.update(i for i in indices if isinstance(i, int))
    silenced = body.get("silenced_events")
    if isinstance(silenced, list):
        bad.update(i for i in silenced if isinstance(i, int))
    return bad


class GA4Sender:
    """GA4 Measurement Protocol: ``POST <url>?measurement_id=..&api_secret=..`` with
    ``{client_id, events}``; one request per run of events of the same visitor (a request
    has one client), at most 25 events each. GA4 answers 2xx even to events it drops, so
    the events are cleaned to its rules before they go (:func:`mapping.ga4_event`)."""

    def __init__(self, destination: Destination) -> None:
        assert destination.url is not None
        self._url = destination.url
        self._params = {
            "measurement_id": destination.measurement_id or "",
            "api_secret": destination.secrets["api_secret"],
        }
        self._client = httpx.AsyncClient(timeout=destination.timeout_s)

    def one_request(self, documents: Sequence[Document]) -> int:
        """How many of the leading documents go in one request (the forwarder sends no
        more at a time: GA4 has no way to drop an event sent twice, so what a crash leaves
        in doubt is one request at most)."""
        client_id = mapping.ga4_client_id(documents[0])
        end = 1
        while (
            end < len(documents)
            and end < mapping.GA4_EVENTS_MAX
            and mapping.ga4_client_id(documents[end]) == client_id
        ):
            end += 1
        return end

    async def send(self, documents: Sequence[Document]) -> Sent:
        done = 0
        refused: dict[int, str] = {}
        while done < len(documents):
            end = done + self.one_request(documents[done:])
            run = documents[done:end]
            result = await _split_on_refusal(run, self._post)
            refused.update({done + i: r for i, r in result.refused.items()})
            if result.acked < len(run):
                return Sent(done + result.acked, refused, result.error, result.retry_after_s)
            done = end
        return Sent(done, refused)

    async def _post(self, documents: Sequence[Document]) -> httpx.Response | Sent:
        body = orjson.dumps(
            {
                "client_id": mapping.ga4_client_id(documents[0]),
                "events": [mapping.ga4_event(d) for d in documents],
            }
        )
        try:
            return await self._client.post(
                self._url,
                params=self._params,
                content=body,
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return Sent(0, error=f"{type(exc).__name__}: {exc}"[:300])

    async def close(self) -> None:
        await self._client.aclose()


class MetronomeSender:
    """Another Metronome's ``POST /ticks``: a JSON array of ticks (:func:`mapping.tick`)
    with the destination's key; ticks it rejects in its 202 answer are refused one by one.
    Each tick carries its event id (``event_id``, with ``X-Metronome-Forwarded: 1``): the
    receiver stores a tick sent again (after a crash mid-batch) once."""

    def __init__(self, destination: Destination) -> None:
        assert destination.url is not None
        self._url = destination.url + "/ticks"
        self._headers = {"Content-Type": "application/json", FORWARDED_HEADER: "1"}
        if "key" in destination.secrets:
            self._headers["Authorization"] = "Bearer " + destination.secrets["key"]
        self._client = httpx.AsyncClient(timeout=destination.timeout_s)

    async def _post(self, documents: Sequence[Document]) -> httpx.Response | Sent:
        body = orjson.dumps([mapping.tick(d) for d in documents])
        return await _post(self._client, self._url, body, self._headers)

    async def send(self, documents: Sequence[Document]) -> Sent:
        answer = await self._post(documents)
        if isinstance(answer, Sent):
            return answer
        if answer.status_code != 202:
            return await _by_status(answer, documents, self.send)
        try:
            rejected = answer.json().get("rejected", [])
        except (ValueError, AttributeError):
            rejected = []
        refused: dict[int, str] = {}
        for entry in rejected if isinstance(rejected, list) else []:
            index = entry.get("index") if isinstance(entry, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(documents):
                continue
            if entry.get("error") == "store_unavailable":  # the rest goes again later
                return Sent(index, refused, error=f"the receiver could not store: {entry}")
            refused[index] = f"refused: {entry.get('error')}: {entry.get('message')}"
        return Sent(len(documents), refused)

    async def close(self) -> None:
        await self._client.aclose()


class RabbitMQSender:
    """Publishes each flat event (:func:`mapping.flat_event`) as a persistent JSON message
    to the exchange with the routing key (``{site}``, ``{event}`` filled in), with publisher
    confirms: a message counts once the broker has confirmed it. ``message_id`` is the event
    id, for consumers to drop a message sent again after a crash. pika's blocking
    connection runs on a thread of its own."""

    def __init__(self, destination: Destination) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._url = destination.secrets["url"]
        self._exchange = destination.exchange
        self._routing_key = destination.routing_key
        self._timeout_s = destination.timeout_s
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"amqp-{destination.name}")
        self._connection: Any = None
        self._channel: Any = None

    def _open(self) -> Any:
        import pika  # type: ignore[import-untyped]  # no types upstream

        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._drop()
        parameters = pika.URLParameters(self._url)
        parameters.socket_timeout = self._timeout_s
        parameters.blocked_connection_timeout = self._timeout_s
        parameters.connection_attempts = 1
        self._connection = pika.BlockingConnection(parameters)
        channel = self._connection.channel()
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def _drop(self) -> None:
        try:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection: nothing to keep
            pass
        self._connection = self._channel = None

    def _publish(self, documents: Sequence[Document]) -> Sent:
        import pika.exceptions  # type: ignore[import-untyped]  # no types upstream

        done = 0
        try:
            channel = self._open()
            for document in documents:
                event = mapping.flat_event(document)
                key = self._routing_key.format(site=event.get("site", ""), event=event["event"])
                channel.basic_publish(
                    exchange=self._exchange,
                    routing_key=key[:255],
                    body=orjson.dumps(event),
                    properties=pika.BasicProperties(
                        content_type="application/json",
                        delivery_mode=pika.DeliveryMode.Persistent,
                        message_id=document.id,
                        timestamp=document.timestamp_ms // 1000,
                        type=str(event["event"]),
                        app_id="metronome",
                    ),
                )
                done += 1
        except pika.exceptions.NackError:
            return Sent(done, error="the broker did not confirm a message (nack)")
        except pika.exceptions.AMQPError as exc:
            self._drop()
            return Sent(done, error=f"{type(exc).__name__}: {exc}"[:300])
        except OSError as exc:
            self._drop()
            return Sent(done, error=f"{type(exc).__name__}: {exc}"[:300])
        return Sent(done)

    async def send(self, documents: Sequence[Document]) -> Sent:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._publish, list(documents))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._drop)
        self._thread.shutdown(wait=True)


def open_sender(destination: Destination) -> Sender:
    """The sender of ``destination``'s type."""
    senders: dict[str, Callable[[Destination], Sender]] = {
        "webhook": WebhookSender,
        "amplitude": AmplitudeSender,
        "ga4": GA4Sender,
        "metronome": MetronomeSender,
        "rabbitmq": RabbitMQSender,
    }
    return senders[destination.kind](destination)
