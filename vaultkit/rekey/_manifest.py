"""The legacy manifest of a column in migration mode: which rows held which plaintext when it began.

See :func:`begin_migration` and :func:`load_migration`, and the package documentation.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import hashlib
import hmac
import json
from array import array
from collections.abc import Callable, Sequence
from typing import Any, Final

import sqlalchemy as sa

from vaultkit import BlindIndexKey, Vault
from vaultkit._ddl import create_tables
from vaultkit.core import wire
from vaultkit.errors import ConfigurationError
from vaultkit.rekey._table import as_raw, in_transaction, key_text, plan_table
from vaultkit.sqla.keyset import walk
from vaultkit.sqla.types import Encrypted

__all__ = [
    "LEGACY_MIGRATIONS",
    "LEGACY_ROWS",
    "Manifest",
    "begin_migration",
    "legacy_entries",
    "legacy_tables",
    "load_migration",
    "manifests_of",
]

#: One row per column whose migration began: names, start time, legacy rows recorded, end time.
LEGACY_MIGRATIONS: Final = "vaultkit_legacy_migrations"
#: The legacy manifest: per row that held plaintext when its column's migration began, keyed tags
#: of its row key and value. Rows go as soon as they hold ciphertext.
LEGACY_ROWS: Final = "vaultkit_legacy_rows"
#: The blind-index key name part under which each column's manifest key is kept (per column).
_MANIFEST_KEY_TABLE: Final = "vaultkit legacy manifest"


def legacy_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    migrations = sa.Table(
        LEGACY_MIGRATIONS,
        metadata,
        sa.Column("scope", sa.String(32), primary_key=True),  # hex: hash of schema, table, column
        sa.Column("schema_name", sa.String(255), nullable=True),
        sa.Column("table_name", sa.String(255), nullable=False),
        sa.Column("column_name", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("legacy_rows", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    rows = sa.Table(
        LEGACY_ROWS,
        metadata,
        sa.Column("scope", sa.String(32), primary_key=True),
        sa.Column("row_id", sa.String(32), primary_key=True),  # hex: hash of the row's key text
        sa.Column("row_tag", sa.LargeBinary(16), nullable=False),  # HMAC of row and value
        sa.Column("value_tag", sa.LargeBinary(8), nullable=False),  # HMAC of the value alone
    )
    return migrations, rows


# PostgreSQL statements over arrays for the manifest (the names are the constants above; the
# values are parameters).
_PG_INSERT: Final = sa.text(
    f"INSERT INTO {LEGACY_ROWS} (scope, row_id, row_tag, value_tag) "  # noqa: S608
    "SELECT :scope, u.r, u.t, u.v FROM unnest(CAST(:ids AS VARCHAR[]), "
    "CAST(:row_tags AS BYTEA[]), CAST(:value_tags AS BYTEA[])) AS u(r, t, v)"
)
_PG_SELECT: Final = sa.text(
    f"SELECT row_id, row_tag FROM {LEGACY_ROWS} "  # noqa: S608
    "WHERE scope = :scope AND row_id = ANY(CAST(:ids AS VARCHAR[]))"
)
_PG_DELETE: Final = sa.text(
    f"DELETE FROM {LEGACY_ROWS} "  # noqa: S608
    "WHERE scope = :scope AND row_id = ANY(CAST(:ids AS VARCHAR[]))"
)


class Manifest:
    """The legacy manifest of one encrypted column: which rows held plaintext, and which value,
    when the column's migration began.

    Each entry holds two HMAC-SHA256 tags under a key of the column's domain (a blind-index key
    of its own, wrapped by the domain's KEK in the key store): ``row_tag`` over the row key and
    the stored bytes, ``value_tag`` over the stored bytes alone (the application, which sees a
    value without its row, checks that one). A database writer cannot make a tag for a value of
    their choosing; deleting entries only makes values refused.
    """

    def __init__(self, vault: Vault, column: sa.Column[Any]) -> None:
        column_type: Encrypted = column.type  # type: ignore[assignment]
        self.column = column
        self.binding = column_type.binding()
        text = json.dumps(list(self.binding), ensure_ascii=False)
        self._scope = hashlib.sha256(b"vaultkit legacy scope\x00" + text.encode()).digest()[:16]
        self.scope = self._scope.hex()
        self._vault = vault
        self._domain = column_type.domain
        self._hmac: BlindIndexKey | None = None
        #: The migration ended (no recorded row left in plaintext): no entry is looked up, and
        #: any plaintext is tampering.
        self.finished = False

    @property
    def _key(self) -> BlindIndexKey:
        # Made (or read) on first use, so that begin() can tell first whether it existed.
        if self._hmac is None:
            self._hmac = self._vault.blind_index_key(
                self._domain, table=_MANIFEST_KEY_TABLE, column=self.scope, version=1
            )
        return self._hmac

    def key_existed(self) -> bool:
        """Whether the key store already holds this column's manifest key (a migration began)."""
        name = f"{_MANIFEST_KEY_TABLE}.{self.scope}@"
        return any(
            (record.name or "").startswith(name)
            for record in self._vault.store.records(domain=self._domain)
        )

    @staticmethod
    def row_id(key: Any) -> str:
        """Hex of a hash of the row key's text (as the checkpoints store keys)."""
        text = str(key) if type(key) is int else str(key_text(key))  # json.dumps(int) == str
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def row_tag(self, row_id: str, raw: bytes) -> bytes:
        prefix = b"vaultkit legacy row\x00" + self._scope + bytes.fromhex(row_id)
        return self._key.digest(prefix + raw)[:16]

    def value_tag(self, raw: bytes) -> bytes:
        return self._key.digest(b"vaultkit legacy value\x00" + self._scope + raw)[:8]

    def begun(self, conn: sa.Connection) -> bool:
        migrations, _rows = legacy_tables(sa.MetaData())
        if not sa.inspect(conn).has_table(migrations.name):
            return False
        found = conn.execute(
            sa.select(migrations.c.finished_at).where(migrations.c.scope == self.scope)
        ).first()
        if found is None:
            return False
        self.finished = found.finished_at is not None
        return True

    def begin(
        self, conn: sa.Connection, pk: sa.Column[Any], batch_size: int, *, restart: bool
    ) -> int | None:
        """Record the column's legacy rows; ``None`` when its migration had begun already."""
        migrations, rows = legacy_tables(sa.MetaData())
        migrations.metadata.create_all(conn, checkfirst=True)
        if self.begun(conn):
            return None
        schema, table, column = self.binding
        # The record goes in first: a worker beginning at the same moment waits on its primary
        # key until this transaction ends, then finds the migration begun.
        conn.execute(
            migrations.insert().values(
                scope=self.scope,
                schema_name=schema,
                table_name=table,
                column_name=column,
                started_at=dt.datetime.now(dt.UTC),
                legacy_rows=0,
            )
        )
        if not restart and self.key_existed():
            # The manifest key lives in the key store, the manifest in the data database: a
            # key without a record means the record went (deleted by a database writer, or a
            # begin that failed half-way). Recording the column afresh would take whatever
            # plaintext it holds now, downgrades included, as legacy.
            raise ConfigurationError(
                f"{self.column.table.name}.{column}: its legacy manifest is missing although its "
                "migration began before (the manifest key exists in the key store); restore "
                f"{LEGACY_MIGRATIONS} and {LEGACY_ROWS} from a backup, or check the column's "
                "plaintext by hand and call vaultkit.rekey.begin_migration(..., restart=True)"
            )
        raw = sa.type_coerce(self.column, sa.LargeBinary)
        count = 0
        query = sa.select(pk, raw).where(self.column.is_not(None))
        for batch in walk(conn, query, pk, batch_size):
            entries = []
            for key, stored in batch:
                value = as_raw(stored)
                if value is not None and not wire.is_vaultkit_value(value):
                    row_id = self.row_id(key)
                    entries.append(
                        {
                            "scope": self.scope,
                            "row_id": row_id,
                            "row_tag": self.row_tag(row_id, value),
                            "value_tag": self.value_tag(value),
                        }
                    )
            if entries:
                self._insert(conn, rows, entries)
            count += len(entries)
        conn.execute(
            migrations.update().where(migrations.c.scope == self.scope).values(legacy_rows=count)
        )
        return count

    @staticmethod
    def _insert(conn: sa.Connection, rows: sa.Table, entries: list[dict[str, Any]]) -> None:
        if conn.dialect.name == "postgresql":
            # One statement over arrays: an executemany would send one INSERT per row, and a
            # multi-row VALUES costs more to compile than to run.
            conn.execute(
                _PG_INSERT,
                {
                    "scope": entries[0]["scope"],
                    "ids": [e["row_id"] for e in entries],
                    "row_tags": [e["row_tag"] for e in entries],
                    "value_tags": [e["value_tag"] for e in entries],
                },
            )
        else:
            conn.execute(rows.insert(), entries)

    def entries(self, conn: sa.Connection, keys: Sequence[Any]) -> dict[Any, tuple[str, bytes]]:
        """Row key -> (row id, row tag) of those of ``keys`` that are still in the manifest."""
        _migrations, rows = legacy_tables(sa.MetaData())
        by_id = {self.row_id(k): k for k in keys}
        ids = list(by_id)
        found: dict[Any, tuple[str, bytes]] = {}
        if conn.dialect.name == "postgresql":
            result = conn.execute(_PG_SELECT, {"scope": self.scope, "ids": ids}).all()
        else:
            result = []
            for start in range(0, len(ids), 1000):
                result += conn.execute(
                    sa.select(rows.c.row_id, rows.c.row_tag).where(
                        rows.c.scope == self.scope, rows.c.row_id.in_(ids[start : start + 1000])
                    )
                ).all()
        for row_id, tag in result:
            found[by_id[row_id]] = (row_id, bytes(tag))
        return found

    def recorded(self, entry: tuple[str, bytes] | None, raw: bytes) -> bool:
        """Whether the row of ``entry`` (from :meth:`entries`) was recorded holding ``raw``."""
        return entry is not None and hmac.compare_digest(entry[1], self.row_tag(entry[0], raw))

    def forget(self, conn: sa.Connection, row_ids: Sequence[str]) -> None:
        """Drop the entries of rows that hold ciphertext now: they are never plaintext again."""
        _migrations, rows = legacy_tables(sa.MetaData())
        ids = sorted(set(row_ids))
        if conn.dialect.name == "postgresql":
            conn.execute(_PG_DELETE, {"scope": self.scope, "ids": ids})
            return
        for start in range(0, len(ids), 1000):
            conn.execute(
                rows.delete().where(
                    rows.c.scope == self.scope, rows.c.row_id.in_(ids[start : start + 1000])
                )
            )

    def finish_if_empty(self, conn: sa.Connection) -> None:
        """Record the end of the migration once no recorded row holds plaintext any more."""
        migrations, rows = legacy_tables(sa.MetaData())
        left = conn.execute(
            sa.select(sa.func.count()).select_from(rows).where(rows.c.scope == self.scope)
        ).scalar_one()
        if int(left) == 0:
            conn.execute(
                migrations.update()
                .where(migrations.c.scope == self.scope, migrations.c.finished_at.is_(None))
                .values(finished_at=dt.datetime.now(dt.UTC))
            )

    def admits(self, conn: sa.Connection) -> tuple[Callable[[bytes], bool], int]:
        """A check of values against the manifest's value tags, for the application; and how
        many values it knows."""
        _migrations, rows = legacy_tables(sa.MetaData())
        tags = array(
            "Q",
            sorted(
                int.from_bytes(bytes(tag), "big")
                for tag in conn.execute(
                    sa.select(rows.c.value_tag).where(rows.c.scope == self.scope)
                ).scalars()
            ),
        )  # 8 bytes per legacy row
        value_tag = self.value_tag

        def admits(raw: bytes) -> bool:
            tag = int.from_bytes(value_tag(raw), "big")
            at = bisect.bisect_left(tags, tag)
            return at < len(tags) and tags[at] == tag

        return admits, len(tags)


def manifests_of(
    bind: sa.Engine | sa.Connection, vault: Vault, columns: Sequence[sa.Column[Any]]
) -> dict[str, Manifest]:
    """The manifests of those of ``columns`` whose migration has begun, by column name."""
    manifests = {}
    with bind.connect() if isinstance(bind, sa.Engine) else contextlib.nullcontext(bind) as conn:
        for column in columns:
            manifest = Manifest(vault, column)
            if manifest.begun(conn):
                manifests[column.name] = manifest
    return manifests


def begin_migration(
    bind: sa.Engine | sa.Connection,
    table: sa.Table,
    *,
    vault: Vault,
    columns: Sequence[str] | None = None,
    batch_size: int = 5000,
    restart: bool = False,
) -> dict[str, int]:
    """Record which rows of ``table``'s migrating columns hold legacy plaintext now.

    Run it once per column, when the column holds only legacy plaintext (in the migration that
    changes it to binary storage, before ``Encrypted(..., migrating=True)`` is deployed): from
    then on, only the values recorded here, in their rows, are accepted as plaintext. The first
    :func:`rekey_table` run over a migrating column calls it if nobody did. Values written into
    the column before it ran are taken as they are.

    Args:
        bind: an engine, or a connection whose transaction the records join (``op.get_bind()``
            in an Alembic migration).
        table: the table, with its ``Encrypted(..., migrating=True)`` columns.
        vault: the vault those columns use.
        columns: names of the columns to record (default: every column in migration mode).
        batch_size: rows read per query.
        restart: record a column afresh although its manifest key shows that its migration
            began before and its records are gone. Only after checking its plaintext by hand.

    Returns:
        The number of legacy rows recorded per column; a column whose migration had begun
        already is left out.

    Raises:
        ConfigurationError: the column's manifest key exists in the key store but its records
            are gone from the data database (see ``restart``).

    .. versionadded:: 0.1.0
    """
    pk, encrypted = plan_table(table, columns)
    chosen = encrypted if columns is not None else [c for c in encrypted if c.type.migrating]  # type: ignore[attr-defined]
    counts: dict[str, int] = {}
    if chosen and isinstance(bind, sa.Engine):
        # Workers starting together may race to create the manifest tables: create them first,
        # outside the records' transaction (vaultkit._ddl). A connection's caller (a migration)
        # is alone; Manifest.begin creates them inside its transaction.
        create_tables(bind, legacy_tables(sa.MetaData())[0].metadata)
    for column in chosen:
        manifest = Manifest(vault, column)
        try:
            with in_transaction(bind) as conn:
                count = manifest.begin(conn, pk, batch_size, restart=restart)
        except sa.exc.IntegrityError:
            # Another worker recorded it at the same moment (its rows or its record collided).
            if isinstance(bind, sa.Connection):
                raise
            with bind.connect() as conn:
                if not manifest.begun(conn):
                    raise
            count = None
        if count is not None:
            counts[column.name] = count
    return counts


def load_migration(
    bind: sa.Engine | sa.Connection,
    table: sa.Table,
    *,
    vault: Vault,
    columns: Sequence[str] | None = None,
) -> int:
    """Load the legacy manifests of ``table``'s migrating columns into this process.

    Call it at start-up in every process that reads those columns while they are in migration
    mode (after :func:`vaultkit.sqla.configure`). A column then hands out legacy plaintext only
    if the value was recorded when its migration began; any other plaintext raises
    :class:`~vaultkit.errors.DecryptionError`. Without a loaded manifest, a legacy read raises
    :class:`~vaultkit.errors.ConfigurationError`. Memory: 8 bytes per recorded row.

    Returns:
        The number of legacy values loaded, over all columns.

    Raises:
        ConfigurationError: a migrating column's migration has not begun
            (:func:`begin_migration`).

    .. versionadded:: 0.1.0
    """
    _pk, encrypted = plan_table(table, columns)
    chosen = encrypted if columns is not None else [c for c in encrypted if c.type.migrating]  # type: ignore[attr-defined]
    loaded = 0
    with bind.connect() if isinstance(bind, sa.Engine) else contextlib.nullcontext(bind) as conn:
        for column in chosen:
            column_type: Encrypted = column.type  # type: ignore[assignment]
            manifest = Manifest(vault, column)
            if not manifest.begun(conn):
                raise ConfigurationError(
                    f"{column_type.bound_name}: its migration has not begun, so no legacy value "
                    "is known; run vaultkit.rekey.begin_migration (or vaultkit rekey) first"
                )
            admits, known = manifest.admits(conn)
            column_type.use_legacy_manifest(admits)
            loaded += known
    return loaded


def legacy_entries(
    conn: sa.Connection, manifests: dict[str, Manifest], rows: Sequence[Any]
) -> dict[str, dict[Any, tuple[str, bytes]]]:
    """The manifest entries of ``rows``, per column with a manifest (one query per column)."""
    if not manifests or not rows:
        return {}
    keys = [row[0] for row in rows]
    return {
        name: manifest.entries(conn, keys)
        for name, manifest in manifests.items()
        if not manifest.finished
    }
