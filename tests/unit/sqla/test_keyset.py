"""Tests for vaultkit.sqla.keyset: the keyset walk shared by the re-keying engine and Alembic."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from vaultkit.errors import ConfigurationError
from vaultkit.sqla.keyset import boundaries, page, single_primary_key, walk

META = sa.MetaData()
ROWS = sa.Table(
    "walked", META, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Integer)
)


@pytest.fixture
def conn() -> Iterator[sa.Connection]:
    engine = sa.create_engine("sqlite://")
    META.create_all(engine)
    with engine.connect() as connection:
        connection.execute(ROWS.insert(), [{"id": i * 3, "v": i} for i in range(1, 11)])  # 3..30
        yield connection
    engine.dispose()


class TestWalk:
    def test_pages_in_key_order(self, conn: sa.Connection) -> None:
        """walk yields every row once, in key order, in pages of at most size rows."""
        pages = list(walk(conn, sa.select(ROWS.c.id, ROWS.c.v), ROWS.c.id, 4))
        assert [[r[0] for r in p] for p in pages] == [[3, 6, 9, 12], [15, 18, 21, 24], [27, 30]]

    def test_exact_multiple_ends_after_an_empty_read(self, conn: sa.Connection) -> None:
        """A table of a multiple of size rows gives full pages and no empty one."""
        pages = list(walk(conn, sa.select(ROWS.c.id), ROWS.c.id, 5))
        assert [len(p) for p in pages] == [5, 5]

    def test_bounds_and_filter(self, conn: sa.Connection) -> None:
        """after is exclusive, upto inclusive, and the query's own WHERE applies."""
        query = sa.select(ROWS.c.id).where(ROWS.c.v % 2 == 0)
        pages = list(walk(conn, query, ROWS.c.id, 2, after=6, upto=27))
        assert [[r[0] for r in p] for p in pages] == [[12, 18], [24]]

    def test_rows_written_between_pages_are_seen_by_key(self, conn: sa.Connection) -> None:
        """The next page starts after the last key handed out, so the caller may write meanwhile."""
        seen = []
        for rows in walk(conn, sa.select(ROWS.c.id), ROWS.c.id, 3):
            seen += [r[0] for r in rows]
            conn.execute(ROWS.delete().where(ROWS.c.id == rows[-1][0] + 3))
        assert seen == [3, 6, 9, 15, 18, 21, 27, 30]

    def test_page_is_one_statement(self) -> None:
        """page() renders as one keyset query (no OFFSET)."""
        sql = str(page(sa.select(ROWS.c.id), ROWS.c.id, 10, after=1, upto=5))
        assert "ORDER BY walked.id" in sql and "LIMIT" in sql and "OFFSET" not in sql
        assert "walked.id >" in sql and "walked.id <=" in sql


class TestBoundaries:
    def test_every_nth_key(self, conn: sa.Connection) -> None:
        """boundaries gives the last key of each full run of every rows."""
        assert list(boundaries(conn, ROWS.c.id, 4)) == [12, 24]
        assert list(boundaries(conn, ROWS.c.id, 5)) == [15, 30]
        assert list(boundaries(conn, ROWS.c.id, 11)) == []


class TestSinglePrimaryKey:
    def test_the_key_column(self) -> None:
        """The one primary-key column is returned."""
        assert single_primary_key(ROWS, user="x") is ROWS.c.id

    @pytest.mark.parametrize("keys", [0, 2])
    def test_none_or_composite_is_refused(self, keys: int) -> None:
        """A table without a primary key or with a composite one is refused, naming who needs it."""
        table = sa.Table(
            f"t{keys}",
            sa.MetaData(),
            *[sa.Column(f"k{i}", sa.Integer, primary_key=True) for i in range(keys)],
            sa.Column("v", sa.Integer),
        )
        with pytest.raises(ConfigurationError, match=f"t{keys}: the engine needs a single-column"):
            single_primary_key(table, user="the engine")
