"""The access log and the export on the real app and database: each read of a customer
leaves exactly one entry naming the key, an auditor sees who looked (under merged ids
too), and the export holds everything about the person across their identities."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from interaction_store.api import create_app
from interaction_store.cli import cli
from interaction_store.keys import create_key
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.settings import Settings
from interaction_store.store import Store
from tests.helpers import T0, email, sms


@pytest.fixture
def history(store: Store) -> None:
    """cu-ann, with an email and a phone, into whom cu-old (another email) was merged;
    cu-bob on his own."""
    store.append_batch(
        [
            {"type": "customer.registered", "occurred_at": T0.isoformat(),
             "data": {"customer_id": "cu-ann", "name": "Ann",
                      "contacts": ["email:ann@example.com", "phone:+14155550100"]}},
            {"type": "customer.registered", "occurred_at": T0.isoformat(),
             "data": {"customer_id": "cu-old", "contacts": ["email:ann.old@example.com"]}},
            {"type": "customer.registered", "occurred_at": T0.isoformat(),
             "data": {"customer_id": "cu-bob", "contacts": ["email:bob@example.com"]}},
        ]
    )  # fmt: skip
    store.append_batch([email(1, contact="email:ann@example.com")])
    store.append_batch([sms(2, phone="+14155550100", text="Ann's text")])
    store.append_batch([email(3, contact="email:ann.old@example.com")])
    store.append_batch([email(4, contact="email:bob@example.com", subject="Bob's")])
    store.append_batch(
        [{"type": "customer.merged", "occurred_at": T0.isoformat(),
          "data": {"customer_id": "cu-ann", "source_customer_id": "cu-old"}},
         {"type": "customer.identity_linked", "occurred_at": T0.isoformat(),
          "data": {"customer_id": "cu-ann", "contact": "phone:+14155550199"}}]
    )  # fmt: skip
    ProjectionRunner(store, all_projections()).catch_up()


@pytest.fixture
def http(pool: ConnectionPool[Any], database_url: str, history: None) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=database_url), pool=pool, projector=False)
    with TestClient(app) as client:
        yield client


def bearer(pool: ConnectionPool[Any], name: str, *scopes: str) -> dict[str, str]:
    key, _ = create_key(pool, name, list(scopes))
    return {"Authorization": f"Bearer {key}"}


def accesses(http: TestClient, auditor: dict[str, str], customer: str) -> list[dict[str, Any]]:
    answer = http.get("/v1/audit/access", params={"customer_id": customer}, headers=auditor)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["accesses"]
    return found


def test_each_read_of_a_customer_leaves_exactly_one_entry(
    http: TestClient, pool: ConnectionPool[Any]
) -> None:
    agent = bearer(pool, "agent desktop", "timeline:read")
    auditor = bearer(pool, "dpo", "audit:read")
    for path in ("", "/timeline", "/context"):
        assert http.get(f"/v1/customers/cu-ann{path}", headers=agent).status_code == 200
    assert http.get("/v1/customers/cu-ann/export", headers=auditor).status_code == 200
    # Neither a lookup, nor a read of a customer who does not exist, nor a refused read.
    http.get("/v1/customers/lookup", params={"identity": "email:ann@example.com"}, headers=agent)
    assert http.get("/v1/customers/cu-nobody/timeline", headers=agent).status_code == 404
    assert http.get("/v1/customers/cu-ann/export", headers=agent).status_code == 403
    entries = accesses(http, auditor, "cu-ann")
    assert [(e["endpoint"], e["key_name"], e["customer_id"]) for e in entries] == [
        ("summary", "agent desktop", "cu-ann"),
        ("timeline", "agent desktop", "cu-ann"),
        ("context", "agent desktop", "cu-ann"),
        ("export", "dpo", "cu-ann"),
    ]
    assert accesses(http, auditor, "cu-bob") == []
    # Read through the merged id: recorded for the customer it resolves to, and found
    # when asking about either id.
    assert http.get("/v1/customers/cu-old/timeline", headers=agent).status_code == 200
    assert len(accesses(http, auditor, "cu-ann")) == 5
    assert len(accesses(http, auditor, "cu-old")) == 5
    assert (
        http.get("/v1/audit/access", params={"customer_id": "cu-ann"}, headers=agent).status_code
        == 403
    )


def test_the_export_holds_everything_about_the_person(
    http: TestClient, pool: ConnectionPool[Any]
) -> None:
    auditor = bearer(pool, "dpo", "audit:read")
    agent = bearer(pool, "agent desktop", "timeline:read")
    http.get("/v1/customers/cu-ann", headers=agent)
    answer = http.get("/v1/customers/cu-ann/export", headers=auditor)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-ndjson"
    lines = [orjson.loads(line) for line in answer.content.splitlines()]
    assert lines[0]["record"] == "export"
    assert lines[0]["aliases"] == ["cu-old"]
    assert lines[-1] == {"record": "end", "lines": len(lines) - 2}
    by = {}
    for line in lines:
        by.setdefault(line["record"], []).append(line)
    identities = {(i["kind"], i["value"]) for i in by["identity"]}
    assert identities >= {("email", "ann@example.com"), ("phone", "+14155550100"),
                          ("email", "ann.old@example.com")}  # fmt: skip
    events = by["event"]
    types = sorted(e["type"] for e in events)
    assert types.count("customer.registered") == 2  # cu-ann's and the merged cu-old's
    assert "customer.merged" in types
    assert "customer.identity_linked" in types  # the customer's own stream, links included
    assert sorted(e["type"] for e in events if "channel" in e["data"]) == [
        "email.received",
        "email.received",
        "sms.received",
    ]
    assert all(
        e["data"]["contact"] != "email:bob@example.com" for e in events if "contact" in e["data"]
    )
    assert not any("Bob" in line.decode() for line in answer.content.splitlines())
    assert len(by["timeline"]) == 3
    assert {c["conversation_id"] for c in by["conversation"]} == {
        t["conversation_id"] for t in by["timeline"]
    }
    assert [(a["endpoint"], a["key_name"]) for a in by["access"]] == [
        ("summary", "agent desktop"),
        ("export", "dpo"),
    ]
    assert len(by["merge"]) == 1
    missing = http.get("/v1/customers/cu-nobody/export", headers=auditor)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_export_from_the_command_line_is_logged_too(
    history: None, database_url: str, tmp_path: Any
) -> None:
    out = tmp_path / "ann.ndjson"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["--database-url", database_url, "export", "cu-old", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert lines[0]["customer_id"] == "cu-ann"
    (access,) = [line for line in lines if line["record"] == "access"]
    assert access["endpoint"] == "export"
    assert access["key_name"].startswith("command line (")
    missing = runner.invoke(cli, ["--database-url", database_url, "export", "cu-nobody"])
    assert missing.exit_code == 1
    assert "no customer cu-nobody" in missing.output
