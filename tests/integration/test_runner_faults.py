"""The runner under faults: a killed process, poison events and their retry, stalls."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from interaction_store.demo import generate
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.projections.runner import DeadLetterError
from interaction_store.store import Store
from tests.helpers import Flaky, cli_command, email, sms


def applied(store: Store) -> dict[str, int]:
    with store.pool.connection() as conn:
        return dict(
            conn.execute("SELECT projection, applied FROM projection_checkpoints").fetchall()
        )


def test_a_killed_runner_restarts_and_applies_every_event_exactly_once(
    store: Store, database_url: str
) -> None:
    events = list(generate(3000, seed=9, customer_count=200, with_customers=True))
    for start in range(0, len(events), 1000):
        store.append_batch(events[start : start + 1000])
    total = len(events)
    interactions = total - 200
    command = cli_command(database_url, "project", "--batch-size", "20")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill it mid-stream, without warning
            done = applied(store).get("conversations", 0)
            if done >= 500:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    at_kill = applied(store)
    assert min(at_kill.values()) > 0, at_kill
    assert max(at_kill.values()) < total, "the runner finished before it could be killed"

    ProjectionRunner(store, all_projections(), batch_size=333).catch_up()
    assert applied(store) == {"timeline": total, "customers": total, "conversations": total}
    with store.pool.connection() as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM timeline),"
            " (SELECT sum(interactions) FROM conversations),"
            " (SELECT count(*) FROM customer_profiles)"
        ).fetchone()
    # an event applied twice would count twice in the conversations' tallies
    assert counts == (interactions, interactions, 200)


def seen(store: Store) -> list[int]:
    with store.pool.connection() as conn:
        return [r[0] for r in conn.execute("SELECT position FROM flaky_seen ORDER BY 1")]


def test_a_parked_event_is_applied_by_a_retry_after_the_fix(store: Store) -> None:
    with store.pool.connection() as conn:
        conn.execute("CREATE TABLE flaky_seen (position bigint PRIMARY KEY)")
    positions = [e.position for e in store.append_batch([sms(1), email(2), sms(3)]).events]
    projection = Flaky()
    runner = ProjectionRunner(store, [projection], max_attempts=2)
    runner.catch_up()
    assert seen(store) == [positions[0], positions[2]]  # the projection went on
    [letter] = runner.dead_letters()
    assert (letter.position, letter.attempts, letter.resolution) == (positions[1], 2, None)
    assert letter.error == "KeyError: 'subject'"

    with pytest.raises(KeyError):  # not fixed yet: it stays parked, one attempt more
        runner.retry(letter.id)
    assert runner.dead_letters()[0].attempts == 3

    projection.fixed = True
    retried = runner.retry(letter.id)
    assert retried.resolution == "retried"
    assert retried.resolved_at is not None
    assert seen(store) == positions
    assert runner.dead_letters() == []
    assert [d.resolution for d in runner.dead_letters(resolved=True)] == ["retried"]
    with pytest.raises(DeadLetterError, match="already retried"):
        runner.retry(letter.id)
    with pytest.raises(DeadLetterError, match="no dead letter 999"):
        runner.skip(999)


def test_a_skip_is_recorded_and_nothing_is_applied(store: Store) -> None:
    with store.pool.connection() as conn:
        conn.execute("CREATE TABLE flaky_seen (position bigint PRIMARY KEY)")
    positions = [e.position for e in store.append_batch([email(1), sms(2)]).events]
    runner = ProjectionRunner(store, [Flaky()], max_attempts=1)
    runner.catch_up()
    [letter] = runner.dead_letters()
    skipped = runner.skip(letter.id)
    assert (skipped.resolution, skipped.position) == ("skipped", positions[0])
    assert seen(store) == [positions[1]]
    with pytest.raises(DeadLetterError, match="already skipped"):
        runner.retry(letter.id)


def test_liveness_notices_a_checkpoint_that_stopped_while_the_log_grew(store: Store) -> None:
    runner = ProjectionRunner(store, all_projections())
    runner.catch_up()
    store.append_batch([sms(i) for i in range(3)])
    assert runner.stalled(after=0.3) == []  # the events have only just arrived
    time.sleep(0.5)
    stalled = runner.stalled(after=0.3)
    assert sorted(lag.projection for lag in stalled) == ["conversations", "customers", "timeline"]
    assert {lag.events for lag in stalled} == {3}
    runner.catch_up()
    assert runner.stalled(after=0.3) == []
    time.sleep(0.5)
    assert runner.stalled(after=0.3) == []  # idle, but nothing waits: alive
