"""Alembic environment: runs the raw-SQL revisions over a psycopg 3 connection.

The connection string comes from ``config.attributes["conninfo"]`` when the package calls
alembic (``interaction_store.db.migrate``), or from ``INTERACTION_STORE_DATABASE_URL`` when
a developer runs the ``alembic`` command by hand.
"""

from __future__ import annotations

import os

import psycopg
from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

config = context.config
conninfo = config.attributes.get("conninfo") or os.environ.get("INTERACTION_STORE_DATABASE_URL")
if not conninfo:
    raise SystemExit("set INTERACTION_STORE_DATABASE_URL to the database to migrate")

engine = create_engine(
    "postgresql+psycopg://",
    creator=lambda: psycopg.connect(conninfo),
    poolclass=NullPool,
)

with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
