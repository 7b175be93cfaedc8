"""Reading the views: customer lookup, the cross-channel timeline, customers and
conversations.

Only projections write these tables; everything here reads. Service levels, breaches,
follow-ups, preferred agents and priorities are worked out here, at read time, from the
stored facts: so they always follow the latest identity links and merges, and a change
of policy needs no rebuild.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, NamedTuple, TypeVar
from uuid import UUID

import orjson
import psycopg
from psycopg import sql

from interaction_store.identity import normalise_contact, parse_contact_string
from interaction_store.policy import ServiceLevels, priority

__all__ = [
    "FAMILY",
    "ChannelActivity",
    "ConversationSummary",
    "CustomerSummary",
    "FollowUp",
    "Identity",
    "Profile",
    "Read",
    "TimelineItem",
    "Wait",
    "context",
    "context_read",
    "conversation",
    "conversations",
    "customer",
    "find_customer",
    "find_customer_read",
    "follow_ups",
    "lookup_customer",
    "lookup_read",
    "resolve_customer",
    "timeline",
    "timeline_read",
]

T = TypeVar("T")
Rows = Sequence[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Read(Generic[T]):
    """One query and how its rows become the answer, apart from any connection.

    ``run`` executes it on a connection; ``run_async`` awaits it on an async one (the
    API's hot reads, which then need no worker thread). The SQL and the shaping are the
    same either way.
    """

    statement: sql.SQL | sql.Composed | str
    params: Mapping[str, Any]
    shape: Callable[[Rows], T]

    def run(self, conn: psycopg.Connection[Any]) -> T:
        return self.shape(conn.execute(self.statement, self.params).fetchall())

    async def run_async(self, conn: psycopg.AsyncConnection[Any]) -> T:
        cursor = await conn.execute(self.statement, self.params)
        return self.shape(await cursor.fetchall())


#: The ids that stand for customer ``%(customer)s``: the one it resolves to and every id
#: merged into that one, as the CTE ``family(id)`` for a statement to follow.
FAMILY = """
WITH RECURSIVE family(id) AS (
    SELECT resolve_customer(%(customer)s)
    UNION
    SELECT m.source_customer_id FROM customer_merges AS m
      JOIN family AS f ON m.target_customer_id = f.id
)
"""


def _first_column(rows: Rows) -> str | None:
    return str(rows[0][0]) if rows else None


class TimelineItem(NamedTuple):
    """One interaction on a customer's timeline: a row of the view as it is read (a named
    tuple, made in C: a page of them costs a fraction of what frozen dataclasses do)."""

    position: int
    event_id: UUID
    customer_id: str
    occurred_at: datetime
    channel: str
    direction: str
    type: str
    conversation_id: str
    agent_id: str | None
    contact: str
    subject: str | None
    snippet: str


#: ``%(customer)s`` with merges followed; a plain index probe when it was never merged.
_RESOLVED = """(CASE WHEN EXISTS (SELECT FROM customer_merges
                                  WHERE source_customer_id = %(customer)s)
             THEN resolve_customer(%(customer)s) ELSE %(customer)s END)"""


def resolve_customer(conn: psycopg.Connection[Any], customer_id: str) -> str:
    """The customer an id stands for now (a merged customer's id is an alias)."""
    row = conn.execute("SELECT resolve_customer(%s)", (customer_id,)).fetchone()
    assert row is not None
    return str(row[0])


def lookup_customer(
    conn: psycopg.Connection[Any], identity: str, *, phone_region: str = "US"
) -> str | None:
    """The customer of an identity written ``kind:value`` (normalised like appends)."""
    return lookup_read(identity, phone_region=phone_region).run(conn)


def lookup_read(identity: str, *, phone_region: str = "US") -> Read[str | None]:
    """``lookup_customer`` as a ``Read``; a malformed identity raises ``ValueError`` here."""
    kind, value = parse_contact_string(identity)
    value = normalise_contact(kind, value, phone_region=phone_region)
    return Read(
        "SELECT resolve_customer(customer_id) FROM identities"
        " WHERE kind = %(kind)s AND value = %(value)s",
        {"kind": kind, "value": value},
        _first_column,
    )


def timeline(
    conn: psycopg.Connection[Any],
    customer_id: str,
    *,
    limit: int = 50,
    before: int | None = None,
    channel: str | None = None,
    type: str | None = None,
    conversation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[TimelineItem]:
    """A customer's interactions, newest first by when they happened (the log's order
    breaking ties); pass the last item's position as ``before`` for the next page (a
    keyset cursor). ``customer_id`` may be an alias."""
    return timeline_read(
        customer_id,
        limit=limit,
        before=before,
        channel=channel,
        type=type,
        conversation_id=conversation_id,
        since=since,
        until=until,
    ).run(conn)


def timeline_read(
    customer_id: str,
    *,
    limit: int = 50,
    before: int | None = None,
    channel: str | None = None,
    type: str | None = None,
    conversation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Read[list[TimelineItem]]:
    """``timeline`` as a ``Read``: only the filters asked for go into the statement."""
    params = {
        "customer": customer_id,
        "before": before,
        "channel": channel,
        "type": type,
        "conversation": conversation_id,
        "since": since,
        "until": until,
        "limit": limit,
    }
    filters = tuple(name for name in _TIMELINE_FILTERS if params[name] is not None)
    return Read(_timeline_statement(filters), params, _timeline_items)


#: Each filter of the timeline, by its parameter, as a condition.
_TIMELINE_FILTERS = {
    # the page after the item at ``before``, in the order below
    "before": "(occurred_at, position) < (SELECT b.occurred_at, b.position FROM timeline AS b"
    " WHERE b.position = %(before)s)",
    "channel": "channel = %(channel)s",
    "type": "type = %(type)s",
    "conversation": "conversation_id = %(conversation)s",
    "since": "occurred_at >= %(since)s",
    "until": "occurred_at < %(until)s",
}


@functools.cache
def _timeline_statement(filters: tuple[str, ...]) -> str:
    """The timeline's statement with these filters: made once for each combination (a
    plain string, which psycopg also converts once, where a composed one costs both on
    every read)."""
    conditions = "".join(f" AND {_TIMELINE_FILTERS[name]}" for name in filters)
    return f"""
        SELECT position, event_id, customer_id, occurred_at, channel, direction, type,
               conversation_id, agent_id, contact_kind || ':' || contact_value, subject,
               snippet
          FROM timeline
         WHERE customer_id = {_RESOLVED}{conditions}
         ORDER BY occurred_at DESC, position DESC
         LIMIT %(limit)s
        """


def _timeline_items(rows: Rows) -> list[TimelineItem]:
    return [TimelineItem(*row) for row in rows]


def find_customer(
    conn: psycopg.Connection[Any], who: str, *, phone_region: str = "US"
) -> str | None:
    """A customer id from an identity (``kind:value``) or a customer id (followed through
    merges); None when nobody has that identity or id."""
    if ":" in who:
        return lookup_customer(conn, who, phone_region=phone_region)
    return find_customer_read(who).run(conn)


def find_customer_read(customer_id: str) -> Read[str | None]:
    """The customer a customer id stands for (merges followed), if it is known at all."""
    return Read(
        FAMILY
        + """
        SELECT who.id FROM (SELECT resolve_customer(%(customer)s) AS id) AS who
         WHERE EXISTS (SELECT FROM timeline WHERE customer_id = who.id)
            -- identities and profiles stay under the ids merged in
            OR EXISTS (SELECT FROM identities WHERE customer_id IN (SELECT id FROM family))
            OR EXISTS (SELECT FROM customer_profiles
                        WHERE customer_id IN (SELECT id FROM family))
        """,
        {"customer": customer_id},
        _first_column,
    )


# Conversations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wait:
    """A stretch of time the customer waited for an answer in a conversation."""

    started_position: int
    started_at: datetime
    channel: str
    due_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    breached: bool


@dataclass(frozen=True, slots=True)
class FollowUp:
    """An inbound interaction on another channel while a conversation awaited an answer
    (the customer who emails, hears nothing, then calls)."""

    position: int
    occurred_at: datetime
    channel: str
    type: str
    conversation_id: str
    #: The conversation that was waiting, and the position its wait started at.
    waiting_conversation_id: str
    wait_started_position: int


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation_id: str
    case_id: str
    #: Every conversation of the case (joined by ``conversation.linked``), this one too.
    case: list[str]
    customer_id: str | None
    status: str
    channels: list[str]
    interactions: int
    opened_at: datetime | None
    last_activity_at: datetime | None
    resolved_at: datetime | None
    #: When the current unanswered wait began (None when nobody is waiting).
    awaiting_since: datetime | None
    #: When the current wait must be answered by.
    response_due_at: datetime | None
    first_response_due_at: datetime | None
    first_response_at: datetime | None
    #: Some wait was, or is now, answered later than its service level.
    breached: bool
    waits: list[Wait]
    #: Inbounds on other channels during this conversation's waits.
    follow_ups: list[FollowUp]
    #: Waits of other conversations this conversation's inbounds followed up.
    follows_up: list[FollowUp]


def follow_ups(conn: psycopg.Connection[Any], conversation_ids: list[str]) -> list[FollowUp]:
    """The follow-ups that involve these conversations, as the waiting one or as the one
    followed up with: for each wait, the same customer's inbound interactions on another
    channel from its start until its end (or now), by when they happened (the log's
    order breaking ties), however late they reached the log."""
    rows = conn.execute(
        """
        SELECT t.position, t.occurred_at, t.channel, t.type, t.conversation_id,
               w.conversation_id, w.started_position
          FROM timeline AS s
          JOIN conversation_waits AS w
            ON w.conversation_id = s.conversation_id AND w.started_position = s.position
          JOIN timeline AS t
            ON t.customer_id = s.customer_id AND t.direction = 'inbound'
           AND t.channel <> w.channel
           AND (t.occurred_at, t.position) > (s.occurred_at, s.position)
           AND (w.ended_position IS NULL
                OR (t.occurred_at, t.position) <= (w.ended_at, w.ended_position))
         WHERE w.conversation_id = ANY (%(ids)s)
        UNION
        SELECT t.position, t.occurred_at, t.channel, t.type, t.conversation_id,
               w.conversation_id, w.started_position
          FROM timeline AS t
          JOIN timeline AS s
            ON s.customer_id = t.customer_id
           AND (s.occurred_at, s.position) < (t.occurred_at, t.position)
          JOIN conversation_waits AS w
            ON w.conversation_id = s.conversation_id AND w.started_position = s.position
           AND w.channel <> t.channel
           AND (w.ended_position IS NULL
                OR (t.occurred_at, t.position) <= (w.ended_at, w.ended_position))
         WHERE t.conversation_id = ANY (%(ids)s) AND t.direction = 'inbound'
         ORDER BY 1, 7
        """,
        {"ids": conversation_ids},
    ).fetchall()
    return [FollowUp(*row) for row in rows]


def conversation(
    conn: psycopg.Connection[Any],
    conversation_id: str,
    *,
    service_levels: ServiceLevels | None = None,
    now: datetime | None = None,
) -> ConversationSummary | None:
    """One conversation with its service-level state and follow-ups."""
    found = conversations(conn, [conversation_id], service_levels=service_levels, now=now)
    return found[0] if found else None


def conversations(
    conn: psycopg.Connection[Any],
    conversation_ids: list[str],
    *,
    service_levels: ServiceLevels | None = None,
    now: datetime | None = None,
) -> list[ConversationSummary]:
    """Several conversations at once, in the order asked (unknown ids left out)."""
    levels = service_levels or ServiceLevels()
    now = now or datetime.now(UTC)
    rows = conn.execute(
        """
        SELECT c.conversation_id, c.case_id,
               (SELECT array_agg(m.conversation_id ORDER BY m.conversation_id)
                  FROM conversations AS m WHERE m.case_id = c.case_id),
               (SELECT t.customer_id FROM timeline AS t
                 WHERE t.conversation_id = c.conversation_id
                 ORDER BY t.position DESC LIMIT 1),
               c.status, c.channels, c.interactions, c.opened_at, c.last_activity_at,
               c.resolved_at
          FROM conversations AS c
         WHERE c.conversation_id = ANY (%s)
        """,
        (conversation_ids,),
    ).fetchall()
    waits: dict[str, list[Wait]] = {}
    for cid, position, started, channel, ended, ended_by in conn.execute(
        """
        SELECT conversation_id, started_position, started_at, channel, ended_at, ended_by
          FROM conversation_waits WHERE conversation_id = ANY (%s)
         ORDER BY started_position
        """,
        (conversation_ids,),
    ):
        due = started + levels.due(channel)
        waits.setdefault(cid, []).append(
            Wait(position, started, channel, due, ended, ended_by, (ended or now) > due)
        )
    pairs = follow_ups(conn, [row[0] for row in rows]) if rows else []
    by_id = {}
    for cid, case_id, case, customer_id, status, channels, count, opened, last, resolved in rows:
        own = waits.get(cid, [])
        current = own[-1] if own and own[-1].ended_at is None else None
        first = own[0] if own else None
        by_id[cid] = ConversationSummary(
            conversation_id=cid,
            case_id=case_id,
            case=list(case),
            customer_id=customer_id,
            status=status,
            channels=list(channels),
            interactions=count,
            opened_at=opened,
            last_activity_at=last,
            resolved_at=resolved,
            awaiting_since=current.started_at if current else None,
            response_due_at=current.due_at if current else None,
            first_response_due_at=first.due_at if first else None,
            first_response_at=first.ended_at if first and first.ended_by == "response" else None,
            breached=any(w.breached for w in own),
            waits=own,
            follow_ups=[p for p in pairs if p.waiting_conversation_id == cid],
            follows_up=[
                p for p in pairs if p.conversation_id == cid and p.waiting_conversation_id != cid
            ],
        )
    return [by_id[cid] for cid in conversation_ids if cid in by_id]


# Customers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    customer_id: str
    name: str | None
    tier: str | None
    account_value: float | None
    churn_risk: float | None
    registered_at: datetime | None
    erased_at: datetime | None


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str
    value: str
    confidence: str
    reason: str
    source: str | None
    #: The customer id the identity is linked to (an alias, when that one was merged).
    linked_to: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True, slots=True)
class ChannelActivity:
    channel: str
    interactions: int
    inbound: int
    outbound: int
    last_contact_at: datetime


@dataclass(frozen=True, slots=True)
class CustomerSummary:
    customer_id: str
    #: Customer ids merged into this one (lookups by them lead here).
    aliases: list[str]
    profile: Profile | None
    identities: list[Identity]
    channels: list[ChannelActivity]
    interactions: int
    last_contact_at: datetime | None
    open_conversations: list[ConversationSummary]
    preferred_agent: str | None
    #: ``policy.priority``: the account value at stake, whatever the channel.
    priority: float


#: How far back agents are counted to break a tie for the preferred agent.
PREFERRED_AGENT_WINDOW = timedelta(days=90)


def customer(
    conn: psycopg.Connection[Any],
    customer_id: str,
    *,
    service_levels: ServiceLevels | None = None,
    now: datetime | None = None,
) -> CustomerSummary:
    """The customer's summary: profile, identities, activity per channel, open
    conversations, preferred agent and priority. ``customer_id`` may be an alias."""
    customer_id = resolve_customer(conn, customer_id)
    aliases = [
        row[0]
        for row in conn.execute(
            """
            WITH RECURSIVE merged(id) AS (
                SELECT source_customer_id FROM customer_merges WHERE target_customer_id = %s
                UNION
                SELECT m.source_customer_id FROM customer_merges AS m
                  JOIN merged ON m.target_customer_id = merged.id
            )
            SELECT id FROM merged ORDER BY id
            """,
            (customer_id,),
        )
    ]
    ids = [customer_id, *aliases]
    profile_row = conn.execute(
        """
        SELECT customer_id, name, tier, account_value, churn_risk, registered_at, erased_at
          FROM customer_profiles WHERE customer_id = ANY (%s)
         ORDER BY customer_id = %s DESC, updated_at DESC LIMIT 1
        """,
        (ids, customer_id),
    ).fetchone()
    profile = Profile(*profile_row) if profile_row else None
    identities = [
        Identity(*row)
        for row in conn.execute(
            """
            SELECT kind, value, confidence, reason, source, customer_id FROM identities
             WHERE customer_id = ANY (%s) ORDER BY kind, value
            """,
            (ids,),
        )
    ]
    channels = [
        ChannelActivity(*row)
        for row in conn.execute(
            """
            SELECT channel, count(*), count(*) FILTER (WHERE direction = 'inbound'),
                   count(*) FILTER (WHERE direction = 'outbound'), max(occurred_at)
              FROM timeline WHERE customer_id = %s
             GROUP BY channel ORDER BY max(occurred_at) DESC, channel
            """,
            (customer_id,),
        )
    ]
    open_ids = [
        row[0]
        for row in conn.execute(
            """
            SELECT c.conversation_id FROM conversations AS c
             WHERE c.status = 'open'
               AND c.conversation_id IN (SELECT conversation_id FROM timeline
                                          WHERE customer_id = %s)
             ORDER BY c.last_activity_at DESC NULLS LAST, c.conversation_id
            """,
            (customer_id,),
        )
    ]
    return CustomerSummary(
        customer_id=customer_id,
        aliases=aliases,
        profile=profile,
        identities=identities,
        channels=channels,
        interactions=sum(c.interactions for c in channels),
        last_contact_at=max((c.last_contact_at for c in channels), default=None),
        open_conversations=conversations(conn, open_ids, service_levels=service_levels, now=now),
        preferred_agent=preferred_agent(conn, customer_id),
        priority=priority(
            profile.account_value if profile else None, profile.churn_risk if profile else None
        ),
    )


def preferred_agent(conn: psycopg.Connection[Any], customer_id: str) -> str | None:
    """The agent of the customer's most recent handled interaction (one naming an agent);
    when several agents share that moment, the one who handled the customer most often in
    the 90 days before it (then the smallest agent id)."""
    row = conn.execute(
        """
        WITH handled AS (
            SELECT agent_id, occurred_at FROM timeline
             WHERE customer_id = %(c)s AND agent_id IS NOT NULL
        ), latest AS (SELECT max(occurred_at) AS at FROM handled)
        SELECT h.agent_id
          FROM handled AS h, latest
         WHERE h.occurred_at = latest.at
         ORDER BY (SELECT count(*) FROM handled AS o
                    WHERE o.agent_id = h.agent_id
                      AND o.occurred_at > latest.at - %(window)s) DESC,
                  h.agent_id
         LIMIT 1
        """,
        {"c": customer_id, "window": PREFERRED_AGENT_WINDOW},
    ).fetchone()
    return str(row[0]) if row else None


def context(
    conn: psycopg.Connection[Any],
    customer_id: str,
    *,
    service_levels: ServiceLevels | None = None,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """The small routing context of a customer, in one query: priority, account value,
    churn risk, open conversations with their service-level state, preferred agent (as in
    ``preferred_agent``) and last contact. None when the customer is unknown."""
    return context_read(customer_id, service_levels=service_levels, now=now).run(conn)


def context_read(
    customer_id: str, *, service_levels: ServiceLevels | None = None, now: datetime | None = None
) -> Read[dict[str, Any] | None]:
    """``context`` as a ``Read``."""
    levels = service_levels or ServiceLevels()
    targets = {channel: due.total_seconds() for channel, due in levels.first_response.items()}
    return Read(
        """
        WITH RECURSIVE who AS (SELECT """
        + _RESOLVED
        + """ AS id),
        family(id) AS (
            SELECT id FROM who
            UNION
            SELECT m.source_customer_id FROM customer_merges AS m
              JOIN family AS f ON m.target_customer_id = f.id
        ),
        -- as the summary picks it: the customer's own, else the newest of those merged in
        profile AS (
            SELECT p.customer_id, p.account_value, p.churn_risk
              FROM customer_profiles AS p, who
             WHERE p.customer_id IN (SELECT id FROM family)
             ORDER BY p.customer_id = who.id DESC, p.updated_at DESC
             LIMIT 1
        ),
        mine AS (
            SELECT t.agent_id, t.occurred_at, t.conversation_id
              FROM timeline AS t JOIN who ON t.customer_id = who.id
        ),
        handled AS (SELECT agent_id, occurred_at FROM mine WHERE agent_id IS NOT NULL),
        latest AS (SELECT max(occurred_at) AS at FROM handled),
        agent AS (
            SELECT h.agent_id FROM handled AS h, latest
             WHERE h.occurred_at = latest.at
             ORDER BY (SELECT count(*) FROM handled AS o
                        WHERE o.agent_id = h.agent_id
                          AND o.occurred_at > latest.at - %(window)s) DESC, h.agent_id
             LIMIT 1
        ),
        open_conversations AS (
            SELECT c.conversation_id, c.channels, w.started_at AS awaiting_since,
                   w.started_at + make_interval(secs => coalesce(
                       (%(targets)s::jsonb ->> w.channel)::float8, 14400)) AS response_due_at,
                   (SELECT coalesce(bool_or(coalesce(x.ended_at, %(now)s) > x.started_at
                               + make_interval(secs => coalesce(
                                   (%(targets)s::jsonb ->> x.channel)::float8, 14400))),
                                    false)
                      FROM conversation_waits AS x
                     WHERE x.conversation_id = c.conversation_id) AS breached,
                   c.last_activity_at
              FROM conversations AS c
              LEFT JOIN conversation_waits AS w
                ON w.conversation_id = c.conversation_id AND w.ended_position IS NULL
             WHERE c.status = 'open'
               AND c.conversation_id IN (SELECT conversation_id FROM mine)
        )
        SELECT who.id, p.account_value, p.churn_risk,
               (SELECT max(occurred_at) FROM mine),
               (SELECT agent_id FROM agent),
               (SELECT coalesce(jsonb_agg(jsonb_build_object(
                           'conversation_id', o.conversation_id, 'channels', o.channels,
                           'awaiting_since', o.awaiting_since,
                           'response_due_at', o.response_due_at, 'breached', o.breached)
                       ORDER BY o.last_activity_at DESC NULLS LAST, o.conversation_id), '[]')
                  FROM open_conversations AS o),
               p.customer_id IS NOT NULL OR EXISTS (SELECT FROM mine)
                   OR EXISTS (SELECT FROM identities AS i
                               WHERE i.customer_id IN (SELECT id FROM family))
          FROM who LEFT JOIN profile AS p ON true
        """,
        {
            "customer": customer_id,
            "window": PREFERRED_AGENT_WINDOW,
            "targets": orjson.dumps(targets).decode(),
            "now": now or datetime.now(UTC),
        },
        _context,
    )


def _context(rows: Rows) -> dict[str, Any] | None:
    if not rows or not rows[0][6]:
        return None
    resolved, value, risk, last_contact, agent, open_conversations, _ = rows[0]
    return {
        "customer_id": resolved,
        "priority": priority(value, risk),
        "account_value": value,
        "churn_risk": risk,
        "open_conversations": open_conversations,
        "preferred_agent": agent,
        "last_contact": last_contact,
    }
