"""The renderings a member or a DPO opens: the HTML page in a real browser (headless Chromium)
and the CSV zip.

A member's name set to ``<script>...`` must show as text, never run or become markup; the page
fetches nothing; the CSV cells cannot start a spreadsheet formula.
"""

from __future__ import annotations

import csv
import html.parser
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests._servers import unavailable
from tests.unit.subjects import _models as m
from vaultkit import Principal, Vault, acting_as
from vaultkit.subjects import SubjectExport, collect

ADVISER = Principal("medical-adviser", grants={"medical"})
SUBJECTS = collect(m.Base.metadata)

pytestmark = pytest.mark.configured


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only here: the renderings do not depend on the engine (test_export covers them)."""
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def export(engine: sa.Engine, vault: Vault) -> SubjectExport:
    with acting_as(ADVISER, purpose="support"), Session(engine) as session:
        session.add(
            m.Policy(
                id="m-17-evil",
                member_id="m-17",
                product='=HYPERLINK("http://evil.example")',
                started_on=m.dt.date(2021, 1, 1),
            )
        )
        session.commit()
        return vault.export_subject(session, "m-17", subjects=SUBJECTS, request_id="DSR-<1>")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
        )
        if found:
            return found
    unavailable("CHROMIUM", "no headless Chromium (apt-get install chromium)")


def _browser(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            *args,
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )


class _Page(html.parser.HTMLParser):
    """Elements and the visible text of a rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_page_renders_in_chromium_with_hostile_values_as_text(
    export: SubjectExport, tmp_path: Path
) -> None:
    page = tmp_path / "export.html"
    export.write_html(page)
    done = _browser("--virtual-time-budget=3000", "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout.decode("utf-8")
    parsed = _Page()
    parsed.feed(dom)
    text = " ".join(" ".join(parsed.text).split())
    # The hostile name is text on the page: no script element, no <b> made of it.
    assert "script" not in parsed.tags
    assert "b" not in parsed.tags
    assert m.HOSTILE_NAME in " ".join(parsed.text)
    assert "&lt;script&gt;" in dom
    # Plain-language headings and the values a member looks for.
    assert "A copy of your personal data" in text
    assert "Your membership" in text and "Coaching conversations" in text
    assert "Newsletters" in text and "Claims" in text
    assert "Full name" in text
    assert "diabetes type 2 (m-17)" in text
    assert "Why we hold your data, and for how long" in text
    assert "Lodge a complaint" in text
    assert "DSR-<1>" in text
    # Nothing is fetched: no element carries a source or a link.
    assert not [a for a in parsed.attrs if a[0] in ("src", "href", "action")]
    for value in m.UNANNOTATED:
        assert value not in dom


def test_the_page_prints_to_pdf(export: SubjectExport, tmp_path: Path) -> None:
    page = tmp_path / "export.html"
    export.write_html(page)
    pdf = tmp_path / "export.pdf"
    done = _browser("--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert pdf.read_bytes().startswith(b"%PDF")


def test_the_page_is_self_contained() -> None:
    from vaultkit.subjects._render import html_page

    page = html_page(
        {
            "kind": "portability",
            "part": "main",
            "generated_at": "2026-01-01T00:00:00+00:00",
            "request_id": None,
            "status": "complete",
            "note": "no data found for this subject",
            "tables": [],
            "incomplete_sources": [],
            "restricted_part": None,
        }
    )
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert "default-src 'none'" in page
    assert "No data found for this subject." in page


def test_the_csv_zip_has_a_file_per_table_a_manifest_and_art15(
    export: SubjectExport, tmp_path: Path
) -> None:
    path = tmp_path / "export.zip"
    export.write_csv_zip(path)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        assert names == {
            "members.csv",
            "policies.csv",
            "claims.csv",
            "coaching_chats.csv",
            "call_recordings.csv",
            "newsletter_subscriptions.csv",
            "manifest.json",
            "art15.csv",
        }
        manifest: dict[str, Any] = json.loads(archive.read("manifest.json"))
        members = list(csv.reader(io.StringIO(archive.read("members.csv").decode("utf-8-sig"))))
        policies = list(
            csv.DictReader(io.StringIO(archive.read("policies.csv").decode("utf-8-sig")))
        )
        art15 = list(csv.DictReader(io.StringIO(archive.read("art15.csv").decode("utf-8-sig"))))
    assert manifest["schema"] == "vaultkit-subject-export/1"
    assert "rows" not in manifest["tables"][0]
    assert {f["file"]: f["rows"] for f in manifest["files"]}["claims.csv"] == 4
    assert members[0] == [
        "id",
        "name",
        "email",
        "birth_date",
        "joined_on",
        "churn_score",
        "health_note",
    ]
    assert members[1][:3] == ["m-17", m.HOSTILE_NAME, "m-17@example.be"]
    # A text cell that would start a formula in a spreadsheet is defused.
    evil = next(p for p in policies if p["id"] == "m-17-evil")
    assert evil["product"] == '\'=HYPERLINK("http://evil.example")'
    assert evil["member_id"] == "m-17"
    assert "health" in {row["category"] for row in art15}


def test_erased_cells_are_marked_in_the_csv(
    engine: sa.Engine, vault: Vault, tmp_path: Path, clock: Any
) -> None:
    receipt = vault.erase_subject("m-17", reason="art17", request_id="DSR-8")
    clock.now += 6
    with acting_as(ADVISER, purpose="support"), Session(engine) as session:
        export = vault.export_subject(session, "m-17", "portability", subjects=SUBJECTS)
    path = tmp_path / "export.zip"
    export.write_csv_zip(path)
    with zipfile.ZipFile(path) as archive:
        claims = list(csv.DictReader(io.StringIO(archive.read("claims.csv").decode("utf-8-sig"))))
        assert "art15.csv" not in archive.namelist()
    on = receipt.erased_at.date().isoformat()
    assert {c["amount"] for c in claims} == {f"[erased at your request ({on})]"}
