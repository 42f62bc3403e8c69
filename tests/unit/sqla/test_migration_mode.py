"""Migration mode (``Encrypted(..., migrating=True)``) against a database writer.

The writer plants plaintext with plain SQL where ciphertext was. Only legacy values recorded when
the migration began (the legacy manifest) are accepted, by the application and by the re-keying
engine; the domain's grant and audit rules apply to them; and a value that does not convert is
not quoted.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from vaultkit import KeyDomain, Principal, SealedValue, Vault
from vaultkit.errors import AccessDeniedError, ConfigurationError, DecryptionError
from vaultkit.rekey import begin_migration, load_migration, rekey_table, verify_table
from vaultkit.sqla import Encrypted
from vaultkit.testing import InMemoryKeyProvider

COACH = Principal("coach-17", grants={"medical"})
CLAIMS = Principal("claims-handler-3")
PLANTED = "forged diagnosis 5b1f"


pytestmark = pytest.mark.configured  # the vault fixture is the column types' vault


@pytest.fixture
def vault_kwargs(tmp_path: Path) -> dict[str, Any]:
    return {
        "provider": InMemoryKeyProvider(["identity", "medical", "criminal"]),
        "store": f"sqlite:///{tmp_path / 'keys.db'}",
        "domains": [
            KeyDomain("identity"),
            KeyDomain("medical", restricted=True, audited=True),
            KeyDomain("criminal", restricted=True, on_denied="raise"),
        ],
    }


@pytest.fixture
def engine(tmp_path: Path, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    META.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def any_engine(database_url: str, vault: Vault) -> Iterator[sa.Engine]:
    """The application database on SQLite, PostgreSQL and MariaDB."""
    eng = sa.create_engine(database_url)
    META.create_all(eng)
    yield eng
    eng.dispose()


META = sa.MetaData()
NOTES = sa.Table(
    "mm_notes",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("note", Encrypted(sa.Text, domain="medical", migrating=True)),
    sa.Column("conviction", Encrypted(sa.Text, domain="criminal", migrating=True)),
    sa.Column("amount", Encrypted(sa.Integer, domain="identity", migrating=True)),
)


def plant(engine: sa.Engine, row: int, **values: bytes) -> None:
    """What a database writer does: replace the stored bytes of a row with plain SQL."""
    columns = ", ".join(values)
    marks = ", ".join(f":{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"insert into mm_notes (id, {columns}) values (:id, {marks})"),
            {"id": row, **values},
        )


def update(engine: sa.Engine, row: int, **values: bytes) -> None:
    """A database writer replaces stored bytes of an existing row."""
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(sa.text(f"update mm_notes set {sets} where id = :id"), {"id": row, **values})


def begin(engine: sa.Engine, vault: Vault) -> None:
    """The operator starts the migration (the manifest) and the application loads it."""
    with vault.acting_as(Principal("operator", grants=set(vault.domains)), purpose="migrate"):
        begin_migration(engine, NOTES, vault=vault)
        load_migration(engine, NOTES, vault=vault)


def read(engine: sa.Engine, column: sa.Column[object], row: int = 1) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.select(column).where(NOTES.c.id == row)).scalar_one()


class TestGrants:
    def test_legacy_plaintext_is_sealed_for_a_reader_without_the_grant(
        self, engine: sa.Engine, vault: Vault
    ) -> None:
        """Plaintext planted in a restricted migrating column reaches a principal without the
        grant only as a SealedValue, as a ciphertext would; the coach with the grant reads it."""
        plant(engine, 1, note=PLANTED.encode())
        begin(engine, vault)
        with vault.acting_as(CLAIMS, purpose="claims"):
            sealed = read(engine, NOTES.c.note)
        assert isinstance(sealed, SealedValue)
        assert PLANTED not in repr(sealed)
        with vault.acting_as(COACH, purpose="coaching"):
            assert read(engine, NOTES.c.note) == PLANTED

    def test_legacy_plaintext_raises_where_the_domain_says_so(
        self, engine: sa.Engine, vault: Vault
    ) -> None:
        """In a domain with on_denied="raise", a reader without the grant gets AccessDeniedError
        for legacy plaintext too."""
        plant(engine, 1, conviction=b"planted conviction")
        begin(engine, vault)
        with vault.acting_as(CLAIMS, purpose="claims"), pytest.raises(AccessDeniedError):
            read(engine, NOTES.c.conviction)

    def test_legacy_reads_are_audited_like_decrypts(self, engine: sa.Engine, vault: Vault) -> None:
        """Reading legacy plaintext in an audited domain appends a decrypt event (no DEK id)
        naming principal, purpose, table and column; a refused read appends a denied event."""
        plant(engine, 1, note=PLANTED.encode())
        begin(engine, vault)
        with vault.acting_as(COACH, purpose="coaching"):
            read(engine, NOTES.c.note)
        with vault.acting_as(CLAIMS, purpose="claims"):
            read(engine, NOTES.c.note)
        assert vault.audit_log is not None
        events = [e for _seq, e, _h, _p in vault.audit_log.read() if e.principal != "operator"]
        assert [(e.principal, e.action, e.table, e.column, e.dek_id) for e in events] == [
            ("coach-17", "decrypt", "mm_notes", "note", None),
            ("claims-handler-3", "denied", "mm_notes", "note", None),
        ]
        assert events[0].purpose == "coaching"


class TestConversionErrors:
    def test_a_legacy_value_that_does_not_convert_is_not_quoted(
        self, engine: sa.Engine, vault: Vault
    ) -> None:
        """Legacy "abc-7731" in an Integer column raises DecryptionError naming the column, with
        no chained exception and no vaultkit frame holding the value."""
        plant(engine, 1, amount=b"abc-7731")
        begin(engine, vault)
        with pytest.raises(DecryptionError) as info:
            read(engine, NOTES.c.amount)
        error = info.value
        assert "mm_notes.amount" in str(error) and "Integer" in str(error)
        rendered = "".join(traceback.format_exception(error))
        assert "abc-7731" not in rendered
        assert error.__cause__ is None and error.__context__ is None
        tb = error.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if "/vaultkit/" in frame.f_code.co_filename:
                held = repr(list(frame.f_locals.values()))
                assert "abc-7731" not in held, frame.f_code.co_name
            tb = tb.tb_next

    @pytest.mark.parametrize(
        ("inner", "legacy"),
        [
            (sa.Integer, b"12x"),
            (sa.Date, b"2026-13-45"),
            (sa.Uuid, b"not-a-uuid"),
            (sa.JSON, b"{broken"),
            (sa.Numeric, b"1,5"),
        ],
    )
    def test_each_converter_fails_without_the_value(
        self, vault: Vault, inner: type[sa.types.TypeEngine[object]], legacy: bytes
    ) -> None:
        """Every legacy converter's failure is the same clean DecryptionError."""
        column_type = Encrypted(inner, domain="identity", migrating=True, table="t", column="c")
        with pytest.raises(DecryptionError, match=r"legacy plaintext in t\.c") as info:
            column_type.open_legacy(legacy)
        assert legacy.decode() not in str(info.value)
        assert info.value.__context__ is None


class TestManifest:
    def test_plaintext_not_recorded_when_migration_began_is_refused(
        self, engine: sa.Engine, vault: Vault
    ) -> None:
        """After the migration began, plaintext the writer puts in a new row, or in place of a
        ciphertext, raises DecryptionError in the application; recorded legacy values read."""
        plant(engine, 1, amount=b"1200")
        plant(engine, 2, amount=b"75")
        begin(engine, vault)
        with engine.begin() as conn:  # the application writes ciphertext, as migration mode does
            conn.execute(NOTES.update().where(NOTES.c.id == 2).values(amount=80))
            conn.execute(NOTES.insert().values(id=3, amount=9))
        assert read(engine, NOTES.c.amount, 1) == 1200
        update(engine, 2, amount=b"999999")  # a downgrade of row 2's ciphertext
        plant(engine, 4, amount=b"31337")  # plaintext in a row created after the start
        for row in (2, 4):
            with pytest.raises(DecryptionError, match="not recorded when its migration began"):
                read(engine, NOTES.c.amount, row)

    def test_reads_need_the_manifest(self, engine: sa.Engine, vault: Vault) -> None:
        """A process that did not load the manifest refuses legacy plaintext with a
        ConfigurationError saying what to call; loading before the migration began is refused."""
        plant(engine, 1, amount=b"1200")
        with pytest.raises(ConfigurationError, match="begin_migration"):
            load_migration(engine, NOTES, vault=vault)
        with vault.acting_as(Principal("operator", grants={"medical"}), purpose="migrate"):
            begin_migration(engine, NOTES, vault=vault)
        with pytest.raises(ConfigurationError, match="load_migration"):
            read(engine, NOTES.c.amount)

    def test_rekey_and_verify_count_downgrades_and_leave_them(
        self, any_engine: sa.Engine, vault: Vault
    ) -> None:
        """vaultkit rekey does not encrypt plaintext that replaced a ciphertext or a recorded
        value, or that sits in a row created later: it counts them as tampered and leaves them,
        and verify counts them as tampered; the recorded legacy values are encrypted."""
        engine = any_engine
        for row in range(1, 6):
            plant(engine, row, amount=str(100 + row).encode())
        begin(engine, vault)
        with engine.begin() as conn:
            conn.execute(NOTES.update().where(NOTES.c.id == 2).values(amount=202))
        update(engine, 2, amount=b"777")  # ciphertext replaced by plaintext
        update(engine, 3, amount=b"888")  # a recorded legacy value replaced by another one
        plant(engine, 6, amount=b"999")  # a row that never held legacy plaintext
        before = verify_table(engine, NOTES, vault=vault, columns=["amount"])
        assert (before.tampered, before.plaintext) == (3, 3)
        report = rekey_table(engine, NOTES, vault=vault, columns=["amount"])
        assert report.tampered == 3 and report.plaintext_encrypted == 3
        assert not report.complete
        after = verify_table(engine, NOTES, vault=vault, columns=["amount"])
        assert (after.tampered, after.plaintext, after.clean) == (3, 0, False)
        with engine.connect() as conn:
            stored = conn.execute(
                sa.text("select id, amount from mm_notes where id in (2, 3, 6) order by id")
            ).all()
        assert [(k, bytes(v)) for k, v in stored] == [(2, b"777"), (3, b"888"), (6, b"999")]

    def test_a_row_that_held_ciphertext_never_takes_plaintext_again(
        self, any_engine: sa.Engine, vault: Vault
    ) -> None:
        """Once vaultkit rekey encrypted a recorded row, putting its own legacy value back (a
        rollback to the plaintext of a backup) is tampering for rekey, verify and an application
        that loads the manifest, also after the column leaves migration mode."""
        engine = any_engine
        plant(engine, 1, amount=b"1200")
        plant(engine, 2, amount=b"75")
        begin(engine, vault)
        assert rekey_table(engine, NOTES, vault=vault, columns=["amount"]).complete
        update(engine, 1, amount=b"1200")
        report = rekey_table(engine, NOTES, vault=vault, columns=["amount"], job="again")
        assert report.tampered == 1 and report.plaintext_encrypted == 0
        assert verify_table(engine, NOTES, vault=vault, columns=["amount"]).tampered == 1
        load_migration(engine, NOTES, vault=vault)
        with pytest.raises(DecryptionError, match="not recorded"):
            read(engine, NOTES.c.amount, 1)
        strict = sa.Table(
            "mm_notes",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("amount", Encrypted(sa.Integer, domain="identity")),
        )
        assert verify_table(engine, strict, vault=vault).tampered == 1

    def test_a_deleted_manifest_is_not_recorded_afresh(
        self, engine: sa.Engine, vault: Vault
    ) -> None:
        """A writer who deletes the manifest and downgrades a value does not get the next run to
        record the column afresh (the manifest key in the key store shows the migration began):
        the run refuses, until an operator restarts the migration deliberately."""
        plant(engine, 1, amount=b"1200")
        begin(engine, vault)
        with engine.begin() as conn:
            conn.execute(NOTES.update().where(NOTES.c.id == 1).values(amount=1300))
            conn.execute(sa.text("delete from vaultkit_legacy_rows"))
            conn.execute(sa.text("delete from vaultkit_legacy_migrations"))
        update(engine, 1, amount=b"999999")
        with pytest.raises(ConfigurationError, match="legacy manifest is missing"):
            rekey_table(engine, NOTES, vault=vault, columns=["amount"])
        with pytest.raises(ConfigurationError, match="legacy manifest is missing"):
            begin_migration(engine, NOTES, vault=vault, columns=["amount"])
        assert begin_migration(engine, NOTES, vault=vault, columns=["amount"], restart=True) == {
            "amount": 1
        }
