"""Tests for `vaultkit password check` and `vaultkit password calibrate`."""

from __future__ import annotations

import hashlib
import io
import socket
from pathlib import Path

import pytest

from vaultkit.cli.main import main


@pytest.mark.parametrize(
    ("password", "code", "verdict"),
    [
        ("correct horse battery staple", 0, "verdict: accept"),
        ("Summer2024!", 1, "verdict: reject (too_weak)"),
    ],
)
def test_check_from_stdin_never_prints_the_password(
    password: str,
    code: int,
    verdict: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The verdict and feedback are printed; the password is not; the exit code tells the verdict."""
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert main(["password", "check", "--stdin"]) == code
    out, err = capsys.readouterr()
    assert verdict in out
    assert password not in out and password not in err


def test_check_penalises_user_inputs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--user-input makes a password built on the user's own data weak."""
    monkeypatch.setattr("sys.stdin", io.StringIO("JanPeeters1978\n"))
    assert (
        main(
            [
                "password",
                "check",
                "--stdin",
                "--user-input",
                "jan.peeters@example.be",
                "--user-input",
                "1978",
            ]
        )
        == 1
    )
    assert "reject" in capsys.readouterr().out


def test_calibrate_prints_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    """calibrate reports argon2id parameters and the measured time."""
    assert main(["password", "calibrate", "--target-ms", "1", "--memory-mib", "8"]) == 0
    out = capsys.readouterr().out
    assert "argon2id time_cost=3 memory_cost=8192 KiB" in out and "ms per hash" in out


def _range_dir(tmp_path: Path, password: str) -> Path:
    digest = hashlib.sha1(password.encode(), usedforsecurity=False).hexdigest().upper()
    (tmp_path / f"{digest[:5]}.txt").write_bytes(
        f"{'0' * 35}:4\r\n{digest[5:]}:17\r\n{'F' * 35}:0".encode()
    )
    return tmp_path


def test_check_with_a_pwned_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--pwned-dir rejects a strong password found in the range files, with the breach message."""
    strong = "correct horse battery staple"
    monkeypatch.setattr("sys.stdin", io.StringIO(strong + "\n"))
    assert (
        main(["password", "check", "--stdin", "--pwned-dir", str(_range_dir(tmp_path, strong))])
        == 1
    )
    out, err = capsys.readouterr()
    assert "verdict: reject (breached)" in out
    assert "appeared in a data breach" in out
    assert strong not in out + err


def test_check_with_an_unreachable_mirror_fails_closed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--pwned-url with nothing listening exits 4 with a clear message and no verdict."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery staple\n"))
    code = main(
        [
            "password",
            "check",
            "--stdin",
            "--pwned-url",
            f"http://127.0.0.1:{port}",
            "--pwned-timeout",
            "1",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 4
    assert "verdict" not in out and "mirror is unavailable" in err


def test_check_with_context_words(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--context-word makes a password built on the organisation's name weak."""
    monkeypatch.setattr("sys.stdin", io.StringIO("Vivamedis2024!\n"))
    assert main(["password", "check", "--stdin", "--context-word", "Vivamedis"]) == 1
    assert "reject (too_weak)" in capsys.readouterr().out


def test_pwned_flags_are_exclusive_and_checked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two breach sources are a usage error; a missing directory is a configuration error (exit 3)."""
    with pytest.raises(SystemExit) as info:
        main(["password", "check", "--pwned-dir", str(tmp_path), "--pwned-url", "http://x"])
    assert info.value.code == 2
    assert main(["password", "check", "--stdin", "--pwned-dir", str(tmp_path / "absent")]) == 3
