"""The IMAP poller against a real IMAP server: Dovecot on loopback, fed over IMAP itself.

The inbox and the sent folder are stored once each; a restart, a refetch after a crash,
and a renumbered folder (new UIDVALIDITY) store nothing twice; polling leaves every
message unread; a message that cannot be attributed is reported by its UID and the poll
goes on. Needs Debian's ``dovecot-imapd`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from interaction_store.connectors.email import EmailSource
from interaction_store.imap import ImapError, ImapPoller, ImapServer
from interaction_store.store import Store
from tests.helpers import cli_command, count_events

DOVECOT = shutil.which("dovecot") or next(
    (p for p in ("/usr/sbin/dovecot",) if Path(p).exists()), None
)
pytestmark = pytest.mark.skipif(
    DOVECOT is None, reason="needs Dovecot: apt-get install dovecot-imapd"
)

USER, PASSWORD = "help@acme.example", "imap-test-password"  # our address, any login's password
SOURCE = EmailSource("support", ["help@acme.example"])


@dataclass(frozen=True)
class Dovecot:
    """The server, logged in to as ``login``: each test has a mailbox of its own."""

    port: int
    login: str

    def server(self, password: str = PASSWORD) -> ImapServer:
        return ImapServer("127.0.0.1", self.login, password, port=self.port, security="plain")

    def client(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        imap.login(self.login, PASSWORD)
        return imap

    def deliver(self, folder: str, *messages: bytes) -> None:
        imap = self.client()
        try:
            for raw in messages:
                status, data = imap.append(f'"{folder}"', None, None, raw)
                assert status == "OK", data
        finally:
            imap.logout()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(root: Path, port: int) -> str:
    """A Dovecot serving one folder tree on loopback, plaintext logins with one password.
    As root, Dovecot's own users run it (it refuses root for logins and mail)."""
    if os.geteuid() == 0:
        internal, login = "dovecot", "dovenull"
        mail = pwd.getpwnam("dovecot")
        shutil.chown(root / "mail", mail.pw_uid, mail.pw_gid)
    else:
        internal = login = pwd.getpwuid(os.geteuid()).pw_name
        mail = pwd.getpwuid(os.geteuid())
    return f"""
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {mail.pw_uid}
mail_location = maildir:{root}/mail/%n
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={root}/mail/%n
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


@pytest.fixture(scope="module")
def dovecot_port() -> Iterator[int]:
    assert DOVECOT is not None
    root = Path(tempfile.mkdtemp(prefix="is-dovecot-"))
    root.chmod(0o755)  # Dovecot's own users must reach the folders and sockets in it
    for sub in ("run", "state", "mail"):
        (root / sub).mkdir(mode=0o755)
    port = _free_port()
    (root / "dovecot.conf").write_text(_config(root, port))
    process = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # it logs to dovecot.log
    )
    try:
        server = Dovecot(port, "probe")
        deadline = time.monotonic() + 15
        while True:
            try:
                server.client().logout()
                break
            except (OSError, imaplib.IMAP4.error):
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (root / "dovecot.log").read_text()
                        if (root / "dovecot.log").exists()
                        else ""
                    )
                    raise RuntimeError(f"Dovecot did not start:\n{log}") from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dovecot(dovecot_port: int) -> Dovecot:
    server = Dovecot(dovecot_port, f"agent-{uuid4().hex[:12]}")
    imap = server.client()  # the first login creates the mailbox with its INBOX
    assert imap.create('"Sent"')[0] == "OK"
    imap.logout()
    return server


def mail(n: int, *, sender: str = "dev.patel@example.com", to: str = USER, **headers: str) -> bytes:
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: Router drops at night ({n})",
        f"Date: Mon, 30 Nov 2026 09:{n:02d}:00 +0000",
        f"Message-ID: <m{n}@example.com>",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"Message {n}: it dropped again at 02:10 — ça coupe encore.",
    ]
    return "\r\n".join(lines).encode()


def event_types(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT type, payload->>'external_id' FROM events ORDER BY position"
        ).fetchall()
    return [(t, e) for t, e in rows]


def test_the_inbox_and_the_sent_folder_are_stored_once_each(
    dovecot: Dovecot, store: Store, database_url: str
) -> None:
    dovecot.deliver("INBOX", mail(1), mail(2))
    reply = mail(
        3,
        sender=USER,
        to="dev.patel@example.com",
        In_Reply_To="<m1@example.com>",
        References="<m1@example.com>",
    )
    dovecot.deliver("Sent", reply)
    poller = ImapPoller(store, dovecot.server(), SOURCE, ["INBOX", "Sent"])
    inbox, sent = poller.poll()
    assert (inbox.fetched, inbox.tally.appended, inbox.last_uid) == (2, 2, 2)
    assert (sent.fetched, sent.tally.appended, sent.last_uid) == (1, 1, 1)
    assert event_types(database_url) == [
        ("email.received", "support:<m1@example.com>"),
        ("email.received", "support:<m2@example.com>"),
        ("email.sent", "support:<m3@example.com>"),
    ]
    with psycopg.connect(database_url) as conn:
        threads = conn.execute(
            "SELECT payload->>'thread_key' FROM events ORDER BY position"
        ).fetchall()
    assert threads[0] == threads[2]  # our reply is in the thread it answers

    # Polling opened the folders read-only: the customer's mail is still unread.
    imap = dovecot.client()
    imap.select('"INBOX"', readonly=True)
    _, flags = imap.uid("FETCH", "1:*", "(FLAGS)")
    imap.logout()
    assert all(b"\\Seen" not in line for line in flags if isinstance(line, bytes))


def test_a_restarted_poller_fetches_only_what_is_new(
    dovecot: Dovecot, store: Store, database_url: str
) -> None:
    dovecot.deliver("INBOX", mail(1), mail(2))
    ImapPoller(store, dovecot.server(), SOURCE).poll()
    restarted = ImapPoller(store, dovecot.server(), SOURCE)
    (quiet,) = restarted.poll()
    assert quiet.fetched == 0
    dovecot.deliver("INBOX", mail(3))
    (fresh,) = ImapPoller(store, dovecot.server(), SOURCE).poll()
    assert (fresh.fetched, fresh.tally.appended, fresh.last_uid) == (1, 1, 3)
    assert count_events(database_url) == 3


def test_a_batch_fetched_again_after_a_crash_stores_nothing_twice(
    dovecot: Dovecot, store: Store, database_url: str
) -> None:
    dovecot.deliver("INBOX", *(mail(n) for n in range(1, 6)))
    poller = ImapPoller(store, dovecot.server(), SOURCE, batch_size=2)
    (first,) = poller.poll()
    assert first.tally.appended == 5
    # As if the poller died after storing UIDs 3 and 4 but before saving the cursor.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE imap_cursors SET last_uid = 2")
    (again,) = poller.poll()
    assert (again.fetched, again.tally.appended, again.tally.already_present) == (3, 0, 3)
    assert count_events(database_url) == 5


def test_a_renumbered_folder_is_read_again_and_only_new_mail_is_stored(
    dovecot: Dovecot, store: Store, database_url: str
) -> None:
    dovecot.deliver("Sent", mail(1, sender=USER, to="a@example.com"))
    poller = ImapPoller(store, dovecot.server(), SOURCE, ["Sent"])
    (before,) = poller.poll()
    imap = dovecot.client()  # the folder is rebuilt: it gets a new UIDVALIDITY
    assert imap.delete('"Sent"')[0] == "OK"
    assert imap.create('"Sent"')[0] == "OK"
    imap.logout()
    dovecot.deliver(
        "Sent", mail(1, sender=USER, to="a@example.com"), mail(2, sender=USER, to="b@example.com")
    )
    (after,) = poller.poll()
    assert after.uidvalidity != before.uidvalidity
    assert (after.fetched, after.tally.appended, after.tally.already_present) == (2, 1, 1)
    assert poller.cursor("Sent") == (after.uidvalidity, 2)
    assert count_events(database_url) == 2


def test_a_message_that_cannot_be_attributed_is_reported_and_the_poll_goes_on(
    dovecot: Dovecot, store: Store, database_url: str
) -> None:
    no_sender = b"To: help@acme.example\r\nSubject: ?\r\nMessage-ID: <x@example.com>\r\n\r\nhi\r\n"
    dovecot.deliver("INBOX", mail(1), no_sender, mail(2))
    poller = ImapPoller(store, dovecot.server(), SOURCE)
    (done,) = poller.poll()
    assert done.tally.appended == 2
    assert [uid for uid, _ in done.rejections()] == [2]
    assert "From" in next(done.rejections())[1]
    (next_poll,) = poller.poll()  # reported once: the cursor moved past it
    assert next_poll.fetched == 0
    assert count_events(database_url) == 2


def test_a_new_message_reusing_a_message_id_is_reported_and_the_poll_goes_on(
    dovecot: Dovecot, store: Store, database_url: str
) -> None:
    """A resend with other content under the same Message-ID (a broken mailer), found
    alone in its poll: reported, and the cursor moves past it."""
    dovecot.deliver("INBOX", mail(1))
    poller = ImapPoller(store, dovecot.server(), SOURCE)
    poller.poll()
    dovecot.deliver("INBOX", mail(1).replace(b"Message 1:", b"Another text:"))
    (done,) = poller.poll()
    assert [uid for uid, _ in done.rejections()] == [2]
    assert "different content" in next(done.rejections())[1]
    dovecot.deliver("INBOX", mail(2))
    (later,) = poller.poll()
    assert (later.fetched, later.tally.appended) == (1, 1)
    assert count_events(database_url) == 2


def test_a_wrong_password_or_folder_is_a_clear_error(dovecot: Dovecot, store: Store) -> None:
    with pytest.raises(ImapError, match="login refused"):
        ImapPoller(store, dovecot.server("wrong"), SOURCE).poll()
    with pytest.raises(ImapError, match="cannot open folder 'Archive'"):
        ImapPoller(store, dovecot.server(), SOURCE, ["Archive"]).poll()


def test_the_running_poller_survives_a_server_that_is_down(store: Store) -> None:
    server = ImapServer("127.0.0.1", "agent", PASSWORD, port=_free_port(), security="plain")
    poller = ImapPoller(store, server, SOURCE)
    stop = threading.Event()
    polls: list[Any] = []
    thread = threading.Thread(target=poller.run, args=(0.05, stop, polls.append))
    thread.start()
    time.sleep(0.5)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert polls == []  # every attempt failed, and the loop kept going until stopped


def test_connect_imap_once_from_the_command_line(dovecot: Dovecot, database_url: str) -> None:
    dovecot.deliver("INBOX", mail(1))
    args = ["connect", "imap", "--host", "127.0.0.1", "--port", str(dovecot.port),
            "--security", "plain", "--user", dovecot.login, "--once", "--quiet"]  # fmt: skip
    env = {**os.environ, "INTERACTION_STORE_IMAP_PASSWORD": PASSWORD}
    done = subprocess.run(
        cli_command(database_url, *args), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "INBOX: appended 1, already present 0, rejected 0 (last UID 1)" in done.stdout
    assert "Sent: nothing new (last UID 0)" in done.stdout
    env.pop("INTERACTION_STORE_IMAP_PASSWORD")
    refused = subprocess.run(
        cli_command(database_url, *args), env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "INTERACTION_STORE_IMAP_PASSWORD" in refused.stderr
    assert count_events(database_url) == 1
