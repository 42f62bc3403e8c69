"""Review of issue 16 (data life cycle) as the threat model's attackers: a database writer who
edits or restores key-store rows, hostile subjects, and the claims of docs/lifecycle.md.

Each test states the behaviour vaultkit promises; those that fail today are marked
``xfail(strict=True)`` with the cause, so that a fix turns them into failures to un-mark.
Real SQLite key stores (a file per test); the "other process" is a second Vault on the same file
with cold caches; the database writer edits the file with SQLAlchemy Core.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests._support import FakeClock, dek_of
from vaultkit import KeyDomain, Retention, Vault
from vaultkit.errors import DecryptionError, RetentionExpiredError, ValueErasedError
from vaultkit.store import DekState
from vaultkit.testing import InMemoryKeyProvider

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)

DOMAINS = [
    KeyDomain("medical", restricted=False, dek_scope="subject"),
    # A maximum counted from the contract's end (no_longer_than): the key must stop reading.
    KeyDomain(
        "contract", dek_scope="subject", retention=Retention("P1Y", after="relationship_end")
    ),
    KeyDomain("chat", dek_scope="bucket", bucket=HOUR, retention=Retention("PT72H")),
]
NAMES = ["medical", "contract", "chat"]


class Wall:
    """The vault's wall clock; moving it moves the keyring's monotonic clock as much."""

    def __init__(self, mono: FakeClock) -> None:
        self.now = T0
        self._mono = mono

    def move(self, delta: dt.timedelta) -> None:
        self.now += delta
        self._mono.now += delta.total_seconds()

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def wall(clock: FakeClock) -> Wall:
    return Wall(clock)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def provider() -> InMemoryKeyProvider:  # one provider (the KEKs) shared by both "processes"
    return InMemoryKeyProvider(NAMES)


@pytest.fixture
def vault(url: str, wall: Wall, provider: InMemoryKeyProvider) -> Iterator[Vault]:
    with Vault(provider=provider, store=url, domains=DOMAINS, clock=wall) as v:
        yield v


def second(url: str, wall: Wall, provider: InMemoryKeyProvider) -> Vault:
    """Another process: same key store and KEKs, nothing cached."""
    return Vault(provider=provider, store=url, domains=DOMAINS, clock=wall)


class Writer:
    """A database writer on the key store: reads and edits rows of vaultkit_data_keys."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.keys = sa.Table("vaultkit_data_keys", sa.MetaData(), autoload_with=self.engine)

    def row(self, dek_id: bytes) -> dict[str, Any]:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(self.keys).where(self.keys.c.dek_id == dek_id.hex())
            ).one()
        return dict(found._mapping)

    def update(self, dek_id: bytes, **values: Any) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(
                self.keys.update().where(self.keys.c.dek_id == dek_id.hex()).values(**values)
            )
            assert done.rowcount == 1

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def writer(url: str, vault: Vault) -> Iterator[Writer]:  # after the vault made the tables
    w = Writer(url)
    yield w
    w.close()


# -- 1. a database writer replays a subject key's row from before end_relationship -------------


def test_a_replayed_pre_end_key_row_does_not_read_past_the_deadline(
    vault: Vault, writer: Writer, wall: Wall, url: str, provider: InMemoryKeyProvider
) -> None:
    blob = vault.encrypt("contract 17", domain="contract", subject=17)
    dek_id = dek_of(blob)
    saved = writer.row(dek_id)  # the writer's copy (a dump, a replica, a backup)
    assert saved["destroy_at"] is None
    assert vault.end_relationship(17, at=T0) == 1
    assert writer.row(dek_id)["wrapped"] != saved["wrapped"]  # rebound with its deadline
    writer.update(dek_id, wrapped=saved["wrapped"], destroy_at=None)  # the replay
    wall.move(dt.timedelta(days=400))  # a year and more after the contract's end
    with second(url, wall, provider) as other, pytest.raises(RetentionExpiredError):
        other.decrypt(blob)


def test_the_report_shows_a_subject_key_without_deadline_after_the_end(
    vault: Vault, writer: Writer, wall: Wall
) -> None:
    blob = vault.encrypt("contract 17", domain="contract", subject=17)
    dek_id = dek_of(blob)
    saved = writer.row(dek_id)
    vault.end_relationship(17, at=T0)
    writer.update(dek_id, wrapped=saved["wrapped"], destroy_at=None)
    wall.move(dt.timedelta(days=400))
    report = vault.retention_report()
    assert report.violations >= 1


def test_clearing_a_subject_deadline_fails_closed(
    vault: Vault, writer: Writer, wall: Wall, url: str, provider: InMemoryKeyProvider
) -> None:
    """What the docs say is possible (clear the column, read past the deadline) is not: the
    deadline is bound into the wrap, so a cleared column makes the key unreadable at once."""
    blob = vault.encrypt("contract 17", domain="contract", subject=17)
    vault.end_relationship(17, at=T0)
    writer.update(dek_of(blob), destroy_at=None)
    with second(url, wall, provider) as other, pytest.raises(DecryptionError):
        other.decrypt(blob)


# -- 2. a database writer hides a key from the erasure, and brings it back ---------------------


def test_a_key_hidden_during_the_erasure_does_not_read_after_it(
    vault: Vault, writer: Writer, wall: Wall, url: str, provider: InMemoryKeyProvider
) -> None:
    blob = vault.encrypt("diagnosis", domain="medical", subject=17)
    dek_id = dek_of(blob)
    ref = writer.row(dek_id)["subject"]
    writer.update(dek_id, subject="0" * 32)  # hidden under another ref
    receipt = vault.erase_subject(17, reason="art17", request_id="DSR-1")
    writer.update(dek_id, subject=ref)  # put back
    wall.move(dt.timedelta(seconds=1))
    with second(url, wall, provider) as other, pytest.raises(ValueErasedError):
        other.decrypt(blob)
    # The erasure could not see the hidden key (it lists keys by their subject column): its
    # receipt says so honestly; the subject's erasure mark is what refuses the key afterwards.
    assert receipt.status in ("granted", "nothing_to_erase")


def test_a_key_marked_destroyed_by_a_writer_does_not_read_after_the_erasure(
    vault: Vault, writer: Writer, wall: Wall, url: str, provider: InMemoryKeyProvider
) -> None:
    blob = vault.encrypt("diagnosis", domain="medical", subject=17)
    dek_id = dek_of(blob)
    writer.update(dek_id, state=DekState.DESTROYED.value)  # wrapped bytes kept
    vault.erase_subject(17, reason="art17", request_id="DSR-2")
    writer.update(dek_id, state=DekState.ACTIVE.value)  # after the erasure: revived
    wall.move(dt.timedelta(seconds=1))
    with second(url, wall, provider) as other, pytest.raises(ValueErasedError):
        other.decrypt(blob)


# -- 3. a database writer clears a bucket key's destroy_at: the sweep never destroys it ---------


def test_the_sweep_destroys_a_bucket_key_whose_destroy_at_was_cleared(
    vault: Vault, writer: Writer, wall: Wall
) -> None:
    blob = vault.encrypt("chat line", domain="chat")
    dek_id = dek_of(blob)
    writer.update(dek_id, destroy_at=None)
    wall.move(dt.timedelta(hours=74))
    vault.enforce_retention()
    assert writer.row(dek_id)["wrapped"] == b""


def test_a_bucket_key_with_a_cleared_destroy_at_still_reads_as_expired(
    vault: Vault, writer: Writer, wall: Wall, url: str, provider: InMemoryKeyProvider
) -> None:
    """The docs claim (bucket deadlines cannot be moved) holds for reads, and the report
    flags the key."""
    blob = vault.encrypt("chat line", domain="chat")
    writer.update(dek_of(blob), destroy_at=None)
    wall.move(dt.timedelta(hours=74))
    with second(url, wall, provider) as other, pytest.raises(RetentionExpiredError):
        other.decrypt(blob)
    assert vault.retention_report().violations >= 1


# -- 4. hostile / non-canonical subjects -------------------------------------------------------


def test_an_erasure_in_nfc_erases_what_was_written_in_nfd(vault: Vault) -> None:
    nfd = unicodedata.normalize("NFD", "josé.peeters")
    nfc = unicodedata.normalize("NFC", "josé.peeters")
    assert nfd != nfc
    blob = vault.encrypt("diagnosis", domain="medical", subject=nfd)
    receipt = vault.erase_subject(nfc, reason="art17", request_id="DSR-3")
    assert receipt.status == "granted"
    with pytest.raises(ValueErasedError):
        vault.decrypt(blob)


def test_int_and_str_subjects_share_a_ref(vault: Vault) -> None:
    """17 and "17" are one member (documented); " 17" is another, and is refused nowhere."""
    assert vault.subject_ref("medical", 17) == vault.subject_ref("medical", "17")
    assert vault.subject_ref("medical", " 17") != vault.subject_ref("medical", "17")
    assert vault.subject_ref("medical", 17) != vault.subject_ref("contract", 17)  # per domain


def test_a_huge_subject_costs_one_ref(vault: Vault) -> None:
    ref = vault.subject_ref("medical", "x" * 1_000_000)
    assert len(ref) == 32


# -- 5. claims of docs/lifecycle.md ------------------------------------------------------------


def test_seventy_three_chat_bucket_keys_are_readable_at_once(vault: Vault, wall: Wall) -> None:
    """docs/lifecycle.md said 72 bucket keys are alive at any time with 72 h in 1 h buckets:
    the current bucket's key makes 73 (bucket ends in (now - 72 h, now + 1 h])."""
    wall.move(dt.timedelta(minutes=30))
    blobs = []
    for _hour in range(80):
        blobs.append(vault.encrypt("chat line", domain="chat"))
        wall.move(HOUR)
    wall.now -= HOUR  # back to the last write's time (the monotonic clock goes on)
    vault.enforce_retention()
    readable = 0
    for blob in blobs:
        try:
            vault.decrypt(blob)
            readable += 1
        except RetentionExpiredError:
            pass
    assert readable == 73
    (chat,) = [d for d in vault.retention_report().domains if d.domain == "chat"]
    assert chat.live == 73 and chat.due == 0


# -- 6. a database writer deletes the subject-ref key: every member's ref changes ---------------


def test_a_deleted_subject_ref_key_does_not_turn_an_erasure_into_nothing(
    vault: Vault, writer: Writer, wall: Wall, url: str, provider: InMemoryKeyProvider
) -> None:
    from vaultkit._keyring import SUBJECT_REF_NAME, index_key_id
    from vaultkit.errors import KeyStoreError

    blob = vault.encrypt("diagnosis", domain="medical", subject=17)
    ref_key = index_key_id("medical", SUBJECT_REF_NAME)
    with writer.engine.begin() as conn:
        gone = conn.execute(writer.keys.delete().where(writer.keys.c.dek_id == ref_key.hex()))
        assert gone.rowcount == 1
    with second(url, wall, provider) as other:
        try:
            other.erase_subject(17, reason="art17", request_id="DSR-8")
        except KeyStoreError:
            return  # refused loudly: the operator knows nothing was erased
        with pytest.raises(ValueErasedError):
            other.decrypt(blob)


# -- 7. a second process with a stale cache writes for an erased member -------------------------


@pytest.mark.xfail(
    strict=True,
    reason="LOW: within key_check_interval another process keeps encrypting under the "
    "member's destroyed key (Keyring.subject_active fast path, _keyring.py:505): the write "
    "succeeds and is unreadable at once, instead of SubjectErasedError (the fence)",
)
def test_a_stale_process_does_not_accept_writes_for_an_erased_member(
    vault: Vault, wall: Wall, url: str, provider: InMemoryKeyProvider
) -> None:
    from vaultkit.errors import SubjectErasedError

    with second(url, wall, provider) as other:
        other.encrypt("before", domain="medical", subject=17)  # its active key, cached
        vault.erase_subject(17, reason="art17", request_id="DSR-10")
        with pytest.raises(SubjectErasedError):
            other.encrypt("after", domain="medical", subject=17)


def test_a_stale_process_refuses_writes_after_the_key_check_interval(
    vault: Vault, wall: Wall, url: str, provider: InMemoryKeyProvider
) -> None:
    from vaultkit.errors import SubjectErasedError

    with second(url, wall, provider) as other:
        blob = other.encrypt("before", domain="medical", subject=17)
        vault.erase_subject(17, reason="art17", request_id="DSR-11")
        wall.move(dt.timedelta(seconds=6))  # past the default key_check_interval (5 s)
        with pytest.raises(SubjectErasedError):
            other.encrypt("after", domain="medical", subject=17)
        with pytest.raises(SubjectErasedError):
            other.decrypt(blob)


def test_a_key_hidden_during_the_erasure_stops_reading_in_a_process_that_has_it_cached(
    vault: Vault, writer: Writer, wall: Wall, url: str, provider: InMemoryKeyProvider
) -> None:
    """The periodic key check reads the subject's row too: a cached key the erasure did not see
    (its subject column hidden meanwhile) stops decrypting within key_check_interval."""
    blob = vault.encrypt("diagnosis", domain="medical", subject=17)
    dek_id = dek_of(blob)
    with second(url, wall, provider) as other:
        assert other.decrypt(blob) == "diagnosis"  # cached there
        ref = writer.row(dek_id)["subject"]
        writer.update(dek_id, subject="0" * 32)
        vault.erase_subject(17, reason="art17", request_id="DSR-12")
        writer.update(dek_id, subject=ref)
        wall.move(dt.timedelta(seconds=6))  # past the default key_check_interval (5 s)
        with pytest.raises(ValueErasedError):
            other.decrypt(blob)
