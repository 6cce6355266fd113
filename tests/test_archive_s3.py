"""The raw access-log archive against a real S3 API: moto's standalone server, run as a
separate process on a free loopback port for this module (never an in-process mock)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metronome.logs.archive import (
    KEY_PATTERN,
    TIME_SLICE_FORMAT,
    Archiver,
    chunk_id,
    make_client,
    object_key,
    parse_key,
    read_lines,
    restore_keys,
)

HOST = "web-1.example"
PREFIX = "access-logs"
SOURCE = "2049:131:0"  # <dev>:<inode>:<generation>, as metronome.logs.follow names files
H10 = datetime(2024, 3, 4, 10, tzinfo=UTC)
H11 = H10 + timedelta(hours=1)
NOW = (H10 + timedelta(hours=3)).timestamp()  # every hour used below has ended


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server in its own process, stopped when the module is done."""
    # Dummy credentials and region: every client here talks only to the local moto server.
    # The developer's own AWS configuration files and endpoint variables are kept out.
    env = pytest.MonkeyPatch()
    for name in list(os.environ):
        if name.startswith("AWS_"):
            env.delenv(name)
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.setenv("AWS_CONFIG_FILE", os.devnull)
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    env.setenv("AWS_EC2_METADATA_DISABLED", "true")

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server did not start:\n{log_path.read_text()[-4000:]}"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        env.undo()


@pytest.fixture(scope="module")
def s3(moto_url: str) -> Any:
    return make_client(moto_url, "us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = "archive-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    return name


def access_line(minute: int, n: int) -> str:
    return (
        f"192.0.2.{n % 250} - - [04/Mar/2024:10:{minute:02d}:00 +0000] "
        f'"GET /datasets/{n}?ü=1 HTTP/1.1" 200 {100 + n} "-" "curl/8.5"'
    )


def lines_at(*hours_and_counts: tuple[datetime, int], start: int = 0) -> list[tuple[str, int, int]]:
    """``(line, timestamp_ms, offset)`` as a follower reads them from one file."""
    out = []
    offset = start
    n = 0
    for hour, count in hours_and_counts:
        for i in range(count):
            text = access_line(i % 60, n)
            ts = int(hour.timestamp() * 1000) + i * 3_599_000 // count  # spread over the hour
            out.append((text, ts, offset))
            offset += len(text.encode()) + 1
            n += 1
    return out


def archiver(s3: Any, bucket: str, state: Path, **kwargs: Any) -> Archiver:
    kwargs.setdefault("clock", lambda: NOW)
    return Archiver(s3, bucket, PREFIX, host=HOST, state_path=state, **kwargs)


def feed(arch: Archiver, lines: list[tuple[str, int, int]], source: str = SOURCE) -> int:
    return sum(arch.add(text, ts, source, offset) for text, ts, offset in lines)


def all_keys(s3: Any, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))


def object_lines(s3: Any, bucket: str, key: str) -> list[str]:
    """The object's lines, decompressed without the module under test."""
    data = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert data.endswith(b"\n")
    return data.decode().split("\n")[:-1]


def test_lines_of_two_hours_make_one_gzip_object_per_hour(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    lines = lines_at((H10, 40), (H11, 25))
    arch = archiver(s3, bucket, tmp_path / "state.json")
    assert feed(arch, lines) == 65
    keys = arch.flush()
    assert len(keys) == 2 and sorted(keys) == all_keys(s3, bucket)
    ten, eleven = keys
    assert f"/{H10:%Y/%m/%d/%H}/" in ten and f"/{H11:%Y/%m/%d/%H}/" in eleven
    assert object_lines(s3, bucket, ten) == [text for text, _, _ in lines[:40]]
    assert object_lines(s3, bucket, eleven) == [text for text, _, _ in lines[40:]]
    head = s3.head_object(Bucket=bucket, Key=ten)
    assert head["ContentType"] == "application/x-gzip"
    assert arch.flush() == [] and arch.pending_bytes == 0
    assert arch.uploaded_offset(SOURCE) == lines[-1][2]


def test_keys_follow_the_documented_layout(s3: Any, bucket: str, tmp_path: Path) -> None:
    lines = lines_at((H10, 3), (H11, 2), start=4096)
    arch = archiver(s3, bucket, tmp_path / "state.json")
    feed(arch, lines)
    keys = arch.flush()
    expected = [
        object_key(PREFIX, H10, HOST, chunk_id(SOURCE, 4096)),
        object_key(PREFIX, H11, HOST, chunk_id(SOURCE, lines[3][2])),
    ]
    assert keys == expected
    assert keys[0] == f"access-logs/2024/03/04/10/{HOST}-{chunk_id(SOURCE, 4096)}.gz"
    for key, hour in zip(keys, (H10, H11), strict=True):
        assert KEY_PATTERN.match(key)
        parts = parse_key(key)
        assert parts is not None
        assert (parts.prefix, parts.hour, parts.host) == (PREFIX, hour, HOST)
        assert key.split("/")[1:5] == hour.strftime(TIME_SLICE_FORMAT).split("/")
    assert len(chunk_id(SOURCE, 0)) == 32 and chunk_id(SOURCE, 0) != chunk_id(SOURCE, 1)
    assert chunk_id(SOURCE, 0) != chunk_id("2049:131:1", 0)
    assert object_key("/access-logs/", H10 + timedelta(minutes=59), HOST, "a" * 32) == (
        f"access-logs/2024/03/04/10/{HOST}-{'a' * 32}.gz"
    )
    assert parse_key("access-logs/2024/03/04/10/notes.txt") is None


def test_a_restarted_archiver_does_not_upload_lines_again(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    first = lines_at((H10, 30))
    arch = archiver(s3, bucket, state)
    feed(arch, first)
    (key,) = arch.flush()
    assert json.loads(state.read_text())["sources"][SOURCE]["offset"] == first[-1][2]

    # A restart: the follower re-delivers from an older position, then new lines follow.
    more = lines_at((H10, 30), (H11, 10))
    assert [t for t, _, _ in more[:30]] == [t for t, _, _ in first]
    again = archiver(s3, bucket, state)
    assert again.uploaded_offset(SOURCE) == first[-1][2]
    assert feed(again, more) == 10
    (new_key,) = again.flush()
    assert new_key != key and f"/{H11:%Y/%m/%d/%H}/" in new_key
    assert all_keys(s3, bucket) == sorted([key, new_key])
    assert object_lines(s3, bucket, new_key) == [t for t, _, _ in more[30:]]
    # and nothing more, however often it is asked
    assert feed(again, more) == 0 and again.flush(force=True) == []


def test_a_crash_between_upload_and_record_rewrites_the_same_key(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    lines = lines_at((H10, 20), (H11, 20))
    arch = archiver(s3, bucket, state)
    feed(arch, lines)
    keys = arch.flush()
    bodies = [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
    state.unlink()  # as if the process died after put_object, before the state update
    again = archiver(s3, bucket, state)
    feed(again, lines)
    assert again.flush() == keys
    assert all_keys(s3, bucket) == sorted(keys)
    assert [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys] == bodies


def test_a_failed_upload_stays_buffered_and_later_chunks_wait(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.fail = True

        def put_object(self, **kwargs: Any) -> Any:
            if self.fail and "/11/" in kwargs["Key"]:
                raise ConnectionError("S3 went away")
            return s3.put_object(**kwargs)

    client = Flaky()
    lines = lines_at((H10, 5), (H11, 5))
    arch = Archiver(
        client, bucket, PREFIX, host=HOST, state_path=tmp_path / "s.json", clock=lambda: NOW
    )
    feed(arch, lines)
    with pytest.raises(ConnectionError):
        arch.flush()
    assert arch.uploaded_offset(SOURCE) == lines[4][2]  # the 10:00 chunk made it
    assert arch.pending_offset(SOURCE) == lines[5][2]
    client.fail = False
    (key,) = arch.flush()
    assert object_lines(s3, bucket, key) == [t for t, _, _ in lines[5:]]
    assert len(all_keys(s3, bucket)) == 2


def test_an_open_hour_waits_until_the_chunk_is_full_old_or_forced(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    now = [H10.timestamp() + 600]  # 10:10, the hour is still open
    lines = lines_at((H10, 10))
    size = sum(len(t.encode()) + 1 for t, _, _ in lines)
    arch = archiver(
        s3,
        bucket,
        tmp_path / "state.json",
        clock=lambda: now[0],
        max_chunk_age_s=300,
        max_chunk_bytes=10 * size,
    )
    feed(arch, lines)
    assert arch.flush() == [] and arch.pending_offset(SOURCE) == 0
    now[0] += 299
    assert arch.flush() == []
    now[0] += 1
    assert len(arch.flush()) == 1  # five minutes old

    # a chunk that reaches max_chunk_bytes is sealed and goes out at once
    small = archiver(
        s3, bucket, tmp_path / "small.json", clock=lambda: now[0], max_chunk_bytes=size // 2
    )
    more = lines_at((H10, 11), start=10_000)  # lines of equal length: 5 + 5 + 1
    feed(small, more)
    keys = small.flush()
    assert len(keys) == 2  # the sealed chunk and the full one after it; the last line waits
    chunks = [object_lines(s3, bucket, k) for k in keys]
    assert [len(c) for c in chunks] == [5, 5]
    assert all(sum(len(t.encode()) + 1 for t in c) <= size // 2 for c in chunks)
    uploaded = chunks[0] + chunks[1]
    assert small.pending_offset(SOURCE) == more[10][2]
    rest = small.flush(force=True)
    assert len(rest) == 1
    assert uploaded + object_lines(s3, bucket, rest[0]) == [t for t, _, _ in more]


def test_sources_are_archived_separately(s3: Any, bucket: str, tmp_path: Path) -> None:
    arch = archiver(s3, bucket, tmp_path / "state.json")
    a = lines_at((H10, 3))
    b = lines_at((H10, 2), start=500)
    for x, y in zip(a, b + [None], strict=True):  # interleaved, as two followers give them
        arch.add(x[0], x[1], "1:1:0", x[2])
        if y is not None:
            arch.add(y[0], y[1], "1:2:0", y[2])
    keys = arch.flush()
    assert keys == [
        object_key(PREFIX, H10, HOST, chunk_id("1:1:0", 0)),
        object_key(PREFIX, H10, HOST, chunk_id("1:2:0", 500)),
    ]
    assert object_lines(s3, bucket, keys[1]) == [t for t, _, _ in b]


def _archive_hours(s3: Any, bucket: str, tmp_path: Path, hours: list[datetime]) -> list[str]:
    arch = archiver(s3, bucket, tmp_path / "state.json")
    feed(arch, lines_at(*((h, 2) for h in hours)))
    return arch.flush()


def test_restore_keys_returns_only_the_hours_in_range(s3: Any, bucket: str, tmp_path: Path) -> None:
    hours = [H10 - timedelta(hours=1), H10, H11, H11 + timedelta(hours=1), H10 + timedelta(days=1)]
    keys = _archive_hours(s3, bucket, tmp_path, hours)
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/2024/03/04/10/README.txt", Body=b"x")
    s3.put_object(Bucket=bucket, Key=f"other/2024/03/04/10/{HOST}-{'b' * 32}.gz", Body=b"x")

    found = list(restore_keys(s3, bucket, PREFIX, H10, H11 + timedelta(minutes=1)))
    assert found == keys[1:3]
    # [start, end): an end on the hour excludes that hour; a start inside an hour includes it
    assert list(restore_keys(s3, bucket, PREFIX, H10 + timedelta(minutes=30), H11)) == [keys[1]]
    # naive datetimes are UTC; a prefix may carry slashes
    naive = list(
        restore_keys(
            s3,
            bucket,
            f"/{PREFIX}/",
            H10.replace(tzinfo=None),
            H10.replace(tzinfo=None) + timedelta(days=2),
        )
    )
    assert naive == keys[1:]
    assert list(restore_keys(s3, bucket, PREFIX, H11, H10)) == []


def test_restore_keys_pages_through_a_busy_hour(s3: Any, bucket: str, tmp_path: Path) -> None:
    arch = archiver(s3, bucket, tmp_path / "state.json")
    for i in range(7):
        arch.add(access_line(0, i), int(H10.timestamp() * 1000), f"1:{i}:0", 0)
    keys = arch.flush()
    assert len(keys) == 7
    assert list(restore_keys(s3, bucket, PREFIX, H10, H11, page_size=2)) == sorted(keys)


def test_read_lines_round_trips_with_offsets(s3: Any, bucket: str, tmp_path: Path) -> None:
    lines = lines_at((H10, 2000))  # ~240 KB of raw lines, read in small pieces below
    arch = archiver(s3, bucket, tmp_path / "state.json")
    feed(arch, lines)
    (key,) = arch.flush()
    raw = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    got = list(read_lines(s3, bucket, key, read_size=997))
    assert [text for text, _ in got] == [text for text, _, _ in lines]
    for text, offset in got:
        assert raw[offset:].split(b"\n", 1)[0].decode() == text
    assert got[0][1] == 0 and got[1][1] == len(lines[0][0].encode()) + 1


def test_read_lines_reads_objects_written_by_others(s3: Any, bucket: str) -> None:
    # two gzip members (as appending writers make), CRLF, a blank line, bad UTF-8 and no
    # final newline
    body = gzip.compress(b"first\r\n\nsecond \xff\n") + gzip.compress(b"third")
    key = f"{PREFIX}/2024/03/04/10/fluentd-{'c' * 32}.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert list(read_lines(s3, bucket, key, read_size=3)) == [
        ("first", 0),
        ("second \ufffd", 8),
        ("third", 17),
    ]
    s3.put_object(Bucket=bucket, Key=key, Body=body[:-5])
    with pytest.raises(EOFError):
        list(read_lines(s3, bucket, key))


def test_restoring_twice_gives_the_same_line_ids(s3: Any, bucket: str, tmp_path: Path) -> None:
    _archive_hours(s3, bucket, tmp_path, [H10, H11])

    def restore() -> list[tuple[str, int, str]]:
        return [
            (key, offset, text)
            for key in restore_keys(s3, bucket, PREFIX, H10, H11 + timedelta(hours=1))
            for text, offset in read_lines(s3, bucket, key)
        ]

    first = restore()
    assert len(first) == 4 and len({(k, o) for k, o, _ in first}) == 4
    assert restore() == first


def test_the_endpoint_url_is_configurable(moto_url: str, bucket: str) -> None:
    client = make_client(moto_url, "us-east-1")
    assert client.meta.endpoint_url == moto_url
    assert client.meta.config.s3["addressing_style"] == "path"
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
    aws = make_client(None, "eu-west-1")
    assert aws.meta.region_name == "eu-west-1"
    assert "amazonaws.com" in aws.meta.endpoint_url
    assert aws.meta.config.s3["addressing_style"] == "auto"


def test_bad_input_is_refused(s3: Any, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Archiver(s3, bucket, "/", host=HOST, state_path=tmp_path / "s.json")
    with pytest.raises(ValueError):
        Archiver(s3, bucket, PREFIX, host="a/b", state_path=tmp_path / "s.json")
    arch = archiver(s3, bucket, tmp_path / "s.json")
    with pytest.raises(ValueError):
        arch.add("two\nlines", int(H10.timestamp() * 1000), SOURCE, 0)
    assert arch.add("one\n", int(H10.timestamp() * 1000), SOURCE, 0)
    assert not arch.add("one", int(H10.timestamp() * 1000), SOURCE, 0)  # seen already


def test_ship_archives_raw_lines_and_restore_reindexes_them_once(
    moto_url: str, s3: Any, bucket: str, tmp_path: Path
) -> None:
    import httpx

    from tests.support.backends import wait_for_drain
    from tests.support.metronome_server import MetronomeServer

    rules = "/datasets/{id}/download.{format} -> download"
    s3_env = {
        "METRONOME_S3_BUCKET": bucket,
        "METRONOME_S3_PREFIX": "edge/access",
        "METRONOME_S3_ENDPOINT_URL": moto_url,
        "METRONOME_URL_RULES": rules,
    }
    log = tmp_path / "access.log"
    lines = [
        f"198.51.100.{n} - - [09/May/2026:{10 + n // 3}:00:00 +0000] "
        f'"GET /datasets/arch/download.csv HTTP/1.1" 200 10 "-" "curl/8"'
        for n in range(6)
    ]
    log.write_text("\n".join(lines) + "\n")
    shipping = MetronomeServer(s3_env, data_dir=tmp_path / "ship-data")
    ship = shipping.popen_cli("ship", str(log))
    deadline = time.monotonic() + 30
    while len(all_keys(s3, bucket)) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    ship.terminate()  # a stop flushes every buffered chunk
    assert ship.wait(timeout=30) == 0
    keys = all_keys(s3, bucket)
    assert sorted(k.split("/")[5] for k in keys) == ["10", "11"]  # one object per hour
    assert sorted(line for key in keys for line in object_lines(s3, bucket, key)) == sorted(lines)

    server = MetronomeServer(s3_env, data_dir=tmp_path / "fresh")  # a new, empty store
    server.start()
    try:
        for says in ("stored 6, already stored 0", "stored 0, already stored 6"):
            # restoring twice stores nothing new, and says so
            result = server.run_cli("restore", "--from", "2026-05-09", "--to", "2026-05-09")
            assert result.returncode == 0, result.stderr
            assert f"read 6 lines, {says}, rejected 0" in result.stderr
        wait_for_drain(server)
        report = httpx.get(
            f"{server.url}/tock/arch", params={"from": "2026-05-09", "to": "2026-05-09"}
        ).json()
        assert report["downloads"] == {"csv": 6}
    finally:
        assert server.stop() == 0, server.log_tail()
