"""Append throughput of the store beside a raw PostgreSQL baseline on the same rows.

    .venv/bin/python bench/append.py                     # 100,000 events, embedded server
    .venv/bin/python bench/append.py --events 5000 --single 500 --json out.json
    .venv/bin/python bench/append.py --url postgresql://user:pw@host/postgres

Events from ``interaction_store.demo.generate`` (~1 KB of JSON, five channels) are made once,
before any timing. The server is ``--url`` / ``INTERACTION_STORE_DATABASE_URL``, else the
embedded one in ``.bench/pg``. Each path runs in a fresh ``bench_*`` database after a
warm-up on other events. Raw rows carry the wire data/metadata JSON and precomputed stream
versions, so each ratio prices the store's extras (validation, digests, hash chain,
idempotency, transaction ids, the commit-order index).

a. Batches through ``Store.append_batch``, timed from the wire dicts, against the same rows
   in a plain ``raw_events`` table, a transaction per batch, by pipelined ``executemany``
   and by one ``INSERT ... SELECT FROM unnest(...)`` with text or binary parameters; the
   fastest raw variant is the baseline. No ~1 MB statement goes inside ``conn.pipeline()``:
   psycopg 3.3.9 can deadlock on such a pipeline sync over a Unix socket.
b. One event per transaction through ``Store.append`` against an autocommit single-row
   INSERT (one round trip each).
c. ``--writers`` concurrent single-event writers, each on its own conversations, against one
   writer measured the same way: threads sharing a store, then processes with a store each
   (no GIL). The raw INSERT with as many threads is shown for context.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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

RAW_TABLE = """CREATE TABLE raw_events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE, stream_id text NOT NULL, stream_version bigint NOT NULL,
    type text NOT NULL, occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(), payload jsonb NOT NULL,
    metadata jsonb NOT NULL, UNIQUE (stream_id, stream_version))"""
COLUMNS = "event_id, stream_id, stream_version, type, occurred_at, payload, metadata"
INSERT_ROW = f"INSERT INTO raw_events ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)"
INSERT_UNNEST = (
    f"INSERT INTO raw_events ({COLUMNS}) SELECT i, s, v, t, o, p::jsonb, m::jsonb FROM unnest("
    "%s::uuid[], %s::text[], %s::bigint[], %s::text[], %s::timestamptz[], %s::text[], %s::text[]"
    ") AS u(i, s, v, t, o, p, m)"
)


def stream_of(event: Wire) -> str:
    return f"conversation-{event['data']['conversation_id']}"


def raw_rows(events: Sequence[Wire], versions: dict[str, int]) -> list[Row]:
    """The baseline's rows: the wire JSON as text, stream versions counted in order."""
    rows = []
    for e in events:
        stream = stream_of(e)
        versions[stream] = versions.get(stream, 0) + 1
        occurred = datetime.fromisoformat(e["occurred_at"])
        data, meta = orjson.dumps(e["data"]).decode(), orjson.dumps(e["metadata"]).decode()
        rows.append((UUID(e["id"]), stream, versions[stream], e["type"], occurred, data, meta))
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


def rate(count: int, work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


def in_threads(shares: Sequence[T], work: Callable[[T], object]) -> float:
    """Seconds to run ``work(share)`` for every share, a thread each, all at once."""
    with ThreadPoolExecutor(len(shares)) as pool:
        start = time.perf_counter()
        for future in [pool.submit(work, share) for share in shares]:
            future.result()
        return time.perf_counter() - start


def process_writer(url: str, warm: list[Wire], share: list[Wire], gate: Any, out: Any) -> None:
    """One writer process with its own pool and store; reports (start, end, CPU seconds)
    or an error."""
    try:
        pool = open_pool(url, min_size=1, max_size=1)
        store = Store(pool)
        store_singles(store, warm)
        gate.wait(timeout=600)
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        cpu = time.process_time()
        store_singles(store, share)
        out.put((start, time.perf_counter(), time.process_time() - cpu))
        store.close()
        pool.close()
    except BaseException as exc:
        gate.abort()
        out.put(repr(exc))


def in_processes(url: str, warm: list[list[Wire]], shares: list[list[Wire]]) -> tuple[float, float]:
    """Seconds from the first writer process starting to time until the last one ends,
    and the CPU seconds the writers spent (their own, not PostgreSQL's)."""
    ctx = mp.get_context("spawn")
    gate, out = ctx.Barrier(len(shares)), ctx.Queue()
    procs = [
        ctx.Process(target=process_writer, args=(url, w, s, gate, out))
        for w, s in zip(warm, shares, strict=True)
    ]
    for proc in procs:
        proc.start()
    spans: list[tuple[float, float, float] | str] = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    times = [span for span in spans if not isinstance(span, str)]
    if len(times) < len(spans):
        raise RuntimeError(f"a writer process failed: {set(spans) - set(times)}")
    wall = max(end for _, end, _ in times) - min(start for start, _, _ in times)
    return wall, sum(cpu for _, _, cpu in times)


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


def raw_unnest(conn: Conn, rows: Sequence[Row], size: int, binary: bool) -> None:
    statement = INSERT_UNNEST.replace("%s", "%b") if binary else INSERT_UNNEST
    for chunk in chunks(rows, size):
        with conn.transaction():  # one ~1 MB statement, deliberately not in conn.pipeline()
            conn.execute(statement, [list(column) for column in zip(*chunk, strict=True)])


def raw_singles(conn: Conn, rows: Sequence[Row]) -> None:
    for row in rows:
        conn.execute(INSERT_ROW, row)  # autocommit: INSERT and COMMIT in one round trip


# Scenarios ----------------------------------------------------------------------------


class Bench:
    def __init__(self, admin: Conn, url: str, warm: list[Wire], warm_rows: list[Row]) -> None:
        self.admin, self.url, self.warm, self.warm_rows = admin, url, warm, warm_rows

    @contextlib.contextmanager
    def database(self, name: str, *, store: bool) -> Iterator[str]:
        """A fresh database ``name``, migrated for the store or with ``raw_events``."""
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        self.admin.execute(drop)
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = make_conninfo(self.url, dbname=name)
        try:
            if store:
                migrate(url)
            else:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(RAW_TABLE)
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                self.admin.execute("CHECKPOINT")  # each run starts with little dirty WAL
            yield url
        finally:
            self.admin.execute(drop)

    @contextlib.contextmanager
    def store(self, name: str, pool_size: int = 2) -> Iterator[Store]:
        with self.database(f"bench_store_{name}", store=True) as url:
            pool = open_pool(url, min_size=pool_size, max_size=pool_size)
            store = Store(pool)
            try:
                yield store
            finally:
                store.close()
                pool.close()

    @contextlib.contextmanager
    def raw(self, name: str, connections: int = 1) -> Iterator[list[Conn]]:
        with self.database(f"bench_raw_{name}", store=False) as url:
            conns = [psycopg.connect(url, autocommit=True) for _ in range(connections)]
            try:
                yield conns
            finally:
                for conn in conns:
                    conn.close()

    def batch(self, events: list[Wire], rows: list[Row], size: int) -> dict[str, float]:
        result = {}
        with self.store("batch") as store:
            store_batches(store, self.warm, size)
            result["store"] = rate(len(events), lambda: store_batches(store, events, size))
        variants: dict[str, Callable[[Conn, Sequence[Row]], None]] = {
            "raw_executemany": lambda conn, rows: raw_executemany(conn, rows, size),
            "raw_unnest_text": lambda conn, rows: raw_unnest(conn, rows, size, binary=False),
            "raw_unnest_binary": lambda conn, rows: raw_unnest(conn, rows, size, binary=True),
        }
        for name, path in variants.items():
            with self.raw(name.removeprefix("raw_")) as (conn,):
                path(conn, self.warm_rows)
                result[name] = rate(len(rows), lambda: path(conn, rows))  # noqa: B023
        return result

    def single(self, events: list[Wire], rows: list[Row]) -> dict[str, float]:
        with self.store("single") as store:
            store_singles(store, self.warm)
            store_rate = rate(len(events), lambda: store_singles(store, events))
        with self.raw("single") as (conn,):
            raw_singles(conn, self.warm_rows)
            raw_rate = rate(len(rows), lambda: raw_singles(conn, rows))
        return {"store": store_rate, "raw": raw_rate}

    def concurrent(self, events: list[Wire], rows: list[Row], writers: int) -> dict[str, float]:
        result = {}
        for n in (1, writers):
            warm, shares = by_stream(self.warm, n, stream_of), by_stream(events, n, stream_of)
            with self.store(f"threads_{n}", pool_size=n + 1) as store:

                def append(share: list[Wire], store: Store = store) -> None:
                    store_singles(store, share)

                in_threads(warm, append)
                result[f"threads_{n}"] = len(events) / in_threads(shares, append)
            with self.database(f"bench_store_processes_{n}", store=True) as url:
                wall, cpu = in_processes(url, warm, shares)
                result[f"processes_{n}"] = len(events) / wall
                result[f"processes_{n}_cpu_us"] = cpu / len(events) * 1e6
        with self.raw(f"threads_{writers}", connections=writers) as conns:

            def insert_all(part: list[Row]) -> float:
                shares = by_stream(part, writers, lambda row: row[1])
                return in_threads(list(zip(conns, shares, strict=True)), lambda p: raw_singles(*p))

            insert_all(self.warm_rows)
            result[f"raw_threads_{writers}"] = len(rows) / insert_all(rows)
        return result


def environment(admin: Conn, embedded: bool) -> dict[str, Any]:
    def show(name: str) -> str:
        row = admin.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
        return str(row[0]) if row else "?"

    host = admin.info.host
    return {
        "postgresql": show("server_version") + (" (embedded)" if embedded else ""),
        "socket": f"Unix {host}" if host.startswith("/") else f"TCP {host}:{admin.info.port}",
        "fsync / synchronous_commit": f"{show('fsync')} / {show('synchronous_commit')}",
        "cpus": os.cpu_count(),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
    }


def report(
    args: argparse.Namespace, a: dict[str, float], b: dict[str, float], c: dict[str, float]
) -> list[dict[str, Any]]:
    """Print the raw variants and the table of store against baseline; return the table."""
    w = args.writers
    raws = {k: v for k, v in a.items() if k.startswith("raw_")}
    for name, value in raws.items():
        label = f"{name.replace('_', ' ')}, {args.batch} per tx"
        print(f"  {label:<34} {value:>10,.0f} ev/s")
    raw_w = c[f"raw_threads_{w}"]
    label = f"raw single INSERT, {w} threads"
    print(f"  {label:<34} {raw_w:>10,.0f} ev/s = {raw_w / b['raw']:.2f}x 1 writer")
    cpu_1, cpu_w = c["processes_1_cpu_us"], c[f"processes_{w}_cpu_us"]
    label = "writer CPU per single append"
    print(f"  {label:<34} {cpu_1:>7,.0f} µs with 1 process, {cpu_w:,.0f} µs with {w}")
    table = [
        (f"batch {args.batch} (append_batch)", a["store"], max(raws.values()), 0.5),
        ("single append, 1 per tx", b["store"], b["raw"], 0.7),
        (f"{w} writers / 1 (threads)", c[f"threads_{w}"], c["threads_1"], 2.0),
        (f"{w} writers / 1 (processes)", c[f"processes_{w}"], c["processes_1"], 2.0),
    ]
    print(f"\n{'scenario':<32} {'store ev/s':>10} {'baseline ev/s':>15} {'ratio':>7}   target")
    rows = []
    for name, store_rate, base, target in table:
        ratio = store_rate / base
        met = ratio >= target
        figures = f"{store_rate:>10,.0f} {base:>15,.0f} {ratio:>7.2f}"
        print(f"{name:<32} {figures}   >= {target:.2f}{'' if met else '  missed'}")
        rows.append({"scenario": name, "store": store_rate, "baseline": base, "ratio": ratio})
        rows[-1] |= {"target": target, "met": met}
    print("baselines: the fastest raw variant; the raw INSERT; the store with 1 writer")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events for batch runs")
    parser.add_argument("--single", type=int, default=5_000, help="events for single appends")
    parser.add_argument("--batch", type=int, default=1_000, help="events per batch")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writers")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up events per path")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", default=os.environ.get("INTERACTION_STORE_DATABASE_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()

    began = time.perf_counter()
    events = list(generate(args.events, seed=args.seed, customer_count=10_000))
    warm = list(generate(args.warmup, seed=args.seed + 7919, customer_count=10_000))
    versions: dict[str, int] = {}
    warm_rows, rows = raw_rows(warm, versions), raw_rows(events, versions)
    sample, sample_rows = events[: args.single], rows[: args.single]
    size = sum(len(orjson.dumps(e)) for e in events) // len(events)
    # The inputs stay in memory for the whole run, millions of objects a connector that
    # streams its events would never hold. Left to the garbage collector, every
    # collection walks them, and that doubles the cost of the objects validation makes.
    gc.collect()
    gc.freeze()

    server = None if args.url else EmbeddedPostgres(Path(".bench/pg"))
    url = server.start() if server else args.url
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            env = environment(admin, embedded=server is not None)
            env["events"] = f"{len(events):,} ({size} B of JSON each, {len(versions):,} streams)"
            env["single-event sample"] = f"{len(sample):,}"
            for key, value in env.items():
                print(f"{key:>26}: {value}")
            print("running a. batches, b. single appends, c. concurrent writers ...", flush=True)
            bench = Bench(admin, url, warm, warm_rows)
            a = bench.batch(events, rows, args.batch)
            b = bench.single(sample, sample_rows)
            c = bench.concurrent(sample, sample_rows, args.writers)
    finally:
        if server is not None:
            server.release()
    table = report(args, a, b, c)
    print(f"total {time.perf_counter() - began:.0f}s")
    if args.json:
        figures = {"environment": env, "batch": a, "single": b, "concurrent": c, "table": table}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
