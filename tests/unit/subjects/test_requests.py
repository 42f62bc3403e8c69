"""The log of data-subject requests (vaultkit/_requests.py through ``vault.requests``), on a real
SQLite key store, the memory store and the servers: due dates in calendar months, the extension
of art. 12(3), days remaining, keyed member references (never the id), request ids that would
carry a personal identifier refused, and erasures recording themselves."""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from vaultkit import KeyDomain, Principal, Retention, Vault
from vaultkit.errors import ConfigurationError, KeyStoreError, SubjectErasedError
from vaultkit.store import MemoryKeyStore, SQLKeyStore
from vaultkit.testing import InMemoryKeyProvider

T0 = dt.datetime(2027, 1, 31, 10, 0, tzinfo=dt.UTC)
GROUND = "art. 60 Insurance Act"
MEMBER = "m-100017"
EMAIL = "jan.peeters@example.be"

DOMAINS = [
    KeyDomain("identity"),
    KeyDomain("medical", restricted=True, dek_scope="subject"),
    KeyDomain(
        "claims",
        dek_scope="subject",
        retention=Retention("P5Y", after="relationship_end", kind="no_less_than", ground=GROUND),
    ),
]


class Wall:
    """The vault's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture(
    params=[
        "sqlite",
        "memory",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        return MemoryKeyStore()
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    return str(request.getfixturevalue(f"{request.param}_url"))


def make_vault(store: Any, wall: Wall, provider: InMemoryKeyProvider | None = None) -> Vault:
    return Vault(
        provider=provider or InMemoryKeyProvider(["identity", "medical", "claims"]),
        store=store,
        domains=DOMAINS,
        clock=wall,
    )


@pytest.fixture
def vault(store: Any, wall: Wall) -> Iterator[Vault]:
    with make_vault(store, wall) as v:
        yield v


def read(vault: Vault, blob: bytes) -> object:
    """A medical value, read with the grant."""
    with vault.acting_as(Principal("adviser", grants={"medical"}), purpose="test"):
        return vault.decrypt(blob)


def all_cells(vault: Vault) -> list[str]:
    """Every cell of the request log's table, as text."""
    requests = vault.requests
    with requests.engine.connect() as conn:
        rows = conn.execute(sa.select(requests.table)).all()
    return [str(cell) for row in rows for cell in row]


class TestDueDates:
    def test_a_request_is_due_one_calendar_month_after_receipt(self, vault: Vault) -> None:
        """31 January is due on 28 February (the month's last day), at the same time."""
        request = vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        assert request.status == "received" and request.is_open
        assert request.received_at == T0
        assert request.due_at == dt.datetime(2027, 2, 28, 10, 0, tzinfo=dt.UTC)
        assert vault.requests.get("DSR-1") == request

    def test_in_a_leap_year_the_month_ends_on_29_february(self, vault: Vault, wall: Wall) -> None:
        """A request received on 31 January 2028 is due on 29 February 2028."""
        wall.now = dt.datetime(2028, 3, 1, tzinfo=dt.UTC)
        received = dt.datetime(2028, 1, 31, 23, 30, tzinfo=dt.UTC)
        request = vault.requests.open("DSR-2", "erasure", MEMBER, received=received)
        assert request.due_at == dt.datetime(2028, 2, 29, 23, 30, tzinfo=dt.UTC)

    def test_receipt_in_another_zone_is_stored_as_utc_whole_seconds(self, vault: Vault) -> None:
        """An offset time is kept as the same instant in UTC, without its fraction of a second."""
        brussels = dt.timezone(dt.timedelta(hours=1))
        received = dt.datetime(2027, 1, 15, 9, 30, 12, 999_999, tzinfo=brussels)
        vault.requests.open("DSR-3", "portability", MEMBER, received=received)
        stored = vault.requests.get("DSR-3")
        assert stored is not None
        assert stored.received_at == dt.datetime(2027, 1, 15, 8, 30, 12, tzinfo=dt.UTC)
        assert stored.received_at.tzinfo is not None

    def test_days_remaining_count_down_and_go_negative_when_overdue(self, vault: Vault) -> None:
        """Whole days, rounded down: 0 on the last day, -1 from the first second after it."""
        request = vault.requests.open("DSR-4", "access", MEMBER, received=T0)
        due = request.due_at
        assert request.days_remaining(T0) == 28
        assert request.days_remaining(due - dt.timedelta(hours=1)) == 0
        assert request.days_remaining(due) == 0 and not request.overdue(due)
        late = due + dt.timedelta(seconds=1)
        assert request.days_remaining(late) == -1 and request.overdue(late)
        assert request.days_remaining(due + dt.timedelta(days=3)) == -3

    def test_naive_times_are_refused(self, vault: Vault) -> None:
        """A time without a zone is ambiguous: refused, and nothing is written."""
        with pytest.raises(ConfigurationError, match="timezone-aware"):
            vault.requests.open("DSR-5", "access", MEMBER, received=dt.datetime(2027, 1, 2))
        assert vault.requests.list() == []
        request = vault.requests.open("DSR-5", "access", MEMBER, received=T0)
        with pytest.raises(ConfigurationError, match="timezone-aware"):
            request.days_remaining(dt.datetime(2027, 2, 1))

    def test_a_receipt_in_the_future_is_refused(self, vault: Vault) -> None:
        """Received tomorrow would move the deadline: refused."""
        with pytest.raises(ConfigurationError, match="future"):
            vault.requests.open("DSR-6", "access", MEMBER, received=T0 + dt.timedelta(days=1))


class TestExtension:
    def test_an_extension_adds_two_calendar_months_to_the_due_date(
        self, vault: Vault, wall: Wall
    ) -> None:
        """Due 28 February, extended: due 28 April; the motive and the time are kept."""
        vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        wall.now = T0 + dt.timedelta(days=10)
        extended = vault.requests.extend("DSR-1", "complex request: 14 systems")
        assert extended.status == "extended" and extended.is_open
        assert extended.due_at == dt.datetime(2027, 4, 28, 10, 0, tzinfo=dt.UTC)
        assert extended.extended_at == wall.now
        assert extended.extension_motive == "complex request: 14 systems"
        assert vault.requests.get("DSR-1") == extended

    def test_a_request_is_extended_once(self, vault: Vault) -> None:
        """Art. 12(3) allows two further months, once: a second extension is refused."""
        vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        vault.requests.extend("DSR-1", "many requests")
        with pytest.raises(ConfigurationError, match="extended already"):
            vault.requests.extend("DSR-1", "still many")

    def test_an_extension_after_the_first_month_is_refused(self, vault: Vault, wall: Wall) -> None:
        """The subject must be told within the first month: an overdue request is not extended."""
        request = vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        wall.now = request.due_at + dt.timedelta(seconds=1)
        with pytest.raises(ConfigurationError, match="within the first month"):
            vault.requests.extend("DSR-1", "forgot")
        stored = vault.requests.get("DSR-1")
        assert stored is not None and stored.due_at == request.due_at

    def test_a_closed_request_is_not_extended(self, vault: Vault) -> None:
        """Once answered there is nothing to extend."""
        vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        vault.requests.complete("DSR-1")
        with pytest.raises(ConfigurationError, match="closed"):
            vault.requests.extend("DSR-1", "late")

    def test_an_extension_needs_a_motive_without_personal_data(self, vault: Vault) -> None:
        """The motive is written to the log: empty or an e-mail address is refused."""
        vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        with pytest.raises(ConfigurationError, match="1 to 255"):
            vault.requests.extend("DSR-1", "  ")
        with pytest.raises(ConfigurationError) as caught:
            vault.requests.extend("DSR-1", f"asked by {EMAIL}")
        assert EMAIL not in str(caught.value)
        stored = vault.requests.get("DSR-1")
        assert stored is not None and stored.status == "received"


class TestCompletion:
    def test_completion_closes_the_request(self, vault: Vault, wall: Wall) -> None:
        """Completed at the clock's time; no longer open, no longer overdue."""
        vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        wall.now = T0 + dt.timedelta(days=40)
        done = vault.requests.complete("DSR-1")
        assert done.status == "completed" and not done.is_open
        assert done.completed_at == wall.now and not done.overdue(wall.now)
        assert done.days_remaining(done.completed_at) == -12  # answered 12 days late
        assert vault.requests.list(open_only=True) == []

    def test_a_refusal_needs_its_motive(self, vault: Vault) -> None:
        """Art. 12(4): the subject is told why; a refusal without motive is refused."""
        vault.requests.open("DSR-1", "objection", MEMBER, received=T0)
        with pytest.raises(ConfigurationError, match="motive"):
            vault.requests.complete("DSR-1", status="refused")
        done = vault.requests.complete("DSR-1", status="refused", motive="compelling grounds")
        assert done.motive == "compelling grounds"

    def test_closing_again_with_the_same_status_changes_nothing(
        self, vault: Vault, wall: Wall
    ) -> None:
        """Idempotent for the same outcome; another outcome is refused."""
        vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        first = vault.requests.complete("DSR-1")
        wall.now += dt.timedelta(days=2)
        assert vault.requests.complete("DSR-1") == first
        with pytest.raises(ConfigurationError, match="closed already"):
            vault.requests.complete("DSR-1", status="refused", motive="no")

    def test_unknown_status_and_unknown_request_are_refused(self, vault: Vault) -> None:
        """Only the three closing statuses close; a request must be in the log."""
        vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        with pytest.raises(ConfigurationError, match="status must be"):
            vault.requests.complete("DSR-1", status="extended")
        with pytest.raises(ConfigurationError, match="not in the log"):
            vault.requests.complete("DSR-404")

    def test_an_answer_before_the_receipt_is_refused(self, vault: Vault) -> None:
        """A completion time earlier than the receipt is an error in the record."""
        vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        with pytest.raises(ConfigurationError, match="before its receipt"):
            vault.requests.complete("DSR-1", at=T0 - dt.timedelta(days=1))

    def test_start_marks_a_request_in_progress(self, vault: Vault) -> None:
        """Received, then in progress; an extended request keeps its status."""
        vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        assert vault.requests.start("DSR-1").status == "in_progress"
        vault.requests.open("DSR-2", "access", MEMBER, received=T0)
        vault.requests.extend("DSR-2", "complex")
        assert vault.requests.start("DSR-2").status == "extended"

    def test_a_request_id_is_recorded_once(self, vault: Vault) -> None:
        """A second request with the same id is refused, the first stays as it was."""
        first = vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        with pytest.raises(ConfigurationError, match="in the log already"):
            vault.requests.open("DSR-1", "erasure", "m-2", received=T0)
        assert vault.requests.get("DSR-1") == first

    def test_list_orders_by_due_date_and_filters(self, vault: Vault) -> None:
        """Earliest due first; open_only, kind and subject select."""
        log_ = vault.requests
        # Due 21 February, 28 February (31 January plus a month) and 26 February.
        log_.open("DSR-B", "erasure", MEMBER, received=T0 - dt.timedelta(days=10))
        log_.open("DSR-A", "access", "m-2", received=T0)
        log_.open("DSR-C", "access", MEMBER, received=T0 - dt.timedelta(days=5))
        log_.complete("DSR-C")
        assert [r.request_id for r in log_.list()] == ["DSR-B", "DSR-C", "DSR-A"]
        assert [r.request_id for r in log_.list(open_only=True)] == ["DSR-B", "DSR-A"]
        assert [r.request_id for r in log_.list(kind="access")] == ["DSR-C", "DSR-A"]
        assert [r.request_id for r in log_.list(subject=MEMBER)] == ["DSR-B", "DSR-C"]
        assert log_.list(subject="m-unknown") == []
        with pytest.raises(ConfigurationError, match="kind must be"):
            log_.list(kind="deletion")


class TestNoPersonalData:
    @pytest.mark.parametrize(
        "request_id",
        [
            "DSR jan.peeters@example.be",
            "call +32 470 12 34 56",
            "85073003328",  # a Belgian national number (INSZ) with a valid check
            "123456782",  # a Dutch BSN passing the 11-check
        ],
    )
    def test_a_request_id_that_looks_personal_is_refused_and_not_repeated(
        self, vault: Vault, request_id: str
    ) -> None:
        """The log names no person: such an id is refused, not echoed, and nothing is written."""
        with pytest.raises(ConfigurationError) as caught:
            vault.requests.open(request_id, "access", MEMBER, received=T0)
        assert request_id not in str(caught.value)
        assert vault.requests.list() == []

    def test_the_member_is_stored_as_a_keyed_reference_only(self, vault: Vault) -> None:
        """No cell holds the member id; the reference is an HMAC of another key than the key
        store's subject references (the log cannot be joined with the key store without it)."""
        vault.requests.open("DSR-1", "access", EMAIL, received=T0)
        cells = all_cells(vault)
        assert not any(EMAIL in cell or "peeters" in cell for cell in cells)
        request = vault.requests.get("DSR-1")
        assert request is not None and re.fullmatch(r"[0-9a-f]{32}", request.subject_ref)
        assert request.ref_domain == "identity"  # the first domain that is not restricted
        assert all(request.subject_ref != vault.subject_ref(d, EMAIL) for d in vault.domains)
        key = vault.blind_index_key(
            "identity", table="vaultkit_subject_requests", column="subject_ref"
        )
        assert request.subject_ref == key.digest(EMAIL.encode())[:16].hex()

    def test_repr_and_dict_hold_no_reference(self, vault: Vault) -> None:
        """The reference is left out of repr() and as_dict() (a ticket or a log line)."""
        request = vault.requests.open("DSR-1", "access", MEMBER, received=T0)
        for text in (repr(request), str(request.as_dict()), repr(vault.requests)):
            assert request.subject_ref not in text and MEMBER not in text
        assert request.as_dict()["due_at"] == "2027-02-28T10:00:00Z"

    def test_subjects_of_another_type_are_refused(self, vault: Vault) -> None:
        """A member id is str, int or UUID; bool and empty text are refused before writing."""
        with pytest.raises(TypeError):
            vault.requests.open("DSR-1", "access", True, received=T0)
        with pytest.raises(ValueError, match="empty"):
            vault.requests.open("DSR-1", "access", "", received=T0)
        assert vault.requests.list() == []


class TestErasureRecordsItself:
    def test_an_erasure_opens_and_completes_its_request(self, vault: Vault, wall: Wall) -> None:
        """erase_subject(request_id=) is in the log afterwards: kind erasure, completed now."""
        vault.encrypt("asthma", domain="medical", subject=MEMBER)
        vault.erase_subject(MEMBER, reason="art17", request_id="DSR-9", domains=["medical"])
        request = vault.requests.get("DSR-9")
        assert request is not None
        assert (request.kind, request.status) == ("erasure", "completed")
        assert request.received_at == request.completed_at == T0
        assert vault.requests.list(subject=MEMBER) == [request]

    def test_an_erasure_completes_a_request_opened_before(self, vault: Vault, wall: Wall) -> None:
        """The receipt's date and status close the request received a week before."""
        vault.requests.open("DSR-9", "erasure", MEMBER, received=T0 - dt.timedelta(days=7))
        vault.erase_subject(MEMBER, reason="art17", request_id="DSR-9", domains=["medical"])
        request = vault.requests.get("DSR-9")
        assert request is not None and request.status == "completed"
        assert request.received_at == T0 - dt.timedelta(days=7) and request.completed_at == T0

    def test_a_retained_domain_is_recorded_with_its_ground(self, vault: Vault) -> None:
        """Claims kept for their legal minimum: partially granted, the ground as the motive."""
        vault.encrypt("asthma", domain="medical", subject=MEMBER)
        vault.encrypt("claim 1", domain="claims", subject=MEMBER)
        receipt = vault.erase_subject(MEMBER, reason="art17", request_id="DSR-9")
        assert receipt.status == "partially_granted"
        request = vault.requests.get("DSR-9")
        assert request is not None and request.status == "partially_granted"
        assert request.motive == f"retained: {GROUND}"

    def test_a_refused_erasure_run_again_later_records_the_new_outcome(
        self, vault: Vault, wall: Wall
    ) -> None:
        """Refused while the minimum runs; once it is over the same request is granted."""
        vault.encrypt("claim 1", domain="claims", subject=MEMBER)
        refused = vault.erase_subject(
            MEMBER, reason="art17", request_id="DSR-9", domains=["claims"]
        )
        assert refused.status == "refused"
        request = vault.requests.get("DSR-9")
        assert request is not None and request.status == "refused"
        assert request.motive == f"retained: {GROUND}"
        vault.end_relationship(MEMBER, at=T0 - dt.timedelta(days=6 * 366))
        wall.now = T0 + dt.timedelta(days=1)
        granted = vault.erase_subject(
            MEMBER, reason="art17", request_id="DSR-9", domains=["claims"]
        )
        assert granted.status == "granted"
        request = vault.requests.get("DSR-9")
        assert request is not None and (request.status, request.motive) == ("completed", None)
        assert request.completed_at == wall.now

    def test_a_request_id_of_another_member_stops_the_erasure(self, vault: Vault) -> None:
        """A request id typed wrong (another member's) is refused before any key is destroyed,
        and the message does not say whose it is."""
        blob = vault.encrypt("asthma", domain="medical", subject=MEMBER)
        vault.requests.open("DSR-9", "erasure", "m-2", received=T0)
        with pytest.raises(ConfigurationError, match="another member") as caught:
            vault.erase_subject(MEMBER, reason="art17", request_id="DSR-9")
        assert MEMBER not in str(caught.value) and "m-2" not in str(caught.value)
        assert read(vault, blob) == "asthma"  # nothing was erased

    def test_a_request_of_another_kind_stops_the_erasure(self, vault: Vault) -> None:
        """An access request's id given to an erasure is refused before anything happens."""
        blob = vault.encrypt("asthma", domain="medical", subject=MEMBER)
        vault.requests.open("DSR-9", "access", MEMBER, received=T0)
        with pytest.raises(ConfigurationError, match="access request, not erasure"):
            vault.erase_subject(MEMBER, reason="art17", request_id="DSR-9")
        assert read(vault, blob) == "asthma"

    def test_an_erasure_run_again_leaves_its_request_as_it_was(
        self, vault: Vault, wall: Wall
    ) -> None:
        """Idempotent like the erasure: the first completion stays."""
        vault.encrypt("asthma", domain="medical", subject=MEMBER)
        vault.erase_subject(MEMBER, reason="art17", request_id="DSR-9", domains=["medical"])
        first = vault.requests.get("DSR-9")
        wall.now += dt.timedelta(hours=2)
        vault.erase_subject(MEMBER, reason="art17", request_id="DSR-9", domains=["medical"])
        assert vault.requests.get("DSR-9") == first
        with pytest.raises(SubjectErasedError):
            vault.encrypt("again", domain="medical", subject=MEMBER)


class TestWhere:
    def test_the_table_lives_in_the_key_store_with_its_prefix(
        self, tmp_path: Path, wall: Wall
    ) -> None:
        """An SQL key store with prefix ``kk_`` gets ``kk_subject_requests`` in its database."""
        url = f"sqlite:///{tmp_path / 'keys.db'}"
        with make_vault(SQLKeyStore(url, table_prefix="kk_"), wall) as v:
            v.requests.open("DSR-1", "access", MEMBER, received=T0)
        engine = sa.create_engine(url)
        try:
            assert "kk_subject_requests" in sa.inspect(engine).get_table_names()
        finally:
            engine.dispose()

    def test_the_log_outlives_the_vault(self, tmp_path: Path, wall: Wall) -> None:
        """Another vault on the same key store (and provider) finds the request and its
        member."""
        url = f"sqlite:///{tmp_path / 'keys.db'}"
        provider = InMemoryKeyProvider(["identity", "medical", "claims"])
        with make_vault(url, wall, provider) as v:
            v.requests.open("DSR-1", "access", MEMBER, received=T0)
        with make_vault(url, wall, provider) as v:
            assert [r.request_id for r in v.requests.list(subject=MEMBER)] == ["DSR-1"]

    def test_rows_of_a_domain_no_longer_declared_are_listed_but_not_matched(
        self, tmp_path: Path, wall: Wall
    ) -> None:
        """A vault that no longer declares the domain whose key made a row's reference lists
        the row, and does not fail when asked for a member's requests."""
        url = f"sqlite:///{tmp_path / 'keys.db'}"
        provider = InMemoryKeyProvider(["identity", "medical", "claims"])
        with make_vault(url, wall, provider) as v:
            v.requests.open("DSR-1", "access", MEMBER, received=T0)
        with Vault(provider=provider, store=url, domains=DOMAINS[2:], clock=wall) as v:
            assert [r.request_id for r in v.requests.list()] == ["DSR-1"]
            assert v.requests.list(subject=MEMBER) == []
            v.requests.open("DSR-2", "erasure", MEMBER, received=T0)
            assert [r.request_id for r in v.requests.list(subject=MEMBER)] == ["DSR-2"]

    def test_a_key_store_without_sql_has_no_request_log(self, wall: Wall) -> None:
        """A store of the application's own: ``vault.requests`` says why; erasures still run."""

        class OwnStore(MemoryKeyStore):
            pass

        with make_vault(OwnStore(), wall) as v:
            with pytest.raises(ConfigurationError, match="request log"):
                v.requests  # noqa: B018 - the property raises
            v.encrypt("asthma", domain="medical", subject=MEMBER)
            receipt = v.erase_subject(MEMBER, reason="art17", request_id="DSR-1")
            assert receipt.keys_destroyed == 1

    def test_a_failing_database_is_a_key_store_error_without_its_text(
        self, tmp_path: Path, wall: Wall
    ) -> None:
        """The table dropped under the log: KeyStoreError naming the class only."""
        url = f"sqlite:///{tmp_path / 'keys.db'}"
        with make_vault(url, wall) as v:
            v.requests.open("DSR-1", "access", MEMBER, received=T0)
            with v.requests.engine.begin() as conn:
                conn.execute(sa.text("DROP TABLE vaultkit_subject_requests"))
            with pytest.raises(KeyStoreError, match="OperationalError") as caught:
                v.requests.get("DSR-1")
            assert "DSR-1" not in str(caught.value) and "SELECT" not in str(caught.value)

    def test_two_processes_opening_one_request_record_it_once(
        self, tmp_path: Path, wall: Wall
    ) -> None:
        """Two vaults on one key store race to open the same request: one row, one refusal."""
        url = f"sqlite:///{tmp_path / 'keys.db'}"
        provider = InMemoryKeyProvider(["identity", "medical", "claims"])
        vaults = [make_vault(url, wall, provider) for _ in range(2)]
        try:
            for v in vaults:
                v.requests.list()  # the table exists before the race
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def open_it(v: Vault) -> None:
                barrier.wait()
                try:
                    v.requests.open("DSR-1", "access", MEMBER, received=T0)
                    outcomes.append("opened")
                except ConfigurationError:
                    outcomes.append("refused")

            threads = [threading.Thread(target=open_it, args=(v,)) for v in vaults]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["opened", "refused"]
            assert len(vaults[0].requests.list()) == 1
        finally:
            for v in vaults:
                v.close()


class TestExportRecordsItself:
    @pytest.fixture
    def data(self, tmp_path: Path) -> Iterator[tuple[Vault, sa.Engine]]:
        import vaultkit.sqla
        from tests.unit.subjects import _models as m

        vault = Vault(
            provider=InMemoryKeyProvider([d.name for d in m.DOMAINS]),
            store=f"sqlite:///{tmp_path / 'keys.db'}",
            domains=m.DOMAINS,
            audit=f"sqlite:///{tmp_path / 'audit.db'}",
            clock=Wall(),
        )
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
        m.Base.metadata.create_all(engine)
        vaultkit.sqla.configure(vault)
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            m.populate(session, MEMBER)
            session.commit()
        yield vault, engine
        vaultkit.sqla.configure(None)
        vault.close()
        engine.dispose()

    def export(self, vault: Vault, engine: sa.Engine, request_id: str, *, grant: bool) -> Any:
        from tests.unit.subjects import _models as m
        from vaultkit.subjects import collect

        grants = {"medical"} if grant else set()
        with vault.acting_as(Principal("dpo", grants=grants), purpose="DataSubjectRequest"):
            return vault.export_subject(
                engine,
                MEMBER,
                "portability",
                subjects=collect(m.Base.metadata),
                request_id=request_id,
            )

    def test_a_complete_export_completes_its_request(self, data: tuple[Vault, sa.Engine]) -> None:
        """With the medical grant the export is complete: the request is opened and closed."""
        vault, engine = data
        assert self.export(vault, engine, "DSR-20", grant=True).status == "complete"
        request = vault.requests.get("DSR-20")
        assert request is not None
        assert (request.kind, request.status) == ("portability", "completed")

    def test_an_incomplete_export_leaves_its_request_in_progress(
        self, data: tuple[Vault, sa.Engine]
    ) -> None:
        """Without the grant the medical columns are missing: the request stays open until the
        medical part is delivered, then an export with the grant completes it."""
        vault, engine = data
        assert self.export(vault, engine, "DSR-21", grant=False).status == "incomplete"
        request = vault.requests.get("DSR-21")
        assert request is not None and (request.status, request.is_open) == ("in_progress", True)
        self.export(vault, engine, "DSR-21", grant=True)
        request = vault.requests.get("DSR-21")
        assert request is not None and request.status == "completed"

    def test_an_export_under_another_members_request_is_refused(
        self, data: tuple[Vault, sa.Engine]
    ) -> None:
        """The request is in the log for another member: refused before anything is read."""
        vault, engine = data
        vault.requests.open("DSR-22", "portability", "m-2", received=T0)
        with pytest.raises(ConfigurationError, match="another member"):
            self.export(vault, engine, "DSR-22", grant=True)
        assert vault.audit_log is not None
        assert not [e for _, e, _, _ in vault.audit_log.read() if e.action == "decrypt"]
