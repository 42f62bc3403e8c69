"""The associated data binds schema, table and column as separate entries (docs/wire-format.md).

A database writer copies ciphertext with plain SQL: between two tenants' schemas on PostgreSQL,
and between tables whose names differ only in where a dot sits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from vaultkit import Vault
from vaultkit.core import wire
from vaultkit.errors import ConfigurationError, DecryptionError
from vaultkit.rekey import rekey_table, verify_table
from vaultkit.sqla import Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

pytestmark = pytest.mark.configured  # the vault fixture is the column types' vault


@pytest.fixture
def vault_kwargs() -> dict[str, Any]:
    return {
        "provider": InMemoryKeyProvider(["identity"]),
        "store": MemoryKeyStore(),
        "domains": ["identity"],
    }


@pytest.fixture
def pg(postgres_url: str) -> Iterator[sa.Engine]:
    """An engine whose search path is the test's fresh schema (the re-key tables go there)."""
    engine = sa.create_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def two_schemas(pg: sa.Engine, postgres_schema: str) -> Iterator[tuple[str, str]]:
    """The test's fresh schema and a second one beside it, dropped afterwards."""
    other = f"{postgres_schema}_b"
    with pg.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{other}"'))
    yield postgres_schema, other
    with pg.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{other}" CASCADE'))


def members(
    meta: sa.MetaData, schema: str | None, column_type: Encrypted | None = None
) -> sa.Table:
    return sa.Table(
        "members",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", column_type or Encrypted(sa.String(100), domain="identity")),
        schema=schema,
    )


def raw_name(conn: sa.Connection, schema: str, row: int) -> bytes:
    value = conn.execute(
        sa.text(f'select name from "{schema}".members where id = :id'), {"id": row}
    ).scalar_one()
    return bytes(value)


@pytest.mark.postgres
class TestTenantSchemas:
    def test_value_copied_to_another_tenant_schema_fails(
        self, pg: sa.Engine, two_schemas: tuple[str, str], vault: Vault
    ) -> None:
        """A ciphertext copied with SQL from tenant A's members table into tenant B's does not
        decrypt there, while both tenants read their own values."""
        tenant_a, tenant_b = two_schemas
        meta = sa.MetaData()
        table_a, table_b = members(meta, tenant_a), members(meta, tenant_b)
        meta.create_all(pg)
        with pg.begin() as conn:
            conn.execute(table_a.insert(), [{"id": 1, "name": "Jan Peeters"}])
            conn.execute(table_b.insert(), [{"id": 1, "name": "Marie Claes"}])
        with pg.begin() as conn:
            copied = raw_name(conn, tenant_a, 1)
            conn.execute(
                sa.text(f'insert into "{tenant_b}".members (id, name) values (2, :v)'),
                {"v": copied},
            )
        with pg.connect() as conn:
            assert conn.execute(sa.select(table_a.c.name)).scalar_one() == "Jan Peeters"
            assert (
                conn.execute(sa.select(table_b.c.name).where(table_b.c.id == 1)).scalar_one()
                == "Marie Claes"
            )
            with pytest.raises(DecryptionError):
                conn.execute(sa.select(table_b.c.name).where(table_b.c.id == 2)).scalar_one()

    def test_one_type_in_two_schemas_binds_each_schema(
        self, pg: sa.Engine, two_schemas: tuple[str, str], vault: Vault
    ) -> None:
        """An Encrypted instance shared by two tables of different schemas binds each table's own
        schema (the second table gets a copy), so neither table takes the other's values."""
        tenant_a, tenant_b = two_schemas
        shared = Encrypted(sa.String(100), domain="identity")
        table_a = members(sa.MetaData(), tenant_a, shared)
        table_b = members(sa.MetaData(), tenant_b, shared)
        assert table_a.c.name.type.binding() == (tenant_a, "members", "name")  # type: ignore[attr-defined]
        assert table_b.c.name.type.binding() == (tenant_b, "members", "name")  # type: ignore[attr-defined]
        table_a.create(pg)
        table_b.create(pg)
        with pg.begin() as conn:
            conn.execute(table_a.insert(), [{"id": 1, "name": "Jan Peeters"}])
            conn.execute(
                sa.text(f'insert into "{tenant_b}".members (id, name) values (1, :v)'),
                {"v": raw_name(conn, tenant_a, 1)},
            )
        with pg.connect() as conn, pytest.raises(DecryptionError):
            conn.execute(sa.select(table_b.c.name)).scalar_one()

    def test_values_of_the_old_binding_move_through_previous_and_rekey(
        self, pg: sa.Engine, two_schemas: tuple[str, str], vault: Vault
    ) -> None:
        """Values written before the schema was bound (no schema entry) are refused by the plain
        column, read through previous=Encrypted(..., schema_binding="legacy"), moved to the
        schema binding by vaultkit rekey, and then readable without previous= and bound to
        their tenant."""
        tenant_a, tenant_b = two_schemas
        old_binding = vault.field("identity", table="members", column="name")
        strict = members(sa.MetaData(), tenant_a)
        strict.create(pg)
        names = {i: f"member {i}" for i in range(1, 41)}
        with pg.begin() as conn:
            conn.execute(
                sa.text(f'insert into "{tenant_a}".members (id, name) values (:id, :v)'),
                [{"id": i, "v": old_binding.encrypt(n)} for i, n in names.items()],
            )
        with pg.connect() as conn, pytest.raises(DecryptionError):
            conn.execute(sa.select(strict.c.name).where(strict.c.id == 1)).scalar_one()

        moving = members(
            sa.MetaData(),
            tenant_a,
            Encrypted(
                sa.String(100),
                domain="identity",
                previous=Encrypted(sa.String(100), domain="identity", schema_binding="legacy"),
            ),
        )
        with pg.connect() as conn:
            assert dict(conn.execute(sa.select(moving.c.id, moving.c.name)).all()) == names
        assert verify_table(pg, moving, vault=vault).previous_binding == 40
        report = rekey_table(pg, moving, vault=vault, batch_size=15)
        assert report.complete and report.moved == 40
        assert verify_table(pg, moving, vault=vault).clean
        with pg.connect() as conn:
            assert dict(conn.execute(sa.select(strict.c.id, strict.c.name)).all()) == names
        # Moved values are bound to tenant A now: a copy into tenant B fails.
        table_b = members(sa.MetaData(), tenant_b)
        table_b.create(pg)
        with pg.begin() as conn:
            conn.execute(
                sa.text(f'insert into "{tenant_b}".members (id, name) values (1, :v)'),
                {"v": raw_name(conn, tenant_a, 1)},
            )
        with pg.connect() as conn, pytest.raises(DecryptionError):
            conn.execute(sa.select(table_b.c.name)).scalar_one()


class TestNames:
    def test_dot_in_a_table_name_does_not_bind_like_a_dot_in_the_column(
        self, tmp_path: object, vault: Vault
    ) -> None:
        """Table "a.b" with column "c" and table "a" with column "b.c" bind differently: a value
        copied from one to the other does not decrypt."""
        engine = sa.create_engine(f"sqlite:///{tmp_path}/dots.db")
        meta = sa.MetaData()
        dotted_table = sa.Table(
            "a.b",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("c", Encrypted(sa.String(50), domain="identity")),
        )
        dotted_column = sa.Table(
            "a",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("b.c", Encrypted(sa.String(50), domain="identity")),
        )
        meta.create_all(engine)
        try:
            with engine.begin() as conn:
                conn.execute(dotted_table.insert(), [{"id": 1, "c": "in table a.b"}])
                copied = conn.execute(
                    sa.select(sa.type_coerce(dotted_table.c.c, sa.LargeBinary))
                ).scalar_one()
                conn.execute(
                    sa.text('insert into a (id, "b.c") values (1, :v)'), {"v": bytes(copied)}
                )
            with engine.connect() as conn:
                assert conn.execute(sa.select(dotted_table.c.c)).scalar_one() == "in table a.b"
                with pytest.raises(DecryptionError):
                    conn.execute(sa.select(dotted_column.c["b.c"])).scalar_one()
        finally:
            engine.dispose()

    def test_legacy_binding_reads_old_values_of_a_dotted_table(self, vault: Vault) -> None:
        """A value written before this change in table "a.b", column "c" (bound then as table
        "a", column "b.c") opens through previous=Encrypted(..., schema_binding="legacy"), and
        not through the current binding alone."""
        old = vault.field("identity", table="a", column="b.c").encrypt("written long ago")
        current = sa.Table(
            "a.b",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("c", Encrypted(sa.Text, domain="identity")),
        )
        moving = sa.Table(
            "a.b",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column(
                "c",
                Encrypted(
                    sa.Text,
                    domain="identity",
                    previous=Encrypted(sa.Text, domain="identity", schema_binding="legacy"),
                ),
            ),
        )
        with pytest.raises(DecryptionError):
            current.c.c.type.decrypt_value(old)  # type: ignore[attr-defined]
        assert moving.c.c.type.decrypt_value(old) == "written long ago"  # type: ignore[attr-defined]

    def test_tables_without_a_schema_bind_as_before(self, vault: Vault) -> None:
        """A column of a schema-less table binds exactly {"table", "column"}: the v1 context of
        values written before the schema entry existed, byte for byte."""
        table = members(sa.MetaData(), None)
        column_type: Encrypted = table.c.name.type  # type: ignore[assignment]
        field = column_type.field()
        assert field._fixed == wire.context_fields({"table": "members", "column": "name"})
        blob = column_type.encrypt_value("Jan Peeters")
        assert blob is not None
        context = {"table": "members", "column": "name"}
        assert vault.decrypt(blob, context=context, domain="identity") == "Jan Peeters"

    def test_schema_is_its_own_context_entry(self, vault: Vault) -> None:
        """A column of a table in a schema binds {"schema", "table", "column"}."""
        table = members(sa.MetaData(), "tenant_a")
        column_type: Encrypted = table.c.name.type  # type: ignore[assignment]
        blob = column_type.encrypt_value("Jan Peeters")
        assert blob is not None
        context = {"schema": "tenant_a", "table": "members", "column": "name"}
        assert vault.decrypt(blob, context=context, domain="identity") == "Jan Peeters"
        with pytest.raises(DecryptionError):
            vault.decrypt(blob, context={"table": "members", "column": "name"})
        with pytest.raises(DecryptionError):
            vault.decrypt(blob, context={"table": "tenant_a.members", "column": "name"})

    def test_legacy_binding_is_only_for_previous(self, vault: Vault) -> None:
        """schema_binding="legacy" on a column's own type is refused when the table is defined:
        writes always bind the schema."""
        with pytest.raises(ConfigurationError, match="only for a previous= type"):
            members(
                sa.MetaData(),
                "tenant_a",
                Encrypted(sa.String(100), domain="identity", schema_binding="legacy"),
            )

    def test_bad_schema_options_are_refused(self) -> None:
        """An empty schema name or an unknown schema_binding is a ConfigurationError."""
        with pytest.raises(ConfigurationError, match="non-empty schema name"):
            Encrypted(sa.String(10), domain="identity", schema="")
        with pytest.raises(ConfigurationError, match="schema_binding"):
            Encrypted(sa.String(10), domain="identity", schema_binding="none")

    def test_cache_key_tells_schema_options_apart(self) -> None:
        """Types with another schema or schema binding have another cache key."""
        keys = {
            Encrypted(sa.String(10), domain="identity")._static_cache_key,
            Encrypted(sa.String(10), domain="identity", schema="s")._static_cache_key,
            Encrypted(sa.String(10), domain="identity", schema_binding="legacy")._static_cache_key,
        }
        assert len(keys) == 3
