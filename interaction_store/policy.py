"""Service levels and priority: the business rules the views apply when read.

Both are applied at read time, not stored, so changing them never needs a rebuild.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Final

__all__ = [
    "DEFAULT_FIRST_RESPONSE",
    "ServiceLevels",
    "channel_durations",
    "parse_duration",
    "parse_retention",
    "priority",
]

#: How soon each channel expects a first response, by default.
DEFAULT_FIRST_RESPONSE: Final[Mapping[str, timedelta]] = MappingProxyType(
    {
        "voice": timedelta(0),  # a missed call or voicemail: call back now
        "chat": timedelta(minutes=2),
        "sms": timedelta(minutes=15),
        "twitter": timedelta(hours=1),
        "email": timedelta(hours=4),
    }
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LONGEST = timedelta(days=36525)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``2m``, ``4h``, ``1d`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 2m, 4h, 1d)")
    seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds > _LONGEST.total_seconds():  # due times and cut-offs must stay dates
        raise ValueError(f"{text!r} is longer than 100 years")
    return timedelta(seconds=seconds)


def channel_durations(text: str) -> dict[str, timedelta]:
    """``email=4h,chat=2m`` as a duration per channel; ``ValueError`` naming the bad part."""
    durations = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        channel, sep, duration = part.partition("=")
        channel = channel.strip()
        if not sep or channel not in DEFAULT_FIRST_RESPONSE:
            raise ValueError(
                f"{part!r}: expected channel=duration with a channel among"
                f" {', '.join(DEFAULT_FIRST_RESPONSE)}"
            )
        durations[channel] = parse_duration(duration)
    return durations


def parse_retention(text: str) -> dict[str, timedelta]:
    """From ``email=730d,voice=90d`` (``INTERACTION_STORE_RETENTION``): how long each named
    channel's content is kept."""
    periods = channel_durations(text)
    for channel, period in periods.items():
        if period <= timedelta(0):
            raise ValueError(f"{channel}: a retention period must be longer than zero")
    return periods


@dataclass(frozen=True, slots=True)
class ServiceLevels:
    """The first-response target of each channel. Channels not named keep the default."""

    first_response: Mapping[str, timedelta] = field(default_factory=lambda: DEFAULT_FIRST_RESPONSE)

    @classmethod
    def parse(cls, text: str) -> ServiceLevels:
        """From ``email=4h,chat=2m`` (the form of ``INTERACTION_STORE_FIRST_RESPONSE``)."""
        return cls(MappingProxyType(dict(DEFAULT_FIRST_RESPONSE) | channel_durations(text)))

    def due(self, channel: str) -> timedelta:
        return self.first_response.get(channel, DEFAULT_FIRST_RESPONSE["email"])


#: Churn risk assumed for a customer whose risk is unknown.
UNKNOWN_CHURN_RISK: Final = 0.5


def priority(account_value: float | None, churn_risk: float | None) -> float:
    """The value at stake if the customer is let down, in the account's currency:

        priority = account_value * (0.1 + 0.9 * churn_risk)

    An unknown account value counts as 0, an unknown churn risk as 0.5. The channel plays
    no part: a $1M account at risk outranks a $500 one whether it emails or calls, and a
    $1M account at no risk (100,000) still outranks a $500 one at full risk (500).
    """
    value = account_value or 0.0
    risk = UNKNOWN_CHURN_RISK if churn_risk is None else churn_risk
    return round(value * (0.1 + 0.9 * risk), 2)
