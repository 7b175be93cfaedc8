"""Small builders of wire-shaped events for tests."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import psycopg

from interaction_store.store import RecordedEvent

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def sms(
    n: int = 0, *, text: str | None = None, phone: str = "+14155550100", **data: Any
) -> dict[str, Any]:
    return {
        "id": str(uuid4()),
        "type": "sms.received",
        "occurred_at": (T0 + timedelta(seconds=n)).isoformat(),
        "data": {
            "contact": {"kind": "phone", "value": phone},
            "external_id": f"SM{uuid4().hex}",
            "text": text if text is not None else f"message {n}",
            **data,
        },
    }


def email(n: int = 0, **data: Any) -> dict[str, Any]:
    return {
        "type": "email.received",
        "occurred_at": (T0 + timedelta(minutes=n)).isoformat(),
        "data": {
            "contact": "email:alice@example.com",
            "external_id": f"<m{n}@mail.example.com>",
            "subject": f"Order {n}",
            "body": "Where is my order?",
            **data,
        },
    }


def count_events(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return int(row[0])


class Flaky:
    """A projection with a bug on emails until ``fixed``; it records what it applied."""

    name = "flaky"
    tables = ("flaky_seen",)

    def __init__(self) -> None:
        self.fixed = False

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if event.type == "email.received" and not self.fixed:
                raise KeyError("subject")
            conn.execute("INSERT INTO flaky_seen VALUES (%s)", (event.position,))


def cli_command(database_url: str, *args: str) -> list[str]:
    """The argv of an ``interaction-store`` process on this test's database."""
    return [
        sys.executable,
        "-c",
        "from interaction_store.cli import main; main()",
        "--database-url",
        database_url,
        *args,
    ]


def park_failures(database_url: str, quoted: dict[str, str]) -> None:
    """Dead letters for the emails of these external ids, as a projection that failed on
    them would have parked them, its error quoting the given address (and skipped since:
    an operator's decision keeps the record, and views and rebuilds ignore it)."""
    with psycopg.connect(database_url) as conn:
        for external_id, address in quoted.items():
            conn.execute(
                "INSERT INTO dead_letters"
                " (projection, position, event_id, type, error, attempts, resolution, resolved_at)"
                " SELECT 'timeline', position, event_id, type, %s, 3, 'skipped', now() FROM events"
                " WHERE payload->>'external_id' = %s",
                (f"Key (contact_value)=({address}) already exists.", external_id),
            )


def parked_errors(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT e.payload->>'external_id', d.error FROM dead_letters AS d"
            " JOIN events AS e USING (position)"
        ).fetchall()
    return dict(rows)
