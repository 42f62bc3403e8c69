"""Renderings of an export document: a CSV zip and one self-contained HTML page (stdlib only).

The HTML page is for a member or a DPO opening it in a browser: inline CSS, no script, nothing
fetched (a Content-Security-Policy forbids it too), every value and name through
:func:`html.escape`. The CSV files guard against formula injection: a text cell that starts with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading apostrophe (OWASP's advice),
and the manifest says so.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["csv_zip", "html_page", "mark_text"]

_FORMULA: Final = ("=", "+", "-", "@", "\t", "\r")

_REASONS: Final = {
    "subject_erased": "erased at your request",
    "retention_expired": "deleted at the end of its retention period",
    "key_destroyed": "deleted",
}

_PROVENANCE: Final = {
    "provided": "given by you",
    "observed": "recorded while you used our services",
    "derived": "worked out by us from other data",
}

_SOURCE_REASONS: Final = {
    "no_grant": "kept in a restricted part (such as medical data) that this copy was not made "
    "with access to",
    "table_missing": "the table could not be found in the database",
    "database_error": "the database could not be read",
    "identity_unreadable": "the details used to find these records could not be read",
    "subject_mismatch": "records or values found under your records belong to someone else "
    "and were left out (under investigation)",
    "value_unreadable": "some values could not be read (damaged)",
}


def mark_text(mark: Mapping[str, Any]) -> str:
    """A cell's mark in plain language, such as ``erased at your request (2026-05-01)``."""
    status = mark.get("status")
    if status == "erased":
        text = _REASONS.get(str(mark.get("reason")), "deleted")
        on = mark.get("on")
        return f"{text} ({on})" if on else text
    if status == "not_read":
        return "not included (restricted data)"
    if status == "withheld":
        return "withheld (it could not be confirmed as yours)"
    if status == "separate":
        return "delivered separately (restricted part)"
    return "not included"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


#: The value types whose text is free or may start with "+" (base64); the rest, such as decimals
#: and dates, are formatted by the export and never a formula ("-25.40" stays as it is).
_FREE_TEXT: Final = ("string", "json", "enum", "base64", None)


def _csv_cell(value: Any, value_type: str | None = None) -> str:
    text = _text(value)
    if isinstance(value, str) and value_type in _FREE_TEXT and text.startswith(_FORMULA):
        return "'" + text
    return text


def _file_name(table: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", table).strip("._") or "table"
    name = f"{base}.csv"
    n = 2
    while name in used or name in ("manifest.json", "art15.csv"):
        name = f"{base}_{n}.csv"
        n += 1
    used.add(name)
    return name


def _rows_csv(
    header: Iterable[str],
    rows: Iterable[Iterable[Any]],
    value_types: Iterable[str | None] = (),
) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    names = list(header)
    types = list(value_types) or [None] * len(names)
    writer.writerow(names)
    for row in rows:
        writer.writerow([_csv_cell(v, t) for v, t in zip(row, types, strict=False)])
    return out.getvalue().encode("utf-8-sig")


def csv_zip(data: Mapping[str, Any]) -> bytes:
    """The export as a zip: one CSV per table, ``manifest.json`` and ``art15.csv`` (access)."""
    buffer = io.BytesIO()
    used: set[str] = set()
    files: list[dict[str, Any]] = []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for table in data["tables"]:
            model = table["model"]
            key = [k for k in model["key"]]
            links = [n for n in model["links"] if n not in key]
            columns = list(model["columns"])
            name = _file_name(table["table"], used)
            rows = []
            for row in table["rows"]:
                values = [row["key"].get(k) for k in key]
                values += [row["links"].get(n) for n in links]
                for column in columns:
                    mark = row["marks"].get(column)
                    values.append(
                        f"[{mark_text(mark)}]" if mark is not None else row["values"].get(column)
                    )
                rows.append(values)
            types = [None] * (len(key) + len(links))
            types += [model["columns"][c].get("value_type") for c in columns]
            archive.writestr(name, _rows_csv([*key, *links, *columns], rows, types))
            files.append({"file": name, "table": table["table"], "rows": len(table["rows"])})
        if "art15" in data:
            fields: tuple[str, ...] = ("category", "purposes", "legal_bases", "recipients")
            fields += ("retention", "provenance", "sources", "automated_decision", "columns")
            art15 = [
                [
                    "; ".join(item[f]) if isinstance(item[f], list) else _text(item[f])
                    for f in fields
                ]
                for item in data["art15"]["categories"]
            ]
            archive.writestr("art15.csv", _rows_csv(fields, art15))
            files.append({"file": "art15.csv", "table": None, "rows": len(art15)})
        manifest = {k: v for k, v in data.items() if k != "tables"}
        manifest["tables"] = [
            {k: v for k, v in table.items() if k != "rows"} for table in data["tables"]
        ]
        manifest["files"] = files
        manifest["csv"] = {
            "encoding": "utf-8 with BOM",
            "formula_guard": "text cells starting with = + - @ tab or CR get a leading ' "
            "(not numbers, decimals, dates or durations)",
        }
        archive.writestr(
            "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")
        )
    return buffer.getvalue()


# -- HTML -------------------------------------------------------------------------------------

_CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;
padding:0 1rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.7rem}h2{font-size:1.3rem;margin-top:2rem;border-bottom:1px solid #ccc}
h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;width:100%}
th,td{border:1px solid #bbb;padding:.3rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f0f0f0}.mark{color:#7a3b00;font-style:italic}.empty{color:#777}
.notice{background:#fff6e0;border:1px solid #e0b060;padding:.6rem 1rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{font-weight:600}dd{margin:0}
@media print{body{margin:0;max-width:none}}
"""

_TITLES: Final = {
    "access": "A copy of your personal data",
    "portability": "Your data, to take to another service",
}

_INTRO: Final = {
    "access": "This is the personal data we hold about you (GDPR article 15), where it comes "
    "from, why we hold it, who receives it and how long we keep it.",
    "portability": "This is the data you gave us or that was recorded while you used our "
    "services (GDPR article 20). The same data is in a machine-readable file (JSON or CSV).",
}


#: C0 and C1 controls but tab and line ends: a NUL or an escape in a value reaches the page as
#: the replacement character (the HTML parser would drop or replace them unevenly).
_CONTROLS: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _e(value: Any) -> str:
    return html.escape(_CONTROLS.sub("\ufffd", _text(value)), quote=True)


def _cell(row: Mapping[str, Any], column: str) -> str:
    mark = row["marks"].get(column)
    if mark is not None:
        return f'<td class="mark">{_e(mark_text(mark))}</td>'
    value = row["values"].get(column)
    if value is None:
        return '<td class="empty">(empty)</td>'
    # <bdi>: a right-to-left override in a value stays inside its cell.
    return f"<td><bdi>{_e(value)}</bdi></td>"


def _table_html(table: Mapping[str, Any]) -> list[str]:
    model = table["model"]
    columns = model["columns"]
    out = [f"<h2>{_e(table['title'])}</h2>"]
    rows = table["rows"]
    if not rows:
        out.append('<p class="empty">Nothing recorded.</p>')
        return out
    key = list(model["key"])
    out.append("<table><thead><tr>")
    out.extend(f"<th>{_e('Reference' if len(key) == 1 else k)}</th>" for k in key)
    out.extend(f"<th>{_e(c['label'])}</th>" for c in columns.values())
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        out.extend(f"<td><bdi>{_e(row['key'].get(k))}</bdi></td>" for k in key)
        out.extend(_cell(row, name) for name in columns)
        out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _art15_html(art15: Mapping[str, Any]) -> list[str]:
    out = ["<h2>Why we hold your data, and for how long</h2>"]
    for item in art15["categories"]:
        category = str(item["category"])
        out.append(f"<h3>{_e(category[:1].upper() + category[1:])}</h3><dl>")
        for label, key in (
            ("Purposes", "purposes"),
            ("Legal basis", "legal_bases"),
            ("Recipients", "recipients"),
            ("Kept for", "retention"),
            ("Where it comes from", "provenance"),
            ("Other sources", "sources"),
        ):
            values = item[key]
            if key == "provenance":
                values = [_PROVENANCE.get(v, v) for v in values]
            text = ", ".join(_text(v) for v in values) if values else "none stated"
            out.append(f"<dt>{_e(label)}</dt><dd>{_e(text)}</dd>")
        decided = "yes" if item["automated_decision"] else "no"
        out.append(f"<dt>Used in automated decisions</dt><dd>{_e(decided)}</dd></dl>")
    out.append("<h2>Your rights</h2><ul>")
    for right in art15["rights"]:
        out.append(
            f"<li><strong>{_e(right['right'].capitalize())}</strong> "
            f"(article {_e(right['article'])}): {_e(right['text'])}</li>"
        )
    out.append("</ul>")
    return out


def html_page(data: Mapping[str, Any]) -> str:
    """The export as one self-contained HTML page; every value escaped."""
    kind = str(data["kind"])
    title = _TITLES.get(kind, "Your personal data")
    if data.get("part") == "restricted":
        title += " (restricted part)"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{_e(_INTRO.get(kind, ''))}</p>",
        "<dl>",
        f"<dt>Made on</dt><dd>{_e(data['generated_at'])}</dd>",
    ]
    if data.get("request_id"):
        out.append(f"<dt>Request</dt><dd>{_e(data['request_id'])}</dd>")
    complete = "complete" if data["status"] == "complete" else "incomplete (see below)"
    out.append(f"<dt>This copy is</dt><dd>{_e(complete)}</dd></dl>")
    if data.get("note"):
        out.append(f'<p class="notice">{_e(data["note"].capitalize())}.</p>')
    restricted = data.get("restricted_part")
    if restricted:
        out.append(
            '<p class="notice">Part of your data ('
            f"{_e(', '.join(restricted['domains']))}) is delivered separately, "
            f"{_e(restricted['delivery'])}.</p>"
        )
    if data["incomplete_sources"]:
        out.append("<h2>What this copy does not contain</h2><ul>")
        names = {t["table"]: t for t in data["tables"]}
        for source in data["incomplete_sources"]:
            table = names.get(source["table"])
            where = table["title"] if table is not None else source["table"]
            column = source.get("column")
            if column:
                spec = table["model"]["columns"].get(column) if table is not None else None
                where += f": {spec['label'] if spec else column}"
            why = _SOURCE_REASONS.get(source["reason"], source["reason"])
            out.append(f"<li>{_e(where)} — {_e(why)}</li>")
        out.append("</ul>")
    for table in data["tables"]:
        out.extend(_table_html(table))
    if "art15" in data:
        out.extend(_art15_html(data["art15"]))
    out.append("</body></html>")
    return "\n".join(out)
