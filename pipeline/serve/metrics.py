"""The service's Prometheus metrics, recorded by each replica through Ray's metrics API.

Ray's metrics agent on every node serves them, prefixed ``ray_``, on the node's metrics export port
(``GET /healthz`` names it; docs/serving.md has a scrape config) beside Ray Serve's own request
metrics. Label values are bounded: routes outside the API count as ``other``, and past
``MAX_CATEGORY_LABELS`` categories a replica counts further ones as ``other``, so clients naming
categories cannot grow the series without bound.
"""

from __future__ import annotations

import functools
from typing import Any

ROUTES = frozenset({"/", "/healthz", "/v1/inspect", "/v1/feedback"})
MAX_CATEGORY_LABELS = 64
LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32]


class ServiceMetrics:
    """One replica's metric objects (Ray aggregates the replicas' series by their tags)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter(
            "anomalygpt_serve_requests_total", "HTTP requests answered, by route and status code",
            tag_keys=("route", "code"),
        )  # fmt: skip
        self.latency = Histogram(
            "anomalygpt_serve_request_seconds", "Time from the request reaching the replica to its answer",
            boundaries=LATENCY_BOUNDARIES_S, tag_keys=("route",),
        )  # fmt: skip
        self.batch_size = Histogram(
            "anomalygpt_serve_batch_size",
            "Requests one model call took together",
            boundaries=BATCH_BOUNDARIES,
        )
        self.bank_cache = Counter(
            "anomalygpt_serve_bank_cache_total", "Memory banks served from the cache (hit) or built (miss)",
            tag_keys=("result",),
        )  # fmt: skip
        self.images = Counter(
            "anomalygpt_serve_images_total", "Images scored, by category and verdict (anomalous, normal)",
            tag_keys=("category", "verdict"),
        )  # fmt: skip
        self._categories: set[str] = set()

    def request(self, path: str, code: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        self.requests.inc(tags={"route": route, "code": str(code)})
        self.latency.observe(seconds, tags={"route": route})

    def batch(self, size: int, bank_hits: int, bank_misses: int) -> None:
        self.batch_size.observe(size)
        if bank_hits:
            self.bank_cache.inc(bank_hits, tags={"result": "hit"})
        if bank_misses:
            self.bank_cache.inc(bank_misses, tags={"result": "miss"})

    def scored(self, category: str, anomalous: bool | None) -> None:
        if category not in self._categories and len(self._categories) < MAX_CATEGORY_LABELS:
            self._categories.add(category)
        label = category if category in self._categories else "other"
        verdict = "unknown" if anomalous is None else ("anomalous" if anomalous else "normal")
        self.images.inc(tags={"category": label, "verdict": verdict})


@functools.cache
def service_metrics() -> ServiceMetrics:
    """This replica's metrics, made once at first use (Ray must be up in this process)."""
    return ServiceMetrics()


def metrics_address() -> dict[str, Any]:
    """Where this node's Prometheus metrics are scraped: its address and Ray's metrics export port."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            host, port = node["NodeManagerAddress"], node["MetricsExportPort"]
            return {"url": f"http://{host}:{port}/metrics", "prefix": "ray_anomalygpt_serve_"}
    return {"url": None, "prefix": "ray_anomalygpt_serve_"}
