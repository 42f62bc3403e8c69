"""Tests for sessions shared by principals: an ORM object loaded by one principal never hands its
plaintext to another, in any session pattern, and every principal's first read is audited.

The attacker is concrete: application code acting as a claims handler (no medical grant) that uses
the same ``Session``, and so the same identity map, as a coach who holds the grant.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.mutable import MutableDict, MutableList
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    defer,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
    undefer,
)
from sqlalchemy.orm.attributes import flag_modified

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, SealedValue, Vault, acting_as
from vaultkit.errors import AccessDeniedError
from vaultkit.sqla import Encrypted, EncryptedCell
from vaultkit.testing import InMemoryKeyProvider

COACH = Principal("coach-17", grants={"medical"})
ADVISER = Principal("adviser-2", grants={"medical"})
CLAIMS = Principal("claims-handler-3")
NOTE = "diabetes type 2, insulin since 2019"
DIAGNOSIS = "suspected coeliac disease"
DOC = {"allergy": "penicillin", "since": 2011}
PLANTED = ("diabetes", "coeliac", "penicillin", "insulin")


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "session_members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    health_note: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="medical", row_key="id")
    )
    diagnosis: Mapped[str | None] = mapped_column(Encrypted(sa.Text, domain="medical"))
    doc: Mapped[dict[str, Any] | None] = mapped_column(
        MutableDict.as_mutable(Encrypted(sa.JSON, domain="medical"))  # type: ignore[arg-type]
    )
    tags: Mapped[list[Any] | None] = mapped_column(
        MutableList.as_mutable(Encrypted(sa.JSON, domain="medical"))  # type: ignore[arg-type]
    )
    letter: Mapped[str | None] = mapped_column(Encrypted(sa.Text, domain="medical"), deferred=True)
    visits: Mapped[list[Visit]] = relationship(back_populates="member", order_by="Visit.seq")


class Visit(Base):
    __tablename__ = "session_visits"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    seq: Mapped[int]
    member_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("session_members.id"))
    report: Mapped[str | None] = mapped_column(Encrypted(sa.Text, domain="medical", row_key="id"))
    member: Mapped[Member] = relationship(back_populates="visits")


pytestmark = pytest.mark.configured  # the vault fixture is the column types' vault


@pytest.fixture
def vault_kwargs(tmp_path: Path) -> dict[str, Any]:
    """A vault with an audited, restricted medical domain; every access is its own audit event."""
    return {
        "provider": InMemoryKeyProvider(),
        "store": f"sqlite:///{tmp_path / 'keys.db'}",
        "domains": [KeyDomain("identity"), KeyDomain("medical", restricted=True, audited=True)],
        "audit_batch_size": 1,
    }


@pytest.fixture
def engine(tmp_path: Path, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def member_id(engine: sa.Engine) -> uuid.UUID:
    """One member with medical values in every kind of column, and two visits."""
    with acting_as(COACH, purpose="intake"), Session(engine) as s:
        m = Member(
            name="Jan Peeters",
            health_note=NOTE,
            diagnosis=DIAGNOSIS,
            doc=dict(DOC),
            tags=["insulin", "diet"],
            letter="referral: insulin pump",
        )
        m.visits = [Visit(seq=1, report="insulin dose raised"), Visit(seq=2, report="diet plan")]
        s.add(m)
        s.commit()
        return m.id


def events(vault: Vault) -> list[tuple[str, str, str | None]]:
    """(principal, action, column) of every audit event in the medical domain, in order."""
    vault.flush_audit()
    assert vault.audit_log is not None
    return [
        (e.principal, e.action, e.column)
        for _, e, _, _ in vault.audit_log.read()
        if e.domain == "medical"
    ]


def since(vault: Vault, before: int) -> list[tuple[str, str, str | None]]:
    return events(vault)[before:]


def assert_no_plaintext(obj: object) -> None:
    """The instance dict (and what pickle would ship) holds no medical plaintext."""
    dumped = repr(vars(obj))
    for word in PLANTED:
        assert word not in dumped


def sealed(value: object) -> bool:
    return isinstance(value, SealedValue) and value.domain == "medical"


class TestTwoPrincipalsOneSession:
    def test_get_then_get_and_select(
        self, engine: sa.Engine, member_id: uuid.UUID, vault: Vault
    ) -> None:
        """The claims handler's get and fresh select of an object the coach read yield sealed values."""
        with Session(engine) as s:
            with acting_as(COACH, purpose="coaching-chat"):
                m = s.get(Member, member_id)
                assert m is not None and m.health_note == NOTE and m.diagnosis == DIAGNOSIS
            assert_no_plaintext(m)
            before = len(events(vault))
            with acting_as(CLAIMS, purpose="claim-2026-0042"):
                again = s.get(Member, member_id)
                assert again is m and m.name == "Jan Peeters"
                assert sealed(m.health_note) and sealed(m.diagnosis)
                selected = s.scalars(sa.select(Member)).one()
                assert selected is m and sealed(selected.health_note) and sealed(selected.doc)
            logged = since(vault, before)
            assert ("claims-handler-3", "denied", "health_note") in logged
            assert ("claims-handler-3", "denied", "diagnosis") in logged
            assert all(p == "claims-handler-3" and a == "denied" for p, a, _ in logged)

    def test_select_first_by_claims_then_coach(
        self, engine: sa.Engine, member_id: uuid.UUID, vault: Vault
    ) -> None:
        """An object loaded by the claims handler gives the coach plaintext, audited under the coach."""
        with Session(engine) as s:
            with acting_as(CLAIMS, purpose="claim"):
                m = s.scalars(sa.select(Member)).one()
                assert sealed(m.health_note)
            before = len(events(vault))
            with acting_as(COACH, purpose="coaching-chat"):
                assert (m.health_note, m.diagnosis, m.doc) == (NOTE, DIAGNOSIS, DOC)
            assert since(vault, before) == [
                ("coach-17", "decrypt", "health_note"),
                ("coach-17", "decrypt", "diagnosis"),
                ("coach-17", "decrypt", "doc"),
            ]

    def test_every_principal_first_access_is_audited_once_per_scope(
        self, engine: sa.Engine, member_id: uuid.UUID, vault: Vault
    ) -> None:
        """Two principals with the grant each leave their own event; repeated reads in one scope one."""
        with Session(engine) as s:
            before = len(events(vault))
            with acting_as(COACH, purpose="coaching-chat"):
                m = s.scalars(sa.select(Member)).one()
                for _ in range(3):
                    assert m.health_note == NOTE
            with acting_as(ADVISER, purpose="claim-review"):
                assert m.health_note == NOTE
            with acting_as(COACH, purpose="coaching-chat"):
                assert m.health_note == NOTE
            assert since(vault, before) == [
                ("coach-17", "decrypt", "health_note"),
                ("adviser-2", "decrypt", "health_note"),
                ("coach-17", "decrypt", "health_note"),
            ]

    def test_relationships_lazy_selectin_and_joined(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """Related objects the coach loaded (lazily, by selectinload or joinedload) stay sealed for claims."""
        loads = [
            lambda s: s.scalars(sa.select(Member)).one(),
            lambda s: s.scalars(sa.select(Member).options(selectinload(Member.visits))).one(),
            lambda s: (
                s.scalars(sa.select(Member).options(joinedload(Member.visits))).unique().one()
            ),
            lambda s: s.scalars(sa.select(Visit).options(joinedload(Visit.member))).first().member,
        ]
        for load in loads:
            with Session(engine) as s:
                with acting_as(COACH, purpose="coaching-chat"):
                    m = load(s)
                    assert [v.report for v in m.visits] == ["insulin dose raised", "diet plan"]
                    assert m.health_note == NOTE
                for v in m.visits:
                    assert_no_plaintext(v)
                with acting_as(CLAIMS, purpose="claim"):
                    assert all(sealed(v.report) for v in m.visits)
                    assert sealed(m.visits[0].member.health_note)

    def test_defer_and_undefer(self, engine: sa.Engine, member_id: uuid.UUID) -> None:
        """A deferred column loaded by the claims handler, or undeferred by the coach, stays sealed."""
        with Session(engine) as s:
            with acting_as(COACH, purpose="coaching-chat"):
                m = s.scalars(sa.select(Member).options(defer(Member.health_note))).one()
                assert "health_note" not in vars(m)
            with acting_as(CLAIMS, purpose="claim"):
                assert sealed(m.health_note) and sealed(m.letter)
            with acting_as(COACH, purpose="coaching-chat"):
                assert m.health_note == NOTE and m.letter == "referral: insulin pump"
        with Session(engine) as s:
            with acting_as(COACH, purpose="coaching-chat"):
                m = s.scalars(sa.select(Member).options(undefer(Member.letter))).one()
                assert m.letter == "referral: insulin pump"
            assert_no_plaintext(m)
            with acting_as(CLAIMS, purpose="claim"):
                assert sealed(m.letter)

    def test_refresh_populate_existing_expire(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """refresh, populate_existing, expire and expire_all by either principal never cross over."""
        with Session(engine) as s:
            with acting_as(COACH, purpose="coaching-chat"):
                m = s.get(Member, member_id)
                assert m is not None and m.health_note == NOTE
            steps = [
                lambda: s.refresh(m),
                lambda: s.scalars(
                    sa.select(Member).execution_options(populate_existing=True)
                ).one(),
                lambda: s.expire(m),
                lambda: s.expire(m, ["health_note", "diagnosis"]),
                s.expire_all,
            ]
            for step in steps:
                with acting_as(COACH, purpose="coaching-chat"):
                    step()
                    assert m.health_note == NOTE
                with acting_as(CLAIMS, purpose="claim"):
                    assert sealed(m.health_note) and sealed(m.diagnosis)
                    step()
                    assert sealed(m.health_note) and sealed(m.diagnosis)
                with acting_as(COACH, purpose="coaching-chat"):
                    assert m.health_note == NOTE and m.diagnosis == DIAGNOSIS

    def test_merge_into_another_session(self, engine: sa.Engine, member_id: uuid.UUID) -> None:
        """An object the coach loaded, merged into the claims handler's session, stays sealed."""
        with acting_as(COACH, purpose="coaching-chat"), Session(engine) as s:
            m = s.get(Member, member_id)
            assert m is not None and m.health_note == NOTE and m.doc == DOC
        for load in (True, False):
            with Session(engine) as other, acting_as(CLAIMS, purpose="claim"):
                merged = other.merge(m, load=load)
                assert sealed(merged.health_note) and sealed(merged.doc)
                assert merged.name == "Jan Peeters"
                other.commit() if load else None
        with acting_as(COACH, purpose="coaching-chat"), Session(engine) as s:
            again = s.get(Member, member_id)
            assert again is not None and again.health_note == NOTE and again.doc == DOC

    def test_detached_objects_are_opened_under_the_reader(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """An object detached after the coach's session closed is sealed for claims, clear for the coach."""
        with acting_as(COACH, purpose="coaching-chat"), Session(engine) as s:
            m = s.get(Member, member_id)
            assert m is not None and m.health_note == NOTE
        with acting_as(CLAIMS, purpose="claim"):
            assert sealed(m.health_note)
        with acting_as(COACH, purpose="coaching-chat"):
            assert m.health_note == NOTE
        assert_no_plaintext(m)

    def test_streamed_and_textual_loads(self, engine: sa.Engine, member_id: uuid.UUID) -> None:
        """Entities built from a yield_per stream or a textual statement never keep the coach's plaintext."""
        text = sa.text("SELECT * FROM session_members").columns(*Member.__table__.columns)
        loads = [
            lambda s: next(iter(s.scalars(sa.select(Member).execution_options(yield_per=10)))),
            lambda s: s.scalars(sa.select(Member).from_statement(text)).one(),
        ]
        for load in loads:
            with Session(engine) as s:
                with acting_as(COACH, purpose="coaching-chat"):
                    m = load(s)
                    assert m.health_note == NOTE and m.diagnosis == DIAGNOSIS
                assert_no_plaintext(m)
                with acting_as(CLAIMS, purpose="claim"):
                    assert sealed(m.health_note) and sealed(m.diagnosis)


class TestWrites:
    def test_assigned_value_is_sealed_for_claims_before_and_after_flush(
        self, engine: sa.Engine, member_id: uuid.UUID, vault: Vault
    ) -> None:
        """A value the coach assigns is sealed for claims pending, flushed, committed and detached."""
        with Session(engine, expire_on_commit=False) as s:
            with acting_as(COACH, purpose="coaching-chat"):
                m = s.get(Member, member_id)
                assert m is not None
                m.health_note = "new: gestational diabetes"
                m.diagnosis = "new: coeliac confirmed"
            with acting_as(CLAIMS, purpose="claim"):
                assert sealed(m.health_note) and sealed(m.diagnosis)
            with acting_as(COACH, purpose="coaching-chat"):
                s.flush()
                assert m.health_note == "new: gestational diabetes"
            assert_no_plaintext(m)
            with acting_as(CLAIMS, purpose="claim"):
                assert sealed(m.health_note) and sealed(m.diagnosis)
                s.commit()
                assert sealed(m.health_note)
            before = len(events(vault))
            with acting_as(ADVISER, purpose="claim-review"):
                assert m.diagnosis == "new: coeliac confirmed"
            assert since(vault, before) == [("adviser-2", "decrypt", "diagnosis")]
        with acting_as(CLAIMS, purpose="claim"):
            assert sealed(m.health_note)
        with acting_as(COACH, purpose="coaching-chat"), Session(engine) as s:
            again = s.get(Member, member_id)
            assert again is not None and again.health_note == "new: gestational diabetes"

    def test_new_object_flushed_by_coach(self, engine: sa.Engine, vault: Vault) -> None:
        """A new member added by the coach is ciphertext in the session after the flush."""
        with Session(engine) as s:
            with acting_as(COACH, purpose="intake"):
                m = Member(name="An", health_note=NOTE, doc={"allergy": "penicillin"})
                s.add(m)
                s.flush()
                assert m.health_note == NOTE and m.doc == {"allergy": "penicillin"}
            assert_no_plaintext(m)
            with acting_as(CLAIMS, purpose="claim"):
                assert sealed(m.health_note) and sealed(m.doc)
                assert s.get(Member, m.id) is m and sealed(m.health_note)

    def test_encrypt_only_service_cannot_read_back_its_own_write(self, engine: sa.Engine) -> None:
        """A service without the grant may store a medical value but reads back only a sealed value."""
        with acting_as(CLAIMS, purpose="upload"), Session(engine) as s:
            m = Member(name="An", health_note="uploaded certificate")
            s.add(m)
            assert sealed(m.health_note)
            s.commit()
            assert sealed(m.health_note)
        with acting_as(COACH, purpose="review"), Session(engine) as s:
            assert s.scalars(sa.select(Member.id)).all() == [m.id]
            assert s.get(Member, m.id).health_note == "uploaded certificate"  # type: ignore[union-attr]

    def test_unchanged_values_are_not_rewritten(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """Loading and reading under two principals writes nothing back: the ciphertext is unchanged."""
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT health_note, doc FROM session_members")).one()
        with Session(engine) as s:
            with acting_as(COACH, purpose="coaching-chat"):
                m = s.get(Member, member_id)
                assert m is not None and m.health_note == NOTE and m.doc == DOC
            with acting_as(CLAIMS, purpose="claim"):
                assert sealed(m.doc)
                m.name = "Jan Peeters-Janssens"
                s.commit()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT health_note, doc FROM session_members")).one() == (
                stored
            )

    def test_mutable_json_in_place_edits_by_the_coach_are_saved(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """In-place edits to MutableDict / MutableList values under the grant are tracked and saved."""
        with Session(engine) as s:
            with acting_as(COACH, purpose="coaching-chat"):
                m = s.get(Member, member_id)
                assert m is not None
                assert m.doc is m.doc and isinstance(m.doc, MutableDict)
                m.doc["since"] = 2012
                m.tags.append("pump")  # type: ignore[union-attr]
                with acting_as(CLAIMS, purpose="claim"):
                    assert sealed(m.doc) and sealed(m.tags)
                s.commit()
        with acting_as(COACH, purpose="coaching-chat"), Session(engine) as s:
            m = s.get(Member, member_id)
            assert m is not None
            assert m.doc == {"allergy": "penicillin", "since": 2012}
            assert m.tags == ["insulin", "diet", "pump"]

    def test_plain_json_edit_with_flag_modified(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """An edit of the dict the coach read, flagged with flag_modified, is saved."""
        with Session(engine) as s, acting_as(COACH, purpose="coaching-chat"):
            m = s.get(Member, member_id)
            assert m is not None
            assert m.doc is not None
            m.doc.pop("since")
            flag_modified(m, "doc")
            s.commit()
            assert m.doc == {"allergy": "penicillin"}

    def test_claims_cannot_write_a_sealed_value_back(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """Flagging a sealed attribute modified makes the flush fail; the stored value is untouched."""
        for column in ("health_note", "doc", "diagnosis"):
            with acting_as(CLAIMS, purpose="claim"), Session(engine) as s:
                m = s.get(Member, member_id)
                assert m is not None
                flag_modified(m, column)
                with pytest.raises(TypeError):
                    s.commit()
        with acting_as(COACH, purpose="coaching-chat"), Session(engine) as s:
            m = s.get(Member, member_id)
            assert m is not None and (m.health_note, m.doc) == (NOTE, DOC)


class TestPolicy:
    def test_mutable_json_loads_for_a_reader_without_the_grant(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """MutableDict / MutableList columns of a restricted domain load sealed for claims staff."""
        with acting_as(CLAIMS, purpose="claim"):
            for options in ({}, {"yield_per": 10}):
                with Session(engine) as s:
                    statement = sa.select(Member).execution_options(**options)
                    m = next(iter(s.scalars(statement)))
                    assert m.name == "Jan Peeters"
                    assert sealed(m.doc) and sealed(m.tags)
                    s.refresh(m)
                    assert sealed(m.doc)

    def test_raise_mode_loads_and_raises_on_access(self, tmp_path: Path) -> None:
        """With on_denied='raise' the claims handler loads the member and gets AccessDeniedError on access."""
        domains = [
            KeyDomain("identity"),
            KeyDomain("medical", restricted=True, audited=True, on_denied="raise"),
        ]
        url = f"sqlite:///{tmp_path / 'app.db'}"
        with Vault(provider=InMemoryKeyProvider(), store=url, domains=domains) as v:
            vaultkit.sqla.configure(v)
            engine = sa.create_engine(url)
            Base.metadata.create_all(engine)
            try:
                with acting_as(COACH, purpose="intake"), Session(engine) as s:
                    s.add(Member(name="Jan", health_note=NOTE))
                    s.commit()
                with Session(engine) as s:
                    with acting_as(COACH, purpose="chat"):
                        m = s.scalars(sa.select(Member)).one()
                        assert m.health_note == NOTE
                    with acting_as(CLAIMS, purpose="claim"):
                        assert m.name == "Jan"
                        with pytest.raises(AccessDeniedError) as info:
                            _ = m.health_note
                        assert NOTE not in str(info.value)
            finally:
                vaultkit.sqla.configure(None)
                engine.dispose()

    def test_unrestricted_columns_are_decrypted_once_on_load(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """Columns of ordinary domains keep the fast path: plaintext in the instance after the load."""
        with Session(engine) as s:
            m = s.get(Member, member_id)
            assert m is not None
            assert vars(m)["name"] == "Jan Peeters"
            assert isinstance(vars(m)["diagnosis"], EncryptedCell)

    def test_core_reads_still_decrypt_under_the_current_scope(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """A Core select (and an ORM select of a column) of a restricted column decrypts under the caller."""
        with engine.connect() as conn:
            with acting_as(COACH, purpose="report"):
                assert conn.execute(sa.select(Member.__table__.c.diagnosis)).scalar() == DIAGNOSIS
            with acting_as(CLAIMS, purpose="claim"):
                assert sealed(conn.execute(sa.select(Member.__table__.c.diagnosis)).scalar())
        with Session(engine) as s, acting_as(COACH, purpose="report"):
            assert s.scalars(sa.select(Member.diagnosis)).one() == DIAGNOSIS

    def test_pickled_instance_holds_no_plaintext(
        self, engine: sa.Engine, member_id: uuid.UUID
    ) -> None:
        """What pickle would ship of an object the coach read holds no medical plaintext."""
        with acting_as(COACH, purpose="coaching-chat"), Session(engine) as s:
            m = s.get(Member, member_id)
            assert m is not None and m.health_note == NOTE
            state = {k: v for k, v in vars(m).items() if not k.startswith("_sa_")}
        with pytest.raises(TypeError):
            pickle.dumps(state)  # the cells refuse pickling rather than leak

    def test_domain_restricted_after_the_mappers_were_configured(self, tmp_path: Path) -> None:
        """A vault configured after the mappers, making their domain restricted, still seals."""

        class LateBase(DeclarativeBase):
            pass

        class Late(LateBase):
            __tablename__ = "late_notes"
            id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
            note: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="medical"))

        url = f"sqlite:///{tmp_path / 'late.db'}"
        open_vault = Vault(provider=InMemoryKeyProvider(), store=url, domains=["medical"])
        vaultkit.sqla.configure(open_vault)
        sa.orm.configure_mappers()
        engine = sa.create_engine(url)
        LateBase.metadata.create_all(engine)
        open_vault.close()
        domains = [KeyDomain("medical", restricted=True)]
        try:
            with Vault(provider=InMemoryKeyProvider(), store=url, domains=domains) as v:
                vaultkit.sqla.configure(v)
                with Session(engine) as s:
                    with acting_as(COACH, purpose="chat"):
                        s.add(Late(note=NOTE))
                        s.flush()
                        late = s.scalars(sa.select(Late)).one()
                        assert late.note == NOTE
                    assert_no_plaintext(late)
                    with acting_as(CLAIMS, purpose="claim"):
                        assert sealed(late.note)
        finally:
            vaultkit.sqla.configure(None)
            engine.dispose()
