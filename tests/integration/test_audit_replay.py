"""``audit replay`` on real logs: a log of generated interactions with merges, unmerges
and links replays to views identical to the live ones; a live view changed behind the
projector's back is reported row by row; the live views are left as they were."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from psycopg_pool import ConnectionPool

from interaction_store.audit.replay import replay
from interaction_store.cli import cli
from interaction_store.db import open_pool
from interaction_store.demo import generate
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.store import Store
from interaction_store.testing import TestDatabases
from tests.helpers import T0
from tests.integration.test_rebuild import histories, snapshot, timed

IDENTITY_EVENTS = [
    {"type": "customer.merged", "data": {"customer_id": "cu-a", "source_customer_id": "cu-b"}},
    {"type": "customer.identity_linked",
     "data": {"customer_id": "cu-a", "contact": "email:shared@example.com"}},
    {"type": "customer.unmerged", "data": {"customer_id": "cu-a", "source_customer_id": "cu-b"}},
    {"type": "customer.identity_unlinked",
     "data": {"customer_id": "cu-a", "contact": "email:shared@example.com"}},
]  # fmt: skip


def generated_log(store: Store) -> None:
    store.append_batch(list(generate(400, seed=7, customer_count=30, with_customers=True)))
    for minute, event in enumerate(IDENTITY_EVENTS):
        store.append_batch([{**event, "occurred_at": T0 + timedelta(minutes=minute)}])
    store.append_batch(list(generate(200, seed=8, customer_count=30)))


def test_a_generated_log_replays_to_identical_views(store: Store) -> None:
    generated_log(store)
    ProjectionRunner(store, all_projections(), batch_size=97).catch_up()
    before = snapshot(store)
    report = replay(store, batch_size=150)
    assert report.identical, report.differences
    assert report.events == 400 + 30 + 4 + 200
    assert report.tables == 6
    assert report.rows > 600
    assert snapshot(store) == before  # nothing live changed


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories)
def test_any_history_of_links_merges_and_unmerges_replays_identically(
    databases: TestDatabases, history: list[list[dict[str, Any]]]
) -> None:
    url = databases.create()
    try:
        with open_pool(url, min_size=1, max_size=4) as pool:
            store = Store(pool)
            runner = ProjectionRunner(store, all_projections(), batch_size=3, max_attempts=1)
            for events in timed(history):
                store.append_batch(events)
                runner.catch_up()
            report = replay(store, batch_size=4)
            store.close()
        assert report.identical, report.differences
    finally:
        databases.drop(url)


def test_a_view_changed_behind_the_projectors_back_is_reported(
    store: Store, pool: ConnectionPool[Any]
) -> None:
    generated_log(store)
    ProjectionRunner(store, all_projections()).catch_up()
    with pool.connection() as conn:
        position = conn.execute("SELECT min(position) FROM timeline").fetchone()[0]  # type: ignore[index]
        conn.execute("UPDATE timeline SET agent_id = 'mallory' WHERE position = %s", (position,))
        conn.execute(
            "DELETE FROM customer_profiles"
            " WHERE customer_id = (SELECT min(customer_id) FROM customer_profiles)"
        )
    report = replay(store)
    assert not report.identical
    found = {(d.table, d.side, d.count) for d in report.differences}
    assert found == {
        ("timeline", "live", 1),
        ("timeline", "replay", 1),
        ("customer_profiles", "replay", 1),
    }
    timeline = {d.side: d.rows[0] for d in report.differences if d.table == "timeline"}
    assert timeline["live"]["agent_id"] == "mallory"
    assert timeline["replay"]["position"] == position
    assert timeline["replay"]["agent_id"] != "mallory"


def test_replay_from_the_command_line(store: Store, database_url: str) -> None:
    generated_log(store)
    ProjectionRunner(store, all_projections()).catch_up()
    result = CliRunner().invoke(cli, ["--database-url", database_url, "audit", "replay", "-q"])
    assert result.exit_code == 0, result.output
    assert "identical" in result.output
