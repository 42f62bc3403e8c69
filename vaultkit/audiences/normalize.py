"""Normalisers for audience identifiers: one small pure function per identifier and rule.

Each function returns the normalised string or raises :class:`~vaultkit.errors.AudienceError` with
a reason code (:class:`Reason`); it never returns something half-normalised, because a wrongly
normalised value is accepted by the platforms and silently never matches. The rules, with their
sources, are in ``docs/audiences/`` and the project's audience spec. Every function is idempotent:
normalising a normalised value gives it back unchanged.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import unicodedata
from typing import Final

import phonenumbers

from vaultkit.errors import AudienceError

__all__ = [
    "COUNTRIES",
    "Reason",
    "is_md5_hex",
    "is_sha256_hex",
    "normalize_country",
    "normalize_date_of_birth",
    "normalize_email",
    "normalize_gender",
    "normalize_name_google",
    "normalize_name_meta",
    "normalize_phone_e164",
    "normalize_postal_code_meta",
]


class Reason(enum.StrEnum):
    """Why a value or a row was rejected; these codes appear in summaries and rejects files."""

    EMAIL_INVALID = "email_invalid"
    PHONE_INVALID = "phone_invalid"
    PHONE_NO_REGION = "phone_no_region"
    NAME_INVALID = "name_invalid"
    COUNTRY_INVALID = "country_invalid"
    POSTAL_CODE_INVALID = "postal_code_invalid"
    DATE_INVALID = "date_invalid"
    GENDER_INVALID = "gender_invalid"
    MD5_REFUSED = "md5_refused"
    ADDRESS_INCOMPLETE = "address_incomplete"
    NO_IDENTIFIER = "no_identifier"
    ROW_MALFORMED = "row_malformed"


#: ISO 3166-1 alpha-2 codes of the countries and territories in libphonenumber's metadata.
COUNTRIES: Final = frozenset(phonenumbers.SUPPORTED_REGIONS)

_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
_HEX32: Final = re.compile(r"[0-9a-fA-F]{32}")
_GMAIL_DOMAINS: Final = frozenset({"gmail.com", "googlemail.com"})


def is_sha256_hex(value: str) -> bool:
    """Tell whether ``value`` already is a SHA-256 digest in hex (64 hex digits, any case)."""
    return len(value) == 64 and _HEX64.fullmatch(value) is not None


def is_md5_hex(value: str) -> bool:
    """Tell whether ``value`` looks like an MD5 digest in hex (32 hex digits), refused for e-mail and phone."""
    return len(value) == 32 and _HEX32.fullmatch(value) is not None


def normalize_email(value: str, *, gmail_rule: str | None = None) -> str:
    """Normalise an e-mail address.

    All whitespace is removed and the address lower-cased (``str.lower``, not ``casefold``); it
    must have exactly one ``@`` with a non-empty local part and a domain containing a dot, and no
    control characters.

    ``gmail_rule`` applies Google's rule for ``gmail.com`` and ``googlemail.com`` addresses:
    ``"2026-08"`` removes every ``.`` from the local part and ``+`` with everything after it;
    ``"2025-legacy"`` (before 2025-12) removes the dots only. Other domains keep dots and ``+``.
    Source: developers.google.com/data-manager/api/devguides/concepts/formatting.

    Raises:
        AudienceError: ``email_invalid``.
    """
    text = "".join(value.split())
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = text.lower()
    if not text.isprintable():  # control characters (a NUL from a broken export) are refused
        raise AudienceError(Reason.EMAIL_INVALID)
    local, at, domain = text.partition("@")
    if (
        not at
        or not local
        or "@" in domain
        or "." not in domain.strip(".")
        or domain.startswith(".")
    ):
        raise AudienceError(Reason.EMAIL_INVALID)
    if gmail_rule is not None and domain in _GMAIL_DOMAINS:
        if gmail_rule == "2026-08":
            local = local.split("+", 1)[0]
        elif gmail_rule != "2025-legacy":
            raise ValueError(f"unknown Gmail rule {gmail_rule!r}")
        local = local.replace(".", "")
        if not local:
            raise AudienceError(Reason.EMAIL_INVALID)
    return f"{local}@{domain}"


def normalize_phone_e164(value: str, *, default_region: str | None) -> str:
    """Return a phone number in E.164 (``+32470123456``), parsed and validated by phonenumbers.

    National numbers (without ``+``) are read in ``default_region``; a number that is not valid
    for its region is refused, never guessed. Source: ITU-T E.164; Google's formatting guide.

    Raises:
        AudienceError: ``phone_invalid``, or ``phone_no_region`` for a national number without a
            default region.
    """
    text = value.strip()
    if not text.startswith("+") and default_region is None:
        raise AudienceError(Reason.PHONE_NO_REGION)
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise AudienceError(Reason.PHONE_INVALID) from None
    if not phonenumbers.is_valid_number(number):
        raise AudienceError(Reason.PHONE_INVALID)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_name_google(value: str) -> str:
    """Google first or last name: trim, lowercase, NFC; internal spaces, punctuation and accents kept.

    Source: google-ads-php issue #1167 (``lowercase(trim(value))``, NFC).

    Raises:
        AudienceError: ``name_invalid`` for an empty name.
    """
    text = unicodedata.normalize("NFC", value.strip()).lower()
    text = unicodedata.normalize("NFC", text)
    if not text:
        raise AudienceError(Reason.NAME_INVALID)
    return text


def normalize_name_meta(value: str) -> str:
    """Meta first or last name: lowercase, NFC, no punctuation and no spaces; accents kept.

    ``Valéry`` gives ``valéry``; ``Van der Berg-Smit`` gives ``vanderbergsmit``. Source: Meta
    Conversions API customer-information parameters (updated 2026-01-09).

    Raises:
        AudienceError: ``name_invalid`` when nothing is left.
    """
    text = unicodedata.normalize("NFC", value).lower()
    kept = "".join(
        ch for ch in text if unicodedata.category(ch)[0] in "LN" or unicodedata.category(ch) == "Mn"
    )
    kept = unicodedata.normalize("NFC", kept)
    if not kept:
        raise AudienceError(Reason.NAME_INVALID)
    return kept


def normalize_country(value: str) -> str:
    """Return an ISO 3166-1 alpha-2 code in capitals (``be`` -> ``BE``); names are refused.

    Raises:
        AudienceError: ``country_invalid`` for anything that is not a known alpha-2 code.
    """
    code = value.strip().upper()
    if code not in COUNTRIES:
        raise AudienceError(Reason.COUNTRY_INVALID)
    return code


def normalize_postal_code_meta(value: str, *, country: str | None) -> str:
    """Meta postal code: lowercase, no spaces, no dashes; in the US the first 5 digits.

    Raises:
        AudienceError: ``postal_code_invalid`` when nothing is left.
    """
    text = re.sub(r"[\s\-]", "", value).lower()
    if country == "US":
        text = text[:5]
    if not text:
        raise AudienceError(Reason.POSTAL_CODE_INVALID)
    return text


def normalize_date_of_birth(value: str | dt.date) -> dt.date:
    """Return a date of birth as a date: from a ``date`` or an ISO 8601 ``YYYY-MM-DD`` string.

    An impossible date (2023-02-30), another format, a datetime with a time, or a date in the
    future or before 1900 is refused.

    Raises:
        AudienceError: ``date_invalid``.
    """
    if isinstance(value, dt.datetime):
        raise AudienceError(Reason.DATE_INVALID)
    if isinstance(value, dt.date):
        day = value
    else:
        text = value.strip()
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise AudienceError(Reason.DATE_INVALID)
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise AudienceError(Reason.DATE_INVALID) from None
    if not dt.date(1900, 1, 1) <= day <= dt.date.today():
        raise AudienceError(Reason.DATE_INVALID)
    return day


_GENDERS: Final = {
    "f": "f", "female": "f", "w": "f", "woman": "f", "v": "f", "vrouw": "f", "femme": "f",
    "m": "m", "male": "m", "man": "m", "homme": "m",
}  # fmt: skip


def normalize_gender(value: str) -> str:
    """Meta gender: ``f`` or ``m`` (English, Dutch and French words accepted).

    Raises:
        AudienceError: ``gender_invalid`` for anything else (no guess is made).
    """
    gender = _GENDERS.get(value.strip().lower())
    if gender is None:
        raise AudienceError(Reason.GENDER_INVALID)
    return gender
