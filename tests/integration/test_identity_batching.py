"""The identity graph (and the timeline) is the same however the events are batched.

Seed: contacts seen first through interactions (each gets its provisional customer, its
home) and maybe registered customers cu-1..cu-3. Then 1..8 steps: registrations, links
and unlinks (to a customer or to any contact's provisional customer), merges, unmerges
and interactions of contacts seen for the first time or again. They are applied (a) one
event per batch with a catch-up after each and (b) in a fresh database, all in one batch;
the live views, ``as_of`` the head and a rebuild of each must all agree. Provisional ids
are named "home of <contact>", since each database has its own privacy secret.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interaction_store.asof import as_of
from interaction_store.db import open_pool
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.projections.timeline import provisional_customer_id
from interaction_store.store import Store
from interaction_store.testing import TestDatabases
from tests.helpers import T0, email
from tests.integration.test_rebuild import rebuild_all

EMAILS = ["email:e1@example.com", "email:e2@example.com", "email:e3@example.com"]
CHATS = ["chat:v1", "chat:v2", "chat:v3"]
CUSTOMERS = ["cu-1", "cu-2", "cu-3"]
EXAMPLES = 12


def _id(tag: str) -> str:
    return str(uuid5(NAMESPACE_URL, f"prop:{tag}"))


def _interaction(n: int, contact: str) -> dict[str, Any]:
    kind, value = contact.split(":", 1)
    if kind == "email":
        event = email(n, contact=contact, external_id=f"x-{value}")
    else:
        event = {"type": "chat.message", "occurred_at": (T0 + timedelta(minutes=n)).isoformat(),
                 "data": {"contact": contact, "direction": "inbound",
                          "external_id": f"x-{value}", "text": f"hi from {value}"}}  # fmt: skip
    return {**event, "id": _id(f"seed-{contact}")}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    contacts = draw(st.lists(st.sampled_from(EMAILS + CHATS), min_size=2, max_size=5,
                             unique=True))  # fmt: skip
    contacts.sort()
    registered = sorted(draw(st.lists(st.sampled_from(CUSTOMERS), max_size=3, unique=True)))
    contact = st.sampled_from(EMAILS + CHATS)  # seen in the seed, later or never
    customer = st.sampled_from(CUSTOMERS)
    target = customer | contact.map(lambda c: f"home:{c}")
    pair = st.lists(customer, min_size=2, max_size=2, unique=True)
    step = st.one_of(
        st.tuples(st.just("register"), customer,
                  st.lists(contact, min_size=1, max_size=2, unique=True)),
        st.tuples(st.just("link"), target, contact),
        st.tuples(st.just("link"), target, contact),  # the interesting one, twice as often
        st.tuples(st.just("unlink"), target, contact),
        st.tuples(st.sampled_from(["merge", "unmerge"]), pair.map(tuple)),
        st.tuples(st.just("see"), contact),
        st.tuples(st.just("see"), contact),
    )  # fmt: skip
    return contacts, registered, draw(st.lists(step, min_size=1, max_size=8))


def _event(i: int, step: tuple[Any, ...], homes: dict[str, str]) -> dict[str, Any]:
    def who(ref: str) -> str:
        return homes[ref[5:]] if ref.startswith("home:") else ref

    kind = step[0]
    if kind == "see":
        event = _interaction(100 + i, step[1])
        event["data"]["external_id"] += f"-{i}"
        return {**event, "id": _id(f"step-{i}")}
    if kind == "register":
        data: dict[str, Any] = {"customer_id": step[1], "contacts": list(step[2])}
        type_ = "customer.registered"
    elif kind in ("link", "unlink"):
        data = {"customer_id": who(step[1]), "contact": step[2]}
        type_ = f"customer.identity_{kind}ed"
    else:
        target, source = step[1]
        data = {"customer_id": target, "source_customer_id": source}
        type_ = f"customer.{kind}d"
    occurred_at = (T0 + timedelta(hours=1, minutes=i)).isoformat()
    return {"id": _id(f"step-{i}"), "type": type_, "occurred_at": occurred_at, "data": data}


def _read(conn: psycopg.Connection[Any], named: dict[str, str], index: dict[str, str]) -> Any:
    def n(v: Any) -> Any:
        return named.get(v, v)

    identities = {
        f"{k}:{v}": (n(c), n(h))
        for k, v, c, h in conn.execute("SELECT kind, value, customer_id, home FROM identities")
    }
    timeline = {
        x: (n(o), n(c))
        for x, o, c in conn.execute(
            "SELECT e.payload->>'external_id', t.owner_id, t.customer_id"
            " FROM timeline AS t JOIN events AS e USING (position)"
        )
    }
    merges = {
        s: n(t)
        for s, t in conn.execute(
            "SELECT source_customer_id, target_customer_id FROM customer_merges"
        )
    }
    return {"identities": identities, "timeline": timeline, "merges": merges}


def _dead(conn: psycopg.Connection[Any], index: dict[str, str]) -> list[str]:
    rows = conn.execute(
        "SELECT projection, event_id::text FROM dead_letters WHERE resolution IS NULL"
        " ORDER BY projection, position"
    ).fetchall()
    return [f"{p}:{index.get(e, e)}" for p, e in rows]


def _run(databases: TestDatabases, scenario: Any, separately: bool) -> dict[str, Any]:
    contacts, registered, steps = scenario
    url = databases.create()
    try:
        with open_pool(url, min_size=1, max_size=4) as pool:
            store = Store(pool)

            def runner() -> ProjectionRunner:
                return ProjectionRunner(store, all_projections(), max_attempts=1)

            seed = [_interaction(n, c) for n, c in enumerate(contacts)] + [
                {"id": _id(f"reg-{c}"), "type": "customer.registered",
                 "occurred_at": T0.isoformat(), "data": {"customer_id": c}}
                for c in registered
            ]  # fmt: skip
            store.append_batch(seed)
            runner().catch_up()
            with pool.connection() as conn:
                keyring = store.sealer.keyring(conn)
                homes = {
                    c: provisional_customer_id(k, keyring.contact_token(k, v))
                    for c in EMAILS + CHATS
                    for k, v in [c.split(":", 1)]
                }
            named = {h: f"home of {c}" for c, h in homes.items()}
            events = [_event(i, s, homes) for i, s in enumerate(steps)]
            index = {e["id"]: f"#{i} {steps[i][0]}" for i, e in enumerate(events)}
            for batch in [[e] for e in events] if separately else [events]:
                store.append_batch(batch)
                runner().catch_up()
            out: dict[str, Any] = {}
            with pool.connection() as conn:
                out["live"] = {**_read(conn, named, index), "dead": _dead(conn, index)}
            with pool.connection() as conn:
                try:
                    with as_of(conn, store.head(), sealer=store.sealer):
                        out["as_of"] = {**_read(conn, named, index), "dead": out["live"]["dead"]}
                except Exception as exc:
                    out["as_of"] = f"{type(exc).__name__}: {exc}"
            rebuild_all(store, batch_size=2000)
            with pool.connection() as conn:
                out["rebuilt"] = {**_read(conn, named, index), "dead": _dead(conn, index)}
            store.close()
        return out
    finally:
        databases.drop(url)


def _diff(a: Any, b: Any) -> dict[str, Any]:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return {"whole": (a, b)}
    out = {}
    for table in a:
        x, y = a[table], b[table]
        if isinstance(x, dict):
            d = {k: (x.get(k), y.get(k)) for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)}
        else:
            d = (x, y) if x != y else None
        if d:
            out[table] = d
    return out


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_the_identity_graph_is_the_same_however_the_events_are_batched(
    databases: TestDatabases, scenario: Any
) -> None:
    _compare(databases, scenario)


def test_a_merge_that_would_make_a_cycle_is_passed_over_alike(databases: TestDatabases) -> None:
    """The second merge would make a cycle: the views park it, and ``as_of`` and a rebuild
    pass over it alike."""
    _compare(
        databases,
        (["email:e1@example.com"], [], [("merge", ("cu-1", "cu-3")), ("merge", ("cu-3", "cu-1"))]),
    )


def _compare(databases: TestDatabases, scenario: Any) -> None:
    a = _run(databases, scenario, separately=True)
    b = _run(databases, scenario, separately=False)
    views = {"a live": a["live"], "a as_of": a["as_of"], "a rebuilt": a["rebuilt"],
             "b live": b["live"], "b as_of": b["as_of"], "b rebuilt": b["rebuilt"]}  # fmt: skip
    diffs = {
        name: _diff(views["a live"], view)
        for name, view in views.items()
        if name != "a live" and view != views["a live"]
    }
    assert not diffs, (
        f"history {scenario!r}\nviews differing from 'a live' (a live value, other value):"
        f" {diffs}\na live: {views['a live']}"
    )
