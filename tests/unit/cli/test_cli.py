"""Tests for the command line: demo, keys init, bench and exit codes."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vaultkit.cli.main import main
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV, MASTER_PASSPHRASE_ENV


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    monkeypatch.delenv(MASTER_PASSPHRASE_ENV, raising=False)


class TestDemo:
    def test_demo_runs_with_no_setup(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The demo encrypts, shows ciphertext at rest and the decrypted view, and refuses a copy."""
        assert main(["demo"]) == 0
        out = capsys.readouterr().out
        assert "At rest" in out and "Through the ORM" in out
        assert "Jan Peeters" in out  # the decrypted view of an invented member
        assert "-> member 100018, Marie Dubois" in out  # the blind-index lookup
        assert "Member.email == ... raises QueryError" in out
        assert "Rows still in plaintext in members.email: 0" in out
        assert "refused: DecryptionError" in out
        assert "Google Customer Match export" in out and "3 accepted, 0 rejected" in out
        assert "note: SealedValue(domain='medical')" in out  # the claims handler's view
        assert "note: Type 2 diabetes" in out  # the coach's view
        assert (
            "hash chain intact" in out
            and " decrypt   coach-17 " in out
            and " denied    claims-handler-3 " in out
        )
        assert "jan.peeters@example.be" not in out.split("Google Customer Match export")[1]
        lines = out.splitlines()
        keys = out.split("Keys in the key store")[1].splitlines()[1:]
        data = [line for line in keys if line.startswith("  data ")]
        # One process-scoped DEK each for identity and financial, a key per member for the
        # medical notes (the erased member's destroyed), a key per hour for the chats (the one
        # of 73 hours ago destroyed by the retention sweep).
        assert sum("(process scope)" in line for line in data) == 2
        medical = [line for line in data if "domain medical" in line]
        assert len(medical) == 3 and sum("DESTROYED (erasure)" in line for line in medical) == 1
        chats = [line for line in data if "domain chats" in line]
        assert len(chats) == 2 and sum("DESTROYED (retention)" in line for line in chats) == 1
        # The e-mail index key, and the request log's key of member references (the erasure
        # recorded itself there).
        index = [line for line in lines if line.startswith("  index ")]
        assert len(index) == 2 and sum("vaultkit_subject_requests" in line for line in index) == 1
        assert sum(line.startswith("  wrapping ") for line in lines) == 2  # medical, chats

    def test_demo_erases_a_member_and_reports_retention(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The demo erases one member (receipt without identifier), their note reads as erased
        while the others still read, a chat past 72 h reads as expired, and the report is clean."""
        import re

        assert main(["demo"]) == 0
        out = capsys.readouterr().out
        after = out.split("asks for erasure")[1]
        receipt = after.split("The medical notes as coach-17 now")[0]
        assert "receipt REQ-2026-0107: granted, reason art17" in receipt
        assert "domain medical: erased, 1 key destroyed" in receipt
        assert "table members: 1 row unreadable" in receipt
        # No identifier in the receipt: no member number, no name, no 32-hex key-store ref.
        assert "100019" not in receipt and "Sanne" not in receipt
        assert not re.search(r"[0-9a-f]{16,}", receipt)
        erased_view = after.split("The medical notes as coach-17 now")[1].split("Teleconsultation")[
            0
        ]
        assert "100019  Sanne de Vries  note: erased (None)" in erased_view
        assert "100017  Jan Peeters     note: Type 2 diabetes" in erased_view
        assert "100018  Marie Dubois    note: Physiotherapy" in erased_view
        assert "Blind-index lookup of the erased member's e-mail: 0 rows" in erased_view
        assert "chat 1 (73 h old): past retention (None)" in out
        assert "chat 2 (new     ): 'Member: better, thanks!'" in out
        assert "vault.enforce_retention(): 1 key destroyed" in out
        report = out.split("vault.retention_report()")[1].split("Jan's medical note")[0]
        assert re.search(r"chats +bucket +PT72H after capture +1 +1 +0", report)
        assert re.search(r"medical +subject +- +2 +1 +0", report)
        assert "violations: 0" in report
        assert " erase     dpo-office " in out and "hash chain intact" in out

    def test_demo_keeps_its_files_with_dir(self, tmp_path: Path) -> None:
        """With --dir the keyring and database stay for inspection; the ciphertext is at rest."""
        assert main(["demo", "--dir", str(tmp_path)]) == 0
        assert (tmp_path / "keyring.json").exists()
        raw = (tmp_path / "demo.db").read_bytes()
        assert b"Jan Peeters" not in raw and b"diabetes" not in raw
        assert b"new diet" not in raw and b"better, thanks" not in raw  # the chats
        import sqlite3

        db = sqlite3.connect(tmp_path / "demo.db")
        try:
            indexes = dict(db.execute("select member_no, email_index from members").fetchall())
        finally:
            db.close()
        # The erased member's blind-index cell is nulled; the others' stay.
        assert indexes[100019] is None and indexes[100017] is not None

    def test_module_entry_point(self) -> None:
        """python -m vaultkit demo works as a separate process."""
        result = subprocess.run(
            [sys.executable, "-m", "vaultkit", "demo"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert "refused" in result.stdout


class TestKeysInit:
    def test_new_master_key_goes_to_a_private_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """keys init writes keyring and master key with mode 0600 and tells where the key must go."""
        keyring = tmp_path / "keyring.json"
        assert (
            main(
                [
                    "keys",
                    "init",
                    "--keyring",
                    str(keyring),
                    "--domain",
                    "identity",
                    "--domain",
                    "medical",
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        key_file = tmp_path / "keyring.json.master-key"
        master = key_file.read_text().strip()
        assert master not in out
        assert MASTER_KEY_ENV in out and str(key_file) in out
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
        assert "domain identity: KEK v1" in out and "domain medical: KEK v1" in out
        provider = LocalKeyProvider(keyring, master_key=base64.b64decode(master))
        assert provider.domains() == ["identity", "medical"]

    def test_refuses_to_overwrite(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An existing keyring is never overwritten; the exit code says configuration error."""
        keyring = tmp_path / "keyring.json"
        assert main(["keys", "init", "--keyring", str(keyring)]) == 0
        before = keyring.read_bytes()
        assert main(["keys", "init", "--keyring", str(keyring)]) == 3
        assert "already exists" in capsys.readouterr().err
        assert keyring.read_bytes() == before

    def test_uses_master_key_from_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With VAULTKIT_MASTER_KEY set, no key file is written."""
        monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(bytes(32)).decode())
        assert main(["keys", "init", "--keyring", str(tmp_path / "k.json")]) == 0
        assert not (tmp_path / "k.json.master-key").exists()

    def test_passphrase_from_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--passphrase takes VAULTKIT_MASTER_PASSPHRASE and refuses short ones."""
        monkeypatch.setenv(MASTER_PASSPHRASE_ENV, "short")
        assert main(["keys", "init", "--keyring", str(tmp_path / "k.json"), "--passphrase"]) == 3
        assert not (tmp_path / "k.json").exists()

    def test_malformed_master_key_is_a_clean_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad VAULTKIT_MASTER_KEY gives exit code 3 and one line, no traceback."""
        monkeypatch.setenv(MASTER_KEY_ENV, "bm90IDMyIGJ5dGVz")
        assert main(["keys", "init", "--keyring", str(tmp_path / "k.json")]) == 3
        err = capsys.readouterr().err
        assert "ConfigurationError" in err and "Traceback" not in err and "bm90IDMy" not in err


class TestBench:
    def test_quick_bench_prints_parameters_and_ratios(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """vaultkit bench --quick prints the parameters and a table of ratios."""
        assert main(["bench", "--quick"]) == 0
        out = capsys.readouterr().out
        assert "parameters:" in out and "| 4096 B | decrypt |" in out


def test_usage_errors_exit_2() -> None:
    """An unknown command is a usage error (exit code 2)."""
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_console_script_is_installed() -> None:
    """The vaultkit console script exists next to the interpreter."""
    script = Path(sys.executable).with_name("vaultkit")
    assert script.exists() or os.name == "nt"
