"""The API against its own OpenAPI document: Schemathesis generates requests for every
operation from the document and runs all of its checks on the answers (no server error,
status codes, content types, headers and bodies as documented, invalid input refused,
no access without a key), over real HTTP to a real server on real PostgreSQL.

Then, by hand, every operation that declares a key: without one it is 401, with a key of
another scope 403, and nothing is written either way.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from interaction_store.api import create_app
from interaction_store.db import open_pool
from interaction_store.demo import story
from interaction_store.keys import create_key
from interaction_store.settings import Settings
from interaction_store.store import Store
from interaction_store.testing import TestDatabases

#: The test server's body limit: small, so that Schemathesis reaches it now and then.
REQUEST_LIMIT = 65536


class Served:
    def __init__(self, base: str, admin: str, reader: str) -> None:
        self.base = base
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.reader = {"Authorization": f"Bearer {reader}"}


@pytest.fixture(scope="module")
def served(databases: TestDatabases) -> Iterator[Served]:
    """A uvicorn server in a thread, on a database of its own that holds the demo story."""
    url = databases.create()
    pool = open_pool(url, min_size=1, max_size=12)
    try:
        Store(pool).append_batch(story())
        admin, _ = create_key(pool, "schemathesis admin", ["admin"])
        reader, _ = create_key(pool, "schemathesis reader", ["timeline:read"])
        settings = Settings(database_url=url, max_batch_events=20, max_request_bytes=REQUEST_LIMIT)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings, pool=pool),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="on",
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the server stopped"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        KEYS["admin"] = admin
        try:
            yield Served(f"http://127.0.0.1:{port}", admin, reader)
        finally:
            KEYS.clear()
            server.should_exit = True
            thread.join(timeout=15)
    finally:
        pool.close()
        databases.drop(url)


# The document needs no database: the app writes it from its routes alone.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(database_url="postgresql://unused@localhost/unused")).openapi()
)


@schemathesis.serializer("message/rfc822")
def _raw_mail(ctx: Any, value: Any) -> bytes:
    """A generated mail body as it goes on the wire (bytes as they are)."""
    return value if isinstance(value, bytes) else str(value).encode()


#: The admin key of the running server, for the cases Schemathesis generates.
KEYS: dict[str, str] = {}


@schema.auth()
class AdminKey:
    """Authorises each generated case, except those that leave the key out on purpose
    (Schemathesis then expects a 401)."""

    def get(self, case: Any, context: Any) -> str:
        return KEYS.get("admin", "isk_unknown")  # also asked while tests are collected

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# The live timeline never ends, so it cannot be fetched whole; test_api_live.py tests it
# over a real socket.
LIVE = "/v1/customers/{customer_id}/timeline/live"
# Some requests that fit the document are still refused, by rules JSON Schema cannot
# state: an address must parse as its kind (appends, lookup), an interaction must name a
# thread (appends), a cursor must be one the API gave out, min_position must be a
# position some append was given, and as_of one the log has reached. For these a
# 422 naming the field is the right answer, so the check that expects a 2xx to every
# request fitting the document is left out; every other check still runs on them.
NEEDS_VALID_ADDRESSES = {
    "/v1/events",
    "/v1/streams/{stream_id}/events",
    "/v1/customers/lookup",
    "/v1/connectors/email/inbound",  # the bytes must be a mail with a sender
}


def _semantic_rules_apply(case: Any) -> bool:
    query = case.query or {}
    return case.operation.path in NEEDS_VALID_ADDRESSES or bool(
        {"min_position", "cursor", "as_of"} & {*query}
    )


def _call_and_validate(case: Any, served: Served) -> None:
    excluded = [positive_data_acceptance] if _semantic_rules_apply(case) else []
    response = case.call(base_url=served.base)
    if response.status_code == 413:
        # A body over the limit is refused before it is read, whatever it holds: valid or
        # not, 413 is the answer (and only for a body that is over it).
        body = response.request.body or b""
        assert len(body if isinstance(body, bytes) else body.encode()) > REQUEST_LIMIT
        excluded = [positive_data_acceptance, negative_data_rejection]
    case.validate_response(response, excluded_checks=excluded)


RELAXED = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


@schema.exclude(path=LIVE).exclude(method="POST").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=RELAXED)
def test_every_read_meets_its_own_document(case: Any, served: Served) -> None:
    _call_and_validate(case, served)


# Appends take batches of generated events of every type, costly to make: no coverage
# phase for them (its boundary cases of every field of every event type took a minute a
# run), and more random examples instead. Bad events are also tested by hand, in
# test_api.py and test_events.py.
appends = schemathesis.openapi.from_dict(schema.raw_schema)
appends.config.phases.coverage.enabled = False
appends.auth()(AdminKey)


@appends.include(method="POST").parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=RELAXED)
def test_every_append_meets_its_own_document(case: Any, served: Served) -> None:
    _call_and_validate(case, served)


def _operations(served: Served) -> list[tuple[str, str, bool]]:
    document = httpx.get(f"{served.base}/openapi.json").json()
    return [
        (method.upper(), path, bool(operation.get("security")))
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def _concrete(path: str) -> str:
    return (
        path.replace("{customer_id}", "cu-northwind-mchen")
        .replace("{conversation_id}", "cv-1")
        .replace("{stream_id}", "customer-cu-northwind-mchen")
    )


def _events(served: Served) -> int:
    log = httpx.get(f"{served.base}/v1/log?limit=1000", headers=served.admin).json()
    return len(log["events"])


def test_no_operation_but_health_answers_without_a_key(served: Served) -> None:
    operations = _operations(served)
    open_ones = {path for _, path, secured in operations if not secured}
    assert open_ones == {"/healthz", "/readyz"}
    before = _events(served)
    body = {"events": [story()[0]]}
    for method, path, secured in operations:
        if not secured:
            continue
        for headers in ({}, {"Authorization": "Bearer isk_not_a_key"}, {"Authorization": "x"}):
            answer = httpx.request(
                method, served.base + _concrete(path), headers=headers, json=body, timeout=10
            )
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["www-authenticate"].startswith("Bearer")
    assert _events(served) == before


def test_a_key_without_the_scope_is_forbidden(served: Served) -> None:
    before = _events(served)
    forbidden = [
        (method, path)
        for method, path, secured in _operations(served)
        if secured and (method == "POST" or path.startswith(("/v1/log", "/v1/streams")))
    ]
    assert {path for _, path in forbidden} == {
        "/v1/log",
        "/v1/streams/{stream_id}",
        "/v1/events",
        "/v1/streams/{stream_id}/events",
        "/v1/connectors/email/inbound",
        "/v1/customers/{customer_id}/erase",
    }
    for method, path in forbidden:
        answer = httpx.request(
            method,
            served.base + _concrete(path),
            headers=served.reader,
            json={"events": [story()[0]]},
            timeout=10,
        )
        assert answer.status_code == 403, (method, path, answer.text)
        assert "lacks the scope" in answer.json()["detail"]
    assert _events(served) == before


def test_the_document_with_every_connector_on_describes_their_routes() -> None:
    settings = Settings(
        database_url="postgresql://unused@localhost/unused",
        twilio_auth_token="token",
        chatwoot_secret="secret",
        x_consumer_secret="consumer-secret",
    )
    document = create_app(settings).openapi()
    operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        if "/connectors/" in path
        for method in item
    }
    assert operations == {
        ("POST", "/v1/connectors/email/inbound"),
        ("POST", "/v1/connectors/twilio/voice"),
        ("POST", "/v1/connectors/twilio/voicemail"),
        ("POST", "/v1/connectors/twilio/sms"),
        ("POST", "/v1/connectors/chatwoot"),
        ("GET", "/v1/connectors/x"),
        ("POST", "/v1/connectors/x"),
    }
    # Every operation of it resolves (its references point somewhere).
    resolved = schemathesis.openapi.from_dict(document)
    assert sum(1 for result in resolved.get_all_operations() if result.ok()) >= len(operations)
