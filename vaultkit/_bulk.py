"""The subject keys of many members at once: one batch of key-store statements per 500 members
instead of one transaction per member (:meth:`vaultkit.Vault.prepare_subjects`).

Same guarantees as the single-key path (``Keyring._subject_key`` / ``_new_subject_key``): fenced
subjects get no key; a subject whose relationship end is recorded gets its deadline bound into the
wrap; after the insert is committed, the fences are read again and a new key of a subject fenced
meanwhile is destroyed (an erasure that fenced after that read sees the key in its sweep); a new
key whose wrapping epoch was destroyed meanwhile (a shred) is destroyed too and not used. Nothing
here logs or keeps a subject or its reference beyond the keyring's own bounded caches.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from vaultkit import _keyring, _scoped
from vaultkit._keyring import Keyring, index_key_id
from vaultkit.core.envelope import DataKey, new_data_key, new_dek_id
from vaultkit.errors import ConfigurationError, DomainError, ValueErasedError
from vaultkit.store import (
    WRAPPING_KEK_ID,
    DataKeyRecord,
    DekState,
    SubjectRecord,
    SupportsBulkScopedKeys,
)

if TYPE_CHECKING:
    from vaultkit.keys.domains import KeyDomain

__all__ = ["prepare_subjects"]

log = logging.getLogger("vaultkit")


def prepare_subjects(keyring: Keyring, domain: str, subjects: Iterable[object]) -> int:
    """Make ready the encryption keys of ``subjects`` in the subject-scoped ``domain``.

    Returns how many subjects got a key ready in this process (found in the key store or made);
    subjects already ready, fenced, or past their retention are skipped (their writes raise as
    they would without this call).
    """
    if keyring.scopes.get(domain) != "subject":
        if domain not in keyring.providers:
            raise DomainError(f"domain {domain!r} is not declared in this vault")
        raise ConfigurationError(
            f"domain {domain!r} has no subject keys (dek_scope={keyring.scope_of(domain)!r})"
        )
    refs = list(dict.fromkeys(keyring.subject_ref(domain, s) for s in subjects))
    if not refs:
        return 0
    with keyring._lock:
        if keyring._closed:
            raise ConfigurationError("this vault is closed")
        now_mono = _keyring._monotonic()  # looked up at call time (tests move it)
        missing = [
            r for r in refs if not _ready(keyring.subject_actives.get((domain, r)), now_mono)
        ]
        if not missing:
            return 0
        store = keyring.scoped_store()
        if not isinstance(store, SupportsBulkScopedKeys):
            return _one_by_one(keyring, domain, missing)
        ready = _batch(keyring, store, domain, missing)
        _seed(keyring, domain, ready)
        _seed_reads(keyring, domain, ready)
        return len(ready)


def _ready(active: _keyring._Active | None, now: float) -> bool:
    """Whether a cached subject DEK can encrypt now without a key-store read."""
    return (
        active is not None
        and now < active.deadline
        and now < active.retire_at
        and now < active.expires_at
    )


def _one_by_one(keyring: Keyring, domain: str, refs: Sequence[str]) -> int:
    """The single-key path for each subject (a store without SupportsBulkScopedKeys)."""
    ready: dict[str, _keyring._Active] = {}
    for ref in refs:
        try:
            ready[ref] = keyring._subject_key(domain, ref)
        except ValueErasedError:
            continue  # fenced or expired: its write raises
    _seed(keyring, domain, ready)
    return len(ready)


def _usable(
    keyring: Keyring,
    policy: KeyDomain,
    rows: Sequence[DataKeyRecord],
    now: dt.datetime,
    subject: SubjectRecord | None,
) -> _keyring._Active | None:
    """The newest usable key of a subject among its ACTIVE rows (as ``_subject_key`` chooses):
    never one created at or before the subject's last erasure (a row hidden from it)."""
    for record in reversed(rows):
        if (
            _keyring._erased_before(subject, record)
            or record.state is not DekState.ACTIVE
            or record.kek_id != WRAPPING_KEK_ID
            or record.scope != "subject"
            or record.encryptions >= keyring.max_uses
        ):
            continue
        record_deadline = _scoped.deadline(policy, record)
        if record_deadline is not None and record_deadline <= now:
            continue
        key = keyring._unwrap_scoped(record, quiet=True)
        if key is not None:
            return keyring._scoped_active(key, record, now)
    return None


def _deadline_of(policy: KeyDomain, subject: SubjectRecord | None) -> dt.datetime | None:
    retention = policy.retention
    if (
        retention is None
        or retention.after != "relationship_end"
        or subject is None
        or subject.relationship_end is None
    ):
        return None
    return _scoped.subject_deadline(retention, subject.relationship_end)


def _batch(
    keyring: Keyring, store: SupportsBulkScopedKeys, domain: str, refs: Sequence[str]
) -> dict[str, _keyring._Active]:
    """Find or make the keys of ``refs`` with a few statements per 500; call with the lock."""
    policy = keyring.policy.domains[domain]
    now = keyring.now()
    existing = store.active_subject_keys(domain, refs)
    fences = store.subject_records(domain, refs)
    ready: dict[str, _keyring._Active] = {}
    wanted: list[tuple[str, dt.datetime | None, dt.datetime | None]] = []
    for ref in refs:
        subject = fences.get(ref)
        if subject is not None and subject.fenced_at is not None:
            continue  # erased: no key; its write raises SubjectErasedError
        destroy_at = _deadline_of(policy, subject)
        if destroy_at is not None and destroy_at <= now:
            continue  # retention over: its write raises RetentionExpiredError
        active = _usable(keyring, policy, existing.get(ref, ()), now, subject)
        if active is not None:
            ready[ref] = active
        else:
            wanted.append((ref, destroy_at, subject.erased_at if subject is not None else None))
    if not wanted:
        return ready
    epoch, wrapping = keyring._current_wrapping(domain)
    made: list[tuple[DataKeyRecord, bytes]] = []
    for ref, destroy_at, erased_at in wanted:
        dek_id = new_dek_id()
        dek = new_data_key()
        # As the single-key path: the creation time is bound into the wrap in whole seconds,
        # after the subject's last erasure (a key created at or before it is refused on read).
        created = _scoped.whole_seconds(now, up=False)
        if erased_at is not None and created <= erased_at:
            created = _scoped.whole_seconds(erased_at, up=False) + dt.timedelta(seconds=1)
        context = _scoped.scoped_context(
            domain,
            dek_id,
            scope="subject",
            subject_ref=ref,
            not_after=None,
            destroy_at=destroy_at,
            created_at=created,
        )
        record = DataKeyRecord(
            dek_id=dek_id,
            domain=domain,
            purpose="data",
            kek_id=WRAPPING_KEK_ID,
            kek_version=epoch,
            wrapped=_scoped.wrap(wrapping, dek, context),
            state=DekState.ACTIVE,
            created_at=created,
            subject=ref,
            scope="subject",
            destroy_at=destroy_at,
        )
        made.append((record, dek))
    store.insert_many([record for record, _ in made])
    # Committed. An erasure may have fenced some subjects between our read and our insert (its
    # sweep may have missed their keys), or a shred may have destroyed the wrapping epoch.
    wrapping_row = keyring.store.get(index_key_id(domain, _scoped.wrapping_name(epoch)))
    shredded = wrapping_row is None or wrapping_row.state is DekState.DESTROYED
    if shredded:
        keyring.forget_wrapping(domain)
    after = store.subject_records(domain, [record.subject or "" for record, _ in made])
    at = keyring.now()
    for record, dek in made:
        ref = record.subject or ""
        subject = after.get(ref)
        if shredded or (subject is not None and subject.fenced_at is not None):
            keyring.scoped_store().destroy_key(
                record.dek_id, reason="shred" if shredded else "erasure", at=at
            )
            continue  # its write takes the single-key path, and raises or makes a key there
        deadline = _deadline_of(policy, subject)
        if deadline != record.destroy_at and deadline is not None:
            # The relationship's end was recorded meanwhile: take its deadline too.
            # Rebound by us, or meanwhile by end_relationship itself (our compare-and-set then
            # fails): either way the row now holds the deadline; encrypt knowing it.
            keyring._rebind(record, dek, deadline)
            record = keyring.store.get(record.dek_id) or record
        ready[ref] = keyring._scoped_active(DataKey(dek, record.dek_id, domain), record, now)
    log.info(
        "%d new subject DEKs in domain %s (wrapping epoch %d)",
        len(made),
        domain,
        epoch,
    )
    return ready


def _seed(keyring: Keyring, domain: str, ready: dict[str, _keyring._Active]) -> None:
    """Put the subjects' DEKs into the bounded subject LRU (no use counted); with the lock."""
    actives = keyring.subject_actives
    for ref, active in ready.items():
        slot = (domain, ref)
        old = actives.pop(slot, None)
        if old is not None:
            keyring._flush_count(old)
        while len(actives) >= keyring.subject_cache_size:
            _, evicted = actives.popitem(last=False)
            keyring._flush_count(evicted)
        actives[slot] = active


def _seed_reads(keyring: Keyring, domain: str, ready: dict[str, _keyring._Active]) -> None:
    """Also make the keys readable from the cache, as far as it has free room (a batch never
    evicts keys others are reading): the rows just written are read back without a key-store
    query per member. With the lock."""
    cache = keyring.cache
    room = cache.max_size - len(cache.by_id)
    if room <= 0:
        return
    policy = keyring.policy.domains[domain]
    wall = keyring.now()
    for active in ready.values():
        if room <= 0:
            break
        record = active.record
        if record is None or record.dek_id in cache.by_id:
            continue
        keyring._cache_key(record, active.key, deadline=_scoped.deadline(policy, record), wall=wall)
        room -= 1
