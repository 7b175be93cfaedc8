"""Point-in-time reads on a real database: the timeline and the summary as they stood at
a position, with the identity graph as it was then (a later link or merge does not show),
in the views module, the API and the command line."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from interaction_store import views
from interaction_store.api import create_app
from interaction_store.asof import as_of, position_at
from interaction_store.cli import cli
from interaction_store.keys import create_key
from interaction_store.privacy import Sealer
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.settings import Settings
from interaction_store.store import Store
from tests.helpers import T0, email, sms


def customer_event(kind: str, minute: int, **data: Any) -> dict[str, Any]:
    return {"type": f"customer.{kind}", "occurred_at": (T0 + timedelta(minutes=minute)).isoformat(),
            "data": data}  # fmt: skip


@pytest.fixture
def moments(store: Store) -> dict[str, int]:
    """cu-ann writes, then texts from a phone not yet hers; the phone is linked to her;
    later cu-old, who emailed too, is merged into her and her tier changes."""
    at: dict[str, int] = {}

    def append(name: str, event: dict[str, Any]) -> None:
        at[name] = store.append_batch([event]).position

    append("registered", customer_event("registered", 0, customer_id="cu-ann", tier="silver",
                                        contacts=["email:ann@example.com"]))  # fmt: skip
    append("old", customer_event("registered", 1, customer_id="cu-old",
                                 contacts=["email:ann.old@example.com"]))  # fmt: skip
    append("email", email(2, contact="email:ann@example.com"))
    append("sms", sms(180, phone="+14155550100"))  # 3 minutes in, as the rest
    append("old email", email(4, contact="email:ann.old@example.com"))
    append("linked", customer_event("identity_linked", 5, customer_id="cu-ann",
                                    contact="phone:+14155550100"))  # fmt: skip
    append("merged", customer_event("merged", 6, customer_id="cu-ann", source_customer_id="cu-old"))
    append("tier", customer_event("profile_updated", 7, customer_id="cu-ann", tier="gold"))
    ProjectionRunner(store, all_projections()).catch_up()
    return at


def types_of(store: Store, customer: str, position: int | None) -> list[str]:
    with store.pool.connection() as conn:
        if position is None:
            return [i.type for i in views.timeline(conn, customer)]
        with as_of(conn, position, customer, sealer=Sealer()):
            return [i.type for i in views.timeline(conn, customer)]


def test_the_timeline_as_of_each_moment_shows_the_world_as_it_was(
    store: Store, moments: dict[str, int]
) -> None:
    assert types_of(store, "cu-ann", moments["email"]) == ["email.received"]
    # Texted from a phone no one had linked yet: not hers until the link.
    assert types_of(store, "cu-ann", moments["linked"] - 1) == ["email.received"]
    assert types_of(store, "cu-ann", moments["linked"]) == ["sms.received", "email.received"]
    # Before the merge, cu-old's email is cu-old's.
    assert types_of(store, "cu-ann", moments["merged"] - 1) == ["sms.received", "email.received"]
    assert types_of(store, "cu-old", moments["merged"] - 1) == ["email.received"]
    after = ["email.received", "sms.received", "email.received"]
    assert types_of(store, "cu-ann", moments["merged"]) == after
    assert types_of(store, "cu-ann", None) == after  # and the live view agrees


def test_the_summary_as_of_a_moment_has_the_profile_and_identities_of_then(
    store: Store, moments: dict[str, int]
) -> None:
    with store.pool.connection() as conn:
        with as_of(conn, moments["linked"] - 1, "cu-ann", sealer=Sealer()):
            then = views.customer(conn, "cu-ann")
        now = views.customer(conn, "cu-ann")  # the live views are back after the block
    assert then.profile is not None
    assert then.profile.tier == "silver"
    assert {(i.kind, i.value) for i in then.identities} == {("email", "ann@example.com")}
    assert then.aliases == []
    assert then.interactions == 1
    assert now.profile is not None
    assert now.profile.tier == "gold"
    assert now.aliases == ["cu-old"]
    assert now.interactions == 3


def test_as_of_a_time_over_http_and_on_the_command_line(
    store: Store, moments: dict[str, int], pool: ConnectionPool[Any], database_url: str
) -> None:
    with pool.connection() as conn:
        recorded = conn.execute(
            "SELECT recorded_at FROM events WHERE position = %s", (moments["linked"],)
        ).fetchone()[0]  # type: ignore[index]
        assert position_at(conn, recorded) == moments["linked"]
        assert position_at(conn, recorded - timedelta(days=365)) == 0
    key, _ = create_key(pool, "auditor", ["timeline:read"])
    auth = {"Authorization": f"Bearer {key}"}
    app = create_app(Settings(database_url=database_url), pool=pool, projector=False)
    with TestClient(app) as http:
        before = http.get(
            "/v1/customers/cu-ann/timeline",
            params={"as_of": str(moments["linked"] - 1)},
            headers=auth,
        )
        assert before.status_code == 200, before.text
        assert [i["type"] for i in before.json()["items"]] == ["email.received"]
        at_time = http.get(
            "/v1/customers/cu-ann/timeline",
            params={"as_of": recorded.isoformat()},
            headers=auth,
        )
        assert [i["type"] for i in at_time.json()["items"]] == ["sms.received", "email.received"]
        summary = http.get(
            "/v1/customers/cu-ann", params={"as_of": str(moments["merged"] - 1)}, headers=auth
        )
        assert summary.status_code == 200, summary.text
        assert summary.json()["aliases"] == []
        assert summary.json()["profile"]["tier"] == "silver"
        for bad in ("yesterday", "-3", "99999999"):
            refused = http.get("/v1/customers/cu-ann/timeline", params={"as_of": bad}, headers=auth)
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.json()["errors"][0]["field"] == "as_of"
        unknown_then = http.get(
            "/v1/customers/cu-old", params={"as_of": str(moments["registered"])}, headers=auth
        )
        assert unknown_then.status_code == 404  # cu-old did not exist yet

    def then(command: str) -> Result:
        return CliRunner().invoke(
            cli,
            [
                "--database-url",
                database_url,
                command,
                "cu-ann",
                "--as-of",
                str(moments["linked"] - 1),
            ],
        )

    result = then("timeline")
    assert result.exit_code == 0, result.output
    assert "sms" not in result.output
    summary = then("customer")
    assert summary.exit_code == 0, summary.output
    assert "silver" in summary.output
    assert "+14155550100" not in summary.output  # the phone was not hers yet
    refused = CliRunner().invoke(
        cli, ["--database-url", database_url, "customer", "cu-ann", "--as-of", "yesterday"]
    )
    assert refused.exit_code == 2
    assert "--as-of" in refused.output


def test_a_read_as_of_on_a_connection_with_cached_plans_reads_the_past_and_writes_nothing_live(
    store: Store, moments: dict[str, int]
) -> None:
    """Prepared statements and resolve_customer's plans, cached by live reads on the same
    pooled connection, must not reach past the temporary tables to the live ones."""
    with store.pool.connection() as conn:
        live = conn.execute("SELECT * FROM timeline ORDER BY position").fetchall()
        identities = conn.execute("SELECT * FROM identities ORDER BY kind, value").fetchall()
        for _ in range(3):
            for _ in range(8):  # enough for psycopg to prepare the reads' statements
                views.timeline(conn, "cu-ann")
                views.customer(conn, "cu-ann")
            with as_of(conn, moments["merged"] - 1, "cu-ann", sealer=Sealer()):
                then = views.customer(conn, "cu-ann")
                items = views.timeline(conn, "cu-ann")
            assert then.aliases == []
            assert [i.type for i in items] == ["sms.received", "email.received"]
        assert [i.type for i in views.timeline(conn, "cu-ann")] == [
            "email.received",
            "sms.received",
            "email.received",
        ]
        assert conn.execute("SELECT * FROM timeline ORDER BY position").fetchall() == live
        assert (
            conn.execute("SELECT * FROM identities ORDER BY kind, value").fetchall() == identities
        )


def test_as_of_cuts_the_log_at_the_position_whatever_the_commit_order(store: Store) -> None:
    """A transaction holds position 2 while position 3 commits, then appends 4: as of 4
    (the head) is the live timeline, and as of 3 has nothing after 3."""
    store.append_batch([email(0, customer_id="cu-a", external_id="<m0@x>")])
    with store.transaction() as held:
        held.append("conversation-c-1", [email(1, customer_id="cu-a", external_id="<m1@x>")])
        store.append_batch([email(2, customer_id="cu-a", external_id="<m2@x>")])
        held.append("conversation-c-3", [email(3, customer_id="cu-a", external_id="<m3@x>")])
    ProjectionRunner(store, all_projections()).catch_up()
    with store.pool.connection() as conn:
        live = [i.position for i in views.timeline(conn, "cu-a")]
        assert sorted(live) == [1, 2, 3, 4]
        for position in (4, 3, 2):
            with as_of(conn, position, "cu-a", sealer=Sealer()):
                then = [i.position for i in views.timeline(conn, "cu-a")]
                summary = views.customer(conn, "cu-a")
            assert then == [p for p in live if p <= position], position
            assert summary is not None
            assert summary.interactions == position
