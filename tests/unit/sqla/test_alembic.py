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
