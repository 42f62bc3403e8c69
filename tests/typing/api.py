"""Exercises the public API for mypy --strict; never run."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from vaultkit import CacheInfo, ContextValue, FieldCipher, KeyDomain, KeyProvider, KeyRef, Vault
from vaultkit.errors import DecryptionError, VaultkitError
from vaultkit.keys import (
    AWSKMSKeyProvider,
    LocalKeyProvider,
    PKCS11KeyProvider,
    SupportsBatchUnwrap,
    SupportsRewrap,
    VaultTransitKeyProvider,
    generate_master_key,
)
from vaultkit.keys.local import decode_master_key
from vaultkit.store import DataKeyRecord, DekState, KeyStore, MemoryKeyStore, SQLKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider


def typed_usage() -> None:
    provider: KeyProvider = LocalKeyProvider("keyring.json", master_key=b"\x00" * 32)
    memory: KeyProvider = InMemoryKeyProvider(["identity"])
    counting: KeyProvider = CountingKeyProvider(memory)
    store: KeyStore = SQLKeyStore(sa.create_engine("sqlite://"))
    vault = Vault(
        provider=provider,
        store=store,
        domains=[KeyDomain("identity"), "medical"],
        providers={"medical": counting},
        dek_max_age=dt.timedelta(days=1),
    )
    context: dict[str, ContextValue] = {"table": "members", "column": "name", "row": uuid.uuid4()}
    blob: bytes = vault.encrypt("Jan", domain="identity", context=context)
    blob = vault.encrypt(Decimal("1.5"), domain="identity", pad_to=16)
    value = vault.decrypt(blob, context=context, domain="identity")
    if isinstance(value, str):
        value.upper()
    field: FieldCipher = vault.field("medical", table="members", column="note", row_bound=True)
    field.decrypt(field.encrypt({"a": [1]}, row=17), row=17)
    info: CacheInfo = vault.cache_info()
    ref: KeyRef = provider.primary("identity")
    records: list[DataKeyRecord] = list(MemoryKeyStore().records(state=DekState.ACTIVE))
    key_text: str = generate_master_key()
    try:
        vault.decrypt(b"")
    except DecryptionError as exc:
        error: VaultkitError = exc
    with vault:
        pass
    del info, ref, records, key_text, error


# -- SQLAlchemy: the model a user writes type-checks under mypy --strict -------------------------

from sqlalchemy import String, Text, select  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

import vaultkit.sqla  # noqa: E402
from vaultkit.search import digits, first_char, fold_name, name_tokens, year  # noqa: E402
from vaultkit.sqla import BlindIndex, Encrypted, EncryptedCell  # noqa: E402


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(Encrypted(String(320), domain="identity"))
    email_index = BlindIndex("email", normalize=str.lower)
    note: Mapped[str | None] = mapped_column(Encrypted(Text, domain="medical", row_key="id"))


def orm_usage(vault: Vault, session: Session) -> None:
    vaultkit.sqla.configure(vault)
    found: Member = session.scalars(select(Member).where(Member.email_index == "a@b.be")).one()
    email: str = found.email
    note: str | None = found.note
    cell = EncryptedCell(Encrypted(Text, domain="medical"), b"")
    count: int = vaultkit.sqla.count_plaintext(session, Member.email)
    del email, note, cell, count


class Person(Base):
    """Search indexes (issue 19): the declarations and their lookups type-check."""

    __tablename__ = "people"
    id: Mapped[int] = mapped_column(primary_key=True)
    postal_code: Mapped[str] = mapped_column(Encrypted(String(8), domain="identity"))
    birth_date: Mapped[dt.date] = mapped_column(Encrypted(sa.Date, domain="identity"))
    last_name: Mapped[str] = mapped_column(Encrypted(String(100), domain="identity"))
    locator = vaultkit.sqla.CompoundIndex(
        vaultkit.sqla.Part("postal_code", digits(4)),
        vaultkit.sqla.Part("birth_date", year),
        vaultkit.sqla.Part("last_name", first_char),
        bits=16,
    )
    last_name_p3 = vaultkit.sqla.PrefixIndex("last_name", length=3, normalize=fold_name, bits=16)
    birth_year = vaultkit.sqla.BucketIndex("birth_date", unit="year", bits=12)
    surname = BlindIndex("last_name", normalize=fold_name, partitions=4, bits=20)


def search_usage(session: Session) -> None:
    born = dt.date(1980, 5, 1)
    people: list[Person] = list(
        session.scalars(
            select(Person).where(
                Person.locator.match(postal_code="1000", birth_date=born, last_name="Janssens"),
                Person.last_name_p3.startswith("jan"),
                Person.birth_year.between(born, born, exact=True),
                Person.surname == "janssens",
            )
        )
    )
    tokens: tuple[str, ...] = name_tokens("Smith-Jones")
    del people, tokens


def typed_providers() -> None:
    """The lazily exported providers are classes mypy knows; capabilities narrow with isinstance."""
    remote: list[KeyProvider] = [
        AWSKMSKeyProvider(region="eu-west-1"),
        VaultTransitKeyProvider("https://bao.internal:8200", token="t"),
        PKCS11KeyProvider("/usr/lib/softhsm/libsofthsm2.so", token_label="t", pin="1234"),
    ]
    master: bytes = decode_master_key(generate_master_key(), source="a key")
    counting = CountingKeyProvider(LocalKeyProvider("keyring.json", master_key=master))
    ref = counting.primary("identity")
    if isinstance(counting, SupportsRewrap):
        counting.rewrap(ref, ref, b"", context=b"")
    if isinstance(remote[1], SupportsBatchUnwrap):
        remote[1].unwrap_many([(ref, b"", b"")])


class Consultation(Base):
    """A subject-scoped column, and the erasure callback built for it (issue 16)."""

    __tablename__ = "consultations"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_id: Mapped[int]
    chat: Mapped[str | None] = mapped_column(
        Encrypted(Text, domain="chats", row_key="id", subject="member_id", on_erased="null")
    )


def erasure_usage(session: Session) -> None:
    cells = vaultkit.sqla.erasure_cells(Base.metadata, session.get_bind().engine, 42)
    rows: dict[str, int] = cells()
    bound = vaultkit.sqla.RowBound("text", uuid.uuid4(), subject=42)
    misplaced: dict[str, list[object]] = vaultkit.sqla.misplaced_cells(
        [Consultation], session.get_bind().engine
    )
    del rows, bound, misplaced


def typed_scopes() -> None:
    from vaultkit import Retention, Subject
    from vaultkit.errors import RetentionExpiredError, SubjectErasedError, ValueErasedError
    from vaultkit.store import KeySummary, SubjectRecord, SupportsScopedKeys

    chat = KeyDomain(
        "chat",
        dek_scope="bucket",
        bucket=dt.timedelta(hours=1),
        retention=Retention("PT72H", after="capture"),
    )
    contract = KeyDomain(
        "contract",
        dek_scope="subject",
        retention=Retention("P5Y", after="relationship_end", kind="no_less_than", ground="law"),
    )
    vault = Vault(
        provider=InMemoryKeyProvider(),
        store=MemoryKeyStore(),
        domains=[chat, contract],
        clock=lambda: dt.datetime.now(dt.UTC),
    )
    member: Subject = uuid.uuid4()
    blob: bytes = vault.encrypt("claim", domain="contract", subject=member)
    field: FieldCipher = vault.field("contract", table="claims", column="text")
    blob = field.encrypt("claim", subject="m-17")
    ref: str = vault.subject_ref("contract", member)
    count: int = vault.end_relationship(member, at=dt.datetime.now(dt.UTC))
    vault.allow_subject(member, domains=["contract"])
    deadline: dt.datetime = Retention("P5Y").deadline(dt.datetime.now(dt.UTC))
    store = vault.store
    if isinstance(store, SupportsScopedKeys):
        summary: KeySummary = store.key_summary("chat", deadline, bucket=chat.bucket)
        subject: SubjectRecord | None = store.get_subject("contract", ref)
        print(summary.live, subject, count)
    try:
        vault.decrypt(blob)
    except SubjectErasedError as exc:
        reason: str = exc.reason
        print(reason)
    except RetentionExpiredError:
        pass
    except ValueErasedError as exc:
        where: str | None = exc.domain
        print(where)


# -- backups: version destruction, backup modes, shred epochs (0.3.0) --------------------------


def backups_usage(provider: KeyProvider) -> None:
    from vaultkit.keys import SupportsVersionDestruction, VersionDestruction

    vault = Vault(
        provider=provider,
        store="sqlite://",
        domains=[KeyDomain("medical", dek_scope="subject")],
        erasure_ledger="/var/lib/vaultkit/erasures.jsonl",
        key_store_backup_retention=dt.timedelta(days=35),
        shred_epoch_interval=dt.timedelta(days=7),
    )
    report = vault.shred_epoch("medical", batch=500)
    versions: tuple[int, ...] = report.kek_versions_destroyed
    final: dt.datetime | None = report.final_at
    if isinstance(provider, SupportsVersionDestruction):
        done: VersionDestruction = provider.destroy_version(provider.versions("medical")[0])
        delay: dt.timedelta = provider.destruction_delay
        del done, delay
    del versions, final


# -- research exports (0.4.0) --------------------------------------------------------------------


def research_usage(vault: Vault) -> None:
    from vaultkit.errors import ExportRefusedError
    from vaultkit.research import (
        ExportReport,
        ExportSpec,
        Withdrawal,
        destroy_key,
        export,
        load_spec,
        pseudonym,
        withdraw,
    )

    spec: ExportSpec = load_spec("cohort.toml")
    try:
        report: ExportReport = export(vault, spec, "cohort.parquet", database="sqlite:///app.db")
        achieved: int | None = report.achieved_k
        print(report.manifest_sha256, achieved)
    except ExportRefusedError as exc:
        print(exc)
    lists: list[Withdrawal] = withdraw(vault, ["17"], recipient="uni-a", project=spec.project)
    name: str = pseudonym(vault.dataset_key("research", "dataset:p/r@v1", create=False), 17)
    gone: bool = destroy_key(vault, project=spec.project, recipient="uni-a")
    logged: bool = vault.record_event("research-export", "research", count=1, facts={"a": "b"})
    del lists, name, gone, logged


def typed_subject_export(vault: Vault, session: sa.orm.Session, metadata: sa.MetaData) -> None:
    from vaultkit.subjects import SubjectExport, SubjectMap, collect, export_subject

    subjects: SubjectMap = collect(metadata)
    export: SubjectExport = vault.export_subject(session, "m-17", "portability", subjects=subjects)
    restricted: SubjectExport | None = export.restricted
    data: dict[str, object] = export_subject(vault, session, 17, subjects=metadata).to_dict()
    del restricted, data


def typed_subject_import_and_requests(
    vault: Vault, session: sa.orm.Session, metadata: sa.MetaData, path: Path
) -> None:
    from vaultkit.subjects import ImportReport, RequestLog, SubjectRequest, collect

    report: ImportReport = vault.import_subject(session, path, subjects=collect(metadata))
    rows: int = report.rows
    log: RequestLog = vault.requests
    request: SubjectRequest = log.open("DSR-1", "access", "m-17")
    left: int = request.days_remaining()
    late: bool = request.overdue(dt.datetime.now(dt.UTC))
    extended: SubjectRequest = log.extend("DSR-1", "complex request")
    done: SubjectRequest = log.complete("DSR-1", status="refused", motive="unfounded")
    open_ones: list[SubjectRequest] = log.list(open_only=True, subject="m-17")
    del rows, left, late, extended, done, open_ones


class Searched(Base):
    """A token index and the planner (issue 19)."""

    __tablename__ = "searched"
    id: Mapped[int] = mapped_column(primary_key=True)
    last_name: Mapped[str] = mapped_column(Encrypted(String(100), domain="identity"))
    name_tokens = vaultkit.sqla.TokenIndex("last_name", bits=20)


def token_search_usage(session: Session, engine: sa.Engine) -> None:
    from vaultkit.search import Plan, PlannedIndex, plan

    found: list[Searched] = list(
        session.scalars(select(Searched).where(Searched.name_tokens.contains("jones")))
    )
    counts: dict[str, int] = vaultkit.sqla.rewrite_terms(engine, Searched.name_tokens, batch=500)
    planned: Plan = plan(
        rows=1_000_000,
        distinct=110_000,
        indexes=[PlannedIndex("locator", "compound", ("postal_code", "birth_date"), 16)],
    )
    width: int | None = planned.recommended_bits
    ok: bool = vaultkit.sqla.plan_column(Searched, "last_name", rows=10, distinct=5).ok
    del found, counts, width, ok
