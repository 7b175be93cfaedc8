from __future__ import annotations

import psycopg

from interaction_store.db import current_revision, downgrade, migrate

HEAD = "0014_events_horizon"


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        ).fetchall()
    return {row[0] for row in rows}


def test_upgrade_downgrade_upgrade_on_an_empty_database(empty_database_url: str) -> None:
    url = empty_database_url
    assert current_revision(url) is None
    assert tables(url) == set()

    migrate(url)
    assert current_revision(url) == HEAD
    assert {"events", "timeline", "identities", "projection_checkpoints"} <= tables(url)
    assert {"customer_profiles", "conversations", "conversation_waits"} <= tables(url)

    downgrade(url, "0002_projections")
    assert "timeline" in tables(url)
    assert not {"customer_profiles", "conversations", "conversation_waits"} & tables(url)

    downgrade(url, "0001_events")
    assert tables(url) == {"events"}

    downgrade(url, "base")
    assert current_revision(url) is None
    assert tables(url) == set()
    with psycopg.connect(url) as conn:
        functions = conn.execute(
            "SELECT proname FROM pg_proc"
            " WHERE proname IN ('append_chain', 'events_are_append_only', 'resolve_customer')"
        ).fetchall()
    assert functions == []

    migrate(url)
    assert current_revision(url) == HEAD


def test_migrating_twice_is_a_no_op(database_url: str) -> None:
    migrate(database_url)
    assert current_revision(database_url) == HEAD
