"""Alembic autogenerate renders vaultkit column types as importable code with no secrets."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
def metadata(configure_vault: Callable[[Vault | None], None]) -> Iterator[sa.MetaData]:
    vault = Vault(
        provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity", "medical"]
    )
    configure_vault(vault)
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
    configure_vault(None)
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


@pytest.mark.configured
class TestEncryptInPlace:
    """op.encrypt_column / op.decrypt_column inside a migration, on SQLite, PostgreSQL, MariaDB."""

    @pytest.fixture
    def vault_kwargs(self) -> dict[str, Any]:
        return {
            "provider": InMemoryKeyProvider(),
            "store": MemoryKeyStore(),
            "domains": ["identity"],
        }

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


# -- autogenerate with the key store in the application's database -----------------------------

VAULTKIT_TABLES = {
    "vaultkit_data_keys",
    "vaultkit_meta",
    "vaultkit_audit_events",
    "vaultkit_audit_head",
    "vaultkit_rekey_ranges",
    "vaultkit_rekey_checkpoints",
}

ENV_PY = """
from alembic import context

import vaultkit.sqla.alembic

config = context.config
context.configure(
    connection=config.attributes["connection"],
    target_metadata=config.attributes["metadata"],
    **vaultkit.sqla.alembic.autogenerate_options(),
)
with context.begin_transaction():
    context.run_migrations()
"""


def app_metadata(email_type: sa.types.TypeEngine[object]) -> sa.MetaData:
    """The application's own metadata: a members table, its e-mail column typed as given."""
    meta = sa.MetaData()
    columns: list[sa.Column[object]] = [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", email_type, nullable=False),
    ]
    if isinstance(email_type, Encrypted):
        columns.append(
            sa.Column("email_index", BlindIndexType("email", normalize=str.lower), index=True)
        )
    sa.Table("members", meta, *columns)
    return meta


@pytest.fixture
def app_db(database_url: str, tmp_path: Path) -> Iterator[tuple[sa.Engine, Vault]]:
    """An application database holding the key store, the audit log and re-key checkpoints."""
    from vaultkit import KeyDomain
    from vaultkit.rekey import rekey_table

    vault = Vault(
        provider=InMemoryKeyProvider(["identity", "medical"]),
        store=database_url,
        domains=[KeyDomain("identity"), KeyDomain("medical", restricted=True, audited=True)],
    )
    vaultkit.sqla.configure(vault)
    engine = sa.create_engine(database_url)
    model = app_metadata(Encrypted(sa.String(320), domain="identity"))
    model.create_all(engine)
    with engine.begin() as conn:
        conn.execute(model.tables["members"].insert(), [{"id": 1, "email": "jan@example.be"}])
    rekey_table(engine, model.tables["members"], vault=vault)
    with engine.connect() as conn:
        assert VAULTKIT_TABLES <= set(sa.inspect(conn).get_table_names())
    yield engine, vault
    vaultkit.sqla.configure(None)
    vault.close()
    engine.dispose()


def removed_tables(engine: sa.Engine, metadata: sa.MetaData, **opts: object) -> set[str]:
    from alembic.autogenerate import compare_metadata

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=opts)
        diffs = compare_metadata(context, metadata)
    return {d[1].name for d in diffs if isinstance(d, tuple) and d[0] == "remove_table"}


class TestAutogenerateKeepsVaultkitTables:
    def test_without_the_filters_autogenerate_drops_the_key_store(
        self, app_db: tuple[sa.Engine, Vault]
    ) -> None:
        """Plain autogenerate would emit drop_table for every vaultkit table (the hazard)."""
        engine, _ = app_db
        model = app_metadata(Encrypted(sa.String(320), domain="identity"))
        removed = removed_tables(engine, model)
        assert removed >= VAULTKIT_TABLES
        assert all(name.startswith("vaultkit_") for name in removed)

    def test_filters_leave_vaultkit_tables_alone(self, app_db: tuple[sa.Engine, Vault]) -> None:
        """With include_name and include_object, autogenerate finds no difference at all."""
        from alembic.autogenerate import compare_metadata

        import vaultkit.sqla.alembic as vk_alembic

        engine, _ = app_db
        model = app_metadata(Encrypted(sa.String(320), domain="identity"))
        opts = {
            "include_name": vk_alembic.include_name,
            "include_object": vk_alembic.include_object,
        }
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts=opts), model)
        assert diffs == []

    def test_options_compose_with_the_applications_own_filters(
        self, app_db: tuple[sa.Engine, Vault]
    ) -> None:
        """The application's filters still apply, after vaultkit's tables are skipped."""
        import vaultkit.sqla.alembic as vk_alembic

        engine, _ = app_db
        with engine.begin() as conn:
            conn.execute(sa.text("create table legacy_report (id integer primary key)"))
            conn.execute(sa.text("create table old_export (id integer primary key)"))
        asked: list[str] = []

        def mine(name: object, type_: str, parent_names: object) -> bool:
            if type_ == "table":
                asked.append(str(name))
            return not (type_ == "table" and str(name).startswith("legacy_"))

        options = vk_alembic.autogenerate_options(include_name=mine)
        model = app_metadata(Encrypted(sa.String(320), domain="identity"))
        removed = removed_tables(
            engine,
            model,
            include_name=options["include_name"],
            include_object=options["include_object"],
        )
        assert removed == {"old_export"}
        assert "legacy_report" in asked and not any(n.startswith("vaultkit_") for n in asked)

    def test_custom_key_store_prefix_is_skipped_when_named(self, tmp_path: Path) -> None:
        """A key store with its own table prefix is skipped once the prefix is given."""
        import vaultkit.sqla.alembic as vk_alembic
        from vaultkit.store import SQLKeyStore

        url = f"sqlite:///{tmp_path / 'app.db'}"
        SQLKeyStore(url, table_prefix="keys_").engine.dispose()
        engine = sa.create_engine(url)
        model = app_metadata(sa.String(320))
        model.create_all(engine)
        options = vk_alembic.autogenerate_options(table_prefixes=("keys_", "vaultkit_"))
        assert removed_tables(engine, model) == {"keys_data_keys", "keys_meta", "keys_subjects"}
        kept = {k: options[k] for k in ("include_name", "include_object")}
        assert removed_tables(engine, model, **kept) == set()
        engine.dispose()


def alembic_project(tmp_path: Path) -> tuple[Any, Path]:
    """A real Alembic project (``alembic init``) whose env.py uses vaultkit's options."""
    from alembic import command
    from alembic.config import Config

    directory = tmp_path / "migrations"
    config = Config(str(tmp_path / "alembic.ini"))
    config.set_main_option("script_location", str(directory))
    command.init(config, str(directory))
    (directory / "env.py").write_text(ENV_PY)
    return config, directory / "versions"


class TestAutogenerateEncryptsColumns:
    @pytest.fixture
    def legacy(self, database_url: str) -> Iterator[tuple[sa.Engine, Vault]]:
        """A plaintext members table next to the key store, in one database."""
        vault = Vault(provider=InMemoryKeyProvider(), store=database_url, domains=["identity"])
        vaultkit.sqla.configure(vault)
        engine = sa.create_engine(database_url)
        app_metadata(sa.String(320)).create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "insert into members (id, email) values (1, 'Jan@Example.be'), (2, 'marie@example.be')"
                )
            )
        yield engine, vault
        vaultkit.sqla.configure(None)
        vault.close()
        engine.dispose()

    def test_string_to_encrypted_becomes_encrypt_column(
        self, legacy: tuple[sa.Engine, Vault], tmp_path: Path
    ) -> None:
        """`alembic revision --autogenerate` writes op.encrypt_column, which upgrade runs and
        downgrade reverses; no alter_column of the type and no drop_table of the key store."""
        from alembic import command

        engine, _vault = legacy
        config, versions = alembic_project(tmp_path)
        model = app_metadata(Encrypted(sa.String(320), domain="identity"))
        with engine.begin() as conn:
            config.attributes.update(connection=conn, metadata=model)
            command.revision(config, message="encrypt e-mail", autogenerate=True)
        (script,) = versions.glob("*.py")
        code = script.read_text()
        upgrade, downgrade = code.split("def downgrade")
        assert (
            "op.encrypt_column('members', 'email', sa.String(length=320), domain='identity', "
            "index='email_index', normalize=str.lower)"
        ) in upgrade
        # The downgrade restores the column's type as reflected (VARCHAR(320)).
        assert re.search(
            r"op\.decrypt_column\('members', 'email', \w+\.VARCHAR\(length=320[^)]*\), "
            r"domain='identity'\)",
            downgrade,
        )
        assert "import vaultkit.sqla.alembic" in code
        assert "alter_column" not in code and "drop_table" not in code
        assert upgrade.index("add_column") < upgrade.index("encrypt_column")
        assert downgrade.index("decrypt_column") < downgrade.index("drop_column")

        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        members = model.tables["members"]
        with engine.connect() as conn:
            raw = conn.execute(sa.select(sa.type_coerce(members.c.email, sa.LargeBinary))).scalars()
            assert all(bytes(v)[:2] == b"\xf6\x56" for v in raw)
            found = conn.execute(
                sa.select(members.c.id, members.c.email).where(
                    members.c.email_index == "jan@example.be"
                )
            ).all()
            assert [tuple(r) for r in found] == [(1, "Jan@Example.be")]
            assert VAULTKIT_TABLES & set(sa.inspect(conn).get_table_names()) >= {
                "vaultkit_data_keys",
                "vaultkit_meta",
            }

        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select id, email from members order by id")).all()
            assert [tuple(r) for r in rows] == [(1, "Jan@Example.be"), (2, "marie@example.be")]

    def test_migrating_column_stays_a_type_change(self, tmp_path: Path) -> None:
        """A column declared migrating=True is left to alter_column (migration mode reads it)."""
        code = autogenerate_code(
            tmp_path, app_metadata(Encrypted(sa.String(320), domain="identity", migrating=True))
        )
        assert "alter_column" in code and "encrypt_column" not in code

    def test_unnameable_normalize_is_refused_with_a_pointer(self, tmp_path: Path) -> None:
        """A lambda normalize cannot be written into a migration: autogenerate says so."""
        model = app_metadata(sa.String(320))
        model.tables["members"].c.email.type = Encrypted(sa.String(320), domain="identity")
        model.tables["members"].append_column(
            sa.Column("email_index", BlindIndexType("email", normalize=lambda v: v.strip()))
        )
        with pytest.raises(vaultkit.errors.ConfigurationError, match=r"op\.encrypt_column"):
            autogenerate_code(tmp_path, model)


def autogenerate_code(tmp_path: Path, model: sa.MetaData) -> str:
    """Autogenerate a revision from a plaintext members table to ``model``; return its code."""
    from alembic import command

    vault = Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity"])
    vaultkit.sqla.configure(vault)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    app_metadata(sa.String(320)).create_all(engine)
    config, versions = alembic_project(tmp_path)
    try:
        with engine.begin() as conn:
            config.attributes.update(connection=conn, metadata=model)
            command.revision(config, message="change", autogenerate=True)
        (script,) = versions.glob("*.py")
        return script.read_text()
    finally:
        vaultkit.sqla.configure(None)
        vault.close()
        engine.dispose()
