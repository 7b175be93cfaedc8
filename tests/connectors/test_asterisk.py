"""Asterisk Master.csv rows (cdr_csv's standard columns) to call.completed."""

from __future__ import annotations

import csv
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from interaction_store.connectors.asterisk import CdrSource, MalformedCdr, cdr_event
from interaction_store.events import parse_events

SOURCE = CdrSource(our_numbers={"+14155550100"}, timezone=ZoneInfo("America/Los_Angeles"))
#: A Master.csv as cdr_csv writes it (loguniqueid and loguserfield on): an answered call,
#: a voicemail, a missed call, an outbound call and an internal one.
MASTER_CSV = Path(__file__).parent / "fixtures" / "Master.csv"


def rows() -> list[list[str]]:
    with MASTER_CSV.open(newline="") as f:
        return list(csv.reader(f))


def test_each_kind_of_record_maps_to_its_call() -> None:
    answered, voicemail, missed, outbound, internal = (cdr_event(r, SOURCE) for r in rows())
    assert answered is not None
    assert answered["data"]["status"] == "answered"
    assert answered["data"]["duration_s"] == 180
    assert answered["data"]["direction"] == "inbound"
    assert answered["data"]["contact"] == {"kind": "phone", "value": "6285550187"}
    assert answered["data"]["external_id"].startswith("1764522000.1-")
    assert answered["occurred_at"] == "2026-11-30T09:00:00-08:00"  # the server's zone
    assert voicemail is not None
    assert voicemail["data"]["status"] == "voicemail"
    assert missed is not None
    assert missed["data"]["status"] == "missed"
    assert missed["data"]["duration_s"] == 0
    assert outbound is not None
    assert outbound["data"]["direction"] == "outbound"
    assert outbound["data"]["contact"]["value"] == "6285550187"
    assert internal is None  # extension to extension: no customer
    models = parse_events([e for e in (answered, voicemail, missed, outbound) if e])
    contacts = {m.data.contact.value for m in models}  # type: ignore[attr-defined]
    assert contacts == {"+16285550187", "+442079460958"}


def test_records_sharing_a_uniqueid_are_told_apart() -> None:
    first, second = rows()[0], list(rows()[0])
    second[6] = "SIP/2002-0010"  # the same call, transferred to another extension
    ids = {cdr_event(r, SOURCE)["data"]["external_id"] for r in (first, second)}  # type: ignore[index]
    assert len(ids) == 2


def test_a_record_without_uniqueid_gets_a_stable_digest_id() -> None:
    row = rows()[0][:16]
    first = cdr_event(row, SOURCE)
    assert first is not None
    assert first["data"]["external_id"].startswith("cdr-")
    again = cdr_event(list(row), SOURCE)
    assert again is not None
    assert again["data"]["external_id"] == first["data"]["external_id"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({14: "MAYBE"}, "disposition"),
        ({9: "30/11/2026 09:00"}, "start"),
        ({13: "many"}, "billsec"),
        ({13: "²"}, "billsec"),
        ({13: "99999999999999999999999"}, "billsec"),
        ({1: ""}, "src and dst"),
    ],
)
def test_a_malformed_record_says_what_is_wrong(change: dict[int, str], reason: str) -> None:
    row = rows()[0]
    for index, value in change.items():
        row[index] = value
    with pytest.raises(MalformedCdr, match=reason):
        cdr_event(row, SOURCE)


def test_a_short_row_is_not_a_cdr() -> None:
    with pytest.raises(MalformedCdr, match="columns"):
        cdr_event(["a", "b"], SOURCE)
