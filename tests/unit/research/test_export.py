"""Research exports end to end: a SQLite source, a vault with a research KEK, Parquet out."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from vaultkit import KeyDomain, Vault
from vaultkit.errors import ConfigurationError, ExportRefusedError, KeyStoreError
from vaultkit.research import (
    MANIFEST_KEY,
    destroy_key,
    export,
    parse_spec,
    pseudonym,
    withdraw,
)
from vaultkit.testing import InMemoryKeyProvider

TODAY = dt.date(2026, 12, 1)

SPEC = """
[export]
project = "{project}"
recipient = "{recipient}"
source = "members"
member = "member_id"
k = {k}
on_small_class = "{on_small}"
quasi_identifiers = ["region", "birth_year", "age", "sex"]
expires = 2027-12-31
legal_basis = "GDPR art. 9(2)(j), scientific research"
dpia_ref = "DPIA-2026-07"
{link}

[columns.pid]
source = "member_id"
transform = "pseudonym"

[columns.region]
source = "postal_code"
transform = "generalise"
method = "postal"
digits = 2

[columns.birth_year]
source = "birth_date"
transform = "generalise"
method = "year"

[columns.age]
source = "birth_date"
transform = "generalise"
method = "age_band"
years = 10
at = 2026-01-01

[columns.sex]
transform = "keep"

[columns.admitted]
source = "admitted_on"
transform = "date_shift"
max_days = 30

[columns.discharged]
source = "discharged_on"
transform = "date_shift"
max_days = 30

[columns.email]
source = "email_ct"
transform = "drop"

[columns.email_pid]
source = "email_ct"
transform = "pseudonym"
decrypt = {{ domain = "identity", table = "members", column = "email" }}

[columns.amount]
transform = "keep"
"""


def spec_text(
    *,
    project: str = "diabetes",
    recipient: str = "uni-a",
    k: int = 3,
    on_small: str = "refuse",
    link: str = "",
) -> str:
    return SPEC.format(project=project, recipient=recipient, k=k, on_small=on_small, link=link)


@pytest.fixture
def research_vault(tmp_path: Path) -> Any:
    provider = InMemoryKeyProvider(["identity", "research"])
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with Vault(
        provider=provider,
        store=url,
        domains=["identity", KeyDomain("research", audited=True)],
        audit=url,
    ) as vault:
        yield vault


def _rows(vault: Vault, n: int, *, small_class: bool = False) -> list[dict[str, Any]]:
    email = vault.field("identity", table="members", column="email")
    rows = []
    for i in range(n):
        region = "10" if i % 2 else "20"
        rows.append(
            {
                "member_id": 1000 + i,
                "postal_code": f"{region}{i % 10}{i % 7}",
                "birth_date": dt.date(1960 + (i % 2), 1 + i % 12, 1 + i % 28),
                "sex": "F" if i % 3 else "M",
                "admitted_on": dt.date(2025, 1, 1) + dt.timedelta(days=i),
                "discharged_on": dt.date(2025, 1, 8) + dt.timedelta(days=i),
                "email_ct": email.encrypt(f"member{i}@example.be"),
                "amount": float(i * 10),
            }
        )
    if small_class:  # one member alone in its class: region 99
        rows[0]["postal_code"] = "9999"
    return rows


@pytest.fixture
def database(tmp_path: Path, research_vault: Vault) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'data.db'}")
    meta = sa.MetaData()
    table = sa.Table(
        "members",
        meta,
        sa.Column("member_id", sa.Integer, primary_key=True),
        sa.Column("postal_code", sa.String),
        sa.Column("birth_date", sa.Date),
        sa.Column("sex", sa.String),
        sa.Column("admitted_on", sa.Date),
        sa.Column("discharged_on", sa.Date),
        sa.Column("email_ct", sa.LargeBinary),
        sa.Column("amount", sa.Float),
        sa.Column("phone", sa.String),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(), [{**r, "phone": "+32 470 12 34 56"} for r in _rows(research_vault, 60)]
        )
    return engine


def _run(vault: Vault, engine: sa.Engine, out: Path, **kw: Any) -> Any:
    return export(vault, parse_spec(spec_text(**kw)), out, database=engine, today=TODAY)


class TestPseudonyms:
    def test_same_member_same_pseudonym_within_a_dataset(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """Two exports of one project and recipient give each member the same pseudonym."""
        a = pq.read_table(_run(research_vault, database, tmp_path / "a.parquet").path)
        b = pq.read_table(_run(research_vault, database, tmp_path / "b.parquet").path)
        assert a.column("pid").to_pylist() == b.column("pid").to_pylist()
        pids = a.column("pid").to_pylist()
        assert len(set(pids)) == len(pids) == 60
        assert all(re.fullmatch(r"[A-Z2-7]{26}", p) for p in pids)

    def test_different_datasets_do_not_link(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """Another project, or another recipient, gets pseudonyms that share nothing."""
        base = pq.read_table(_run(research_vault, database, tmp_path / "a.parquet").path)
        other_project = pq.read_table(
            _run(research_vault, database, tmp_path / "b.parquet", project="cardio").path
        )
        other_recipient = pq.read_table(
            _run(research_vault, database, tmp_path / "c.parquet", recipient="uni-b").path
        )
        mine = set(base.column("pid").to_pylist())
        assert not mine & set(other_project.column("pid").to_pylist())
        assert not mine & set(other_recipient.column("pid").to_pylist())
        assert not set(base.column("email_pid").to_pylist()) & set(
            other_project.column("email_pid").to_pylist()
        )

    def test_link_with_shares_the_linked_projects_key(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """A spec with link_with gets the linked project's pseudonyms and its dataset key id."""
        base = _run(research_vault, database, tmp_path / "a.parquet")
        linked = _run(
            research_vault,
            database,
            tmp_path / "b.parquet",
            project="diabetes-followup",
            link='link_with = ["diabetes"]',
        )
        assert linked.dataset_key_id == base.dataset_key_id
        assert (
            pq.read_table(base.path).column("pid").to_pylist()
            == pq.read_table(linked.path).column("pid").to_pylist()
        )

    def test_link_with_a_project_without_key_is_refused(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """Linking with a project that has no dataset key (for that recipient) makes none."""
        with pytest.raises(ExportRefusedError, match="has no dataset key"):
            _run(research_vault, database, tmp_path / "b.parquet", link='link_with = "nothing"')
        assert not (tmp_path / "b.parquet").exists()

    def test_date_shift_is_per_member_and_keeps_intervals(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """Each member's dates move by one keyed shift within the bound; the stay stays 7 days."""
        table = pq.read_table(_run(research_vault, database, tmp_path / "a.parquet").path)
        admitted = table.column("admitted").to_pylist()
        discharged = table.column("discharged").to_pylist()
        shifts = set()
        for i, (a, d) in enumerate(zip(admitted, discharged, strict=True)):
            assert (d - a).days == 7
            shift = (a - (dt.date(2025, 1, 1) + dt.timedelta(days=i))).days
            assert -30 <= shift <= 30
            shifts.add(shift)
        assert len(shifts) > 10  # keyed per member, not one shift for all


class TestKAnonymity:
    def test_a_crafted_small_class_is_refused(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """A member alone in their class of quasi-identifiers refuses the export; no file."""
        with database.begin() as conn:
            conn.execute(sa.text("UPDATE members SET postal_code = '9999' WHERE member_id = 1000"))
        out = tmp_path / "a.parquet"
        with pytest.raises(ExportRefusedError, match=r"k-anonymity: 1 of \d+ classes .* k=3"):
            _run(research_vault, database, out)
        assert not out.exists()
        assert not list(tmp_path.glob("*.partial"))

    def test_suppress_drops_small_classes_and_reports_k(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """With suppress, the small class's rows are left out and the achieved k is reported."""
        with database.begin() as conn:
            conn.execute(sa.text("UPDATE members SET postal_code = '9999' WHERE member_id = 1000"))
        report = _run(research_vault, database, tmp_path / "a.parquet", on_small="suppress")
        assert (report.rows_in, report.rows_out, report.suppressed) == (60, 59, 1)
        assert report.achieved_k is not None and report.achieved_k >= 3
        table = pq.read_table(report.path)
        assert table.num_rows == 59
        assert "99" not in table.column("region").to_pylist()
        classes: dict[tuple[object, ...], int] = {}
        for row in zip(
            *(table.column(c).to_pylist() for c in ("region", "birth_year", "sex")), strict=True
        ):
            classes[row] = classes.get(row, 0) + 1
        assert min(classes.values()) == report.achieved_k

    def test_k_larger_than_every_class_is_refused(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """k above every class size refuses, also when suppressing (nothing would remain)."""
        with pytest.raises(ExportRefusedError, match="nothing would be left"):
            _run(research_vault, database, tmp_path / "a.parquet", k=1000, on_small="suppress")


class TestOutput:
    def test_the_output_holds_no_identifier_pattern(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """No e-mail, phone, INSZ or BSN pattern in any column of the file, nor the member id."""
        path = _run(research_vault, database, tmp_path / "a.parquet").path
        raw = path.read_bytes()
        assert b"@example.be" not in raw
        table = pq.read_table(path)
        text = " ".join(str(v) for c in table.columns for v in c.to_pylist())
        assert not re.search(r"[\w.]+@[\w.]+", text)
        assert not re.search(r"\+32|\b0?4\d\d ?\d\d ?\d\d ?\d\d\b", text)
        assert not re.search(r"\b\d{2}\.?\d{2}\.?\d{2}-?\d{3}\.?\d{2}\b", text)  # INSZ
        assert not re.search(r"\b\d{9}\b", text)  # BSN
        assert "member_id" not in table.column_names and "phone" not in table.column_names
        assert "1000" not in table.column("pid").to_pylist()

    def test_a_kept_column_holding_an_identifier_is_refused(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """Keeping a phone column (a spec mistake) refuses the export, naming the column."""
        text = spec_text() + '\n[columns.phone]\ntransform = "keep"\n'
        with pytest.raises(ExportRefusedError, match=r"column phone .* phone number"):
            export(research_vault, parse_spec(text), tmp_path / "a.parquet", database=database)
        assert not (tmp_path / "a.parquet").exists()

    def test_the_manifest_lists_every_column(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """The manifest in the file's metadata names each spec column, its transform, the counts."""
        report = _run(research_vault, database, tmp_path / "a.parquet")
        meta = pq.read_schema(report.path).metadata
        manifest = json.loads(meta[MANIFEST_KEY.encode()])
        spec = parse_spec(spec_text())
        assert [c["name"] for c in manifest["columns"]] == [c.name for c in spec.columns]
        assert {c["name"]: c["transform"] for c in manifest["columns"]}["email"] == "drop"
        written = [c["name"] for c in manifest["columns"] if c["written"]]
        assert written == pq.read_table(report.path).column_names
        assert manifest["spec_sha256"] == spec.digest
        assert manifest["dataset_key_id"] == report.dataset_key_id
        assert (manifest["rows_in"], manifest["rows_out"], manifest["suppressed"]) == (60, 60, 0)
        assert manifest["k"] == 3 and manifest["achieved_k"] == report.achieved_k
        assert manifest["expires"] == "2027-12-31"
        assert manifest["legal_basis"].startswith("GDPR")

    def test_the_manifest_hash_is_in_the_audit_chain(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """The audit chain holds an export event with the manifest's SHA-256, and verifies."""
        import hashlib

        report = _run(research_vault, database, tmp_path / "a.parquet")
        manifest = pq.read_schema(report.path).metadata[MANIFEST_KEY.encode()]
        assert report.audited
        assert report.manifest_sha256 == hashlib.sha256(manifest).hexdigest()
        log = research_vault.audit_log
        assert log is not None
        events = [e for _, e, _, _ in log.read() if e.action == "research-export"]
        assert len(events) == 1
        assert f"manifest_sha256={report.manifest_sha256}" in events[0].rows
        assert log.verify().ok

    def test_an_unaudited_vault_is_refused_unless_allowed(self, tmp_path: Path) -> None:
        """A vault without an audit log refuses the export unless allow_unaudited is given."""
        provider = InMemoryKeyProvider(["identity", "research"])
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'd.db'}")
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (member_id INTEGER, sex TEXT)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1, 'F'), (2, 'F')"))
        text = """
[export]
project = "p"
recipient = "r"
source = "t"
member = "member_id"
k = 2
quasi_identifiers = ["sex"]
[columns.pid]
source = "member_id"
transform = "pseudonym"
[columns.sex]
transform = "keep"
"""
        with Vault(
            provider=provider, store=f"sqlite:///{tmp_path / 'k.db'}", domains=["research"]
        ) as vault:
            with pytest.raises(ConfigurationError, match="no audit log"):
                export(vault, parse_spec(text), tmp_path / "o.parquet", database=engine)
            report = export(
                vault,
                parse_spec(text),
                tmp_path / "o.parquet",
                database=engine,
                allow_unaudited=True,
            )
            assert report.rows_out == 2 and not report.audited


class TestWithdrawAndDestroy:
    def test_withdraw_recomputes_the_pseudonyms(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """Withdraw gives exactly the erased members' pseudonyms in each of the recipient's datasets."""
        a = pq.read_table(_run(research_vault, database, tmp_path / "a.parquet").path)
        b = pq.read_table(
            _run(research_vault, database, tmp_path / "b.parquet", project="cardio").path
        )
        lists = withdraw(research_vault, ["1003", 1005], recipient="uni-a")
        assert [w.project for w in lists] == ["cardio", "diabetes"]
        by_project = {w.project: set(w.pseudonyms) for w in lists}
        assert by_project["diabetes"] == set(a.column("pid").to_pylist()[3:6:2])
        assert by_project["cardio"] == set(b.column("pid").to_pylist()[3:6:2])
        assert (
            withdraw(research_vault, [1003], recipient="uni-a", project="cardio")[0].state == "live"
        )
        with pytest.raises(ConfigurationError, match="no dataset key"):
            withdraw(research_vault, [1003], recipient="uni-z")

    def test_after_destroy_key_pseudonyms_cannot_be_recomputed(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """A destroyed dataset key refuses new exports and withdraw says the dataset is unlinkable."""
        _run(research_vault, database, tmp_path / "a.parquet")
        assert destroy_key(research_vault, project="diabetes", recipient="uni-a")
        assert not destroy_key(research_vault, project="diabetes", recipient="uni-a")
        with pytest.raises(ExportRefusedError, match="was destroyed"):
            _run(research_vault, database, tmp_path / "b.parquet")
        (entry,) = withdraw(research_vault, [1003], recipient="uni-a")
        assert (entry.state, entry.pseudonyms) == ("destroyed", ())
        with pytest.raises(KeyStoreError, match="destroyed"):
            research_vault.dataset_key("research", "dataset:diabetes/uni-a@v1")
        with pytest.raises(KeyStoreError, match="does not exist"):
            destroy_key(research_vault, project="nothing", recipient="uni-a")

    def test_destroy_reaches_another_vault_on_the_same_key_store(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """A second process (vault) opening the key store after the destroy cannot get the key."""
        _run(research_vault, database, tmp_path / "a.parquet")
        destroy_key(research_vault, project="diabetes", recipient="uni-a")
        provider = research_vault.provider_for("research")
        with Vault(
            provider=provider, store=f"sqlite:///{tmp_path / 'keys.db'}", domains=["research"]
        ) as other:
            with pytest.raises(KeyStoreError, match="destroyed"):
                other.dataset_key("research", "dataset:diabetes/uni-a@v1")

    def test_pseudonym_function_matches_the_file(
        self, research_vault: Vault, database: sa.Engine, tmp_path: Path
    ) -> None:
        """vaultkit.research.pseudonym under the dataset key is what the file holds."""
        table = pq.read_table(_run(research_vault, database, tmp_path / "a.parquet").path)
        key = research_vault.dataset_key("research", "dataset:diabetes/uni-a@v1", create=False)
        assert table.column("pid").to_pylist()[0] == pseudonym(key, 1000) == pseudonym(key, "1000")


def test_a_query_source_reads_only_the_named_columns(
    research_vault: Vault, database: sa.Engine, tmp_path: Path
) -> None:
    """A SELECT as source works, and only the spec's source columns are read from it."""
    text = spec_text().replace(
        'source = "members"', "query = \"SELECT * FROM members WHERE sex = 'F'\""
    )
    report = export(research_vault, parse_spec(text), tmp_path / "q.parquet", database=database)
    table = pq.read_table(report.path)
    assert report.rows_in == 40 and set(table.column("sex").to_pylist()) == {"F"}
    assert "phone" not in table.column_names


def test_a_source_changed_between_the_passes_aborts(
    research_vault: Vault, database: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row added after the k check (pass 1) aborts the write (pass 2): no file is left."""
    from vaultkit.research import _export

    manifest = _export._manifest

    def insert_then_manifest(*args: Any, **kwargs: Any) -> dict[str, object]:
        with database.begin() as conn:  # another writer, between the two passes
            conn.execute(
                sa.text(
                    "INSERT INTO members (member_id, postal_code, birth_date, sex) "
                    "VALUES (5000, '3000', '1970-01-01', 'F')"
                )
            )
        return manifest(*args, **kwargs)

    monkeypatch.setattr(_export, "_manifest", insert_then_manifest)
    out = tmp_path / "a.parquet"
    with pytest.raises(ExportRefusedError, match="changed between the two passes"):
        _run(research_vault, database, out)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_pseudonyms_survive_a_kek_rotation(
    research_vault: Vault, database: sa.Engine, tmp_path: Path
) -> None:
    """Rotating the research KEK rewraps the dataset key: the next export's pseudonyms are equal."""
    before = pq.read_table(_run(research_vault, database, tmp_path / "a.parquet").path)
    report = research_vault.rotate_kek("research")
    assert report.rewrapped >= 1
    provider = research_vault.provider_for("research")
    with Vault(
        provider=provider,
        store=f"sqlite:///{tmp_path / 'keys.db'}",
        domains=["identity", KeyDomain("research", audited=True)],
        audit=f"sqlite:///{tmp_path / 'keys.db'}",
    ) as fresh:
        after = pq.read_table(_run(fresh, database, tmp_path / "b.parquet").path)
    assert before.column("pid").to_pylist() == after.column("pid").to_pylist()


def test_a_type_change_between_batches_names_no_value(tmp_path: Path) -> None:
    """A kept column whose values change type between batches fails without quoting a value."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (member_id INTEGER, sex TEXT, note)"))
        conn.execute(
            sa.text(
                "INSERT INTO t VALUES (1, 'F', 1), (2, 'F', 2), (3, 'F', 'Peeters'), (4, 'F', 'Janssens')"
            )
        )
    text = """
[export]
project = "p"
recipient = "r"
source = "t"
member = "member_id"
k = 1
batch_size = 2
quasi_identifiers = ["sex"]
[columns.sex]
transform = "keep"
[columns.note]
transform = "keep"
"""
    with Vault(
        provider=InMemoryKeyProvider(["research"]),
        store=f"sqlite:///{tmp_path / 'k.db'}",
        domains=["research"],
    ) as vault:
        with pytest.raises(ConfigurationError, match="note changed type") as caught:
            export(
                vault,
                parse_spec(text),
                tmp_path / "o.parquet",
                database=engine,
                allow_unaudited=True,
            )
    assert "Peeters" not in str(caught.value) and "Janssens" not in str(caught.value)
    assert not (tmp_path / "o.parquet").exists()


def test_an_expired_spec_is_refused(
    research_vault: Vault, database: sa.Engine, tmp_path: Path
) -> None:
    """A spec whose expires date is past refuses the export before reading anything."""
    spec = parse_spec(spec_text())
    with pytest.raises(ExportRefusedError, match="expired on 2027-12-31"):
        export(
            research_vault,
            spec,
            tmp_path / "a.parquet",
            database=database,
            today=dt.date(2028, 1, 1),
        )


def test_withdraw_is_audited_without_member_ids(
    research_vault: Vault, database: sa.Engine, tmp_path: Path
) -> None:
    """A withdraw request is an audit event with the count of members, never their ids."""
    _run(research_vault, database, tmp_path / "a.parquet")
    withdraw(research_vault, ["1003", "1004"], recipient="uni-a")
    log = research_vault.audit_log
    assert log is not None
    (event,) = [e for _, e, _, _ in log.read() if e.action == "research-withdraw"]
    assert event.count == 2 and "recipient=uni-a" in event.rows
    assert not any("1003" in r or "1004" in r for r in event.rows)


def test_a_copied_dataset_key_row_does_not_link_two_projects(
    research_vault: Vault, database: sa.Engine, tmp_path: Path
) -> None:
    """Attacker with write access to the key store: a copy of project A's wrapped key planted as
    project B's key does not unwrap (the key id is bound into the wrapping), so B's export
    cannot be made to share A's pseudonyms."""
    import dataclasses

    from vaultkit._keyring import index_key_id
    from vaultkit.errors import KeyProviderError

    _run(research_vault, database, tmp_path / "a.parquet")
    store = research_vault.store
    source = store.get(index_key_id("research", "dataset:diabetes/uni-a@v1"))
    assert source is not None
    forged_name = "dataset:cardio/uni-a@v1"
    store.insert(
        dataclasses.replace(source, dek_id=index_key_id("research", forged_name), name=forged_name)
    )
    provider = research_vault.provider_for("research")
    with Vault(
        provider=provider,
        store=f"sqlite:///{tmp_path / 'keys.db'}",
        domains=["identity", KeyDomain("research", audited=True)],
        audit=f"sqlite:///{tmp_path / 'keys.db'}",
    ) as fresh:
        with pytest.raises(KeyProviderError, match="did not unwrap"):
            _run(fresh, database, tmp_path / "b.parquet", project="cardio")
    assert not (tmp_path / "b.parquet").exists()
