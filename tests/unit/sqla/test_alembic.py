"""Alembic autogenerate renders vaultkit column types as importable code with no secrets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext
from alembic.operations import Operations

import vaultkit.sqla
import vaultkit.sqla.types
from vaultkit import Vault
from vaultkit.sqla import BlindIndexType, Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider


@pytest.fixture
def metadata() -> Iterator[sa.MetaData]:
    vault = Vault(
        provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity", "medical"]
    )
    vaultkit.sqla.configure(vault)
    meta = sa.MetaData()
    sa.Table(
        "members",
        meta,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("email", Encrypted(sa.String(320), domain="identity")),
        sa.Column("email_index", BlindIndexType("email", bits=128), index=True),
        sa.Column("note", Encrypted(sa.Text, domain="medical", row_key="id", pad_to=16)),
    )
    yield meta
    vaultkit.sqla.configure(None)
    vault.close()


def render(metadata: sa.MetaData) -> str:
    """Autogenerate the upgrade of an empty SQLite database to ``metadata``; return its code."""
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"render_item": vaultkit.sqla.alembic_render_item}
        )
        ops = produce_migrations(context, metadata).upgrade_ops
        assert ops is not None
        code = render_python_code(
            ops, render_item=vaultkit.sqla.alembic_render_item, migration_context=context
        )
    engine.dispose()
    return code


def test_types_render_as_constructor_calls(metadata: sa.MetaData) -> None:
    """The migration names the types by import path, with domain and options, nothing else."""
    code = render(metadata)
    assert "vaultkit.sqla.types.Encrypted(sa.String(length=320), domain='identity')" in code
    assert (
        "vaultkit.sqla.types.Encrypted(sa.Text(), domain='medical', row_key='id', pad_to=16)"
        in code
    )
    assert "vaultkit.sqla.types.BlindIndexType('email', bits=128)" in code
    assert "Vault" not in code and "BlindIndexKey" not in code
    assert "b'" not in code and 'b"' not in code  # no bytes literal: no key, no ciphertext


def test_rendered_migration_runs(metadata: sa.MetaData) -> None:
    """The rendered upgrade creates the table when executed with its imports."""
    code = render(metadata)
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        namespace = {"op": op, "sa": sa, "vaultkit": vaultkit}
        exec(compile("def upgrade():\n" + code, "<migration>", "exec"), namespace)  # noqa: S102 - our own rendered code
        namespace["upgrade"]()  # type: ignore[operator]
        columns = {c["name"]: c for c in sa.inspect(conn).get_columns("members")}
    assert set(columns) == {"id", "email", "email_index", "note"}
    assert isinstance(columns["email"]["type"], sa.LargeBinary | sa.types.BLOB)
    engine.dispose()


def test_render_item_leaves_other_types_alone() -> None:
    """Types that are not vaultkit's go to Alembic's own rendering."""
    assert vaultkit.sqla.alembic_render_item("type", sa.String(10), object()) is False
    assert vaultkit.sqla.alembic_render_item("column", object(), object()) is False


class TestEncryptInPlace:
    """op.encrypt_column / op.decrypt_column inside a migration, on SQLite, PostgreSQL, MariaDB."""

    @pytest.fixture
    def vault(self) -> Iterator[Vault]:
        v = Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity"])
        vaultkit.sqla.configure(v)
        yield v
        vaultkit.sqla.configure(None)
        v.close()

    def test_upgrade_encrypts_and_downgrade_restores(self, database_url: str, vault: Vault) -> None:
        """Upgrade: ciphertext at rest, readable through the model, blind index filled, NOT NULL
        kept. Downgrade: the plaintext column back with the same values."""
        import vaultkit.sqla.alembic  # noqa: F401 - registers the operations

        engine = sa.create_engine(database_url)
        legacy = sa.Table(
            "alembic_members",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("email", sa.String(200), nullable=False),
            sa.Column("city", sa.String(50), nullable=True),
        )
        legacy.create(engine)
        emails = {i: f"Member{i}@Example.be" for i in range(1, 2501)}
        with engine.begin() as conn:
            conn.execute(
                legacy.insert(),
                [
                    {"id": i, "email": e, "city": None if i % 7 else "Gent"}
                    for i, e in emails.items()
                ],
            )

        def migrate(step: str) -> None:
            with engine.begin() as conn:
                op = Operations(MigrationContext.configure(conn))
                if step == "upgrade":
                    op.add_column("alembic_members", sa.Column("email_index", sa.LargeBinary(33)))
                    op.encrypt_column(  # type: ignore[attr-defined]
                        "alembic_members",
                        "email",
                        sa.String(200),
                        domain="identity",
                        index="email_index",
                        normalize=str.lower,
                        batch_size=700,
                    )
                    op.encrypt_column("alembic_members", "city", sa.String(50), domain="identity")  # type: ignore[attr-defined]
                else:
                    op.decrypt_column("alembic_members", "city", sa.String(50), domain="identity")  # type: ignore[attr-defined]
                    op.decrypt_column("alembic_members", "email", sa.String(200), domain="identity")  # type: ignore[attr-defined]
                    op.drop_column("alembic_members", "email_index")

        model = sa.Table(
            "alembic_members",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("email", Encrypted(sa.String(200), domain="identity"), nullable=False),
            sa.Column("city", Encrypted(sa.String(50), domain="identity")),
            sa.Column("email_index", BlindIndexType("email", normalize=str.lower)),
        )
        try:
            migrate("upgrade")
            with engine.connect() as conn:
                columns = {c["name"]: c for c in sa.inspect(conn).get_columns("alembic_members")}
                assert set(columns) == {"id", "email", "city", "email_index"}
                assert columns["email"]["nullable"] is False and columns["city"]["nullable"]
                raw = conn.execute(
                    sa.select(sa.type_coerce(model.c.email, sa.LargeBinary))
                ).scalars()
                assert all(bytes(v)[:2] == b"\xf6\x56" for v in raw)
                rows = dict(conn.execute(sa.select(model.c.id, model.c.email)).all())
                assert rows == emails
                cities = dict(conn.execute(sa.select(model.c.id, model.c.city)).all())
                assert cities[7] == "Gent" and cities[8] is None
                found = conn.execute(
                    sa.select(model.c.id).where(model.c.email_index == "member42@example.be")
                ).scalars()
                assert list(found) == [42]
            migrate("downgrade")
            with engine.connect() as conn:
                back = dict(conn.execute(sa.select(legacy.c.id, legacy.c.email)).all())
                assert back == emails
                assert set(
                    sa.inspect(conn).get_columns("alembic_members")[i]["name"] for i in range(3)
                ) == {"id", "email", "city"}
        finally:
            legacy.drop(engine)
            engine.dispose()

    def test_missing_index_column_is_refused(self, vault: Vault) -> None:
        import vaultkit.sqla.alembic

        engine = sa.create_engine("sqlite://")
        with engine.begin() as conn:
            conn.execute(sa.text("create table t (id integer primary key, email text)"))
            op = Operations(MigrationContext.configure(conn))
            with pytest.raises(vaultkit.errors.ConfigurationError, match="no column email_index"):
                op.encrypt_column("t", "email", sa.Text, domain="identity", index="email_index")  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_alembic_and_the_column_type_bind_a_schema_alike(
    postgres_url: str, postgres_schema: str
) -> None:
    """In a table of a named schema, values op.encrypt_column writes decrypt through the model's
    Encrypted column and verify clean in the re-key engine, and values vaultkit rekey writes
    decrypt back through op.decrypt_column: all three bind schema, table and column alike."""
    import vaultkit.sqla.alembic
    from vaultkit.rekey import rekey_table, verify_table

    vault = Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity"])
    vaultkit.sqla.configure(vault)
    postgres_engine = sa.create_engine(postgres_url)  # the re-key tables go to the test's schema
    schema = postgres_schema
    legacy = sa.Table(
        "schema_members",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(200)),
        sa.Column("note", sa.LargeBinary),  # already binary: vaultkit rekey encrypts it in place
        schema=schema,
    )
    legacy.create(postgres_engine)
    emails = {i: f"m{i}@example.be" for i in range(1, 31)}
    notes = {i: f"note {i}" for i in range(1, 31)}
    with postgres_engine.begin() as conn:
        conn.execute(
            legacy.insert(),
            [{"id": i, "email": emails[i], "note": notes[i].encode()} for i in emails],
        )
    model = sa.Table(
        "schema_members",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", Encrypted(sa.String(200), domain="identity")),
        sa.Column("note", Encrypted(sa.Text, domain="identity", migrating=True)),
        schema=schema,
    )
    try:
        with postgres_engine.begin() as conn:
            op = Operations(MigrationContext.configure(conn))
            op.encrypt_column(  # type: ignore[attr-defined]
                "schema_members", "email", sa.String(200), domain="identity", schema=schema
            )
        with postgres_engine.connect() as conn:
            assert dict(conn.execute(sa.select(model.c.id, model.c.email)).all()) == emails
            stored = conn.execute(
                sa.text(f'select email from "{schema}".schema_members where id = 1')
            ).scalar_one()
        cell = {"schema": schema, "table": "schema_members", "column": "email"}
        assert vault.decrypt(bytes(stored), context=cell, domain="identity") == emails[1]
        assert verify_table(postgres_engine, model, vault=vault, columns=["email"]).clean

        report = rekey_table(postgres_engine, model, vault=vault, columns=["note"])
        assert report.complete and report.plaintext_encrypted == 30
        with postgres_engine.begin() as conn:
            op = Operations(MigrationContext.configure(conn))
            op.decrypt_column(  # type: ignore[attr-defined]
                "schema_members", "note", sa.Text, domain="identity", schema=schema
            )
            back = conn.execute(sa.text(f'select id, note from "{schema}".schema_members')).all()
        assert dict(back) == notes  # type: ignore[arg-type]
    finally:
        legacy.drop(postgres_engine)
        postgres_engine.dispose()
        vaultkit.sqla.configure(None)
        vault.close()
