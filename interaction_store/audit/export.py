"""Everything the store holds about one person, as lines of JSON (NDJSON), streamed.

A subject-access export: the customer's summary, identity links, merges, every event
about them (their interactions on every identity, their customer streams, and the
events of their conversations), their timeline and conversation rows, and the access
log entries of everyone who read them. Each line is an object whose ``record`` names
what it is; the first is ``export``, the last ``end`` with the count of lines between.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg

from interaction_store import views
from interaction_store.audit.access import accesses
from interaction_store.events import upcast
from interaction_store.privacy import Sealer

__all__ = ["export_customer"]


def export_customer(
    conn: psycopg.Connection[Any], customer_id: str, sealer: Sealer
) -> Iterator[dict[str, Any]]:
    """The export's lines, personal fields opened by ``sealer`` (the store's).
    ``customer_id`` may be an alias; ``LookupError`` when no customer has it (raised
    before the first line). Read in one transaction of ``conn``'s, so the lines agree
    with each other."""
    found = views.find_customer_read(customer_id).run(conn)
    if found is None:
        raise LookupError(f"no customer {customer_id}")
    yield from _export(conn, found, sealer)


def _export(conn: psycopg.Connection[Any], found: str, sealer: Sealer) -> Iterator[dict[str, Any]]:
    with conn.transaction():
        yield from _lines(conn, found, sealer)


def _lines(conn: psycopg.Connection[Any], found: str, sealer: Sealer) -> Iterator[dict[str, Any]]:
    summary = views.customer(conn, found)
    family = [found, *summary.aliases]
    yield {
        "record": "export",
        "customer_id": found,
        "aliases": summary.aliases,
        "exported_at": datetime.now(UTC).isoformat(),
    }
    lines = 0
    for line in _body(conn, found, family, summary, sealer):
        lines += 1
        yield line
    yield {"record": "end", "lines": lines}


def _body(
    conn: psycopg.Connection[Any],
    customer: str,
    family: list[str],
    summary: views.CustomerSummary,
    sealer: Sealer,
) -> Iterator[dict[str, Any]]:
    profile = summary.profile
    yield {
        "record": "profile",
        "customer_id": customer,
        "profile": _plain(profile),
        "priority": summary.priority,
        "preferred_agent": summary.preferred_agent,
    }
    for identity in summary.identities:
        yield {"record": "identity", **_plain(identity)}
    for source, target, position in conn.execute(
        "SELECT source_customer_id, target_customer_id, position FROM customer_merges"
        " WHERE source_customer_id = ANY(%s) OR target_customer_id = ANY(%s) ORDER BY position",
        (family, family),
    ):
        yield {"record": "merge", "source_customer_id": source,
               "target_customer_id": target, "position": position}  # fmt: skip
    conversations = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT conversation_id FROM timeline WHERE customer_id = %s", (customer,)
        )
    ]
    own = [f"customer-{c}" for c in family]
    shared = [f"conversation-{c}" for c in conversations]
    # The customer's own interactions, wherever they are filed, and the events of the
    # customer's streams and conversations (another party's interactions in a shared
    # conversation are left out).
    with conn.cursor(name="export_events") as cursor:
        cursor.itersize = 2000
        cursor.execute(
            """
            SELECT e.position, e.event_id, e.stream_id, e.stream_version, e.type,
                   e.schema_version, e.occurred_at, e.recorded_at, e.payload, e.metadata,
                   e.hash
              FROM events AS e
             WHERE e.position IN (SELECT position FROM timeline WHERE customer_id = %(c)s)
                OR e.stream_id = ANY(%(own)s)
                OR (e.stream_id = ANY(%(shared)s) AND e.payload->'contact' IS NULL)
             ORDER BY e.position
            """,
            {"c": customer, "own": own, "shared": shared},
        )
        while rows := cursor.fetchmany(2000):
            opened = sealer.open_all(conn, [(row[1], row[8]) for row in rows])
            for row, (data, _) in zip(rows, opened, strict=True):
                version, data = upcast(row[4], row[5], data)
                yield {
                    "record": "event",
                    "position": row[0],
                    "id": str(row[1]),
                    "stream_id": row[2],
                    "stream_version": row[3],
                    "type": row[4],
                    "schema_version": version,
                    "occurred_at": row[6].isoformat(),
                    "recorded_at": row[7].isoformat(),
                    "data": data,
                    "metadata": row[9],
                    "hash": bytes(row[10]).hex(),
                }
    for item in views.timeline(conn, customer, limit=1_000_000):
        yield {"record": "timeline", **_plain(item)}
    for conversation_id in sorted(conversations):
        found = views.conversation(conn, conversation_id)
        if found is not None:
            yield {"record": "conversation", **_plain(found)}
    after = 0
    while page := accesses(conn, customer, after=after, limit=1000):
        for access in page:
            yield {"record": "access", **_plain(access)}
        after = page[-1].access_id


def _plain(value: Any) -> Any:
    """Dataclasses, named tuples, datetimes and UUIDs as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a named tuple
        return _plain(value._asdict())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value
