"""Vault.erase_subject with an erasure ledger: the ledger is written (all domains in one write)
before anything is fenced or destroyed, so a ledger that cannot be written (a real full disk, a
path that stopped being a file) makes the erasure fail with nothing changed, and no entry is
left for a later start-up to replay; the receipt states the finality of the backup modes."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vaultkit import KeyDomain, Vault
from vaultkit._ledger import ErasureLedger
from vaultkit.errors import KeyStoreError
from vaultkit.store import DekState, SQLKeyStore
from vaultkit.testing import InMemoryKeyProvider

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
DOMAINS = [KeyDomain("medical", dek_scope="subject"), KeyDomain("claims", dek_scope="subject")]
CTX = {"table": "notes", "column": "body"}


def live_keys(store: SQLKeyStore) -> int:
    return sum(
        1
        for r in store.records()
        if r.purpose == "data" and r.scope == "subject" and r.state is DekState.ACTIVE
    )


def test_a_ledger_that_cannot_be_written_fails_the_erasure_with_nothing_changed(
    tmp_path: Path,
) -> None:
    """The ledger's path turns into a directory after start-up (a remount gone wrong): the
    erasure raises, no fence is set, no key destroyed, and the value still reads; once the
    ledger is back the erasure goes through and the ledger holds both domains."""
    provider = InMemoryKeyProvider()
    store = SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    ledger_path = tmp_path / "ledger" / "erasures.jsonl"
    ledger_path.parent.mkdir()
    with Vault(
        provider=provider,
        store=store,
        domains=DOMAINS,
        erasure_ledger=ledger_path,
        clock=lambda: T0,
    ) as vault:
        blob = vault.encrypt("asthma", domain="medical", subject="m-1", context=CTX)
        vault.encrypt("claim", domain="claims", subject="m-1", context=CTX)
        ledger_path.mkdir()  # not a file any more: every append fails
        with pytest.raises(KeyStoreError):
            vault.erase_subject("m-1", reason="art17", request_id="DSR-1")
        for domain in ("medical", "claims"):
            record = store.get_subject(domain, vault.subject_ref(domain, "m-1"))
            assert record is None or record.fenced_at is None
        assert live_keys(store) == 2
        assert vault.decrypt(blob, context=CTX) == "asthma"
        vault.encrypt("more", domain="medical", subject="m-1", context=CTX)  # not fenced
        ledger_path.rmdir()
        receipt = vault.erase_subject("m-1", reason="art17", request_id="DSR-1")
        assert receipt.status == "granted"
    entries = ErasureLedger(ledger_path).entries()
    assert sorted((e.domain, e.request_id) for e in entries) == [
        ("claims", "DSR-1"),
        ("medical", "DSR-1"),
    ]
    assert live_keys(store) == 0


@pytest.mark.parametrize(
    ("retention", "interval", "days"),
    [
        (dt.timedelta(days=35), None, 35),
        (None, dt.timedelta(days=7), 7),
        (dt.timedelta(days=3), dt.timedelta(days=7), 3),
    ],
)
def test_the_receipt_states_the_finality_of_the_backup_modes(
    tmp_path: Path, retention: dt.timedelta | None, interval: dt.timedelta | None, days: int
) -> None:
    """Backup retention: erasure + retention; shred epochs (a provider that destroys versions
    at once, no epoch yet): erasure + interval; both: the earlier. None without either."""
    store = SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    with Vault(
        provider=InMemoryKeyProvider(),
        store=store,
        domains=DOMAINS,
        erasure_ledger=tmp_path / "erasures.jsonl",
        key_store_backup_retention=retention,
        shred_epoch_interval=interval,
        clock=lambda: T0,
    ) as vault:
        vault.encrypt("asthma", domain="medical", subject="m-1", context=CTX)
        receipt = vault.erase_subject("m-1", reason="art17", request_id="DSR-2")
        vault.encrypt("x", domain="medical", subject="m-2", context=CTX)
        nothing = Vault(provider=InMemoryKeyProvider(), store="sqlite://", domains=DOMAINS)
        with nothing:
            nothing.encrypt("x", domain="medical", subject="m-3", context=CTX)
            plain = nothing.erase_subject("m-3", reason="art17", request_id="DSR-3")
    assert receipt.erased_at == T0
    assert receipt.finality is not None
    assert receipt.finality == T0 + dt.timedelta(days=days)
    assert receipt.as_dict()["finality"] is not None
    assert plain.finality is None
    assert len(ErasureLedger(tmp_path / "erasures.jsonl").entries()) == 2


def test_a_real_full_disk_fails_the_erasure_and_leaves_nothing_to_replay(tmp_path: Path) -> None:
    """The ledger on a 64 KiB tmpfs (a mount namespace of its own) filled up, with room left in
    the ledger's last page for a few entries only; the subject has keys in 40 domains, so the
    erasure's entries do not fit: erase_subject raises, the ledger keeps exactly its earlier
    bytes, nothing is fenced or destroyed, and a vault started afterwards (which replays the
    ledger) still reads every value."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) here")
    script = textwrap.dedent(
        f"""
        import datetime as dt, os, subprocess, sys
        sys.path.insert(0, {str(ROOT)!r})
        mount = {str(tmp_path / "mnt")!r}
        os.makedirs(mount, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mount], check=True)
        from vaultkit import KeyDomain, Vault
        from vaultkit.errors import KeyStoreError
        from vaultkit.store import DekState, SQLKeyStore
        from vaultkit.testing import InMemoryKeyProvider
        domains = [KeyDomain("d%02d" % i, dek_scope="subject") for i in range(40)]
        provider = InMemoryKeyProvider()
        url = "sqlite:///" + {str(tmp_path / "keys.db")!r}
        ledger = os.path.join(mount, "erasures.jsonl")
        ctx = {{"table": "notes", "column": "body"}}
        with Vault(provider=provider, store=url, domains=domains, erasure_ledger=ledger) as v:
            blobs = [v.encrypt("v", domain=d.name, subject="m-1", context=ctx) for d in domains]
            v.encrypt("w", domain="d00", subject="m-2", context=ctx)
            v.erase_subject("m-2", reason="art17", request_id="before", domains=["d00"])
            before = open(ledger, "rb").read()
            assert 0 < len(before) < 1024, len(before)
            filler = os.path.join(mount, "filler")
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"x" * 512)
            except OSError:
                pass
            os.close(fd)
            try:
                v.erase_subject("m-1", reason="art17", request_id="DSR-1")
            except KeyStoreError as exc:
                assert "nothing was erased" in str(exc), exc
            else:
                raise SystemExit("erasure with a full ledger disk did not fail")
            assert open(ledger, "rb").read() == before
            store = v.store
            for d in domains:
                rec = store.get_subject(d.name, v.subject_ref(d.name, "m-1"))
                assert rec is None or rec.fenced_at is None, d.name
        with Vault(provider=provider, store=url, domains=domains, erasure_ledger=ledger) as v:
            assert [v.decrypt(b, context=ctx) for b in blobs] == ["v"] * 40
        print("ok")
        """
    )
    done = subprocess.run(
        [unshare, "-rm", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 and "mount" in done.stderr and "ok" not in done.stdout:
        if "Operation not permitted" in done.stderr or "unshare failed" in done.stderr:
            pytest.skip(f"no mount namespace here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
