"""Contacts: the addresses interactions arrive from, normalised so one person is one key.

An email is trimmed and lower-cased; a phone number becomes E.164 (``phonenumbers``, with a
default region for numbers written without a country code); an X/Twitter handle loses its
``@`` and its case (a numeric user id is kept as digits); a chat visitor id is trimmed.
"""

from __future__ import annotations

import functools
import re
from typing import Final, Literal, get_args

import phonenumbers

__all__ = ["CONTACT_KINDS", "ContactKind", "normalise_contact", "parse_contact_string"]

ContactKind = Literal["email", "phone", "twitter", "chat"]
CONTACT_KINDS: Final[tuple[str, ...]] = get_args(ContactKind)

_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+\.[^@\s<>()\[\],;:\".]{2,}$")
_HANDLE = re.compile(r"^[a-z0-9_]{1,15}$")
_USER_ID = re.compile(r"^[0-9]{1,20}$")
_VISITOR = re.compile(r"^\S{1,200}$")


@functools.lru_cache(maxsize=65536)
def normalise_contact(kind: str, value: str, *, phone_region: str = "US") -> str:
    """Return the canonical form of ``value`` for ``kind``, or raise ``ValueError`` saying why.

    Cached: the same customers write again and again, and parsing a phone number is slow.
    """
    value = value.strip()
    if not value:
        raise ValueError("the contact value is empty")
    if "\x00" in value:  # no address holds one, and PostgreSQL's text cannot
        raise ValueError(f"{value!r} holds a NUL character")
    if kind == "email":
        email = value.lower()
        if len(email) > 254 or not _EMAIL.match(email):
            raise ValueError(f"{value!r} is not an email address")
        return email
    if kind == "phone":
        try:
            number = phonenumbers.parse(value, phone_region)
        except phonenumbers.NumberParseException as exc:
            raise ValueError(f"{value!r} is not a phone number ({exc})") from None
        if not phonenumbers.is_possible_number(number):
            raise ValueError(f"{value!r} is not a possible phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if kind == "twitter":
        handle = value.removeprefix("@").lower()
        if not (_HANDLE.match(handle) or _USER_ID.match(handle)):
            raise ValueError(f"{value!r} is neither an X handle nor a numeric user id")
        return handle
    if kind == "chat":
        if not _VISITOR.match(value):
            raise ValueError(f"{value!r} is not a chat visitor id (1-200 characters, no spaces)")
        return value
    raise ValueError(f"unknown contact kind {kind!r}; expected one of {', '.join(CONTACT_KINDS)}")


def parse_contact_string(text: str) -> tuple[str, str]:
    """Split the string form ``kind:value`` (``email:alice@example.com``) into its parts."""
    kind, sep, value = text.partition(":")
    if not sep or not value:
        raise ValueError(f"{text!r} is not of the form kind:value (e.g. email:alice@example.com)")
    return kind.strip().lower(), value
