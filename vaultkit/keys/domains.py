"""Key domains: groups of columns that share a KEK, an access rule, a key scope and a retention."""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from vaultkit.errors import DomainError

__all__ = [
    "DOMAIN_NAME_PATTERN",
    "KeyDomain",
    "Retention",
    "check_domain_name",
    "parse_duration",
]

#: Lowercase ASCII, digits, ``_``, ``-`` and ``.``, starting with a letter, at most 64 characters.
#: The name goes into every value's associated data and into the key store, so it is kept plain.
DOMAIN_NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

#: An ISO 8601 duration of whole units: ``PnYnMnWnDTnHnMnS``, each part optional but at least one.
_DURATION: Final = re.compile(
    r"P(?:(?P<Y>\d{1,4})Y)?(?:(?P<M>\d{1,5})M)?(?:(?P<W>\d{1,6})W)?(?:(?P<D>\d{1,7})D)?"
    r"(?:T(?=\d)(?:(?P<h>\d{1,8})H)?(?:(?P<m>\d{1,9})M)?(?:(?P<s>\d{1,10})S)?)?",
    re.ASCII,
)
#: Bucket widths: whole seconds from one second to one year.
_BUCKET_MAX: Final = dt.timedelta(days=366)
_SCOPES: Final = ("process", "subject", "bucket")


def parse_duration(text: str) -> tuple[int, int, int]:
    """Parse an ISO 8601 duration into ``(months, days, seconds)``.

    Years count 12 months, weeks 7 days; hours, minutes and seconds are exact. Only whole
    numbers and the designators ``Y M W D`` and ``T H M S`` in that order are accepted (no
    fractions, no sign, no alternative ``PYYYY-MM-DD`` form), and at least one part must be given.

    Raises:
        TypeError: ``text`` is not a str.
        ValueError: it is not such a duration.

    .. versionadded:: 0.3.0
    """
    if not isinstance(text, str):
        raise TypeError(f"a duration must be str, not {type(text).__name__}")
    match = _DURATION.fullmatch(text)
    if match is None or text in ("P", "PT") or not any(match.groupdict().values()):
        raise ValueError(f"not an ISO 8601 duration of whole units: {text[:40]!r}")
    part = {k: int(v) if v is not None else 0 for k, v in match.groupdict().items()}
    months = part["Y"] * 12 + part["M"]
    days = part["W"] * 7 + part["D"]
    seconds = part["h"] * 3600 + part["m"] * 60 + part["s"]
    return months, days, seconds


def add_duration(start: dt.datetime, months: int, days: int, seconds: int) -> dt.datetime:
    """``start`` plus a duration, calendar-correct, in UTC.

    Months first (the day of the month is kept, or clamped to the month's last day: 2024-02-29
    plus one year is 2025-02-28), then days, then seconds, all on the UTC time line.
    """
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("a retention start must be a timezone-aware datetime")
    utc = start.astimezone(dt.UTC)
    if months:
        index = utc.year * 12 + (utc.month - 1) + months
        year, month = divmod(index, 12)
        month += 1
        if not 1 <= year <= 9999:
            raise OverflowError("the deadline is out of the datetime range")
        day = min(utc.day, calendar.monthrange(year, month)[1])
        utc = utc.replace(year=year, month=month, day=day)
    return utc + dt.timedelta(days=days, seconds=seconds)


def check_domain_name(name: object) -> str:
    """Return ``name`` if it is a valid domain name; raise otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"a domain name must be str, not {type(name).__name__}")
    if not DOMAIN_NAME_PATTERN.fullmatch(name):
        raise DomainError(
            f"invalid domain name {name[:64]!r}: use 1 to 64 lowercase letters, digits, '_', '-' or "
            "'.', starting with a letter"
        )
    return name


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a domain's values may (or must) be kept, declared with the data.

    The vocabulary is that of the blindnet PRIV retention policy: a duration after an anchor
    event, as a maximum (``no_longer_than``: values become unreadable, for good, once it has passed)
    or a legal minimum (``no_less_than``: values are kept at least that long, and erasure requests
    are refused until then, with the legal ground).

    Args:
        duration: an ISO 8601 duration such as ``"PT72H"``, ``"P7D"``, ``"P28D"``, ``"P5Y"`` or
            ``"P1Y6M"`` (see :func:`parse_duration`); calendar-correct, so ``P5Y`` from
            2024-02-29 ends on 2029-02-28.
        after: ``"capture"`` (the time a value was written; needs ``dek_scope="bucket"``) or
            ``"relationship_end"`` (recorded with :meth:`Vault.end_relationship`; needs
            ``dek_scope="subject"``).
        kind: ``"no_longer_than"`` or ``"no_less_than"``.
        ground: the legal ground of a ``no_less_than`` retention (required for it), such as
            ``"art. 60 Insurance Act"``. It is stated in erasure receipts and reports.

    Raises:
        ValueError: the duration is not valid ISO 8601 or is zero, or a field has another value.
        TypeError: a field has the wrong type.

    .. versionadded:: 0.3.0
    """

    duration: str
    after: Literal["capture", "relationship_end"] = "capture"
    kind: Literal["no_longer_than", "no_less_than"] = "no_longer_than"
    ground: str | None = None
    _parts: tuple[int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = parse_duration(self.duration)
        if parts == (0, 0, 0):
            raise ValueError("a retention duration must not be zero")
        if self.after not in ("capture", "relationship_end"):
            raise ValueError(f"after must be 'capture' or 'relationship_end', not {self.after!r}")
        if self.kind not in ("no_longer_than", "no_less_than"):
            raise ValueError(f"kind must be 'no_longer_than' or 'no_less_than', not {self.kind!r}")
        if self.ground is not None and (not isinstance(self.ground, str) or not self.ground):
            raise TypeError("ground must be a non-empty str")
        if self.kind == "no_less_than" and self.ground is None:
            raise ValueError("a no_less_than retention needs its legal ground (ground=...)")
        object.__setattr__(self, "_parts", parts)

    def deadline(self, start: dt.datetime) -> dt.datetime:
        """``start`` plus the duration, calendar-correct, as an aware UTC datetime.

        Raises:
            ValueError: ``start`` is naive.
            OverflowError: the deadline lies past the year 9999.
        """
        return add_duration(start, *self._parts)

    @property
    def span(self) -> tuple[int, int, int]:
        """The duration as ``(months, days, seconds)``."""
        return self._parts


@dataclass(frozen=True, slots=True)
class KeyDomain:
    """A key domain, such as ``identity``, ``financial`` or ``medical``.

    Each domain has its own KEK in its key provider, and its name is bound into every value
    encrypted in it, so a value copied from one domain to another does not decrypt.

    Args:
        name: the domain's name (see :data:`DOMAIN_NAME_PATTERN`).
        restricted: decrypting needs a principal holding a grant for this domain
            (``vault.acting_as(Principal("coach-17", grants={"medical"}), purpose=...)``).
        audited: each decrypt, denied read and write is an event in the vault's hash-chained audit
            log (:mod:`vaultkit.audit`; a vault with an audited domain needs ``audit=``).
        on_denied: for a reader without the grant, ``"seal"`` yields a :class:`SealedValue`,
            ``"raise"`` raises :class:`AccessDeniedError`. Never plaintext, never ``None``.
        encrypt_requires_grant: also refuse encryption without the grant. By default anyone may
            encrypt into a restricted domain (a service storing a document a member uploads).
        dek_scope: what one DEK covers. ``"process"`` (the default): the values one process
            writes until the DEK's budget runs out. ``"subject"``: one member's values (each
            encryption names its subject), so destroying that key erases the member. ``"bucket"``:
            the values written in one time window of width ``bucket``, destroyed together when
            the retention has passed. Subject and bucket keys are wrapped under a per-domain
            wrapping key, so reading many members costs one provider call per domain.
        bucket: the width of a bucket (whole seconds, 1 s to 366 days; buckets are aligned on
            the Unix epoch); required for, and only for, ``dek_scope="bucket"``. A value lives at
            most ``retention + bucket``.
        retention: the domain's :class:`Retention`. A bucket domain needs one anchored on
            ``"capture"``; a ``"relationship_end"`` retention needs ``dek_scope="subject"``; a
            process-scoped domain takes none (its keys are not destroyed by time).

    Raises:
        DomainError: the options do not fit together.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.3.0 ``dek_scope``, ``bucket`` and ``retention``.
    """

    name: str
    restricted: bool = False
    audited: bool = False
    on_denied: Literal["seal", "raise"] = "seal"
    encrypt_requires_grant: bool = False
    dek_scope: Literal["process", "subject", "bucket"] = "process"
    bucket: dt.timedelta | None = None
    retention: Retention | None = None

    def __post_init__(self) -> None:
        check_domain_name(self.name)
        if self.on_denied not in ("seal", "raise"):
            raise DomainError(f"on_denied must be 'seal' or 'raise', not {self.on_denied!r}")
        if self.encrypt_requires_grant and not self.restricted:
            raise DomainError(f"domain {self.name!r}: encrypt_requires_grant needs restricted=True")
        if self.dek_scope not in _SCOPES:
            raise DomainError(
                f"domain {self.name!r}: dek_scope must be 'process', 'subject' or 'bucket', not "
                f"{self.dek_scope!r}"
            )
        if self.retention is not None and not isinstance(self.retention, Retention):
            raise TypeError(f"retention must be a Retention, not {type(self.retention).__name__}")
        if self.bucket is not None:
            if not isinstance(self.bucket, dt.timedelta):
                raise TypeError(f"bucket must be a timedelta, not {type(self.bucket).__name__}")
            if self.dek_scope != "bucket":
                raise DomainError(f"domain {self.name!r}: bucket= needs dek_scope='bucket'")
            if not dt.timedelta(seconds=1) <= self.bucket <= _BUCKET_MAX or (
                self.bucket.microseconds
            ):
                raise DomainError(
                    f"domain {self.name!r}: a bucket is a whole number of seconds from 1 s to "
                    "366 days"
                )
        if self.dek_scope == "process" and self.retention is not None:
            raise DomainError(
                f"domain {self.name!r}: a retention needs dek_scope='bucket' (after='capture') or "
                "dek_scope='subject' (after='relationship_end'); process-scoped keys are not "
                "destroyed by time"
            )
        if self.dek_scope == "bucket":
            if self.bucket is None:
                raise DomainError(f"domain {self.name!r}: dek_scope='bucket' needs bucket=")
            if self.retention is None or self.retention.after != "capture":
                raise DomainError(
                    f"domain {self.name!r}: dek_scope='bucket' needs a retention with "
                    "after='capture'"
                )
        if (
            self.dek_scope == "subject"
            and self.retention is not None
            and self.retention.after != "relationship_end"
        ):
            raise DomainError(
                f"domain {self.name!r}: a subject-scoped domain's retention is anchored on "
                "after='relationship_end' (capture-anchored retention needs dek_scope='bucket')"
            )

    @property
    def scoped(self) -> bool:
        """Whether its DEKs are per subject or per bucket (wrapped under a wrapping key)."""
        return self.dek_scope != "process"
