"""Connecting to PostgreSQL: which server, connection pools, migrations, and a ready store."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from interaction_store.embedded import embedded_database
from interaction_store.exceptions import ConfigurationError, DatabaseError
from interaction_store.settings import Settings
from interaction_store.store import Store

__all__ = [
    "configure_connection",
    "current_revision",
    "database_url",
    "downgrade",
    "has_schema",
    "migrate",
    "migrations_dir",
    "open_async_pool",
    "open_pool",
    "open_store",
]


def configure_connection(conn: psycopg.Connection[Any]) -> None:
    """Per-connection setup: fast JSON decoding, and generic plans for prepared statements.

    The store's queries are all driven by unique or ordered indexes, so one plan serves
    every parameter; re-planning the append statement for each call costs more than
    running it.
    """
    set_json_loads(orjson.loads, conn)
    conn.execute("SET plan_cache_mode = force_generic_plan")


def open_pool(
    conninfo: str, *, min_size: int = 1, max_size: int = 10
) -> ConnectionPool[psycopg.Connection[Any]]:
    """An opened pool of autocommit connections (the store opens transactions itself)."""
    pool = ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True},
        configure=configure_connection,
        name="interaction-store",
        open=False,
    )
    try:
        pool.open(wait=True, timeout=30)
    except Exception as exc:
        pool.close()
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc
    return pool


async def _configure_async_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """``configure_connection`` for async connections."""
    set_json_loads(orjson.loads, conn)
    await conn.execute("SET plan_cache_mode = force_generic_plan")


async def open_async_pool(
    conninfo: str, *, min_size: int = 1, max_size: int = 10
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """An opened pool of async autocommit connections, for reads served on the event loop."""
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True},
        configure=_configure_async_connection,
        name="interaction-store-reads",
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=30)
    except Exception as exc:
        await pool.close()
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc
    return pool


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """Yield the URL to use: the configured one, or an embedded server's while the block runs."""
    if settings.database_url:
        yield settings.database_url
        return
    with embedded_database(settings.data_dir) as url:
        yield url


def migrations_dir() -> Path:
    """The alembic scripts: beside the package in a checkout, inside it in a wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "migrations", package / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise ConfigurationError("the migrations folder is missing from this installation")


def _alembic_config(conninfo: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["conninfo"] = conninfo
    return config


def migrate(conninfo: str, revision: str = "head") -> None:
    """Upgrade the database's schema to ``revision``."""
    command.upgrade(_alembic_config(conninfo), revision)


def downgrade(conninfo: str, revision: str = "base") -> None:
    """Downgrade the database's schema to ``revision``."""
    command.downgrade(_alembic_config(conninfo), revision)


def current_revision(conninfo: str) -> str | None:
    """The schema revision the database is at, or None before the first migration."""
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=NullPool
    )
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def has_schema(pool: ConnectionPool[psycopg.Connection[Any]]) -> bool:
    """Whether the database has been migrated (it has the events table)."""
    with pool.connection() as conn:
        row = conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone()
    return bool(row and row[0])


@contextlib.contextmanager
def open_store(settings: Settings, *, migrate_schema: bool = False) -> Iterator[Store]:
    """A ready ``Store`` on the configured database (embedded by default), closed on exit."""
    with database_url(settings) as url:
        if migrate_schema:
            migrate(url)
        pool = open_pool(url, min_size=settings.pool_min_size, max_size=settings.pool_max_size)
        store = Store.from_settings(pool, settings)
        try:
            yield store
        finally:
            store.close()
            pool.close()
