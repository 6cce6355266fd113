"""fluentd/fluent.conf and fluentd/Dockerfile, checked against the code they must agree with.

A small reader of Fluentd's directive syntax (``<name arg> key value </name>``) turns the
file into a tree; the tests follow events through it as Fluentd routes them (``<match>``
patterns in order, ``copy`` stores, ``relabel`` into ``<label>`` sections).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from metronome.config import Settings
from metronome.logs.archive import (
    DEFAULT_PREFIX,
    FLUENTD_S3_OBJECT_KEY_FORMAT,
    TIME_SLICE_FORMAT,
    object_key,
    parse_key,
)

FLUENTD = Path(__file__).resolve().parent.parent / "fluentd"
TICK_TAG = "metronome.tick"
ACCESS_TAG = "metronome.access"
FLUENTD_INPUT_PORT = 24224


# --- a reader for Fluentd's configuration syntax ----------------------------------------


@dataclass
class Directive:
    name: str
    arg: str = ""
    params: dict[str, str] = field(default_factory=dict)
    children: list[Directive] = field(default_factory=list)
    line: int = 0

    def all(self, name: str) -> list[Directive]:
        return [child for child in self.children if child.name == name]

    def one(self, name: str) -> Directive:
        (only,) = self.all(name)
        return only

    @property
    def type(self) -> str:
        return self.params.get("@type", "")


class ConfError(ValueError):
    pass


def _quoted(text: str, lineno: int) -> tuple[str, str]:
    """A double-quoted value and the text after it; ``#{...}`` is kept verbatim."""
    out: list[str] = []
    i = 1
    escapes = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "#": "#"}
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(escapes.get(text[i + 1], "\\" + text[i + 1]))
            i += 2
        elif text.startswith("#{", i):
            depth, j = 0, i + 1
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            else:
                raise ConfError(f"line {lineno}: unclosed #{{ in a quoted value")
            out.append(text[i : j + 1])
            i = j + 1
        elif ch == '"':
            return "".join(out), text[i + 1 :]
        else:
            out.append(ch)
            i += 1
    raise ConfError(f"line {lineno}: unclosed double quote")


def _value(text: str, lineno: int) -> str:
    if text.startswith('"'):
        value, rest = _quoted(text, lineno)
    elif text.startswith("'"):
        end = text.find("'", 1)
        if end < 0:
            raise ConfError(f"line {lineno}: unclosed single quote")
        value, rest = text[1:end], text[end + 1 :]
    else:
        return text
    if rest.strip() and not rest.strip().startswith("#"):
        raise ConfError(f"line {lineno}: text after a quoted value: {rest!r}")
    return value


def parse_conf(text: str) -> Directive:
    root = Directive("ROOT")
    stack = [root]
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.fullmatch(r"</([\w@]+)>", line):
            if len(stack) == 1 or stack[-1].name != match[1]:
                raise ConfError(f"line {lineno}: </{match[1]}> closes <{stack[-1].name}>")
            stack.pop()
        elif match := re.fullmatch(r"<([\w@]+)(?:\s+(.+?))?\s*>", line):
            directive = Directive(match[1], (match[2] or "").strip(), line=lineno)
            stack[-1].children.append(directive)
            stack.append(directive)
        elif line.startswith("<"):
            raise ConfError(f"line {lineno}: malformed directive {line!r}")
        else:
            key, _, rest = line.partition(" ")
            if key in stack[-1].params:
                raise ConfError(f"line {lineno}: {key} given twice")
            stack[-1].params[key] = _value(rest.strip(), lineno)
    if len(stack) > 1:
        raise ConfError(f"<{stack[-1].name}> from line {stack[-1].line} is never closed")
    return root


def _part_regex(part: str) -> str:
    out = ""
    for token in re.split(r"(\*|\{[^}]*\})", part):
        if token == "*":
            out += r"[^.]*"
        elif token.startswith("{") and token.endswith("}"):
            out += "(?:" + "|".join(re.escape(x) for x in token[1:-1].split(",")) + ")"
        else:
            out += re.escape(token)
    return out


def _match_parts(pattern: list[str], tag: list[str]) -> bool:
    if not pattern:
        return not tag
    if pattern[0] == "**":
        return any(_match_parts(pattern[1:], tag[i:]) for i in range(len(tag) + 1))
    return (
        bool(tag)
        and re.fullmatch(_part_regex(pattern[0]), tag[0]) is not None
        and _match_parts(pattern[1:], tag[1:])
    )


def tag_matches(patterns: str, tag: str) -> bool:
    """Fluentd's <match> patterns: space-separated alternatives; ``*`` one part, ``**``
    zero or more parts, ``{a,b}`` either."""
    return any(_match_parts(p.split("."), tag.split(".")) for p in patterns.split())


def route(root: Directive, tag: str, label: str | None = None) -> list[Directive]:
    """The outputs an event with ``tag`` ends in, after copy and relabel."""
    scope = root if label is None else next(d for d in root.all("label") if d.arg == label)
    for match in scope.all("match"):
        if tag_matches(match.arg, tag):
            return _expand(root, match, tag)
    return []


def _expand(root: Directive, output: Directive, tag: str) -> list[Directive]:
    if output.type == "copy":
        return [o for store in output.all("store") for o in _expand(root, store, tag)]
    if output.type == "relabel":
        return route(root, tag, output.params["@label"])
    return [output]


# --- the files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conf() -> Directive:
    return parse_conf((FLUENTD / "fluent.conf").read_text())


@pytest.fixture(scope="module")
def forward_out(conf: Directive) -> Directive:
    (out,) = [o for o in route(conf, TICK_TAG) if o.type == "forward"]
    return out


@pytest.fixture(scope="module")
def s3_out(conf: Directive) -> Directive:
    (out,) = [o for o in route(conf, ACCESS_TAG) if o.type == "s3"]
    return out


def test_the_reader_understands_fluentd_syntax() -> None:
    tree = parse_conf(
        "# comment\n<match a.** b.{x,y}>\n  @type copy\n  <store>\n"
        '    path "#{ENV.fetch(\'P\', \'d\')}/"\n    say "a \\"quoted\\" word" # note\n'
        "    other 'single'\n  </store>\n</match>\n"
    )
    match = tree.one("match")
    assert match.arg == "a.** b.{x,y}" and match.type == "copy"
    assert match.one("store").params == {
        "path": "#{ENV.fetch('P', 'd')}/",
        "say": 'a "quoted" word',
        "other": "single",
    }
    for bad in ("<a>\n", "<a>\n</b>\n", 'k "open\n', "<a>\nk 1\nk 2\n</a>\n"):
        with pytest.raises(ConfError):
            parse_conf(bad)
    assert tag_matches("metronome.**", "metronome") and tag_matches("a.*", "a.b")
    assert not tag_matches("a.*", "a.b.c") and tag_matches("x a.{b,c}", "a.c")


def test_sources_tail_nginx_and_listen_for_applications(conf: Directive) -> None:
    (tail,) = [s for s in conf.all("source") if s.type == "tail"]
    assert tail.params["path"] == "/var/log/nginx/access.log"
    assert tail.params["tag"] == ACCESS_TAG
    assert tail.params["pos_file"].startswith("/")
    assert tail.one("parse").type == "none"  # raw lines, in "message"
    (forward,) = [s for s in conf.all("source") if s.type == "forward"]
    assert int(forward.params["port"]) == FLUENTD_INPUT_PORT
    assert all("@label" not in s.params for s in conf.all("source"))


def test_ticks_go_to_metronome_and_access_lines_also_to_the_archive(conf: Directive) -> None:
    # the archive's copy of a tick is dropped on purpose (not left unmatched)
    assert [o.type for o in route(conf, TICK_TAG)] == ["forward", "null"]
    assert [o.type for o in route(conf, ACCESS_TAG)] == ["forward", "s3"]
    assert route(conf, TICK_TAG)[0] is route(conf, ACCESS_TAG)[0]
    (main,) = [m for m in conf.all("match") if tag_matches(m.arg, TICK_TAG)]
    assert main.arg == "metronome.**" and main.type == "copy"


def test_the_forward_output_targets_metronome_with_acks_and_a_file_buffer(
    forward_out: Directive,
) -> None:
    server = forward_out.one("server")
    assert server.params["host"] == "metronome"
    # Metronome's forward input (METRONOME_FORWARD_PORT), in its own container
    assert int(server.params["port"]) == Settings.from_env({}).forward_port
    assert forward_out.params["require_ack_response"] == "true"
    buffer = forward_out.one("buffer")
    assert buffer.type == "file" and buffer.params["path"].startswith("/")
    assert buffer.params["retry_type"] == "exponential_backoff"
    assert buffer.params["retry_forever"] == "true"
    assert {"retry_wait", "retry_max_interval"} <= buffer.params.keys()


def test_the_s3_output_writes_raw_lines_as_gzip_per_utc_hour(
    conf: Directive, s3_out: Directive
) -> None:
    assert s3_out.params["store_as"] == "gzip"
    fmt = s3_out.one("format")
    tail = next(s for s in conf.all("source") if s.type == "tail")
    assert fmt.type == "single_value"
    # in_tail's "none" parser keeps the line in "message" unless told otherwise
    assert fmt.params["message_key"] == tail.one("parse").params.get("message_key", "message")
    assert s3_out.params["time_slice_format"] == TIME_SLICE_FORMAT
    buffer = s3_out.one("buffer")
    assert buffer.arg == "time" and buffer.type == "file"
    assert int(buffer.params["timekey"]) == 3600
    assert buffer.params["timekey_use_utc"] == "true"
    assert re.fullmatch(
        r"#\{ENV(\.fetch\(|\[)'METRONOME_S3_BUCKET'(\)|\])\}", s3_out.params["s3_bucket"]
    )
    assert "METRONOME_S3_FORCE_PATH_STYLE" in s3_out.params["force_path_style"]
    assert "s3_endpoint" not in s3_out.params  # AWS_ENDPOINT_URL_S3, read by the AWS SDK
    assert s3_out.params["check_object"] == "false"


def test_the_s3_keys_are_the_archive_module_layout(s3_out: Directive) -> None:
    key_format = s3_out.params["s3_object_key_format"]
    assert key_format == FLUENTD_S3_OBJECT_KEY_FORMAT
    path = s3_out.params["path"]
    match = re.fullmatch(r"#\{ENV\.fetch\('METRONOME_S3_PREFIX', '([^']+)'\)\}/", path)
    assert match and match[1] == DEFAULT_PREFIX

    hour = datetime(2026, 11, 23, 7, tzinfo=UTC)
    host, chunk = "fluentd-7c9f", "0123456789abcdef0123456789abcdef"  # a buffer chunk id
    values = {
        "%{path}": f"{DEFAULT_PREFIX}/",
        "%{time_slice}": hour.strftime(s3_out.params["time_slice_format"]),
        "#{Socket.gethostname}": host,
        "${chunk_id}": chunk,
        "%{file_extension}": "gz",  # store_as gzip
    }
    key = key_format
    for placeholder, value in values.items():
        assert placeholder in key
        key = key.replace(placeholder, value)
    assert not re.search(r"[%$#]\{", key), key
    assert key == object_key(DEFAULT_PREFIX, hour, host, chunk)
    parts = parse_key(key)
    assert parts is not None and (parts.hour, parts.host, parts.chunk_id) == (hour, host, chunk)


def test_buffer_and_position_files_live_in_directories_the_image_creates(conf: Directive) -> None:
    dockerfile = (FLUENTD / "Dockerfile").read_text()
    paths = [s.params["pos_file"] for s in conf.all("source") if "pos_file" in s.params]
    buffers: list[Directive] = []

    def walk(d: Directive) -> None:
        buffers.extend(d.all("buffer"))
        for child in d.children:
            walk(child)

    walk(conf)
    paths += [b.params["path"] for b in buffers if b.type == "file"]
    assert len(paths) == len(set(paths)) == 3
    made = set(re.findall(r"mkdir -p ([^\n\\&]+)", dockerfile)[0].split())
    for path in paths:
        assert any(PurePosixPath(path).is_relative_to(d) for d in made), (path, made)


def test_the_image_is_the_official_fluentd_with_the_s3_plugin() -> None:
    dockerfile = (FLUENTD / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert re.fullmatch(r"fluent/fluentd:v1\.\d+(\.\d+)?-debian-\d+(\.\d+)?", base)
    assert re.search(r"gem install fluent-plugin-s3\b", dockerfile)
    assert re.search(r"^COPY fluent\.conf /fluentd/etc/fluent\.conf$", dockerfile, re.M)
    assert re.search(rf"^EXPOSE {FLUENTD_INPUT_PORT}$", dockerfile, re.M)
    assert re.findall(r"^USER\s+(\S+)", dockerfile, re.M)[-1] == "fluent"


def test_the_forward_output_authenticates_with_the_shared_key_and_fits_the_limits(
    forward_out: Directive,
) -> None:
    security = forward_out.one("security")
    assert security.params["shared_key"] == "#{ENV.fetch('METRONOME_FORWARD_SHARED_KEY')}"
    # Metronome's PONG carries its own hostname; Fluentd refuses one equal to self_hostname
    assert security.params["self_hostname"] == "#{Socket.gethostname}"
    buffer = forward_out.one("buffer")
    defaults = Settings.from_env({})
    assert int(buffer.params["chunk_limit_size"].removesuffix("m")) << 20 < (
        defaults.forward_max_frame_bytes
    )
    assert int(buffer.params["chunk_limit_records"]) <= defaults.forward_max_frame_entries
