"""The ``interaction-store`` command line.

With no ``INTERACTION_STORE_DATABASE_URL``, every command runs on the embedded PostgreSQL
in ``.interaction-store/`` (started on demand, stopped when the command ends unless
``db start`` keeps it running).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import gc
import getpass
import imaplib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from interaction_store import db, keys, views
from interaction_store.asof import as_of, parse_as_of, recorded_at
from interaction_store.audit import checkpoints, signing
from interaction_store.audit.access import AccessLog
from interaction_store.audit.export import export_customer
from interaction_store.audit.replay import replay as audit_replay_views
from interaction_store.audit.verify import verify as audit_verify_log
from interaction_store.batches import Tally, append_entries
from interaction_store.connectors.asterisk import CdrSource, MalformedCdr, cdr_event
from interaction_store.connectors.email import EmailSource, MalformedEmail, email_event
from interaction_store.demo import generate, story
from interaction_store.embedded import EmbeddedPostgres
from interaction_store.events import derive_event_id
from interaction_store.exceptions import (
    ConfigurationError,
    InteractionStoreError,
)
from interaction_store.imap import FolderPass, ImapError, ImapPoller, ImapServer, Security
from interaction_store.mailfiles import count_messages, read_messages
from interaction_store.privacy import Sealer, privacy_key_from_settings
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.projections.rebuild import RebuildError, rebuild
from interaction_store.projections.runner import DeadLetterError
from interaction_store.projections.timeline import snippet
from interaction_store.settings import Settings
from interaction_store.shredding import apply_retention, erase
from interaction_store.store import Checkpoint, RecordedEvent, Store

__all__ = ["main"]

err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Context:
    settings: Settings

    @contextlib.contextmanager
    def store(self, *, migrate: bool = False) -> Iterator[Store]:
        """The store; with ``migrate``, the schema is brought up to date first, otherwise a
        database without the schema is refused with a hint."""
        with db.open_store(self.settings, migrate_schema=migrate) as store:
            if not migrate and not db.has_schema(store.pool):
                raise ConfigurationError(
                    "the database has no interaction-store schema yet: "
                    "run `interaction-store migrate` first"
                )
            yield store


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--database-url",
    envvar="INTERACTION_STORE_DATABASE_URL",
    help="PostgreSQL URL. Default: the embedded server in --data-dir.",
)
@click.option(
    "--data-dir",
    envvar="INTERACTION_STORE_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the embedded server.  [default: .interaction-store]",
)
@click.version_option(package_name="interaction-store")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, data_dir: Path | None) -> None:
    """One record of every customer interaction, on every channel.

    \b
    Quick start (embedded PostgreSQL, nothing to install):
      interaction-store migrate
      interaction-store demo
      interaction-store tail
    """
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    if data_dir:
        overrides["data_dir"] = data_dir
    try:
        ctx.obj = Context(Settings(**overrides))
    except ValidationError as exc:
        reasons = "; ".join(
            f"INTERACTION_STORE_{'.'.join(map(str, e['loc'])).upper()}:"
            f" {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise click.ClickException(f"invalid settings: {reasons}") from None


def main() -> None:
    # A service manager stops us with SIGTERM: unwind like Ctrl-C, so an embedded server
    # this process started is stopped too.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli(standalone_mode=True)
    except InteractionStoreError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# migrate ------------------------------------------------------------------------------


@cli.command()
@click.argument("revision", default="head")
@click.option("--down", is_flag=True, help="Downgrade to REVISION (e.g. base) instead.")
@click.pass_obj
def migrate(obj: Context, revision: str, down: bool) -> None:
    """Bring the database schema to REVISION (default: the newest)."""
    with db.database_url(obj.settings) as url:
        before = db.current_revision(url)
        if down:
            db.downgrade(url, revision)
        else:
            db.migrate(url, revision)
        after = db.current_revision(url)
    click.echo(f"schema: {before or 'empty'} -> {after or 'empty'}")


# append -------------------------------------------------------------------------------


@cli.command()
@click.argument("source", type=click.File("rb"))
@click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Events per atomic append.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_obj
def append(obj: Context, source: IO[bytes], batch_size: int, quiet: bool) -> None:
    """Append events from SOURCE, a file of JSON lines (NDJSON), or - for standard input.

    Each line is one event in the wire shape: {"id"?, "type", "occurred_at", "data",
    "metadata"?}; its stream is derived from its data. Lines already stored (same id,
    same content) are counted, not written again. Invalid lines are reported by line
    number and skipped; the exit status is 1 if any line was rejected.

    \b
    Example:
      interaction-store generate 1000 | interaction-store append -
    """
    tally = Tally()
    total = _size_of(source)
    with obj.store() as store, _progress(quiet, total) as (progress, task):
        batch: list[tuple[int, Any]] = []
        # The events of this batch by id: an event met again in the same batch counts as
        # it would in a later one (already present, or rejected if its content differs).
        seen: dict[str, tuple[int, bytes]] = {}
        for number, line in enumerate(source, start=1):
            progress.advance(task, len(line))
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                tally.rejected.append((number, f"malformed JSON: {exc}"))
                continue
            key = _id_of(event)
            if key is not None and not _first_reading(seen, number, event, tally, key):
                continue
            batch.append((number, event))
            if len(batch) >= batch_size:
                append_entries(store, batch, tally)
                batch, seen = [], {}
        if batch:
            append_entries(store, batch, tally)
    _finish(tally, lambda number: f"line {number}")


def _id_of(event: Any) -> str | None:
    """The id a wire event will have: its own, or the one derived from its type and
    ``external_id``; None when it has neither (a new id each time) or is malformed."""
    if not isinstance(event, dict):
        return None
    given, data, type_ = event.get("id"), event.get("data"), event.get("type")
    try:
        if given is not None:
            return str(UUID(str(given)))
        if isinstance(data, dict) and isinstance(type_, str):
            external_id = data.get("external_id")
            if isinstance(external_id, str) and external_id.strip():
                return str(derive_event_id(type_, external_id))
    except ValueError:
        pass
    return None


@cli.group(name="import")
def import_group() -> None:
    """Import interactions from the files other systems write."""


@import_group.command(name="email")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--mailbox",
    help="Mailbox name in each message's identity. Default: INTERACTION_STORE_EMAIL_MAILBOX"
    " (support). Use the same one for every feed of a mailbox.",
)
@click.option(
    "--support-address",
    "support",
    multiple=True,
    help="One of our addresses (repeatable; adds to INTERACTION_STORE_SUPPORT_ADDRESSES):"
    " mail from it is email.sent.",
)
@click.option(
    "--batch-size",
    default=200,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Messages per atomic append.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_obj
def import_email(
    obj: Context,
    path: Path,
    mailbox: str | None,
    support: tuple[str, ...],
    batch_size: int,
    quiet: bool,
) -> None:
    """Import mail from PATH: an .eml file, a folder of them, a Maildir or an mbox file.

    Each message becomes email.received (from a customer) or email.sent (from one of the
    support addresses), threaded by its References. Importing the same mail again adds
    nothing. A message that cannot be read is reported and the import goes on; the exit
    status is 1 if any was rejected.

    \b
    Example:
      interaction-store import email ~/Mail/support.mbox --support-address help@acme.example
    """
    settings = obj.settings
    source = EmailSource(
        mailbox=mailbox or settings.email_mailbox,
        support_addresses=[*settings.support_address_list(), *(a.lower() for a in support)],
    )
    tally = Tally()
    labels: dict[int, str] = {}
    with (
        obj.store() as store,
        _progress(quiet, count_messages(path), "importing") as (
            progress,
            task,
        ),
    ):
        batch: list[tuple[int, Any]] = []
        seen: dict[str, tuple[int, bytes]] = {}
        for number, (label, raw) in enumerate(read_messages(path), start=1):
            progress.advance(task)
            labels[number] = label
            try:
                event = email_event(raw, source)
            except (MalformedEmail, ValueError, LookupError) as exc:
                tally.rejected.append((number, str(exc)))
                continue
            if not _first_reading(seen, number, event, tally):
                continue
            batch.append((number, event))
            if len(batch) >= batch_size:
                append_entries(store, batch, tally)
                batch = []
        if batch:
            append_entries(store, batch, tally)
    _finish(tally, labels.__getitem__)


@import_group.command(name="cdr")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--our-number",
    "ours",
    multiple=True,
    help="One of our numbers (repeatable): calls from it are outbound. Digits-only numbers"
    " of at most --extension-digits are internal extensions.",
)
@click.option("--extension-digits", default=6, show_default=True, type=click.IntRange(1, 15))
@click.option(
    "--timezone",
    "zone",
    default="UTC",
    show_default=True,
    help="The zone the Asterisk server writes its CDR times in (e.g. Europe/London).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_obj
def import_cdr(
    obj: Context, path: Path, ours: tuple[str, ...], extension_digits: int, zone: str, quiet: bool
) -> None:
    """Import calls from an Asterisk CDR file (cdr_csv's Master.csv).

    Each external call becomes call.completed: answered (with its billed seconds),
    missed, or voicemail. Calls between two extensions are skipped. Importing the same
    file again adds nothing. A row that cannot be read is reported by line and the
    import goes on; the exit status is 1 if any was rejected.

    \b
    Example:
      interaction-store import cdr /var/log/asterisk/cdr-csv/Master.csv \\
        --our-number +14155550100 --timezone America/Los_Angeles
    """
    try:
        timezone = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"{zone!r} is not a time zone", param_hint="--timezone") from None
    source = CdrSource(our_numbers=set(ours), timezone=timezone, extension_digits=extension_digits)
    tally = Tally()
    skipped = 0
    with (
        obj.store() as store,
        path.open(newline="", encoding="utf-8", errors="replace") as rows,
        _progress(quiet, _lines_in(path), "importing") as (progress, task),
    ):
        batch: list[tuple[int, Any]] = []
        seen: dict[str, tuple[int, bytes]] = {}
        for number, row in enumerate(csv.reader(rows), start=1):
            progress.advance(task)
            if not row:
                continue
            try:
                event = cdr_event(row, source)
            except MalformedCdr as exc:
                tally.rejected.append((number, str(exc)))
                continue
            if event is None:
                skipped += 1
                continue
            if not _first_reading(seen, number, event, tally):
                continue
            batch.append((number, event))
            if len(batch) >= 500:
                append_entries(store, batch, tally)
                batch = []
        if batch:
            append_entries(store, batch, tally)
    _finish(tally, lambda number: f"line {number}", f", internal calls skipped {skipped}")


def _finish(tally: Tally, where: Callable[[int], str], more: str = "") -> None:
    """Report the first 50 rejections by place, print the summary, exit 1 if any."""
    for number, reason in tally.rejected[:50]:
        err.print(f"{where(number)}: {reason}", markup=False)
    if len(tally.rejected) > 50:
        err.print(f"... and {len(tally.rejected) - 50} more rejected")
    click.echo(tally.summary() + more)
    if tally.rejected:
        sys.exit(1)


def _first_reading(
    seen: dict[str, tuple[int, bytes]],
    number: int,
    event: dict[str, Any],
    tally: Tally,
    key: str | None = None,
) -> bool:
    """False for an event this import already read (the same message twice in one file:
    counted as already present, or rejected if its content differs). ``key``: the
    event's id, by default its ``external_id``."""
    key = key if key is not None else str(event["data"]["external_id"])
    try:
        content = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON the store takes (an integer beyond 64 bits): it says why
        return True
    if key not in seen:
        seen[key] = (number, content)
        return True
    first, earlier = seen[key]
    if earlier == content:
        tally.already_present += 1
    else:
        tally.rejected.append((number, f"reuses the id of entry {first} with other content"))
    return False


def _lines_in(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _size_of(source: IO[bytes]) -> int | None:
    try:
        return Path(source.name).stat().st_size if source.seekable() else None
    except (OSError, AttributeError, TypeError):
        return None


@contextlib.contextmanager
def _progress(
    quiet: bool, total: int | None, label: str = "appending"
) -> Iterator[tuple[Progress, Any]]:
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=False,
    )
    with progress:
        yield progress, progress.add_task(label, total=total)


# connect ------------------------------------------------------------------------------


@cli.group(name="connect")
def connect_group() -> None:
    """Keep a source's interactions flowing in: poll it until stopped."""


@connect_group.command(name="imap")
@click.option("--host", help="IMAP server. Default: INTERACTION_STORE_IMAP_HOST.")
@click.option("--port", type=click.IntRange(1, 65535), help="Default: 993 (ssl) or 143.")
@click.option(
    "--security",
    type=click.Choice(["ssl", "starttls", "plain"]),
    help="Default: INTERACTION_STORE_IMAP_SECURITY (ssl). plain is for loopback only.",
)
@click.option("--user", help="Login. Default: INTERACTION_STORE_IMAP_USER.")
@click.option(
    "--folder",
    "folders",
    multiple=True,
    help="A folder to poll (repeatable). Default: INTERACTION_STORE_IMAP_FOLDERS (INBOX,Sent).",
)
@click.option("--mailbox", help="Mailbox name in each message's identity (see import email).")
@click.option(
    "--support-address",
    "support",
    multiple=True,
    help="One of our addresses (repeatable): mail from it is email.sent.",
)
@click.option("--interval", type=click.FloatRange(min=0.1), help="Seconds between polls.")
@click.option("--once", is_flag=True, help="Poll once, print the summary and exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_obj
def connect_imap(
    obj: Context,
    host: str | None,
    port: int | None,
    security: Security | None,
    user: str | None,
    folders: tuple[str, ...],
    mailbox: str | None,
    support: tuple[str, ...],
    interval: float | None,
    once: bool,
    quiet: bool,
) -> None:
    """Poll an IMAP mailbox's inbox and sent folder and store each new message.

    The password is read from INTERACTION_STORE_IMAP_PASSWORD only, never from the command
    line. Folders are opened read-only: nothing is marked as seen. Each folder's place
    (UIDVALIDITY and last UID) is kept in the database, so a restart neither misses nor
    repeats a message. Runs until Ctrl-C, polling every --interval seconds (default
    INTERACTION_STORE_IMAP_INTERVAL, 60); a server that is down is tried again next time.

    \b
    Example:
      export INTERACTION_STORE_IMAP_PASSWORD=...
      interaction-store connect imap --host imap.acme.example --user help@acme.example \\
        --support-address help@acme.example
    """
    settings = obj.settings
    host = host or settings.imap_host
    user = user or settings.imap_user
    missing = [name for name, value in (("--host", host), ("--user", user)) if not value]
    if settings.imap_password is None:  # the environment only: never in shell history
        missing.append("INTERACTION_STORE_IMAP_PASSWORD")
    password = settings.imap_password
    if not host or not user or password is None:
        raise click.UsageError(f"the mailbox needs {', '.join(missing)}")
    server = ImapServer(
        host=host,
        user=user,
        password=password.get_secret_value(),
        port=port or settings.imap_port,
        security=security or settings.imap_security,
    )
    source = EmailSource(
        mailbox=mailbox or settings.email_mailbox,
        support_addresses=[*settings.support_address_list(), *(a.lower() for a in support)],
    )
    chosen = folders or tuple(f.strip() for f in settings.imap_folders.split(",") if f.strip())
    with obj.store() as store:
        poller = ImapPoller(store, server, source, chosen)
        if once:
            try:
                with _progress(quiet, None, "fetching") as (progress, task):
                    passes = poller.poll(lambda _: progress.advance(task))
            except (OSError, imaplib.IMAP4.error, ImapError) as exc:
                raise click.ClickException(f"{server.address}: {exc}") from None
            _report_passes(passes)
            if any(p.tally.rejected for p in passes):
                sys.exit(1)
            return
        err.print(f"polling {server.address} ({', '.join(chosen)}); Ctrl-C stops")
        stop = threading.Event()
        try:
            poller.run(interval or settings.imap_interval, stop, _report_passes)
        except KeyboardInterrupt:
            stop.set()


def _report_passes(passes: list[FolderPass]) -> None:
    for done in passes:
        for uid, reason in list(done.rejections())[:50]:
            err.print(f"{done.folder} UID {uid}: {reason}", markup=False)
        if done.fetched or done.tally.rejected:
            click.echo(f"{done.folder}: {done.tally.summary()} (last UID {done.last_uid})")
        else:
            click.echo(f"{done.folder}: nothing new (last UID {done.last_uid})")


# tail ---------------------------------------------------------------------------------


@cli.command()
@click.option("--after", "after", help="Start after this checkpoint (transaction_id:position).")
@click.option("--from-position", type=int, help="Start after the event at this position.")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable).")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new events (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many events.")
@click.pass_obj
def tail(
    obj: Context,
    after: str | None,
    from_position: int | None,
    types: tuple[str, ...],
    follow: bool,
    as_json: bool,
    limit: int | None,
) -> None:
    """Print the log, one line per event, in commit order; with -f, keep following it."""
    with obj.store() as store:
        try:
            checkpoint = Checkpoint.parse(after) if after else Checkpoint.START
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--after") from None
        if from_position is not None:
            found = store.checkpoint_at(from_position)
            if found is None:
                raise click.BadParameter(
                    f"no event at position {from_position} that readers can reach yet"
                )
            checkpoint = found
        stop = threading.Event()
        printed = 0
        events = (
            store.follow(checkpoint, types=types or None, stop=stop)
            if follow
            else _read_until_caught_up(store, checkpoint, types)
        )
        try:
            for event in events:
                click.echo(_json_line(event) if as_json else _text_line(event))
                printed += 1
                if limit is not None and printed >= limit:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()


def _read_until_caught_up(
    store: Store, checkpoint: Checkpoint, types: tuple[str, ...]
) -> Iterator[RecordedEvent]:
    while page := store.read_all(checkpoint, limit=1000, types=types or None):
        yield from page
        checkpoint = page[-1].checkpoint


def _text_line(event: RecordedEvent) -> str:
    data = event.data
    contact = data.get("contact") or {}
    who = (
        f"{contact.get('kind')}:{contact.get('value')}" if contact else data.get("customer_id", "")
    )
    gist = data.get("subject") or data.get("text") or data.get("status") or data.get("name") or ""
    gist = " ".join(str(gist).split())
    if len(gist) > 60:
        gist = gist[:59] + "…"
    channel = f"{data.get('channel', '')} {data.get('direction', '')}".strip()
    return (
        f"{event.position:>8}  {event.occurred_at:%Y-%m-%d %H:%M}  {event.type:<26} "
        f"{channel:<16} {who:<38} {gist}"
    ).rstrip()


def _json_line(event: RecordedEvent) -> str:
    return orjson.dumps(
        {
            "position": event.position,
            "checkpoint": str(event.checkpoint),
            "id": str(event.event_id),
            "stream_id": event.stream_id,
            "stream_version": event.stream_version,
            "type": event.type,
            "schema_version": event.schema_version,
            "occurred_at": event.occurred_at,
            "recorded_at": event.recorded_at,
            "data": event.data,
            "metadata": event.metadata,
            "hash": event.hash.hex(),
        }
    ).decode()


# demo and generate --------------------------------------------------------------------


@cli.command()
@click.option("--once", is_flag=True, help="Catch up with the log, then exit.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.pass_obj
def project(obj: Context, once: bool, batch_size: int) -> None:
    """Run the projections (timeline, customers, conversations) alone: catch up from their
    checkpoints, then follow the log.

    Two of these may run at once; each batch is applied by exactly one of them.
    """
    with obj.store(migrate=True) as store:
        runner = ProjectionRunner(store, all_projections(), batch_size=batch_size)
        try:
            applied = runner.catch_up()
            click.echo(f"caught up: {applied:,} events applied")
            if not once:
                runner.run()
        except KeyboardInterrupt:
            runner.stop()
        for lag in runner.lag():
            click.echo(f"{lag.projection}: at position {lag.position:,}, {lag.events:,} behind")


@cli.command()
@click.option(
    "--stalled-after",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds without progress, with events waiting, that count as stalled.",
)
@click.pass_obj
def lag(obj: Context, stalled_after: float) -> None:
    """How far each projection trails the log; exits 1 if one has stalled.

    A projection has stalled when events have waited longer than --stalled-after and its
    checkpoint has not moved for as long: its runner is dead or stuck. Use it as a
    liveness check.
    """
    with obj.store() as store:
        runner = ProjectionRunner(store, all_projections())
        stalled = {lag.projection for lag in runner.stalled(after=stalled_after)}
        for item in runner.lag():
            state = "STALLED" if item.projection in stalled else "ok"
            click.echo(
                f"{item.projection:<14} {state:<8} position {item.position:>10,}"
                f"  behind {item.events:>8,} events / {item.seconds:,.1f} s"
                f"  last progress {item.since_progress:,.0f} s ago"
            )
        writer = runner.oldest_writer()
    if stalled:
        blame = ""
        if writer is not None and writer[1] > stalled_after:
            pid, seconds, query = writer
            blame = (
                f"; backend {pid} has held a writing transaction open for {seconds:,.0f} s"
                f" and readers of the log cannot pass it: {query}"
            )
        raise click.ClickException(f"stalled: {', '.join(sorted(stalled))}{blame}")


@cli.command(name="rebuild")
@click.argument("projection", required=False)
@click.option("--batch-size", type=click.IntRange(1, 50_000), default=2000, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_obj
def rebuild_command(obj: Context, projection: str | None, batch_size: int, quiet: bool) -> None:
    """Rebuild PROJECTION (all when left out) from the start of the log, beside the live
    view, then swap it in, in one transaction.

    Readers keep reading the live view meanwhile and never see a half-built one; a runner
    that is running waits for the swap, then goes on from the rebuilt checkpoint.

    \b
      interaction-store rebuild            # timeline, customers and conversations
      interaction-store rebuild timeline
    """
    known = {p.name: p for p in all_projections()}
    if projection is not None and projection not in known:
        raise click.BadParameter(
            f"unknown projection {projection!r}; choose from {', '.join(known)}",
            param_hint="PROJECTION",
        )
    chosen = [known[projection]] if projection else list(known.values())
    with obj.store(migrate=True) as store:
        with store.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
        total = int(row[0]) if row else 0
        for item in chosen:
            with _progress(quiet, total, f"rebuilding {item.name}") as (progress, task):

                def advance(done: int, task: Any = task) -> None:
                    progress.update(task, completed=done)

                try:
                    result = rebuild(store, item, batch_size=batch_size, progress=advance)
                except RebuildError as exc:
                    raise click.ClickException(str(exc)) from None
            parked = f", {result.parked} parked as dead letters" if result.parked else ""
            click.echo(
                f"{item.name}: rebuilt from {result.events:,} events in"
                f" {result.seconds:,.1f} s{parked}"
            )


@cli.group(name="deadletters")
def deadletters() -> None:
    """Events a projection parked after its retries failed: list, retry or skip them."""


@deadletters.command(name="list")
@click.option("--all", "everything", is_flag=True, help="Also those already retried or skipped.")
@click.pass_obj
def deadletters_list(obj: Context, everything: bool) -> None:
    """List the parked events, oldest first."""
    with obj.store() as store:
        letters = ProjectionRunner(store, all_projections()).dead_letters(resolved=everything)
    if not letters:
        click.echo("no dead letters")
        return
    for letter in letters:
        state = (
            f"{letter.resolution} {letter.resolved_at:%Y-%m-%d %H:%M}"
            if letter.resolution and letter.resolved_at
            else "parked"
        )
        click.echo(
            f"#{letter.id}  {letter.projection}  position {letter.position:,}  {letter.type}"
            f"  {state} (parked {letter.parked_at:%Y-%m-%d %H:%M},"
            f" {letter.attempts} attempts)"
        )
        click.echo(f"    {letter.error}")
    click.echo("retry one after a fix: interaction-store deadletters retry ID; give up: skip ID")


@deadletters.command(name="retry")
@click.argument("dead_letter_id", metavar="ID", type=int)
@click.pass_obj
def deadletters_retry(obj: Context, dead_letter_id: int) -> None:
    """Apply the parked event ID again (after fixing its cause)."""
    with obj.store() as store:
        runner = ProjectionRunner(store, all_projections())
        try:
            letter = runner.retry(dead_letter_id)
        except DeadLetterError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            raise click.ClickException(
                f"dead letter {dead_letter_id} failed again and stays parked:"
                f" {type(exc).__name__}: {exc}"
            ) from None
    click.echo(f"dead letter {letter.id}: event {letter.position:,} applied to {letter.projection}")


@deadletters.command(name="skip")
@click.argument("dead_letter_id", metavar="ID", type=int)
@click.pass_obj
def deadletters_skip(obj: Context, dead_letter_id: int) -> None:
    """Give up on the parked event ID; the skip is recorded with its time."""
    with obj.store() as store:
        try:
            letter = ProjectionRunner(store, all_projections()).skip(dead_letter_id)
        except DeadLetterError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"dead letter {letter.id}: event {letter.position:,} skipped by {letter.projection}")


_AS_OF_HELP = (
    "Show it as it stood at this position of the log, or at this time (ISO 8601 with its"
    " offset), with the identity graph of then."
)


@contextlib.contextmanager
def _then(
    conn: psycopg.Connection[Any], text: str | None, who: str, settings: Settings
) -> Iterator[datetime | None]:
    """The views as of ``text`` on ``conn`` (the live ones without it), yielding the
    moment service levels are judged at (None: now)."""
    if text is None:
        yield None
        return
    try:
        position = parse_as_of(conn, text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--as-of") from None
    customer = who if ":" not in who else _find_customer(conn, who, settings)
    sealer = Sealer(privacy_key=privacy_key_from_settings(settings))
    with as_of(conn, position, customer, sealer=sealer):
        yield recorded_at(conn, position)


@cli.command(name="timeline")
@click.argument("who")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--channel", type=click.Choice(["email", "voice", "chat", "sms", "twitter"]))
@click.option("--as-of", "as_of_text", help=_AS_OF_HELP)
@click.pass_obj
def timeline_command(
    obj: Context, who: str, limit: int, channel: str | None, as_of_text: str | None
) -> None:
    """Print a customer's cross-channel timeline, newest first, with each conversation's
    service-level state.

    WHO is a customer id (cu-1001) or an identity (email:alice@example.com,
    phone:+14155550100). The projections catch up first.

    \b
      interaction-store timeline email:dana@northwind.example
    """
    levels = obj.settings.service_levels()
    with obj.store(migrate=True) as store:
        _catch_up(store)
        with store.pool.connection() as conn, _then(conn, as_of_text, who, obj.settings) as now:
            customer = _find_customer(conn, who, obj.settings)
            items = views.timeline(conn, customer, limit=limit, channel=channel)
            found = views.conversations(
                conn,
                list(dict.fromkeys(item.conversation_id for item in items)),
                service_levels=levels,
                now=now,
            )
    states = {c.conversation_id: c for c in found}
    followed = {f.position for c in found for f in c.follow_ups}
    console = Console()
    wide = console.width >= 120  # room for a column of conversation ids
    table = Table(
        title=Text(f"{customer}: {len(items)} interactions, newest first"),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("when", no_wrap=True, min_width=14)
    table.add_column("channel", no_wrap=True, min_width=9)
    table.add_column("who", max_width=14, overflow="ellipsis", no_wrap=True)
    table.add_column("subject / snippet" if wide else "subject / snippet, conversation", ratio=1)
    if wide:
        table.add_column("conversation", max_width=24, overflow="fold")
    table.add_column("SLA", min_width=9)
    for item in items:
        # Customer text goes in as Text: "[urgent]" in a subject is text, not markup.
        preview = Text(snippet(" · ".join(p for p in (item.subject, item.snippet) if p), 80))
        if not wide:
            preview.append(f"\n{item.conversation_id}", style="dim")
        table.add_row(
            f"{item.occurred_at:%y-%m-%d %H:%M}",
            f"{item.channel} {'in' if item.direction == 'inbound' else 'out'}",
            Text(item.agent_id or item.contact.partition(":")[2]),
            preview,
            *([Text(item.conversation_id)] if wide else []),
            "\n".join(_sla_state(states.get(item.conversation_id), item.position in followed)),
        )
    console.print(table)


def _catch_up(store: Store) -> None:
    """Bring the views up to the log before reading them, saying so when it takes a while."""
    runner = ProjectionRunner(store, all_projections())
    behind = max((lag.events for lag in runner.lag()), default=0)
    if behind > 5000:
        err.print(f"catching the views up with {behind:,} new events first ...")
    runner.catch_up()


def _find_customer(conn: Any, who: str, settings: Settings) -> str:
    try:
        customer = views.find_customer(conn, who, phone_region=settings.default_phone_region)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="WHO") from None
    if customer is None:
        raise click.ClickException(f"no customer is known by {who}")
    return customer


def _sla_state(conversation: views.ConversationSummary | None, follow_up: bool) -> list[str]:
    """A conversation's service-level state in a few words, for a table cell."""
    parts = ["follow-up"] if follow_up else []
    if conversation is not None:
        if conversation.breached:
            parts.append("breached")
        if conversation.response_due_at is not None:
            parts.append(f"due {conversation.response_due_at:%m-%d %H:%M}")
        elif conversation.status == "resolved":
            parts.append("resolved")
    return parts


@cli.command(name="customer")
@click.argument("who")
@click.option("--as-of", "as_of_text", help=_AS_OF_HELP)
@click.pass_obj
def customer_command(obj: Context, who: str, as_of_text: str | None) -> None:
    """Print a customer's summary: profile, priority, identities, activity per channel,
    preferred agent and open conversations.

    WHO is a customer id or an identity (email:..., phone:..., twitter:..., chat:...).
    The projections catch up first.

    \b
      interaction-store customer phone:+14155550142
    """
    levels = obj.settings.service_levels()
    with obj.store(migrate=True) as store:
        _catch_up(store)
        with store.pool.connection() as conn, _then(conn, as_of_text, who, obj.settings) as now:
            summary = views.customer(
                conn, _find_customer(conn, who, obj.settings), service_levels=levels, now=now
            )
    console = Console()
    profile = summary.profile
    if profile is None:
        name = "(no profile: a provisional customer)"
    elif profile.erased_at is not None:
        name = f"(erased {profile.erased_at:%Y-%m-%d})"
    else:
        name = profile.name or "(no name)"
    console.print(Text.assemble((name, "bold"), f"  {summary.customer_id}"))
    facts = []
    if profile is not None:
        if profile.tier:
            facts.append(f"tier {profile.tier}")
        if profile.account_value is not None:
            facts.append(f"account value {profile.account_value:,.0f}")
        if profile.churn_risk is not None:
            facts.append(f"churn risk {profile.churn_risk:.0%}")
    facts.append(f"priority {summary.priority:,.0f}")
    facts.append(f"preferred agent {summary.preferred_agent or '-'}")
    console.print(Text("  ".join(facts)))
    if summary.aliases:
        console.print(Text(f"merged from: {', '.join(summary.aliases)}"))
    identities = ", ".join(f"{i} ({i.confidence})" for i in summary.identities)
    console.print(Text(f"identities: {identities or '-'}"))
    channels = Table(title=f"{summary.interactions} interactions")
    for column in ("channel", "interactions", "in", "out", "last contact"):
        channels.add_column(column, no_wrap=True)
    for activity in summary.channels:
        channels.add_row(
            activity.channel,
            str(activity.interactions),
            str(activity.inbound),
            str(activity.outbound),
            f"{activity.last_contact_at:%Y-%m-%d %H:%M}",
        )
    console.print(channels)
    open_table = Table(title=f"{len(summary.open_conversations)} open conversations")
    for column in ("conversation", "channels", "awaiting since", "SLA", "follow-ups"):
        open_table.add_column(column, overflow="fold")
    for conv in summary.open_conversations:
        open_table.add_row(
            Text(conv.conversation_id),
            ", ".join(conv.channels),
            f"{conv.awaiting_since:%Y-%m-%d %H:%M}" if conv.awaiting_since else "-",
            ", ".join(_sla_state(conv, False)) or "ok",
            ", ".join(f"{f.channel} {f.occurred_at:%m-%d %H:%M}" for f in conv.follow_ups) or "-",
        )
    console.print(open_table)


@cli.command()
@click.option("--if-empty", is_flag=True, help="Only when the log has no events yet.")
@click.option(
    "--synthetic",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Also append this many generated interactions.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generator.")
@click.pass_obj
def demo(obj: Context, if_empty: bool, synthetic: int, seed: int) -> None:
    """Load the demo story (and optionally synthetic interactions) into the database.

    It migrates the schema first, so it works on an empty database.
    """
    with obj.store(migrate=True) as store:
        if if_empty and store.head() > 0:
            click.echo(f"the log already has events (head {store.head()}); nothing loaded")
            return
        result = store.append_batch(story())
        click.echo(
            f"demo story: appended {result.appended}, already present {result.already_present}"
        )
        if synthetic:
            events = list(generate(synthetic, seed=seed, with_customers=True))
            appended = present = 0
            for start in range(0, len(events), 500):
                batch = store.append_batch(events[start : start + 500])
                appended += batch.appended
                present += batch.already_present
            click.echo(f"synthetic: appended {appended}, already present {present}")


@cli.command(name="generate")
@click.argument("count", type=click.IntRange(1))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--customers",
    "customer_count",
    type=click.IntRange(1),
    help="How many customers.  [default: count / 10]",
)
@click.option(
    "--with-customers", is_flag=True, help="Start with a customer.registered per customer."
)
def generate_command(
    count: int, seed: int, customer_count: int | None, with_customers: bool
) -> None:
    """Write COUNT synthetic interactions as NDJSON to standard output (for `append -`)."""
    out = sys.stdout.buffer
    for event in generate(
        count, seed=seed, customer_count=customer_count, with_customers=with_customers
    ):
        out.write(orjson.dumps(event) + b"\n")


# serve and keys -----------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--no-projector", is_flag=True, help="Serve only; run `project` elsewhere.")
@click.option(
    "--demo",
    is_flag=True,
    help="Load the demo story if the log is empty, and print a fresh demo key (earlier"
    " demo keys are revoked) with curl examples.",
)
@click.pass_obj
def serve(obj: Context, host: str, port: int, no_projector: bool, demo: bool) -> None:
    """Run the HTTP API (and the projections beside it) until Ctrl-C.

    The OpenAPI reference is at /docs. Reads need an API key with the timeline:read
    scope, appends one with events:append (see `interaction-store keys create`).
    """
    import uvicorn

    from interaction_store.api import create_app

    with obj.store(migrate=True) as store:
        if demo:
            if store.head() == 0:
                result = store.append_batch(story())
                click.echo(f"demo story: appended {result.appended} events")
            click.echo(_demo_key_and_examples(store, host, port))
        app = create_app(obj.settings, pool=store.pool, projector=not no_projector)
        _fewer_collector_pauses()
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


def _fewer_collector_pauses() -> None:
    """Move what start-up allocated out of the cyclic collector's sight and let it run
    less often: each full collection stops every request in flight, and with the default
    thresholds a busy server collects several times a second (a p99 of its own)."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


DEMO_KEY_NAME = "demo key (serve --demo)"


def _demo_key_and_examples(store: Store, host: str, port: int) -> str:
    for record in keys.list_keys(store.pool):
        if record.name == DEMO_KEY_NAME and record.revoked_at is None:
            keys.revoke_key(store.pool, record.key_id)
    key, _ = keys.create_key(
        store.pool, DEMO_KEY_NAME, ["timeline:read", "events:append", "audit:read"]
    )
    base = f"http://{host}:{port}"
    auth = 'curl -s -H "Authorization: Bearer $KEY"'
    margaret = "email:margaret.chen@northwind.example"
    sms = orjson.dumps(
        {
            "events": [
                {
                    "type": "sms.received",
                    "occurred_at": "2026-11-21T09:00:00Z",
                    "data": {
                        "contact": "phone:+14155550142",
                        "external_id": "SM-demo-1",
                        "text": "Is the corrected invoice on its way?",
                    },
                }
            ]
        }
    ).decode()
    return f"""
demo API key (shown once; a new one each start): {key}

  export KEY={key}
  {auth} '{base}/v1/customers/lookup?identity={margaret}'
  {auth} '{base}/v1/customers/cu-northwind-mchen/timeline?limit=5'
  {auth} -H 'Content-Type: application/json' -d '{sms}' {base}/v1/events

API reference: {base}/docs
"""


@cli.command(name="export")
@click.argument("customer")
@click.option(
    "--output", "-o", type=click.File("wb"), default="-", help="Write here (default: stdout)."
)
@click.pass_obj
def export_command(obj: Context, customer: str, output: IO[bytes]) -> None:
    """Everything about CUSTOMER (an id, or an alias merged into one) as NDJSON: summary,
    identity links, merges, events, timeline and conversation rows, and who read them.

    The export is itself recorded in the access log, under "command line (<user>)".

    \b
    Example:
      interaction-store export cu-1042 -o cu-1042.ndjson
    """
    with obj.store() as store:
        with store.pool.connection() as conn:
            found = views.find_customer_read(customer).run(conn)
        if found is None:
            raise click.ClickException(f"no customer {customer}")
        log = AccessLog(store.pool)
        user = getpass.getuser()
        log.record(keys.ApiKey("cli", f"command line ({user})", (), _now(), None), found, "export")
        log.flush()
        lines = 0
        with store.pool.connection() as conn:
            for line in export_customer(conn, found, store.sealer):
                output.write(orjson.dumps(line) + b"\n")
                lines += 1
    err.print(f"exported {lines:,} lines about {found}")


# erasure and retention ------------------------------------------------------------------


@cli.command(name="erase")
@click.argument("customer")
@click.option("--reason", default="", help="Why (kept in the customer.erased event).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def erase_command(obj: Context, customer: str, reason: str, yes: bool) -> None:
    """Erase CUSTOMER (an id, or an alias merged into one) by crypto-shredding.

    Destroys the data keys of the customer, of the customers merged into it and of all
    their contacts, appends customer.erased, then brings the views up to date, which
    purges the person's rows. The log is not rewritten: `audit verify` still passes,
    and the erased content reads as placeholders. Irreversible.

    \b
    Example:
      interaction-store erase cu-1042 --reason "request 2026-118" --yes
    """
    with obj.store() as store:
        with store.pool.connection() as conn:
            found = views.find_customer_read(customer).run(conn)
        if found is None:
            raise click.ClickException(f"no customer {customer}")
        if not yes:
            click.confirm(f"Erase {found} for good?", abort=True, err=True)
        runner = ProjectionRunner(store, all_projections())
        runner.catch_up()  # whom to erase is read from the views
        try:
            done = erase(store, found, reason=reason, actor=f"command line ({getpass.getuser()})")
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
        runner.catch_up()
    merged = f" and {', '.join(done.merged_customer_ids)}" if done.merged_customer_ids else ""
    click.echo(
        f"erased {done.customer_id}{merged}: {done.keys_shredded:,} data keys of"
        f" {done.contacts:,} contacts destroyed; customer.erased at position {done.position:,}"
    )


def _period(period: timedelta) -> str:
    """A retention period as it is usually given: in days, else as h:mm:ss."""
    days, rest = divmod(period, timedelta(days=1))
    return f"{days:,} days" if not rest else str(period)


@cli.group(name="retention")
def retention_group() -> None:
    """Shred content older than each channel's retention period."""


@retention_group.command(name="apply")
@click.option("--dry-run", is_flag=True, help="Count what would be shredded; change nothing.")
@click.option(
    "--wait",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for running projections before rewriting the views.",
)
@click.pass_obj
def retention_apply(obj: Context, dry_run: bool, wait: float) -> None:
    """Destroy the content keys of every month older than its channel's period
    (INTERACTION_STORE_RETENTION, e.g. email=730d,voice=90d), then write the affected
    timeline rows again: subjects and snippets read [erased]. Addresses and the identity
    graph are kept (erasure removes those). Content is kept for its period and at most a
    month longer, since keys are per month.

    \b
    Example:
      INTERACTION_STORE_RETENTION=voice=90d,sms=365d interaction-store retention apply
    """
    periods = obj.settings.retention_periods()
    if not periods:
        raise click.ClickException(
            "no retention periods are set: set INTERACTION_STORE_RETENTION (e.g. voice=90d)"
        )
    with obj.store() as store:
        report = apply_retention(store, periods, dry_run=dry_run, wait=wait)
    verb = "would shred" if dry_run else "shredded"
    for item in report.channels:
        line = (
            f"{item.channel}: older than {item.cutoff:%Y-%m-%d %H:%M} ({_period(item.period)}):"
            f" {verb} {item.keys:,} keys sealing {item.events:,} events"
        )
        if not dry_run:
            line += f"; {item.rows_redacted:,} timeline rows rewritten"
        click.echo(line)
    if not report.projections_caught_up:
        err.print(
            "the projections are behind the log: rows they write later are projected from"
            " the shredded log, with placeholders"
        )


# audit --------------------------------------------------------------------------------


@cli.group(name="audit")
def audit_group() -> None:
    """Prove the log unaltered: seal it with signed checkpoints, verify it, prove events in it."""


def _signing_key(settings: Settings) -> signing.SigningKey:
    key = signing.signing_key_from_settings(settings)
    if key is None:
        raise ConfigurationError(
            "no signing key: set INTERACTION_STORE_AUDIT_SIGNING_KEY"
            " (`interaction-store audit keygen` makes one)"
        )
    return key


@audit_group.command(name="keygen")
def audit_keygen() -> None:
    """Print a new Ed25519 signing key and its public key.

    Keep the signing key secret (INTERACTION_STORE_AUDIT_SIGNING_KEY for `serve` and
    `audit seal`); give the public key to whoever verifies
    (INTERACTION_STORE_AUDIT_PUBLIC_KEY).
    """
    key = signing.SigningKey.generate()
    click.echo(f"INTERACTION_STORE_AUDIT_SIGNING_KEY={key.text()}")
    click.echo(f"INTERACTION_STORE_AUDIT_PUBLIC_KEY={key.public.text()}")
    click.echo(f"key id: {key.public.key_id}")


@audit_group.command(name="seal")
@click.pass_obj
def audit_seal(obj: Context) -> None:
    """Cover the events not yet sealed with a new signed checkpoint.

    `serve` seals every INTERACTION_STORE_AUDIT_SEAL_INTERVAL seconds by itself; this is
    for a deployment that runs the sealer on its own schedule.
    """
    key = _signing_key(obj.settings)
    with obj.store() as store, store.pool.connection() as conn:
        sealed = checkpoints.seal(conn, key)
    if sealed is None:
        click.echo("nothing new to seal")
        return
    click.echo(
        f"checkpoint {sealed.checkpoint_id}: {sealed.tree_size:,} events,"
        f" root {sealed.root_hash.hex()}, signed by key {sealed.key_id}"
    )


@audit_group.command(name="verify")
@click.option(
    "--from-checkpoint",
    type=click.IntRange(min=1),
    help="Verify only what came after this checkpoint (its signature is still checked).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_obj
def audit_verify(obj: Context, from_checkpoint: int | None, quiet: bool) -> None:
    """Recompute every stream's hash chain and the Merkle roots, and check each
    checkpoint's signature.

    Prints the first place each check fails (position, stream, what differs) and exits
    with status 1; status 0 only when everything holds.
    """
    key = signing.public_key_from_settings(obj.settings)
    with obj.store() as store:
        head = store.head()
        with (
            psycopg.connect(store.conninfo) as conn,
            _progress(quiet, head or None, "verifying") as (progress, task),
        ):
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            try:
                report = audit_verify_log(
                    conn,
                    key,
                    from_checkpoint=from_checkpoint,
                    progress=lambda n: progress.advance(task, n),
                )
            except LookupError as exc:
                raise click.BadParameter(str(exc), param_hint="--from-checkpoint") from None
    for failure in report.failures:
        err.print(f"[red]FAILED[/red] {failure}", highlight=False)
    click.echo(
        f"{report.events:,} events in {report.streams:,} streams and"
        f" {report.checkpoints:,} checkpoints: {'verified' if report.ok else 'NOT verified'}"
    )
    if not report.ok:
        sys.exit(1)


@audit_group.command(name="replay")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_obj
def audit_replay(obj: Context, quiet: bool) -> None:
    """Rebuild every view from the log into a schema of its own and compare it with the
    live views, row by row.

    Prints "identical", or each table's rows that only the live views or only the replay
    have (up to 20 each), and exits with status 1. The live views are not changed.
    """
    with obj.store() as store:
        total = store.head() * len(all_projections())
        with _progress(quiet, total or None, "replaying") as (progress, task):
            seen = [0]

            def advance(applied: int) -> None:
                progress.advance(task, max(0, applied - seen[0]) if applied >= seen[0] else applied)
                seen[0] = applied

            report = audit_replay_views(store, progress=advance)
    for difference in report.differences:
        err.print(
            f"[red]{difference.table}[/red] ({difference.projection}): {difference.count} rows"
            f" only in the {difference.side} view",
            highlight=False,
        )
        for row in difference.rows:
            err.print(f"  {orjson.dumps(row).decode()}", markup=False)
    verdict = "identical" if report.identical else "DIFFERENT"
    click.echo(
        f"replayed {report.events:,} events into {report.tables} tables"
        f" ({report.rows:,} live rows): {verdict}"
    )
    if not report.identical:
        sys.exit(1)


@audit_group.command(name="proof")
@click.argument("position", type=click.IntRange(min=1))
@click.option("--checkpoint", "checkpoint_id", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
def audit_proof(obj: Context, position: int, checkpoint_id: int | None, as_json: bool) -> None:
    """Print the inclusion proof of the event at POSITION in the latest checkpoint (or
    --checkpoint): its leaf, the checkpoint it is in, and the audit path (RFC 6962)."""
    with obj.store() as store, store.pool.connection() as conn:
        try:
            proof = checkpoints.prove_inclusion(conn, position, checkpoint_id)
        except LookupError as exc:
            raise click.BadParameter(str(exc), param_hint="POSITION") from None
    if proof is None and checkpoint_id is not None:
        raise click.ClickException(
            f"checkpoint {checkpoint_id} does not cover position {position}: there is no such"
            " checkpoint, or it was sealed before that event"
        )
    if proof is None:
        raise click.ClickException(f"no checkpoint covers position {position} yet: seal first")
    sealed = proof.checkpoint
    document = {
        "position": proof.position,
        "leaf_index": proof.leaf_index,
        "leaf_hash": proof.leaf_hash.hex(),
        "checkpoint": {
            "id": sealed.checkpoint_id,
            "tree_size": sealed.tree_size,
            "root_hash": sealed.root_hash.hex(),
            "sealed_at": signing.format_time(sealed.sealed_at),
            "key_id": sealed.key_id,
            "signature": base64.b64encode(sealed.signature).decode(),
        },
        "audit_path": [node.hex() for node in proof.path],
    }
    if as_json:
        click.echo(orjson.dumps(document).decode())
        return
    click.echo(f"event at position {proof.position} is leaf {proof.leaf_index:,}")
    click.echo(f"leaf hash   {proof.leaf_hash.hex()}")
    click.echo(
        f"checkpoint  {sealed.checkpoint_id}: {sealed.tree_size:,} events, root"
        f" {sealed.root_hash.hex()}"
    )
    for node in proof.path:
        click.echo(f"path        {node.hex()}")


@cli.group(name="keys")
def keys_group() -> None:
    """API keys: create (shown once), list, revoke."""


@keys_group.command(name="create")
@click.option("--name", required=True, help="Who or what uses the key.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(list(keys.SCOPES)),
    help="What the key may do (repeatable).",
)
@click.pass_obj
def keys_create(obj: Context, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print it. It is stored only as a hash: copy it now.

    \b
      interaction-store keys create --name crm-widget --scope timeline:read
    """
    with obj.store(migrate=True) as store:
        try:
            key, record = keys.create_key(store.pool, name, list(scopes))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--name") from None
    click.echo(key)
    err.print(f"key {record.key_id} ({record.name}): {', '.join(record.scopes)}; shown only once")


@keys_group.command(name="list")
@click.pass_obj
def keys_list(obj: Context) -> None:
    """The keys, without their secrets."""
    with obj.store() as store:
        records = keys.list_keys(store.pool)
    if not records:
        click.echo("no API keys yet: interaction-store keys create --name NAME --scope SCOPE")
    for record in records:
        state = f"revoked {record.revoked_at:%Y-%m-%d}" if record.revoked_at else "active"
        click.echo(
            f"{keys.PREFIX}{record.key_id}_…  {record.name:<24} {state:<18}"
            f" {', '.join(record.scopes)}  created {record.created_at:%Y-%m-%d}"
        )


@keys_group.command(name="revoke")
@click.argument("key_id")
@click.pass_obj
def keys_revoke(obj: Context, key_id: str) -> None:
    """Revoke a key by its id (as `keys list` shows it; the whole key works too)."""
    with obj.store() as store:
        if not keys.revoke_key(store.pool, key_id):
            raise click.ClickException(f"there is no key {key_id}")
    click.echo(f"revoked {key_id}")


# db -----------------------------------------------------------------------------------


@cli.group(name="db")
def db_group() -> None:
    """The database in use: print its URL, start or stop the embedded server."""


def _redacted(url: str) -> str:
    """The URL with its password masked, for printing."""
    params = conninfo_to_dict(url)
    if not params.get("password"):
        return url
    params["password"] = "***"
    return make_conninfo("", **params)


@db_group.command(name="url")
@click.pass_obj
def db_url(obj: Context) -> None:
    """Print the URL in use (the embedded server's, if it is running)."""
    if obj.settings.database_url:
        click.echo(_redacted(obj.settings.database_url))
        return
    url = EmbeddedPostgres(obj.settings.data_dir).running_url()
    if url is None:
        err.print("the embedded server is not running; start it with: interaction-store db start")
        sys.exit(1)
    click.echo(url)


@db_group.command(name="start")
@click.pass_obj
def db_start(obj: Context) -> None:
    """Start the embedded server and leave it running; print its URL."""
    if obj.settings.database_url:
        raise click.UsageError("a database URL is configured: there is no embedded server to start")
    server = EmbeddedPostgres(obj.settings.data_dir)
    click.echo(server.start(keep_running=True))


@db_group.command(name="stop")
@click.option("--force", is_flag=True, help="Stop even if other processes use it.")
@click.pass_obj
def db_stop(obj: Context, force: bool) -> None:
    """Stop the embedded server."""
    stopped = EmbeddedPostgres(obj.settings.data_dir).stop(force=force)
    click.echo("stopped" if stopped else "not running")


@db_group.command(name="status")
@click.pass_obj
def db_status(obj: Context) -> None:
    """Say which database is in use and whether the embedded server runs."""
    if obj.settings.database_url:
        click.echo(f"configured: {_redacted(obj.settings.database_url)}")
        return
    server = EmbeddedPostgres(obj.settings.data_dir)
    url = server.running_url()
    click.echo(f"embedded in {server.pgdata}: " + (f"running at {url}" if url else "stopped"))


if __name__ == "__main__":  # pragma: no cover
    main()


def _now() -> datetime:
    return datetime.now(UTC)
