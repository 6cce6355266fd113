"""The README stays true: settings table, error codes, public names."""

from __future__ import annotations

import re
from pathlib import Path

from metronome.config import settings_reference, settings_table
from metronome.errors import all_error_classes
from scripts.gen_readme import render

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_generated_readme_blocks_are_current() -> None:
    assert "<!-- settings:start -->" in README and "<!-- errors:start -->" in README
    assert render(README) == README, "regenerate with: python -m scripts.gen_readme"


def test_every_setting_is_documented_in_the_generated_table() -> None:
    block = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", README, re.S)
    assert block, "README lost its settings markers"
    assert block.group(1) == settings_table()
    for setting in settings_reference():  # a row for each: its variable, or its file key
        assert setting.help and (setting.env or setting.key) in block.group(1), setting.name


def test_error_codes_are_unique_and_listed_in_the_readme() -> None:
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes))
    for cls in all_error_classes():
        assert f"| `{cls.code}` |" in README, cls.code


def test_readme_names_the_two_commands_ci_runs() -> None:
    assert "pip install . && metronome serve" in README
    assert "\nscripts/test\n" in README
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "exec ./scripts/test" in ci
