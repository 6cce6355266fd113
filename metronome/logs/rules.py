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
``{id}`` makes the matched path itself the item.

**Rules apply to successful responses only**: status 2xx, and 304 (the browser's copy was
still good: a view all the same). A ``404`` for ``/datasets/roads`` is not a view of
``roads``, nor is a ``500`` or a redirect to a login page. A rule says otherwise with a
last word ``status=`` and a comma-separated list of codes (``404``), classes (``4xx``),
ranges (``400-403``) or ``any``::

    /datasets/{id} -> missing status=404
    /go/{id} -> click status=3xx

Rules are tried in order; the first whose pattern matches the path and that takes the
response's status wins. ``#`` starts a comment (it cannot appear in a path: browsers never
send the fragment); blank lines are ignored; anything else that is not a valid rule is an
error naming the rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = ["DEFAULT_STATUSES", "Match", "RuleError", "UrlRule", "UrlRules", "parse_statuses"]

DEFAULT_EVENT = "view"
_ALL_STATUSES = frozenset(range(1000))
DEFAULT_STATUSES = frozenset(range(200, 300)) | {304}
"""The responses a rule without ``status=`` applies to: 2xx, and 304 Not Modified."""
_STATUS_WORD = re.compile(r"\s+status=(\S*)\s*$")
_STATUS_ITEM = re.compile(r"([1-5])xx|([1-5]\d\d)(?:-([1-5]\d\d))?|any|\*")
_EVENT = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_TOKEN = re.compile(r"\{([^{}]*)\}|\*|[{}]")
_PLACEHOLDERS = {"id": r"(?P<id>[^/]+)", "format": r"(?P<format>[^/.]+)"}
_CACHE_MAX = 65_536
_MAX_CACHED_PATH_CHARS = 2048


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


def parse_statuses(text: str) -> frozenset[int]:
    """The statuses of a ``status=`` list (``404``, ``4xx``, ``400-403``, ``any``, comma
    separated); ValueError says which part is wrong."""
    statuses: set[int] = set()
    for part in text.split(","):
        found = _STATUS_ITEM.fullmatch(part.strip().lower())
        if found is None:
            raise ValueError(
                f"{part.strip()!r} is not a status: give codes (404), classes (4xx),"
                " ranges (400-403) or any, separated by commas"
            )
        klass, first, last = found.groups()
        if klass is not None:
            statuses.update(range(int(klass) * 100, int(klass) * 100 + 100))
        elif first is not None:
            if last is not None and int(last) < int(first):
                raise ValueError(f"{part.strip()!r}: a range goes from low to high")
            statuses.update(range(int(first), int(last or first) + 1))
        else:
            return _ALL_STATUSES
    return frozenset(statuses)


@dataclass(frozen=True, slots=True)
class UrlRule:
    """One compiled rule: its pattern text, its event, the regex it compiled to, and the
    response statuses it applies to."""

    pattern: str
    event: str
    regex: re.Pattern[str] = field(repr=False, compare=False)
    statuses: frozenset[int] = field(default=DEFAULT_STATUSES, repr=False)

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
    statuses = DEFAULT_STATUSES
    word = _STATUS_WORD.search(text)
    rule = text
    if word is not None:
        try:
            statuses = parse_statuses(word.group(1))
        except ValueError as exc:
            raise RuleError(number, text, str(exc)) from None
        rule = text[: word.start()]
    pattern, arrow, event = rule.partition("->")
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
    return UrlRule(pattern, event, re.compile("".join(parts)), statuses)


@dataclass(frozen=True, slots=True)
class UrlRules:
    """An ordered list of URL rules; ``UrlRules()`` has none and matches nothing."""

    rules: tuple[UrlRule, ...] = ()
    _cache: dict[object, Match | None] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )
    like_200: frozenset[int] = field(init=False, repr=False, compare=False, hash=False)
    """The statuses every rule treats as it treats 200: a line with one of them is
    matched on its path alone (what :mod:`metronome.logs.parse` caches per target)."""
    _kinds: dict[int, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        kinds: dict[tuple[bool, ...], int] = {}
        kind_of: dict[int, int] = {}
        for status in range(1000):
            takes = tuple(status in rule.statuses for rule in self.rules)
            kind_of[status] = kinds.setdefault(takes, len(kinds))
        object.__setattr__(self, "_kinds", kind_of)
        object.__setattr__(
            self, "like_200", frozenset(s for s, k in kind_of.items() if k == kind_of[200])
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

    def match(self, path: str, status: int = 200) -> Match | None:
        """The match of the first rule that matches a URL path (no query string) and
        takes the response's ``status``, or None.

        Results are cached per path and kind of status (paths repeat in real traffic);
        the cache is bounded in entries and keeps no path longer than 2,048 characters.
        """
        cache = self._cache
        kind = self._kinds.get(status, -1)
        key: object = path if status in self.like_200 else (path, kind)
        try:
            return cache[key]
        except KeyError:
            pass
        found = None
        for rule in self.rules:
            if status not in rule.statuses:
                continue
            found = rule.match(path)
            if found is not None:
                break
        if len(path) > _MAX_CACHED_PATH_CHARS:  # a long path is matched each time, not kept
            return found
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = found
        return found

    def __bool__(self) -> bool:
        return bool(self.rules)
