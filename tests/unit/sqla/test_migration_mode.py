"""Migration mode (``Encrypted(..., migrating=True)``) against a database writer.

The writer plants plaintext with plain SQL where ciphertext was; the column type must apply the
domain's grant and audit rules to it, and a value that does not convert must not be quoted.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, SealedValue, Vault
from vaultkit.errors import AccessDeniedError, DecryptionError
from vaultkit.sqla import Encrypted
from vaultkit.testing import InMemoryKeyProvider

COACH = Principal("coach-17", grants={"medical"})
CLAIMS = Principal("claims-handler-3")
PLANTED = "forged diagnosis 5b1f"


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault(
        provider=InMemoryKeyProvider(["identity", "medical", "criminal"]),
        store=f"sqlite:///{tmp_path / 'keys.db'}",
        domains=[
            KeyDomain("identity"),
            KeyDomain("medical", restricted=True, audited=True),
            KeyDomain("criminal", restricted=True, on_denied="raise"),
        ],
    )
    vaultkit.sqla.configure(v)
    yield v
    vaultkit.sqla.configure(None)
    v.close()


@pytest.fixture
def engine(tmp_path: Path, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
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
        with vault.acting_as(CLAIMS, purpose="claims"), pytest.raises(AccessDeniedError):
            read(engine, NOTES.c.conviction)

    def test_legacy_reads_are_audited_like_decrypts(self, engine: sa.Engine, vault: Vault) -> None:
        """Reading legacy plaintext in an audited domain appends a decrypt event (no DEK id)
        naming principal, purpose, table and column; a refused read appends a denied event."""
        plant(engine, 1, note=PLANTED.encode())
        with vault.acting_as(COACH, purpose="coaching"):
            read(engine, NOTES.c.note)
        with vault.acting_as(CLAIMS, purpose="claims"):
            read(engine, NOTES.c.note)
        assert vault.audit_log is not None
        events = [event for _seq, event, _h, _p in vault.audit_log.read()]
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
            column_type.decrypt_value(legacy)
        assert legacy.decode() not in str(info.value)
        assert info.value.__context__ is None
