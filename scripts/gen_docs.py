"""The docs site's reference pages, generated from the code at build time.

``docs/hooks.py`` adds these pages to every ``mkdocs build`` (nothing is committed, so
nothing can drift); ``tests/test_docs.py`` builds the site in strict mode. To look at the
Markdown without building the site::

    python -m scripts.gen_docs DIR                # write the pages under DIR
    python -m scripts.gen_docs errors-docstring   # redraw the tree in metronome/errors.py

The one page source that is kept in the code rather than generated is the error tree in
``metronome/errors.py``'s docstring: it is drawn by :func:`error_tree`, and a test fails
when the docstring and the classes disagree.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "PAGES",
    "benchmarks_reference",
    "cli_reference",
    "command_paths",
    "error_tree",
    "errors_reference",
    "errors_table",
    "metrics_reference",
    "openapi_reference",
    "pages",
    "settings_reference",
    "write_errors_docstring",
]

REPO = Path(__file__).resolve().parent.parent
ERRORS_PY = REPO / "metronome" / "errors.py"

_GENERATED = (
    "<!-- Generated from the code by scripts/gen_docs.py at build time: edit the code,"
    " not this page. -->\n\n"
)


# --------------------------------------------------------------------------- settings


def settings_table() -> str:
    """The settings, as a Markdown table (the one adapter to ``metronome.config``, whose
    ``settings_table`` renders ``settings_reference()``: every declared setting)."""
    from metronome.config import settings_table as table

    return table()


def settings_reference() -> str:
    return (
        "# Settings\n\n"
        + _GENERATED
        + "Metronome reads its settings once, at start-up, from environment variables"
        " prefixed `METRONOME_` and an optional TOML file (`METRONOME_CONFIG`); the"
        " environment wins. A bad value stops it with a message naming the variable, or"
        " the file and key. [Configuration](../guides/configuration.md) explains the file;"
        " `metronome settings` prints the values in effect.\n\n" + settings_table() + "\n"
    )


# --------------------------------------------------------------------------- errors

_NOT_HTTP = {"config_invalid"}
_WHEN = {
    "config_invalid": "Not an HTTP answer: `metronome` refuses to start and names the bad"
    " `METRONOME_*` variable, or the configuration file and key.",
    "internal_error": "A bug: the server log has the traceback; the answer never does.",
}


def _error_classes() -> list[Any]:
    from metronome.errors import all_error_classes

    return all_error_classes()


def _description(cls: type) -> str:
    """The class's docstring on one line (or what a reader needs instead, from ``_WHEN``)."""
    doc = " ".join((cls.__doc__ or "").split())
    return _WHEN.get(getattr(cls, "code", ""), doc)


def _status(cls: Any) -> str:
    return "-" if cls.code in _NOT_HTTP else str(cls.http_status)


def errors_table() -> str:
    """Every error code with its HTTP status and description, by status then code."""
    rows = ["| status | `error` | class | when |", "| --- | --- | --- | --- |"]
    for cls in sorted(_error_classes(), key=lambda c: (c.http_status, c.code)):
        when = _description(cls).replace("|", "\\|")
        rows.append(f"| {_status(cls)} | `{cls.code}` | `{cls.__name__}` | {when} |")
    return "\n".join(rows)


def error_tree() -> str:
    """The class tree, drawn from the classes (subclasses in the order they are defined)."""
    from metronome.errors import MetronomeError

    lines: list[str] = []

    def walk(cls: Any, head: str, indent: str) -> None:
        lines.append(f"{head + cls.__name__:<36}({_status(cls)} {cls.code})")
        children = cls.__subclasses__()
        for i, child in enumerate(children):
            last = i == len(children) - 1
            walk(
                child, indent + ("└── " if last else "├── "), indent + ("    " if last else "│   ")
            )

    walk(MetronomeError, "", "")
    return "\n".join(lines)


def errors_reference() -> str:
    return (
        "# Errors\n\n" + _GENERATED + "Every error is JSON, never a traceback:\n\n"
        '```json\n{"error": "<code>", "message": "what went wrong, for a person",'
        ' "details": {"field": "..."}}\n```\n\n'
        "`error` is a stable code: a shipped code never changes meaning. `details` is"
        " there when there is more to say (the field at fault, `retry_after_s`). Answers"
        " `401` carry `WWW-Authenticate`; `429` and `503` carry `Retry-After`.\n\n"
        + errors_table()
        + "\n\n## The tree\n\n"
        "Each code is a class in `metronome/errors.py`; catching a class catches its"
        " subclasses:\n\n"
        "```\n" + error_tree() + "\n```\n"
    )


_DOCSTRING_TREE = re.compile(r'(\A"""[^\n]*\n\n::\n\n)(.*?)(\n\n)', re.S)


def docstring_tree(source: str) -> str | None:
    """The tree drawn in ``errors.py``'s docstring (dedented), or None when there is none."""
    match = _DOCSTRING_TREE.search(source)
    if not match:
        return None
    return "\n".join(line.removeprefix("    ") for line in match.group(2).splitlines())


def write_errors_docstring(path: Path = ERRORS_PY) -> bool:
    """Redraw the tree in ``errors.py``'s docstring; whether the file changed."""
    source = path.read_text()
    tree = "\n".join("    " + line for line in error_tree().splitlines())
    new, count = _DOCSTRING_TREE.subn(lambda m: m.group(1) + tree + m.group(3), source, count=1)
    if not count:
        raise SystemExit(f"{path}: no '::' block after the docstring's first line")
    if new != source:
        path.write_text(new)
    return new != source


# --------------------------------------------------------------------------- CLI


def command_paths(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command under ``group`` (itself first), as argument tuples: ``("keys", "list")``."""
    import click

    yield path
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            yield from command_paths(group.commands[name], (*path, name))


def cli_reference() -> str:
    """``metronome --help`` and every command's, as click prints them."""
    from click.testing import CliRunner

    from metronome.cli import main

    out = [
        "# Command line\n",
        _GENERATED.rstrip("\n") + "\n",
        "Every command prints this help with `--help`. Commands that read settings take"
        " them from the environment and the configuration file (see"
        " [Settings](settings.md)).\n",
    ]
    runner = CliRunner()
    for path in command_paths(main):
        result = runner.invoke(main, [*path, "--help"], prog_name="metronome", terminal_width=88)
        if result.exit_code != 0:
            raise RuntimeError(f"metronome {' '.join(path)} --help failed:\n{result.output}")
        title = " ".join(("metronome", *path))
        level = "##" if len(path) <= 1 else "###"
        out.append(f"{level} `{title}`\n\n```\n{result.output.rstrip()}\n```\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- OpenAPI


def openapi_reference() -> str:
    """The operations of ``/openapi.json``, then the whole document."""
    from metronome.api.openapi import openapi_document

    doc = openapi_document()
    rows = ["| method | path | what it does | answers |", "| --- | --- | --- | --- |"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            statuses = ", ".join(sorted(op["responses"]))
            summary = str(op.get("summary", "")).replace("|", "\\|")
            rows.append(f"| `{method.upper()}` | `{path}` | {summary} | {statuses} |")
    body = json.dumps(doc, indent=2, sort_keys=False)
    return (
        "# HTTP API (OpenAPI)\n\n"
        + _GENERATED
        + f"`GET /openapi.json` serves this OpenAPI {doc['openapi']} document; it is built"
        " from the schemas the server validates requests with, and the test suite throws"
        " generated requests at every operation in it (schemathesis). Errors follow"
        " [one shape](errors.md).\n\n"
        + "\n".join(rows)
        + '\n\n## The document\n\n??? note "openapi.json"\n\n    ```json\n'
        + "\n".join("    " + line for line in body.splitlines())
        + "\n    ```\n"
    )


# --------------------------------------------------------------------------- metrics


def _metric_rows() -> Iterator[tuple[str, str, str, str]]:
    """(name as scraped, type, labels, help) of every metric ``/metrics`` exposes."""
    from prometheus_client.metrics import MetricWrapperBase

    from metronome.pipeline import metrics

    for name in metrics.__all__:
        metric = getattr(metrics, name)
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = ", ".join(f"`{label}`" for label in getattr(metric, "_labelnames", ()))
        for family in metric.describe():
            scraped = family.name + ("_total" if family.type == "counter" else "")
            yield scraped, family.type, labels, family.documentation
    with tempfile.TemporaryDirectory() as empty:
        for family in metrics.SpoolCollector(Path(empty)).collect():
            yield family.name, family.type, "", family.documentation
    from metronome.pipeline.destinations.forwarder import DestinationCollector

    for family in DestinationCollector(Path(".")).describe():
        scraped = family.name + ("_total" if family.type == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in family._labelnames)
        yield scraped, family.type, labels, family.documentation


def metrics_reference() -> str:
    rows = ["| metric | type | labels | what it counts |", "| --- | --- | --- | --- |"]
    for name, kind, labels, doc in sorted(_metric_rows()):
        rows.append(f"| `{name}` | {kind} | {labels or '-'} | {doc} |")
    return (
        "# Metrics\n\n"
        + _GENERATED
        + "`GET /metrics` answers Prometheus text for all worker processes and the shipper"
        " together. Counters are added as they happen, except `POST /tick`'s, which a"
        " worker adds once a second; the spool gauges are read from disk at each scrape,"
        " so every process reports the same values. Histograms also expose `_bucket`,"
        " `_sum` and `_count`.\n\n" + "\n".join(rows) + "\n"
    )


# --------------------------------------------------------------------------- benchmarks

_RUN_KEYS = {"benchmark", "description", "started_at", "parameters", "environment"}
_RUN_KEYS |= {"warmup", "trials", "goal"}


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, value as compact JSON) of every non-dict value under ``value``."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, f"{path}.{key}" if path else str(key))
    else:
        yield path, json.dumps(value, ensure_ascii=False)


def benchmarks_reference() -> str:
    """Every ``benchmarks/results/<name>.json``: when, on which commit, and its summary."""
    out = [
        "# Benchmark results\n",
        _GENERATED.rstrip("\n") + "\n",
        "The latest run of each benchmark, read from `benchmarks/results/<name>.json` at"
        " build time (earlier runs are in git's history of each file). What each measures"
        " and against which baseline, and what the numbers mean, is in the"
        " [benchmarks guide](../guides/benchmarks.md); each file also holds the parameters,"
        " the environment and every trial.\n",
    ]
    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        env = data.get("environment", {})
        summary = data.get("summary") or {k: v for k, v in data.items() if k not in _RUN_KEYS}
        when = data.get("started_at", "an unrecorded time")
        goal = data.get("goal") or (summary.get("goal") if isinstance(summary, dict) else None)
        out.append(
            f"## {path.stem}\n\n`python -m benchmarks.{path.stem}`, run at {when} on commit"
            f" `{str(env.get('git_sha', 'unknown'))[:12]}`"
            f" ({env.get('cpu_count', '?')} CPUs, load average at the end"
            f" {env.get('loadavg_at_end', '?')}). Goal: {json.dumps(goal) if goal else 'none'}.\n"
        )
        rows = ["| result | value |", "| --- | --- |"]
        rows += [
            f"| `{key}` | `{value}` |"
            for key, value in _leaves(summary)
            if key.split(".")[0] != "goal"
        ]
        out.append("\n".join(rows) + "\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- pages

PAGES: dict[str, Callable[[], str]] = {
    "reference/settings.md": settings_reference,
    "reference/errors.md": errors_reference,
    "reference/cli.md": cli_reference,
    "reference/openapi.md": openapi_reference,
    "reference/metrics.md": metrics_reference,
    "reference/benchmarks.md": benchmarks_reference,
}


def pages() -> dict[str, str]:
    """Every generated page: its path under ``docs/`` and its Markdown."""
    return {uri: render() for uri, render in PAGES.items()}


def main(argv: list[str]) -> int:
    if argv == ["errors-docstring"]:
        changed = write_errors_docstring()
        print(f"{ERRORS_PY}: {'redrawn' if changed else 'already current'}")
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    for uri, text in pages().items():
        target = root / uri
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
