"""The docs stay true: the site builds in strict mode, its reference pages cover what the
code declares, the error tree is drawn from the classes, and the README's quick start runs.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from metronome.errors import all_error_classes
from scripts import gen_docs
from tests.support.metronome_server import MetronomeServer

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built as a reader would: ``mkdocs build --strict``."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def _text(site: Path, page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", (site / page).read_text()))


def test_docs_site_builds_in_strict_mode_with_every_generated_page(site: Path) -> None:
    for uri in gen_docs.PAGES:
        assert (site / uri.replace(".md", ".html")).is_file(), uri
    assert (site / "index.html").is_file()


def test_every_setting_is_documented_on_the_settings_page(site: Path) -> None:
    from metronome.config import settings_reference

    page = _text(site, "reference/settings.html")
    for setting in settings_reference():  # a row for each: its variable, or its file key
        assert setting.help and (setting.env or setting.key) in page, setting.name
        assert " ".join(setting.help.replace("`", "").split()) in " ".join(page.split())


def test_error_codes_are_unique_and_each_is_on_the_errors_page(site: Path) -> None:
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    page = _text(site, "reference/errors.html")
    for cls in all_error_classes():
        assert cls.code in page and cls.__name__ in page, cls.code


def test_errors_docstring_draws_the_tree_of_the_error_classes() -> None:
    drawn = gen_docs.docstring_tree((REPO / "metronome" / "errors.py").read_text())
    assert drawn == gen_docs.error_tree(), (
        "redraw it with: python -m scripts.gen_docs errors-docstring"
    )


def test_every_command_has_its_help_on_the_cli_page(site: Path) -> None:
    from metronome.cli import main

    page = _text(site, "reference/cli.html")
    for path in gen_docs.command_paths(main):
        assert f"Usage: metronome {' '.join(path)}".rstrip() in page, path


def test_every_operation_is_on_the_openapi_page(site: Path) -> None:
    from metronome.api.openapi import openapi_document

    page = _text(site, "reference/openapi.html")
    for path, operations in openapi_document()["paths"].items():
        for method in operations:
            assert f"{method.upper()}\n{path}" in page or f"{method.upper()} {path}" in page, (
                method,
                path,
            )


def test_every_registered_metric_is_on_the_metrics_page(site: Path) -> None:
    from prometheus_client import REGISTRY

    import metronome.pipeline.metrics  # noqa: F401 - registers the counters

    page = _text(site, "reference/metrics.html")
    names = {m.name for m in REGISTRY.collect() if m.name.startswith("metronome_")}
    assert names
    for name in names:
        assert name in page, name
    for spool_metric in ("metronome_spool_bytes", "metronome_spool_oldest_unshipped_age_seconds"):
        assert spool_metric in page


def test_readme_names_the_two_commands_ci_runs() -> None:
    assert "pip install . && metronome serve" in README
    assert "\nscripts/test\n" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert "exec ./scripts/test" in ci


def test_readme_links_point_at_files_that_exist() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into docs/"
    for link in local:
        assert (REPO / link).exists(), link


_REPO_PATH = re.compile(
    r"`((?:metronome|docs|benchmarks|scripts|tests|index_templates|kibana|fluentd|deploy)/[\w/.-]*)`"
)


def test_docs_name_only_repository_paths_that_exist() -> None:
    """A file moved or renamed fails here until the README and the guides follow it."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    for page in pages:
        for path in _REPO_PATH.findall(page.read_text()):
            assert (REPO / path).exists(), f"{page.relative_to(REPO)} names {path}"


# --------------------------------------------------------------------------- examples


@pytest.fixture(scope="module")
def server() -> Iterator[MetronomeServer]:
    """``metronome serve`` on the embedded store, for the docs' curl examples."""
    running = MetronomeServer(env={"METRONOME_ELASTICSEARCH_URL": ""})
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0, running.log_tail()


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def _json_blocks(text: str) -> list[str]:
    return re.findall(r"```json\n(.*?)```", text, re.S)


def _commands(block: str) -> list[str]:
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def _run(command: str, server: MetronomeServer) -> str:
    """One documented shell command, with its curl aimed at ``server`` and failing loudly."""
    assert "curl " in command, command
    line = command.replace("localhost:8080", server.url.removeprefix("http://")).replace(
        "curl ", "curl --silent --show-error --fail "
    )
    proc = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + line], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, f"{command}\n{proc.stderr}\n{server.log_tail()}"
    return proc.stdout


def test_readme_quick_start_answers_the_report_it_shows(server: MetronomeServer) -> None:
    """The README's own curl commands, run against ``metronome serve``."""
    from tests.support.backends import wait_for_drain

    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = _sh_blocks(quick)
    ticks, tock = _commands(blocks[1]), _commands(blocks[2])
    (shown_json,) = _json_blocks(quick)
    shown = json.loads(shown_json)
    for command in ticks:
        assert set(json.loads(_run(command, server))) == {"id"}
    wait_for_drain(server)
    (command,) = tock
    answer = json.loads(_run(command, server))

    assert set(answer) == set(shown)
    assert answer["downloads"] == shown["downloads"]
    assert answer["referers"] == shown["referers"]
    views = list(answer["views"].items())
    shown_views = [(day, n) for day, n in shown["views"].items() if day != "..."]
    assert len(views) == 30
    assert views[0] == (datetime.now(UTC).date().isoformat(), 1)
    assert [n for _, n in views[: len(shown_views)]] == [n for _, n in shown_views]
    assert sum(n for _, n in views) == 1
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", day) for day, _ in views + shown_views)


def test_ticks_guide_batch_example_answers_as_shown(server: MetronomeServer) -> None:
    guide = (REPO / "docs" / "guides" / "ticks.md").read_text()
    batch = guide.split("`POST /ticks` takes many", 1)[1]
    (command,) = _commands(_sh_blocks(batch)[0])
    shown = json.loads(_json_blocks(batch)[0].replace('"019ab0a3..."', '"id"'))
    answer = json.loads(_run(command, server))

    assert set(answer) == set(shown)
    assert answer["accepted"] == shown["accepted"]
    assert answer["rejected"] == shown["rejected"]
    assert [type(i) for i in answer["ids"]] == [type(i) for i in shown["ids"]]


def test_benchmark_results_keep_one_file_per_benchmark_naming_its_commit() -> None:
    """The guides quote ``benchmarks/results/<name>.json``: the latest run only (history
    is in git), each naming the commit it measured."""
    results = sorted((REPO / "benchmarks" / "results").iterdir())
    assert results
    for path in results:
        assert re.fullmatch(r"[a-z_]+\.json", path.name), path.name
        assert (REPO / "benchmarks" / f"{path.stem}.py").is_file(), path.name
        environment = json.loads(path.read_text())["environment"]
        assert re.fullmatch(r"[0-9a-f]{40}", environment["git_sha"]), path.name


def test_query_guide_example_answers_in_the_shape_shown(server: MetronomeServer) -> None:
    from tests.support.backends import wait_for_drain

    guide = (REPO / "docs" / "guides" / "query.md").read_text()
    part = guide.split("## Any question: `POST /query`", 1)[1]
    command = _sh_blocks(part)[0].strip()  # one command, its JSON body over several lines
    shown_text = _json_blocks(part)[0]
    shown = json.loads(shown_text.replace(', "..."]', "]"))
    tick = {"id": "guide-page", "url": "https://example.org/docs/a", "load_ms": 231}
    assert httpx.post(server.url + "/tick", json=tick).status_code == 202
    wait_for_drain(server)
    answer = json.loads(_run(command, server))

    assert set(answer) == set(shown)
    meta = {k: v for k, v in shown["meta"].items() if k != "..."}
    assert set(meta) <= set(answer["meta"])
    assert answer["meta"]["dimensions"] == meta["dimensions"]
    assert answer["meta"]["metrics"] == meta["metrics"]
    assert all(set(row) == set(shown["results"][0]) for row in answer["results"])
    (row,) = [row for row in answer["results"] if row["metrics"][0]]  # days are gap-filled
    assert row["metrics"][0] == 1 and row["metrics"][2] == 231
