"""Security review of the asyncio support: attacks on AsyncSession reads of guarded domains.

Each test is one attack (threat model, DESIGN.md §12): a passing test documents a defence.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

import vaultkit.sqla
from tests._support import watchdog
from vaultkit import KeyDomain, Principal, SealedValue, Vault, acting_as
from vaultkit.errors import AccessDeniedError, AuditError
from vaultkit.sqla import Encrypted
from vaultkit.testing import InMemoryKeyProvider

TIMEOUT = 60.0
MEMBERS = 3
COACH = Principal("coach", grants={"medical"})
HANDLER = Principal("handler")


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "atk_patients"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Encrypted(sa.String(200), domain="identity"))
    note: Mapped[str | None] = mapped_column(Encrypted(sa.Text, domain="medical", row_key="id"))
    claims: Mapped[list[Claim]] = relationship(back_populates="patient")


class Claim(Base):
    __tablename__ = "atk_claims"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    patient_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("atk_patients.id"))
    report: Mapped[str | None] = mapped_column(Encrypted(sa.Text, domain="medical"))
    patient: Mapped[Patient] = relationship(back_populates="claims")


def domains(on_denied: str = "seal") -> list[Any]:
    return ["identity", KeyDomain("medical", restricted=True, audited=True, on_denied=on_denied)]


@pytest.fixture(autouse=True)
def _unconfigure() -> Iterator[None]:
    yield
    vaultkit.sqla.configure(None)


@pytest.fixture
def pg_database(postgres_engine: sa.Engine) -> Iterator[str]:
    name = f"vk_atk_{uuid.uuid4().hex[:12]}"
    with postgres_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield postgres_engine.url.set(database=name).render_as_string(hide_password=False)
    with postgres_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture(params=["aiosqlite", pytest.param("asyncpg", marks=pytest.mark.postgres)])
def async_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "aiosqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    url = sa.make_url(request.getfixturevalue("pg_database"))
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def note_of(n: int) -> str:
    return f"secret diagnosis {n} of patient"


async def seed(engine: AsyncEngine, vault: Vault) -> None:
    vaultkit.sqla.configure(vault)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    with acting_as(Principal("writer", grants={"medical"}), purpose="intake"):
        async with AsyncSession(engine) as session:
            for n in range(MEMBERS):
                patient = Patient(name=f"patient {n}", note=note_of(n))
                patient.claims = [Claim(report=f"claim report {n}")]
                session.add(patient)
            await session.commit()


def seed_sync(url: str, vault: Vault) -> None:
    vaultkit.sqla.configure(vault)
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    with acting_as(Principal("writer", grants={"medical"}), purpose="intake"):
        with sa.orm.Session(engine) as session:
            for n in range(MEMBERS):
                patient = Patient(name=f"patient {n}", note=note_of(n))
                patient.claims = [Claim(report=f"claim report {n}")]
                session.add(patient)
            session.commit()
    engine.dispose()


def run(main: Any) -> None:
    with watchdog(TIMEOUT + 30):
        asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def audit_counts(vault: Vault) -> collections.Counter[tuple[str, str]]:
    assert vault.audit_log is not None
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for _seq, event, _prev, _mac in vault.audit_log.read():
        if event.principal in ("coach", "handler"):
            counts[event.principal, event.action] += event.count
    return counts


class Setup:
    """Data in one database, key store and audit log in files of their own (sync pysqlite)."""

    def __init__(self, tmp_path: Any, url: str | None = None, **options: Any) -> None:
        self.url = url or f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
        self.store = f"sqlite:///{tmp_path / 'keys.db'}" if tmp_path is not None else self.url
        self.audit = f"sqlite:///{tmp_path / 'audit.db'}" if tmp_path is not None else self.url
        self.provider = InMemoryKeyProvider(["identity", "medical"])
        self.options = options

    def vault(self, **more: Any) -> Vault:
        return Vault(
            provider=self.provider,
            store=self.store,
            audit=self.audit,
            domains=more.pop("domains", None) or domains(),
            **{**self.options, **more},
        )


# -- 1. plaintext across scopes -----------------------------------------------------------------


def test_object_kept_across_acting_as_blocks_is_sealed_for_later_scopes(
    async_url: str, tmp_path: Any
) -> None:
    """Attack: the coach's request loads patients; the objects (in a cache, a global, a shared
    session) are read later by the claims handler, and by code outside any block. Defence: the
    coach's cache lives in the coach's scope and is emptied with it."""

    async def main() -> None:
        setup = Setup(tmp_path if "sqlite" in async_url else None, async_url)
        engine = create_async_engine(async_url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                session = AsyncSession(engine)
                with acting_as(COACH, purpose="care"):
                    kept = (await session.scalars(sa.select(Patient))).all()
                    assert sorted(p.note for p in kept) == [note_of(n) for n in range(MEMBERS)]
                with acting_as(HANDLER, purpose="claims"):
                    assert all(isinstance(p.note, SealedValue) for p in kept)
                assert all(isinstance(p.note, SealedValue) for p in kept)  # anonymous
                await session.close()
                await vault.aflush_audit()
                assert audit_counts(vault)["coach", "decrypt"] == MEMBERS
        finally:
            await engine.dispose()

    run(main)


def test_run_sync_refresh_populate_existing_merge_under_another_principal(tmp_path: Any) -> None:
    """Attack: in one AsyncSession the coach opens the notes; the handler then reaches the same
    identity-map objects through ``run_sync``, ``refresh``, ``populate_existing``, ``get`` and
    ``merge``. Defence: every path gives the handler a sealed value."""

    async def main() -> None:
        setup = Setup(tmp_path)
        engine = create_async_engine(setup.url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                async with AsyncSession(engine) as session:
                    with acting_as(COACH, purpose="care"):
                        patients = (await session.scalars(sa.select(Patient))).all()
                        assert all(isinstance(p.note, str) for p in patients)
                    with acting_as(HANDLER, purpose="claims"):
                        synced = await session.run_sync(
                            lambda s: [p.note for p in s.scalars(sa.select(Patient))]
                        )
                        assert all(isinstance(n, SealedValue) for n in synced)
                        await session.refresh(patients[0])
                        assert isinstance(patients[0].note, SealedValue)
                        again = (
                            await session.scalars(
                                sa.select(Patient).execution_options(populate_existing=True)
                            )
                        ).all()
                        assert all(isinstance(p.note, SealedValue) for p in again)
                        got = await session.get(Patient, patients[1].id)
                        assert got is not None and isinstance(got.note, SealedValue)
                        detached = Patient(id=patients[2].id, name="x")
                        merged = await session.merge(detached)
                        assert isinstance(merged.note, SealedValue)
                        await session.rollback()
                    with acting_as(COACH, purpose="care"):
                        # The coach's own new scope opens them again under the coach's grant.
                        await session.refresh(patients[0])
                        assert patients[0].note == note_of(0)
                await vault.aflush_audit()
                counts = audit_counts(vault)
                assert counts["handler", "decrypt"] == 0
                assert counts["handler", "denied"] >= MEMBERS
        finally:
            await engine.dispose()

    run(main)


def test_stream_scalars_gives_each_scope_its_own_answer(tmp_path: Any) -> None:
    """Attack: ``AsyncSession.stream_scalars`` (yield_per) skips the statement hook: are the
    values decrypted in the result processor under whoever consumes the stream, and handed on?
    Defence: the handler gets sealed values, the coach plaintext (or a clear error)."""

    async def main() -> None:
        setup = Setup(tmp_path)
        engine = create_async_engine(setup.url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                async with AsyncSession(engine) as session:
                    with acting_as(HANDLER, purpose="claims"):
                        stream = await session.stream_scalars(
                            sa.select(Patient).execution_options(yield_per=2)
                        )
                        handler_saw = []
                        async for patient in stream:
                            handler_saw.append(await patient.awaitable_attrs.note)
                        assert all(isinstance(n, SealedValue) for n in handler_saw)
                async with AsyncSession(engine) as session:
                    with acting_as(COACH, purpose="care"):
                        stream = await session.stream_scalars(
                            sa.select(Patient).execution_options(yield_per=2)
                        )
                        coach_saw = [await p.awaitable_attrs.note async for p in stream]
                        assert sorted(coach_saw) == [note_of(n) for n in range(MEMBERS)]
                await vault.aflush_audit()
                counts = audit_counts(vault)
                assert counts["handler", "decrypt"] == 0
                assert counts == {("handler", "denied"): MEMBERS, ("coach", "decrypt"): MEMBERS}
                async with AsyncSession(engine) as session:
                    with acting_as(HANDLER, purpose="claims"):
                        stream = await session.stream_scalars(
                            sa.select(Patient).execution_options(yield_per=2)
                        )
                        assert all([isinstance(p.note, SealedValue) async for p in stream])
        finally:
            await engine.dispose()

    run(main)


# -- 2. eager loads: are related values opened with the statement? ----------------------------


def loop_statements(vault: Vault, loop_thread: int) -> list[str]:
    seen: list[str] = []
    assert vault.audit_log is not None
    for own in (vault.audit_log.engine, vault.store.engine):  # type: ignore[attr-defined]
        sa.event.listen(
            own,
            "before_cursor_execute",
            lambda _c, _cur, sql, *_a: (
                seen.append(sql.split()[0].upper())
                if threading.get_ident() == loop_thread
                else None
            ),
        )
    return seen


@pytest.mark.parametrize(
    "how",
    [
        "joinedload",
        "selectinload",
        "columns",
        "awaitable_attrs",
    ],
)
def test_related_values_are_opened_with_the_statement(tmp_path: Any, how: str) -> None:
    """Attack (availability): the coach loads patients with their claims eagerly and reads the
    claims' medical reports in the coroutine. Are the related entities' values opened inside
    the greenlet, or does the attribute read write its audit event on the loop's thread (the
    stall and the SQLite 'database is locked' the statement hook was made to prevent)?"""

    async def main() -> None:
        setup = Setup(tmp_path)
        engine = create_async_engine(setup.url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                on_loop = loop_statements(vault, threading.get_ident())
                with acting_as(COACH, purpose="care"):
                    async with AsyncSession(engine) as session:
                        if how == "columns":
                            # Two entities per row: a Row, not an entity.
                            statement = sa.select(Patient, Claim).join(Patient.claims)
                            claims = [c for _p, c in (await session.execute(statement)).all()]
                        elif how == "awaitable_attrs":
                            patients = (await session.scalars(sa.select(Patient))).all()
                            claims = [c for p in patients for c in await p.awaitable_attrs.claims]
                        else:
                            loader = joinedload if how == "joinedload" else selectinload
                            statement = sa.select(Patient).options(loader(Patient.claims))
                            patients = (await session.scalars(statement)).unique().all()
                            claims = [c for p in patients for c in p.claims]
                        reports = sorted(c.report for c in claims)
                assert reports == [f"claim report {n}" for n in range(MEMBERS)]
                assert on_loop == [], f"key-store/audit I/O on the loop's thread: {on_loop}"
                await vault.aflush_audit()
        finally:
            await engine.dispose()

    run(main)


def test_joinedload_on_one_sqlite_file_does_not_lock(tmp_path: Any) -> None:
    """The same attack with data, key store and audit log in one SQLite file (the set-up of the
    'database is locked' failures): the joined claims' reports must read without error."""

    async def main() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
        provider = InMemoryKeyProvider(["identity", "medical"])
        engine = create_async_engine(url)
        try:
            # Seeded without audit: a write's audit event on the file a session is writing is
            # the known 'database is locked' failure of test_asyncio.py (sync sessions too).
            unaudited = ["identity", KeyDomain("medical", restricted=True)]
            with Vault(provider=provider, store=url, domains=unaudited) as writer:
                await asyncio.to_thread(seed_sync, url.replace("+aiosqlite", ""), writer)
            with Vault(provider=provider, store=url, domains=domains()) as vault:
                vaultkit.sqla.configure(vault)
                with acting_as(COACH, purpose="care"):
                    async with AsyncSession(engine) as session:
                        statement = sa.select(Patient).options(joinedload(Patient.claims))
                        patients = (await session.scalars(statement)).unique().all()
                        reports = sorted(c.report for p in patients for c in p.claims)
                assert reports == [f"claim report {n}" for n in range(MEMBERS)]
                await vault.aflush_audit()
        finally:
            await engine.dispose()

    run(main)


# -- 3. audit: fail closed, counts --------------------------------------------------------------


def test_audit_log_down_during_an_async_read_fails_closed(async_url: str, tmp_path: Any) -> None:
    """Attack: the audit table is dropped (or the log unreachable) before an AsyncSession read.
    Defence: no plaintext reaches the coroutine: the attribute read raises AuditError, whose
    message and traceback frames hold no plaintext."""

    async def main() -> None:
        setup = Setup(tmp_path if "sqlite" in async_url else None, async_url)
        engine = create_async_engine(async_url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                assert vault.audit_log is not None
                broken = 0

                real = vault.audit_log.append

                def refuse(events: Any) -> None:
                    nonlocal broken
                    if not events:
                        return
                    broken += 1
                    raise AuditError("audit log unavailable")

                vault.audit_log.append = refuse  # type: ignore[method-assign]
                with acting_as(COACH, purpose="care"):
                    async with AsyncSession(engine) as session:
                        patients = (await session.scalars(sa.select(Patient))).all()
                        assert len(patients) == MEMBERS
                        for patient in patients:
                            assert isinstance(patient.name, str)  # not audited
                            with pytest.raises(AuditError) as caught:
                                _ = patient.note
                            text = "".join(traceback.format_exception(caught.value))
                            assert "secret diagnosis" not in text
                            for frame, _line in traceback.walk_tb(caught.value.__traceback__):
                                for value in frame.f_locals.values():
                                    assert "secret diagnosis" not in repr(value)[:10_000]
                assert broken >= MEMBERS
                vault.audit_log.append = real  # type: ignore[method-assign]
        finally:
            await engine.dispose()

    run(main)


def test_denials_with_on_denied_raise_are_audited_once_per_read(tmp_path: Any) -> None:
    """Attack on the audit's accuracy: a domain whose denial raises. The statement's open-ahead
    audits a denial for each value, swallows the AccessDeniedError, and the access then denies
    (and audits) again: each value read once should count one denial."""

    async def main() -> None:
        setup = Setup(tmp_path)
        engine = create_async_engine(setup.url)
        try:
            with setup.vault(domains=domains("raise")) as writer:
                await seed(engine, writer)
            with setup.vault(domains=domains("raise")) as vault:
                vaultkit.sqla.configure(vault)
                with acting_as(HANDLER, purpose="claims"):
                    async with AsyncSession(engine) as session:
                        patients = (await session.scalars(sa.select(Patient))).all()
                        for patient in patients:
                            with pytest.raises(AccessDeniedError):
                                _ = patient.note
                await vault.aflush_audit()
                assert audit_counts(vault)["handler", "denied"] == MEMBERS
        finally:
            await engine.dispose()

    run(main)


# -- 4. cancellation while an audit write is offloaded ------------------------------------------


async def saturate(executor: concurrent.futures.ThreadPoolExecutor) -> threading.Event:
    """Occupy the executor's only worker until the returned event is set."""
    release = threading.Event()
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(TIMEOUT)

    asyncio.get_running_loop().run_in_executor(executor, block)
    while not started.is_set():
        await asyncio.sleep(0.01)
    return release


def test_cancelled_aflush_audit_keeps_its_events(tmp_path: Any) -> None:
    """Attack: ``await asyncio.wait_for(vault.aflush_audit(), t)`` times out while the worker
    pool is busy (thread-pool exhaustion), so the offloaded write has not started and is
    cancelled with the task. Defence: the events of the batches (reads that returned plaintext)
    are kept and written by the next flush, never dropped."""

    async def main() -> None:
        setup = Setup(tmp_path)
        engine = create_async_engine(setup.url)
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        asyncio.get_running_loop().set_default_executor(executor)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                with acting_as(COACH, purpose="care"):
                    async with AsyncSession(engine) as session:
                        patients = (await session.scalars(sa.select(Patient))).all()
                        assert sorted(p.note for p in patients) == [
                            note_of(n) for n in range(MEMBERS)
                        ]
                    release = await saturate(executor)
                    # The pool is freed 0.5 s later, after the timeout has cancelled the flush.
                    threading.Timer(0.5, release.set).start()
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(vault.aflush_audit(), 0.2)
                    await vault.aflush_audit()
                assert audit_counts(vault)["coach", "decrypt"] == MEMBERS
        finally:
            await engine.dispose()

    run(main)


def test_cancelled_flush_whose_write_then_fails_keeps_its_events(tmp_path: Any) -> None:
    """Attack: the task is cancelled while its offloaded audit write runs, and that write then
    fails (the log is down). Nobody sees the AuditError; the events must still be kept for the
    next write, not dropped with the cancelled task."""

    async def main() -> None:
        setup = Setup(tmp_path)
        engine = create_async_engine(setup.url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                assert vault.audit_log is not None
                real = vault.audit_log.append
                entered, release = threading.Event(), threading.Event()

                def slow_failure(events: Any) -> None:
                    entered.set()
                    release.wait(TIMEOUT)
                    raise AuditError("audit log unavailable")

                with acting_as(COACH, purpose="care"):
                    async with AsyncSession(engine) as session:
                        patients = (await session.scalars(sa.select(Patient))).all()
                        assert all(isinstance(p.note, str) for p in patients)
                    vault.audit_log.append = slow_failure  # type: ignore[method-assign]
                    flush = asyncio.ensure_future(vault.aflush_audit())
                    while not entered.is_set():
                        await asyncio.sleep(0.01)
                    flush.cancel()
                    release.set()
                    with pytest.raises((asyncio.CancelledError, AuditError)):
                        await flush
                    vault.audit_log.append = real  # type: ignore[method-assign]
                    await vault.aflush_audit()
                assert audit_counts(vault)["coach", "decrypt"] == MEMBERS
        finally:
            await engine.dispose()

    run(main)


def test_cancelled_full_batch_write_keeps_earlier_reads(tmp_path: Any) -> None:
    """Attack: a statement whose audit batch fills up is cancelled (wait_for timeout) while the
    full batch is written in a worker thread, and that write fails. The batch's earlier reads
    returned plaintext: they must stay pending, and be written once the log is back."""

    async def main() -> None:
        setup = Setup(tmp_path, audit_batch_size=2)
        engine = create_async_engine(setup.url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                assert vault.audit_log is not None
                real = vault.audit_log.append
                calls = 0
                entered, release = threading.Event(), threading.Event()

                def second_fails(events: Any) -> None:
                    nonlocal calls
                    calls += 1
                    if calls == 1:
                        return real(events)
                    entered.set()
                    release.wait(TIMEOUT)
                    raise AuditError("audit log unavailable")

                vault.audit_log.append = second_fails  # type: ignore[method-assign]

                async def read() -> None:
                    async with AsyncSession(engine) as session:
                        (await session.scalars(sa.select(Patient))).all()

                with acting_as(COACH, purpose="care"):
                    task = asyncio.ensure_future(read())
                    while not entered.is_set():
                        await asyncio.sleep(0.01)
                    task.cancel()
                    release.set()
                    with pytest.raises((asyncio.CancelledError, AuditError)):
                        await task
                    vault.audit_log.append = real  # type: ignore[method-assign]
                    await vault.aflush_audit()
                # Row 1 wrote its event at once; rows 2 and 3 filled the batch, whose write
                # failed: the failed access (row 3) is unrecorded, row 2 (returned) is kept.
                assert audit_counts(vault)["coach", "decrypt"] >= 2
        finally:
            await engine.dispose()

    run(main)


# -- 5. many tasks, one worker thread -----------------------------------------------------------


def test_many_tasks_on_a_one_thread_pool_do_not_deadlock(tmp_path: Any) -> None:
    """Attack: thread-pool exhaustion. Forty tasks under two principals share an executor of one
    worker for every key-store read and audit write: slow, but no deadlock, and correct."""

    async def main() -> None:
        setup = Setup(tmp_path, audit_batch_size=3)
        engine = create_async_engine(setup.url)
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=1)
        )
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)

                async def read(i: int) -> list[Any]:
                    with acting_as(COACH if i % 2 == 0 else HANDLER, purpose="x"):
                        await asyncio.sleep(0)
                        async with AsyncSession(engine) as session:
                            found = (await session.scalars(sa.select(Patient))).all()
                            return [p.note for p in found]

                results = await asyncio.gather(*(read(i) for i in range(40)))
                for i, notes in enumerate(results):
                    if i % 2 == 0:
                        assert sorted(notes) == [note_of(n) for n in range(MEMBERS)]
                    else:
                        assert all(isinstance(n, SealedValue) for n in notes)
                await vault.aflush_audit()
                counts = audit_counts(vault)
                assert counts["coach", "decrypt"] == 20 * MEMBERS
                assert counts["handler", "denied"] == 20 * MEMBERS
                assert counts["handler", "decrypt"] == 0
        finally:
            await engine.dispose()

    run(main)


# -- 6. objects handed between concurrent tasks; tasks outliving their block -------------------


def test_objects_handed_to_a_concurrent_task_of_another_principal_are_sealed(
    tmp_path: Any,
) -> None:
    """Attack: while the coach's block is still open (its scope cache full), the coach's task
    hands the loaded objects to a concurrent task of the claims handler (a queue, a shared
    cache). Defence: the handler's task has its own scope; the coach's cache is not its."""

    async def main() -> None:
        setup = Setup(tmp_path)
        engine = create_async_engine(setup.url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                handed: asyncio.Queue[list[Patient]] = asyncio.Queue()
                done = asyncio.Event()

                async def coach() -> None:
                    with acting_as(COACH, purpose="care"):
                        async with AsyncSession(engine) as session:
                            patients = (await session.scalars(sa.select(Patient))).all()
                            assert all(isinstance(p.note, str) for p in patients)
                            await handed.put(list(patients))
                            await done.wait()  # the block stays open meanwhile

                async def handler() -> list[Any]:
                    with acting_as(HANDLER, purpose="claims"):
                        patients = await handed.get()
                        try:
                            return [p.note for p in patients]
                        finally:
                            done.set()

                _, notes = await asyncio.gather(coach(), handler())
                assert all(isinstance(n, SealedValue) for n in notes)
                await vault.aflush_audit()
                assert audit_counts(vault)["handler", "decrypt"] == 0
        finally:
            await engine.dispose()

    run(main)


def test_a_task_created_in_a_block_does_not_outlive_its_grant(tmp_path: Any) -> None:
    """Attack: a request handler starts a background task inside the coach's block (a
    notification, a cache warm-up) and returns; the block ends. The task copied the context,
    so it still acts as the coach: it decrypts medical values after the coach's work is over,
    and its audit events name the coach. Expected: after the block, the task is anonymous."""

    async def main() -> None:
        setup = Setup(tmp_path)
        engine = create_async_engine(setup.url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                block_over = asyncio.Event()

                async def background() -> list[Any]:
                    await block_over.wait()
                    async with AsyncSession(engine) as session:
                        return [p.note for p in (await session.scalars(sa.select(Patient))).all()]

                with acting_as(COACH, purpose="care"):
                    task = asyncio.create_task(background())
                block_over.set()
                notes = await task
                await vault.aflush_audit()
                assert all(isinstance(n, SealedValue) for n in notes), "plaintext after the block"
        finally:
            await engine.dispose()

    run(main)


# -- 7. a slow, failing audit log must not freeze the loop --------------------------------------


async def max_lag_during(work: Any) -> tuple[Any, float]:
    """Run ``work`` while a ticker sleeps 1 ms at a time; return its result and the worst lag."""
    stop = asyncio.Event()
    lags: list[float] = [0.0]
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        while not stop.is_set():
            start = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - start - 0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    try:
        result = await work
    finally:
        stop.set()
        await ticker
    return result, max(lags)


def test_unreachable_audit_log_does_not_stall_the_loop_on_attribute_reads(tmp_path: Any) -> None:
    """Attack (availability): the audit database is unreachable; each write attempt takes a
    connect timeout (0.5 s here) and fails. The statement's open-ahead fails for every value,
    in worker threads; then each attribute read in the coroutine retried the write inline, on
    the loop's thread: every task of the process froze for a connect timeout per value read.
    Defence wanted: the reads still fail closed (AuditError), without I/O on the loop."""
    delay = 0.5

    async def main() -> None:
        setup = Setup(tmp_path)
        engine = create_async_engine(setup.url)
        try:
            with setup.vault() as writer:
                await seed(engine, writer)
            with setup.vault() as vault:
                vaultkit.sqla.configure(vault)
                assert vault.audit_log is not None
                real = vault.audit_log.append

                def unreachable(events: Any) -> None:
                    if not events:
                        return
                    threading.Event().wait(delay)
                    raise AuditError("an audit event could not be written: OperationalError")

                vault.audit_log.append = unreachable  # type: ignore[method-assign]
                with acting_as(COACH, purpose="care"):
                    async with AsyncSession(engine) as session:
                        patients = (await session.scalars(sa.select(Patient))).all()

                        async def read_all() -> list[type[BaseException]]:
                            failures = []
                            for patient in patients:
                                try:
                                    _ = patient.note
                                except AuditError as exc:
                                    failures.append(type(exc))
                            return failures

                        failures, lag = await max_lag_during(read_all())
                        assert failures == [AuditError] * MEMBERS  # fail closed
                        assert lag < delay / 2, f"the loop stalled for {lag:.2f}s"
                        # Once the log is back, the next statement opens the values.
                        vault.audit_log.append = real  # type: ignore[method-assign]
                        again = (await session.scalars(sa.select(Patient))).all()
                        assert sorted(p.note for p in again) == [note_of(n) for n in range(MEMBERS)]
                await vault.aflush_audit()
        finally:
            await engine.dispose()

    run(main)
