"""Erasure and retention by key destruction: the algorithms behind the vault's life-cycle block.

Functions over a :class:`LifeCycle` (the key store's scoped-key protocol, the declared domains,
the subject-ref function, the cache to drop keys from, the audit recorder and the clock). They
hold no state and no lock of their own: the key store's rows are the truth, each destruction is
its own committed write, and every step can be run again (idempotent), so a crash at any point
is repaired by running the same call again.

:func:`erase_subject` runs, in this order: (1) fence every subject-scoped domain asked for that is
not retained (the key store refuses new keys for the subject from then on, in every process);
(2) destroy every key of the subject there, listing them again until none is live (a writer that
made a key before it saw the fence is caught by the next round, or destroys its own key when it
sees the fence); (3) a PII-free audit event per domain, written before (4) the ``cells`` callback
(blind-index cells) so that a failure of the application's database leaves no destruction out of
the audit chain, then one per table; (5) the receipt. ``no_less_than`` domains whose minimum has not run out are left
as they are and reported as retained, with their legal ground.

:func:`enforce_retention` destroys the keys past their ``destroy_at``, batch by batch; each batch
is an audit event written *before* its keys are destroyed, so no key is ever destroyed unaudited
(a crash between the two leaves an event whose keys the next run destroys).

:func:`retention_report` reads one aggregate per domain (:meth:`key_summary`), never the rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from vaultkit import _scoped
from vaultkit._access import current_scope
from vaultkit.audit import AuditEvent
from vaultkit.errors import ConfigurationError, DomainError, KeyStoreError
from vaultkit.lifecycle import (
    DomainErasure,
    DomainRetention,
    EnforcementReport,
    ErasureReceipt,
    ErasureStatus,
    RetentionReport,
)
from vaultkit.store import (
    DataKeyRecord,
    DekState,
    KeySummary,
    SubjectRecord,
    SupportsDestroyMany,
    SupportsScopedKeys,
)

if TYPE_CHECKING:
    from vaultkit._recorder import AuditRecorder
    from vaultkit.keys.domains import KeyDomain

__all__ = [
    "ERASE_ACTION",
    "RETENTION_ACTION",
    "LifeCycle",
    "enforce_retention",
    "erase_subject",
    "retention_report",
]

log = logging.getLogger("vaultkit")

#: The audit actions of the life cycle (the ``action`` column holds 16 characters at most).
ERASE_ACTION: Final = "erase"
RETENTION_ACTION: Final = "retention"
#: Rounds of "list the subject's live keys, destroy them" before an erasure gives up: a writer
#: that took a key before it saw the fence adds at most one round.
MAX_ROUNDS: Final = 64
_TEXT_MAX: Final = {"reason": 64, "request_id": 128}

# What a request id or a reason must not look like: they are written, as given, into the
# receipt, the audit log and the key store, which hold no identifier of the subject.
_EMAIL: Final = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_PHONE: Final = re.compile(r"(?:\+|\b00)[\d][\d ()./-]{6,}\d")
_DIGITS: Final = re.compile(r"\d[\d .-]{7,}\d")


def _bsn(digits: str) -> bool:
    """A Dutch BSN: 9 digits passing the "11-proef"."""
    if len(digits) != 9:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True))
    return (total - int(digits[8])) % 11 == 0


def _insz(digits: str) -> bool:
    """A Belgian INSZ/NISS: 11 digits whose check is 97 - (the first 9, or 2 and them) mod 97."""
    if len(digits) != 11:
        return False
    body, check = int(digits[:9]), int(digits[9:])
    return check in (97 - body % 97, 97 - (2_000_000_000 + body) % 97)


def looks_personal(text: str) -> str | None:
    """What kind of personal identifier ``text`` seems to hold, or ``None``.

    E-mail addresses, international phone numbers (``+32 ...``, ``0031 ...``) and numbers that
    pass the check of a Belgian INSZ or a Dutch BSN. Used to refuse request ids and reasons that
    would carry one into the receipt and the audit log.
    """
    if _EMAIL.search(text):
        return "an e-mail address"
    if _PHONE.search(text):
        return "a phone number"
    for match in _DIGITS.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if _insz(digits):
            return "a Belgian national number (INSZ)"
        if _bsn(digits):
            return "a Dutch citizen service number (BSN)"
    return None


@dataclass(frozen=True, slots=True)
class LifeCycle:
    """What the life-cycle functions use of a vault; built by the vault for each call.

    Args:
        store: the key store (it must implement the scoped-key protocol).
        domains: the vault's declared domains.
        subject_ref: ``subject_ref(domain, subject) -> str``, the keyed pseudonym of a subject.
        forget: drops a DEK from this process's caches (decryption and encryption).
        forget_subject: drops a subject's DEKs from this process's caches, by ``(domain, ref)``.
        recorder: the vault's audit recorder, or ``None`` when no domain is audited.
        clock: the vault's wall clock (UTC, aware).
        ledger: called once with ``([(domain, subject_ref), ...], request_id, at)`` before
            anything is fenced or destroyed, when the vault keeps an erasure ledger outside the
            database (it must have the entries on disk when it returns).
        finality: the date from which backups no longer hold what was erased at a given time,
            when the vault's backup mode can tell.
    """

    store: SupportsScopedKeys
    domains: Mapping[str, KeyDomain]
    subject_ref: Callable[[str, Any], str]
    forget: Callable[[bytes], None]
    forget_subject: Callable[[str, str], None]
    recorder: AuditRecorder | None
    clock: Callable[[], dt.datetime]
    ledger: Callable[[Sequence[tuple[str, str]], str, dt.datetime], None] | None = None
    finality: Callable[[Sequence[str], dt.datetime], dt.datetime | None] | None = None


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    limit = _TEXT_MAX[name]
    if not value.strip() or len(value) > limit or not value.isprintable():
        raise ConfigurationError(f"{name} must be 1 to {limit} printable characters")
    kind = looks_personal(value)
    if kind is not None:
        # The value is not repeated: it may be the identifier it looks like.
        raise ConfigurationError(
            f"{name} seems to hold {kind}; it is written into the receipt and the audit log, "
            "which name no person: use a ticket or case number"
        )
    return value


def aware(
    at: dt.datetime | None, clock: Callable[[], dt.datetime], name: str = "at"
) -> dt.datetime:
    """``at`` (timezone-aware, as UTC), or the clock's time when ``None``."""
    if at is None:
        return clock().astimezone(dt.UTC)
    if not isinstance(at, dt.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(at).__name__}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ConfigurationError(f"{name} must be timezone-aware (UTC, for example)")
    return at.astimezone(dt.UTC)


def _scope(domain: KeyDomain) -> str:
    return domain.dek_scope


def _subject_domains(life: LifeCycle, names: Iterable[str] | None) -> list[KeyDomain]:
    if names is None:
        return [d for d in life.domains.values() if _scope(d) == "subject"]
    if isinstance(names, str):
        raise TypeError("domains must be a list of domain names, not a single name")
    chosen: list[KeyDomain] = []
    for name in dict.fromkeys(names):
        domain = life.domains.get(name)
        if domain is None:
            raise DomainError(f"domain {name!r} is not declared in this vault")
        if _scope(domain) != "subject":
            raise DomainError(
                f"domain {name!r} does not keep a key per subject (dek_scope={_scope(domain)!r}): "
                "its values cannot be erased by subject"
            )
        chosen.append(domain)
    return chosen


def _retained(
    domain: KeyDomain, record: SubjectRecord | None, now: dt.datetime
) -> tuple[bool, dt.datetime | None]:
    """Whether a ``no_less_than`` retention keeps the subject's data in ``domain``, and until when.

    A minimum counted from the relationship's end holds while no end is recorded (the minimum
    has not even begun) and until its deadline after the end. A minimum counted from capture
    holds as long as the subject has keys: when the last value was captured is not known. (The
    caller treats a subject with no live key there as not retained: there is nothing to keep.)
    """
    retention = domain.retention
    if retention is None or retention.kind != "no_less_than":
        return False, None
    if retention.after == "relationship_end":
        end = record.relationship_end if record is not None else None
        if end is None:
            return True, None
        until = retention.deadline(end)
        return until > now, until
    return True, None


def _data_keys(records: Iterable[DataKeyRecord]) -> list[DataKeyRecord]:
    return [r for r in records if r.purpose == "data"]


def _destroy_subject_keys(
    life: LifeCycle, domain: str, ref: str, now: dt.datetime
) -> tuple[int, int, bool]:
    """Destroy every key of ``ref`` in ``domain``; return (destroyed now, destroyed before, any).

    The subject is fenced already, so no process makes a new key for it; one that made its key
    before it saw the fence is caught by the next listing. Every key listed leaves this
    process's caches, destroyed or not.
    """
    store = life.store
    destroyed = 0
    before: int | None = None
    seen_any = False
    for _ in range(MAX_ROUNDS):
        keys = _data_keys(store.subject_keys(domain, ref))
        if before is None:
            before = sum(1 for k in keys if k.state is DekState.DESTROYED and not k.wrapped)
        seen_any = seen_any or bool(keys)
        # A row marked destroyed that keeps its wrapped bytes (a writer's) is live.
        live = [k for k in keys if k.state is not DekState.DESTROYED or k.wrapped]
        for key in keys:
            life.forget(key.dek_id)
        if not live:
            life.forget_subject(domain, ref)
            return destroyed, before, seen_any
        for key in live:
            if store.destroy_key(key.dek_id, reason="erasure", at=now):
                destroyed += 1
            life.forget(key.dek_id)
        life.forget_subject(domain, ref)
    raise KeyStoreError(
        f"the subject's keys in domain {domain} were still being created after {MAX_ROUNDS} "
        "rounds of destruction (is the fence honoured by every writer?); run the erasure again"
    )


def _facts(**facts: object) -> tuple[str, ...]:
    """An event's ``rows`` for a life-cycle event: ``name=value`` facts, no row key."""
    return tuple(f"{name}={value}" for name, value in facts.items() if value is not None)


def _event(
    action: str,
    domain: str,
    *,
    count: int,
    at: dt.datetime,
    table: str | None = None,
    **facts: object,
) -> AuditEvent:
    scope = current_scope()
    return AuditEvent(
        principal=scope.principal.name,
        purpose=scope.purpose,
        action=action,
        domain=domain,
        table=table,
        column=None,
        rows=_facts(**facts),
        count=count,
        dek_id=None,
        at=at,
    )


def _audit(life: LifeCycle, events: Sequence[AuditEvent]) -> bool:
    """Write life-cycle events at once; False when the vault keeps no audit log."""
    if life.recorder is None:
        return False
    life.recorder.record_now(events)
    return True


def _status(results: Sequence[DomainErasure], cells: int) -> ErasureStatus:
    retained = any(r.status == "retained" for r in results)
    erased = any(r.status == "erased" for r in results) or cells > 0
    if retained:
        return "partially_granted" if erased else "refused"
    return "granted" if erased else "nothing_to_erase"


def _cells(cells: Callable[[], Mapping[str, int]]) -> tuple[tuple[str, int], ...]:
    found = cells()
    if not isinstance(found, Mapping):
        raise TypeError("the cells callback must return a mapping of table name to rows")
    tables: list[tuple[str, int]] = []
    for table, rows in found.items():
        if not isinstance(table, str) or isinstance(rows, bool) or not isinstance(rows, int):
            raise TypeError("the cells callback must return {table name: rows (int)}")
        if rows < 0:
            raise ConfigurationError("the cells callback returned a negative row count")
        tables.append((table, rows))
    return tuple(sorted(tables))


def erase_subject(
    life: LifeCycle,
    subject: object,
    *,
    reason: str,
    request_id: str,
    domains: Iterable[str] | None = None,
    cells: Callable[[], Mapping[str, int]] | None = None,
) -> ErasureReceipt:
    """Fence, destroy, null the cells, audit, and return the receipt (see Vault.erase_subject)."""
    reason = _check_text("reason", reason)
    request_id = _check_text("request_id", request_id)
    if cells is not None and not callable(cells):
        raise TypeError("cells must be a callable returning {table name: rows}")
    targets = _subject_domains(life, domains)
    store = life.store
    now = life.clock().astimezone(dt.UTC)
    # Refs first: a subject of a type the vault refuses fails here, before anything changes.
    plans = []
    for domain in targets:
        ref = life.subject_ref(domain.name, subject)
        record = store.get_subject(domain.name, ref)
        retained, until = _retained(domain, record, now)
        if retained and not any(
            k.state is not DekState.DESTROYED
            for k in _data_keys(store.subject_keys(domain.name, ref))
        ):
            retained, until = False, None  # nothing of the subject is kept there to retain
        plans.append((domain, ref, record, retained, until))
    # (0) The ledger outside the database, before the database changes.
    erasing = [
        (domain.name, ref) for domain, ref, _record, retained, _until in plans if not retained
    ]
    if life.ledger is not None and erasing:
        life.ledger(erasing, request_id, now)
    # (1) Fence every domain to erase before destroying anything anywhere.
    for domain, ref, record, retained, _until in plans:
        if retained:
            continue
        fenced = record is not None and record.fenced_at is not None
        store.put_subject(
            SubjectRecord(
                domain=domain.name,
                subject_ref=ref,
                relationship_end=record.relationship_end if record is not None else None,
                fenced_at=record.fenced_at if fenced and record is not None else now,
                erased_at=(
                    record.erased_at
                    if fenced and record is not None and record.erased_at is not None
                    else now
                ),
                request_id=request_id,
            )
        )
    # (2) Destroy, domain by domain, until no key of the subject is live.
    results: list[DomainErasure] = []
    for domain, ref, _record, retained, until in plans:
        if retained:
            ground = domain.retention.ground if domain.retention is not None else None
            results.append(
                DomainErasure(domain.name, "retained", ground=ground, retained_until=until)
            )
            continue
        destroyed, before, any_keys = _destroy_subject_keys(life, domain.name, ref, now)
        results.append(
            DomainErasure(
                domain.name,
                "erased" if any_keys else "no_keys",
                keys_destroyed=destroyed,
                keys_already_destroyed=before,
            )
        )
    # (4a) The domains' audit events, written before the cells callback runs: the keys are
    # destroyed already, and a failure of the application's database there must not leave
    # their destruction out of the chain. Counts, the request id and the reason; never the
    # subject or its ref.
    events = [
        _event(
            ERASE_ACTION,
            r.domain,
            count=r.keys_destroyed,
            at=now,
            request_id=request_id,
            reason=reason,
            status=r.status,
            keys_destroyed=r.keys_destroyed,
            keys_already_destroyed=r.keys_already_destroyed,
            ground=r.ground,
        )
        for r in results
    ]
    audited = _audit(life, events) if events else life.recorder is not None
    # (3) The blind-index cells (the caller's callback: vaultkit.sqla knows the tables).
    tables: tuple[tuple[str, int], ...] = ()
    if cells is not None and any(r.status != "retained" for r in results):
        tables = _cells(cells)
    status = _status(results, sum(rows for _, rows in tables))
    # (4b) One audit event per table of the cells.
    anchor = targets[0].name if targets else next(iter(life.domains))
    table_events = [
        _event(
            ERASE_ACTION,
            anchor,
            count=rows,
            at=now,
            table=table,
            request_id=request_id,
            reason=reason,
            cells=rows,
        )
        for table, rows in tables
    ]
    if table_events:
        audited = _audit(life, table_events)
    erased = [r.domain for r in results if r.status == "erased"]
    finality = life.finality(erased, now) if life.finality is not None and erased else None
    log.info(
        "erasure %s: %s, %d keys destroyed in %d domains",
        request_id,
        status,
        sum(r.keys_destroyed for r in results),
        len(erased),
    )
    # (5) The receipt.
    return ErasureReceipt(
        request_id=request_id,
        reason=reason,
        status=status,
        erased_at=now,
        finality=finality,
        domains=tuple(results),
        tables=tables,
        audited=audited,
    )


def _destroy_batch(
    store: SupportsScopedKeys, keys: Sequence[DataKeyRecord], at: dt.datetime
) -> list[bool]:
    """Destroy ``keys`` for retention; for each, whether this call destroyed it.

    A store with ``destroy_keys`` (one transaction for the batch) is used so; any other is
    asked key by key (one commit each).
    """
    if not isinstance(store, SupportsDestroyMany):
        return [store.destroy_key(k.dek_id, reason="retention", at=at) for k in keys]
    done = set(store.destroy_keys([k.dek_id for k in keys], reason="retention", at=at))
    return [k.dek_id in done for k in keys]


def enforce_retention(
    life: LifeCycle, *, at: dt.datetime | None = None, batch: int = 1000
) -> EnforcementReport:
    """Destroy the keys due by ``at`` in batches (see Vault.enforce_retention)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError("batch must be a positive integer")
    now = life.clock().astimezone(dt.UTC)
    at = now if at is None else aware(at, life.clock)
    if at > now:
        # Keys due by a later time are not due yet: destroying them now would cut a retention
        # short, and break a no_less_than minimum (the legal one of contract data).
        raise ConfigurationError(
            f"at ({at.isoformat(timespec='seconds')}) is later than the vault's clock "
            f"({now.isoformat(timespec='seconds')}): keys are destroyed when they are due, never before"
        )
    store = life.store
    started = time.monotonic()
    by_domain: Counter[str] = Counter()
    destroyed = already = batches = 0
    audited = life.recorder is not None
    previous: frozenset[bytes] = frozenset()
    while True:
        due = store.due_keys(at, limit=batch) or _ended_buckets(life, at, batch)
        ids = frozenset(k.dek_id for k in due)
        if not due or ids <= previous:
            # Nothing due, or the store hands back the keys it was just told to destroy.
            if due:
                raise KeyStoreError(
                    f"the key store still lists {len(due)} destroyed keys as due; not retrying"
                )
            break
        previous = ids
        batches += 1
        counts = Counter(k.domain for k in due)
        now = life.clock().astimezone(dt.UTC)
        # Audited before the keys go: no key is destroyed without its event.
        _audit(
            life,
            [
                _event(
                    RETENTION_ACTION,
                    domain,
                    count=n,
                    at=now,
                    reason="retention",
                    due_by=at.isoformat(timespec="seconds"),
                    batch=batches,
                )
                for domain, n in sorted(counts.items())
            ],
        )
        for key, done in zip(due, _destroy_batch(store, due, now), strict=True):
            if done:
                destroyed += 1
                by_domain[key.domain] += 1
            else:
                already += 1
            life.forget(key.dek_id)
        log.info("retention: batch %d destroyed %d due keys", batches, len(due))
    return EnforcementReport(
        at=at,
        keys_destroyed=destroyed,
        already_destroyed=already,
        batches=batches,
        by_domain=tuple(sorted(by_domain.items())),
        audited=audited,
        seconds=time.monotonic() - started,
    )


def _ended_buckets(life: LifeCycle, at: dt.datetime, batch: int) -> list[DataKeyRecord]:
    """Bucket keys past their fixed deadline (bucket end + the code's retention) by ``at`` whose
    ``destroy_at`` does not say so (a database writer cleared or moved it); oldest first."""
    ended = getattr(life.store, "ended_keys", None)
    if ended is None:
        return []
    due: list[DataKeyRecord] = []
    for domain in life.domains.values():
        if domain.dek_scope != "bucket":
            continue
        for record in ended(domain.name, at, limit=batch):
            deadline = _scoped.fixed_deadline(domain, record)
            if deadline is None or deadline > at:
                break  # ordered by bucket end: the later ones are not due either
            due.append(record)
    return due[:batch]


def _violations(domain: KeyDomain, summary: KeySummary, at: dt.datetime) -> list[str]:
    """How reads of ``domain`` would accept values beyond its retention at ``at``."""
    retention = domain.retention
    if retention is None or retention.kind != "no_longer_than":
        return []
    found: list[str] = []
    # Live keys of subjects whose relationship ended, with no deadline: rows changed since
    # end_relationship (reads take the deadline from the subject's end all the same).
    undated = summary.ended_without_deadline if retention.after == "relationship_end" else 0
    if undated:
        found.append(
            f"{undated} live keys of subjects whose relationship end is recorded have no "
            "destroy_at: their rows were changed (reads go by the end all the same; run "
            "end_relationship again for them)"
        )
    oldest = summary.oldest_readable_capture
    if oldest is None:
        return found
    bucket = domain.bucket
    if _scope(domain) == "bucket" and bucket is not None:
        # A value captured at the bucket's start must be unreadable from its bucket's end plus
        # the retention on; the oldest readable bucket is not due (its destroy_at is later).
        deadline = retention.deadline(oldest + bucket)
        if deadline <= at:
            found.append(
                f"a live bucket key not due holds captures from {oldest.isoformat()}, whose "
                f"retention ended {deadline.isoformat()} (its destroy_at was moved, or never set)"
            )
    return found


def retention_report(life: LifeCycle, *, at: dt.datetime | None = None) -> RetentionReport:
    """Per-domain policy, key counts and violations at ``at`` (see Vault.retention_report)."""
    at = aware(at, life.clock)
    lines = []
    for domain in life.domains.values():
        summary = life.store.key_summary(domain.name, at, bucket=domain.bucket)
        retention = domain.retention
        relationship = retention is not None and retention.after == "relationship_end"
        lines.append(
            DomainRetention(
                domain=domain.name,
                scope=_scope(domain),
                duration=retention.duration if retention is not None else None,
                after=retention.after if retention is not None else None,
                kind=retention.kind if retention is not None else None,
                ground=retention.ground if retention is not None else None,
                bucket=domain.bucket,
                live=summary.live,
                destroyed=summary.destroyed,
                due=summary.due,
                oldest_readable_capture=summary.oldest_readable_capture,
                subjects=summary.subjects,
                subjects_without_end=summary.subjects_without_end if relationship else None,
                violations=tuple(_violations(domain, summary, at)),
            )
        )
    return RetentionReport(at=at, domains=tuple(lines))
