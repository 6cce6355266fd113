"""Reading Elasticsearch mappings: the dotted names of the fields they map."""

from __future__ import annotations

from typing import Any

__all__ = ["leaf_fields"]


def leaf_fields(properties: dict[str, Any], prefix: str = "") -> set[str]:
    """Every mapped leaf field (and multi-field) under ``properties``, as a dotted path."""
    found: set[str] = set()
    for name, spec in properties.items():
        path = prefix + name
        if "properties" in spec and spec.get("type", "object") == "object":
            found |= leaf_fields(spec["properties"], path + ".")
        else:
            found.add(path)
        for sub in spec.get("fields", {}):
            found.add(f"{path}.{sub}")
    return found
