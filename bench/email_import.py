"""Importing an mbox: `interaction-store import email` beside the stdlib's parse of the
same file, the parsing ceiling.

    .venv/bin/python bench/email_import.py                  # 100,000 messages
    .venv/bin/python bench/email_import.py --messages 5000

The mbox (``.bench/mail-<n>.mbox``, written once) holds mail as clients write it: 10,000
customers writing to help@acme.example and answered from it, a third of them replies
with References, some HTML-only, some with an attachment, about 1.5 KB each. The
ceiling reads every message of the file with ``mailbox.mbox`` and parses it with
``email.policy.default``, storing nothing. The import is the real command, in a process
of its own, into a fresh database on the embedded server (``.bench/pg``). Target: at
least 50% of the ceiling's messages per second.
"""

from __future__ import annotations

import argparse
import mailbox
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from interaction_store.db import migrate
from interaction_store.embedded import EmbeddedPostgres

SUPPORT = "help@acme.example"
WORDS = [
    "order",
    "invoice",
    "delivery",
    "refund",
    "account",
    "password",
    "subscription",
    "parcel",
    "courier",
    "address",
    "payment",
    "card",
    "warranty",
    "replacement",
    "broken",
    "missing",
    "late",
    "cancel",
    "upgrade",
    "plan",
    "contract",
]


def write_mbox(path: Path, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    threads: list[tuple[str, str, str]] = []  # (root id, customer, subject)
    box = mailbox.mbox(path)
    box.lock()
    try:
        for n in range(count):
            message = EmailMessage()
            sent = start + timedelta(seconds=37 * n)
            reply = threads and rng.random() < 0.35
            if reply:
                root, customer, subject = rng.choice(threads)
                subject = "Re: " + subject
            else:
                customer = f"customer{rng.randrange(10_000)}@example.com"
                subject = " ".join(rng.choice(WORDS) for _ in range(5)).capitalize()
                root = f"<t{n}@mail.example.com>"
            ours = reply and rng.random() < 0.5
            message["From"] = SUPPORT if ours else customer
            message["To"] = customer if ours else SUPPORT
            message["Subject"] = subject
            message["Date"] = format_datetime(sent)
            message["Message-ID"] = f"<m{n}@mail.example.com>" if reply else root
            if reply:
                message["In-Reply-To"] = root
                message["References"] = root
            else:
                threads.append((root, customer, subject))
            text = " ".join(rng.choice(WORDS) for _ in range(200))
            if rng.random() < 0.15:
                message.set_content(f"<html><body><p>{text}</p></body></html>", subtype="html")
            else:
                message.set_content(text)
            if rng.random() < 0.1:
                message.add_attachment(
                    rng.randbytes(600), maintype="image", subtype="png", filename="photo.png"
                )
            box.add(message)
    finally:
        box.flush()
        box.unlock()
        box.close()


def ceiling(path: Path) -> tuple[int, float]:
    """Messages, and seconds to read and parse each with the stdlib (nothing stored)."""
    parser = BytesParser(policy=policy.default)
    began = time.perf_counter()
    box = mailbox.mbox(path, factory=None, create=False)
    count = 0
    for key in box.iterkeys():
        message = parser.parsebytes(box.get_bytes(key))
        message.get_body(preferencelist=("plain", "html"))
        count += 1
    box.close()
    return count, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()

    mbox = Path(f".bench/mail-{args.messages}.mbox")
    if not mbox.exists():
        print(f"writing {args.messages:,} messages to {mbox} (once) ...", flush=True)
        mbox.parent.mkdir(parents=True, exist_ok=True)
        partial = mbox.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        write_mbox(partial, args.messages)
        partial.rename(mbox)
    size = mbox.stat().st_size
    print(f"mbox: {args.messages:,} messages, {size / args.messages:,.0f} B each", flush=True)

    server = EmbeddedPostgres(Path(".bench/pg"))
    admin_url = server.start()
    name = "bench_email_import"
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name}")
        url = make_conninfo(admin_url, dbname=name)
        migrate(url)

        count, parse_seconds = ceiling(mbox)
        command = [
            sys.executable,
            "-c",
            "from interaction_store.cli import main; main()",
            "--database-url",
            url,
            "import",
            "email",
            str(mbox),
            "--quiet",
            "--support-address",
            SUPPORT,
        ]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        import_seconds = time.perf_counter() - began
        print(done.stdout.strip() or done.stderr.strip()[-500:])
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM events").fetchone()
        assert stored is not None
        assert stored[0] == count, f"{stored[0]} events for {count} messages"
    finally:
        server.release()
    parse_rate, import_rate = count / parse_seconds, count / import_seconds
    print(
        f"\nstdlib parse (ceiling) {parse_rate:>8,.0f} messages/s\n"
        f"import email           {import_rate:>8,.0f} messages/s"
        f" = {import_rate / parse_rate:.2f} of the ceiling (target >= 0.50)"
    )


if __name__ == "__main__":
    main()
