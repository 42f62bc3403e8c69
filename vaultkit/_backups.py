"""Erasure in backups: the backup modes of a vault, their finality date, and shred epochs.

A database backup holds the key store as it was. Restored with a live KEK, it brings back the
keys of a subject erased since. Three modes bound that, and each gives the date from which no
backup holds an erased subject's keys any more (the receipt's ``finality``):

- **a key store with its own short backup retention** (``key_store_backup_retention``): the key
  store lives in a database of its own (``SQLKeyStore(engine=keys_engine)``) whose backups are
  kept that long: finality = erasure time + that retention. vaultkit cannot check it; the
  operator states it.
- **shred epochs** (``shred_epoch_interval``; :func:`shred_epoch`, run on that schedule): each
  epoch rotates the domain's KEK, wraps the domain's scoped keys under a new wrapping key,
  destroys the old wrapping-key row and then the old KEK version in the provider. Every backup
  older than the epoch is unreadable from then on, whoever holds it: finality = the first epoch
  after the erasure + the provider's deletion delay (AWS KMS: 7 days at least). The same number
  is the disaster-recovery window: a backup older than the last epoch restores nothing readable.
- **an erasure ledger** (``erasure_ledger``, :mod:`vaultkit._ledger`): replayed at start-up, it
  destroys again what a restore brought back. It protects restores that go through a vault, not
  a backup in an attacker's hands, so it gives no finality date of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit import _lifecycle, _scoped
from vaultkit._keyring import WRAPPING_PURPOSE, Keyring, index_key_id
from vaultkit._ledger import ErasureLedger, LedgerEntry
from vaultkit.errors import ConfigurationError
from vaultkit.keys.provider import SupportsVersionDestruction, VersionDestruction
from vaultkit.lifecycle import ShredReport
from vaultkit.store import (
    WRAPPING_KEK_ID,
    DataKeyRecord,
    DekState,
    KeyStore,
    SupportsScopedKeys,
)

__all__ = ["BackupModes", "finality", "next_epoch", "shred_epoch"]

log = logging.getLogger("vaultkit")


def _duration(name: str, value: object) -> dt.timedelta | None:
    if value is None:
        return None
    if not isinstance(value, dt.timedelta):
        raise TypeError(f"{name} must be a datetime.timedelta or None")
    if value <= dt.timedelta(0):
        raise ConfigurationError(f"{name} must be positive")
    return value


@dataclass(frozen=True, slots=True)
class BackupModes:
    """The backup modes a vault was opened with (see the module docstring)."""

    ledger: ErasureLedger | None
    key_store_backup_retention: dt.timedelta | None
    shred_epoch_interval: dt.timedelta | None

    @classmethod
    def start(
        cls,
        store: KeyStore,
        *,
        erasure_ledger: str | os.PathLike[str] | None,
        key_store_backup_retention: dt.timedelta | None,
        shred_epoch_interval: dt.timedelta | None,
        now: dt.datetime,
    ) -> BackupModes:
        """Check the options, and replay the ledger into ``store`` when there is one."""
        retention = _duration("key_store_backup_retention", key_store_backup_retention)
        interval = _duration("shred_epoch_interval", shred_epoch_interval)
        ledger = None
        if erasure_ledger is not None:
            if not isinstance(erasure_ledger, str | os.PathLike):
                raise TypeError("erasure_ledger must be a path")
            path = Path(erasure_ledger)
            if not path.parent.is_dir():
                # Never a silent empty replay: a ledger whose disk is not mounted reads as none.
                raise ConfigurationError(
                    f"the directory of the erasure ledger {path} does not exist (is its disk "
                    "mounted?); create it to start a new ledger"
                )
            ledger = ErasureLedger(path)
            ledger.replay(store, now=now)
        return cls(ledger, retention, interval)

    def append(self, domain: str, subject_ref: str, request_id: str, at: dt.datetime) -> None:
        """Write one erasure to the ledger (durably) before it happens; no-op without one."""
        self.append_many([(domain, subject_ref)], request_id, at)

    def append_many(
        self, pairs: Sequence[tuple[str, str]], request_id: str, at: dt.datetime
    ) -> None:
        """Write the erasure of ``(domain, subject_ref)`` pairs to the ledger in ONE durable
        write (all of them or none: a write cut short is cut off again), before it happens;
        no-op without a ledger."""
        if self.ledger is not None and pairs:
            self.ledger.append([LedgerEntry(d, ref, at, request_id) for d, ref in pairs])


def next_epoch(
    store: SupportsScopedKeys, domain: str, interval: dt.timedelta, after: dt.datetime
) -> dt.datetime:
    """The first shred epoch of ``domain`` due strictly after ``after``, by its schedule.

    Epochs are due every ``interval`` from the creation of the domain's newest wrapping key (the
    last epoch); a domain with none is due ``interval`` after ``after``.
    """
    made = [r.created_at for r in store.wrapping_keys(domain)]
    if not made:
        return after + interval
    last = max(made)
    if last > after:
        return last
    return last + interval * ((after - last) // interval + 1)


def finality(
    modes: BackupModes,
    store: KeyStore,
    providers: dict[str, object],
    erased_at: dt.datetime,
    domains: Sequence[str],
) -> dt.datetime | None:
    """From when no backup holds what was erased at ``erased_at`` in ``domains``, or ``None``.

    The earlier of the two modes that give a date: ``erased_at + key_store_backup_retention``,
    and (for shred epochs, every domain's provider able to destroy KEK versions) the latest over
    ``domains`` of the next epoch after ``erased_at`` plus that provider's deletion delay.
    ``None`` when neither mode is configured: backups may still hold the keys.
    """
    dates: list[dt.datetime] = []
    if modes.key_store_backup_retention is not None:
        dates.append(erased_at + modes.key_store_backup_retention)
    interval = modes.shred_epoch_interval
    if interval is not None and isinstance(store, SupportsScopedKeys) and domains:
        epochs: list[dt.datetime] = []
        for domain in domains:
            provider = providers.get(domain)
            if not isinstance(provider, SupportsVersionDestruction):
                epochs = []
                break
            delay = provider.destruction_delay
            epochs.append(next_epoch(store, domain, interval, erased_at) + delay)
        if epochs:
            dates.append(max(epochs))
    return min(dates) if dates else None


def _epoch_of(record: DataKeyRecord) -> int:
    name = record.name or ""
    prefix, _, number = name.partition("@")
    return int(number) if prefix == "wrapping" and number.isdigit() else 0


def _rewrap_scoped(
    keyring: Keyring,
    domain: str,
    old: dict[int, AESGCM],
    epoch: int,
    new: AESGCM,
    batch: int,
) -> tuple[int, int]:
    """Rewrap the live scoped DEKs of ``domain`` under ``old`` epochs to ``epoch`` (CAS per row).

    Returns (rewrapped, changed meanwhile or unreadable).
    """
    store = keyring.store
    done = skipped = 0
    pending: list[DataKeyRecord] = []

    def flush() -> None:
        nonlocal done, skipped
        for record in pending:
            context = _scoped.record_context(record)
            dek = _scoped.unwrap(old[record.kek_version], record.wrapped, context)
            if dek is None:  # damaged, or moved by a database writer: unreadable already
                skipped += 1
                continue
            wrapped = _scoped.wrap(new, dek, context)
            del dek
            if store.rewrap(record, kek_id=WRAPPING_KEK_ID, kek_version=epoch, wrapped=wrapped):
                done += 1
            else:
                skipped += 1
        log.info("shred epoch of domain %s: %d scoped keys rewrapped so far", domain, done)
        pending.clear()

    for record in store.records(domain=domain):
        if (
            record.kek_id == WRAPPING_KEK_ID
            and record.kek_version in old
            and record.state is not DekState.DESTROYED
        ):
            pending.append(record)
            if len(pending) >= batch:
                flush()
    if pending:
        flush()
    return done, skipped


def shred_epoch(keyring: Keyring, domain: str, *, batch: int = 1000) -> ShredReport:
    """Start a new shred epoch of ``domain`` (see :meth:`Vault.shred_epoch`)."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigurationError("batch must be a positive integer")
    provider = keyring.providers[domain]
    if not isinstance(provider, SupportsVersionDestruction):
        raise ConfigurationError(
            f"the provider of domain {domain!r} ({type(provider).__name__}) cannot destroy KEK "
            "versions (SupportsVersionDestruction): shred epochs need it"
        )
    store = keyring.store
    now = keyring.now()
    # (0) The old wrapping keys unwrapped in memory, under the old KEK version: their rows are
    #     never rewrapped under the new one (a backup taken during the epoch would hold them
    #     under a live KEK version, and revive every pre-erasure backup after it).
    rows: list[DataKeyRecord] = []
    old_epochs: list[int] = []
    old_keys: dict[int, AESGCM] = {}
    if isinstance(store, SupportsScopedKeys) and keyring.policy.domains[domain].scoped:
        rows = store.wrapping_keys(domain)
        old_epochs = sorted(_epoch_of(r) for r in rows if r.state is not DekState.DESTROYED)
        old_epochs = [e for e in old_epochs if e > 0]
        old_keys = {e: keyring._wrapping_key(domain, e) for e in old_epochs}
    old_rows = {index_key_id(domain, _scoped.wrapping_name(e)) for e in old_epochs}
    # (1) A new KEK version; every row the KEK wraps, but the old wrapping keys, rewrapped.
    rotation = _lifecycle.rotate_kek(keyring, domain, new_version=True, skip=old_rows)
    target = rotation.kek_version
    changed = rotation.changed_meanwhile
    epoch: int | None = None
    scoped_done = 0
    destroyed_epochs: list[int] = []
    stranded = 0
    if isinstance(store, SupportsScopedKeys) and keyring.policy.domains[domain].scoped:
        epoch = max((_epoch_of(r) for r in rows), default=0) + 1
        # (2) Wrapping key N+1, under the new KEK version.
        name = _scoped.wrapping_name(epoch)
        keyring._create_named_key(domain, name, index_key_id(domain, name), WRAPPING_PURPOSE)
        keyring.forget_wrapping(domain)
        new_key = keyring._wrapping_key(domain, epoch)
        # (3) Every live scoped DEK rewrapped locally from N to N+1 (compare-and-set per row).
        scoped_done, skipped = _rewrap_scoped(keyring, domain, old_keys, epoch, new_key, batch)
        changed += skipped
        # (4) The old wrapping rows destroyed; then once more for rows another process inserted
        #     under an old epoch before it saw the destruction (it re-checks after its insert).
        for old_epoch in old_epochs:
            old_name = _scoped.wrapping_name(old_epoch)
            if store.destroy_key(index_key_id(domain, old_name), reason="shred", at=now):
                destroyed_epochs.append(old_epoch)
        keyring.forget_wrapping(domain)
        late, skipped = _rewrap_scoped(keyring, domain, old_keys, epoch, new_key, batch)
        scoped_done += late
        old_keys.clear()
        stranded += sum(
            1
            for r in store.records(domain=domain)
            if r.kek_id == WRAPPING_KEK_ID
            and r.kek_version in old_epochs
            and r.state is not DekState.DESTROYED
        )
    # (5) Rows a process wrapped under the old KEK meanwhile: onto the new version too.
    again = _lifecycle.rotate_kek(keyring, domain, new_version=False)
    old_refs = [r for r in provider.versions(domain) if r.version < target]
    old_ids = {(r.key_id, r.version) for r in old_refs}

    def under_old() -> int:
        rows = (
            store.provider_wrapped(domain)
            if isinstance(store, SupportsScopedKeys)
            else list(store.records(domain=domain))
        )
        return sum(
            1
            for r in rows
            if r.state is not DekState.DESTROYED and (r.kek_id, r.kek_version) in old_ids
        )

    destructions: list[VersionDestruction] = []
    if under_old():
        log.warning(
            "shred epoch of domain %s: rows are still wrapped under an old KEK version; it is "
            "not destroyed (run the epoch again)",
            domain,
        )
    else:
        # (6) The old KEK versions destroyed in the provider, newest first (transit trims below).
        for ref in sorted(old_refs, key=lambda r: r.version, reverse=True):
            destructions.append(provider.destroy_version(ref))
        stranded += under_old()
    versions = sorted({v for d in destructions for v in d.versions})
    final_at = max((d.final_at for d in destructions), default=None)
    report = ShredReport(
        domain=domain,
        epoch=epoch,
        kek_version=target,
        kek_rows_rewrapped=rotation.rewrapped + again.rewrapped,
        scoped_rewrapped=scoped_done,
        changed_meanwhile=changed + again.changed_meanwhile,
        wrapping_destroyed=tuple(destroyed_epochs),
        kek_versions_destroyed=tuple(versions),
        final_at=final_at,
        stranded=stranded,
    )
    log.info(
        "shred epoch of domain %s: KEK v%d, epoch %s, %d scoped keys rewrapped, KEK versions "
        "%s destroyed (final %s)",
        domain,
        target,
        epoch,
        scoped_done,
        versions,
        final_at,
    )
    return report
