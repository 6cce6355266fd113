"""Metronome with durability and shipping switched off: a measuring aid, never a mode to run.

``python -m benchmarks.undurable`` runs ``metronome serve --no-shipper`` with the spool's
``fdatasync`` replaced by nothing, in the gunicorn arbiter before it forks its workers, so
every worker inherits it. A tick is still checked, enriched, encoded and written to the
spool file, and answered 202 with its id; it is just not synced, and nothing ships it.

``benchmarks.ingest`` runs it beside Metronome and the bare app, to show how much of the
gap to the bare app is durability and shipping, and how much is the work of accepting a
tick. Acknowledged events here are not safe: never point a client at it.
"""

from __future__ import annotations

import sys


def _no_sync(fd: int) -> None:
    """Stands in for ``metronome.pipeline.spool._fdatasync``: the data stays in the page
    cache (no error, like a sync that succeeded)."""
    return None


def main(argv: list[str] | None = None) -> None:
    from metronome.cli import main as cli
    from metronome.pipeline import spool

    spool._fdatasync = _no_sync
    cli(["serve", "--no-shipper", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    main()
