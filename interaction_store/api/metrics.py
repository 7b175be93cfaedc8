"""Prometheus metrics: request latency, appends, projection lag, dead letters.

Each app has its own registry, so several apps (tests) never share counters. Lag and dead
letters are read from the database when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import psycopg
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from interaction_store.api.app import Service

#: How long /readyz and /metrics wait for the database: a probe or a scrape that hangs
#: for the pool's 30 s when the database is down answers too late to tell anyone.
PROBE_SECONDS = 2.0

__all__ = ["PROBE_SECONDS", "Metrics"]

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

        app.add_middleware(_Timed, histogram=self.requests)

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
        up = GaugeMetricFamily(
            "interaction_store_database_up",
            "Whether the database answered this scrape (1) or not (0: no lag or dead letters).",
        )
        try:
            with svc.connection(timeout=PROBE_SECONDS) as conn:
                for projection, count in conn.execute(
                    "SELECT projection, count(*) FROM dead_letters WHERE resolution IS NULL"
                    " GROUP BY projection"
                ):
                    letters.add_metric([projection], count)
            runner = svc.runner
            if runner is not None:
                for lag in runner.lag():
                    events.add_metric([lag.projection], lag.events)
                    seconds.add_metric([lag.projection], lag.seconds)
        except (psycopg.Error, PoolTimeout):  # the request metrics are still answered
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield events
        yield seconds
        yield letters


class _Timed:
    """Request latency by route, method and status, as plain ASGI middleware (the
    decorator kind runs each request in a task of its own, which costs more than a read)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.histogram.labels(path, scope["method"], str(status)).observe(
                time.perf_counter() - began
            )
