"""The data-key store as SQL tables, through SQLAlchemy Core.

Three tables, named with a configurable prefix (``vaultkit_`` by default):

``vaultkit_data_keys``
    one row per DEK: ``dek_id`` (32 hex digits, primary key), ``domain``, ``purpose``, ``kek_id``,
    ``kek_version``, ``wrapped`` (binary), ``state``, ``created_at`` (UTC), ``subject`` (a subject
    reference, never a member id), ``encryptions``, ``name`` (of a named key, such as a blind-index
    key), and since layout version 2 ``scope``, ``not_after``, ``destroy_at``, ``destroyed_at``,
    ``destroy_reason``; indexed on ``(domain, state)``, ``(domain, subject)`` and ``destroy_at``.
``vaultkit_subjects``
    one row per (domain, subject reference): the relationship end, the write fence, the last
    erasure (layout version 2).
``vaultkit_meta``
    name/value pairs; ``key_store_schema`` holds the layout version. A store whose version is newer
    than this release's :data:`SCHEMA_VERSION` is refused, never misread or written to; a version 1
    store is upgraded in place on open (new nullable columns and indexes, the subjects table; safe
    when several processes open it at once), unless ``create=False``.

The tables are created on first use unless ``create=False``. Types are portable: SQLite (BLOB),
PostgreSQL (BYTEA) and MariaDB/MySQL (BLOB) all work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import weakref
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, overload

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from vaultkit._offload import sync_engine
from vaultkit.errors import KeyStoreError
from vaultkit.store._base import (
    DATA_PURPOSE,
    SCHEMA_VERSION,
    WRAPPING_KEK_ID,
    WRAPPING_PURPOSE,
    DataKeyRecord,
    DekState,
    KeyStore,
    KeySummary,
    SubjectRecord,
    _epoch,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["SQLKeyStore", "open_store"]

log = logging.getLogger("vaultkit")

_SCHEMA_KEY = "key_store_schema"


def _v2_columns() -> list[sa.Column[Any]]:
    """The columns layout version 2 added to the data-key table (all nullable)."""
    return [
        sa.Column("scope", sa.String(16), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("destroy_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("destroy_reason", sa.String(32), nullable=True),
    ]


_V2_COLUMNS: Final = tuple(c.name for c in _v2_columns())
_STATES_CHUNK: Final = 500  # DEK ids per query of SQLKeyStore.states


def _dispose_after_fork(ref: weakref.ReferenceType[SQLKeyStore]) -> None:
    store = ref()
    if store is not None:
        # Connections inherited from the parent must not be used by the child (SQLAlchemy's
        # "Using Connection Pools with Multiprocessing" recipe).
        store.engine.dispose(close=False)


class SQLKeyStore:
    """Key store in an SQL database.

    Args:
        engine: an SQLAlchemy :class:`~sqlalchemy.engine.Engine`, or a database URL. An async
            URL or ``AsyncEngine`` (or its ``sync_engine``) gets an engine of the store's own on
            the same database with the driver's synchronous twin (``asyncpg`` and
            ``psycopg_async``: ``psycopg``; ``aiosqlite``: ``pysqlite``; docs/sqlalchemy.md).
        table_prefix: prefix of the two table names.
        schema: database schema (PostgreSQL) holding the tables.
        create: create missing tables on first use.

    Raises:
        KeyStoreError: the database cannot be reached, or holds a newer key-store layout.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        engine: Engine | AsyncEngine | str,
        *,
        table_prefix: str = "vaultkit_",
        schema: str | None = None,
        create: bool = True,
    ) -> None:
        # An async URL or engine gets a synchronous engine of the key store's own (_offload).
        made = sync_engine(engine, what="key-store")
        if made is None:
            raise TypeError(
                f"engine must be an SQLAlchemy Engine or a URL, not {type(engine).__name__}"
            )
        engine, self._owns_engine = made
        self.engine = engine
        self._metadata = sa.MetaData(schema=schema)
        self.keys = sa.Table(
            f"{table_prefix}data_keys",
            self._metadata,
            sa.Column("dek_id", sa.String(32), primary_key=True),
            sa.Column("domain", sa.String(64), nullable=False),
            sa.Column("purpose", sa.String(16), nullable=False),
            sa.Column("kek_id", sa.String(255), nullable=False),
            sa.Column("kek_version", sa.Integer, nullable=False),
            sa.Column("wrapped", sa.LargeBinary, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("subject", sa.String(255), nullable=True),
            sa.Column("encryptions", sa.BigInteger, nullable=False, default=0),
            sa.Column("name", sa.String(255), nullable=True),
            # Layout version 2 (0.3.0): key scope and retention. Added to a version 1 table in place.
            *_v2_columns(),
            sa.Index(f"ix_{table_prefix}data_keys_domain_state", "domain", "state"),
            sa.Index(f"ix_{table_prefix}data_keys_domain_subject", "domain", "subject"),
            sa.Index(f"ix_{table_prefix}data_keys_destroy_at", "destroy_at"),
        )
        self.subjects = sa.Table(
            f"{table_prefix}subjects",
            self._metadata,
            sa.Column("domain", sa.String(64), primary_key=True),
            sa.Column("subject_ref", sa.String(64), primary_key=True),
            sa.Column("relationship_end", sa.DateTime(timezone=True), nullable=True),
            sa.Column("fenced_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("request_id", sa.String(255), nullable=True),
        )
        self.meta = sa.Table(
            f"{table_prefix}meta",
            self._metadata,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(255), nullable=False),
        )
        try:
            self._open(create=create)
        except BaseException:
            # Do not leave the connections of an engine we made behind a refused store.
            if self._owns_engine:
                engine.dispose()
            raise
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                after_in_child=functools.partial(_dispose_after_fork, weakref.ref(self))
            )

    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _fail(self, action: str, exc: SQLAlchemyError) -> KeyStoreError:
        # The driver's message may quote statement parameters (wrapped keys); keep only its class.
        return KeyStoreError(
            f"key store at {self._where()} failed to {action}: {type(exc).__name__}"
        )

    def _open(self, *, create: bool) -> None:
        try:
            inspector = sa.inspect(self.engine)
            have_meta = inspector.has_table(self.meta.name, schema=self.meta.schema)
            have_keys = inspector.has_table(self.keys.name, schema=self.keys.schema)
        except SQLAlchemyError as exc:
            raise self._fail("open", exc) from None
        if not (have_meta and have_keys):
            if not create:
                raise KeyStoreError(
                    f"key-store tables are missing at {self._where()} (create=False)"
                )
            self._create_tables()
        version = self._check_version()
        if version < SCHEMA_VERSION:
            if not create:
                raise KeyStoreError(
                    f"key store at {self._where()} has layout version {version}; this release "
                    f"uses version {SCHEMA_VERSION}. Open it once with create=True to upgrade it "
                    "in place (new nullable columns, a new subjects table), or run the upgrade "
                    "with your migration tool"
                )
            self._upgrade(version)

    def _upgrade(self, version: int) -> None:
        """Upgrade a layout version 1 store to version 2, in place; safe to race with another
        process doing the same (each step tolerates the other's having done it)."""
        keys = self.keys
        preparer = self.engine.dialect.identifier_preparer
        table = preparer.format_table(keys)
        for column in keys.columns:
            if column.name not in _V2_COLUMNS or column.name in self._columns():
                continue
            ddl = (
                f"ALTER TABLE {table} ADD COLUMN {preparer.format_column(column)} "
                f"{column.type.compile(dialect=self.engine.dialect)} NULL"
            )
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.text(ddl))
            except SQLAlchemyError as exc:
                if column.name not in self._columns():  # not another process's doing
                    raise self._fail("upgrade its layout", exc) from None
        for index in keys.indexes:
            if index.name in self._indexes():
                continue
            try:
                index.create(self.engine)
            except SQLAlchemyError as exc:
                if index.name not in self._indexes():
                    raise self._fail("upgrade its layout", exc) from None
        try:
            self.subjects.create(self.engine, checkfirst=True)
        except SQLAlchemyError as exc:
            try:
                exists = sa.inspect(self.engine).has_table(
                    self.subjects.name, schema=self.subjects.schema
                )
            except SQLAlchemyError:
                exists = False
            if not exists:
                raise self._fail("upgrade its layout", exc) from None
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    self.meta.update()
                    .where(self.meta.c.name == _SCHEMA_KEY, self.meta.c.value == str(version))
                    .values(value=str(SCHEMA_VERSION))
                )
        except SQLAlchemyError as exc:
            raise self._fail("record its layout version", exc) from None
        log.info(
            "upgraded the key store at %s from layout version %d to %d",
            self._where(),
            version,
            SCHEMA_VERSION,
        )

    def _columns(self) -> set[str]:
        try:
            inspector = sa.inspect(self.engine)
            return {c["name"] for c in inspector.get_columns(self.keys.name, self.keys.schema)}
        except SQLAlchemyError as exc:
            raise self._fail("read its layout", exc) from None

    def _indexes(self) -> set[str | None]:
        try:
            inspector = sa.inspect(self.engine)
            return {i["name"] for i in inspector.get_indexes(self.keys.name, self.keys.schema)}
        except SQLAlchemyError as exc:
            raise self._fail("read its layout", exc) from None

    def _create_tables(self) -> None:
        try:
            self._metadata.create_all(self.engine, checkfirst=True)
        except SQLAlchemyError:
            # Another process may have created the tables between our check and our CREATE.
            pass
        try:
            with self.engine.begin() as conn:
                conn.execute(self.meta.insert().values(name=_SCHEMA_KEY, value=str(SCHEMA_VERSION)))
        except IntegrityError:
            pass
        except SQLAlchemyError as exc:
            raise self._fail("create its tables", exc) from None

    def _check_version(self) -> int:
        try:
            with self.engine.connect() as conn:
                value = conn.execute(
                    sa.select(self.meta.c.value).where(self.meta.c.name == _SCHEMA_KEY)
                ).scalar_one_or_none()
        except SQLAlchemyError as exc:
            raise self._fail("read its schema version", exc) from None
        try:
            version = int(value) if value is not None else None
        except ValueError:
            version = None
        if version is None:
            raise KeyStoreError(f"key store at {self._where()} has no readable schema version")
        if version > SCHEMA_VERSION:
            raise KeyStoreError(
                f"key store at {self._where()} has schema version {version}, newer than the "
                f"version {SCHEMA_VERSION} this release of vaultkit reads; upgrade vaultkit"
            )
        return version

    @staticmethod
    def _to_record(row: Any) -> DataKeyRecord:
        created = _utc(row.created_at)
        try:
            state = DekState(row.state)
        except ValueError:
            raise KeyStoreError(f"DEK {row.dek_id} has unknown state {row.state!r}") from None
        return DataKeyRecord(
            dek_id=bytes.fromhex(row.dek_id),
            domain=row.domain,
            purpose=row.purpose,
            kek_id=row.kek_id,
            kek_version=row.kek_version,
            wrapped=bytes(row.wrapped),
            state=state,
            created_at=created,
            subject=row.subject,
            encryptions=row.encryptions,
            name=row.name,
            scope=row.scope,
            not_after=_utc(row.not_after),
            destroy_at=_utc(row.destroy_at),
            destroyed_at=_utc(row.destroyed_at),
            destroy_reason=row.destroy_reason,
        )

    def insert(self, record: DataKeyRecord) -> None:
        values = _row_values(record)
        try:
            with self.engine.begin() as conn:
                conn.execute(self.keys.insert().values(**values))
        except SQLAlchemyError as exc:
            raise self._fail(f"store DEK {record.dek_id.hex()}", exc) from None

    def get(self, dek_id: bytes) -> DataKeyRecord | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(self.keys).where(self.keys.c.dek_id == dek_id.hex())
                ).first()
        except SQLAlchemyError as exc:
            raise self._fail(f"read DEK {dek_id.hex()}", exc) from None
        return None if row is None else self._to_record(row)

    def get_many(self, dek_ids: Collection[bytes]) -> dict[bytes, DataKeyRecord]:
        """The rows of ``dek_ids`` this store has, in one query per 500 ids."""
        hexes = [dek_id.hex() for dek_id in dek_ids]
        found: dict[bytes, DataKeyRecord] = {}
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(hexes), _STATES_CHUNK):
                    chunk = hexes[start : start + _STATES_CHUNK]
                    for row in conn.execute(
                        sa.select(self.keys).where(self.keys.c.dek_id.in_(chunk))
                    ).all():
                        record = self._to_record(row)
                        found[record.dek_id] = record
        except SQLAlchemyError as exc:
            raise self._fail("read DEKs", exc) from None
        return found

    def states(self, dek_ids: Collection[bytes]) -> dict[bytes, DekState]:
        """The state of each of ``dek_ids`` this store has, in one query per 500 ids."""
        hexes = [dek_id.hex() for dek_id in dek_ids]
        found: dict[bytes, DekState] = {}
        query = sa.select(self.keys.c.dek_id, self.keys.c.state)
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(hexes), _STATES_CHUNK):
                    chunk = hexes[start : start + _STATES_CHUNK]
                    for dek_id, state in conn.execute(
                        query.where(self.keys.c.dek_id.in_(chunk))
                    ).all():
                        with contextlib.suppress(ValueError):  # unknown state: not readable
                            found[bytes.fromhex(dek_id)] = DekState(state)
        except SQLAlchemyError as exc:
            raise self._fail("read DEK states", exc) from None
        return found

    def key_deadlines(
        self, dek_ids: Collection[bytes]
    ) -> dict[bytes, tuple[DekState, dt.datetime | None]]:
        """The state and ``destroy_at`` of each of ``dek_ids``, in one query per 500 ids."""
        hexes = [dek_id.hex() for dek_id in dek_ids]
        found: dict[bytes, tuple[DekState, dt.datetime | None]] = {}
        keys = self.keys
        query = sa.select(keys.c.dek_id, keys.c.state, keys.c.destroy_at)
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(hexes), _STATES_CHUNK):
                    chunk = hexes[start : start + _STATES_CHUNK]
                    for dek_id, state, destroy_at in conn.execute(
                        query.where(keys.c.dek_id.in_(chunk))
                    ).all():
                        with contextlib.suppress(ValueError):  # unknown state: not readable
                            found[bytes.fromhex(dek_id)] = (DekState(state), _utc(destroy_at))
        except SQLAlchemyError as exc:
            raise self._fail("read DEK deadlines", exc) from None
        return found

    def records(
        self, *, domain: str | None = None, state: DekState | None = None
    ) -> Iterator[DataKeyRecord]:
        query = sa.select(self.keys).order_by(self.keys.c.created_at, self.keys.c.dek_id)
        if domain is not None:
            query = query.where(self.keys.c.domain == domain)
        if state is not None:
            query = query.where(self.keys.c.state == DekState(state).value)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise self._fail("list DEKs", exc) from None
        for row in rows:
            yield self._to_record(row)

    def _update(self, dek_id: bytes, action: str, **values: Any) -> None:
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    self.keys.update().where(self.keys.c.dek_id == dek_id.hex()).values(**values)
                )
        except SQLAlchemyError as exc:
            raise self._fail(action, exc) from None
        if result.rowcount == 0:
            raise KeyStoreError(f"DEK {dek_id.hex()} is not in the key store")

    def add_encryptions(self, dek_id: bytes, count: int) -> None:
        self._update(
            dek_id,
            f"count encryptions of DEK {dek_id.hex()}",
            encryptions=self.keys.c.encryptions + count,
        )

    def set_state(self, dek_id: bytes, state: DekState) -> None:
        self._update(dek_id, f"change state of DEK {dek_id.hex()}", state=DekState(state).value)

    def destroy(self, dek_id: bytes) -> None:
        self._update(
            dek_id, f"destroy DEK {dek_id.hex()}", state=DekState.DESTROYED.value, wrapped=b""
        )

    def rewrap(self, old: DataKeyRecord, *, kek_id: str, kek_version: int, wrapped: bytes) -> bool:
        keys = self.keys
        statement = (
            keys.update()
            .where(
                keys.c.dek_id == old.dek_id.hex(),
                keys.c.kek_id == old.kek_id,
                keys.c.kek_version == old.kek_version,
                keys.c.wrapped == old.wrapped,
            )
            .values(kek_id=kek_id, kek_version=kek_version, wrapped=wrapped)
        )
        try:
            with self.engine.begin() as conn:
                return conn.execute(statement).rowcount == 1
        except SQLAlchemyError as exc:
            raise self._fail(f"rewrap DEK {old.dek_id.hex()}", exc) from None

    # -- scoped keys (SupportsScopedKeys) ----------------------------------------------------

    def _all(self, query: Any, action: str) -> list[DataKeyRecord]:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise self._fail(action, exc) from None
        return [self._to_record(row) for row in rows]

    def subject_keys(self, domain: str, subject_ref: str) -> list[DataKeyRecord]:
        keys = self.keys
        query = (
            sa.select(keys)
            .where(
                keys.c.domain == domain,
                keys.c.subject == subject_ref,
                keys.c.purpose == DATA_PURPOSE,
            )
            .order_by(keys.c.created_at, keys.c.dek_id)
        )
        return self._all(query, "list a subject's keys")

    def set_destroy_at(self, domain: str, subject_ref: str, destroy_at: dt.datetime) -> int:
        keys = self.keys
        statement = (
            keys.update()
            .where(
                keys.c.domain == domain,
                keys.c.subject == subject_ref,
                keys.c.purpose == DATA_PURPOSE,
                keys.c.state != DekState.DESTROYED.value,
            )
            .values(destroy_at=_to_db(destroy_at))
        )
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(statement).rowcount)
        except SQLAlchemyError as exc:
            raise self._fail("set a subject's key deadline", exc) from None

    def destroy_key(self, dek_id: bytes, *, reason: str, at: dt.datetime) -> bool:
        keys = self.keys
        statement = (
            keys.update()
            .where(
                keys.c.dek_id == dek_id.hex(),
                # A row a writer marked destroyed keeps no wrapped bytes either.
                sa.or_(keys.c.state != DekState.DESTROYED.value, keys.c.wrapped != b""),
            )
            .values(
                state=DekState.DESTROYED.value,
                wrapped=b"",
                destroyed_at=_to_db(at),
                destroy_reason=reason,
            )
        )
        try:
            with self.engine.begin() as conn:
                if conn.execute(statement).rowcount == 1:
                    return True
                exists = conn.execute(
                    sa.select(keys.c.dek_id).where(keys.c.dek_id == dek_id.hex())
                ).first()
        except SQLAlchemyError as exc:
            raise self._fail(f"destroy DEK {dek_id.hex()}", exc) from None
        if exists is None:
            raise KeyStoreError(f"DEK {dek_id.hex()} is not in the key store")
        return False

    def destroy_keys(
        self, dek_ids: Sequence[bytes], *, reason: str, at: dt.datetime
    ) -> list[bytes]:
        """Destroy many rows in one transaction; return the ids this call destroyed.

        The ids are taken in ascending order, 500 per statement. On SQLite one
        ``UPDATE ... RETURNING`` per chunk (the database is locked as a whole). Elsewhere the
        live rows of a chunk are first locked in id order (``SELECT ... ORDER BY dek_id FOR
        UPDATE``, so that two sweeps of overlapping batches never deadlock) and then updated in
        the same transaction: the ids returned are exact either way.
        """
        keys = self.keys
        hexes = sorted({dek_id.hex() for dek_id in dek_ids})
        values = {
            "state": DekState.DESTROYED.value,
            "wrapped": b"",
            "destroyed_at": _to_db(at),
            "destroy_reason": reason,
        }
        live = keys.c.state != DekState.DESTROYED.value
        done: list[bytes] = []
        try:
            with self.engine.begin() as conn:
                returning = conn.dialect.name == "sqlite" and conn.dialect.update_returning
                for start in range(0, len(hexes), _STATES_CHUNK):
                    chunk = hexes[start : start + _STATES_CHUNK]
                    where = sa.and_(keys.c.dek_id.in_(chunk), live)
                    if returning:
                        statement = keys.update().where(where).values(**values)
                        rows = conn.execute(statement.returning(keys.c.dek_id)).all()
                        done.extend(bytes.fromhex(r[0]) for r in rows)
                        continue
                    locked = [
                        r[0]
                        for r in conn.execute(
                            sa.select(keys.c.dek_id)
                            .where(where)
                            .order_by(keys.c.dek_id)
                            .with_for_update()
                        ).all()
                    ]
                    if locked:
                        conn.execute(
                            keys.update().where(keys.c.dek_id.in_(locked), live).values(**values)
                        )
                    done.extend(bytes.fromhex(h) for h in locked)
        except SQLAlchemyError as exc:
            raise self._fail(f"destroy {len(hexes)} DEKs", exc) from None
        return done

    def rebind(self, old: DataKeyRecord, *, wrapped: bytes, destroy_at: dt.datetime | None) -> bool:
        keys = self.keys
        statement = (
            keys.update()
            .where(
                keys.c.dek_id == old.dek_id.hex(),
                keys.c.wrapped == old.wrapped,
                keys.c.state != DekState.DESTROYED.value,
            )
            .values(wrapped=wrapped, destroy_at=_to_db(destroy_at))
        )
        try:
            with self.engine.begin() as conn:
                return conn.execute(statement).rowcount == 1
        except SQLAlchemyError as exc:
            raise self._fail(f"rebind DEK {old.dek_id.hex()}", exc) from None

    def due_keys(self, at: dt.datetime, *, limit: int) -> list[DataKeyRecord]:
        keys = self.keys
        query = (
            sa.select(keys)
            .where(
                keys.c.destroy_at <= _to_db(at),
                keys.c.state != DekState.DESTROYED.value,
                keys.c.purpose == DATA_PURPOSE,
            )
            .order_by(keys.c.destroy_at, keys.c.dek_id)
            .limit(max(int(limit), 0))
        )
        return self._all(query, "list the keys due")

    def ended_keys(self, domain: str, by: dt.datetime, *, limit: int) -> list[DataKeyRecord]:
        """Live data keys of ``domain`` whose bucket ended by ``by``, oldest end first (at most
        ``limit``): the sweep destroys those past their fixed deadline whatever their
        ``destroy_at`` column says.

        .. versionadded:: 0.3.0
        """
        keys = self.keys
        query = (
            sa.select(keys)
            .where(
                keys.c.domain == domain,
                keys.c.not_after <= _to_db(by),
                keys.c.state != DekState.DESTROYED.value,
                keys.c.purpose == DATA_PURPOSE,
            )
            .order_by(keys.c.not_after, keys.c.dek_id)
            .limit(max(int(limit), 0))
        )
        return self._all(query, "list the ended bucket keys")

    def get_subject(self, domain: str, subject_ref: str) -> SubjectRecord | None:
        subjects = self.subjects
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(subjects).where(
                        subjects.c.domain == domain, subjects.c.subject_ref == subject_ref
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise self._fail("read a subject", exc) from None
        return None if row is None else _subject_of(row)

    def get_subjects(self, domain: str, subject_refs: Collection[str]) -> dict[str, SubjectRecord]:
        """The rows of the given subjects of ``domain`` the store has, in one query per 500.

        .. versionadded:: 0.3.0
        """
        refs = list(dict.fromkeys(subject_refs))
        subjects = self.subjects
        found: dict[str, SubjectRecord] = {}
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(refs), _STATES_CHUNK):
                    chunk = refs[start : start + _STATES_CHUNK]
                    for row in conn.execute(
                        sa.select(subjects).where(
                            subjects.c.domain == domain, subjects.c.subject_ref.in_(chunk)
                        )
                    ).all():
                        found[row.subject_ref] = _subject_of(row)
        except SQLAlchemyError as exc:
            raise self._fail("read subjects", exc) from None
        return found

    def put_subject(self, record: SubjectRecord) -> None:
        subjects = self.subjects
        values = {
            "relationship_end": _to_db(record.relationship_end),
            "fenced_at": _to_db(record.fenced_at),
            "erased_at": _to_db(record.erased_at),
            "request_id": record.request_id,
        }
        where = (subjects.c.domain == record.domain, subjects.c.subject_ref == record.subject_ref)
        for _attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    if conn.execute(subjects.update().where(*where).values(**values)).rowcount:
                        return
                    exists = conn.execute(sa.select(subjects.c.domain).where(*where)).first()
                    if exists is not None:  # MySQL counts changed rows only: unchanged is done
                        return
                    conn.execute(
                        subjects.insert().values(
                            domain=record.domain, subject_ref=record.subject_ref, **values
                        )
                    )
                    return
            except IntegrityError:
                continue  # inserted meanwhile by another process: update it
            except SQLAlchemyError as exc:
                raise self._fail("write a subject", exc) from None
        raise KeyStoreError(f"key store at {self._where()} failed to write a subject")

    def key_summary(
        self, domain: str, at: dt.datetime, *, bucket: dt.timedelta | None = None
    ) -> KeySummary:
        keys, subjects = self.keys, self.subjects
        when = _to_db(at)
        live = keys.c.state != DekState.DESTROYED.value
        due = sa.and_(live, keys.c.destroy_at.is_not(None), keys.c.destroy_at <= when)
        readable = sa.and_(live, sa.or_(keys.c.destroy_at.is_(None), keys.c.destroy_at > when))
        mine = sa.and_(keys.c.domain == domain, keys.c.purpose == DATA_PURPOSE)

        # CASE, not FILTER: MariaDB has no aggregate FILTER clause.
        def count(cond: Any) -> Any:
            return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)

        counts = sa.select(
            count(live),
            count(sa.not_(live)),
            count(due),
            sa.func.min(sa.case((readable, keys.c.not_after))),
            sa.func.min(
                sa.case((sa.and_(readable, keys.c.not_after.is_(None)), keys.c.created_at))
            ),
            sa.func.count(sa.distinct(sa.case((live, keys.c.subject)))),
        ).where(mine)
        ended = sa.exists().where(
            subjects.c.domain == domain,
            subjects.c.subject_ref == keys.c.subject,
            subjects.c.relationship_end.is_not(None),
        )
        # Subjects with no end, and keys of ended subjects with no deadline (a changed row).
        without_end = sa.select(
            sa.func.count(sa.distinct(sa.case((sa.not_(ended), keys.c.subject)))),
            count(sa.and_(keys.c.destroy_at.is_(None), ended)),
        ).where(mine, live, keys.c.subject.is_not(None))
        try:
            with self.engine.connect() as conn:
                n_live, n_dead, n_due, min_end, min_created, n_subjects = conn.execute(counts).one()
                n_without, n_undated = conn.execute(without_end).one()
        except SQLAlchemyError as exc:
            raise self._fail("summarise its keys", exc) from None
        captures = []
        if min_end is not None:
            end = _utc(_parse_dt(min_end))
            captures.append(end - bucket if bucket is not None else end)
        if min_created is not None:
            captures.append(_utc(_parse_dt(min_created)))
        return KeySummary(
            live=int(n_live or 0),
            destroyed=int(n_dead or 0),
            due=int(n_due or 0),
            oldest_readable_capture=min(captures, default=None),
            subjects=int(n_subjects or 0),
            subjects_without_end=int(n_without or 0),
            ended_without_deadline=int(n_undated or 0),
        )

    def wrapping_keys(self, domain: str) -> list[DataKeyRecord]:
        keys = self.keys
        query = sa.select(keys).where(keys.c.domain == domain, keys.c.purpose == WRAPPING_PURPOSE)
        rows = self._all(query, "list the wrapping keys")
        return sorted(rows, key=lambda r: _epoch(r.name or ""))

    def provider_wrapped(self, domain: str) -> list[DataKeyRecord]:
        keys = self.keys
        query = (
            sa.select(keys)
            .where(
                keys.c.domain == domain,
                keys.c.kek_id != WRAPPING_KEK_ID,
                keys.c.state != DekState.DESTROYED.value,
            )
            .order_by(keys.c.created_at, keys.c.dek_id)
        )
        return self._all(query, "list the keys wrapped by the KEK")

    # -- many subjects at once (SupportsBulkScopedKeys) --------------------------------------

    def active_subject_keys(
        self, domain: str, subject_refs: Collection[str]
    ) -> dict[str, list[DataKeyRecord]]:
        """The ACTIVE data keys of ``subject_refs``, oldest first, in one query per 500 refs."""
        keys = self.keys
        refs = sorted(set(subject_refs))
        found: dict[str, list[DataKeyRecord]] = {}
        query = sa.select(keys).where(
            keys.c.domain == domain,
            keys.c.purpose == DATA_PURPOSE,
            keys.c.state == DekState.ACTIVE.value,
        )
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(refs), _STATES_CHUNK):
                    chunk = refs[start : start + _STATES_CHUNK]
                    rows = conn.execute(
                        query.where(keys.c.subject.in_(chunk)).order_by(
                            keys.c.created_at, keys.c.dek_id
                        )
                    ).all()
                    for row in rows:
                        record = self._to_record(row)
                        found.setdefault(record.subject or "", []).append(record)
        except SQLAlchemyError as exc:
            raise self._fail("list subjects' keys", exc) from None
        return found

    def subject_records(
        self, domain: str, subject_refs: Collection[str]
    ) -> dict[str, SubjectRecord]:
        """The subjects' rows, in one query per 500 refs."""
        subjects = self.subjects
        refs = sorted(set(subject_refs))
        found: dict[str, SubjectRecord] = {}
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(refs), _STATES_CHUNK):
                    chunk = refs[start : start + _STATES_CHUNK]
                    for row in conn.execute(
                        sa.select(subjects).where(
                            subjects.c.domain == domain, subjects.c.subject_ref.in_(chunk)
                        )
                    ).all():
                        found[row.subject_ref] = SubjectRecord(
                            domain=row.domain,
                            subject_ref=row.subject_ref,
                            relationship_end=_utc(row.relationship_end),
                            fenced_at=_utc(row.fenced_at),
                            erased_at=_utc(row.erased_at),
                            request_id=row.request_id,
                        )
        except SQLAlchemyError as exc:
            raise self._fail("read subjects", exc) from None
        return found

    def insert_many(self, records: Collection[DataKeyRecord]) -> None:
        """Insert the rows in one transaction (one multi-row statement per 500 rows)."""
        rows = [_row_values(record) for record in records]
        if not rows:
            return
        try:
            with self.engine.begin() as conn:
                for start in range(0, len(rows), _STATES_CHUNK):
                    conn.execute(self.keys.insert(), rows[start : start + _STATES_CHUNK])
        except SQLAlchemyError as exc:
            raise self._fail(f"store {len(rows)} DEKs", exc) from None

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __repr__(self) -> str:
        return f"SQLKeyStore({self._where()!r}, table={self.keys.fullname!r})"


@overload
def _utc(value: dt.datetime) -> dt.datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """A datetime read back as aware UTC (SQLite and MariaDB keep no offset; we write UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _parse_dt(value: Any) -> dt.datetime:
    """An aggregate's datetime (SQLite returns MIN() of a DATETIME column as text)."""
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _to_db(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.astimezone(dt.UTC)


def _row_values(record: DataKeyRecord) -> dict[str, Any]:
    """The column values of a data-key row (as :meth:`SQLKeyStore.insert` writes them)."""
    return {
        "dek_id": record.dek_id.hex(),
        "domain": record.domain,
        "purpose": record.purpose,
        "kek_id": record.kek_id,
        "kek_version": record.kek_version,
        "wrapped": record.wrapped,
        "state": record.state.value,
        "created_at": record.created_at.astimezone(dt.UTC),
        "subject": record.subject,
        "encryptions": record.encryptions,
        "name": record.name,
        "scope": record.scope,
        "not_after": _to_db(record.not_after),
        "destroy_at": _to_db(record.destroy_at),
        "destroyed_at": _to_db(record.destroyed_at),
        "destroy_reason": record.destroy_reason,
    }


def open_store(spec: KeyStore | Engine | AsyncEngine | str) -> tuple[KeyStore, bool]:
    """The key store ``spec`` names, and whether it was opened here (the caller closes it then).

    Args:
        spec: a :class:`~vaultkit.store.KeyStore` (used as it is), an SQLAlchemy ``Engine`` or a
            database URL (an :class:`SQLKeyStore` on it). An async URL or ``AsyncEngine`` gets
            a synchronous engine of the store's own on the same database.

    Raises:
        TypeError: ``spec`` is none of these.
        KeyStoreError: the database cannot be reached, or holds a newer key-store layout.

    .. versionadded:: 0.2.0
    """
    if isinstance(spec, str | Engine) or isinstance(getattr(spec, "sync_engine", None), Engine):
        return SQLKeyStore(spec), True  # type: ignore[arg-type]
    if isinstance(spec, KeyStore):
        return spec, False
    raise TypeError(f"store must be a KeyStore, an Engine or a URL, not {type(spec).__name__}")


def _subject_of(row: Any) -> SubjectRecord:
    return SubjectRecord(
        domain=row.domain,
        subject_ref=row.subject_ref,
        relationship_end=_utc(row.relationship_end),
        fenced_at=_utc(row.fenced_at),
        erased_at=_utc(row.erased_at),
        request_id=row.request_id,
    )
