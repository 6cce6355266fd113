"""Private files: what Metronome writes under its data directory is readable by its own
user only.

The data directory holds every event (addresses, paths, user agents), the key hashes, the
daily salts that make visitor ids anonymous, the spool, the rejected lines and the dead
letters. Directories are made ``0700`` and files ``0600`` whatever the umask (``mkdir`` and
``open`` only ever take bits *away* from the mode they are given, and a chmod follows a
directory that is new). :func:`wider_than_private` finds the existing directories and files
that others can read, for the start-up warning.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "create_private",
    "open_private",
    "private_dir",
    "wider_than_private",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` (and its missing parents) ``0700``; an existing directory is left as
    it is (:func:`wider_than_private` reports it). Returns the path."""
    directory = Path(path)
    missing: list[Path] = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        try:
            new.mkdir(mode=DIR_MODE)
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(new, DIR_MODE)  # mkdir honours the umask, which may take owner bits away
    return directory


def _opener(path: str, flags: int) -> int:
    return os.open(path, flags, FILE_MODE)


def open_private(path: str | os.PathLike[str], mode: str = "ab") -> IO[bytes]:
    """``open(path, mode)`` (a binary mode), a new file made ``0600``."""
    private_dir(Path(path).parent)
    return open(path, mode, opener=_opener)  # noqa: SIM115 - the caller closes it


def create_private(path: str | os.PathLike[str]) -> None:
    """Make sure the file exists (empty if new), ``0600`` when this call creates it."""
    private_dir(Path(path).parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))


def wider_than_private(root: str | os.PathLike[str]) -> list[tuple[Path, int]]:
    """``(path, mode)`` of ``root``, its subdirectories and files that anyone but their
    owner may read, write or enter (group or other bits set)."""
    found: list[tuple[Path, int]] = []
    top = Path(root)
    if not top.exists():
        return found
    for directory, dirs, files in os.walk(top):
        for name in [None, *files]:
            path = Path(directory) if name is None else Path(directory) / name
            try:
                mode = stat.S_IMODE(os.lstat(path).st_mode)
            except FileNotFoundError:
                continue
            if mode & 0o077 and not stat.S_ISLNK(os.lstat(path).st_mode):
                found.append((path, mode))
        dirs.sort()
    return found
