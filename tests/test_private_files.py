"""What Metronome writes to disk is its user's only, and no secret reaches the screen."""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from metronome.config import masked_url
from metronome.logconfig import MaskingFormatter
from tests.support.backends import unique_prefix, wait_for_drain
from tests.support.metronome_server import MetronomeServer

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
LINES = (
    f'81.2.69.160 - - [04/Jun/2019:10:00:00 +0000] "GET /?q=1 HTTP/1.1" 200 5 "-" "{FIREFOX}"\n'
    "this line is not an access log line from 81.2.69.161\n"
)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    modes = {".": stat.S_IMODE(root.stat().st_mode)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            modes[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return modes


def test_the_data_directory_is_readable_by_its_owner_only_whatever_the_umask(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    log = tmp_path / "access.log"
    log.write_text(LINES)
    with _umask(0o022):
        server = MetronomeServer({"METRONOME_TRUSTED_PROXIES": "127.0.0.0/8"}, data_dir=data)
        server.start()
        try:
            for _ in range(3):
                resp = httpx.post(
                    f"{server.url}/tick",
                    json={"id": "page"},
                    headers={"X-Forwarded-For": "81.2.69.160", "User-Agent": FIREFOX},
                )
                assert resp.status_code == 202
            assert httpx.get(f"{server.url}/metrics").status_code == 200
            imported = server.run_cli("import", str(log))
            assert imported.returncode == 0, imported.stderr
            wait_for_drain(server)
            modes = _modes(data)
        finally:
            assert server.stop() == 0
    assert {"metronome.sqlite3", "rejects.ndjson", "spool", "salts", "metrics"} <= set(modes)
    assert any(name.startswith("salts/") for name in modes)
    assert any(name.startswith("metrics/") for name in modes)
    wide = {
        name: f"{mode:04o}"
        for name, mode in modes.items()
        if mode != (0o700 if (data / name).is_dir() else 0o600)
    }
    assert wide == {}


def test_a_data_directory_others_can_read_is_named_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "rejects.ndjson").write_text("")
    os.chmod(data / "rejects.ndjson", 0o644)
    log = tmp_path / "access.log"
    log.write_text(LINES)
    server = MetronomeServer({}, data_dir=data)
    done = server.run_cli("import", "--quiet", str(log))
    assert done.returncode == 0, done.stderr
    assert f"warning: {data} has mode 0755" in done.stderr
    assert f"warning: {data / 'rejects.ndjson'} has mode 0644" in done.stderr


def test_urls_are_shown_with_their_password_masked() -> None:
    assert masked_url("http://user:pa:ss@host:9200/x") == "http://user:***@host:9200/x"
    assert masked_url("at https://u:p@h and http://h2") == "at https://u:***@h and http://h2"
    assert masked_url("http://host:9200/a@b") == "http://host:9200/a@b"
    assert masked_url("http://token@host") == "http://token@host"


def test_log_lines_show_urls_with_their_password_masked() -> None:
    try:
        raise ConnectionError("cannot reach http://elastic:hunter2@db:9200")
    except ConnectionError:
        record = logging.LogRecord(
            "metronome.x", logging.WARNING, __file__, 1, "store %s down", ("http://a:b@c",), None
        )
        record.exc_info = sys.exc_info()
    line = MaskingFormatter("%(message)s").format(record)
    assert "store http://a:***@c down" in line
    assert "hunter2" not in line and "http://elastic:***@db:9200" in line


def test_no_command_prints_the_elasticsearch_password(tmp_path: Path, es_url: str) -> None:
    secret = "s3cret-pass"
    server = MetronomeServer(
        {
            "METRONOME_ELASTICSEARCH_URL": es_url,
            "METRONOME_ELASTICSEARCH_USERNAME": "elastic",
            "METRONOME_ELASTICSEARCH_PASSWORD": secret,
            "METRONOME_INDEX_PREFIX": unique_prefix(),
        },
        data_dir=tmp_path / "data",
    )
    outputs = []
    server.start()
    try:
        for command in (("settings",), ("status",), ("templates", "install")):
            done = server.run_cli(*command)
            outputs.append(done.stdout + done.stderr)
    finally:
        server.stop()
    outputs.append(server.log_path.read_text())
    # credentials written into the URL are refused (issue 18), without being repeated
    scheme, rest = es_url.split("://", 1)
    in_url = dict(server.env, METRONOME_ELASTICSEARCH_URL=f"{scheme}://elastic:{secret}@{rest}")
    done = server.run_cli("status", env=in_url)
    assert done.returncode != 0 and "not in the URL" in done.stderr, done.stderr
    outputs.append(done.stdout + done.stderr)
    everything = "\n".join(outputs)
    assert secret not in everything
