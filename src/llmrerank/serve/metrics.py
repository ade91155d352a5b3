"""What ``GET /metrics`` shows, in Prometheus' text format (prometheus_client, one registry per app)."""

from __future__ import annotations

from typing import Any


class Metrics:
    """Requests by route and status, their latency, queue depth, batch sizes, documents and tokens scored."""

    def __init__(self) -> None:
        import prometheus_client as pc

        self._pc = pc
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.requests = pc.Counter("llmrerank_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = pc.Histogram(
            "llmrerank_request_seconds",
            "time to answer a request",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.batch_requests = pc.Histogram(
            "llmrerank_batch_requests",
            "requests merged into one model call",
            ["ranker"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.batch_documents = pc.Histogram(
            "llmrerank_batch_documents",
            "documents in one model call",
            ["ranker"],
            buckets=(1, 4, 16, 64, 256, 1024),
            registry=r,
        )
        self.batch_tokens = pc.Histogram(
            "llmrerank_batch_tokens",
            "estimated prompt tokens in one model call (the batching cost)",
            ["ranker"],
            buckets=(64, 256, 1024, 4096, 16384, 65536),
            registry=r,
        )
        self.documents = pc.Counter("llmrerank_documents_scored", "documents scored", ["ranker"], registry=r)
        self.tokens = pc.Counter("llmrerank_tokens_scored", "prompt tokens scored", ["ranker"], registry=r)
        self.cache_hits = pc.Counter(
            "llmrerank_score_cache_hits", "scores answered from the cache", ["ranker"], registry=r
        )
        self.cache_misses = pc.Counter(
            "llmrerank_score_cache_misses", "scores the cache did not hold", ["ranker"], registry=r
        )
        self.queue = pc.Gauge("llmrerank_queue_depth", "requests waiting for the model", ["ranker"], registry=r)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def batch(self, ranker: str, requests: int, documents: int, cost: int) -> None:
        self.batch_requests.labels(ranker=ranker).observe(requests)
        self.batch_documents.labels(ranker=ranker).observe(documents)
        self.batch_tokens.labels(ranker=ranker).observe(cost)

    def scored(self, ranker: str, documents: int, tokens: int) -> None:
        self.documents.labels(ranker=ranker).inc(documents)
        self.tokens.labels(ranker=ranker).inc(tokens)

    def cache(self, ranker: str, hits: int, misses: int) -> None:
        self.cache_hits.labels(ranker=ranker).inc(hits)
        self.cache_misses.labels(ranker=ranker).inc(misses)

    def watch(self, service: Any) -> None:
        """Read each ranker's queue depth when scraped."""
        for name, served in service.served.items():
            self.queue.labels(ranker=name).set_function(lambda s=served: s.batcher.queue_depth)

    def render(self) -> tuple[bytes, str]:
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
