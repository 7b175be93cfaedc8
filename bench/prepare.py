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

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from interaction_store.db import migrate, open_pool
from interaction_store.demo import generate
from interaction_store.embedded import EmbeddedPostgres
from interaction_store.events import EventBase
from interaction_store.store import Store, _Expectations

Item = tuple[str | None, EventBase | Mapping[str, Any]]
Conn = psycopg.Connection[Any]


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
    store.seal_personal_data = False
    figures["unsealed, 1,000 per call"] = per_event(batches, prepare, None)
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


if __name__ == "__main__":
    main()
