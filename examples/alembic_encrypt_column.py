"""Encrypt a legacy plaintext column in place: an Alembic migration, then migration mode.

The ``upgrade``/``downgrade`` functions are what a migration file under ``alembic/versions/``
holds. ``main()`` runs the whole story on SQLite, with no Alembic project needed:

1. a legacy ``members`` table with plaintext e-mails;
2. the migration turns the column into a binary column (batch mode, for SQLite) and adds the
   blind-index column;
3. the model declares ``Encrypted(..., migrating=True)``; ``begin_migration`` records the legacy
   manifest and ``load_migration`` loads it: the recorded legacy values are read, every write
   stores ciphertext; the re-keying engine (what ``vaultkit rekey`` runs) encrypts the rest in
   resumable batches and fills the blind index; ``count_plaintext`` and ``verify_table`` show it;
4. afterwards the column can drop ``migrating=True``.

For a table small enough to rewrite inside one migration, ``op.encrypt_column`` /
``op.decrypt_column`` (``import vaultkit.sqla.alembic``) do it all in the migration instead.

Autogenerate: vaultkit keeps tables of its own in the application's database (here the re-keying
engine's checkpoints; with the key store there too, ``vaultkit_data_keys``). They are not in the
application's metadata, so plain autogenerate would drop them. The ``env.py`` of the project::

    import vaultkit.sqla.alembic

    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        **vaultkit.sqla.alembic.autogenerate_options(),
    )

keeps them out, renders vaultkit's column types, and autogenerates ``op.encrypt_column`` for a
plaintext column whose model type became ``Encrypted`` (not in migration mode, as here).
``main()`` compares the two at the end.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
import vaultkit.sqla.alembic
from vaultkit import Vault
from vaultkit.keys import LocalKeyProvider, generate_master_key
from vaultkit.keys.local import decode_master_key
from vaultkit.rekey import begin_migration, load_migration, rekey_table, verify_table
from vaultkit.sqla import BlindIndex, Encrypted, count_plaintext

revision = "3f2a9c1d7b10"
down_revision = None


def upgrade(op: Operations) -> None:
    with op.batch_alter_table("members") as batch:
        batch.alter_column("email", type_=sa.LargeBinary(), existing_type=sa.String(320))
        batch.add_column(sa.Column("email_index", sa.LargeBinary(33), nullable=True))
        batch.create_index("ix_members_email_index", ["email_index"])


def downgrade(op: Operations) -> None:
    # Only valid while every value is still plaintext (count_plaintext == rows): ciphertexts
    # cannot be turned back into text by changing a type. Once values are encrypted, a downgrade
    # uses op.decrypt_column (vaultkit.sqla.alembic), which decrypts them in place.
    with op.batch_alter_table("members") as batch:
        batch.drop_index("ix_members_email_index")
        batch.drop_column("email_index")
        batch.alter_column("email", type_=sa.String(320), existing_type=sa.LargeBinary())


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(Encrypted(sa.String(320), domain="identity", migrating=True))
    email_index = BlindIndex("email", normalize=str.lower)


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="vaultkit-alembic-"))
    engine = sa.create_engine(f"sqlite:///{workdir / 'app.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("create table members (id integer primary key, email varchar(320))"))
        conn.execute(
            sa.text(
                "insert into members (id, email) values (1, 'jan@example.be'), (2, 'marie@example.be')"
            )
        )

    with engine.begin() as conn:
        upgrade(Operations(MigrationContext.configure(conn)))
    print("migrated: members.email is binary, members.email_index added")

    master = decode_master_key(generate_master_key(), source="example key")
    vault = Vault(
        provider=LocalKeyProvider(workdir / "keyring.json", master_key=master),
        # On SQLite, the key store is a file of its own: SQLite locks a whole file per writer.
        store=f"sqlite:///{workdir / 'keys.db'}",
        domains=["identity"],
    )
    vaultkit.sqla.configure(vault)
    # The migration begins: the legacy manifest records which rows hold which plaintext now
    # (keyed tags, never the values). Only those are accepted as plaintext from here on; each
    # application process loads the manifest at start-up.
    recorded = begin_migration(engine, Member.__table__, vault=vault)  # type: ignore[arg-type]
    load_migration(engine, Member.__table__, vault=vault)  # type: ignore[arg-type]
    print(f"legacy manifest: {recorded['email']} rows recorded")
    with Session(engine) as session:
        print(f"plaintext rows before: {count_plaintext(session, Member.email)}")
        assert session.get(Member, 2).email == "marie@example.be"  # type: ignore[union-attr]
    report = rekey_table(engine, Member.__table__, vault=vault)  # type: ignore[arg-type]
    print(f"re-keying engine: {report.plaintext_encrypted} values encrypted, indexes filled")
    assert verify_table(engine, Member.__table__, vault=vault).clean  # type: ignore[arg-type]
    with Session(engine) as session:
        print(f"plaintext rows after:  {count_plaintext(session, Member.email)}")
        found = session.scalars(
            sa.select(Member).where(Member.email_index == "Jan@Example.be")
        ).one()
        assert found.email == "jan@example.be"
        print(f"lookup through the blind index finds member {found.id}")
    with engine.connect() as conn:
        plain = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        options = vaultkit.sqla.alembic.autogenerate_options()
        filters = {k: options[k] for k in ("include_name", "include_object")}
        kept = compare_metadata(MigrationContext.configure(conn, opts=filters), Base.metadata)
    dropped = sorted(d[1].name for d in plain if d[0] == "remove_table")
    print(f"plain autogenerate would drop: {', '.join(dropped)}")
    assert dropped and not [d for d in kept if d[0] == "remove_table"]
    print("with vaultkit.sqla.alembic.autogenerate_options(): nothing to drop")
    vaultkit.sqla.configure(None)
    vault.close()
    engine.dispose()


if __name__ == "__main__":
    main()
