"""One canonical member record, rendered per platform as the upload expects it."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from vaultkit.audiences import normalize as n
from vaultkit.audiences.normalize import Reason
from vaultkit.errors import AudienceError, ConfigurationError

__all__ = [
    "COLUMNS",
    "RULE_VERSIONS",
    "AudienceReport",
    "MemberRecord",
    "Platform",
    "Rendered",
    "hash_identifier",
    "hash_records",
    "render",
]


class Platform(enum.StrEnum):
    """Ad platforms whose upload rules vaultkit implements."""

    GOOGLE = "google"
    META = "meta"


#: Rule versions per platform, newest first; the first is the default. A rule change adds a
#: version and never changes what an existing version outputs.
RULE_VERSIONS: Final[dict[Platform, tuple[str, ...]]] = {
    Platform.GOOGLE: ("2026-08", "2025-legacy"),
    Platform.META: ("2026-01",),
}

#: Output columns, named as each platform's upload template names them.
COLUMNS: Final[dict[Platform, tuple[str, ...]]] = {
    Platform.GOOGLE: ("Email", "Phone", "First Name", "Last Name", "Country", "Zip"),
    Platform.META: (
        "EMAIL", "PHONE", "FN", "LN", "FI", "ZIP", "COUNTRY", "DOBY", "DOBM", "DOBD", "GEN", "EXTERN_ID",
    ),
}  # fmt: skip


def hash_identifier(normalized: str) -> str:
    """SHA-256 of the UTF-8 bytes of a normalised identifier, as 64 lowercase hex characters."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member's identifiers, as the insurer holds them. ``repr`` shows none of them.

    ``date_of_birth`` is a ``date`` or an ISO ``YYYY-MM-DD`` string; ``country`` an ISO 3166-1
    alpha-2 code; empty strings count as missing.
    """

    email: str | None = field(default=None, repr=False)
    phone: str | None = field(default=None, repr=False)
    first_name: str | None = field(default=None, repr=False)
    last_name: str | None = field(default=None, repr=False)
    country: str | None = field(default=None, repr=False)
    postal_code: str | None = field(default=None, repr=False)
    date_of_birth: str | dt.date | None = field(default=None, repr=False)
    gender: str | None = field(default=None, repr=False)
    external_id: str | None = field(default=None, repr=False)

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> MemberRecord:
        """Build a record from a mapping with the field names as keys (a CSV row, a DataFrame row)."""
        names = {f.name for f in fields(cls)}
        unknown = set(row) - names
        if unknown:
            raise ConfigurationError(f"unknown record fields: {', '.join(sorted(unknown))}")
        return cls(**{k: (None if v is None or v == "" else v) for k, v in row.items()})


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered row: output ``values`` in :data:`COLUMNS` order, or ``None`` when rejected.

    ``reasons`` lists every value that was dropped and why (and, for a rejected row, why it was
    rejected); it never holds the values themselves.
    """

    values: tuple[str, ...] | None = field(repr=False)
    reasons: tuple[Reason, ...]

    @property
    def accepted(self) -> bool:
        return self.values is not None


def _hashed(value: str, normalizer: Callable[[str], str], *, refuse_md5: bool) -> str:
    text = value.strip()
    if n.is_sha256_hex(text):
        return text.lower()  # already hashed by the caller: passed through, never re-hashed
    if refuse_md5 and n.is_md5_hex(text):
        raise AudienceError(Reason.MD5_REFUSED)
    return hash_identifier(normalizer(value))


def _present(value: Any) -> bool:
    return value is not None and value != ""


class _Attempts:
    """Normalise one value at a time; a value that fails is dropped and its reason kept."""

    __slots__ = ("reasons",)

    def __init__(self) -> None:
        self.reasons: list[Reason] = []

    def __call__(self, value: Any, fn: Callable[[], str]) -> str:
        if not _present(value):
            return ""
        try:
            return fn()
        except AudienceError as exc:
            self.reasons.append(Reason(str(exc)))
            return ""


def _render_google(record: MemberRecord, default_region: str | None, version: str) -> Rendered:
    attempt = _Attempts()
    reasons = attempt.reasons

    email = attempt(
        record.email,
        lambda: _hashed(
            str(record.email), lambda v: n.normalize_email(v, gmail_rule=version), refuse_md5=True
        ),
    )
    phone = attempt(
        record.phone,
        lambda: _hashed(
            str(record.phone),
            lambda v: n.normalize_phone_e164(v, default_region=default_region),
            refuse_md5=True,
        ),
    )
    first = attempt(
        record.first_name,
        lambda: _hashed(str(record.first_name), n.normalize_name_google, refuse_md5=False),
    )
    last = attempt(
        record.last_name,
        lambda: _hashed(str(record.last_name), n.normalize_name_google, refuse_md5=False),
    )
    country = attempt(record.country, lambda: n.normalize_country(str(record.country)))
    postal = attempt(record.postal_code, lambda: str(record.postal_code).strip())
    address = (first, last, country, postal)
    if not all(address):
        # Google matches an address only with first name, last name, country and postal code.
        if any(
            _present(v)
            for v in (record.first_name, record.last_name, record.country, record.postal_code)
        ):
            reasons.append(Reason.ADDRESS_INCOMPLETE)
        first = last = country = postal = ""
    if not (email or phone or first):
        return Rendered(None, (*reasons, Reason.NO_IDENTIFIER))
    return Rendered((email, phone, first, last, country, postal), tuple(reasons))


def _render_meta(record: MemberRecord, default_region: str | None, version: str) -> Rendered:
    attempt = _Attempts()
    reasons = attempt.reasons

    email = attempt(
        record.email, lambda: _hashed(str(record.email), n.normalize_email, refuse_md5=True)
    )
    phone = attempt(
        record.phone,
        lambda: _hashed(
            str(record.phone),
            lambda v: n.normalize_phone_e164(v, default_region=default_region).lstrip("+"),
            refuse_md5=True,
        ),
    )
    first_norm = attempt(record.first_name, lambda: n.normalize_name_meta(str(record.first_name)))
    first = hash_identifier(first_norm) if first_norm else ""
    initial = hash_identifier(first_norm[0]) if first_norm else ""
    last = attempt(
        record.last_name, lambda: hash_identifier(n.normalize_name_meta(str(record.last_name)))
    )
    country_code = attempt(record.country, lambda: n.normalize_country(str(record.country)))
    country = hash_identifier(country_code.lower()) if country_code else ""
    postal = attempt(
        record.postal_code,
        lambda: hash_identifier(
            n.normalize_postal_code_meta(str(record.postal_code), country=country_code or None)
        ),
    )
    dob: dt.date | None = None
    if _present(record.date_of_birth):
        try:
            dob = n.normalize_date_of_birth(record.date_of_birth)  # type: ignore[arg-type]
        except AudienceError as exc:
            reasons.append(Reason(str(exc)))
    doby, dobm, dobd = (
        (
            hash_identifier(f"{dob.year:04d}"),
            hash_identifier(f"{dob.month:02d}"),
            hash_identifier(f"{dob.day:02d}"),
        )
        if dob
        else ("", "", "")
    )
    gender = attempt(record.gender, lambda: hash_identifier(n.normalize_gender(str(record.gender))))
    external = attempt(
        record.external_id, lambda: _hashed(str(record.external_id), lambda v: v, refuse_md5=False)
    )
    if not (email or phone or external or (first and last and (postal or doby))):
        return Rendered(None, (*reasons, Reason.NO_IDENTIFIER))
    return Rendered(
        (email, phone, first, last, initial, postal, country, doby, dobm, dobd, gender, external),
        tuple(reasons),
    )


_RENDERERS: Final = {Platform.GOOGLE: _render_google, Platform.META: _render_meta}


def _check(
    platform: Platform | str, rules: str | None, default_region: str | None
) -> tuple[Platform, str]:
    try:
        chosen = Platform(platform)
    except ValueError:
        raise ConfigurationError(
            f"unknown platform {platform!r}; choose from google, meta"
        ) from None
    versions = RULE_VERSIONS[chosen]
    version = rules or versions[0]
    if version not in versions:
        raise ConfigurationError(
            f"{chosen} has rule versions {', '.join(versions)}, not {version!r}"
        )
    if default_region is not None and default_region.upper() not in n.COUNTRIES:
        raise ConfigurationError(
            f"default region {default_region!r} is not an ISO 3166-1 alpha-2 code"
        )
    return chosen, version


def render(
    record: MemberRecord,
    *,
    platform: Platform | str,
    default_region: str | None = None,
    rules: str | None = None,
) -> Rendered:
    """Normalise and hash one record for ``platform``; see :data:`COLUMNS` for the output order.

    Args:
        record: the member's identifiers.
        platform: ``"google"`` or ``"meta"``.
        default_region: ISO country for phone numbers written without ``+`` (``"BE"``).
        rules: a rule version of :data:`RULE_VERSIONS` (default: the newest).

    Returns:
        The rendered row, or a rejected one when no usable identifier is left; values that cannot be
        normalised are dropped (never hashed half-normalised) and their reasons listed.

    .. versionadded:: 0.1.0
    """
    chosen, version = _check(platform, rules, default_region)
    region = default_region.upper() if default_region else None
    return _RENDERERS[chosen](record, region, version)


@dataclass
class AudienceReport:
    """Counts of one run: rows read, accepted and rejected, and how often each reason occurred."""

    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, rendered: Rendered) -> None:
        self.rows += 1
        if rendered.accepted:
            self.accepted += 1
        else:
            self.rejected += 1
        self.reasons.update(str(r) for r in rendered.reasons)

    def merge(self, other: AudienceReport) -> None:
        self.rows += other.rows
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.reasons.update(other.reasons)


def hash_records(
    records: Iterable[MemberRecord | Mapping[str, Any]],
    *,
    platform: Platform | str,
    default_region: str | None = None,
    rules: str | None = None,
    report: AudienceReport | None = None,
) -> Iterator[Rendered]:
    """Render many records (``MemberRecord`` objects or mappings such as DataFrame rows).

    Yields one :class:`Rendered` per input record, in order; counts go to ``report`` if given.
    """
    chosen, version = _check(platform, rules, default_region)
    region = default_region.upper() if default_region else None
    renderer = _RENDERERS[chosen]
    for item in records:
        record = item if isinstance(item, MemberRecord) else MemberRecord.from_mapping(item)
        rendered = renderer(record, region, version)
        if report is not None:
            report.add(rendered)
        yield rendered
