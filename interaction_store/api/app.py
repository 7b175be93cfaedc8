"""The HTTP service: ``create_app`` builds it, its lifespan opens the database and runs the
projector beside the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from pydantic import TypeAdapter

from interaction_store import db
from interaction_store.api.metrics import Metrics
from interaction_store.api.models import ProblemDetails
from interaction_store.api.problems import JSON, install_problem_handlers
from interaction_store.audit import checkpoints
from interaction_store.audit.access import AccessLog
from interaction_store.audit.signing import (
    PublicKey,
    SigningKey,
    public_key_from_settings,
    signing_key_from_settings,
)
from interaction_store.events import Event
from interaction_store.keys import ApiKey, verify_key
from interaction_store.policy import ServiceLevels
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.settings import Settings
from interaction_store.store import Store

__all__ = ["Service", "create_app"]

log = logging.getLogger(__name__)

#: How long a verified (or refused) API key is remembered.
KEY_CACHE_SECONDS = 5.0


@dataclass
class Service:
    """What the request handlers share: the store (and its pool), the async pool of the hot
    reads, the settings and the projector."""

    settings: Settings
    store: Store
    reads: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    service_levels: ServiceLevels
    runner: ProjectionRunner | None = None
    #: The key that signs checkpoints (None: this service does not seal).
    signing_key: SigningKey | None = None
    #: The key checkpoints verify with.
    public_key: PublicKey | None = None
    #: Who read which customer (set by the lifespan).
    access: AccessLog | None = None
    #: How long a verified (or refused) API key is remembered: a revocation takes effect
    #: within this long, in open live timelines too.
    key_cache_seconds: float = KEY_CACHE_SECONDS
    #: Turns to read a routing context (``context_reads_at_once``): its query is heavy for
    #: PostgreSQL, and more of them at once than its cores run only queue there, taking
    #: the service's own core from it, so every answer waits longer (see README).
    context_slots: asyncio.Semaphore = field(init=False)
    _keys: dict[str, tuple[ApiKey | None, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.context_slots = asyncio.Semaphore(self.settings.context_reads_at_once)

    def remembered_key(self, token: str) -> ApiKey | Literal[False] | None:
        """The key's record if it was verified (or refused: None) in the last
        ``key_cache_seconds``; False when it must be looked up (``verify``)."""
        cached = self._keys.get(token)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return False

    def verify(self, token: str) -> ApiKey | None:
        """Look the key up and remember the answer (a revocation takes effect within
        ``key_cache_seconds`` in a running server)."""
        key = verify_key(self.pool, token)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[token] = (key, time.monotonic() + self.key_cache_seconds)
        return key

    def accessed(self, key: ApiKey, customer_id: str, endpoint: str) -> None:
        """Record that ``key`` read ``customer_id`` through ``endpoint``."""
        if self.access is not None:
            self.access.record(key, customer_id, endpoint)

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        return self.store.pool

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the store's pool, waiting at most ``timeout`` seconds for one
        (by default the pool's 30 s)."""
        with self.store.pool.connection(timeout=timeout) as conn:
            yield conn


def create_app(
    settings: Settings | None = None,
    *,
    pool: ConnectionPool[psycopg.Connection[Any]] | None = None,
    projector: bool = True,
    sealer: bool | None = None,
) -> FastAPI:
    """The service. Without ``pool`` its lifespan opens one (on the embedded server when no
    database URL is set) and closes it; a pool handed in is never closed. The hot reads
    (lookup, context, timeline) get an async pool of their own on the same database. With
    ``projector`` the projections run in a thread beside the API; with ``sealer`` (by
    default, when the projector runs) a thread seals the log every
    ``audit_seal_interval`` seconds, when a signing key is configured (or the embedded
    default's)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything opened is closed, in reverse, however far the start got.
        async with contextlib.AsyncExitStack() as stack:
            own = pool
            if own is None:
                url = stack.enter_context(db.database_url(settings))
                db.migrate(url)
                own = db.open_pool(
                    url, min_size=settings.pool_min_size, max_size=settings.pool_max_size
                )
                stack.callback(own.close)
            store = Store.from_settings(own, settings)
            stack.callback(store.close)
            reads = await db.open_async_pool(
                store.conninfo, min_size=settings.pool_min_size, max_size=settings.pool_max_size
            )
            stack.push_async_callback(reads.close)
            svc = Service(settings, store, reads, settings.service_levels())
            svc.access = AccessLog(own)
            svc.access.start()
            stack.callback(svc.access.close)
            svc.signing_key = signing_key_from_settings(settings)
            svc.public_key = public_key_from_settings(settings)
            if projector if sealer is None else sealer:
                stack.callback(_start_sealer(svc))
            if projector:
                svc.runner = ProjectionRunner(store, all_projections())
                thread = threading.Thread(target=_project, args=(svc.runner,), daemon=True)
                thread.start()

                def stop(runner: ProjectionRunner = svc.runner) -> None:
                    runner.stop()
                    thread.join(timeout=10)

                stack.callback(stop)
            app.state.service = svc
            yield

    app = FastAPI(
        title="interaction-store",
        version="1",
        summary="One cross-channel record of every customer interaction.",
        default_response_class=JSON,
        lifespan=lifespan,
    )
    from interaction_store.api.hot import HotLane

    # Innermost of the service's middleware, so that the metrics and the last resort
    # wrap the requests it answers too.
    app.add_middleware(HotLane, service=lambda: getattr(app.state, "service", None))
    install_problem_handlers(app)
    metrics = Metrics()
    metrics.install(app, lambda: getattr(app.state, "service", None))
    app.state.metrics = metrics
    from interaction_store.api import routes

    app.include_router(routes.router)
    if settings.email_connector:
        from interaction_store.api.routes import connectors

        app.include_router(connectors.router, dependencies=routes.router.dependencies)
    if settings.twilio_auth_token is not None:
        from interaction_store.api.routes import twilio

        app.include_router(twilio.router)
    if settings.chatwoot_secret is not None:
        from interaction_store.api.routes import chatwoot

        app.include_router(chatwoot.router)
    if settings.x_consumer_secret is not None:
        from interaction_store.api.routes import x

        app.include_router(x.router)
    _document_append_bodies(app)
    return app


def _document_append_bodies(app: FastAPI) -> None:
    """Put the append request bodies, with every event type's schema, and the problem
    details in the OpenAPI document (the handlers read their bodies themselves, and
    problems are answered by exception handlers, so FastAPI cannot know either)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            events = TypeAdapter(list[Event]).json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas.update(events.pop("$defs"))
            problem = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem.pop("$defs", {}))
            schemas["ProblemDetails"] = problem
            batch = {**events, "minItems": 1}
            schemas["AppendRequest"] = {
                "type": "object",
                "required": ["events"],
                "properties": {"events": batch},
            }
            schemas["StreamAppendRequest"] = {
                "type": "object",
                "required": ["events"],
                "properties": {
                    "events": batch,
                    "expected_version": {
                        "description": "any (default), no_stream, or the exact version",
                        "anyOf": [
                            {"enum": ["any", "no_stream"]},
                            {"type": "integer", "minimum": 0},
                        ],
                    },
                },
            }
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _start_sealer(svc: Service) -> Callable[[], None]:
    """Seal the log every ``audit_seal_interval`` seconds in a thread; the stop function."""
    stop = threading.Event()
    key = svc.signing_key
    if key is None:
        log.warning(
            "not sealing the log: set INTERACTION_STORE_AUDIT_SIGNING_KEY"
            " (interaction-store audit keygen makes one)"
        )
        return stop.set

    def run() -> None:
        while not stop.wait(svc.settings.audit_seal_interval):
            try:
                with svc.store.pool.connection() as conn:
                    checkpoints.seal(conn, key)
            except Exception:
                log.exception("sealing failed; trying again in the next interval")

    thread = threading.Thread(target=run, name="sealer", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=10)

    return halt


def _project(runner: ProjectionRunner) -> None:
    """Run the projector until stopped; a failure is logged and the loop starts again."""
    while True:
        try:
            runner.run()
            return
        except Exception:
            log.exception("projector failed; restarting in 1 s")
            if runner.stopped(wait=1.0):
                return
