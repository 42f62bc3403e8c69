"""The data-key store as SQL tables, through SQLAlchemy Core.

Two tables, named with a configurable prefix (``vaultkit_`` by default):

``vaultkit_data_keys``
    one row per DEK: ``dek_id`` (32 hex digits, primary key), ``domain``, ``purpose``, ``kek_id``,
    ``kek_version``, ``wrapped`` (binary), ``state``, ``created_at`` (UTC), ``subject``,
    ``encryptions``, ``name`` (of a named key, such as a blind-index key); indexed on
    ``(domain, state)``.
``vaultkit_meta``
    name/value pairs; ``key_store_schema`` holds the layout version. A store whose version is newer
    than this release's :data:`SCHEMA_VERSION` is refused, never misread or written to.

The tables are created on first use unless ``create=False``. Types are portable: SQLite (BLOB),
PostgreSQL (BYTEA) and MariaDB/MySQL (BLOB) all work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import weakref
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from vaultkit._offload import sync_engine
from vaultkit.errors import KeyStoreError
from vaultkit.store._base import SCHEMA_VERSION, DataKeyRecord, DekState, KeyStore

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["SQLKeyStore", "open_store"]

_SCHEMA_KEY = "key_store_schema"
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
            sa.Index(f"ix_{table_prefix}data_keys_domain_state", "domain", "state"),
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
        self._check_version()

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

    def _check_version(self) -> None:
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

    @staticmethod
    def _to_record(row: Any) -> DataKeyRecord:
        created = row.created_at
        if created.tzinfo is None:  # SQLite and MariaDB keep no offset; we always write UTC.
            created = created.replace(tzinfo=dt.UTC)
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
        )

    def insert(self, record: DataKeyRecord) -> None:
        values = {
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
        }
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

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __repr__(self) -> str:
        return f"SQLKeyStore({self._where()!r}, table={self.keys.fullname!r})"


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
