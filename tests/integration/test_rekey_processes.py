"""The re-keying engine as real processes on PostgreSQL: kill -9 at random points while the
application keeps writing, and several workers sharing one job."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import vaultkit.sqla
from tests.integration import _rekey_procs as procs
from vaultkit import Principal
from vaultkit.keys import LocalKeyProvider
from vaultkit.rekey import verify_table
from vaultkit.store import DekState

ROOT = Path(__file__).resolve().parents[2]
MASTER = os.urandom(32)
ENV = {**os.environ, "VAULTKIT_MASTER_KEY": base64.b64encode(MASTER).decode()}
CHECK = Principal("checker", grants={"identity", "medical"})


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration._rekey_procs", *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> dict[str, int]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.fixture
def loaded(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str]]:
    monkeypatch.setenv("VAULTKIT_MASTER_KEY", ENV["VAULTKIT_MASTER_KEY"])
    keyring = tmp_path / "keyring.json"
    provider = LocalKeyProvider(keyring, master_key=MASTER)
    provider.primary("identity")
    provider.primary("medical")
    finish_load = spawn("load", postgres_url, str(keyring), "6000")
    _, err = finish_load.communicate(timeout=300)
    assert finish_load.returncode == 0, err[-3000:]
    yield postgres_url, str(keyring)


def check_everything(url: str, keyring: str, rows: int) -> None:
    """No row lost, none stale (plaintext, retired DEK, wrong index), none overwritten with old data."""
    engine = sa.create_engine(url)
    with procs.open_vault(url, keyring) as vault, vault.acting_as(CHECK, purpose="check"):
        report = verify_table(engine, procs.MEMBERS, vault=vault)
        assert report.clean, report
        assert report.values == 2 * rows
        retired = {r.dek_id.hex() for r in vault.store.records() if r.state is DekState.RETIRED}
        assert retired and not retired & set(report.by_dek)
        with engine.connect() as conn:
            members = conn.execute(sa.select(procs.MEMBERS)).all()
            expected = {r.id: r for r in conn.execute(sa.select(procs.EXPECTED))}
        assert len(members) == len(expected) == rows  # no row lost
        index_type = procs.MEMBERS.c.email_ix.type
        for row in members:
            truth = expected[row.id]
            # The application's last committed write survives: never overwritten with old data.
            assert row.email == truth.email, row.id
            assert row.note.decrypt(row=row.uid) == truth.note, row.id
            assert row.email_ix == index_type.digest(truth.email), row.id
    engine.dispose()
    vaultkit.sqla.configure(None)


@pytest.mark.postgres
@pytest.mark.slow
def test_kill_9_at_random_points_while_the_application_writes(
    loaded: tuple[str, str], tmp_path: Path
) -> None:
    """Kill the re-keying process 8 times at random points while another process keeps updating
    rows; resume; then every row holds the application's last write, under a current DEK, with a
    matching blind index."""
    url, keyring = loaded
    stop = tmp_path / "stop"
    application = spawn("app", url, keyring, str(stop))
    rng = random.Random(os.environ.get("VAULTKIT_CRASH_SEED", uuid.uuid4().hex))
    killed = 0
    try:
        time.sleep(0.5)
        for _ in range(8):
            # Let it commit a random number of batches, then kill it a random moment later:
            # inside a batch, between batches, while claiming or finishing a range.
            worker = spawn("rekey", url, keyring, "crash", "500")
            assert worker.stdout is not None
            for _ in range(rng.randint(1, 4)):
                if not worker.stdout.readline():
                    break
            time.sleep(rng.uniform(0, 0.05))
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
                killed += 1
            worker.communicate(timeout=60)
        last = finish(spawn("rekey", url, keyring, "crash", "500"))
        assert last["finished"] and last["left_changing"] == 0 and last["undecryptable"] == 0
    finally:
        stop.touch()
        writes = finish(application, timeout=60)
    assert killed >= 6  # most runs were cut off, at random points
    assert writes["writes"] > 100  # the application kept writing throughout
    check_everything(url, keyring, 6000)


@pytest.mark.postgres
@pytest.mark.slow
def test_three_workers_share_one_job(loaded: tuple[str, str]) -> None:
    """Three processes on one job: every range is done exactly once, by one of them."""
    url, keyring = loaded
    workers = [spawn("rekey", url, keyring, "shared", "250") for _ in range(3)]
    try:
        reports = [finish(w) for w in workers]
    finally:
        for worker in workers:  # never leave a worker running after a failure
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    assert sum(r["rows_scanned"] for r in reports) == 6000  # no range done twice
    assert sum(r["values_rewritten"] for r in reports) == 12000
    assert all(r["finished"] for r in reports)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        by_worker = conn.execute(
            sa.text(
                "select worker, count(*) from vaultkit_rekey_checkpoints "
                "where job = 'shared' group by worker"
            )
        ).all()
        ranges = conn.execute(
            sa.text("select count(*) from vaultkit_rekey_ranges where job = 'shared' and done")
        ).scalar_one()
    engine.dispose()
    assert ranges == 24 + 1  # 6000 rows in ranges of 250, and the open-ended last one
    assert len(by_worker) >= 2, by_worker  # the work was shared
    check_everything(url, keyring, 6000)
