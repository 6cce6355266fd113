"""The ``metronome`` command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from metronome import __version__
from metronome.cli_support import Commands, fail, prepare_data_dir
from metronome.cli_support import load_settings as _settings
from metronome.config import (
    CONFIG_VARIABLE,
    Settings,
    masked_url,
    settings_reference,
    settings_table,
)
from metronome.errors import MetronomeError
from metronome.jobs import commands as jobs_commands
from metronome.jobs import rollup_commands
from metronome.kpis import commands as kpis_commands
from metronome.sites import commands as sites_commands
from metronome.telemetry import commands as apps_commands

__all__ = ["main"]


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metronome")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"TOML configuration file [default: {CONFIG_VARIABLE}, else none].",
)
def main(config_file: Path | None) -> None:
    """Metronome: self-hosted usage analytics."""
    # what this process and the ones it starts write is for this user only, whatever the
    # caller's umask (files under the data directory are also opened 0600 explicitly)
    os.umask(os.umask(0o077) | 0o077)
    if config_file is not None:  # in the environment, so the processes it starts read it too
        os.environ[CONFIG_VARIABLE] = str(config_file.resolve())


@main.command()
@click.option("--host", help="Bind address [default: METRONOME_HOST or 127.0.0.1].")
@click.option("--port", type=int, help="Port [default: METRONOME_PORT or 8080].")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Worker processes [default: METRONOME_WORKERS or 2].",
)
@click.option(
    "--no-shipper",
    is_flag=True,
    help="Only spool; run `metronome worker` separately to ship to the store.",
)
def serve(host: str | None, port: int | None, workers: int | None, no_shipper: bool) -> None:
    """Run the HTTP API (gunicorn with uvicorn workers) and the shipper."""
    from metronome.server import PortInUse, ensure_port_free, run_server

    settings = _settings(host=host, port=port, workers=workers)
    try:
        ensure_port_free(settings.host, settings.port)
    except PortInUse as exc:
        raise click.ClickException(str(exc)) from None
    # first: the checks below import the metrics, and prometheus_client picks its
    # (multiprocess or in-memory) counters once, at import, from the environment
    _multiprocess_metrics(settings)
    _check_sections(settings)
    if not no_shipper:
        _check_job_sites(settings)
    prepare_data_dir(settings)
    # the workers read their settings from the environment: pass the CLI's choices on
    os.environ["METRONOME_HOST"] = settings.host
    os.environ["METRONOME_PORT"] = str(settings.port)
    os.environ["METRONOME_WORKERS"] = str(settings.workers)
    store = (
        f"{'OpenSearch' if settings.opensearch_url else 'Elasticsearch'} at {_nodes(settings)}"
        if settings.uses_elasticsearch
        else f"the embedded store in {settings.data_dir}"
    )
    click.echo(
        f"metronome {__version__} on http://{settings.host}:{settings.port}"
        f" with {settings.workers} workers, storing in {store}",
        err=True,
    )
    warning = _exposure_warning(settings)
    if warning:
        click.secho(warning, err=True, fg="yellow", bold=True)
    for problem in _store_problems(settings):
        click.secho(problem, err=True, fg="red", bold=True)
    shipper = None
    if not no_shipper:
        shipper = subprocess.Popen(
            [sys.executable, "-m", "metronome", "worker"],
            env={**os.environ, "METRONOME_SHIPPER_PARENT": str(os.getpid())},
        )
        if settings.shipper_nice:
            os.setpriority(os.PRIO_PROCESS, shipper.pid, settings.shipper_nice)
    try:
        run_server(settings)
    finally:
        if shipper is not None:
            shipper.send_signal(signal.SIGTERM)
            try:
                shipper.wait(timeout=30)
            except subprocess.TimeoutExpired:
                shipper.kill()


def _exposure_warning(settings: Settings) -> str | None:
    """A warning when the server can be reached from other machines while no site
    exists (so nothing needs a key)."""
    import ipaddress

    from metronome.sites.registry import open_registry

    host = settings.host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback and not settings.trusted_proxies:
        return None

    async def _load() -> Any:
        async with open_registry(settings) as registry:
            return await registry.load()

    try:
        snapshot = asyncio.run(_load())
    except MetronomeError as exc:
        return (
            f"warning: could not check for sites and keys ({exc.message}); without"
            " them anyone who can reach this server may send ticks and read reports"
        )
    if not snapshot.open:
        return None
    where = (
        f"listening on {settings.host}"
        if not loopback
        else "behind a proxy (METRONOME_TRUSTED_PROXIES is set)"
    )
    return (
        f"WARNING: {where} with no sites: anyone who can reach this server may"
        " send ticks and read every report. Create a site and keys (metronome sites"
        " create, metronome keys create) or bind to 127.0.0.1; see docs/guides/sites-and-keys.md."
    )


def _check_job_sites(settings: Settings) -> None:
    """Refuse to start when the forward input's METRONOME_LOG_SITE or a per-site period
    of METRONOME_RETENTION names a site that does not exist (their events would be
    stored out of every report's reach, or nothing would ever be removed). An unreachable
    registry is not a reason to refuse: the store may come up later."""
    from metronome.jobs.retention import RetentionPolicy
    from metronome.sites.registry import check_site, open_registry

    named = {
        f"METRONOME_RETENTION ({s}=...)": s for s in RetentionPolicy.parse(settings.retention).sites
    }
    if settings.forward:
        from metronome.pipeline.forward_input import forward_config_problem

        if problem := forward_config_problem(settings):
            fail(problem)
        _check_url_rules(settings)
        named["METRONOME_LOG_SITE"] = settings.log_site
        for site, _ in settings.forward_site_keys:
            named[f"METRONOME_FORWARD_SITE_KEYS ({site}=...)"] = site
        for user, _, user_site in settings.forward_users:
            if user_site is not None:
                named[f"METRONOME_FORWARD_USERS ({user}@{user_site})"] = user_site
    if settings.queues:
        from metronome.pipeline.queue_spec import parse_queues

        for spec in parse_queues(settings.queues, settings):
            if spec.site_header is None:
                named[f"[[queues]] {spec.name} (site)"] = spec.site
    if not named:
        return

    async def _load() -> Any:
        async with open_registry(settings) as registry:
            return await registry.load()

    try:
        snapshot = asyncio.run(_load())
    except MetronomeError:
        return
    for named_by, site_id in named.items():
        check_site(snapshot, site_id, named_by)


def _check_sections(settings: Settings) -> None:
    """Refuse to start on a configuration file section its feature cannot use
    (``[event_schemas]``, ``[[collectors]]``, ``[[monitors]]``), naming the key, before
    any process starts."""
    from metronome.events.typed import EventSchemas
    from metronome.jobs.collectors import parse_collectors
    from metronome.jobs.monitors import parse_monitors

    EventSchemas.from_config(settings.event_schemas)
    parse_collectors(settings.collectors)
    parse_monitors(settings.monitors)
    from metronome.pipeline.destinations import parse_destinations  # issue 23

    parse_destinations(settings.destinations, spool_max_bytes=settings.spool_max_bytes)
    if settings.queues:
        from metronome.pipeline.queue_spec import parse_queues

        parse_queues(settings.queues, settings)


def _multiprocess_metrics(settings: Settings) -> None:
    """Give every process of this server one Prometheus multiprocess directory."""
    from metronome.files import private_dir

    directory = private_dir(Path(settings.data_dir) / "metrics")
    for old in directory.glob("*.db"):
        old.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory.resolve())


@main.command()
@click.option("--drain", is_flag=True, help="Exit once the spool is empty.")
def worker(drain: bool) -> None:
    """Ship spooled events to the store (started by `serve` unless --no-shipper)."""
    from metronome.jobs.worker import run_worker
    from metronome.logconfig import configure_logging

    settings = _settings()
    parent = os.environ.get("METRONOME_SHIPPER_PARENT")
    if parent is None and not drain:  # `serve` checked before starting this worker
        _check_sections(settings)
        _check_job_sites(settings)
    if parent is None:
        prepare_data_dir(settings)
    configure_logging(settings)
    stats = asyncio.run(
        run_worker(settings, drain=drain, parent_pid=int(parent) if parent else None)
    )
    click.echo(
        f"shipped {stats.shipped} events, {stats.retries} retries,"
        f" {stats.dead_letters} dead letters, {stats.torn_bytes} torn bytes cut",
        err=True,
    )


@main.command()
def status() -> None:
    """Show the spool backlog, shipping lag, dead letters and store health."""
    import time

    from metronome.pipeline.shipper import DEAD_LETTERS
    from metronome.pipeline.spool import backlog, spool_dir
    from metronome.store import open_store

    settings = _settings()
    state = backlog(spool_dir(settings.data_dir))

    async def _ready() -> str | None:
        async with open_store(settings) as store:
            return await store.check_ready()

    reason = asyncio.run(_ready())
    reason = None if reason is None else masked_url(reason)
    store = _nodes(settings) if settings.uses_elasticsearch else f"embedded ({settings.data_dir})"
    lag = "none"
    if state.oldest_unshipped_ms is not None:
        lag = f"{max(0.0, time.time() - state.oldest_unshipped_ms / 1000):.1f}s"
    dead = Path(settings.data_dir) / DEAD_LETTERS
    dead_count = sum(1 for _ in dead.open("rb")) if dead.exists() else 0
    used = 100 * state.bytes_total / settings.spool_max_bytes
    click.echo(f"store:        {store}: {'ready' if reason is None else 'NOT READY: ' + reason}")
    click.echo(
        f"backlog:      {state.bytes_unshipped} bytes unshipped in {state.segments} segments"
    )
    click.echo(
        f"spool:        {state.bytes_total} of {settings.spool_max_bytes} bytes ({used:.1f}%)"
    )
    click.echo(f"lag:          {lag} (oldest unshipped event)")
    click.echo(f"dead letters: {dead_count} in {dead}")
    for line in jobs_commands.collector_status_lines(settings):
        click.echo(line)
    for line in _destination_status_lines(settings):  # issue 23
        click.echo(line)
    if settings.queues:
        from metronome.pipeline.queue_input import queue_status_lines

        for line in queue_status_lines(settings):
            click.echo(line)
    if reason is not None:
        fail(f"the store is not ready: {reason}")


def _destination_status_lines(settings: Settings) -> list[str]:
    """One line per configured destination: lag, counters, last error."""
    from metronome.pipeline.destinations import Cursor, parse_destinations, read_state
    from metronome.pipeline.destinations.forwarder import dead_letter_path
    from metronome.pipeline.spool import spool_dir

    spool = spool_dir(settings.data_dir)
    lines = []
    for d in parse_destinations(settings.destinations, spool_max_bytes=settings.spool_max_bytes):
        lag = Cursor(spool, d.name).lag()
        state = read_state(spool, d.name)
        line = (
            f"destination:  {d.name} ({d.kind}, site {d.site}): {lag.events} events behind"
            f" ({lag.bytes} bytes), {state.get('delivered', 0)} delivered,"
            f" {state.get('failed', 0)} failed, {state.get('dead_lettered', 0)} dead-lettered"
            f" (in {dead_letter_path(settings.data_dir, d.name)}),"
            f" {state.get('skipped', 0)} skipped"
        )
        if state.get("in_doubt"):  # issue 23: in flight when a worker died, sent again
            line += f", {state['in_doubt']} in doubt (last {state.get('last_in_doubt')})"
        if state.get("last_error"):
            line += f"; last error: {masked_url(str(state['last_error']))}"
        lines.append(line)
    return lines


main.add_command(sites_commands.sites)
main.add_command(sites_commands.keys)
main.add_command(kpis_commands.kpis)  # issue 22
main.add_command(apps_commands.apps)
main.add_command(jobs_commands.collect)
apps_commands.apps.add_command(rollup_commands.roll)
main.add_command(jobs_commands.probe)


@main.group()
def templates() -> None:
    """Manage the store's index templates (or tables)."""


@templates.command("install")
def templates_install() -> None:
    """Install or update the index templates; unchanged ones are left alone."""
    from metronome.store import open_store

    settings = _settings()

    async def _install() -> list[Any]:
        async with open_store(settings) as store:
            return await store.ensure_schema()

    try:
        changes = asyncio.run(_install())
    except MetronomeError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    for change in changes:
        click.echo(f"{change.action:9} {change.name}")


def _count(n: int, noun: str) -> str:
    plural = noun[:-2] + "ices" if noun.endswith("ex") else noun + "s"
    return f"{n:,} {noun if n == 1 else plural}"


@main.command()
@click.option(
    "--keep", required=True, metavar="PERIOD", help="How much to keep, in days or weeks: 400d, 57w."
)
@click.option(
    "--dataset",
    type=click.Choice(["ticks", "logs", "metrics", "visits", "all"]),
    default="all",
    show_default=True,
    help="Which documents to remove (visits: the visit summaries).",
)
@click.option(
    "--site",
    default=None,
    help="Only this site's ticks and logs, one by one (default: every site, whole days).",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def retention(keep: str, dataset: str, site: str | None, dry_run: bool) -> None:
    """Remove documents older than --keep: whole daily indices, or the embedded store's rows.

    Whole UTC days only: everything from before 00:00 UTC of the day PERIOD ago goes,
    the same documents on either store.
    """
    from datetime import UTC, datetime

    from metronome.jobs.retention import (
        DATASETS,
        cutoff_ms,
        expire_rejected_lines,
        parse_keep,
        run_retention,
        run_site_retention,
    )

    try:
        period = parse_keep(keep)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--keep") from None
    if site is not None and dataset == "metrics":
        raise click.BadParameter("metrics belong to no site", param_hint="--site")
    settings = _settings()
    datasets: tuple[str, ...] = DATASETS if dataset == "all" else (dataset,)
    cutoff = datetime.fromtimestamp(cutoff_ms(period) / 1000, tz=UTC)
    store = (
        _nodes(settings)
        if settings.uses_elasticsearch
        else f"the embedded store in {settings.data_dir}"
    )
    if site is not None:
        sites_commands.require_sites(settings, {"--site": site})
        events = tuple(d for d in datasets if d not in ("metrics", "visits"))
        visits = tuple(d for d in datasets if d == "visits")  # issue 25: visit summaries
        for part in (events, visits):
            if not part:
                continue
            removed = asyncio.run(run_site_retention(settings, period, site, part, dry_run))
            click.echo(
                f"{'would delete' if dry_run else 'deleted'} {_count(removed, 'document')}"
                f" of site {site} ({', '.join(part)}) from before {cutoff:%Y-%m-%d} 00:00 UTC"
                f" in {store}"
            )
        return
    try:
        result = asyncio.run(run_retention(settings, period, datasets, dry_run=dry_run))
    except MetronomeError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    verb = "would delete" if dry_run else "deleted"
    if "logs" in datasets:
        for path in expire_rejected_lines(settings, period, dry_run=dry_run):
            click.echo(f"{verb} rejected lines file {path} (last written before the cutoff)")
    for removal in result.removed:
        if result.unit == "indices":
            click.echo(f"{verb} index {removal.name} ({_count(removal.documents, 'document')})")
        else:
            click.echo(f"{verb} {_count(removal.documents, removal.name + ' document')}")
    indices = f"{_count(len(result.removed), 'index')}, " if result.unit == "indices" else ""
    click.echo(
        f"{verb} {indices}{_count(result.documents, 'document')} of {', '.join(datasets)}"
        f" from before {cutoff:%Y-%m-%d} 00:00 UTC in {store}"
    )


@main.command("settings")
@click.option("--markdown", is_flag=True, help="Print the settings reference table (Markdown).")
def settings_cmd(markdown: bool) -> None:
    """Show the settings in effect (or, with --markdown, the documented table)."""
    if markdown:
        click.echo(settings_table())
        return
    settings = _settings()
    for setting in settings_reference():
        value = getattr(settings, setting.name)
        if value not in (None, ()) and setting.secret:
            value = "(set, not shown)"
        elif setting.type == "table":
            value = dict(value)
        click.echo(masked_url(f"{setting.name} = {value!r}"))


@main.group()
def kibana() -> None:
    """Kibana saved objects: data views and dashboards on Metronome's indices."""


@kibana.command("import")
@click.option(
    "--url", help="Kibana's URL, e.g. http://localhost:5601 [default: METRONOME_KIBANA_URL]."
)
@click.option("--space", help="Import into this Kibana space [default: the default space].")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace objects that already exist (same ids) instead of failing.",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(0, 3600),
    default=0,
    show_default=True,
    help="Seconds to keep retrying while Kibana is unreachable or still starting.",
)
def kibana_import(url: str | None, space: str | None, overwrite: bool, wait_s: float) -> None:
    """Import the bundled data views and dashboards through Kibana's saved objects API.

    Credentials come from METRONOME_KIBANA_API_KEY, or METRONOME_KIBANA_USERNAME and
    METRONOME_KIBANA_PASSWORD. Data views follow METRONOME_INDEX_PREFIX.
    """
    from metronome.kibana import KibanaError, import_saved_objects

    settings = _settings()
    url = url or settings.kibana_url
    if not url:
        raise click.UsageError("give Kibana's URL with --url or METRONOME_KIBANA_URL")
    try:
        summary = import_saved_objects(
            url,
            space=space,
            overwrite=overwrite,
            prefix=settings.index_prefix,
            username=settings.kibana_username,
            password=settings.kibana_password,
            api_key=settings.kibana_api_key,
            wait_s=wait_s,
        )
    except KibanaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    target = f"space {space!r}" if space else "the default space"
    click.echo(summary.line(target))
    for error in summary.errors:
        click.echo(f"error: {error}", err=True)
    if not summary.ok:
        click.echo(f"error: {len(summary.errors)} saved objects were not imported", err=True)
        sys.exit(1)


def _progress(quiet: bool, what: str) -> Any:
    """A rich progress display on stderr (lines and lines/s), or nothing with --quiet."""
    from contextlib import nullcontext

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if quiet or not sys.stderr.isatty():  # a pipe or a file gets the summary line only
        return nullcontext(None)
    return Progress(
        SpinnerColumn(),
        TextColumn(f"{what} {{task.completed:,.0f}} lines"),
        TextColumn("[dim]{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _run_with_progress(quiet: bool, what: str, job: Any) -> Any:
    import time as _time

    with _progress(quiet, what) as progress:
        task = progress.add_task(what, total=None, rate="") if progress else None
        started = _time.monotonic()

        def update(lines: int) -> None:
            if progress is not None:
                rate = lines / max(_time.monotonic() - started, 1e-6)
                progress.update(task, completed=lines, rate=f"{rate:,.0f} lines/s")

        return asyncio.run(job(update))


_SITE_OPTION = click.option(
    "--site",
    "site",
    default=None,
    help="Store the lines as this site's events [default: METRONOME_LOG_SITE, else default].",
)


def _check_url_rules(settings: Settings) -> None:
    """A usage error naming METRONOME_URL_RULES and the rule it cannot compile."""
    from metronome.logs.rules import RuleError, UrlRules

    try:
        UrlRules.parse(settings.url_rules)
    except RuleError as exc:
        raise click.UsageError(f"METRONOME_URL_RULES: {exc}") from None


def _log_settings(site: str | None, *, check: bool = True) -> Settings:
    """The settings with ``--site`` as the log site; the site must exist."""
    settings = _settings(log_site=site)
    _check_url_rules(settings)
    if check:
        named_by = "--site" if site is not None else "METRONOME_LOG_SITE"
        sites_commands.require_sites(settings, {named_by: settings.log_site})
    return settings


class _LogCommand(click.Command):
    """A command whose ``--help`` ends with the access-log formats it recognises."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from metronome.logs.formats import FORMAT_HELP

        with formatter.section("Formats (--format)"):
            formatter.write_dl(list(FORMAT_HELP.items()))
            formatter.write_paragraph()
            formatter.write_text(
                "or an NGINX log_format string ('$remote_addr ... \"$request\" $status ...')"
                " or an Apache LogFormat string ('%h %l %u %t \"%r\" %>s %b')."
            )


def _log_format_options(command: Any) -> Any:
    """``--format``, ``--url-rules`` and ``--tz``: the settings of access-log inputs."""
    command = click.option(
        "--tz",
        "tz",
        default=None,
        help="Time zone of times logged without an offset (W3C, HAProxy)"
        " [default: METRONOME_LOG_TZ, else UTC].",
    )(command)
    command = click.option(
        "--url-rules",
        "url_rules",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="File of URL rules, one a line [default: METRONOME_URL_RULES].",
    )(command)
    return click.option(
        "--format",
        "log_format",
        default=None,
        help="A format name (listed below), an NGINX log_format or an Apache LogFormat"
        " string [default: METRONOME_LOG_FORMAT, else auto: recognised].",
    )(command)


def _access_log_settings(
    site: str | None, log_format: str | None, url_rules: str | None, tz: str | None
) -> Settings:
    """The settings with the access-log flags applied, each checked before any line is
    read: the site exists, the rules and the format compile."""
    from metronome.logs.formats import compile_format
    from metronome.logs.parse import FormatError

    rules = None if url_rules is None else Path(url_rules).read_text(encoding="utf-8")
    zone = None
    if tz is not None:  # parsed as METRONOME_LOG_TZ is
        parse = next(s.parse for s in settings_reference() if s.name == "log_tz")
        assert parse is not None
        try:
            zone = parse(tz)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--tz") from None
    settings = _settings(log_site=site, log_format=log_format, url_rules=rules, log_tz=zone)
    try:
        compile_format(settings.log_format, settings.log_tz)
    except FormatError as exc:
        named_by = "--format" if log_format is not None else "METRONOME_LOG_FORMAT"
        raise click.UsageError(f"{named_by}: {exc}") from None
    _check_url_rules(settings)
    named_by = "--site" if site is not None else "METRONOME_LOG_SITE"
    sites_commands.require_sites(settings, {named_by: settings.log_site})
    return settings


def _detected(quiet: bool) -> Any:
    """What the CLI prints when a file's format is recognised (nothing with --quiet)."""

    def show(path: str, detection: Any) -> None:
        if not quiet:
            name = "standard input" if path == "-" else path
            click.echo(f"{name}: {detection.reason}", err=True)

    return show


@main.command("import", cls=_LogCommand)
@click.argument("files", nargs=-1, required=True)
@_SITE_OPTION
@_log_format_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
def import_cmd(
    files: tuple[str, ...],
    site: str | None,
    log_format: str | None,
    url_rules: str | None,
    tz: str | None,
    quiet: bool,
) -> None:
    """Import access-log history (plain, .gz, .bz2, .zst, or - for stdin) into the store."""
    from metronome.logs.formats import UnknownFormat
    from metronome.pipeline.log_input import check_readable, import_files

    for path in files:
        check_readable(path)
    settings = _access_log_settings(site, log_format, url_rules, tz)
    prepare_data_dir(settings)
    try:
        summary = _run_with_progress(
            quiet,
            "importing",
            lambda update: import_files(
                settings, files, progress=update, on_detect=_detected(quiet)
            ),
        )
    except UnknownFormat as exc:
        fail(str(exc))
    if not quiet:
        click.echo(summary.line(), err=True)


@main.command(cls=_LogCommand)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--from-end",
    is_flag=True,
    help="Start new files at their end, like tail -f (default: from the start).",
)
@_SITE_OPTION
@_log_format_options
@click.option("--quiet", "-q", is_flag=True, help="No running count, no summary.")
def ship(
    paths: tuple[Path, ...],
    from_end: bool,
    site: str | None,
    log_format: str | None,
    url_rules: str | None,
    tz: str | None,
    quiet: bool,
) -> None:
    """Follow live access logs (like tail -F) into the spool, archiving them to S3."""
    from metronome.logconfig import configure_logging
    from metronome.logs.formats import UnknownFormat
    from metronome.pipeline.log_input import ship_files

    for path in paths:
        if path.is_dir():
            fail(f"{path}: is a directory; name the log files to follow")
    settings = _access_log_settings(site, log_format, url_rules, tz)
    prepare_data_dir(settings)
    configure_logging(settings)

    async def _ship() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def report(summary: Any) -> None:
            if not quiet:
                click.echo("\r" + summary.line("spooled"), err=True, nl=False)

        return await ship_files(
            settings,
            list(paths),
            stop,
            from_end=from_end,
            on_batch=report,
            on_detect=_detected(quiet),
        )

    try:
        summary = asyncio.run(_ship())
    except UnknownFormat as exc:
        fail(str(exc))
    if not quiet:
        click.echo("\r" + summary.line("spooled"), err=True)


@main.command()
@click.option("--from", "start", required=True, help="First day or hour (UTC), e.g. 2026-11-01.")
@click.option("--to", "end", required=True, help="Last day or hour (UTC), included.")
@_SITE_OPTION
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
def restore(start: str, end: str, site: str | None, quiet: bool) -> None:
    """Re-index archived access logs from S3 into the store (idempotent)."""
    from datetime import UTC, datetime, timedelta

    from metronome.pipeline.log_input import restore_archive

    def moment(text: str, name: str, *, last: bool) -> datetime:
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is not a date or ISO time", param_hint=name
            ) from None
        value = value.replace(tzinfo=value.tzinfo or UTC)
        if last:
            value += timedelta(days=1) if len(text) == 10 else timedelta(hours=1)
        return value

    first, after = moment(start, "--from", last=False), moment(end, "--to", last=True)
    settings = _log_settings(site, check=False)
    if not settings.s3_bucket:
        raise click.UsageError("METRONOME_S3_BUCKET is not set: there is no archive to restore")
    _log_settings(site)
    try:
        summary = _run_with_progress(
            quiet,
            "restoring",
            lambda update: restore_archive(settings, first, after, progress=update),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not quiet:
        click.echo(summary.line(), err=True)


@main.command()
@click.option(
    "--where",
    "where",
    required=True,
    metavar="JSON",
    help='Filters as in POST /query, e.g. \'[["is", "item", ["doc-7"]]]\'.',
)
@click.option(
    "--source", type=click.Choice(["ticks", "logs", "all"]), default="all", show_default=True
)
@click.option("--site", default=None, help="Only this site's events (default: every site).")
@click.option("--from", "start", default=None, help="Only events from this date or time.")
@click.option("--to", "end", default=None, help="Only events up to this date (included).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget(
    where: str,
    source: str,
    site: str | None,
    start: str | None,
    end: str | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """Delete the events matching a filter, for good (crawlers included), and the
    summaries of the visits that held them."""
    import orjson

    from metronome.jobs.forget import (
        ALL_TIME,
        forget_query,
        forget_visits,
        summaries_query,
        visits_of,
    )
    from metronome.jobs.forget import forget as forget_events
    from metronome.store import open_store

    try:
        filters = orjson.loads(where)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--where") from None
    if not isinstance(filters, list) or not filters:
        raise click.BadParameter("give a non-empty JSON list of filters", param_hint="--where")
    time_range = None
    if start or end:
        time_range = {"from": start or ALL_TIME["from"], "to": end or ALL_TIME["to"]}
    settings = _settings()
    try:
        query = forget_query(filters, source, time_range, site)
    except MetronomeError as exc:
        raise click.UsageError(exc.message.replace("query.filters", "--where")) from None
    if site is not None:  # a site that does not exist would silently match nothing
        sites_commands.require_sites(settings, {"--site": site})

    summaries = summaries_query(filters, time_range, site)  # issue 25: a visitor's visits

    async def _run(dry: bool) -> tuple[int, int]:
        async with open_store(settings) as store:
            visits = await visits_of(store, query)  # before their events go
            events = await forget_events(store, query, dry_run=dry)
            return events, await forget_visits(store, visits, summaries, dry_run=dry)

    try:
        matching, visits = asyncio.run(_run(True))
        if dry_run:
            click.echo(f"{matching} events match; nothing deleted (--dry-run)")
            click.echo(f"{visits} visits hold them; their summaries would go too")
            _rejects_note(settings)
            return
        if matching and not yes:
            click.confirm(f"Delete {matching} events for good?", abort=True)
        deleted, gone = asyncio.run(_run(False))
    except MetronomeError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"deleted {deleted} events and {gone} visit summaries")
    _rejects_note(settings)


def _rejects_note(settings: Settings) -> None:
    """What ``forget`` cannot reach: the rejected access-log lines are no events."""
    from metronome.logs.rejects import reject_files

    files = reject_files(settings.data_dir)
    if not files:
        return
    kept = (
        "whole"
        if settings.client_ip == "keep"
        else f"with addresses {'dropped' if settings.client_ip == 'drop' else 'truncated'}"
        " and query strings cut"
    )
    click.echo(
        f"note: --where cannot match the rejected access-log lines in"
        f" {', '.join(str(f) for f in files)} (kept {kept}); retention removes them with"
        " the logs, or delete the files to forget them now",
        err=True,
    )


# -- secured Elasticsearch (issue 18) --


def _nodes(settings: Settings) -> str:
    """Where the Elasticsearch store is, without credentials."""
    from metronome.store.connection import nodes

    return nodes(settings)


def _store_problems(settings: Settings) -> list[str]:
    """What is wrong with the store's connection at start (unchecked certificates, a
    wrong CA or password, a missing privilege): said once, plainly; the server starts
    anyway, spooling, and ``/readyz`` keeps saying it until it is fixed."""
    if not settings.uses_elasticsearch:
        return []
    from metronome.store.connection import unverified_warning
    from metronome.store.elasticsearch import ElasticsearchStore

    problems = []
    warning = unverified_warning(settings)
    if warning:
        problems.append(f"warning: {warning}")

    async def _ready() -> str | None:
        async with ElasticsearchStore(settings) as store:
            return await store.check_access()

    reason = asyncio.run(_ready())
    if reason is not None:
        problems.append(f"error: the store is not ready: {reason}")
    return problems


@main.group("elasticsearch")
def elasticsearch_group() -> None:
    """Elasticsearch: what Metronome needs of a secured cluster."""


@elasticsearch_group.command("role")
def elasticsearch_role() -> None:
    """Print the least-privilege role definitions (JSON, by role name) for the index prefix.

    Create each with `PUT _security/role/<name>` and the body printed under its name:
    `read` for readers, `serve` for the API, `ship` for the shipper, `setup` for
    `metronome templates install`.
    """
    import json

    from metronome.store.roles import roles

    click.echo(json.dumps(roles(_settings().index_prefix), indent=2))
