"""A three-node Elasticsearch cluster on loopback: three processes of the test distribution.

Each node is master-eligible and holds data, with a small heap; they find each other
through their transport ports. Nodes can be killed (SIGKILL), stopped and started again
with their data, as a host that crashes or is restarted would be.
"""

from __future__ import annotations

import time
import uuid

import httpx

from tests.support.es_server import ElasticsearchServer

__all__ = ["ElasticsearchCluster"]


class ElasticsearchCluster:
    def __init__(self, nodes: int = 3, heap: str = "384m") -> None:
        self.nodes = [ElasticsearchServer(heap=heap) for _ in range(nodes)]
        names = [f"node-{i}" for i in range(nodes)]
        seeds = ",".join(f"127.0.0.1:{n.transport_port}" for n in self.nodes)
        cluster = f"metronome-test-{uuid.uuid4().hex[:8]}"
        for name, node in zip(names, self.nodes, strict=True):
            node.node_settings = (
                f"cluster.name={cluster}",
                f"node.name={name}",
                f"discovery.seed_hosts={seeds}",
                f"cluster.initial_master_nodes={','.join(names)}",
            )

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def health(self, via: int | None = None, wait_for: str | None = None) -> str:
        """The cluster's status (green, yellow, red) as a live node sees it."""
        candidates = [self.nodes[via]] if via is not None else self.nodes
        for node in candidates:
            params = {"timeout": "1s"}
            if wait_for:
                params["wait_for_status"] = wait_for
            try:
                resp = httpx.get(f"{node.url}/_cluster/health", params=params, timeout=10)
                return str(resp.json()["status"])
            except (httpx.HTTPError, KeyError, ValueError):
                continue
        return "unreachable"

    def wait_for(self, status: str, timeout_s: float = 240, nodes: int | None = None) -> float:
        """Wait until the cluster is at least ``status`` (with ``nodes`` nodes, if given);
        the seconds it took."""
        order = ["red", "yellow", "green"]
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            for node in self.nodes:
                try:
                    resp = httpx.get(
                        f"{node.url}/_cluster/health",
                        params={"wait_for_status": status, "timeout": "2s"},
                        timeout=10,
                    ).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if resp.get("status") in order[order.index(status) :] and (
                    nodes is None or resp.get("number_of_nodes") == nodes
                ):
                    return time.monotonic() - started
            time.sleep(0.5)
        tails = "\n".join(n.log_tail(10) for n in self.nodes)
        raise RuntimeError(f"the cluster is not {status} after {timeout_s:.0f}s:\n{tails}")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
