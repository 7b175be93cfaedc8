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
