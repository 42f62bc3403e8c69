"""``vaultkit audience hash`` with Parquet: the CSV path's upload rows and reject reasons, on the
Arrow kernels; 0600 outputs put in place only when complete; no plaintext in the upload."""

from __future__ import annotations

import csv
import random
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vaultkit.audiences import hash_csv
from vaultkit.audiences.parquet import hash_parquet
from vaultkit.cli.main import main
from vaultkit.errors import ConfigurationError


def members(count: int, seed: int = 7) -> dict[str, list[str | None]]:
    """E-mail and phone columns with valid, invalid, hashed, MD5 and missing values."""
    rnd = random.Random(seed)
    emails: list[str | None] = []
    phones: list[str | None] = []
    for i in range(count):
        emails.append(
            rnd.choice(
                [
                    f"First.Last{i}+x@GMail.com",
                    f" Jan{i}@Example.BE ",
                    f"bad{i}",
                    "d41d8cd98f00b204e9800998ecf8427e",
                    "A" * 64,
                    None,
                ]
            )
        )
        phones.append(
            rnd.choice([f"0470 {rnd.randint(100000, 999999)}", "12", f"+3247{i:07d}", None])
        )
    return {"E-mail": emails, "GSM": phones}


def _write_both(tmp_path: Path, data: dict[str, list[str | None]]) -> tuple[Path, Path]:
    parquet = tmp_path / "members.parquet"
    pq.write_table(pa.table(data), parquet, row_group_size=97)
    text = tmp_path / "members.csv"
    with open(text, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(data))
        writer.writerows(
            ["" if v is None else v for v in row] for row in zip(*data.values(), strict=True)
        )
    return parquet, text


def _read(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("platform", ["google", "meta"])
@pytest.mark.parametrize("fields", [("E-mail", "GSM"), ("E-mail",)])
def test_parquet_gives_the_csv_paths_upload_and_rejects(
    tmp_path: Path, platform: str, fields: tuple[str, ...]
) -> None:
    data = {k: v for k, v in members(600).items() if k in fields}
    parquet, text = _write_both(tmp_path, data)
    from_csv = hash_csv(
        text,
        tmp_path / "a.csv",
        platform=platform,
        default_region="BE",
        rejects_path=tmp_path / "ra.csv",
    )
    from_parquet = hash_parquet(
        parquet,
        tmp_path / "b.csv",
        platform=platform,
        default_region="BE",
        output_format="csv",
        rejects_path=tmp_path / "rb.csv",
        batch_rows=128,
    )
    assert (tmp_path / "b.csv").read_bytes() == (tmp_path / "a.csv").read_bytes()
    assert (from_parquet.rows, from_parquet.accepted, from_parquet.rejected) == (
        from_csv.rows,
        from_csv.accepted,
        from_csv.rejected,
    )
    assert from_parquet.reasons == from_csv.reasons
    # Same rejects, numbered by data row (the CSV path numbers file lines: the header is line 1).
    csv_rejects = [[str(int(r[0]) - 1), *r[1:]] for r in _read(tmp_path / "ra.csv")[1:]]
    assert _read(tmp_path / "rb.csv")[1:] == csv_rejects
    # Parquet output: the same hashes, nulls where CSV has empty fields.
    hash_parquet(parquet, tmp_path / "c.parquet", platform=platform, default_region="BE")
    table = pq.read_table(tmp_path / "c.parquet")
    rows = [["" if v is None else v for v in row.values()] for row in table.to_pylist()]
    assert [table.schema.names, *rows] == _read(tmp_path / "a.csv")


def test_the_cli_reads_and_writes_parquet_by_suffix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = members(50)
    parquet, _ = _write_both(tmp_path, data)
    out = tmp_path / "upload.parquet"
    assert (
        main(
            [
                "audience",
                "hash",
                str(parquet),
                "-o",
                str(out),
                "--platform",
                "google",
                "--default-region",
                "BE",
                "--rejects",
                str(tmp_path / "rejects.csv"),
            ]
        )
        == 0
    )
    assert "50 rows" in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "rejects.csv").stat().st_mode) == 0o600
    raw = out.read_bytes() + (tmp_path / "rejects.csv").read_bytes()
    for value in [*data["E-mail"], *data["GSM"]]:
        if value and len(value.strip()) > 4 and len(value) not in (32, 64):
            assert value.strip().encode() not in raw
    assert pq.read_table(out).schema.names == [
        "Email",
        "Phone",
        "First Name",
        "Last Name",
        "Country",
        "Zip",
    ]
    # Named formats win over suffixes.
    named = tmp_path / "upload.bin"
    assert (
        main(
            [
                "audience",
                "hash",
                str(parquet),
                "-o",
                str(named),
                "--output-format",
                "csv",
                "--platform",
                "meta",
                "--default-region",
                "BE",
            ]
        )
        == 0
    )
    assert named.read_text().startswith("EMAIL,PHONE,")


def test_what_the_parquet_path_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parquet = tmp_path / "members.parquet"
    pq.write_table(pa.table({"email": ["a@b.be"], "Voornaam": ["Jan"]}), parquet)
    out = tmp_path / "upload.parquet"
    with pytest.raises(ConfigurationError, match=r"e-mail and phone only.*first_name \(Voornaam\)"):
        hash_parquet(parquet, out, platform="google")
    assert not out.exists()
    assert not list(tmp_path.glob(".*tmp*"))
    text = tmp_path / "members.csv"
    text.write_text("email\na@b.be\n")
    assert main(["audience", "hash", str(text), "-o", str(out), "--platform", "google"]) != 0
    assert "Parquet output needs Parquet input" in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match="no such file"):
        hash_parquet(tmp_path / "missing.parquet", out, platform="google")
    pq.write_table(pa.table({"email": [1.5]}), parquet)
    with pytest.raises(ConfigurationError, match="must hold text"):
        hash_parquet(parquet, out, platform="google")
    assert not out.exists()
