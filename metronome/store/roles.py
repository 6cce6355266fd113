"""The least privileges Metronome needs on a secured Elasticsearch cluster, as role definitions.

Four roles, each the body of ``PUT _security/role/<name>`` (``metronome elasticsearch
role`` prints them for the configured index prefix):

- ``read``: reports, ``/tock``, ``/query`` and live views read the daily indices and the
  sites; ``monitor`` lets ``/readyz`` read the cluster's health and the installed
  templates (it grants no writes).
- ``serve``: the API processes (``metronome serve --no-shipper``): ``read``, and writing
  keys' last use into the sites index.
- ``ship``: the shipper (``metronome worker``, or the one ``metronome serve`` starts):
  creates documents (``create_doc``: never overwrites) and the daily indices they go to,
  deletes whole old indices and single documents (retention, ``metronome forget``).
- ``setup``: an administrator's, for ``metronome templates install`` and ``metronome
  sites create``: index and component templates, the sites indices, and adding new
  fields to existing indices after an upgrade.

The related items' basket cells (``<prefix>-related``, store/es_related.py) are read by
``read`` and ``serve``, and kept by ``ship``, which updates them in place (``index``,
``delete``: only there).

``metronome serve`` with its shipper needs ``serve`` and ``ship``; nothing needs
``all``, ``manage`` on the cluster or ``write`` (which allows overwriting) on the data.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ROLE_NAMES", "roles"]

ROLE_NAMES = ("read", "serve", "ship", "setup")
_DATASETS = ("ticks", "logs", "metrics")


def roles(prefix: str) -> dict[str, dict[str, Any]]:
    """Role definitions by name (``<prefix>-read`` ...) for the index ``prefix``."""
    data = [f"{prefix}-{dataset}-*" for dataset in _DATASETS]
    sites = [f"{prefix}-sites", f"{prefix}-sites-created"]
    related = [f"{prefix}-related"]  # related items' basket cells (store/es_related.py)
    reading = [
        {"names": data, "privileges": ["read", "view_index_metadata"]},
        {"names": sites, "privileges": ["read"]},
        {"names": related, "privileges": ["read", "view_index_metadata"]},
    ]
    return {
        f"{prefix}-read": {"cluster": ["monitor"], "indices": reading},
        f"{prefix}-serve": {
            "cluster": ["monitor"],
            "indices": [
                {"names": data, "privileges": ["read", "view_index_metadata"]},
                {"names": sites, "privileges": ["read", "index"]},
                {"names": related, "privileges": ["read", "view_index_metadata"]},
            ],
        },
        f"{prefix}-ship": {
            "cluster": ["monitor"],
            "indices": [
                {
                    "names": data,
                    "privileges": [
                        "create_doc",
                        "create_index",
                        "read",
                        "view_index_metadata",
                        "monitor",
                        "delete",
                        "delete_index",
                    ],
                },
                {"names": sites, "privileges": ["read"]},
                {
                    # cells are updated in place: a script adds or removes event ids
                    "names": related,
                    "privileges": [
                        "create_index",
                        "read",
                        "view_index_metadata",
                        "index",
                        "delete",
                    ],
                },
            ],
        },
        f"{prefix}-setup": {
            "cluster": ["monitor", "manage_index_templates"],
            "indices": [
                {"names": data, "privileges": ["manage", "read"]},
                {"names": sites, "privileges": ["manage", "read", "write"]},
                {"names": related, "privileges": ["manage", "read", "write"]},
            ],
        },
    }
