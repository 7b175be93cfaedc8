"""Health for operators: the process is up, the service is ready, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from interaction_store.api.app import Service
from interaction_store.api.deps import Svc
from interaction_store.api.metrics import PROBE_SECONDS
from interaction_store.api.models import Health, Readiness
from interaction_store.api.problems import JSON, Problem

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> JSON:
    """The process is up (nothing else is asked: the cheapest request the app serves)."""
    return JSON({"status": "ok"})


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(svc: Svc) -> JSON:
    """The database answers and the projector keeps up (503 when either fails)."""
    return await run_in_threadpool(_readiness, svc)


def _readiness(svc: Service) -> JSON:
    try:
        with svc.connection(timeout=PROBE_SECONDS) as conn:
            conn.execute("SELECT 1")
    except Exception:
        raise Problem(503, "Not ready", "the database does not answer") from None
    runner = svc.runner
    if runner is None:
        return JSON({"status": "ready", "projector": "not run by this process"})
    stalled = {lag.projection for lag in runner.stalled(after=60.0)}
    body: dict[str, Any] = {
        "status": "stalled" if stalled else "ready",
        "projections": {
            lag.projection: {
                "position": lag.position,
                "behind_events": lag.events,
                "behind_seconds": round(lag.seconds, 3),
            }
            for lag in runner.lag()
        },
    }
    return JSON(body, status_code=503 if stalled else 200)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
