"""`audit verify` over a large log, beside a raw SHA-256 of the same stored bytes.

    .venv/bin/python bench/audit_verify.py                     # 1,000,000 events
    .venv/bin/python bench/audit_verify.py --events 100000 --customers 10000

The log is the generator's (the database bench/projections.py and bench/api.py use,
loaded once into the embedded server in ``.bench/pg``), sealed once. The baseline reads
every event's stored payload and metadata through the same kind of server-side cursor
and hashes them with SHA-256, nothing more: the least any verification must do. The
verification is the real one: every checkpoint's signature, the Merkle tree leaf by
leaf, and every stream's hash chain recomputed from the stored columns. Target: at
least 30% of the baseline's events per second.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import psycopg
from projections import generated_log

from interaction_store.audit import checkpoints
from interaction_store.audit.signing import SigningKey
from interaction_store.audit.verify import verify
from interaction_store.db import open_pool
from interaction_store.embedded import EmbeddedPostgres
from interaction_store.store import Store


def raw_sha256(url: str) -> tuple[int, float]:
    """Events and seconds to read and SHA-256 every event's stored bytes."""
    began, count = time.perf_counter(), 0
    with psycopg.connect(url) as conn, conn.cursor(name="raw") as cursor:
        cursor.itersize = 5000
        cursor.execute(
            "SELECT payload::text, metadata::text FROM events ORDER BY stream_id, stream_version"
        )
        for payload, metadata in cursor:
            hashlib.sha256(payload.encode() + metadata.encode()).digest()
            count += 1
    return count, time.perf_counter() - began


def verified(url: str, key: SigningKey) -> tuple[int, float]:
    began = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        report = verify(conn, key.public)
    elapsed = time.perf_counter() - began
    assert report.ok, report.failures
    return report.events, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    server = EmbeddedPostgres(Path(".bench/pg"))
    admin_url = server.start()
    try:
        url = generated_log(admin_url, args.events, args.customers, args.seed)
        key = SigningKey.generate()
        with open_pool(url, min_size=1, max_size=4) as pool:
            store = Store(pool)
            with pool.connection() as conn:  # a fresh tree, signed with this run's key
                conn.execute("TRUNCATE audit_leaves, audit_checkpoints")
                began = time.perf_counter()
                sealed = checkpoints.seal(conn, key)
                seal_seconds = time.perf_counter() - began
                conn.execute("VACUUM ANALYZE audit_leaves")
            store.close()
        assert sealed is not None
        print(f"sealed {sealed.tree_size:,} events in {seal_seconds:.1f} s"
              f" ({sealed.tree_size / seal_seconds:,.0f} events/s)")  # fmt: skip
        raw_sha256(url)  # warm the cache for both
        count, raw_seconds = raw_sha256(url)
        checked, verify_seconds = verified(url, key)
        assert checked == count
        raw_rate, verify_rate = count / raw_seconds, checked / verify_seconds
        print(f"raw SHA-256 of the stored bytes: {raw_rate:>10,.0f} events/s ({raw_seconds:.1f} s)")
        print(f"audit verify:                    {verify_rate:>10,.0f} events/s"
              f" ({verify_seconds:.1f} s) = {verify_rate / raw_rate:.2f} of the baseline"
              " (target >= 0.30)")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
