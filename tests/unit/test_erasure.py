"""Erasure and retention by key destruction (vaultkit._erasure through the Vault's life-cycle
block), against the key store's scoped-key protocol on a real SQLite key store and the memory
store: the order of the steps, retained domains, idempotence, batches, the audit chain, and
receipts and audit payloads free of personal data."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._support import FakeClock, dek_of
from vaultkit import KeyDomain, Principal, Retention, Vault
from vaultkit._erasure import looks_personal
from vaultkit.errors import (
    ConfigurationError,
    DomainError,
    RetentionExpiredError,
    SubjectErasedError,
    ValueErasedError,
)
from vaultkit.lifecycle import ErasureReceipt, iso_duration
from vaultkit.store import (
    WRAPPING_KEK_ID,
    DataKeyRecord,
    DekState,
    MemoryKeyStore,
    SupportsScopedKeys,
)
from vaultkit.testing import InMemoryKeyProvider

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
GROUND = "art. 60 Insurance Act (5 years after the contract)"
HOUR = dt.timedelta(hours=1)


class WallClock:
    """The vault's wall clock, moved by hand; moving it moves the keyring's monotonic clock as
    much (the ``clock`` fixture), as real time moves both."""

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


def insz(body: int) -> str:
    """A Belgian national number (INSZ) with a valid check, for a person born before 2000."""
    return f"{body:09d}{97 - body % 97:02d}"


def bsn() -> str:
    """A Dutch BSN passing the 11-check."""
    digits = [1, 2, 3, 4, 5, 6, 7, 8]
    total = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True))
    return "".join(map(str, digits)) + str(total % 11)


EMAIL = "jan.peeters@example.be"
PHONE = "+32 470 12 34 56"
INSZ = insz(850730033)
BSN = bsn()

#: What a receipt or an audit payload must never hold: identifiers, refs, key ids, hashes.
PII_PATTERNS = {
    "e-mail": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "phone": re.compile(r"\+\d[\d ]{7,}\d"),
    "insz/bsn": re.compile(r"(?<!\d)(\d{9}|\d{11}|\d{2}\.\d{2}\.\d{2}-\d{3}\.\d{2})(?!\d)"),
    "hex of 16+ bytes": re.compile(r"[0-9a-fA-F]{32,}"),
    "base64 of 32 bytes": re.compile(r"[A-Za-z0-9+/]{43}="),
}


def scan(text: str) -> list[str]:
    return [name for name, pattern in PII_PATTERNS.items() if pattern.search(text)]


@pytest.fixture(
    params=[
        "sqlite",
        "memory",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The key store: a memory store, or the URL of an SQLite file, a PostgreSQL schema or a
    MariaDB database of the test's own."""
    if request.param == "memory":
        return MemoryKeyStore()
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    return str(request.getfixturevalue(f"{request.param}_url"))


DOMAINS = [
    KeyDomain("identity", audited=True),
    KeyDomain("medical", restricted=True, audited=True, dek_scope="subject"),
    KeyDomain(
        "claims",
        dek_scope="subject",
        retention=Retention("P5Y", after="relationship_end", kind="no_less_than", ground=GROUND),
    ),
    KeyDomain("chat", dek_scope="bucket", bucket=HOUR, retention=Retention("PT72H")),
]


@pytest.fixture
def wall(clock: FakeClock) -> WallClock:
    return WallClock(clock)


@pytest.fixture
def vault(store: Any, wall: WallClock, tmp_path: Path) -> Iterator[Vault]:
    audit = None if isinstance(store, str) else f"sqlite:///{tmp_path / 'audit.db'}"
    with Vault(
        provider=InMemoryKeyProvider(["identity", "medical", "claims", "chat"]),
        store=store,
        domains=DOMAINS,
        clock=wall,
        audit=audit,
    ) as v:
        yield v


def scoped(vault: Vault) -> SupportsScopedKeys:
    store = vault.store
    assert isinstance(store, SupportsScopedKeys)
    return store


def plant_subject_key(
    vault: Vault, domain: str, subject: object, *, created: dt.datetime = T0
) -> bytes:
    """A subject key row as the keyring makes one (wrapped under the wrapping key)."""
    dek_id = os.urandom(16)
    vault.store.insert(
        DataKeyRecord(
            dek_id=dek_id,
            domain=domain,
            purpose="data",
            kek_id=WRAPPING_KEK_ID,
            kek_version=1,
            wrapped=os.urandom(60),
            state=DekState.ACTIVE,
            created_at=created,
            subject=vault.subject_ref(domain, subject),  # type: ignore[arg-type]
            scope="subject",
        )
    )
    return dek_id


def real_subject_key(vault: Vault, domain: str, subject: object) -> bytes:
    """The DEK id of a value encrypted for ``subject`` in ``domain`` (made by the keyring)."""
    return dek_of(vault.encrypt("value", domain=domain, subject=subject))  # type: ignore[arg-type]


def plant_bucket_key(vault: Vault, start: dt.datetime, *, domain: str = "chat") -> bytes:
    """A bucket key row: bucket end, and destroy_at = bucket end + 72 h."""
    dek_id = os.urandom(16)
    end = start + HOUR
    vault.store.insert(
        DataKeyRecord(
            dek_id=dek_id,
            domain=domain,
            purpose="data",
            kek_id=WRAPPING_KEK_ID,
            kek_version=1,
            wrapped=os.urandom(60),
            state=DekState.ACTIVE,
            created_at=start,
            scope="bucket",
            not_after=end,
            destroy_at=end + dt.timedelta(hours=72),
        )
    )
    return dek_id


def states(vault: Vault, dek_ids: list[bytes]) -> list[DekState | None]:
    return [vault.dek_state(d) for d in dek_ids]


# -- erasure ---------------------------------------------------------------------------------


def test_erase_destroys_every_key_of_the_subject_and_only_theirs(vault: Vault) -> None:
    mine = [plant_subject_key(vault, "medical", "m-17") for _ in range(3)]
    claim = plant_subject_key(vault, "claims", "m-17")
    others = [plant_subject_key(vault, "medical", "m-18"), plant_subject_key(vault, "medical", 17)]
    receipt = vault.erase_subject("m-17", reason="art17", request_id="DSR-2026-0042")
    assert states(vault, mine) == [DekState.DESTROYED] * 3
    assert states(vault, [*others, claim]) == [DekState.ACTIVE] * 3
    for dek_id in mine:
        record = vault.store.get(dek_id)
        assert record is not None and record.destroy_reason == "erasure"
        assert record.wrapped == b""
    medical = next(d for d in receipt.domains if d.domain == "medical")
    assert (medical.status, medical.keys_destroyed, medical.keys_already_destroyed) == (
        "erased",
        3,
        0,
    )
    claims = next(d for d in receipt.domains if d.domain == "claims")
    assert (claims.status, claims.ground, claims.keys_destroyed) == ("retained", GROUND, 0)
    assert receipt.status == "partially_granted"
    assert receipt.request_id == "DSR-2026-0042" and receipt.reason == "art17"
    assert receipt.erased_at == T0


def test_fence_comes_first_and_is_recorded(vault: Vault) -> None:
    plant_subject_key(vault, "medical", "m-17")
    vault.erase_subject("m-17", reason="art17", request_id="DSR-1", domains=["medical"])
    record = scoped(vault).get_subject("medical", vault.subject_ref("medical", "m-17"))
    assert record is not None
    assert record.fenced_at == T0 and record.erased_at == T0 and record.request_id == "DSR-1"
    # The retained domain was not asked for here, and is not fenced either way.
    assert scoped(vault).get_subject("claims", vault.subject_ref("claims", "m-17")) is None


def test_erase_is_idempotent(vault: Vault, wall: WallClock) -> None:
    keys = [plant_subject_key(vault, "medical", "m-17") for _ in range(2)]
    plant_subject_key(vault, "claims", "m-17")
    first = vault.erase_subject("m-17", reason="art17", request_id="DSR-7")
    wall.now += dt.timedelta(minutes=5)
    again = vault.erase_subject("m-17", reason="art17", request_id="DSR-7")
    medical = next(d for d in again.domains if d.domain == "medical")
    assert (medical.status, medical.keys_destroyed, medical.keys_already_destroyed) == (
        "erased",
        0,
        2,
    )
    assert again.status == first.status == "partially_granted"
    assert states(vault, keys) == [DekState.DESTROYED] * 2
    # The fence keeps the time of the first erasure.
    record = scoped(vault).get_subject("medical", vault.subject_ref("medical", "m-17"))
    assert record is not None and record.erased_at == T0 and record.fenced_at == T0


def test_nothing_to_erase_still_fences(vault: Vault) -> None:
    receipt = vault.erase_subject("m-99", reason="art17", request_id="DSR-8", domains=["medical"])
    assert receipt.status == "nothing_to_erase"
    assert [(d.domain, d.status) for d in receipt.domains] == [("medical", "no_keys")]
    record = scoped(vault).get_subject("medical", vault.subject_ref("medical", "m-99"))
    assert record is not None and record.fenced_at is not None


def test_retained_until_the_minimum_after_the_relationship_end_is_over(
    vault: Vault, wall: WallClock
) -> None:
    claims = [real_subject_key(vault, "claims", "m-17")]
    # No end recorded: the minimum has not begun.
    receipt = vault.erase_subject("m-17", reason="art17", request_id="DSR-9", domains=["claims"])
    assert receipt.status == "refused"
    (line,) = receipt.domains
    assert (line.status, line.ground, line.retained_until) == ("retained", GROUND, None)
    assert states(vault, claims) == [DekState.ACTIVE]
    assert scoped(vault).get_subject("claims", vault.subject_ref("claims", "m-17")) is None
    # Ended: retained until end + 5 years (calendar years), then erasable.
    end = dt.datetime(2026, 6, 30, 23, 59, tzinfo=dt.UTC)
    vault.end_relationship("m-17", at=end)
    wall.now = dt.datetime(2031, 6, 30, 23, 58, tzinfo=dt.UTC)
    receipt = vault.erase_subject("m-17", reason="art17", request_id="DSR-9", domains=["claims"])
    (line,) = receipt.domains
    assert (line.status, line.retained_until) == (
        "retained",
        dt.datetime(2031, 6, 30, 23, 59, tzinfo=dt.UTC),
    )
    assert states(vault, claims) == [DekState.ACTIVE]
    wall.now = dt.datetime(2031, 7, 1, tzinfo=dt.UTC)
    receipt = vault.erase_subject("m-17", reason="art17", request_id="DSR-9", domains=["claims"])
    assert receipt.status == "granted"
    assert receipt.domains[0].keys_destroyed == 1
    assert states(vault, claims) == [DekState.DESTROYED]


def test_a_retained_domain_without_data_of_the_subject_is_not_retained(vault: Vault) -> None:
    receipt = vault.erase_subject("m-5", reason="art17", request_id="DSR-5")
    assert receipt.status == "nothing_to_erase"
    assert {(d.domain, d.status) for d in receipt.domains} == {
        ("medical", "no_keys"),
        ("claims", "no_keys"),
    }


def test_domains_must_be_declared_and_subject_scoped(vault: Vault) -> None:
    with pytest.raises(DomainError, match="not declared"):
        vault.erase_subject("m-1", reason="art17", request_id="DSR-1", domains=["nope"])
    with pytest.raises(DomainError, match="per subject"):
        vault.erase_subject("m-1", reason="art17", request_id="DSR-1", domains=["chat"])
    with pytest.raises(TypeError):
        vault.erase_subject("m-1", reason="art17", request_id="DSR-1", domains="medical")


@pytest.mark.parametrize(
    ("request_id", "kind"),
    [
        (EMAIL, "e-mail"),
        (f"DSR for {PHONE}", "phone"),
        (f"DSR-{INSZ}", "INSZ"),
        (f"case {INSZ[:2]}.{INSZ[2:4]}.{INSZ[4:6]}-{INSZ[6:9]}.{INSZ[9:]}", "INSZ"),
        (f"DSR {BSN}", "BSN"),
    ],
)
def test_a_request_id_that_looks_personal_is_refused_before_anything_changes(
    vault: Vault, request_id: str, kind: str
) -> None:
    key = plant_subject_key(vault, "medical", "m-17")
    with pytest.raises(ConfigurationError, match=kind) as refused:
        vault.erase_subject("m-17", reason="art17", request_id=request_id)
    assert request_id not in str(refused.value)
    assert vault.dek_state(key) is DekState.ACTIVE
    assert scoped(vault).get_subject("medical", vault.subject_ref("medical", "m-17")) is None


def test_ticket_numbers_are_not_mistaken_for_identifiers() -> None:
    for text in ("DSR-2026-000123", "REQ-123456780", "art17", "ticket 4711/2026", "GDPR-17(1)(a)"):
        assert looks_personal(text) is None, text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=999_999_999))
def test_every_valid_insz_is_recognised(body: int) -> None:
    assert looks_personal(f"DSR {insz(body)}") is not None


def test_reason_and_request_id_are_checked(vault: Vault) -> None:
    with pytest.raises(ConfigurationError):
        vault.erase_subject("m-1", reason="", request_id="DSR-1")
    with pytest.raises(ConfigurationError):
        vault.erase_subject("m-1", reason="art17", request_id="x" * 129)
    with pytest.raises(ConfigurationError):
        vault.erase_subject("m-1", reason="art17\n", request_id="DSR-1")
    with pytest.raises(TypeError):
        vault.erase_subject("m-1", reason="art17", request_id=17)  # type: ignore[arg-type]


def test_cells_callback_runs_after_the_keys_are_destroyed(vault: Vault) -> None:
    key = plant_subject_key(vault, "medical", "m-17")
    seen: list[DekState | None] = []

    def cells() -> dict[str, int]:
        seen.append(vault.dek_state(key))
        return {"members": 1, "consultations": 4}

    receipt = vault.erase_subject(
        "m-17", reason="art17", request_id="DSR-3", domains=["medical"], cells=cells
    )
    assert seen == [DekState.DESTROYED]
    assert receipt.tables == (("consultations", 4), ("members", 1))
    assert receipt.status == "granted"


def test_cells_alone_make_an_erasure_granted(vault: Vault) -> None:
    receipt = vault.erase_subject(
        "m-5", reason="art17", request_id="DSR-4", domains=["medical"], cells=lambda: {"m": 2}
    )
    assert receipt.status == "granted"


def test_cells_not_called_when_everything_is_retained(vault: Vault) -> None:
    plant_subject_key(vault, "claims", "m-5")
    called: list[int] = []
    receipt = vault.erase_subject(
        "m-5",
        reason="art17",
        request_id="DSR-4",
        domains=["claims"],
        cells=lambda: called.append(1) or {},  # type: ignore[func-returns-value]
    )
    assert receipt.status == "refused" and called == []


def test_a_bad_cells_answer_is_refused(vault: Vault) -> None:
    with pytest.raises(TypeError):
        vault.erase_subject(
            "m-5",
            reason="art17",
            request_id="DSR-4",
            cells=lambda: {"t": "3"},  # type: ignore[dict-item]
        )


def receipt_texts(receipt: ErasureReceipt) -> list[str]:
    return [receipt.to_json(), repr(receipt), str(receipt.as_dict())]


@pytest.mark.parametrize("subject", [EMAIL, PHONE, INSZ, BSN])
def test_receipt_and_audit_payload_hold_no_personal_data(vault: Vault, subject: str) -> None:
    keys = [plant_subject_key(vault, "medical", subject) for _ in range(2)]
    refs = {vault.subject_ref(d, subject) for d in ("medical", "claims")}
    with vault.acting_as(Principal("dpo", grants={"medical"}), purpose="DataSubjectRequest"):
        receipt = vault.erase_subject(
            subject, reason="art17", request_id="DSR-2026-0042", cells=lambda: {"members": 1}
        )
    log_ = vault.audit_log
    assert log_ is not None
    events = [event for _seq, event, _prev, _mac in log_.read() if event.action == "erase"]
    assert {e.domain for e in events} == {"medical", "claims"}
    payloads = [json.loads(e.canonical(0)) for e in events]
    for text in [*receipt_texts(receipt), *map(json.dumps, payloads)]:
        assert subject not in text
        for ref in refs:
            assert ref not in text
        for dek_id in keys:
            assert dek_id.hex() not in text
        assert scan(text) == [], text
    medical = next(e for e in events if e.domain == "medical" and e.table is None)
    assert medical.principal == "dpo" and medical.purpose == "DataSubjectRequest"
    assert medical.count == 2 and medical.dek_id is None
    assert "request_id=DSR-2026-0042" in medical.rows and "keys_destroyed=2" in medical.rows
    (table_event,) = [e for e in events if e.table == "members"]
    assert table_event.count == 1


def test_audit_chain_verifies_after_erasure_and_enforcement(vault: Vault, wall: WallClock) -> None:
    log_ = vault.audit_log
    assert log_ is not None
    with vault.acting_as(Principal("clerk"), purpose="signup"):
        vault.decrypt(vault.encrypt("Jan", domain="identity"))  # events of the older kinds
    plant_subject_key(vault, "medical", "m-17")
    before = log_.verify()
    assert before.ok
    vault.erase_subject("m-17", reason="art17", request_id="DSR-1")
    plant_bucket_key(vault, T0)
    wall.now = T0 + dt.timedelta(hours=74)
    vault.enforce_retention()
    result = log_.verify()
    assert result.ok, result.reason
    assert result.events > before.events
    actions = [event.action for _s, event, _p, _m in log_.read()]
    assert "erase" in actions and "retention" in actions


def test_receipt_json_is_stable() -> None:
    from vaultkit.lifecycle import DomainErasure

    receipt = ErasureReceipt(
        request_id="DSR-1",
        reason="art17",
        status="partially_granted",
        erased_at=T0,
        finality=T0 + dt.timedelta(days=35),
        domains=(
            DomainErasure("medical", "erased", keys_destroyed=2),
            DomainErasure("claims", "retained", ground=GROUND),
        ),
        tables=(("members", 1),),
        audited=True,
    )
    body = json.loads(receipt.to_json())
    assert body == {
        "request_id": "DSR-1",
        "reason": "art17",
        "status": "partially_granted",
        "erased_at": "2026-03-02T09:00:00Z",
        "finality": "2026-04-06T09:00:00Z",
        "domains": [
            {
                "domain": "medical",
                "status": "erased",
                "keys_destroyed": 2,
                "keys_already_destroyed": 0,
                "ground": None,
                "retained_until": None,
            },
            {
                "domain": "claims",
                "status": "retained",
                "keys_destroyed": 0,
                "keys_already_destroyed": 0,
                "ground": GROUND,
                "retained_until": None,
            },
        ],
        "tables": {"members": 1},
        "keys_destroyed": 2,
        "audited": True,
    }


def test_keys_reappearing_are_destroyed_in_the_next_round(vault: Vault) -> None:
    """A writer that made its key before it saw the fence: the next listing catches it."""
    store = scoped(vault)
    ref = vault.subject_ref("medical", "m-17")
    plant_subject_key(vault, "medical", "m-17")
    late: list[bytes] = []
    real = store.destroy_key

    def destroy_and_race(dek_id: bytes, *, reason: str, at: dt.datetime) -> bool:
        done = real(dek_id, reason=reason, at=at)
        if not late:  # a racing writer inserts its key between two listings
            late.append(plant_subject_key(vault, "medical", "m-17"))
        return done

    store.destroy_key = destroy_and_race  # type: ignore[method-assign]
    try:
        receipt = vault.erase_subject(
            "m-17", reason="art17", request_id="DSR-1", domains=["medical"]
        )
    finally:
        del store.destroy_key  # type: ignore[attr-defined]
    assert receipt.domains[0].keys_destroyed == 2
    assert all(k.state is DekState.DESTROYED for k in store.subject_keys("medical", ref))


# -- retention enforcement -------------------------------------------------------------------


def test_enforce_destroys_due_keys_in_batches_and_is_idempotent(
    vault: Vault, wall: WallClock
) -> None:
    keys = [plant_bucket_key(vault, T0 + i * HOUR) for i in range(7)]
    # At T0 + 1 h + 72 h the first bucket (ended T0 + 1 h) is due; the others are not.
    wall.now = T0 + dt.timedelta(hours=80)
    report = vault.enforce_retention(at=T0 + dt.timedelta(hours=73), batch=2)
    assert (report.keys_destroyed, report.batches) == (1, 1)
    assert states(vault, keys)[:2] == [DekState.DESTROYED, DekState.ACTIVE]
    wall.now = T0 + dt.timedelta(hours=90)
    report = vault.enforce_retention(batch=2)
    assert (report.keys_destroyed, report.batches, report.by_domain) == (6, 3, (("chat", 6),))
    assert report.at == wall.now
    assert states(vault, keys) == [DekState.DESTROYED] * 7
    for dek_id in keys:
        record = vault.store.get(dek_id)
        assert record is not None and record.destroy_reason == "retention"
    again = vault.enforce_retention(batch=2)
    assert (again.keys_destroyed, again.batches) == (0, 0)


def test_enforce_audits_each_batch_without_key_ids(vault: Vault, wall: WallClock) -> None:
    keys = [plant_bucket_key(vault, T0 + i * HOUR) for i in range(5)]
    wall.now = T0 + dt.timedelta(days=10)
    vault.enforce_retention(batch=2)
    log_ = vault.audit_log
    assert log_ is not None
    events = [e for _s, e, _p, _m in log_.read() if e.action == "retention"]
    assert [e.count for e in events] == [2, 2, 1]
    assert all(e.domain == "chat" and e.dek_id is None for e in events)
    assert all("reason=retention" in e.rows for e in events)
    text = json.dumps([json.loads(e.canonical(0)) for e in events])
    assert not any(k.hex() in text for k in keys)
    assert scan(text) == []


def test_enforce_never_destroys_before_the_deadline(vault: Vault, wall: WallClock) -> None:
    """An ``at`` later than the clock would destroy keys not due yet: refused."""
    key = plant_bucket_key(vault, T0)
    with pytest.raises(ConfigurationError, match="later than the vault's clock"):
        vault.enforce_retention(at=T0 + dt.timedelta(days=30))
    assert vault.dek_state(key) is DekState.ACTIVE


def test_enforce_skips_keys_that_are_not_due_and_process_keys(
    vault: Vault, wall: WallClock
) -> None:
    blob = vault.encrypt("name", domain="identity")
    key = plant_bucket_key(vault, T0)
    wall.now = T0 + dt.timedelta(hours=72)
    report = vault.enforce_retention(at=T0 + dt.timedelta(hours=72))
    assert report.keys_destroyed == 0
    assert vault.dek_state(key) is DekState.ACTIVE
    assert vault.decrypt(blob) == "name"


def test_enforce_counts_keys_another_run_destroyed_meanwhile(vault: Vault, wall: WallClock) -> None:
    keys = [plant_bucket_key(vault, T0 + i * HOUR) for i in range(3)]
    store = scoped(vault)
    real = store.due_keys

    def listed_then_destroyed(at: dt.datetime, *, limit: int) -> list[DataKeyRecord]:
        due = real(at, limit=limit)
        if due:  # another sweep destroys the first one right after this listing
            store.destroy_key(due[0].dek_id, reason="retention", at=at)
        return due

    store.due_keys = listed_then_destroyed  # type: ignore[method-assign]
    wall.now = T0 + dt.timedelta(days=9)
    try:
        report = vault.enforce_retention()
    finally:
        del store.due_keys  # type: ignore[attr-defined]
    assert (report.keys_destroyed, report.already_destroyed) == (2, 1)
    assert states(vault, keys) == [DekState.DESTROYED] * 3


def test_enforce_refuses_a_store_that_does_not_destroy(vault: Vault, wall: WallClock) -> None:
    from vaultkit.errors import KeyStoreError

    plant_bucket_key(vault, T0)
    store: Any = scoped(vault)
    # A store that says it destroyed the keys (one by one, or a batch at once) but did not.
    batch = hasattr(store, "destroy_keys")
    store.destroy_key = lambda dek_id, *, reason, at: True
    if batch:
        store.destroy_keys = lambda dek_ids, *, reason, at: list(dek_ids)
    try:
        wall.now = T0 + dt.timedelta(days=9)
        with pytest.raises(KeyStoreError, match="still lists"):
            vault.enforce_retention()
    finally:
        del store.destroy_key
        if batch:
            del store.destroy_keys


def test_enforce_arguments(vault: Vault) -> None:
    with pytest.raises(ConfigurationError):
        vault.enforce_retention(batch=0)
    with pytest.raises(ConfigurationError):
        vault.enforce_retention(batch=True)
    with pytest.raises(ConfigurationError, match="timezone"):
        vault.enforce_retention(at=dt.datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        vault.retention_report(at="2026-01-01")  # type: ignore[arg-type]


# -- retention report ------------------------------------------------------------------------


def line(report: Any, domain: str) -> Any:
    return next(d for d in report.domains if d.domain == domain)


def test_report_counts_live_destroyed_due_and_the_oldest_readable_capture(
    vault: Vault, wall: WallClock
) -> None:
    for i in range(4):
        plant_bucket_key(vault, T0 + i * HOUR)
    report = vault.retention_report(at=T0 + dt.timedelta(hours=10))
    chat = line(report, "chat")
    assert (chat.scope, chat.duration, chat.after, chat.kind, chat.bucket) == (
        "bucket",
        "PT72H",
        "capture",
        "no_longer_than",
        HOUR,
    )
    assert (chat.live, chat.destroyed, chat.due, chat.oldest_readable_capture) == (4, 0, 0, T0)
    assert chat.violations == () and report.ok
    # Two buckets past their deadline: due (reads refuse them), not a violation.
    at = T0 + dt.timedelta(hours=74, minutes=30)
    chat = line(vault.retention_report(at=at), "chat")
    assert (chat.live, chat.due, chat.oldest_readable_capture) == (4, 2, T0 + 2 * HOUR)
    assert chat.violations == ()
    wall.now = at
    vault.enforce_retention()
    chat = line(vault.retention_report(), "chat")
    assert (chat.live, chat.destroyed, chat.due) == (2, 2, 0)


def test_report_finds_a_bucket_key_whose_deadline_was_moved(
    vault: Vault, store: Any, wall: WallClock
) -> None:
    """A database writer moves a bucket key's destroy_at: the report shows it as a violation
    (reads still refuse it: their deadline comes from the bound bucket end, not from the
    column), and enforce destroys it by that fixed deadline."""
    key = plant_bucket_key(vault, T0)
    record = vault.store.get(key)
    assert record is not None
    moved = record.destroy_at + dt.timedelta(days=365)  # type: ignore[operator]
    if isinstance(store, MemoryKeyStore):
        store._rows[key] = replace(record, destroy_at=moved)
    else:
        engine = sa.create_engine(store)
        keys = sa.Table(
            "vaultkit_data_keys",
            sa.MetaData(),
            sa.Column("dek_id", sa.String(32)),
            sa.Column("destroy_at", sa.DateTime(timezone=True)),
        )
        with engine.begin() as conn:
            conn.execute(keys.update().where(keys.c.dek_id == key.hex()).values(destroy_at=moved))
        engine.dispose()
    assert vault.store.get(key).destroy_at == moved  # type: ignore[union-attr]
    at = T0 + dt.timedelta(days=5)
    wall.now = at
    report = vault.retention_report(at=at)
    chat = line(report, "chat")
    assert len(chat.violations) == 1 and "2026-03-02T09:00:00+00:00" in chat.violations[0]
    assert report.violations == 1 and not report.ok
    assert json.loads(report.to_json())["violations"] == 1
    assert vault.enforce_retention().keys_destroyed == 1
    assert vault.store.get(key).wrapped == b""  # type: ignore[union-attr]
    assert vault.retention_report(at=at).ok


def test_report_counts_members_without_an_end_never_guessing(vault: Vault) -> None:
    for member in ("m-1", "m-2", "m-3"):
        real_subject_key(vault, "claims", member)
    real_subject_key(vault, "medical", "m-1")
    claims = line(vault.retention_report(), "claims")
    assert (claims.subjects, claims.subjects_without_end) == (3, 3)
    assert claims.kind == "no_less_than" and claims.ground == GROUND
    vault.end_relationship("m-2", at=T0)
    claims = line(vault.retention_report(), "claims")
    assert (claims.subjects, claims.subjects_without_end, claims.due) == (3, 2, 0)
    medical = line(vault.retention_report(), "medical")
    assert (medical.subjects, medical.subjects_without_end, medical.duration) == (1, None, None)


def test_report_json_names_no_key_and_no_ref(vault: Vault) -> None:
    keys = [plant_subject_key(vault, "claims", EMAIL), plant_bucket_key(vault, T0)]
    text = vault.retention_report().to_json()
    body = json.loads(text)
    assert body["violations"] == 0
    assert [d["domain"] for d in body["domains"]] == ["identity", "medical", "claims", "chat"]
    chat = body["domains"][3]
    assert chat["bucket"] == "PT1H" and chat["policy"]["duration"] == "PT72H"
    assert EMAIL not in text and vault.subject_ref("claims", EMAIL) not in text
    assert not any(k.hex() in text for k in keys)
    assert scan(text) == []


class PlainStore:
    """A key store of the first protocol only (no scoped keys), over a memory store."""

    def __init__(self) -> None:
        self._inner = MemoryKeyStore()

    def insert(self, record: DataKeyRecord) -> None:
        self._inner.insert(record)

    def get(self, dek_id: bytes) -> DataKeyRecord | None:
        return self._inner.get(dek_id)

    def records(self, *, domain: str | None = None, state: DekState | None = None) -> Any:
        return self._inner.records(domain=domain, state=state)

    def add_encryptions(self, dek_id: bytes, count: int) -> None:
        self._inner.add_encryptions(dek_id, count)

    def set_state(self, dek_id: bytes, state: DekState) -> None:
        self._inner.set_state(dek_id, state)

    def rewrap(self, old: DataKeyRecord, *, kek_id: str, kek_version: int, wrapped: bytes) -> bool:
        return self._inner.rewrap(old, kek_id=kek_id, kek_version=kek_version, wrapped=wrapped)

    def destroy(self, dek_id: bytes) -> None:
        self._inner.destroy(dek_id)

    def close(self) -> None:
        self._inner.close()


def test_a_store_without_scoped_keys_is_refused() -> None:
    with Vault(
        provider=InMemoryKeyProvider(["identity"]), store=PlainStore(), domains=["identity"]
    ) as vault:
        for call in (
            lambda: vault.erase_subject("m-1", reason="art17", request_id="DSR-1"),
            vault.enforce_retention,
            vault.retention_report,
        ):
            with pytest.raises(ConfigurationError, match="SupportsScopedKeys"):
                call()


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(hours=1), "PT1H"),
        (dt.timedelta(days=1, hours=6), "P1DT6H"),
        (dt.timedelta(seconds=90), "PT1M30S"),
        (dt.timedelta(0), "PT0S"),
        (dt.timedelta(days=-1), "-P1D"),
        (dt.timedelta(seconds=1, microseconds=500000), "PT1.5S"),
    ],
)
def test_iso_duration(delta: dt.timedelta, text: str) -> None:
    assert iso_duration(delta) == text


# -- end to end, through encrypt and decrypt -------------------------------------------------

NOTE = {"table": "notes", "column": "body", "row": 1}
NURSE = Principal("nurse", grants={"medical"})


def test_an_erased_subject_reads_as_erased_and_others_still_read(vault: Vault) -> None:
    with vault.acting_as(NURSE, purpose="care"):
        mine = [
            vault.encrypt(f"n{i}", domain="medical", subject="m-17", context=NOTE) for i in range(3)
        ]
        theirs = vault.encrypt("other", domain="medical", subject="m-18", context=NOTE)
        assert vault.decrypt(mine[0], context=NOTE) == "n0"  # cached here
        receipt = vault.erase_subject(
            "m-17", reason="art17", request_id="DSR-1", domains=["medical"]
        )
        assert receipt.status == "granted" and receipt.keys_destroyed == 1
        for blob in mine:
            with pytest.raises(SubjectErasedError):
                vault.decrypt(blob, context=NOTE)
        assert vault.decrypt(theirs, context=NOTE) == "other"
        with pytest.raises(SubjectErasedError):
            vault.encrypt("new", domain="medical", subject="m-17", context=NOTE)
        vault.allow_subject("m-17", domains=["medical"])
        fresh = vault.encrypt("new", domain="medical", subject="m-17", context=NOTE)
        assert vault.decrypt(fresh, context=NOTE) == "new"
        with pytest.raises(SubjectErasedError):
            vault.decrypt(mine[1], context=NOTE)


def test_chats_of_one_hour_buckets_are_unreadable_by_73_hours(
    vault: Vault, wall: WallClock
) -> None:
    """The seed policy: chats kept 72 h, 1 h buckets: a line written at the start of its bucket
    reads until bucket end + 72 h and never after, swept or not."""
    wall.now = T0  # the start of a bucket
    first = vault.encrypt("hello", domain="chat", context=NOTE)
    wall.now = T0 + dt.timedelta(minutes=59)
    last = vault.encrypt("bye", domain="chat", context=NOTE)
    wall.now = T0 + dt.timedelta(hours=72, minutes=59)
    assert vault.decrypt(first, context=NOTE) == "hello"
    assert vault.retention_report().ok
    wall.now = T0 + dt.timedelta(hours=73)
    for blob in (first, last):
        with pytest.raises(RetentionExpiredError):
            vault.decrypt(blob, context=NOTE)
    chat = line(vault.retention_report(), "chat")
    assert (chat.live, chat.due, chat.violations) == (1, 1, ())
    report = vault.enforce_retention()
    assert report.keys_destroyed == 1
    for blob in (first, last):
        with pytest.raises(ValueErasedError):
            vault.decrypt(blob, context=NOTE)
    assert line(vault.retention_report(), "chat").destroyed == 1


def test_contract_data_is_kept_five_years_after_the_end_then_erasable(
    vault: Vault, wall: WallClock
) -> None:
    claim = vault.encrypt("claim 2026-17", domain="claims", subject="m-17", context=NOTE)
    refused = vault.erase_subject("m-17", reason="art17", request_id="DSR-1", domains=["claims"])
    assert refused.status == "refused" and refused.domains[0].ground == GROUND
    assert vault.decrypt(claim, context=NOTE) == "claim 2026-17"
    end = T0 + dt.timedelta(days=30)
    assert vault.end_relationship("m-17", at=end) == 1
    wall.now = dt.datetime(2031, 4, 1, 8, 59, tzinfo=dt.UTC)  # end + P5Y is 2031-04-01 09:00
    assert vault.decrypt(claim, context=NOTE) == "claim 2026-17"
    early = vault.erase_subject("m-17", reason="art17", request_id="DSR-2", domains=["claims"])
    assert early.status == "refused"
    assert early.domains[0].retained_until == dt.datetime(2031, 4, 1, 9, 0, tzinfo=dt.UTC)
    wall.now = dt.datetime(2031, 4, 1, 9, 0, tzinfo=dt.UTC)
    with pytest.raises(RetentionExpiredError):
        vault.decrypt(claim, context=NOTE)
    granted = vault.erase_subject("m-17", reason="art17", request_id="DSR-2", domains=["claims"])
    assert granted.status == "granted" and granted.domains[0].keys_destroyed == 1
    assert vault.enforce_retention().keys_destroyed == 0  # the erasure destroyed it already
    with pytest.raises(ValueErasedError):  # past its retention and erased: either reason holds
        vault.decrypt(claim, context=NOTE)


def test_enforce_drops_the_destroyed_keys_from_this_process_cache(
    vault: Vault, wall: WallClock
) -> None:
    blob = vault.encrypt("hello", domain="chat", context=NOTE)
    assert vault.decrypt(blob, context=NOTE) == "hello"
    cached = vault.cache_info().size
    assert cached >= 1
    wall.now = T0 + dt.timedelta(hours=74)
    assert vault.enforce_retention().keys_destroyed == 1
    assert vault.cache_info().size == cached - 1


@settings(max_examples=40, deadline=None)
@given(
    keys=st.dictionaries(
        st.one_of(st.integers(min_value=0, max_value=10**6), st.text("abcdefgh-", min_size=1)),
        st.tuples(st.integers(0, 3), st.integers(0, 3)),
        min_size=1,
        max_size=6,
    ),
    data=st.data(),
)
def test_an_erasure_destroys_exactly_the_subjects_keys(keys: dict[Any, Any], data: Any) -> None:
    """For any members and key counts, erasing one member destroys exactly that member's keys
    in the erasable domains, leaves every other key alone, and repeating it destroys nothing."""
    wall = WallClock(FakeClock())
    with Vault(
        provider=InMemoryKeyProvider(["identity", "medical", "claims", "chat"]),
        store=MemoryKeyStore(),
        domains=DOMAINS,
        clock=wall,
        audit="sqlite://",
    ) as vault:
        planted = {
            (member, domain): [plant_subject_key(vault, domain, member) for _ in range(n)]
            for member, counts in keys.items()
            for domain, n in zip(("medical", "claims"), counts, strict=True)
        }
        target = data.draw(st.sampled_from(sorted(keys, key=repr)))
        receipt = vault.erase_subject(target, reason="art17", request_id="DSR-1")
        medical_n, claims_n = keys[target]
        by_domain = {d.domain: d for d in receipt.domains}
        assert by_domain["medical"].keys_destroyed == medical_n
        assert by_domain["medical"].status == ("erased" if medical_n else "no_keys")
        assert by_domain["claims"].status == ("retained" if claims_n else "no_keys")
        for (member, domain), ids in planted.items():
            erased = member == target and domain == "medical"
            want = DekState.DESTROYED if erased else DekState.ACTIVE
            assert states(vault, ids) == [want] * len(ids)
        again = vault.erase_subject(target, reason="art17", request_id="DSR-1")
        assert again.keys_destroyed == 0
        assert {d.domain: d.status for d in again.domains} == {
            d.domain: d.status for d in receipt.domains
        }
        assert again.status == receipt.status


class BatchStore(MemoryKeyStore):
    """A memory store that also destroys many keys at once (``destroy_keys``)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def destroy_keys(self, dek_ids: list[bytes], *, reason: str, at: dt.datetime) -> list[bytes]:
        self.batches.append(len(dek_ids))
        return [d for d in dek_ids if self.destroy_key(d, reason=reason, at=at)]


def test_enforce_uses_a_store_that_destroys_a_batch_at_once(wall: WallClock) -> None:
    store = BatchStore()
    with Vault(
        provider=InMemoryKeyProvider(["identity", "medical", "claims", "chat"]),
        store=store,
        domains=DOMAINS,
        clock=wall,
        audit="sqlite://",
    ) as vault:
        keys = [plant_bucket_key(vault, T0 + i * HOUR) for i in range(5)]
        store.destroy_key(keys[0], reason="retention", at=T0)  # gone before the sweep
        wall.now = T0 + dt.timedelta(days=10)
        report = vault.enforce_retention(batch=3)
        assert store.batches == [3, 1]
        assert (report.keys_destroyed, report.already_destroyed, report.batches) == (4, 0, 2)
        assert states(vault, keys) == [DekState.DESTROYED] * 5


# A scoped store without ``destroy_keys`` (a third-party store): MemoryKeyStore's methods but
# that one, so that enforce_retention must fall back to destroy_key per key.
OneByOneStore: Any = type(
    "OneByOneStore",
    (),
    {
        k: v
        for k, v in vars(MemoryKeyStore).items()
        if k not in ("destroy_keys", "__dict__", "__weakref__")
    },
)


def test_enforce_falls_back_to_one_key_at_a_time(wall: WallClock) -> None:
    from vaultkit.store import SupportsDestroyMany, SupportsScopedKeys

    store = OneByOneStore()
    single: list[str] = []
    destroy_key = store.destroy_key

    def counted(dek_id: bytes, *, reason: str, at: dt.datetime) -> bool:
        single.append(reason)
        return bool(destroy_key(dek_id, reason=reason, at=at))

    store.destroy_key = counted
    assert isinstance(store, SupportsScopedKeys) and not isinstance(store, SupportsDestroyMany)
    with Vault(
        provider=InMemoryKeyProvider(["identity", "medical", "claims", "chat"]),
        store=store,
        domains=DOMAINS,
        clock=wall,
        audit="sqlite://",
    ) as vault:
        keys = [plant_bucket_key(vault, T0 + i * HOUR) for i in range(4)]
        wall.now = T0 + dt.timedelta(days=10)
        report = vault.enforce_retention(batch=3)
        assert report.keys_destroyed == 4 and single == ["retention"] * 4
        assert states(vault, keys) == [DekState.DESTROYED] * 4


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=400 * 86400))
def test_iso_duration_reads_back_as_the_same_width(seconds: int) -> None:
    """A bucket width printed by the report is the width the configuration would read."""
    from vaultkit.keys.domains import parse_duration

    months, days, rest = parse_duration(iso_duration(dt.timedelta(seconds=seconds)))
    assert months == 0 and days * 86400 + rest == seconds


def test_in_the_asyncio_greenlet_life_cycle_calls_leave_the_loop(
    wall: WallClock, tmp_path: Path
) -> None:
    """Inside SQLAlchemy's greenlet (an AsyncSession) erasure, sweep and report read and write
    the key store in a worker thread, not on the event loop's thread."""
    import asyncio
    import threading

    from sqlalchemy.util.concurrency import greenlet_spawn

    class ThreadStore(MemoryKeyStore):
        def __init__(self) -> None:
            super().__init__()
            self.threads: set[int] = set()

        def subject_keys(self, domain: str, subject_ref: str) -> list[DataKeyRecord]:
            self.threads.add(threading.get_ident())
            return super().subject_keys(domain, subject_ref)

        def due_keys(self, at: dt.datetime, *, limit: int) -> list[DataKeyRecord]:
            self.threads.add(threading.get_ident())
            return super().due_keys(at, limit=limit)

        def key_summary(self, domain: str, at: dt.datetime, **kw: Any) -> Any:
            self.threads.add(threading.get_ident())
            return super().key_summary(domain, at, **kw)

    store = ThreadStore()

    async def main() -> int:
        with Vault(
            provider=InMemoryKeyProvider(["identity", "medical", "claims", "chat"]),
            store=store,
            domains=DOMAINS,
            clock=wall,
            audit=f"sqlite:///{tmp_path / 'audit.db'}",
        ) as vault:
            real_subject_key(vault, "medical", "m-17")
            store.threads.clear()
            receipt = await greenlet_spawn(
                vault.erase_subject, "m-17", reason="art17", request_id="DSR-1"
            )
            assert receipt.keys_destroyed == 1
            await greenlet_spawn(vault.enforce_retention)
            assert (await greenlet_spawn(vault.retention_report)).ok
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert store.threads and loop_thread not in store.threads
