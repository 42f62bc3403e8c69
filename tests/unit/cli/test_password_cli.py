"""Tests for `vaultkit password check` and `vaultkit password calibrate`."""

from __future__ import annotations

import io

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
