"""Projector catch-up, rebuild and the timeline query, each beside a raw baseline.

    .venv/bin/python bench/projections.py                    # 1,000,000 events, 100,000 customers
    .venv/bin/python bench/projections.py --events 100000 --customers 10000
    .venv/bin/python bench/projections.py --url postgresql://user:pw@host/postgres

The log is ``--customers`` ``customer.registered`` events and then generated interactions
(``interaction_store.demo.generate``, five channels, ~1 KB each) up to ``--events`` in all.
It is loaded once into a database named after its size (``bench_views_<events>_<customers>``)
and reused by later runs. The server is ``--url`` / ``INTERACTION_STORE_DATABASE_URL``, else
the embedded one in ``.bench/pg``.

a. Catch-up: the three projections (timeline, customers, conversations) from position
   zero to the head with ``ProjectionRunner.catch_up``, against a raw ``Store.read_all``
   scan of the same log in the same batches, alternated (scan, catch-up, scan). Target:
   catch-up at least 25% of the scan's events per second.
b. Rebuild: ``interaction-store rebuild`` of all three projections, beside the live ones,
   then the swap. Target: under 5 minutes for 1,000,000 events.
c. Timeline query: the newest 50 of a random customer through ``views.timeline`` (merges
   followed), against the same rows by raw SQL on the same connection, interleaved.
   Target: p99 under 5 ms and within 1.5x of raw.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from interaction_store import views
from interaction_store.db import migrate, open_pool
from interaction_store.demo import generate
from interaction_store.embedded import EmbeddedPostgres
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.projections.rebuild import rebuild
from interaction_store.store import Checkpoint, Store

BATCH = 500
RAW_TIMELINE = """
SELECT position, event_id, customer_id, occurred_at, channel, direction, type,
       conversation_id, agent_id, contact_kind || ':' || contact_value, subject, snippet
  FROM timeline WHERE customer_id = %s ORDER BY position DESC LIMIT 50
"""


def load(store: Store, events: int, customers: int, seed: int) -> None:
    """Append the generated log in batches of 1,000, with a running count."""
    interactions = events - customers
    began, batch, done = time.perf_counter(), [], 0
    for event in generate(interactions, seed=seed, customer_count=customers, with_customers=True):
        batch.append(event)
        if len(batch) == 1000:
            store.append_batch(batch)
            done += len(batch)
            batch = []
            if done % 50_000 == 0:
                rate = done / (time.perf_counter() - began)
                print(f"  loaded {done:,} of {events:,} ({rate:,.0f} ev/s)", flush=True)
    if batch:
        store.append_batch(batch)


def generated_log(admin_url: str, events: int, customers: int, seed: int) -> str:
    """The URL of the database ``bench_views_<events>_<customers>``, made, migrated and
    loaded with the generated log the first time (later runs reuse it)."""
    name = f"bench_views_{events}_{customers}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        exists = admin.execute("SELECT FROM pg_database WHERE datname = %s", (name,))
        if exists.fetchone() is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(admin_url, dbname=name)
    migrate(url)
    with open_pool(url, min_size=1, max_size=4) as pool:
        store = Store(pool)
        try:
            if store.head() == 0:
                print(f"loading {events:,} events (once; later runs reuse {name}) ...")
                load(store, events, customers, seed)
                with pool.connection() as conn:
                    conn.execute("VACUUM ANALYZE")
        finally:
            store.close()
    return url


def scan(store: Store) -> float:
    """Events per second of a plain gap-safe read of the whole log."""
    began, after, count = time.perf_counter(), Checkpoint.START, 0
    while events := store.read_all(after=after, limit=BATCH):
        after = events[-1].checkpoint
        count += len(events)
    return count / (time.perf_counter() - began)


def reset_views(store: Store) -> None:
    """Empty every view and checkpoint, as on a fresh install."""
    tables = [t for p in all_projections() for t in p.tables]
    with store.pool.connection() as conn:
        conn.execute(
            sql.SQL("TRUNCATE {}, projection_checkpoints, dead_letters").format(
                sql.SQL(", ").join(map(sql.Identifier, tables))
            )
        )
        conn.execute("VACUUM ANALYZE")


def catch_up(store: Store) -> float:
    reset_views(store)
    runner = ProjectionRunner(store, all_projections(), batch_size=BATCH)
    began = time.perf_counter()
    applied = runner.catch_up()
    elapsed = time.perf_counter() - began
    return applied / len(runner.projections) / elapsed


def rebuild_all(store: Store) -> float:
    began = time.perf_counter()
    for projection in all_projections():
        rebuild(store, projection, batch_size=2000)
    return time.perf_counter() - began


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=1000, method="inclusive")[int(q * 1000) - 1]


def query_latencies(store: Store, samples: int, seed: int) -> dict[str, float]:
    with store.pool.connection() as conn:
        customers = [
            r[0] for r in conn.execute("SELECT DISTINCT customer_id FROM timeline").fetchall()
        ]
        chosen = random.Random(seed).choices(customers, k=samples)
        timed: dict[str, list[float]] = {"store": [], "raw": []}
        paths: dict[str, Callable[[str], object]] = {
            "store": lambda c: views.timeline(conn, c, limit=50),
            "raw": lambda c: conn.execute(RAW_TIMELINE, (c,)).fetchall(),
        }
        for customer in chosen[:200]:  # warm both plans and the cache
            for path in paths.values():
                path(customer)
        for i, customer in enumerate(chosen):
            order = ("store", "raw") if i % 2 else ("raw", "store")
            for name in order:
                began = time.perf_counter()
                paths[name](customer)
                timed[name].append((time.perf_counter() - began) * 1000)
    return {
        f"{name}_{label}": percentile(values, q)
        for name, values in timed.items()
        for label, q in (("p50", 0.5), ("p99", 0.99))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=5_000, help="timeline queries per path")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-rebuild", action="store_true")
    parser.add_argument("--url", default=os.environ.get("INTERACTION_STORE_DATABASE_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()

    began = time.perf_counter()
    server = None if args.url else EmbeddedPostgres(Path(".bench/pg"))
    admin_url = server.start() if server else args.url
    figures: dict[str, Any] = {"events": args.events, "customers": args.customers}
    try:
        url = generated_log(admin_url, args.events, args.customers, args.seed)
        with psycopg.connect(admin_url) as admin:
            version = admin.execute("SHOW server_version").fetchone()
        with open_pool(url, min_size=2, max_size=4) as pool:
            store = Store(pool)
            with pool.connection() as conn:
                count = conn.execute("SELECT count(*) FROM events").fetchone()
            figures["loaded"] = count[0] if count else 0
            print(f"PostgreSQL {version[0] if version else '?'}, {figures['loaded']:,} events")
            gc.collect()
            gc.freeze()

            print("a. catch-up of all three projections beside a raw read_all scan ...")
            first_scan = scan(store)
            figures["catch_up"] = catch_up(store)
            figures["scan"] = statistics.mean([first_scan, scan(store)])
            ratio = figures["catch_up"] / figures["scan"]
            print(
                f"   raw scan {figures['scan']:,.0f} ev/s, catch-up {figures['catch_up']:,.0f}"
                f" ev/s: {ratio:.2f} of the scan (target >= 0.25)"
            )
            if not args.skip_rebuild:
                print("b. rebuild of all three projections ...")
                figures["rebuild_seconds"] = rebuild_all(store)
                print(
                    f"   {figures['rebuild_seconds'] / 60:.1f} min for {figures['loaded']:,}"
                    " events (target < 5 min for 1,000,000)"
                )
            print(f"c. newest 50 of a customer, {args.queries:,} queries per path ...")
            figures |= query_latencies(store, args.queries, args.seed)
            print(
                f"   store p50 {figures['store_p50']:.2f} ms, p99 {figures['store_p99']:.2f} ms;"
                f" raw p50 {figures['raw_p50']:.2f} ms, p99 {figures['raw_p99']:.2f} ms;"
                f" p99 ratio {figures['store_p99'] / figures['raw_p99']:.2f}"
                " (target p99 < 5 ms, <= 1.5x raw)"
            )
            store.close()
    finally:
        if server is not None:
            server.release()
    print(f"total {time.perf_counter() - began:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
