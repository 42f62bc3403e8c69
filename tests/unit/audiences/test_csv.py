"""Tests for CSV audience hashing and `vaultkit audience hash`: streaming, workers, bad input."""

from __future__ import annotations

import csv
import os
import random
import resource
import signal
import stat
import string
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vaultkit.audiences import COLUMNS, hash_identifier
from vaultkit.audiences._csv import hash_csv
from vaultkit.cli.main import main
from vaultkit.errors import AudienceError, ConfigurationError

HEADER = [
    "Member",
    "E-mail",
    "Phone",
    "Voornaam",
    "Achternaam",
    "Land",
    "Postcode",
    "Geboortedatum",
    "Geslacht",
]


def make_members(path: Path, count: int, *, seed: int = 1) -> list[list[str]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(count):
        first = "".join(rnd.choices(string.ascii_lowercase, k=7)).title()
        last = "".join(rnd.choices(string.ascii_lowercase, k=9)).title()
        email = f"{first}.{last}{i}@{rnd.choice(['gmail.com', 'example.be', 'telenet.be'])}"
        phone = f"0470 {rnd.randint(100000, 999999)}" if i % 3 else "12"  # every third one invalid
        rows.append(
            [
                str(100000 + i),
                email,
                phone,
                first,
                last,
                "BE",
                f"{rnd.randint(1000, 9999)}",
                f"19{rnd.randint(40, 99)}-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}",
                rnd.choice("MFX"),
            ]
        )
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return rows


def read(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("platform", ["google", "meta"])
def test_workers_give_the_same_file_as_one(tmp_path: Path, platform: str) -> None:
    """Two workers produce byte for byte the output of one, in input order."""
    make_members(tmp_path / "in.csv", 2500)
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    r1 = hash_csv(
        tmp_path / "in.csv", one, platform=platform, default_region="BE", workers=1, chunk_rows=300
    )
    r2 = hash_csv(
        tmp_path / "in.csv", two, platform=platform, default_region="BE", workers=2, chunk_rows=300
    )
    assert one.read_bytes() == two.read_bytes()
    assert (
        (r1.rows, r1.accepted, r1.reasons)
        == (r2.rows, r2.accepted, r2.reasons)
        == (2500, 2500, r1.reasons)
    )
    assert read(one)[0] == list(COLUMNS[platform])  # type: ignore[index]
    assert r1.reasons["phone_invalid"] == 834


def test_no_plaintext_identifier_leaves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No input value of 5 characters or more appears in the output, rejects file or terminal."""
    rows = make_members(tmp_path / "in.csv", 600)
    for platform in ("google", "meta"):
        out, rejects = tmp_path / f"{platform}.csv", tmp_path / f"{platform}-rejects.csv"
        assert (
            main(
                [
                    "audience",
                    "hash",
                    str(tmp_path / "in.csv"),
                    "--platform",
                    platform,
                    "--default-region",
                    "BE",
                    "-o",
                    str(out),
                    "--rejects",
                    str(rejects),
                    "--workers",
                    "2",
                ]
            )
            == 0
        )
        produced = out.read_text() + rejects.read_text() + "".join(capsys.readouterr())
        leaks = {v for row in rows for v in row[1:] if len(v) >= 5 and v in produced}
        assert leaks == set()


def test_email_only_fast_path_matches_the_general_rules(tmp_path: Path) -> None:
    """A file with only an e-mail column gives the same hashes as full records would."""
    (tmp_path / "in.csv").write_text("email\nJan.Peeters+news@GMail.com\nbad\n\nmarie@example.be\n")
    hash_csv(
        tmp_path / "in.csv",
        tmp_path / "out.csv",
        platform="google",
        rejects_path=tmp_path / "r.csv",
    )
    assert read(tmp_path / "out.csv")[1:] == [
        [hash_identifier("janpeeters@gmail.com"), "", "", "", "", ""],
        [hash_identifier("marie@example.be"), "", "", "", "", ""],
    ]
    assert read(tmp_path / "r.csv")[1:] == [["3", "rejected", "email_invalid no_identifier"]]


def test_column_mapping(tmp_path: Path) -> None:
    """--map names headers that are not recognised by name; unknown fields and headers are errors."""
    (tmp_path / "in.csv").write_text("Courriel,Tel\na@x.be,+32470123456\n")
    report = hash_csv(
        tmp_path / "in.csv",
        tmp_path / "out.csv",
        platform="meta",
        mapping={"email": "Courriel", "phone": "Tel"},
    )
    assert report.accepted == 1 and read(tmp_path / "out.csv")[1][1] == hash_identifier(
        "32470123456"
    )
    with pytest.raises(ConfigurationError, match="not in the input header"):
        hash_csv(
            tmp_path / "in.csv", tmp_path / "o2.csv", platform="meta", mapping={"email": "Mail"}
        )
    with pytest.raises(ConfigurationError, match="unknown field"):
        hash_csv(
            tmp_path / "in.csv", tmp_path / "o2.csv", platform="meta", mapping={"mail": "Courriel"}
        )
    assert not (tmp_path / "o2.csv").exists()


def test_ragged_rows_are_counted(tmp_path: Path) -> None:
    """Rows with too few or too many fields are rejected as row_malformed, not misread."""
    (tmp_path / "in.csv").write_text(
        "email,phone\na@x.be,+32470123456\nb@x.be\nc@x.be,+32470123456,extra\n"
    )
    report = hash_csv(
        tmp_path / "in.csv",
        tmp_path / "out.csv",
        platform="google",
        rejects_path=tmp_path / "r.csv",
    )
    assert (report.accepted, report.rejected, report.reasons["row_malformed"]) == (1, 2, 2)
    assert [r[:2] for r in read(tmp_path / "r.csv")[1:]] == [["3", "rejected"], ["4", "rejected"]]


def test_wrong_encoding_leaves_no_output(tmp_path: Path) -> None:
    """Undecodable input half-way gives a clear error and no output file that looks complete."""
    good = "".join(f"m{i}@x.be\n" for i in range(3000))
    (tmp_path / "in.csv").write_bytes(b"email\n" + good.encode() + "Zoë@x.be\n".encode("latin-1"))
    with pytest.raises(AudienceError, match="not valid in the given encoding"):
        hash_csv(
            tmp_path / "in.csv",
            tmp_path / "out.csv",
            platform="google",
            chunk_rows=500,
            rejects_path=tmp_path / "r.csv",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    report = hash_csv(
        tmp_path / "in.csv", tmp_path / "out.csv", platform="google", encoding="latin-1"
    )
    assert report.accepted == 3001


def test_nul_bytes_and_empty_files(tmp_path: Path) -> None:
    """A NUL byte in a value is a counted rejection; an empty file or no identifier column an error."""
    (tmp_path / "nul.csv").write_bytes(b"email\na@x.be\x00\nb@x.be\n")
    report = hash_csv(tmp_path / "nul.csv", tmp_path / "nul-out.csv", platform="google")
    assert (report.accepted, report.rejected, report.reasons["email_invalid"]) == (1, 1, 1)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(AudienceError, match="empty"):
        hash_csv(tmp_path / "empty.csv", tmp_path / "out.csv", platform="google")
    (tmp_path / "nocols.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(ConfigurationError, match="no identifier column"):
        hash_csv(tmp_path / "nocols.csv", tmp_path / "out.csv", platform="google")
    assert not (tmp_path / "out.csv").exists()


def test_rejects_with_values_only_when_asked(tmp_path: Path) -> None:
    """The rejects file copies plaintext values only with --rejects-with-values."""
    (tmp_path / "in.csv").write_text("email\nnot-an-address\n")
    hash_csv(
        tmp_path / "in.csv", tmp_path / "o.csv", platform="google", rejects_path=tmp_path / "r.csv"
    )
    assert "not-an-address" not in (tmp_path / "r.csv").read_text()
    hash_csv(
        tmp_path / "in.csv",
        tmp_path / "o.csv",
        platform="google",
        rejects_path=tmp_path / "r.csv",
        rejects_with_values=True,
    )
    assert "not-an-address" in (tmp_path / "r.csv").read_text()


def test_cli_summary_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI prints counts per reason; bad options exit with a configuration error code."""
    make_members(tmp_path / "in.csv", 30)

    def run(*options: str, output: Path = tmp_path / "x.csv") -> int:
        return main(["audience", "hash", str(tmp_path / "in.csv"), *options, "-o", str(output)])

    assert (
        run(
            "--platform",
            "google",
            "--default-region",
            "BE",
            "--workers",
            "1",
            output=tmp_path / "out.csv",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "30 rows" in out and "30 accepted" in out and "phone_invalid: 10" in out
    assert run("--platform", "google", "--rules", "1999") == 3
    assert run("--platform", "google", "--map", "email") == 3
    assert run("--platform", "meta", output=tmp_path / "in.csv") == 3


def test_quoted_line_breaks_survive_block_cuts(tmp_path: Path) -> None:
    """Fields with line breaks and quotes inside are never split between blocks or workers."""
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "note"])
        for i in range(400):
            writer.writerow([f"m{i}@x.be", f'line one\nline "two"\nline {i}'])
    one = hash_csv(
        tmp_path / "in.csv", tmp_path / "one.csv", platform="google", chunk_rows=7, workers=1
    )
    two = hash_csv(
        tmp_path / "in.csv", tmp_path / "two.csv", platform="google", chunk_rows=7, workers=2
    )
    assert one.accepted == two.accepted == 400 and one.rejected == 0
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    assert read(tmp_path / "one.csv")[400][0] == hash_identifier("m399@x.be")


def test_unclosed_quote_is_a_clear_error(tmp_path: Path) -> None:
    """A quoted field that never closes is reported, with no output left behind."""
    (tmp_path / "in.csv").write_text('email,note\na@x.be,"open\nb@x.be,x\n')
    with pytest.raises(AudienceError, match="never closed"):
        hash_csv(tmp_path / "in.csv", tmp_path / "out.csv", platform="google")
    assert not (tmp_path / "out.csv").exists()


def test_output_and_rejects_are_created_0600(tmp_path: Path) -> None:
    """The upload file (pseudonymous personal data) and the rejects file (plaintext when asked)
    are readable by their owner only, whatever the umask lets through."""
    (tmp_path / "in.csv").write_text("email\na@example.be\nnot-an-address\n")
    old = os.umask(0o022)
    try:
        hash_csv(
            tmp_path / "in.csv",
            tmp_path / "out.csv",
            platform="meta",
            rejects_path=tmp_path / "r.csv",
            rejects_with_values=True,
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "r.csv").stat().st_mode) == 0o600


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_short_write_leaves_the_previous_output(tmp_path: Path, workers: str) -> None:
    """Under a real file-size limit `vaultkit audience hash` fails with a clear error (exit 3, no
    traceback): the previous upload and rejects files are unchanged and no partial file is left."""
    make_members(tmp_path / "in.csv", 4000)
    (tmp_path / "out.csv").write_text("previous upload\n")
    (tmp_path / "r.csv").write_text("previous rejects\n")
    root = Path(__file__).resolve().parents[3]
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaultkit",
            "audience",
            "hash",
            str(tmp_path / "in.csv"),
            "-o",
            str(tmp_path / "out.csv"),
            "--rejects",
            str(tmp_path / "r.csv"),
            "--platform",
            "google",
            "--default-region",
            "BE",
            "--workers",
            workers,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(root)},
        preexec_fn=_limit_file_size(64 * 1024),  # the output of 4000 members is ~1 MB
    )
    assert child.returncode == 3, child.stderr[-2000:]
    assert "cannot write audience file" in child.stderr
    assert "Traceback" not in child.stderr
    assert (tmp_path / "out.csv").read_text() == "previous upload\n"
    assert (tmp_path / "r.csv").read_text() == "previous rejects\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv", "r.csv"]
