"""How vaultkit's column types are stored: binary types without SQLAlchemy's DBAPI processing.

SQLAlchemy's ``LargeBinary`` wraps every bound value in the DB-API's ``Binary`` (a GC-tracked
``memoryview`` on SQLite, about 2.5 us per field in bulk inserts, measured in
``benchmarks/bench_orm.py``); vaultkit's ciphertexts and digests are already ``bytes``, and the
drivers return ``bytes`` (or a buffer the column types convert). The classes below replace that
processing with none.

This is the pattern SQLAlchemy documents for "the rare scenario where the specific processing
applied by SQLAlchemy at the DBAPI level needs to be replaced" (``doc/build/core/custom_types.rst``,
section "Replacing the Bind/Result Processing of Existing Types"): subclass the type and override
``bind_processor()`` and ``result_processor()``. That section also asks for an ``adapt()``
override; it is not needed here because the column types hand these objects to
``dialect.type_descriptor()`` themselves (``load_dialect_impl``), and the dialects vaultkit is
tested with (pysqlite, psycopg, PyMySQL) have no dialect-specific class for these types that would
replace them. ``tests/unit/sqla/test_sqlalchemy_internals.py`` checks exactly that for the
SQLAlchemy versions ``pyproject.toml`` allows; a dialect that does replace them (asyncpg's
``AsyncpgByteA``) keeps its own processing, which is correct, only slower.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.types import TypeEngine

__all__ = ["RawBinary", "RawLongBlob", "RawVarbinary", "index_storage_for", "storage_for"]


class RawBinary(sa.LargeBinary):
    """``LargeBinary`` (BYTEA, BLOB) without its bind and result processors."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


class RawLongBlob(mysql.LONGBLOB):
    """MariaDB/MySQL LONGBLOB (plain BLOB stops at 64 KiB), without the processors."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


class RawVarbinary(mysql.VARBINARY):
    """MariaDB/MySQL VARBINARY for blind indexes (a BLOB cannot be indexed without a prefix)."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


def _is_mysql(dialect: Dialect) -> bool:
    return dialect.name in ("mysql", "mariadb")


def storage_for(dialect: Dialect) -> TypeEngine[Any]:
    """The stored type of an encrypted column: LONGBLOB on MariaDB/MySQL, else BYTEA or BLOB."""
    return RawLongBlob() if _is_mysql(dialect) else RawBinary()


def index_storage_for(dialect: Dialect, length: int) -> TypeEngine[Any]:
    """The stored type of a blind index of ``length`` bytes (VARBINARY on MariaDB/MySQL)."""
    return RawVarbinary(length) if _is_mysql(dialect) else RawBinary(length)
