"""Asterisk call detail records (``cdr_csv``'s ``Master.csv``) to ``call.completed``.

The standard columns, in order: accountcode, src, dst, dcontext, clid, channel,
dstchannel, lastapp, lastdata, start, answer, end, duration, billsec, disposition,
amaflags, then uniqueid and userfield when ``loguniqueid`` / ``loguserfield`` are on.
Times are the server's local time (``cdr_csv`` writes no zone): the caller says which
zone that is.

- Direction: a call from one of our numbers or an internal extension (digits only, at
  most ``extension_digits`` long) is outbound, to ``dst``; any other is inbound, from
  ``src``.
- Status: ``ANSWERED`` is answered with its ``billsec``, unless the last application was
  ``VoiceMail`` (a voicemail); ``NO ANSWER``, ``BUSY``, ``FAILED`` and ``CONGESTION`` are
  missed.
- Identity: the ``uniqueid`` (when the record has one) with a digest of the whole row,
  since one call can leave several records with one uniqueid; importing the same file
  twice adds nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

__all__ = ["CDR_COLUMNS", "CdrSource", "MalformedCdr", "cdr_event"]

CDR_COLUMNS = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
    "lastdata", "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
    "uniqueid", "userfield",
)  # fmt: skip
_REQUIRED = 15  # up to disposition
_MISSED = {"NO ANSWER", "BUSY", "FAILED", "CONGESTION"}


class MalformedCdr(ValueError):
    """A row that is not a call detail record."""


@dataclass(frozen=True)
class CdrSource:
    """What the records do not say: our own numbers, how long an internal extension can
    be, and the zone the server writes its times in."""

    our_numbers: Collection[str]
    timezone: tzinfo
    extension_digits: int = 6

    def ours(self, number: str) -> bool:
        bare = number.strip()
        return bare in self.our_numbers or (bare.isdigit() and len(bare) <= self.extension_digits)


def cdr_event(row: Sequence[str], source: CdrSource) -> dict[str, Any] | None:
    """The event of one ``Master.csv`` row; None for a record of an internal call."""
    if len(row) < _REQUIRED:
        raise MalformedCdr(f"{len(row)} columns; a CDR has at least {_REQUIRED}")
    record = dict(zip(CDR_COLUMNS, (value.strip() for value in row), strict=False))
    src, dst = record["src"], record["dst"]
    if not src or not dst:
        raise MalformedCdr("src and dst are required")
    outbound = source.ours(src)
    if outbound and source.ours(dst):
        return None  # one extension calling another: no customer on the line
    disposition = record["disposition"].upper()
    if disposition == "ANSWERED":
        status = "voicemail" if record["lastapp"].lower() == "voicemail" else "answered"
    elif disposition in _MISSED:
        status = "missed"
    else:
        raise MalformedCdr(f"disposition {record['disposition']!r} is not one Asterisk writes")
    started = _local_time(record["start"], "start", source.timezone)
    # One call can leave several records with one uniqueid (transfers, queue legs): the
    # digest of the row tells them apart, and is the same when the file is read again.
    digest = hashlib.sha256("\x1f".join(row).encode()).hexdigest()[:24]
    external = f"{record['uniqueid']}-{digest}" if record.get("uniqueid") else f"cdr-{digest}"
    data: dict[str, Any] = {
        "direction": "outbound" if outbound else "inbound",
        "contact": {"kind": "phone", "value": dst if outbound else src},
        "external_id": external,
        "status": status,
        "duration_s": _seconds(record["billsec"], "billsec") if status == "answered" else 0,
        "attributes": {
            k: record[k] for k in ("channel", "dstchannel", "dcontext", "clid") if record.get(k)
        },
    }
    return {
        "type": "call.completed",
        "occurred_at": started.isoformat(),
        "data": data,
        "metadata": {"connector": "asterisk-cdr"},
    }


def _local_time(text: str, field: str, zone: tzinfo) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
    except ValueError:
        raise MalformedCdr(f"{field} {text!r} is not YYYY-MM-DD HH:MM:SS") from None


def _seconds(text: str, field: str) -> int:
    # ASCII digits only ("²" is a digit to str.isdigit), and below 32 years of seconds
    if not _SECONDS.fullmatch(text):
        raise MalformedCdr(f"{field} {text!r} is not a number of seconds")
    return int(text)


_SECONDS = re.compile(r"[0-9]{1,9}")
