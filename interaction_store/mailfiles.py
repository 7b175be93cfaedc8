"""Reading mail from disk for ``interaction-store import email``: one ``.eml`` file, a
folder of them, a Maildir, or an mbox file; each message as its raw bytes.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path

__all__ = ["count_messages", "read_messages"]


def read_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """Each message under ``path`` as (a label to report it by, its bytes), in order."""
    if path.is_dir():
        if all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            maildir = mailbox.Maildir(path, factory=None, create=False)
            for key in sorted(maildir.keys()):
                yield f"{path.name}/{key}", maildir.get_bytes(key)
            return
        for file in sorted(path.rglob("*.eml")):
            yield str(file.relative_to(path)), file.read_bytes()
        return
    if path.suffix.lower() == ".eml":
        yield path.name, path.read_bytes()
        return
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        for number, key in enumerate(box.iterkeys(), start=1):
            yield f"{path.name} message {number}", box.get_bytes(key)
    finally:
        box.close()


def count_messages(path: Path) -> int | None:
    """How many messages ``read_messages`` will yield, when that is cheap to know."""
    if path.is_dir():
        if all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            return len(mailbox.Maildir(path, factory=None, create=False))
        return sum(1 for _ in path.rglob("*.eml"))
    if path.suffix.lower() == ".eml":
        return 1
    return None  # an mbox is only counted by reading it
