"""The keyring: which DEK encrypts, which DEK a value names, and the named HMAC keys.

One job: hand the cipher a ready key. It keeps, per domain, the provider and the DEK this process
encrypts under with its budget (:class:`_Active`); the cache of unwrapped DEKs by id and by
header, with its negative cache and miss budget for ids the key store does not have
(:class:`_KeyCache`, :class:`_Unknown`); the named HMAC keys (blind-index and audit keys); and it
makes new DEKs. :meth:`Keyring.resolve` turns a value's header into its key, with the grant check
*before* any key-store read or provider call (the :class:`~vaultkit._access.Policy` is injected)
and the key-commitment check after.

It has one lock of its own (``_lock``), taken around key-store reads, provider calls and changes
to its maps, and never while any other collaborator's lock is held; after a fork the child gets
a fresh lock and no active DEK (:meth:`Keyring.reset_after_fork`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, TypeGuard

from vaultkit._access import Denied, Policy
from vaultkit._offload import call as _call
from vaultkit._redact import NoPickle
from vaultkit.core import wire
from vaultkit.core.envelope import DataKey, new_data_key, new_dek_id, wrap_context
from vaultkit.errors import (
    ConfigurationError,
    DecryptionError,
    DomainError,
    KeyAuthenticationError,
    KeyProviderError,
    KeyStoreError,
)
from vaultkit.keys.provider import (
    KeyProvider,
    KeyRef,
    SupportsBatchUnwrap,
    SupportsDataKeyGeneration,
)
from vaultkit.store import DataKeyRecord, DekState, KeyStore, SupportsStates

__all__ = ["BlindIndexKey", "CacheInfo", "Keyring"]

log = logging.getLogger("vaultkit")

#: Default encryption budget of one DEK. NIST SP 800-38D (8.3) caps random 96-bit nonces at 2**32
#: invocations per key; 2**24 keeps the chance of a nonce collision below 2**-57.
DEFAULT_MAX_ENCRYPTIONS: Final = 2**24
DEFAULT_MAX_AGE: Final = dt.timedelta(days=30)
DEFAULT_CACHE_SIZE: Final = 1000  # unwrapped DEKs kept per vault
DEFAULT_CACHE_TTL: Final = 600.0  # seconds before a cached DEK is fetched and unwrapped again
#: Seconds before the key-store state of a cached DEK is read again (no unwrap): a DEK destroyed
#: or retired elsewhere stops decrypting (or encrypting) here within that time.
DEFAULT_KEY_CHECK_INTERVAL: Final = 5.0
PURPOSE: Final = "data"
INDEX_PURPOSE: Final = "index"
AUDIT_PURPOSE: Final = "audit"
_DEK_DOMAINS_MAX: Final = 100_000

#: Seconds a DEK id the key store did not know (or holds destroyed) is answered from memory. A DEK
#: created meanwhile by another process (seen late through a lagging replica) is readable after it.
NEGATIVE_TTL: Final = 5.0
NEGATIVE_CACHE_SIZE: Final = 4096  # unknown DEK ids remembered, 16 bytes each
#: Key-store lookups that may find nothing per NEGATIVE_TTL window before the vault stops asking
#: for ids it does not know and reads the list of readable DEK ids instead (see _Unknown).
UNKNOWN_LOOKUP_BUDGET: Final = 64
SNAPSHOT_MAX: Final = 100_000  # readable DEK ids a vault keeps in memory at most (16 bytes each)

SUBJECT_REF_PURPOSE: Final = "subject-ref"
SUBJECT_REF_NAME: Final = "subject-ref@v1"
WRAPPING_PURPOSE: Final = "wrapping"

_monotonic = time.monotonic


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Size and limits of a vault's DEK cache; no key material."""

    size: int
    max_size: int
    ttl: float
    check_interval: float = DEFAULT_KEY_CHECK_INTERVAL


class _CachedKey(NoPickle):
    """An unwrapped DEK in the cache: its material (copied from the DataKey, so that the hot path
    makes no extra attribute hop) and the cache's own bookkeeping and the domain's policy flags.

    ``expires_at``, the one time the hot path compares, is the next key-store check (at most
    ``check`` seconds away); ``unwrap_at`` is when the DEK must be read and unwrapped again (``ttl``
    after it was). A check that finds the row still readable moves ``expires_at`` on without an
    unwrap (:meth:`Keyring._revalidate`).

    Holds key material: refuses pickling and copying; ``repr`` names only id and domain.
    """

    __slots__ = (
        "aad_prefix",
        "audited",
        "cipher",
        "commitment",
        "dek_id",
        "domain",
        "expires_at",
        "header",
        "referenced",
        "restricted",
        "unwrap_at",
    )

    def __init__(
        self, key: DataKey, ttl: float, check: float, *, restricted: bool, audited: bool
    ) -> None:
        self.cipher = key.cipher
        self.commitment = key.commitment
        self.dek_id = key.dek_id
        self.domain = key.domain
        self.header = key.header
        self.aad_prefix = key.aad_prefix
        now = _monotonic()
        self.unwrap_at = now + ttl
        self.expires_at = min(now + check, self.unwrap_at)
        self.referenced = True
        self.restricted = restricted
        self.audited = audited

    def __repr__(self) -> str:
        return f"_CachedKey(dek_id={self.dek_id.hex()!r}, domain={self.domain!r})"


class _Active(NoPickle):
    """The DEK this process encrypts under in one domain, with its budget.

    The fields the hot path reads (``cipher``, ``header``, ``aad_prefix``) are copied from the
    DataKey; ``deadline`` is the earliest of the age budget (``retire_at``), the cache time limit
    (``expires_at``, then it is unwrapped again) and the next key-store check (``check_at``, then
    its row's state is read again, so that a DEK retired elsewhere stops encrypting here).
    """

    __slots__ = (
        "aad_prefix",
        "audited",
        "check",
        "check_at",
        "cipher",
        "deadline",
        "dek_id",
        "expires_at",
        "gated",
        "header",
        "key",
        "retire_at",
        "uses",
    )

    def __init__(
        self,
        key: DataKey,
        retire_at: float,
        ttl: float,
        check: float,
        *,
        gated: bool,
        audited: bool,
    ) -> None:
        self.gated = gated
        self.audited = audited
        self.uses = itertools.count(1)
        self.retire_at = retire_at
        self.dek_id = key.dek_id
        self.check = check
        self.set_key(key, ttl)

    def set_key(self, key: DataKey, ttl: float) -> None:
        self.key = key
        self.cipher = key.cipher
        self.header = key.header
        self.aad_prefix = key.aad_prefix
        self.expires_at = _monotonic() + ttl
        self.checked()

    def checked(self) -> None:
        """Its row was found active just now: encrypt under it until the next check is due."""
        self.check_at = min(_monotonic() + self.check, self.expires_at)
        self.deadline = min(self.retire_at, self.check_at)

    def __repr__(self) -> str:
        return f"_Active(dek_id={self.dek_id.hex()!r}, domain={self.key.domain!r})"


def _readable(record: DataKeyRecord | None) -> TypeGuard[DataKeyRecord]:
    """A data-key row that values may be decrypted under (not destroyed, not another kind)."""
    return (
        record is not None and record.state is not DekState.DESTROYED and record.purpose == PURPOSE
    )


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
        self.by_id: OrderedDict[bytes, _CachedKey] = OrderedDict()
        self.by_header: dict[bytes, _CachedKey] = {}
        self.unknown = _Unknown()

    def put(self, key: _CachedKey) -> None:
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
        # In place: the cipher holds a reference to ``by_header``.
        self.by_id.clear()
        self.by_header.clear()
        self.unknown = _Unknown()


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


def canonical_subject(subject: object) -> bytes:
    """The bytes a subject reference is computed from: ``str(subject)`` for int and UUID."""
    if isinstance(subject, bool) or not isinstance(subject, str | int | uuid.UUID):
        raise TypeError(f"a subject must be str, int or UUID, not {type(subject).__name__}")
    text = subject if isinstance(subject, str) else str(subject)
    if not text:
        raise ValueError("a subject must not be the empty string")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a subject must be valid Unicode (no lone surrogates)") from None


def index_key_id(domain: str, name: str) -> bytes:
    """The key-store id of a named key (blind-index or audit key): derived from its name only."""
    # Named keys get an id derived from their name (never from key material), so that processes
    # creating the same index key at once collide on the primary key and converge on one key.
    digest = hashlib.sha256(
        b"vaultkit index key v1\x00" + wire.encode_field(domain) + wire.encode_field(name)
    )
    return digest.digest()[: wire.DEK_ID_SIZE]


def _after_fork(ref: weakref.ReferenceType[Keyring]) -> None:
    keyring = ref()
    if keyring is not None:
        keyring.reset_after_fork()


class Keyring(NoPickle):
    """Per-domain providers, the active DEKs and their budgets, the DEK cache and named keys.

    Args:
        policy: the access policy, consulted before any key-store read for a value.
        providers: the provider of each declared domain.
        store: the key store.
        cache_size, cache_ttl, max_uses, max_age: the cache's and each DEK's limits (seconds).
        check_interval: seconds between key-store reads of a cached DEK's state (capped at
            ``cache_ttl``).
    """

    def __init__(
        self,
        *,
        policy: Policy,
        providers: Mapping[str, KeyProvider],
        store: KeyStore,
        cache_size: int,
        cache_ttl: float,
        max_uses: int,
        max_age: float,
        check_interval: float = DEFAULT_KEY_CHECK_INTERVAL,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.policy = policy
        self.clock: Callable[[], dt.datetime] = clock or _utc_now
        #: Domain -> its key scope, for the domains whose DEKs are per subject or per bucket.
        self.scopes: dict[str, str] = {
            name: d.dek_scope for name, d in policy.domains.items() if d.dek_scope != "process"
        }
        self.providers: dict[str, KeyProvider] = dict(providers)
        self.store = store
        self.ttl = float(cache_ttl)
        self.check = min(float(check_interval), self.ttl)
        self.max_uses = max_uses
        self.max_age = max_age
        self.cache = _KeyCache(cache_size)
        #: Domain -> the DEK this process encrypts under. Changed in place only (the cipher
        #: holds a reference to it).
        self.active: dict[str, _Active] = {}
        self._index_keys: dict[tuple[str, str], BlindIndexKey] = {}
        self._dek_domains: dict[bytes, str] = {}  # DEK id -> domain; no key material
        self._lock = threading.RLock()
        self._closed = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))

    # -- scopes, subjects and the wall clock ---------------------------------------------------

    def now(self) -> dt.datetime:
        """The wall clock, as an aware UTC datetime (ConfigurationError for a naive clock)."""
        now = self.clock()
        if not isinstance(now, dt.datetime) or now.utcoffset() is None:
            raise ConfigurationError("the vault's clock must return a timezone-aware datetime")
        return now.astimezone(dt.UTC)

    def scope_of(self, domain: str) -> str:
        """``"process"``, ``"subject"`` or ``"bucket"``."""
        return self.scopes.get(domain, "process")

    def subject_ref(self, domain: str, subject: object) -> str:
        """The subject's reference in ``domain`` (see Vault.subject_ref)."""
        data = canonical_subject(subject)
        key = self.named_key(domain, SUBJECT_REF_NAME, SUBJECT_REF_PURPOSE, 1)
        return key.digest(data)[:16].hex()

    def subject_active(self, domain: str, subject: object) -> _Active:
        """The DEK to encrypt under for ``subject`` in a subject-scoped domain (counts the use)."""
        raise NotImplementedError

    def forget_subject(self, domain: str, subject_ref: str) -> None:
        """Drop the subject's DEKs from this process (active and cached): it was erased, or its
        deadline changed."""
        raise NotImplementedError

    # -- reading the key store ---------------------------------------------------------------

    def cache_info(self) -> CacheInfo:
        return CacheInfo(len(self.cache.by_id), self.cache.max_size, self.ttl, self.check)

    def data_keys(
        self, *, domain: str | None = None, state: DekState | None = None
    ) -> Iterator[DataKeyRecord]:
        """The data-key rows (purpose ``data``) of the key store, optionally of one domain/state."""
        for record in self.store.records(domain=domain, state=state):
            if record.purpose == PURPOSE:
                yield record

    def dek_state(self, dek_id: bytes) -> DekState | None:
        """The state of data key ``dek_id``, or ``None`` when the store has no such data key."""
        record = self.store.get(dek_id)
        if record is None or record.purpose != PURPOSE:
            return None
        return record.state

    # -- encryption --------------------------------------------------------------------------

    def next_active(self, domain: str) -> _Active:
        """The DEK to encrypt under in ``domain`` after the hot path found its budget spent.

        Counts the use it hands out.
        """
        with self._lock:
            if self._closed:
                raise ConfigurationError("this vault is closed")
            if domain not in self.providers:
                raise DomainError(f"domain {domain!r} is not declared in this vault")
            now = _monotonic()
            active = self.active.get(domain)
            if active is not None and now < active.retire_at:
                if now >= active.expires_at:
                    # The cache time limit ran out: re-read the row and unwrap again, so that a
                    # retired or destroyed DEK or a revoked KEK takes effect.
                    record = self.store.get(active.dek_id)
                    if record is not None and record.state is DekState.ACTIVE:
                        active.set_key(self._unwrap_data_key(record), self.ttl)
                elif now >= active.check_at:
                    # The next check is due: read the row's state only (no unwrap), so that a DEK
                    # retired or destroyed by another process stops encrypting here.
                    if self._states([active.dek_id]).get(active.dek_id) is DekState.ACTIVE:
                        active.checked()
                used = next(active.uses)
                if used <= self.max_uses and active.deadline > now:
                    return active
            if active is not None:
                self._flush_count(active)
            active = self._new_active(domain)
            next(active.uses)
            self.active[domain] = active
            return active

    def new_wrapped_key(
        self, domain: str, ref: KeyRef, dek_id: bytes, purpose: str, *, name: str | None = None
    ) -> tuple[bytes, DataKeyRecord]:
        """Make a random 256-bit key, wrap it under ``ref`` and return it with its store row.

        A provider that generates data keys (AWS KMS) makes and wraps the key in one call.
        """
        provider = self.providers[domain]
        context = wrap_context(domain, dek_id, purpose)
        if isinstance(provider, SupportsDataKeyGeneration):
            key, wrapped = provider.generate_data_key(ref, context=context)
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
        ref = self.providers[domain].primary(domain)
        dek_id = new_dek_id()
        dek, record = self.new_wrapped_key(domain, ref, dek_id, PURPOSE)
        self.store.insert(record)
        key = DataKey(dek, dek_id, domain)
        # Not put in the decryption cache: reading goes through the provider's unwrap, so a
        # service whose provider may only wrap (an encrypt-only key) cannot read back its writes.
        log.info(
            "new DEK %s in domain %s under KEK %s v%d",
            dek_id.hex(),
            domain,
            ref.key_id,
            ref.version,
        )
        policy = self.policy.domains[domain]
        return _Active(
            key,
            _monotonic() + self.max_age,
            self.ttl,
            self.check,
            gated=policy.encrypt_requires_grant,
            audited=policy.audited,
        )

    def _flush_count(self, active: _Active) -> None:
        count = min(next(active.uses) - 1, self.max_uses)
        if count > 0:
            try:
                self.store.add_encryptions(active.dek_id, count)
            except Exception:
                log.warning("could not record the encryption count of DEK %s", active.dek_id.hex())

    def stop_encrypting(self, domain: str, dek_id: bytes) -> None:
        """Stop encrypting under ``dek_id`` in this process at once (it was retired)."""
        with self._lock:
            active = self.active.get(domain)
            if active is not None and active.dek_id == dek_id:
                self._flush_count(active)
                del self.active[domain]

    def forget(self, dek_id: bytes) -> None:
        """Drop a DEK from the cache (it was destroyed)."""
        with self._lock:
            self.cache.drop(dek_id)

    # -- decryption --------------------------------------------------------------------------

    def resolve(self, blob: bytes, domain: str | None) -> _CachedKey:
        """The DEK ``blob`` names, for a value of ``domain`` (``None``: the value's own).

        Raises Denied before any key-store read or provider call when the reader lacks the grant
        of the column's domain (or, without one, of the DEK's known domain), and DecryptionError
        for a DEK of another domain than the column's (it can never be right, whoever reads) or
        a header whose key commitment is not its DEK's.
        """
        _suite, dek_id, commitment = wire.parse_header(blob)
        known = self._dek_domains.get(dek_id)
        if known is not None:
            if domain is not None and known != domain:
                raise DecryptionError
            if self.policy.is_denied(known):
                raise Denied(known)
        elif domain is not None and self.policy.is_denied(domain):
            raise Denied(domain)
        key = self.cache.by_id.get(dek_id)
        if key is None or key.expires_at < _monotonic():
            # In SQLAlchemy's asyncio greenlet: in a worker thread, awaited (_offload).
            key = _call(self._load_key, dek_id, domain)
        if not hmac.compare_digest(key.commitment, commitment):
            raise DecryptionError
        return key

    def _load_key(self, dek_id: bytes, domain: str | None) -> _CachedKey:
        """Read and unwrap a DEK that is not cached (key-store read, provider call), or check
        the state of one whose check is due (key-store read only)."""
        with self._lock:
            key = self.cache.by_id.get(dek_id)
            now = _monotonic()
            if key is not None and key.expires_at < now <= key.unwrap_at:
                if self.policy.is_denied(key.domain):
                    raise Denied(key.domain)  # no key-store read for a reader without the grant
                self._revalidate(now)
                key = self.cache.by_id.get(dek_id)
            if key is None or key.expires_at < now:
                record = self._readable_record(dek_id)
                if record is None:
                    self.cache.drop(dek_id)
                    log.debug("no usable DEK %s for a value", dek_id.hex())
                    raise DecryptionError
                if len(self._dek_domains) >= _DEK_DOMAINS_MAX:
                    self._dek_domains.clear()
                self._dek_domains[dek_id] = record.domain
                if domain is not None and record.domain != domain:
                    raise DecryptionError
                if self.policy.is_denied(record.domain):
                    raise Denied(record.domain)
                key = self._cache_key(record, self._unwrap(record))
        return key

    def _revalidate(self, now: float) -> None:
        """Check every cached DEK whose check is due in one key-store read; call with the lock.

        Those still readable serve for another ``check`` seconds (never past their ``unwrap_at``)
        without a provider call; the others (destroyed, or gone from the store) leave the cache.
        """
        due = [k for k in self.cache.by_id.values() if k.expires_at < now <= k.unwrap_at]
        if not due:
            return
        states = self._states([k.dek_id for k in due])
        until = now + self.check
        for key in due:
            state = states.get(key.dek_id)
            if state is None or state is DekState.DESTROYED:
                self.cache.drop(key.dek_id)
                log.info("DEK %s is no longer readable; dropped from the cache", key.dek_id.hex())
            else:
                key.expires_at = min(until, key.unwrap_at)

    def _states(self, dek_ids: list[bytes]) -> dict[bytes, DekState]:
        """The key-store states of ``dek_ids`` (left out: rows the store does not have)."""
        store = self.store
        if isinstance(store, SupportsStates):
            return store.states(dek_ids)
        found: dict[bytes, DekState] = {}
        for dek_id in dek_ids:
            record = store.get(dek_id)
            if record is not None:
                found[dek_id] = record.state
        return found

    def _readable_record(self, dek_id: bytes) -> DataKeyRecord | None:
        """The readable data-key row of ``dek_id``, or ``None``; call with the lock held.

        Ids the store did not have are answered from memory for a while, and lookups that find
        nothing share a budget per window (see :class:`_Unknown`).
        """
        unknown = self.cache.unknown
        now = _monotonic()
        if unknown.refuses(dek_id, now) and not any(
            # A DEK this vault took since the list was read is not in it, and is surely real.
            active.dek_id == dek_id
            for active in self.active.values()
        ):
            return None
        record = self.store.get(dek_id)
        if _readable(record):
            return record
        if unknown.add(dek_id, now):
            self._list_readable(unknown)
        return None

    def _list_readable(self, unknown: _Unknown) -> None:
        ids: set[bytes] = set()
        rows = 0
        for record in self.store.records():
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
        """Unwrap the given DEKs into the cache; return how many were unwrapped (see Vault)."""
        wanted: dict[int, list[DataKeyRecord]] = {}
        with self._lock:
            for dek_id in dict.fromkeys(dek_ids):
                cached = self.cache.by_id.get(dek_id)
                if cached is not None and cached.unwrap_at >= _monotonic():
                    continue  # unwrapped already; its due check comes with the next read
                record = self._readable_record(dek_id)
                if (
                    record is None
                    or record.domain not in self.providers
                    or self.policy.is_denied(record.domain)
                ):
                    continue
                provider = self.providers[record.domain]
                wanted.setdefault(id(provider), []).append(record)
            done = 0
            for records in wanted.values():
                provider = self.providers[records[0].domain]
                if not isinstance(provider, SupportsBatchUnwrap):
                    for record in records:
                        self._cache_key(record, self._unwrap(record))
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
                for record, dek in zip(records, provider.unwrap_many(items), strict=True):
                    self._cache_key(record, DataKey(dek, record.dek_id, record.domain))
                done += len(records)
        return done

    def _unwrap(self, record: DataKeyRecord) -> DataKey:
        provider = self.providers.get(record.domain)
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
        return DataKey(dek, record.dek_id, record.domain)

    def _unwrap_data_key(self, record: DataKeyRecord) -> DataKey:
        """Unwrap an active DEK again after its time limit, and refresh its cache entry."""
        key = self._unwrap(record)
        self._cache_key(record, key)
        return key

    def _cache_key(self, record: DataKeyRecord, key: DataKey) -> _CachedKey:
        domain = self.policy.domains[record.domain]
        cached = _CachedKey(
            key, self.ttl, self.check, restricted=domain.restricted, audited=domain.audited
        )
        self.cache.put(cached)
        return cached

    # -- named keys ---------------------------------------------------------------------------

    def named_key(self, domain: str, name: str, purpose: str, version: int) -> BlindIndexKey:
        """A named HMAC key of ``purpose`` in ``domain``, created on first use, then cached."""
        cached = self._index_keys.get((domain, name))
        if cached is not None:
            return cached
        with self._lock:
            cached = self._index_keys.get((domain, name))
            if cached is not None:
                return cached
            dek_id = index_key_id(domain, name)
            record = self.store.get(dek_id)
            if record is None:
                record = self._create_named_key(domain, name, dek_id, purpose)
            if record.purpose != purpose or record.domain != domain or record.name != name:
                raise KeyStoreError(f"key-store row {dek_id.hex()} is not the {purpose} key {name}")
            if record.state is DekState.DESTROYED:
                raise KeyStoreError(f"the {purpose} key {name} in domain {domain} was destroyed")
            provider = self.providers[domain]
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

    def _create_named_key(
        self, domain: str, name: str, dek_id: bytes, purpose: str
    ) -> DataKeyRecord:
        ref = self.providers[domain].primary(domain)
        _, record = self.new_wrapped_key(domain, ref, dek_id, purpose, name=name)
        try:
            self.store.insert(record)
        except KeyStoreError:
            # Another process created it first: use theirs.
            existing = self.store.get(dek_id)
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

    # -- life --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> bool:
        """Record encryption counts and forget every key; return False if already closed."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            for active in self.active.values():
                self._flush_count(active)
            self.active.clear()
            self.cache.clear()
            return True

    def reset_after_fork(self) -> None:
        # A child must never encrypt under its parent's DEK: it takes fresh ones, with a fresh
        # lock (another thread of the parent may have held it at the fork). In place: the
        # cipher holds a reference to ``active``.
        self._lock = threading.RLock()
        self.active.clear()
