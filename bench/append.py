"""Append throughput of the store beside a raw PostgreSQL baseline on the same rows.

    .venv/bin/python bench/append.py                      # 100,000 events, embedded server
    .venv/bin/python bench/append.py --events 5000 --single 500 --json out.json
    .venv/bin/python bench/append.py --url postgresql://user:pw@host/postgres

Events come from ``interaction_store.demo.generate`` (about 1 KB of JSON each, five
channels) and are generated once, before anything is timed. The server is ``--url`` (or
``INTERACTION_STORE_DATABASE_URL``), else the embedded one in ``.bench/pg``. Every path gets
a fresh database (``bench_*``, dropped afterwards) and a short warm-up on other events.

Scenarios (events per second, higher is better):

a. batches of ``--batch`` events through ``Store.append_batch`` (validation, digests and
   the ``append_events()`` call all timed), against the same rows inserted into a plain
   ``raw_events`` table one transaction per batch, by ``executemany`` (pipelined) and by
   one ``INSERT ... SELECT FROM unnest(...)``; the faster raw variant is the baseline.
b. one event per transaction through ``Store.append`` against an autocommit single-row
   INSERT of the same row (one round trip each).
c. ``--writers`` threads appending single events concurrently (each thread its own
   conversations), against the same store with one writer; the raw INSERT with as many
   threads is shown for context. Threads, not processes: the GIL is released while a
   writer waits on the server.

The raw rows carry the wire ``data`` and ``metadata`` as JSON text and precomputed stream
versions; the store's extras (hash chain, digests, stream table, transaction ids,
idempotency) are exactly what the ratios measure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from interaction_store.db import migrate, open_pool
from interaction_store.demo import generate
from interaction_store.embedded import EmbeddedPostgres
from interaction_store.store import Store

T = TypeVar("T")
Wire = dict[str, Any]
Row = tuple[UUID, str, int, str, datetime, str, str]
Conn = psycopg.Connection[Any]

RAW_TABLE = """
CREATE TABLE raw_events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    stream_id text NOT NULL,
    stream_version bigint NOT NULL,
    type text NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    payload jsonb NOT NULL,
    metadata jsonb NOT NULL,
    UNIQUE (stream_id, stream_version)
)"""
COLUMNS = "event_id, stream_id, stream_version, type, occurred_at, payload, metadata"
INSERT_ROW = f"INSERT INTO raw_events ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)"
INSERT_UNNEST = (
    f"INSERT INTO raw_events ({COLUMNS}) SELECT i, s, v, t, o, p::jsonb, m::jsonb FROM unnest("
    "%s::uuid[], %s::text[], %s::bigint[], %s::text[], %s::timestamptz[], %s::text[], %s::text[]"
    ") AS u(i, s, v, t, o, p, m)"
)
TARGETS = {"batch": 0.5, "single": 0.7, "concurrent": 2.0}


def stream_of(event: Wire) -> str:
    return f"conversation-{event['data']['conversation_id']}"


def raw_rows(events: Sequence[Wire], versions: dict[str, int]) -> list[Row]:
    """The baseline's rows: wire JSON as text and stream versions counted in order."""
    rows = []
    for e in events:
        stream = stream_of(e)
        versions[stream] = versions.get(stream, 0) + 1
        rows.append(
            (
                UUID(e["id"]),
                stream,
                versions[stream],
                e["type"],
                datetime.fromisoformat(e["occurred_at"]),
                orjson.dumps(e["data"]).decode(),
                orjson.dumps(e["metadata"]).decode(),
            )
        )
    return rows


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def by_stream(items: Sequence[T], shares: int, stream: Callable[[T], str]) -> list[list[T]]:
    """Split items into ``shares`` lists of whole streams, greedily balanced, order kept."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(stream(item), []).append(item)
    parts: list[list[T]] = [[] for _ in range(shares)]
    for group in groups.values():
        min(parts, key=len).extend(group)
    return parts


def together(shares: Sequence[T], work: Callable[[T], object]) -> float:
    """Run ``work(share)`` in one thread per share, released together; seconds until all end."""
    gate = threading.Barrier(len(shares) + 1)
    errors: list[BaseException] = []

    def run(share: T) -> None:
        gate.wait()
        try:
            work(share)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    gate.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def timed(count: int, work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


# The paths measured -------------------------------------------------------------------


def store_batches(store: Store, events: Sequence[Wire], size: int) -> None:
    for chunk in chunks(events, size):
        store.append_batch(chunk)


def store_singles(store: Store, events: Sequence[Wire]) -> None:
    for e in events:
        store.append(stream_of(e), [e])


def raw_executemany(conn: Conn, rows: Sequence[Row], size: int) -> None:
    with conn.cursor() as cur:
        for chunk in chunks(rows, size):
            with conn.transaction():
                cur.executemany(INSERT_ROW, chunk)  # pipelined: one small message per row


def raw_unnest(conn: Conn, rows: Sequence[Row], size: int) -> None:
    for chunk in chunks(rows, size):
        with conn.transaction():  # never inside conn.pipeline(): see the module docstring
            conn.execute(INSERT_UNNEST, [list(column) for column in zip(*chunk, strict=True)])


def raw_singles(conn: Conn, rows: Sequence[Row]) -> None:
    for row in rows:
        conn.execute(INSERT_ROW, row)  # autocommit: INSERT and COMMIT in one round trip


# Databases ----------------------------------------------------------------------------


class Bench:
    def __init__(self, admin: Conn, url: str, warm: list[Wire], warm_rows: list[Row]) -> None:
        self.admin, self.url, self.warm, self.warm_rows = admin, url, warm, warm_rows

    @contextmanager
    def database(self, name: str, *, store: bool) -> Iterator[str]:
        """A fresh ``bench_<name>`` database, migrated for the store or with ``raw_events``."""
        ident = sql.Identifier(f"bench_{name}")
        self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        url = make_conninfo(self.url, dbname=f"bench_{name}")
        try:
            if store:
                migrate(url)
            else:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(RAW_TABLE)
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                self.admin.execute("CHECKPOINT")  # each timed region starts from a clean WAL
            yield url
        finally:
            self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))

    @contextmanager
    def store(self, name: str, pool_size: int = 2) -> Iterator[Store]:
        with self.database(name, store=True) as url:
            pool = open_pool(url, min_size=pool_size, max_size=pool_size)
            store = Store(pool)
            try:
                yield store
            finally:
                store.close()
                pool.close()

    @contextmanager
    def raw(self, name: str, connections: int = 1) -> Iterator[list[Conn]]:
        with self.database(name, store=False) as url:
            conns = [psycopg.connect(url, autocommit=True) for _ in range(connections)]
            try:
                yield conns
            finally:
                for conn in conns:
                    conn.close()

    # Scenarios ------------------------------------------------------------------------

    def batch(self, events: list[Wire], rows: list[Row], size: int) -> dict[str, float]:
        with self.store("store_batch") as store:
            store_batches(store, self.warm, size)
            store_rate = timed(len(events), lambda: store_batches(store, events, size))
        raw: dict[str, float] = {}
        for name, path in (("executemany", raw_executemany), ("unnest", raw_unnest)):
            with self.raw(f"raw_{name}") as (conn,):
                path(conn, self.warm_rows, size)
                raw[name] = timed(len(rows), lambda: path(conn, rows, size))  # noqa: B023
        return {"store": store_rate, **{f"raw_{k}": v for k, v in raw.items()}}

    def single(self, events: list[Wire], rows: list[Row]) -> dict[str, float]:
        with self.store("store_single") as store:
            store_singles(store, self.warm)
            store_rate = timed(len(events), lambda: store_singles(store, events))
        with self.raw("raw_single") as (conn,):
            raw_singles(conn, self.warm_rows)
            raw_rate = timed(len(rows), lambda: raw_singles(conn, rows))
        return {"store": store_rate, "raw": raw_rate}

    def concurrent(self, events: list[Wire], rows: list[Row], writers: int) -> dict[str, float]:
        """Threads appending single events, each its own streams: 1 writer, then ``writers``."""
        result: dict[str, float] = {}
        for n in (1, writers):
            with self.store(f"store_w{n}", pool_size=n + 1) as store:

                def append(share: list[Wire], store: Store = store) -> None:
                    store_singles(store, share)

                together(by_stream(self.warm, n, stream_of), append)
                result[f"store_{n}"] = len(events) / together(
                    by_stream(events, n, stream_of), append
                )
        with self.raw(f"raw_w{writers}", connections=writers) as conns:

            def insert_all(part: list[Row]) -> float:
                shares = by_stream(part, writers, lambda row: row[1])
                return together(list(zip(conns, shares, strict=True)), lambda p: raw_singles(*p))

            insert_all(self.warm_rows)
            result[f"raw_{writers}"] = len(rows) / insert_all(rows)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events for the batch runs")
    parser.add_argument("--single", type=int, default=5_000, help="events for single appends")
    parser.add_argument("--batch", type=int, default=1_000, help="events per batch")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writers")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up events per path")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", default=os.environ.get("INTERACTION_STORE_DATABASE_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    started = time.perf_counter()
    events = list(generate(args.events, seed=args.seed, customer_count=10_000))
    warm = list(generate(args.warmup, seed=args.seed + 1_000_003, customer_count=10_000))
    versions: dict[str, int] = {}
    warm_rows, rows = raw_rows(warm, versions), raw_rows(events, versions)
    sample, sample_rows = events[: args.single], rows[: args.single]
    size = sum(len(orjson.dumps(e)) for e in events) / len(events)
    print(f"generated {len(events):,} events (+{len(warm)} warm-up), {size:,.0f} B of JSON each,")
    print(f"  {len(versions):,} streams, in {time.perf_counter() - started:.1f}s")

    server = None if args.url else EmbeddedPostgres(Path(".bench/pg"))
    url = args.url or server.start()  # type: ignore[union-attr]
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            setting = {
                k: admin.execute(f"SHOW {k}").fetchone()[0]
                for k in ("server_version", "fsync", "synchronous_commit", "shared_buffers")  # type: ignore[index]
            }
            host = admin.info.host
            socket = f"Unix ({host})" if host.startswith("/") else f"TCP ({host}:{admin.info.port})"
            env = {
                "postgresql": setting["server_version"],
                "socket": socket,
                "server": "embedded" if server else "--url",
                "fsync": setting["fsync"],
                "synchronous_commit": setting["synchronous_commit"],
                "shared_buffers": setting["shared_buffers"],
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "psycopg": psycopg.__version__,
                "events": len(events),
                "single": len(sample),
                "batch": args.batch,
                "writers": args.writers,
            }
            for key, value in env.items():
                print(f"{key:>18}: {value}")
            bench = Bench(admin, url, warm, warm_rows)
            print("\na. batches ...", flush=True)
            a = bench.batch(events, rows, args.batch)
            print("b. single appends ...", flush=True)
            b = bench.single(sample, sample_rows)
            print("c. concurrent writers (threads) ...", flush=True)
            c = bench.concurrent(sample, sample_rows, args.writers)
    finally:
        if server is not None:
            server.release()

    raw_best = max(a["raw_executemany"], a["raw_unnest"])
    w = args.writers
    table = [
        (f"batch {args.batch} (append_batch)", a["store"], raw_best, TARGETS["batch"]),
        ("single append (1 per tx)", b["store"], b["raw"], TARGETS["single"]),
        (f"{w} writers vs 1 (threads)", c[f"store_{w}"], c["store_1"], TARGETS["concurrent"]),
    ]
    print(f"\n  raw batch {args.batch}: executemany (pipeline) {a['raw_executemany']:>9,.0f} ev/s")
    print(f"  raw batch {args.batch}: INSERT ... unnest()     {a['raw_unnest']:>9,.0f} ev/s")
    print(
        f"  raw single, {w} writers (context)   {c[f'raw_{w}']:>9,.0f} ev/s"
        f"  ({c[f'raw_{w}'] / b['raw']:.2f}x raw 1 writer)"
    )
    print(f"  baseline of '{w} writers' is the store with 1 writer, same sample")
    print(f"\n{'scenario':<32} {'store ev/s':>10} {'baseline ev/s':>15} {'ratio':>7}   target")
    results = []
    for name, store_rate, base, target in table:
        ratio = store_rate / base
        mark = "ok" if ratio >= target else "MISSED"
        print(
            f"{name:<32} {store_rate:>10,.0f} {base:>15,.0f} {ratio:>7.2f}   >= {target:.2f} {mark}"
        )
        results.append(
            {
                "scenario": name,
                "store": store_rate,
                "baseline": base,
                "ratio": ratio,
                "target": target,
                "met": ratio >= target,
            }
        )
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    if args.json:
        figures = {"environment": env, "batch": a, "single": b, "concurrent": c, "table": results}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
