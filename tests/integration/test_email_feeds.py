"""Mail reaching the log: `import email` from an mbox, a Maildir and .eml files, and
POST /v1/connectors/email/inbound, each idempotent and refusing what it cannot read."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from interaction_store.api import create_app
from interaction_store.cli import cli
from interaction_store.keys import create_key
from interaction_store.settings import Settings
from tests.helpers import count_events


def mail(n: int, *, sender: str = "sam@example.com", body: str = "Where is my order?") -> bytes:
    return (
        f"From: {sender}\nTo: help@acme.example\nSubject: order {n}\n"
        f"Date: Mon, 30 Nov 2026 09:{n:02d}:00 +0000\nMessage-ID: <m{n}@example.com>\n"
        f"Content-Type: text/plain; charset=utf-8\n\n{body} ({n})\n"
    ).encode()


BROKEN = b"To: help@acme.example\nSubject: nobody sent this\n\nno From header\n"


def write_mbox(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.mbox(path)
    for raw in messages:
        box.add(raw)
    box.flush()
    box.close()
    return path


def run(database_url: str, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        [
            "--database-url",
            database_url,
            "import",
            "email",
            *args,
            "--support-address",
            "help@acme.example",
        ],
    )


def test_an_mbox_imports_once_and_a_malformed_mail_is_reported_not_fatal(
    database_url: str, tmp_path: Path
) -> None:
    box = write_mbox(tmp_path / "support.mbox", [mail(1), BROKEN, mail(2), mail(3)])
    first = run(database_url, str(box))
    assert first.exit_code == 1, first.output
    assert "appended 3, already present 0, rejected 1" in first.output
    assert "support.mbox message 2: the message has no From address" in first.output
    again = run(database_url, str(box))
    assert "appended 0, already present 3, rejected 1" in again.output
    assert count_events(database_url) == 3


def test_the_same_message_twice_in_one_file_is_stored_once(
    database_url: str, tmp_path: Path
) -> None:
    reused = mail(1, body="Other text under the same Message-ID")
    box = write_mbox(tmp_path / "twice.mbox", [mail(1), mail(2), mail(1), reused])
    result = run(database_url, str(box))
    assert "appended 2, already present 1, rejected 1" in result.output
    assert "twice.mbox message 4: reuses the id of entry 1 with other content" in result.output
    assert count_events(database_url) == 2


def test_a_maildir_and_a_folder_of_eml_files_are_one_mailbox(
    database_url: str, tmp_path: Path
) -> None:
    maildir = mailbox.Maildir(tmp_path / "Maildir")
    for raw in (mail(1), mail(2)):
        maildir.add(raw)
    folder = tmp_path / "eml"
    folder.mkdir()
    (folder / "two.eml").write_bytes(mail(2))  # the same message, exported again
    (folder / "four.eml").write_bytes(mail(4))
    assert "appended 2, already present 0" in run(database_url, str(tmp_path / "Maildir")).output
    assert "appended 1, already present 1" in run(database_url, str(folder)).output
    assert "appended 0, already present 1" in run(database_url, str(folder / "four.eml")).output
    assert count_events(database_url) == 3


Client = tuple[TestClient, dict[str, str]]


@pytest.fixture
def client(pool: ConnectionPool[Any], database_url: str) -> Iterator[Client]:
    settings = Settings(database_url=database_url, support_addresses="help@acme.example")
    key, _ = create_key(pool, "mail relay", ["events:append"])
    app = create_app(settings, pool=pool, projector=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, {"Authorization": f"Bearer {key}", "Content-Type": "message/rfc822"}


def test_the_inbound_route_stores_a_message_once(client: Client, database_url: str) -> None:
    http, headers = client
    url = "/v1/connectors/email/inbound"
    first = http.post(url, content=mail(1), headers=headers)
    assert first.status_code == 201, first.text
    again = http.post(url, content=mail(1), headers=headers)
    assert again.status_code == 200
    assert again.json() == first.json()
    reused = http.post(
        url, content=mail(1, body="Another text, the same Message-ID"), headers=headers
    )
    assert reused.status_code == 409  # flagged, not silently dropped
    assert reused.json()["title"] == "Event id reused"
    sent = http.post(
        url,
        content=mail(5, sender="help@acme.example").replace(
            b"To: help@acme.example", b"To: sam@example.com"
        ),
        headers=headers,
    )
    assert sent.status_code == 201
    assert count_events(database_url) == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [(BROKEN, 422), (b"", 422), (b"x" * (17 * 1024 * 1024), 413)],
    ids=["no-sender", "empty", "too-large"],
)
def test_the_inbound_route_refuses_what_it_cannot_read_and_writes_nothing(
    client: Client, database_url: str, body: bytes, status: int
) -> None:
    http, headers = client
    answer = http.post("/v1/connectors/email/inbound", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert count_events(database_url) == 0


def test_the_inbound_route_needs_a_key(client: Client) -> None:
    http, _ = client
    answer = http.post(
        "/v1/connectors/email/inbound", content=mail(1), headers={"Content-Type": "message/rfc822"}
    )
    assert answer.status_code == 401
