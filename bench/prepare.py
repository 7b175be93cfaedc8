"""The Python side of an append on its own: validating, serialising, sealing and digesting
events, back to back beside the same work done right after a wait.

    .venv/bin/python bench/prepare.py                   # 3,000 events, embedded server
    .venv/bin/python bench/prepare.py --events 1000 --url postgresql://user:pw@host/postgres

An append's Python work is the store's ``_prepare`` (everything but the statement). It runs
here one event per call, as a single append does, three ways in alternating rounds:

a. back to back, the baseline: caches and branch predictors stay warm;
b. each call after ``--pause`` seconds of sleep, the CPU idle meanwhile;
c. each call after a round trip to the server of about that length (``pg_sleep``), the
   way a writer prepares its next append while PostgreSQL has just run its last one.

The ratios of b and c to a say how much dearer the same code is when it follows a wait,
which is how ``bench/append.py`` runs it; on a small VM that, not the code, can be most of
an append's client-side cost. Then, for scale, the same events 1,000 per call, sealed and
not (``seal_personal_data``). Data keys are made in a warm-up first, so every round seals
under keys the store knows.

Last, the other half of a single append: its statement alone, its parameters made
beforehand, one per transaction, beside a plain INSERT of the same row into ``events``
(the table and its indexes, no chain, no key check) and the raw INSERT of
``bench/append.py`` into a bare table. For each: wall time per statement and, on Linux,
the CPU the machine spent meanwhile outside this process (the server, mostly).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
from append import INSERT_ROW, RAW_TABLE
from psycopg import sql
from psycopg.conninfo import make_conninfo

from interaction_store.db import configure_connection, migrate, open_pool
from interaction_store.demo import generate
from interaction_store.embedded import EmbeddedPostgres
from interaction_store.events import EventBase
from interaction_store.store import Store, _Expectations, _insert_statement, _Prepared

Item = tuple[str | None, EventBase | Mapping[str, Any]]
Conn = psycopg.Connection[Any]

#: The row the store's statement writes, without its chain link or the key check: what
#: the table and its indexes cost (a stream of its own per row, at version 1).
PLAIN_INSERT = """INSERT INTO events (transaction_id, event_id, stream_id, stream_version, type,
    schema_version, occurred_at, recorded_at, payload, metadata, content_digest, hash, prev_hash)
VALUES (pg_current_xact_id(), %(event_id)s, 'plain-' || %(event_id)s, 1, %(type)s,
    %(schema_version)s, %(occurred_at)s, now(), %(payload)s::jsonb, %(metadata)s::jsonb,
    %(content_digest)s, %(content_digest)s, %(metadata_digest)s)"""


def per_event(
    items: list[list[Item]],
    work: Callable[[list[Item]], object],
    before: Callable[[], object] | None,
) -> float:
    """Mean µs of CPU per event of ``work(batch)`` over ``items``, ``before()`` untimed
    ahead of each call."""
    cpu = 0.0
    for batch in items:
        if before is not None:
            before()
        start = time.thread_time()
        work(batch)
        cpu += time.thread_time() - start
    return cpu / sum(len(batch) for batch in items) * 1e6


def measure(store: Store, conn: Conn, args: argparse.Namespace) -> dict[str, float]:
    """Median µs of CPU per event for each way of calling, then for batches."""
    events = list(generate(args.events, seed=args.seed, customer_count=10_000))
    singles: list[list[Item]] = [
        [(f"conversation-{e['data']['conversation_id']}", e)] for e in events
    ]
    batches: list[list[Item]] = [
        [(None, e) for e in events[i : i + 1000]] for i in range(0, len(events), 1000)
    ]
    gc.collect()
    gc.freeze()  # the inputs stay in memory: keep the collector from walking them

    def prepare(batch: list[Item]) -> object:
        return store._prepare(batch, _Expectations())

    def sleep() -> None:
        time.sleep(args.pause)

    def round_trip() -> None:
        conn.execute("SELECT pg_sleep(%s)", (args.pause,))

    for batch in batches:
        prepare(batch)  # the data keys, made once
    ways: dict[str, Callable[[], object] | None] = {
        "a. back to back": None,
        "b. after a sleep": sleep,
        "c. after a round trip": round_trip,
    }
    runs: dict[str, list[float]] = {way: [] for way in ways}
    for round_ in range(args.rounds):
        for way, before in list(ways.items())[:: 1 if round_ % 2 == 0 else -1]:
            runs[way].append(per_event(singles, prepare, before))
    figures = {way: statistics.median(values) for way, values in runs.items()}
    figures["sealed, 1,000 per call"] = per_event(batches, prepare, None)
    prepared = [store._prepare(item, _Expectations()) for item in singles]
    figures |= statements(conn, prepared, args.rounds)
    store.seal_personal_data = False
    figures["unsealed, 1,000 per call"] = per_event(batches, prepare, None)
    return figures


def busy_elsewhere() -> Callable[[], float]:
    """A stopwatch of the CPU seconds the machine spends outside this process (Linux)."""

    def busy() -> float:
        with open("/proc/stat") as stat:
            jiffies = [int(n) for n in stat.readline().split()[1:]]
        return (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")

    began, cpu = busy(), time.process_time()
    return lambda: busy() - began - (time.process_time() - cpu)


def statements(conn: Conn, prepared: list[list[_Prepared]], rounds: int) -> dict[str, float]:
    """Median µs per statement, wall and elsewhere-CPU: the store's, a plain insert into
    ``events``, the raw insert; alternating in ``rounds`` slices of the events."""
    configure_connection(conn)  # as the store's pool does: generic plans
    conn.execute(RAW_TABLE)
    store = [_insert_statement(p, {}) for p in prepared]
    plain = [(PLAIN_INSERT, {**params, "event_id": uuid4()}) for _, params in store]
    versions: dict[str, int] = {}
    raw: list[tuple[str, Any]] = []
    for _, params in store:
        stream = params["stream_id"]
        versions[stream] = versions.get(stream, 0) + 1
        row = (params["event_id"], stream, versions[stream], params["type"])
        raw.append(
            (INSERT_ROW, (*row, params["occurred_at"], params["payload"], params["metadata"]))
        )
    paths: dict[str, list[tuple[str, Any]]] = {
        "store statement": store,
        "plain INSERT into events": plain,
        "raw INSERT": raw,
    }
    runs: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
    size = len(store) // rounds
    for round_ in range(rounds):
        part = slice(round_ * size, (round_ + 1) * size)
        for path, work in list(paths.items())[:: 1 if round_ % 2 == 0 else -1]:
            elsewhere, began = busy_elsewhere(), time.perf_counter()
            for statement, params in work[part]:
                conn.execute(statement, params)
            wall = time.perf_counter() - began
            runs[path].append((wall / size * 1e6, elsewhere() / size * 1e6))
    figures = {}
    for path, values in runs.items():
        figures[f"{path}, wall"] = statistics.median(wall for wall, _ in values)
        figures[f"{path}, elsewhere"] = statistics.median(cpu for _, cpu in values)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.0005, help="seconds before each call")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", default=os.environ.get("INTERACTION_STORE_DATABASE_URL"))
    args = parser.parse_args()

    server = None if args.url else EmbeddedPostgres(Path(".bench/pg"))
    url = server.start() if server else args.url
    name = "bench_prepare"
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(drop)
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            try:
                db_url = make_conninfo(url, dbname=name)
                migrate(db_url)
                pool = open_pool(db_url, min_size=1, max_size=1)
                store = Store(pool)
                try:
                    with psycopg.connect(db_url, autocommit=True) as conn:
                        figures = measure(store, conn, args)
                finally:
                    store.close()
                    pool.close()
            finally:
                admin.execute(drop)
    finally:
        if server is not None:
            server.release()
    base = figures["a. back to back"]
    print(f"{args.events:,} events, {args.rounds} rounds, pause {args.pause * 1e6:.0f} µs")
    print("CPU per event, one event per call (median of the rounds):")
    for way in ("a. back to back", "b. after a sleep", "c. after a round trip"):
        print(f"  {way:<26} {figures[way]:>7.1f} µs   {figures[way] / base:>4.2f}x the baseline")
    print("CPU per event, 1,000 per call:")
    for way in ("sealed, 1,000 per call", "unsealed, 1,000 per call"):
        print(f"  {way.split(',')[0]:<26} {figures[way]:>7.1f} µs")
    print("One statement per transaction, its parameters made beforehand (median µs):")
    raw = figures["raw INSERT, wall"]
    for path in ("store statement", "plain INSERT into events", "raw INSERT"):
        wall, elsewhere = figures[f"{path}, wall"], figures[f"{path}, elsewhere"]
        print(
            f"  {path:<26} {wall:>7.0f} wall ({raw / wall:.2f} of the raw rate),"
            f" {elsewhere:>4.0f} of CPU outside this process"
        )


if __name__ == "__main__":
    main()
