"""The re-keying engine and verify with subject- and bucket-scoped keys: values whose key was
destroyed by an erasure or by retention are counted apart ("erased"), never rewritten and not a
failure; bucket values are never re-encrypted into a newer bucket; subject-scoped columns are
refused (dry runs and verify excepted)."""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests._support import FakeClock
from vaultkit import KeyDomain, Retention, Vault
from vaultkit.errors import ConfigurationError
from vaultkit.rekey import rekey_table, verify_table
from vaultkit.sqla import Encrypted
from vaultkit.store import DekState, MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)

#: The subject column of a subject-scoped column, where vaultkit.sqla takes one (i16-sqla).
SUBJECT: dict[str, Any] = (
    {"subject": "member"} if "subject" in inspect.signature(Encrypted.__init__).parameters else {}
)
META = sa.MetaData()
NOTES = sa.Table(
    "rkl_notes",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("member", sa.String(20), nullable=False),
    sa.Column("body", Encrypted(sa.Text, domain="medical", **SUBJECT)),
)
CHATS = sa.Table(
    "rkl_chats",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("line", Encrypted(sa.Text, domain="chat")),
)

pytestmark = pytest.mark.configured


class WallClock:
    """The vault's wall clock; moving it moves the keyring's monotonic clock as much."""

    def __init__(self, mono: FakeClock) -> None:
        self._now = T0
        self._mono = mono

    @property
    def now(self) -> dt.datetime:
        return self._now

    @now.setter
    def now(self, value: dt.datetime) -> None:
        self._mono.now += max((value - self._now).total_seconds(), 0.0)
        self._now = value

    def __call__(self) -> dt.datetime:
        return self._now


@pytest.fixture
def wall(clock: FakeClock) -> WallClock:
    return WallClock(clock)


@pytest.fixture
def vault_kwargs(wall: WallClock) -> dict[str, Any]:
    return {
        "provider": InMemoryKeyProvider(["medical", "chat"]),
        "store": MemoryKeyStore(),
        "domains": [
            KeyDomain("medical", dek_scope="subject"),
            KeyDomain("chat", dek_scope="bucket", bucket=HOUR, retention=Retention("PT72H")),
        ],
        "clock": wall,
    }


@pytest.fixture
def engine(tmp_path: Any, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'data.db'}")
    META.create_all(eng)
    yield eng
    eng.dispose()


def load_notes(engine: sa.Engine, vault: Vault) -> None:
    """Six notes of three members, encrypted under each member's key."""
    cipher = vault.field("medical", table="rkl_notes", column="body")
    with engine.begin() as conn:
        for i in range(6):
            member = f"m-{i % 3}"
            raw = cipher.encrypt(f"note {i}", subject=member)
            conn.execute(
                sa.text("insert into rkl_notes (id, member, body) values (:id, :m, :b)"),
                {"id": i, "m": member, "b": raw},
            )


def load_chats(engine: sa.Engine, vault: Vault, wall: WallClock, hours: int) -> None:
    """One chat line per hour from T0, each under its hour's bucket key."""
    with engine.begin() as conn:
        for i in range(hours):
            wall.now = T0 + i * HOUR + dt.timedelta(minutes=10)
            conn.execute(CHATS.insert().values(id=i, line=f"line {i}"))


def raw_values(engine: sa.Engine, table: sa.Table, column: str) -> list[bytes]:
    with engine.connect() as conn:
        return [
            bytes(r[0])
            for r in conn.execute(sa.text(f"select {column} from {table.name} order by id"))
        ]


def test_verify_counts_erased_values_apart(engine: sa.Engine, vault: Vault) -> None:
    load_notes(engine, vault)
    assert verify_table(engine, NOTES, vault=vault).clean
    vault.erase_subject("m-1", reason="art17", request_id="DSR-1")
    report = verify_table(engine, NOTES, vault=vault)
    assert (report.values, report.erased, report.undecryptable) == (6, 2, 0)
    assert report.clean  # erased by design: not a problem
    assert sum(report.by_dek.values()) == 4


def test_verify_counts_values_past_retention_before_and_after_the_sweep(
    engine: sa.Engine, vault: Vault, wall: WallClock
) -> None:
    load_chats(engine, vault, wall, 4)
    wall.now = T0 + dt.timedelta(hours=74, minutes=30)  # the first two buckets are past
    report = verify_table(engine, CHATS, vault=vault)
    assert (report.values, report.erased, report.undecryptable) == (4, 2, 0)
    vault.enforce_retention()
    report = verify_table(engine, CHATS, vault=vault)
    assert (report.values, report.erased, report.undecryptable) == (4, 2, 0)
    assert report.clean


def test_rekey_leaves_erased_values_and_is_complete(
    engine: sa.Engine, vault: Vault, wall: WallClock
) -> None:
    load_chats(engine, vault, wall, 3)
    before = raw_values(engine, CHATS, "line")
    # Retire every bucket key (so the run would re-encrypt them), then let two expire.
    for record in vault.data_keys(domain="chat"):
        vault.retire_dek(record.dek_id)
    wall.now = T0 + dt.timedelta(hours=74, minutes=30)
    vault.enforce_retention()
    report = rekey_table(engine, CHATS, vault=vault)
    assert report.finished and report.complete
    assert (report.erased, report.kept_in_scope, report.values_rewritten) == (2, 1, 0)
    assert report.undecryptable == 0
    assert raw_values(engine, CHATS, "line") == before


def test_rekey_never_moves_a_bucket_value_into_a_newer_bucket(
    engine: sa.Engine, vault: Vault, wall: WallClock
) -> None:
    load_chats(engine, vault, wall, 3)
    before = raw_values(engine, CHATS, "line")
    for record in vault.data_keys(domain="chat"):
        vault.retire_dek(record.dek_id)
    wall.now = T0 + dt.timedelta(hours=10)
    report = rekey_table(engine, CHATS, vault=vault)
    assert (report.kept_in_scope, report.retired_reencrypted, report.values_rewritten) == (3, 0, 0)
    assert raw_values(engine, CHATS, "line") == before
    # Their keys keep their deadlines: readable now, gone 72 h after their own buckets.
    assert [r.state for r in vault.data_keys(domain="chat")] == [DekState.RETIRED] * 3
    verify = verify_table(engine, CHATS, vault=vault)
    assert (verify.kept_in_scope, verify.under_retired, verify.erased) == (3, 0, 0)


def test_rekey_refuses_subject_scoped_columns_but_dry_runs(engine: sa.Engine, vault: Vault) -> None:
    load_notes(engine, vault)
    with pytest.raises(ConfigurationError, match="subject-scoped domain medical"):
        rekey_table(engine, NOTES, vault=vault)
    vault.erase_subject("m-2", reason="art17", request_id="DSR-2")
    report = rekey_table(engine, NOTES, vault=vault, dry_run=True)
    assert (report.rows_scanned, report.erased, report.values_rewritten) == (6, 2, 0)
