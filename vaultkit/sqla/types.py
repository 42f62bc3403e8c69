"""SQLAlchemy column types: ``Encrypted`` and the blind-index column type.

``Encrypted(inner, domain=...)`` stores each value as a vaultkit ciphertext (wire format v1) in a
binary column (BYTEA on PostgreSQL, BLOB on SQLite, LONGBLOB on MariaDB/MySQL) and gives it back as
the inner type's Python type. The associated data binds each value to its domain, table and column,
and with ``row_key=`` to a stable key of its row. Crypto never runs in SQL.

``cache_ok = True`` is safe: SQLAlchemy builds a type's cache key from the attributes named like its
positional-or-keyword ``__init__`` parameters (keyword-only ones are left out, so none is used
here), and those are plain names and flags (``domain="identity"``, ``vault="default"``, the inner
type's own key, the normalising function of a blind index). The vault is looked up by name in
:mod:`vaultkit.sqla`'s registry; no vault object and no key ever sits in a type or a cache key.
"""

from __future__ import annotations

import numbers
import secrets
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Final, NoReturn, cast

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql import operators
from sqlalchemy.types import TypeDecorator, TypeEngine

from vaultkit._access import SealedValue
from vaultkit._codec import STR_TAG, encode_value
from vaultkit._vault import BlindIndexKey, FieldCipher
from vaultkit.core import wire
from vaultkit.errors import (
    ConfigurationError,
    DecryptionError,
    EncodingError,
    QueryError,
    ValueErasedError,
    VaultkitError,
)
from vaultkit.keys.domains import KeyDomain, check_domain_name
from vaultkit.sqla import _registry
from vaultkit.sqla._coerce import INVALID, coercer, legacy_bytes, legacy_value
from vaultkit.sqla._exact import ErasedCandidate, ExactCheck, checked, loading_candidates
from vaultkit.sqla._storage import RawBinary, index_storage_for, storage_for

__all__ = ["BlindIndexType", "Encrypted", "EncryptedCell", "RowBound"]


_NULL_OPERATORS: Final = frozenset({operators.is_, operators.is_not})
_SCHEMA_BINDINGS: Final = ("schema", "legacy")
_ON_ERASED: Final = ("raise", "null")


#: Set by the ORM hooks while an ORM statement loads entities: the columns of restricted or
#: audited domains then yield :class:`EncryptedCell` objects, opened on attribute access under
#: the reader's own scope (see :mod:`vaultkit.sqla._hooks`), instead of plaintext decrypted under
#: whoever happened to run the query.
orm_cells: ContextVar[bool] = ContextVar("vaultkit_orm_cells", default=False)


def _stored_bytes(value: Any, column: Encrypted) -> bytes:
    """Return a stored value as bytes, or raise a vaultkit error naming the column (never the value)."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise DecryptionError(
        f"{column._name_or_unknown()}: the database returned a {type(value).__name__} where a "
        "binary ciphertext was expected; store encrypted columns as binary (BYTEA, BLOB)"
    )


#: What a bind processor turns into an EncodingError: a wrong type, a value its codec refuses, a
#: JSON value nested too deeply for the encoder.
_ENCODING_FAILURES: Final = (TypeError, ValueError, RecursionError)


def _encoding_error(column: Encrypted | BlindIndexType, exc: BaseException) -> Exception:
    """The error to raise for ``exc`` under ``column``'s bind processor: never quoting the value.

    Messages of vaultkit's own checks name types and limits only and are kept; any other
    message (the JSON encoder's, a user's normalising function's) may quote the value, so only
    its class is named.
    """
    if isinstance(exc, VaultkitError) and not isinstance(exc, EncodingError):
        return exc
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    own = tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("vaultkit.")
    detail = str(exc) if own and not isinstance(exc, UnicodeError) else type(exc).__name__
    if isinstance(column, Encrypted):
        name = column._name_or_unknown()
    else:
        name = f"blind index of {column.source!r}"
    return EncodingError(f"{name}: the value cannot be stored ({detail})")


class _CellKey:
    """The one key of the container that stands for a sealed cell in a ``Mutable`` attribute."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<sealed cell>"


#: ``sqlalchemy.ext.mutable`` refuses anything but its own container in a mutable attribute, so
#: there a cell travels as ``{CELL_KEY: cell}`` or ``[cell]`` (a key and an item no JSON value
#: can hold).
CELL_KEY: Final = _CellKey()


def cell_of(value: Any) -> EncryptedCell | None:
    """Return the cell that ``value`` stands for (itself, or inside a mutable container), else None."""
    if type(value) is EncryptedCell:
        return value
    if isinstance(value, dict):
        if len(value) == 1:
            found = value.get(CELL_KEY)
            return found if type(found) is EncryptedCell else None
    elif isinstance(value, list) and len(value) == 1 and type(value[0]) is EncryptedCell:
        return value[0]
    return None


class Pending:
    """A value the application assigned to a restricted or audited attribute, on its way to the
    database.

    The ORM hooks wrap such values before a flush; the column type encrypts :attr:`value` and
    keeps the ciphertext it wrote in :attr:`ciphertext`, so that after the flush the attribute
    holds that ciphertext (an :class:`EncryptedCell`) rather than the writer's plaintext.
    """

    __slots__ = ("ciphertext", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.ciphertext: bytes | None = None

    def __repr__(self) -> str:
        return "Pending(<value>)"


class _Unknown:
    """The subject of a write that vaultkit could not see (not in the statement's parameters)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<subject not known>"


#: :attr:`RowBound.subject` when the write did not name the subject column at all.
UNKNOWN: Final = _Unknown()


class RowBound:
    """A value on its way into a row-bound or subject-scoped column, with its row key and subject.

    The statement hook of :mod:`vaultkit.sqla` wraps values in it; applications may too, when they
    write such a column with a statement whose row key or subject vaultkit cannot see. ``row`` is
    ``None`` for a column without ``row_key=``; ``subject`` is the value of the column's
    ``subject=`` column in that row (the member id), used only to pick the member's key.

    .. versionchanged:: 0.3.0
        ``subject=``.
    """

    __slots__ = ("row", "subject", "value")

    def __init__(self, value: Any, row: Any, *, subject: Any = UNKNOWN) -> None:
        self.value = value
        self.row = row
        self.subject = subject

    def __repr__(self) -> str:
        if self.subject is UNKNOWN:
            return "RowBound(<value>, row=<row key>)"
        return "RowBound(<value>, row=<row key>, subject=<subject>)"


def _marking_erased(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process``, giving an :class:`ErasedCandidate` for an erased value while an exact
    lookup loads its candidates (see :mod:`vaultkit.sqla._exact`)."""

    def marking(value: Any) -> Any:
        # The value leaves this frame's locals before ``process`` runs: a legacy plaintext that
        # fails to convert must not be held by a frame of the traceback (error reporters capture
        # frame locals), as in Encrypted.result_processor's ``legacy``.
        box = [value]
        del value
        try:
            return process(box.pop())
        except ValueErasedError as exc:
            if not loading_candidates.get():
                raise
            return ErasedCandidate(exc)

    return marking


class EncryptedCell:
    """A stored value not yet decrypted: ciphertext only, never plaintext.

    A Core ``select`` of a row-bound column yields them (open one with :meth:`decrypt`, giving the
    row key selected alongside). In the ORM, the attributes of restricted and audited domains
    hold them in the instance's committed state: the attribute decrypts on each access under the
    scope of the reader (cached for that scope only), so that an object loaded by one principal
    never hands its plaintext to another.
    """

    __slots__ = ("_type", "ciphertext")

    def __init__(self, column_type: Encrypted, ciphertext: bytes) -> None:
        self._type = column_type
        self.ciphertext = ciphertext

    def decrypt(self, *, row: wire.ContextValue | None = None) -> Any:
        """Decrypt under the current scope, with the row key of its row when the column is row-bound."""
        return self._type.decrypt_value(self.ciphertext, row=row)

    def __repr__(self) -> str:
        return f"EncryptedCell({self._type._name_or_unknown()}, {len(self.ciphertext)} bytes)"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # Its column type names a configured vault, which is not shipped; refuse rather than
        # fail later in another process.
        raise TypeError("an EncryptedCell cannot be pickled")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncryptedCell) and other.ciphertext == self.ciphertext

    __hash__ = None  # type: ignore[assignment]


def _query_error(name: str, op: object, hint: str) -> QueryError:
    op_name = getattr(op, "__name__", str(op)).strip("_")
    return QueryError(
        f"{name} is encrypted with random nonces: {op_name!r} has no meaning on its ciphertext and "
        f"would silently match nothing. {hint}"
    )


#: Legacy manifests loaded by :func:`vaultkit.rekey.load_migration`: by vault name, schema, table
#: and column, a function telling whether a legacy plaintext was recorded when the migration of
#: that column began, with the generation of the configured vault it was loaded for (configuring
#: another vault forgets it). Keyed by binding, not by type object: SQLAlchemy copies types.
_LEGACY_MANIFESTS: dict[tuple[str, str | None, str, str], tuple[int, Callable[[bytes], bool]]] = {}


class Encrypted(TypeDecorator[Any]):
    """A column whose values are encrypted with AES-256-GCM under the vault's keys.

    Args:
        inner: the logical type: ``String``, ``Text``, ``Unicode``, ``LargeBinary``, ``Integer``,
            ``BigInteger``, ``Numeric``, ``Float``, ``Boolean``, ``Date``, ``DateTime``, ``Uuid``,
            ``Enum`` or ``JSON`` (class or instance). Values come back as its Python type.
        domain: the key domain, such as ``"identity"`` or ``"medical"``.
        row_key: name of a column of the same table whose value binds each value to its row (a UUID
            key or member number known at insert time, never a database-assigned autoincrement).
            A value copied into another row then fails to decrypt.
        migrating: read legacy plaintext (a value without the vaultkit header) as the inner
            type, if it was recorded in the column's legacy manifest when the migration began
            (:func:`vaultkit.rekey.begin_migration`, loaded with
            :func:`vaultkit.rekey.load_migration`), under the domain's grant and audit rules;
            always write ciphertext. Off by default: strict mode raises on anything else.
        vault: name of the configured vault (see :func:`vaultkit.sqla.configure`).
        pad_to: pad plaintexts to a multiple of this many bytes, so that short enumerations of
            different lengths give ciphertexts of one length.
        table, column: the names bound into the associated data; by default the table and column
            this type is attached to. Give them to keep reading values after renaming a column.
        previous: how the column was encrypted before a move to another domain or binding (an
            ``Encrypted`` of the same inner type). Values that do not open under this type are
            opened under ``previous``; writes always use this type. The re-keying engine moves
            the old values; then remove ``previous``. See docs/operations.md.
        schema: the schema bound into the associated data; by default the schema of the table
            this type is attached to (``Table.schema``), and none for a table without one.
            Schema, table and column are separate context entries (docs/wire-format.md).
        schema_binding: ``"schema"`` (the default) binds as just described. ``"legacy"`` binds
            as vaultkit did before the schema entry existed: no schema, and ``table.column``
            split at its first dot. Only for a ``previous=`` type, to read values written that
            way while ``vaultkit rekey`` moves them to the current binding.
        subject: name of a column of the same table holding the value's subject (the member
            id), required for a domain declared ``KeyDomain(..., dek_scope="subject")`` and
            refused for any other. Each value is encrypted under its subject's own key, so that
            :meth:`vaultkit.Vault.erase_subject` makes the member's values unreadable everywhere
            (replicas, dumps and backups included). The subject column is a plain column, known
            at every write; a write whose subject is NULL or not in the statement raises
            :class:`~vaultkit.errors.ConfigurationError`. An UPDATE that changes the subject of
            a row must rewrite the row's subject-scoped values too (the ORM does it; a Core
            statement that does not is refused). See docs/sqlalchemy.md.
        on_erased: what reading a value whose key was destroyed gives: ``"raise"`` (the
            default) raises :class:`~vaultkit.errors.ValueErasedError` (``SubjectErasedError``
            after an erasure, ``RetentionExpiredError`` past the retention), ``"null"`` reads
            it as ``None``, so that loading rows with erased cells keeps working. Any other
            decryption failure raises :class:`~vaultkit.errors.DecryptionError` in both modes.

    Raises:
        QueryError: on any SQL operator other than ``IS NULL`` / ``IS NOT NULL``, and when the
            column is indexed, unique or a primary key.

    .. versionadded:: 0.1.0

    .. versionchanged:: 0.3.0
        ``subject=`` and ``on_erased=``.
    """

    impl = RawBinary
    cache_ok = True

    def __init__(
        self,
        inner: TypeEngine[Any] | type[TypeEngine[Any]],
        # Not keyword-only, on purpose: SQLAlchemy builds the cache key from positional-or-keyword
        # parameters only, and every parameter here changes what a value encrypts to.
        domain: str,
        row_key: str | None = None,
        migrating: bool = False,
        vault: str = _registry.DEFAULT,
        pad_to: int | None = None,
        table: str | None = None,
        column: str | None = None,
        previous: Encrypted | None = None,
        schema: str | None = None,
        schema_binding: str = "schema",
        subject: str | None = None,
        on_erased: str = "raise",
    ) -> None:
        super().__init__()
        inner_type = inner() if isinstance(inner, type) else inner
        if not isinstance(inner_type, TypeEngine):
            raise TypeError(f"Encrypted wraps an SQLAlchemy type, not {type(inner).__name__}")
        if isinstance(inner_type, Encrypted | BlindIndexType):
            raise ConfigurationError("Encrypted cannot wrap another vaultkit column type")
        self.inner = inner_type
        self.domain = check_domain_name(domain)
        self.row_key = row_key
        self.migrating = bool(migrating)
        self.vault = vault
        if pad_to is not None and not (isinstance(pad_to, int) and 1 <= pad_to <= 4096):
            raise ConfigurationError("pad_to must be an integer from 1 to 4096")
        self.pad_to = pad_to
        self.table = table
        self.column = column
        if schema is not None and not (isinstance(schema, str) and schema):
            raise ConfigurationError("schema= takes a non-empty schema name")
        self.schema = schema
        if schema_binding not in _SCHEMA_BINDINGS:
            raise ConfigurationError('schema_binding= is "schema" or "legacy"')
        self.schema_binding = schema_binding
        if subject is not None and not (isinstance(subject, str) and subject):
            raise ConfigurationError("subject= takes the name of a column of the same table")
        self.subject = subject
        if on_erased not in _ON_ERASED:
            raise ConfigurationError('on_erased= is "raise" or "null"')
        self.on_erased = on_erased
        #: Set on the type given as another's ``previous=``: only there may it bind the legacy way.
        self._as_previous = False
        if previous is not None:
            if not isinstance(previous, Encrypted) or previous.previous is not None:
                raise ConfigurationError("previous= takes one Encrypted type (not a chain)")
            if type(previous.inner) is not type(inner_type):
                raise ConfigurationError("previous= must have the same inner type")
            if previous.row_key is not None and previous.row_key != row_key:
                raise ConfigurationError(
                    "previous= may bind to the same row key or to none, not to another column"
                )
        self.previous: Encrypted | None = previous
        if previous is not None:
            previous._as_previous = True
        self._python_type, self._coerce = coercer(inner_type, cell_of=cell_of)
        self._enum_class = inner_type.enum_class if isinstance(inner_type, sa.Enum) else None
        #: Strict, without row binding, enum or previous=: opened by the shortcut of _prepare_open.
        self._strict_fixed = (
            not self.migrating and row_key is None and previous is None and self._enum_class is None
        )
        self._attached: tuple[str, str, str | None] | None = None  # table, column, schema
        self._slot = _registry.slot(vault)
        self._field: FieldCipher | None = None
        self._field_generation = -1
        #: The prepared encrypt and decrypt functions (see "the two directions" below).
        self._bind_fn: Callable[[Any], bytes | None] | None = None
        self._open_fn: Callable[[Any], Any] | None = None
        self._policy_generation = -1
        self._guarded = True
        self._restricted = True

    # -- naming and the vault -----------------------------------------------------------------

    def _attach(self, table: str, column: str, schema: str | None = None) -> None:
        self._check_binding()
        self._attached = (str(table), str(column), None if schema is None else str(schema))
        self._field = None
        self._bind_fn = self._open_fn = None  # prepared for the old binding
        if self.previous is not None:
            self.previous._attach(table, column, schema)

    def _check_binding(self) -> None:
        if self.schema_binding == "legacy" and not self._as_previous:
            raise ConfigurationError(
                'schema_binding="legacy" is only for a previous= type: values are always written '
                "with the schema bound; read the old ones through previous= and move them with "
                "vaultkit rekey (docs/operations.md)"
            )

    def binding(self) -> tuple[str | None, str, str]:
        """The schema (or ``None``), table and column bound into the associated data."""
        attached = self._attached
        table = self.table or (attached[0] if attached else None)
        column = self.column or (attached[1] if attached else None)
        if table is None or column is None:
            raise ConfigurationError(
                "this Encrypted type is not attached to a table column; give table= and column="
            )
        if self.schema_binding == "legacy":
            # Before the schema entry, the names went through "table.column" and were split at
            # the first dot: no schema, and a dot in the table name moved into the column name.
            table, column = f"{table}.{column}".split(".", 1)
            return None, table, column
        schema = self.schema if self.schema is not None else (attached[2] if attached else None)
        return schema, table, column

    @property
    def bound_name(self) -> str:
        """``table.column`` (``schema.table.column`` with a schema), for messages."""
        schema, table, column = self.binding()
        return f"{table}.{column}" if schema is None else f"{schema}.{table}.{column}"

    @property
    def python_type(self) -> type:
        return self._python_type or object

    def field(self) -> FieldCipher:
        """The vault's cipher for this column (rebuilt when the configured vault changes)."""
        slot = self._slot
        field = self._field
        if field is None or self._field_generation != slot.generation:
            self._check_binding()
            schema, table, column = self.binding()
            vault = slot.get()
            self._check_scope(vault.key_domain(self.domain))
            field = vault.field(
                self.domain,
                table=table,
                column=column,
                schema=schema,
                row_bound=self.row_key is not None,
                pad_to=self.pad_to,
            )
            self._field = field
            self._field_generation = slot.generation
        return field

    def _check_scope(self, policy: KeyDomain | None) -> None:
        """Refuse a ``subject=`` that does not match the domain's key scope."""
        scope = policy.dek_scope if policy is not None else None
        if scope == "subject" and self.subject is None:
            raise ConfigurationError(
                f"{self._name_or_unknown()}: domain {self.domain!r} keeps a key per subject; "
                'name the column holding the subject: Encrypted(..., subject="member_id")'
            )
        if self.subject is not None and scope is not None and scope != "subject":
            raise ConfigurationError(
                f"{self._name_or_unknown()} names subject {self.subject!r}, but domain "
                f"{self.domain!r} is not subject-scoped (its keys are per {scope}); declare the "
                'domain KeyDomain(..., dek_scope="subject") or drop subject='
            )

    def subject_scoped(self) -> bool:
        """Whether the configured vault keeps this column's values under per-subject keys."""
        policy = self._slot.get().key_domain(self.domain)
        self._check_scope(policy)
        return self.subject is not None

    # -- who may read it ----------------------------------------------------------------------

    def _load_policy(self) -> None:
        slot = self._slot
        vault = slot.vault
        # Without a configured vault, or for a domain it does not declare, assume the strictest.
        policy = vault.key_domain(self.domain) if vault is not None else None
        self._restricted = policy is None or policy.restricted
        self._guarded = policy is None or policy.restricted or policy.audited
        self._policy_generation = slot.generation

    def guarded(self) -> bool:
        """Whether the configured vault restricts or audits this column's domain.

        The ORM keeps the values of such columns as ciphertext in its identity map and decrypts
        them on access, under the scope of the reader.
        """
        if self._policy_generation != self._slot.generation:
            self._load_policy()
        return self._guarded

    def restricted(self) -> bool:
        """Whether reading this column's domain needs a grant."""
        if self._policy_generation != self._slot.generation:
            self._load_policy()
        return self._restricted

    def deny(self, row: wire.ContextValue | None = None) -> Any:
        """Answer a reader without the grant as the vault does: audited, sealed or raising."""
        return self.field().deny(row=row)

    def _name_or_unknown(self) -> str:
        try:
            return self.bound_name
        except ConfigurationError:
            return "an Encrypted column"

    # -- SQLAlchemy hooks ---------------------------------------------------------------------

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(storage_for(dialect))

    # -- the two directions -------------------------------------------------------------------
    #
    # One implementation each: _encrypt (any value, with or without its row key) and _decrypt.
    # What SQLAlchemy asks for (bind_processor, result_processor) and the public encrypt_value /
    # decrypt_value use the same functions, prepared once per type (_binder, _opener): for a
    # column without row binding they start with a shortcut for the common case (a str sealed
    # with the column's fixed context; a ciphertext opened with it), which hands anything else
    # to the general path. The shortcuts keep the cipher they use until the configured vault
    # changes.

    def encrypt_value(self, value: Any) -> bytes | None:
        """Encrypt one value for this column; ``None`` stays ``None`` (stored as NULL).

        Raises:
            EncodingError: the value does not fit the column; the message never quotes it.
        """
        binder = self._bind_fn
        if binder is None:
            binder = self._bind_fn = self._prepare_bind()
        return binder(value)

    def _encrypt(self, value: Any) -> bytes | None:
        """The encrypt path for any value: unwraps ``RowBound`` and ``Pending``, checks, seals."""
        try:
            return self._encrypt_value(value)
        except _ENCODING_FAILURES as exc:
            error = _encoding_error(self, exc)
        # Raised outside the except block: the original, which may hold the value, is not chained.
        raise error

    def _encrypt_value(self, value: Any) -> bytes | None:
        row = None
        subject: Any = UNKNOWN
        if type(value) is RowBound:
            row = value.row
            subject = value.subject
            value = value.value
        pending = None
        if type(value) is Pending:
            pending = value
            value = value.value
        if value is None:
            return None
        if self.row_key is not None and row is None:
            raise ConfigurationError(
                f"{self.bound_name} is bound to its row by {self.row_key!r}, but the row key is not "
                "known for this write: set it before inserting (a UUID default works; an "
                "autoincrement id does not), or write through the ORM or with the row key among the "
                "statement's parameters"
            )
        if self.subject is not None:
            if subject is UNKNOWN:
                raise ConfigurationError(
                    f"{self.bound_name} is encrypted under the key of the subject in "
                    f"{self.subject!r}, which is not known for this write: write the subject "
                    "column in the same statement (or name it in the WHERE clause of an UPDATE), "
                    "or write through the ORM"
                )
            if subject is None:
                raise ConfigurationError(
                    f"{self.bound_name}: the subject column {self.subject!r} is NULL in this "
                    "row, so the value has no subject key to be encrypted under; set it first"
                )
            subject = self._canonical_subject(subject)
        elif subject is not UNKNOWN:
            raise ConfigurationError(f"{self.bound_name} has no subject= column; pass no subject")
        if type(value) is not str or self._python_type is not str:
            value = self._coerce(value)
        field = self.field()
        if self.subject is not None:
            blob = field.encrypt(value, row=row, subject=subject)
        else:
            blob = field.encrypt(value, row=row)
        if pending is not None:
            pending.ciphertext = blob
        return blob

    def _canonical_subject(self, subject: Any) -> str | int | uuid.UUID:
        """The subject as the vault takes it: str, int or UUID (a numpy integer becomes int)."""
        kind = type(subject)
        if kind is str or kind is int or kind is uuid.UUID:
            return subject  # type: ignore[no-any-return]
        if isinstance(subject, bool):
            pass
        elif isinstance(subject, numbers.Integral):
            return int(subject)
        elif isinstance(subject, str | int | uuid.UUID):
            return subject
        raise ConfigurationError(
            f"{self.bound_name}: the subject in {self.subject!r} is a {kind.__name__}; a subject "
            "is a str, an int or a UUID"
        )

    def decrypt_value(
        self, stored: Any, *, row: wire.ContextValue | None = None, on_erased: str | None = None
    ) -> Any:
        """Decrypt one stored value of this column (with its row key when row-bound).

        ``on_erased`` overrides the column's own setting for this call: the re-keying engine
        and verify pass ``"raise"`` to count erased values apart instead of reading them as NULL.

        Raises:
            ValueErasedError: the value's key was destroyed (erasure, retention), with
                ``on_erased="raise"``; with ``on_erased="null"`` the value reads as ``None``.
            DecryptionError: any other failure, in both modes.

        .. versionchanged:: 0.3.0
            ``on_erased=``.
        """
        if on_erased is not None and on_erased not in _ON_ERASED:
            raise ConfigurationError('on_erased= is "raise" or "null"')
        mode = self.on_erased if on_erased is None else on_erased
        if row is None and self._strict_fixed and mode == self.on_erased:
            opener = self._open_fn
            if opener is None:
                opener = self._open_fn = self._prepare_open(cells=False)
            return opener(stored)
        if stored is None:
            return None
        if type(stored) is not bytes:
            if self.migrating and not isinstance(stored, bytearray | memoryview):
                box = [stored]
                del stored  # the legacy value travels in ``box`` only, emptied by _read_legacy
                return self._read_legacy(box, row)
            stored = _stored_bytes(stored, self)
        if not wire.is_vaultkit_value(stored):
            if self.migrating:
                box = [stored]
                del stored
                return self._read_legacy(box, row)
            raise DecryptionError
        try:
            value = self.field().decrypt(stored, row=row)
        except ValueErasedError:
            # The key is gone: the value is no older type's either.
            if mode == "null":
                return None
            raise
        except DecryptionError:
            previous = self.previous
            if previous is None:
                raise
            return previous.decrypt_value(
                stored, row=row if previous.row_key else None, on_erased=mode
            )
        if self._enum_class is not None and not isinstance(value, SealedValue):
            return self._enum_class[value]  # type: ignore[index]
        return value

    def use_legacy_manifest(self, admits: Callable[[bytes], bool] | None) -> None:
        """Accept in migration mode only legacy plaintext that ``admits`` recognises.

        :func:`vaultkit.rekey.load_migration` calls it with the column's legacy manifest (the
        values recorded when the migration began); ``None`` forgets it. It applies to every copy
        of this type with the same vault and binding, until another vault is configured.
        """
        key = (self.vault, *self.binding())
        if admits is None:
            _LEGACY_MANIFESTS.pop(key, None)
        else:
            _LEGACY_MANIFESTS[key] = (self._slot.generation, admits)

    def _read_legacy(self, box: list[Any], row: wire.ContextValue | None) -> Any:
        """A legacy plaintext value read in migration mode, taken out of ``box``.

        Only a value recorded in the column's legacy manifest is accepted (others raise
        :class:`DecryptionError`); then as :meth:`open_legacy`.
        """
        loaded = _LEGACY_MANIFESTS.get((self.vault, *self.binding()))
        if loaded is None or loaded[0] != self._slot.generation:
            box.clear()
            raise ConfigurationError(
                f"{self.bound_name} is in migration mode, but its legacy manifest is not loaded "
                "in this process: call vaultkit.rekey.load_migration(engine, table, vault=...) "
                "at start-up (docs/operations.md, encrypting a legacy plaintext column)"
            )
        if not loaded[1](legacy_bytes(box[0])):
            box.clear()
            raise DecryptionError(
                f"legacy plaintext in {self.bound_name} was not recorded when its migration "
                "began: refused as a possible downgrade of a ciphertext"
            )
        return self._open_legacy(box, row)

    def open_legacy(self, raw: Any, *, row: wire.ContextValue | None = None) -> Any:
        """Convert a legacy plaintext value of this column, already checked against its manifest.

        For the re-keying engine, which checks each value against its row in the legacy
        manifest itself. The grant and the audit log apply as to a decrypt
        (:meth:`vaultkit.FieldCipher.admit_plaintext`). A value that does not convert raises
        :class:`DecryptionError` naming the column, with no exception chained and no frame of
        vaultkit's holding the value.
        """
        box = [raw]
        del raw
        return self._open_legacy(box, row)

    def _open_legacy(self, box: list[Any], row: wire.ContextValue | None) -> Any:
        sealed = self.field().admit_plaintext(row=row)
        if sealed is not None:
            box.clear()
            return sealed
        value = legacy_value(box.pop(), self._python_type, self.inner)
        if value is INVALID:
            raise DecryptionError(
                f"legacy plaintext in {self.bound_name} is not a valid "
                f"{type(self.inner).__name__} value"
            )
        return value

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        return self.encrypt_value(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], bytes | None]:
        binder = self._bind_fn
        if binder is None:
            binder = self._bind_fn = self._prepare_bind()
        return binder

    def _prepare_bind(self) -> Callable[[Any], bytes | None]:
        """The encrypt function of this column: :meth:`_encrypt`, after a shortcut for str values
        of a column without row binding (one Python frame around the vault's seal)."""
        general = self._encrypt
        if self.row_key is not None or self.subject is not None:
            return general
        # The per-value path of a column without row binding: one Python frame around the
        # vault's seal, with the cipher looked up again only when the configured vault changes.
        slot, pad, python_type, coerce = (
            self._slot,
            self.pad_to,
            self._python_type,
            self._coerce,
        )
        plain_str = python_type is str and pad is None
        generation = -1
        seal: Callable[[bytes], bytes] | None = None

        def process(value: Any) -> bytes | None:
            nonlocal generation, seal
            kind = type(value)
            if value is None or kind is RowBound or kind is Pending:
                return general(value)
            if generation != slot.generation or seal is None:
                seal = self.field().sealer()
                generation = slot.generation
            try:
                if kind is str and plain_str:
                    try:  # the common case, encoded here without a call (see vaultkit._codec)
                        return seal(STR_TAG + value.encode("utf-8"))
                    except UnicodeEncodeError:
                        pass  # a lone surrogate: encode_value raises a clean error below
                elif python_type is not str or kind is not str:
                    value = coerce(value)  # as _encrypt_value does
                return seal(encode_value(value, pad_to=pad))
            except _ENCODING_FAILURES as exc:
                error = _encoding_error(self, exc)
            raise error

        return process

    def is_current(self, stored: bytes, *, row: wire.ContextValue | None = None) -> bool:
        """Whether ``stored`` (a ciphertext) opens under this type itself, not ``previous``."""
        try:
            self.field().decrypt(stored, row=row)
        except DecryptionError:
            return False
        return True

    def _cell(self, value: Any) -> EncryptedCell:
        if not self.migrating or isinstance(value, bytes | bytearray | memoryview):
            value = _stored_bytes(value, self)
        return EncryptedCell(self, value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is not None:
            if self.row_key is not None:
                if not self.migrating or wire.is_vaultkit_value(_as_bytes_or_none(value)):
                    return self._cell(value)
            elif orm_cells.get() and self.guarded():
                return self._cell(value)
        if not self.migrating:
            return self.decrypt_value(value)
        # A legacy plaintext that fails to convert must not stay in this frame's locals (error
        # reporters capture them): it travels on to decrypt_value only.
        box = [value]
        del value
        return self.decrypt_value(box.pop())

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any]:
        if self.migrating:

            def legacy(value: Any) -> Any:
                box = [value]
                del value  # as in process_result_value
                return self.process_result_value(box.pop(), dialect)

            return _marking_erased(legacy)
        if not self._strict_fixed:
            return _marking_erased(lambda value: self.process_result_value(value, dialect))
        return self._prepare_open(cells=True)

    def _prepare_open(self, *, cells: bool) -> Callable[[Any], Any]:
        """The decrypt function of a strict column without row binding, enum or ``previous=``:
        the vault's open with the column's fixed context, prepared once. With ``cells`` (the
        result processor), an ORM load of a restricted or audited domain gets an
        :class:`EncryptedCell` instead (see :mod:`vaultkit.sqla._hooks`)."""
        # Strict mode: a value without the vaultkit header fails the vault's own header check,
        # so no separate test for the magic is needed on this path.
        slot = self._slot
        generation = -1
        open_: Callable[[bytes], Any] | None = None
        guarded = True
        orm = orm_cells

        def process(value: Any) -> Any:
            nonlocal generation, open_, guarded
            if value is None:
                return None
            if generation != slot.generation or open_ is None:
                open_ = self.field().opener()
                guarded = cells and self.guarded()
                generation = slot.generation
            if type(value) is not bytes:
                value = _stored_bytes(value, self)
            if guarded and orm.get():
                return EncryptedCell(self, value)
            try:
                return open_(value)
            except ValueErasedError as exc:
                if not loading_candidates.get():
                    raise
                return ErasedCandidate(exc)  # an exact lookup's candidate: dropped, or raised

        if self.on_erased != "null":
            return process

        def erased_as_null(value: Any) -> Any:
            try:
                return process(value)
            except ValueErasedError:
                return None

        return erased_as_null

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        raise QueryError(f"{self.bound_name}: ciphertext is never rendered into SQL text")

    def copy(self, **kw: Any) -> Encrypted:
        # SQLAlchemy copies a TypeDecorator per dialect; the copy keeps the column it belongs to.
        copied = Encrypted(
            self.inner,
            domain=self.domain,
            row_key=self.row_key,
            migrating=self.migrating,
            vault=self.vault,
            pad_to=self.pad_to,
            table=self.table,
            column=self.column,
            previous=self.previous.copy() if self.previous is not None else None,
            schema=self.schema,
            schema_binding=self.schema_binding,
            subject=self.subject,
            on_erased=self.on_erased,
        )
        copied._as_previous = self._as_previous
        copied._attached = self._attached
        if copied.previous is not None and self.previous is not None:
            copied.previous._attached = self.previous._attached
        return copied

    def __repr__(self) -> str:
        # Renders as a constructor call, for Alembic autogenerate (``sa`` is sqlalchemy there).
        inner = repr(self.inner)
        if type(self.inner).__module__.startswith("sqlalchemy."):
            inner = "sa." + inner
        args = [inner, f"domain={self.domain!r}"]
        for name in (
            "row_key",
            "migrating",
            "vault",
            "pad_to",
            "table",
            "column",
            "previous",
            "schema",
            "schema_binding",
            "subject",
            "on_erased",
        ):
            value = getattr(self, name)
            default = {
                "migrating": False,
                "vault": _registry.DEFAULT,
                "schema_binding": "schema",
                "on_erased": "raise",
            }.get(name)
            if value is not None and value != default:
                args.append(f"{name}={value!r}")
        return f"Encrypted({', '.join(args)})"

    class comparator_factory(TypeDecorator.Comparator[Any]):  # noqa: N801 - SQLAlchemy's name
        """Refuses every operator but IS NULL / IS NOT NULL."""

        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if op in _NULL_OPERATORS:
                return super().operate(op, *other, **kwargs)
            if op is operators.eq and other and _column_of(other[0]) is not None:
                # Column == column is how SQLAlchemy itself looks columns up in lists and dicts
                # (``c in returning``, ``mapper._columntoproperty[c]``): it only asks the
                # result's truth, which compares the two columns' identities. The comparison
                # is built for that, and refused if it is ever compiled into SQL.
                pair = super().operate(op, _column_of(other[0]), **kwargs)
                pair.__class__ = _RefusedColumnPair
                return pair
            raise _query_error(
                _expr_name(self.expr),
                op,
                "Look values up through a BlindIndex column instead (for example "
                "Member.email_index == value).",
            )

        def reverse_operate(self, op: Any, other: Any, **kwargs: Any) -> Any:
            return self.operate(op, other, **kwargs)


def _column_of(value: Any) -> sa.ColumnClause[Any] | None:
    """The column ``value`` is (a mapped attribute gives its column), or ``None`` for a value."""
    clause = value.__clause_element__() if hasattr(value, "__clause_element__") else value
    return clause if isinstance(clause, sa.ColumnClause) else None


class _RefusedColumnPair(sa.BinaryExpression[bool]):
    """``encrypted_column == column``: true only for the same column, refused as SQL."""

    inherit_cache = True

    def _compiler_dispatch(self, visitor: Any, **kw: Any) -> str:
        raise _query_error(
            _expr_name(self.left),
            self.operator,
            "Two ciphertexts of the same plaintext differ; compare BlindIndex columns instead.",
        )


def _uncomparable(index: BlindIndexType) -> bool:
    """Whether equal digests of two rows do not mean equal values, or unequal digests unequal
    ones: a truncated (or transformed) index, or a partitioned one."""
    return bool(index.lossy or index.partitions > 1)


class _RefusedDigestPair(sa.BinaryExpression[bool]):
    """``index == index`` of a lossy or partitioned index: refused as SQL (a join on it would
    pair rows that only share a digest, or miss rows whose equal values sit in other
    partitions, and no check can make a join exact)."""

    inherit_cache = True

    def _compiler_dispatch(self, visitor: Any, **kw: Any) -> str:
        raise _query_error(
            _expr_name(self.left),
            self.operator,
            "The digests of a truncated, transformed or partitioned index are not comparable "
            "between rows (equal digests may be different values; one value has a digest per "
            "partition). Join on a full-width BlindIndex without partitions, or compare the "
            "decrypted values.",
        )


def _as_bytes_or_none(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return b""


def _expr_name(expr: Any) -> str:
    table = getattr(getattr(expr, "table", None), "name", None)
    name = getattr(expr, "name", None) or getattr(expr, "key", "this column")
    return f"{table}.{name}" if table else str(name)


#: The first byte of the HMAC input of a value written to partition 1 or above of a partitioned
#: index (then the partition, then the encoded value). No encoded value starts with it (see
#: vaultkit._codec), so partition 0 keeps the unpartitioned input and an index may grow from one
#: partition to several without rewriting a digest.
_PARTITION_MARK: Final = b"\xff"
MAX_PARTITIONS: Final = 255


class Parts:
    """The source values of one row for a compound index, on their way into its column.

    The statement hook passes one to the index column when a write names the index's sources;
    the ORM hook, with the values the object holds, when a flush changes only some of them.
    """

    __slots__ = ("values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    def __repr__(self) -> str:
        return f"Parts(<values of {', '.join(self.values)}>)"


class _Probe:
    """A value to look up in a blind index under one key version and one partition.

    ``transformed``: ``value`` already went through the index's transform (a prefix cut, a year
    taken), so the digest encodes it as it is.
    """

    __slots__ = ("index", "partition", "transformed", "value", "version")

    def __init__(
        self,
        index: BlindIndexType,
        value: Any,
        version: int,
        partition: int = 0,
        *,
        transformed: bool = False,
    ) -> None:
        self.index = index
        self.value = value
        self.version = version
        self.partition = partition
        self.transformed = transformed

    def digest(self) -> bytes | None:
        if self.transformed:
            return self.index.digest_transformed(self.value, self.version, self.partition)
        return self.index.digest(self.value, self.version, self.partition)

    def __eq__(self, other: object) -> bool:
        # The ORM's synchronize_session="evaluate" runs a WHERE clause in Python against the
        # loaded objects: there, a probe meets the digest an object holds.
        if isinstance(other, bytes | bytearray | memoryview):
            return self.digest() == bytes(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"<probe of {self.index.label()} v{self.version}>"

    __hash__ = object.__hash__


def check_bits(bits: int | None, low: int = 4) -> None:
    """Refuse a digest width outside ``low`` to 256 bits."""
    if bits is not None and not (
        isinstance(bits, int) and not isinstance(bits, bool) and low <= bits <= 256
    ):
        raise ConfigurationError(f"bits must be an integer from {low} to 256")


def check_partitions(partitions: int) -> None:
    """Refuse a partition count outside 1 to :data:`MAX_PARTITIONS`."""
    if not (
        isinstance(partitions, int)
        and not isinstance(partitions, bool)
        and 1 <= partitions <= MAX_PARTITIONS
    ):
        raise ConfigurationError(f"partitions must be an integer from 1 to {MAX_PARTITIONS}")


class BlindIndexType(TypeDecorator[bytes]):
    """The column type of a blind index: stores ``version || HMAC-SHA256(key, value)``.

    Writing a plaintext to this column stores its keyed digest; comparing the column with a
    plaintext compares digests, so ``Member.email_index == "a@b.be"`` is one indexed lookup. The
    key is per domain, table, source column and version (:meth:`vaultkit.Vault.blind_index_key`).

    Args:
        source: name of the encrypted column whose values this index keeps.
        domain: key domain; by default the source column's.
        version: key version written now (1 to 255).
        query_versions: versions a lookup matches, during a key rotation (default: ``version``).
        bits: keep this many leading bits of the digest (4 to 256; default 256), stored in
            ``ceil(bits / 8)`` bytes with the unused low bits of the last one zero. Fewer bits mean
            more rows sharing a digest (less to learn about which rows share a value); a lookup
            then decrypts its candidates and drops the false positives (see
            :mod:`vaultkit.sqla._exact`).
        vault: name of the configured vault.
        normalize: applied to values written and looked up alike.
        partitions: spread each value over this many digests (1 to 255; default 1): a write picks
            one at random, a lookup asks for all of them (``IN``, one round trip). For skewed values
            (a common surname) whose equal digests would stand out. Partitions may only grow:
            partition 0 is the unpartitioned digest, and a lookup asks for partitions
            ``0 .. partitions - 1``.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.4.0
        ``bits`` from 4 to 256, any integer; truncated lookups are exact; ``partitions=``.
    """

    impl = RawBinary
    cache_ok = True

    #: What a label of this index's key starts with (see :meth:`key_column`); "" for a blind
    #: index, whose key is named by its source column.
    kind: str = ""
    #: Whether the index is written from several sources, given as :class:`Parts`.
    takes_parts: bool = False

    def __init__(
        self,
        source: str,
        # Not keyword-only: see Encrypted.__init__ (all parameters belong in the cache key).
        domain: str | None = None,
        version: int = 1,
        query_versions: Sequence[int] | None = None,
        bits: int | None = None,
        vault: str = _registry.DEFAULT,
        normalize: Callable[[Any], Any] | None = None,
        partitions: int = 1,
    ) -> None:
        super().__init__()
        self._setup(source, domain, version, query_versions, bits, vault, partitions)
        self.normalize = normalize

    def _setup(
        self,
        source: str,
        domain: str | None,
        version: int,
        query_versions: Sequence[int] | None,
        bits: int | None,
        vault: str,
        partitions: int,
    ) -> None:
        if not isinstance(version, int) or not 1 <= version <= 255:
            raise ConfigurationError("a blind-index version is an integer from 1 to 255")
        versions = tuple(query_versions) if query_versions is not None else (version,)
        if version not in versions or not all(
            isinstance(v, int) and 1 <= v <= 255 for v in versions
        ):
            raise ConfigurationError("query_versions must be versions 1 to 255 and include version")
        check_bits(bits)
        check_partitions(partitions)
        self.source = source
        self.domain = check_domain_name(domain) if domain is not None else None
        self.version = version
        self.query_versions = versions
        self.bits = bits
        self.vault = vault
        self.partitions = partitions
        self._size = ((bits or 256) + 7) // 8
        spare = (8 - (bits or 256) % 8) % 8
        self._last_mask = (0xFF << spare) & 0xFF
        self._attached: tuple[str, str] | None = None  # table name, key label
        self._name: str | None = None  # the index column's own name
        self._table: weakref.ReferenceType[sa.Table] | None = None
        self._slot = _registry.slot(vault)
        self._keys: dict[int, BlindIndexKey] = {}
        self._generation = -1

    # -- what it indexes ----------------------------------------------------------------------

    @property
    def sources(self) -> tuple[str, ...]:
        """The keys of the source columns whose values this index is computed from."""
        return (self.source,)

    @property
    def lossy(self) -> bool:
        """Whether rows with different values may share a digest, so that a lookup is checked.

        A full-width blind index is taken as exact (a collision of 256-bit HMACs does not happen).
        """
        return self.bits is not None and self.bits < 256

    def label(self) -> str:
        """The index, for messages: ``table.column`` of the index (never a value)."""
        table = self._attached[0] if self._attached else "?"
        return f"{table}.{self._name or 'blind index of ' + repr(self.source)}"

    def key_column(self) -> str:
        """The column name under which the index's key is kept (with the table and version).

        A blind index's key is named by its source column; other index types use
        ``<kind>:<index column>``, which no other index's label can be (see
        :meth:`_check_label`).
        """
        return self.source

    def _attach(self, table: sa.Table, name: str | None = None) -> None:
        self._name = name
        self._table = weakref.ref(table)
        self._attached = (table.name, self.key_column())
        self._keys = {}

    def _domain(self) -> str:
        if self.domain is not None:
            return self.domain
        table = self._table() if self._table is not None else None
        domains = set()
        for key in self.sources:
            source = table.columns.get(key) if table is not None else None
            if source is None or not isinstance(source.type, Encrypted):
                name = self._attached[0] if self._attached else "?"
                raise ConfigurationError(
                    f"index on {name}: its source column {key!r} must be an Encrypted column of "
                    "the same table, or give domain="
                )
            domains.add(source.type.domain)
        if len(domains) != 1:
            raise ConfigurationError(
                f"index {self.label()}: its source columns are of several domains; name the "
                "domain of its key with domain="
            )
        return domains.pop()

    @property
    def stored_length(self) -> int:
        """Bytes stored per value: a version byte and the kept digest."""
        return 1 + self._size

    @property
    def length(self) -> int:
        """Bytes stored per value (:attr:`stored_length`)."""
        return self.stored_length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(index_storage_for(dialect, self.stored_length))

    def _key(self, version: int) -> BlindIndexKey:
        slot = self._slot
        if self._generation != slot.generation:
            self._keys = {}
            self._generation = slot.generation
        key = self._keys.get(version)
        if key is None:
            if self._attached is None:
                raise ConfigurationError(
                    f"blind index of {self.source!r} is not attached to a table"
                )
            table, column = self._attached
            key = slot.get().blind_index_key(
                self._domain(), table=table, column=column, version=version
            )
            self._keys[version] = key
        return key

    # -- digests ------------------------------------------------------------------------------

    def transform(self, value: Any) -> Any:
        """The value written (a source value, or a mapping of them) as the index digests it:
        ``None`` when it has no digest (NULL)."""
        if value is None:
            return None
        return self.normalize(value) if self.normalize is not None else value

    def encode(self, transformed: Any) -> bytes:
        """The HMAC input of a transformed value (without the partition)."""
        return encode_value(transformed)

    def digest(
        self, value: Any, version: int | None = None, partition: int | None = None
    ) -> bytes | None:
        """Return the stored form of ``value`` under ``version`` (default: the current one), in
        ``partition`` (default: one picked at random among the index's partitions)."""
        return self.digest_transformed(self.transform(_unwrap(value)), version, partition)

    def digest_transformed(
        self, transformed: Any, version: int | None = None, partition: int | None = None
    ) -> bytes | None:
        """As :meth:`digest`, for a value that already went through :meth:`transform`."""
        if transformed is None:
            return None
        version = self.version if version is None else version
        if partition is None:
            partition = secrets.randbelow(self.partitions) if self.partitions > 1 else 0
        data = self.encode(transformed)
        if partition:
            data = _PARTITION_MARK + bytes((partition,)) + data
        mac = self._key(version).digest(data)
        kept = mac[: self._size]
        if self._last_mask != 0xFF:
            kept = kept[:-1] + bytes((kept[-1] & self._last_mask,))
        return bytes((version,)) + kept

    def probes(self, value: Any, *, transformed: bool = False) -> list[_Probe]:
        """The digests a lookup of ``value`` asks for: every query version, every partition."""
        return [
            _Probe(self, value, v, p, transformed=transformed)
            for v in self.query_versions
            for p in range(self.partitions)
        ]

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        try:
            if type(value) is _Probe:
                return value.digest()
            return self.digest(value)
        except _ENCODING_FAILURES as exc:
            error = _encoding_error(self, exc)
        raise error

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], bytes | None]:
        return lambda value: self.process_bind_param(value, dialect)

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None or type(value) is bytes:
            return value
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        raise DecryptionError(
            f"blind index of {self.source!r}: the database returned a {type(value).__name__} "
            "where a binary digest was expected"
        )

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        raise QueryError("blind-index digests are never rendered into SQL text")

    def _copy_attachment(self, copied: BlindIndexType) -> BlindIndexType:
        copied._attached = self._attached
        copied._table = self._table
        copied._name = self._name
        return copied

    def copy(self, **kw: Any) -> BlindIndexType:
        copied = BlindIndexType(self.source, normalize=self.normalize, **self._copy_options())
        return self._copy_attachment(copied)

    def _copy_options(self) -> dict[str, Any]:
        """The constructor arguments every index kind shares, as this index holds them (for
        :meth:`copy` of this type and of the search index types)."""
        return {
            "domain": self.domain,
            "version": self.version,
            "query_versions": self.query_versions,
            "bits": self.bits,
            "vault": self.vault,
            "partitions": self.partitions,
        }

    def _repr_options(self) -> list[str]:
        args = []
        for name, default in (
            ("domain", None),
            ("version", 1),
            ("bits", None),
            ("vault", _registry.DEFAULT),
            ("partitions", 1),
        ):
            value = getattr(self, name)
            if value != default:
                args.append(f"{name}={value!r}")
        if self.query_versions != (self.version,):
            args.append(f"query_versions={self.query_versions!r}")
        return args

    def __repr__(self) -> str:
        return f"BlindIndexType({', '.join([repr(self.source), *self._repr_options()])})"

    def equality_check(self, expr: Any, values: Sequence[Any]) -> Any:
        """The :class:`~vaultkit.sqla._exact.ExactCheck` of ``expr IN values`` (a lossy index)."""
        return _EqualCheck(self, _table_of(expr), values)

    class comparator_factory(TypeDecorator.Comparator[bytes]):  # noqa: N801 - SQLAlchemy's name
        """``==`` and ``in_`` compare digests of plaintexts; other operators are refused."""

        def _index(self) -> BlindIndexType:
            index_type = self.expr.type
            if not isinstance(index_type, BlindIndexType):
                raise TypeError("not a blind-index column")
            return index_type

        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if op in _NULL_OPERATORS:
                return super().operate(op, *other, **kwargs)
            index = self._index()
            if op is operators.eq:
                column = _column_of(other[0])
                if column is not None and isinstance(column.type, BlindIndexType):
                    # Digests against digests: another blind index (finding duplicates with a
                    # self-join), or SQLAlchemy looking the column up in its own dicts and lists.
                    pair: Any = super().operate(op, column, **kwargs)
                    if _uncomparable(index) or _uncomparable(column.type):
                        pair.__class__ = _RefusedDigestPair  # refused once compiled into SQL
                    return pair
                values = [other[0]]
            elif op is operators.in_op:
                values = list(other[0])
            else:
                raise _query_error(
                    _expr_name(self.expr), op, "A blind index answers equality (== and in_) only."
                )
            probes = [p for value in values for p in index.probes(value)]
            if len(probes) == 1:
                predicate = super().operate(operators.eq, probes[0], **kwargs)
            else:
                predicate = super().operate(operators.in_op, probes, **kwargs)
            if not index.lossy:
                return predicate
            return checked(cast(Any, predicate), index.equality_check(self.expr, values))

        def reverse_operate(self, op: Any, other: Any, **kwargs: Any) -> Any:
            return self.operate(op, other, **kwargs)


def _unwrap(value: Any) -> Any:
    """A value written, out of the wrappers of the statement hooks."""
    if type(value) is RowBound:
        value = value.value
    if type(value) is Pending:
        value = value.value
    return value


def _table_of(expr: Any) -> Any:
    """The table (or alias) of an index column expression, for its exact check."""
    table = getattr(expr, "table", None)
    if table is None:
        raise QueryError(f"{_expr_name(expr)}: a lookup needs the index column of a table")
    return table


class _EqualCheck(ExactCheck):
    """``index == value`` / ``index.in_(values)`` on a truncated blind index: the decrypted source,
    normalised, is one of the values looked up (normalised)."""

    __slots__ = ("_index", "_wanted")

    def __init__(self, index: BlindIndexType, table: Any, values: Sequence[Any]) -> None:
        super().__init__(table, (index.source,), index.label())
        self._index = index
        self._wanted = [index.transform(v) for v in values]

    def matches(self, values: Mapping[str, Any]) -> bool:
        found = self._index.transform(values[self._index.source])
        return found is not None and any(found == w for w in self._wanted if w is not None)
