"""SQLAlchemy integration: encrypted column types, blind indexes and migration helpers.

Configure the vault once at start-up, then declare columns::

    import vaultkit.sqla
    from vaultkit.sqla import BlindIndex, Encrypted

    vaultkit.sqla.configure(vault)

    class Member(Base):
        __tablename__ = "members"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
        email: Mapped[str] = mapped_column(Encrypted(String(320), domain="identity"))
        email_index = BlindIndex("email", normalize=str.lower)
        health_note: Mapped[str | None] = mapped_column(Encrypted(Text, domain="medical", row_key="id"))

    session.scalars(select(Member).where(Member.email_index == "jan@example.be"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import MappedColumn

from vaultkit.core import wire
from vaultkit.errors import ConfigurationError
from vaultkit.sqla import _hooks  # noqa: F401 - registers the statement and mapper hooks
from vaultkit.sqla._erasure import erasure_cells, misplaced_cells
from vaultkit.sqla._planning import plan_column
from vaultkit.sqla._registry import DEFAULT, configure, get_vault
from vaultkit.sqla._search import (
    BucketIndex,
    BucketIndexType,
    CompoundIndex,
    CompoundIndexType,
    IndexColumn,
    Part,
    PrefixIndex,
    PrefixIndexType,
)
from vaultkit.sqla._tokens import TokenIndex, rewrite_terms, token_indexes
from vaultkit.sqla.types import BlindIndexType, Encrypted, EncryptedCell, RowBound

__all__ = [
    "BlindIndex",
    "BlindIndexType",
    "BucketIndex",
    "BucketIndexType",
    "CompoundIndex",
    "CompoundIndexType",
    "Encrypted",
    "EncryptedCell",
    "Part",
    "PrefixIndex",
    "PrefixIndexType",
    "RowBound",
    "TokenIndex",
    "alembic_render_item",
    "configure",
    "count_dek_references",
    "count_plaintext",
    "erasure_cells",
    "get_vault",
    "misplaced_cells",
    "plan_column",
    "rewrite_terms",
    "token_indexes",
]


def BlindIndex(  # noqa: N802 - declared like a column, named like a type
    source: str,
    *,
    normalize: Callable[[Any], Any] | None = None,
    version: int = 1,
    query_versions: Sequence[int] | None = None,
    bits: int | None = None,
    domain: str | None = None,
    vault: str = DEFAULT,
    partitions: int = 1,
) -> MappedColumn[bytes | None]:
    """Declare a blind-index column for the encrypted column ``source`` of the same model.

    The index column is kept in sync on every INSERT and UPDATE that writes ``source`` (ORM and
    Core) and is indexed. Query it with the plaintext: ``Member.email_index == "jan@example.be"``
    (one indexed lookup) or ``Member.email_index.in_([...])``. ``normalize`` is applied to values
    written and looked up alike (for example ``str.lower``).

    Key rotation: declare ``version=2, query_versions=(1, 2)``; new writes use version 2 and
    lookups match either while the re-key job rewrites the old rows; then drop version 1 from
    ``query_versions``. No new column is needed: each stored digest starts with its version.

    ``bits`` (4 to 256, default 256) truncates the digest; a truncated index's lookups are made
    exact by decrypting the candidates (an ORM ``Session`` selecting the entity; see
    :mod:`vaultkit.sqla._exact`). ``partitions=P`` spreads a skewed value over ``P`` digests
    (a write picks one at random, a lookup asks for all ``P``); partitions may only grow.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.4.0
        ``bits`` bit-granular, truncated lookups exact, ``partitions=``.
    """
    return IndexColumn(
        BlindIndexType(
            source,
            domain=domain,
            version=version,
            query_versions=query_versions,
            bits=bits,
            vault=vault,
            normalize=normalize,
            partitions=partitions,
        ),
        index=True,
        nullable=True,
    )


def count_plaintext(connection: sa.Connection | sa.orm.Session, column: Any) -> int:
    """Count the rows whose value in the encrypted ``column`` is not yet a vaultkit ciphertext.

    Use it while a column is in migration mode (``Encrypted(..., migrating=True)``) to see how many
    legacy plaintext values remain; it reads only the first two bytes of each value, in SQL.
    """
    expr = column.expression if hasattr(column, "expression") else column
    if not isinstance(getattr(expr, "type", None), Encrypted):
        raise ConfigurationError("count_plaintext() takes an Encrypted column")
    raw = sa.type_coerce(expr, sa.LargeBinary)
    prefix = sa.func.substr(raw, wire.MAGIC_SQL_START, len(wire.MAGIC))
    magic = sa.literal(wire.MAGIC, sa.LargeBinary)
    query = sa.select(sa.func.count()).where(
        raw.is_not(None), sa.or_(prefix.is_(None), prefix != magic)
    )
    return int(connection.execute(query).scalar_one())


def alembic_render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Alembic ``render_item`` hook: render vaultkit column types with their import.

    In ``env.py``: ``context.configure(..., render_item=vaultkit.sqla.alembic_render_item)``.
    Renders ``vaultkit.sqla.types.Encrypted(sa.String(length=320), domain='identity')``: names
    and flags only, never a vault, key or secret.

    Warning:
        With the key store in the application's database, autogenerate also sees vaultkit's own
        tables (``vaultkit_data_keys``, ...) and would drop them, making every value unreadable.
        Configure all of vaultkit's hooks at once instead, which keeps those tables out and turns
        a plaintext column that became ``Encrypted`` into ``op.encrypt_column``::

            import vaultkit.sqla.alembic

            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                **vaultkit.sqla.alembic.autogenerate_options(),
            )
    """
    if type_ == "type" and isinstance(obj, Encrypted | BlindIndexType):
        autogen_context.imports.add("import vaultkit.sqla.types")
        if type(obj) is not BlindIndexType and isinstance(obj, BlindIndexType):
            # A compound, prefix or bucket index: a migration needs its storage only (its
            # transforms may have no import path), which a blind index of the same width has.
            return f"vaultkit.sqla.types.BlindIndexType({obj.source!r}, bits={obj.bits or 256!r})"
        rendered = repr(obj).replace(
            "previous=Encrypted(", "previous=vaultkit.sqla.types.Encrypted("
        )
        return f"vaultkit.sqla.types.{rendered}"
    return False


def count_dek_references(
    connection: sa.Connection | sa.orm.Session, table: str, column: str, dek_id: bytes
) -> int:
    """Count the values in ``table.column`` encrypted under ``dek_id`` (from their headers, in SQL).

    Before destroying a retired DEK, count its references in every encrypted column: only a DEK
    that no value names may go.
    """
    if len(dek_id) != wire.DEK_ID_SIZE:
        raise ConfigurationError(f"a DEK id is {wire.DEK_ID_SIZE} bytes")
    value = sa.column(column, sa.LargeBinary)
    # The DEK id's place in the header (1-based in SQL); see docs/wire-format.md.
    header_dek = sa.func.substr(value, wire.DEK_ID_SQL_START, wire.DEK_ID_SIZE)
    query = (
        sa.select(sa.func.count())
        .select_from(sa.table(table))
        .where(value.is_not(None), header_dek == sa.literal(dek_id, sa.LargeBinary))
    )
    return int(connection.execute(query).scalar_one())
