"""Alembic operations that encrypt a plaintext column in place, and decrypt it back for downgrade.

Import this module in ``env.py`` (or in the migration) to register them::

    import vaultkit.sqla.alembic  # noqa: F401 - registers op.encrypt_column / op.decrypt_column

    def upgrade():
        op.encrypt_column("members", "email", sa.String(320), domain="identity",
                          index="email_index", normalize=str.lower)

    def downgrade():
        op.decrypt_column("members", "email", sa.String(320), domain="identity",
                          index="email_index")

``encrypt_column`` adds a binary column, fills it with the ciphertext of every row in key-ordered
batches (and the blind index, when named), drops the plaintext column and gives the new one its
name. ``decrypt_column`` does the reverse. Both run inside the migration's transaction where the
database has transactional DDL (PostgreSQL, SQLite): an error leaves the table as it was.

They rewrite every row while the migration runs. For tables the application must keep using
meanwhile, declare the column ``Encrypted(..., migrating=True)``, record its legacy manifest with
``vaultkit.rekey.begin_migration(op.get_bind(), table, vault=...)`` and run ``vaultkit rekey``
instead (docs/operations.md, "Encrypting a legacy plaintext column").

In a table of a named schema (``schema=``), the values are bound to that schema exactly as the
model's ``Encrypted`` column binds them (docs/wire-format.md, "Column binding").

The vault comes from :func:`vaultkit.sqla.configure` (call it in ``env.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeEngine

from vaultkit._access import Principal
from vaultkit.errors import ConfigurationError
from vaultkit.sqla._registry import DEFAULT, get_vault
from vaultkit.sqla.types import BlindIndexType, Encrypted, RowBound

__all__ = ["DecryptColumnOp", "EncryptColumnOp"]

_BATCH = 1000
_SUFFIX = "__vaultkit_new"


class _ColumnOp(MigrateOperation):
    def __init__(
        self,
        table_name: str,
        column_name: str,
        inner: TypeEngine[Any] | type[TypeEngine[Any]],
        *,
        domain: str,
        row_key: str | None = None,
        pad_to: int | None = None,
        vault: str = DEFAULT,
        index: str | None = None,
        normalize: Callable[[Any], Any] | None = None,
        index_bits: int | None = None,
        schema: str | None = None,
        batch_size: int = _BATCH,
    ) -> None:
        self.table_name = table_name
        self.column_name = column_name
        self.inner = inner() if isinstance(inner, type) else inner
        self.domain = domain
        self.row_key = row_key
        self.pad_to = pad_to
        self.vault = vault
        self.index = index
        self.normalize = normalize
        self.index_bits = index_bits
        self.schema = schema
        self.batch_size = batch_size

    def _kwargs(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "row_key": self.row_key,
            "pad_to": self.pad_to,
            "vault": self.vault,
            "index": self.index,
            "normalize": self.normalize,
            "index_bits": self.index_bits,
            "schema": self.schema,
            "batch_size": self.batch_size,
        }

    def encrypted_type(self) -> Encrypted:
        """The column's type once encrypted: bound to its final schema, table and column names,
        exactly as the model's ``Encrypted`` column binds them."""
        return Encrypted(
            self.inner,
            domain=self.domain,
            row_key=self.row_key,
            vault=self.vault,
            pad_to=self.pad_to,
            table=self.table_name,
            column=self.column_name,
            schema=self.schema,
        )

    def index_type(self) -> BlindIndexType | None:
        if self.index is None:
            return None
        index = BlindIndexType(
            self.column_name,
            domain=self.domain,
            bits=self.index_bits,
            vault=self.vault,
            normalize=self.normalize,
        )
        # Attached the way a model declares it: key per domain, table and source column.
        sa.Table(
            self.table_name,
            sa.MetaData(),
            sa.Column(self.column_name, self.encrypted_type()),
            sa.Column(self.index, index),
            schema=self.schema,
        )
        return index


@Operations.register_operation("encrypt_column")
class EncryptColumnOp(_ColumnOp):
    """``op.encrypt_column(table, column, inner_type, domain=..., ...)``: plaintext -> ciphertext."""

    @classmethod
    def encrypt_column(
        cls,
        operations: Operations,
        table_name: str,
        column_name: str,
        inner: TypeEngine[Any] | type[TypeEngine[Any]],
        **kwargs: Any,
    ) -> None:
        """Encrypt ``table_name.column_name`` in place (see the module documentation)."""
        operations.invoke(cls(table_name, column_name, inner, **kwargs))

    def reverse(self) -> DecryptColumnOp:
        return DecryptColumnOp(self.table_name, self.column_name, self.inner, **self._kwargs())


@Operations.register_operation("decrypt_column")
class DecryptColumnOp(_ColumnOp):
    """``op.decrypt_column(table, column, inner_type, domain=..., ...)``: ciphertext -> plaintext."""

    @classmethod
    def decrypt_column(
        cls,
        operations: Operations,
        table_name: str,
        column_name: str,
        inner: TypeEngine[Any] | type[TypeEngine[Any]],
        **kwargs: Any,
    ) -> None:
        """Decrypt ``table_name.column_name`` back to ``inner`` in place (for a downgrade)."""
        operations.invoke(cls(table_name, column_name, inner, **kwargs))

    def reverse(self) -> EncryptColumnOp:
        return EncryptColumnOp(self.table_name, self.column_name, self.inner, **self._kwargs())


def _existing(operations: Operations, operation: _ColumnOp) -> tuple[sa.Table, sa.Column[Any]]:
    connection = operations.get_bind()
    table = sa.Table(
        operation.table_name, sa.MetaData(), schema=operation.schema, autoload_with=connection
    )
    primary = list(table.primary_key.columns)
    if len(primary) != 1:
        raise ConfigurationError(f"{operation.table_name}: needs a single-column primary key")
    if operation.column_name not in table.columns:
        raise ConfigurationError(f"{operation.table_name} has no column {operation.column_name}")
    if operation.row_key is not None and operation.row_key not in table.columns:
        raise ConfigurationError(f"{operation.table_name} has no column {operation.row_key}")
    return table, primary[0]


def _rewrite(
    operations: Operations,
    operation: _ColumnOp,
    new_type: TypeEngine[Any],
    convert: Callable[[Any, Any], Any],
) -> None:
    """Add ``column__vaultkit_new``, fill it from ``column`` in batches, swap the two."""
    connection = operations.get_bind()
    table, pk = _existing(operations, operation)
    old = table.columns[operation.column_name]
    temporary = operation.column_name + _SUFFIX
    operations.add_column(
        operation.table_name, sa.Column(temporary, new_type, nullable=True), schema=operation.schema
    )
    target = sa.table(
        operation.table_name,
        sa.column(pk.name),
        sa.column(temporary, sa.LargeBinary if isinstance(new_type, sa.LargeBinary) else new_type),
        *([sa.column(operation.index, sa.LargeBinary)] if operation.index else []),
        schema=operation.schema,
    )
    row_key = table.columns[operation.row_key] if operation.row_key else None
    selected = [pk, sa.type_coerce(old, sa.LargeBinary if _is_binary(old) else old.type)]
    if row_key is not None:
        selected.append(row_key)
    index = operation.index_type() if isinstance(operation, EncryptColumnOp) else None
    last: Any = None
    while True:
        query = sa.select(*selected).order_by(pk).limit(operation.batch_size)
        if last is not None:
            query = query.where(pk > last)
        rows = connection.execute(query).all()
        if not rows:
            break
        params = []
        for row in rows:
            value = row[1]
            row_value = row[2] if row_key is not None else None
            entry = {"_pk": row[0], "_v": None if value is None else convert(value, row_value)}
            if index is not None:
                entry["_ix"] = None if value is None else index.digest(_plain(value, old))
            params.append(entry)
        values: dict[str, Any] = {temporary: sa.bindparam("_v")}
        if index is not None and operation.index:
            values[operation.index] = sa.bindparam("_ix")
        connection.execute(
            target.update()
            .where(target.c[pk.name] == sa.bindparam("_pk"))
            .values(values)
            .execution_options(vaultkit_raw=True),
            params,
        )
        last = rows[-1][0]
    with operations.batch_alter_table(operation.table_name, schema=operation.schema) as batch:
        batch.drop_column(operation.column_name)
        batch.alter_column(
            temporary,
            new_column_name=operation.column_name,
            nullable=old.nullable,
            existing_type=new_type,
        )


def _is_binary(column: sa.Column[Any]) -> bool:
    return isinstance(column.type, sa.LargeBinary | sa.types._Binary)


def _plain(value: Any, column: sa.Column[Any]) -> Any:
    if isinstance(value, bytes | bytearray | memoryview) and not _is_binary(column):
        return bytes(value).decode("utf-8")
    return value


def _principal(operation: _ColumnOp) -> Principal:
    return Principal("alembic-migration", grants={operation.domain})


@Operations.implementation_for(EncryptColumnOp)
def _encrypt_column(operations: Operations, operation: EncryptColumnOp) -> None:
    vault = get_vault(operation.vault)
    encrypted = operation.encrypted_type()
    if operation.index is not None:
        inspector = sa.inspect(operations.get_bind())
        names = {c["name"] for c in inspector.get_columns(operation.table_name, operation.schema)}
        if operation.index not in names:
            raise ConfigurationError(
                f"{operation.table_name} has no column {operation.index}: add the blind-index "
                "column (op.add_column) before encrypt_column"
            )

    def convert(value: Any, row: Any) -> bytes | None:
        return encrypted.encrypt_value(RowBound(value, row) if operation.row_key else value)

    with vault.acting_as(_principal(operation), purpose=f"alembic encrypt {operation.table_name}"):
        # Stored as the Encrypted type stores: BYTEA, BLOB, or LONGBLOB on MariaDB and MySQL.
        dialect = operations.get_bind().dialect.name
        storage = mysql.LONGBLOB() if dialect in ("mysql", "mariadb") else sa.LargeBinary()
        _rewrite(operations, operation, storage, convert)


@Operations.implementation_for(DecryptColumnOp)
def _decrypt_column(operations: Operations, operation: DecryptColumnOp) -> None:
    vault = get_vault(operation.vault)
    encrypted = operation.encrypted_type()

    def convert(value: Any, row: Any) -> Any:
        return encrypted.decrypt_value(bytes(value), row=row)

    with vault.acting_as(_principal(operation), purpose=f"alembic decrypt {operation.table_name}"):
        _rewrite(operations, operation, operation.inner, convert)
