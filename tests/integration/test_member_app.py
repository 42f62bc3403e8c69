"""The example member app (examples/member_app) for real: Alembic, uvicorn, HTTP, PostgreSQL.

The app runs as a user would run it: ``vaultkit keys init``, ``alembic upgrade head``, then
``uvicorn member_app.main:create_app --factory`` in a subprocess on a free port, driven over HTTP
by httpx. Every wait has a timeout, so a hung server fails the test instead of blocking it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import vaultkit.sqla
import vaultkit.sqla.alembic
from tests.integration._dbdump import dump_database
from vaultkit.audit import AuditEvent, AuditLog
from vaultkit.core import wire
from vaultkit.keys import generate_master_key

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).parents[2]
APP_DIR = ROOT / "examples" / "member_app"
TIMEOUT = 60.0  # seconds: any one command, the server's start-up and its shutdown
BURST = 20  # concurrent chat reads, half by the coach, half by the claims handler

HANDLER = {"X-User": "hana-claims", "X-Role": "claims-handler"}
COACH = {"X-User": "coach-anna", "X-Role": "coach"}
NAME = "Jan Peeters"
EMAIL = "Jan.Peeters@example.be"
CLAIM = "physiotherapy after knee surgery, 6 sessions"
MESSAGES = ["my blood sugar was 180 this morning", "the new insulin dose makes me dizzy"]
PLAINTEXTS = [NAME, EMAIL, EMAIL.lower(), CLAIM, *MESSAGES]
VAULTKIT_TABLES = {
    "vaultkit_data_keys",
    "vaultkit_meta",
    "vaultkit_subjects",
    "vaultkit_audit_events",
    "vaultkit_audit_head",
}


@dataclass
class App:
    """A migrated-or-not app database, its keyring, and the environment the app runs in."""

    env: dict[str, str]
    sync_url: str  # the same database through psycopg: raw SQL and the vaultkit CLI
    keyring: Path
    log: Path


@pytest.fixture
def app(postgres_engine: sa.Engine, tmp_path: Path) -> Iterator[App]:
    """A fresh database (asyncpg takes no ``options=-csearch_path``, so not a schema), a keyring
    made by ``vaultkit keys init``, and the app's environment variables."""
    name = f"vk_app_{uuid.uuid4().hex[:12]}"
    with postgres_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = postgres_engine.url.set(database=name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTKIT_")}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        VAULTKIT_MASTER_KEY=generate_master_key(),
        MEMBER_APP_DATABASE_URL=url.set(drivername="postgresql+asyncpg").render_as_string(
            hide_password=False
        ),
        MEMBER_APP_KEYRING=str(tmp_path / "keyring.json"),
    )
    keys = ["--domain", "identity", "--domain", "financial", "--domain", "medical"]
    run(env, "vaultkit", "keys", "init", "--keyring", env["MEMBER_APP_KEYRING"], *keys)
    try:
        yield App(
            env=env,
            sync_url=url.render_as_string(hide_password=False),
            keyring=Path(env["MEMBER_APP_KEYRING"]),
            log=tmp_path / "server.log",
        )
    finally:
        with postgres_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def run(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` in the app's directory, as a user runs it there."""
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=APP_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(app: App) -> Iterator[httpx.Client]:
    """The app under uvicorn in a subprocess; stopped with SIGTERM, which runs the lifespan's
    shutdown (the audit flush), and checked to have exited cleanly."""
    port = free_port()
    command = ["uvicorn", "member_app.main:create_app", "--factory", "--port", str(port)]
    with app.log.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=APP_DIR,
            env=app.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            deadline = time.monotonic() + TIMEOUT
            while True:
                assert server.poll() is None, f"the server exited:\n{app.log.read_text()}"
                assert time.monotonic() < deadline, f"no answer:\n{app.log.read_text()}"
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/openapi.json").status_code == 200:
                        break
                time.sleep(0.2)
            yield client
        server.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down gracefully (newer releases).
        assert server.wait(timeout=TIMEOUT) in (0, -signal.SIGTERM), app.log.read_text()
        assert "Application shutdown complete." in app.log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=TIMEOUT)


def post(client: httpx.Client, path: str, body: dict[str, Any], who: dict[str, str]) -> Any:
    response = client.post(path, json=body, headers=who)
    assert response.status_code in (200, 201), response.text
    return response.json()


def get(client: httpx.Client, path: str, who: dict[str, str]) -> httpx.Response:
    response = client.get(path, headers=who)
    assert response.status_code == 200, response.text
    return response


def test_members_claims_and_a_chat_a_claims_handler_cannot_read(app: App) -> None:
    """Migrated with Alembic and served by uvicorn, the app finds members by e-mail through the
    blind index, shows a coach the chat and a claims handler only ``{"sealed": "medical"}``
    (200, no plaintext, no ciphertext), stores ciphertext only, and audits the coach's reads and
    the handler's refusals under their own principals in a chain that verifies."""
    run(app.env, "alembic", "upgrade", "head")
    # Autogenerate against the migrated database finds nothing to do: the models match the
    # revisions, and vaultkit's tables (not in the models) are not dropped.
    assert "No new upgrade operations detected" in run(app.env, "alembic", "check").stdout
    # The vault that env.py opened made vaultkit's tables; the app's start-up will make none.
    migrated = table_names(app.sync_url)
    assert migrated == {"alembic_version", "members", "claims", "chat_messages", *VAULTKIT_TABLES}

    with serve(app) as client:
        member = post(client, "/members", {"name": NAME, "email": EMAIL}, HANDLER)
        assert member["email"] == EMAIL
        # The blind index normalises the lookup as it did the stored address.
        found = post(client, "/members/lookup", {"email": " jan.peeters@EXAMPLE.be"}, COACH)
        assert [m["id"] for m in found] == [member["id"]]
        assert post(client, "/members/lookup", {"email": "piet@example.be"}, COACH) == []

        base = f"/members/{member['id']}"
        claim = post(client, f"{base}/claims", {"amount": "120.50", "description": CLAIM}, HANDLER)
        claims = get(client, f"{base}/claims", HANDLER).json()
        assert [(c["id"], c["amount"], c["description"]) for c in claims] == [
            (claim["id"], "120.50", CLAIM)
        ]

        sent = [post(client, f"{base}/chat", {"text": text}, COACH) for text in MESSAGES]
        for _ in range(2):
            chat = get(client, f"{base}/chat", COACH).json()
            assert [(m["id"], m["author"], m["text"]) for m in chat] == [
                (m["id"], "coach-anna", m["text"]) for m in sent
            ]
        assert [m["text"] for m in sent] == MESSAGES

        refused = get(client, f"{base}/chat", HANDLER)
        assert [(m["id"], m["text"]) for m in refused.json()] == [
            (m["id"], {"sealed": "medical"}) for m in sent
        ]

        # Concurrent requests under both principals: each sees what its own principal may.
        who = [COACH, HANDLER] * (BURST // 2)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            burst = list(pool.map(lambda h: get(client, f"{base}/chat", h).json(), who))
        for headers, answer in zip(who, burst, strict=True):
            texts = MESSAGES if headers is COACH else [{"sealed": "medical"}] * len(MESSAGES)
            assert [m["text"] for m in answer] == texts

        # The application's own role checks, and the stub's refusal of a caller without headers.
        assert client.post(f"{base}/chat", json={"text": "x"}, headers=HANDLER).status_code == 403
        assert client.get(f"{base}/claims", headers=COACH).status_code == 403
        assert client.get(f"{base}/claims").status_code == 401

    database = json.dumps(dump_database(app.sync_url))
    for plaintext in PLAINTEXTS:
        assert plaintext not in database, plaintext
    engine = sa.create_engine(app.sync_url)
    try:
        with engine.connect() as conn:
            stored = [
                bytes(value)
                for table, columns in {
                    "members": ["name", "email"],
                    "claims": ["amount", "description"],
                    "chat_messages": ["text"],
                }.items()
                for row in conn.execute(sa.text(f"SELECT {', '.join(columns)} FROM {table}"))
                for value in row
            ]
            events = conn.execute(
                sa.text(
                    "SELECT principal, purpose, action, domain, table_name, column_name, "
                    "row_keys, count FROM vaultkit_audit_events ORDER BY seq"
                )
            ).all()
    finally:
        engine.dispose()
    assert len(stored) == 2 + 2 + len(MESSAGES) and all(v.startswith(wire.MAGIC) for v in stored)
    assert table_names(app.sync_url) == migrated

    # Neither plaintext nor any ciphertext reached the claims handler.
    body = refused.content
    for plaintext in MESSAGES:
        assert plaintext.encode() not in body
    for value in stored:
        assert value.hex().encode() not in body
        assert base64.b64encode(value) not in body
        assert value[wire.NONCE_SLICE].hex().encode() not in body

    accesses: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for principal, purpose, action, domain, table, column, rows, count in events:
        assert (purpose, domain, table, column) == (
            "coaching-chat",
            "medical",
            "chat_messages",
            "text",
        )
        assert len(json.loads(rows)) == count
        for message_id in json.loads(rows):
            accesses[principal, action, message_id] += 1
    # Each message: written once and read 2 + BURST / 2 times by the coach (the answer to a post
    # is what she wrote, not a read), refused 1 + BURST / 2 times to the handler, who decrypted
    # nothing. Preloading the DEKs at start-up decrypts no value and logs nothing.
    assert accesses == collections.Counter(
        {
            **{("coach-anna", "write", m["id"]): 1 for m in sent},
            **{("coach-anna", "decrypt", m["id"]): 2 + BURST // 2 for m in sent},
            **{("hana-claims", "denied", m["id"]): 1 + BURST // 2 for m in sent},
        }
    )
    audit = json.dumps([tuple(e) for e in events])
    for plaintext in PLAINTEXTS:
        assert plaintext not in audit

    # The chain verifies, with the audit key read through the keyring.
    verify = ["--store", app.sync_url, "--keyring", str(app.keyring), "--domain", "medical"]
    run(app.env, "vaultkit", "audit", "verify", *verify)

    # The server's own log (uvicorn's access log) holds no personal data: the e-mail address
    # went in a request body, not in the URL.
    log = app.log.read_text()
    for plaintext in PLAINTEXTS:
        assert plaintext not in log


def test_without_vaultkits_filters_autogenerate_would_drop_the_key_tables(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the migrated database, plain autogenerate wants to drop every ``vaultkit_*``
    table (the key store with them: every value unreadable); with ``autogenerate_options()``, as
    the example's env.py has it, the diff is empty."""
    run(app.env, "alembic", "upgrade", "head")
    monkeypatch.syspath_prepend(str(APP_DIR))
    from member_app.models import Base

    engine = sa.create_engine(app.sync_url)
    try:
        with engine.connect() as conn:
            plain = MigrationContext.configure(conn, opts={"target_metadata": Base.metadata})
            dropped = {
                diff[1].name
                for diff in compare_metadata(plain, Base.metadata)
                if diff[0] == "remove_table"
            }
            options = vaultkit.sqla.alembic.autogenerate_options()
            guarded = MigrationContext.configure(
                conn, opts={"target_metadata": Base.metadata, **options}
            )
            assert compare_metadata(guarded, Base.metadata) == []
    finally:
        engine.dispose()
    assert dropped == VAULTKIT_TABLES


def test_the_chat_read_writes_its_audit_events_off_the_event_loop(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chat endpoint reads the medical text inside SQLAlchemy's greenlet, so the audit
    events of a coach's read and of a handler's refusal are written in worker threads: none
    blocks the event loop's thread (read by the response serializer, each request's first
    event was written there, a few milliseconds of a blocked loop per request)."""
    run(app.env, "alembic", "upgrade", "head")
    for name in ("VAULTKIT_MASTER_KEY", "MEMBER_APP_DATABASE_URL", "MEMBER_APP_KEYRING"):
        monkeypatch.setenv(name, app.env[name])
    monkeypatch.syspath_prepend(str(APP_DIR))
    from member_app.main import create_app

    writers: list[tuple[int, list[str]]] = []
    append = AuditLog.append

    def recording_append(log: AuditLog, events: list[AuditEvent]) -> None:
        writers.append((threading.get_ident(), [e.action for e in events]))
        append(log, events)

    monkeypatch.setattr(AuditLog, "append", recording_append)

    async def main() -> None:
        member_app = create_app()
        transport = httpx.ASGITransport(app=member_app)
        async with (
            member_app.router.lifespan_context(member_app),
            httpx.AsyncClient(transport=transport, base_url="http://app") as client,
        ):
            new = {"name": NAME, "email": EMAIL}
            member = (await client.post("/members", json=new, headers=HANDLER)).json()
            chat = f"/members/{member['id']}/chat"
            for text in MESSAGES:
                response = await client.post(chat, json={"text": text}, headers=COACH)
                assert response.status_code == 201
            for who in (COACH, HANDLER, COACH):
                assert (await client.get(chat, headers=who)).status_code == 200

    try:
        asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    finally:
        vaultkit.sqla.configure(None)  # create_app() configured it; the lifespan may not have run
    actions = [action for _, events in writers for action in events]
    assert {"write", "decrypt", "denied"} <= set(actions)
    on_loop = [events for thread, events in writers if thread == threading.get_ident() and events]
    assert on_loop == []
