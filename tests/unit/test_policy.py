"""Durations in settings: service levels and retention periods."""

from __future__ import annotations

from datetime import timedelta

import pytest

from interaction_store.policy import ServiceLevels, parse_duration, parse_retention

READS = [
    ("90s", timedelta(seconds=90)),
    ("2m", timedelta(minutes=2)),
    ("4h", timedelta(hours=4)),
    ("1.5d", timedelta(hours=36)),
    ("30", timedelta(seconds=30)),
    ("36525d", timedelta(days=36525)),
]


@pytest.mark.parametrize(("text", "duration"), READS)
def test_a_duration_reads_in_its_unit(text: str, duration: timedelta) -> None:
    assert parse_duration(text) == duration


@pytest.mark.parametrize("text", ["36526d", "3000000d", "99999999999d", "3155760001"])
def test_a_duration_beyond_100_years_is_refused(text: str) -> None:
    """A due time or a cut-off that long is no date (a target meant as 'never' made every
    read of a conversation on that channel fail)."""
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_duration(text)
    with pytest.raises(ValueError, match="longer than 100 years"):
        ServiceLevels.parse(f"email={text}")
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_retention(f"voice={text}")
