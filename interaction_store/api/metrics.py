"""Prometheus metrics: request latency, appends, projection lag, dead letters.

Each app has its own registry, so several apps (tests) never share counters. Lag and dead
letters are read from the database when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from interaction_store.api.app import Service

__all__ = ["Metrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "interaction_store_http_request_seconds",
            "HTTP request latency by route, method and status.",
            ["route", "method", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.appended = Counter(
            "interaction_store_events_appended",
            "Events appended over HTTP (already_present: retries that wrote nothing).",
            ["outcome"],
            registry=self.registry,
        )

    def install(self, app: FastAPI, service: Callable[[], Service | None]) -> None:
        self.registry.register(_ViewsCollector(service))

        @app.middleware("http")
        async def timed(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            began = time.perf_counter()
            response = await call_next(request)
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.requests.labels(path, request.method, str(response.status_code)).observe(
                time.perf_counter() - began
            )
            return response

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ViewsCollector(Collector):
    """Projection lag and dead letters, read when scraped."""

    def __init__(self, service: Callable[[], Service | None]) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service()
        if svc is None:
            return
        events = GaugeMetricFamily(
            "interaction_store_projection_lag_events",
            "Events in the log a projection has not applied yet.",
            labels=["projection"],
        )
        seconds = GaugeMetricFamily(
            "interaction_store_projection_lag_seconds",
            "Age of the oldest event a projection has not applied yet.",
            labels=["projection"],
        )
        letters = GaugeMetricFamily(
            "interaction_store_dead_letters",
            "Parked events not yet retried or skipped.",
            labels=["projection"],
        )
        runner = svc.runner
        if runner is not None:
            for lag in runner.lag():
                events.add_metric([lag.projection], lag.events)
                seconds.add_metric([lag.projection], lag.seconds)
        with svc.connection() as conn:
            for projection, count in conn.execute(
                "SELECT projection, count(*) FROM dead_letters WHERE resolution IS NULL"
                " GROUP BY projection"
            ):
                letters.add_metric([projection], count)
        yield events
        yield seconds
        yield letters
