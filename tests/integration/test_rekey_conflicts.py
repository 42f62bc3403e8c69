"""The re-keying engine against the database's own conflict handling: a real application
transaction that deadlocks with a batch (PostgreSQL) or holds its rows past the lock timeout
(PostgreSQL, MariaDB). The batch is rolled back, read again and redone, never writing stale data;
a conflict that outlasts the retries ends ``vaultkit rekey`` with exit code 8 and one line."""

from __future__ import annotations

import base64
import os
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from vaultkit import Vault
from vaultkit.cli.main import main
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV
from vaultkit.rekey import ConflictRetry, rekey_table
from vaultkit.sqla import count_plaintext
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

MODEL = textwrap.dedent(
    """
    import sqlalchemy as sa
    from vaultkit.sqla import Encrypted

    CONFLICTS = sa.Table(
        "rk_conflicts",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
    )
    """
)
namespace: dict[str, Any] = {}
exec(MODEL, namespace)  # noqa: S102 - the model the CLI imports, defined once for both
CONFLICTS: sa.Table = namespace["CONFLICTS"]
ROWS = 20


def with_settings(url: str, **settings: str) -> str:
    """``url`` whose connections set these session settings (PostgreSQL ``options``; MariaDB
    ``init_command``)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        extra = " ".join(f"-c{name}={value}" for name, value in settings.items())
        options = f"{parsed.query.get('options', '')} {extra}".strip()
        parsed = parsed.update_query_dict({"options": options})
    else:
        sets = ", ".join(f"SESSION {name} = {value}" for name, value in settings.items())
        parsed = parsed.update_query_dict({"init_command": f"SET {sets}"})
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def pg(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("postgres_url"))


pytestmark = pytest.mark.configured  # the vault fixture is the column types' vault


@pytest.fixture
def vault_kwargs() -> dict[str, Any]:
    """A vault over in-memory keys (configured for the columns: ``configured_vault``)."""
    return {"provider": InMemoryKeyProvider(), "store": MemoryKeyStore(), "domains": ["identity"]}


def load(url: str) -> None:
    """ROWS rows of legacy plaintext e-mail addresses."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        blob = "bytea" if engine.dialect.name == "postgresql" else "blob"
        conn.execute(sa.text(f"create table rk_conflicts (id integer primary key, email {blob})"))
        conn.execute(
            sa.text("insert into rk_conflicts (id, email) values (:id, :email)"),
            [{"id": i, "email": f"Secret{i}@X.be".encode()} for i in range(1, ROWS + 1)],
        )
    engine.dispose()


def emails(url: str, vault: Vault) -> dict[int, Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert count_plaintext(conn, CONFLICTS.c.email) == 0
            return dict(conn.execute(sa.select(CONFLICTS.c.id, CONFLICTS.c.email)).all())
    finally:
        engine.dispose()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def waiting_for_a_lock(watcher: sa.Engine) -> Callable[[], bool]:
    """Whether some session of the server waits for a row lock on rk_conflicts."""

    def check() -> bool:
        with watcher.connect() as conn:
            return bool(
                conn.execute(
                    sa.text(
                        "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                        "and query like '%rk_conflicts%' and pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )

    return check


class Application(threading.Thread):
    """An application transaction on a connection of its own: ``work(conn)`` then commit."""

    def __init__(self, url: str, work: Callable[[sa.Connection], None]) -> None:
        super().__init__(daemon=True)
        self.engine = sa.create_engine(url)
        self.work = work
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.engine.begin() as conn:
                self.work(conn)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.engine.dispose()


def test_a_deadlock_with_the_application_is_retried_and_keeps_its_writes(
    pg: str, vault: Vault, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application locks the batch's last row, the batch locks the others in key order and
    waits, the application then wants the first row: PostgreSQL reports a deadlock to the batch
    (deadlock_timeout 1 s against the application's 10 s), the batch is rolled back, read again
    after the application's commit and redone; the application's two values stay."""
    load(pg)
    engine = sa.create_engine(with_settings(pg, deadlock_timeout="1s"))
    locked = threading.Event()
    watcher = sa.create_engine(pg)
    waiting = waiting_for_a_lock(watcher)

    def application(conn: sa.Connection) -> None:
        conn.execute(CONFLICTS.update().where(CONFLICTS.c.id == ROWS).values(email="late@x.be"))
        locked.set()
        wait_until(waiting)  # the batch waits for row ROWS, holding rows 1 to ROWS - 1
        conn.execute(CONFLICTS.update().where(CONFLICTS.c.id == 1).values(email="first@x.be"))

    app = Application(with_settings(pg, deadlock_timeout="10s"), application)

    def after_read(rows: Any) -> None:
        if not app.is_alive() and not locked.is_set():
            app.start()
            assert locked.wait(10)

    monkeypatch.setattr("vaultkit.rekey._run.after_read", after_read)
    report = rekey_table(engine, CONFLICTS, vault=vault, batch_size=100)
    app.join(20)
    engine.dispose()
    watcher.dispose()
    assert app.error is None
    assert report.conflicts_retried >= 1 and report.complete
    assert "SQLSTATE 40P01: deadlock detected" in caplog.text  # a real deadlock, not a timeout
    assert report.plaintext_encrypted == ROWS - 2  # the application encrypted its two itself
    found = emails(pg, vault)
    assert found[1] == "first@x.be" and found[ROWS] == "late@x.be"
    assert all(found[i] == f"Secret{i}@X.be" for i in range(2, ROWS))


def hold_rows(seconds: float | threading.Event, held: threading.Event) -> Callable[..., None]:
    """An application transaction that locks every row in reverse key order and holds them."""

    def work(conn: sa.Connection) -> None:
        conn.execute(
            sa.select(CONFLICTS.c.id).order_by(CONFLICTS.c.id.desc()).with_for_update()
        ).all()
        held.set()
        if isinstance(seconds, threading.Event):
            seconds.wait(60)
        else:
            time.sleep(seconds)

    return work


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_a_lock_timeout_is_retried_until_the_application_commits(
    backend: str, vault: Vault, request: pytest.FixtureRequest
) -> None:
    """Rows held by the application past the lock timeout (PostgreSQL lock_timeout 200 ms,
    MariaDB innodb_lock_wait_timeout 1 s) abort the batch; it is retried with backoff and
    finishes once the application commits."""
    url = str(request.getfixturevalue(f"{backend}_url"))
    load(url)
    if backend == "postgres":
        engine = sa.create_engine(with_settings(url, lock_timeout="200ms"))
    else:
        engine = sa.create_engine(with_settings(url, innodb_lock_wait_timeout="1"))
    held = threading.Event()
    app = Application(url, hold_rows(2.5, held))
    app.start()
    assert held.wait(10)
    report = rekey_table(
        engine, CONFLICTS, vault=vault, batch_size=8, retry=ConflictRetry(attempts=12)
    )
    app.join(20)
    engine.dispose()
    assert app.error is None
    assert report.conflicts_retried >= 1 and report.complete
    assert report.plaintext_encrypted == ROWS
    found = emails(url, vault)
    assert found == {i: f"Secret{i}@X.be" for i in range(1, ROWS + 1)}


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_a_conflict_that_outlasts_the_retries_exits_8_with_one_line(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`vaultkit rekey` whose rows stay locked by the application through every retry exits 8
    with one line naming the conflict (no traceback, no value); once the application commits,
    the same command finishes the job."""
    url = str(request.getfixturevalue(f"{backend}_url"))
    load(url)
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    monkeypatch.chdir(tmp_path)
    keyring = tmp_path / "keyring.json"
    LocalKeyProvider(keyring, create_keys=True).primary("identity")
    module = f"rk_conflict_model_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(MODEL)
    if backend == "postgres":
        data = with_settings(url, lock_timeout="100ms")
    else:
        data = with_settings(url, innodb_lock_wait_timeout="1")
    command = [
        "rekey",
        "--store",
        f"sqlite:///{tmp_path / 'keys.db'}",
        "--keyring",
        str(keyring),
        "--data",
        data,
        "--model",
        f"{module}:CONFLICTS",
        "--no-progress",
    ]
    held, release = threading.Event(), threading.Event()
    app = Application(url, hold_rows(release, held))
    app.start()
    assert held.wait(10)
    try:
        code = main(command)
    finally:
        release.set()
        app.join(20)
    err = capsys.readouterr().err
    assert code == 8, err
    assert err.count("\n") == 1 and "Traceback" not in err and "Secret" not in err
    assert "ConflictError" in err and "run the same command again" in err
    expected = "55P03" if backend == "postgres" else "1205"
    assert expected in err
    assert app.error is None
    assert main(command) == 0
    assert "re-encrypted 20 values" in capsys.readouterr().out
