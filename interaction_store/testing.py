"""Test databases for interaction-store and for applications built on it.

A session migrates one template database; each test gets its own copy
(``CREATE DATABASE ... TEMPLATE``, a few milliseconds) and drops it afterwards. The server
is, in order of preference: ``INTERACTION_STORE_TEST_DATABASE_URL``; a testcontainers
PostgreSQL when ``INTERACTION_STORE_TEST_DOCKER=1``; otherwise an embedded server in a
temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from interaction_store.db import migrate
from interaction_store.embedded import EmbeddedPostgres

__all__ = ["TestDatabases", "test_server"]


@contextlib.contextmanager
def test_server() -> Iterator[str]:
    """Yield an admin URL of a PostgreSQL server to create test databases on."""
    url = os.environ.get("INTERACTION_STORE_TEST_DATABASE_URL")
    if url:
        yield url
    elif os.environ.get("INTERACTION_STORE_TEST_DOCKER") == "1":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
    else:
        folder = Path(tempfile.mkdtemp(prefix="is-test-"))
        server = EmbeddedPostgres(folder)
        try:
            yield server.start()
        finally:
            server.release()
            shutil.rmtree(folder, ignore_errors=True)


class TestDatabases:
    """Creates a migrated template once, then cheap per-test copies of it."""

    __test__ = False  # not a pytest test class

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.template = f"is_template_{uuid.uuid4().hex[:12]}"
        self._created = False

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.server_url, autocommit=True)

    def url(self, dbname: str) -> str:
        return make_conninfo(self.server_url, dbname=dbname)

    def create_template(self) -> None:
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        self._created = True
        migrate(self.url(self.template))

    def create(self, *, empty: bool = False) -> str:
        """A new database (a copy of the migrated template unless ``empty``); its URL."""
        name = f"is_test_{uuid.uuid4().hex[:16]}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if not empty:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(self.template))
        with self._admin() as conn:
            conn.execute(statement)
        return self.url(name)

    def drop(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
            )

    def drop_template(self) -> None:
        if self._created:
            self.drop(self.url(self.template))
