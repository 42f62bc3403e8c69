"""Tests for vaultkit._files: every file is written in full and verified, or not at all."""

from __future__ import annotations

import base64
import os
import resource
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_leaks import frame_leaks, raised_by

from vaultkit._files import atomic_text_outputs, write_atomic
from vaultkit._redact import Secret
from vaultkit.errors import ConfigurationError, KeyProviderError
from vaultkit.keys.local import MASTER_KEY_ENV, MASTER_PASSPHRASE_ENV

ROOT = Path(__file__).resolve().parents[2]


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


@pytest.mark.parametrize(
    ("limit", "code", "message"),
    [(20, 3, "cannot write master key file"), (120, 4, "cannot write keyring")],
    ids=["key-file-fails", "keyring-fails"],
)
def test_keys_init_under_a_file_size_limit_leaves_nothing_half_made(
    tmp_path: Path, limit: int, code: int, message: str
) -> None:
    """`vaultkit keys init` under a real file-size limit exits with a vaultkit error and leaves
    neither a truncated keyring nor a master key file for a keyring that does not exist."""
    env = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, MASTER_PASSPHRASE_ENV)}
    child = subprocess.run(
        [sys.executable, "-m", "vaultkit", "keys", "init", "--keyring", "k.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**env, "PYTHONPATH": str(ROOT)},
        preexec_fn=_limit_file_size(limit),
    )
    assert child.returncode == code, child.stderr[-2000:]
    assert message in child.stderr and "Traceback" not in child.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "k.json.lock") == []


def test_a_written_master_key_file_is_private_and_complete(tmp_path: Path) -> None:
    """`vaultkit keys init` writes the new master key file with mode 0600, holding the key that
    opens the keyring."""
    from vaultkit.keys import LocalKeyProvider

    env = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, MASTER_PASSPHRASE_ENV)}
    child = subprocess.run(
        [sys.executable, "-m", "vaultkit", "keys", "init", "--keyring", "k.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert child.returncode == 0, child.stderr
    key_file = tmp_path / "k.json.master-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    master = base64.b64decode(key_file.read_text().strip())
    LocalKeyProvider(tmp_path / "k.json", master_key=master, create_keys=False)


def test_exclusive_write_never_replaces_a_file(tmp_path: Path) -> None:
    """An exclusive write refuses an existing name and leaves it, and no temporary file, behind."""
    target = tmp_path / "master-key"
    target.write_text("existing\n")
    with pytest.raises(ConfigurationError, match="already exists"):
        write_atomic(target, b"new\n", what="key", error=ConfigurationError, exclusive=True)
    assert target.read_text() == "existing\n"
    assert [p.name for p in tmp_path.iterdir()] == ["master-key"]


def test_a_file_that_does_not_verify_is_not_put_in_place(tmp_path: Path) -> None:
    """When the caller's check refuses what was read back, the old file and its backup stay."""
    target, backup = tmp_path / "ring", tmp_path / "ring.bak"
    write_atomic(target, b"one", what="ring", error=KeyProviderError, backup=backup)
    write_atomic(target, b"two", what="ring", error=KeyProviderError, backup=backup)
    assert (target.read_bytes(), backup.read_bytes()) == (b"two", b"one")
    with pytest.raises(KeyProviderError, match="did not verify"):
        write_atomic(
            target,
            b"three",
            what="ring",
            error=KeyProviderError,
            backup=backup,
            check=lambda b: False,
        )
    assert (target.read_bytes(), backup.read_bytes()) == (b"two", b"one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ring", "ring.bak"]


def test_secret_content_is_in_no_frame_of_a_failed_write(tmp_path: Path) -> None:
    """A secret written through write_atomic (a master key) is in no frame local of its error."""
    key = os.urandom(32)
    failed = raised_by(
        write_atomic,
        tmp_path / "missing-directory" / "key",
        Secret(base64.b64encode(key) + b"\n"),
        what="master key file",
        error=ConfigurationError,
    )
    assert isinstance(failed, ConfigurationError)
    assert frame_leaks(failed, {"master key": key}) == []


def test_streamed_outputs_are_renamed_together_or_not_at_all(tmp_path: Path) -> None:
    """An error inside the block leaves both final names as they were; success writes both, 0600."""
    first, second = tmp_path / "out.csv", tmp_path / "rejects.csv"
    first.write_text("old out\n")
    with (
        pytest.raises(RuntimeError),
        atomic_text_outputs([first, second], what="audience file", error=ConfigurationError) as (
            a,
            b,
        ),
    ):
        a.write("new out\n")
        b.write("new rejects\n")
        raise RuntimeError("half-way")
    assert first.read_text() == "old out\n" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    with atomic_text_outputs([first, second], what="audience file", error=ConfigurationError) as (
        a,
        b,
    ):
        a.write("new out\n")
        b.write("new rejects\n")
    assert (first.read_text(), second.read_text()) == ("new out\n", "new rejects\n")
    assert {stat.S_IMODE(p.stat().st_mode) for p in (first, second)} == {0o600}
