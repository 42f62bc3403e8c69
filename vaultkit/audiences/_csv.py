"""Streaming CSV-to-CSV audience hashing on several cores, with constant memory.

The input is read in chunks of rows; at most two chunks per worker are in flight, so memory does
not grow with the file. Output rows keep the input order. The output (and rejects) file is written
to a temporary file beside the target, created with mode 0600 (hashed identifiers are pseudonymous
personal data, a rejects file with values is plaintext), and renamed into place only when the whole
input has been processed and the file's size on disk matches every byte written: an error half-way,
a full disk or a file-size limit leaves no output file that looks complete, and an older file under
the final name stays as it was.
"""

from __future__ import annotations

import csv
import hashlib
import io
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, TextIO

from vaultkit._files import atomic_text_outputs
from vaultkit.audiences import normalize as n
from vaultkit.audiences._render import (
    _RENDERERS,
    COLUMNS,
    AudienceReport,
    MemberRecord,
    Platform,
    Rendered,
    _check,
)
from vaultkit.audiences.normalize import Reason
from vaultkit.errors import AudienceError, ConfigurationError

__all__ = ["FIELD_ALIASES", "RECORD_FIELDS", "hash_csv"]

#: Header names recognised for each record field (compared case-insensitively, ignoring spaces,
#: dashes and underscores), unless ``mapping`` names the header explicitly.
FIELD_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "email": ("email", "e-mail", "mail", "emailaddress"),
    "phone": ("phone", "phonenumber", "telephone", "mobile", "gsm"),
    "first_name": ("firstname", "givenname", "fn", "voornaam", "prenom"),
    "last_name": ("lastname", "surname", "familyname", "ln", "achternaam", "nom"),
    "country": ("country", "countrycode", "land", "pays"),
    "postal_code": ("postalcode", "zip", "zipcode", "postcode"),
    "date_of_birth": ("dateofbirth", "dob", "birthdate", "geboortedatum"),
    "gender": ("gender", "sex", "geslacht", "genre"),
    "external_id": ("externalid", "externid", "memberno", "membernumber"),
}
CHUNK_ROWS: Final = 20_000
RECORD_FIELDS: Final = tuple(f.name for f in fields(MemberRecord))


def _key(header: str) -> str:
    return "".join(ch for ch in header.lower() if ch.isalnum())


def _resolve_columns(header: Sequence[str], mapping: dict[str, str]) -> dict[str, int]:
    unknown = set(mapping) - set(RECORD_FIELDS)
    if unknown:
        raise ConfigurationError(
            f"unknown field(s) in the column mapping: {', '.join(sorted(unknown))}; "
            f"fields are {', '.join(RECORD_FIELDS)}"
        )
    positions = {name: i for i, name in enumerate(header)}
    by_key = {_key(name): i for i, name in enumerate(header)}
    columns: dict[str, int] = {}
    for field_name, column_name in mapping.items():
        if column_name not in positions:
            raise ConfigurationError(
                f"column {column_name!r} (mapped to {field_name}) is not in the input header"
            )
        columns[field_name] = positions[column_name]
    for field_name in RECORD_FIELDS:
        if field_name in columns:
            continue
        for alias in FIELD_ALIASES[field_name]:
            if alias in by_key:
                columns[field_name] = by_key[alias]
                break
    if not columns:
        raise ConfigurationError(
            "no identifier column found in the input header; name the columns with --map "
            "(for example --map email=E-mail)"
        )
    return columns


@dataclass(frozen=True)
class _Job:
    platform: Platform
    version: str
    region: str | None
    columns: tuple[tuple[str, int], ...]
    width: int
    rejects_with_values: bool


_job: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _job
    _job = job


def _email_only(
    job: _Job, rows: Iterator[tuple[int, list[str]]]
) -> tuple[str, list[list[str]], AudienceReport]:
    """The common case, an e-mail list, without building records: same rules, fewer calls."""
    report = AudienceReport()
    rejects: list[list[str]] = []
    index = job.columns[0][1]
    gmail = job.version if job.platform is Platform.GOOGLE else None
    suffix = ",,,,," if job.platform is Platform.GOOGLE else ",,,,,,,,,,,"
    out: list[str] = []
    width = job.width
    sha256 = hashlib.sha256
    normalize_email = n.normalize_email
    for row_no, row in rows:
        if len(row) != width:
            _reject(report, rejects, row_no, (Reason.ROW_MALFORMED,), row, job)
            continue
        raw = row[index]
        text = raw.strip()
        if not text:
            _reject(report, rejects, row_no, (Reason.NO_IDENTIFIER,), row, job)
            continue
        if len(text) == 64 and n.is_sha256_hex(text):
            digest = text.lower()  # already hashed: passed through
        elif n.is_md5_hex(text):
            _reject(report, rejects, row_no, (Reason.MD5_REFUSED, Reason.NO_IDENTIFIER), row, job)
            continue
        else:
            try:
                digest = sha256(normalize_email(raw, gmail_rule=gmail).encode()).hexdigest()
            except AudienceError as exc:
                _reject(report, rejects, row_no, (Reason(str(exc)), Reason.NO_IDENTIFIER), row, job)
                continue
        report.rows += 1
        report.accepted += 1
        out.append(digest + suffix)
    return ("\r\n".join(out) + "\r\n") if out else "", rejects, report


def _reject(
    report: AudienceReport,
    rejects: list[list[str]],
    row_no: int,
    reasons: Sequence[Reason],
    row: list[str],
    job: _Job,
) -> None:
    report.add(Rendered(None, tuple(reasons)))
    rejects.append(_reject_row(row_no, "rejected", reasons, row, job))


def _reject_row(
    row_no: int, status: str, reasons: Sequence[Reason], row: list[str], job: _Job
) -> list[str]:
    entry = [str(row_no), status, " ".join(str(r) for r in reasons)]
    if job.rejects_with_values:
        entry.extend(row)
    return entry


def _rows(block: tuple[int, str]) -> Iterator[tuple[int, list[str]]]:
    """Parse one block of CSV text; yield (line number, fields), skipping blank lines."""
    first_line, text = block
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if row:
                yield first_line + reader.line_num - 1, row
    except csv.Error as exc:
        # csv.Error messages describe the problem (a field too large), never the data.
        raise AudienceError(
            f"malformed CSV near line {first_line + reader.line_num - 1}: {exc}"
        ) from None


def _process(block: tuple[int, str]) -> tuple[str, list[list[str]], AudienceReport]:
    job = _job
    if job is None:  # pragma: no cover - set by the pool initializer or inline
        raise RuntimeError("worker not initialised")
    if len(job.columns) == 1 and job.columns[0][0] == "email":
        return _email_only(job, _rows(block))
    renderer = _RENDERERS[job.platform]
    report = AudienceReport()
    rejects: list[list[str]] = []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row_no, row in _rows(block):
        if len(row) != job.width:
            _reject(report, rejects, row_no, (Reason.ROW_MALFORMED,), row, job)
            continue
        record = MemberRecord(**{name: (row[i] or None) for name, i in job.columns})
        rendered = renderer(record, job.region, job.version)
        report.add(rendered)
        if rendered.values is None:
            rejects.append(_reject_row(row_no, "rejected", rendered.reasons, row, job))
            continue
        if rendered.reasons:
            rejects.append(_reject_row(row_no, "values_dropped", rendered.reasons, row, job))
        writer.writerow(rendered.values)
    return buffer.getvalue(), rejects, report


def _blocks(handle: TextIO, size: int, where: str) -> Iterator[tuple[int, str]]:
    """Cut the input after the header into blocks of about ``size`` lines, at record boundaries.

    A quoted field may contain line breaks; a block ends only where the number of quote
    characters so far is even (escaped quotes are doubled, so parity tells whether a field is
    open). Decoding happens here, in one process, so an encoding error names its line.
    """
    line_no = 1  # the header is line 1
    lines: list[str] = []
    quotes = 0
    first = 2
    try:
        for line in handle:
            line_no += 1
            lines.append(line)
            quotes += line.count('"')
            if len(lines) >= size and quotes % 2 == 0:
                yield first, "".join(lines)
                lines, quotes, first = [], 0, line_no + 1
    except UnicodeDecodeError:
        raise AudienceError(
            f"{where} is not valid in the given encoding near line {line_no + 1}; give --encoding"
        ) from None
    if quotes % 2:
        raise AudienceError(f"{where}: a quoted field opened near line {first} is never closed")
    if lines:
        yield first, "".join(lines)


def hash_csv(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    platform: Platform | str,
    default_region: str | None = None,
    rules: str | None = None,
    mapping: dict[str, str] | None = None,
    workers: int = 1,
    rejects_path: str | os.PathLike[str] | None = None,
    rejects_with_values: bool = False,
    encoding: str = "utf-8-sig",
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> AudienceReport:
    """Hash a CSV of members into a platform's upload CSV.

    Args:
        input_path: a CSV with a header row.
        output_path: the upload file, with the platform's column names. Written only on success,
            with mode 0600.
        platform: ``"google"`` or ``"meta"``.
        default_region: country for national phone numbers (``"BE"``).
        rules: rule version (default: the newest of the platform).
        mapping: record field -> input header, for headers that are not recognised by name.
        workers: processes to hash with.
        rejects_path: where to write rejected rows and dropped values: row number, status and
            reason codes, never the values unless ``rejects_with_values``. Mode 0600.
        encoding: of the input (default UTF-8, with or without a byte-order mark).
        chunk_rows: input lines per unit of work.
        progress: called with the number of rows done after each chunk.

    Raises:
        ConfigurationError: bad options or header, or an output file that cannot be written in
            full (disk full, file-size limit); AudienceError: undecodable or malformed input.
    """
    chosen, version = _check(platform, rules, default_region)
    if workers < 1:
        raise ConfigurationError("workers must be at least 1")
    source = Path(input_path)
    target = Path(output_path)
    if source.resolve() == target.resolve():
        raise ConfigurationError("the output file must not be the input file")
    report = AudienceReport()
    try:
        handle = open(source, encoding=encoding, newline="")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {source}: {exc.strerror}") from None
    except LookupError:
        raise ConfigurationError(f"unknown encoding {encoding!r}") from None
    with handle:
        try:
            header = next(csv.reader([handle.readline()]), None)
        except UnicodeDecodeError:
            raise AudienceError(
                f"{source.name} is not valid in encoding {encoding}; give --encoding"
            ) from None
        if not header:
            raise AudienceError(f"{source.name} is empty: a header row is needed")
        columns = _resolve_columns(header, mapping or {})
        job = _Job(
            platform=chosen,
            version=version,
            region=default_region.upper() if default_region else None,
            columns=tuple(sorted(columns.items(), key=lambda item: item[1])),
            width=len(header),
            rejects_with_values=rejects_with_values,
        )
        chunks = _blocks(handle, chunk_rows, source.name)
        outputs = [target] if rejects_path is None else [target, Path(rejects_path)]
        with atomic_text_outputs(outputs, what="audience file", error=ConfigurationError) as files:
            out = files[0]
            csv.writer(out, lineterminator="\r\n").writerow(COLUMNS[chosen])
            rejects_writer = None
            if rejects_path is not None:
                rejects_writer = csv.writer(files[1], lineterminator="\r\n")
                rejects_writer.writerow(
                    ["row", "status", "reasons", *(header if rejects_with_values else [])]
                )

            def consume(result: tuple[str, list[list[str]], AudienceReport]) -> None:
                text, rejects, part = result
                out.write(text)
                if rejects_writer is not None:
                    rejects_writer.writerows(rejects)
                report.merge(part)
                if progress is not None:
                    progress(report.rows)

            if workers == 1:
                _init_worker(job)
                for chunk in chunks:
                    consume(_process(chunk))
            else:
                context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
                with context.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
                    in_flight: deque[Any] = deque()
                    for chunk in chunks:
                        in_flight.append(pool.apply_async(_process, (chunk,)))
                        if len(in_flight) >= 2 * workers:
                            consume(in_flight.popleft().get())
                    while in_flight:
                        consume(in_flight.popleft().get())
    return report
