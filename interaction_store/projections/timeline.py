"""The identity graph and the cross-channel timeline, kept in one projection.

Every interaction row keeps the contact it arrived with and its *owner*: the customer
named in the event, else the customer its contact is linked to, else the contact's
provisional customer. Its ``customer_id`` is the owner with merges followed
(``resolve_customer``). Links, unlinks, merges and unmerges recompute exactly the rows
they touch from those two facts, so any order of them gives the rows a rebuild from
zero would give, and an unmerge puts every event back where it was.

One rule carries contacts along: a contact linked to another contact's provisional
customer (a chat visitor linked to the email it gave, before any customer claimed that
email) moves with that contact when a customer claims it, or goes straight to the claimer
when the claim came first, along chains of such links. It is applied as if the links came
one at a time, however they are batched, so rebuilds and ``as_of`` agree with the views.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Sequence
from typing import Any, Final
from uuid import uuid5

import orjson
import psycopg

from interaction_store.events import EVENT_NAMESPACE, derive_conversation_id
from interaction_store.privacy import PLACEHOLDER_PREFIX
from interaction_store.store import RecordedEvent
from interaction_store.views import resolve_customer

__all__ = [
    "INTERACTION_FAMILIES",
    "READABLE_AGAIN",
    "SNIPPET_LENGTH",
    "TimelineProjection",
    "conversation_of",
    "family_of",
    "is_provisional",
    "provisional_customer_id",
    "refresh_content",
    "snippet",
]

SNIPPET_LENGTH: Final = 160
_TAG = re.compile(r"<[^>]*>")
_UNCLOSED_TAG = re.compile(r"<[^>]*$")


def provisional_customer_id(kind: str, token: str) -> str:
    """The stable id of the provisional customer of a contact no customer claims, from
    its kind and token (so it says nothing of the address, and stays the same once the
    address can no longer be read)."""
    return f"pc-{uuid5(EVENT_NAMESPACE, f'contact:{kind}:{token}').hex[:20]}"


def is_provisional(customer_id: str) -> bool:
    """Whether this is the provisional customer of some contact, not a registered one."""
    return customer_id.startswith("pc-")


def snippet(text: str | None, length: int = SNIPPET_LENGTH) -> str:
    """A short plain-text preview: tags dropped, entities decoded, whitespace folded.

    Only a prefix of a long text is cleaned, a longer one while tags fill it: what a cut
    spoils (half a tag or entity) lies well past the preview's end.
    """
    text = text or ""
    window = length * 2
    while True:
        part = text[:window]
        cut = len(part) < len(text)
        if "<" in part:
            part = _TAG.sub(" ", _UNCLOSED_TAG.sub("", part) if cut else part)
        if "&" in part:
            part = html.unescape(part)
        plain = " ".join(part.split())  # folds whitespace as \s+ does, in C
        if not cut or len(plain) > length + 16:
            break
        window *= 4
    return plain if len(plain) <= length else plain[: length - 1].rstrip() + "…"


def _content(data: dict[str, Any]) -> str | None:
    for key in ("text", "body", "transcript", "reason"):
        if data.get(key):
            return str(data[key])
    return None


class TimelineProjection:
    """Maintains ``identities``, ``customer_merges`` and ``timeline``.

    Consecutive interactions are written together (two statements per run); customer
    events, which may move rows already written, are applied one by one in log order.
    """

    name = "timeline"
    tables: tuple[str, ...] = ("identities", "customer_merges", "timeline")

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
        interactions: list[RecordedEvent] = []
        links: list[RecordedEvent] = []
        for event in events:
            family = family_of(event.type)
            if family in INTERACTION_FAMILIES:
                _links(conn, links)
                links = []
                interactions.append(event)
            elif event.type in _LINKS:
                _interactions(conn, interactions)
                interactions = []
                links.append(event)
            elif family == "customer":
                _interactions(conn, interactions)
                _links(conn, links)
                interactions, links = [], []
                _customer(conn, event)
        _interactions(conn, interactions)
        _links(conn, links)


@functools.cache
def family_of(event_type: str) -> str:
    """``email`` of ``email.received``."""
    return event_type.partition(".")[0]


#: The first part of every interaction event type.
INTERACTION_FAMILIES = frozenset({"email", "call", "chat", "sms", "tweet", "callback"})
#: An identity's address, kept for display, is replaced when it read as a placeholder and
#: a later event of the contact reads it: all events of one token share one address.
READABLE_AGAIN = (
    f"i.value LIKE '{PLACEHOLDER_PREFIX}%%' AND excluded.value NOT LIKE '{PLACEHOLDER_PREFIX}%%'"
)
#: The events that link contacts to a customer; runs of them are applied together.
_LINKS = frozenset({"customer.registered", "customer.identity_linked"})


def _interactions(conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
    """Insert the timeline rows of a run of interactions, with set-based statements."""
    if not events:
        return
    rows = []
    unclaimed: dict[tuple[str, str], tuple[str, int]] = {}
    for event in events:
        data = event.data
        contact = data["contact"]
        kind, value = contact["kind"], contact["value"]
        [token] = event.contact_tokens
        named = data.get("customer_id")
        if named is None:
            unclaimed.setdefault((kind, token), (value, event.position))
        rows.append(
            {
                "position": event.position,
                "event_id": event.event_id,
                "named": named,
                "occurred_at": event.occurred_at,
                "channel": data["channel"],
                "direction": data["direction"],
                "type": event.type,
                "conversation_id": conversation_of(data),
                "agent_id": data.get("agent_id"),
                "contact_kind": kind,
                "contact_token": token,
                "contact_value": value,
                "subject": data.get("subject"),
                "snippet": snippet(_content(data)),
            }
        )
    if unclaimed:  # first sight of a contact: it gets a provisional customer
        provisional = [
            {
                "kind": kind,
                "token": token,
                "value": value,
                "customer_id": provisional_customer_id(kind, token),
                "position": position,
            }
            for (kind, token), (value, position) in unclaimed.items()
        ]
        conn.execute(
            """
            INSERT INTO identities AS i (kind, token, value, customer_id, home, confidence,
                                         reason, position)
            SELECT r.kind, r.token, r.value, r.customer_id, r.customer_id, 'provisional',
                   'first seen', r.position
              FROM jsonb_to_recordset(%s::jsonb)
                   AS r(kind text, token text, value text, customer_id text, position bigint)
            ON CONFLICT (kind, token) DO UPDATE SET value = excluded.value
             WHERE """
            + READABLE_AGAIN,
            (orjson.dumps(provisional).decode(),),
        )
    conn.execute(
        """
        INSERT INTO timeline (position, event_id, owner_id, named_customer, customer_id,
                              occurred_at, channel, direction, type, conversation_id,
                              agent_id, contact_kind, contact_token, contact_value, subject,
                              snippet)
        SELECT r.position, r.event_id, o.owner_id, r.named IS NOT NULL,
               CASE WHEN EXISTS (SELECT FROM customer_merges AS m
                                  WHERE m.source_customer_id = o.owner_id)
                    THEN resolve_customer(o.owner_id) ELSE o.owner_id END,
               r.occurred_at, r.channel, r.direction, r.type, r.conversation_id,
               r.agent_id, r.contact_kind, r.contact_token, r.contact_value, r.subject,
               r.snippet
          FROM jsonb_to_recordset(%s::jsonb) AS r(
                   position bigint, event_id uuid, named text, occurred_at timestamptz,
                   channel text, direction text, type text, conversation_id text,
                   agent_id text, contact_kind text, contact_token text, contact_value text,
                   subject text, snippet text)
               CROSS JOIN LATERAL (
                   SELECT coalesce(r.named, (SELECT i.customer_id FROM identities AS i
                                              WHERE i.kind = r.contact_kind
                                                AND i.token = r.contact_token)) AS owner_id
               ) AS o
        """,
        (orjson.dumps(rows).decode(),),
    )


def conversation_of(data: dict[str, Any]) -> str:
    """An interaction's conversation: named, or derived from its thread or source id."""
    return str(
        data.get("conversation_id")
        or derive_conversation_id(data["channel"], data.get("thread_key") or data["external_id"])
    )


def _customer(conn: psycopg.Connection[Any], event: RecordedEvent) -> None:
    data = event.data
    customer = data["customer_id"]
    if event.type == "customer.identity_unlinked":
        kind = data["contact"]["kind"]
        [token] = event.contact_tokens
        conn.execute(
            """
            UPDATE identities
               SET customer_id = %s, confidence = 'provisional', reason = %s, source = NULL,
                   position = %s
             WHERE kind = %s AND token = %s
               -- named by the customer it was merged into, too
               AND resolve_customer(customer_id) = resolve_customer(%s)
            """,
            (
                provisional_customer_id(kind, token),
                data.get("reason") or "unlinked",
                event.position,
                kind,
                token,
                customer,
            ),
        )
        _reattribute_contact(conn, kind, token)
    elif event.type == "customer.merged":
        source = data["source_customer_id"]
        row = conn.execute(
            """
            WITH RECURSIVE chain(id, hops) AS (
                SELECT %(target)s::text, 0
                UNION ALL
                SELECT m.target_customer_id, c.hops + 1
                  FROM customer_merges AS m JOIN chain AS c ON m.source_customer_id = c.id
                 WHERE c.hops < 100
            )
            SELECT EXISTS (SELECT FROM chain WHERE id = %(source)s),
                   EXISTS (SELECT FROM customer_merges
                            WHERE source_customer_id = %(source)s
                              AND target_customer_id = %(target)s)
            """,
            {"source": source, "target": customer},
        ).fetchone()
        assert row is not None
        cycle, already = row
        if already:  # the same merge again: nothing changes
            return
        if cycle:  # the target is, or leads to, the source
            raise ValueError(f"{customer} is merged into {source}: merging would make a cycle")
        before = resolve_customer(conn, source)
        conn.execute(
            """
            INSERT INTO customer_merges (source_customer_id, target_customer_id, position)
            VALUES (%s, %s, %s)
            ON CONFLICT (source_customer_id) DO UPDATE
               SET target_customer_id = excluded.target_customer_id,
                   position = excluded.position
            """,
            (source, customer, event.position),
        )
        _reresolve(conn, before)
    elif event.type == "customer.erased":
        family = [customer, *data.get("merged_customer_ids", [])]
        _purge(conn, family, data.get("erased_contacts", []))
    elif event.type == "customer.unmerged":
        before = resolve_customer(conn, customer)
        conn.execute(
            "DELETE FROM customer_merges WHERE source_customer_id = %s AND target_customer_id = %s",
            (data["source_customer_id"], customer),
        )
        _reresolve(conn, before)


def _links(conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
    """Apply a run of registrations and identity links in parts that give what their links
    would one at a time: a part ends where a contact comes again, and a link to another
    contact's provisional customer is a part of its own (whom its contact follows depends
    on the links before it)."""
    part: list[RecordedEvent] = []
    seen: set[tuple[str, str]] = set()
    for event in events:
        contacts = _linked(event)
        alone = _to_another_contact(event, contacts)
        if alone or seen.intersection(contacts):
            _link_part(conn, part)
            part, seen = [], set()
        part.append(event)
        seen.update(contacts)
        if alone:
            _link_part(conn, part)
            part, seen = [], set()
    _link_part(conn, part)


def _to_another_contact(event: RecordedEvent, contacts: list[tuple[str, str]]) -> bool:
    """Whether this links its contact to another contact's provisional customer."""
    customer = str(event.data["customer_id"])
    return (
        event.type == "customer.identity_linked"
        and is_provisional(customer)
        and all(customer != provisional_customer_id(kind, token) for kind, token in contacts)
    )


def _linked(event: RecordedEvent) -> list[tuple[str, str]]:
    """The (kind, token) of each contact a registration or an identity link names."""
    return [(contact["kind"], token) for contact, token in _contacts(event)]


def _contacts(event: RecordedEvent) -> list[tuple[dict[str, str], str]]:
    """Each contact a registration or an identity link names, with its token."""
    data = event.data
    registered = event.type == "customer.registered"
    contacts = (data.get("contacts") or []) if registered else [data["contact"]]
    return list(zip(contacts, event.contact_tokens, strict=True))


def _link_part(conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
    """Upsert the identities of links naming distinct contacts together, then move the
    past interactions of the contacts that changed hands. A contact never seen before has
    no interactions to move, since every interaction naming no customer gave its contact
    an identity row when it was applied."""
    if not events:
        return
    last: dict[tuple[str, str], dict[str, Any]] = {}  # a contact comes once (see _links)
    for event in events:
        data = event.data
        if event.type == "customer.registered":
            how = {"confidence": "verified", "reason": "registered", "source": None}
        else:
            how = {
                "confidence": data.get("confidence", "verified"),
                "reason": data.get("reason", ""),
                "source": data.get("source"),
            }
        for contact, token in _contacts(event):
            key = (contact["kind"], token)
            last[key] = {
                "kind": key[0],
                "token": token,
                "value": contact["value"],
                "customer_id": data["customer_id"],
                "home": provisional_customer_id(key[0], token),
                "position": event.position,
                **how,
            }
    if not last:
        return
    moved = conn.execute(
        """
        WITH given AS (
            SELECT * FROM jsonb_to_recordset(%s::jsonb) AS g(
                kind text, token text, value text, customer_id text, home text,
                confidence text, reason text, source text, position bigint)
        ), linked AS (
            INSERT INTO identities AS i (kind, token, value, customer_id, home, confidence,
                                         reason, source, position)
            SELECT kind, token, value, customer_id, home, confidence, reason, source, position
              FROM given
            ON CONFLICT (kind, token) DO UPDATE
               SET customer_id = excluded.customer_id, confidence = excluded.confidence,
                   reason = excluded.reason, source = excluded.source,
                   position = excluded.position,
                   value = CASE WHEN """
        + READABLE_AGAIN
        + """ THEN excluded.value ELSE i.value END
        )
        SELECT i.kind, i.token, i.customer_id, g.customer_id
          FROM identities AS i JOIN given AS g USING (kind, token)
         WHERE i.customer_id <> g.customer_id
        """,
        (orjson.dumps(list(last.values())).decode(),),
    ).fetchall()
    for kind, token, before, after in moved:  # identities as they were (the snapshot)
        _reattribute_contact(conn, kind, token)
        if before == provisional_customer_id(kind, token):
            _follow(conn, before, after)
    # A contact linked to another contact's provisional customer after a customer claimed
    # that contact (the linker had not seen the claim yet) goes to the claimer at once, with
    # any contact that followed it there, as they all would have at the claim: the graph
    # is the same however the events were batched.
    targets = {
        g["customer_id"]
        for g in last.values()
        if is_provisional(g["customer_id"]) and g["customer_id"] != g["home"]
    }
    for target in sorted(targets):
        _follow(conn, target, target)


def _purge(
    conn: psycopg.Connection[Any], erased: list[str], contacts: list[dict[str, str]]
) -> None:
    """Forget an erased customer: the rows of them, of the customers merged into them, and
    of their contacts. A later interaction from one of those contacts starts afresh.

    ``contacts`` are the erased contacts, by kind and token: their rows go wherever they
    are, since nothing of them can be read any more."""
    family = [
        row[0]
        for row in conn.execute(
            """
            SELECT unnest(%(erased)s::text[])
            UNION
            SELECT source_customer_id FROM customer_merges
             WHERE resolve_customer(source_customer_id) = ANY(%(erased)s)
            """,
            {"erased": erased},
        ).fetchall()
    ]
    merged_away = [c for c in erased if resolve_customer(conn, c) != c]
    conn.execute("DELETE FROM timeline WHERE customer_id = ANY(%s)", (family,))
    if merged_away:  # erased while merged into another: its rows resolve elsewhere
        conn.execute("DELETE FROM timeline WHERE owner_id = ANY(%s)", (family,))
    conn.execute("DELETE FROM identities WHERE customer_id = ANY(%s)", (family,))
    if contacts:
        pairs = {
            "kinds": [c["kind"] for c in contacts],
            "tokens": [c["token"] for c in contacts],
        }
        conn.execute(
            """
            DELETE FROM timeline
             WHERE NOT named_customer AND (contact_kind, contact_token) IN (
                   SELECT * FROM unnest(%(kinds)s::text[], %(tokens)s::text[]))
            """,
            pairs,
        )
        conn.execute(
            """
            DELETE FROM identities WHERE (kind, token) IN (
                   SELECT * FROM unnest(%(kinds)s::text[], %(tokens)s::text[]))
            """,
            pairs,
        )
    conn.execute(
        "DELETE FROM customer_merges"
        " WHERE source_customer_id = ANY(%(f)s) OR target_customer_id = ANY(%(f)s)",
        {"f": family},
    )


def refresh_content(conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> int:
    """Write the subject and snippet of these interactions' rows again from the events as
    they read now (placeholders where retention shredded their content); the rows
    changed."""
    rows = [
        {
            "position": e.position,
            "subject": e.data.get("subject"),
            "snippet": snippet(_content(e.data)),
        }
        for e in events
        if family_of(e.type) in INTERACTION_FAMILIES
    ]
    if not rows:
        return 0
    return conn.execute(
        """
        UPDATE timeline AS t SET subject = r.subject, snippet = r.snippet
          FROM jsonb_to_recordset(%s::jsonb) AS r(position bigint, subject text, snippet text)
         WHERE t.position = r.position
           AND (t.subject, t.snippet) IS DISTINCT FROM (r.subject, r.snippet)
        """,
        (orjson.dumps(rows).decode(),),
    ).rowcount


def _follow(conn: psycopg.Connection[Any], provisional: str, owner: str) -> None:
    """Contacts linked to a contact's provisional customer (a chat visitor linked to the
    email it gave, before anyone claimed that email) belong to the person behind that
    contact: when a customer claims it, they go along, to where ``owner`` leads (see
    ``_claimer``)."""
    owner = _claimer(conn, owner)
    if owner == provisional:
        return
    followers = conn.execute(
        """
        UPDATE identities SET customer_id = %s
         WHERE customer_id = %s AND confidence <> 'provisional'
        RETURNING kind, token
        """,
        (owner, provisional),
    ).fetchall()
    for kind, token in followers:
        _reattribute_contact(conn, kind, token)


def _claimer(conn: psycopg.Connection[Any], customer: str) -> str:
    """Where a link to ``customer`` leads: a provisional customer whose own contact a
    customer has claimed leads to that customer, and so on along a chain of such links.
    A chain that comes back on itself (x linked to v's provisional customer, v to x's)
    leads nowhere: ``customer`` itself."""
    seen = {customer}
    found = customer
    while is_provisional(found):
        row = conn.execute(
            "SELECT customer_id FROM identities WHERE home = %s AND customer_id <> home",
            (found,),
        ).fetchone()
        if row is None:
            break
        found = str(row[0])
        if found in seen:
            return customer
        seen.add(found)
    return found


def _reattribute_contact(conn: psycopg.Connection[Any], kind: str, token: str) -> None:
    """Give every interaction of the contact (that names no customer) its current owner."""
    conn.execute(
        """
        UPDATE timeline AS t
           SET owner_id = i.customer_id, customer_id = resolve_customer(i.customer_id)
          FROM identities AS i
         WHERE i.kind = %(kind)s AND i.token = %(token)s
           AND t.contact_kind = %(kind)s AND t.contact_token = %(token)s
           AND NOT t.named_customer
           AND (t.owner_id, t.customer_id)
               IS DISTINCT FROM (i.customer_id, resolve_customer(i.customer_id))
        """,
        {"kind": kind, "token": token},
    )


def _reresolve(conn: psycopg.Connection[Any], customer: str) -> None:
    """Follow the merges again for the rows that resolved to ``customer``: the only ones
    a merge or unmerge involving it can move."""
    conn.execute(
        """
        UPDATE timeline
           SET customer_id = resolve_customer(owner_id)
         WHERE customer_id = %(customer)s AND resolve_customer(owner_id) <> %(customer)s
        """,
        {"customer": customer},
    )
