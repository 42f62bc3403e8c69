"""A tamper-evident audit log: append-only events in an HMAC hash chain, with checkpoints.

Each event's ``mac`` is ``HMAC-SHA256(audit key, previous mac || canonical event)``, where the
canonical event is its sequence number and fields as sorted, compact JSON; the first event chains
from 32 zero bytes. A one-row head table records the log's random id, the last sequence number and
mac, and ``auth``, a MAC of those three under a key derived from the audit key, so a head rewound
by someone without the key no longer authenticates. Appends lock the head row in their
transaction, check its MAC and refuse to extend an altered head, so concurrent writers never fork
the chain. The audit key is a random 256-bit key wrapped by a domain's KEK in the key store
(``Vault`` provides it), so without the provider nobody can forge a link.

:meth:`AuditLog.verify` recomputes the chain and names the first broken link: an edited event
(its mac no longer matches), a deleted one (a gap in sequence numbers or a wrong previous mac), a
reordered pair, an inserted forgery, a truncated tail (the head no longer matches the last event)
or an altered head row.

What the log alone cannot show is a rollback to a state it really had: a database writer who kept
an old head row can delete the events after it and put that row back. Against that, export a
:class:`Checkpoint` (:meth:`AuditLog.checkpoint`, ``vaultkit audit head``): the log id, sequence
number and chain mac of the head, MACed under the audit key. Keep it where the database writer
cannot write; :meth:`AuditLog.verify` with ``expect=`` then fails when the log ends before the
checkpoint or its event at the checkpoint's sequence number is not the one checkpointed.

Events never hold a value, only who, why, where and which rows; checkpoints hold no secret.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from vaultkit._ddl import create_tables
from vaultkit._offload import sync_engine
from vaultkit._redact import NoPickle
from vaultkit.core import wire
from vaultkit.core.envelope import wrap_context
from vaultkit.errors import AuditError, ConfigurationError, KeyAuthenticationError, KeyStoreError
from vaultkit.keys.provider import KeyProvider, KeyRef
from vaultkit.store import DekState, KeyStore

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "AuditEvent",
    "AuditLog",
    "Checkpoint",
    "VerifyResult",
    "audit_key_id",
    "audit_log_exists",
    "open_audit_log",
    "read_audit_key",
    "read_checkpoint",
    "write_checkpoint",
    "writer_table_prefix",
]

log = logging.getLogger("vaultkit")

GENESIS: Final = bytes(32)
_HEAD_ID: Final = 1
# Labels of the keys derived from the audit key. Each is shorter than 32 bytes, so no label is ever
# a chain MAC's input (32 bytes of previous mac and then the event), and the keys stay apart.
_HEAD_LABEL: Final = b"vaultkit audit head key v1"
_CHECKPOINT_LABEL: Final = b"vaultkit audit checkpoint v1"
# Labels of a writer chain's Ed25519 signatures (links and head). They differ from the X25519
# provider's key-row label ("vaultkit x25519 writer v1") in their ninth byte, so no signature of
# one kind is ever a valid signature of the other.
_WRITER_LINK_LABEL: Final = b"vaultkit audit writer link v1"
_WRITER_HEAD_LABEL: Final = b"vaultkit audit writer head v1"
_CHECKPOINT_VERSION: Final = 1
#: The audit key's name and purpose in the key store (a named key, like a blind-index key).
AUDIT_KEY_NAME: Final = "audit-log@v1"
_AUDIT_PURPOSE: Final = "audit"
_CHECKPOINT_MAX: Final = 4096  # bytes: a checkpoint file is about 250


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event: who (principal) did what (action) to which cells, why (purpose), and when."""

    principal: str
    purpose: str | None
    action: str  # "decrypt", "denied", "write"; "erase", "retention" (life cycle, count only)
    domain: str
    table: str | None
    column: str | None
    rows: tuple[str, ...]
    count: int
    dek_id: str | None
    at: dt.datetime

    def canonical(self, seq: int) -> bytes:
        body = {
            "seq": seq,
            "principal": self.principal,
            "purpose": self.purpose,
            "action": self.action,
            "domain": self.domain,
            "table": self.table,
            "column": self.column,
            "rows": list(self.rows),
            "count": self.count,
            "dek_id": self.dek_id,
            "at": self.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :meth:`AuditLog.verify`."""

    ok: bool
    events: int
    first_broken: int | None = None
    reason: str = ""
    #: What the result does not cover, said plainly (a head of the first layout, opened
    #: read-only, carries no MAC of its own); empty when the check was complete.
    note: str = ""
    #: Events whose stored time lost its microseconds (MySQL/MariaDB before the ``at`` column
    #: kept them): their MACs cannot be recomputed, so they are not verified.
    truncated: int = 0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The head of an audit log at one moment, MACed under the audit key; holds no secret.

    Args:
        log_id: the log's random id (32 hex digits), so a checkpoint fits one log only.
        seq: the sequence number of the last event.
        chain: that event's mac (64 hex digits), which commits to every event before it.
        at: when the checkpoint was taken (UTC).
        mac: HMAC-SHA256 of the other fields under a key derived from the audit key.

    .. versionadded:: 0.1.0
    """

    log_id: str
    seq: int
    chain: str
    at: dt.datetime
    mac: str

    def body(self) -> bytes:
        """The canonical bytes the checkpoint's ``mac`` covers."""
        return json.dumps(
            {
                "v": _CHECKPOINT_VERSION,
                "log_id": self.log_id,
                "seq": self.seq,
                "chain": self.chain,
                "at": self.at.astimezone(dt.UTC).isoformat(timespec="seconds"),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def to_json(self) -> str:
        """The checkpoint as one line of JSON (what ``vaultkit audit head`` writes)."""
        fields = json.loads(self.body())
        fields["mac"] = self.mac
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Checkpoint:
        """Parse a checkpoint; its MAC is checked by :meth:`AuditLog.verify`, not here.

        Raises:
            AuditError: not a checkpoint of this format.
        """
        try:
            checkpoint = _parse_checkpoint(json.loads(text))
        except (ValueError, TypeError, KeyError, RecursionError):
            checkpoint = None
        if checkpoint is None:
            raise AuditError("not a vaultkit audit checkpoint (or a damaged one)")
        return checkpoint


def _parse_checkpoint(fields: Any) -> Checkpoint | None:
    """The checkpoint in parsed JSON, or ``None`` when it is not one."""
    if not isinstance(fields, dict) or fields.get("v") != _CHECKPOINT_VERSION:
        return None
    if set(fields) != {"v", "log_id", "seq", "chain", "at", "mac"}:
        return None
    log_id, seq, chain, mac = fields["log_id"], fields["seq"], fields["chain"], fields["mac"]
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0):
        return None
    for value, size in ((log_id, 32), (chain, 64), (mac, 64)):
        if not isinstance(value, str) or len(value) != size:
            return None
        bytes.fromhex(value)  # ValueError when not hex
    if not isinstance(fields["at"], str):
        return None
    at = dt.datetime.fromisoformat(fields["at"])
    if at.tzinfo is None:
        return None
    return Checkpoint(log_id=log_id, seq=seq, chain=chain, at=at, mac=mac)


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically, mode 0600.

    The bytes go to a temporary file in the same directory (created 0600), written in full,
    flushed to disk and read back before it replaces ``path``; a full disk or a crash leaves the
    previous checkpoint as it was.

    Raises:
        AuditError: the file could not be written.
    """
    target = Path(path)
    data = (checkpoint.to_json() + "\n").encode()
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        _check_reads_back(Path(tmp), data)
        os.replace(tmp, target)
        tmp = None
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise AuditError(
            f"could not write the checkpoint to {target}: {type(exc).__name__}"
        ) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_all(fd: int, data: bytes) -> None:
    # os.write may write less than asked (a full disk, a file-size limit): loop until all is out.
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - os.write raises rather than return 0
            raise OSError("short write")
        view = view[written:]
    os.fsync(fd)


def _check_reads_back(path: Path, data: bytes) -> None:
    if path.read_bytes() != data:
        raise OSError("the checkpoint did not read back as written")


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file written by :func:`write_checkpoint` or ``vaultkit audit head``.

    Raises:
        AuditError: the file is missing, too large or not a checkpoint.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(_CHECKPOINT_MAX + 1)
    except OSError as exc:
        raise AuditError(f"cannot read the checkpoint {path}: {type(exc).__name__}") from None
    if len(data) > _CHECKPOINT_MAX:
        raise AuditError(f"{path} is not a vaultkit audit checkpoint (too large)")
    return Checkpoint.from_json(data)


class _KeyedMac(NoPickle):
    """HMAC-SHA256 under a key derived from the audit key; holds only the HMAC state."""

    __slots__ = ("_base",)

    def __init__(self, mac: Callable[[bytes], bytes], label: bytes) -> None:
        self._base = hmac.new(mac(label), digestmod=hashlib.sha256)

    def __call__(self, data: bytes) -> bytes:
        digest = self._base.copy()
        digest.update(data)
        return digest.digest()


class _HmacLinks(NoPickle):
    """The links of a vault's own chain: HMAC-SHA256 under the audit key (and keys derived)."""

    __slots__ = ("_checkpoint", "_head", "_mac")
    size: Final = 32

    def __init__(self, mac: Callable[[bytes], bytes]) -> None:
        self._mac = mac
        self._head = _KeyedMac(mac, _HEAD_LABEL)
        self._checkpoint = _KeyedMac(mac, _CHECKPOINT_LABEL)

    def link(self, prev: bytes, data: bytes) -> bytes:
        return self._mac(prev + data)

    def check(self, prev: bytes, data: bytes, link: bytes) -> bool:
        return hmac.compare_digest(self._mac(prev + data), link)

    def head(self, data: bytes) -> bytes:
        return self._head(b"\x01" + data)

    def check_head(self, data: bytes, auth: bytes) -> bool:
        return hmac.compare_digest(self.head(data), auth)

    def checkpoint(self, body: bytes) -> bytes:
        return self._checkpoint(body)


class _SignedLinks(NoPickle):
    """The links of an encrypt-only writer's chain: Ed25519 signatures by the writer's key.

    The writer signs (``sign``); the unit, pinning the writer's public key, only verifies. A
    database writer holds neither the signing key nor a MAC key, so it can no more forge a link
    of this chain than of the unit's.
    """

    __slots__ = ("_public", "_sign", "name")
    size: Final = 64

    def __init__(
        self, public: Ed25519PublicKey, sign: Callable[[bytes], bytes] | None, name: str
    ) -> None:
        self._public = public
        self._sign = sign
        self.name = name

    def _signed(self, data: bytes) -> bytes:
        if self._sign is None:
            raise AuditError(f"the audit chain of writer {self.name} is only verified here")
        return self._sign(data)

    def _verified(self, signature: bytes, data: bytes) -> bool:
        try:
            self._public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def link(self, prev: bytes, data: bytes) -> bytes:
        return self._signed(_WRITER_LINK_LABEL + prev + data)

    def check(self, prev: bytes, data: bytes, link: bytes) -> bool:
        return self._verified(link, _WRITER_LINK_LABEL + prev + data)

    def head(self, data: bytes) -> bytes:
        return self._signed(_WRITER_HEAD_LABEL + data)

    def check_head(self, data: bytes, auth: bytes) -> bool:
        return self._verified(auth, _WRITER_HEAD_LABEL + data)

    def checkpoint(self, body: bytes) -> bytes:
        raise AuditError(
            f"checkpoints are taken of the unit's own audit log, not of writer {self.name}'s chain"
        )


_Links = _HmacLinks | _SignedLinks


def _unhex(text: object) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def writer_table_prefix(public: Ed25519PublicKey, table_prefix: str = "vaultkit_") -> str:
    """The table prefix of an encrypt-only writer's own audit chain.

    ``<table_prefix>w<writer id>_``, the writer id being the first 8 bytes of SHA-256 of the
    writer's raw Ed25519 public key in hex (the id its signed key rows carry).
    """
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{table_prefix}w{hashlib.sha256(raw).digest()[:8].hex()}_"


def audit_log_exists(engine: sa.Engine, *, table_prefix: str = "vaultkit_") -> bool:
    """Whether both audit tables exist in ``engine``'s database; reads only.

    Raises:
        AuditError: the database cannot be reached.
    """
    try:
        inspector = sa.inspect(engine)
        return inspector.has_table(f"{table_prefix}audit_events") and inspector.has_table(
            f"{table_prefix}audit_head"
        )
    except SQLAlchemyError as exc:
        raise AuditError(f"the audit database cannot be read: {type(exc).__name__}") from None


def audit_key_id(domain: str) -> bytes:
    """The key-store id of ``domain``'s audit key (derived from its name, as Vault makes it)."""
    digest = hashlib.sha256(
        b"vaultkit index key v1\x00" + wire.encode_field(domain) + wire.encode_field(AUDIT_KEY_NAME)
    )
    return digest.digest()[: wire.DEK_ID_SIZE]


class _AuditKey(NoPickle):
    """HMAC-SHA256 under the audit key; holds only the HMAC state."""

    __slots__ = ("_base",)

    def __init__(self, base: Any) -> None:
        self._base = base

    def __call__(self, data: bytes) -> bytes:
        digest = self._base.copy()
        digest.update(data)
        return bytes(digest.digest())

    def __repr__(self) -> str:
        return "_AuditKey(***)"


def read_audit_key(
    store: KeyStore, provider: KeyProvider, domain: str
) -> Callable[[bytes], bytes] | None:
    """The HMAC of ``domain``'s audit key, unwrapped from ``store`` by ``provider``; reads only.

    Returns ``None`` when the store holds no audit key for the domain (no vault ever audited it
    there). Unlike :class:`~vaultkit.Vault`, it never creates one.

    Raises:
        KeyStoreError: the row is not the audit key, was destroyed, or was not made by the
            holder of the domain's key (a planted row in an encrypt-only domain).
        KeyProviderError: the provider cannot unwrap it (an encrypt-only key, a revoked KEK).
    """
    dek_id = audit_key_id(domain)
    record = store.get(dek_id)
    if record is None:
        return None
    if record.purpose != _AUDIT_PURPOSE or record.domain != domain or record.name != AUDIT_KEY_NAME:
        raise KeyStoreError(f"key-store row {dek_id.hex()} is not the audit key of {domain}")
    if record.state is DekState.DESTROYED:
        raise KeyStoreError(f"the audit key of domain {domain} was destroyed")
    ref = KeyRef(domain, record.kek_id, record.kek_version)
    try:
        base = hmac.new(
            provider.unwrap(
                ref, record.wrapped, context=wrap_context(domain, dek_id, _AUDIT_PURPOSE)
            ),
            digestmod=hashlib.sha256,
        )
    except KeyAuthenticationError:
        raise KeyStoreError(
            f"the audit key of domain {domain} (key row {dek_id.hex()}) was not made by the "
            "holder of the domain's key; refused"
        ) from None
    return _AuditKey(base)


#: The time of an event. MySQL and MariaDB keep whole seconds in a bare DATETIME; the MAC covers
#: microseconds, so there the column is DATETIME(6) (and widened on open; see AuditLog).
_TIMESTAMP: Final = (
    sa.DateTime(timezone=True)
    .with_variant(mysql.DATETIME(fsp=6), "mysql")
    .with_variant(mysql.DATETIME(fsp=6), "mariadb")
)
_MYSQL: Final = frozenset({"mysql", "mariadb"})


class AuditLog:
    """The audit tables ``vaultkit_audit_events`` and ``vaultkit_audit_head`` in an SQL database.

    Args:
        engine: where the tables live (by default the key store's database).
        mac: the keyed HMAC of the chain: ``mac(data) -> 32 bytes``.
        table_prefix: prefix of the two table names.
        read_only: open for verification only: create nothing, upgrade nothing, write nothing
            (:meth:`append` refuses). Missing tables raise :class:`AuditError`
            (:func:`audit_log_exists` tells beforehand). A head of the first layout is verified
            as it is, without its own MAC, and :attr:`VerifyResult.note` says so.

    Opened for writing, the log creates missing tables; a head table written before the head
    carried its own MAC gains the columns ``log_id`` and ``auth`` and its head is authenticated,
    once; on MySQL/MariaDB an ``at`` column of whole seconds is widened to ``DATETIME(6)``.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       ``read_only``; ``DATETIME(6)`` on MySQL/MariaDB; :meth:`of_writer` chains.
    """

    def __init__(
        self,
        engine: sa.Engine,
        mac: Callable[[bytes], bytes] | None = None,
        *,
        table_prefix: str = "vaultkit_",
        read_only: bool = False,
        _links: _Links | None = None,
    ) -> None:
        if _links is None:
            if mac is None:
                raise TypeError("AuditLog needs mac=, the keyed HMAC of the chain")
            _links = _HmacLinks(mac)
        self.engine = engine
        self.read_only = read_only
        self._links: _Links = _links
        self._genesis = bytes(_links.size)
        self._legacy_head = False
        self._metadata = sa.MetaData()
        width = 2 * _links.size
        self.events = sa.Table(
            f"{table_prefix}audit_events",
            self._metadata,
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("at", _TIMESTAMP, nullable=False),
            sa.Column("principal", sa.String(255), nullable=False),
            sa.Column("purpose", sa.String(255), nullable=True),
            sa.Column("action", sa.String(16), nullable=False),
            sa.Column("domain", sa.String(64), nullable=False),
            sa.Column("table_name", sa.String(255), nullable=True),
            sa.Column("column_name", sa.String(255), nullable=True),
            sa.Column("row_keys", sa.Text, nullable=False),
            sa.Column("count", sa.Integer, nullable=False),
            sa.Column("dek_id", sa.String(32), nullable=True),
            sa.Column("prev_mac", sa.String(width), nullable=False),
            sa.Column("mac", sa.String(width), nullable=False),
        )
        self.head = sa.Table(
            f"{table_prefix}audit_head",
            self._metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("mac", sa.String(width), nullable=False),
            # Added after the first layout: nullable so that ALTER TABLE can add them to a log
            # that has rows; every head this code writes sets both.
            sa.Column("log_id", sa.String(32), nullable=True),
            sa.Column("auth", sa.String(width), nullable=True),
        )
        try:
            if read_only:
                self._open_read_only()
            else:
                self._open_for_writing()
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot open the audit log: {type(exc).__name__}") from None

    @classmethod
    def of_writer(
        cls,
        engine: sa.Engine,
        public_key: Ed25519PublicKey,
        *,
        sign: Callable[[bytes], bytes] | None = None,
        name: str = "",
        table_prefix: str = "vaultkit_",
        read_only: bool = False,
    ) -> AuditLog:
        """The audit chain of an encrypt-only writer, in tables of its own.

        Each link and the head are Ed25519 signatures by the writer's signing key (``sign``,
        the writer's side); the unit verifies them with the writer's pinned ``public_key``
        (without ``sign``, read-only). The tables are named by :func:`writer_table_prefix`.
        """
        label = name or writer_table_prefix(public_key, "")[1:-1]
        return cls(
            engine,
            table_prefix=writer_table_prefix(public_key, table_prefix),
            read_only=read_only or sign is None,
            _links=_SignedLinks(public_key, sign, label),
        )

    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _open_read_only(self) -> None:
        inspector = sa.inspect(self.engine)
        if not (inspector.has_table(self.events.name) and inspector.has_table(self.head.name)):
            raise AuditError(
                f"no audit log at {self._where()}: the tables {self.events.name} and "
                f"{self.head.name} do not exist"
            )
        have = {c["name"] for c in inspector.get_columns(self.head.name)}
        self._legacy_head = not {"log_id", "auth"} <= have

    def _open_for_writing(self) -> None:
        # Writers starting at the same moment may race to create the tables (vaultkit._ddl).
        create_tables(self.engine, self._metadata)
        upgraded = self._add_head_columns()
        self._widen_times()
        try:
            self._start_head(upgraded=upgraded)
        except IntegrityError:
            # Another writer opening the new log at the same moment inserted the head first;
            # its head stands (each append reads the head it extends).
            pass

    def _start_head(self, *, upgraded: bool) -> None:
        """Insert the head of a new log, or authenticate the head of a first-layout log."""
        with self.engine.begin() as conn:
            head = conn.execute(sa.select(self.head).where(self.head.c.id == _HEAD_ID)).first()
            if head is None:
                log_id = os.urandom(16).hex()
                conn.execute(
                    self.head.insert().values(
                        id=_HEAD_ID,
                        seq=0,
                        mac=self._genesis.hex(),
                        log_id=log_id,
                        auth=self._head_auth(log_id, 0, self._genesis.hex()),
                    )
                )
            elif upgraded and head.auth is None:
                # A log of the first layout: authenticate its head once, on the open that
                # adds the columns. A head whose auth is later emptied is refused, not adopted.
                log_id = os.urandom(16).hex()
                conn.execute(
                    self.head.update()
                    .where(self.head.c.id == _HEAD_ID, self.head.c.auth.is_(None))
                    .values(
                        log_id=log_id,
                        auth=self._head_auth(log_id, int(head.seq), head.mac),
                    )
                )
                log.info("audit log head upgraded: it now carries its own MAC")

    def _add_head_columns(self) -> bool:
        """Add ``log_id`` and ``auth`` to a head table of the first layout; True if it did."""
        have = {c["name"] for c in sa.inspect(self.engine).get_columns(self.head.name)}
        missing = [c for c in (self.head.c.log_id, self.head.c.auth) if c.name not in have]
        if not missing:
            return False
        preparer = self.engine.dialect.identifier_preparer
        for column in missing:
            ddl = (
                f"ALTER TABLE {preparer.format_table(self.head)} ADD COLUMN "
                f"{preparer.format_column(column)} {column.type.compile(self.engine.dialect)}"
            )
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.text(ddl))
            except SQLAlchemyError:
                # Another process opening the same log may have added it first.
                have = {c["name"] for c in sa.inspect(self.engine).get_columns(self.head.name)}
                if column.name not in have:
                    raise
        return True

    def _widen_times(self) -> None:
        """On MySQL/MariaDB, widen an ``at`` column of whole seconds to ``DATETIME(6)``.

        Events written before keep the whole seconds they were stored with; their MACs cover
        the microseconds the column dropped, so :meth:`verify` reports them as not verifiable.
        """
        if self.engine.dialect.name not in _MYSQL:
            return
        columns = {c["name"]: c for c in sa.inspect(self.engine).get_columns(self.events.name)}
        if getattr(columns["at"]["type"], "fsp", None) == 6:
            return
        preparer = self.engine.dialect.identifier_preparer
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"ALTER TABLE {preparer.format_table(self.events)} MODIFY "
                    f"{preparer.format_column(self.events.c.at)} DATETIME(6) NOT NULL"
                )
            )
        log.info("audit log: the at column now keeps microseconds (DATETIME(6))")

    def _head_data(self, log_id: str, seq: int, mac: str) -> bytes:
        return bytes.fromhex(log_id) + seq.to_bytes(8, "big") + bytes.fromhex(mac)

    def _head_auth(self, log_id: str, seq: int, mac: str) -> str:
        return self._links.head(self._head_data(log_id, seq, mac)).hex()

    def _head_ok(self, head: Any) -> bool:
        auth = _unhex(head.auth)
        if auth is None or head.log_id is None:
            return False
        try:
            data = self._head_data(head.log_id, int(head.seq), head.mac)
        except (ValueError, OverflowError, TypeError):
            return False
        return self._links.check_head(data, auth)

    def append(self, events: Sequence[AuditEvent]) -> None:
        """Append events in one transaction; raises AuditError if they could not be written.

        Raises:
            AuditError: the events could not be written, or the head row does not carry its MAC
                (it was altered: the log is not extended past a rewound head), or the log was
                opened read-only.
        """
        if not events:
            return
        if self.read_only:
            raise AuditError("this audit log was opened read-only")
        try:
            with self.engine.begin() as conn:
                # Take the head's row lock first (SQLite: the database write lock), so that
                # concurrent writers append one after the other and never fork the chain.
                conn.execute(
                    self.head.update().where(self.head.c.id == _HEAD_ID).values(seq=self.head.c.seq)
                )
                head = conn.execute(
                    sa.select(
                        self.head.c.seq, self.head.c.mac, self.head.c.log_id, self.head.c.auth
                    )
                    .where(self.head.c.id == _HEAD_ID)
                    .with_for_update()
                ).one()
                if not self._head_ok(head):
                    raise AuditError(
                        "the audit log's head row does not carry its MAC (it was altered, or "
                        "the log was made under another audit key: each audit key needs tables "
                        "of its own); run vaultkit audit verify"
                    )
                seq, prev = int(head.seq), bytes.fromhex(head.mac)
                rows = []
                for event in events:
                    seq += 1
                    mac = self._links.link(prev, event.canonical(seq))
                    rows.append(
                        {
                            "seq": seq,
                            "at": event.at,
                            "principal": event.principal,
                            "purpose": event.purpose,
                            "action": event.action,
                            "domain": event.domain,
                            "table_name": event.table,
                            "column_name": event.column,
                            "row_keys": json.dumps(list(event.rows), separators=(",", ":")),
                            "count": event.count,
                            "dek_id": event.dek_id,
                            "prev_mac": prev.hex(),
                            "mac": mac.hex(),
                        }
                    )
                    prev = mac
                conn.execute(self.events.insert(), rows)
                conn.execute(
                    self.head.update()
                    .where(self.head.c.id == _HEAD_ID)
                    .values(
                        seq=seq,
                        mac=prev.hex(),
                        auth=self._head_auth(head.log_id, seq, prev.hex()),
                    )
                )
        except SQLAlchemyError as exc:
            raise AuditError(f"an audit event could not be written: {type(exc).__name__}") from None

    def read(self) -> Iterator[tuple[int, AuditEvent, str, str]]:
        """Yield ``(seq, event, prev_mac, mac)`` in sequence order."""
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(self.events).order_by(self.events.c.seq)):
                m = row._mapping
                at = m["at"] if m["at"].tzinfo is not None else m["at"].replace(tzinfo=dt.UTC)
                event = AuditEvent(
                    principal=m["principal"],
                    purpose=m["purpose"],
                    action=m["action"],
                    domain=m["domain"],
                    table=m["table_name"],
                    column=m["column_name"],
                    rows=tuple(json.loads(m["row_keys"])),
                    count=int(m["count"]),
                    dek_id=m["dek_id"],
                    at=at,
                )
                yield int(m["seq"]), event, m["prev_mac"], m["mac"]

    def _read_head(self) -> Any:
        if self._legacy_head:
            columns = [
                self.head.c.seq,
                self.head.c.mac,
                sa.null().label("log_id"),
                sa.null().label("auth"),
            ]
        else:
            columns = [self.head.c.seq, self.head.c.mac, self.head.c.log_id, self.head.c.auth]
        with self.engine.connect() as conn:
            return conn.execute(sa.select(*columns).where(self.head.c.id == _HEAD_ID)).first()

    def checkpoint(self) -> Checkpoint:
        """Export the head as a MACed :class:`Checkpoint` (run :meth:`verify` first).

        Raises:
            AuditError: the log cannot be read, or its head row does not carry its MAC or does
                not match the last event, or is of the first layout (opened read-only).
        """
        if self._legacy_head:
            raise AuditError(
                "the audit log's head is of the first layout (no MAC of its own): open the log "
                "once with the application's vault to upgrade it, then take a checkpoint"
            )
        try:
            head = self._read_head()
            with self.engine.connect() as conn:
                last = (
                    None
                    if head is None
                    else conn.execute(
                        sa.select(self.events.c.mac).where(self.events.c.seq == head.seq)
                    ).scalar_one_or_none()
                )
        except SQLAlchemyError as exc:
            raise AuditError(f"the audit log could not be read: {type(exc).__name__}") from None
        if head is None or not self._head_ok(head) or (int(head.seq) > 0 and last != head.mac):
            raise AuditError("the audit log's head row was altered; run vaultkit audit verify")
        unsigned = Checkpoint(
            log_id=head.log_id,
            seq=int(head.seq),
            chain=head.mac,
            at=dt.datetime.now(dt.UTC).replace(microsecond=0),
            mac="",
        )
        return Checkpoint(
            log_id=unsigned.log_id,
            seq=unsigned.seq,
            chain=unsigned.chain,
            at=unsigned.at,
            mac=self._links.checkpoint(unsigned.body()).hex(),
        )

    def _check_checkpoint(self, checkpoint: Checkpoint) -> None:
        expected = self._links.checkpoint(checkpoint.body()).hex()
        if not hmac.compare_digest(expected, checkpoint.mac):
            raise AuditError(
                "the checkpoint is not authentic: it was altered, or made under another audit key"
            )

    def _time_truncated(self, event: AuditEvent) -> bool:
        """Whether a failing event may be one whose time a bare DATETIME cut to whole seconds."""
        return self.engine.dialect.name in _MYSQL and event.at.microsecond == 0

    def verify(self, *, expect: Checkpoint | Sequence[Checkpoint] | None = None) -> VerifyResult:
        """Recompute the chain; name the first broken link, if any.

        Args:
            expect: one or more checkpoints taken earlier. The log must be the same log, reach
                at least each checkpoint's event, and hold at that sequence number the event
                checkpointed; otherwise it was truncated, rolled back or replaced.

        On MySQL/MariaDB, an event whose MAC fails and whose stored time has no microseconds
        may have been written before the ``at`` column kept them: it is counted in
        :attr:`VerifyResult.truncated`, the chain is checked on through its stored mac, and the
        result is not ``ok`` (its contents cannot be verified).

        Raises:
            AuditError: the log cannot be read, or a checkpoint is not authentic (altered, or not
                made under this log's audit key).
        """
        expects = [expect] if isinstance(expect, Checkpoint) else list(expect or ())
        for checkpoint in expects:
            self._check_checkpoint(checkpoint)
        wanted = {c.seq for c in expects}
        seen: dict[int, str] = {0: self._genesis.hex()}
        expected_seq, prev, count = 1, self._genesis, 0
        truncated, first_truncated = 0, 0
        try:
            for seq, event, prev_mac, mac in self.read():
                count += 1
                if seq != expected_seq:
                    return VerifyResult(
                        False, count, expected_seq, f"event {expected_seq} is missing"
                    )
                if prev_mac != prev.hex():
                    return VerifyResult(
                        False, count, seq, f"event {seq} does not follow event {seq - 1}"
                    )
                link = _unhex(mac)
                if (
                    link is None
                    or len(link) != self._links.size
                    or not self._links.check(prev, event.canonical(seq), link)
                ):
                    if link is None or len(link) != self._links.size:
                        return VerifyResult(False, count, seq, f"event {seq} was altered or forged")
                    if not self._time_truncated(event):
                        return VerifyResult(False, count, seq, f"event {seq} was altered or forged")
                    truncated += 1
                    first_truncated = first_truncated or seq
                if seq in wanted:
                    seen[seq] = mac
                prev, expected_seq = link, seq + 1
            head = self._read_head()
        except (SQLAlchemyError, ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"the audit log could not be read: {type(exc).__name__}") from None
        if head is None:
            return VerifyResult(False, count, count + 1, "the head row is missing")
        if int(head.seq) != count or head.mac != prev.hex():
            return VerifyResult(
                False,
                count,
                count + 1,
                f"the log ends at event {count} but recorded {head.seq} events",
            )
        note = ""
        if self._legacy_head:
            note = (
                "the head row is of the first layout and carries no MAC of its own, so a "
                "rewound head cannot be told from a true one (opening the log with the "
                "application's vault upgrades it)"
            )
        elif not self._head_ok(head):
            return VerifyResult(
                False,
                count,
                count + 1,
                "the head row was altered: it does not carry the audit key's MAC "
                "(a rewound or replaced head)",
            )
        for checkpoint in expects:
            broken = self._against(checkpoint, head.log_id or "", count, seen.get(checkpoint.seq))
            if broken is not None:
                return broken
        if truncated:
            return VerifyResult(
                False,
                count,
                first_truncated,
                f"{truncated} events, the first event {first_truncated}, do not match their MAC "
                "and have a time of whole seconds: altered, or written before vaultkit kept "
                "microseconds in MySQL/MariaDB (the MAC covers the exact time the column "
                "dropped), so they cannot be verified; the chain through them and every other "
                "event verified",
                note,
                truncated,
            )
        return VerifyResult(True, count, note=note)

    @staticmethod
    def _against(
        checkpoint: Checkpoint, log_id: str, count: int, chain: str | None
    ) -> VerifyResult | None:
        """The failure of a verified log against one checkpoint, or ``None`` if it holds."""
        if not hmac.compare_digest(log_id, checkpoint.log_id):
            return VerifyResult(
                False,
                count,
                1,
                "the log is not the one the checkpoint was taken of: it was replaced or recreated",
            )
        if count < checkpoint.seq:
            return VerifyResult(
                False,
                count,
                count + 1,
                f"the log ends at event {count} but the checkpoint of "
                f"{checkpoint.at.isoformat()} recorded event {checkpoint.seq}: truncated or "
                "rolled back",
            )
        if chain is None or not hmac.compare_digest(chain, checkpoint.chain):
            return VerifyResult(
                False,
                count,
                checkpoint.seq,
                f"event {checkpoint.seq} is not the one the checkpoint recorded: the log was "
                "rolled back and rewritten",
            )
        return None

    def __repr__(self) -> str:
        return f"AuditLog({self._where()!r})"


def open_audit_log(
    target: str | sa.URL | sa.Engine | AsyncEngine | None,
    *,
    key_store_engine: sa.Engine | None,
    mac: Callable[[], Callable[[bytes], bytes]] | None = None,
    writer: tuple[Ed25519PublicKey, Callable[[bytes], bytes]] | None = None,
) -> tuple[AuditLog, sa.Engine | None]:
    """Open the audit log a vault writes, for writing: where ``target`` says, or the key store's.

    Args:
        target: a database URL or Engine (an async one gets a synchronous engine of vaultkit's
            own on the same database), or ``None``: the key store's database.
        key_store_engine: the key store's engine, if it is an SQL store.
        mac: called once the database is known, returns the chain's keyed MAC (the audit key).
        writer: for an encrypt-only writer, its Ed25519 public key and signing function: the log
            is then the writer's own chain (:meth:`AuditLog.of_writer`) and ``mac`` is not used.

    Returns:
        The log, and the engine opened for it that the caller must dispose of (or ``None``).

    Raises:
        ConfigurationError: no database for the log, or its URL cannot be used.
        AuditError: the log cannot be opened.

    .. versionadded:: 0.2.0
    """
    if writer is None and mac is None:
        raise TypeError("open_audit_log needs mac= or writer=")
    made = sync_engine(target, what="audit") if target is not None else None
    owned: sa.Engine | None = None
    if made is not None:
        engine, is_own = made
        owned = engine if is_own else None
    elif key_store_engine is not None:
        engine = key_store_engine
    else:
        raise ConfigurationError(
            "audited domains need an audit log: give audit= (a database URL or Engine) or use "
            "an SQL key store"
        )
    try:
        if writer is not None:
            # An encrypt-only writer cannot read the unit's audit key (nor make one): it logs
            # into a chain of its own, signed with its writer key, which the unit verifies.
            public, sign = writer
            return AuditLog.of_writer(engine, public, sign=sign), owned
        if mac is not None:
            return AuditLog(engine, mac=mac()), owned
    except BaseException:
        if owned is not None:
            owned.dispose()
        raise
    raise TypeError("open_audit_log needs mac= or writer=")  # not reached: checked above
