"""What the ``metronome`` command (:mod:`metronome.cli`) and its subcommand modules beside
the code they drive (:mod:`metronome.sites.commands`, ...) share."""

from __future__ import annotations

import os
from typing import Any

import click

from metronome.config import Settings
from metronome.errors import ConfigError

__all__ = ["load_settings"]


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, with the command line's ``overrides`` (None: not
    given); a bad value is a usage error naming the variable."""
    try:
        return Settings.from_env(
            os.environ, **{k: v for k, v in overrides.items() if v is not None}
        )
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None
