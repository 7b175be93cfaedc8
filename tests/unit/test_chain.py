"""The hash chain's arithmetic, independent of the database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st

from interaction_store.audit.chain import (
    ZERO_HASH,
    ChainRow,
    content_digest,
    link_hash,
    metadata_digest,
    verify_chain,
)

T = datetime(2026, 11, 2, tzinfo=UTC)


def build(n: int) -> list[ChainRow]:
    rows, prev = [], ZERO_HASH
    for version in range(1, n + 1):
        event_id, data, meta = uuid4(), {"text": f"m{version}", "n": version}, {"actor": "t"}
        digest = content_digest(
            event_id=event_id, stream_id="s", type="sms.received", schema_version=1,
            occurred_at=T, data=data,
        )  # fmt: skip
        recorded = T + timedelta(seconds=version)
        link = link_hash(prev, digest, metadata_digest(meta), version, recorded)
        rows.append(
            ChainRow(version, event_id, "s", version, "sms.received", 1, T, recorded, data, meta,
                     digest, link, prev)
        )  # fmt: skip
        prev = link
    return rows


def test_an_intact_chain_verifies() -> None:
    rows = build(5)
    report = verify_chain("s", rows)
    assert report.ok
    assert report.checked == 5
    assert report.head_hash == rows[-1].hash


def test_a_removed_tail_still_chains() -> None:
    """What a stream alone cannot show: the log-wide checkpoints have to."""
    assert verify_chain("s", build(5)[:4]).ok


def test_content_digest_ignores_key_order_but_not_values() -> None:
    event_id = uuid4()
    common = {
        "event_id": event_id,
        "stream_id": "s",
        "type": "t",
        "schema_version": 1,
        "occurred_at": T,
    }
    assert content_digest(**common, data={"a": 1, "b": 2}) == content_digest(
        **common, data={"b": 2, "a": 1}
    )
    assert content_digest(**common, data={"a": 1}) != content_digest(**common, data={"a": 2})


@given(
    st.integers(min_value=0, max_value=5),
    st.sampled_from(["data", "metadata", "recorded", "delete", "swap"]),
)
def test_any_change_breaks_the_chain_at_its_place(victim: int, change: str) -> None:
    rows = build(6)
    if change == "data":
        rows[victim] = replace(rows[victim], data={"text": "tampered"})
    elif change == "metadata":
        rows[victim] = replace(rows[victim], metadata={"actor": "mallory"})
    elif change == "recorded":
        rows[victim] = replace(
            rows[victim], recorded_at=rows[victim].recorded_at + timedelta(microseconds=1)
        )
    elif change == "delete":
        if victim == 5:
            victim = 4  # removing the last one is test_a_removed_tail_still_chains
        del rows[victim]
    else:
        other = (victim + 1) % 6
        rows[victim], rows[other] = rows[other], rows[victim]
    report = verify_chain("s", rows)
    assert not report.ok
    assert report.broken is not None
    first_touched = min(victim, (victim + 1) % 6) if change == "swap" else victim
    assert report.broken.stream_version == first_touched + 1
