"""What the ``metronome`` command (:mod:`metronome.cli`) and its subcommand modules beside
the code they drive (:mod:`metronome.sites.commands`, ...) share."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, NoReturn, TypeVar

import click

from metronome.config import Settings
from metronome.errors import ConfigError, MetronomeError
from metronome.files import private_dir, wider_than_private

__all__ = ["Commands", "fail", "load_settings", "prepare_data_dir"]

# click 8.2 and later answer a group called without a command with this usage error
_NoArgsIsHelp: type[click.UsageError] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_NeverRaised", (click.UsageError,), {})
)


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, with the command line's ``overrides`` (None: not
    given); a bad value is a usage error naming the variable."""
    try:
        return Settings.from_env(
            os.environ, **{k: v for k, v in overrides.items() if v is not None}
        )
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None


_WIDE_SHOWN = 10


def prepare_data_dir(settings: Settings) -> None:
    """Make the data directory (``0700`` when new) and warn, one line each, about the
    directories and files in it that other users may read."""
    private_dir(settings.data_dir)
    wide = wider_than_private(settings.data_dir)
    for path, mode in wide[:_WIDE_SHOWN]:
        click.echo(
            f"warning: {path} has mode {mode:04o}: other users of this machine may read it;"
            f" run chmod {'700' if path.is_dir() else '600'} on it",
            err=True,
        )
    if len(wide) > _WIDE_SHOWN:
        click.echo(
            f"warning: {len(wide) - _WIDE_SHOWN} more paths under {settings.data_dir} are"
            " readable by other users: chmod -R go-rwx it",
            err=True,
        )


def fail(message: str) -> NoReturn:
    """End the command with ``error: <message>`` on stderr and exit status 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


R = TypeVar("R")
T = TypeVar("T")


def run_with(
    opener: Callable[[], AbstractAsyncContextManager[R]], job: Callable[[R], Awaitable[T]]
) -> T:
    """Run ``job`` on what ``opener()`` opens (a registry, a store), closed after; a
    :class:`MetronomeError` ends the command with its message, as :func:`fail` does."""

    async def _run() -> T:
        async with opener() as opened:
            return await job(opened)

    try:
        return asyncio.run(_run())
    except MetronomeError as exc:
        fail(exc.message)


def expected_failure(exc: BaseException) -> str | None:
    """The one-line message of a failure a user can cause and fix (a missing or unreadable
    file, an unreachable store or bucket, a refused setting), or None for a bug."""
    if isinstance(exc, MetronomeError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, OSError | EOFError):  # a damaged .gz file, a closed socket
        return str(exc) or type(exc).__name__
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None and isinstance(exc, boto.BotoCoreError | boto.ClientError):
        return f"S3: {exc}"
    return None


class Commands(click.Group):
    """The ``metronome`` group: every failure a user can cause ends with one line on
    stderr (``error: ...``) and a non-zero exit status, never a traceback; usage errors
    (a bad flag, a bad setting) exit with 2, the others with 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            message = expected_failure(exc)
            if message is None:
                raise
            fail(message.replace("\n", " "))

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        standalone = extra.pop("standalone_mode", True)
        if not standalone:
            return super().main(args, prog_name, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except _NoArgsIsHelp as exc:  # `metronome sites`: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "metronome")
            fail_with = f"{exc.format_message()} (see '{where} --help')"
            click.echo(f"error: {fail_with}".replace("\n", " "), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}".replace("\n", " "), err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
