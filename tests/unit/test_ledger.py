"""The erasure ledger (vaultkit/_ledger.py): durable appends, torn last lines, concurrent writers, a
real full disk, and its replay into a real key store (memory and SQLite)."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultkit._ledger import ErasureLedger, LedgerEntry
from vaultkit.errors import ConfigurationError, KeyStoreError
from vaultkit.store import DataKeyRecord, DekState, MemoryKeyStore, SQLKeyStore, SubjectRecord

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
REF = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
ROOT = Path(__file__).resolve().parents[2]


def entry(ref: str = REF, at: dt.datetime = T0, request_id: str | None = "req-1") -> LedgerEntry:
    return LedgerEntry("medical", ref, at, request_id)


def key_row(ref: str, created: dt.datetime, *, domain: str = "medical") -> DataKeyRecord:
    return DataKeyRecord(
        dek_id=os.urandom(16),
        domain=domain,
        purpose="data",
        kek_id="vaultkit:wrapping",
        kek_version=1,
        wrapped=os.urandom(61),
        state=DekState.ACTIVE,
        created_at=created,
        subject=ref,
        scope="subject",
    )


class TestEntries:
    def test_round_trip_keeps_refs_only(self, tmp_path: Path) -> None:
        """Appended entries read back equal, oldest first; the file holds refs and request ids."""
        ledger = ErasureLedger(tmp_path / "erasures.jsonl")
        assert ledger.entries() == []
        first = [entry(), entry(OTHER, T0 + dt.timedelta(hours=1), None)]
        ledger.append(first)
        ledger.append([entry(at=T0 + dt.timedelta(days=1))])
        assert ledger.entries() == [*first, entry(at=T0 + dt.timedelta(days=1))]
        lines = ledger.path.read_bytes().splitlines()
        assert len(lines) == 3
        assert set(json.loads(lines[0])) == {
            "v",
            "domain",
            "subject_ref",
            "erased_at",
            "request_id",
        }
        assert oct(ledger.path.stat().st_mode & 0o777) == oct(0o600)

    @pytest.mark.parametrize(
        "bad",
        ["alice@example.org", "0123", REF.upper(), "85073012345", REF + "00"],
    )
    def test_an_entry_is_a_ref_never_an_identifier(self, bad: str) -> None:
        """Anything but 32 lowercase hex digits (an e-mail, a national number) is refused."""
        with pytest.raises(ValueError, match="32 lowercase hex") as failure:
            LedgerEntry("medical", bad, T0)
        assert bad not in str(failure.value)

    def test_naive_times_and_odd_request_ids_are_refused(self) -> None:
        """erased_at must be aware; request_id printable and at most 255 characters."""
        with pytest.raises(ValueError, match="timezone-aware"):
            LedgerEntry("medical", REF, dt.datetime(2026, 1, 1))
        for request_id in ("x" * 256, "a\nb"):
            with pytest.raises(ValueError, match="request_id"):
                LedgerEntry("medical", REF, T0, request_id)

    @settings(max_examples=50, deadline=None)
    @given(
        refs=st.lists(st.text("0123456789abcdef", min_size=32, max_size=32), min_size=1),
        seconds=st.integers(0, 10**9),
        request_id=st.none()
        | st.text(st.characters(codec="utf-8"), max_size=40).filter(str.isprintable),
    )
    def test_any_entries_read_back_as_written(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        refs: list[str],
        seconds: int,
        request_id: str | None,
    ) -> None:
        """Property: whatever valid entries are appended are read back, equal and in order."""
        ledger = ErasureLedger(tmp_path_factory.mktemp("ledger") / "l.jsonl")
        at = dt.datetime.fromtimestamp(seconds, dt.UTC)
        written = [LedgerEntry("identity", r, at, request_id) for r in refs]
        ledger.append(written)
        assert ledger.entries() == written


class TestCrashes:
    def test_a_torn_last_line_is_skipped_then_cut_off(self, tmp_path: Path) -> None:
        """A write cut short by a crash (no newline) is skipped on read and cut before the next
        append; the entries before and after it are all there."""
        ledger = ErasureLedger(tmp_path / "erasures.jsonl")
        ledger.append([entry()])
        whole = entry(OTHER)._line()
        with ledger.path.open("ab") as raw:
            raw.write(whole[: len(whole) // 2])  # the crash
        assert ledger.entries() == [entry()]
        ledger.append([entry(OTHER, T0 + dt.timedelta(seconds=5))])
        assert ledger.entries() == [entry(), entry(OTHER, T0 + dt.timedelta(seconds=5))]
        assert ledger.path.read_bytes().count(b"\n") == 2

    def test_a_damaged_line_in_the_middle_is_an_error_that_quotes_nothing(
        self, tmp_path: Path
    ) -> None:
        """A complete line that is not an entry stops the read (no partial replay), naming its
        line number, not its content."""
        ledger = ErasureLedger(tmp_path / "erasures.jsonl")
        ledger.append([entry(), entry(OTHER)])
        data = ledger.path.read_bytes().replace(REF.encode(), b"alice@example.org", 1)
        ledger.path.write_bytes(data)
        with pytest.raises(KeyStoreError, match="line 1") as failure:
            ledger.entries()
        assert "alice" not in str(failure.value)

    def test_dev_full_fails_cleanly(self) -> None:
        """Appending to /dev/full (every write: ENOSPC) raises KeyStoreError saying nothing was
        erased; a device is not read as a ledger."""
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full here")
        ledger = ErasureLedger("/dev/full")
        with pytest.raises(KeyStoreError, match="nothing was erased"):
            ledger.append([entry()])
        with pytest.raises(KeyStoreError, match="not a regular file"):
            ledger.entries()

    def test_a_real_full_file_system_leaves_the_ledger_as_it_was(self, tmp_path: Path) -> None:
        """On a 64 KiB tmpfs (a mount namespace of its own), filled up to 8 KiB: a larger append
        lands in part, then fails with KeyStoreError; the file keeps exactly its earlier entries
        (the part written is cut off again), and a later append fits once there is room."""
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
            from vaultkit._ledger import ErasureLedger, LedgerEntry
            from vaultkit.errors import KeyStoreError
            T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
            ledger = ErasureLedger(os.path.join(mount, "erasures.jsonl"))
            ledger.append([LedgerEntry("medical", "ab" * 16, T0, "before")])
            before = open(ledger.path, "rb").read()
            filler = os.path.join(mount, "filler")
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"x" * 512)
            except OSError:
                pass
            os.close(fd)
            # Room for part of the next write only: it lands in part, then ENOSPC.
            os.truncate(filler, os.path.getsize(filler) - 8192)
            big = [LedgerEntry("medical", "%032x" % i, T0, "r-%d" % i) for i in range(2000)]
            try:
                ledger.append(big)
            except KeyStoreError as exc:
                assert "nothing was erased" in str(exc), exc
            else:
                raise SystemExit("append on a full disk did not fail")
            assert open(ledger.path, "rb").read() == before
            assert [e.request_id for e in ledger.entries()] == ["before"]
            os.remove(filler)
            ledger.append(big[:3])
            assert len(ledger.entries()) == 4
            print("ok")
            """
        )
        done = subprocess.run(
            [unshare, "-rm", sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0 and "mount" in done.stderr and "ok" not in done.stdout:
            if "Operation not permitted" in done.stderr or "unshare failed" in done.stderr:
                pytest.skip(f"no mount namespace here: {done.stderr.strip()[-200:]}")
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _append_many(path: str, worker: int, count: int) -> None:
    ledger = ErasureLedger(path)
    for i in range(count):
        ledger.append([LedgerEntry("medical", f"{worker:02x}{i:030x}", T0, f"w{worker}-{i}")])


def _append_forever(path: str) -> None:
    ledger = ErasureLedger(path)
    i = 0
    while True:
        ledger.append([LedgerEntry("medical", f"{i:032x}", T0, f"r{i}-{j}") for j in range(200)])
        i += 1


class TestConcurrency:
    def test_a_writer_killed_mid_append_leaves_a_readable_ledger(self, tmp_path: Path) -> None:
        """A real crash: a process appending in a loop is SIGKILLed; the ledger reads (every
        complete line valid) and takes the next append."""
        import signal
        import time

        path = str(tmp_path / "erasures.jsonl")
        context = multiprocessing.get_context("spawn")
        writer = context.Process(target=_append_forever, args=(path,))
        writer.start()
        deadline = time.monotonic() + 60
        while (not os.path.exists(path) or os.path.getsize(path) < 200_000) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(30)
        ledger = ErasureLedger(path)
        found = ledger.entries()
        assert found  # whole lines only (a torn last one is skipped); none of them raises
        ledger.append([entry()])
        assert ledger.entries()[-1] == entry()
        assert ledger.path.read_bytes().endswith(b"\n")

    def test_concurrent_writers_in_four_processes_lose_and_tear_nothing(
        self, tmp_path: Path
    ) -> None:
        """Four processes appending 40 entries each at once: 160 whole, valid lines."""
        path = str(tmp_path / "erasures.jsonl")
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_append_many, args=(path, w, 40)) for w in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
            assert worker.exitcode == 0
        found = ErasureLedger(path).entries()
        assert len(found) == 160
        assert {e.request_id for e in found} == {f"w{w}-{i}" for w in range(4) for i in range(40)}


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "memory":
        return MemoryKeyStore()
    made = SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    request.addfinalizer(made.close)
    return made


class TestReplay:
    def test_replay_destroys_what_a_restore_brought_back_and_fences_again(
        self, store: MemoryKeyStore, tmp_path: Path
    ) -> None:
        """Keys of a ledger subject made before its erasure are destroyed (reason erasure) and the
        fence set again; another subject's keys, and keys made after the erasure by a subject let
        back in, are untouched. A second replay changes nothing."""
        before = key_row(REF, T0 - dt.timedelta(days=3))
        also = key_row(REF, T0 - dt.timedelta(days=1))
        bystander = key_row(OTHER, T0 - dt.timedelta(days=3))
        for row in (before, also, bystander):
            store.insert(row)
        store.put_subject(SubjectRecord("medical", REF, relationship_end=T0 - dt.timedelta(days=9)))
        ledger = ErasureLedger(tmp_path / "erasures.jsonl")
        ledger.append([entry()])
        report = ledger.replay(store, now=T0 + dt.timedelta(days=30))
        assert (report.entries, report.keys_destroyed, report.fences_set) == (1, 2, 1)
        for row in (before, also):
            got = store.get(row.dek_id)
            assert got is not None and got.state is DekState.DESTROYED
            assert got.destroy_reason == "erasure" and got.wrapped == b""
        assert store.get(bystander.dek_id).state is DekState.ACTIVE  # type: ignore[union-attr]
        subject = store.get_subject("medical", REF)
        assert subject is not None and subject.fenced_at == T0 and subject.erased_at == T0
        assert subject.request_id == "req-1"
        assert subject.relationship_end == T0 - dt.timedelta(days=9)
        again = ledger.replay(store)
        assert (again.keys_destroyed, again.fences_set) == (0, 0)

    def test_a_subject_let_back_in_after_its_erasure_stays_in(
        self, store: MemoryKeyStore, tmp_path: Path
    ) -> None:
        """A store that records the erasure and a lifted fence (allow_subject) keeps it lifted,
        and the subject's new keys, made after the erasure, stay live."""
        fresh = key_row(REF, T0 + dt.timedelta(days=2))
        store.insert(fresh)
        store.put_subject(SubjectRecord("medical", REF, erased_at=T0, request_id="req-1"))
        ledger = ErasureLedger(tmp_path / "erasures.jsonl")
        ledger.append([entry()])
        report = ledger.replay(store)
        assert (report.keys_destroyed, report.fences_set) == (0, 0)
        assert store.get(fresh.dek_id).state is DekState.ACTIVE  # type: ignore[union-attr]
        assert store.get_subject("medical", REF).fenced_at is None  # type: ignore[union-attr]

    def test_replay_needs_a_store_with_subject_keys(self, tmp_path: Path) -> None:
        """A key store without SupportsScopedKeys is a configuration error, not a silent skip."""
        ledger = ErasureLedger(tmp_path / "erasures.jsonl")
        with pytest.raises(ConfigurationError, match="SupportsScopedKeys"):
            ledger.replay(object())
