"""The data life cycle (issue 16): what subject- and bucket-scoped keys cost, and how fast erasure acts.

Each command measures vaultkit against a baseline taken in the same run:

``keys [--members N] [--store URL]``
    N members x 3 subject-scoped domains, one value each, written through ``Vault.encrypt``: key
    store rows, provider calls, key-store size on disk and write time per value, against the same
    values in 3 process-scoped domains. The size per row is what 1 million members would cost
    (the row count and provider calls are counted, the size is extrapolated linearly).
``cold [--rows N] [--store URL]``
    N values of N distinct members, read by a fresh vault (cold cache): provider calls, key-store
    queries and time, against N values of one process-scoped domain read the same way.
``erase [--store URL] [--repeat R]``
    ``Vault.erase_subject`` latency, and the seconds until a second process that keeps decrypting
    the member's value gets ``SubjectErasedError`` (default ``key_check_interval``, 5 s).
``enforce [--keys N] [--store URL]``
    ``Vault.enforce_retention`` over N expired subject keys (rows inserted in bulk, as a store
    holding them would have them), time and keys per second.
``orm [--rows N] [--repeat R]``
    ORM round trip (insert, commit, load, read each value) of N rows with a subject-scoped column
    against the same rows with a process-scoped column, alternating R times: members whose keys
    exist, and the first run, in which each new member's key is made.

``--store`` defaults to a fresh SQLite file; pass ``postgresql+psycopg://postgres@127.0.0.1/test``
for the figures in docs/benchmarks.md (each run uses tables of its own prefix and drops them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

HERE = Path(__file__).resolve()
SUBJECT_DOMAINS = ("identity", "contract", "medical")
PROCESS_DOMAINS = ("p_identity", "p_contract", "p_medical")
CTX = {"table": "members", "column": "note"}


def _domains() -> list[Any]:
    from vaultkit import KeyDomain, Retention

    scoped = [
        KeyDomain(
            name,
            dek_scope="subject",
            retention=Retention(
                "P5Y", after="relationship_end", kind="no_less_than", ground="art. 60 Insurance Act"
            )
            if name == "contract"
            else None,
        )
        for name in SUBJECT_DOMAINS
    ]
    return [*scoped, *(KeyDomain(name) for name in PROCESS_DOMAINS)]


@contextmanager
def _store(url: str | None) -> Iterator[tuple[Any, str]]:
    """A key store with a table prefix of its own (dropped afterwards), and its URL."""
    from vaultkit.store import SQLKeyStore

    with tempfile.TemporaryDirectory() as tmp:
        url = url or f"sqlite:///{tmp}/keys.db"
        prefix = f"bench_{uuid.uuid4().hex[:8]}_"
        store = SQLKeyStore(url, table_prefix=prefix)
        try:
            yield store, url
        finally:
            meta = sa.MetaData(schema=store.keys.schema)
            meta.reflect(store.engine, only=lambda name, _m: name.startswith(prefix))
            meta.drop_all(store.engine)
            store.close()


def _vault(store: Any, provider: Any, **kwargs: Any) -> Any:
    from vaultkit import Vault

    return Vault(provider=provider, store=store, domains=_domains(), **kwargs)


_INNER: list[Any] = []


def _provider() -> Any:
    """A call-counting view of this run's one in-memory provider (each vault counts its own)."""
    from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

    if not _INNER:
        _INNER.append(InMemoryKeyProvider([*SUBJECT_DOMAINS, *PROCESS_DOMAINS]))
    return CountingKeyProvider(_INNER[0])


def _table_bytes(store: Any) -> int | None:
    engine = store.engine
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("select pg_total_relation_size(:t)"), {"t": store.keys.name}
                ).scalar_one()
            )
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            try:
                return int(
                    conn.execute(
                        sa.text("select sum(pgsize) from dbstat where name like :t"),
                        {"t": f"{store.keys.name}%"},
                    ).scalar_one()
                )
            except sa.exc.OperationalError:  # SQLite built without DBSTAT
                return None
    return None


def _rows(store: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(store.keys)).scalar_one())


def keys(url: str | None, members: int) -> None:
    with _store(url) as (store, where):
        provider = _provider()
        with _vault(store, provider) as vault:
            start = time.perf_counter()
            for domain in PROCESS_DOMAINS:
                for m in range(members):
                    vault.encrypt(f"value {m}", domain=domain, context=CTX)
            process_s = time.perf_counter() - start
            process_rows, process_calls = _rows(store), sum(provider.calls.values())
            process_bytes = _table_bytes(store)
            provider.calls.clear()
            start = time.perf_counter()
            for domain in SUBJECT_DOMAINS:
                for m in range(members):
                    vault.encrypt(f"value {m}", domain=domain, context=CTX, subject=f"m-{m}")
            subject_s = time.perf_counter() - start
            rows = _rows(store) - process_rows
            calls = dict(provider.calls)
            total_bytes = _table_bytes(store)
        print(
            f"key store: {store.engine.dialect.name} ({where.split(':', 1)[0]}); {members} members"
        )
        print("| | values | key-store rows | provider calls | write µs/value |")
        print("|---|---:|---:|---:|---:|")
        n = members * 3
        print(
            f"| 3 process-scoped domains | {n} | {process_rows} | {process_calls} | "
            f"{process_s / n * 1e6:.0f} |"
        )
        print(
            f"| 3 subject-scoped domains | {n} | {rows} | {sum(calls.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(calls.items()))}) | "
            f"{subject_s / n * 1e6:.0f} |"
        )
        if total_bytes is not None and process_bytes is not None and rows:
            per_row = (total_bytes - process_bytes) / rows
            print(
                f"key-store size: {per_row:.0f} bytes per subject key row (table and indexes); "
                f"1,000,000 members x 3 domains = 3,000,000 rows = "
                f"{per_row * 3_000_000 / 2**30:.2f} GiB (extrapolated), provider calls unchanged"
            )


def cold(url: str | None, rows: int) -> None:
    from vaultkit.core import wire

    with _store(url) as (store, _where):
        writer = _vault(store, _provider())
        scoped = [
            writer.encrypt(f"value {m}", domain="medical", context=CTX, subject=f"m-{m}")
            for m in range(rows)
        ]
        plain = [writer.encrypt(f"value {m}", domain="p_medical", context=CTX) for m in range(rows)]
        writer.close()
        figures = {}
        cases = (
            ("process-scoped", plain, False),
            ("subject-scoped", scoped, False),
            ("subject-scoped, preload first", scoped, True),
        )
        for name, blobs, preload in cases:
            provider = _provider()
            queries = [0]

            def count(*_args: Any, queries: list[int] = queries) -> None:
                queries[0] += 1

            sa.event.listen(store.engine, "before_cursor_execute", count)
            try:
                # A cache as large as the read, so the preloaded keys stay for it.
                with _vault(store, provider, cache_size=rows + 16) as reader:
                    start = time.perf_counter()
                    if preload:  # what a page of a result set can do: one query per 500 ids
                        reader.preload(wire.parse_value(b).dek_id for b in blobs)
                    for blob in blobs:
                        reader.decrypt(blob, context=CTX)
                    seconds = time.perf_counter() - start
            finally:
                sa.event.remove(store.engine, "before_cursor_execute", count)
            figures[name] = (seconds, sum(provider.calls.values()), queries[0])
        print(f"cold read of {rows} values, key store: {store.engine.dialect.name}")
        print("| | seconds | µs/value | provider calls | key-store queries |")
        print("|---|---:|---:|---:|---:|")
        for name, (seconds, calls, queries_) in figures.items():
            print(f"| {name} | {seconds:.2f} | {seconds / rows * 1e6:.0f} | {calls} | {queries_} |")
        base = figures["process-scoped"][0]
        for name in ("subject-scoped", "subject-scoped, preload first"):
            print(f"{name} / process-scoped time: {figures[name][0] / base:.1f}x")


def _reader(url: str, prefix: str, blob_hex: str, ready: str, done: str) -> None:
    """Child: decrypt one member's value until it reads as erased; write the time it did."""
    from vaultkit import Vault
    from vaultkit.errors import SubjectErasedError
    from vaultkit.store import SQLKeyStore

    provider = _shared_provider()
    blob = bytes.fromhex(blob_hex)
    store = SQLKeyStore(url, table_prefix=prefix)
    with Vault(provider=provider, store=store, domains=_domains()) as vault:
        vault.decrypt(blob, context=CTX)
        Path(ready).write_text("")
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            try:
                vault.decrypt(blob, context=CTX)
            except SubjectErasedError:
                Path(done).write_text(repr(time.time()))
                return
            time.sleep(0.005)
    raise SystemExit("still decrypting after 60 s")


def _shared_provider() -> Any:
    """A provider both processes share: a keyring file under a master key from the environment."""
    from vaultkit.keys import LocalKeyProvider

    return LocalKeyProvider(os.environ["BENCH_KEYRING"], create_keys=True)


def erase(url: str | None, repeat: int) -> None:
    from vaultkit import Vault
    from vaultkit.store import SQLKeyStore

    latencies, stops = [], []
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "BENCH_KEYRING": str(Path(tmp, "keyring.json")),
            "VAULTKIT_MASTER_KEY": __import__("base64").b64encode(os.urandom(32)).decode(),
        }
        os.environ.update(env)
        url = url or f"sqlite:///{tmp}/keys.db"
        prefix = f"bench_{uuid.uuid4().hex[:8]}_"
        store = SQLKeyStore(url, table_prefix=prefix)
        try:
            with Vault(provider=_shared_provider(), store=store, domains=_domains()) as vault:
                for i in range(repeat):
                    member = f"m-erase-{i}"
                    blob = vault.encrypt("note", domain="medical", context=CTX, subject=member)
                    ready, done = Path(tmp, f"ready-{i}"), Path(tmp, f"done-{i}")
                    args = ["_reader", url, prefix, blob.hex(), str(ready), str(done)]
                    proc = subprocess.Popen([sys.executable, str(HERE), *args], env=env)
                    while not ready.exists():
                        if proc.poll() is not None:
                            raise SystemExit("the reader failed to start")
                        time.sleep(0.01)
                    time.sleep(i % 3)  # erase at different points of B's check interval
                    start = time.perf_counter()
                    erased_at = time.time()
                    vault.erase_subject(member, reason="art17", request_id=f"req-{i}")
                    latencies.append(time.perf_counter() - start)
                    if proc.wait(timeout=120) != 0:
                        raise SystemExit("the reader kept decrypting")
                    stops.append(float(done.read_text()) - erased_at)
        finally:
            meta = sa.MetaData()
            meta.reflect(store.engine, only=lambda name, _m: name.startswith(prefix))
            meta.drop_all(store.engine)
            store.close()
    where = "SQLite" if url.startswith("sqlite") else url.split(":", 1)[0]
    print(f"key store: {where}; {repeat} erasures of one member in 3 subject-scoped domains")
    print(
        "erase_subject latency (ms): median "
        f"{statistics.median(latencies) * 1e3:.1f}, min {min(latencies) * 1e3:.1f}, "
        f"max {max(latencies) * 1e3:.1f}"
    )
    print(
        "seconds until a second process stopped decrypting: "
        + " ".join(f"{t:.2f}" for t in stops)
        + f" (median {statistics.median(stops):.2f}, max {max(stops):.2f}; key_check_interval 5 s)"
    )


def enforce(url: str | None, count: int, batch: int) -> None:
    from vaultkit.core.envelope import new_dek_id

    with _store(url) as (store, _where):
        provider = _provider()
        with _vault(store, provider) as vault:
            # One real subject key, so the domain's wrapping key exists; the rest are inserted
            # in bulk with the same shape (61-byte wrapped keys), all past their deadline.
            vault.encrypt("x", domain="contract", context=CTX, subject="m-0")
            template = next(iter(vault.data_keys(domain="contract")))
            past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
            start = time.perf_counter()
            with store.engine.begin() as conn:
                for offset in range(0, count, 10_000):
                    conn.execute(
                        store.keys.insert(),
                        [
                            {
                                "dek_id": new_dek_id().hex(),
                                "domain": "contract",
                                "purpose": "data",
                                "kek_id": template.kek_id,
                                "kek_version": template.kek_version,
                                "wrapped": os.urandom(len(template.wrapped)),
                                "state": "active",
                                "created_at": past,
                                "subject": os.urandom(16).hex(),
                                "encryptions": 1,
                                "scope": "subject",
                                "destroy_at": past,
                            }
                            for _ in range(min(10_000, count - offset))
                        ],
                    )
            load_s = time.perf_counter() - start
            start = time.perf_counter()
            report = vault.enforce_retention(batch=batch)
            seconds = time.perf_counter() - start
        print(
            f"key store: {store.engine.dialect.name}; {count} expired subject keys "
            f"(bulk load {load_s:.1f} s)"
        )
        print(
            f"retention enforce: {seconds:.1f} s, {count / seconds:,.0f} keys/s, batch {batch}; "
            f"report: {report}"
        )


def orm(url: str | None, rows: int, repeat: int) -> None:
    """ORM round trip (insert, commit, load, read every value) of a subject-scoped column against a
    process-scoped one, alternating, ``repeat`` times; members known (their keys exist) and new."""
    from vaultkit import sqla
    from vaultkit.sqla import Encrypted

    class Base(DeclarativeBase):
        pass

    class Plain(Base):
        __tablename__ = f"bench_plain_{uuid.uuid4().hex[:6]}"
        id: Mapped[int] = mapped_column(primary_key=True)
        member_id: Mapped[str] = mapped_column(sa.String(20))
        note: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="p_medical"))

    class Scoped(Base):
        __tablename__ = f"bench_scoped_{uuid.uuid4().hex[:6]}"
        id: Mapped[int] = mapped_column(primary_key=True)
        member_id: Mapped[str] = mapped_column(sa.String(20))
        note: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="medical", subject="member_id"))

    with _store(url) as (store, where):
        engine = sa.create_engine(where)
        Base.metadata.create_all(engine)
        vault = _vault(store, _provider(), cache_size=4 * rows)
        sqla.configure(vault)
        times: dict[str, list[float]] = {"process": [], "subject, known members": []}
        first_subject = 0.0
        try:
            for i in range(repeat + 1):
                for name, model in (("process", Plain), ("subject, known members", Scoped)):
                    start = time.perf_counter()
                    with Session(engine) as session:
                        session.add_all(
                            model(id=i * rows + r, member_id=f"m-{r}", note=f"note {i} {r}")
                            for r in range(rows)
                        )
                        session.commit()
                    with Session(engine) as session:
                        loaded = session.scalars(
                            sa.select(model).where(model.id >= i * rows, model.id < (i + 1) * rows)
                        ).all()
                        assert all(m.note.startswith("note") for m in loaded)
                    seconds = time.perf_counter() - start
                    if i == 0 and model is Scoped:
                        first_subject = seconds  # new members: one key each is made
                    elif i > 0:
                        times[name].append(seconds)
        finally:
            vault.close()
            Base.metadata.drop_all(engine)
            engine.dispose()
    base = statistics.median(times["process"])
    print(
        f"ORM round trip of {rows} rows (insert, commit, load, read), {store.engine.dialect.name}"
    )
    print("| column | median s | min-max s | / process-scoped |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {min(values):.3f}-{max(values):.3f} | {med / base:.2f}x |")
    print(
        f"| subject, new members (first run, one key each) | {first_subject:.3f} | | "
        f"{first_subject / base:.1f}x |"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_reader":
        _reader(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("keys", "cold", "erase", "enforce", "orm"):
        sub = commands.add_parser(name)
        sub.add_argument("--store", help="key-store URL (default: a fresh SQLite file)")
        if name == "keys":
            sub.add_argument("--members", type=int, default=10_000)
        if name == "cold":
            sub.add_argument("--rows", type=int, default=100_000)
        if name == "erase":
            sub.add_argument("--repeat", type=int, default=5)
        if name == "orm":
            sub.add_argument("--rows", type=int, default=1000)
            sub.add_argument("--repeat", type=int, default=5)
        if name == "enforce":
            sub.add_argument("--keys", type=int, default=1_000_000)
            sub.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    if args.command == "keys":
        keys(args.store, args.members)
    elif args.command == "cold":
        cold(args.store, args.rows)
    elif args.command == "orm":
        orm(args.store, args.rows, args.repeat)
    elif args.command == "erase":
        erase(args.store, args.repeat)
    else:
        enforce(args.store, args.keys, args.batch)


if __name__ == "__main__":
    main()
