"""Creating vaultkit's own tables when several processes start at the same moment.

``MetaData.create_all(checkfirst=True)`` looks, then creates: two processes that both look before
either creates both issue ``CREATE TABLE``, and the second fails (MariaDB error 1050 "table
already exists", PostgreSQL a unique violation on its catalog, SQLite "table already exists").
:func:`create_tables` treats that failure as what it is when, looking again, every table is there:
someone else created them. Any other failure is raised after a few tries.
"""

from __future__ import annotations

import time
from typing import Final

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

__all__ = ["create_tables"]

_ATTEMPTS: Final = 5
_BACKOFF: Final = 0.05  # seconds, doubled per attempt


def _all_exist(engine: sa.Engine, metadata: sa.MetaData) -> bool:
    inspector = sa.inspect(engine)
    return all(
        inspector.has_table(table.name, schema=table.schema) for table in metadata.sorted_tables
    )


def create_tables(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Create ``metadata``'s missing tables (with their indexes) on ``engine``.

    Safe to call from many processes at once: a ``CREATE TABLE`` that fails because another
    process created the table meanwhile is not an error. Each try runs in a transaction of its
    own, so call it with no transaction of the caller's open on an SQLite file.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the tables could not be created and do not exist.
    """
    for attempt in range(_ATTEMPTS):
        try:
            metadata.create_all(engine, checkfirst=True)
        except DBAPIError:
            # Another process may have created a table between our check and our CREATE: look
            # again; tables still missing (those after the one that failed) are created on the
            # next try.
            if _all_exist(engine, metadata):
                return
            if attempt == _ATTEMPTS - 1:
                raise
            time.sleep(_BACKOFF * 2**attempt)
        else:
            return
