"""The live timeline (server-sent events) over a real socket, with the projector running."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from psycopg_pool import ConnectionPool

from interaction_store.api import create_app
from interaction_store.keys import create_key, revoke_key
from interaction_store.settings import Settings
from interaction_store.store import Store
from tests.helpers import sms


@pytest.fixture
def app(pool: ConnectionPool[Any], database_url: str) -> FastAPI:
    return create_app(Settings(database_url=database_url), pool=pool)


@pytest.fixture
def server(app: FastAPI) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=20)


def read_events(
    url: str, headers: dict[str, str], count: int, ready: threading.Event | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Read ``count`` server-sent events, then hang up."""
    got: list[tuple[int, dict[str, Any]]] = []
    with httpx.stream("GET", url, headers=headers, timeout=20) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        event_id = None
        for line in answer.iter_lines():
            if ready is not None:
                ready.set()
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: ") and event_id is not None:
                got.append((event_id, orjson.loads(line[6:])))
                if len(got) == count:
                    break
    return got


def projected(pool: ConnectionPool[Any], position: int) -> None:
    """Wait until the server's projector has put the event at ``position`` on the
    timeline (without a read of the customer, which the access log would record)."""
    deadline = time.monotonic() + 20
    while True:
        with pool.connection() as conn:
            if conn.execute("SELECT 1 FROM timeline WHERE position = %s", (position,)).fetchone():
                return
        assert time.monotonic() < deadline, f"position {position} was not projected"
        time.sleep(0.05)


def test_live_timeline_resumes_after_a_disconnect_without_loss_or_repeats(
    server: str, store: Store, pool: ConnectionPool[Any]
) -> None:
    key, _ = create_key(pool, "live test", ["timeline:read"])
    auth = {"Authorization": f"Bearer {key}"}
    first = store.append_batch([sms(0, customer_id="cu-live", conversation_id="c-live")])
    url = f"{server}/v1/customers/cu-live/timeline/live"
    httpx.get(
        f"{server}/v1/customers/cu-live/timeline",
        params={"min_position": first.position},
        headers=auth,
    )

    ready = threading.Event()
    seen: list[tuple[int, dict[str, Any]]] = []
    reader = threading.Thread(target=lambda: seen.extend(read_events(url, auth, 3, ready)))
    reader.start()
    assert ready.wait(10)
    for i in range(1, 4):
        store.append_batch([sms(i, customer_id="cu-live", conversation_id="c-live")])
    reader.join(timeout=20)
    assert [item["snippet"] for _, item in seen] == ["message 1", "message 2", "message 3"]
    assert [position for position, _ in seen] == [item["position"] for _, item in seen]

    missed = [
        store.append_batch([sms(i, customer_id="cu-live", conversation_id="c-live")]).position
        for i in range(4, 6)
    ]
    resumed = read_events(url, {**auth, "Last-Event-ID": str(seen[-1][0])}, 2)
    assert [position for position, _ in resumed] == missed
    assert [item["snippet"] for _, item in resumed] == ["message 4", "message 5"]

    unknown = httpx.get(f"{server}/v1/customers/cu-nobody/timeline/live", headers=auth)
    assert unknown.status_code == 404


def test_each_live_timeline_is_one_read_in_the_access_log(
    server: str, store: Store, pool: ConnectionPool[Any]
) -> None:
    key, _ = create_key(pool, "wallboard", ["timeline:read"])
    auditor, _ = create_key(pool, "dpo", ["audit:read"])
    auth = {"Authorization": f"Bearer {key}"}
    first = store.append_batch([sms(0, customer_id="cu-live", conversation_id="c-live")])
    projected(pool, first.position)
    url = f"{server}/v1/customers/cu-live/timeline/live"
    store.append_batch([sms(1, customer_id="cu-live", conversation_id="c-live")])
    resumed = read_events(url, {**auth, "Last-Event-ID": str(first.position)}, 1)
    assert [item["snippet"] for _, item in resumed] == ["message 1"]
    nobody = httpx.get(f"{server}/v1/customers/cu-nobody/timeline/live", headers=auth)
    assert nobody.status_code == 404
    entries = httpx.get(
        f"{server}/v1/audit/access",
        params={"customer_id": "cu-live"},
        headers={"Authorization": f"Bearer {auditor}"},
    ).json()["accesses"]
    assert [(e["endpoint"], e["key_name"]) for e in entries] == [("timeline", "wallboard")]


@pytest.mark.parametrize("last_id", ["1" * 5000, str(2**63), "-1", "1e3", "12a"])
def test_a_last_event_id_that_is_no_position_is_refused(
    server: str, store: Store, pool: ConnectionPool[Any], last_id: str
) -> None:
    key, _ = create_key(pool, "live test", ["timeline:read"])
    first = store.append_batch([sms(0, customer_id="cu-live", conversation_id="c-live")])
    projected(pool, first.position)  # the customer is known: only the header is wrong
    answer = httpx.get(
        f"{server}/v1/customers/cu-live/timeline/live",
        headers={"Authorization": f"Bearer {key}", "Last-Event-ID": last_id},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == "Last-Event-ID: the position of an event"


def test_a_revoked_key_ends_its_live_timeline(
    app: FastAPI, server: str, store: Store, pool: ConnectionPool[Any]
) -> None:
    app.state.service.key_cache_seconds = 0.3
    key, record = create_key(pool, "leaked", ["timeline:read"])
    auth = {"Authorization": f"Bearer {key}"}
    first = store.append_batch([sms(0, customer_id="cu-live", conversation_id="c-live")])
    projected(pool, first.position)
    lines: list[str] = []
    opened = threading.Event()

    def listen() -> None:
        url = f"{server}/v1/customers/cu-live/timeline/live"
        with httpx.stream("GET", url, headers=auth, timeout=20) as answer:
            assert answer.status_code == 200
            opened.set()
            lines.extend(answer.iter_lines())  # until the server ends the stream

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(10)
    revoke_key(pool, record.key_id)
    time.sleep(0.6)  # the revocation takes effect within the key cache's time
    store.append_batch([sms(1, text="after revocation", customer_id="cu-live")])
    listener.join(timeout=10)
    assert not listener.is_alive(), "the live timeline went on after the revocation"
    assert ": the API key was revoked" in lines
    assert not any("after revocation" in line for line in lines)
