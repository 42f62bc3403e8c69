"""``vaultkit export``, ``export withdraw`` and ``export destroy-key`` on a vaultkit.toml, a local
keyring and SQLite databases: what a data steward runs."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from vaultkit.cli.main import main
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV, MASTER_PASSPHRASE_ENV

CONFIG = """\
key_store = "sqlite:///keys.db"

[providers.keyring]
type = "local"
path = "keyring.json"

[domains.research]
provider = "keyring"
audited = true
"""
SPEC = """\
[export]
project = "prevention-2026"
recipient = "uni-a"
source = "claims"
member = "member_id"
k = 5
quasi_identifiers = ["region", "sex"]

[columns.pid]
source = "member_id"
transform = "pseudonym"

[columns.region]
source = "postal_code"
transform = "generalise"
method = "postal"
digits = 1

[columns.sex]
transform = "keep"

[columns.claimed]
source = "claimed_on"
transform = "date_shift"
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A keyring with a research KEK, vaultkit.toml, a claims table and a spec, in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MASTER_PASSPHRASE_ENV, raising=False)
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    LocalKeyProvider("keyring.json", create_keys=True).primary("research")
    (tmp_path / "vaultkit.toml").write_text(CONFIG)
    (tmp_path / "cohort.toml").write_text(SPEC)
    engine = sa.create_engine("sqlite:///data.db")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE claims (member_id INTEGER, postal_code TEXT, sex TEXT, "
                "claimed_on DATE, email TEXT)"
            )
        )
        conn.execute(
            sa.text("INSERT INTO claims VALUES (:m, :p, :s, :d, :e)"),
            [
                {
                    "m": 7000 + i,
                    "p": f"{1 + i % 2}000",
                    "s": "FM"[i % 2],
                    "d": f"2026-0{1 + i % 9}-1{i % 10}",
                    "e": f"m{i}@example.be",
                }
                for i in range(40)
            ],
        )
    engine.dispose()
    yield tmp_path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([*args, "--config", "vaultkit.toml"])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_withdraw_destroy(
    app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export writes the file and reports k; withdraw prints the members' pseudonyms and never
    their ids; destroy-key makes the dataset unlinkable and the export refused."""
    code, out, err = run(
        [
            "export",
            "--spec",
            "cohort.toml",
            "--out",
            "cohort.parquet",
            "--data",
            "sqlite:///data.db",
            "--json",
        ],
        capsys,
    )
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["rows_out"] == 40 and report["achieved_k"] == 20 and report["audited"]
    table = pq.read_table(app / "cohort.parquet")
    assert table.column_names == ["pid", "region", "sex", "claimed"]
    assert "email" not in table.column_names

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"7003\n7004\n")))
    code, out, err = run(
        ["export", "withdraw", "--recipient", "uni-a", "--subject-file", "-"], capsys
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert (
        lines[0].startswith("# project prevention-2026, recipient uni-a")
        and "2 pseudonyms" in lines[0]
    )
    assert sorted(lines[1:]) == lines[1:]
    assert set(lines[1:]) == set(table.column("pid").to_pylist()[3:5])
    assert "7003" not in out and "7004" not in out

    code, out, err = run(
        ["export", "destroy-key", "--project", "prevention-2026", "--recipient", "uni-a"], capsys
    )
    assert code == 3 and "needs --yes" in err
    code, out, err = run(
        ["export", "destroy-key", "--project", "prevention-2026", "--recipient", "uni-a", "--yes"],
        capsys,
    )
    assert code == 0 and "destroyed" in out

    (app / "ids").write_text("7003\n")
    code, out, err = run(
        ["export", "withdraw", "--recipient", "uni-a", "--subject-file", "ids"], capsys
    )
    assert code == 0 and "destroyed" in out and len(out.splitlines()) == 1
    code, out, err = run(
        [
            "export",
            "--spec",
            "cohort.toml",
            "--out",
            "again.parquet",
            "--data",
            "sqlite:///data.db",
        ],
        capsys,
    )
    assert code == 1 and "ExportRefusedError" in err and "destroyed" in err
    assert not (app / "again.parquet").exists()


def test_spec_errors_name_the_key(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in the spec is a configuration error (exit 3) naming the unknown key."""
    (app / "bad.toml").write_text(SPEC.replace('transform = "keep"', 'transfrom = "keep"'))
    code, _, err = run(
        ["export", "--spec", "bad.toml", "--out", "x.parquet", "--data", "sqlite:///data.db"],
        capsys,
    )
    assert code == 3 and "[columns.sex]" in err


def test_a_small_class_refuses_with_exit_1(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """k above the class sizes refuses (exit 1), names counts, and writes nothing."""
    (app / "k.toml").write_text(SPEC.replace("k = 5", "k = 21"))
    code, _, err = run(
        ["export", "--spec", "k.toml", "--out", "x.parquet", "--data", "sqlite:///data.db"], capsys
    )
    assert code == 1 and "k-anonymity" in err and "k=21" in err
    assert not (app / "x.parquet").exists()


def test_withdraw_json_and_missing_options(
    app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """withdraw --json lists each dataset's pseudonyms; export without --data is exit 3."""
    code, _, err = run(["export", "--spec", "cohort.toml", "--out", "c.parquet"], capsys)
    assert code == 3 and "--spec, --out and --data" in err
    code, _, _ = run(
        ["export", "--spec", "cohort.toml", "--out", "c.parquet", "--data", "sqlite:///data.db"],
        capsys,
    )
    assert code == 0
    (app / "ids").write_text("7001\n\n7001\n")
    code, out, err = run(
        ["export", "withdraw", "--recipient", "uni-a", "--subject-file", "ids", "--json"], capsys
    )
    assert (code, err) == (0, "")
    (entry,) = json.loads(out)
    assert entry["project"] == "prevention-2026" and entry["state"] == "live"
    assert entry["pseudonyms"] == [pq.read_table(app / "c.parquet").column("pid")[1].as_py()]
    (app / "empty").write_text("\n")
    code, _, err = run(
        ["export", "withdraw", "--recipient", "uni-a", "--subject-file", "empty"], capsys
    )
    assert code == 3 and "no member id" in err
