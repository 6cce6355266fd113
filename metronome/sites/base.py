"""The interface every sites-and-keys registry implements (:mod:`.registry` opens one)."""

from __future__ import annotations

from typing import Protocol, Self

from metronome.errors import StoreUnavailable
from metronome.sites.model import Key, Site, Snapshot

__all__ = ["DuplicateSite", "Registry", "sites_gone"]


class DuplicateSite(ValueError):
    """A site with this id exists already."""


def sites_gone(what: str) -> StoreUnavailable:
    """The error of a registry whose sites existed and cannot be read now (``what``)."""
    return StoreUnavailable(
        f"sites were created here, but {what}: every request that needs a site is refused"
        " until the sites can be read again. Restore them (or the store), or go back to no"
        " sites, where anyone may send and read, with `metronome sites reset --confirm`"
    )


class Registry(Protocol):
    """Storage of sites and keys (each call is one small read or write).

    ``async with open_registry(settings) as registry:`` closes it after.
    """

    async def load(self) -> Snapshot:
        """Every site and key (revoked keys too).

        Fails closed: once a site has been created (a mark kept apart from the sites), a
        registry whose sites are gone or unreadable raises StoreUnavailable rather than
        answering "no sites", which would open the server to anyone."""
        ...

    async def add_site(self, site: Site) -> None:
        """Store a new site; DuplicateSite if its id is taken."""

    async def update_site(self, site: Site) -> None:
        """Replace a stored site's fields (its id and creation time stay)."""

    async def add_key(self, key: Key) -> None:
        """Store a new key (its hash, never its secret)."""

    async def revoke_key(self, key_id: str, when_ms: int) -> Key | None:
        """Mark a key revoked (once); the key as stored now, or None if there is none."""
        ...

    async def touch_keys(self, last_used: dict[str, int]) -> None:
        """Record when keys were last used (only ever moves forward)."""

    async def reset(self) -> None:
        """Delete every site and key and the mark that sites ever existed: back to the
        single-user default (``metronome sites reset --confirm``)."""

    async def close(self) -> None:
        """Release connections."""

    async def __aenter__(self) -> Self:
        """The registry itself (it connects on first use)."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """:meth:`close`."""
