"""The HTTP API against the real app on real PostgreSQL, with the projector running."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from interaction_store.api import create_app
from interaction_store.demo import story
from interaction_store.exceptions import ConfigurationError
from interaction_store.keys import create_key, revoke_key
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.projections.timeline import TimelineProjection
from interaction_store.settings import Settings
from interaction_store.store import Store
from tests.helpers import email, sms


@dataclass
class Api:
    client: TestClient
    reader: dict[str, str]
    appender: dict[str, str]
    auditor: dict[str, str]
    pool: ConnectionPool[Any]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(pool: ConnectionPool[Any], database_url: str) -> Iterator[Api]:
    settings = Settings(database_url=database_url, max_batch_events=50, max_request_bytes=65536)
    keys = {
        scope: bearer(create_key(pool, f"test {scope}", [scope])[0])
        for scope in ("timeline:read", "events:append", "audit:read")
    }
    with TestClient(create_app(settings, pool=pool), raise_server_exceptions=False) as client:
        yield Api(client, keys["timeline:read"], keys["events:append"], keys["audit:read"], pool)


def append(api: Api, events: list[dict[str, Any]]) -> dict[str, Any]:
    answer = api.client.post("/v1/events", json={"events": events}, headers=api.appender)
    assert answer.status_code in (200, 201), answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_append_then_read_your_writes(api: Api) -> None:
    body = append(api, story())
    assert len(body["events"]) == 14
    assert body["position"] == max(e["position"] for e in body["events"])
    lookup = api.client.get(
        "/v1/customers/lookup",
        params={
            "identity": "email:Margaret.Chen@northwind.example",
            "min_position": body["position"],
        },
        headers=api.reader,
    )
    assert lookup.status_code == 200, lookup.text
    assert lookup.json()["customer_id"] == "cu-northwind-mchen"

    later = 60 * 24 * 30  # minutes after T0: after the whole story
    more = append(api, [email(later, customer_id="cu-northwind-mchen", subject="One more thing")])
    timeline = api.client.get(
        "/v1/customers/cu-northwind-mchen/timeline",
        params={"min_position": more["position"], "limit": 2},
        headers=api.reader,
    )
    assert timeline.status_code == 200, timeline.text
    page = timeline.json()
    assert page["items"][0]["subject"] == "One more thing"
    assert page["items"][0]["position"] == more["position"]
    rest = api.client.get(
        "/v1/customers/cu-northwind-mchen/timeline",
        params={"cursor": page["next_cursor"]},
        headers=api.reader,
    ).json()
    assert [i["type"] for i in rest["items"]] == ["call.completed", "email.received"]
    assert rest["next_cursor"] is None


def test_summary_context_and_conversation(api: Api) -> None:
    last = append(api, story())["position"]
    api.client.get(  # wait for the views
        "/v1/customers/cu-northwind-mchen/timeline",
        params={"min_position": last},
        headers=api.reader,
    )
    summary = api.client.get("/v1/customers/cu-northwind-mchen", headers=api.reader).json()
    assert summary["profile"]["name"] == "Margaret Chen"
    assert summary["channels"]["voice"]["count"] == 1
    assert summary["preferred_agent"] == "ag-olivia"
    context = api.client.get("/v1/customers/cu-northwind-mchen/context", headers=api.reader)
    assert context.json()["priority"] == summary["priority"] > 0
    mail = api.client.get("/v1/conversations/cv-northwind-invoice", headers=api.reader).json()
    assert mail["breached"] is True
    assert [f["channel"] for f in mail["follow_ups"]] == ["voice"]


def test_errors_are_problem_details(api: Api) -> None:
    client = api.client
    missing = client.get("/v1/customers/cu-1")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/v1/customers/cu-1", headers=bearer("isk_nonsense")).status_code == 401
    wrong_scope = client.get("/v1/customers/cu-1", headers=api.appender)
    assert wrong_scope.status_code == 403
    assert "timeline:read" in wrong_scope.json()["detail"]
    assert client.get("/v1/customers/cu-nobody", headers=api.reader).status_code == 404
    bad_identity = client.get(
        "/v1/customers/lookup", params={"identity": "email:nope"}, headers=api.reader
    )
    assert bad_identity.status_code == 422
    assert bad_identity.json()["errors"][0]["field"] == "identity"
    bad_limit = client.get(
        "/v1/customers/cu-1/timeline", params={"limit": 0}, headers=api.reader
    ).json()
    assert bad_limit["status"] == 422
    assert bad_limit["errors"][0]["field"] == "limit"
    invalid = client.post(
        "/v1/events",
        json={"events": [sms(1), {"type": "sms.received", "data": {}}]},
        headers=api.appender,
    )
    assert invalid.status_code == 422
    fields = {(e["index"], e["field"]) for e in invalid.json()["errors"]}
    assert (1, "events[1].occurred_at") in fields
    beyond_64_bits = client.post(
        "/v1/events",
        content=b'{"events": [{"type": "conversation.reopened", "occurred_at":'
        b' "2026-11-02T09:00:00Z", "data": {"conversation_id": "cv-1"},'
        b' "metadata": {"n": -11547412301046233088}}]}',
        headers={**api.appender, "Content-Type": "application/json"},
    )
    assert beyond_64_bits.status_code == 422, beyond_64_bits.text
    assert beyond_64_bits.json()["errors"][0]["field"] == "events[0].metadata"
    too_many = client.post(
        "/v1/events", json={"events": [sms(i) for i in range(51)]}, headers=api.appender
    )
    assert too_many.status_code == 422
    too_big = client.post(
        "/v1/events", content=b'{"events": [' + b" " * 70000 + b"]}", headers=api.appender
    )
    assert too_big.status_code == 413
    with api.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    never = client.get(
        "/v1/customers/cu-1/timeline", params={"min_position": 10**9}, headers=api.reader
    )
    assert never.status_code == 422  # no append was given that position: waiting cannot help
    assert never.json()["errors"][0]["field"] == "min_position"
    unknown = client.get("/v1/customers/cu-1/timeline?chanel=email", headers=api.reader)
    assert unknown.status_code == 422  # a misspelt filter is not silently ignored
    assert unknown.json()["errors"] == [
        {"field": "chanel", "reason": "not a parameter of this endpoint"}
    ]
    text = missing.text + wrong_scope.text + invalid.text + never.text
    assert "Traceback" not in text
    assert "SELECT" not in text


@pytest.mark.parametrize("path", ["/v1/customers/cu-1/timeline", "/v1/conversations/c-1"])
def test_min_position_says_nothing_and_waits_for_nothing_without_a_key(api: Api, path: str) -> None:
    """Without a key, min_position is neither checked against the log (which would tell
    how many events it holds) nor waited for."""
    append(api, [sms(1, customer_id="cu-1", conversation_id="c-1")])
    for position in (1, 10**12):
        answer = api.client.get(path, params={"min_position": position})
        assert answer.status_code == 401, answer.text
    wrong = api.client.get(path, params={"min_position": 10**12}, headers=api.appender)
    assert wrong.status_code == 403


@pytest.mark.parametrize("number", [b"18446744073709551616", b"-9223372036854775809"])
def test_an_integer_beyond_64_bits_is_refused_not_rounded(api: Api, number: bytes) -> None:
    """JSON parsers read such an integer as a rounded float (an id sent as a number would
    be stored wrong): it is refused, naming the field; digits in text are only text."""
    body = (
        b'{"events": [{"type": "conversation.reopened", "occurred_at": "2026-11-02T09:00:00Z",'
        b' "data": {"conversation_id": "cv-1", "reason": "ref 123456789012345678901"},'
        b' "metadata": {"ticket": %s}}]}'
    )
    headers = {**api.appender, "Content-Type": "application/json"}
    refused = api.client.post("/v1/events", content=body % number, headers=headers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "events[0].metadata"
    stored = api.client.post("/v1/events", content=body % b"12345678901234567890", headers=headers)
    assert stored.status_code == 201, stored.text
    with api.pool.connection() as conn:
        row = conn.execute("SELECT metadata->'ticket', payload->>'reason' FROM events").fetchone()
    assert row == (12345678901234567890, "ref 123456789012345678901")


def test_read_your_writes_answers_503_while_the_views_are_behind(api: Api) -> None:
    timeline = "/v1/customers/cu-1/timeline"
    with api.pool.connection() as holder, holder.transaction():
        # The projector cannot write timeline rows while this lock is held; reads can.
        holder.execute("LOCK TABLE timeline IN EXCLUSIVE MODE")
        body = append(api, [sms(1, customer_id="cu-1")])
        late = api.client.get(
            timeline, params={"min_position": body["position"]}, headers=api.reader
        )
        assert late.status_code == 503
        assert late.headers["retry-after"] == "1"
        assert late.json()["type"].endswith("/views-behind")
    fresh = api.client.get(timeline, params={"min_position": body["position"]}, headers=api.reader)
    assert fresh.status_code == 200
    assert [i["position"] for i in fresh.json()["items"]] == [body["position"]]


def test_read_your_writes_waits_for_every_view(
    store: Store, pool: ConnectionPool[Any], database_url: str
) -> None:
    """The views can stand at different positions (a batch that failed is applied view
    by view): the summary reads the customers' profiles, which the timeline being there
    says nothing of."""
    app = create_app(Settings(database_url=database_url), pool=pool, projector=False)
    reader = bearer(create_key(pool, "reader", ["timeline:read"])[0])
    store.append_batch([sms(0, customer_id="cu-1")])
    ProjectionRunner(store, all_projections()).catch_up()
    gold = {
        "type": "customer.profile_updated",
        "occurred_at": "2026-11-02T09:00:00+00:00",
        "data": {"customer_id": "cu-1", "tier": "gold"},
    }
    position = store.append_batch([gold]).position
    ProjectionRunner(store, [TimelineProjection()]).catch_up()  # the timeline alone
    with TestClient(app) as client:
        summary = "/v1/customers/cu-1"
        late = client.get(summary, params={"min_position": position}, headers=reader)
        assert late.status_code == 503, late.text
        ProjectionRunner(store, all_projections()).catch_up()
        fresh = client.get(summary, params={"min_position": position}, headers=reader)
        assert fresh.status_code == 200
        assert fresh.json()["profile"]["tier"] == "gold"


def test_a_retried_append_answers_200_with_the_same_positions(api: Api) -> None:
    event = sms(1, conversation_id="c-1")

    def post() -> tuple[int, Any]:
        answer = api.client.post("/v1/events", json={"events": [event]}, headers=api.appender)
        return answer.status_code, answer.json()["events"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(), range(20)))
    assert sorted(code for code, _ in answers).count(201) == 1
    assert {str(body) for _, body in answers} == {str(answers[0][1])}
    with api.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)


def test_stream_appends_check_the_expected_version(api: Api) -> None:
    url = "/v1/streams/conversation-c-9/events"
    first = api.client.post(
        url,
        json={"events": [sms(1, conversation_id="c-9")], "expected_version": "no_stream"},
        headers=api.appender,
    )
    assert first.status_code == 201, first.text
    stale = api.client.post(
        url,
        json={"events": [sms(2, conversation_id="c-9")], "expected_version": 0},
        headers=api.appender,
    )
    assert stale.status_code == 409
    assert (stale.json()["expected"], stale.json()["actual"]) == (0, 1)
    beyond = api.client.post(  # JSON reads it as an integer; PostgreSQL's bigint cannot
        url,
        json={"events": [sms(3, conversation_id="c-9")], "expected_version": 2**63},
        headers=api.appender,
    )
    assert beyond.status_code == 422, beyond.text
    assert beyond.json()["errors"][0]["field"] == "expected_version"
    nul_key = api.client.post(
        "/v1/events",
        json={"events": [sms(4)]},
        headers={**api.appender, "Idempotency-Key": "a\x00b"},
    )
    assert nul_key.status_code == 422, nul_key.text
    assert nul_key.json()["errors"][0]["field"] == "Idempotency-Key"
    read = api.client.get("/v1/streams/conversation-c-9", headers=api.auditor)
    assert [e["stream_version"] for e in read.json()["events"]] == [1]
    assert api.client.get("/v1/streams/conversation-c-9", headers=api.reader).status_code == 403
    log = api.client.get("/v1/log", params={"limit": 5}, headers=api.auditor).json()
    assert len(log["events"]) == 1
    assert (
        api.client.get("/v1/log", params={"after": log["next"]}, headers=api.auditor).json()[
            "events"
        ]
        == []
    )


def test_a_revoked_key_is_refused(api: Api) -> None:
    key = api.reader["Authorization"].removeprefix("Bearer ")
    assert revoke_key(api.pool, key)
    assert api.client.get("/v1/customers/cu-1", headers=api.reader).status_code == 401


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["projections"]) == {"timeline", "customers", "conversations"}


def test_idempotency_keys_replay_the_first_answer_even_under_concurrency(api: Api) -> None:
    customer_event = {  # no id: without the key, a retry would store it twice
        "type": "customer.profile_updated",
        "occurred_at": "2026-11-02T09:00:00+00:00",
        "data": {"customer_id": "cu-1", "tier": "gold"},
    }
    headers = {**api.appender, "Idempotency-Key": "req-42"}

    def post(body: dict[str, Any]) -> tuple[int, bytes]:
        answer = api.client.post("/v1/events", json=body, headers=headers)
        return answer.status_code, answer.content

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, [{"events": [customer_event]}] * 20))
    assert {code for code, _ in answers} == {201}
    assert len({body for _, body in answers}) == 1
    with api.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    other = api.client.post(
        "/v1/events",
        json={"events": [{**customer_event, "data": {"customer_id": "cu-2"}}]},
        headers=headers,
    )
    assert other.status_code == 422
    assert other.json()["title"] == "Idempotency key reused"
    fresh = api.client.post(
        "/v1/events",
        json={"events": [customer_event]},
        headers={**api.appender, "Idempotency-Key": "req-43"},
    )
    assert fresh.status_code == 201  # another key: another request, another event


def test_metrics_in_prometheus_text(api: Api) -> None:
    append(api, [sms(1)])
    api.client.get("/v1/customers/cu-nobody", headers=api.reader)
    text = api.client.get("/metrics").text
    assert 'interaction_store_events_appended_total{outcome="appended"} 1.0' in text
    assert (
        'interaction_store_http_request_seconds_count{method="GET",'
        'route="/v1/customers/{customer_id}",status="404"} 1.0'
    ) in text
    assert 'interaction_store_projection_lag_events{projection="timeline"}' in text
    assert "interaction_store_dead_letters" in text
    assert "interaction_store_database_up 1.0" in text


def test_with_the_database_down_probes_and_scrapes_answer_at_once(
    api: Api, database_url: str
) -> None:
    """/readyz says not ready and /metrics keeps the request metrics, each within the
    probes' few seconds rather than the pool's 30."""
    assert api.client.get("/readyz").status_code == 200
    name = conninfo_to_dict(database_url)["dbname"]
    admin = make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
    try:
        began = time.monotonic()
        ready = api.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"] == "the database does not answer"
        scraped = api.client.get("/metrics")
        assert scraped.status_code == 200
        assert "interaction_store_database_up 0.0" in scraped.text
        assert 'route="/readyz",status="503"' in scraped.text
        assert time.monotonic() - began < 15  # the pool's own wait is 30 s for each
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name))
            )


def test_an_unexpected_error_answers_a_problem_and_logs_no_message(
    pool: ConnectionPool[Any], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The message of an exception can quote what a customer wrote: the log says what was
    raised and where, and the server is not handed the exception to log it whole."""
    app = create_app(Settings(database_url=database_url), pool=pool, projector=False)

    written = "my card is " + "4111 " * 4  # what a customer wrote, not in the source

    def boom() -> None:
        raise RuntimeError(f"the body said: {written}")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=True) as client:
        answer = client.get("/boom")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == "the server failed; the error is logged"
    assert "unhandled RuntimeError on GET /boom" in caplog.text
    assert "in boom" in caplog.text  # where it was raised
    assert "4111" not in caplog.text
    assert "4111" not in answer.text


def test_a_start_that_fails_leaves_nothing_open(
    pool: ConnectionPool[Any], database_url: str
) -> None:
    def others() -> int:
        """Connections to the database besides those of the pool handed in (which may
        have grown meanwhile: it is not the app's to close)."""
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            ours = pool.get_stats()["pool_size"] - 1
        assert row is not None
        return int(row[0]) - ours

    threads = set(threading.enumerate())
    before = others()
    settings = Settings(database_url=database_url, audit_signing_key="not a key")
    with (
        pytest.raises(ConfigurationError, match="signing key"),
        TestClient(create_app(settings, pool=pool)),
    ):
        pass
    assert others() == before  # the reads' pool is closed too
    assert {t for t in threading.enumerate() if t.is_alive()} <= threads


def test_since_and_until_need_their_utc_offset(api: Api) -> None:
    """A time without its offset would be read in the database server's time zone."""
    position = append(api, [sms(1, customer_id="cu-1")])["position"]
    timeline = "/v1/customers/cu-1/timeline"
    for name in ("since", "until"):
        naive = api.client.get(timeline, params={name: "2026-11-02T08:00:00"}, headers=api.reader)
        assert naive.status_code == 422, naive.text
        assert naive.json()["errors"][0]["field"] == name
    since = {"since": "2026-11-02T03:00:00-05:00", "min_position": position}
    aware = api.client.get(timeline, params=since, headers=api.reader)
    assert aware.status_code == 200, aware.text
    assert [i["position"] for i in aware.json()["items"]] == [position]
