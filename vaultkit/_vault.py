"""The vault: the safe API's one object, a facade that validates and wires its collaborators.

Each job has its own room, and the vault only checks arguments and hands off:

* :mod:`vaultkit._access` (``Policy``): who may read or write each domain;
* :mod:`vaultkit._keyring` (``Keyring``): providers, active DEKs and budgets, the DEK cache,
  named keys;
* :mod:`vaultkit._recorder` (``AuditRecorder``): audit events, batched, fail-closed;
* :mod:`vaultkit._cipher` (``Cipher``, ``FieldCipher``): the two hot paths;
* :mod:`vaultkit._lifecycle`: KEK rotation, retiring and destroying DEKs.

Each collaborator that keeps state has its own lock and resets itself in a forked child; no code
path holds two of these locks at once (the cipher holds none, and calls the keyring and the
recorder one after the other).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from vaultkit import _backups, _bulk, _erasure, _lifecycle, _scoped
from vaultkit._access import Policy, Principal, Scope, acting_as, current_scope
from vaultkit._cipher import Cipher, Decrypted, FieldCipher, as_bytes
from vaultkit._codec import PlainValue, encode_value
from vaultkit._keyring import (
    AUDIT_PURPOSE,
    DATASET_PURPOSE,
    DEFAULT_CACHE_SIZE,
    DEFAULT_CACHE_TTL,
    DEFAULT_KEY_CHECK_INTERVAL,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_ENCRYPTIONS,
    INDEX_PURPOSE,
    BlindIndexKey,
    CacheInfo,
    Keyring,
)
from vaultkit._lifecycle import RotationReport
from vaultkit._offload import call as _call
from vaultkit._offload import run_async
from vaultkit._recorder import DEFAULT_AUDIT_BATCH, AuditRecorder
from vaultkit._redact import NoPickle
from vaultkit._requests import REF_COLUMN, REF_TABLE, RequestLog
from vaultkit.audit import AuditEvent, AuditLog, open_audit_log
from vaultkit.core import wire
from vaultkit.errors import ConfigurationError, DomainError
from vaultkit.keys.domains import KeyDomain
from vaultkit.keys.provider import KeyProvider, SupportsAuditSigner, SupportsWriterPins
from vaultkit.lifecycle import EnforcementReport, ErasureReceipt, RetentionReport, ShredReport
from vaultkit.store import (
    DataKeyRecord,
    DekState,
    KeyStore,
    SQLKeyStore,
    SubjectRecord,
    SupportsScopedKeys,
    open_store,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "BlindIndexKey",
    "CacheInfo",
    "FieldCipher",
    "RotationReport",
    "Subject",
    "SupportsSubjectExport",
    "Vault",
]

#: A subject (a member) as the application names it: its id as str, int or UUID.
Subject = str | int | uuid.UUID

#: The request log's status for an erasure receipt's.
_REQUEST_OUTCOME: Final = {
    "granted": "completed",
    "nothing_to_erase": "completed",
    "partially_granted": "partially_granted",
    "refused": "refused",
}


_Export_co = TypeVar("_Export_co", covariant=True)
_Import_co = TypeVar("_Import_co", covariant=True)


class SupportsSubjectImport(Protocol[_Import_co]):
    """What :meth:`Vault.import_subject` hands off to: a :class:`vaultkit.subjects.SubjectMap`."""

    def import_subject(self, vault: Vault, session: Any, data: Any) -> _Import_co: ...


class SupportsSubjectExport(Protocol[_Export_co]):
    """What :meth:`Vault.export_subject` hands off to: a :class:`vaultkit.subjects.SubjectMap`.

    The map sits above the SQLAlchemy layer, which sits above the vault; the vault only calls it.
    """

    def export(
        self,
        vault: Vault,
        session: Any,
        subject: Subject,
        *,
        kind: str,
        purpose: str,
        request_id: str | None,
        split_restricted: bool,
    ) -> _Export_co: ...


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _declared(domains: Iterable[KeyDomain | str]) -> dict[str, KeyDomain]:
    if isinstance(domains, str | KeyDomain):
        raise TypeError("domains must be a list of KeyDomain or names, not a single domain")
    declared: dict[str, KeyDomain] = {}
    for item in domains:
        domain = KeyDomain(item) if isinstance(item, str) else item
        if not isinstance(domain, KeyDomain):
            raise TypeError(
                f"domains must hold KeyDomain objects or names, not {type(item).__name__}"
            )
        if domain.name in declared:
            raise ConfigurationError(f"domain {domain.name!r} is declared twice")
        declared[domain.name] = domain
    if not declared:
        raise ConfigurationError("a vault needs at least one key domain")
    return declared


class Vault(NoPickle):
    """Encrypts and decrypts values under per-domain envelope keys.

    Each domain's DEKs are random 256-bit keys wrapped by the domain's KEK in its key provider and
    stored, wrapped, in the key store. This process takes a DEK of its own per domain on its first
    encryption and a fresh one when the DEK's budget (encryptions or age) runs out, so concurrent
    processes never share an encryption key. Unwrapped DEKs are cached, bounded and time-limited;
    decrypting many values costs one provider call per distinct DEK.

    A domain with ``dek_scope="subject"`` has one DEK per member (:meth:`encrypt` takes
    ``subject=``), one with ``dek_scope="bucket"`` one per time window; both are wrapped under a
    per-domain wrapping key, so reading the values of many members costs one provider call per
    domain. Their :class:`~vaultkit.Retention` is enforced at read time (a key past its deadline
    is never unwrapped) and by destroying keys; the key store holds keyed references of members
    (:meth:`subject_ref`), never their ids. Such a vault needs a key store with
    :class:`~vaultkit.store.SupportsScopedKeys` (the SQL and memory stores have it).

    Args:
        provider: the key provider holding the domains' KEKs.
        store: the key store: a :class:`~vaultkit.store.KeyStore`, an SQLAlchemy ``Engine`` or a
            database URL (tables ``vaultkit_data_keys``, ``vaultkit_meta`` and
            ``vaultkit_subjects`` are created there).
            An async URL or ``AsyncEngine`` gets a synchronous engine of vaultkit's own on the
            same database (docs/sqlalchemy.md, "asyncio").
        domains: the key domains this vault serves; names or :class:`KeyDomain` objects.
        providers: per-domain providers that override ``provider`` (a medical KEK in its own HSM).
        cache_size: how many unwrapped DEKs to keep.
        cache_ttl: seconds after which a cached DEK is re-read from the store and unwrapped again,
            so a revoked KEK stops working within that time.
        key_check_interval: seconds after which the key-store state of a cached DEK is read
            again, without an unwrap (5 by default, at most ``cache_ttl``): a DEK destroyed by
            another process decrypts here no more, and one retired elsewhere encrypts here no
            more, that long after. One key-store query per interval covers every cached DEK due.
        dek_max_encryptions: encryptions under one DEK before a fresh DEK is taken.
        dek_max_age: age after which a fresh DEK is taken for encryption.
        clock: the wall clock, returning a timezone-aware datetime (``datetime.now(UTC)`` by
            default): it picks bucket keys and decides retention deadlines. Tests inject one.
            Cached keys are refused at their deadline by the monotonic clock, and checked against
            this one every ``key_check_interval``.
        erasure_ledger: a file outside the database where every erasure is written (durably)
            before its keys are destroyed. The vault replays it when it opens: keys of an erased
            subject that the key store holds as live again (a restored backup) are destroyed
            again and the subject fenced again. Keep it on another disk, with another backup
            policy, than the database. It does not help against someone who restores a backup
            outside vaultkit with the KEK at hand: shred epochs do.
        key_store_backup_retention: how long backups of the key store are kept, when it lives in
            a database of its own (an operator's statement, not checked): erasure receipts give
            ``erased_at`` + this as the date from which no backup holds the keys.
        shred_epoch_interval: how often :meth:`shred_epoch` runs for each domain (from a
            scheduler; not run by the vault): receipts give the next epoch after the erasure
            plus the provider's deletion delay as that date. The same interval is the oldest
            backup that can still be restored.

    .. versionchanged:: 0.3.0 ``clock=``; domains with subject and bucket keys; ``erasure_ledger=``,
        ``key_store_backup_retention=``, ``shred_epoch_interval=``.

    Raises:
        ConfigurationError: the arguments do not fit together.
        DomainError: a domain is badly named or not served by its provider.
        KeyStoreError: the key store cannot be opened or is newer than this release.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        provider: KeyProvider,
        store: KeyStore | Engine | AsyncEngine | str,
        domains: Iterable[KeyDomain | str],
        providers: Mapping[str, KeyProvider] | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        key_check_interval: float = DEFAULT_KEY_CHECK_INTERVAL,
        dek_max_encryptions: int = DEFAULT_MAX_ENCRYPTIONS,
        dek_max_age: dt.timedelta = DEFAULT_MAX_AGE,
        audit: str | Engine | AsyncEngine | None = None,
        audit_domain: str | None = None,
        audit_batch_size: int = DEFAULT_AUDIT_BATCH,
        clock: Callable[[], dt.datetime] | None = None,
        erasure_ledger: str | os.PathLike[str] | None = None,
        key_store_backup_retention: dt.timedelta | None = None,
        shred_epoch_interval: dt.timedelta | None = None,
    ) -> None:
        declared = _declared(domains)
        if clock is not None:
            if not callable(clock):
                raise TypeError("clock must be a callable returning an aware datetime")
            probe = clock()
            if not isinstance(probe, dt.datetime) or probe.utcoffset() is None:
                raise ConfigurationError("clock must return a timezone-aware datetime")
        if not isinstance(provider, KeyProvider):
            raise TypeError(f"provider must implement KeyProvider, not {type(provider).__name__}")
        overrides = dict(providers or {})
        for name, override in overrides.items():
            if name not in declared:
                raise ConfigurationError(f"a provider is given for undeclared domain {name!r}")
            if not isinstance(override, KeyProvider):
                raise TypeError(f"provider for {name!r} must implement KeyProvider")
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ConfigurationError("cache_size must be a positive integer")
        if not cache_ttl > 0:
            raise ConfigurationError("cache_ttl must be positive")
        if (
            isinstance(key_check_interval, bool)
            or not isinstance(key_check_interval, int | float)
            or not 0 < key_check_interval < math.inf
        ):
            raise ConfigurationError("key_check_interval must be a positive number of seconds")
        if not isinstance(dek_max_encryptions, int) or not 1 <= dek_max_encryptions <= 2**32:
            raise ConfigurationError("dek_max_encryptions must be between 1 and 2**32")
        if dek_max_age <= dt.timedelta(0):
            raise ConfigurationError("dek_max_age must be positive")
        by_domain = {n: overrides.get(n, provider) for n in declared}
        # Validate eagerly: every domain must be served now, not on the first insert.
        for name, domain_provider in by_domain.items():
            domain_provider.primary(name)
        audited = [d.name for d in declared.values() if d.audited]
        if audited:
            audit_domain = audit_domain or audited[0]
            if audit_domain not in declared:
                raise ConfigurationError(
                    f"audit_domain {audit_domain!r} is not declared in this vault"
                )
            if not isinstance(audit_batch_size, int) or audit_batch_size < 1:
                raise ConfigurationError("audit_batch_size must be a positive integer")

        # Wired in this order: policy, key store and keyring, recorder, cipher.
        self._domains = declared
        self._policy = Policy(declared)
        self._store, self._owns_store = open_store(store)
        self._clock: Callable[[], dt.datetime] = clock or _utc_now
        scoped = [d.name for d in declared.values() if d.scoped]
        if scoped and not isinstance(self._store, SupportsScopedKeys):
            if self._owns_store:
                self._store.close()
            raise ConfigurationError(
                f"domains {', '.join(scoped)} have subject or bucket keys: the key store "
                f"{type(self._store).__name__} does not support them (SupportsScopedKeys)"
            )
        self._keyring = Keyring(
            policy=self._policy,
            providers=by_domain,
            store=self._store,
            cache_size=cache_size,
            cache_ttl=cache_ttl,
            check_interval=key_check_interval,
            max_uses=dek_max_encryptions,
            max_age=dek_max_age.total_seconds(),
            clock=self._clock,
        )
        try:  # backups: check the modes, replay the erasure ledger (vaultkit/_backups.py)
            self._backups = _backups.BackupModes.start(
                self._store,
                erasure_ledger=erasure_ledger,
                key_store_backup_retention=key_store_backup_retention,
                shred_epoch_interval=shred_epoch_interval,
                now=self._keyring.now(),
            )
        except BaseException:
            if self._owns_store:
                self._store.close()
            raise
        self._recorder: AuditRecorder | None = None
        if audited and audit_domain is not None:
            try:
                self._recorder = self._open_recorder(audit, audit_domain, audit_batch_size)
            except BaseException:
                if self._owns_store:
                    self._store.close()
                raise
        self._cipher = Cipher(self._keyring, self._policy, self._recorder)
        self._requests: RequestLog | None = None
        self._requests_engine: Engine | None = None  # made for a store that is not SQL
        self._requests_lock = threading.Lock()

    def _open_recorder(
        self, audit: str | Engine | AsyncEngine | None, domain: str, batch_size: int
    ) -> AuditRecorder:
        provider = self._keyring.providers[domain]
        writer = (
            provider.audit_signer(domain) if isinstance(provider, SupportsAuditSigner) else None
        )
        store_engine = self._store.engine if isinstance(self._store, SQLKeyStore) else None
        log_, owned = open_audit_log(
            audit,
            key_store_engine=store_engine,
            writer=writer,
            mac=lambda: self._keyring.named_key(domain, "audit-log@v1", AUDIT_PURPOSE, 1).digest,
        )
        pinned = (
            provider.pinned_writers()
            if writer is None and isinstance(provider, SupportsWriterPins)
            else {}
        )
        return AuditRecorder(log_, batch_size=batch_size, owned_engine=owned, writers=pinned)

    def _check_domain(self, domain: str) -> None:
        if domain not in self._domains:
            raise DomainError(f"domain {domain!r} is not declared in this vault")

    # -- public API ---------------------------------------------------------------------------

    @property
    def domains(self) -> tuple[str, ...]:
        """Names of the declared key domains."""
        return tuple(self._domains)

    def key_domain(self, name: str) -> KeyDomain | None:
        """The declared :class:`KeyDomain` called ``name`` (its policy), or ``None``."""
        return self._domains.get(name)

    @property
    def store(self) -> KeyStore:
        """The key store holding the wrapped DEKs.

        Warning:
            Changing rows through the store (``set_state``, ``destroy``, ``rewrap``) bypasses the
            checks of :meth:`retire_dek`, :meth:`destroy_dek` and :meth:`rotate_kek`; read
            with :meth:`data_keys` and :meth:`dek_state`.
        """
        return self._store

    def cache_info(self) -> CacheInfo:
        """Return the DEK cache's size and limits."""
        return self._keyring.cache_info()

    def data_keys(
        self, *, domain: str | None = None, state: DekState | None = None
    ) -> Iterator[DataKeyRecord]:
        """Iterate over the key store's data keys (not blind-index or audit keys); read-only.

        Args:
            domain: only the data keys of this declared domain.
            state: only the data keys in this state.

        Raises:
            DomainError: ``domain`` is not declared in this vault.

        .. versionadded:: 0.2.0
        """
        if domain is not None:
            self._check_domain(domain)
        return self._keyring.data_keys(domain=domain, state=state)

    def dek_state(self, dek_id: bytes) -> DekState | None:
        """Return the state of data key ``dek_id``, or ``None`` if the key store has no such DEK.

        .. versionadded:: 0.2.0
        """
        return self._keyring.dek_state(dek_id)

    def encrypt(
        self,
        value: PlainValue,
        *,
        domain: str,
        context: Mapping[str, wire.ContextValue] | None = None,
        pad_to: int | None = None,
        subject: Subject | None = None,
    ) -> bytes:
        """Encrypt ``value`` in ``domain``, bound to ``context``.

        Args:
            value: str, bytes, int, bool, float, Decimal, date, datetime, UUID, dict or list.
            domain: a declared key domain.
            context: the cell the value belongs to, such as ``{"table": "members", "column":
                "name", "row": "m-17"}``; values are str, int or UUID. The same context must be
                given to :meth:`decrypt`.
            pad_to: pad the plaintext to a multiple of this many bytes (1 to 4096), so that short
                values of different lengths give ciphertexts of one length.
            subject: the member the value belongs to (str, int or UUID): required for a domain
                with ``dek_scope="subject"`` (the value goes under that member's key), refused
                for others.

        Returns:
            The self-describing ciphertext (wire format v1), 80 bytes longer than the encoded value.

        Raises:
            SubjectErasedError: the subject's writes are fenced (it was erased).
            RetentionExpiredError: the subject's retention is already over.
            ConfigurationError: a subject-scoped domain without ``subject``, or the reverse.

        Warning:
            Without ``pad_to`` the ciphertext's length reveals the plaintext's length.

        .. versionchanged:: 0.3.0 ``subject=``.
        """
        if subject is None:
            return self._cipher.seal(
                domain, encode_value(value, pad_to=pad_to), wire.context_fields(context), context
            )
        return self._cipher.seal_subject(
            domain,
            subject,
            encode_value(value, pad_to=pad_to),
            wire.context_fields(context),
            context,
        )

    def decrypt(
        self,
        blob: bytes,
        *,
        context: Mapping[str, wire.ContextValue] | None = None,
        domain: str | None = None,
    ) -> Decrypted:
        """Decrypt a value made by :meth:`encrypt`, returning the type that went in.

        Args:
            blob: the ciphertext.
            context: the context it was encrypted with.
            domain: if given, the value must belong to this domain.

        Raises:
            DecryptionError: the value is damaged, truncated, not a vaultkit value, under an
                unknown DEK, or was made for another context or domain. One message for all of
                these.
            ValueErasedError: the key store holds the value's DEK as destroyed or past its
                retention deadline (:class:`SubjectErasedError`, :class:`RetentionExpiredError`
                by reason); a subclass of DecryptionError.
            UnsupportedFormatError: the value names a wire version or suite this release lacks.
            DomainError: the value's domain is not configured in this vault.
            KeyProviderError: the provider could not unwrap the DEK.
        """
        blob = blob if type(blob) is bytes else as_bytes(blob)
        return self._cipher.open(blob, wire.context_fields(context), domain, context)

    def field(
        self,
        domain: str,
        *,
        table: str,
        column: str,
        row_bound: bool = False,
        pad_to: int | None = None,
        schema: str | None = None,
    ) -> FieldCipher:
        """Return a cipher bound to one column, with its associated data prepared once.

        Values it makes are exactly those of :meth:`encrypt` with the context
        ``{"table": table, "column": column}`` (plus ``"schema"`` when ``schema`` is given and
        ``"row"`` when ``row_bound``), padded to a multiple of ``pad_to`` bytes when given.

        .. versionchanged:: 0.1.0 ``schema=`` binds the table's schema as its own context entry.
        """
        self._check_domain(domain)
        return FieldCipher(
            self._cipher,
            domain,
            table=table,
            column=column,
            schema=schema,
            row_bound=row_bound,
            pad_to=pad_to,
        )

    def blind_index_key(
        self, domain: str, *, table: str, column: str, version: int = 1
    ) -> BlindIndexKey:
        """Return the HMAC key of a blind index, creating it on first use.

        Each (domain, table, column, version) has its own random 256-bit key, stored wrapped by the
        domain's KEK in the key store (purpose ``index``), like a DEK. A new version is a new key;
        old versions stay readable for the rotation window.

        Raises:
            DomainError: the domain is not declared in this vault.
        """
        self._check_domain(domain)
        if not isinstance(version, int) or not 1 <= version <= 255:
            raise ConfigurationError("a blind-index version is an integer from 1 to 255")
        return _call(
            self._keyring.named_key, domain, f"{table}.{column}@v{version}", INDEX_PURPOSE, version
        )

    def dataset_key(
        self, domain: str, name: str, *, create: bool = True, attrs: str | None = None
    ) -> BlindIndexKey:
        """Return the HMAC key of a research dataset (:mod:`vaultkit.research`).

        A random 256-bit key per name (one per project and recipient), stored wrapped by the
        domain's KEK in the key store (purpose ``dataset``), like a blind-index key; never stored
        with the data it pseudonymises.

        Args:
            domain: the research domain (a declared domain, e.g. ``research``).
            name: the dataset's key name.
            create: make the key if the key store does not hold it (else KeyStoreError).
            attrs: attributes (``key=value``, such as ``max_days=30``) recorded with a key this
                call makes, in its row's name, and bound into its wrapping: a row whose
                attributes were edited does not unwrap (KeyStoreError). An existing key keeps
                the attributes it was made with; they are the returned key's ``attrs``.

        Raises:
            DomainError: the domain is not declared in this vault.
            KeyStoreError: the key was destroyed, or is missing and ``create`` is false.

        .. versionadded:: 0.4.0
        """
        self._check_domain(domain)
        return _call(
            functools.partial(
                self._keyring.named_key,
                domain,
                name,
                DATASET_PURPOSE,
                1,
                create=create,
                attrs=attrs,
            )
        )

    def destroy_dataset_key(self, domain: str, name: str) -> bool:
        """Destroy a research dataset key for good: its pseudonyms can no longer be recomputed.

        The key-store row stays as a tombstone, so the name is never given a new key. Other
        running processes that hold the key in memory keep it until they close.
        Returns False if it was destroyed already.

        Raises:
            DomainError: the domain is not declared in this vault.
            KeyStoreError: no such key.

        .. versionadded:: 0.4.0
        """
        self._check_domain(domain)
        return _call(self._keyring.destroy_named_key, domain, name, DATASET_PURPOSE)

    def record_event(
        self,
        action: str,
        domain: str,
        *,
        count: int,
        table: str | None = None,
        facts: Mapping[str, str] | None = None,
    ) -> bool:
        """Write one event to the audit chain at once (not batched); False without an audit log.

        For operations outside the data path (a research export); the event names the acting
        principal and purpose, ``facts`` as ``name=value`` strings: they must hold no personal
        data (counts, hashes, key ids).

        Raises:
            DomainError: the domain is not declared in this vault.
            AuditError: the event could not be written.

        .. versionadded:: 0.4.0
        """
        self._check_domain(domain)
        if self._recorder is None:
            return False
        scope = current_scope()
        event = AuditEvent(
            principal=scope.principal.name,
            purpose=scope.purpose,
            action=action,
            domain=domain,
            table=table,
            column=None,
            rows=tuple(f"{name}={value}" for name, value in (facts or {}).items()),
            count=count,
            dek_id=None,
            at=self._now(),
        )
        self._recorder.record_now([event])
        return True

    @contextlib.contextmanager
    def acting_as(self, principal: Principal, *, purpose: str) -> Iterator[Scope]:
        """Act as ``principal`` for ``purpose`` in a ``with`` block (see :func:`vaultkit.acting_as`).

        The scope is held in a context variable, so it is per thread and per asyncio task, and
        applies to every vault. On exit this vault's open audit batches are written.
        """
        with acting_as(principal, purpose=purpose) as scope:
            try:
                yield scope
            finally:
                self.flush_audit()

    # -- key rotation and life cycle ------------------------------------------------------------

    def provider_for(self, domain: str) -> KeyProvider:
        """The key provider holding ``domain``'s KEK."""
        self._check_domain(domain)
        return self._keyring.providers[domain]

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
    ) -> Vault:
        """A vault and its providers per domain from a TOML file and ``VAULTKIT__*`` variables.

        See :mod:`vaultkit.config` and docs/providers.md. With no ``path``, the file named by
        ``VAULTKIT_CONFIG`` (or none: environment variables only).
        """
        from vaultkit.config import vault_options

        return cls(**vault_options(path, env=env))

    def rotate_kek(self, domain: str, *, new_version: bool = True) -> RotationReport:
        """Rotate a domain's KEK: a new version, then every key row rewrapped under it.

        Only the key store's rows change (data keys, blind-index and audit keys of the domain);
        data rows are never touched, so the cost grows with the number of DEKs, not of values.
        Each row is replaced with a compare-and-set, so a row changed meanwhile (by another
        rotation) is left alone and counted. Afterwards the old KEK version can be disabled in the
        provider and everything still decrypts.

        Args:
            domain: a declared domain.
            new_version: create a new KEK version first (``False`` finishes an interrupted rotation
                onto the current primary version).

        Raises:
            DomainError, KeyProviderError, KeyStoreError.
        """
        self._check_domain(domain)
        return _lifecycle.rotate_kek(self._keyring, domain, new_version=new_version)

    def retire_dek(self, dek_id: bytes) -> None:
        """Mark a DEK retired: it still decrypts, no process encrypts under it any more.

        This vault stops encrypting under it at once; other running processes within their
        ``key_check_interval``, when they re-read its row's state.
        Its values are then due for re-encryption; after that, :meth:`destroy_dek`.
        """
        _lifecycle.retire_dek(self._keyring, dek_id)

    def destroy_dek(self, dek_id: bytes, *, references: int) -> None:
        """Erase a retired DEK for good; values still under it become unreadable forever.

        This vault forgets it at once; other running processes within their
        ``key_check_interval`` (5 s by default), when they re-read its row's state.

        Args:
            dek_id: the DEK.
            references: how many stored values still name this DEK, as counted by the caller
                (``vaultkit keys destroy`` scans the columns it is given). Must be 0.

        Raises:
            KeyStoreError: the DEK is not retired, or values still reference it.
        """
        _lifecycle.destroy_dek(self._keyring, dek_id, references=references)

    # -- subjects and retention ---------------------------------------------------------------

    def subject_ref(self, domain: str, subject: Subject) -> str:
        """The key store's reference of ``subject`` in ``domain``: 32 hex digits.

        HMAC-SHA256 under the domain's named key ``subject-ref@v1`` (created on first use) of the
        subject's canonical bytes (``str(subject)`` for int and UUID), truncated to 128 bits. It
        is what the key store holds instead of the member id; the references of one member in two
        domains differ, so the domains' rows cannot be linked by it.

        Raises:
            TypeError: ``subject`` is not str, int or UUID.
            ValueError: ``subject`` is the empty string.
            DomainError: the domain is not declared.

        .. versionadded:: 0.3.0
        """
        self._check_domain(domain)
        return _call(self._keyring.subject_ref, domain, subject)

    def prepare_subjects(self, domain: str, subjects: Iterable[Subject]) -> int:
        """Make ready the encryption keys of many members of a subject-scoped domain at once.

        The keys that ``encrypt(..., subject=)`` would make one by one (one key-store
        transaction per new member) are found or made together: one query per 500 members for
        their existing keys and one for their fences, one multi-row insert of the new keys, then
        one more read of the fences (a new key of a member erased meanwhile is destroyed, as the
        single-key path does). New keys get the deadline of a recorded relationship end bound
        into their wrap. The keys are kept in the vault's bounded cache of subject keys (10,000
        members), so the following writes make no key-store query. The ``vaultkit.sqla`` hooks
        call it for each multi-row INSERT or UPDATE. A key store without
        :class:`~vaultkit.store.SupportsBulkScopedKeys` gets the keys one by one.

        Fenced (erased) members and members whose retention is over are skipped: their writes
        still raise :class:`~vaultkit.errors.SubjectErasedError` or
        :class:`~vaultkit.errors.RetentionExpiredError`.

        Args:
            domain: a domain declared with ``dek_scope="subject"``.
            subjects: the members (str, int or UUID), duplicates allowed.

        Returns:
            How many members got a key ready in this process (found or made); members already
            ready count 0.

        Raises:
            DomainError: the domain is not declared.
            ConfigurationError: the domain is not subject-scoped, or the vault is closed.
            AccessDeniedError: the domain requires a grant to encrypt and the current principal has
                none.
            TypeError: a subject is not str, int or UUID.
            ValueError: a subject is the empty string.
            KeyStoreError: the key store failed.

        .. versionadded:: 0.3.0
        """
        self._check_domain(domain)
        if self._policy.domains[domain].encrypt_requires_grant:
            self._policy.check_encrypt(domain)
        return _call(_bulk.prepare_subjects, self._keyring, domain, list(subjects))

    def end_relationship(self, subject: Subject, *, at: dt.datetime) -> int:
        """Record the end of ``subject``'s relationship (contract) at ``at``.

        In every domain whose retention is anchored on ``"relationship_end"``, the subject's keys
        get ``destroy_at = retention.deadline(at)`` (from then on reads refuse them, and
        ``vaultkit retention enforce`` destroys them), and the end is recorded in the subjects
        table, so that keys made later for the subject get the same deadline.

        Args:
            subject: the member.
            at: when the relationship ended (timezone-aware).

        Returns:
            How many keys got their deadline.

        .. versionadded:: 0.3.0
        """
        if not isinstance(at, dt.datetime) or at.utcoffset() is None:
            raise ValueError("at must be a timezone-aware datetime")
        return _call(self._end_relationship, subject, at)

    def _end_relationship(self, subject: Subject, at: dt.datetime) -> int:
        store = self._scoped_store()
        updated = 0
        for domain in self._domains.values():
            retention = domain.retention
            if retention is None or retention.after != "relationship_end":
                continue
            ref = self._keyring.subject_ref(domain.name, subject)
            deadline = _scoped.subject_deadline(retention, at)
            old = store.get_subject(domain.name, ref) or SubjectRecord(domain.name, ref)
            store.put_subject(
                SubjectRecord(
                    domain.name,
                    ref,
                    relationship_end=at.astimezone(dt.UTC),
                    fenced_at=old.fenced_at,
                    erased_at=old.erased_at,
                    request_id=old.request_id,
                )
            )
            updated += self._keyring.set_subject_deadline(domain.name, ref, deadline)
        return updated

    def allow_subject(self, subject: Subject, *, domains: Iterable[str] | None = None) -> None:
        """Lift the write fence an erasure put on ``subject``.

        New writes for the subject then go under a fresh key, which decrypts nothing written
        before the erasure.

        Args:
            subject: the member.
            domains: the subject-scoped domains to lift it in (all of them by default).

        .. versionadded:: 0.3.0
        """
        names = self._subject_domains(domains)
        _call(self._allow_subject, subject, names)

    def _allow_subject(self, subject: Subject, names: list[str]) -> None:
        store = self._scoped_store()
        for name in names:
            ref = self._keyring.subject_ref(name, subject)
            old = store.get_subject(name, ref)
            if old is not None and old.fenced_at is not None:
                store.put_subject(
                    SubjectRecord(
                        name,
                        ref,
                        relationship_end=old.relationship_end,
                        fenced_at=None,
                        erased_at=old.erased_at,
                        request_id=old.request_id,
                    )
                )
            self._keyring.forget_subject(name, ref)

    def _scoped_store(self) -> SupportsScopedKeys:
        store = self._store
        if not isinstance(store, SupportsScopedKeys):
            raise ConfigurationError(
                f"the key store {type(store).__name__} has no subject keys (SupportsScopedKeys)"
            )
        return store

    def _subject_domains(self, domains: Iterable[str] | None) -> list[str]:
        if domains is None:
            return [d.name for d in self._domains.values() if d.dek_scope == "subject"]
        if isinstance(domains, str):
            raise TypeError("domains must be a list of names, not a single name")
        names = list(domains)
        for name in names:
            self._check_domain(name)
            if self._domains[name].dek_scope != "subject":
                raise ConfigurationError(f"domain {name!r} has no subject keys")
        return names

    def _now(self) -> dt.datetime:
        """The vault's wall clock (aware UTC)."""
        return self._keyring.now()

    # -- audit ------------------------------------------------------------------------------------

    @property
    def audit_log(self) -> AuditLog | None:
        """The audit log this vault writes, or ``None`` when no domain is audited.

        In an encrypt-only writer (the audit domain's provider holds only the public key, with
        a ``signer``) it is the writer's own chain, signed with the writer key.
        """
        return self._recorder.log if self._recorder is not None else None

    @property
    def writer_audit_logs(self) -> dict[str, AuditLog]:
        """The audit chains of the encrypt-only writers the audit domain's provider pins.

        Read-only, by writer name, for those that have logged anything (whose tables exist):
        verify each with :meth:`AuditLog.verify`. Empty for a provider that pins no writer.
        """
        return self._recorder.writer_logs() if self._recorder is not None else {}

    def flush_audit(self) -> None:
        """Write the row keys of every open audit batch and close the batches.

        Events that an earlier write could not store are written first. If the write fails,
        every event is kept for the next attempt (this call again, :meth:`close`, or the next
        audited access, which fails until they are written).

        Raises:
            AuditError: the events could not be written (they are kept).
        """
        if self._recorder is not None:
            self._recorder.flush()

    async def aflush_audit(self) -> None:
        """:meth:`flush_audit` for asyncio code: the events are written in a worker thread.

        .. versionadded:: 0.1.0
        """
        await run_async(self.flush_audit)

    async def apreload(self, dek_ids: Iterable[bytes]) -> int:
        """:meth:`preload` for asyncio code, in a worker thread, under the calling task's scope.

        .. versionadded:: 0.1.0
        """
        return await asyncio.to_thread(self.preload, list(dek_ids))

    def preload(self, dek_ids: Iterable[bytes]) -> int:
        """Unwrap the given DEKs into the cache ahead of a read; return how many were unwrapped.

        A provider with ``unwrap_many`` (the transit engine) unwraps them in one request per KEK;
        others one by one. DEKs already cached, unknown, destroyed, or of a restricted domain the
        current principal has no grant for are skipped.
        """
        return self._keyring.preload(dek_ids)

    def close(self) -> None:
        """Record encryption counts in the key store and release what the vault opened.

        Raises:
            AuditError: the open audit batches could not be written; the vault stays open with
                the events kept, so that ``close()`` can be called again once the log is
                writable.
        """
        if not self._keyring.closed and self._recorder is not None:
            self._recorder.flush()
        if not self._keyring.close():
            return
        if self._owns_store:
            self._store.close()
        if self._recorder is not None:
            self._recorder.close()
        if self._requests_engine is not None:
            self._requests_engine.dispose()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Vault(domains={list(self._domains)!r}, store={self._store!r})"

    # -- data life cycle ----------------------------------------------------------------------

    def _life_cycle(self) -> _erasure.LifeCycle:
        keyring = self._keyring
        # The backup modes' hooks (vaultkit/_backups.py). Every domain's ledger entry goes in
        # one write: an erasure that fails on a full disk leaves no entry that a later start-up
        # would replay (the error said nothing was erased).
        return _erasure.LifeCycle(
            store=self._scoped_store(),
            domains=self._domains,
            subject_ref=self.subject_ref,
            forget=keyring.forget,
            forget_subject=keyring.forget_subject,
            recorder=self._recorder,
            clock=keyring.now,
            ledger=self._backups.append_many,
            finality=self._finality,
        )

    def erase_subject(
        self,
        subject: Subject,
        *,
        reason: str,
        request_id: str,
        domains: Iterable[str] | None = None,
        cells: Callable[[], Mapping[str, int]] | None = None,
    ) -> ErasureReceipt:
        """Erase a subject's values in every subject-scoped domain by destroying their keys.

        In this order: (1) the subject is fenced in each domain to erase (from then on no process
        encrypts for them there: :class:`~vaultkit.errors.SubjectErasedError`, until
        :meth:`allow_subject`); (2) every key of the subject there is destroyed, and listed
        again until none is live (a writer that took a key just before the fence loses it), and
        dropped from this process's cache (other processes stop decrypting within their
        ``key_check_interval``); (3) an audit event per domain is written (counts, request id
        and reason; never the subject or its key-store ref), before (4) ``cells()`` is called
        to null the subject's blind-index cells, then one event per table; (5) the receipt is
        returned.

        Domains whose retention is ``no_less_than`` and not yet over (it runs from the
        relationship's end: while no end is recorded, or until the end plus the retention) and
        that hold a live key of the subject are left as they are, not fenced, and reported as
        ``"retained"`` with the retention's legal ground and, when known, the date it ends.

        Running it again is harmless: keys destroyed before are counted as such, nothing else
        changes (a crash half-way is repaired by running it again).

        Args:
            subject: the member id, as given to :meth:`encrypt` (str, int or UUID).
            reason: why, such as ``"art17"``; written into the receipt and the audit log.
            request_id: the request's ticket number; written into the receipt, the audit log
                and the key store's subject rows. Neither may look like a personal identifier
                (an e-mail address, a phone number, an INSZ or a BSN): refused. The request is
                recorded in the request log (:attr:`requests`): opened if it is not there, and
                closed with the receipt's outcome; one in the log for another kind or another
                member is refused before anything is erased.
            domains: the subject-scoped domains to erase in (default: all of them).
            cells: called once the keys are destroyed, returns the rows whose blind-index cells
                it nulled, by table (``vaultkit.sqla`` makes one); not called when every domain
                is retained.

        Returns:
            An :class:`~vaultkit.lifecycle.ErasureReceipt`; it names no person.

        Raises:
            ConfigurationError: the key store keeps no scoped keys, or the request id or
                reason is empty, too long or looks like a personal identifier.
            DomainError: a domain given is not declared or not subject-scoped.
            KeyStoreError, AuditError: the store or the audit log failed (run it again).

        .. versionadded:: 0.3.0
        """
        # In SQLAlchemy's asyncio greenlet: in a worker thread, and carried through to its end
        # even if the awaiting task is cancelled (an erasure is not left half-way by choice).
        erase = functools.partial(
            _erasure.erase_subject,
            self._life_cycle(),
            subject,
            reason=reason,
            request_id=request_id,
            domains=domains,
            cells=cells,
        )
        requests = self._request_log_or_none()
        if requests is not None:
            # Checked before anything is erased: a request id of another member's request
            # (a typing error) stops here.
            _call(requests.begin, request_id, "erasure", subject)
        receipt = _call(erase, finish=True)
        if requests is not None:
            status, motive = _REQUEST_OUTCOME[receipt.status], None
            grounds = sorted({d.ground or "not given" for d in receipt.domains if d.ground})
            if receipt.status in ("partially_granted", "refused"):
                motive = ("retained: " + "; ".join(grounds or ["legal minimum"]))[:255]
            _call(
                functools.partial(
                    requests.finish,
                    request_id,
                    status=status,
                    motive=motive,
                    at=receipt.erased_at,
                ),
                finish=True,
            )
        return receipt

    def export_subject(
        self,
        session: Any,
        subject: Subject,
        kind: str = "access",
        *,
        subjects: SupportsSubjectExport[_Export_co],
        purpose: str = "DataSubjectRequest",
        request_id: str | None = None,
        split_restricted: bool = False,
    ) -> _Export_co:
        """Export every annotated value of ``subject`` (GDPR art. 15 access, art. 20 portability).

        The map (:func:`vaultkit.subjects.collect`) says which tables hold a member's rows and how
        they reach the member; the export reads them table by table (one query per table and
        batch of parent keys, the DEKs preloaded), as the current principal
        (:meth:`acting_as`) for ``purpose``: a restricted domain without the grant is not read
        and is listed in ``incomplete_sources`` (``no_grant``); with it, each read is audited
        with the purpose. Erased and expired values appear as erased, with their date. What a
        database writer planted is not given as the member's: a value under another member's
        key (withheld), a row whose member column names another member or matched by a copied
        blind index (left out), listed as ``subject_mismatch``; and a value that fails to
        authenticate (withheld, listed as ``value_unreadable``). See
        docs/subject-rights.md.

        Args:
            session: an SQLAlchemy ``Session``, ``Connection`` or ``Engine`` on the models'
                database.
            subject: the member id (str, int or UUID).
            kind: ``"access"`` (every annotated value, and the art. 15 block: purposes, legal
                bases, recipients, retention, sources, rights) or ``"portability"`` (provided
                and observed values only).
            subjects: the :class:`~vaultkit.subjects.SubjectMap` of the models.
            purpose: the purpose the reads are made and audited for.
            request_id: the request's ticket number, written into the export (not a personal
                identifier: refused if it looks like one), and recorded in the request log
                (:attr:`requests`): opened if it is not there, refused if it is there for
                another kind or member, completed when the export is complete (an incomplete
                one leaves it in progress).
            split_restricted: put the restricted domains' values into a separate part
                (``export.restricted``), for delivery through the medical adviser.

        Returns:
            A :class:`~vaultkit.subjects.SubjectExport` (``to_dict``, ``write_json``,
            ``write_csv_zip``, ``write_html``).

        Raises:
            ConfigurationError: an unknown kind, a request id that looks personal, models
                configured with another vault, or an encrypted or personal column the map does
                not know (added after :func:`~vaultkit.subjects.collect`).
            TypeError: ``subjects`` is not a subject map (build one with
                ``vaultkit.subjects.collect(metadata)``).

        .. versionadded:: 0.3.0
        """
        export = getattr(subjects, "export", None)
        if not callable(export):
            raise TypeError(
                "subjects= takes the subject map of the models: "
                "vaultkit.subjects.collect(Base.metadata)"
            )
        requests = self._request_log_or_none() if request_id is not None else None
        if requests is not None and request_id is not None:
            _call(requests.begin, request_id, kind, subject)
        result: _Export_co = export(
            self,
            session,
            subject,
            kind=kind,
            purpose=purpose,
            request_id=request_id,
            split_restricted=split_restricted,
        )
        if requests is not None and request_id is not None:
            # An incomplete export (a restricted domain without the grant, a table that failed)
            # leaves the request open: the rest is still to be delivered.
            if getattr(result, "status", None) == "complete":
                _call(functools.partial(requests.finish, request_id, status="completed"))
        return result

    def import_subject(
        self,
        session: Any,
        data: Mapping[str, Any] | os.PathLike[str],
        *,
        subjects: SupportsSubjectImport[_Import_co],
    ) -> _Import_co:
        """Insert a member's export (:meth:`export_subject`) into this database, re-encrypted.

        The other end of art. 20 portability: an export made from one database, with these
        models, loads into another whose vault has its own keys. Everything is checked before
        anything is written: the export's schema version; each table against the map; each
        exported column against the models (still annotated, same SQL type and value type,
        encrypted in the same domain with the same subject and row key: a model change is a
        :class:`~vaultkit.errors.ConfigurationError` naming ``table.column``); each value decoded
        into its column's type; no row of the export already there (by primary key). Then the
        rows are inserted parents first, through the column types (sealed under this vault's
        keys, subject keys made for the member here, blind indexes computed with this vault's
        index keys), in one transaction. Cells the export marks erased are written as NULL and
        reported.

        Args:
            session: an SQLAlchemy ``Engine`` (the import commits, or rolls back on error), or a
                ``Session`` or ``Connection`` (the import writes in its transaction, inside a
                savepoint where the database has them, and does not commit: the caller commits,
                or rolls back on error).
            data: the export as a dictionary (``export.to_dict()``, ``json.load``) or the path
                of its JSON file: an access or portability export, or the separate restricted
                part of one (``split_restricted``), imported after its main part: it fills the
                restricted cells the main part left empty (refused if a row is missing, of
                another member, or filled already).
            subjects: the :class:`~vaultkit.subjects.SubjectMap` of the models.

        Returns:
            An :class:`~vaultkit.subjects.ImportReport` (tables and rows, erased cells; no
            value).

        Raises:
            ConfigurationError: the export is not one, its models differ from these (the
                message names the column), a value has the wrong shape (the message names the
                column and row, never the value), a NOT NULL column cannot be filled, or rows
                are there already; nothing was written.
            TypeError: ``subjects`` is not a subject map.

        .. versionadded:: 0.3.0
        """
        load = getattr(subjects, "import_subject", None)
        if not callable(load):
            raise TypeError(
                "subjects= takes the subject map of the models: "
                "vaultkit.subjects.collect(Base.metadata)"
            )
        result: _Import_co = load(self, session, data)
        return result

    def enforce_retention(
        self, *, at: dt.datetime | None = None, batch: int = 1000
    ) -> EnforcementReport:
        """Destroy every data key whose ``destroy_at`` is at or before ``at``, batch by batch.

        Reads refuse such keys already (:class:`~vaultkit.errors.RetentionExpiredError`), sweep
        or no sweep; this makes it final in the key store. Each batch is an audit event (domain,
        key count, reason ``retention``; no key id, no subject ref), written before its keys are
        destroyed, and each destruction is committed at once: after a crash, run it again and it
        goes on with what is still due. Keys destroyed leave this process's cache.

        Args:
            at: the time keys are due by (timezone-aware; default: the vault's clock); never
                later than the vault's clock (keys are not destroyed before they are due).
            batch: keys per batch.

        Returns:
            An :class:`~vaultkit.lifecycle.EnforcementReport`.

        Raises:
            ConfigurationError: the key store keeps no scoped keys, ``at`` is naive or later
                than the vault's clock, or ``batch`` is not positive.
            KeyStoreError, AuditError: the store or the audit log failed (run it again).

        .. versionadded:: 0.3.0
        """
        enforce = functools.partial(
            _erasure.enforce_retention, self._life_cycle(), at=at, batch=batch
        )
        return _call(enforce, finish=True)

    def retention_report(self, *, at: dt.datetime | None = None) -> RetentionReport:
        """The retention state of every declared domain at ``at``, from key-store aggregates.

        Per domain: the policy, the key scope and bucket width, live, destroyed and due keys,
        the oldest capture still readable, subjects with a live key and, where retention runs
        from the relationship's end, those with no end recorded (counted, never guessed), and
        violations: a live key that reads would accept beyond the policy (must be none).

        Args:
            at: the time to report at (timezone-aware; default: the vault's clock).

        Raises:
            ConfigurationError: the key store keeps no scoped keys, or ``at`` is naive.

        .. versionadded:: 0.3.0
        """
        return _call(functools.partial(_erasure.retention_report, self._life_cycle(), at=at))

    # -- data-subject requests (vaultkit/_requests.py) --------------------------------------------

    @property
    def requests(self) -> RequestLog:
        """The log of data-subject requests (table ``vaultkit_subject_requests``).

        It lives in the key store's database (the SQL key store's engine, table prefix and
        schema; for the memory key store of tests, an in-memory SQLite database lost with the
        vault), created on first use. Members are named by a keyed reference made with the
        blind-index key ``vaultkit_subject_requests.subject_ref@v1`` of the first declared
        domain that is not restricted (each row records which). :meth:`erase_subject` and
        :meth:`export_subject` with a ``request_id`` record themselves there.

        Raises:
            ConfigurationError: the key store is neither SQL nor the memory store.

        .. versionadded:: 0.3.0
        """
        log_ = self._request_log_or_none()
        if log_ is None:
            raise ConfigurationError(
                f"the key store {type(self._store).__name__} keeps no request log: it needs an "
                "SQL key store (or the memory store of tests)"
            )
        return log_

    def _request_log_or_none(self) -> RequestLog | None:
        with self._requests_lock:
            if self._requests is None:
                self._requests = self._open_request_log()
            return self._requests

    def _open_request_log(self) -> RequestLog | None:
        """The request log over the key store's database, or ``None`` for a store of the
        application's own (called once, under the lock)."""
        import sqlalchemy as sa

        from vaultkit.store import MemoryKeyStore

        store = self._store
        prefix, schema = "vaultkit_", None
        if isinstance(store, SQLKeyStore):
            engine = store.engine
            prefix = store.keys.name.removesuffix("data_keys")
            schema = store.keys.schema
        elif type(store) is MemoryKeyStore:  # a subclass may keep its rows elsewhere
            # One connection, shared by the threads the vault is called from (asyncio
            # callers' worker threads); SQLite serialises them.
            engine = sa.create_engine(
                "sqlite://",
                poolclass=sa.pool.StaticPool,
                connect_args={"check_same_thread": False},
            )
            self._requests_engine = engine
        else:
            return None
        plain = [d.name for d in self._domains.values() if not d.restricted]
        domain = (plain or list(self._domains))[0]

        def ref(name: str, subject: object) -> str:
            key = self.blind_index_key(name, table=REF_TABLE, column=REF_COLUMN)
            return key.digest(_scoped.canonical_subject(subject))[:16].hex()

        return RequestLog(
            engine,
            subject_ref=ref,
            ref_domain=domain,
            clock=self._keyring.now,
            table_prefix=prefix,
            schema=schema,
        )

    # -- data life cycle: backups (vaultkit/_backups.py) ------------------------------------------

    def _ledger_append(
        self, domain: str, subject_ref: str, request_id: str, at: dt.datetime
    ) -> None:
        """Write an erasure to the erasure ledger, durably, before it happens (no ledger: no-op).

        Raises:
            KeyStoreError: the ledger could not be written; nothing may be destroyed then.
        """
        self._backups.append(domain, subject_ref, request_id, at)

    def shred_epoch(self, domain: str, *, batch: int = 1000) -> ShredReport:
        """Start a new shred epoch of ``domain``: every backup older than it becomes unreadable.

        In this order: (1) the domain's KEK gets a new version and every row it wraps (the
        wrapping keys, process-scoped DEKs, blind-index and audit keys) is rewrapped under it, as
        :meth:`rotate_kek` does; (2) a new wrapping key, epoch N+1, is made under the new
        version; (3) every live subject and bucket DEK of the domain is rewrapped locally from
        the old wrapping keys to it (compare-and-set per row, in batches of ``batch``; the DEKs
        themselves do not change, so no value is re-encrypted); (4) the old wrapping-key rows are
        destroyed, and rows another process inserted under them meanwhile are rewrapped too;
        (5) once no row is wrapped under an old KEK version any more, the provider destroys those
        versions (:class:`~vaultkit.keys.SupportsVersionDestruction`: at once for the local
        keyring, PKCS#11 and OpenBao, after the waiting period for AWS KMS).

        Afterwards a copy of the key store taken before the epoch (a database backup) holds
        only rows wrapped under destroyed KEK versions: restored, nothing in it unwraps, with or
        without an erasure ledger, whoever holds the KEK's current version. That is also the
        limit: a backup older than the last epoch cannot be restored. Run it every
        ``shred_epoch_interval`` (``vaultkit keys shred-epoch`` from a scheduler), one epoch of
        a domain at a time; other processes keep working throughout. Running it again after a
        failure is safe.

        Args:
            domain: a declared domain whose provider can destroy KEK versions.
            batch: scoped DEKs per batch of the rewrap.

        Returns:
            A :class:`~vaultkit.lifecycle.ShredReport` (counts, epochs and versions; no key material).

        Raises:
            ConfigurationError: the domain's provider cannot destroy KEK versions.
            DomainError, KeyProviderError, KeyStoreError.

        .. versionadded:: 0.3.0
        """
        self._check_domain(domain)
        return _backups.shred_epoch(self._keyring, domain, batch=batch)

    def _finality(self, domains: Sequence[str], erased_at: dt.datetime) -> dt.datetime | None:
        """From when no backup holds keys erased at ``erased_at`` in ``domains`` (or ``None``)."""
        return _backups.finality(
            self._backups, self._store, dict(self._keyring.providers), erased_at, domains
        )
