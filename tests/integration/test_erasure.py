"""Erasure by crypto-shredding, on the real app and database.

A customer whose history carries a unique canary string (in a name, an address, email
subjects and bodies, a call transcript, a chat) is erased. Afterwards the API answers
placeholders and never a 5xx, the other customers' answers are byte-identical, a rebuild
and a replay succeed and agree, ``audit verify`` passes, the canary is nowhere in a
``pg_dump`` of the database, and a new email from the same address starts a new history
under a new key.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from interaction_store import views
from interaction_store.api import create_app
from interaction_store.asof import as_of
from interaction_store.audit.replay import replay
from interaction_store.audit.verify import verify
from interaction_store.cli import cli
from interaction_store.db import open_pool
from interaction_store.demo import generate
from interaction_store.keys import create_key
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.projections.rebuild import rebuild
from interaction_store.projections.timeline import provisional_customer_id
from interaction_store.settings import Settings
from interaction_store.shredding import Erasure, ViewsBehind, erase
from interaction_store.store import Store
from interaction_store.testing import TestDatabases
from tests.helpers import T0, email, park_failures, parked_errors
from tests.integration.test_rebuild import (
    CONTACTS,
    CUSTOMERS,
    histories,
    rebuild_all,
    snapshot,
    timed,
)

CANARY = "Xq7Zt9Canary"
ADDRESS = f"{CANARY.lower()}@example.com"
PHONE = "+14155550142"


canary_email = email(
    1,
    contact=f"email:{ADDRESS}",
    subject=f"Refund {CANARY}",
    body=f"<p>My account {CANARY} was charged twice</p>",
    external_id="m-1",
)


def canary_history(store: Store) -> None:
    """cu-canary (with cu-canary-old merged in) and cu-other, who share nothing."""
    at = T0.isoformat()
    store.append_batch(
        [
            {"type": "customer.registered", "occurred_at": at,
             "data": {"customer_id": "cu-canary", "name": f"Ann {CANARY}", "tier": "gold",
                      "contacts": [f"email:{ADDRESS}", f"phone:{PHONE}"]}},
            {"type": "customer.registered", "occurred_at": at,
             "data": {"customer_id": "cu-canary-old", "name": f"A. {CANARY}",
                      "contacts": [f"email:old.{ADDRESS}"]}},
            {"type": "customer.registered", "occurred_at": at,
             "data": {"customer_id": "cu-other", "name": "Bob Other",
                      "contacts": ["email:bob@example.com"]}},
        ]
    )  # fmt: skip
    store.append_batch(
        [
            canary_email,
            email(2, contact=f"email:old.{ADDRESS}", subject="old address",
                  body=f"signed {CANARY}", external_id="m-2"),
            email(3, contact="email:bob@example.com", subject="Bob's question",
                  body="Where is my parcel?", external_id="m-3"),
            {"type": "call.completed", "occurred_at": T0.isoformat(),
             "data": {"contact": f"phone:{PHONE}", "direction": "inbound", "status": "answered",
                      "external_id": "call-1", "duration_s": 60,
                      "transcript": f"this is {CANARY} calling about the refund"}},
            {"type": "chat.message", "occurred_at": T0.isoformat(),
             "data": {"contact": "chat:visitor-77", "direction": "inbound",
                      "customer_id": "cu-canary", "external_id": "chat-1",
                      "text": f"hello, {CANARY} here"}},
        ]
    )  # fmt: skip
    store.append_batch(
        [{"type": "customer.merged", "occurred_at": T0.isoformat(),
          "data": {"customer_id": "cu-canary", "source_customer_id": "cu-canary-old"}}]
    )  # fmt: skip
    ProjectionRunner(store, all_projections()).catch_up()


@pytest.fixture
def http(pool: ConnectionPool[Any], database_url: str, store: Store) -> Iterator[TestClient]:
    canary_history(store)
    app = create_app(Settings(database_url=database_url), pool=pool, projector=False)
    with TestClient(app) as client:
        yield client


def bearer(pool: ConnectionPool[Any], *scopes: str) -> dict[str, str]:
    key, _ = create_key(pool, "-".join(scopes), list(scopes))
    return {"Authorization": f"Bearer {key}"}


def pg_dump(database_url: str) -> str:
    """The database as SQL, dumped by the pg_dump of the embedded server's wheel (new
    enough for either server the suite runs on)."""
    import pgserver

    binary = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    return subprocess.run(
        [str(binary), "--no-owner", "--dbname", database_url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


OTHER_READS = (
    "/v1/customers/cu-other",
    "/v1/customers/cu-other/timeline",
    "/v1/customers/cu-other/context",
    "/v1/customers/lookup?identity=email:bob@example.com",
)


def test_an_erased_customer_leaves_placeholders_and_no_trace_of_the_canary(
    http: TestClient, pool: ConnectionPool[Any], store: Store, database_url: str
) -> None:
    reader = bearer(pool, "timeline:read")
    auditor = bearer(pool, "audit:read")
    admin = bearer(pool, "admin")
    park_failures(database_url, {"m-1": ADDRESS, "m-3": "bob@example.com"})
    assert CANARY in pg_dump(database_url)  # the views hold it, as they should, till now
    others = {path: http.get(path, headers=reader).content for path in OTHER_READS}
    head = store.head()

    answer = http.post(
        "/v1/customers/cu-canary-old/erase", json={"reason": "DSR 118"}, headers=admin
    )
    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["customer_id"] == "cu-canary"  # the alias stands for its customer
    assert done["merged_customer_ids"] == ["cu-canary-old"]
    assert done["contacts"] == 3  # both emails and the phone
    assert done["keys_shredded"] >= 4
    assert done["position"] == head + 1
    ProjectionRunner(store, all_projections()).catch_up()

    # The API answers placeholders, never an error.
    summary = http.get("/v1/customers/cu-canary", headers=reader)
    assert summary.status_code == 200, summary.text
    assert summary.json()["profile"]["erased_at"] is not None
    assert summary.json()["profile"]["name"] is None
    assert summary.json()["identities"] == []
    assert http.get("/v1/customers/cu-canary/timeline", headers=reader).json()["items"] == []
    assert http.get("/v1/customers/cu-canary/context", headers=reader).status_code == 200
    lookup = http.get(f"/v1/customers/lookup?identity=email:{ADDRESS}", headers=reader)
    assert lookup.status_code == 404
    log = http.get("/v1/log?limit=100", headers=auditor)
    assert log.status_code == 200
    assert CANARY not in log.text
    assert CANARY.lower() not in log.text
    stored = {e["data"].get("external_id"): e["data"] for e in log.json()["events"]}
    assert stored["m-1"]["subject"] == "[erased]"
    assert stored["m-1"]["body"] == "[erased]"
    assert stored["m-1"]["contact"]["value"].startswith("erased-")
    assert stored["call-1"]["transcript"] == "[erased]"
    assert stored["chat-1"]["text"] == "[erased]"
    assert stored["m-3"]["body"] == "Where is my parcel?"  # another's email is untouched
    registered = [e for e in log.json()["events"] if e["type"] == "customer.registered"]
    assert [e["data"].get("name") for e in registered] == ["[erased]", "[erased]", "Bob Other"]
    exported = http.get("/v1/customers/cu-canary/export", headers=auditor)
    assert exported.status_code == 200
    assert CANARY not in exported.text

    # Everyone else reads exactly as before.
    assert {path: http.get(path, headers=reader).content for path in OTHER_READS} == others

    # The log still verifies; a rebuild and a replay work and agree with the live views.
    with psycopg.connect(database_url) as conn:
        report = verify(conn, None)
    assert report.ok, report.failures
    live = snapshot(store)
    assert replay(store).identical
    rebuild_all(store, batch_size=2)
    assert snapshot(store) == live

    dump = pg_dump(database_url)
    for trace in (CANARY, CANARY.lower(), CANARY.upper(), PHONE, PHONE[2:]):
        assert trace not in dump, trace
    assert parked_errors(database_url) == {
        "m-1": "[erased]",  # a projection's failure that quoted the address is blanked
        "m-3": "Key (contact_value)=(bob@example.com) already exists.",  # another's stays
    }

    # The same address again: a new history, under a new key the old one is not.
    old_keys = _keys(database_url)
    store.append_batch([email(9, contact=f"email:{ADDRESS}", subject="hello again",
                              body="new here", external_id="m-9")])  # fmt: skip
    ProjectionRunner(store, all_projections()).catch_up()
    found = http.get(f"/v1/customers/lookup?identity=email:{ADDRESS}", headers=reader)
    assert found.status_code == 200
    newcomer = found.json()["customer_id"]
    assert newcomer != "cu-canary"
    items = http.get(f"/v1/customers/{newcomer}/timeline", headers=reader).json()["items"]
    assert [i["subject"] for i in items] == ["hello again"]
    again = store.append_batch([canary_email])  # the erased email, delivered again
    assert again.already_present == 1  # not written again, and no conflict either
    new_keys = _keys(database_url) - old_keys
    assert new_keys
    assert all(live for _, live in new_keys)
    shredded_ids = {key_id for key_id, live in old_keys if not live}
    assert not shredded_ids & {key_id for key_id, _ in new_keys}


def _keys(database_url: str) -> set[tuple[int, bool]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT key_id, key IS NOT NULL FROM data_keys").fetchall()
    return {(key_id, live) for key_id, live in rows}


def test_erasing_an_unknown_customer_is_404_and_writes_nothing(
    http: TestClient, pool: ConnectionPool[Any], database_url: str, store: Store
) -> None:
    before = (store.head(), _keys(database_url))
    answer = http.post("/v1/customers/cu-nobody/erase", headers=bearer(pool, "admin"))
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert (store.head(), _keys(database_url)) == before


def test_erasing_needs_the_admin_scope(http: TestClient, pool: ConnectionPool[Any]) -> None:
    answer = http.post("/v1/customers/cu-canary/erase", headers=bearer(pool, "audit:read"))
    assert answer.status_code == 403
    assert http.post("/v1/customers/cu-canary/erase").status_code == 401


def test_an_append_with_a_key_shredded_meanwhile_is_sealed_again(
    pool: ConnectionPool[Any], store: Store
) -> None:
    """Another process's store still holds the key in memory: its next append must not be
    written under the destroyed key (``data_keys_live``), but under a new one."""
    canary_history(store)
    stale = Store(pool)
    try:
        stale.append_batch([email(20, contact=f"email:{ADDRESS}", external_id="m-20")])
        ProjectionRunner(store, all_projections()).catch_up()
        erase(store, "cu-canary")
        stale.append_batch(
            [email(21, contact=f"email:{ADDRESS}", subject="after", external_id="m-21")]
        )
        [after] = [e for e in stale.read_all(limit=100) if e.data.get("external_id") == "m-21"]
        assert after.data["subject"] == "after"  # sealed under a key that exists
        assert after.data["contact"]["value"] == ADDRESS
    finally:
        stale.close()


def test_a_generated_log_with_merges_replays_identically_after_an_erasure(
    store: Store, database_url: str
) -> None:
    store.append_batch(list(generate(300, seed=11, customer_count=20, with_customers=True)))
    runner = ProjectionRunner(store, all_projections(), batch_size=64)
    runner.catch_up()
    with store.pool.connection() as conn:
        busiest = conn.execute(
            "SELECT customer_id FROM timeline WHERE customer_id LIKE 'cu-%'"
            " GROUP BY customer_id ORDER BY count(*) DESC, customer_id LIMIT 2"
        ).fetchall()
    first, second = (row[0] for row in busiest)
    store.append_batch(
        [{"type": "customer.merged", "occurred_at": T0.isoformat(),
          "data": {"customer_id": first, "source_customer_id": second}}]
    )  # fmt: skip
    runner.catch_up()
    erase(store, first)
    store.append_batch(list(generate(100, seed=12, customer_count=20)))
    runner.catch_up()
    report = replay(store, batch_size=50)
    assert report.identical, report.differences
    with psycopg.connect(database_url) as conn:
        assert verify(conn, None).ok


def test_the_erase_command_asks_first_and_purges_the_views(database_url: str, store: Store) -> None:
    canary_history(store)
    runner = CliRunner()
    refused = runner.invoke(
        cli, ["--database-url", database_url, "erase", "cu-canary"], input="n\n"
    )
    assert refused.exit_code == 1
    assert "Aborted" in refused.output
    done = runner.invoke(cli, ["--database-url", database_url, "erase", "cu-canary", "--yes"])
    assert done.exit_code == 0, done.output
    assert "erased cu-canary and cu-canary-old" in done.output
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM timeline WHERE customer_id IN ('cu-canary', 'cu-canary-old')"
        ).fetchone()
    assert rows == (0,)
    unknown = runner.invoke(cli, ["--database-url", database_url, "erase", "cu-x", "--yes"])
    assert unknown.exit_code == 1
    assert "no customer cu-x" in unknown.output


def test_a_provisional_customer_is_erased_and_its_address_starts_afresh(
    store: Store, database_url: str
) -> None:
    """A contact no customer claims has a provisional customer; erased, it is unknown, and
    the same address writing again is a new history under the same provisional id."""
    store.append_batch([email(1, contact="email:walkin@example.com", body="walk-in secret",
                              external_id="w-1")])  # fmt: skip
    runner = ProjectionRunner(store, all_projections())
    runner.catch_up()
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT customer_id FROM timeline").fetchone()
    assert row is not None
    provisional = row[0]
    done = erase(store, provisional)
    assert (done.customer_id, done.contacts) == (provisional, 1)
    runner.catch_up()
    with psycopg.connect(database_url) as conn:
        assert views.find_customer_read(provisional).run(conn) is None
    store.append_batch([email(2, contact="email:walkin@example.com", body="back again",
                              external_id="w-2")])  # fmt: skip
    runner.catch_up()
    with psycopg.connect(database_url) as conn:
        summary = views.customer(conn, provisional)
        items = views.timeline(conn, provisional)
    assert summary.profile is None or summary.profile.erased_at is None
    assert [i.snippet for i in items] == ["back again"]
    assert "walk-in secret" not in pg_dump(database_url)
    assert replay(store).identical


# Any history ---------------------------------------------------------------------------


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    history=histories,
    erasures=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([*CUSTOMERS, *CONTACTS])), max_size=3
    ),
)
def test_any_history_with_erasures_replays_identically(
    databases: TestDatabases,
    history: list[list[dict[str, Any]]],
    erasures: list[tuple[int, Any]],
) -> None:
    """Links, unlinks, merges, unmerges and interactions in any order, with customers (or
    the owners of contacts) erased between them: a replay after it all agrees with the
    live views, and the log verifies."""
    url = databases.create()
    try:
        with open_pool(url, min_size=1, max_size=4) as pool:
            store = Store(pool)
            runner = ProjectionRunner(store, all_projections(), batch_size=3, max_attempts=1)
            for at, events in enumerate(timed(history)):
                store.append_batch(events)
                runner.catch_up()
                for _, target in [e for e in erasures if e[0] == at]:
                    with pool.connection() as conn:
                        who = (
                            target
                            if isinstance(target, str)
                            else views.lookup_read(f"{target['kind']}:{target['value']}").run(conn)
                        )
                    if who is not None:
                        with contextlib.suppress(LookupError):
                            erase(store, who)
                        runner.catch_up()
            report = replay(store, batch_size=4)
            with psycopg.connect(url) as conn:
                verified = verify(conn, None)
            store.close()
        assert report.identical, report.differences
        assert verified.ok, verified.failures
    finally:
        databases.drop(url)


def test_an_erasure_waits_for_the_views_and_refuses_them_behind(store: Store) -> None:
    """Whom to erase is read from the views: a link they have not applied yet would be
    missed, so the erasure waits for them, and refuses with nothing written if they stay
    behind."""
    runner = ProjectionRunner(store, all_projections())
    canary_history(store)
    store.append_batch(
        [{"type": "customer.identity_linked", "occurred_at": T0.isoformat(),
          "data": {"customer_id": "cu-canary", "contact": "email:late@example.com"}}]
    )  # fmt: skip
    head = store.head()
    with pytest.raises(ViewsBehind):
        erase(store, "cu-canary", wait=0.3)
    assert store.head() == head
    runner.catch_up()
    assert erase(store, "cu-canary").contacts == 4  # the late link's address too


def _erase_between(
    pool: ConnectionPool[Any],
    store: Store,
    first: list[dict[str, Any]],
    then: list[dict[str, Any]],
    stream: str,
) -> None:
    """In one thread, a transaction of another store (which knows no key yet) appends
    ``first``, waits till an erasure of cu-canary has started in a second thread, gives
    it time to commit were it let, then appends ``then`` to ``stream``; a projector runs
    meanwhile. Both must finish: the transaction committed, the erasure done."""
    runner = ProjectionRunner(store, all_projections(), poll_interval=0.05)
    projector = threading.Thread(target=runner.run, daemon=True)
    projector.start()
    other = Store(pool)
    first_done, erasing = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def transaction() -> None:
        try:
            with other.transaction() as tx:
                tx.append(stream, first)
                first_done.set()
                erasing.wait(5)
                time.sleep(0.3)  # the erasure is queued behind this transaction by now
                tx.append(stream, then)
            outcome["transaction"] = "committed"
        except Exception as exc:
            outcome["transaction"] = repr(exc)

    def erasure() -> None:
        first_done.wait(5)
        erasing.set()
        try:
            outcome["erasure"] = erase(store, "cu-canary", wait=20)
        except Exception as exc:
            outcome["erasure"] = repr(exc)

    threads = [threading.Thread(target=transaction), threading.Thread(target=erasure)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), outcome
        assert outcome["transaction"] == "committed"
        assert isinstance(outcome["erasure"], Erasure)
    finally:
        runner.stop()
        projector.join(10)
        other.close()


def test_an_erasure_and_appends_that_need_new_keys_do_not_deadlock(
    pool: ConnectionPool[Any], store: Store
) -> None:
    """A transaction has sealed an append (it holds the shredding lock, shared), an erasure
    waits for it, and the transaction then needs a new key: making the key must not wait
    for the erasure, or neither would ever finish."""
    canary_history(store)
    _erase_between(
        pool,
        store,
        [email(30, contact=f"email:{ADDRESS}", external_id="m-30", conversation_id="t-1")],
        [
            email(
                31, contact="email:brand.new@example.com", external_id="m-31", conversation_id="t-1"
            )
        ],
        "conversation-t-1",
    )


def test_an_erasure_waits_for_a_transaction_that_appended_nothing_personal_yet(
    pool: ConnectionPool[Any], store: Store
) -> None:
    """A transaction appends an event with nothing to seal, then the erased person's email:
    the erasure must come before the transaction or after it, never between, where the
    email would be sealed under a key made after the erasure's and read in the clear."""
    canary_history(store)
    _erase_between(
        pool,
        store,
        [{"type": "conversation.reopened", "occurred_at": T0.isoformat(),
          "data": {"conversation_id": "cv-t"}}],
        [email(32, contact=f"email:{ADDRESS}", body="late words", external_id="m-32",
               conversation_id="cv-t")],
        "conversation-cv-t",
    )  # fmt: skip
    [late] = [e for e in store.read_all() if e.data.get("external_id") == "m-32"]
    assert late.data["body"] == "[erased]"


def test_a_visitor_linked_to_a_contacts_provisional_customer_is_erased_with_it(
    store: Store,
) -> None:
    """A chat visitor linked to an address nobody claimed yet (the Chatwoot connector does
    this) follows the address to the customer who claims it; that link event names the
    address's provisional customer and is erased with the customer too."""
    runner = ProjectionRunner(store, all_projections())
    store.append_batch([email(1, contact="email:walkin@example.com", external_id="w-1")])
    with store.pool.connection() as conn:
        token = store.sealer.keyring(conn).token("email:walkin@example.com").hex()
    provisional = provisional_customer_id("email", token)
    store.append_batch(
        [{"type": "customer.identity_linked", "occurred_at": T0.isoformat(),
          "data": {"customer_id": provisional, "contact": "chat:visitor-secret-9"}},
         {"type": "customer.registered", "occurred_at": T0.isoformat(),
          "data": {"customer_id": "cu-walkin", "contacts": ["email:walkin@example.com"]}}]
    )  # fmt: skip
    runner.catch_up()
    done = erase(store, "cu-walkin")
    assert done.contacts == 2  # the address and the visitor who followed it
    link = next(e for e in store.read_all() if e.type == "customer.identity_linked")
    assert link.data["contact"]["value"].startswith("erased-")


def test_a_visitor_linked_to_an_address_claimed_meanwhile_follows_it_too(
    store: Store, database_url: str
) -> None:
    """The connector linked the visitor to the address's provisional customer before the
    views showed the customer who claims the address: the visitor follows the address
    all the same (as it would had both come in one batch), and is erased with it."""
    runner = ProjectionRunner(store, all_projections())
    store.append_batch([email(1, contact="email:walkin@example.com", external_id="w-1")])
    runner.catch_up()
    with store.pool.connection() as conn:
        token = store.sealer.keyring(conn).token("email:walkin@example.com").hex()
    store.append_batch(
        [{"type": "customer.registered", "occurred_at": T0.isoformat(),
          "data": {"customer_id": "cu-walkin", "contacts": ["email:walkin@example.com"]}}]
    )  # fmt: skip
    runner.catch_up()  # the claim is applied before the link is
    store.append_batch(
        [{"type": "customer.identity_linked", "occurred_at": T0.isoformat(),
          "data": {"customer_id": provisional_customer_id("email", token),
                   "contact": "chat:visitor-secret-9"}},
         {"type": "chat.message", "occurred_at": T0.isoformat(),
          "data": {"contact": "chat:visitor-secret-9", "direction": "inbound",
                   "external_id": "chat-9", "text": "I am the walk-in"}}]
    )  # fmt: skip
    runner.catch_up()
    with psycopg.connect(database_url) as conn:
        owners = dict(conn.execute("SELECT kind, customer_id FROM identities").fetchall())
        [chat] = conn.execute("SELECT customer_id FROM timeline WHERE channel = 'chat'")
    assert owners == {"email": "cu-walkin", "chat": "cu-walkin"}
    assert chat == ("cu-walkin",)
    live = snapshot(store)
    rebuild_all(store, batch_size=1)  # one event at a time: every run boundary
    assert snapshot(store) == live

    assert erase(store, "cu-walkin").contacts == 2
    runner.catch_up()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM identities").fetchone() == (0,)
    [message] = [e for e in store.read_all() if e.data.get("external_id") == "chat-9"]
    assert message.data["text"] == "[erased]"
    assert replay(store).identical


def _chat(n: int, visitor: str) -> dict[str, Any]:
    return {"type": "chat.message", "occurred_at": (T0 + timedelta(minutes=n)).isoformat(),
            "data": {"contact": f"chat:{visitor}", "direction": "inbound",
                     "external_id": f"chat-{visitor}", "text": f"hi from {visitor}"}}  # fmt: skip


def _graph(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return dict(conn.execute("SELECT kind || ':' || value, customer_id FROM identities"))


@pytest.mark.parametrize("separately", [True, False], ids=["a batch each", "one batch"])
@pytest.mark.parametrize(
    "order", [("x", "v", "claim"), ("x", "claim", "v"), ("claim", "x", "v"), ("v", "claim", "x")]
)
def test_a_chain_of_visitors_follows_the_address_to_its_claimer_in_any_order(
    store: Store, database_url: str, order: tuple[str, ...], separately: bool
) -> None:
    """Visitor x linked to visitor v's provisional customer, v to the address's, and the
    address claimed by cu-c: whatever the order and the batches, all three are cu-c's, in
    the live views, in a rebuild and as of now, and all three are erased with cu-c."""
    runner = ProjectionRunner(store, all_projections())
    store.append_batch([email(1, contact="email:e@example.com", external_id="e-1"),
                        _chat(2, "v"), _chat(3, "x")])  # fmt: skip
    runner.catch_up()
    with store.pool.connection() as conn:
        keyring = store.sealer.keyring(conn)
        home_v = provisional_customer_id("chat", keyring.contact_token("chat", "v"))
        home_e = provisional_customer_id("email", keyring.contact_token("email", "e@example.com"))
    events = {
        "x": {"type": "customer.identity_linked", "occurred_at": T0.isoformat(),
              "data": {"customer_id": home_v, "contact": "chat:x"}},
        "v": {"type": "customer.identity_linked", "occurred_at": T0.isoformat(),
              "data": {"customer_id": home_e, "contact": "chat:v"}},
        "claim": {"type": "customer.registered", "occurred_at": T0.isoformat(),
                  "data": {"customer_id": "cu-c", "contacts": ["email:e@example.com"]}},
    }  # fmt: skip
    for batch in [[events[k]] for k in order] if separately else [[events[k] for k in order]]:
        store.append_batch(batch)
        runner.catch_up()
    expected = {"email:e@example.com": "cu-c", "chat:v": "cu-c", "chat:x": "cu-c"}
    with store.pool.connection() as conn:
        assert _graph(conn) == expected
        with as_of(conn, store.head(), sealer=store.sealer):
            assert _graph(conn) == expected
    live = snapshot(store)
    rebuild_all(store, batch_size=2000)
    assert snapshot(store) == live
    assert erase(store, "cu-c").contacts == 3
    runner.catch_up()
    texts = [e.data["text"] for e in store.read_all() if e.type == "chat.message"]
    assert texts == ["[erased]", "[erased]"]


class _QuotingProjection:
    """A projection that fails on every email, quoting its subject in the error."""

    name = "quoting"
    tables = ("quoting_seen",)

    def apply(self, conn: psycopg.Connection[Any], events: Any) -> None:
        for event in events:
            if event.type == "email.received":
                raise ValueError(f"cannot take the subject {event.data.get('subject')!r}")
            conn.execute("INSERT INTO quoting_seen VALUES (%s)", (event.position,))


def test_a_failure_parked_after_the_erasure_keeps_no_trace_of_the_event(
    store: Store, database_url: str
) -> None:
    """A rebuild parks its failures when it swaps its copies in: one on an event erased
    while the rebuild ran is written without the text it quoted."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE quoting_seen (position bigint)")
    store.append_batch(
        [{"type": "customer.registered", "occurred_at": T0.isoformat(),
          "data": {"customer_id": "cu-a", "contacts": ["email:a@example.com"]}}]
    )  # fmt: skip
    store.append_batch([email(1, contact="email:a@example.com", subject=f"about {CANARY}")])
    ProjectionRunner(store, all_projections()).catch_up()
    erasures: list[Erasure] = []

    def progress(applied: int) -> None:
        if applied == 2 and not erasures:  # the email's failure is held, not yet parked
            erasures.append(erase(store, "cu-a"))

    rebuild(store, _QuotingProjection(), batch_size=1, progress=progress)  # type: ignore[arg-type]
    assert erasures
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT projection, error FROM dead_letters").fetchall() == [
            ("quoting", "[erased]")
        ]


def _link(customer: str, contact: str) -> dict[str, Any]:
    return {"type": "customer.identity_linked", "occurred_at": T0.isoformat(),
            "data": {"customer_id": customer, "contact": contact}}  # fmt: skip


def _graphs(store: Store, seed: list[dict[str, Any]], then: Any, separately: bool) -> Any:
    """The identity graph (contact: customer, provisional ones by their contact) live, as
    of the head and rebuilt, after ``seed`` and then the events ``then(homes)`` gives."""
    runner = ProjectionRunner(store, all_projections())
    store.append_batch(seed)
    runner.catch_up()
    with store.pool.connection() as conn:
        keyring = store.sealer.keyring(conn)
        homes = {
            contact: provisional_customer_id(kind, keyring.contact_token(kind, value))
            for contact in (e["data"]["contact"] for e in seed)
            for kind, value in [contact.split(":", 1)]
        }
    events = then(homes)
    for batch in [[e] for e in events] if separately else [events]:
        store.append_batch(batch)
        runner.catch_up()
    named = {home: f"home of {contact}" for contact, home in homes.items()}
    with store.pool.connection() as conn:
        live = _graph(conn)
        with as_of(conn, store.head(), sealer=store.sealer):
            past = _graph(conn)
    rebuild_all(store, batch_size=2000)
    with store.pool.connection() as conn:
        rebuilt = _graph(conn)
    return [{k: named.get(v, v) for k, v in g.items()} for g in (live, past, rebuilt)]


@pytest.mark.parametrize("separately", [True, False], ids=["a batch each", "one batch"])
def test_a_cycle_of_visitors_linked_to_each_other_is_the_same_however_batched(
    store: Store, separately: bool
) -> None:
    live, past, rebuilt = _graphs(
        store,
        [_chat(1, "x"), _chat(2, "v")],
        lambda homes: [_link(homes["chat:v"], "chat:x"), _link(homes["chat:x"], "chat:v")],
        separately,
    )
    assert live == past == rebuilt == {"chat:x": "home of chat:x", "chat:v": "home of chat:x"}


@pytest.mark.parametrize("separately", [True, False], ids=["a batch each", "one batch"])
def test_a_follower_stays_with_the_claimer_when_the_address_moves_on(
    store: Store, separately: bool
) -> None:
    """y follows the address to cu-c, who claims it; the address then goes to cu-d, and y
    stays with cu-c (it followed the person who claimed the address), however batched."""
    live, past, rebuilt = _graphs(
        store,
        [email(1, contact="email:e@example.com", external_id="e-1"), _chat(2, "y")],
        lambda homes: [
            _link(homes["email:e@example.com"], "chat:y"),
            {
                "type": "customer.registered",
                "occurred_at": T0.isoformat(),
                "data": {"customer_id": "cu-c", "contacts": ["email:e@example.com"]},
            },
            _link("cu-d", "email:e@example.com"),
        ],
        separately,
    )
    assert live == past == rebuilt == {"email:e@example.com": "cu-d", "chat:y": "cu-c"}


def test_an_erased_customer_reads_erased_as_of_any_time(store: Store) -> None:
    canary_history(store)
    before = store.head()
    erase(store, "cu-canary")
    ProjectionRunner(store, all_projections()).catch_up()
    with store.pool.connection() as conn, as_of(conn, before, "cu-canary", sealer=store.sealer):
        summary = views.customer(conn, "cu-canary")
        items = views.timeline(conn, "cu-canary")
    assert summary.profile is not None
    assert summary.profile.erased_at is not None
    assert (summary.identities, items) == ([], [])
    # The customer merged into it too, though the erasure purged that merge: unknown now,
    # and unknown then.
    with store.pool.connection() as conn:
        assert views.find_customer_read("cu-canary-old").run(conn) is None
        with as_of(conn, before, "cu-canary-old", sealer=store.sealer):
            assert views.find_customer_read("cu-canary-old").run(conn) is None


def test_an_erasure_waits_for_a_link_an_open_transaction_hides(
    store: Store, database_url: str
) -> None:
    """A link committed after a transaction that is still open cannot be read by the
    projections yet (gap safety); the erasure must not go ahead without it."""
    canary_history(store)
    with psycopg.connect(database_url) as blocker:
        blocker.execute("SELECT pg_current_xact_id()")  # open, with a transaction id
        store.append_batch(
            [{"type": "customer.identity_linked", "occurred_at": T0.isoformat(),
              "data": {"customer_id": "cu-canary", "contact": "email:late@example.com"}}]
        )  # fmt: skip
        ProjectionRunner(store, all_projections()).catch_up()
        with pytest.raises(ViewsBehind):
            erase(store, "cu-canary", wait=0.3)
        blocker.rollback()
    ProjectionRunner(store, all_projections()).catch_up()
    assert erase(store, "cu-canary").contacts == 4
