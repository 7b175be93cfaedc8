"""The audit commands and endpoint on a real database: keygen, seal, verify (exit status 0
only when the log holds), proof, GET /v1/audit/checkpoints, and the sealer in serve."""

from __future__ import annotations

import time
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from interaction_store.api import create_app
from interaction_store.audit.merkle import verify_inclusion
from interaction_store.audit.signing import SigningKey
from interaction_store.cli import cli
from interaction_store.keys import create_key
from interaction_store.settings import Settings
from interaction_store.store import Store
from tests.helpers import sms

KEY = SigningKey.generate()


@pytest.fixture
def audit(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("INTERACTION_STORE_AUDIT_SIGNING_KEY", KEY.text())
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["--database-url", database_url, "audit", *args])

    return invoke


def test_keygen_prints_a_usable_pair() -> None:
    result = CliRunner().invoke(cli, ["audit", "keygen"])
    assert result.exit_code == 0
    lines = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    key = SigningKey.from_text(lines["INTERACTION_STORE_AUDIT_SIGNING_KEY"])
    assert key.public.text() == lines["INTERACTION_STORE_AUDIT_PUBLIC_KEY"]


def test_seal_verify_and_prove_from_the_command_line(
    audit: Any, store: Store, database_url: str
) -> None:
    assert audit("verify", "--quiet").exit_code == 0  # an empty log verifies
    store.append_batch([sms(n) for n in range(5)])
    sealed = audit("seal")
    assert sealed.exit_code == 0, sealed.output
    assert "checkpoint 1: 5 events" in sealed.output
    assert "nothing new to seal" in audit("seal").output
    good = audit("verify", "--quiet")
    assert good.exit_code == 0, good.output
    assert "5 events in 5 streams and 1 checkpoints: verified" in good.output

    proof = audit("proof", "3", "--json")
    assert proof.exit_code == 0, proof.output
    document = orjson.loads(proof.output)
    checkpoint = document["checkpoint"]
    assert verify_inclusion(
        bytes.fromhex(document["leaf_hash"]),
        document["leaf_index"],
        checkpoint["tree_size"],
        [bytes.fromhex(node) for node in document["audit_path"]],
        bytes.fromhex(checkpoint["root_hash"]),
    )
    assert audit("proof", "99").exit_code == 2  # no such event
    store.append_batch([sms(5)])
    assert "seal first" in audit("proof", "6").output
    assert audit("seal").exit_code == 0
    early = audit("proof", "6", "--checkpoint", "1")
    assert early.exit_code == 1
    assert "checkpoint 1 does not cover position 6" in early.output
    assert audit("proof", "6", "--checkpoint", "2").exit_code == 0

    with psycopg.connect(database_url) as conn:  # an insider rewrites one message
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            'UPDATE events SET payload = payload || \'{"text": "never said"}\' WHERE position = 4'
        )
    bad = audit("verify", "--quiet")
    assert bad.exit_code == 1
    assert "position 4" in bad.output
    assert "content differs from its digest" in bad.output
    assert "NOT verified" in bad.output


def test_seal_without_a_key_on_a_server_of_ones_own_says_how(database_url: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", database_url, "audit", "seal"])
    assert result.exit_code == 1
    assert "INTERACTION_STORE_AUDIT_SIGNING_KEY" in str(result.exception)


def test_serve_seals_the_log_and_lists_its_checkpoints(
    pool: ConnectionPool[Any], database_url: str, store: Store
) -> None:
    settings = Settings(
        database_url=database_url, audit_signing_key=KEY.text(), audit_seal_interval=0.1
    )
    auditor, _ = create_key(pool, "auditor", ["audit:read"])
    reader, _ = create_key(pool, "agent", ["timeline:read"])
    store.append_batch([sms(n) for n in range(3)])
    with TestClient(create_app(settings, pool=pool)) as http:
        deadline = time.monotonic() + 10
        while True:
            answer = http.get(
                "/v1/audit/checkpoints", headers={"Authorization": f"Bearer {auditor}"}
            )
            assert answer.status_code == 200, answer.text
            if answer.json()["checkpoints"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        page = answer.json()
        (checkpoint,) = page["checkpoints"]
        assert checkpoint["tree_size"] == 3
        assert checkpoint["key_id"] == KEY.public.key_id
        assert page["public_key"] == KEY.public.text()
        assert page["next"] == checkpoint["id"]
        assert http.get("/v1/audit/checkpoints").status_code == 401
        forbidden = http.get("/v1/audit/checkpoints", headers={"Authorization": f"Bearer {reader}"})
        assert forbidden.status_code == 403
