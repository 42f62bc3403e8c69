"""``vaultkit subject export|import|requests|request`` through main() and as a subprocess, on the
six-table models in SQLite files, with a vaultkit.toml and a local keyring: the member id is read
from --subject-file only and never printed, the exit codes are those documented, errors carry no
traceback and no value."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import vaultkit.sqla
from tests.unit.subjects import _models as m
from vaultkit import Vault
from vaultkit.cli.main import main
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV, MASTER_PASSPHRASE_ENV

MEMBER = "m-100017"
MODELS = "tests.unit.subjects._models:Base"
CONFIG = """\
key_store = "sqlite:///keys.db"
audit = "sqlite:///audit.db"

[providers.keyring]
type = "local"
path = "keyring.json"

[domains.identity]
provider = "keyring"

[domains.financial]
provider = "keyring"
dek_scope = "subject"

[domains.chats]
provider = "keyring"
dek_scope = "subject"

[domains.medical]
provider = "keyring"
restricted = true
audited = true
dek_scope = "subject"
"""


def site(path: Path, *, populate: bool) -> None:
    """A keyring, a vaultkit.toml and the six tables in ``path`` (the member's rows if asked)."""
    path.mkdir(exist_ok=True)
    provider = LocalKeyProvider(path / "keyring.json", create_keys=True)
    for domain in ("identity", "financial", "chats", "medical"):
        provider.primary(domain)
    (path / "vaultkit.toml").write_text(CONFIG)
    engine = sa.create_engine(f"sqlite:///{path / 'app.db'}")
    m.Base.metadata.create_all(engine)
    if populate:
        cwd = os.getcwd()
        os.chdir(path)
        try:
            with Vault.from_config("vaultkit.toml") as vault:
                vaultkit.sqla.configure(vault)
                with Session(engine) as session:
                    m.populate(session, MEMBER, name=m.HOSTILE_NAME)
                    m.populate(session, "m-2", first_id=1000)
                    session.commit()
        finally:
            vaultkit.sqla.configure(None)
            os.chdir(cwd)
    engine.dispose()


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv(MASTER_PASSPHRASE_ENV, raising=False)
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    site(tmp_path, populate=True)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def run(
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    stdin: str = MEMBER + "\n",
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    code = main([*args, "--config", "vaultkit.toml"])
    out, err = capsys.readouterr()
    return code, out, err


EXPORT = [
    "subject",
    "export",
    "--models",
    MODELS,
    "--database",
    "sqlite:///app.db",
    "--subject-file",
    "-",
]


class TestExport:
    def test_a_complete_json_export_names_no_member(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the medical grant: exit 0, counts printed, the file owner-only; neither the member
        id nor a value is on the terminal."""
        code, out, err = run(
            [*EXPORT, "--kind", "access", "--grant", "medical", "--out", "m.json"],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        assert "access export: complete, 12 rows from 6 tables, 0 erased cells" in out
        assert MEMBER not in out + err and "Peeters" not in out + err
        assert (app / "m.json").stat().st_mode & 0o077 == 0
        data = json.loads((app / "m.json").read_text())
        assert data["kind"] == "access" and data["status"] == "complete"

    def test_without_the_grant_the_export_is_incomplete_exit_7(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The medical columns are not read: listed on the terminal and in the file, exit 7."""
        code, out, _ = run(
            [*EXPORT, "--out", "m.json", "--request-id", "DSR-3"], capsys, monkeypatch
        )
        assert code == 7
        assert "incomplete" in out and "not read: members.health_note (no_grant)" in out
        assert "request DSR-3: in progress, due " in out

    def test_the_restricted_part_goes_to_its_own_file(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--restricted-out: the medical values only there, the main file points to it."""
        code, out, err = run(
            [
                *EXPORT,
                "--grant",
                "medical",
                "--format",
                "html",
                "--out",
                "m.html",
                "--restricted-out",
                "medical.html",
            ],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        assert "restricted part: 5 rows -> medical.html" in out
        main_page = (app / "m.html").read_text()
        medical = (app / "medical.html").read_text()
        assert "diabetes type 2" not in main_page and "diabetes type 2" in medical
        assert "<script>alert" not in main_page  # the hostile name is escaped

    def test_csv_zip(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--format csv writes the zip of one CSV per table and the manifest."""
        code, _, err = run(
            [*EXPORT, "--grant", "medical", "--format", "csv", "--out", "m.zip"],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        names = zipfile.ZipFile(app / "m.zip").namelist()
        assert "manifest.json" in names and "art15.csv" in names

    def test_an_unknown_member_is_an_empty_export_exit_0(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No data for this subject: said so, exit 0."""
        code, out, _ = run([*EXPORT, "--out", "none.json"], capsys, monkeypatch, stdin="m-nobody\n")
        assert code == 0 and "no data found for this subject" in out
        assert "m-nobody" not in out

    def test_the_member_id_comes_from_the_subject_file_only(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """As an argument it is a usage error (it would stay in the shell history); an empty
        or two-line file is a configuration error that does not repeat it."""
        with pytest.raises(SystemExit) as caught:
            main(["subject", "export", MEMBER, "--config", "vaultkit.toml"])
        assert caught.value.code == 2
        capsys.readouterr()
        code, out, err = run(
            [*EXPORT, "--out", "x.json"], capsys, monkeypatch, stdin=f"{MEMBER}\nm-2\n"
        )
        assert code == 3 and MEMBER not in out + err

    def test_a_request_id_is_recorded_and_a_personal_one_refused(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--request-id: the export is in the request log; an e-mail address as id: exit 3,
        not echoed, no file written."""
        code, out, err = run(
            [*EXPORT, "--grant", "medical", "--out", "m.json", "--request-id", "DSR-1"],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        assert "request DSR-1: completed" in out
        code, out, _ = run(["subject", "requests", "--csv"], capsys, monkeypatch)
        assert code == 0 and "DSR-1,access,completed" in out
        code, out, err = run(
            [*EXPORT, "--out", "x.json", "--request-id", "jan.peeters@example.be"],
            capsys,
            monkeypatch,
        )
        assert code == 3 and "jan.peeters" not in out + err and not (app / "x.json").exists()

    def test_an_out_file_that_cannot_be_written_is_exit_3(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--out naming a directory: a configuration error naming the option, not a crash."""
        (app / "somewhere").mkdir()
        code, _, err = run(
            [*EXPORT, "--grant", "medical", "--out", "somewhere"], capsys, monkeypatch
        )
        assert code == 3 and "cannot write --out somewhere: IsADirectoryError" in err

    def test_models_with_a_gap_fail_before_anything_opens(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--models naming nothing importable: exit 3 with the reason, no traceback."""
        code, _, err = run(
            [*EXPORT[:3], "nowhere.models:Base", *EXPORT[4:], "--out", "x.json"],
            capsys,
            monkeypatch,
        )
        assert code == 3 and "cannot import nowhere.models" in err and "Traceback" not in err


def test_map_prints_what_an_export_holds(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``subject map`` needs no database and no keys: each table, its path, its columns."""
    assert main(["subject", "map", "--models", MODELS]) == 0
    out = capsys.readouterr().out
    assert "Newsletters (newsletter_subscriptions)" in out and "risk_score" in out
    assert main(["subject", "map", "--models", "tests.unit.subjects._models:nothing"]) == 3


class TestImport:
    def test_an_export_loads_into_another_site_and_only_once(
        self,
        app: Path,
        tmp_path_factory: pytest.TempPathFactory,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Exported here, imported under another keyring there: exit 0 and the counts; the
        same file again: exit 3, nothing written; exported there, the same rows come out."""
        code, _, err = run(
            [*EXPORT, "--kind", "portability", "--grant", "medical", "--out", "m.json"],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        other = tmp_path_factory.mktemp("other")
        monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
        site(other, populate=False)
        monkeypatch.chdir(other)
        load = [
            "subject",
            "import",
            "--models",
            MODELS,
            "--database",
            "sqlite:///app.db",
            "--in",
            str(app / "m.json"),
        ]
        code, out, err = run(load, capsys, monkeypatch)
        assert code == 0, err
        assert "imported the portability export: 12 rows into 6 tables" in out
        assert MEMBER not in out
        code, out, err = run(load, capsys, monkeypatch)
        assert code == 3 and "in the database already" in err
        code, _, err = run(
            [*EXPORT, "--kind", "portability", "--grant", "medical", "--out", "back.json"],
            capsys,
            monkeypatch,
        )
        assert code == 0, err

        def rows(path: Path) -> list[object]:
            data = json.loads(path.read_text())
            return [
                sorted(json.dumps(r, sort_keys=True) for r in t["rows"]) for t in data["tables"]
            ]

        assert rows(other / "back.json") == rows(app / "m.json")

    def test_the_two_files_of_a_split_export_load_one_after_the_other(
        self,
        app: Path,
        tmp_path_factory: pytest.TempPathFactory,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """--restricted-out: the main file, then the medical file fills its empty cells."""
        code, _, err = run(
            [
                *EXPORT,
                "--kind",
                "portability",
                "--grant",
                "medical",
                "--out",
                "m.json",
                "--restricted-out",
                "medical.json",
            ],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        other = tmp_path_factory.mktemp("other")
        monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
        site(other, populate=False)
        monkeypatch.chdir(other)
        load = ["subject", "import", "--models", MODELS, "--database", "sqlite:///app.db", "--in"]
        code, out, err = run([*load, str(app / "m.json")], capsys, monkeypatch)
        assert code == 0, err
        assert "members.health_note: 1 cells not in the export, left empty" in out
        code, out, err = run([*load, str(app / "medical.json")], capsys, monkeypatch)
        assert code == 0, err
        assert "imported the restricted part of the portability export: 5 rows into 2" in out

    def test_a_file_that_is_no_export_is_refused_without_its_text(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An HTML page given as --in: exit 3, the page's text not shown."""
        (app / "page.html").write_text("<p>Jan Peeters, diabetes</p>")
        code, out, err = run(
            [
                "subject",
                "import",
                "--models",
                MODELS,
                "--database",
                "sqlite:///app.db",
                "--in",
                "page.html",
            ],
            capsys,
            monkeypatch,
        )
        assert code == 3 and "not JSON" in err and "Peeters" not in out + err


class TestRequests:
    def test_open_extend_close_and_list(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The DPO's cycle: a request received, extended with its motive, listed with the days
        remaining, closed; the member is never printed."""
        code, out, err = run(
            [
                "subject",
                "request",
                "open",
                "--subject-file",
                "-",
                "--request-id",
                "DSR-7",
                "--kind",
                "rectification",
            ],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        assert "request DSR-7 (rectification): received" in out and MEMBER not in out
        code, out, _ = run(
            ["subject", "request", "extend", "--request-id", "DSR-7", "--motive", "complex"],
            capsys,
            monkeypatch,
        )
        assert code == 0 and "extended" in out
        code, out, _ = run(["subject", "requests", "--open"], capsys, monkeypatch)
        assert code == 0 and "DSR-7" in out and "1 open, 0 overdue" in out
        mine = ["subject", "requests", "--subject-file", "-"]
        assert "DSR-7" in run(mine, capsys, monkeypatch)[1]
        code, out, _ = run(mine, capsys, monkeypatch, stdin="m-2\n")
        assert code == 0 and "no requests of this member" in out and "m-2" not in out
        code, out, err = run(
            ["subject", "request", "close", "--request-id", "DSR-7", "--status", "refused"],
            capsys,
            monkeypatch,
        )
        assert code == 3 and "motive" in err
        code, out, _ = run(
            ["subject", "request", "close", "--request-id", "DSR-7"], capsys, monkeypatch
        )
        assert code == 0 and "completed" in out
        code, out, _ = run(["subject", "requests", "--open"], capsys, monkeypatch)
        assert code == 0 and "no open requests" in out

    def test_an_overdue_request_is_flagged_and_exits_7(
        self, app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Received two months ago and not answered: OVERDUE in the listing, yes in the CSV,
        exit 7 (a scheduler's alarm)."""
        code, _, err = run(
            [
                "subject",
                "request",
                "open",
                "--subject-file",
                "-",
                "--request-id",
                "DSR-8",
                "--kind",
                "access",
                "--received",
                "2026-01-05T10:00:00Z",
            ],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        code, out, _ = run(
            ["subject", "requests", "--at", "2026-03-01T00:00:00Z"], capsys, monkeypatch
        )
        assert code == 7 and "OVERDUE by 24 days" in out
        code, out, _ = run(
            ["subject", "requests", "--csv", "--at", "2026-03-01T00:00:00Z"], capsys, monkeypatch
        )
        assert code == 7
        line = next(x for x in out.splitlines() if x.startswith("DSR-8,"))
        assert line.split(",")[5:7] == ["-24", "yes"]


def test_as_a_subprocess_errors_are_one_line(app: Path) -> None:
    """A real process: a damaged export gives one line on stderr, exit 3, no traceback."""
    (app / "bad.json").write_text('{"schema": "vaultkit-subject-export/1", "kind": "x"}')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path])}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaultkit",
            "subject",
            "import",
            "--config",
            "vaultkit.toml",
            "--models",
            MODELS,
            "--database",
            "sqlite:///app.db",
            "--in",
            "bad.json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
