"""Personal fields sealed in the log, and retention, on a real database: nothing personal
is stored in plaintext, reads give back exactly what was appended, a retried append is
still recognised, the privacy secret is checked, and retention shreds each channel's old
months only, leaving views, replays and verification consistent."""

from __future__ import annotations

import base64
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg_pool import ConnectionPool

from interaction_store import privacy
from interaction_store.audit.replay import replay
from interaction_store.audit.verify import verify
from interaction_store.cli import cli
from interaction_store.db import open_pool
from interaction_store.demo import generate
from interaction_store.events import parse_events, with_conversation
from interaction_store.exceptions import ConcurrencyError, ConfigurationError, IdempotencyConflict
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.projections.rebuild import rebuild
from interaction_store.projections.timeline import TimelineProjection
from interaction_store.shredding import apply_retention, erase
from interaction_store.store import NO_STREAM, Store
from tests.helpers import email, park_failures, parked_errors

SECRET = "Hv3SecretPlaintext"


def raw_payloads(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT payload::text FROM events ORDER BY position").fetchall()
    return "\n".join(row[0] for row in rows)


def test_personal_fields_are_stored_sealed_and_read_back_as_appended(
    store: Store, database_url: str
) -> None:
    events = list(generate(200, seed=3, customer_count=10, with_customers=True))
    events.append(
        email(1, contact=f"email:{SECRET.lower()}@example.com", subject=f"re {SECRET}",
              body=SECRET, to=["support@example.com"], external_id="m-secret")
    )  # fmt: skip
    store.append_batch(events)
    stored = raw_payloads(database_url)
    assert SECRET not in stored
    assert SECRET.lower() not in stored
    assert '"sealed"' in stored
    read = {e.event_id: e.data for e in store.read_all(limit=1000)}
    for model in parse_events(events):
        appended = with_conversation(model).data.model_dump(mode="json", exclude_none=True)
        assert read[model.id] == appended


def test_a_retried_sealed_append_is_the_same_event(store: Store) -> None:
    event = email(2, subject="private", body="the body", external_id="m-retry")
    first = store.append_batch([event])
    again = store.append_batch([event])
    assert again.already_present == 1
    assert again.events[0].position == first.events[0].position


def test_an_event_stored_unsealed_is_the_same_event_delivered_again_sealed(
    pool: ConnectionPool[Any], store: Store
) -> None:
    """Events stored as given (before sealing, or by a store that does not seal) are still
    recognised when they come again, sealed; other content under their id still conflicts."""
    event = email(2, subject="private", body="the body", external_id="m-old")
    plain = Store(pool, seal_personal_data=False)
    first = plain.append_batch([event])
    plain.close()
    again = store.append_batch([event])
    assert (again.already_present, again.events[0].position) == (1, first.events[0].position)
    with pytest.raises(IdempotencyConflict):
        store.append_batch([{**event, "data": {**event["data"], "body": "another body"}}])
    assert len(store.read_all()) == 1


def key_rows(database_url: str) -> list[tuple[int, bytes, str, bool]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT key_id, owner, scope, shredded_at IS NULL FROM data_keys ORDER BY key_id"
        ).fetchall()
    return [(key_id, bytes(owner), scope, live) for key_id, owner, scope, live in rows]


def read_back_as_appended(store: Store, events: list[dict[str, Any]]) -> None:
    read = {e.event_id: e.data for e in store.read_all(limit=10_000)}
    for model in parse_events(events):
        assert read[model.id] == with_conversation(model).data.model_dump(
            mode="json", exclude_none=True
        )


def test_the_keys_of_a_new_owner_commit_with_the_append_or_not_at_all(
    store: Store, database_url: str
) -> None:
    """An append that meets an owner for the first time writes its keys in its own
    statement: refused, it leaves no key behind; taken, the keys are there."""
    store.append("conversation-cv-a", [email(1, conversation_id="cv-a")])
    before = key_rows(database_url)
    newcomer = email(2, contact="email:newcomer@example.com", conversation_id="cv-b")
    with pytest.raises(ConcurrencyError):
        store.append("conversation-cv-b", [newcomer], expected_version=3)
    assert key_rows(database_url) == before
    store.append("conversation-cv-b", [newcomer], expected_version=NO_STREAM)
    made = [row for row in key_rows(database_url) if row not in before]
    assert [(scope, live) for _, _, scope, live in made] == [("identity", True)]
    [read] = store.read_stream("conversation-cv-b")
    assert read.data["contact"]["value"] == "newcomer@example.com"
    with psycopg.connect(database_url) as conn:  # one transaction: the same now()
        row = conn.execute(
            "SELECT k.created_at = e.recorded_at FROM data_keys AS k, events AS e"
            " WHERE k.key_id = %s AND e.stream_id = 'conversation-cv-b'",
            (made[0][0],),
        ).fetchone()
    assert row == (True,)


def test_the_check_of_an_appends_keys_refuses_an_id_with_no_key(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT data_keys_live(ARRAY[987654321]::bigint[])")
        assert refused.value.sqlstate == "ISC02"
        assert refused.value.diag.message_detail == "987654321"


def test_the_check_of_an_appends_keys_names_exactly_the_keys_gone(
    store: Store, database_url: str
) -> None:
    """Live keys pass however often they are named; among them, the shredded and the
    missing are named and nothing else; an empty list checks nothing but still waits for
    an erasure that holds the lock."""
    store.append_batch(list(generate(40, seed=5, customer_count=8)))
    with psycopg.connect(database_url, autocommit=True) as conn:
        live = [row[0] for row in conn.execute("SELECT key_id FROM data_keys ORDER BY key_id")]
        assert len(live) >= 4
        check = "SELECT data_keys_live(%s::bigint[])"
        assert conn.execute(check, (live + live[:2],)).fetchone() == (True,)
        conn.execute("UPDATE data_keys SET key = NULL, shredded_at = now() WHERE key_id = %s",
                     (live[1],))  # fmt: skip
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(check, ([live[0], live[1], live[1], 987654321, live[2]],))
        assert refused.value.sqlstate == "ISC02"
        assert refused.value.diag.message_detail == f"{live[1]},{live[1]},987654321"
        assert conn.execute(check, ([],)).fetchone() == (True,)
        with psycopg.connect(database_url) as eraser:
            eraser.execute("SELECT pg_advisory_xact_lock(4936157270312945623)")
            conn.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute(check, ([],))


def test_stores_meeting_a_new_owner_at_once_agree_on_one_key(
    pool: ConnectionPool[Any], database_url: str
) -> None:
    """Four stores, each its own process's as far as keys go, append the first events of
    one address at the same moment: each makes a key for it, one wins, the others seal
    again under the winner's, and every event reads back."""
    stores = [Store(pool) for _ in range(4)]
    start = threading.Barrier(len(stores))
    events = [
        email(n, contact="email:together@example.com", body=f"words {n}", conversation_id=f"cv-{n}")
        for n in range(len(stores))
    ]
    errors: list[BaseException] = []

    def append(n: int) -> None:
        try:
            start.wait(10)
            stores[n].append_batch([events[n]])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(len(stores))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        keys = key_rows(database_url)
        owners = {owner for _, owner, scope, _ in keys if scope == "identity"}
        assert len(owners) == 1
        assert len(keys) == len({(owner, scope) for _, owner, scope, _ in keys})
        bodies = sorted(e.data["body"] for e in stores[0].read_all())
        assert bodies == [f"words {n}" for n in range(len(stores))]
    finally:
        for store in stores:
            store.close()


def test_a_store_that_knows_no_keys_seals_under_the_stored_ones(
    pool: ConnectionPool[Any], store: Store, database_url: str
) -> None:
    """A store started afresh (a restarted server) knows none of the keys stored. The keys
    it makes for known owners collide with theirs, and it seals under the stored ones: in
    a batch of one statement, in a batch sent in parts, and in a replay, which is still
    recognised as the events stored."""
    events = list(generate(700, seed=4, customer_count=40))
    store.append_batch(events[:300])
    keys = len(key_rows(database_url))
    cold, colder = Store(pool), Store(pool)
    try:
        cold.append_batch(events[300:400])  # one statement
        cold.append_batch(events[400:])  # in parts
        assert colder.append_batch(events[:200]).already_present == 200
    finally:
        cold.close()
        colder.close()
    assert len(key_rows(database_url)) < keys + 40  # the owners met before kept theirs
    read_back_as_appended(store, events)


def test_a_store_replaying_an_erased_event_keeps_no_key_it_did_not_write(
    pool: ConnectionPool[Any], store: Store
) -> None:
    """A restarted store gets an erased customer's email again: it seals it under new
    keys, finds it stored (an erased event counts as present) and writes nothing, so it
    must not take those keys for its next appends, whichever way they are made."""
    gone = email(1, customer_id="cu-gone", external_id="m-gone", conversation_id="cv-1")
    store.append_batch([gone])
    ProjectionRunner(store, all_projections()).catch_up()
    erase(store, "cu-gone")
    restarted = Store(pool)
    try:
        assert restarted.append_batch([gone]).already_present == 1
        later = email(2, contact="email:later@example.com", body="later", conversation_id="cv-2")
        with restarted.transaction() as tx:  # keys made on their own, checked in the append
            tx.append("conversation-cv-2", [later])
        [read] = restarted.read_stream("conversation-cv-2")
        assert read.data["body"] == "later"
    finally:
        restarted.close()


def test_a_transaction_needing_a_key_a_waiting_batch_holds_is_refused_not_stuck(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch sent in parts makes a new owner's key in its first part, then waits for a
    transaction that holds a stream version it wants; the transaction then needs that
    owner's key. Each waits for the other, one of them in the client, where PostgreSQL
    cannot see it: the transaction is refused after a few seconds and the batch goes on."""
    monkeypatch.setattr(privacy, "_KEY_WAIT", "1s")  # the sealer's connection opens later
    store.append("conversation-cv-s", [email(0, conversation_id="cv-s")])
    newcomer = "email:x@example.com"
    batch = [email(10 + n, contact=newcomer, conversation_id="cv-x") for n in range(250)]
    batch += [email(300 + n, conversation_id="cv-s") for n in range(5)]
    outcome: dict[str, Any] = {}

    def append_batch() -> None:
        try:
            outcome["batch"] = store.append_batch(batch)
        except Exception as exc:
            outcome["batch"] = exc

    thread = threading.Thread(target=append_batch)
    began = time.monotonic()

    def transaction() -> None:
        with store.transaction() as tx:
            tx.append("conversation-cv-s", [email(1, conversation_id="cv-s")])
            thread.start()
            with psycopg.connect(database_url, autocommit=True) as conn:
                while conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event = 'transactionid'"
                ).fetchone() != (1,):
                    assert time.monotonic() - began < 20, "the batch never waited"
                    time.sleep(0.05)
            tx.append("conversation-cv-y", [email(2, contact=newcomer, conversation_id="cv-y")])

    with pytest.raises(ConcurrencyError, match="data key"):
        transaction()
    thread.join(30)
    assert time.monotonic() - began < 30
    result = outcome["batch"]
    assert not isinstance(result, Exception), result
    assert result.appended == len(batch)
    assert [e.data["external_id"] for e in store.read_stream("conversation-cv-s")] == [
        "<m0@mail.example.com>",
        *(f"<m{300 + n}@mail.example.com>" for n in range(5)),
    ]


def test_the_configured_privacy_key_must_be_the_one_the_data_was_sealed_with(
    pool: ConnectionPool[Any],
) -> None:
    ours, theirs = os.urandom(32), os.urandom(32)
    sealing = Store(pool, privacy_key=ours)
    try:
        sealing.append_batch([email(3, body="sealed with ours", external_id="m-ours")])
        assert sealing.read_all()[0].data["body"] == "sealed with ours"
    finally:
        sealing.close()
    wrong = Store(pool, privacy_key=theirs)
    unset = Store(pool)
    try:
        with pytest.raises(ConfigurationError, match="not the key"):
            wrong.read_all()
        with pytest.raises(ConfigurationError, match="set INTERACTION_STORE_PRIVACY_KEY"):
            unset.append_batch([email(4, external_id="m-unset")])
    finally:
        wrong.close()
        unset.close()


def test_a_privacy_key_that_is_not_32_bytes_of_base64_is_refused(database_url: str) -> None:
    result = CliRunner(env={"INTERACTION_STORE_PRIVACY_KEY": base64.b64encode(b"short").decode()})
    answer = result.invoke(cli, ["--database-url", database_url, "tail", "--limit", "1"])
    assert isinstance(answer.exception, ConfigurationError)  # main() prints it as an error
    assert str(answer.exception) == "INTERACTION_STORE_PRIVACY_KEY is 5 bytes; it must be 32"


# Retention ------------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _at(day: str) -> str:
    return datetime.fromisoformat(f"{day}T10:00:00+00:00").isoformat()


JANUARY = {
    **email(0, subject="january subject", body="january body", external_id="m-jan"),
    "occurred_at": _at("2026-01-15"),
}


def retention_history(store: Store) -> None:
    store.append_batch(
        [
            JANUARY,
            {**email(0, subject="august subject", body="august body", external_id="m-aug"),
             "occurred_at": _at("2026-08-31")},
            {**email(0, subject="recent subject", body="recent body", external_id="m-nov"),
             "occurred_at": _at("2026-11-20")},
            {"type": "call.completed", "occurred_at": _at("2026-01-20"),
             "data": {"contact": "phone:+14155550100", "direction": "inbound",
                      "status": "answered", "external_id": "call-jan",
                      "transcript": "january transcript"}},
        ]
    )  # fmt: skip
    ProjectionRunner(store, all_projections()).catch_up()


def timeline_rows(database_url: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT e.payload->>'external_id', t.subject, t.snippet, t.contact_value"
            " FROM timeline AS t JOIN events AS e USING (position)"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_retention_shreds_only_the_months_older_than_their_channels_period(
    store: Store, database_url: str
) -> None:
    retention_history(store)
    park_failures(database_url, {"m-jan": "january subject", "m-nov": "recent subject"})
    periods = {"email": timedelta(days=90)}  # the cut-off is 2026-09-02
    dry = apply_retention(store, periods, now=NOW, dry_run=True)
    assert (dry.keys, dry.events) == (2, 2)  # January and August; not November
    assert timeline_rows(database_url)["m-jan"][0] == "january subject"  # nothing changed

    report = apply_retention(store, periods, now=NOW, wait=1.0)
    [emails] = report.channels
    assert (emails.channel, emails.keys, emails.events, emails.rows_redacted) == ("email", 2, 2, 2)
    rows = timeline_rows(database_url)
    assert rows["m-jan"][:2] == ("[erased]", "[erased]")
    assert rows["m-aug"][:2] == ("[erased]", "[erased]")
    assert rows["m-nov"][:2] == ("recent subject", "recent body")
    assert rows["call-jan"][1] == "january transcript"  # no period for calls: kept
    assert rows["m-jan"][2] == "alice@example.com"  # the address is kept: only erasure takes it
    read = {e.data["external_id"]: e.data for e in store.read_all()}
    assert read["m-jan"]["body"] == "[erased]"
    assert read["m-jan"]["to"] == []
    assert read["m-nov"]["body"] == "recent body"
    assert parked_errors(database_url) == {
        "m-jan": "[erased]",  # a failure quoting shredded content is blanked with it
        "m-nov": "Key (contact_value)=(recent subject) already exists.",
    }

    assert replay(store).identical
    with psycopg.connect(database_url) as conn:
        assert verify(conn, None).ok
    again = apply_retention(store, periods, now=NOW)
    assert (again.keys, again.events) == (0, 0)  # nothing left to shred
    reimported = store.append_batch([JANUARY])  # the same mail, imported again
    assert reimported.already_present == 1


def test_retention_counts_months_in_utc_whatever_the_time_zone_of_the_server(
    database_url: str,
) -> None:
    """A month's content is kept until the month ended, in UTC, a whole period ago, on a
    server whose sessions run east of UTC too."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        name = sql.Identifier(conn.info.dbname)
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = 'Asia/Tokyo'").format(name))
    with open_pool(database_url, min_size=1, max_size=2) as pool:  # new sessions: Tokyo
        store = Store(pool)
        late = {**email(0, subject="late january", external_id="m-late"),
                "occurred_at": "2026-01-31T20:00:00+00:00"}  # fmt: skip
        store.append_batch([late])
        ProjectionRunner(store, all_projections()).catch_up()
        periods = {"email": timedelta(days=1)}
        day_after = datetime(2026, 2, 1, 16, 0, tzinfo=UTC)  # 20 h after the mail
        assert apply_retention(store, periods, now=day_after, wait=1.0).keys == 0
        assert timeline_rows(database_url)["m-late"][0] == "late january"
        two_days_after = datetime(2026, 2, 2, 0, 1, tzinfo=UTC)  # January ended a day ago
        assert apply_retention(store, periods, now=two_days_after, wait=1.0).keys == 1
        assert timeline_rows(database_url)["m-late"][0] == "[erased]"
        store.close()


def test_retention_waits_for_a_rebuild_under_way_whose_copy_holds_the_content(
    store: Store, database_url: str
) -> None:
    """A rebuild copies the views from the log; retention leaves no event for the copy to
    redact by, so it waits for the copy to be swapped in and then redacts it."""
    retention_history(store)
    periods = {"email": timedelta(days=90)}
    runs: list[threading.Thread] = []
    reports = []

    def retain() -> None:
        reports.append(apply_retention(store, periods, now=NOW))

    def progress(applied: int) -> None:
        if not runs:  # the copy has January's content by now
            runs.append(threading.Thread(target=retain))
            runs[0].start()
            runs[0].join(timeout=1.0)
            assert runs[0].is_alive()  # waiting for the rebuild

    rebuild(store, TimelineProjection(), batch_size=1, progress=progress)
    runs[0].join(timeout=30)
    [report] = reports
    assert report.channels[0].keys == 2
    rows = timeline_rows(database_url)
    assert rows["m-jan"][:2] == ("[erased]", "[erased]")
    assert rows["m-nov"][:2] == ("recent subject", "recent body")
    assert replay(store).identical


def test_retention_apply_from_the_command_line(store: Store, database_url: str) -> None:
    retention_history(store)
    runner = CliRunner()
    args = ["--database-url", database_url, "retention", "apply", "--wait", "0.5"]
    unset = runner.invoke(cli, args)
    assert unset.exit_code == 1
    assert "INTERACTION_STORE_RETENTION" in unset.output
    bad = runner.invoke(cli, args, env={"INTERACTION_STORE_RETENTION": "fax=30d"})
    assert bad.exit_code != 0
    assert "'fax=30d'" in bad.output
    done = runner.invoke(cli, args, env={"INTERACTION_STORE_RETENTION": "voice=30d"})
    assert done.exit_code == 0, done.output
    assert "voice: older than" in done.output
    assert "shredded 1 keys sealing 1 events; 1 timeline rows rewritten" in done.output
    assert timeline_rows(database_url)["call-jan"][1] == "[erased]"
