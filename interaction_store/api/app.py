"""The HTTP service: ``create_app`` builds it, its lifespan opens the database and runs the
projector beside the API.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import psycopg
from fastapi import Depends, FastAPI, Request
from psycopg_pool import ConnectionPool

from interaction_store import db
from interaction_store.api.metrics import Metrics
from interaction_store.api.problems import JSON, Problem, install_problem_handlers
from interaction_store.keys import ApiKey, verify_key
from interaction_store.policy import ServiceLevels
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.settings import Settings
from interaction_store.store import Store

__all__ = ["Service", "create_app", "require"]

log = logging.getLogger(__name__)

#: How long a verified (or refused) API key is remembered.
KEY_CACHE_SECONDS = 5.0


@dataclass
class Service:
    """What the request handlers share: the store, the settings, the projector."""

    settings: Settings
    store: Store
    service_levels: ServiceLevels
    runner: ProjectionRunner | None = None
    _keys: dict[str, tuple[ApiKey | None, float]] = field(default_factory=dict)

    def verify(self, token: str) -> ApiKey | None:
        """The key's record, remembered for ``KEY_CACHE_SECONDS`` (a revocation takes
        effect within that time in a running server)."""
        now = time.monotonic()
        cached = self._keys.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        key = verify_key(self.pool, token)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[token] = (key, now + KEY_CACHE_SECONDS)
        return key

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        return self.store.pool

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self.store.pool.connection() as conn:
            yield conn


def service(request: Request) -> Service:
    found: Service = request.app.state.service
    return found


def require(scope: str) -> Callable[..., ApiKey]:
    """A dependency: the request's API key, which must carry ``scope`` (or ``admin``)."""

    def check(request: Request, svc: Annotated[Service, Depends(service)]) -> ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="interaction-store"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401,
                "Unauthorized",
                "send an API key: Authorization: Bearer isk_...",
                headers=challenge,
            )
        key = svc.verify(token.strip())
        if key is None:
            raise Problem(
                401, "Unauthorized", "the API key is unknown or revoked", headers=challenge
            )
        if not key.allows(scope):
            raise Problem(403, "Forbidden", f"this API key lacks the scope {scope}")
        return key

    return check


def create_app(
    settings: Settings | None = None,
    *,
    pool: ConnectionPool[psycopg.Connection[Any]] | None = None,
    projector: bool = True,
) -> FastAPI:
    """The service. Without ``pool`` its lifespan opens one (on the embedded server when no
    database URL is set) and closes it; a pool handed in is never closed. With
    ``projector`` the projections run in a thread beside the API."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with contextlib.ExitStack() as stack:
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
            svc = Service(settings, store, settings.service_levels())
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
    install_problem_handlers(app)
    metrics = Metrics()
    metrics.install(app, lambda: getattr(app.state, "service", None))
    app.state.metrics = metrics
    from interaction_store.api import routes

    app.include_router(routes.router)
    return app


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
