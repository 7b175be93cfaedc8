"""What sealing personal data costs batched appends, beside the same appends unsealed.

    .venv/bin/python bench/privacy.py                    # 100,000 events, embedded server
    .venv/bin/python bench/privacy.py --events 20000 --rounds 2
    .venv/bin/python bench/privacy.py --url postgresql://user:pw@host/postgres

Events from ``interaction_store.demo.generate`` (five channels, 10,000 customers), made once
before any timing, are appended in batches of ``--batch`` through ``Store.append_batch``
twice over, into two fresh databases: once sealing personal fields (the default: HMAC
tokens, a data key per owner and scope made or fetched, two AES-GCM boxes per interaction)
and once with ``seal_personal_data=False``, which stores the same fields as given, as if
the events had none. The two alternate for ``--rounds`` rounds, each on new databases, and
the best of each is kept, so a noisy neighbour hurts both alike. Target: sealing adds
under 25% to the time of an append (sealed rate at least 0.8 of the unsealed).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from interaction_store.db import migrate, open_pool
from interaction_store.demo import generate
from interaction_store.embedded import EmbeddedPostgres
from interaction_store.store import Store

Wire = dict[str, Any]


@contextlib.contextmanager
def fresh_store(admin: psycopg.Connection[Any], url: str, name: str, seal: bool) -> Iterator[Store]:
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    admin.execute(drop)
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db_url = make_conninfo(url, dbname=name)
    migrate(db_url)
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        admin.execute("CHECKPOINT")
    pool = open_pool(db_url, min_size=2, max_size=2)
    store = Store(pool, seal_personal_data=seal)
    try:
        yield store
    finally:
        store.close()
        pool.close()
        admin.execute(drop)


def appended_rate(store: Store, warm: list[Wire], events: list[Wire], batch: int) -> float:
    for start in range(0, len(warm), batch):
        store.append_batch(warm[start : start + batch])
    began = time.perf_counter()
    for start in range(0, len(events), batch):
        store.append_batch(events[start : start + batch])
    return len(events) / (time.perf_counter() - began)


def stored(store: Store, seal: bool) -> str:
    """What the round stored: events sealed, data keys, bytes of JSON per event."""
    with store.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE payload ? 'sealed'), count(*),"
            " (SELECT count(*) FROM data_keys),"
            " avg(octet_length(payload::text) + octet_length(metadata::text))::integer"
            " FROM events"
        ).fetchone()
    assert row is not None
    sealed = f"{row[0]:,} of {row[1]:,} events sealed, {row[2]:,} data keys, " if seal else ""
    return f"{sealed}{row[3]:,} B of JSON per event"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", default=os.environ.get("INTERACTION_STORE_DATABASE_URL"))
    args = parser.parse_args()

    events = list(generate(args.events, seed=args.seed, customer_count=10_000))
    warm = list(generate(args.warmup, seed=args.seed + 7919, customer_count=10_000))
    gc.collect()
    gc.freeze()  # the inputs stay in memory: keep the collector from walking them
    server = None if args.url else EmbeddedPostgres(Path(".bench/pg"))
    url = server.start() if server else args.url
    best = {True: 0.0, False: 0.0}
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            print(f"{len(events):,} events in batches of {args.batch:,}, {args.rounds} rounds")
            for round_ in range(1, args.rounds + 1):
                for seal in (False, True) if round_ % 2 else (True, False):
                    name = f"bench_privacy_{'sealed' if seal else 'plain'}"
                    with fresh_store(admin, url, name, seal) as store:
                        rate = appended_rate(store, warm, events, args.batch)
                        what = stored(store, seal)
                    best[seal] = max(best[seal], rate)
                    label = "sealed" if seal else "unsealed"
                    print(f"  round {round_} {label:<9} {rate:>9,.0f} ev/s  ({what})", flush=True)
    finally:
        if server is not None:
            server.release()
    ratio = best[True] / best[False]
    overhead = best[False] / best[True] - 1
    print(f"\n{'':<24} {'ev/s':>9}")
    print(f"{'unsealed (baseline)':<24} {best[False]:>9,.0f}")
    print(f"{'sealed':<24} {best[True]:>9,.0f}")
    verdict = "met" if overhead < 0.25 else "missed"
    print(
        f"ratio {ratio:.2f}: sealing adds {overhead:.0%} to an append's time"
        f" (target under 25%: {verdict})"
    )


if __name__ == "__main__":
    main()
