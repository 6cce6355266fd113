"""MkDocs hook: add the reference pages generated from the code to every build.

The pages are written by ``scripts/gen_docs.py`` into the build only (never into
``docs/``), so they cannot drift from the code they describe.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parent.parent


def on_files(files: Files, config: Any) -> Files:
    # document this checkout's code, whatever else is installed: `mkdocs` run from
    # elsewhere would otherwise import an installed copy (or find no scripts/ at all)
    if sys.path[:1] != [str(REPO)]:
        sys.path.insert(0, str(REPO))
    from scripts.gen_docs import pages

    for uri, text in pages().items():
        files.append(File.generated(config, uri, content=text))
    return files
