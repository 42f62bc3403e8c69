"""An erasure run by another process: this process's loaded objects, new loads and blind-index
lookups, with the real clock and a real second process (SQLite files for both databases)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import vaultkit.sqla
from tests.integration._subject_app import Base, Member, open_vault
from vaultkit.keys import LocalKeyProvider

WORKER = Path(__file__).with_name("_erase_worker.py")
MASTER = os.urandom(32)
CHECK = 1.0  # seconds: key_check_interval of this process


def test_erasure_in_another_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After another process erases a member: an object loaded here keeps what it loaded until
    expired; within the key check interval new loads read None; the blind index finds nothing;
    the other member is untouched."""
    keyring = tmp_path / "keyring.json"
    LocalKeyProvider(keyring, master_key=MASTER).primary("medical")
    env = {**os.environ, "VAULTKIT_MASTER_KEY": base64.b64encode(MASTER).decode()}
    monkeypatch.setenv("VAULTKIT_MASTER_KEY", env["VAULTKIT_MASTER_KEY"])
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    app = f"sqlite:///{tmp_path / 'app.db'}"
    engine = sa.create_engine(app)
    Base.metadata.create_all(engine)
    try:
        with open_vault(keyring, store, key_check_interval=CHECK) as vault:
            vaultkit.sqla.configure(vault)
            with Session(engine) as s:
                s.add_all([Member(member_id=1, note="one"), Member(member_id=2, note="two")])
                s.commit()
            session = Session(engine)
            loaded = session.scalars(sa.select(Member).where(Member.member_id == 1)).one()
            assert loaded.note == "one"

            done = subprocess.run(
                [sys.executable, str(WORKER), str(keyring), store, app, "1"],
                env=env,
                capture_output=True,
                timeout=120,
                check=False,
            )
            erased_at = time.monotonic()
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            assert json.loads(done.stdout) == {"destroyed": 1, "rows": {"erasure_members": 1}}

            assert loaded.note == "one"  # loaded before the erasure: kept until expired
            elapsed = None
            while time.monotonic() - erased_at < CHECK + 5:
                with Session(engine) as s:
                    note = s.scalars(sa.select(Member.note).where(Member.member_id == 1)).one()
                if note is None:
                    elapsed = time.monotonic() - erased_at
                    break
                time.sleep(0.05)
            assert elapsed is not None and elapsed <= CHECK + 0.5, elapsed
            session.expire(loaded)
            assert loaded.note is None
            session.close()
            with Session(engine) as s:
                assert s.scalars(sa.select(Member).where(Member.note_index == "one")).all() == []
                two = s.scalars(sa.select(Member).where(Member.note_index == "two")).one()
                assert two.note == "two"
    finally:
        vaultkit.sqla.configure(None)
        engine.dispose()
