"""Access and portability exports of one member over the six-table model, on SQLite, PostgreSQL
and MariaDB.

What a member must get (every annotated value, typed, erased values as erased), and what nobody
may get: another member's rows, an unannotated or not-personal column, a blind-index digest, or
medical plaintext for a principal without the grant (which is not even read then, and is listed).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

import vaultkit.sqla
import vaultkit.subjects._export as export_module
from tests._support import FakeClock
from tests.unit.subjects import _models as m
from vaultkit import Principal, Vault, acting_as
from vaultkit.errors import ConfigurationError
from vaultkit.subjects import (
    SubjectExport,
    collect,
    export_schema,
    export_subject,
    personal,
    subject_link,
)
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

ADVISER = Principal("medical-adviser", grants={"medical"})
DPO = Principal("dpo-office")  # no grant for the medical domain
MEDICAL_TEXT = ("diabetes", "fracture")
SUBJECTS = collect(m.Base.metadata)
CHECK = 5  # seconds: the vault's key_check_interval

pytestmark = pytest.mark.configured  # the vault fixture is the column types' vault


def _export(engine: sa.Engine, vault: Vault, principal: Principal, **kw: Any) -> SubjectExport:
    with acting_as(principal, purpose="support desk"), Session(engine) as session:
        return vault.export_subject(session, kw.pop("subject", "m-17"), subjects=SUBJECTS, **kw)


def _validate(data: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(
        export_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(data)


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in data["tables"] if t["table"] == name)


def test_an_access_export_holds_every_annotated_value_typed(
    engine: sa.Engine, vault: Vault
) -> None:
    export = _export(engine, vault, ADVISER, request_id="DSR-1")
    data = export.to_dict()
    _validate(data)
    assert (data["status"], data["incomplete_sources"], data["note"]) == ("complete", [], None)
    assert data["request_id"] == "DSR-1"
    counts = {t["table"]: len(t["rows"]) for t in data["tables"]}
    assert counts == {
        "members": 1,
        "policies": 2,
        "claims": 4,
        "coaching_chats": 3,
        "call_recordings": 1,
        "newsletter_subscriptions": 1,
    }
    member = _table(data, "members")["rows"][0]
    assert member["key"] == {"id": "m-17"}
    assert member["values"] == {
        "name": m.HOSTILE_NAME,
        "email": "m-17@example.be",
        "birth_date": "1980-05-17",
        "joined_on": "2019-01-02",
        "churn_score": "0.125",
        "health_note": "diabetes type 2 (m-17)",
    }
    assert member["marks"] == {}
    policy = _table(data, "policies")["rows"][0]
    assert policy["links"] == {"member_id": "m-17"}
    assert policy["values"]["premium"] in ("12.50", "13.50")
    claims = _table(data, "claims")
    assert {r["values"]["status"] for r in claims["rows"]} == {"open", "paid"}
    assert {r["links"]["policy_id"] for r in claims["rows"]} == {"m-17-p0", "m-17-p1"}
    filed = dt.datetime.fromisoformat(claims["rows"][0]["values"]["filed_at"])
    assert filed.replace(tzinfo=filed.tzinfo or dt.UTC) >= dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    assert {r["values"]["diagnosis"] for r in claims["rows"]} == {
        "fracture 0 (m-17)",
        "fracture 1 (m-17)",
    }
    assert claims["model"]["columns"]["amount"]["encrypted"] == {
        "domain": "financial",
        "subject": "member_id",
        "row_key": None,
    }
    assert claims["model"]["links"] == {"policy_id": "policies.id", "member_id": "subject key"}
    chat = _table(data, "coaching_chats")["rows"][0]
    uuid.UUID(chat["key"]["id"])
    assert chat["values"]["message"].startswith("coaching message")
    audio = _table(data, "call_recordings")["rows"][0]["values"]["audio"]
    assert base64.b64decode(audio).startswith(b"RIFF")
    news = _table(data, "newsletter_subscriptions")["rows"][0]["values"]
    assert news["topics"] == {"topics": ["health", "sport"], "weekly": True}
    # The other member's data is nowhere.
    assert "m-18" not in export.to_json()
    assert "Other Member" not in export.to_json()
    # The art. 15 block.
    art15 = data["art15"]
    health = next(c for c in art15["categories"] if c["category"] == "health")
    assert health["recipients"] == ["medical adviser"]
    assert health["retention"] == ["P10Y after relationship_end"]
    assert set(health["columns"]) == {"members.health_note", "claims.diagnosis"}
    assert art15["automated_decisions"] is True
    assert {r["right"] for r in art15["rights"]} >= {"rectification", "erasure", "complaint"}


def test_a_portability_export_keeps_provided_and_observed_data(
    engine: sa.Engine, vault: Vault
) -> None:
    data = _export(engine, vault, ADVISER, kind="portability").to_dict()
    _validate(data)
    assert "art15" not in data
    members = _table(data, "members")
    assert "churn_score" not in members["model"]["columns"]
    assert "churn_score" not in members["rows"][0]["values"]
    assert members["rows"][0]["values"]["joined_on"] == "2019-01-02"  # observed: kept
    chats = _table(data, "coaching_chats")
    assert set(chats["model"]["columns"]) == {"sent_at", "message"}  # sentiment is derived


def test_without_the_grant_no_medical_plaintext_is_read(
    engine: sa.Engine, vault: Vault, provider: CountingKeyProvider
) -> None:
    # The attacker: a principal of the DPO's office without the medical grant exports a member.
    export = _export(engine, vault, DPO)
    data = export.to_dict()
    _validate(data)
    text = export.to_json() + export.to_html()
    for secret in MEDICAL_TEXT:
        assert secret not in text
    assert data["status"] == "incomplete"
    assert sorted((s["table"], s["column"], s["reason"]) for s in data["incomplete_sources"]) == [
        ("claims", "diagnosis", "no_grant"),
        ("members", "health_note", "no_grant"),
    ]
    member = _table(data, "members")["rows"][0]
    assert member["marks"]["health_note"] == {"status": "not_read", "reason": "no_grant"}
    assert "health_note" not in member["values"]
    vault.flush_audit()
    assert vault.audit_log is not None
    medical = [e for _, e, _, _ in vault.audit_log.read() if e.domain == "medical"]
    assert not [e for e in medical if e.principal == DPO.name and e.action == "decrypt"]
    # The refusal is on record, once per column, with the request's purpose.
    denied = sorted((e.table, e.column, e.purpose) for e in medical if e.principal == DPO.name)
    assert denied == [
        ("claims", "diagnosis", "DataSubjectRequest"),
        ("members", "health_note", "DataSubjectRequest"),
    ]
    # Split or not, the separate part holds no medical plaintext for them either.
    split = _export(engine, vault, DPO, split_restricted=True)
    assert split.restricted is not None
    main, part = split.to_dict(), split.restricted.to_dict()
    _validate(main)
    _validate(part)
    # The main part points to the separate one, which says what it could not read.
    assert (main["status"], main["incomplete_sources"]) == ("complete", [])
    assert _table(main, "members")["rows"][0]["marks"] == {
        "health_note": {"status": "separate", "part": "restricted"}
    }
    assert part["status"] == "incomplete"
    assert {s["reason"] for s in part["incomplete_sources"]} == {"no_grant"}
    assert _table(part, "members")["rows"][0]["marks"] == {
        "health_note": {"status": "not_read", "reason": "no_grant"}
    }
    for secret in MEDICAL_TEXT:
        assert secret not in split.restricted.to_json()
        assert secret not in split.to_json()


def test_restricted_reads_are_audited_with_the_purpose(engine: sa.Engine, vault: Vault) -> None:
    vault.flush_audit()
    assert vault.audit_log is not None
    before = max((seq for seq, *_ in vault.audit_log.read()), default=0)
    _export(engine, vault, ADVISER, purpose="DataSubjectRequest")
    events = [e for seq, e, _, _ in vault.audit_log.read() if seq > before]
    medical = [e for e in events if e.domain == "medical" and e.action == "decrypt"]
    assert medical
    assert {(e.principal, e.purpose) for e in medical} == {(ADVISER.name, "DataSubjectRequest")}
    assert {e.table for e in medical} == {"members", "claims"}
    assert sum(e.count for e in medical) == 1 + 4


def test_erased_values_appear_as_erased_with_their_date(
    engine: sa.Engine, vault: Vault, clock: FakeClock
) -> None:
    receipt = vault.erase_subject("m-17", reason="art17", request_id="DSR-7")
    assert receipt.status == "granted"
    clock.now += CHECK + 1
    data = _export(engine, vault, ADVISER).to_dict()
    _validate(data)
    today = receipt.erased_at.date().isoformat()
    erased = {"status": "erased", "reason": "subject_erased", "on": today}
    member = _table(data, "members")["rows"][0]
    assert member["marks"] == {"health_note": erased}
    assert member["values"]["email"] == "m-17@example.be"  # identity keys are not per member
    counts = {t["table"]: len(t["rows"]) for t in data["tables"]}
    assert counts["claims"] == 4 and counts["coaching_chats"] == 3  # rows are never dropped
    for row in _table(data, "claims")["rows"]:
        assert row["marks"] == {"amount": erased, "diagnosis": erased}
        assert row["values"]["status"] in ("open", "paid")
    for row in _table(data, "coaching_chats")["rows"]:
        assert row["marks"] == {"message": erased}
    html = _export(engine, vault, ADVISER).to_html()
    assert f"erased at your request ({today})" in html
    # The other member is untouched.
    other = _export(engine, vault, ADVISER, subject="m-18").to_dict()
    assert all(not r["marks"] for t in other["tables"] for r in t["rows"])


def test_expired_values_appear_as_retention_expired(
    engine: sa.Engine, vault: Vault, clock: FakeClock
) -> None:
    deadline = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ref = vault.subject_ref("chats", "m-17")
    assert vault.store.set_destroy_at("chats", ref, deadline) > 0  # type: ignore[attr-defined]
    clock.now += CHECK + 1
    data = _export(engine, vault, ADVISER).to_dict()
    _validate(data)
    expired = {"status": "erased", "reason": "retention_expired", "on": "2026-01-01"}
    assert [r["marks"] for r in _table(data, "coaching_chats")["rows"]] == [
        {"message": expired}
    ] * 3
    assert _table(data, "call_recordings")["rows"][0]["marks"] == {"audio": expired}
    assert not _table(data, "policies")["rows"][0]["marks"]


def test_an_unknown_subject_gets_an_empty_export_with_a_note(
    engine: sa.Engine, vault: Vault
) -> None:
    for principal in (ADVISER, DPO):
        data = _export(engine, vault, principal, subject="m-404").to_dict()
        _validate(data)
        assert data["note"] == "no data found for this subject"
        assert data["status"] == "complete"
        assert all(not t["rows"] for t in data["tables"])


def test_the_medical_part_can_go_separately(engine: sa.Engine, vault: Vault) -> None:
    export = _export(engine, vault, ADVISER, split_restricted=True)
    main = export.to_dict()
    _validate(main)
    for secret in MEDICAL_TEXT:
        assert secret not in export.to_json()
        assert secret not in export.to_html()
    assert main["restricted_part"] == {
        "domains": ["medical"],
        "delivery": "separately, through the medical adviser",
    }
    member = _table(main, "members")["rows"][0]
    assert member["marks"] == {"health_note": {"status": "separate", "part": "restricted"}}
    assert member["values"]["email"] == "m-17@example.be"
    assert export.restricted is not None
    part = export.restricted.to_dict()
    _validate(part)
    assert part["part"] == "restricted"
    assert [t["table"] for t in part["tables"]] == ["members", "claims"]
    assert _table(part, "members")["rows"][0]["values"] == {"health_note": "diabetes type 2 (m-17)"}
    assert _table(part, "members")["rows"][0]["key"] == {"id": "m-17"}
    assert len(_table(part, "claims")["rows"]) == 4
    assert "m-17@example.be" not in export.restricted.to_json()
    assert "(restricted part)" in export.restricted.to_html()


def test_nothing_unannotated_leaks_into_any_rendering(
    engine: sa.Engine, vault: Vault, tmp_path: Path
) -> None:
    import zipfile

    export = _export(engine, vault, ADVISER)
    export.write_json(tmp_path / "e.json")
    export.write_csv_zip(tmp_path / "e.zip")
    export.write_html(tmp_path / "e.html")
    texts = [(tmp_path / "e.json").read_text("utf-8"), (tmp_path / "e.html").read_text("utf-8")]
    with zipfile.ZipFile(tmp_path / "e.zip") as archive:
        texts += [archive.read(name).decode("utf-8-sig") for name in archive.namelist()]
    for other in (
        _export(engine, vault, ADVISER, kind="portability"),
        _export(engine, vault, ADVISER, split_restricted=True),
        _export(engine, vault, DPO, split_restricted=True),
    ):
        assert other.restricted is None or other.restricted.to_json()
        for part in (other, other.restricted):
            if part is not None:
                texts += [part.to_json(), part.to_html()]
    # The blind-index digests of the member's e-mail: keyed, but a digest still links rows.
    with engine.connect() as conn:
        digests = conn.execute(
            sa.select(
                sa.type_coerce(m.Member.__table__.c.email_index, sa.LargeBinary),
                sa.type_coerce(m.Member.__table__.c.email, sa.LargeBinary),
            ).where(m.Member.__table__.c.id == "m-17")
        ).one()
    forbidden = [*m.UNANNOTATED, *(base64.b64encode(bytes(d)).decode() for d in digests)]
    forbidden += [bytes(d).hex() for d in digests]
    for text in texts:
        for value in forbidden:
            assert value not in text
    assert "ops_counters" not in texts[0]
    assert (tmp_path / "e.json").stat().st_mode & 0o077 == 0


def test_a_missing_table_is_listed_and_the_rest_exported(engine: sa.Engine, vault: Vault) -> None:
    m.CallRecording.__table__.drop(engine)  # type: ignore[attr-defined]
    try:
        with acting_as(ADVISER, purpose="support desk"), Session(engine) as session:
            export = vault.export_subject(session, "m-17", subjects=SUBJECTS)
            # The caller's session is still usable (no aborted transaction on a server).
            assert session.execute(sa.text("select 1")).scalar() == 1
    finally:
        m.CallRecording.__table__.create(engine)  # type: ignore[attr-defined]
    data = export.to_dict()
    _validate(data)
    assert data["status"] == "incomplete"
    assert [(s["table"], s["reason"]) for s in data["incomplete_sources"]] == [
        ("call_recordings", "table_missing")
    ]
    assert len(_table(data, "claims")["rows"]) == 4


def test_a_missing_first_table_does_not_stop_the_others(engine: sa.Engine, vault: Vault) -> None:
    # The export's own connection (an Engine given): the failure is the first statement.
    md = sa.MetaData()
    ghost = sa.Table(
        "ghost_members",
        md,
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("nick", sa.String(20), info=personal(category="x", legal_basis="y", purpose="z")),
        info=subject_link(column="id"),
    )
    tables = [ghost, *(model.__table__ for model in m.MODELS)]  # type: ignore[attr-defined]
    subjects = collect(tables)
    assert subjects.tables[0].name == "ghost_members"
    with acting_as(ADVISER, purpose="support desk"):
        data = vault.export_subject(engine, "m-17", subjects=subjects).to_dict()
    assert [(s["table"], s["reason"]) for s in data["incomplete_sources"]] == [
        ("ghost_members", "table_missing")
    ]
    assert len(_table(data, "claims")["rows"]) == 4


def test_reads_are_batched_per_table_and_keys_bounded_by_deks(
    engine: sa.Engine,
    vault: Vault,
    vault_kwargs: dict[str, Any],
    provider: CountingKeyProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with acting_as(ADVISER, purpose="test data"), Session(engine) as session:
        m.populate(session, "m-19", policies=5, claims_per_policy=4, chats=30, first_id=5000)
        session.commit()
    monkeypatch.setattr(export_module, "BATCH", 2)
    # A cold vault on the same keys: nothing cached.
    with Vault(**vault_kwargs) as cold:
        vaultkit.sqla.configure(cold)
        statements: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                statements.append(statement)

        sa.event.listen(engine, "before_cursor_execute", count)
        provider.calls.clear()
        try:
            data = _export(engine, cold, ADVISER, subject="m-19").to_dict()
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
            vaultkit.sqla.configure(vault)
    assert data["status"] == "complete"
    assert len(_table(data, "claims")["rows"]) == 20
    assert len(_table(data, "coaching_chats")["rows"]) == 30

    def on(table: str) -> int:
        return sum(1 for s in statements if f"FROM {table}" in s and "JOIN" not in s)

    # One query per table and batch of parent keys (5 policies, 2 per batch: 3 queries).
    assert on("claims") == 3
    assert on("members") == 1 and on("coaching_chats") == 1 and on("policies") == 1
    # Provider calls are bounded by the keys (a wrapping key per domain, an index key, and the
    # subject-reference key of each subject-scoped domain for the check that every value is
    # under this member's key), not by the 60-odd rows.
    assert 0 < provider.calls["unwrap"] + provider.calls["unwrap_many"] <= 6 + 3


def test_the_export_checks_its_arguments(engine: sa.Engine, vault: Vault) -> None:
    with Session(engine) as session:
        with pytest.raises(ConfigurationError, match="an e-mail address"):
            vault.export_subject(session, "m-17", subjects=SUBJECTS, request_id="jan@example.be")
        with pytest.raises(ConfigurationError, match='kind is "access" or "portability"'):
            vault.export_subject(session, "m-17", "everything", subjects=SUBJECTS)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"collect\(Base.metadata\)"):
            vault.export_subject(session, "m-17", subjects=m.Base.metadata)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="a subject is"):
            vault.export_subject(session, 1.5, subjects=SUBJECTS)  # type: ignore[arg-type]
        # The module-level function takes the metadata too; the repr names no value.
        with acting_as(ADVISER, purpose="support"):
            export = export_subject(vault, session, "m-17", subjects=m.Base.metadata)
        assert repr(export) == (
            "SubjectExport(kind='access', status='complete', tables=6, rows=12, "
            "erased_cells=0, incomplete_sources=0)"
        )
        with pytest.raises(TypeError, match="not pickled"):
            import pickle

            pickle.dumps(export)


def test_models_configured_with_another_vault_are_refused(
    engine: sa.Engine, vault: Vault, tmp_path: Path
) -> None:
    with (
        Vault(
            provider=InMemoryKeyProvider(),
            store=f"sqlite:///{tmp_path / 'k2.db'}",
            domains=m.DOMAINS,
        ) as other,
        Session(engine) as session,
        pytest.raises(ConfigurationError, match="not the vault exporting"),
    ):
        other.export_subject(session, "m-17", subjects=SUBJECTS)


def test_a_connection_or_an_engine_serves_too(engine: sa.Engine, vault: Vault) -> None:
    with acting_as(ADVISER, purpose="support"):
        with engine.connect() as conn:
            by_conn = vault.export_subject(conn, "m-17", subjects=SUBJECTS).to_dict()
        by_engine = vault.export_subject(engine, "m-17", subjects=SUBJECTS).to_dict()
    for data in (by_conn, by_engine):
        data.pop("generated_at")
    assert by_conn == by_engine
    assert json.dumps(by_conn)


def test_a_table_that_fails_to_read_through_an_engine_does_not_stop_the_next_ones(
    engine: sa.Engine, vault: Vault
) -> None:
    """The export's own connection (an Engine given) reads without savepoints: a failed read
    is rolled back, and the tables after it are read all the same."""
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE coaching_chats DROP COLUMN sent_at"))
    with acting_as(ADVISER, purpose="support desk"):
        data = vault.export_subject(engine, "m-17", subjects=SUBJECTS).to_dict()
    _validate(data)
    assert [(s["table"], s["reason"]) for s in data["incomplete_sources"]] == [
        ("coaching_chats", "database_error")
    ]
    assert {t["table"]: len(t["rows"]) for t in data["tables"]} == {
        "members": 1,
        "policies": 2,
        "claims": 4,
        "coaching_chats": 0,
        "call_recordings": 1,
        "newsletter_subscriptions": 1,
    }


def test_a_table_that_fails_to_read_is_listed_and_the_session_survives(
    engine: sa.Engine, vault: Vault
) -> None:
    # A model change the database has not followed: the column the map reads is gone.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE coaching_chats DROP COLUMN sent_at"))
    with acting_as(ADVISER, purpose="support desk"), Session(engine) as session:
        session.execute(sa.text("select 1"))  # the caller's transaction is open
        export = vault.export_subject(session, "m-17", subjects=SUBJECTS)
        assert session.execute(sa.text("select 1")).scalar() == 1
    data = export.to_dict()
    _validate(data)
    assert [(s["table"], s["reason"]) for s in data["incomplete_sources"]] == [
        ("coaching_chats", "database_error")
    ]
    # The error names its class only, never a statement or a value.
    detail = data["incomplete_sources"][0]["detail"]
    assert detail.isidentifier()
    assert len(_table(data, "claims")["rows"]) == 4


def test_the_schema_ships_as_package_data() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[3]
    data = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))
    assert "*.schema.json" in data["tool"]["setuptools"]["package-data"]["vaultkit.subjects"]
    schema = export_schema()
    assert schema["properties"]["schema"] == {"const": "vaultkit-subject-export/1"}
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_cell_reads_back_to_the_stored_value(engine: sa.Engine, vault: Vault) -> None:
    from vaultkit.subjects._export import from_jsonable

    data = _export(engine, vault, ADVISER).to_dict()
    models = {model.__tablename__: model for model in m.MODELS}
    checked = 0
    with acting_as(ADVISER, purpose="test"), Session(engine) as session:
        for table in data["tables"]:
            model = models[table["table"]]
            key_column = table["model"]["key"][0]
            key_type = "uuid" if table["table"] == "coaching_chats" else "any"
            for row in table["rows"]:
                key = row["key"][key_column]
                stored = session.get(model, uuid.UUID(key) if key_type == "uuid" else key)
                assert stored is not None
                for name, spec in table["model"]["columns"].items():
                    enum_class = m.ClaimStatus if spec["value_type"] == "enum" else None
                    value = from_jsonable(
                        row["values"][name], spec["value_type"], enum_class=enum_class
                    )
                    expected = getattr(stored, name)
                    if isinstance(expected, dt.datetime) and expected.tzinfo is None:
                        # DateTime(timezone=True) on SQLite and MariaDB: no offset kept, UTC
                        # as written; the export says so (+00:00).
                        expected = expected.replace(tzinfo=dt.UTC)
                    assert value == expected, f"{table['table']}.{name}"
                    checked += 1
    assert checked > 40


@pytest.mark.parametrize(
    ("value", "value_type"),
    [
        (dt.timedelta(days=2, seconds=12345.678901), "duration"),
        (-dt.timedelta(seconds=5), "duration"),
        (float("inf"), "number"),
        (b"\x00\xff", "base64"),
        (dt.time(12, 30, 1, 5), "time"),
    ],
)
def test_typed_json_round_trips(value: Any, value_type: str) -> None:
    from vaultkit.subjects._export import from_jsonable, jsonable

    assert from_jsonable(jsonable(value), value_type) == value


def test_a_cell_of_the_wrong_type_is_refused_without_its_value() -> None:
    from vaultkit.subjects._export import from_jsonable

    for value, value_type in (("12,5", "decimal"), ("not-a-date", "date"), (True, "integer")):
        with pytest.raises(ValueError, match=f"does not hold a {value_type}") as caught:
            from_jsonable(value, value_type)
        assert str(value) not in str(caught.value)


@pytest.mark.postgres
def test_tables_in_a_schema_are_named_with_it(
    postgres_engine: sa.Engine, postgres_schema: str, vault: Vault
) -> None:
    from vaultkit.sqla import BlindIndexType, Encrypted
    from vaultkit.subjects import personal, subject_link

    info = {"category": "contact", "legal_basis": "consent", "purpose": "newsletter"}
    md = sa.MetaData(schema=postgres_schema)
    members = sa.Table(
        "members",
        md,
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("email", Encrypted(sa.String(100), domain="identity"), info=personal(**info)),
        info=subject_link(column="id"),
    )
    news = sa.Table(
        "news",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", Encrypted(sa.String(100), domain="identity"), info=personal(**info)),
        sa.Column("email_index", BlindIndexType("email", normalize=str.lower)),
        info=subject_link(match="email_index", identity=f"{postgres_schema}.members.email"),
    )
    subjects = collect(md)
    md.create_all(postgres_engine)
    with postgres_engine.begin() as conn:
        conn.execute(members.insert(), [{"id": "m-1", "email": "a@b.be"}])
        conn.execute(news.insert(), [{"id": 1, "email": "A@b.be", "email_index": "A@b.be"}])
        conn.execute(news.insert(), [{"id": 2, "email": "c@d.be", "email_index": "c@d.be"}])
    data = vault.export_subject(postgres_engine, "m-1", subjects=subjects).to_dict()
    _validate(data)
    assert data["status"] == "complete"
    rows = _table(data, f"{postgres_schema}.news")["rows"]
    assert [(r["key"], r["values"]) for r in rows] == [({"id": 1}, {"email": "A@b.be"})]


def test_a_match_on_an_unreadable_identity_is_listed(vault: Vault, tmp_path: Path) -> None:
    from vaultkit.sqla import BlindIndexType, Encrypted
    from vaultkit.subjects import personal, subject_link

    info = {"category": "contact", "legal_basis": "consent", "purpose": "newsletter"}
    md = sa.MetaData()
    sa.Table(
        "members",
        md,
        sa.Column("id", sa.String(20), primary_key=True),
        # The e-mail address in the restricted domain, per member: unreadable without the grant.
        sa.Column(
            "email",
            Encrypted(sa.String(100), domain="medical", subject="id"),
            info=personal(**info),
        ),
        info=subject_link(column="id"),
    )
    news = sa.Table(
        "news",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", Encrypted(sa.String(100), domain="identity"), info=personal(**info)),
        sa.Column("email_index", BlindIndexType("email", domain="identity")),
        info=subject_link(match="email_index", identity="members.email"),
    )
    subjects = collect(md)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'id.db'}")
    md.create_all(engine)
    with acting_as(ADVISER, purpose="test data"), engine.begin() as conn:
        conn.execute(md.tables["members"].insert(), [{"id": "m-1", "email": "a@b.be"}])
        conn.execute(news.insert(), [{"id": 1, "email": "a@b.be"}])
    with acting_as(DPO, purpose="support"):
        data = vault.export_subject(engine, "m-1", subjects=subjects).to_dict()
    _validate(data)
    assert sorted((s["table"], s["reason"]) for s in data["incomplete_sources"]) == [
        ("members", "no_grant"),
        ("news", "identity_unreadable"),
    ]
    with acting_as(ADVISER, purpose="support"):
        data = vault.export_subject(engine, "m-1", subjects=subjects).to_dict()
    assert _table(data, "news")["rows"][0]["values"] == {"email": "a@b.be"}
    engine.dispose()


_TYPED = {
    "decimal": st.decimals(allow_nan=False, allow_infinity=False),
    "datetime": st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    "date": st.dates(),
    "time": st.times(),
    "duration": st.timedeltas(),
    "base64": st.binary(max_size=64),
    "uuid": st.uuids(),
    "integer": st.integers(),
    "number": st.floats(allow_nan=False),
    "string": st.text(max_size=50),
    "boolean": st.booleans(),
}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(_TYPED)).flatmap(lambda t: st.tuples(st.just(t), _TYPED[t])))
def test_typed_json_round_trips_for_every_value_type(case: tuple[str, Any]) -> None:
    from vaultkit.subjects._export import from_jsonable, jsonable

    value_type, value = case
    encoded = jsonable(value)
    assert json.loads(json.dumps(encoded)) == encoded
    assert from_jsonable(encoded, value_type) == value
