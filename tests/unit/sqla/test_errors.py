"""Tests for SQLAlchemy errors and logs: no plaintext of an encrypted column in either.

Recognisable values are planted in several encrypted columns (one row-bound, one JSON, one with a
blind index) and each failure is searched for them: message, repr, parameters, the chain of
exceptions, the locals of every finished frame below the failure, and the engine's log.
"""

from __future__ import annotations

import datetime as dt
import logging
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vaultkit import Vault
from vaultkit.errors import ConfigurationError, EncodingError, VaultkitError
from vaultkit.sqla import BlindIndex, Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

PLANTED = ("planted-mail-7f3a", "PLANTED0960", "planted-note-c1e9", "planted-json-5b2d")


class Base(DeclarativeBase):
    pass


def strict_lower(value: str) -> str:
    """A normalising function whose error quotes its input, as user code may."""
    if "@" not in value:
        raise ValueError(f"not an e-mail address: {value!r}")
    return value.lower()


class Person(Base):
    __tablename__ = "error_people"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    email_index = BlindIndex("email", normalize=strict_lower)
    iban: Mapped[str] = mapped_column(Encrypted(sa.String(40), domain="financial"))
    note: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="identity", row_key="id"))
    doc: Mapped[Any] = mapped_column(Encrypted(sa.JSON, domain="identity"))
    born: Mapped[dt.date | None] = mapped_column(sa.Date)


def values(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "email": "planted-mail-7f3a@example.be",
        "iban": "BE71PLANTED0960",
        "note": "planted-note-c1e9",
        "doc": {"planted-json-5b2d": [1, 2]},
        "born": dt.date(1980, 5, 17),
    }
    row.update(changes)
    return row


@pytest.fixture
def engine(tmp_path: Path, configure_vault: Callable[[Vault | None], None]) -> Iterator[sa.Engine]:
    vault = Vault(
        provider=InMemoryKeyProvider(),
        store=MemoryKeyStore(),
        domains=["identity", "financial"],
    )
    configure_vault(vault)
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()
    configure_vault(None)
    vault.close()


def _below(tb: TracebackType | None, module: str) -> list[Any]:
    """The frames of ``tb`` that finished before the error left SQLAlchemy's execute call.

    SQLAlchemy's frames from ``Connection.execute`` (and the ORM flush) down to the one that
    handles the error are still running when the error is raised and keep the parameters they
    were given; everything below them (parameter processing, bind processors, codecs) is done.
    """
    frames = [frame for frame, _ in traceback.walk_tb(tb)]
    running = {
        "execute",
        "_execute_on_connection",
        "_execute_clauseelement",
        "_execute_context",
        "_exec_single_context",
        "_handle_dbapi_exception",
    }
    below = []
    for frame in frames:
        name = frame.f_globals.get("__name__", "")
        if name == module or name.startswith("sqlalchemy.orm"):
            continue
        if name.startswith("sqlalchemy.") and frame.f_code.co_name in running:
            continue
        below.append(frame)
    return below


def assert_clean(exc: BaseException) -> None:
    """No planted value in the error, its chain, or the finished frames below it."""
    seen: set[int] = set()
    chain: BaseException | None = exc
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        texts = [str(chain), repr(chain), repr(chain.args), repr(getattr(chain, "params", None))]
        texts += [repr(frame.f_locals) for frame in _below(chain.__traceback__, __name__)]
        for text in texts:
            for planted in PLANTED:
                assert planted not in text
        chain = chain.__cause__ or chain.__context__


class TestStatementErrors:
    def test_another_columns_processor_fails_orm(self, engine: sa.Engine) -> None:
        """An ORM insert failing in a plain Date column's processor quotes no encrypted value."""
        with pytest.raises(sa.exc.StatementError) as info:
            with Session(engine) as s:
                s.add(Person(**values(born="1980-05-17")))
                s.commit()
        assert "SQLite Date type" in str(info.value)
        assert info.value.params is not None
        assert_clean(info.value)

    def test_another_columns_processor_fails_core(self, engine: sa.Engine) -> None:
        """A Core executemany failing in another column's processor quotes no encrypted value."""
        rows = [values(id=uuid.uuid4()), values(id=uuid.uuid4(), born="1980-05-17")]
        with pytest.raises(sa.exc.StatementError) as info, engine.begin() as conn:
            conn.execute(sa.insert(Person.__table__), rows)
        assert_clean(info.value)

    @pytest.mark.parametrize("doc", [{"planted-json-5b2d": {1, 2}}, {("planted-json-5b2d",): 1}])
    def test_json_the_encoder_refuses(self, engine: sa.Engine, doc: Any) -> None:
        """A JSON value json cannot serialise is a vaultkit error naming the column, not the value."""
        for orm in (True, False):
            with pytest.raises(EncodingError, match=r"error_people\.doc") as info:
                if orm:
                    with Session(engine) as s:
                        s.add(Person(**values(doc=doc)))
                        s.commit()
                else:
                    with engine.begin() as conn:
                        conn.execute(
                            sa.insert(Person.__table__), [values(id=uuid.uuid4(), doc=doc)]
                        )
            assert isinstance(info.value, VaultkitError | TypeError)
            assert_clean(info.value)

    def test_wrong_type_and_bad_unicode_are_vaultkit_errors(self, engine: sa.Engine) -> None:
        """A wrong type or a lone surrogate is an EncodingError naming the column, never the value."""
        cases = [
            ("iban", 12345, r"error_people\.iban", "takes str"),
            ("email", "planted-mail-7f3a\ud800@x.be", r"error_people\.email", "surrogate"),
        ]
        for column, bad, name, reason in cases:
            with pytest.raises(EncodingError, match=name) as info:
                with Session(engine) as s:
                    s.add(Person(**values(**{column: bad})))
                    s.commit()
            assert reason in str(info.value)
            assert_clean(info.value)

    def test_normalize_function_failure_in_blind_index(self, engine: sa.Engine) -> None:
        """A blind index whose source value breaks its normalising function does not quote it."""
        with pytest.raises(EncodingError, match="blind index") as info:
            with Session(engine) as s:
                s.add(Person(**values(email="planted-mail-7f3a")))
                s.commit()
        assert_clean(info.value)

    def test_database_error_reports_ciphertext_only(self, engine: sa.Engine) -> None:
        """A constraint violation reports the statement's processed parameters: no plaintext."""
        key = uuid.uuid4()
        with Session(engine) as s:
            s.add(Person(id=key, **values()))
            s.commit()
        with pytest.raises(sa.exc.IntegrityError) as info, Session(engine) as s:
            s.add(Person(id=key, **values()))
            s.commit()
        assert_clean(info.value)


class TestRowLogging:
    def test_echo_debug_is_refused_and_logs_nothing_decrypted(
        self, tmp_path: Path, engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With echo='debug' (hide_parameters or not) a read of encrypted columns is refused."""
        with Session(engine) as s:
            s.add(Person(**values()))
            s.commit()
        for hide in (True, False):
            noisy = sa.create_engine(
                f"sqlite:///{tmp_path / 'app.db'}", echo="debug", hide_parameters=hide
            )
            caplog.clear()
            try:
                with caplog.at_level(logging.DEBUG, logger="sqlalchemy.engine"):
                    with pytest.raises(ConfigurationError, match="echo=True") as info:
                        with Session(noisy) as s:
                            s.scalars(sa.select(Person)).all()
                    with pytest.raises(ConfigurationError), noisy.connect() as conn:
                        conn.execute(sa.select(Person.__table__.c.iban)).all()
                    with noisy.connect() as conn:  # no encrypted column: logged as usual
                        assert conn.execute(sa.select(Person.__table__.c.born)).all()
            finally:
                noisy.dispose()
            assert "Row " in caplog.text
            for planted in PLANTED:
                assert planted not in caplog.text
            assert_clean(info.value)

    def test_debug_logger_without_echo_is_refused(
        self, engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The sqlalchemy.engine logger at DEBUG through logging config is refused the same way."""
        with Session(engine) as s:
            s.add(Person(**values()))
            s.commit()
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="sqlalchemy.engine"):
            with pytest.raises(ConfigurationError), Session(engine) as s:
                s.scalars(sa.select(Person)).all()
            with Session(engine) as s:  # inserts log ciphertext parameters only
                s.add(Person(**values()))
                s.commit()
        for planted in PLANTED:
            assert planted not in caplog.text
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"), Session(engine) as s:
            assert len(s.scalars(sa.select(Person)).all()) == 2
        for planted in PLANTED:
            assert planted not in caplog.text
