"""The hot lane of the timeline and the context (``api.hot``): it answers plain requests
itself, exactly as the app's routes do, and leaves every other request to the app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool
from starlette.types import Message, Receive, Scope, Send

from interaction_store.api import create_app
from interaction_store.api.hot import HotLane
from interaction_store.api.routes import customers
from interaction_store.demo import story
from interaction_store.keys import create_key
from interaction_store.settings import Settings
from tests.helpers import sms

#: An answer: its status, content type and body.
Answer = tuple[int, bytes | None, bytes]

CUSTOMER = "cu-northwind-mchen"
TIMELINE = f"/v1/customers/{CUSTOMER}/timeline"


class Harness:
    """The app with the story appended and read into the views, a reader's and an
    appender's key, and three ways to ask: the hot lane alone (the app behind it replaced
    by one that only notes what reached it), the service's stack from just behind the
    lane, and the whole app with a parameter the lane leaves to it."""

    def __init__(self, client: TestClient, reader: str, appender: str, last: int) -> None:
        self.client, self.reader, self.appender, self.last = client, reader, appender, last
        self.passed_on: list[str] = []

    def via_app(self, path: str, params: dict[str, Any]) -> Answer:
        """The app's own answer: ``min_position`` (reached already, so it changes nothing
        in the answer) is a parameter the hot lane leaves to the app."""
        headers = {"Authorization": f"Bearer {self.reader}"}
        answer = self.client.get(
            path, params={**params, "min_position": self.last}, headers=headers
        )
        return answer.status_code, answer.headers["content-type"].encode(), answer.content

    def via_lane(
        self,
        path: str,
        query: str = "",
        *,
        token: str | None = None,
        method: str = "GET",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Answer | None:
        """The hot lane's answer, or None when it passed the request on."""
        before = len(self.passed_on)

        async def app_behind(scope: Scope, receive: Receive, send: Send) -> None:
            self.passed_on.append(f"{scope['path']}?{query}")

        lane = HotLane(app_behind, service=lambda: self.client.app.state.service)  # type: ignore[attr-defined]
        answer = self._call(lane, path, query, token, method, body, headers)
        if len(self.passed_on) > before:
            assert answer is None
            return None
        return answer

    def behind_lane(
        self,
        path: str,
        *,
        token: str,
        method: str = "POST",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """The app's own answer to the very request the lane takes: the service's stack
        from just behind the lane (exception handling, routing, the route)."""
        node = self.client.app.middleware_stack  # type: ignore[attr-defined]
        while not isinstance(node, HotLane):
            node = node.app
        answer = self._call(node.app, path, "", token, method, body, headers)
        assert answer is not None
        return answer

    def _call(
        self,
        app: Any,
        path: str,
        query: str,
        token: str | None,
        method: str,
        body: bytes,
        headers: dict[str, str] | None,
    ) -> Answer | None:
        token = self.reader if token is None else token
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [
                (name.encode(), value.encode())
                for name, value in {
                    "host": "test",
                    "authorization": f"Bearer {token}",
                    "content-type": "application/json",
                    "content-length": str(len(body)),
                    **{k.lower(): v for k, v in (headers or {}).items()},
                }.items()
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "app": self.client.app,  # as Starlette sets it before any middleware
        }
        messages: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            messages.append(message)

        assert self.client.portal is not None
        self.client.portal.call(app, scope, receive, send)
        if not messages:
            return None
        start = next(m for m in messages if m["type"] == "http.response.start")
        parts = [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]
        return start["status"], dict(start["headers"]).get(b"content-type"), b"".join(parts)


@pytest.fixture
def hot(pool: ConnectionPool[Any], database_url: str) -> Iterator[Harness]:
    reader = create_key(pool, "hot reader", ["timeline:read"])[0]
    appender = create_key(pool, "hot appender", ["events:append"])[0]
    settings = Settings(database_url=database_url)
    with TestClient(create_app(settings, pool=pool), raise_server_exceptions=False) as client:
        appended = client.post(
            "/v1/events", json={"events": story()}, headers={"Authorization": f"Bearer {appender}"}
        )
        assert appended.status_code == 201, appended.text
        harness = Harness(client, reader, appender, appended.json()["position"])
        status, _, _ = harness.via_app(TIMELINE, {})  # waits for the views; checks the key
        assert status == 200
        yield harness


def test_plain_pages_are_answered_by_the_lane_as_the_app_answers_them(hot: Harness) -> None:
    first = hot.via_lane(TIMELINE, "limit=2")
    assert first is not None
    assert first == hot.via_app(TIMELINE, {"limit": 2})
    page = orjson.loads(first[2])
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    cases: list[dict[str, Any]] = [
        {},
        {"limit": 1},
        {"limit": 500},
        {"limit": 2, "cursor": page["next_cursor"]},
        {"channel": "email"},
        {"channel": "voice", "limit": 3},
        {"type": "call.completed"},
        {"conversation_id": page["items"][0]["conversation_id"]},
        {"type": "tweet.sent"},  # an empty page of a known customer
    ]
    for params in cases:
        lane = hot.via_lane(TIMELINE, urlencode(params))
        assert lane is not None, params
        assert lane == hot.via_app(TIMELINE, params), params
        assert lane[0] == 200
    # Written otherwise, the same request: percent-encoded, with a lowercase scheme and
    # spaces around the key, as HTTPBearer reads them.
    encoded = hot.via_lane(
        TIMELINE,
        "type=call%2Ecompleted&limit=2",
        headers={"Authorization": f"bearer   {hot.reader} "},
    )
    assert encoded == hot.via_app(TIMELINE, {"type": "call.completed", "limit": 2})
    assert hot.passed_on == []


def test_problems_are_answered_as_the_app_answers_them(hot: Harness) -> None:
    unknown = "/v1/customers/cu-nobody/timeline"
    for path, params in ((unknown, {}), (TIMELINE, {"cursor": "bm90LWEtY3Vyc29y"})):
        lane = hot.via_lane(path, urlencode(params))
        assert lane is not None
        assert lane == hot.via_app(path, params)
        assert lane[0] in (404, 422)
    assert hot.passed_on == []


@pytest.mark.parametrize(
    "query",
    [
        "as_of=1",
        "since=2026-01-01T00:00:00Z",
        "until=2026-01-01T00:00:00Z",
        "min_position=1",
        "chanel=email",  # misspelt: the app refuses it
        "limit=2&limit=3",
        "limit=0",
        "limit=501",
        "limit=05",
        "limit=two",
        "channel=fax",
        "channel=",
        "type=",
        "type=" + "x" * 101,
        "conversation_id=a%00b",
    ],
)
def test_other_parameters_are_left_to_the_app(hot: Harness, query: str) -> None:
    assert hot.via_lane(TIMELINE, query) is None
    assert hot.via_lane(TIMELINE) is not None  # the same key, a plain request: taken


def test_other_requests_and_keys_are_left_to_the_app(
    hot: Harness, pool: ConnectionPool[Any]
) -> None:
    unseen = create_key(pool, "never used", ["timeline:read"])[0]
    appender = hot.appender  # checked by the app when it appended, but not a reader
    assert hot.via_lane(TIMELINE) is not None  # the reader's plain request: taken
    assert hot.via_lane(TIMELINE, method="HEAD") is None
    assert hot.via_lane(TIMELINE, headers={"Authorization": "Basic dXNlcjpwYXNz"}) is None
    assert hot.via_lane(TIMELINE, token=unseen) is None  # the app checks a key first
    assert hot.via_lane(TIMELINE, token=appender) is None  # the app answers 403
    assert hot.via_lane(TIMELINE, token="isk_nonsense") is None
    assert hot.via_lane(TIMELINE, method="POST") is None
    assert hot.via_lane(TIMELINE + "/") is None
    assert hot.via_lane(TIMELINE + "/live") is None
    assert hot.via_lane(f"/v1/customers/{CUSTOMER}") is None  # the summary
    assert hot.via_lane("/v1/customers/" + "c" * 251 + "/timeline") is None
    # Once the app has checked the new key, the lane takes its requests.
    status = hot.client.get(TIMELINE, headers={"Authorization": f"Bearer {unseen}"}).status_code
    assert status == 200
    assert hot.via_lane(TIMELINE, token=unseen) is not None


def test_lane_answers_are_timed_under_their_route(hot: Harness) -> None:
    """The fixture's read and append went through the app; these take the lane (their
    keys are in the cache now): all are counted under their routes."""
    headers = {"Authorization": f"Bearer {hot.reader}"}
    for _ in range(3):
        assert hot.client.get(TIMELINE, headers=headers).status_code == 200
    assert hot.via_lane(TIMELINE) is not None  # the lane takes such a request
    appender = {"Authorization": f"Bearer {hot.appender}"}
    appended = hot.client.post("/v1/events", json={"events": [sms(7)]}, headers=appender)
    assert appended.status_code == 201
    assert hot.via_lane("/v1/events", method="POST", token=hot.appender, body=b"{}")
    metrics = hot.client.get("/metrics").text
    assert (
        'interaction_store_http_request_seconds_count{method="GET",'
        'route="/v1/customers/{customer_id}/timeline",status="200"} 4.0'
    ) in metrics
    assert (
        'interaction_store_http_request_seconds_count{method="POST",'
        'route="/v1/events",status="201"} 2.0'
    ) in metrics


def test_plain_contexts_are_answered_by_the_lane_as_the_app_answers_them(hot: Harness) -> None:
    for customer in (CUSTOMER, "cu-nobody"):
        path = f"/v1/customers/{customer}/context"
        lane = hot.via_lane(path)
        assert lane is not None
        assert lane == hot.via_app(path, {})
    assert hot.passed_on == []
    context = f"/v1/customers/{CUSTOMER}/context"
    assert hot.via_lane(context, "min_position=1") is None
    assert hot.via_lane(context, "limit=2") is None  # the app refuses it
    assert hot.via_lane(context, token=hot.appender) is None


def test_contexts_are_read_a_few_at_a_time(
    pool: ConnectionPool[Any], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``context_reads_at_once`` bounds how many context queries run at once, whichever
    lane a request takes; the others wait for their turn and are answered all the same."""
    inside, most = 0, 0
    read = customers._read
    pair: asyncio.Event | None = None

    async def counted(svc: Any, query: Any) -> Any:
        nonlocal inside, most, pair
        pair = pair or asyncio.Event()
        inside += 1
        most = max(most, inside)
        if inside >= 2:
            pair.set()
        try:
            # Hold the turn until a second read is in too (or 2 s have passed), so that
            # a third would overlap them if nothing bounded it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pair.wait(), 2.0)
            await asyncio.sleep(0.02)
            return await read(svc, query)
        finally:
            inside -= 1

    def bearer(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {create_key(pool, name, ['timeline:read'])[0]}"}

    # One key the service has checked (its requests take the lane), and two it has not
    # (the first request of each goes through the app's route).
    warm, cold = bearer("warm"), [bearer("cold 1"), bearer("cold 2")]
    settings = Settings(database_url=database_url, context_reads_at_once=2)
    with TestClient(create_app(settings, pool=pool), raise_server_exceptions=False) as client:
        assert client.get("/v1/customers/cu-0/context", headers=warm).status_code == 404
        monkeypatch.setattr(customers, "_read", counted)
        requests = [(f"/v1/customers/cu-{n}/context", warm) for n in range(8)]
        requests += [(f"/v1/customers/cu-{n}/context", key) for n, key in enumerate(cold)]
        with ThreadPoolExecutor(len(requests)) as threads:
            statuses = list(
                threads.map(lambda r: client.get(r[0], headers=r[1]).status_code, requests)
            )
    assert statuses == [404] * 10
    assert most == 2


def events_body(*events: dict[str, Any]) -> bytes:
    return orjson.dumps({"events": list(events)})


def test_plain_appends_are_answered_by_the_lane_as_the_app_answers_them(hot: Harness) -> None:
    token = hot.appender
    # Stored by the lane, then sent again to the app: the same events, a 200 for the retry.
    new = events_body(sms(1, text="lane first"), sms(2, text="lane second"))
    first = hot.via_lane("/v1/events", body=new, method="POST", token=token)
    assert first is not None
    assert first[0] == 201
    retried = hot.behind_lane("/v1/events", body=new, token=token)
    assert retried[0] == 200
    assert orjson.loads(retried[2]) == orjson.loads(first[2])
    # And the other way round.
    other = events_body(sms(3, text="app first"))
    stored = hot.behind_lane("/v1/events", body=other, token=token)
    assert stored[0] == 201
    again = hot.via_lane("/v1/events", body=other, method="POST", token=token)
    assert again == (200, *stored[1:])
    # With an Idempotency-Key, the second answer is the first, replayed.
    keyed = {"Idempotency-Key": "hot-lane-1"}
    body = events_body(sms(4, text="keyed"))
    once = hot.via_lane("/v1/events", body=body, headers=keyed, method="POST", token=token)
    assert once is not None
    assert once[0] == 201
    assert hot.behind_lane("/v1/events", body=body, headers=keyed, token=token) == once
    assert hot.passed_on == []


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {}, 422),
        (b'{"events": []}', {}, 422),
        (events_body({"type": "sms.received", "data": {}}), {}, 422),
        (events_body({"type": "no.such.type"}), {}, 422),
        (events_body(*(sms(n) for n in range(1001))), {}, 422),  # over the batch limit
        (b"{}", {"Content-Length": str(17 * 2**20)}, 413),
        (events_body(sms(1)), {"Idempotency-Key": "a\x00b"}, 422),
    ],
)
def test_refused_appends_are_answered_as_the_app_answers_them(
    hot: Harness, body: bytes, headers: dict[str, str], status: int
) -> None:
    lane = hot.via_lane("/v1/events", method="POST", token=hot.appender, body=body, headers=headers)
    assert lane is not None
    assert lane[0] == status
    assert lane == hot.behind_lane("/v1/events", token=hot.appender, body=body, headers=headers)


def test_a_reused_event_id_is_answered_as_the_app_answers_it(hot: Harness) -> None:
    event = sms(5, text="the first content")
    assert hot.behind_lane("/v1/events", token=hot.appender, body=events_body(event))[0] == 201
    changed = events_body({**event, "data": {**event["data"], "text": "other content"}})
    lane = hot.via_lane("/v1/events", method="POST", token=hot.appender, body=changed)
    assert lane is not None
    assert lane[0] == 409
    assert lane == hot.behind_lane("/v1/events", token=hot.appender, body=changed)


def test_other_appends_are_left_to_the_app(hot: Harness, pool: ConnectionPool[Any]) -> None:
    body = events_body(sms(6))
    assert hot.via_lane("/v1/events", method="POST", token=hot.appender, body=b"{}")
    unseen = create_key(pool, "unseen appender", ["events:append"])[0]
    for token, query in ((unseen, ""), (hot.reader, ""), (hot.appender, "x=1")):
        lane = hot.via_lane("/v1/events", query, method="POST", token=token, body=body)
        assert lane is None
    assert hot.via_lane("/v1/events", method="PUT", token=hot.appender, body=body) is None
    assert hot.via_lane("/v1/events/", method="POST", token=hot.appender, body=body) is None
