"""Regenerate the README's generated blocks: python -m scripts.gen_readme"""

from __future__ import annotations

import re
from pathlib import Path

from metronome.config import settings_table
from metronome.errors import all_error_classes

README = Path(__file__).resolve().parent.parent / "README.md"

_WHEN = {
    "config_invalid": "Not an HTTP answer: `metronome` refuses to start and names the bad"
    " `METRONOME_*` variable, or the configuration file and key.",
    "internal_error": "A bug: the server log has the traceback; the answer never does.",
}


def errors_table() -> str:
    rows = ["| status | `error` | when |", "| --- | --- | --- |"]
    for cls in sorted(all_error_classes(), key=lambda c: (c.http_status, c.code)):
        when = _WHEN.get(cls.code) or (cls.__doc__ or "").strip().splitlines()[0]
        status = "-" if cls.code == "config_invalid" else str(cls.http_status)
        rows.append(f"| {status} | `{cls.code}` | {when} |")
    return "\n".join(rows)


def render(text: str) -> str:
    for name, block in (("settings", settings_table()), ("errors", errors_table())):
        text = re.sub(
            rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)",
            lambda m, b=block: m.group(1) + b + m.group(2),
            text,
            flags=re.S,
        )
    return text


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
