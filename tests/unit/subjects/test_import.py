"""The round trip of art. 20: a member's portability (and access) export from one database loads
into an empty database with the same six-table models under another vault's keys, every value
restored; a model change between export and import is refused naming the column, and nothing is
written when anything is wrong."""

from __future__ import annotations

import copy
import decimal
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from tests.unit.subjects import _models as m
from vaultkit import Principal, Vault
from vaultkit.errors import ConfigurationError, DecryptionError
from vaultkit.sqla import Encrypted
from vaultkit.subjects import ImportReport, SubjectMap, collect, personal, subject_link
from vaultkit.testing import InMemoryKeyProvider

MEMBER = "m-100017"
DPO = Principal("dpo", grants={"medical"})
SUBJECTS = collect(m.Base.metadata)


@dataclass
class Site:
    """One controller: its database of the six tables, its key store and its own keys."""

    vault: Vault
    engine: sa.Engine

    def use(self) -> None:
        vaultkit.sqla.configure(self.vault)

    def rows(self, table: sa.Table) -> list[dict[str, Any]]:
        """Every row of ``table``, decrypted under this site's vault with the medical grant."""
        self.use()
        model = next(c for c in m.MODELS if c.__table__ is table)
        pk = list(table.primary_key.columns)
        # Through the ORM: row-bound values (the chats) open with their row's key on load.
        with self.vault.acting_as(DPO, purpose="test"), Session(self.engine) as session:
            return [
                {c.key: getattr(obj, c.key) for c in table.columns}
                for obj in session.scalars(sa.select(model).order_by(*pk))
            ]

    def raw(self, table: sa.Table, column: str) -> list[bytes]:
        with self.engine.connect() as conn:
            query = sa.select(sa.type_coerce(table.c[column], sa.LargeBinary))
            return [bytes(v) for v in conn.execute(query).scalars() if v is not None]


def make_site(url: str, keys: str, audit: str) -> Site:
    vault = Vault(
        provider=InMemoryKeyProvider([d.name for d in m.DOMAINS]),
        store=keys,
        domains=m.DOMAINS,
        audit=audit,
    )
    engine = sa.create_engine(url)
    m.Base.metadata.create_all(engine)
    return Site(vault, engine)


@pytest.fixture
def sites(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Site, Site]]:
    """The source (one member with rows in every table, and another member) and an empty
    target, each with its own keys."""
    made = []
    for name in ("source", "target"):
        made.append(
            make_site(
                f"sqlite:///{tmp_path / name}.db",
                f"sqlite:///{tmp_path / name}-keys.db",
                f"sqlite:///{tmp_path / name}-audit.db",
            )
        )
    source, target = made
    source.use()
    with Session(source.engine) as session:
        m.populate(session, MEMBER, name=m.HOSTILE_NAME, first_id=1)
        m.populate(session, "m-2", first_id=1000)
        session.commit()
    yield source, target
    vaultkit.sqla.configure(None)
    for site in made:
        site.vault.close()
        site.engine.dispose()


@pytest.fixture
def server_sites(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> Iterator[tuple[Site, Site]]:
    """As ``sites``, the target on the parametrised engine (SQLite, PostgreSQL, MariaDB)."""
    source = make_site(
        f"sqlite:///{tmp_path / 'source.db'}",
        f"sqlite:///{tmp_path / 'source-keys.db'}",
        f"sqlite:///{tmp_path / 'source-audit.db'}",
    )
    if database_url.startswith("sqlite"):
        # On SQLite the key store and the audit log sit in files of their own: the import's
        # transaction holds the data's file until it commits.
        keys, audit = f"sqlite:///{tmp_path / 'keys.db'}", f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        keys = audit = database_url
    target = make_site(database_url, keys, audit)
    source.use()
    with Session(source.engine) as session:
        m.populate(session, MEMBER, first_id=1)
        session.commit()
    yield source, target
    vaultkit.sqla.configure(None)
    for site in (source, target):
        site.vault.close()
    target.engine.dispose()
    source.engine.dispose()


def export_of(site: Site, kind: str = "portability", subject: str = MEMBER) -> dict[str, Any]:
    site.use()
    with site.vault.acting_as(DPO, purpose="DataSubjectRequest"):
        export = site.vault.export_subject(site.engine, subject, kind, subjects=SUBJECTS)
    assert export.status == "complete", export.incomplete_sources
    return export.to_dict()


def import_into(site: Site, data: Any, subjects: SubjectMap = SUBJECTS) -> ImportReport:
    site.use()
    return site.vault.import_subject(site.engine, data, subjects=subjects)


def comparable(data: dict[str, Any]) -> list[Any]:
    """An export without when it was made: the rest (rows in key order, instants in UTC) is the
    same from every engine."""
    return [(t["table"], t["model"], t["rows"]) for t in data["tables"]]


def counts(site: Site) -> dict[str, int]:
    with site.engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in m.Base.metadata.sorted_tables
        }


class TestRoundTrip:
    def test_a_portability_export_loads_into_an_empty_database_with_every_value(
        self, sites: tuple[Site, Site]
    ) -> None:
        """Exported again from the target, the member's data is the same, value for value."""
        source, target = sites
        exported = export_of(source)
        report = import_into(target, json.loads(json.dumps(exported)))
        assert dict(report.tables) == {
            "members": 1,
            "policies": 2,
            "claims": 4,
            "coaching_chats": 3,
            "call_recordings": 1,
            "newsletter_subscriptions": 1,
        }
        assert report.rows == 12 and report.erased == () and report.not_read == ()
        again = export_of(target)
        assert comparable(again) == comparable(exported)
        # Nothing of the other member came along.
        assert counts(target)["members"] == 1

    def test_the_values_are_re_encrypted_under_the_target_keys(
        self, sites: tuple[Site, Site]
    ) -> None:
        """Other ciphertexts, which the source's vault cannot open; the blind index (the
        newsletter's link by e-mail) is the target's own, and finds the member there."""
        source, target = sites
        import_into(target, export_of(source))
        members = m.Member.__table__
        src, dst = source.raw(members, "email"), target.raw(members, "email")
        assert len(dst) == 1 and dst[0] not in src
        with pytest.raises(DecryptionError):
            source.vault.decrypt(dst[0], context={"table": "members", "column": "email"})
        news = m.NewsletterSubscription.__table__
        assert target.raw(news, "email_index") != source.raw(news, "email_index")[:1]
        again = export_of(target)
        newsletter = next(t for t in again["tables"] if t["table"] == "newsletter_subscriptions")
        assert len(newsletter["rows"]) == 1

    def test_decrypted_rows_match_for_every_exported_column(self, sites: tuple[Site, Site]) -> None:
        """Read through the models on both sides: each portable column holds the same value
        (dates, decimals, enums, UUID keys, bytes, JSON, the hostile name) and the columns the
        portability export leaves out (derived, unannotated) are empty in the target."""
        source, target = sites
        import_into(target, export_of(source))
        portable = {
            (t.name, c.name)
            for t in SUBJECTS.tables
            for c in t.columns
            if c.personal.provenance in ("provided", "observed")
        }
        for entry in SUBJECTS.tables:
            table = entry.table
            structural = set(entry.key) | set(entry.links)
            src = [r for r in source.rows(table) if entry.name != "members" or r["id"] == MEMBER]
            dst = target.rows(table)
            if entry.name != "members":
                keys = {tuple(r[c.name] for c in table.primary_key.columns) for r in dst}
                src = [
                    r for r in src if tuple(r[c.name] for c in table.primary_key.columns) in keys
                ]
            assert len(src) == len(dst) >= 1, entry.name
            for before, after in zip(src, dst, strict=True):
                for name in before:
                    if (entry.name, name) in portable or name in structural:
                        assert after[name] == before[name], f"{entry.name}.{name}"
                    elif name not in ("email_index",):
                        assert after[name] is None, f"{entry.name}.{name} should stay empty"
        member = target.rows(m.Member.__table__)[0]
        assert member["name"] == m.HOSTILE_NAME and member["risk_score"] is None

    def test_an_access_export_loads_with_its_derived_columns(
        self, sites: tuple[Site, Site]
    ) -> None:
        """An access export carries derived values too; they are restored as well."""
        source, target = sites
        exported = export_of(source, "access")
        import_into(target, exported)
        member = target.rows(m.Member.__table__)[0]
        assert str(member["churn_score"]) == "0.125"
        assert comparable(export_of(target, "access")) == comparable(exported)

    def test_the_export_file_loads_by_its_path(
        self, sites: tuple[Site, Site], tmp_path: Path
    ) -> None:
        """write_json's file, given as a path, is the same import."""
        source, target = sites
        source.use()
        with source.vault.acting_as(DPO, purpose="DataSubjectRequest"):
            export = source.vault.export_subject(
                source.engine, MEMBER, "portability", subjects=SUBJECTS
            )
        path = tmp_path / "export.json"
        export.write_json(path)
        assert import_into(target, path).rows == 12

    def test_erased_cells_stay_empty_and_are_reported(self, sites: tuple[Site, Site]) -> None:
        """The member's medical key destroyed at the source: the export marks the health note
        and diagnoses erased; the import writes them as NULL and counts them."""
        source, target = sites
        source.vault.erase_subject(MEMBER, reason="art17", request_id="DSR-1", domains=["medical"])
        report = import_into(target, export_of(source))
        assert dict(report.erased) == {"claims.diagnosis": 4, "members.health_note": 1}
        member = target.rows(m.Member.__table__)[0]
        assert member["health_note"] is None and member["email"] == f"{MEMBER}@example.be"

    def test_withheld_cells_stay_empty_and_are_reported(self, sites: tuple[Site, Site]) -> None:
        """A database writer at the source pasted the other member's diagnosis into one claim
        and corrupted one premium: the export withholds both cells (subject_mismatch,
        unreadable); the import writes them as NULL, reports them apart, and nothing of the
        other member's value reaches the target."""
        source, target = sites
        # The writer's view: the stored bytes, no vaultkit type in the way.
        raw = sa.MetaData()
        raw_claims = sa.Table("claims", raw, autoload_with=source.engine)
        raw_policies = sa.Table("policies", raw, autoload_with=source.engine)
        with source.engine.begin() as conn:
            other = conn.execute(
                sa.select(raw_claims.c.diagnosis).where(raw_claims.c.id == 1000)
            ).scalar_one()
            conn.execute(sa.update(raw_claims).where(raw_claims.c.id == 1).values(diagnosis=other))
            p0 = raw_policies.c.id == f"{MEMBER}-p0"
            blob = conn.execute(sa.select(raw_policies.c.premium).where(p0)).scalar_one()
            forged = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
            conn.execute(sa.update(raw_policies).where(p0).values(premium=forged))
        claims, policies = m.Claim.__table__, m.Policy.__table__
        source.use()
        with source.vault.acting_as(DPO, purpose="DataSubjectRequest"):
            export = source.vault.export_subject(
                source.engine, MEMBER, "portability", subjects=SUBJECTS
            )
        assert export.status == "incomplete"
        marks = {
            (t["table"], name): mark
            for t in export.to_dict()["tables"]
            for row in t["rows"]
            for name, mark in row["marks"].items()
        }
        assert marks == {
            ("claims", "diagnosis"): {"status": "withheld", "reason": "subject_mismatch"},
            ("policies", "premium"): {"status": "withheld", "reason": "unreadable"},
        }
        report = import_into(target, export.to_dict())
        assert report.rows == 12
        assert dict(report.withheld) == {"claims.diagnosis": 1, "policies.premium": 1}
        assert report.erased == () and report.not_read == ()
        assert report.as_dict()["withheld"] == {"claims.diagnosis": 1, "policies.premium": 1}
        by_id = {r["id"]: r for r in target.rows(claims)}
        assert by_id[1]["diagnosis"] is None
        assert by_id[2]["diagnosis"] == f"fracture 1 ({MEMBER})"
        assert not any("(m-2)" in str(r["diagnosis"]) for r in by_id.values())
        premiums = {r["id"]: r["premium"] for r in target.rows(policies)}
        assert premiums == {f"{MEMBER}-p0": None, f"{MEMBER}-p1": decimal.Decimal("13.50")}

    def test_a_mark_of_unknown_status_is_refused(self, sites: tuple[Site, Site]) -> None:
        """A mark the import does not know (a damaged export, a newer layout) is refused naming
        the column, not silently written as NULL; nothing is written."""
        source, target = sites
        exported = export_of(source)
        claims = next(t for t in exported["tables"] if t["table"] == "claims")
        row = claims["rows"][0]
        del row["values"]["amount"]
        row["marks"]["amount"] = {"status": "redacted"}
        with pytest.raises(ConfigurationError, match=r"claims\.amount .*unknown status"):
            import_into(target, exported)
        assert set(counts(target).values()) == {0}

    def test_a_split_export_loads_in_two_steps(self, sites: tuple[Site, Site]) -> None:
        """The main part, then the medical part delivered through the adviser: the target ends
        with every value, as one unsplit export would have given; the medical part alone first,
        or twice, is refused and changes nothing."""
        source, target = sites
        source.use()
        with source.vault.acting_as(DPO, purpose="DataSubjectRequest"):
            split = source.vault.export_subject(
                source.engine, MEMBER, "portability", subjects=SUBJECTS, split_restricted=True
            )
        main, medical = split.to_dict(), split.restricted
        assert medical is not None
        with pytest.raises(ConfigurationError, match="import the main part first"):
            import_into(target, medical.to_dict())
        assert set(counts(target).values()) == {0}
        first = import_into(target, main)
        assert dict(first.not_read) == {"claims.diagnosis": 4, "members.health_note": 1}
        assert target.rows(m.Member.__table__)[0]["health_note"] is None
        second = import_into(target, medical.to_dict())
        assert second.part == "restricted"
        assert dict(second.tables) == {"members": 1, "claims": 4}
        assert comparable(export_of(target)) == comparable(export_of(source))
        with pytest.raises(ConfigurationError, match="restricted cells empty"):
            import_into(target, medical.to_dict())

    def test_a_session_caller_commits(self, sites: tuple[Site, Site]) -> None:
        """Through a Session the import writes in its transaction and leaves the commit to it."""
        source, target = sites
        exported = export_of(source)
        target.use()
        with Session(target.engine) as session:
            target.vault.import_subject(session, exported, subjects=SUBJECTS)
            session.rollback()
        assert counts(target)["members"] == 0
        with Session(target.engine) as session:
            target.vault.import_subject(session, exported, subjects=SUBJECTS)
            session.commit()
        assert counts(target)["claims"] == 4


@pytest.mark.parametrize("_engine", ["any"])
def test_the_round_trip_on_each_engine(server_sites: tuple[Site, Site], _engine: str) -> None:
    """The target on SQLite, PostgreSQL and MariaDB: the same export comes back out."""
    source, target = server_sites
    exported = export_of(source)
    assert import_into(target, exported).rows == 12
    assert comparable(export_of(target)) == comparable(exported)


@pytest.mark.parametrize("_engine", ["any"])
def test_a_split_export_on_each_engine(server_sites: tuple[Site, Site], _engine: str) -> None:
    """The two parts, on SQLite, PostgreSQL and MariaDB (the UPDATE's row count is each
    driver's): the medical part fills the cells once, a second time is refused."""
    source, target = server_sites
    source.use()
    with source.vault.acting_as(DPO, purpose="DataSubjectRequest"):
        split = source.vault.export_subject(
            source.engine, MEMBER, "portability", subjects=SUBJECTS, split_restricted=True
        )
    assert split.restricted is not None
    import_into(target, split.to_dict())
    assert import_into(target, split.restricted.to_dict()).rows == 5
    assert comparable(export_of(target)) == comparable(export_of(source))
    with pytest.raises(ConfigurationError, match="restricted cells empty"):
        import_into(target, split.restricted.to_dict())


class TestRefusals:
    def test_rows_already_there_are_refused_and_nothing_is_written(
        self, sites: tuple[Site, Site]
    ) -> None:
        """The same export twice: the second is refused whole, the first stays as it was."""
        source, target = sites
        exported = export_of(source)
        import_into(target, exported)
        before = counts(target)
        with pytest.raises(ConfigurationError, match="in the database already"):
            import_into(target, exported)
        assert counts(target) == before

    def test_one_conflicting_child_row_refuses_every_table(self, sites: tuple[Site, Site]) -> None:
        """A claim with a key the target has already: not even the member is written."""
        source, target = sites
        exported = export_of(source)
        target.use()
        with Session(target.engine) as session:
            m.populate(session, "m-other", first_id=1)  # claims 1..4 exist now
            session.commit()
        before = counts(target)
        with pytest.raises(ConfigurationError, match="claims: 4 rows"):
            import_into(target, exported)
        assert counts(target) == before

    def test_a_failure_half_way_leaves_nothing_written(self, sites: tuple[Site, Site]) -> None:
        """The database refuses the call recordings after members, policies, claims and chats
        went in: the one transaction is rolled back, every table stays empty."""
        source, target = sites
        exported = export_of(source)
        with target.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON call_recordings "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        with pytest.raises(ConfigurationError, match="call_recordings: the database refused"):
            import_into(target, exported)
        assert set(counts(target).values()) == {0}

    def test_a_damaged_value_is_refused_naming_the_column_not_the_value(
        self, sites: tuple[Site, Site]
    ) -> None:
        """A date that is no date: the column and row are named, the value is not."""
        source, target = sites
        exported = export_of(source)
        policies = next(t for t in exported["tables"] if t["table"] == "policies")
        policies["rows"][1]["values"]["started_on"] = "SECRET-1980-13-45"
        with pytest.raises(ConfigurationError, match=r"policies\.started_on in row 2") as caught:
            import_into(target, exported)
        assert "SECRET" not in str(caught.value)
        assert counts(target)["members"] == 0

    @pytest.mark.parametrize(
        ("table", "column", "change", "message"),
        [
            ("members", "email", {"type": "VARCHAR(100)"}, r"members\.email: its type changed"),
            (
                "policies",
                "premium",
                {"encrypted": {"domain": "identity", "subject": None, "row_key": None}},
                r"policies\.premium: was encrypted in domain 'identity'",
            ),
            ("claims", "amount", {"encrypted": None}, r"claims\.amount: was not encrypted"),
            ("claims", "status", {"value_type": "string"}, r"claims\.status: its value type"),
        ],
    )
    def test_a_model_that_differs_from_the_export_is_refused(
        self,
        sites: tuple[Site, Site],
        table: str,
        column: str,
        change: dict[str, Any],
        message: str,
    ) -> None:
        """The export's model block against the models: the changed column is named."""
        source, target = sites
        exported = export_of(source)
        body = next(t for t in exported["tables"] if t["table"] == table)
        body["model"]["columns"][column].update(copy.deepcopy(change))
        with pytest.raises(ConfigurationError, match=message):
            import_into(target, exported)
        assert counts(target)["members"] == 0

    def test_not_an_export_is_refused(self, sites: tuple[Site, Site], tmp_path: Path) -> None:
        """Another schema, the restricted part, a table the models lack, text that is no JSON."""
        source, target = sites
        exported = export_of(source)
        with pytest.raises(ConfigurationError, match="not a vaultkit subject export"):
            import_into(target, {**exported, "schema": "other/1"})
        with pytest.raises(ConfigurationError, match="part is neither"):
            import_into(target, {**exported, "part": "medical"})
        tables = [*exported["tables"], {**exported["tables"][0], "table": "gone"}]
        with pytest.raises(ConfigurationError, match="table gone is in the export but not"):
            import_into(target, {**exported, "tables": tables})
        bad = tmp_path / "bad.json"
        bad.write_text('{"name": "Jan Peeters", ')
        with pytest.raises(ConfigurationError, match="not JSON") as caught:
            import_into(target, bad)
        assert "Peeters" not in str(caught.value)


# -- a real model change: version 1 and version 2 of a small model ---------------------------------


def _v1() -> sa.MetaData:
    class Base(DeclarativeBase):
        pass

    class Member(Base):
        __tablename__ = "members"
        __table_args__ = {"info": subject_link(column="id")}  # noqa: RUF012
        id: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
        email: Mapped[str | None] = mapped_column(
            Encrypted(sa.String(320), domain="identity"),
            info=personal(category="contact", legal_basis="contract", purpose="membership"),
        )
        phone: Mapped[str | None] = mapped_column(
            Encrypted(sa.String(40), domain="identity"),
            info=personal(category="contact", legal_basis="contract", purpose="membership"),
        )

    return Base.metadata


def _v2(*, phone: bool, phone_domain: str = "identity") -> sa.MetaData:
    class Base(DeclarativeBase):
        pass

    columns: dict[str, Any] = {
        "__tablename__": "members",
        "__table_args__": {"info": subject_link(column="id")},
        "id": mapped_column(sa.String(20), primary_key=True),
        "email": mapped_column(
            Encrypted(sa.String(320), domain="identity"),
            info=personal(category="contact", legal_basis="contract", purpose="membership"),
        ),
        "__annotations__": {"id": Mapped[str], "email": Mapped[str | None]},
    }
    if phone:
        columns["phone"] = mapped_column(
            Encrypted(sa.String(40), domain=phone_domain, subject="id"),
            info=personal(category="contact", legal_basis="contract", purpose="membership"),
        )
        columns["__annotations__"]["phone"] = Mapped[str | None]
    type("Member", (Base,), columns)
    return Base.metadata


@pytest.mark.parametrize(
    ("v2", "message"),
    [
        (
            lambda: _v2(phone=False),
            r"members\.phone is in the export but not an annotated column of the models",
        ),
        (
            lambda: _v2(phone=True, phone_domain="financial"),
            r"members\.phone: was encrypted in domain 'identity' in the export, is encrypted "
            r"in domain 'financial'",
        ),
    ],
)
def test_a_real_model_change_between_export_and_import_names_the_column(
    tmp_path: Path, v2: Any, message: str
) -> None:
    """Exported under version 1 of the models, imported under version 2 (a column dropped, or
    moved to another domain): refused, naming the column; the target stays empty."""
    sites = []
    for name, metadata in (("v1", _v1()), ("v2", v2())):
        vault = Vault(
            provider=InMemoryKeyProvider(["identity", "financial"]),
            store=f"sqlite:///{tmp_path / name}-keys.db",
            domains=["identity", "financial"],
        )
        engine = sa.create_engine(f"sqlite:///{tmp_path / name}.db")
        metadata.create_all(engine)
        sites.append((vault, engine, metadata))
    try:
        (v1, e1, md1), (v2_vault, e2, md2) = sites
        vaultkit.sqla.configure(v1)
        with e1.begin() as conn:
            conn.execute(
                md1.tables["members"].insert(), [{"id": "m-1", "email": "a@b.be", "phone": "1"}]
            )
        exported = v1.export_subject(e1, "m-1", "portability", subjects=collect(md1)).to_dict()
        vaultkit.sqla.configure(v2_vault)
        with pytest.raises(ConfigurationError, match=message):
            v2_vault.import_subject(e2, exported, subjects=collect(md2))
        with e2.connect() as conn:
            assert (
                conn.execute(
                    sa.select(sa.func.count()).select_from(md2.tables["members"])
                ).scalar_one()
                == 0
            )
    finally:
        vaultkit.sqla.configure(None)
        for vault, engine, _ in sites:
            vault.close()
            engine.dispose()
