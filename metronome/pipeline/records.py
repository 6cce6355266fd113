"""Spool records: length and checksum framing, so a torn write is always detected.

::

    record := length:u32le  crc32(payload):u32le  payload
    payload := orjson [id, timestamp_ms, dataset, source]
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from metronome.events.document import Document

__all__ = ["HEADER", "MAX_RECORD_BYTES", "Scan", "encode", "scan"]

HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 16 << 20


def encode(document: Document) -> bytes:
    payload = orjson.dumps([document.id, document.timestamp_ms, document.dataset, document.source])
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def encode_many(documents: Iterable[Document]) -> list[bytes]:
    return [encode(d) for d in documents]


@dataclass(frozen=True, slots=True)
class Scan:
    """Documents decoded from a buffer, and where decoding stopped.

    ``end`` is the offset (relative to the buffer) after the last whole, valid record.
    ``damaged`` is True when decoding stopped at a record whose checksum or length is
    wrong, rather than at the end of the buffer or a record that is not complete yet.
    """

    documents: list[Document]
    end: int
    damaged: bool


def scan(buffer: bytes, max_documents: int | None = None) -> Scan:
    """Decode whole records from the start of ``buffer``."""
    documents: list[Document] = []
    offset = 0
    view = memoryview(buffer)
    size = len(buffer)
    while offset + HEADER.size <= size:
        if max_documents is not None and len(documents) >= max_documents:
            break
        length, crc = HEADER.unpack_from(view, offset)
        if length == 0 or length > MAX_RECORD_BYTES:
            return Scan(documents, offset, True)
        start = offset + HEADER.size
        if start + length > size:
            break  # not complete (yet)
        payload = view[start : start + length]
        if zlib.crc32(payload) != crc:
            return Scan(documents, offset, True)
        try:
            event_id, ts_ms, dataset, source = orjson.loads(payload)
        except (orjson.JSONDecodeError, ValueError):
            return Scan(documents, offset, True)
        documents.append(Document(event_id, ts_ms, dataset, source))
        offset = start + length
    return Scan(documents, offset, False)
