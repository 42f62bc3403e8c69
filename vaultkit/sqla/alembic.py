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

For a column of a subject-scoped domain, ``subject="member_id"`` names the column holding each
row's subject, as on the model's ``Encrypted`` column: each value is encrypted under its member's
key (a row whose subject is NULL stops the migration). ``on_erased=`` is rendered as the model
declares it; for ``decrypt_column``, ``on_erased="null"`` turns erased values into NULL.

The vault comes from :func:`vaultkit.sqla.configure` (call it in ``env.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations
from sqlalchemy.types import TypeEngine

from vaultkit._access import Principal
from vaultkit.errors import ConfigurationError
from vaultkit.sqla._registry import DEFAULT, get_vault
from vaultkit.sqla._storage import storage_for
from vaultkit.sqla.keyset import single_primary_key, walk
from vaultkit.sqla.types import BlindIndexType, Encrypted, RowBound

__all__ = [
    "VAULTKIT_TABLE_PREFIX",
    "DecryptColumnOp",
    "EncryptColumnOp",
    "autogenerate_options",
    "encrypt_column_directives",
    "include_name",
    "include_object",
]

_BATCH = 1000
_SUFFIX = "__vaultkit_new"


class _ColumnOp(MigrateOperation):
    #: The operation's name on ``op`` (``op.encrypt_column``), for messages.
    op_name = "encrypt_column"

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
        subject: str | None = None,
        on_erased: str = "raise",
        indexes: Mapping[str, BlindIndexType] | None = None,
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
        self.subject = subject
        self.on_erased = on_erased
        self.indexes = dict(indexes or {})
        for name, declared in self.indexes.items():
            if declared.sources != (column_name,):
                raise ConfigurationError(
                    f"indexes={{{name!r}: ...}}: an index type of the column {column_name!r} "
                    "alone (BlindIndexType, PrefixIndexType, BucketIndexType); a compound "
                    "index is filled by vaultkit rekey once all its sources are encrypted"
                )

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
            "subject": self.subject,
            "on_erased": self.on_erased,
            "indexes": self.indexes,
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
            subject=self.subject,
            on_erased=self.on_erased,
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

    def index_types(self) -> list[tuple[str, BlindIndexType]]:
        """Every index column the operation fills with its type, attached as a model declares
        it: ``index=`` and those of ``indexes=``."""
        found: list[tuple[str, BlindIndexType]] = []
        single = self.index_type()
        if single is not None and self.index is not None:
            found.append((self.index, single))
        if self.indexes:
            columns: list[sa.Column[Any]] = []
            for name, declared in self.indexes.items():
                copied = declared.copy()
                if copied.domain is None:
                    copied.domain = self.domain  # the column's, as in the model
                columns.append(sa.Column(name, copied))
            sa.Table(
                self.table_name,
                sa.MetaData(),
                sa.Column(self.column_name, self.encrypted_type()),
                *columns,
                schema=self.schema,
            )
            found.extend((c.name, c.type) for c in columns)  # type: ignore[misc]
        return found


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

    op_name = "decrypt_column"

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
    pk = single_primary_key(table, user=f"op.{operation.op_name}")
    if operation.column_name not in table.columns:
        raise ConfigurationError(f"{operation.table_name} has no column {operation.column_name}")
    for other in (operation.row_key, operation.subject):
        if other is not None and other not in table.columns:
            raise ConfigurationError(f"{operation.table_name} has no column {other}")
    return table, pk


def _rewrite(
    operations: Operations,
    operation: _ColumnOp,
    new_type: TypeEngine[Any],
    convert: Callable[[Any, Any, Any], Any],
) -> None:
    """Add ``column__vaultkit_new``, fill it from ``column`` in batches, swap the two."""
    connection = operations.get_bind()
    table, pk = _existing(operations, operation)
    old = table.columns[operation.column_name]
    temporary = operation.column_name + _SUFFIX
    filled = operation.index_types() if isinstance(operation, EncryptColumnOp) else []
    operations.add_column(
        operation.table_name, sa.Column(temporary, new_type, nullable=True), schema=operation.schema
    )
    target = sa.table(
        operation.table_name,
        sa.column(pk.name),
        sa.column(temporary, sa.LargeBinary if isinstance(new_type, sa.LargeBinary) else new_type),
        *[sa.column(name, sa.LargeBinary) for name, _ in filled],
        schema=operation.schema,
    )
    row_key = table.columns[operation.row_key] if operation.row_key else None
    selected = [pk, sa.type_coerce(old, sa.LargeBinary if _is_binary(old) else old.type)]
    if row_key is not None:
        selected.append(row_key)
    subject = table.columns[operation.subject] if operation.subject else None
    if subject is not None:
        selected.append(subject)
    for rows in walk(connection, sa.select(*selected), pk, operation.batch_size):
        params = []
        for row in rows:
            value = row[1]
            row_value = row[2] if row_key is not None else None
            subject_value = row[-1] if subject is not None else None
            converted = None if value is None else convert(value, row_value, subject_value)
            entry = {"_pk": row[0], "_v": converted}
            for j, (_name, index) in enumerate(filled):
                entry[f"_ix{j}"] = None if value is None else index.digest(_plain(value, old))
            params.append(entry)
        values: dict[str, Any] = {temporary: sa.bindparam("_v")}
        for j, (name, _index) in enumerate(filled):
            values[name] = sa.bindparam(f"_ix{j}")
        connection.execute(
            target.update()
            .where(target.c[pk.name] == sa.bindparam("_pk"))
            .values(values)
            .execution_options(vaultkit_raw=True),
            params,
        )
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
    wanted = [operation.index] if operation.index is not None else []
    wanted += list(operation.indexes)
    if wanted:
        inspector = sa.inspect(operations.get_bind())
        names = {c["name"] for c in inspector.get_columns(operation.table_name, operation.schema)}
        for name in wanted:
            if name not in names:
                raise ConfigurationError(
                    f"{operation.table_name} has no column {name}: add the index column "
                    "(op.add_column) before encrypt_column"
                )

    def convert(value: Any, row: Any, subject: Any) -> bytes | None:
        if operation.subject:
            return encrypted.encrypt_value(RowBound(value, row, subject=subject))
        return encrypted.encrypt_value(RowBound(value, row) if operation.row_key else value)

    with vault.acting_as(_principal(operation), purpose=f"alembic encrypt {operation.table_name}"):
        # Stored as the Encrypted type stores: BYTEA, BLOB, or LONGBLOB on MariaDB and MySQL.
        _rewrite(operations, operation, storage_for(operations.get_bind().dialect), convert)


@Operations.implementation_for(DecryptColumnOp)
def _decrypt_column(operations: Operations, operation: DecryptColumnOp) -> None:
    vault = get_vault(operation.vault)
    encrypted = operation.encrypted_type()

    def convert(value: Any, row: Any, subject: Any) -> Any:
        return encrypted.decrypt_value(bytes(value), row=row)

    with vault.acting_as(_principal(operation), purpose=f"alembic decrypt {operation.table_name}"):
        _rewrite(operations, operation, operation.inner, convert)


# -- autogenerate: vaultkit's own tables, and columns that become encrypted ---------------------
#
# With the key store in the application's database, vaultkit's tables (the key store's
# ``vaultkit_data_keys`` and ``vaultkit_meta``, the audit log's ``vaultkit_audit_events`` and
# ``vaultkit_audit_head``, the re-keying engine's ``vaultkit_rekey_ranges`` and
# ``vaultkit_rekey_checkpoints``) are in the database but not in the application's metadata:
# autogenerate would drop them, and with the key table every value becomes unreadable. vaultkit
# creates and upgrades its own tables itself; the filters below keep them out of autogenerate.

#: The prefix of vaultkit's own table names (``SQLKeyStore(table_prefix=...)`` may add others).
VAULTKIT_TABLE_PREFIX = "vaultkit_"

_IncludeName = Callable[[Any, str, Any], bool]
_IncludeObject = Callable[[Any, Any, str, bool, Any], bool]


def _is_vaultkit_table(name: Any, prefixes: tuple[str, ...]) -> bool:
    return isinstance(name, str) and name.startswith(prefixes)


def _name_filter(prefixes: tuple[str, ...], user: _IncludeName | None) -> _IncludeName:
    def include_name(name: Any, type_: str, parent_names: Any) -> bool:
        table = name if type_ == "table" else (parent_names or {}).get("table_name")
        if _is_vaultkit_table(table, prefixes):
            return False
        return True if user is None else bool(user(name, type_, parent_names))

    return include_name


def _object_filter(prefixes: tuple[str, ...], user: _IncludeObject | None) -> _IncludeObject:
    def include_object(
        object_: Any, name: Any, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        table = name if type_ == "table" else getattr(getattr(object_, "table", None), "name", None)
        if _is_vaultkit_table(table, prefixes):
            return False
        return True if user is None else bool(user(object_, name, type_, reflected, compare_to))

    return include_object


def include_name(name: Any, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` hook: leave vaultkit's own tables out of autogenerate.

    In ``env.py``: ``context.configure(..., include_name=vaultkit.sqla.alembic.include_name)``;
    to combine it with a filter of your own, use :func:`autogenerate_options`.

    .. versionadded:: 0.1.0
    """
    return _default_name_filter(name, type_, parent_names)


def include_object(object_: Any, name: Any, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic ``include_object`` hook: leave vaultkit's own tables out of autogenerate.

    Also filters what :func:`include_name` does not see (a ``vaultkit_*`` table in the model's
    metadata). See :func:`autogenerate_options` to combine it with a filter of your own.

    .. versionadded:: 0.1.0
    """
    return _default_object_filter(object_, name, type_, reflected, compare_to)


_default_name_filter = _name_filter((VAULTKIT_TABLE_PREFIX,), None)
_default_object_filter = _object_filter((VAULTKIT_TABLE_PREFIX,), None)


def autogenerate_options(
    *,
    include_name: _IncludeName | None = None,
    include_object: _IncludeObject | None = None,
    process_revision_directives: Callable[[Any, Any, list[Any]], None] | None = None,
    render_item: Callable[[str, Any, Any], Any] | None = None,
    table_prefixes: tuple[str, ...] = (VAULTKIT_TABLE_PREFIX,),
) -> dict[str, Any]:
    """Everything ``context.configure`` needs for autogenerate with vaultkit, around your own hooks.

    In ``env.py``::

        import vaultkit.sqla.alembic

        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            **vaultkit.sqla.alembic.autogenerate_options(include_object=my_filter),
        )

    The options: ``include_name`` and ``include_object`` skip vaultkit's own tables (names
    starting with one of ``table_prefixes``; add yours when the key store was given a
    ``table_prefix``) and then ask your filter; ``render_item`` renders vaultkit's column types
    (:func:`vaultkit.sqla.alembic_render_item`), then yours; ``process_revision_directives`` turns
    a column changed from plaintext to ``Encrypted`` into ``op.encrypt_column`` (and
    ``op.decrypt_column`` in the downgrade), then runs yours.

    Returns:
        keyword arguments for ``alembic.context.configure``.

    .. versionadded:: 0.1.0
    """
    prefixes: Any = table_prefixes
    if isinstance(prefixes, str) or not all(isinstance(p, str) and p for p in prefixes):
        raise TypeError("table_prefixes is a tuple of non-empty table-name prefixes")
    from vaultkit.sqla import alembic_render_item

    def render(type_: str, obj: Any, autogen_context: Any) -> Any:
        rendered = alembic_render_item(type_, obj, autogen_context)
        if rendered is False and render_item is not None:
            return render_item(type_, obj, autogen_context)
        return rendered

    def directives(context: Any, revision: Any, scripts: list[Any]) -> None:
        encrypt_column_directives(context, revision, scripts)
        if process_revision_directives is not None:
            process_revision_directives(context, revision, scripts)

    return {
        "include_name": _name_filter(tuple(prefixes), include_name),
        "include_object": _object_filter(tuple(prefixes), include_object),
        "render_item": render,
        "process_revision_directives": directives,
    }


def encrypt_column_directives(context: Any, revision: Any, scripts: list[Any]) -> None:
    """Alembic ``process_revision_directives`` hook: plaintext -> ``Encrypted`` as ``encrypt_column``.

    Autogenerate sees a column whose model type changed from ``String`` to ``Encrypted(String)``
    as a type change, ``alter_column(type_=...)``, which cannot encrypt anything: PostgreSQL
    refuses to cast text to ``bytea``, SQLite keeps the plaintext in the binary column (strict
    reads then fail). This hook replaces it with ``op.encrypt_column(...)`` (with the column's
    blind index, when the model declares one) and the downgrade's with ``op.decrypt_column(...)``.
    A column declared ``Encrypted(..., migrating=True)`` is left to the type change: migration
    mode reads the plaintext left in place, and ``vaultkit rekey`` encrypts it online.

    .. versionadded:: 0.1.0
    """
    from alembic.operations import ops

    metadata = context.opts.get("target_metadata") if context is not None else None
    metadatas: list[Any] = list(metadata) if isinstance(metadata, list | tuple) else [metadata]
    for script in scripts:
        for container in (*script.upgrade_ops_list, *script.downgrade_ops_list):
            for table_ops in container.ops:
                if isinstance(table_ops, ops.ModifyTableOps):
                    _rewrite_table_ops(table_ops, metadatas)


def _rewrite_table_ops(table_ops: Any, metadatas: list[Any]) -> None:
    from alembic.operations import ops

    first: list[Any] = []
    kept: list[Any] = []
    last: list[Any] = []
    for op in table_ops.ops:
        if not isinstance(op, ops.AlterColumnOp) or op.modify_type is None:
            kept.append(op)
            continue
        new, old = op.modify_type, op.existing_type
        if isinstance(new, Encrypted) and not new.migrating and _holds_plaintext(old):
            column_op: _ColumnOp = EncryptColumnOp(
                op.table_name,
                op.column_name,
                new.inner,
                schema=op.schema,
                **_encrypted_kwargs(new),
                **_index_kwargs(metadatas, op.schema, op.table_name, op.column_name),
            )
            last.append(column_op)  # after the add_column of its blind index
        elif isinstance(old, Encrypted) and not old.migrating and _holds_plaintext(new):
            column_op = DecryptColumnOp(
                op.table_name, op.column_name, new, schema=op.schema, **_encrypted_kwargs(old)
            )
            first.append(column_op)  # before the drop_column of its blind index
        else:
            kept.append(op)
            continue
        # Whatever else changed on the column (nullable, comment) stays an alter_column.
        op.modify_type = None
        op.existing_type = sa.LargeBinary() if isinstance(column_op, EncryptColumnOp) else new
        if op.has_changes():
            (last if isinstance(column_op, EncryptColumnOp) else first).append(op)
    table_ops.ops[:] = [*first, *kept, *last]


def _holds_plaintext(column_type: Any) -> bool:
    if column_type is None or isinstance(column_type, Encrypted | BlindIndexType):
        return False
    return not isinstance(column_type, sa.LargeBinary | sa.types._Binary)


def _encrypted_kwargs(column_type: Encrypted) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"domain": column_type.domain}
    if column_type.row_key is not None:
        kwargs["row_key"] = column_type.row_key
    if column_type.pad_to is not None:
        kwargs["pad_to"] = column_type.pad_to
    if column_type.vault != DEFAULT:
        kwargs["vault"] = column_type.vault
    if column_type.subject is not None:
        kwargs["subject"] = column_type.subject
    if column_type.on_erased != "raise":
        kwargs["on_erased"] = column_type.on_erased
    return kwargs


def _index_kwargs(
    metadatas: list[Any], schema: str | None, table_name: str, column: str
) -> dict[str, Any]:
    for metadata in metadatas:
        if metadata is None:
            continue
        table = metadata.tables.get(f"{schema}.{table_name}" if schema else table_name)
        if table is None:
            continue
        for candidate in table.columns:
            index = candidate.type
            # A blind index only (its subclasses digest other inputs; vaultkit rekey fills them
            # once the column is encrypted).
            if type(index) is BlindIndexType and index.source == column:
                kwargs: dict[str, Any] = {"index": candidate.name}
                if index.normalize is not None:
                    kwargs["normalize"] = index.normalize
                if index.bits is not None:
                    kwargs["index_bits"] = index.bits
                return kwargs
    return {}


def _render_callable(function: Callable[..., Any], autogen_context: Any, where: str) -> str:
    """``str.lower`` or ``myapp.normalize.email``: a name a migration can import."""
    owner = getattr(function, "__objclass__", None)
    if owner is not None and owner.__module__ == "builtins":
        return f"{owner.__name__}.{function.__name__}"  # a method of str, such as str.lower
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    if module is None or module == "__main__" or "<" in qualname:
        raise ConfigurationError(
            f"{where}: its normalize function ({qualname or type(function).__name__}) has no "
            "import path a migration could use (a lambda or a local function); define it at "
            "module level, or write op.encrypt_column(..., normalize=...) by hand"
        )
    if module == "builtins":
        return qualname
    autogen_context.imports.add(f"import {module}")
    return f"{module}.{qualname}"


def _render_type(column_type: Any, autogen_context: Any) -> str:
    """``sa.String(length=320)``, ``mysql.VARCHAR(length=320)``: as Alembic renders types."""
    module = type(column_type).__module__
    if module.startswith("sqlalchemy.dialects."):
        dialect = module.split(".")[2]
        autogen_context.imports.add(f"from sqlalchemy.dialects import {dialect}")
        return f"{dialect}.{column_type!r}"
    if module.startswith("sqlalchemy."):
        return f"sa.{column_type!r}"
    autogen_context.imports.add(f"import {module}")
    return f"{module}.{column_type!r}"


def _render_column_op(autogen_context: Any, op: _ColumnOp) -> str:
    name = "encrypt_column" if isinstance(op, EncryptColumnOp) else "decrypt_column"
    inner = _render_type(op.inner, autogen_context)
    args = [repr(op.table_name), repr(op.column_name), inner, f"domain={op.domain!r}"]
    for key in ("row_key", "pad_to", "vault"):
        value = getattr(op, key)
        if value is not None and value != DEFAULT:
            args.append(f"{key}={value!r}")
    if isinstance(op, EncryptColumnOp) and op.index is not None:
        args.append(f"index={op.index!r}")
        if op.normalize is not None:
            where = f"{op.table_name}.{op.index}"
            args.append(f"normalize={_render_callable(op.normalize, autogen_context, where)}")
        if op.index_bits is not None:
            args.append(f"index_bits={op.index_bits!r}")
    if op.schema is not None:
        args.append(f"schema={op.schema!r}")
    if op.subject is not None:
        args.append(f"subject={op.subject!r}")
    if op.on_erased != "raise":
        args.append(f"on_erased={op.on_erased!r}")
    # ``op.encrypt_column`` exists once this module is imported: the migration imports it.
    autogen_context.imports.add("import vaultkit.sqla.alembic")
    return f"op.{name}({', '.join(args)})"


def _register_renderers() -> None:
    from alembic.autogenerate import renderers

    renderers.dispatch_for(EncryptColumnOp)(_render_column_op)
    renderers.dispatch_for(DecryptColumnOp)(_render_column_op)


_register_renderers()
