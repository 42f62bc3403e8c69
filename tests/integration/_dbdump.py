"""Every table of a database, row by row, as exact bytes: to show that a command wrote nothing."""

from __future__ import annotations

import sqlalchemy as sa


def dump_database(url: str) -> dict[str, list[str]]:
    """Each table's rows (every column, reflected), as sorted reprs; bytes compare byte for byte.

    Table names are part of the result, so a table created by the command shows up too.
    """
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            meta = sa.MetaData()
            meta.reflect(conn)
            return {
                name: sorted(repr(tuple(row)) for row in conn.execute(sa.select(table)))
                for name, table in sorted(meta.tables.items())
            }
    finally:
        engine.dispose()
