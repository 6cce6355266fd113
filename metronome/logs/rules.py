"""URL rules: which item, and which event, an access-log request is about.

Rules come from configuration text, one per line or ``;``-separated::

    /datasets/{id}/download.{format} -> download
    /datasets/{id}                          # "-> view" is the default
    /maps/{id}/* -> view

A rule is a URL path pattern, optionally followed by ``->`` and an event name (letters,
digits, ``_``, ``-``, ``.`` and ``:``; default ``view``). In a pattern:

- ``{id}`` is the item: one path segment (no ``/``);
- ``{format}`` is a download format: one segment without ``.`` (so ``{id}.{format}``
  splits ``a.b.csv`` into ``a.b`` and ``csv``); it is lowercased;
- ``*`` matches any run of characters, ``/`` included;
- everything else matches itself, case-sensitively.

A pattern matches the whole path (never the query string). Captured values are
percent-decoded (``/datasets/parks%20dc`` is item ``parks dc``). A pattern without
``{id}`` makes the matched path itself the item. Rules are tried in order; the first that
matches wins. ``#`` starts a comment (it cannot appear in a path: browsers never send the
fragment); blank lines are ignored; anything else that is not a valid rule is an error
naming the rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = ["Match", "RuleError", "UrlRule", "UrlRules"]

DEFAULT_EVENT = "view"
_EVENT = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_TOKEN = re.compile(r"\{([^{}]*)\}|\*|[{}]")
_PLACEHOLDERS = {"id": r"(?P<id>[^/]+)", "format": r"(?P<format>[^/.]+)"}
_CACHE_MAX = 65_536


class RuleError(ValueError):
    """A URL rule that cannot be compiled; ``rule`` is its text, ``number`` its position."""

    def __init__(self, number: int, rule: str, problem: str) -> None:
        super().__init__(f"URL rule {number} ({rule!r}): {problem}")
        self.number = number
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Match:
    """What a path is about: the item, the event it counts as, and a format (or None)."""

    item_id: str
    event: str
    format: str | None = None


@dataclass(frozen=True, slots=True)
class UrlRule:
    """One compiled rule: its pattern text, its event, and the regex it compiled to."""

    pattern: str
    event: str
    regex: re.Pattern[str] = field(repr=False, compare=False)

    def match(self, path: str) -> Match | None:
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        groups = found.groupdict()
        item = groups.get("id")
        item = path if item is None else _decode(item)
        fmt = groups.get("format")
        if fmt is not None:
            fmt = _decode(fmt).lower().lstrip(".") or None
        return Match(item, self.event, fmt)


def _decode(value: str) -> str:
    return unquote(value) if "%" in value else value


def _compile(number: int, text: str) -> UrlRule:
    pattern, arrow, event = text.partition("->")
    pattern, event = pattern.strip(), event.strip()
    if arrow and not event:
        raise RuleError(number, text, "an event name must follow '->'")
    event = event or DEFAULT_EVENT
    if not _EVENT.fullmatch(event):
        raise RuleError(
            number,
            text,
            f"{event!r} is not an event name (1 to 64 letters, digits, '_', '-', '.' or ':')",
        )
    if not pattern.startswith("/"):
        raise RuleError(number, text, "a pattern is a URL path starting with '/'")
    if any(c.isspace() for c in pattern):
        raise RuleError(number, text, "a pattern may not contain spaces")
    parts: list[str] = []
    seen: set[str] = set()
    position = 0
    for token in _TOKEN.finditer(pattern):
        parts.append(re.escape(pattern[position : token.start()]))
        position = token.end()
        if token.group(0) == "*":
            parts.append(".*")
            continue
        name = token.group(1)
        if name is None:
            raise RuleError(number, text, f"unbalanced {token.group(0)!r}")
        if name not in _PLACEHOLDERS:
            raise RuleError(
                number, text, f"unknown placeholder {{{name}}} (known: {{id}}, {{format}})"
            )
        if name in seen:
            raise RuleError(number, text, f"{{{name}}} appears twice")
        seen.add(name)
        parts.append(_PLACEHOLDERS[name])
    parts.append(re.escape(pattern[position:]))
    return UrlRule(pattern, event, re.compile("".join(parts)))


@dataclass(frozen=True, slots=True)
class UrlRules:
    """An ordered list of URL rules; ``UrlRules()`` has none and matches nothing."""

    rules: tuple[UrlRule, ...] = ()
    _cache: dict[str, Match | None] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )

    @classmethod
    def parse(cls, text: str) -> UrlRules:
        """Rules from configuration text. Raises :class:`RuleError` naming the bad rule."""
        rules = []
        number = 0
        for line in text.splitlines():
            for piece in line.split("#", 1)[0].split(";"):
                piece = piece.strip()
                if not piece:
                    continue
                number += 1
                rules.append(_compile(number, piece))
        return cls(tuple(rules))

    def match(self, path: str) -> Match | None:
        """The first rule's match for a URL path (no query string), or None.

        Results are cached per path (paths repeat in real traffic); the cache is bounded.
        """
        cache = self._cache
        try:
            return cache[path]
        except KeyError:
            pass
        found = None
        for rule in self.rules:
            found = rule.match(path)
            if found is not None:
                break
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[path] = found
        return found

    def __bool__(self) -> bool:
        return bool(self.rules)
