"""What the data life-cycle operations of a :class:`~vaultkit.Vault` return.

:meth:`Vault.erase_subject <vaultkit.Vault.erase_subject>` returns an :class:`ErasureReceipt`,
:meth:`Vault.enforce_retention <vaultkit.Vault.enforce_retention>` an :class:`EnforcementReport`
and :meth:`Vault.retention_report <vaultkit.Vault.retention_report>` a :class:`RetentionReport`;
:meth:`Vault.shred_epoch <vaultkit.Vault.shred_epoch>` returns a :class:`ShredReport`.
Each is a frozen dataclass with ``to_json()``. None of them holds a subject, a subject ref, a DEK
id, a value or a hash of one: counts, domain and table names, times, policies and legal grounds
only, so a receipt can be handed to the person who asked, filed with a ticket or logged.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DomainErasure",
    "DomainRetention",
    "EnforcementReport",
    "ErasureReceipt",
    "RetentionReport",
    "ShredReport",
    "iso_duration",
]

ErasureStatus = Literal["granted", "partially_granted", "refused", "nothing_to_erase"]
DomainErasureStatus = Literal["erased", "retained", "no_keys"]


def _time(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso_duration(delta: dt.timedelta) -> str:
    """``delta`` as an ISO 8601 duration of days, hours, minutes and seconds (``P1DT6H``).

    .. versionadded:: 0.3.0
    """
    if delta < dt.timedelta(0):
        return "-" + iso_duration(-delta)
    days, seconds = delta.days, delta.seconds
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = "P" + (f"{days}D" if days else "")
    clock = (
        (f"{hours}H" if hours else "")
        + (f"{minutes}M" if minutes else "")
        + (
            f"{seconds}.{delta.microseconds:06d}".rstrip("0") + "S"
            if delta.microseconds
            else (f"{seconds}S" if seconds else "")
        )
    )
    if clock:
        text += "T" + clock
    return text if text != "P" else "PT0S"


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class DomainErasure:
    """What an erasure did in one subject-scoped domain.

    Args:
        domain: the domain's name.
        status: ``"erased"`` (the subject's keys there are destroyed, by this request or
            earlier), ``"retained"`` (a ``no_less_than`` retention whose minimum has not run out:
            nothing was destroyed and writes are not fenced), ``"no_keys"`` (the subject never
            had a key there; writes are fenced all the same).
        keys_destroyed: keys this call destroyed.
        keys_already_destroyed: the subject's keys there that were destroyed before this call
            (an earlier request, retention); a repeated request counts its keys here.
        ground: the legal ground of a retained domain (its ``Retention.ground``).
        retained_until: the end of the retention minimum, when it is known (a relationship
            end is recorded); ``None`` otherwise.

    .. versionadded:: 0.3.0
    """

    domain: str
    status: DomainErasureStatus
    keys_destroyed: int = 0
    keys_already_destroyed: int = 0
    ground: str | None = None
    retained_until: dt.datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (times in ISO 8601, UTC)."""
        return {
            "domain": self.domain,
            "status": self.status,
            "keys_destroyed": self.keys_destroyed,
            "keys_already_destroyed": self.keys_already_destroyed,
            "ground": self.ground,
            "retained_until": _time(self.retained_until),
        }


@dataclass(frozen=True, slots=True)
class ErasureReceipt:
    """The receipt of :meth:`Vault.erase_subject <vaultkit.Vault.erase_subject>`.

    It names neither the subject nor its key-store ref nor any value or hash, so it may be given
    to the person who asked and filed with the request.

    Args:
        request_id: the request's id, as given.
        reason: the reason, as given (``"art17"``).
        status: ``"granted"`` (everything asked for is erased), ``"partially_granted"`` (some
            domains are retained, see their ground), ``"refused"`` (every domain holding the
            subject's data is retained), ``"nothing_to_erase"`` (no key and no blind-index cell
            of the subject was found).
        erased_at: when the keys were destroyed (UTC, the vault's clock).
        finality: from when no backup holds the erased data any more, when the vault's backup
            mode can say (see docs/lifecycle.md); ``None`` when it cannot.
        domains: what happened per domain.
        tables: blind-index cells nulled per table, as the ``cells`` callback reported them.
        audited: whether the erasure is an event in the vault's audit log (a vault with no
            audited domain keeps no log).

    .. versionadded:: 0.3.0
    """

    request_id: str
    reason: str
    status: ErasureStatus
    erased_at: dt.datetime
    finality: dt.datetime | None
    domains: tuple[DomainErasure, ...]
    tables: tuple[tuple[str, int], ...] = ()
    audited: bool = False

    @property
    def keys_destroyed(self) -> int:
        """Keys this call destroyed, in all domains."""
        return sum(d.keys_destroyed for d in self.domains)

    def as_dict(self) -> dict[str, Any]:
        """The receipt as JSON-ready values (times in ISO 8601, UTC)."""
        return {
            "request_id": self.request_id,
            "reason": self.reason,
            "status": self.status,
            "erased_at": _time(self.erased_at),
            "finality": _time(self.finality),
            "domains": [d.as_dict() for d in self.domains],
            "tables": dict(self.tables),
            "keys_destroyed": self.keys_destroyed,
            "audited": self.audited,
        }

    def to_json(self) -> str:
        """The receipt as one line of JSON, keys sorted."""
        return _dumps(self.as_dict())


@dataclass(frozen=True, slots=True)
class EnforcementReport:
    """What :meth:`Vault.enforce_retention <vaultkit.Vault.enforce_retention>` did.

    Args:
        at: the time the keys were due by (``destroy_at <= at``).
        keys_destroyed: keys this run destroyed.
        already_destroyed: due keys another run destroyed between being listed and destroyed
            here (two sweeps at once).
        batches: batches run (each one committed before the next).
        by_domain: keys destroyed per domain.
        audited: whether each batch is an event in the vault's audit log.
        seconds: how long the run took.

    .. versionadded:: 0.3.0
    """

    at: dt.datetime
    keys_destroyed: int
    already_destroyed: int
    batches: int
    by_domain: tuple[tuple[str, int], ...]
    audited: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {
            "at": _time(self.at),
            "keys_destroyed": self.keys_destroyed,
            "already_destroyed": self.already_destroyed,
            "batches": self.batches,
            "by_domain": dict(self.by_domain),
            "audited": self.audited,
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> str:
        """The report as one line of JSON, keys sorted."""
        return _dumps(self.as_dict())


@dataclass(frozen=True, slots=True)
class DomainRetention:
    """One domain's line of a :class:`RetentionReport`.

    Args:
        domain: the domain's name.
        scope: ``"process"``, ``"subject"`` or ``"bucket"`` (the domain's ``dek_scope``).
        duration: the retention's ISO 8601 duration, or ``None`` when the domain has none.
        after: ``"capture"`` or ``"relationship_end"``.
        kind: ``"no_longer_than"`` or ``"no_less_than"``.
        ground: the legal ground of a ``no_less_than`` retention.
        bucket: the bucket width of a bucket-scoped domain.
        live: data keys not destroyed.
        destroyed: data keys destroyed (by erasure, retention or an operator).
        due: live keys past their deadline, which reads already refuse and the next
            ``retention enforce`` destroys.
        oldest_readable_capture: the earliest capture time a read may still open: for buckets
            the start of the oldest live bucket not due, otherwise the creation of the oldest
            live key (a lower bound: values are written after their key is made).
        subjects: subjects with a live key (subject scope).
        subjects_without_end: of those, the ones with no relationship end recorded, in a
            domain whose retention runs from the relationship's end: counted, never guessed
            (their keys have no deadline until ``end_relationship`` is recorded).
        violations: each way a read would accept a value beyond the policy; must be empty.

    .. versionadded:: 0.3.0
    """

    domain: str
    scope: str
    duration: str | None
    after: str | None
    kind: str | None
    ground: str | None
    bucket: dt.timedelta | None
    live: int
    destroyed: int
    due: int
    oldest_readable_capture: dt.datetime | None
    subjects: int
    subjects_without_end: int | None
    violations: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The line as JSON-ready values (the bucket width as an ISO 8601 duration)."""
        return {
            "domain": self.domain,
            "scope": self.scope,
            "policy": None
            if self.duration is None
            else {
                "duration": self.duration,
                "after": self.after,
                "kind": self.kind,
                "ground": self.ground,
            },
            "bucket": iso_duration(self.bucket) if self.bucket is not None else None,
            "live": self.live,
            "destroyed": self.destroyed,
            "due": self.due,
            "oldest_readable_capture": _time(self.oldest_readable_capture),
            "subjects": self.subjects,
            "subjects_without_end": self.subjects_without_end,
            "violations": list(self.violations),
        }


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """The retention state of every domain of a vault at one time, from key-store aggregates.

    .. versionadded:: 0.3.0
    """

    at: dt.datetime
    domains: tuple[DomainRetention, ...]

    @property
    def violations(self) -> int:
        """How many violations the domains show in all; must be 0."""
        return sum(len(d.violations) for d in self.domains)

    @property
    def ok(self) -> bool:
        """No domain shows a violation."""
        return self.violations == 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {
            "at": _time(self.at),
            "violations": self.violations,
            "domains": [d.as_dict() for d in self.domains],
        }

    def to_json(self) -> str:
        """The report as one line of JSON, keys sorted."""
        return _dumps(self.as_dict())


@dataclass(frozen=True, slots=True)
class ShredReport:
    """What :meth:`Vault.shred_epoch <vaultkit.Vault.shred_epoch>` did to one domain. No key material, no subject reference.

    Args:
        domain: the domain.
        epoch: the wrapping-key epoch now current (``None`` for a domain without scoped keys).
        kek_version: the domain's KEK version now primary.
        kek_rows_rewrapped: rows wrapped by the KEK (the wrapping key, process-scoped DEKs,
            blind-index and audit keys) rewrapped under the new version.
        scoped_rewrapped: subject and bucket DEKs rewrapped from the old wrapping keys to the
            new one.
        changed_meanwhile: rows another process changed during the epoch (left to it).
        wrapping_destroyed: epochs whose wrapping-key row was destroyed.
        kek_versions_destroyed: KEK versions destroyed in the provider.
        final_at: from when the destroyed KEK versions are gone for good (provider delay), or
            ``None`` when none was destroyed.
        stranded: rows found still wrapped under a destroyed version or epoch afterwards (a
            process wrote with an old key during the epoch); they are unreadable. Must be 0.

    .. versionadded:: 0.3.0
    """

    domain: str
    epoch: int | None
    kek_version: int
    kek_rows_rewrapped: int
    scoped_rewrapped: int
    changed_meanwhile: int
    wrapping_destroyed: tuple[int, ...]
    kek_versions_destroyed: tuple[int, ...]
    final_at: dt.datetime | None
    stranded: int

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (times in ISO 8601, UTC)."""
        return {
            "domain": self.domain,
            "epoch": self.epoch,
            "kek_version": self.kek_version,
            "kek_rows_rewrapped": self.kek_rows_rewrapped,
            "scoped_rewrapped": self.scoped_rewrapped,
            "changed_meanwhile": self.changed_meanwhile,
            "wrapping_destroyed": list(self.wrapping_destroyed),
            "kek_versions_destroyed": list(self.kek_versions_destroyed),
            "final_at": _time(self.final_at),
            "stranded": self.stranded,
        }

    def to_json(self) -> str:
        """The report as one line of JSON, keys sorted."""
        return _dumps(self.as_dict())
