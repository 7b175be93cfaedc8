"""Polling an IMAP mailbox (``interaction-store connect imap``): the inbox and the sent
folder, each message once.

Each folder is read by UID. After every batch is stored, the folder's cursor (its
UIDVALIDITY and the last UID stored) is saved in ``imap_cursors``, so a poller that
restarts goes on after the last message it stored: nothing is missed and nothing is
fetched twice. A crash between storing a batch and saving the cursor fetches that batch
again, which stores nothing twice (a message's id is its mailbox and Message-ID). When
the server gives a folder a new UIDVALIDITY (it renumbered it), the folder is read again
from its first message, which again stores only what is new.

Folders are opened read-only (EXAMINE) and bodies fetched with ``BODY.PEEK[]``: polling
never marks a message as seen or changes the mailbox in any way.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from interaction_store.batches import Tally, append_entries
from interaction_store.connectors.email import EmailSource, MalformedEmail, email_event
from interaction_store.store import Store

__all__ = ["FolderPass", "ImapError", "ImapPoller", "ImapServer"]

log = logging.getLogger(__name__)

Security = Literal["ssl", "starttls", "plain"]
_UID = re.compile(rb"\bUID (\d+)")


class ImapError(Exception):
    """The server refused a command (login, a folder that does not exist, ...)."""


@dataclass(frozen=True)
class ImapServer:
    """Where the mailbox is and how to log in to it."""

    host: str
    user: str
    password: str = field(repr=False)
    port: int | None = None
    #: ``ssl`` (IMAPS, port 993), ``starttls`` (port 143, upgraded), or ``plain``
    #: (no encryption: for a server on loopback only).
    security: Security = "ssl"
    timeout: float = 30.0

    @property
    def address(self) -> str:
        """The mailbox's name in the cursor table."""
        return f"imap://{self.user}@{self.host}:{self.port_in_use}"

    @property
    def port_in_use(self) -> int:
        return self.port or (993 if self.security == "ssl" else 143)

    def connect(self) -> imaplib.IMAP4:
        context = ssl.create_default_context()
        imap: imaplib.IMAP4
        if self.security == "ssl":
            imap = imaplib.IMAP4_SSL(
                self.host, self.port_in_use, ssl_context=context, timeout=self.timeout
            )
        else:
            imap = imaplib.IMAP4(self.host, self.port_in_use, timeout=self.timeout)
            if self.security == "starttls":
                imap.starttls(context)
        try:
            imap.login(self.user, self.password)
        except imaplib.IMAP4.error as exc:
            imap.shutdown()
            raise ImapError(f"{self.address}: login refused ({_text(exc)})") from None
        return imap


@dataclass
class FolderPass:
    """One folder's share of a poll."""

    folder: str
    uidvalidity: int
    #: The last UID stored, after this pass.
    last_uid: int
    #: Messages fetched in this pass.
    fetched: int = 0
    tally: Tally = field(default_factory=Tally)
    #: Rejected messages by entry number: their UID.
    uids: dict[int, int] = field(default_factory=dict)

    def rejections(self) -> Iterator[tuple[int, str]]:
        """(UID, reason) of each message that could not be stored."""
        for number, reason in self.tally.rejected:
            yield self.uids[number], reason


class ImapPoller:
    """Reads new mail from ``folders`` of one IMAP mailbox into the store."""

    def __init__(
        self,
        store: Store,
        server: ImapServer,
        source: EmailSource,
        folders: Sequence[str] = ("INBOX",),
        *,
        batch_size: int = 100,
    ) -> None:
        if not folders:
            raise ValueError("name at least one folder")
        self.store = store
        self.server = server
        self.source = source
        self.folders = tuple(folders)
        self.batch_size = batch_size

    def poll(self, on_message: Callable[[str], None] | None = None) -> list[FolderPass]:
        """Store every message that arrived since the last poll, folder by folder."""
        imap = self.server.connect()
        try:
            return [self._folder(imap, folder, on_message) for folder in self.folders]
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                imap.logout()

    def run(
        self,
        interval: float,
        stop: threading.Event,
        report: Callable[[list[FolderPass]], None] = lambda _: None,
    ) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set. A server that cannot be
        reached, or drops the connection, is tried again at the next poll."""
        while not stop.is_set():
            try:
                report(self.poll())
            except (OSError, imaplib.IMAP4.error, ImapError) as exc:
                log.warning("IMAP poll of %s failed: %s", self.server.address, exc)
            stop.wait(interval)

    def cursor(self, folder: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, last UID stored) of a folder, or None before its first poll."""
        with self.store.pool.connection() as conn:
            row = conn.execute(
                "SELECT uidvalidity, last_uid FROM imap_cursors WHERE mailbox = %s AND folder = %s",
                (self.server.address, folder),
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def _save(self, folder: str, uidvalidity: int, last_uid: int) -> None:
        with self.store.pool.connection() as conn:
            conn.execute(
                """
                INSERT INTO imap_cursors (mailbox, folder, uidvalidity, last_uid)
                VALUES (%s, %s, %s, %s)
                ON CONFLICT (mailbox, folder) DO UPDATE
                   SET uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid,
                       updated_at = now()
                """,
                (self.server.address, folder, uidvalidity, last_uid),
            )

    def _folder(
        self, imap: imaplib.IMAP4, folder: str, on_message: Callable[[str], None] | None
    ) -> FolderPass:
        status, data = imap.select(_quoted(folder), readonly=True)
        if status != "OK":
            raise ImapError(f"{self.server.address}: cannot open folder {folder!r}: {_text(data)}")
        _, validity = imap.response("UIDVALIDITY")
        uidvalidity = int(validity[0]) if validity and validity[0] else 0
        cursor = self.cursor(folder)
        last = cursor[1] if cursor is not None and cursor[0] == uidvalidity else 0
        if cursor is not None and cursor[0] != uidvalidity:
            log.info("%s %s has a new UIDVALIDITY: reading it again", self.server.address, folder)
        done = FolderPass(folder, uidvalidity, last)
        status, data = imap.uid("SEARCH", f"UID {last + 1}:*")
        if status != "OK":
            raise ImapError(f"{self.server.address}: search of {folder!r} failed: {_text(data)}")
        # "n:*" always matches the last message, even when its UID is below n.
        uids = sorted(uid for uid in (int(u) for u in (data[0] or b"").split()) if uid > last)
        for start in range(0, len(uids), self.batch_size):
            chunk = uids[start : start + self.batch_size]
            entries = []
            for uid, raw in self._fetch(imap, folder, chunk):
                done.fetched += 1
                number = done.fetched
                done.uids[number] = uid
                if on_message is not None:
                    on_message(folder)
                try:
                    entries.append((number, email_event(raw, self.source)))
                except (MalformedEmail, ValueError, LookupError) as exc:
                    done.tally.rejected.append((number, str(exc)))
            append_entries(self.store, entries, done.tally)
            done.last_uid = chunk[-1]
            self._save(folder, uidvalidity, done.last_uid)
        if cursor is None and not uids:
            self._save(folder, uidvalidity, last)
        return done

    def _fetch(
        self, imap: imaplib.IMAP4, folder: str, uids: list[int]
    ) -> Iterator[tuple[int, bytes]]:
        status, data = imap.uid("FETCH", ",".join(map(str, uids)), "(UID BODY.PEEK[])")
        if status != "OK":
            raise ImapError(f"{self.server.address}: fetch from {folder!r} failed: {_text(data)}")
        found: dict[int, bytes] = {}
        pending: bytes | None = None
        for item in data:
            # A message is (b'3 (UID 7 BODY[] {123}', raw) then b')'; a server may put the
            # UID after the literal instead, in the closing part (b' UID 7)').
            if isinstance(item, tuple):
                head, raw = item[0], item[1]
                match = _UID.search(head)
                if match:
                    found[int(match.group(1))] = raw
                else:
                    pending = raw
            elif isinstance(item, bytes) and pending is not None:
                match = _UID.search(item)
                if match:
                    found[int(match.group(1))] = pending
                pending = None
        for uid in uids:
            if uid in found:  # a message expunged meanwhile is simply gone
                yield uid, found[uid]


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
