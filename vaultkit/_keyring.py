"""The keyring: which DEK encrypts, which DEK a value names, and the named HMAC keys.

One job: hand the cipher a ready key. It keeps, per domain, the provider and the DEK this process
encrypts under with its budget (:class:`_Active`); the cache of unwrapped DEKs by id and by
header, with its negative cache and miss budget for ids the key store does not have
(:class:`_KeyCache`, :class:`_Unknown`); the named HMAC keys (blind-index and audit keys); and it
makes new DEKs. :meth:`Keyring.resolve` turns a value's header into its key, with the grant check
*before* any key-store read or provider call (the :class:`~vaultkit._access.Policy` is injected)
and the key-commitment check after.

Domains with ``dek_scope="subject"`` or ``"bucket"`` (0.3.0) have *scoped* DEKs: one per member
(``subject_actives``, a bounded LRU by subject reference) or one per time bucket (in ``active``,
with the bucket end as a deadline). They are wrapped in process under the domain's wrapping key
(a key-store row of purpose ``wrapping``, itself wrapped by the KEK: one provider unwrap per
domain and epoch), with the scope, subject reference, bucket end and subject deadline bound into
the wrap (:mod:`vaultkit._scoped`). Reads fail closed: a scoped DEK past its deadline (the code's
retention from the bound bucket end, or its ``destroy_at``) is never unwrapped, swept or not, and
a cached one stops at its deadline; a destroyed one raises its ``ValueErasedError``. Both are
remembered (``_KeyCache.erased``) so that repeated reads cost no key-store query.

It has one lock of its own (``_lock``), taken around key-store reads, provider calls and changes
to its maps, and never while any other collaborator's lock is held; after a fork the child gets
a fresh lock and no active DEK (:meth:`Keyring.reset_after_fork`).
"""

from __future__ import annotations

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
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Final, NoReturn, TypeGuard

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit import _scoped
from vaultkit._access import Denied, Policy
from vaultkit._offload import call as _call
from vaultkit._redact import NoPickle
from vaultkit.core import wire
from vaultkit.core.envelope import (
    DataKey,
    key_row_context,
    new_data_key,
    new_dek_id,
    wrap_context,
)
from vaultkit.errors import (
    ConfigurationError,
    DecryptionError,
    DomainError,
    KeyAuthenticationError,
    KeyProviderError,
    KeyStoreError,
    RetentionExpiredError,
    SubjectErasedError,
)
from vaultkit.keys.domains import KeyDomain
from vaultkit.keys.provider import (
    KeyProvider,
    KeyRef,
    SupportsBatchUnwrap,
    SupportsDataKeyGeneration,
)
from vaultkit.store import (
    WRAPPING_KEK_ID,
    DataKeyRecord,
    DekState,
    KeyStore,
    SubjectRecord,
    SupportsGetMany,
    SupportsScopedKeys,
    SupportsStates,
)

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
#: Dataset keys of research exports (vaultkit.research): one per project and recipient.
DATASET_PURPOSE: Final = "dataset"
_DEK_DOMAINS_MAX: Final = 100_000

#: Seconds a DEK id the key store did not know (or holds destroyed) is answered from memory. A DEK
#: created meanwhile by another process (seen late through a lagging replica) is readable after it.
NEGATIVE_TTL: Final = 5.0
NEGATIVE_CACHE_SIZE: Final = 4096  # unknown DEK ids remembered, 16 bytes each
#: Key-store lookups that may find nothing per NEGATIVE_TTL window before the vault stops asking
#: for ids it does not know and reads the list of readable DEK ids instead (see _Unknown).
UNKNOWN_LOOKUP_BUDGET: Final = 64
SNAPSHOT_MAX: Final = 100_000  # readable DEK ids a vault keeps in memory at most (16 bytes each)
ERASED_CACHE_SIZE: Final = 16_384  # destroyed or expired DEK ids remembered (~100 bytes each)
#: Subjects whose encryption DEK a vault keeps ready per process (least recently used go first).
DEFAULT_SUBJECT_CACHE_SIZE: Final = 10_000

_DEADLINE_MARGIN: Final = 0.001  # seconds
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
        "created_at",
        "deadline",
        "dek_id",
        "domain",
        "expires_at",
        "fixed_deadline",
        "header",
        "referenced",
        "restricted",
        "subject_ref",
        "unwrap_at",
    )

    def __init__(
        self,
        key: DataKey,
        ttl: float,
        check: float,
        *,
        restricted: bool,
        audited: bool,
        deadline: float | None = None,
    ) -> None:
        self.cipher = key.cipher
        self.commitment = key.commitment
        self.dek_id = key.dek_id
        self.domain = key.domain
        self.header = key.header
        self.aad_prefix = key.aad_prefix
        now = _monotonic()
        #: Seconds of the monotonic clock at which a scoped key's retention deadline falls: the
        #: key is read (and refused) again from then on, whatever its ttl.
        self.unwrap_at = now + ttl if deadline is None else min(now + ttl, deadline)
        self.expires_at = min(now + check, self.unwrap_at)
        self.referenced = True
        self.restricted = restricted
        self.audited = audited
        #: Wall-clock deadlines of a scoped key (the fixed one from its bucket end and the
        #: code's retention; the earliest known), checked again at each key-store check.
        self.fixed_deadline: dt.datetime | None = None
        self.deadline: dt.datetime | None = None
        self.subject_ref: str | None = None
        #: A subject key's creation (bound into its wrap), against its subject's erasure.
        self.created_at: dt.datetime | None = None

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
        "bucket_end",
        "check",
        "check_at",
        "cipher",
        "deadline",
        "dek_id",
        "expires_at",
        "gated",
        "header",
        "key",
        "record",
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
        #: A bucket key's bucket end (wall clock); a scoped key's own row.
        self.bucket_end: dt.datetime | None = None
        self.record: DataKeyRecord | None = None
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
        #: DEK ids the key store holds as destroyed or past their deadline -> (domain, reason):
        #: final, so remembered without a time limit (bounded), and answered without a lookup.
        self.erased: OrderedDict[bytes, tuple[str, str]] = OrderedDict()

    def erase(self, dek_id: bytes, domain: str, reason: str) -> None:
        """Remember that ``dek_id`` of ``domain`` is unreadable for good, and drop it."""
        self.drop(dek_id)
        self.erased.pop(dek_id, None)
        while len(self.erased) >= ERASED_CACHE_SIZE:
            self.erased.popitem(last=False)
        self.erased[dek_id] = (domain, reason)

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
        self.erased.clear()


class BlindIndexKey(NoPickle):
    """A keyed HMAC-SHA256 for one blind index: domain, table, column and version.

    Holds key material: refuses pickling and copying; ``repr`` names only what it is for. The HMAC
    inner and outer states are computed once, so each digest costs one ``copy`` and one update.
    ``attrs`` are the attributes its key-store row carries (``max_days=30`` for a research
    dataset key), authenticated by the key's wrapping; ``None`` if the row has none.
    """

    __slots__ = ("_base", "attrs", "domain", "name", "version")

    def __init__(
        self, key: bytes, *, domain: str, name: str, version: int, attrs: str | None = None
    ) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self.domain = domain
        self.name = name
        self.version = version
        self.attrs = attrs

    def digest(self, data: bytes) -> bytes:
        """Return HMAC-SHA256(key, data), 32 bytes."""
        mac = self._base.copy()
        mac.update(data)
        return mac.digest()

    def __repr__(self) -> str:
        return f"BlindIndexKey(domain={self.domain!r}, name={self.name!r}, version={self.version})"


def _epoch_of(record: DataKeyRecord) -> int:
    """The epoch of a wrapping-key row (its name ``wrapping@<epoch>``), 0 if it has none."""
    _, _, tail = (record.name or "").partition("@")
    return int(tail) if tail.isdigit() else 0


def _erased_before(subject: SubjectRecord | None, record: DataKeyRecord) -> bool:
    """Whether ``record`` (a subject key) was created at or before its subject's erasure."""
    return (
        subject is not None
        and subject.erased_at is not None
        and record.created_at <= subject.erased_at
    )


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
        #: Bucket-scoped domain -> the DEK of the bucket this process encrypts into. Kept out of
        #: ``active`` so that the process-scoped hot path never serves it: each bucket value
        #: goes through :meth:`bucket_active`, which compares the wall clock with the bucket end.
        self.bucket_actives: dict[str, _Active] = {}
        self._index_keys: dict[tuple[str, str], BlindIndexKey] = {}
        self._dek_domains: dict[bytes, str] = {}  # DEK id -> domain; no key material
        #: (domain, subject ref) -> the DEK this process encrypts that subject's values under.
        self.subject_actives: OrderedDict[tuple[str, str], _Active] = OrderedDict()
        self.subject_cache_size = DEFAULT_SUBJECT_CACHE_SIZE
        #: (domain, subject) -> its reference, so that known members cost no HMAC per write;
        #: bounded by ``subject_cache_size``, never logged (the keyring has no repr of it).
        self._refs: dict[tuple[str, object], str] = {}
        #: (domain, epoch) -> (the unwrapped wrapping key, monotonic time to unwrap it again).
        self._wrapping: dict[tuple[str, int], tuple[AESGCM, float]] = {}
        #: domain -> (current wrapping epoch, monotonic time to read it again).
        self._epochs: dict[str, tuple[int, float]] = {}
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
        kind = type(subject)
        if kind is str or kind is int or kind is uuid.UUID:  # exact types: no bool, no subclass
            ref = self._refs.get((domain, subject))
            if ref is not None:
                return ref
        data = _scoped.canonical_subject(subject)
        key = self._index_keys.get((domain, SUBJECT_REF_NAME))
        if key is None:  # first use: key-store read and provider call, in a worker thread
            key = _call(self.named_key, domain, SUBJECT_REF_NAME, SUBJECT_REF_PURPOSE, 1)
        ref = key.digest(data)[:16].hex()
        if kind is str or kind is int or kind is uuid.UUID:
            refs = self._refs
            if len(refs) >= self.subject_cache_size:
                refs.clear()  # bounded: at most as many entries as the subject-key cache
            refs[(domain, subject)] = ref
        return ref

    def scoped_store(self) -> SupportsScopedKeys:
        store = self.store
        if not isinstance(store, SupportsScopedKeys):
            raise ConfigurationError(
                f"the key store {type(store).__name__} has no scoped keys (SupportsScopedKeys)"
            )
        return store

    def _mono_at(self, when: dt.datetime, now: dt.datetime) -> float:
        """The monotonic time at which the wall clock reads ``when`` (from ``now``), a
        millisecond early: the hot paths serve a key while its time is not *past*, and a key is
        refused *at* its deadline."""
        return _monotonic() + (when - now).total_seconds() - _DEADLINE_MARGIN

    def subject_active(self, domain: str, subject: object) -> _Active:
        """The DEK to encrypt under for ``subject`` in a subject-scoped domain (counts the use)."""
        kind = type(subject)
        if kind is str or kind is int or kind is uuid.UUID:
            # Known member: reference and key from memory, no HMAC (a cached active key exists
            # only for a subject-scoped domain; anything else takes the checks below).
            known = self._refs.get((domain, subject))
            if known is not None:
                active = self.subject_actives.get((domain, known))
                if active is not None:
                    if next(active.uses) <= self.max_uses and active.deadline >= _monotonic():
                        return active
                    return _call(self._next_subject_active, domain, known)
        if self.scopes.get(domain) != "subject":
            if domain not in self.providers:
                raise DomainError(f"domain {domain!r} is not declared in this vault")
            raise ConfigurationError(
                f"domain {domain!r} has no subject keys (dek_scope={self.scope_of(domain)!r}): "
                "pass no subject"
            )
        ref = self.subject_ref(domain, subject)
        active = self.subject_actives.get((domain, ref))
        if (
            active is not None
            and next(active.uses) <= self.max_uses
            and (active.deadline >= _monotonic())
        ):
            return active
        return _call(self._next_subject_active, domain, ref)

    def _next_subject_active(self, domain: str, ref: str) -> _Active:
        with self._lock:
            if self._closed:
                raise ConfigurationError("this vault is closed")
            slot = (domain, ref)
            now = _monotonic()
            active = self.subject_actives.get(slot)
            if active is not None and now < active.retire_at and now < active.expires_at:
                if now >= active.check_at:
                    self._check_subject_actives(now)
                used = next(active.uses)
                if used <= self.max_uses and active.deadline > now:
                    self.subject_actives.move_to_end(slot)
                    return active
            if active is not None:
                self._flush_count(active)
                del self.subject_actives[slot]
            active = self._subject_key(domain, ref)
            next(active.uses)
            while len(self.subject_actives) >= self.subject_cache_size:
                _, evicted = self.subject_actives.popitem(last=False)
                self._flush_count(evicted)
            self.subject_actives[slot] = active
            return active

    def _check_subject_actives(self, now: float) -> None:
        """Check every subject DEK this process encrypts under whose check is due, in one
        key-store read; those destroyed, retired or past their deadline are checked no more
        (their next write looks the subject up again). Call with the lock held."""
        due = [a for a in self.subject_actives.values() if now >= a.check_at]
        found = self._deadlines([a.dek_id for a in due])
        wall = self.now()
        for active in due:
            state, destroy_at = found.get(active.dek_id, (None, None))
            if state is DekState.ACTIVE and (destroy_at is None or destroy_at > wall):
                active.checked()
                if destroy_at is not None:
                    active.deadline = min(active.deadline, self._mono_at(destroy_at, wall))

    def _subject_key(self, domain: str, ref: str) -> _Active:
        """The subject's newest usable key in the store, or a new one; call with the lock."""
        store = self.scoped_store()
        policy = self.policy.domains[domain]
        now = self.now()
        subject = store.get_subject(domain, ref)
        if subject is not None and subject.fenced_at is not None:
            raise SubjectErasedError(
                domain=domain,
                message="writes for this subject are refused: it was erased "
                "(Vault.allow_subject lifts the fence)",
            )
        destroy_at = None
        retention = policy.retention
        if (
            retention is not None
            and retention.after == "relationship_end"
            and subject is not None
            and subject.relationship_end is not None
        ):
            destroy_at = _scoped.subject_deadline(retention, subject.relationship_end)
            if destroy_at <= now:
                raise RetentionExpiredError(
                    domain=domain,
                    message="writes for this subject are refused: its retention period is over",
                )
        for record in reversed(store.subject_keys(domain, ref)):
            if (
                record.state is not DekState.ACTIVE
                or record.kek_id != WRAPPING_KEK_ID
                or record.scope != "subject"
                or record.encryptions >= self.max_uses
            ):
                continue
            record_deadline = _scoped.deadline(policy, record)
            if record_deadline is not None and record_deadline <= now:
                continue
            if _erased_before(subject, record) or (
                destroy_at is not None and record_deadline is None
            ):
                continue  # erased, or a replayed row without the relationship's deadline
            key = self._unwrap_scoped(record, quiet=True)
            if key is not None:
                return self._scoped_active(key, record, now)
        erased_at = subject.erased_at if subject is not None else None
        return self._new_subject_key(domain, ref, destroy_at, now, erased_at=erased_at)

    def _new_subject_key(
        self,
        domain: str,
        ref: str,
        destroy_at: dt.datetime | None,
        now: dt.datetime,
        *,
        erased_at: dt.datetime | None = None,
    ) -> _Active:
        store = self.scoped_store()
        dek_id = new_dek_id()
        dek = new_data_key()
        epoch, wrapping = self._current_wrapping(domain)
        # Bound into the wrap, in whole seconds; after the subject's last erasure (a key created
        # at or before it is refused), if need be the second after it.
        created = _scoped.whole_seconds(now, up=False)
        if erased_at is not None and created <= erased_at:
            created = _scoped.whole_seconds(erased_at, up=False) + dt.timedelta(seconds=1)
        record = DataKeyRecord(
            dek_id=dek_id,
            domain=domain,
            purpose=PURPOSE,
            kek_id=WRAPPING_KEK_ID,
            kek_version=epoch,
            wrapped=_scoped.wrap(
                wrapping,
                dek,
                _scoped.scoped_context(
                    domain,
                    dek_id,
                    scope="subject",
                    subject_ref=ref,
                    not_after=None,
                    destroy_at=destroy_at,
                    created_at=created,
                ),
            ),
            state=DekState.ACTIVE,
            created_at=created,
            subject=ref,
            scope="subject",
            destroy_at=destroy_at,
        )
        self.store.insert(record)
        record = self._settle_epoch(record, dek)
        # An erasure may have fenced the subject between our check and our insert: its key
        # sweep may have missed this key, so destroy it ourselves and refuse the write.
        subject = store.get_subject(domain, ref)
        retention = self.policy.domains[domain].retention
        if (
            subject is not None
            and subject.fenced_at is None
            and subject.relationship_end is not None
            and retention is not None
            and retention.after == "relationship_end"
        ):
            # The relationship's end was recorded meanwhile: take its deadline too.
            deadline = _scoped.subject_deadline(retention, subject.relationship_end)
            if deadline != destroy_at and self._rebind(record, dek, deadline):
                record = self.store.get(dek_id) or record
        if subject is not None and subject.fenced_at is not None:
            store.destroy_key(dek_id, reason="erasure", at=self.now())
            raise SubjectErasedError(
                domain=domain,
                message="writes for this subject are refused: it was erased "
                "(Vault.allow_subject lifts the fence)",
            )
        log.info("new subject DEK %s in domain %s (wrapping epoch %d)", dek_id.hex(), domain, epoch)
        return self._scoped_active(DataKey(dek, dek_id, domain), record, now)

    def _scoped_active(self, key: DataKey, record: DataKeyRecord, now: dt.datetime) -> _Active:
        policy = self.policy.domains[record.domain]
        retire_at = _monotonic() + self.max_age
        deadline = _scoped.deadline(policy, record)
        if deadline is not None:
            retire_at = min(retire_at, self._mono_at(deadline, now))
        if record.not_after is not None:
            retire_at = min(retire_at, self._mono_at(record.not_after, now))
        active = _Active(
            key,
            retire_at,
            self.ttl,
            self.check,
            gated=policy.encrypt_requires_grant,
            audited=policy.audited,
        )
        active.record = record
        active.bucket_end = record.not_after
        return active

    def _next_bucket_active(self, domain: str) -> _Active:
        """The DEK of the bucket holding the wall clock's now; call with the lock."""
        policy = self.policy.domains[domain]
        width = policy.bucket
        retention = policy.retention
        if width is None or retention is None:  # KeyDomain refuses this; fail closed anyway
            raise ConfigurationError(f"domain {domain!r} has no bucket width or retention")
        now = self.now()
        _start, end = _scoped.bucket_bounds(now, width)
        mono = _monotonic()
        active = self.bucket_actives.get(domain)
        if active is not None and active.bucket_end == end and mono < active.retire_at:
            if mono >= active.expires_at:
                # The cache time limit ran out: re-read the row and unwrap it again (locally).
                record = self.store.get(active.dek_id)
                if record is not None and record.state is DekState.ACTIVE:
                    key = self._unwrap_scoped(record, quiet=True)
                    if key is not None:
                        active.set_key(key, self.ttl)
            elif mono >= active.check_at:
                if self._states([active.dek_id]).get(active.dek_id) is DekState.ACTIVE:
                    active.checked()
            # Re-derived from the wall clock at each look: never past the bucket end.
            active.retire_at = min(active.retire_at, self._mono_at(end, now))
            active.deadline = min(active.deadline, active.retire_at)
            used = next(active.uses)
            if used <= self.max_uses and active.deadline > mono:
                return active
        if active is not None:
            self._flush_count(active)
        self.scoped_store()  # a clear error for a store without scoped keys
        dek_id = new_dek_id()
        dek = new_data_key()
        epoch, wrapping = self._current_wrapping(domain)
        record = DataKeyRecord(
            dek_id=dek_id,
            domain=domain,
            purpose=PURPOSE,
            kek_id=WRAPPING_KEK_ID,
            kek_version=epoch,
            wrapped=_scoped.wrap(
                wrapping,
                dek,
                _scoped.scoped_context(
                    domain, dek_id, scope="bucket", subject_ref=None, not_after=end
                ),
            ),
            state=DekState.ACTIVE,
            created_at=now,
            scope="bucket",
            not_after=end,
            destroy_at=retention.deadline(end),
        )
        self.store.insert(record)
        record = self._settle_epoch(record, dek)
        log.info("new bucket DEK %s in domain %s until %s", dek_id.hex(), domain, end.isoformat())
        active = self._scoped_active(DataKey(dek, dek_id, domain), record, now)
        next(active.uses)
        self.bucket_actives[domain] = active
        return active

    def set_subject_deadline(self, domain: str, subject_ref: str, destroy_at: dt.datetime) -> int:
        """Give the subject's live keys in ``domain`` the deadline ``destroy_at`` (whole seconds),
        bound into their wrapping: each is unwrapped and wrapped again here (no provider call),
        and replaced with a compare-and-set. Returns how many keys have it now.

        A database writer who clears or moves the column afterwards makes the key unreadable
        rather than longer-lived. A row that does not unwrap (tampered) is left as it is: it is
        unreadable anyway.
        """
        store = self.scoped_store()
        with self._lock:
            for _attempt in range(5):
                pending = [
                    r
                    for r in store.subject_keys(domain, subject_ref)
                    if r.state is not DekState.DESTROYED
                    and r.destroy_at != destroy_at
                    and r.kek_id == WRAPPING_KEK_ID
                    and r.scope == "subject"
                ]
                changed = 0
                for record in pending:
                    dek = self._unwrap_scoped_bytes(record)
                    if dek is not None and self._rebind(record, dek, destroy_at):
                        changed += 1
                if changed == 0:
                    break
            done = sum(
                1
                for r in store.subject_keys(domain, subject_ref)
                if r.state is not DekState.DESTROYED and r.destroy_at == destroy_at
            )
        self.forget_subject(domain, subject_ref)
        return done

    def _rebind(self, record: DataKeyRecord, dek: bytes, destroy_at: dt.datetime | None) -> bool:
        """Wrap ``record``'s DEK again with ``destroy_at`` bound; compare-and-set in the store."""
        wrapped = _scoped.wrap(
            self._wrapping_key(record.domain, record.kek_version),
            dek,
            _scoped.record_context(replace(record, destroy_at=destroy_at)),
        )
        return self.scoped_store().rebind(record, wrapped=wrapped, destroy_at=destroy_at)

    def forget_subject(self, domain: str, subject_ref: str) -> None:
        """Drop the subject's DEKs from this process (active and cached): it was erased, or its
        deadline changed."""
        with self._lock:
            active = self.subject_actives.pop((domain, subject_ref), None)
            if active is not None:
                self._flush_count(active)
            for slot, ref in list(self._refs.items()):  # a copy: writers add without the lock
                if ref == subject_ref and slot[0] == domain:
                    self._refs.pop(slot, None)  # an erased member's id is not kept here
            for key in list(self.cache.by_id.values()):
                if key.domain == domain and key.subject_ref == subject_ref:
                    self.cache.drop(key.dek_id)

    def forget_erased(self, dek_id: bytes, reason: str) -> None:
        """Remember that ``dek_id`` was destroyed (for ``reason``) and drop it from this process."""
        with self._lock:
            domain = self._dek_domains.get(dek_id)
            key = self.cache.by_id.get(dek_id)
            if key is not None:
                domain = key.domain
            for slot, active in list(self.subject_actives.items()):
                if active.dek_id == dek_id:
                    del self.subject_actives[slot]
            for actives in (self.active, self.bucket_actives):
                for name, active in list(actives.items()):
                    if active.dek_id == dek_id:
                        del actives[name]
            if domain is not None:
                self.cache.erase(dek_id, domain, reason)
            else:
                self.cache.drop(dek_id)

    # -- wrapping keys -----------------------------------------------------------------------

    def _current_wrapping(self, domain: str) -> tuple[int, AESGCM]:
        """The epoch and key new scoped DEKs of ``domain`` are wrapped under; call with the lock.

        The newest wrapping key not destroyed, made (epoch 1) on first use; re-read every
        ``cache_ttl`` seconds so that a new epoch made elsewhere is taken up.
        """
        cached = self._epochs.get(domain)
        mono = _monotonic()
        if cached is None or cached[1] <= mono:
            store = self.scoped_store()
            epochs = [
                _epoch_of(r)
                for r in store.wrapping_keys(domain)
                if r.state is not DekState.DESTROYED and _epoch_of(r) > 0
            ]
            epoch = max(epochs, default=0)
            if epoch == 0:
                epoch = 1
                self._create_named_key(
                    domain,
                    _scoped.wrapping_name(epoch),
                    index_key_id(domain, _scoped.wrapping_name(epoch)),
                    WRAPPING_PURPOSE,
                )
            self._epochs[domain] = (epoch, mono + self.ttl)
        else:
            epoch = cached[0]
        return epoch, self._wrapping_key(domain, epoch)

    def _settle_epoch(self, record: DataKeyRecord, dek: bytes) -> DataKeyRecord:
        """The row of a scoped DEK just inserted, moved to the current epoch if a shred epoch
        destroyed the wrapping key it was wrapped under meanwhile; call with the lock.

        This process may have known the old epoch for up to ``cache_ttl``: one key-store read
        after the insert finds its wrapping row destroyed, and the DEK is wrapped again under
        the current epoch (compare-and-set). The shred epoch sweeps once more after it destroys
        the row, so whichever runs last moves the DEK: a value is never left under a destroyed
        wrapping key.

        Raises:
            KeyStoreError: the row vanished, or kept moving (five attempts).
        """
        domain = record.domain
        for _attempt in range(5):
            wrapping = self.store.get(
                index_key_id(domain, _scoped.wrapping_name(record.kek_version))
            )
            if wrapping is None or wrapping.state is not DekState.DESTROYED:
                return record
            log.info(
                "wrapping epoch %d of domain %s was destroyed meanwhile: moving DEK %s to the "
                "current epoch",
                record.kek_version,
                domain,
                record.dek_id.hex(),
            )
            self.forget_wrapping(domain)
            epoch, key = self._current_wrapping(domain)
            wrapped = _scoped.wrap(key, dek, _scoped.record_context(record))
            if self.store.rewrap(
                record, kek_id=WRAPPING_KEK_ID, kek_version=epoch, wrapped=wrapped
            ):
                record = replace(record, kek_version=epoch, wrapped=wrapped)
                continue
            current = self.store.get(record.dek_id)  # the shred epoch's sweep moved it first
            if current is None:
                break
            record = current
        raise KeyStoreError(
            f"DEK {record.dek_id.hex()} of domain {domain} could not be moved off a destroyed "
            "wrapping epoch"
        )

    def _wrapping_key(self, domain: str, epoch: int) -> AESGCM:
        """The wrapping key of ``domain`` at ``epoch``: one provider unwrap per ``cache_ttl``.

        Raises:
            ValueErasedError: that epoch's wrapping key was destroyed (a shred epoch).
            DecryptionError: its row is missing or not the wrapping key it claims to be.
        """
        cached = self._wrapping.get((domain, epoch))
        mono = _monotonic()
        if cached is not None and cached[1] > mono:
            return cached[0]
        name = _scoped.wrapping_name(epoch)
        dek_id = index_key_id(domain, name)
        record = self.store.get(dek_id)
        if (
            record is None
            or record.purpose != WRAPPING_PURPOSE
            or record.domain != domain
            or record.name != name
        ):
            # A DEK row naming an epoch that has no wrapping key (a changed kek_version or
            # domain): its values fail like forged ones.
            log.warning("no wrapping key %s in domain %s for a key row", name, domain)
            raise DecryptionError
        if record.state is DekState.DESTROYED:
            self._wrapping.pop((domain, epoch), None)
            raise _scoped.erased_error(record.destroy_reason, domain=domain)
        provider = self.providers[domain]
        try:
            key = provider.unwrap(
                KeyRef(domain, record.kek_id, record.kek_version),
                record.wrapped,
                context=wrap_context(domain, dek_id, WRAPPING_PURPOSE),
            )
        except KeyAuthenticationError:
            raise KeyStoreError(
                f"the wrapping key {name} in domain {domain} (key row {dek_id.hex()}) was not "
                "made by the holder of the domain's key; refused"
            ) from None
        cipher = AESGCM(key)
        self._wrapping[(domain, epoch)] = (cipher, mono + self.ttl)
        return cipher

    def forget_wrapping(self, domain: str, epoch: int | None = None) -> None:
        """Drop a domain's cached wrapping keys (one epoch, or all) and its current epoch."""
        with self._lock:
            for slot in list(self._wrapping):
                if slot[0] == domain and (epoch is None or slot[1] == epoch):
                    del self._wrapping[slot]
            self._epochs.pop(domain, None)

    def _unwrap_scoped(self, record: DataKeyRecord, *, quiet: bool = False) -> DataKey | None:
        """Unwrap a scoped DEK under its wrapping key (no provider call once that is cached).

        A row whose wrapping does not authenticate (moved to another subject, scope or bucket
        end, or damaged) raises DecryptionError, or returns ``None`` when ``quiet``.
        """
        dek = self._unwrap_scoped_bytes(record)
        if dek is None:
            log.warning(
                "refused DEK %s of domain %s: its wrapping does not authenticate (a changed "
                "subject, scope or bucket end, or a damaged row)",
                record.dek_id.hex(),
                record.domain,
            )
            if quiet:
                return None
            raise DecryptionError
        return DataKey(dek, record.dek_id, record.domain)

    def _unwrap_scoped_bytes(self, record: DataKeyRecord) -> bytes | None:
        """The raw DEK of a scoped row, or ``None`` when its wrapping does not authenticate."""
        wrapping = self._wrapping_key(record.domain, record.kek_version)
        return _scoped.unwrap(wrapping, record.wrapped, _scoped.record_context(record))

    def _deadlines(self, dek_ids: list[bytes]) -> dict[bytes, tuple[DekState, dt.datetime | None]]:
        store = self.store
        if self.scopes and isinstance(store, SupportsScopedKeys):
            return store.key_deadlines(dek_ids)
        return {dek_id: (state, None) for dek_id, state in self._states(dek_ids).items()}

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

    def bucket_active(self, domain: str) -> _Active | None:
        """The bucket DEK to encrypt under in ``domain`` now, without the lock, or ``None``
        (not a bucket domain, or its bucket key must be found: call :meth:`next_active`).

        Counts the use it hands out. The wall clock is read on every call, so that a key
        never encrypts after its bucket end, also when only the wall clock moved (an injected
        clock, a clock step, a resume from suspend, which the monotonic clock does not see).
        """
        active = self.bucket_actives.get(domain)
        if (
            active is None
            or next(active.uses) > self.max_uses
            or active.deadline < _monotonic()
            or active.bucket_end is None
            or self.now() >= active.bucket_end
        ):
            return None
        return active

    def next_active(self, domain: str) -> _Active:
        """The DEK to encrypt under in ``domain`` after the hot path found its budget spent.

        Counts the use it hands out.
        """
        with self._lock:
            if self._closed:
                raise ConfigurationError("this vault is closed")
            if domain not in self.providers:
                raise DomainError(f"domain {domain!r} is not declared in this vault")
            scope = self.scopes.get(domain)
            if scope == "bucket":
                return self._next_bucket_active(domain)
            if scope == "subject":
                raise ConfigurationError(
                    f"domain {domain!r} has subject keys: each value needs its subject "
                    "(encrypt(..., subject=...))"
                )
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
        context = key_row_context(domain, dek_id, purpose, name)
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
            created_at=self.now(),
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
            for actives in (self.active, self.bucket_actives):
                active = actives.get(domain)
                if active is not None and active.dek_id == dek_id:
                    self._flush_count(active)
                    del actives[domain]

    def forget(self, dek_id: bytes) -> None:
        """Drop a DEK from the cache and stop encrypting under it (it was destroyed)."""
        with self._lock:
            self.cache.drop(dek_id)
            for name, active in list(self.bucket_actives.items()):
                if active.dek_id == dek_id:
                    self._flush_count(active)
                    del self.bucket_actives[name]

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
            erased = self.cache.erased.get(dek_id)
            if erased is not None:  # destroyed or expired: answered without a lookup
                self._refuse_erased(dek_id, erased, domain)
            # In SQLAlchemy's asyncio greenlet: in a worker thread, awaited (_offload).
            key = _call(self._load_key, dek_id, domain)
        if not hmac.compare_digest(key.commitment, commitment):
            raise DecryptionError
        return key

    def _refuse_erased(
        self, dek_id: bytes, erased: tuple[str, str], domain: str | None
    ) -> NoReturn:
        """Raise for a value under a DEK known to be destroyed or expired: DecryptionError for a
        value of another domain, Denied for a reader without the grant, else its erased error."""
        known, reason = erased
        if domain is not None and known != domain:
            raise DecryptionError
        if self.policy.is_denied(known):
            raise Denied(known)
        raise _scoped.erased_error(reason, domain=known, dek_id=dek_id)

    def _load_key(self, dek_id: bytes, domain: str | None) -> _CachedKey:
        """Read and unwrap a DEK that is not cached (key-store read, provider call), or check
        the state of one whose check is due (key-store read only)."""
        with self._lock:
            erased = self.cache.erased.get(dek_id)
            if erased is not None:
                self._refuse_erased(dek_id, erased, domain)
            key = self.cache.by_id.get(dek_id)
            now = _monotonic()
            if key is not None and key.expires_at < now <= key.unwrap_at:
                if self.policy.is_denied(key.domain):
                    raise Denied(key.domain)  # no key-store read for a reader without the grant
                self._revalidate(now)
                key = self.cache.by_id.get(dek_id)
                erased = self.cache.erased.get(dek_id)
                if erased is not None:
                    self._refuse_erased(dek_id, erased, domain)
            if key is None or key.expires_at < now:
                record = self._readable_record(dek_id, any_state=True)
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
                key = self._open_record(record)
        return key

    def _open_record(
        self, record: DataKeyRecord, subjects: Mapping[str, SubjectRecord] | None = None
    ) -> _CachedKey:
        """Unwrap a data-key row into the cache, unless it is destroyed or past its deadline
        (then it is never unwrapped: remembered as erased, and its error raised); call with
        the lock held, after the grant check. ``subjects``: the rows of the domain's subjects
        read already (by subject reference), for a batch."""
        dek_id = record.dek_id
        if record.domain not in self.providers:
            raise DomainError(f"domain {record.domain!r} is not configured in this vault")
        if record.state is DekState.DESTROYED:
            reason = record.destroy_reason
            reason = reason if reason in ("erasure", "retention") else "destroyed"
            self.cache.erase(dek_id, record.domain, reason)
            log.debug("DEK %s of domain %s is destroyed (%s)", dek_id.hex(), record.domain, reason)
            raise _scoped.erased_error(reason, domain=record.domain, dek_id=dek_id)
        if record.kek_id != WRAPPING_KEK_ID:
            return self._cache_key(record, self._unwrap(record))
        policy = self.policy.domains[record.domain]
        if policy.dek_scope == "bucket" and record.not_after is None:
            log.warning(
                "refused DEK %s of domain %s: a bucket key with no end", dek_id.hex(), record.domain
            )
            raise DecryptionError
        deadline = _scoped.deadline(policy, record)
        wall = self.now()
        if record.scope == "subject" and record.subject is not None:
            deadline = self._check_subject(record, record.subject, policy, deadline, wall, subjects)
        if deadline is not None and deadline <= wall:
            # Fail closed: past its deadline a key is never unwrapped, swept or not.
            self.cache.erase(dek_id, record.domain, "retention")
            raise RetentionExpiredError(domain=record.domain, dek_id=dek_id)
        key = self._unwrap_scoped(record)
        if key is None:  # not reached: not quiet, it raises
            raise DecryptionError
        return self._cache_key(record, key, deadline=deadline, wall=wall)

    def _check_subject(
        self,
        record: DataKeyRecord,
        ref: str,
        policy: KeyDomain,
        deadline: dt.datetime | None,
        wall: dt.datetime,
        subjects: Mapping[str, SubjectRecord] | None = None,
    ) -> dt.datetime | None:
        """A subject key's deadline by its subject's row, which a writer of the key row cannot
        change: refuse (and destroy, once its wrap authenticates) a key created at or before
        the subject's erasure; a recorded end gives the retention's deadline whatever the key
        row says. Call with the lock held."""
        store = self.scoped_store()
        if subjects is None:
            subject = store.get_subject(record.domain, ref)
        else:
            subject = subjects.get(ref)
        if subject is None:
            return deadline
        if _erased_before(subject, record):
            if record.wrapped and self._unwrap_scoped(record, quiet=True) is not None:
                store.destroy_key(record.dek_id, reason="erasure", at=wall)
                log.warning(
                    "DEK %s of domain %s outlived its subject's erasure; destroyed now",
                    record.dek_id.hex(),
                    record.domain,
                )
            self.cache.erase(record.dek_id, record.domain, "erasure")
            raise SubjectErasedError(domain=record.domain, dek_id=record.dek_id)
        retention = policy.retention
        if (
            retention is not None
            and retention.after == "relationship_end"
            and subject.relationship_end is not None
        ):
            end = _scoped.subject_deadline(retention, subject.relationship_end)
            deadline = end if deadline is None else min(deadline, end)
        return deadline

    def _revalidate(self, now: float) -> None:
        """Check every cached DEK whose check is due in one key-store read; call with the lock.

        Those still readable serve for another ``check`` seconds (never past their ``unwrap_at``
        or their deadline) without a provider call; the others (destroyed, gone from the store,
        or past their deadline by the wall clock) leave the cache.
        """
        due = [k for k in self.cache.by_id.values() if k.expires_at < now <= k.unwrap_at]
        if not due:
            return
        found = self._deadlines([k.dek_id for k in due])
        subjects = self._subjects_of(
            (k.domain, k.subject_ref) for k in due if k.subject_ref is not None
        )
        wall = self.now() if self.scopes else None
        until = now + self.check
        for key in due:
            state, destroy_at = found.get(key.dek_id, (None, None))
            if state is None or state is DekState.DESTROYED:
                self.cache.drop(key.dek_id)
                log.info("DEK %s is no longer readable; dropped from the cache", key.dek_id.hex())
                continue
            subject = subjects.get(key.domain, {}).get(key.subject_ref or "")
            if subject is not None:
                # The subject's row, which a writer of the key row cannot change (see
                # _check_subject): an erasure after the key's creation, a recorded end.
                erased = subject.erased_at
                if erased is not None and key.created_at is not None and key.created_at <= erased:
                    self.cache.erase(key.dek_id, key.domain, "erasure")
                    log.info("DEK %s outlived its subject's erasure", key.dek_id.hex())
                    continue
                retention = self.policy.domains[key.domain].retention
                if (
                    retention is not None
                    and retention.after == "relationship_end"
                    and subject.relationship_end is not None
                ):
                    end = _scoped.subject_deadline(retention, subject.relationship_end)
                    destroy_at = end if destroy_at is None else min(destroy_at, end)
            deadline = key.fixed_deadline
            if destroy_at is not None:
                deadline = destroy_at if deadline is None else min(deadline, destroy_at)
            if deadline is not None and wall is not None:
                if deadline <= wall:
                    self.cache.erase(key.dek_id, key.domain, "retention")
                    log.info("DEK %s is past its retention deadline", key.dek_id.hex())
                    continue
                key.deadline = deadline
                key.unwrap_at = min(key.unwrap_at, self._mono_at(deadline, wall))
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

    def _readable_record(self, dek_id: bytes, *, any_state: bool = False) -> DataKeyRecord | None:
        """The readable data-key row of ``dek_id``, or ``None``; call with the lock held.

        With ``any_state``, a destroyed data-key row is returned too (its values read as
        erased). Ids the store did not have are answered from memory for a while, and lookups
        that find nothing share a budget per window (see :class:`_Unknown`).
        """
        unknown = self.cache.unknown
        now = _monotonic()
        if unknown.refuses(dek_id, now) and not any(
            # A DEK this vault took since the list was read is not in it, and is surely real.
            active.dek_id == dek_id
            for active in itertools.chain(self.active.values(), self.subject_actives.values())
        ):
            return None
        record = self.store.get(dek_id)
        if _readable(record) or (any_state and record is not None and record.purpose == PURPOSE):
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
        scoped = 0
        with self._lock:
            todo = []
            for dek_id in dict.fromkeys(dek_ids):
                cached = self.cache.by_id.get(dek_id)
                if cached is not None and cached.unwrap_at >= _monotonic():
                    continue  # unwrapped already; its due check comes with the next read
                todo.append(dek_id)
            store = self.store
            fetched: dict[bytes, DataKeyRecord] | None = None
            if isinstance(store, SupportsGetMany) and len(todo) > 1:
                # Many rows in few queries (one per 500 ids); ids remembered as unknown are not
                # asked for, and those the store does not have are remembered.
                unknown, now = self.cache.unknown, _monotonic()
                todo = [i for i in todo if not unknown.refuses(i, now)]
                fetched = store.get_many(todo)
                for dek_id in todo:
                    if dek_id not in fetched:
                        unknown.add(dek_id, now)
            subjects = self._subjects_of(
                (r.domain, r.subject)
                for r in (fetched.values() if fetched is not None else ())
                if r.scope == "subject" and r.subject is not None
            )
            for dek_id in todo:
                # Destroyed rows too: they are remembered as erased (their values then read as
                # erased), never as unknown ids (which would read as forged ones).
                if fetched is not None:
                    record = fetched.get(dek_id)
                else:
                    record = self._readable_record(dek_id, any_state=True)
                if (
                    record is None
                    or record.purpose != PURPOSE
                    or record.domain not in self.providers
                    or self.policy.is_denied(record.domain)
                ):
                    continue
                if record.state is DekState.DESTROYED:
                    with contextlib.suppress(DecryptionError):  # its erased error, remembered
                        self._open_record(record)
                    continue
                if record.kek_id == WRAPPING_KEK_ID:
                    # Unwrapped in process under the domain's wrapping key: no provider call.
                    with contextlib.suppress(DecryptionError):  # erased, expired or damaged
                        self._open_record(record, subjects.get(record.domain))
                        scoped += 1
                    continue
                provider = self.providers[record.domain]
                wanted.setdefault(id(provider), []).append(record)
            done = scoped
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

    def _subjects_of(
        self, subjects: Iterable[tuple[str, str]]
    ) -> dict[str, dict[str, SubjectRecord]]:
        """Domain -> the rows of the given ``(domain, subject ref)`` subjects, read in few
        queries (none without a store that reads many at once)."""
        get_subjects = getattr(self.store, "get_subjects", None)
        if get_subjects is None:
            return {}
        refs: dict[str, list[str]] = {}
        for domain, ref in subjects:
            refs.setdefault(domain, []).append(ref)
        return {domain: get_subjects(domain, wanted) for domain, wanted in refs.items()}

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

    def _cache_key(
        self,
        record: DataKeyRecord,
        key: DataKey,
        *,
        deadline: dt.datetime | None = None,
        wall: dt.datetime | None = None,
    ) -> _CachedKey:
        domain = self.policy.domains[record.domain]
        cached = _CachedKey(
            key,
            self.ttl,
            self.check,
            restricted=domain.restricted,
            audited=domain.audited,
            deadline=None if deadline is None or wall is None else self._mono_at(deadline, wall),
        )
        if record.kek_id == WRAPPING_KEK_ID:
            cached.deadline = deadline
            cached.fixed_deadline = _scoped.fixed_deadline(domain, record)
            cached.subject_ref = record.subject if record.scope == "subject" else None
            cached.created_at = record.created_at
        self.cache.put(cached)
        return cached

    # -- named keys ---------------------------------------------------------------------------

    def named_key(
        self,
        domain: str,
        name: str,
        purpose: str,
        version: int,
        *,
        create: bool = True,
        attrs: str | None = None,
    ) -> BlindIndexKey:
        """A named HMAC key of ``purpose`` in ``domain``, created on first use, then cached.

        With ``create=False`` a key the key store does not hold is refused (KeyStoreError).
        ``attrs`` (``key=value``, no ``;``) are recorded in the row's name (``name;attrs``) when
        the key is made and bound into its wrapping; an existing key keeps the attributes it was
        made with (the returned key's ``attrs``: the caller compares)."""
        cached = self._index_keys.get((domain, name))
        if cached is not None:
            return cached
        with self._lock:
            cached = self._index_keys.get((domain, name))
            if cached is not None:
                return cached
            dek_id = index_key_id(domain, name)
            record = self.store.get(dek_id)
            if record is None and purpose == SUBJECT_REF_PURPOSE:
                self._refuse_new_subject_ref(domain)
            if record is None and not create:
                raise KeyStoreError(f"the {purpose} key {name} in domain {domain} does not exist")
            if attrs is not None and (not attrs or ";" in attrs):
                raise ConfigurationError("a named key's attributes are key=value text, no ';'")
            if record is None:
                row_name = name if attrs is None else f"{name};{attrs}"
                record = self._create_named_key(domain, row_name, dek_id, purpose)
            row_name = record.name or ""
            base, _, row_attrs = row_name.partition(";")
            if record.purpose != purpose or record.domain != domain or base != name:
                raise KeyStoreError(f"key-store row {dek_id.hex()} is not the {purpose} key {name}")
            if record.state is DekState.DESTROYED:
                raise KeyStoreError(f"the {purpose} key {name} in domain {domain} was destroyed")
            provider = self.providers[domain]
            ref = KeyRef(domain, record.kek_id, record.kek_version)
            try:
                key = provider.unwrap(
                    ref,
                    record.wrapped,
                    context=key_row_context(domain, dek_id, purpose, record.name),
                )
            except KeyAuthenticationError:
                # Named keys come only from rows the key holder made (never from a row an
                # encrypt-only key could create): a planted or replaced row is refused, not used.
                raise KeyStoreError(
                    f"the {purpose} key {name} in domain {domain} (key row {dek_id.hex()}) was "
                    "not made by the holder of the domain's key; refused"
                ) from None
            named = BlindIndexKey(
                key,
                domain=domain,
                name=name,
                version=version,
                attrs=row_attrs if ";" in row_name else None,
            )
            self._index_keys[(domain, name)] = named
            return named

    def destroy_named_key(self, domain: str, name: str, purpose: str) -> bool:
        """Destroy a named key (its row stays as a tombstone, so it is never made again under
        that name) and forget it here; False if it was destroyed already."""
        with self._lock:
            dek_id = index_key_id(domain, name)
            record = self.store.get(dek_id)
            if record is None:
                raise KeyStoreError(f"the {purpose} key {name} in domain {domain} does not exist")
            base = (record.name or "").partition(";")[0]
            if record.purpose != purpose or record.domain != domain or base != name:
                raise KeyStoreError(f"key-store row {dek_id.hex()} is not the {purpose} key {name}")
            self._index_keys.pop((domain, name), None)
            if record.state is DekState.DESTROYED and not record.wrapped:
                return False
            self.store.destroy(dek_id)
            return True

    def _refuse_new_subject_ref(self, domain: str) -> None:
        """Refuse to make a subject-reference key for a domain that has had subject keys (its
        wrapping keys, made after the reference key, say so): the old key's row was deleted,
        and a new key would give every member another reference, so that erasures find none
        of their keys. Checked once, when the row is missing."""
        store = self.store
        if isinstance(store, SupportsScopedKeys) and store.wrapping_keys(domain):
            raise KeyStoreError(
                f"the subject-reference key of domain {domain} is missing from the key store, "
                "but the domain has subject keys: refusing to make a new one (every member "
                "would get another reference and erasures would find nothing); restore the "
                f"key row {index_key_id(domain, SUBJECT_REF_NAME).hex()} from a backup"
            )

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
            for active in [*self.active.values(), *self.bucket_actives.values()]:
                self._flush_count(active)
            self.active.clear()
            self.bucket_actives.clear()
            self.cache.clear()
            self._refs.clear()
            return True

    def reset_after_fork(self) -> None:
        # A child must never encrypt under its parent's DEK: it takes fresh ones, with a fresh
        # lock (another thread of the parent may have held it at the fork). In place: the
        # cipher holds a reference to ``active``.
        self._lock = threading.RLock()
        self.active.clear()
        self.bucket_actives.clear()
        self.subject_actives.clear()
        self._refs.clear()
