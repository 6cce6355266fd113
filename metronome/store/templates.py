"""Index templates from ``index_templates/``, adapted to the configured prefix and sizes.

Files are named after the template with the default prefix ``metronome``; installing with
another prefix renames them and their index patterns. Each body carries
``_meta.metronome_hash``, a digest of the body itself, so an install can tell whether the
installed template is current without comparing Elasticsearch's normalised copy.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import orjson

from metronome.config import Settings

__all__ = ["Template", "app_template", "load_templates", "mapped_fields", "templates_dir"]

DEFAULT_PREFIX = "metronome"


@dataclass(frozen=True, slots=True)
class Template:
    kind: Literal["component", "index"]
    name: str
    body: dict[str, Any]

    @property
    def digest(self) -> str:
        return str(self.body["_meta"]["metronome_hash"])


def templates_dir() -> Path:
    """``metronome/index_templates/``, package data (a directory: its files are globbed)."""
    root = resources.files("metronome") / "index_templates"
    if not isinstance(root, Path):  # only a zipped install gives anything else
        raise FileNotFoundError(f"index_templates/ must be files on disk, not in {root}")
    return root


def _flatten(properties: dict[str, Any], prefix: str, out: dict[str, str]) -> None:
    for name, mapping in properties.items():
        path = f"{prefix}{name}"
        if "properties" in mapping:
            _flatten(mapping["properties"], path + ".", out)
        elif "type" in mapping and mapping["type"] != "object":
            out[path] = mapping["type"]


def mapped_fields(directory: Path | None = None) -> dict[str, dict[str, str]]:
    """Per dataset (``ticks``, ``logs``): every field the index templates map, with its
    Elasticsearch type (``params.*`` and other objects are left out)."""
    root = directory or templates_dir()
    components: dict[str, dict[str, str]] = {}
    for path in sorted((root / "component").glob("*.json")):
        mappings = orjson.loads(path.read_bytes()).get("template", {}).get("mappings", {})
        flat: dict[str, str] = {}
        _flatten(mappings.get("properties", {}), "", flat)
        components[path.stem] = flat
    result: dict[str, dict[str, str]] = {}
    for path in sorted((root / "index").glob("*.json")):
        body = orjson.loads(path.read_bytes())
        fields: dict[str, str] = {}
        for name in body.get("composed_of", []):
            fields.update(components.get(name, {}))
        result[path.stem.removeprefix("metronome-")] = fields
    return result


def _rename(name: str, prefix: str) -> str:
    if not name.startswith(DEFAULT_PREFIX):
        raise ValueError(f"template {name!r} must start with {DEFAULT_PREFIX!r}")
    return prefix + name[len(DEFAULT_PREFIX) :]


def _apply_settings(body: dict[str, Any], settings: Settings) -> None:
    index = body.get("template", {}).get("settings", {}).get("index")
    if index is None:
        return
    index["number_of_shards"] = settings.index_shards
    index["number_of_replicas"] = settings.index_replicas
    index["mapping"]["total_fields"]["limit"] = settings.index_fields_limit


# what OpenSearch (2.x) lacks of the templates' Elasticsearch 8 features, left out there
_NOT_IN_OPENSEARCH = ("subobjects", "ignore_dynamic_beyond_limit")


def _for_opensearch(node: Any) -> None:
    """The one definition, compiled for OpenSearch: ``subobjects: false`` (free parameters
    with dots in their names stay one field) and ``ignore_dynamic_beyond_limit`` (fields
    past the limit are kept unindexed) do not exist there, so they are removed; on
    OpenSearch a parameter named both ``a`` and ``a.b``, or one field past the limit, is
    refused (dead-lettered) rather than kept."""
    if isinstance(node, dict):
        for key in _NOT_IN_OPENSEARCH:
            node.pop(key, None)
        for value in node.values():
            _for_opensearch(value)
    elif isinstance(node, list):
        for value in node:
            _for_opensearch(value)


def load_templates(settings: Settings, directory: Path | None = None) -> list[Template]:
    """Component templates first (index templates need them), each ready to PUT."""
    root = directory or templates_dir()
    prefix = settings.index_prefix
    result: list[Template] = []
    for kind in ("component", "index"):
        for path in sorted((root / kind).glob("*.json")):
            body = copy.deepcopy(orjson.loads(path.read_bytes()))
            if kind == "index":
                body["index_patterns"] = [_rename(p, prefix) for p in body["index_patterns"]]
                body["composed_of"] = [_rename(c, prefix) for c in body["composed_of"]]
            else:
                _apply_settings(body, settings)
            if settings.search_engine == "opensearch":
                _for_opensearch(body)
            body.setdefault("_meta", {}).pop("metronome_hash", None)
            digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
            body["_meta"]["metronome_hash"] = digest.hexdigest()[:16]
            result.append(Template(kind, _rename(path.stem, prefix), body))
    return result


def _count_mappers(properties: dict[str, Any]) -> int:
    """Field mappers Elasticsearch counts against ``total_fields``: objects, leaves and
    their multi-fields."""
    count = 0
    for mapping in properties.values():
        count += 1 + len(mapping.get("fields", {}))
        count += _count_mappers(mapping.get("properties", {}))
    return count


def app_template(settings: Settings, dataset: str, app: str, max_names: int) -> Template:
    """An index template for one app's daily indices of ``dataset`` (``metrics``): the
    dataset's own, with room for ``max_names`` dynamic names (``tags.*``, ``fields.*``)
    past the fixed fields; further names stay in ``_source``, unindexed. Its priority
    grows with the id's length, so ``longhorn-x``'s wins over ``longhorn``'s on
    ``metrics-longhorn-x-*``."""
    templates = {t.name: t for t in load_templates(settings)}
    base = templates[f"{settings.index_prefix}-{dataset}"]
    fixed = 0
    for name in base.body["composed_of"]:
        mappings = templates[name].body.get("template", {}).get("mappings", {})
        fixed += _count_mappers(mappings.get("properties", {}))
    body = copy.deepcopy(base.body)
    body["index_patterns"] = [f"{settings.index_prefix}-{dataset}-{app}-*"]
    body["priority"] = int(body.get("priority", 200)) + 1 + len(app)
    body["template"] = {
        "settings": {"index": {"mapping": {"total_fields": {"limit": fixed + max_names}}}}
    }
    body["_meta"] = {"description": f"app {app}: at most {max_names} indexed dynamic names"}
    return Template("index", f"{settings.index_prefix}-{dataset}-app-{app}", body)
