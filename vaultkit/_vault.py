"""The vault: picks keys, nonces and formats so that callers hand over plaintext and a domain."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import itertools
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeGuard

from cryptography.exceptions import InvalidTag
from sqlalchemy.engine import Engine

from vaultkit._access import Principal, Scope, SealedValue, acting_as, current_scope
from vaultkit._codec import PlainValue, decode_value, encode_value
from vaultkit._offload import CancelledCall, in_greenlet, run_async, sync_engine
from vaultkit._offload import call as _call
from vaultkit._redact import NoPickle
from vaultkit.audit import AuditEvent, AuditLog, audit_log_exists, writer_table_prefix
from vaultkit.core import wire
from vaultkit.core.envelope import DataKey, new_data_key, new_dek_id, wrap_context
from vaultkit.errors import (
    AccessDeniedError,
    AuditError,
    ConfigurationError,
    DecryptionError,
    DomainError,
    KeyAuthenticationError,
    KeyProviderError,
    KeyStoreError,
)
from vaultkit.keys.domains import KeyDomain
from vaultkit.keys.provider import KeyProvider, KeyRef
from vaultkit.store import DataKeyRecord, DekState, KeyStore, SQLKeyStore

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["BlindIndexKey", "CacheInfo", "FieldCipher", "RotationReport", "Vault"]

log = logging.getLogger("vaultkit")

#: Default encryption budget of one DEK. NIST SP 800-38D (8.3) caps random 96-bit nonces at 2**32
#: invocations per key; 2**24 keeps the chance of a nonce collision below 2**-57.
DEFAULT_MAX_ENCRYPTIONS: Final = 2**24
DEFAULT_MAX_AGE: Final = dt.timedelta(days=30)
DEFAULT_CACHE_SIZE: Final = 1000  # unwrapped DEKs kept per vault
DEFAULT_CACHE_TTL: Final = 600.0  # seconds before a cached DEK is fetched and unwrapped again
_PURPOSE: Final = "data"
_INDEX_PURPOSE: Final = "index"
_AUDIT_PURPOSE: Final = "audit"
DEFAULT_AUDIT_BATCH: Final = 5000  # row keys per audit event in bulk reads
_H: Final = wire.HEADER_SIZE
_P: Final = wire.PREFIX_SIZE
_MIN: Final = wire.MIN_VALUE_SIZE
#: What decryption returns: the value, or a SealedValue for a reader without the domain's grant.
Decrypted = PlainValue | SealedValue
_urandom = os.urandom
_monotonic = time.monotonic


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What :meth:`Vault.rotate_kek` did: the new KEK version and how many key rows it rewrapped."""

    domain: str
    kek_version: int
    rewrapped: int
    already_current: int
    changed_meanwhile: int


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Size and limits of a vault's DEK cache; no key material."""

    size: int
    max_size: int
    ttl: float


class _Active:
    """The DEK this process encrypts under in one domain, with its budget."""

    __slots__ = ("audited", "deadline", "gated", "key", "retire_at", "uses")

    def __init__(
        self, key: DataKey, retire_at: float, *, gated: bool = False, audited: bool = False
    ) -> None:
        self.key = key
        self.gated = gated
        self.audited = audited
        self.uses = itertools.count(1)
        self.retire_at = retire_at
        self.deadline = min(retire_at, key.expires_at)


_DEK_DOMAINS_MAX: Final = 100_000


def _readable(record: DataKeyRecord | None) -> TypeGuard[DataKeyRecord]:
    """A data-key row that values may be decrypted under (not destroyed, not another kind)."""
    return (
        record is not None and record.state is not DekState.DESTROYED and record.purpose == _PURPOSE
    )


class _Denied(Exception):  # noqa: N818 - internal control flow, never raised to callers
    """The current principal may not read this domain."""

    def __init__(self, domain: str) -> None:
        super().__init__(domain)
        self.domain = domain


#: Seconds a DEK id the key store did not know (or holds destroyed) is answered from memory. A DEK
#: created meanwhile by another process (seen late through a lagging replica) is readable after it.
NEGATIVE_TTL: Final = 5.0
NEGATIVE_CACHE_SIZE: Final = 4096  # unknown DEK ids remembered, 16 bytes each
#: Key-store lookups that may find nothing per NEGATIVE_TTL window before the vault stops asking
#: for ids it does not know and reads the list of readable DEK ids instead (see _Unknown).
UNKNOWN_LOOKUP_BUDGET: Final = 64
SNAPSHOT_MAX: Final = 100_000  # readable DEK ids a vault keeps in memory at most (16 bytes each)


class _Unknown:
    """DEK ids the key store did not have, and a shared budget of lookups that find nothing.

    Remembering each unknown id for ``NEGATIVE_TTL`` stops hostile values that repeat a few ids.
    Random ids defeat any per-id cache, so misses also share a budget: after
    ``UNKNOWN_LOOKUP_BUDGET`` misses in one window the vault reads the set of readable DEK ids once
    (one query) and answers every id outside it without a lookup until the window ends. Known DEKs
    are never refused; a DEK created after the set was read becomes readable when the window ends.
    Hostile values therefore cost at most ``UNKNOWN_LOOKUP_BUDGET + 1`` key-store queries per window,
    however many there are and whatever ids they name. A store found to hold more than
    ``SNAPSHOT_MAX`` key rows is not listed again: that vault keeps to the per-id cache alone.
    """

    __slots__ = ("ids", "misses", "snapshot", "too_big", "window_end")

    def __init__(self) -> None:
        self.ids: OrderedDict[bytes, float] = OrderedDict()  # DEK id -> when to ask again
        self.window_end = 0.0
        self.misses = 0
        self.snapshot: frozenset[bytes] | None = None  # readable ids, while the window lasts
        self.too_big = False

    def refuses(self, dek_id: bytes, now: float) -> bool:
        """Whether ``dek_id`` is known to be unusable without asking the key store."""
        if now >= self.window_end:
            self.window_end = now + NEGATIVE_TTL
            self.misses = 0
            self.snapshot = None
        until = self.ids.get(dek_id)
        if until is not None:
            if until > now:
                return True
            del self.ids[dek_id]
        return self.snapshot is not None and dek_id not in self.snapshot

    def add(self, dek_id: bytes, now: float) -> bool:
        """Remember an id the store did not have; return whether the window's budget is spent."""
        self.ids.pop(dek_id, None)
        while len(self.ids) >= NEGATIVE_CACHE_SIZE:
            self.ids.popitem(last=False)
        self.ids[dek_id] = now + NEGATIVE_TTL
        self.misses += 1
        return self.snapshot is None and not self.too_big and self.misses >= UNKNOWN_LOOKUP_BUDGET


class _KeyCache:
    """Unwrapped DEKs by id and by header, bounded, with second-chance (CLOCK) eviction."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.by_id: OrderedDict[bytes, DataKey] = OrderedDict()
        self.by_header: dict[bytes, DataKey] = {}
        self.unknown = _Unknown()

    def put(self, key: DataKey) -> None:
        old = self.by_id.pop(key.dek_id, None)
        if old is not None:
            self.by_header.pop(old.header, None)
        while len(self.by_id) >= self.max_size:
            dek_id, victim = self.by_id.popitem(last=False)
            if victim.referenced:
                victim.referenced = False
                self.by_id[dek_id] = victim
            else:
                self.by_header.pop(victim.header, None)
        key.referenced = False
        self.by_id[key.dek_id] = key
        self.by_header[key.header] = key

    def drop(self, dek_id: bytes) -> None:
        key = self.by_id.pop(dek_id, None)
        if key is not None:
            self.by_header.pop(key.header, None)

    def clear(self) -> None:
        self.by_id.clear()
        self.by_header.clear()
        self.unknown = _Unknown()


def _as_bytes(blob: object) -> bytes:
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, bytearray | memoryview):
        return bytes(blob)
    raise TypeError(f"ciphertext must be bytes, not {type(blob).__name__}")


class BlindIndexKey(NoPickle):
    """A keyed HMAC-SHA256 for one blind index: domain, table, column and version.

    Holds key material: refuses pickling and copying; ``repr`` names only what it is for. The HMAC
    inner and outer states are computed once, so each digest costs one ``copy`` and one update.
    """

    __slots__ = ("_base", "domain", "name", "version")

    def __init__(self, key: bytes, *, domain: str, name: str, version: int) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self.domain = domain
        self.name = name
        self.version = version

    def digest(self, data: bytes) -> bytes:
        """Return HMAC-SHA256(key, data), 32 bytes."""
        mac = self._base.copy()
        mac.update(data)
        return mac.digest()

    def __repr__(self) -> str:
        return f"BlindIndexKey(domain={self.domain!r}, name={self.name!r}, version={self.version})"


def _index_key_id(domain: str, name: str) -> bytes:
    # Named keys get an id derived from their name (never from key material), so that processes
    # creating the same index key at once collide on the primary key and converge on one key.
    digest = hashlib.sha256(
        b"vaultkit index key v1\x00" + wire.encode_field(domain) + wire.encode_field(name)
    )
    return digest.digest()[: wire.DEK_ID_SIZE]


def _after_fork(ref: weakref.ReferenceType[Vault]) -> None:
    vault = ref()
    if vault is not None:
        vault._reset_after_fork()


class Vault(NoPickle):
    """Encrypts and decrypts values under per-domain envelope keys.

    Each domain's DEKs are random 256-bit keys wrapped by the domain's KEK in its key provider and
    stored, wrapped, in the key store. This process takes a DEK of its own per domain on its first
    encryption and a fresh one when the DEK's budget (encryptions or age) runs out, so concurrent
    processes never share an encryption key. Unwrapped DEKs are cached, bounded and time-limited;
    decrypting many values costs one provider call per distinct DEK.

    Args:
        provider: the key provider holding the domains' KEKs.
        store: the key store: a :class:`~vaultkit.store.KeyStore`, an SQLAlchemy ``Engine`` or a
            database URL (tables ``vaultkit_data_keys`` and ``vaultkit_meta`` are created there).
            An async URL or ``AsyncEngine`` gets a synchronous engine of vaultkit's own on the
            same database (docs/sqlalchemy.md, "asyncio").
        domains: the key domains this vault serves; names or :class:`KeyDomain` objects.
        providers: per-domain providers that override ``provider`` (a medical KEK in its own HSM).
        cache_size: how many unwrapped DEKs to keep.
        cache_ttl: seconds after which a cached DEK is re-read from the store and unwrapped again,
            so a revoked KEK or a destroyed DEK stops working within that time.
        dek_max_encryptions: encryptions under one DEK before a fresh DEK is taken.
        dek_max_age: age after which a fresh DEK is taken for encryption.

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
        dek_max_encryptions: int = DEFAULT_MAX_ENCRYPTIONS,
        dek_max_age: dt.timedelta = DEFAULT_MAX_AGE,
        audit: str | Engine | AsyncEngine | None = None,
        audit_domain: str | None = None,
        audit_batch_size: int = DEFAULT_AUDIT_BATCH,
    ) -> None:
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
        if not isinstance(dek_max_encryptions, int) or not 1 <= dek_max_encryptions <= 2**32:
            raise ConfigurationError("dek_max_encryptions must be between 1 and 2**32")
        if dek_max_age <= dt.timedelta(0):
            raise ConfigurationError("dek_max_age must be positive")

        self._domains = declared
        self._providers: dict[str, KeyProvider] = {n: overrides.get(n, provider) for n in declared}
        # Validate eagerly: every domain must be served now, not on the first insert.
        for name, domain_provider in self._providers.items():
            domain_provider.primary(name)

        if isinstance(store, str | Engine) or isinstance(
            getattr(store, "sync_engine", None), Engine
        ):
            # An async URL or AsyncEngine: the store opens a sync engine of its own (_offload).
            self._store: KeyStore = SQLKeyStore(store)  # type: ignore[arg-type]
            self._owns_store = True
        elif isinstance(store, KeyStore):
            self._store = store
            self._owns_store = False
        else:
            raise TypeError(
                f"store must be a KeyStore, an Engine or a URL, not {type(store).__name__}"
            )

        self._ttl = float(cache_ttl)
        self._max_uses = dek_max_encryptions
        self._max_age = dek_max_age.total_seconds()
        self._cache = _KeyCache(cache_size)
        self._active: dict[str, _Active] = {}
        self._index_keys: dict[tuple[str, str], BlindIndexKey] = {}
        self._dek_domains: dict[bytes, str] = {}  # DEK id -> domain; no key material
        self._lock = threading.RLock()
        self._closed = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))
        self._audit_log: AuditLog | None = None
        self._audit_engine: Engine | None = None  # an audit engine this vault made (audit=URL)
        self._audit_batches: dict[tuple[Any, ...], list[Any]] = {}
        self._audit_pending: list[AuditEvent] = []  # events a failed write kept, written first
        self._audit_writers: dict[str, Any] = {}  # pinned encrypt-only writers: name -> key
        self._audit_lock = threading.Lock()
        self._audit_batch_size = audit_batch_size
        audited = [d.name for d in declared.values() if d.audited]
        if audited:
            self._open_audit_log(audit, audit_domain or audited[0])

    # -- public API ---------------------------------------------------------------------------

    @property
    def domains(self) -> tuple[str, ...]:
        """Names of the declared key domains."""
        return tuple(self._domains)

    @property
    def store(self) -> KeyStore:
        """The key store holding the wrapped DEKs."""
        return self._store

    def cache_info(self) -> CacheInfo:
        """Return the DEK cache's size and limits."""
        return CacheInfo(len(self._cache.by_id), self._cache.max_size, self._ttl)

    def encrypt(
        self,
        value: PlainValue,
        *,
        domain: str,
        context: Mapping[str, wire.ContextValue] | None = None,
        pad_to: int | None = None,
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

        Returns:
            The self-describing ciphertext (wire format v1), 80 bytes longer than the encoded value.

        Warning:
            Without ``pad_to`` the ciphertext's length reveals the plaintext's length.
        """
        return self._seal(
            domain, encode_value(value, pad_to=pad_to), wire.context_fields(context), context
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
                unknown or destroyed DEK, or was made for another context or domain. One message
                for all of these.
            UnsupportedFormatError: the value names a wire version or suite this release lacks.
            DomainError: the value's domain is not configured in this vault.
            KeyProviderError: the provider could not unwrap the DEK.
        """
        blob = blob if type(blob) is bytes else _as_bytes(blob)
        return self._open(blob, wire.context_fields(context), domain, context)

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
        if domain not in self._domains:
            raise DomainError(f"domain {domain!r} is not declared in this vault")
        return FieldCipher(
            self,
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
        if domain not in self._domains:
            raise DomainError(f"domain {domain!r} is not declared in this vault")
        if not isinstance(version, int) or not 1 <= version <= 255:
            raise ConfigurationError("a blind-index version is an integer from 1 to 255")
        return _call(
            self._named_key, domain, f"{table}.{column}@v{version}", _INDEX_PURPOSE, version
        )

    def _named_key(self, domain: str, name: str, purpose: str, version: int) -> BlindIndexKey:
        """A named HMAC key of ``purpose`` in ``domain``, created on first use, then cached."""
        cached = self._index_keys.get((domain, name))
        if cached is not None:
            return cached
        with self._lock:
            cached = self._index_keys.get((domain, name))
            if cached is not None:
                return cached
            dek_id = _index_key_id(domain, name)
            record = self._store.get(dek_id)
            if record is None:
                record = self._create_index_key(domain, name, dek_id, purpose)
            if record.purpose != purpose or record.domain != domain or record.name != name:
                raise KeyStoreError(f"key-store row {dek_id.hex()} is not the {purpose} key {name}")
            if record.state is DekState.DESTROYED:
                raise KeyStoreError(f"the {purpose} key {name} in domain {domain} was destroyed")
            provider = self._providers[domain]
            ref = KeyRef(domain, record.kek_id, record.kek_version)
            try:
                key = provider.unwrap(
                    ref, record.wrapped, context=wrap_context(domain, dek_id, purpose)
                )
            except KeyAuthenticationError:
                # Named keys come only from rows the key holder made (never from a row an
                # encrypt-only key could create): a planted or replaced row is refused, not used.
                raise KeyStoreError(
                    f"the {purpose} key {name} in domain {domain} (key row {dek_id.hex()}) was "
                    "not made by the holder of the domain's key; refused"
                ) from None
            named = BlindIndexKey(key, domain=domain, name=name, version=version)
            self._index_keys[(domain, name)] = named
            return named

    def _create_index_key(
        self, domain: str, name: str, dek_id: bytes, purpose: str = _INDEX_PURPOSE
    ) -> DataKeyRecord:
        ref = self._providers[domain].primary(domain)
        _, record = self._new_wrapped_key(domain, ref, dek_id, purpose, name=name)
        try:
            self._store.insert(record)
        except KeyStoreError:
            # Another process created it first: use theirs.
            existing = self._store.get(dek_id)
            if existing is None:
                raise
            return existing
        log.info(
            "new blind-index key %s in domain %s under KEK %s v%d",
            name,
            domain,
            ref.key_id,
            ref.version,
        )
        return record

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

    def _denied(self, domain: str, where: Any = None) -> SealedValue:
        scope = current_scope()
        if self._domains[domain].audited:
            self._audit("denied", domain, where, None)
        if self._domains[domain].on_denied == "raise":
            raise AccessDeniedError(
                f"principal {scope.principal.name!r} has no grant for domain {domain!r}"
            )
        return SealedValue(domain)

    def _check_encrypt_grant(self, domain: str) -> None:
        scope = current_scope()
        if domain not in scope.principal.grants:
            raise AccessDeniedError(
                f"principal {scope.principal.name!r} may not encrypt into domain {domain!r}"
            )

    # -- key rotation -------------------------------------------------------------------------------

    def provider_for(self, domain: str) -> KeyProvider:
        """The key provider holding ``domain``'s KEK."""
        if domain not in self._domains:
            raise DomainError(f"domain {domain!r} is not declared in this vault")
        return self._providers[domain]

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
    ) -> Vault:
        """A vault and its providers per domain from a TOML file and ``VAULTKIT__*`` variables.

        See :mod:`vaultkit.config` and docs/providers.md. With no ``path``, the file named by
        ``VAULTKIT_CONFIG`` (or none: environment variables only).
        """
        from vaultkit.config import vault_from_config

        return vault_from_config(path, env=env)

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
        if domain not in self._domains:
            raise DomainError(f"domain {domain!r} is not declared in this vault")
        provider = self._providers[domain]
        target = provider.rotate(domain) if new_version else provider.primary(domain)
        rewrapped = current = changed = 0
        for record in list(self._store.records(domain=domain)):
            if record.state is DekState.DESTROYED:
                continue
            if (record.kek_id, record.kek_version) == (target.key_id, target.version):
                current += 1
                continue
            context = wrap_context(domain, record.dek_id, record.purpose)
            old_ref = KeyRef(domain, record.kek_id, record.kek_version)
            rewrap = getattr(provider, "rewrap", None)
            if rewrap is not None:  # inside the HSM / KMS / transit server: the DEK never travels
                wrapped = rewrap(old_ref, target, record.wrapped, context=context)
            else:
                key = provider.unwrap(old_ref, record.wrapped, context=context)
                wrapped = provider.wrap(target, key, context=context)
            if self._store.rewrap(
                record, kek_id=target.key_id, kek_version=target.version, wrapped=wrapped
            ):
                rewrapped += 1
            else:
                changed += 1
        log.info(
            "rotated KEK of domain %s to v%d: %d key rows rewrapped",
            domain,
            target.version,
            rewrapped,
        )
        return RotationReport(domain, target.version, rewrapped, current, changed)

    def retire_dek(self, dek_id: bytes) -> None:
        """Mark a DEK retired: it still decrypts, no process encrypts under it any more.

        This vault stops encrypting under it at once; other running processes within the cache
        time limit, when they re-read its row.
        Its values are then due for re-encryption; after that, :meth:`destroy_dek`.
        """
        record = self._store.get(dek_id)
        if record is None or record.purpose != _PURPOSE:
            raise KeyStoreError(f"no data key {dek_id.hex()} in the key store")
        if record.state is DekState.DESTROYED:
            raise KeyStoreError(f"DEK {dek_id.hex()} is already destroyed")
        self._store.set_state(dek_id, DekState.RETIRED)
        with self._lock:
            # This process stops encrypting under it at once (others within the cache limit).
            active = self._active.get(record.domain)
            if active is not None and active.key.dek_id == dek_id:
                self._flush_count(active)
                del self._active[record.domain]
        log.info("retired DEK %s of domain %s", dek_id.hex(), record.domain)

    def destroy_dek(self, dek_id: bytes, *, references: int) -> None:
        """Erase a retired DEK for good; values still under it become unreadable forever.

        Args:
            dek_id: the DEK.
            references: how many stored values still name this DEK, as counted by the caller
                (``vaultkit keys destroy`` scans the columns it is given). Must be 0.

        Raises:
            KeyStoreError: the DEK is not retired, or values still reference it.
        """
        record = self._store.get(dek_id)
        if record is None or record.purpose != _PURPOSE:
            raise KeyStoreError(f"no data key {dek_id.hex()} in the key store")
        if record.state is not DekState.RETIRED:
            raise KeyStoreError(
                f"DEK {dek_id.hex()} is {record.state.value}; retire it and re-encrypt first"
            )
        if references != 0:
            raise KeyStoreError(f"DEK {dek_id.hex()} is still referenced by {references} values")
        self._store.destroy(dek_id)
        self._cache.drop(dek_id)
        log.info("destroyed DEK %s of domain %s", dek_id.hex(), record.domain)

    # -- audit ------------------------------------------------------------------------------------

    def _open_audit_log(self, audit: str | Engine | AsyncEngine | None, domain: str) -> None:
        if domain not in self._domains:
            raise ConfigurationError(f"audit_domain {domain!r} is not declared in this vault")
        if not isinstance(self._audit_batch_size, int) or self._audit_batch_size < 1:
            raise ConfigurationError("audit_batch_size must be a positive integer")
        made = sync_engine(audit, what="audit") if audit is not None else None
        if made is not None:
            # A sync URL or Engine, or an async one: then a sync engine of the vault's own.
            engine, owned = made
            if owned:
                self._audit_engine = engine
        elif isinstance(self._store, SQLKeyStore):
            engine = self._store.engine
        else:
            raise ConfigurationError(
                "audited domains need an audit log: give audit= (a database URL or Engine) or use "
                "an SQL key store"
            )
        provider = self._providers[domain]
        signer = getattr(provider, "audit_signer", None)
        writer = signer(domain) if callable(signer) else None
        if writer is not None:
            # An encrypt-only writer cannot read the unit's audit key (nor make one): it logs
            # into a chain of its own, signed with its writer key, which the unit verifies.
            public, sign = writer
            self._audit_log = AuditLog.of_writer(engine, public, sign=sign)
            return
        key = self._named_key(domain, "audit-log@v1", _AUDIT_PURPOSE, 1)
        self._audit_log = AuditLog(engine, mac=key.digest)
        pinned = getattr(provider, "pinned_writers", None)
        self._audit_writers = dict(pinned()) if callable(pinned) else {}

    @property
    def audit_log(self) -> AuditLog | None:
        """The audit log this vault writes, or ``None`` when no domain is audited.

        In an encrypt-only writer (the audit domain's provider holds only the public key, with
        a ``signer``) it is the writer's own chain, signed with the writer key.
        """
        return self._audit_log

    @property
    def writer_audit_logs(self) -> dict[str, AuditLog]:
        """The audit chains of the encrypt-only writers the audit domain's provider pins.

        Read-only, by writer name, for those that have logged anything (whose tables exist):
        verify each with :meth:`AuditLog.verify`. Empty for a provider that pins no writer.
        """
        log_ = self._audit_log
        if log_ is None:
            return {}
        engine = log_.engine
        return {
            name: AuditLog.of_writer(engine, key, name=name)
            for name, key in self._audit_writers.items()
            if audit_log_exists(engine, table_prefix=writer_table_prefix(key))
        }

    def _audit(self, action: str, domain: str, where: Any, dek_id: bytes | None) -> None:
        """Log one access to an audited domain, or raise :class:`AuditError`: never neither.

        Bulk reads share one event per batch, a batch being the accesses of one (principal,
        purpose, action, domain, table, column, DEK). The first access of a batch is written at
        once, so a log that cannot be written fails the access. Further row keys are written
        together when the batch is full (``audit_batch_size`` accesses), when the
        ``vault.acting_as`` block ends, on :meth:`flush_audit` and on :meth:`close`.

        A write that fails keeps its events (never discards them): every later access of the
        vault first writes them, and fails while it cannot. So a batch holds at most
        ``audit_batch_size - 1`` unwritten accesses, and while the log is down no access
        succeeds and nothing piles up.
        """
        log_ = self._audit_log
        if log_ is None:
            return
        table = column = row = None
        if isinstance(where, tuple):
            table, column, row = where
        elif where:
            table, column, row = where.get("table"), where.get("column"), where.get("row")
        scope = current_scope()
        key = (scope.principal.name, scope.purpose, action, domain, table, column, dek_id)
        row_text = wire.context_value_text(row) if row is not None else None
        with self._audit_lock:
            if self._audit_pending:
                # An earlier write failed: its events go first, or this access fails too.
                pending, self._audit_pending = self._audit_pending, []
                try:
                    self._append(log_, pending)
                except (AuditError, CancelledCall):
                    self._audit_pending[:0] = pending
                    raise
            batch = self._audit_batches.get(key)
            if batch is None:
                self._append(log_, [self._audit_event(key, (row_text,) if row_text else (), 1)])
                # setdefault: in asyncio another task may have opened the batch meanwhile.
                self._audit_batches.setdefault(key, [[], 0])
                return
            if batch[1] + 1 < self._audit_batch_size:
                if row_text is not None:
                    batch[0].append(row_text)
                batch[1] += 1
                return
            # The batch is full with this access: write it now, this access included. The batch
            # is emptied first: in asyncio other tasks may add to it while the write is under way.
            rows = (*batch[0], row_text) if row_text is not None else tuple(batch[0])
            earlier = (tuple(batch[0]), batch[1])
            batch[0], batch[1] = [], 0
            try:
                self._append(log_, [self._audit_event(key, rows, earlier[1] + 1)])
            except (AuditError, CancelledCall):
                # Keep the batch's earlier accesses (they returned); this one fails, unrecorded.
                if not batch[1] and self._audit_batches.get(key) is batch:
                    del self._audit_batches[key]
                if earlier[1]:
                    self._audit_pending.append(self._audit_event(key, *earlier))
                raise

    def _append(self, log_: AuditLog, events: list[AuditEvent]) -> None:
        """Write audit events; the caller holds ``_audit_lock``.

        In SQLAlchemy's asyncio greenlet the write goes to a worker thread and the lock is let go
        meanwhile: the greenlet switches to the event loop, and another task of the loop's thread
        taking the lock would block that thread, and with it the write, for good.
        """
        if not in_greenlet():
            log_.append(events)
            return
        self._audit_lock.release()
        try:
            _call(log_.append, events, finish=True)
        finally:
            self._audit_lock.acquire()

    @staticmethod
    def _audit_event(key: tuple[Any, ...], rows: tuple[str, ...], count: int) -> AuditEvent:
        principal, purpose, action, domain, table, column, dek_id = key
        return AuditEvent(
            principal=principal,
            purpose=purpose,
            action=action,
            domain=domain,
            table=table,
            column=column,
            rows=rows,
            count=count,
            dek_id=dek_id.hex() if dek_id else None,
            at=dt.datetime.now(dt.UTC),
        )

    def flush_audit(self) -> None:
        """Write the row keys of every open audit batch and close the batches.

        Events that an earlier write could not store are written first. If the write fails,
        every event is kept for the next attempt (this call again, :meth:`close`, or the next
        audited access, which fails until they are written).

        Raises:
            AuditError: the events could not be written (they are kept).
        """
        log_ = self._audit_log
        if log_ is None:
            return
        with self._audit_lock:
            events = [
                *self._audit_pending,
                *(
                    self._audit_event(k, tuple(b[0]), b[1])
                    for k, b in self._audit_batches.items()
                    if b[1]
                ),
            ]
            self._audit_batches.clear()
            self._audit_pending = []
        # Written outside the lock (other threads and tasks go on auditing meanwhile); in
        # SQLAlchemy's asyncio greenlet in a worker thread.
        try:
            _call(log_.append, events, finish=True)
        except (AuditError, CancelledCall):
            with self._audit_lock:
                self._audit_pending[:0] = events
            raise

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

    def close(self) -> None:
        """Record encryption counts in the key store and release what the vault opened.

        Raises:
            AuditError: the open audit batches could not be written; the vault stays open with
                the events kept, so that ``close()`` can be called again once the log is
                writable.
        """
        if not self._closed and self._audit_log is not None:
            self.flush_audit()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for active in self._active.values():
                self._flush_count(active)
            self._active.clear()
            self._cache.clear()
            if self._owns_store:
                self._store.close()
            if self._audit_engine is not None:
                self._audit_engine.dispose()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Vault(domains={list(self._domains)!r}, store={self._store!r})"

    # -- encryption ---------------------------------------------------------------------------

    def _seal(self, domain: str, plaintext: bytes, fields: bytes, where: Any = None) -> bytes:
        active = self._active.get(domain)
        if active is None or next(active.uses) > self._max_uses or active.deadline < _monotonic():
            active = _call(self._next_active, domain)
        if active.gated:
            self._check_encrypt_grant(domain)
        key = active.key
        if active.audited:
            self._audit("write", domain, where, key.dek_id)
        nonce = _urandom(12)
        return key.header + nonce + key.cipher.encrypt(nonce, plaintext, key.aad_prefix + fields)

    def _next_active(self, domain: str) -> _Active:
        with self._lock:
            if self._closed:
                raise ConfigurationError("this vault is closed")
            if domain not in self._domains:
                raise DomainError(f"domain {domain!r} is not declared in this vault")
            now = _monotonic()
            active = self._active.get(domain)
            if active is not None and now < active.retire_at:
                if now >= active.key.expires_at:
                    # The cache time limit ran out: re-read the row and unwrap again, so that a
                    # retired or destroyed DEK or a revoked KEK takes effect.
                    record = self._store.get(active.key.dek_id)
                    if record is not None and record.state is DekState.ACTIVE:
                        key = self._unwrap(record)
                        active.key = key
                        active.deadline = min(active.retire_at, key.expires_at)
                used = next(active.uses)
                if used <= self._max_uses and active.deadline > now and active.key.expires_at > now:
                    return active
            if active is not None:
                self._flush_count(active)
            active = self._new_active(domain)
            next(active.uses)
            self._active[domain] = active
            return active

    def _new_wrapped_key(
        self, domain: str, ref: KeyRef, dek_id: bytes, purpose: str, *, name: str | None = None
    ) -> tuple[bytes, DataKeyRecord]:
        """Make a random 256-bit key, wrap it under ``ref`` and return it with its store row.

        A provider with ``generate_data_key`` (AWS KMS) makes and wraps the key in one call.
        """
        provider = self._providers[domain]
        context = wrap_context(domain, dek_id, purpose)
        generate = getattr(provider, "generate_data_key", None)
        if generate is not None:
            key, wrapped = generate(ref, context=context)
            if not isinstance(key, bytes) or len(key) != 32:
                raise KeyProviderError("the provider generated a data key that is not 32 bytes")
        else:
            key = new_data_key()
            wrapped = provider.wrap(ref, key, context=context)
        record = DataKeyRecord(
            dek_id=dek_id,
            domain=domain,
            purpose=purpose,
            kek_id=ref.key_id,
            kek_version=ref.version,
            wrapped=wrapped,
            state=DekState.ACTIVE,
            created_at=dt.datetime.now(dt.UTC),
            name=name,
        )
        return key, record

    def _new_active(self, domain: str) -> _Active:
        ref = self._providers[domain].primary(domain)
        dek_id = new_dek_id()
        dek, record = self._new_wrapped_key(domain, ref, dek_id, _PURPOSE)
        wrapped = record.wrapped
        self._store.insert(record)
        key = DataKey(dek, dek_id, domain, wrapped=wrapped, ttl=self._ttl)
        # Not put in the decryption cache: reading goes through the provider's unwrap, so a
        # service whose provider may only wrap (an encrypt-only key) cannot read back its writes.
        log.info(
            "new DEK %s in domain %s under KEK %s v%d",
            dek_id.hex(),
            domain,
            ref.key_id,
            ref.version,
        )
        policy = self._domains[domain]
        return _Active(
            key,
            _monotonic() + self._max_age,
            gated=policy.encrypt_requires_grant,
            audited=policy.audited,
        )

    def _flush_count(self, active: _Active) -> None:
        count = min(next(active.uses) - 1, self._max_uses)
        if count > 0:
            try:
                self._store.add_encryptions(active.key.dek_id, count)
            except Exception:
                log.warning(
                    "could not record the encryption count of DEK %s", active.key.dek_id.hex()
                )

    # -- decryption ---------------------------------------------------------------------------

    def _open(self, blob: bytes, fields: bytes, domain: str | None, where: Any = None) -> Decrypted:
        if len(blob) < _MIN:
            raise DecryptionError
        key = self._cache.by_header.get(blob[:_H])
        if key is None or key.expires_at < _monotonic():
            try:
                key = self._key_for(blob, domain)
            except _Denied as denied:
                return self._denied(denied.domain, where)
        else:
            key.referenced = True
        if domain is not None and domain != key.domain:
            raise DecryptionError
        if key.restricted and key.domain not in current_scope().principal.grants:
            return self._denied(key.domain, where)
        if key.audited:
            # Logged before decrypting, so that when the event cannot be written the error is
            # raised while no frame holds plaintext (reporters that capture locals would ship it).
            self._audit("decrypt", key.domain, where, key.dek_id)
        try:
            plaintext = key.cipher.decrypt(blob[_H:_P], blob[_P:], key.aad_prefix + fields)
        except InvalidTag:
            raise DecryptionError from None
        if plaintext[:1] == b"\x01":  # str, the common case, decoded here without a call
            try:
                return plaintext[1:].decode("utf-8")
            except UnicodeDecodeError:
                pass
        else:
            try:
                return decode_value(plaintext)
            except DecryptionError:
                pass
        # An authenticated plaintext that does not decode: raised here, after the except blocks,
        # so that neither this frame nor a chained error (UnicodeDecodeError keeps the bytes)
        # holds it.
        del plaintext
        raise DecryptionError

    def _is_denied(self, domain: str) -> bool:
        policy = self._domains.get(domain)
        return (
            policy is not None
            and policy.restricted
            and domain not in current_scope().principal.grants
        )

    def _key_for(self, blob: bytes, domain: str | None) -> DataKey:
        """The DEK ``blob`` names, for a value of ``domain`` (``None``: the value's own).

        Raises _Denied before any key-store read or provider call when the reader lacks the grant
        of the column's domain (or, without one, of the DEK's known domain), and DecryptionError
        for a DEK of another domain than the column's: it can never be right, whoever reads.
        """
        _suite, dek_id, commitment = wire.parse_header(blob)
        known = self._dek_domains.get(dek_id)
        if known is not None:
            if domain is not None and known != domain:
                raise DecryptionError
            if self._is_denied(known):
                raise _Denied(known)
        elif domain is not None and self._is_denied(domain):
            raise _Denied(domain)
        key = self._cache.by_id.get(dek_id)
        if key is None or key.expires_at < _monotonic():
            # In SQLAlchemy's asyncio greenlet: in a worker thread, awaited (_offload).
            key = _call(self._load_key, dek_id, domain)
        if not hmac.compare_digest(key.commitment, commitment):
            raise DecryptionError
        return key

    def _load_key(self, dek_id: bytes, domain: str | None) -> DataKey:
        """Read and unwrap a DEK that is not cached (key-store read, provider call)."""
        with self._lock:
            key = self._cache.by_id.get(dek_id)
            if key is None or key.expires_at < _monotonic():
                record = self._readable_record(dek_id)
                if record is None:
                    self._cache.drop(dek_id)
                    log.debug("no usable DEK %s for a value", dek_id.hex())
                    raise DecryptionError
                if len(self._dek_domains) >= _DEK_DOMAINS_MAX:
                    self._dek_domains.clear()
                self._dek_domains[dek_id] = record.domain
                if domain is not None and record.domain != domain:
                    raise DecryptionError
                if self._is_denied(record.domain):
                    raise _Denied(record.domain)
                key = self._unwrap(record)
        return key

    def _readable_record(self, dek_id: bytes) -> DataKeyRecord | None:
        """The readable data-key row of ``dek_id``, or ``None``; call with the lock held.

        Ids the store did not have are answered from memory for a while, and lookups that find
        nothing share a budget per window (see :class:`_Unknown`).
        """
        unknown = self._cache.unknown
        now = _monotonic()
        if unknown.refuses(dek_id, now) and not any(
            # A DEK this vault took since the list was read is not in it, and is surely real.
            active.key.dek_id == dek_id
            for active in self._active.values()
        ):
            return None
        record = self._store.get(dek_id)
        if _readable(record):
            return record
        if unknown.add(dek_id, now):
            self._list_readable(unknown)
        return None

    def _list_readable(self, unknown: _Unknown) -> None:
        ids: set[bytes] = set()
        rows = 0
        for record in self._store.records():
            rows += 1
            if rows > SNAPSHOT_MAX:
                unknown.too_big = True
                log.warning(
                    "values name many unknown DEK ids; the key store has more than %d rows, so "
                    "each unknown id costs a lookup",
                    SNAPSHOT_MAX,
                )
                return
            if _readable(record):
                ids.add(record.dek_id)
        unknown.snapshot = frozenset(ids)
        log.warning(
            "%d values named DEK ids the key store does not have within %.0f s; ids outside the "
            "%d readable DEKs are refused without a lookup for the rest of that time",
            unknown.misses,
            NEGATIVE_TTL,
            len(ids),
        )

    def preload(self, dek_ids: Iterable[bytes]) -> int:
        """Unwrap the given DEKs into the cache ahead of a read; return how many were unwrapped.

        A provider with ``unwrap_many`` (the transit engine) unwraps them in one request per KEK;
        others one by one. DEKs already cached, unknown, destroyed, or of a restricted domain the
        current principal has no grant for are skipped.
        """
        wanted: dict[int, list[DataKeyRecord]] = {}
        with self._lock:
            for dek_id in dict.fromkeys(dek_ids):
                cached = self._cache.by_id.get(dek_id)
                if cached is not None and cached.expires_at >= _monotonic():
                    continue
                record = self._readable_record(dek_id)
                if (
                    record is None
                    or record.domain not in self._providers
                    or self._is_denied(record.domain)
                ):
                    continue
                provider = self._providers[record.domain]
                wanted.setdefault(id(provider), []).append(record)
            done = 0
            for records in wanted.values():
                provider = self._providers[records[0].domain]
                unwrap_many = getattr(provider, "unwrap_many", None)
                if unwrap_many is None:
                    for record in records:
                        self._unwrap(record)
                    done += len(records)
                    continue
                items = [
                    (
                        KeyRef(r.domain, r.kek_id, r.kek_version),
                        r.wrapped,
                        wrap_context(r.domain, r.dek_id, r.purpose),
                    )
                    for r in records
                ]
                for record, dek in zip(records, unwrap_many(items), strict=True):
                    self._cache_key(record, dek)
                done += len(records)
        return done

    def _unwrap(self, record: DataKeyRecord) -> DataKey:
        provider = self._providers.get(record.domain)
        if provider is None:
            raise DomainError(f"domain {record.domain!r} is not configured in this vault")
        ref = KeyRef(record.domain, record.kek_id, record.kek_version)
        try:
            dek = provider.unwrap(
                ref,
                record.wrapped,
                context=wrap_context(record.domain, record.dek_id, record.purpose),
            )
        except KeyAuthenticationError:
            # A key row the provider cannot tell as its own or a pinned writer's (planted by a
            # database writer holding an encrypt-only key): its values fail like forged ones.
            log.warning(
                "refused DEK %s of domain %s: its wrapped key is not authenticated",
                record.dek_id.hex(),
                record.domain,
            )
            raise DecryptionError from None
        return self._cache_key(record, dek)

    def _cache_key(self, record: DataKeyRecord, dek: bytes) -> DataKey:
        key = DataKey(dek, record.dek_id, record.domain, wrapped=record.wrapped, ttl=self._ttl)
        key.restricted = self._domains[record.domain].restricted
        key.audited = self._domains[record.domain].audited
        self._cache.put(key)
        return key

    def _reset_after_fork(self) -> None:
        # A child must never encrypt under its parent's DEK: take fresh ones, with fresh locks.
        # Its parent's pending audit rows are the parent's to write, not the child's.
        self._lock = threading.RLock()
        self._active = {}
        self._audit_lock = threading.Lock()
        self._audit_batches = {}
        self._audit_pending = []
        if self._audit_log is not None:
            # The parent's pooled audit connections are the parent's: the child opens its own
            # (SQLAlchemy's "Using Connection Pools with Multiprocessing or os.fork()").
            self._audit_log.engine.dispose(close=False)


class FieldCipher:
    """Encrypts and decrypts the values of one column; made by :meth:`Vault.field`.

    Holds no key material of its own and is safe to share between threads. The schema, table and
    column names are bound as separate context entries (:func:`vaultkit.core.wire.cell_context`).
    """

    __slots__ = (
        "_after",
        "_before",
        "_count",
        "_domain",
        "_fixed",
        "_open",
        "_pad",
        "_row_bound",
        "_seal",
        "_vault",
        "_where",
        "column",
        "schema",
        "table",
    )

    def __init__(
        self,
        vault: Vault,
        domain: str,
        *,
        table: str,
        column: str,
        row_bound: bool,
        pad_to: int | None = None,
        schema: str | None = None,
    ) -> None:
        try:
            fixed = wire.cell_context(table=table, column=column, schema=schema)
        except ValueError as exc:
            raise ConfigurationError(f"cannot bind a column to this name: {exc}") from None
        self._vault = vault
        self._seal = vault._seal
        self._open = vault._open
        self._domain = domain
        self._pad = pad_to
        self.schema = schema
        self.table = table
        self.column = column
        # For the audit log (built once, not per value): the table as ``schema.table`` when it has
        # a schema. Display only; the associated data keeps the names apart.
        self._where = (table if schema is None else f"{schema}.{table}", column, None)
        self._row_bound = row_bound
        self._fixed = wire.context_fields(fixed)
        # A row-bound value's entries are these plus "row", in sorted place: the entries before
        # and after it are encoded once here, so each value only encodes its row key.
        keys = sorted(fixed)
        self._before = b"".join(
            wire.encode_field(k) + wire.encode_field(fixed[k]) for k in keys if k < wire.CONTEXT_ROW
        )
        self._after = b"".join(
            wire.encode_field(k) + wire.encode_field(fixed[k]) for k in keys if k > wire.CONTEXT_ROW
        )
        self._count = wire.u16(len(fixed) + 1)

    def _fields(self, row: wire.ContextValue | None) -> bytes:
        if not self._row_bound:
            if row is not None:
                raise TypeError(f"{self._where[0]}.{self.column} is not row-bound; pass no row")
            return self._fixed
        if row is None:
            raise ConfigurationError(
                f"{self._where[0]}.{self.column} is row-bound: a row key is required"
            )
        return (
            self._count
            + self._before
            + b"\x00\x03row"
            + wire.encode_field(wire.context_value_text(row))
            + self._after
        )

    def encrypt(self, value: PlainValue, *, row: wire.ContextValue | None = None) -> bytes:
        """Encrypt one value of this column (``row`` is required when the column is row-bound)."""
        fields = self._fixed if row is None and not self._row_bound else self._fields(row)
        return self._seal(
            self._domain,
            encode_value(value, pad_to=self._pad),
            fields,
            self._where if row is None else (self._where[0], self.column, row),
        )

    def decrypt(self, blob: bytes, *, row: wire.ContextValue | None = None) -> Decrypted:
        """Decrypt one value of this column."""
        fields = self._fixed if row is None and not self._row_bound else self._fields(row)
        return self._open(
            blob if type(blob) is bytes else _as_bytes(blob),
            fields,
            self._domain,
            self._where if row is None else (self._where[0], self.column, row),
        )

    def admit_plaintext(self, *, row: wire.ContextValue | None = None) -> SealedValue | None:
        """Apply the rules of a decrypt to a legacy plaintext value of this column (migration mode).

        A principal without the grant of a restricted domain gets what a decrypt would give it
        (a :class:`SealedValue`, or :class:`AccessDeniedError` where the domain says so, audited
        as ``denied``); in an audited domain the read is logged as a ``decrypt`` event without a
        DEK id, written before the value is handed out.

        Returns:
            ``None`` when the value may be handed out, else the sealed value to return instead.

        Raises:
            AccessDeniedError: no grant, and the domain raises for readers without one.
            AuditError: the audit event could not be written.
        """
        vault, domain = self._vault, self._domain
        where = self._where if row is None else (self._where[0], self.column, row)
        if vault._is_denied(domain):
            return vault._denied(domain, where)
        if vault._domains[domain].audited:
            vault._audit("decrypt", domain, where, None)
        return None

    @property
    def domain(self) -> str:
        """The key domain of this column."""
        return self._domain

    def __repr__(self) -> str:
        schema = f", schema={self.schema!r}" if self.schema is not None else ""
        return (
            f"FieldCipher(domain={self._domain!r}{schema}, table={self.table!r}, "
            f"column={self.column!r})"
        )
