"""SQLModel: blind-index and encrypted fields.

Install with the extra: ``pip install vaultkit[sqlmodel]``.

SQLModel builds each table column from a field's annotation unless the field gives its own
``sa_column``. :func:`vaultkit.sqla.BlindIndex` is an SQLAlchemy declarative column that SQLModel
does not read (it would become a plain, unindexed binary column that no write keeps in sync, so
lookups would find nothing): vaultkit refuses it on SQLModel models. Declare the fields with these
helpers instead::

    from sqlmodel import Field, SQLModel
    from vaultkit.integrations.sqlmodel import BlindIndexField, EncryptedField

    class Member(SQLModel, table=True):
        id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
        email: str = EncryptedField(sa.String(320), domain="identity")
        email_index: bytes | None = BlindIndexField("email", normalize=str.lower)

    session.exec(select(Member).where(Member.email_index == "jan@example.be"))

Both fields are left out of the model's ``repr`` (SQLModel models print their fields): an
encrypted field holds plaintext once loaded.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeEngine
from sqlmodel import Field

from vaultkit.sqla import BlindIndexType, Encrypted

__all__ = ["BlindIndexField", "EncryptedField"]


def _vault_option(vault: str | None) -> dict[str, Any]:
    return {} if vault is None else {"vault": vault}


def BlindIndexField(  # noqa: N802 - declared like a field, named like SQLModel's Field
    source: str,
    *,
    normalize: Callable[[Any], Any] | None = None,
    version: int = 1,
    query_versions: Sequence[int] | None = None,
    bits: int | None = None,
    domain: str | None = None,
    vault: str | None = None,
) -> Any:
    """A blind-index field for the encrypted field ``source``: what ``BlindIndex`` is to the ORM.

    The arguments are those of :func:`vaultkit.sqla.BlindIndex` (``vault``: the name of a
    configured vault other than the default one). Annotate the field
    ``bytes | None``; query it with the plaintext (``Member.email_index == "jan@example.be"``).

    .. versionadded:: 0.1.0
    """
    index_type = BlindIndexType(
        source,
        domain=domain,
        version=version,
        query_versions=query_versions,
        bits=bits,
        normalize=normalize,
        **_vault_option(vault),
    )
    return Field(
        default=None, repr=False, sa_column=sa.Column(index_type, index=True, nullable=True)
    )


def EncryptedField(  # noqa: N802 - declared like a field, named like SQLModel's Field
    inner: TypeEngine[Any] | type[TypeEngine[Any]],
    *,
    domain: str,
    row_key: str | None = None,
    migrating: bool = False,
    vault: str | None = None,
    pad_to: int | None = None,
    nullable: bool = True,
    default: Any = None,
    subject: str | None = None,
    on_erased: str = "raise",
) -> Any:
    """An encrypted field: ``Encrypted(inner, domain=..., ...)`` as the field's column.

    The arguments are those of :class:`vaultkit.sqla.Encrypted`, plus the column's ``nullable``
    and the field's ``default``. Left out of the model's ``repr``.

    .. versionadded:: 0.1.0

    .. versionchanged:: 0.3.0
        ``subject=`` and ``on_erased=``.
    """
    column_type = Encrypted(
        inner,
        domain=domain,
        row_key=row_key,
        migrating=migrating,
        pad_to=pad_to,
        subject=subject,
        on_erased=on_erased,
        **_vault_option(vault),
    )
    return Field(default=default, repr=False, sa_column=sa.Column(column_type, nullable=nullable))
