"""The conversations projection: status, channels, cases and the waits for a response.

A *wait* starts with an inbound interaction that needs an answer (an email, SMS, tweet or
chat message, a missed or abandoned call, a voicemail, a callback request) while its
conversation is not already waiting, and ends with the first response anywhere in its
*case* (the conversations joined by ``conversation.linked``): an outbound message, an
answered call, or the conversation's resolution; or, in a chat, with its end. The
service-level policy is applied when the view is read (``views.conversation``), so
changing it needs no rebuild.

Each batch loads the rows it touches, applies its events in order in memory, and writes
back what changed with two set-based statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg

from interaction_store.projections.timeline import (
    INTERACTION_FAMILIES,
    conversation_of,
    family_of,
)
from interaction_store.store import RecordedEvent

__all__ = ["ConversationsProjection", "is_response", "needs_response"]

_ANSWERING_OUTBOUND_CALLS = frozenset({"answered", "voicemail"})


def needs_response(event_type: str, data: dict[str, Any]) -> bool:
    """Whether an interaction leaves the customer waiting for an answer."""
    if data.get("direction") != "inbound":
        return False
    if event_type == "call.completed":
        return data.get("status") != "answered"
    return event_type != "chat.ended"


def is_response(event_type: str, data: dict[str, Any]) -> bool:
    """Whether an interaction answers the customer."""
    if event_type == "call.completed":
        if data.get("direction") == "inbound":
            return data.get("status") == "answered"
        return data.get("status") in _ANSWERING_OUTBOUND_CALLS
    return data.get("direction") == "outbound" and event_type != "chat.ended"


@dataclass(slots=True)
class _Conversation:
    conversation_id: str
    case_id: str
    status: str = "open"
    channels: list[str] = field(default_factory=list)
    interactions: int = 0
    opened_at: datetime | None = None
    last_activity_at: datetime | None = None
    resolved_at: datetime | None = None
    position: int = 0

    def row(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "case_id": self.case_id,
            "status": self.status,
            "channels": self.channels,
            "interactions": self.interactions,
            "opened_at": self.opened_at,
            "last_activity_at": self.last_activity_at,
            "resolved_at": self.resolved_at,
            "position": self.position,
        }


@dataclass(slots=True)
class _Wait:
    conversation_id: str
    started_position: int
    started_at: datetime
    channel: str
    ended_position: int | None = None
    ended_at: datetime | None = None
    ended_by: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "started_position": self.started_position,
            "started_at": self.started_at,
            "channel": self.channel,
            "ended_position": self.ended_position,
            "ended_at": self.ended_at,
            "ended_by": self.ended_by,
        }


class _Batch:
    """The rows one batch touches, loaded once, changed in memory, written back once."""

    def __init__(self, conn: psycopg.Connection[Any], conversation_ids: Iterable[str]) -> None:
        self.conversations: dict[str, _Conversation] = {}
        self.cases: dict[str, list[str]] = {}  # case id -> its conversations
        self.open_waits: dict[str, _Wait] = {}
        self.changed: set[str] = set()
        self.changed_waits: dict[tuple[str, int], _Wait] = {}
        ids = sorted(set(conversation_ids))
        for row in conn.execute(
            """
            SELECT conversation_id, case_id, status, channels, interactions, opened_at,
                   last_activity_at, resolved_at, position
              FROM conversations
             WHERE case_id IN (SELECT case_id FROM conversations
                                WHERE conversation_id = ANY (%(ids)s))
            """,
            {"ids": ids},
        ):
            self.conversations[row[0]] = _Conversation(*row)
            self.cases.setdefault(row[1], []).append(row[0])
        for row in conn.execute(
            """
            SELECT conversation_id, started_position, started_at, channel
              FROM conversation_waits
             WHERE conversation_id = ANY (%s) AND ended_position IS NULL
            """,
            (list(self.conversations),),
        ):
            self.open_waits[row[0]] = _Wait(*row)

    def get(self, conversation_id: str) -> _Conversation:
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            conversation = _Conversation(conversation_id, case_id=conversation_id)
            self.conversations[conversation_id] = conversation
            self.cases.setdefault(conversation_id, []).append(conversation_id)
        self.changed.add(conversation_id)
        return conversation

    def case(self, case_id: str) -> list[_Conversation]:
        return [self.conversations[c] for c in self.cases.get(case_id, ())]

    def join(self, one: str, other: str) -> None:
        """Make the cases ``one`` and ``other`` one case, named by the smaller id."""
        if one == other:
            return
        joined, gone = min(one, other), max(one, other)
        for member in self.cases.pop(gone, []):
            self.get(member).case_id = joined
            self.cases.setdefault(joined, []).append(member)

    def end_wait(self, conversation_id: str, event: RecordedEvent, ended_by: str) -> None:
        wait = self.open_waits.get(conversation_id)
        if wait is not None and event.occurred_at < wait.started_at and ended_by == "response":
            # A reply that happened before the message waiting (it reached the log late,
            # from a mailbox polled later): it answered something else.
            return
        self.open_waits.pop(conversation_id, None)
        if wait is not None:
            wait.ended_position = event.position
            wait.ended_at = max(event.occurred_at, wait.started_at)
            wait.ended_by = ended_by
            self.changed_waits[(wait.conversation_id, wait.started_position)] = wait

    def write(self, conn: psycopg.Connection[Any]) -> None:
        """Upsert the changed conversations and waits, in one statement."""
        conversations = [self.conversations[c].row() for c in sorted(self.changed)]
        waits = [wait.row() for _, wait in sorted(self.changed_waits.items())]
        conn.execute(
            """
            WITH conversations_written AS (
                INSERT INTO conversations (conversation_id, case_id, status, channels,
                    interactions, opened_at, last_activity_at, resolved_at, position)
                SELECT * FROM jsonb_to_recordset(%s::jsonb) AS r(
                    conversation_id text, case_id text, status text, channels text[],
                    interactions integer, opened_at timestamptz, last_activity_at timestamptz,
                    resolved_at timestamptz, position bigint)
                ON CONFLICT (conversation_id) DO UPDATE
                   SET case_id = excluded.case_id, status = excluded.status,
                       channels = excluded.channels, interactions = excluded.interactions,
                       opened_at = excluded.opened_at,
                       last_activity_at = excluded.last_activity_at,
                       resolved_at = excluded.resolved_at, position = excluded.position
            ), waits_written AS (
                INSERT INTO conversation_waits (conversation_id, started_position, started_at,
                    channel, ended_position, ended_at, ended_by)
                SELECT * FROM jsonb_to_recordset(%s::jsonb) AS r(
                    conversation_id text, started_position bigint, started_at timestamptz,
                    channel text, ended_position bigint, ended_at timestamptz, ended_by text)
                ON CONFLICT (conversation_id, started_position) DO UPDATE
                   SET ended_position = excluded.ended_position,
                       ended_at = excluded.ended_at, ended_by = excluded.ended_by
            )
            SELECT
            """,
            (orjson.dumps(conversations).decode(), orjson.dumps(waits).decode()),
        )


class ConversationsProjection:
    """Maintains ``conversations`` and ``conversation_waits``."""

    name = "conversations"
    tables: tuple[str, ...] = ("conversations", "conversation_waits")

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
        relevant: list[tuple[RecordedEvent, str]] = []  # with their conversation
        ids: list[str] = []
        for event in events:
            family = family_of(event.type)
            if family in INTERACTION_FAMILIES:
                conversation_id = conversation_of(event.data)
            elif family == "conversation":
                conversation_id = event.data["conversation_id"]
                if "linked_conversation_id" in event.data:
                    ids.append(event.data["linked_conversation_id"])
            else:
                continue
            ids.append(conversation_id)
            relevant.append((event, conversation_id))
        if not relevant:
            return
        batch = _Batch(conn, ids)
        for event, conversation_id in relevant:
            if event.type.startswith("conversation."):
                _conversation_event(batch, event)
            else:
                _interaction(batch, event, conversation_id)
        batch.write(conn)


def _interaction(batch: _Batch, event: RecordedEvent, conversation_id: str) -> None:
    data = event.data
    conversation = batch.get(conversation_id)
    if conversation.opened_at is None:
        conversation.opened_at = event.occurred_at
    if data["channel"] not in conversation.channels:
        conversation.channels.append(data["channel"])
    conversation.interactions += 1
    if conversation.last_activity_at is None or event.occurred_at > conversation.last_activity_at:
        conversation.last_activity_at = event.occurred_at
    conversation.position = event.position
    if needs_response(event.type, data):
        if conversation.status == "resolved":  # the customer came back: open again
            conversation.status, conversation.resolved_at = "open", None
        if conversation.conversation_id not in batch.open_waits:
            wait = _Wait(
                conversation.conversation_id, event.position, event.occurred_at, data["channel"]
            )
            batch.open_waits[wait.conversation_id] = wait
            batch.changed_waits[(wait.conversation_id, wait.started_position)] = wait
    elif is_response(event.type, data):
        for member in batch.case(conversation.case_id):
            batch.end_wait(member.conversation_id, event, "response")
    elif event.type == "chat.ended":  # the visitor is gone: nobody waits in this chat now
        batch.end_wait(conversation.conversation_id, event, "chat ended")


def _conversation_event(batch: _Batch, event: RecordedEvent) -> None:
    data = event.data
    conversation = batch.get(data["conversation_id"])
    conversation.position = event.position
    if event.type == "conversation.resolved":
        conversation.status, conversation.resolved_at = "resolved", event.occurred_at
        batch.end_wait(conversation.conversation_id, event, "resolved")
    elif event.type == "conversation.reopened":
        conversation.status, conversation.resolved_at = "open", None
    elif event.type == "conversation.escalated":
        if data["to_channel"] not in conversation.channels:
            conversation.channels.append(data["to_channel"])
    elif event.type == "conversation.linked":
        other = batch.get(data["linked_conversation_id"])
        other.position = event.position
        batch.join(conversation.case_id, other.case_id)
