"""``vaultkit index plan``: counts given or read from a database, both rules printed, refusals."""

from __future__ import annotations

import base64
import json
import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests._population import population
from vaultkit import Vault
from vaultkit.cli.main import main
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV

MODEL = textwrap.dedent(
    """
    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
    from vaultkit.search import digits, first_char, fold_name, year
    from vaultkit.sqla import (
        BlindIndex, CompoundIndex, Encrypted, Part, PrefixIndex, TokenIndex,
    )

    class Base(DeclarativeBase):
        pass

    class Member(Base):
        __tablename__ = "plan_members"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        postal_code: Mapped[str] = mapped_column(Encrypted(sa.String(8), domain="identity"))
        birth_date = mapped_column(Encrypted(sa.Date, domain="identity"))
        last_name: Mapped[str] = mapped_column(Encrypted(sa.String(100), domain="identity"))
        gender: Mapped[str] = mapped_column(Encrypted(sa.String(1), domain="identity"))
        city: Mapped[str | None] = mapped_column(Encrypted(sa.String(40), domain="identity"))
        gender_index = BlindIndex("gender")
        locator = CompoundIndex(
            Part("postal_code", digits(4)), Part("birth_date", year),
            Part("last_name", first_char), bits=16,
        )
        surname = BlindIndex("last_name", normalize=fold_name)
        last_name_p3 = PrefixIndex("last_name", length=3, normalize=fold_name, bits=12)
        name_tokens = TokenIndex("last_name", bits=20)
    """
)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], str]]:
    """A keyring, a key store, 3,000 members in an SQLite database, and the model module."""
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    keyring = tmp_path / "keyring.json"
    provider = LocalKeyProvider(keyring)
    provider.primary("identity")
    module = f"plan_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import vaultkit.sqla

    models = importlib.import_module(module)
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    data = f"sqlite:///{tmp_path / 'data.db'}"
    with Vault(provider=provider, store=store, domains=["identity"]) as vault:
        vaultkit.sqla.configure(vault)
        try:
            engine = sa.create_engine(data)
            models.Base.metadata.create_all(engine)
            rows = [
                {
                    "id": i,
                    "postal_code": m.postal_code,
                    "birth_date": m.birth_date,
                    "last_name": m.last_name,
                    "gender": "FMX"[i % 3],
                }
                for i, m in enumerate(population(3000, seed=5), start=1)
            ]
            with engine.begin() as conn:
                conn.execute(sa.insert(models.Member.__table__), rows)
            engine.dispose()
        finally:
            vaultkit.sqla.configure(None)
    yield ["--store", store, "--keyring", str(keyring), "--data", data], module


def test_counts_given(capsys: pytest.CaptureFixture[str], setup: tuple[list[str], str]) -> None:
    """With --rows and --distinct nothing is read: both rules and a width are printed."""
    _options, module = setup
    args = ["index", "plan", "--model", f"{module}:Member", "--rows", "1000000",
            "--distinct", "110000"]  # fmt: skip
    assert main([*args, "--column", "city"]) == 0
    out = capsys.readouterr().out
    assert "AWS beacon length" in out and "9-15 bits" in out
    assert "CipherSweet" in out and "recommended width: 14 bits" in out
    # postal_code is read by the 16-bit compound index already: it counts, and leaves no room.
    assert main([*args, "--column", "postal_code"]) == 0
    out = capsys.readouterr().out
    assert "locator" in out and "no width satisfies both rules" in out
    assert "recommended width" not in out


def test_counts_from_the_database(
    capsys: pytest.CaptureFixture[str], setup: tuple[list[str], str]
) -> None:
    """From --data: exact counts through the full-width blind index, a decrypted sample for the
    others; JSON out; no value of the column is printed."""
    options, module = setup
    code = main(
        ["index", "plan", "--model", f"{module}:Member", "--column", "last_name", "--json",
         *options]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["rows"] == 3000
    expected = len({m.last_name.casefold() for m in population(3000, seed=5)})
    assert abs(data["distinct"] - expected) <= expected * 0.02
    assert data["top_share"] > 0
    names = {i["name"]: i for i in data["indexes"]}
    assert set(names) == {"locator", "surname", "last_name_p3", "name_tokens"}
    assert names["name_tokens"]["kind"] == "token"
    assert names["name_tokens"]["population"] > 3000  # words, not rows
    assert names["last_name_p3"]["distinct"] < 2000
    for member in population(50, seed=5):
        assert member.last_name not in captured.out


def test_low_cardinality_refused(
    capsys: pytest.CaptureFixture[str], setup: tuple[list[str], str]
) -> None:
    """A stand-alone index on a 3-value field is refused: exit 7, REFUSED in the report."""
    options, module = setup
    code = main(["index", "plan", "--model", f"{module}:Member", "--column", "gender", *options])
    out = capsys.readouterr().out
    assert code == 7
    assert "REFUSED" in out and "CompoundIndex" in out


def test_base_needs_a_table(
    capsys: pytest.CaptureFixture[str], setup: tuple[list[str], str]
) -> None:
    """A declarative base takes --table; without it the command says so (exit 3)."""
    _options, module = setup
    args = ["index", "plan", "--model", f"{module}:Base", "--column", "postal_code",
            "--rows", "100", "--distinct", "50"]  # fmt: skip
    assert main(args) == 3
    assert "--table" in capsys.readouterr().err
    assert main([*args, "--table", "plan_members"]) == 0


def test_no_counts(capsys: pytest.CaptureFixture[str], setup: tuple[list[str], str]) -> None:
    """Neither --data nor both counts: a configuration error (exit 3)."""
    _options, module = setup
    code = main(["index", "plan", "--model", f"{module}:Member", "--column", "gender",
                 "--rows", "10"])  # fmt: skip
    assert code == 3


def test_rewrite_terms(capsys: pytest.CaptureFixture[str], setup: tuple[list[str], str]) -> None:
    """``index rewrite-terms`` rebuilds the token terms of every row (here, after raw deletes)."""
    options, module = setup
    data = options[options.index("--data") + 1]
    engine = sa.create_engine(data)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM plan_members__name_tokens")
    code = main(["index", "rewrite-terms", "--model", f"{module}:Member", *options])
    out = capsys.readouterr().out
    assert code == 0
    assert "plan_members__name_tokens: 3000 rows" in out
    with engine.connect() as conn:
        terms = conn.exec_driver_sql("SELECT count(*) FROM plan_members__name_tokens").scalar()
    engine.dispose()
    assert terms is not None and terms > 3000
    assert main(["index", "rewrite-terms", "--model", f"{module}:Member", "--index", "nope",
                 *options]) == 3  # fmt: skip
