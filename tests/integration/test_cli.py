"""The command line against a real database (in-process through click's runner)."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from interaction_store.cli import cli
from interaction_store.demo import generate, story
from tests.helpers import count_events, sms
from tests.integration.test_migrations import HEAD


@pytest.fixture
def run(database_url: str) -> object:
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None) -> object:
        return runner.invoke(cli, ["--database-url", database_url, *args], input=input)

    return invoke


def ndjson(events: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def test_append_from_a_file_then_again_counts_already_present(run, database_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "events.ndjson"
    path.write_bytes(ndjson(list(generate(1200, seed=2))))

    first = run("append", str(path), "--batch-size", "250")
    assert first.exit_code == 0, first.output
    assert "appended 1200, already present 0, rejected 0" in first.output
    again = run("append", str(path))
    assert "appended 0, already present 1200, rejected 0" in again.output
    assert count_events(database_url) == 1200


def test_append_from_stdin_reports_bad_lines_and_keeps_the_good(run, database_url) -> None:  # type: ignore[no-untyped-def]
    good = [sms(i) for i in range(3)]
    lines = ndjson(good[:1]) + b"{not json\n" + ndjson(good[1:2])
    lines += (
        orjson.dumps({"type": "fax.received", "occurred_at": "2026-01-01T00:00:00Z", "data": {}})
        + b"\n"
    )
    lines += b"\n" + ndjson(good[2:])
    result = run("append", "-", input=lines)

    assert result.exit_code == 1
    assert "appended 3, already present 0, rejected 2" in result.output
    assert "line 2: malformed JSON" in result.output
    assert "line 4: type: unknown event type 'fax.received'" in result.output
    assert count_events(database_url) == 3


@pytest.mark.parametrize(
    ("batch_size", "place"),
    [("500", 2), ("1", 3), ("2", 3)],  # in a batch of good lines, and alone in its batch
)
def test_append_reports_a_conflicting_line_and_appends_the_rest(  # type: ignore[no-untyped-def]
    run, database_url, batch_size, place
) -> None:
    original = sms(1, text="original")
    assert run("append", "-", input=ndjson([original])).exit_code == 0
    changed = {**original, "data": {**original["data"], "text": "changed"}}
    lines = [sms(2), sms(3)]
    lines.insert(place - 1, changed)
    result = run("append", "-", "--batch-size", batch_size, input=ndjson(lines))
    assert result.exit_code == 1, result.output
    assert "appended 2, already present 0, rejected 1" in result.output
    assert f"line {place}: event" in result.output
    assert "different content" in result.output
    assert count_events(database_url) == 3


@pytest.mark.parametrize("batch_size", ["1", "500"])
def test_a_line_repeated_in_a_file_counts_the_same_whatever_the_batches(  # type: ignore[no-untyped-def]
    run, database_url, batch_size
) -> None:
    given = sms(1, text="given an id")
    derived = {key: value for key, value in sms(2, text="id derived").items() if key != "id"}
    other = {**given, "data": {**given["data"], "text": "other content"}}
    lines = ndjson([given, derived, given, derived, other])
    result = run("append", "-", "--batch-size", batch_size, input=lines)
    assert result.exit_code == 1, result.output
    assert "appended 2, already present 2, rejected 1" in result.output
    assert "line 5:" in result.output
    assert count_events(database_url) == 2


def test_demo_loads_the_story_once(run, database_url) -> None:  # type: ignore[no-untyped-def]
    assert run("demo").exit_code == 0
    assert count_events(database_url) == len(story())
    second = run("demo", "--if-empty")
    assert "nothing loaded" in second.output
    assert count_events(database_url) == len(story())
    synthetic = run("demo", "--synthetic", "100", "--seed", "3")
    assert "synthetic: appended" in synthetic.output
    assert count_events(database_url) > len(story()) + 100  # plus the customers


def test_tail_prints_one_line_per_event_and_filters(run) -> None:  # type: ignore[no-untyped-def]
    run("demo")
    lines = run("tail").output.splitlines()
    assert len(lines) == len(story())
    assert "email.received" in lines[1]
    assert "margaret.chen@northwind.example" in lines[1]
    calls = run("tail", "--type", "call.completed", "--json").output.splitlines()
    assert [orjson.loads(line)["type"] for line in calls] == ["call.completed", "call.completed"]
    resumed = run("tail", "--after", orjson.loads(calls[0])["checkpoint"], "--limit", "2").output
    assert len(resumed.splitlines()) == 2
    assert run("tail", "--from-position", "9999").exit_code != 0


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("tail", "--after", "garbage"), "is not a checkpoint"),
        (("tail", "--after", "1:x"), "is not a checkpoint"),
        (("tail", "--after", "-1:-3"), "is not a checkpoint"),
        (("tail", "--after", f"1:{2**63}"), "beyond any checkpoint"),
        (("tail", "--limit", "0"), "--limit"),
        (("keys", "create", "--name", " ", "--scope", "timeline:read"), "needs a name"),
        (("keys", "create", "--name", "a\x00b", "--scope", "timeline:read"), "NUL"),
    ],
)
def test_a_bad_option_is_a_usage_error_not_a_traceback(run, args, reason) -> None:  # type: ignore[no-untyped-def]
    run("demo")
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert reason in result.output
    assert "Traceback" not in result.output


def test_a_retention_period_beyond_any_duration_is_an_invalid_setting(database_url) -> None:
    result = CliRunner().invoke(
        cli,
        ["--database-url", database_url, "retention", "apply"],
        env={"INTERACTION_STORE_RETENTION": "voice=99999999999d"},
    )
    assert result.exit_code == 1, result.output
    assert "invalid settings" in result.output
    assert "longer than 100 years" in result.output


def test_generate_writes_ndjson(run) -> None:  # type: ignore[no-untyped-def]
    result = run("generate", "5", "--seed", "1")
    assert [orjson.loads(line)["id"] for line in result.output.splitlines()] == [
        e["id"] for e in generate(5, seed=1)
    ]


def test_migrate_and_db_url_with_a_configured_database(run, database_url) -> None:  # type: ignore[no-untyped-def]
    assert f"{HEAD} -> {HEAD}" in run("migrate").output
    assert run("db", "url").output.strip() == database_url
    assert "configured" in run("db", "status").output


def test_help_teaches(run) -> None:  # type: ignore[no-untyped-def]
    text = run("append", "--help").output
    assert "NDJSON" in text
    assert "interaction-store generate 1000 | interaction-store append -" in text


def test_append_and_tail_refuse_a_database_without_the_schema(empty_database_url: str) -> None:
    runner = CliRunner()
    for args in (["append", "-"], ["tail"]):
        result = runner.invoke(cli, ["--database-url", empty_database_url, *args], input=b"")
        assert result.exit_code != 0
        assert "run `interaction-store migrate` first" in str(result.exception)


def test_timeline_shows_the_at_risk_customers_email_then_call(run) -> None:  # type: ignore[no-untyped-def]
    assert run("demo").exit_code == 0
    result = run("project", "--once")
    assert result.exit_code == 0, result.output
    assert "timeline: at position" in result.output
    shown = run("timeline", "phone:(415) 555-0142", "--limit", "10")
    assert shown.exit_code == 0, shown.output
    assert "cu-northwind-mchen" in shown.output
    lines = shown.output.splitlines()
    call = next(i for i, line in enumerate(lines) if "voice" in line)
    mail = next(i for i, line in enumerate(lines) if "email" in line and " in " in line)
    assert call < mail  # newest first: the call came after the email
    assert run("timeline", "email:nobody@example.com").exit_code != 0


def test_customer_prints_the_summary_of_the_at_risk_customer(run) -> None:  # type: ignore[no-untyped-def]
    assert run("demo").exit_code == 0
    shown = run("customer", "email:margaret.chen@northwind.example")
    assert shown.exit_code == 0, shown.output
    for expected in ("Margaret Chen", "priority 897,600", "preferred agent ag-olivia", "voice"):
        assert expected in shown.output
    unknown = run("customer", "email:nobody@example.com")
    assert unknown.exit_code != 0
    assert "no customer is known by email:nobody@example.com" in unknown.output
    assert "is not an email address" in run("customer", "email:not-an-address").output


def test_timeline_shows_the_follow_up_and_the_breach(run) -> None:  # type: ignore[no-untyped-def]
    assert run("demo").exit_code == 0
    shown = run("timeline", "cu-northwind-mchen")
    assert shown.exit_code == 0, shown.output
    call = next(line for line in shown.output.splitlines() if "voice in" in line)
    assert "follow-up" in call
    assert "breached" in shown.output


def test_rebuild_lag_and_deadletters(run) -> None:  # type: ignore[no-untyped-def]
    assert run("demo").exit_code == 0
    rebuilt = run("rebuild", "-q")
    assert rebuilt.exit_code == 0, rebuilt.output
    for name in ("timeline", "customers", "conversations"):
        assert f"{name}: rebuilt from 14 events" in rebuilt.output
    assert run("rebuild", "nonsense").exit_code == 2
    lag = run("lag")
    assert lag.exit_code == 0, lag.output
    assert "timeline" in lag.output
    assert "ok" in lag.output
    assert "no dead letters" in run("deadletters", "list").output
    missing = run("deadletters", "skip", "42")
    assert missing.exit_code == 1
    assert "there is no dead letter 42" in missing.output


def test_deadletters_list_and_skip_a_parked_event(run) -> None:  # type: ignore[no-untyped-def]
    self_merge = {
        "type": "customer.merged",
        "occurred_at": "2026-11-02T09:00:00+00:00",
        "data": {"customer_id": "cu-7", "source_customer_id": "cu-7"},
    }
    assert run("append", "-", input=ndjson([self_merge])).exit_code == 0
    assert run("project", "--once").exit_code == 0
    listed = run("deadletters", "list")
    assert "customer.merged" in listed.output
    assert "merging would make a cycle" in listed.output
    skipped = run("deadletters", "skip", "1")
    assert skipped.exit_code == 0, skipped.output
    assert "skipped by timeline" in skipped.output
    assert "no dead letters" in run("deadletters", "list").output
    assert "skipped" in run("deadletters", "list", "--all").output
    again = run("deadletters", "retry", "1")
    assert again.exit_code == 1
    assert "already skipped" in again.output


def test_customer_text_that_looks_like_markup_is_shown_as_text(run) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import email

    odd = email(1, subject="[urgent] refund [/b] now", customer_id="cu-[x]")
    assert run("append", "-", input=ndjson([odd])).exit_code == 0
    shown = run("timeline", "cu-[x]")
    assert shown.exit_code == 0, shown.output
    assert "[urgent]" in shown.output
    assert "[/b]" in shown.output
    summary = run("customer", "cu-[x]")
    assert summary.exit_code == 0, summary.output
    assert "email:alice@example.com" not in summary.output  # named, so no identity row
    assert "cu-[x]" in summary.output
