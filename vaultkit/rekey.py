"""The re-keying engine: re-encrypt values in place, in resumable batches, while the application runs.

For one table and its encrypted columns (``vaultkit.sqla.Encrypted``), it rewrites every value that
is legacy plaintext (a column in migration mode), encrypted under a retired DEK, written in an older
wire format or cipher suite, or still encrypted the way the column's ``previous=`` type says (a
move to another domain or binding), under the column's current domain and DEK; it fills the blind
indexes of those columns in the same UPDATE, and rewrites blind-index values that are missing or
under an older index key version (blind-index key rotation) without re-encrypting their values.

* **Ranges and batches by primary key.** The first worker of a job cuts the key space into ranges
  of about ``range_size`` rows (``vaultkit_rekey_ranges``); workers claim ranges and walk each in
  key order (keyset pagination), ``batch_size`` rows per transaction.
* **Workers coordinated by the database.** On PostgreSQL and MariaDB a worker claims a range with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` on a connection of its own and keeps the row lock while it
  works: other workers (processes on this machine or others) skip that range, and the lock goes
  away with the worker's connection if the process dies. SQLite has no row locks: run one worker
  per job there (a second one would only repeat work; compare-and-set keeps it harmless).
* **Compare-and-set.** Each UPDATE carries the old bytes of each column in its condition, so a value
  the application changed after the batch was read is never overwritten with stale data; those
  rows are read again and retried in the same transaction, a bounded number of times.
* **Checkpoints** (``vaultkit_rekey_checkpoints``), committed in the same transaction as the
  batch's UPDATEs: after a crash at any point a new run resumes after the last committed batch of
  each range, and redoing a batch is harmless (values already current are skipped).
* ``dry_run`` counts what would change without writing; :func:`verify_table` decrypts everything
  and counts values by DEK.
* **Legacy manifest.** Plaintext in a column in migration mode is encrypted only if its row was
  recorded with that very value when the column's migration began (:func:`begin_migration`, run
  by the first re-key job if nobody ran it before): keyed tags of row key and value, never the
  value. Anything else is counted as ``tampered`` and left alone, so a ciphertext a database
  writer replaced by plaintext is never laundered into a genuine one. Once a row holds ciphertext
  its entry is forgotten; the application checks values against the same manifest
  (:func:`load_migration`).

No printing, no argv: the command line and migration scripts call :func:`rekey_table`.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import random
import re
import socket
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import sqlalchemy as sa

from vaultkit._access import Principal, SealedValue
from vaultkit._vault import BlindIndexKey, Vault
from vaultkit.core import wire
from vaultkit.errors import ConfigurationError, ConflictError, DecryptionError
from vaultkit.sqla.types import BlindIndexType, Encrypted, RowBound
from vaultkit.store import DekState

__all__ = [
    "CHECKPOINTS",
    "LEGACY_MIGRATIONS",
    "LEGACY_ROWS",
    "RANGES",
    "ConflictRetry",
    "RekeyReport",
    "VerifyReport",
    "begin_migration",
    "default_job",
    "drop_job",
    "load_migration",
    "plan_job",
    "rekey_table",
    "verify_table",
]

log = logging.getLogger("vaultkit.rekey")

RANGES: Final = "vaultkit_rekey_ranges"
CHECKPOINTS: Final = "vaultkit_rekey_checkpoints"
#: One row per column whose migration began: names, start time, legacy rows recorded, end time.
LEGACY_MIGRATIONS: Final = "vaultkit_legacy_migrations"
#: The legacy manifest: per row that held plaintext when its column's migration began, keyed tags
#: of its row key and value. Rows go as soon as they hold ciphertext.
LEGACY_ROWS: Final = "vaultkit_legacy_rows"
#: The blind-index key name part under which each column's manifest key is kept (per column).
_MANIFEST_KEY_TABLE: Final = "vaultkit legacy manifest"
#: Attempts at a value the application keeps changing, within one batch, before it is left
#: for the next run (and counted in ``RekeyReport.left_changing``).
CAS_ATTEMPTS: Final = 3
#: Transactions the server aborts on a conflict with another transaction: retried.
_CONFLICT_SQLSTATES: Final = {
    "40P01": "deadlock detected",
    "40001": "serialization failure",
    "55P03": "lock not available (lock_timeout)",
}
_CONFLICT_MYSQL: Final = {1213: "deadlock", 1205: "lock wait timeout"}
_MAGIC: Final = wire.MAGIC
_UNKNOWN: Final = "unknown"


@dataclass(frozen=True)
class ConflictRetry:
    """How often a batch the database aborted on a conflict is tried again.

    Deadlocks (PostgreSQL SQLSTATE 40P01, MySQL/MariaDB error 1213), serialization failures
    (40001) and lock timeouts (55P03, 1205) roll the batch's transaction back; the engine waits
    ``min(max_delay, base_delay * 2**n)`` times a random factor from 0.5 to 1 after failure ``n``
    (from 0), reads the batch again and redoes it, up to ``attempts`` tries in all; then it raises
    :class:`~vaultkit.errors.ConflictError` (the batches before are committed: a new run resumes).
    """

    attempts: int = 6
    base_delay: float = 0.05
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("attempts must be at least 1 and delays not negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 0)."""
        wait = min(self.max_delay, self.base_delay * 2.0**attempt)
        return wait * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


@dataclass
class RekeyReport:
    """What one worker's run did, in counts; never a value."""

    job: str
    worker: str = ""
    rows_scanned: int = 0
    values_rewritten: int = 0
    plaintext_encrypted: int = 0
    retired_reencrypted: int = 0
    outdated_reencrypted: int = 0
    moved: int = 0
    indexes_rebuilt: int = 0
    changed_meanwhile: int = 0
    #: Batches the database aborted on a conflict (deadlock, lock timeout) and that were redone.
    conflicts_retried: int = 0
    left_changing: int = 0
    undecryptable: int = 0
    #: Dry run only: values of a ``previous=`` column in the column's own domain, which only
    #: decrypting can tell apart (the run re-encrypts those still in the previous binding).
    unchecked: int = 0
    #: Plaintext values refused: not recorded with that value in that row when the migration
    #: began (a ciphertext replaced by plaintext, for example), or in a column out of migration
    #: mode after its migration. Left as they are for a person to look at.
    tampered: int = 0
    batches: int = 0
    ranges_total: int = 0
    ranges_done: int = 0
    resumed_after: Any = None
    finished: bool = False
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """The job is finished and nothing was left behind (no value left changing, unreadable or
        refused as tampered)."""
        return (
            self.finished
            and self.left_changing == 0
            and self.undecryptable == 0
            and self.tampered == 0
        )


@dataclass
class VerifyReport:
    """Values by DEK id (hex) and by wire version, plus those that are plaintext or do not open."""

    values: int = 0
    by_dek: Counter[str] = field(default_factory=Counter)
    by_version: Counter[int] = field(default_factory=Counter)
    plaintext: int = 0
    undecryptable: int = 0
    under_retired: int = 0
    previous_binding: int = 0
    index_outdated: int = 0
    #: Plaintext values not recorded with that value in that row when their column's migration
    #: began, or found after it (see :attr:`RekeyReport.tampered`); not counted in ``plaintext``.
    tampered: int = 0

    @property
    def clean(self) -> bool:
        """Every value opens under its column's current type, no DEK it names is retired, and
        every blind index is there under its current key version."""
        return (
            self.plaintext == 0
            and self.tampered == 0
            and self.undecryptable == 0
            and self.under_retired == 0
            and self.previous_binding == 0
            and self.index_outdated == 0
        )


def default_job(table: sa.Table) -> str:
    """The job name a run takes by default: ``<table>:rekey``, ``<schema>.<table>:rekey`` for a
    table of a named schema (so tables of one name in two schemas are two jobs)."""
    return f"{table.name}:rekey" if table.schema is None else f"{table.schema}.{table.name}:rekey"


def _tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    ranges = sa.Table(
        RANGES,
        metadata,
        sa.Column("job", sa.String(255), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("lo", sa.Text, nullable=True),  # exclusive; NULL: from the first key
        sa.Column("hi", sa.Text, nullable=True),  # inclusive; NULL: to the last key, and beyond
        sa.Column("done", sa.Boolean, nullable=False, default=False),
    )
    checkpoints = sa.Table(
        CHECKPOINTS,
        metadata,
        sa.Column("job", sa.String(255), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_key", sa.Text, nullable=True),
        sa.Column("done", sa.Boolean, nullable=False, default=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    return ranges, checkpoints


def _create_tables(engine: sa.Engine) -> None:
    """Create the engine's tables if missing; workers starting together may race to do it."""
    meta = sa.MetaData()
    _tables(meta)
    for attempt in range(5):
        try:
            meta.create_all(engine, checkfirst=True)
        except sa.exc.DBAPIError:
            # Another worker's CREATE TABLE won (PostgreSQL reports a unique violation on its
            # catalog); look again after a moment.
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))
        else:
            return


def _plan(
    table: sa.Table, columns: Sequence[str] | None
) -> tuple[sa.Column[Any], list[sa.Column[Any]]]:
    primary = list(table.primary_key.columns)
    if len(primary) != 1:
        raise ConfigurationError(
            f"{table.name}: the re-keying engine needs a single-column primary key"
        )
    try:
        key_type = primary[0].type.python_type
    except NotImplementedError:
        key_type = object
    if key_type not in (int, str, uuid.UUID):
        raise ConfigurationError(
            f"{table.name}: the re-keying engine walks integer, string or UUID primary keys"
        )
    encrypted = [c for c in table.columns if isinstance(c.type, Encrypted)]
    if columns is not None:
        wanted = set(columns)
        missing = wanted - {c.name for c in encrypted}
        if missing:
            raise ConfigurationError(
                f"{table.name}: not encrypted columns: {', '.join(sorted(missing))}"
            )
        encrypted = [c for c in encrypted if c.name in wanted]
    if not encrypted:
        raise ConfigurationError(f"{table.name} has no encrypted column to re-key")
    return primary[0], encrypted


def _selection(
    pk: sa.Column[Any],
    encrypted: list[sa.Column[Any]],
    indexes: dict[str, sa.Column[Any]] | None = None,
) -> tuple[dict[str, sa.Column[Any]], list[Any]]:
    """Row-key columns of the row-bound columns, and what to select: key, row keys, raw values
    and the stored blind-index values of those columns."""
    table = pk.table
    row_keys = {c.name: table.columns[c.type.row_key] for c in encrypted if c.type.row_key}  # type: ignore[attr-defined]
    extra = list({k.name: k for k in row_keys.values() if k is not pk}.values())
    raw = [sa.type_coerce(c, sa.LargeBinary).label(c.name) for c in encrypted]
    stored = [
        sa.type_coerce(indexes[c.name], sa.LargeBinary).label(indexes[c.name].name)
        for c in encrypted
        if indexes and c.name in indexes
    ]
    return row_keys, [pk, *extra, *raw, *stored]


def _key_text(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(str(value) if isinstance(value, uuid.UUID) else value)


def _key_value(pk: sa.Column[Any], text: str | None) -> Any:
    if text is None:
        return None
    value = json.loads(text)
    if pk.type.python_type is uuid.UUID:
        return uuid.UUID(value)
    return value


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _as_raw(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")  # legacy text read through a text column type


def _legacy_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
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


@contextmanager
def _in_transaction(bind: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    """The caller's connection (inside its transaction, as in an Alembic migration) or a new
    transaction on the engine."""
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn


class _Manifest:
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
        text = str(key) if type(key) is int else str(_key_text(key))  # json.dumps(int) == str
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def row_tag(self, row_id: str, raw: bytes) -> bytes:
        prefix = b"vaultkit legacy row\x00" + self._scope + bytes.fromhex(row_id)
        return self._key.digest(prefix + raw)[:16]

    def value_tag(self, raw: bytes) -> bytes:
        return self._key.digest(b"vaultkit legacy value\x00" + self._scope + raw)[:8]

    def begun(self, conn: sa.Connection) -> bool:
        migrations, _rows = _legacy_tables(sa.MetaData())
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
        migrations, rows = _legacy_tables(sa.MetaData())
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
        last: Any = None
        count = 0
        while True:
            query = sa.select(pk, raw).where(self.column.is_not(None)).order_by(pk)
            if last is not None:
                query = query.where(pk > last)
            batch = conn.execute(query.limit(batch_size)).all()
            if not batch:
                break
            entries = []
            for key, stored in batch:
                value = _as_raw(stored)
                if value is not None and value[:2] != _MAGIC:
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
            last = batch[-1][0]
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
        _migrations, rows = _legacy_tables(sa.MetaData())
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
        _migrations, rows = _legacy_tables(sa.MetaData())
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
        migrations, rows = _legacy_tables(sa.MetaData())
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
        _migrations, rows = _legacy_tables(sa.MetaData())
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


def _manifests(
    bind: sa.Engine | sa.Connection, vault: Vault, columns: Sequence[sa.Column[Any]]
) -> dict[str, _Manifest]:
    """The manifests of those of ``columns`` whose migration has begun, by column name."""
    manifests = {}
    with bind.connect() if isinstance(bind, sa.Engine) else contextlib.nullcontext(bind) as conn:
        for column in columns:
            manifest = _Manifest(vault, column)
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
    pk, encrypted = _plan(table, columns)
    chosen = encrypted if columns is not None else [c for c in encrypted if c.type.migrating]  # type: ignore[attr-defined]
    counts: dict[str, int] = {}
    for column in chosen:
        manifest = _Manifest(vault, column)
        try:
            with _in_transaction(bind) as conn:
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
    _pk, encrypted = _plan(table, columns)
    chosen = encrypted if columns is not None else [c for c in encrypted if c.type.migrating]  # type: ignore[attr-defined]
    loaded = 0
    with bind.connect() if isinstance(bind, sa.Engine) else contextlib.nullcontext(bind) as conn:
        for column in chosen:
            column_type: Encrypted = column.type  # type: ignore[assignment]
            manifest = _Manifest(vault, column)
            if not manifest.begun(conn):
                raise ConfigurationError(
                    f"{column_type.bound_name}: its migration has not begun, so no legacy value "
                    "is known; run vaultkit.rekey.begin_migration (or vaultkit rekey) first"
                )
            admits, known = manifest.admits(conn)
            column_type.use_legacy_manifest(admits)
            loaded += known
    return loaded


class _Classifier:
    """Decides why a stored value needs re-encryption, caching what the key store says per DEK."""

    def __init__(self, vault: Vault, *, decrypt: bool = True) -> None:
        self._vault = vault
        #: False in a dry run: nothing is decrypted (an audited decrypt would write an event).
        self._decrypt = decrypt
        self._deks: dict[bytes, tuple[DekState | None, str | None]] = {}
        #: Reasons by the first 20 bytes of a value, for columns without ``previous=``.
        self.by_header: dict[bytes, str | None] = {}

    def reason(self, column_type: Encrypted, value: bytes | None, row_key: Any) -> str | None:
        if value is None:
            return None
        if value[:2] != wire.MAGIC:
            return "plaintext"
        if value[2] != wire.VERSION_1 or value[3] != wire.Suite.AES256_GCM_HKDF_SHA256_COMMIT:
            return "outdated"
        dek_id = value[4:20]
        known = self._deks.get(dek_id)
        if known is None:
            record = self._vault.store.get(dek_id)
            known = (record.state, record.domain) if record is not None else (None, None)
            self._deks[dek_id] = known
        state, domain = known
        if column_type.previous is not None:
            if domain != column_type.domain:
                return "moved"
            if not self._decrypt:
                # Only decrypting tells the previous binding from the current one; a value under
                # a retired DEK is re-encrypted either way.
                return "retired" if state is DekState.RETIRED else "unchecked"
            if not column_type.is_current(value, row=row_key):
                return "moved"
        if state is DekState.RETIRED:
            return "retired"
        return None


class _Change(NamedTuple):
    pk: Any
    column: str
    old: bytes
    new: bytes
    digest: bytes | None
    reason: str


@dataclass(frozen=True)
class _Target:
    """One encrypted column as the engine handles it: positions in the selected row, fast paths."""

    name: str
    position: int
    row_key_position: int | None
    type: Encrypted
    digest: Callable[[Any], bytes] | None
    index_position: int | None  # the stored blind index of this column, if it has one
    index_version: int
    open: Callable[[Any], Any] | None  # the column's result processor, when not row-bound
    seal: Callable[[Any], bytes | None] | None  # the column's bind processor, when not row-bound


def _targets(
    dialect: sa.Dialect,
    selected: list[Any],
    encrypted: list[sa.Column[Any]],
    row_keys: dict[str, sa.Column[Any]],
    indexes: dict[str, sa.Column[Any]],
) -> list[_Target]:
    names = [getattr(item, "name", None) or item.key for item in selected]
    targets = []
    for column in encrypted:
        column_type: Encrypted = column.type  # type: ignore[assignment]
        bound = column.name in row_keys
        index = indexes.get(column.name)
        targets.append(
            _Target(
                name=column.name,
                position=names.index(column.name, 1),
                row_key_position=names.index(row_keys[column.name].name) if bound else None,
                type=column_type,
                digest=index.type.digest if index is not None else None,  # type: ignore[attr-defined]
                index_position=names.index(index.name, 1) if index is not None else None,
                index_version=index.type.version if index is not None else 0,  # type: ignore[attr-defined]
                open=None if bound else column_type.result_processor(dialect, None),
                seal=None if bound else column_type.bind_processor(dialect),
            )
        )
    return targets


@dataclass
class _Batch:
    """What :func:`_changes` found in one batch of rows."""

    changes: list[_Change] = field(default_factory=list)
    undecryptable: int = 0
    tampered: int = 0
    #: Manifest entries of rows seen holding ciphertext: (column name, row id).
    forget: list[tuple[str, str]] = field(default_factory=list)
    #: Row ids of the recorded legacy values among ``changes``, by (column name, row key):
    #: forgotten once written.
    legacy_ids: dict[tuple[str, Any], str] = field(default_factory=dict)


def _legacy_entries(
    conn: sa.Connection, manifests: dict[str, _Manifest], rows: Sequence[Any]
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


def _changes(
    rows: Sequence[Any],
    targets: list[_Target],
    classify: _Classifier,
    manifests: dict[str, _Manifest] | None = None,
    legacy: dict[str, dict[Any, tuple[str, bytes]]] | None = None,
    *,
    dry_run: bool = False,
) -> _Batch:
    """The new values of ``rows``: one change per value that needs re-encryption; how many values
    could not be opened, and how many plaintext values were refused as tampered (both left as
    they are; :func:`verify_table` reports them too).

    ``manifests`` are the legacy manifests of the columns whose migration has begun, and
    ``legacy`` their entries for these rows (:func:`_legacy_entries`). With ``dry_run`` the
    changes only carry their reason: nothing is decrypted or encrypted, so no DEK, blind-index
    key or audit event comes into being.
    """
    found = _Batch()
    append = found.changes.append
    manifests = manifests or {}
    legacy = legacy or {}
    by_header = classify.by_header
    plan = [
        (
            t.position,
            t.row_key_position,
            t.type,
            t.type.previous is None,
            t.type.migrating,
            t.open,
            t.seal,
            t.digest,
            t.index_position,
            t.index_version,
            t.name,
            manifests.get(t.name),
            legacy.get(t.name, {}),
        )
        for t in targets
    ]
    for row in rows:
        key = row[0]
        for (
            position,
            rk_at,
            ctype,
            by_dek,
            migrating,
            open_,
            seal,
            digest,
            ix_at,
            ix_v,
            name,
            manifest,
            entries,
        ) in plan:
            old = row[position]
            if old is None:
                continue
            if type(old) is not bytes:
                old = _as_raw(old)
            row_key = row[rk_at] if rk_at is not None else None
            try:
                if by_dek and old[:2] == _MAGIC:
                    # Without previous=, the reason depends on the header alone (version, suite,
                    # DEK): decided once per DEK.
                    header = old[:20]
                    reason = by_header.get(header, _UNKNOWN)
                    if reason is _UNKNOWN:
                        reason = by_header[header] = classify.reason(ctype, old, row_key)
                else:
                    reason = classify.reason(ctype, old, row_key)
                entry = entries.get(key) if entries else None
                if entry is not None and reason != "plaintext":
                    found.forget.append((name, entry[0]))  # ciphertext now: never plaintext again
                if reason is None:
                    if ix_at is None:
                        continue
                    stored = row[ix_at]
                    if stored is not None and stored[0] == ix_v:
                        continue
                    reason = "index"  # missing, or under an older blind-index key version
                elif reason == "plaintext":
                    if manifest is not None and not (migrating and manifest.recorded(entry, old)):
                        found.tampered += 1  # not this row's recorded legacy value: left alone
                        continue
                    if entry is not None:
                        found.legacy_ids[(name, key)] = entry[0]
                    if not migrating:
                        found.undecryptable += 1  # plaintext in a strict column: left for a person
                        continue
                if dry_run:
                    append(_Change(key, name, old, old, None, reason))
                    continue
                if reason == "plaintext":
                    plain = ctype.open_legacy(old, row=row_key)
                else:
                    plain = (
                        open_(old) if open_ is not None else ctype.decrypt_value(old, row=row_key)
                    )
            except DecryptionError:
                found.undecryptable += 1
                continue
            if type(plain) is SealedValue:
                raise ConfigurationError(f"the re-keying principal has no grant for {ctype.domain}")
            if reason == "index":
                new = old  # the value stays as it is; only its index is written
            elif seal is not None:
                new = seal(plain)
            else:
                new = ctype.encrypt_value(RowBound(plain, row_key))
            append(
                _Change(key, name, old, new, digest(plain) if digest is not None else None, reason)
            )
    return found


def _lock_statement(dialect: sa.Dialect, pk: sa.Column[Any]) -> sa.Select[Any] | None:
    """``SELECT key ... WHERE key IN (:keys) ORDER BY key FOR UPDATE``; None on SQLite, which
    locks the whole database for a writer instead of rows."""
    if dialect.name == "sqlite":
        return None
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        keys: Any = pk == sa.any_(sa.bindparam("keys", type_=ARRAY(pk.type)))
    else:
        keys = pk.in_(sa.bindparam("keys", expanding=True))
    return sa.select(pk).where(keys).order_by(pk).with_for_update()


def _write_each(
    conn: sa.Connection,
    table: sa.Table,
    pk: sa.Column[Any],
    indexes: dict[str, sa.Column[Any]],
    changes: list[_Change],
) -> list[_Change]:
    """Portable path: one executemany of compare-and-set UPDATEs per column. Returns the misses."""
    missed: list[_Change] = []
    by_column: dict[str, list[_Change]] = {}
    for change in changes:
        by_column.setdefault(change.column, []).append(change)
    for name, items in by_column.items():
        column = table.columns[name]
        values: dict[Any, Any] = {column: sa.bindparam("_new", type_=sa.LargeBinary)}
        index = indexes.get(name)
        if index is not None:
            values[index] = sa.bindparam("_ix", type_=sa.LargeBinary)
        statement = (
            sa.update(table)
            .where(
                pk == sa.bindparam("_pk", type_=pk.type),
                sa.type_coerce(column, sa.LargeBinary)
                == sa.bindparam("_old", type_=sa.LargeBinary),
            )
            .values(values)
            .execution_options(vaultkit_raw=True)
        )
        params = [{"_pk": c.pk, "_old": c.old, "_new": c.new, "_ix": c.digest} for c in items]
        result = conn.execute(statement, params)
        if conn.dialect.supports_sane_multi_rowcount and result.rowcount == len(items):
            continue
        # Some rows changed meanwhile (or the driver cannot tell): look at each row; a row the
        # application changed does not hold our new value.
        current: dict[Any, Any] = dict(
            conn.execute(
                sa.select(pk, sa.type_coerce(column, sa.LargeBinary)).where(
                    pk.in_([c.pk for c in items])
                )
            ).all()
        )
        missed.extend(c for c in items if _as_raw(current.get(c.pk)) != c.new)
    return missed


def _write_postgresql(
    conn: sa.Connection,
    table: sa.Table,
    pk: sa.Column[Any],
    indexes: dict[str, sa.Column[Any]],
    changes: list[_Change],
) -> list[_Change]:
    """PostgreSQL path: one UPDATE ... FROM unnest(arrays) per batch, a compare-and-set per column.

    ``SET c = CASE WHEN t.c = old THEN new ELSE t.c END`` for every column, so a value the
    application changed is left alone while the row's other columns are still re-keyed; RETURNING
    tells which values were written.
    """
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    names = sorted({c.column for c in changes})
    rows: dict[Any, dict[str, _Change]] = {}
    for change in changes:
        rows.setdefault(change.pk, {})[change.column] = change
    keys = list(rows)
    params: dict[str, Any] = {"pk": keys}
    arrays = [f"CAST(:pk AS {pk.type.compile(dialect=dialect)}[])"]
    aliases = ["pk"]
    sets: list[str] = []
    wanted: list[str] = []
    returned: list[str] = []
    for i, name in enumerate(names):
        col = quote(name)
        params[f"o{i}"] = [rows[k][name].old if name in rows[k] else None for k in keys]
        params[f"n{i}"] = [rows[k][name].new if name in rows[k] else None for k in keys]
        arrays += [f"CAST(:o{i} AS BYTEA[])", f"CAST(:n{i} AS BYTEA[])"]
        aliases += [f"o{i}", f"n{i}"]
        hit = f"(v.n{i} IS NOT NULL AND t.{col} = v.o{i})"
        sets.append(f"{col} = CASE WHEN {hit} THEN v.n{i} ELSE t.{col} END")
        wanted.append(hit)
        returned.append(f"t.{col} = v.n{i}")
        index = indexes.get(name)
        if index is not None:
            ix = quote(index.name)
            params[f"x{i}"] = [rows[k][name].digest if name in rows[k] else None for k in keys]
            arrays.append(f"CAST(:x{i} AS BYTEA[])")
            aliases.append(f"x{i}")
            sets.append(f"{ix} = CASE WHEN {hit} THEN v.x{i} ELSE t.{ix} END")
    # Identifiers come from the table definition, quoted by the dialect; values are parameters.
    statement = (
        f"UPDATE {dialect.identifier_preparer.format_table(table)} AS t SET {', '.join(sets)} "  # noqa: S608
        f"FROM unnest({', '.join(arrays)}) AS v({', '.join(aliases)}) "
        f"WHERE t.{quote(pk.name)} = v.pk AND ({' OR '.join(wanted)}) "
        f"RETURNING t.{quote(pk.name)}, {', '.join(returned)}"
    )
    # Straight to the driver, with binary parameters: the text form of a bytea array would
    # escape every byte in Python (measured: a third of the engine's time).
    cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(re.sub(r":(\w+)", r"%(\1)b", statement), params, binary=True)
        returned_rows = cursor.fetchall()
    finally:
        cursor.close()
    written: set[tuple[Any, str]] = set()
    for result_row in returned_rows:
        key = result_row[0]
        written.update((key, name) for i, name in enumerate(names) if result_row[i + 1])
    return [c for c in changes if (c.pk, c.column) not in written]


def _conflict(exc: BaseException) -> str | None:
    """What a deadlock, serialization failure or lock timeout the server reported is called, or
    None for any other error.

    PostgreSQL says it by SQLSTATE (psycopg 3 ``sqlstate``, psycopg2 ``pgcode``), MySQL and
    MariaDB by error number (the first argument of PyMySQL's and mysqlclient's errors); the error
    comes wrapped by SQLAlchemy (``DBAPIError.orig``) or straight from the driver (the PostgreSQL
    write path uses the driver's cursor).
    """
    error = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(code, str) and code in _CONFLICT_SQLSTATES:
        return f"SQLSTATE {code}: {_CONFLICT_SQLSTATES[code]}"
    args = getattr(error, "args", ())
    if args and type(args[0]) is int and args[0] in _CONFLICT_MYSQL:
        return f"error {args[0]}: {_CONFLICT_MYSQL[args[0]]}"
    return None


def _restore(report: RekeyReport, saved: RekeyReport) -> None:
    """Put back the counts of an aborted transaction's batch (it is redone)."""
    for item in dataclasses.fields(report):
        setattr(report, item.name, getattr(saved, item.name))


def _count(report: RekeyReport, change: _Change) -> None:
    report.values_rewritten += 1
    if change.reason == "plaintext":
        report.plaintext_encrypted += 1
    elif change.reason == "retired":
        report.retired_reencrypted += 1
    elif change.reason == "outdated":
        report.outdated_reencrypted += 1
    elif change.reason == "index":
        report.values_rewritten -= 1  # the value itself was not rewritten
        report.indexes_rebuilt += 1
    elif change.reason == "unchecked":
        report.values_rewritten -= 1  # a dry run cannot tell without decrypting
        report.unchecked += 1
    else:
        report.moved += 1


@dataclass
class _Range:
    seq: int
    lo: str | None
    hi: str | None
    finished: bool = False


class _Claims:
    """Which range this worker works on; with row locks where the database has them."""

    def __init__(self, engine: sa.Engine, ranges: sa.Table, job: str) -> None:
        self._engine = engine
        self._ranges = ranges
        self._job = job
        self.locking = engine.dialect.name in ("postgresql", "mysql", "mariadb")
        self._seen: set[int] = set()

    @contextmanager
    def claim(self) -> Iterator[_Range | None]:
        """Yield an unclaimed, unfinished range (or None); mark it done if the caller finished it."""
        ranges = self._ranges
        query = (
            sa.select(ranges.c.seq, ranges.c.lo, ranges.c.hi)
            .where(ranges.c.job == self._job, ranges.c.done.is_(False))
            .order_by(ranges.c.seq)
            .limit(1)
        )
        if not self.locking:
            with self._engine.connect() as conn:
                if self._seen:
                    query = query.where(ranges.c.seq.not_in(self._seen))
                found = conn.execute(query).first()
            if found is None:
                yield None
                return
            self._seen.add(found.seq)
            claimed = _Range(found.seq, found.lo, found.hi)
            yield claimed
            if claimed.finished:
                with self._engine.begin() as conn:
                    conn.execute(self._mark_done(found.seq))
            return
        # The lock lives as long as this connection's transaction: a worker that dies (kill -9,
        # lost machine) loses its connection, and with it its claim.
        claimer = self._engine.connect().execution_options(isolation_level="READ COMMITTED")
        try:
            with claimer.begin():
                found = claimer.execute(query.with_for_update(skip_locked=True)).first()
                if found is None:
                    yield None
                    return
                claimed = _Range(found.seq, found.lo, found.hi)
                yield claimed
                if claimed.finished:
                    claimer.execute(self._mark_done(found.seq))
        finally:
            claimer.close()

    def _mark_done(self, seq: int) -> sa.Update:
        ranges = self._ranges
        return (
            ranges.update().where(ranges.c.job == self._job, ranges.c.seq == seq).values(done=True)
        )


def _cut_ranges(
    engine: sa.Engine, pk: sa.Column[Any], ranges: sa.Table, job: str, range_size: int
) -> int:
    """Cut the key space into ranges once per job (the first worker does it); return how many."""
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(ranges).where(ranges.c.job == job)
        ).scalar_one()
    if count:
        return int(count)
    bounds: list[Any] = []
    with engine.connect() as conn:
        last: Any = None
        while True:
            query = sa.select(pk).order_by(pk).offset(range_size - 1).limit(1)
            if last is not None:
                query = query.where(pk > last)
            bound = conn.execute(query).scalar()
            if bound is None:
                break
            bounds.append(bound)
            last = bound
    edges = [None, *bounds, None]
    rows = [
        {"job": job, "seq": i, "lo": _key_text(edges[i]), "hi": _key_text(edges[i + 1])}
        for i in range(len(edges) - 1)
    ]
    try:
        with engine.begin() as conn:
            # Multi-row INSERTs, not an executemany: a driver pipeline that fails on a concurrent
            # worker's rows would complain again when it is torn down.
            for start in range(0, len(rows), 1000):
                chunk = [{**r, "done": False} for r in rows[start : start + 1000]]
                conn.execute(ranges.insert().values(chunk))
    except sa.exc.IntegrityError:
        pass  # another worker cut them at the same moment; use its ranges
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(ranges).where(ranges.c.job == job)
            ).scalar_one()
        )


def rekey_table(
    engine: sa.Engine,
    table: sa.Table,
    *,
    vault: Vault,
    columns: Sequence[str] | None = None,
    job: str | None = None,
    batch_size: int = 1000,
    range_size: int = 20_000,
    dry_run: bool = False,
    principal: Principal | None = None,
    max_batches: int | None = None,
    progress: Callable[[RekeyReport], None] | None = None,
    worker: str | None = None,
    prefetch: bool = True,
    retry: ConflictRetry | None = None,
    _after_read: Callable[[Sequence[Any]], None] | None = None,
) -> RekeyReport:
    """Re-encrypt the values of ``table``'s encrypted columns that need it; one worker's run.

    Run it in several processes, here or on other machines, with the same ``job`` to share the
    work (PostgreSQL or MariaDB); each returns the counts of what it did itself.

    Args:
        engine: the database of ``table``.
        table: an SQLAlchemy table (``Model.__table__``) with ``Encrypted`` columns.
        vault: the vault those columns use (configured with ``vaultkit.sqla.configure``).
        columns: names of the encrypted columns to re-key (default: all).
        job: the job's name (default ``<table>:rekey``); workers of one job share its ranges and
            a new run resumes its checkpoints. Use a new name for a new pass.
        batch_size: rows per batch and transaction.
        range_size: rows per range claimed by one worker (used when the job's ranges are cut).
        dry_run: count what would change; write nothing (not even checkpoints), one worker.
        principal: who the engine acts as (default: ``vaultkit-rekey`` with grants for every
            domain of the vault); its reads and writes appear in the audit log under that name.
        max_batches: stop after this many batches (the checkpoints keep the place).
        progress: called after every batch with the report so far.
        worker: this worker's name in the checkpoints (default ``host:pid``).
        prefetch: on a database server, read and re-encrypt the next batch in a helper thread
            while this one is written (about 20% faster on PostgreSQL here; see
            docs/benchmarks.md). Ignored on SQLite.
        retry: how a batch aborted by the database on a conflict (deadlock, serialization
            failure, lock timeout) is retried; default :class:`ConflictRetry()`.

    Returns:
        A :class:`RekeyReport`.

    Raises:
        ConflictError: the database aborted one batch on a conflict at every attempt.
    """
    if batch_size < 1 or range_size < 1:
        raise ConfigurationError("batch_size and range_size must be at least 1")
    started = time.monotonic()
    retry = retry or ConflictRetry()
    pk, encrypted = _plan(table, columns)
    job = job or default_job(table)
    report = RekeyReport(job=job, worker=worker or _worker_name(), dry_run=dry_run)
    indexes = {
        c.type.source: c for c in table.columns if isinstance(c.type, BlindIndexType)
    }  # source column name -> index column
    row_keys, selected = _selection(pk, encrypted, indexes)
    classify = _Classifier(vault, decrypt=not dry_run)
    actor = principal or Principal("vaultkit-rekey", grants=vault.domains)
    write = _write_postgresql if engine.dialect.name == "postgresql" else _write_each
    lock_rows = _lock_statement(engine.dialect, pk)
    targets = _targets(engine.dialect, selected, encrypted, row_keys, indexes)
    if not dry_run:
        migrating = [c.name for c in encrypted if c.type.migrating]  # type: ignore[attr-defined]
        if migrating:
            with vault.acting_as(actor, purpose=f"rekey {job}"):
                begin_migration(engine, table, vault=vault, columns=migrating)
    manifests = _manifests(engine, vault, encrypted)
    relaxed_commit = engine.dialect.name == "postgresql" and not dry_run
    # On a database server, the next batch is read and re-encrypted in a helper thread while
    # this one is written: the client's work and the server's overlap. (SQLite runs in-process.)
    executor = (
        ThreadPoolExecutor(1, thread_name_prefix="vaultkit-rekey")
        if prefetch and engine.dialect.name != "sqlite"
        else None
    )
    ranges, checkpoints = _tables(sa.MetaData())

    def run_range(seq: int, lo: Any, hi: Any) -> bool:
        """Work through one range from its checkpoint; False when stopped by ``max_batches``."""
        last = lo
        if not dry_run:
            with engine.connect() as conn:
                saved = conn.execute(
                    sa.select(checkpoints.c.last_key, checkpoints.c.done).where(
                        checkpoints.c.job == job, checkpoints.c.seq == seq
                    )
                ).first()
            if saved is not None and saved.done:
                return True
            if saved is not None and saved.last_key is not None:
                last = _key_value(pk, saved.last_key)
                if report.resumed_after is None:
                    report.resumed_after = last

        def batch(after: Any) -> sa.Select[Any]:
            query = sa.select(*selected).order_by(pk).limit(batch_size)
            if after is not None:
                query = query.where(pk > after)
            if hi is not None:
                query = query.where(pk <= hi)
            return query

        def fetch(after: Any) -> tuple[Sequence[Any], _Batch]:
            with engine.connect() as reader:
                rows = reader.execute(batch(after)).all()
                legacy = _legacy_entries(reader, manifests, rows)
            return rows, _changes(rows, targets, classify, manifests, legacy, dry_run=dry_run)

        def write_batch(
            after: Any, prefetched: tuple[Sequence[Any], _Batch] | None
        ) -> tuple[Sequence[Any], bool]:
            """One batch in one transaction (read unless prefetched, write, checkpoint)."""
            with engine.begin() as conn:
                if relaxed_commit:
                    # Safe here: a batch's values and its checkpoint commit together, so losing
                    # the last commits in a server crash only means redoing those batches.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                if prefetched is None:
                    rows = conn.execute(batch(after)).all()
                    legacy = _legacy_entries(conn, manifests, rows)
                    found = _changes(rows, targets, classify, manifests, legacy, dry_run=dry_run)
                else:
                    rows, found = prefetched
                if _after_read is not None:
                    _after_read(rows)
                report.rows_scanned += len(rows)
                report.undecryptable += found.undecryptable
                report.tampered += found.tampered
                if dry_run:
                    for change in found.changes:
                        _count(report, change)
                else:
                    _apply(conn, found)
                done = len(rows) < batch_size
                if not dry_run:
                    position = getattr(rows[-1], pk.name) if rows else after
                    _save(conn, checkpoints, job, seq, position, done=done, worker=report.worker)
            return rows, done

        ahead: Future[tuple[Sequence[Any], _Batch]] | None = None
        while True:
            if max_batches is not None and report.batches >= max_batches:
                return False
            prefetched: tuple[Sequence[Any], _Batch] | None = None
            if executor is not None:
                # Read and compute this batch in the helper thread (already started while the
                # previous batch was written), then start on the next one while this is written.
                if ahead is None:
                    ahead = executor.submit(contextvars.copy_context().run, fetch, last)
                prefetched = ahead.result()
                ahead = None
                rows = prefetched[0]
                last_batch = max_batches is not None and report.batches + 1 >= max_batches
                if len(rows) == batch_size and not last_batch:
                    after = getattr(rows[-1], pk.name)
                    ahead = executor.submit(contextvars.copy_context().run, fetch, after)
            for attempt in range(retry.attempts):
                counts = dataclasses.replace(report)  # restored if the database aborts the batch
                try:
                    rows, done = write_batch(last, prefetched)
                    break
                except Exception as exc:
                    conflict = _conflict(exc)
                    if conflict is None:
                        raise
                    _restore(report, counts)
                    # Read the batch again inside the next transaction (what the application
                    # committed meanwhile), and the batch after it too: its place may move.
                    prefetched = None
                    if ahead is not None:
                        ahead.cancel()
                        ahead = None
                    if attempt == retry.attempts - 1:
                        raise ConflictError(
                            f"{table.name}: the database aborted a batch {retry.attempts} times "
                            f"on a conflict ({conflict}); the batches before it are committed: "
                            "run the same command again to resume"
                        ) from None
                    report.conflicts_retried += 1
                    delay = retry.delay(attempt)
                    log.warning(
                        "%s: batch aborted by the database (%s); retry %d of %d in %.2f s",
                        table.name,
                        conflict,
                        attempt + 1,
                        retry.attempts - 1,
                        delay,
                    )
                    time.sleep(delay)
            if rows:
                last = getattr(rows[-1], pk.name)
            report.batches += 1
            if progress is not None:
                progress(report)
            if done:
                return True

    def _apply(conn: sa.Connection, found: _Batch) -> None:
        if found.changes and lock_rows is not None:
            # Lock the rows to be written first, in key order: two transactions that each lock
            # in key order cannot deadlock on these rows (an application that locks them in
            # another order still can; the batch is then retried).
            conn.execute(lock_rows, {"keys": sorted({c.pk for c in found.changes})}).all()
        # Rows that hold ciphertext after this batch leave the legacy manifest, in the same
        # transaction as the batch's values.
        forget = list(found.forget)
        _write_batch(conn, found, forget)
        by_column: dict[str, list[str]] = {}
        for name, row_id in forget:
            by_column.setdefault(name, []).append(row_id)
        for name, row_ids in by_column.items():
            manifests[name].forget(conn, row_ids)

    def _write_batch(conn: sa.Connection, found: _Batch, forget: list[tuple[str, str]]) -> None:
        pending = found.changes
        legacy_ids = dict(found.legacy_ids)
        for attempt in range(CAS_ATTEMPTS):
            missed = write(conn, table, pk, indexes, pending) if pending else []
            missed_ids = {id(c) for c in missed}
            for change in pending:
                if id(change) not in missed_ids:
                    _count(report, change)
                    row_id = legacy_ids.get((change.column, change.pk))
                    if change.reason == "plaintext" and row_id is not None:
                        forget.append((change.column, row_id))
            if not missed:
                return
            if attempt == 0:
                report.changed_meanwhile += len(missed)
            # Read the changed rows again (this transaction sees the application's commit) and
            # redo only what still needs it.
            again = conn.execute(
                sa.select(*selected).where(pk.in_({c.pk for c in missed})).order_by(pk)
            ).all()
            wanted = {(c.pk, c.column) for c in missed}
            legacy = _legacy_entries(conn, manifests, again)
            redo = _changes(again, targets, classify, manifests, legacy)
            report.undecryptable += redo.undecryptable
            report.tampered += redo.tampered
            forget.extend(redo.forget)
            legacy_ids.update(redo.legacy_ids)
            pending = [c for c in redo.changes if (c.pk, c.column) in wanted]
        report.left_changing += len(pending)

    with (
        vault.acting_as(actor, purpose=f"rekey {job}"),
        executor if executor is not None else contextlib.nullcontext(),
    ):
        if dry_run:
            report.ranges_total = 1
            report.finished = run_range(0, None, None)
            report.ranges_done = int(report.finished)
        else:
            _create_tables(engine)
            report.ranges_total = _cut_ranges(engine, pk, ranges, job, range_size)
            claims = _Claims(engine, ranges, job)
            stopped = False
            while not stopped:
                with claims.claim() as claimed:
                    if claimed is None:
                        report.finished = _job_done(engine, ranges, job)
                        if report.finished or not claims.locking:
                            break
                        # Other workers hold the last ranges: wait, so as to take over a range
                        # whose worker dies (its lock goes with its connection).
                        time.sleep(0.2)
                        continue
                    lo, hi = _key_value(pk, claimed.lo), _key_value(pk, claimed.hi)
                    claimed.finished = run_range(claimed.seq, lo, hi)
                    stopped = not claimed.finished  # max_batches: the range stays open
                    report.ranges_done += claimed.finished
    if report.finished and not dry_run and manifests:
        with engine.begin() as conn:
            for manifest in manifests.values():
                manifest.finish_if_empty(conn)
    report.seconds = time.monotonic() - started
    return report


def _job_done(engine: sa.Engine, ranges: sa.Table, job: str) -> bool:
    with engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(ranges)
            .where(ranges.c.job == job, ranges.c.done.is_(False))
        ).scalar_one()
    return int(left) == 0


def _save(
    conn: sa.Connection,
    checkpoints: sa.Table,
    job: str,
    seq: int,
    last: Any,
    *,
    done: bool,
    worker: str,
) -> None:
    values = {
        "last_key": _key_text(last),
        "done": done,
        "worker": worker[:255],
        "updated_at": dt.datetime.now(dt.UTC),
    }
    where = (checkpoints.c.job == job, checkpoints.c.seq == seq)
    if conn.execute(checkpoints.update().where(*where).values(**values)).rowcount == 0:
        conn.execute(checkpoints.insert().values(job=job, seq=seq, **values))


def plan_job(
    engine: sa.Engine, table: sa.Table, *, job: str | None = None, range_size: int = 20_000
) -> tuple[int, int]:
    """Cut the job's ranges if no worker has yet; return how many there are and how many are open.

    :func:`rekey_table` does this itself; call it first to size a progress display or to cut the
    ranges before starting workers on several machines.
    """
    pk, _ = _plan(table, None)
    job = job or default_job(table)
    ranges, _checkpoints = _tables(sa.MetaData())
    _create_tables(engine)
    total = _cut_ranges(engine, pk, ranges, job, range_size)
    with engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(ranges)
            .where(ranges.c.job == job, ranges.c.done.is_(False))
        ).scalar_one()
    return total, int(left)


def drop_job(engine: sa.Engine, job: str) -> None:
    """Forget a job's ranges and checkpoints (to run a finished job's name again from the start)."""
    ranges, checkpoints = _tables(sa.MetaData())
    with engine.begin() as conn:
        for table in (checkpoints, ranges):
            if sa.inspect(conn).has_table(table.name):
                conn.execute(table.delete().where(table.c.job == job))


def verify_table(
    engine: sa.Engine,
    table: sa.Table,
    *,
    vault: Vault,
    columns: Sequence[str] | None = None,
    principal: Principal | None = None,
) -> VerifyReport:
    """Decrypt every value of ``table``'s encrypted columns; count by DEK, version and problem."""
    pk, encrypted = _plan(table, columns)
    report = VerifyReport()
    indexes = {c.type.source: c for c in table.columns if isinstance(c.type, BlindIndexType)}
    row_keys, selected = _selection(pk, encrypted, indexes)
    classify = _Classifier(vault)
    actor = principal or Principal("vaultkit-verify", grants=vault.domains)
    manifests = _manifests(engine, vault, encrypted)
    with (
        vault.acting_as(actor, purpose=f"verify {table.name}"),
        engine.connect() as conn,
        engine.connect() as lookup,
    ):
        result = conn.execution_options(yield_per=2000).execute(sa.select(*selected).order_by(pk))
        for chunk in result.partitions():
            # Plaintext is checked against the legacy manifest of its column: the recorded value
            # of its row is still to migrate; anything else is a downgrade.
            legacy = _legacy_entries(lookup, manifests, chunk)
            for row in chunk:
                _verify_row(row, encrypted, row_keys, indexes, classify, manifests, legacy, report)
    return report


def _verify_row(
    row: Any,
    encrypted: list[sa.Column[Any]],
    row_keys: dict[str, sa.Column[Any]],
    indexes: dict[str, sa.Column[Any]],
    classify: _Classifier,
    manifests: dict[str, _Manifest],
    legacy: dict[str, dict[Any, tuple[str, bytes]]],
    report: VerifyReport,
) -> None:
    mapping = row._mapping
    for column in encrypted:
        value = _as_raw(mapping[column.name])
        if value is None:
            continue
        report.values += 1
        column_type: Encrypted = column.type  # type: ignore[assignment]
        if value[:2] != wire.MAGIC:
            manifest = manifests.get(column.name)
            if manifest is None or (
                column_type.migrating
                and manifest.recorded(legacy.get(column.name, {}).get(row[0]), value)
            ):
                report.plaintext += 1
            else:
                report.tampered += 1
            continue
        row_key = mapping[row_keys[column.name].name] if column.name in row_keys else None
        try:
            column_type.decrypt_value(value, row=row_key)
            reason = classify.reason(column_type, value, row_key)
        except DecryptionError:
            report.undecryptable += 1
            continue
        report.by_dek[value[4:20].hex()] += 1
        report.by_version[value[2]] += 1
        index = indexes.get(column.name)
        if index is not None:
            stored = _as_raw(mapping[index.name])
            if stored is None or stored[0] != index.type.version:  # type: ignore[attr-defined]
                report.index_outdated += 1
        if reason == "retired":
            report.under_retired += 1
        elif reason == "moved":
            report.previous_binding += 1
