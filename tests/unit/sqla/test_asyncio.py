"""asyncio applications: AsyncSession on aiosqlite, asyncpg and psycopg, many tasks at once."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.util.concurrency import greenlet_spawn

import vaultkit.sqla
from tests._support import watchdog
from vaultkit import KeyDomain, Principal, SealedValue, Vault, acting_as
from vaultkit._offload import sync_url
from vaultkit.errors import ConfigurationError
from vaultkit.keys.provider import KeyRef
from vaultkit.sqla import Encrypted
from vaultkit.testing import InMemoryKeyProvider

TASKS = 50
MEMBERS = 8
TIMEOUT = 60.0  # seconds for one burst; a deadlocked loop never gets there: see watchdog()


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Encrypted(sa.String(200), domain="identity"))
    note: Mapped[str | None] = mapped_column(Encrypted(sa.Text, domain="medical", row_key="id"))


DOMAINS = ["identity", KeyDomain("medical", restricted=True, audited=True)]


@pytest.fixture
def pg_database(postgres_engine: sa.Engine) -> Iterator[str]:
    """A fresh PostgreSQL database (async drivers take no search-path option), dropped after."""
    name = f"vk_async_{uuid.uuid4().hex[:12]}"
    with postgres_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield postgres_engine.url.set(database=name).render_as_string(hide_password=False)
    with postgres_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture(
    params=[
        "aiosqlite",
        pytest.param("asyncpg", marks=pytest.mark.postgres),
        pytest.param("psycopg_async", marks=pytest.mark.postgres),
    ]
)
def async_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The URL of an empty database for an async driver: aiosqlite, asyncpg or psycopg."""
    if request.param == "aiosqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    url = sa.make_url(request.getfixturevalue("pg_database"))
    return url.set(drivername=f"postgresql+{request.param}").render_as_string(hide_password=False)


@pytest.fixture(autouse=True)
def _unconfigure() -> Iterator[None]:
    yield
    vaultkit.sqla.configure(None)


def principal(i: int) -> Principal:
    """Task ``i``'s principal: even ones hold the medical grant, odd ones do not."""
    return Principal(f"task-{i:02d}", grants={"medical"} if i % 2 == 0 else ())


async def seed(engine: AsyncEngine, vault: Vault) -> dict[uuid.UUID, tuple[str, str]]:
    """Create the table and MEMBERS members; return their plaintexts by id."""
    vaultkit.sqla.configure(vault)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    expected = {uuid.uuid4(): (f"member {n}", f"diagnosis of member {n}") for n in range(MEMBERS)}
    with acting_as(Principal("writer", grants={"medical"}), purpose="intake"):
        async with AsyncSession(engine) as session:
            session.add_all(Member(id=k, name=v[0], note=v[1]) for k, v in expected.items())
            await session.commit()
    return expected


async def read_all(engine: AsyncEngine, i: int) -> list[tuple[uuid.UUID, Any, Any]]:
    """Task ``i``: read every member under its own principal."""
    with acting_as(principal(i), purpose="care"):
        await asyncio.sleep(0)  # let the tasks interleave from the start
        async with AsyncSession(engine) as session:
            members = (await session.scalars(sa.select(Member))).all()
            return [(m.id, m.name, m.note) for m in members]


async def burst(engine: AsyncEngine, n: int = TASKS) -> list[list[tuple[uuid.UUID, Any, Any]]]:
    """``n`` concurrent readers, with a hard timeout."""
    tasks = [read_all(engine, i) for i in range(n)]
    return await asyncio.wait_for(asyncio.gather(*tasks), timeout=TIMEOUT)


def check_burst(
    results: list[list[tuple[uuid.UUID, Any, Any]]],
    expected: dict[uuid.UUID, tuple[str, str]],
    vault: Vault,
) -> None:
    """Each task saw the plaintext its principal may see and nothing else; the audit agrees."""
    for i, rows in enumerate(results):
        assert {m_id: name for m_id, name, _ in rows} == {k: v[0] for k, v in expected.items()}
        notes = {m_id: note for m_id, _, note in rows}
        if i % 2 == 0:
            assert notes == {k: v[1] for k, v in expected.items()}, f"task {i}"
        else:
            assert all(
                isinstance(n, SealedValue) and n.domain == "medical" for n in notes.values()
            ), f"task {i}"
    assert vault.audit_log is not None
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for _seq, event, _prev, _mac in vault.audit_log.read():
        if event.principal.startswith("task-"):
            assert event.purpose == "care"
            counts[event.principal, event.action] += event.count
    wanted = collections.Counter(
        {
            (principal(i).name, "decrypt" if i % 2 == 0 else "denied"): MEMBERS
            for i in range(len(results))
        }
    )
    assert counts == wanted
    assert vault.audit_log.verify().ok


def new_vault(provider: InMemoryKeyProvider, store: Any, **options: Any) -> Vault:
    return Vault(provider=provider, store=store, domains=DOMAINS, **options)


def test_fifty_tasks_under_different_principals(async_url: str) -> None:
    """Fifty concurrent AsyncSession readers, half without the medical grant, on each async
    driver, with the key store and audit log given as the AsyncEngine: no deadlock, each task
    gets plaintext only where its principal may, and the audit counts each principal's reads."""

    async def main() -> None:
        engine = create_async_engine(async_url)
        provider = InMemoryKeyProvider(["identity", "medical"])
        try:
            with new_vault(provider, engine) as writer:
                expected = await seed(engine, writer)
            # A fresh vault: an empty DEK cache, so the tasks start with key-store reads.
            with new_vault(provider, engine) as vault:
                vaultkit.sqla.configure(vault)
                results = await burst(engine)
                await vault.aflush_audit()
                await asyncio.to_thread(check_burst, results, expected, vault)
        finally:
            await engine.dispose()

    with watchdog(TIMEOUT + 30):
        asyncio.run(main())


@pytest.mark.parametrize("tasks", [2, TASKS])
def test_sync_engine_of_an_async_engine_does_not_deadlock(tmp_path: Any, tasks: int) -> None:
    """The ``sync_engine`` of an async engine as key store and audit log (built inside
    SQLAlchemy's greenlet, where it works at all): two tasks reading an audited domain used to
    deadlock the loop (the audit lock held across the driver's switch to the loop), fifty to
    starve the async pool (each task's session and its key-store read each held a connection)."""

    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
        provider = InMemoryKeyProvider(["identity", "medical"])
        try:
            # Everything but the burst inside greenlet_spawn, as an application had to before.
            writer = await greenlet_spawn(new_vault, provider, engine.sync_engine)
            expected = await seed(engine, writer)
            await greenlet_spawn(writer.close)
            vault = await greenlet_spawn(new_vault, provider, engine.sync_engine)
            vaultkit.sqla.configure(vault)
            results = await burst(engine, tasks)
            await greenlet_spawn(vault.flush_audit)
            await greenlet_spawn(check_burst, results, expected, vault)
            await greenlet_spawn(vault.close)
        finally:
            await engine.dispose()

    with watchdog(30):
        asyncio.run(main())


class SlowProvider(InMemoryKeyProvider):
    """An in-memory provider whose unwrap takes as long as a remote KMS on a bad day."""

    delay = 0.6

    def __init__(self, domains: list[str]) -> None:
        super().__init__(domains)
        self.unwrap_threads: set[int] = set()

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        self.unwrap_threads.add(threading.get_ident())
        time.sleep(self.delay)
        return super().unwrap(ref, wrapped, context=context)


async def max_lag_during(work: Any) -> float:
    """Run ``work`` while a ticker sleeps 1 ms at a time; return the worst oversleep (seconds)."""
    stop = asyncio.Event()
    lags: list[float] = []

    async def tick() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - start - 0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    try:
        await work
    finally:
        stop.set()
        await ticker
    return max(lags)


def test_key_store_reads_and_unwraps_leave_the_loop_running(tmp_path: Any) -> None:
    """With the documented sync URL for the key store, an AsyncSession read that needs a DEK
    unwraps it in a worker thread: a 0.3 s provider call does not stall the event loop."""
    store_url = f"sqlite:///{tmp_path / 'keys.db'}"

    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
        provider = SlowProvider(["identity", "medical"])
        try:
            with Vault(provider=provider, store=store_url, domains=["identity", "medical"]) as v:
                await seed(engine, v)
            with Vault(provider=provider, store=store_url, domains=["identity", "medical"]) as v:
                vaultkit.sqla.configure(v)
                provider.unwrap_threads.clear()
                loop_thread = threading.get_ident()
                reads = asyncio.gather(*(read_all(engine, 2 * i) for i in range(5)))
                lag = await max_lag_during(asyncio.wait_for(reads, timeout=TIMEOUT))
                assert provider.unwrap_threads, "no DEK was unwrapped"
                assert loop_thread not in provider.unwrap_threads
                # An unwrap on the loop would stall it for the whole delay; a busy machine adds a
                # few tenths at most.
                assert lag < SlowProvider.delay * 0.75, f"the loop stalled for {lag:.3f}s"
        finally:
            await engine.dispose()

    with watchdog(TIMEOUT + 30):
        asyncio.run(main())


def test_apreload_fills_the_cache_off_the_loop(tmp_path: Any) -> None:
    """``await vault.apreload(ids)`` unwraps the DEKs in a worker thread, under the task's scope:
    the burst after it makes no provider call."""
    store_url = f"sqlite:///{tmp_path / 'keys.db'}"

    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
        provider = SlowProvider(["identity", "medical"])
        try:
            with Vault(provider=provider, store=store_url, domains=DOMAINS) as v:
                await seed(engine, v)
            with Vault(provider=provider, store=store_url, domains=DOMAINS) as vault:
                vaultkit.sqla.configure(vault)
                ids = [r.dek_id for r in vault.store.records()]
                with acting_as(Principal("starter"), purpose="start-up"):
                    # No medical grant: the medical DEK is skipped, as by preload().
                    assert await vault.apreload(ids) == 1
                with acting_as(Principal("starter", grants={"medical"}), purpose="start-up"):
                    assert await vault.apreload(ids) == 1
                provider.unwrap_threads.clear()
                await asyncio.wait_for(asyncio.gather(read_all(engine, 0)), TIMEOUT)
                assert provider.unwrap_threads == set()
                await vault.aflush_audit()
        finally:
            await engine.dispose()

    with watchdog(TIMEOUT + 30):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("url", "sync"),
    [
        ("postgresql+asyncpg://u:pw@db:5433/app", "postgresql+psycopg://u:pw@db:5433/app"),
        ("postgresql+psycopg_async://u@db/app", "postgresql+psycopg://u@db/app"),
        ("sqlite+aiosqlite:////var/app.db", "sqlite+pysqlite:////var/app.db"),
        ("mysql+aiomysql://root@db/app", "mysql+pymysql://root@db/app"),
        ("postgresql+psycopg://u@db/app", "postgresql+psycopg://u@db/app"),
        ("sqlite:///app.db", "sqlite:///app.db"),
    ],
)
def test_sync_url_translates_async_drivers(url: str, sync: str) -> None:
    """Each async driver is replaced by its synchronous twin; everything else in the URL stays."""
    assert sync_url(url).render_as_string(hide_password=False) == sync


def test_sync_url_of_an_async_psycopg_engine() -> None:
    """``postgresql+psycopg`` serves both kinds: the async engine's URL keeps its driver."""
    engine = create_async_engine("postgresql+psycopg://u@db/app")
    assert engine.sync_engine.dialect.is_async
    assert sync_url(engine.url, is_async=True).drivername == "postgresql+psycopg"


def test_async_memory_sqlite_is_refused() -> None:
    """An in-memory aiosqlite database cannot be reached by another engine: refused clearly."""
    with pytest.raises(ConfigurationError, match="in-memory SQLite"):
        Vault(
            provider=InMemoryKeyProvider(["identity"]),
            store="sqlite+aiosqlite://",
            domains=["identity"],
        )


def test_async_url_key_store_gets_a_sync_engine(tmp_path: Any) -> None:
    """An aiosqlite URL for ``store=`` opens the key store with pysqlite, outside any loop."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    with Vault(provider=InMemoryKeyProvider(["identity"]), store=url, domains=["identity"]) as v:
        blob = v.encrypt("x", domain="identity")
        assert v.decrypt(blob) == "x"
        assert v.store.engine.url.drivername == "sqlite+pysqlite"  # type: ignore[attr-defined]


def test_full_audit_batches_written_from_many_tasks(tmp_path: Any) -> None:
    """With audit batches of 3 row keys and ten tasks per principal, the batches that fill up
    inside SQLAlchemy's greenlet are written off the loop while the principal's other tasks go on
    adding to them: every read is counted and every row key logged once."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    shared = [Principal(f"shared-{n}", grants={"medical"}) for n in range(2)]

    async def read(i: int) -> None:
        with acting_as(shared[i % 2], purpose="care"):
            async with AsyncSession(engine) as session:
                for member in (await session.scalars(sa.select(Member))).all():
                    assert isinstance(member.note, str)
                    await asyncio.sleep(0)

    async def main() -> None:
        provider = InMemoryKeyProvider(["identity", "medical"])
        try:
            with new_vault(provider, url) as writer:
                await seed(engine, writer)
            with new_vault(provider, url, audit_batch_size=3) as vault:
                vaultkit.sqla.configure(vault)
                await asyncio.wait_for(asyncio.gather(*(read(i) for i in range(20))), TIMEOUT)
                await vault.aflush_audit()
                assert vault.audit_log is not None
                counts: collections.Counter[str] = collections.Counter()
                rows: collections.Counter[str] = collections.Counter()
                for _seq, event, _prev, _mac in vault.audit_log.read():
                    if event.action == "decrypt":
                        counts[event.principal] += event.count
                        rows[event.principal] += len(event.rows)
                assert counts == {p.name: 10 * MEMBERS for p in shared}
                assert rows == {p.name: 10 * MEMBERS for p in shared}
        finally:
            await engine.dispose()

    engine = create_async_engine(url)
    with watchdog(TIMEOUT + 30):
        asyncio.run(main())


def test_async_audit_url_gets_a_sync_engine_of_the_vaults_own(tmp_path: Any) -> None:
    """``audit=`` an aiosqlite URL: the audit log is written through a pysqlite engine that the
    vault made, and disposes of on close."""
    from vaultkit.store import MemoryKeyStore

    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    vault = Vault(
        provider=InMemoryKeyProvider(["medical"]),
        store=MemoryKeyStore(),
        domains=[KeyDomain("medical", audited=True)],
        audit=url,
    )
    with vault:
        assert vault.audit_log is not None
        assert vault.audit_log.engine.url.drivername == "sqlite+pysqlite"
        with acting_as(Principal("p"), purpose="t"):
            vault.decrypt(vault.encrypt("x", domain="medical"))
        vault.flush_audit()
        assert [e.action for _s, e, _p, _m in vault.audit_log.read()] == ["write", "decrypt"]


def test_attribute_reads_in_a_coroutine_do_no_io_on_the_loop_thread(tmp_path: Any) -> None:
    """Audited and restricted attributes are read in the coroutine, outside SQLAlchemy's greenlet:
    their values were opened for the task's scope when the statement ran, so neither the audit
    event (decrypt or denied) nor a key-store read is written from the event loop's thread."""
    store_url = f"sqlite:///{tmp_path / 'keys.db'}"
    audit_url = f"sqlite:///{tmp_path / 'audit.db'}"
    statement_threads: list[tuple[int, str]] = []

    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
        provider = InMemoryKeyProvider(["identity", "medical"])
        try:
            with new_vault(provider, store_url, audit=audit_url) as writer:
                await seed(engine, writer)
            with new_vault(provider, store_url, audit=audit_url) as vault:
                vaultkit.sqla.configure(vault)
                assert vault.audit_log is not None
                for own in (vault.audit_log.engine, vault.store.engine):  # type: ignore[attr-defined]
                    sa.event.listen(
                        own,
                        "before_cursor_execute",
                        lambda _c, _cur, sql, *_a: statement_threads.append(
                            (threading.get_ident(), sql.split()[0].upper())
                        ),
                    )
                loop_thread = threading.get_ident()
                results = await asyncio.wait_for(
                    asyncio.gather(*(read_all(engine, i) for i in range(4))), TIMEOUT
                )
                assert statement_threads, "no key-store read or audit write was made"
                on_loop = [sql for thread, sql in statement_threads if thread == loop_thread]
                assert on_loop == []
                await vault.aflush_audit()
                assert len(results) == 4
                counts: collections.Counter[tuple[str, str]] = collections.Counter()
                for _seq, event, _prev, _mac in vault.audit_log.read():
                    if event.principal.startswith("task-"):
                        counts[event.principal, event.action] += event.count
                assert counts == {
                    (principal(i).name, "decrypt" if i % 2 == 0 else "denied"): MEMBERS
                    for i in range(4)
                }
        finally:
            await engine.dispose()

    with watchdog(TIMEOUT + 30):
        asyncio.run(main())


def test_a_shared_async_session_opens_per_scope(tmp_path: Any) -> None:
    """One AsyncSession used by two principals in turn: the object the coach loaded (its note
    opened for the coach's scope) gives the claims handler a sealed value, audited as his denial;
    the coach's plaintext is never handed on."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    coach = Principal("coach", grants={"medical"})
    handler = Principal("handler")

    async def main() -> None:
        engine = create_async_engine(url)
        provider = InMemoryKeyProvider(["identity", "medical"])
        try:
            with new_vault(provider, url) as writer:
                expected = await seed(engine, writer)
            with new_vault(provider, url) as vault:
                vaultkit.sqla.configure(vault)
                async with AsyncSession(engine) as session:
                    with acting_as(coach, purpose="care"):
                        members = (await session.scalars(sa.select(Member))).all()
                        assert {m.id: m.note for m in members} == {
                            k: v[1] for k, v in expected.items()
                        }
                    with acting_as(handler, purpose="claims"):
                        # The identity map's objects, not loaded again: opened on access.
                        notes = [m.note for m in members]
                        assert all(isinstance(n, SealedValue) for n in notes)
                        again = (await session.scalars(sa.select(Member))).all()
                        assert all(isinstance(m.note, SealedValue) for m in again)
                await vault.aflush_audit()
                assert vault.audit_log is not None
                counts: collections.Counter[tuple[str, str]] = collections.Counter()
                for _seq, event, _prev, _mac in vault.audit_log.read():
                    if event.principal in ("coach", "handler"):
                        counts[event.principal, event.action] += event.count
                assert counts["coach", "decrypt"] == MEMBERS
                assert counts["handler", "decrypt"] == 0
                assert counts["handler", "denied"] >= MEMBERS
        finally:
            await engine.dispose()

    with watchdog(TIMEOUT + 30):
        asyncio.run(main())
