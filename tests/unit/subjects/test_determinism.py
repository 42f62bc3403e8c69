"""The same data exports identically on every engine: rows by primary key (in code-point order,
over all the batches of a table, whatever the server's collation), and instants
(``DateTime(timezone=True)``) in UTC with their offset, also on SQLite and MariaDB, which keep
none, and on a PostgreSQL session in another time zone."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import vaultkit.subjects._export as export_module
from tests.unit.subjects import _models as m
from vaultkit import Principal, Vault, acting_as
from vaultkit.subjects import collect

ADVISER = Principal("medical-adviser", grants={"medical"})
SUBJECTS = collect(m.Base.metadata)
MEMBER = "m-17"
#: Policy ids whose order differs between code points ("B" < "Z" < "a" < "p0" < "_c") and a
#: case-insensitive or language collation (MariaDB's, PostgreSQL's en_US).
POLICIES = ("m-17_c", "m-17-a", "m-17-Z", "m-17-B")
#: Chat ids, inserted out of order.
CHATS = (
    uuid.UUID("f0000000-0000-4000-8000-000000000001"),
    uuid.UUID("0a000000-0000-4000-8000-000000000002"),
    uuid.UUID("A0000000-0000-4000-8000-000000000003"),
)
T0 = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)

pytestmark = pytest.mark.configured


def _populate(engine: sa.Engine) -> None:
    with acting_as(ADVISER, purpose="test data"), Session(engine) as session:
        m.populate(session, MEMBER, chats=0)
        m.populate(session, "m-18", chats=0, first_id=1000)
        # The policy that sorts last holds the lowest claim ids: with two parent keys per
        # batch, its claims come in the last batch.
        for p, policy_id in enumerate(POLICIES):
            session.add(
                m.Policy(
                    id=policy_id,
                    member_id=MEMBER,
                    product="travel",
                    premium=decimal.Decimal("3.10") + p,
                    started_on=dt.date(2021, 1, 1),
                )
            )
            session.flush()
            session.add(
                m.Claim(
                    id=[5, 90, 40, 60][p],
                    policy_id=policy_id,
                    member_id=MEMBER,
                    status=m.ClaimStatus.OPEN,
                    filed_at=T0 + dt.timedelta(hours=p),
                    amount=decimal.Decimal("10.00"),
                    diagnosis=f"sprain {p}",
                )
            )
        for c, chat_id in enumerate(CHATS):
            session.add(
                m.CoachingChat(
                    id=chat_id,
                    member_id=MEMBER,
                    sent_at=T0 + dt.timedelta(minutes=c),
                    message=f"message {c}",
                    sentiment=0.25,
                )
            )
        session.commit()


@pytest.fixture
def engines(
    request: pytest.FixtureRequest, tmp_path: Any, vault: Vault
) -> Iterator[dict[str, sa.Engine]]:
    """The same data in an SQLite file, a PostgreSQL schema (its sessions in Europe/Brussels,
    so that timestamptz values come back at +01:00) and a MariaDB database."""
    made = {
        "sqlite": sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}"),
        "postgres": sa.create_engine(str(request.getfixturevalue("postgres_url"))),
        "mariadb": sa.create_engine(str(request.getfixturevalue("mariadb_url"))),
    }

    @sa.event.listens_for(made["postgres"], "connect")
    def _brussels(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'Europe/Brussels'")
        dbapi_connection.commit()

    for engine in made.values():
        m.Base.metadata.create_all(engine)
        _populate(engine)
    yield made
    for engine in made.values():
        m.Base.metadata.drop_all(engine)
        engine.dispose()


def _export(engine: sa.Engine, vault: Vault) -> dict[str, Any]:
    with acting_as(ADVISER, purpose="DataSubjectRequest"), Session(engine) as session:
        data = vault.export_subject(session, MEMBER, subjects=SUBJECTS).to_dict()
    assert data["status"] == "complete", data["incomplete_sources"]
    del data["generated_at"]
    return data


def _rows(data: dict[str, Any], table: str) -> list[dict[str, Any]]:
    return next(t for t in data["tables"] if t["table"] == table)["rows"]


@pytest.mark.postgres
@pytest.mark.mariadb
def test_the_same_data_exports_identically_on_every_engine(
    engines: dict[str, sa.Engine], vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "BATCH", 2)  # several IN (...) batches per table
    exports = {name: _export(engine, vault) for name, engine in engines.items()}
    sqlite = exports["sqlite"]
    policies = [r["key"]["id"] for r in _rows(sqlite, "policies")]
    assert policies == ["m-17-B", "m-17-Z", "m-17-a", "m-17-p0", "m-17-p1", "m-17_c"]
    claims = [r["key"]["id"] for r in _rows(sqlite, "claims")]
    assert claims == [1, 2, 3, 4, 5, 40, 60, 90]
    chats = [r["key"]["id"] for r in _rows(sqlite, "coaching_chats")]
    assert chats == sorted(str(c) for c in CHATS)
    # Instants in UTC with their offset, also where the engine keeps none.
    filed = [r["values"]["filed_at"] for r in _rows(sqlite, "claims")]
    assert filed[0] == "2025-03-01T09:30:00+00:00"
    assert all(v.endswith("+00:00") for v in filed)
    for name in ("postgres", "mariadb"):
        assert exports[name] == sqlite, name


def test_instants_are_utc_with_an_offset_on_sqlite(
    tmp_path: Any, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite returns DateTime(timezone=True) naive: the export gives them at +00:00, each
    table's rows by key however many batches it took."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    m.Base.metadata.create_all(engine)
    _populate(engine)
    monkeypatch.setattr(export_module, "BATCH", 2)
    data = _export(engine, vault)
    engine.dispose()
    for table, column in (
        ("claims", "filed_at"),
        ("coaching_chats", "sent_at"),
        ("call_recordings", "recorded_at"),
        ("newsletter_subscriptions", "subscribed_at"),
    ):
        values = [r["values"][column] for r in _rows(data, table)]
        assert values, table
        for value in values:
            parsed = dt.datetime.fromisoformat(value)
            assert parsed.utcoffset() == dt.timedelta(0), (table, value)
    assert [r["key"]["id"] for r in _rows(data, "claims")] == [1, 2, 3, 4, 5, 40, 60, 90]
