"""Life-cycle operations on a domain's keys: KEK rotation, retiring and destroying DEKs.

Functions over a :class:`~vaultkit._keyring.Keyring` (its providers and key store). They hold no
state and no lock of their own: the key store's compare-and-set keeps concurrent rotations
apart, and the keyring is told under its own lock what this process must stop using.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from vaultkit._keyring import PURPOSE, Keyring
from vaultkit.core.envelope import key_row_context
from vaultkit.errors import KeyStoreError
from vaultkit.keys.provider import KeyRef, SupportsRewrap
from vaultkit.store import WRAPPING_KEK_ID, DekState, SupportsScopedKeys

__all__ = ["RotationReport", "destroy_dek", "retire_dek", "rotate_kek"]

log = logging.getLogger("vaultkit")


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What :meth:`Vault.rotate_kek` did: the new KEK version and how many key rows it rewrapped."""

    domain: str
    kek_version: int
    rewrapped: int
    already_current: int
    changed_meanwhile: int


def rotate_kek(
    keyring: Keyring, domain: str, *, new_version: bool, skip: Collection[bytes] = ()
) -> RotationReport:
    """Rotate ``domain``'s KEK and rewrap its key rows (see :meth:`Vault.rotate_kek`), but for
    those of ``skip`` (a shred epoch's old wrapping keys: never under the new version)."""
    provider = keyring.providers[domain]
    store = keyring.store
    target = provider.rotate(domain) if new_version else provider.primary(domain)
    rewrapped = current = changed = 0
    # Subject and bucket DEKs are wrapped under the domain's wrapping key, not the KEK: only the
    # wrapping key's row (and the process DEKs and named keys) is rewrapped, whatever their
    # number. A store with scoped keys lists just those rows.
    rows = (
        store.provider_wrapped(domain)
        if isinstance(store, SupportsScopedKeys)
        else list(store.records(domain=domain))
    )
    for record in rows:
        if (
            record.state is DekState.DESTROYED
            or record.kek_id == WRAPPING_KEK_ID
            or record.dek_id in skip
        ):
            continue
        if (record.kek_id, record.kek_version) == (target.key_id, target.version):
            current += 1
            continue
        context = key_row_context(domain, record.dek_id, record.purpose, record.name)
        old_ref = KeyRef(domain, record.kek_id, record.kek_version)
        if isinstance(provider, SupportsRewrap):
            # Inside the HSM / KMS / transit server: the DEK never travels.
            wrapped = provider.rewrap(old_ref, target, record.wrapped, context=context)
        else:
            key = provider.unwrap(old_ref, record.wrapped, context=context)
            wrapped = provider.wrap(target, key, context=context)
        if store.rewrap(record, kek_id=target.key_id, kek_version=target.version, wrapped=wrapped):
            rewrapped += 1
        else:
            changed += 1
    log.info(
        "rotated KEK of domain %s to v%d: %d key rows rewrapped", domain, target.version, rewrapped
    )
    return RotationReport(domain, target.version, rewrapped, current, changed)


def retire_dek(keyring: Keyring, dek_id: bytes) -> None:
    """Mark a DEK retired, and stop encrypting under it here at once (see Vault.retire_dek)."""
    store = keyring.store
    record = store.get(dek_id)
    if record is None or record.purpose != PURPOSE:
        raise KeyStoreError(f"no data key {dek_id.hex()} in the key store")
    if record.state is DekState.DESTROYED:
        raise KeyStoreError(f"DEK {dek_id.hex()} is already destroyed")
    store.set_state(dek_id, DekState.RETIRED)
    # This process stops encrypting under it at once (others within key_check_interval).
    keyring.stop_encrypting(record.domain, dek_id)
    log.info("retired DEK %s of domain %s", dek_id.hex(), record.domain)


def destroy_dek(keyring: Keyring, dek_id: bytes, *, references: int) -> None:
    """Erase a retired DEK that no value references (see Vault.destroy_dek)."""
    store = keyring.store
    record = store.get(dek_id)
    if record is None or record.purpose != PURPOSE:
        raise KeyStoreError(f"no data key {dek_id.hex()} in the key store")
    if record.state is not DekState.RETIRED:
        raise KeyStoreError(
            f"DEK {dek_id.hex()} is {record.state.value}; retire it and re-encrypt first"
        )
    if references != 0:
        raise KeyStoreError(f"DEK {dek_id.hex()} is still referenced by {references} values")
    if isinstance(store, SupportsScopedKeys):
        store.destroy_key(dek_id, reason="destroyed", at=keyring.now())
    else:
        store.destroy(dek_id)
    keyring.forget_erased(dek_id, "destroyed")
    log.info("destroyed DEK %s of domain %s", dek_id.hex(), record.domain)
