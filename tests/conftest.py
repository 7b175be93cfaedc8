from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg_pool import ConnectionPool

from interaction_store.db import open_pool
from interaction_store.store import Store
from interaction_store.testing import TestDatabases, test_server


@pytest.fixture(scope="session")
def databases() -> Iterator[TestDatabases]:
    with test_server() as url:
        dbs = TestDatabases(url)
        dbs.create_template()
        try:
            yield dbs
        finally:
            dbs.drop_template()


@pytest.fixture
def database_url(databases: TestDatabases) -> Iterator[str]:
    """A migrated database of this test's own."""
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture
def empty_database_url(databases: TestDatabases) -> Iterator[str]:
    """A database of this test's own with no schema at all."""
    url = databases.create(empty=True)
    yield url
    databases.drop(url)


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    pool = open_pool(database_url, min_size=1, max_size=12)
    yield pool
    pool.close()


@pytest.fixture
def store(pool: ConnectionPool) -> Iterator[Store]:
    store = Store(pool)
    yield store
    store.close()
