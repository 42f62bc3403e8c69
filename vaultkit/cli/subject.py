"""``vaultkit subject erase``, ``end`` and ``allow``: one member's keys, by request.

The subject (a member id as the application knows it) is an argument, or read with
``--subject-file PATH`` (``-``: standard input) so that it need not stay in the shell's history
or the process list. It is never printed: the output names the request, domains and counts.
With ``--data URL --model MODULE:NAME`` (the application's tables) the subject's blind-index
cells are nulled too (``vaultkit.sqla.erasure_cells``), after the keys are destroyed.

``erase`` fences the subject in every subject-scoped domain, destroys its keys there and prints
the receipt (``--json``: the receipt as JSON). Domains whose retention is ``no_less_than`` and
still running are retained, with their legal ground.

``end`` records the end of the subject's relationship: keys of domains whose retention runs
from it get their ``destroy_at``. ``allow`` lifts an erasure's fence (new writes for the subject
are accepted again, under new keys).

``map`` prints what the models' annotations say an export holds. ``export`` writes a member's
access or portability export (JSON, a CSV zip or an HTML page; ``--restricted-out``: the
restricted domains' values in a file of their own, for the medical adviser), reading as
``--principal`` with its ``--grant`` s; ``import`` loads such an export into a database with the
same models, under this vault's keys; ``requests`` lists the request log with the days
remaining, and ``request open|extend|close`` keeps it. For these the member id is read from
``--subject-file`` only.

Exit codes: 0 the erasure is granted (or there was nothing to erase), the export is complete
(also an empty one: no data for this subject), the import done, the end/allow/request recorded,
no open request overdue; 7 the erasure is partially granted or refused (a retained domain; see
the receipt's ground), the export is incomplete (a source not read: see its
``incomplete_sources``), an open request is overdue; 2 usage; 3 configuration (no subject, a
subject given twice, a request id that looks like a personal identifier, a key store without
scoped keys, models that differ from an import's export, rows already there); 4 key provider;
5 key store (and the request log in its database); 10 a database failed or was not reached; 1 an
unexpected error.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

from vaultkit.cli._common import load_object, open_vault, store_options
from vaultkit.cli.retention import parse_time
from vaultkit.errors import ConfigurationError

__all__ = ["EXIT_INCOMPLETE", "EXIT_OVERDUE", "EXIT_RETAINED", "register"]

#: ``subject erase`` was partially granted or refused: some domain is retained.
EXIT_RETAINED: Final = 7
#: ``subject export`` is incomplete: a source could not be read (it is listed in the export).
EXIT_INCOMPLETE: Final = 7
#: ``subject requests``: an open request is past its due date.
EXIT_OVERDUE: Final = 7
_SUBJECT_MAX: Final = 4096  # bytes read from --subject-file


def _subject_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "subject",
        nargs="?",
        metavar="SUBJECT",
        help="the member id (or give --subject-file, which keeps it out of the shell history)",
    )
    parser.add_argument(
        "--subject-file",
        metavar="PATH",
        help="read the member id from this file ('-': standard input), one line",
    )
    parser.add_argument(
        "--subject-type",
        choices=("str", "int", "uuid"),
        default="str",
        help="the type of the member id as the application stores it (default str); the key "
        "store's reference is the same for 17 and '17', the data's subject column may not be",
    )


def register(commands: Any) -> None:
    subject = commands.add_parser(
        "subject", help="erase a member's keys, record the end of a relationship"
    )
    sub = subject.add_subparsers(dest="subject_command", required=True, metavar="ACTION")
    erase = sub.add_parser(
        "erase",
        help="fence and destroy a member's keys in every subject-scoped domain; print a receipt",
        description=(
            "Fences the member in every subject-scoped domain (new writes for them are "
            "refused), destroys their keys there, writes an audit event and prints the "
            "receipt, which names no person. Idempotent. Exit codes: 0 granted or nothing to "
            "erase, 7 partially granted or refused (retained domains), 2 usage, 3 "
            "configuration, 4 key provider, 5 key store, 10 a database failed, 1 unexpected."
        ),
    )
    store_options(erase)
    _subject_options(erase)
    erase.add_argument("--reason", required=True, help="why, e.g. art17 (no personal data)")
    erase.add_argument(
        "--request-id", required=True, help="the request's ticket or case number (no personal data)"
    )
    erase.add_argument(
        "--domain",
        action="append",
        dest="domains",
        help="only this subject-scoped domain (repeatable; default: all)",
    )
    erase.add_argument(
        "--data",
        metavar="URL",
        help="database URL of the application's data: null the subject's blind-index cells "
        "there (with --model)",
    )
    erase.add_argument(
        "--model",
        metavar="MODULE:NAME",
        help="the application's MetaData, declarative base, mapped class or Table, e.g. "
        "myapp.models:Base (its tables with subject columns are searched)",
    )
    erase.add_argument(
        "--vault-name", default="default", help="the vault name the columns use (vault=...)"
    )
    erase.add_argument("--json", action="store_true", help="print the receipt as JSON")
    erase.set_defaults(handler=_erase)

    end = sub.add_parser(
        "end",
        help="record the end of a member's relationship (contract): retention starts to run",
        description=(
            "Sets destroy_at on the member's keys in every domain whose retention runs from the "
            "relationship's end, and records the end for keys made later. Exit codes: 0 "
            "recorded, 2 usage, 3 configuration, 4 key provider, 5 key store, 10 a database "
            "failed, 1 unexpected."
        ),
    )
    store_options(end)
    _subject_options(end)
    end.add_argument("--at", required=True, help="when it ended, ISO 8601 with a zone")
    end.set_defaults(handler=_end)

    allow = sub.add_parser(
        "allow",
        help="lift an erasure's fence: new writes for the member are accepted again",
        description="Exit codes: 0 lifted, 2 usage, 3 configuration, 5 key store, 1 unexpected.",
    )
    store_options(allow)
    _subject_options(allow)
    allow.add_argument(
        "--domain",
        action="append",
        dest="domains",
        help="only this subject-scoped domain (repeatable; default: all)",
    )
    allow.set_defaults(handler=_allow)
    _register_rights(sub)


def _file_subject_options(parser: argparse.ArgumentParser) -> None:
    """The member id from ``--subject-file`` only (the new commands take no argument)."""
    parser.add_argument(
        "--subject-file",
        metavar="PATH",
        required=True,
        help="read the member id from this file ('-': standard input), one line; never printed",
    )
    parser.add_argument(
        "--subject-type",
        choices=("str", "int", "uuid"),
        default="str",
        help="the type of the member id as the application stores it (default str)",
    )


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        metavar="MODULE:NAME",
        required=True,
        help="the application's annotated models: a MetaData, a declarative base or a mapped "
        "class, e.g. myapp.models:Base (imported from the current directory and PYTHONPATH)",
    )
    parser.add_argument(
        "--database", metavar="URL", required=True, help="database URL of the application's data"
    )
    parser.add_argument(
        "--vault-name", default="default", help="the vault name the columns use (vault=...)"
    )


def _register_rights(sub: Any) -> None:
    export = sub.add_parser(
        "export",
        help="write a member's access (art. 15) or portability (art. 20) export",
        description=(
            "Reads every annotated value of the member across the models' linked tables, as "
            "--principal (restricted domains only with its --grant; each read audited with the "
            "purpose DataSubjectRequest), and writes it to --out. Prints counts and the status, "
            "never the member id or a value. With --request-id the request log records the "
            "export. Exit codes: 0 complete (also: no data for this subject), 7 incomplete (a "
            "source not read, listed in the export), 2 usage, 3 configuration, 4 key provider, "
            "5 key store, 10 a database failed, 1 unexpected."
        ),
    )
    store_options(export)
    _data_options(export)
    _file_subject_options(export)
    export.add_argument("--kind", choices=("access", "portability"), default="access")
    export.add_argument("--format", choices=("json", "csv", "html"), default="json")
    export.add_argument(
        "--out", type=Path, required=True, help="the file to write (created owner-only)"
    )
    export.add_argument(
        "--restricted-out",
        type=Path,
        help="write the restricted domains' values (medical) to this file instead, for "
        "delivery through the medical adviser (the main file points to it)",
    )
    export.add_argument(
        "--principal", default="dpo", help="who reads (written into the audit log; default dpo)"
    )
    export.add_argument(
        "--grant",
        action="append",
        dest="grants",
        default=[],
        metavar="DOMAIN",
        help="a restricted domain the principal may read (repeatable), e.g. medical",
    )
    export.add_argument(
        "--request-id", help="the request's ticket or case number (no personal data)"
    )
    export.set_defaults(handler=_export)

    load = sub.add_parser(
        "import",
        help="load a member's export into a database with the same models, under this vault",
        description=(
            "Checks the export against the models first (a changed column is named), then "
            "inserts its rows, parents first, sealed under this vault's keys, in one "
            "transaction: on any error nothing is written. The separate restricted part of an "
            "export (--restricted-out) is imported after its main part and fills the cells "
            "that part left empty. Exit codes: 0 imported, 2 usage, 3 "
            "configuration (not an export, the models differ, rows already there), 4 key "
            "provider, 5 key store, 10 a database failed, 1 unexpected."
        ),
    )
    store_options(load)
    _data_options(load)
    load.add_argument(
        "--in", dest="source", type=Path, required=True, help="the export's JSON file"
    )
    load.set_defaults(handler=_import)

    described = sub.add_parser(
        "map",
        help="print the subject map of the models: what an export holds, table by table",
        description=(
            "Each linked table with its path to a member and its exported columns (category, "
            "provenance, domain, purpose, legal basis, retention), what is declared not "
            "personal and what is never exported. Needs no database and no keys. Exit codes: 0 "
            "printed, 2 usage, 3 configuration (a gap or an ambiguity in the annotations, "
            "named), 1 unexpected."
        ),
    )
    described.add_argument("--models", metavar="MODULE:NAME", required=True)
    described.set_defaults(handler=_map)

    listing = sub.add_parser(
        "requests",
        help="list the data-subject requests with their due dates and days remaining",
        description=(
            "The request log (vaultkit_subject_requests in the key store's database), earliest "
            "due first; names no person. Exit codes: 0 listed and no open request overdue, 7 "
            "an open request is overdue, 2 usage, 3 configuration, 5 key store, 1 unexpected."
        ),
    )
    store_options(listing)
    listing.add_argument("--csv", action="store_true", help="print CSV (for a spreadsheet)")
    listing.add_argument("--open", action="store_true", help="only the requests not answered")
    listing.add_argument("--at", help="count the days remaining at this time (ISO 8601)")
    listing.add_argument(
        "--subject-file",
        metavar="PATH",
        help="only this member's requests: the member id from this file ('-': standard input)",
    )
    listing.add_argument("--subject-type", choices=("str", "int", "uuid"), default="str")
    listing.set_defaults(handler=_requests)

    request = sub.add_parser("request", help="record a request, extend its deadline, or close it")
    actions = request.add_subparsers(dest="request_command", required=True, metavar="ACTION")
    opened = actions.add_parser(
        "open",
        help="record a request received (due one calendar month later)",
        description="Exit codes: 0 recorded, 2 usage, 3 configuration (the id is in the log "
        "already or looks personal), 5 key store, 1 unexpected.",
    )
    store_options(opened)
    _file_subject_options(opened)
    opened.add_argument("--request-id", required=True)
    opened.add_argument(
        "--kind",
        required=True,
        choices=("access", "portability", "erasure", "rectification", "objection"),
    )
    opened.add_argument("--received", help="when it was received, ISO 8601 (default: now)")
    opened.set_defaults(handler=_request_open)
    extend = actions.add_parser(
        "extend",
        help="extend the deadline by two months (art. 12(3)), with the motive",
        description="Exit codes: 0 extended, 2 usage, 3 configuration (closed, extended "
        "already, overdue), 5 key store, 1 unexpected.",
    )
    store_options(extend)
    extend.add_argument("--request-id", required=True)
    extend.add_argument("--motive", required=True, help="why (no personal data)")
    extend.set_defaults(handler=_request_extend)
    close = actions.add_parser(
        "close",
        help="record the answer: completed, refused or partially granted",
        description="Exit codes: 0 closed, 2 usage, 3 configuration (unknown or closed "
        "request, a refusal without motive), 5 key store, 1 unexpected.",
    )
    store_options(close)
    close.add_argument("--request-id", required=True)
    close.add_argument(
        "--status", choices=("completed", "refused", "partially_granted"), default="completed"
    )
    close.add_argument("--motive", help="why it was refused or partially granted")
    close.set_defaults(handler=_request_close)


def read_subject(args: argparse.Namespace) -> str | int | uuid.UUID:
    """The subject from the argument or ``--subject-file`` (exactly one of them), stripped, as
    ``--subject-type`` says."""
    given, path = getattr(args, "subject", None), args.subject_file
    if (given is None) == (path is None):
        raise ConfigurationError("give the subject as an argument or with --subject-file, once")
    if path is not None:
        try:
            if path == "-":
                raw = sys.stdin.buffer.read(_SUBJECT_MAX + 1)
            else:
                with Path(path).open("rb") as handle:
                    raw = handle.read(_SUBJECT_MAX + 1)
        except OSError as exc:
            raise ConfigurationError(f"cannot read --subject-file: {type(exc).__name__}") from None
        if len(raw) > _SUBJECT_MAX:
            raise ConfigurationError(f"--subject-file holds more than {_SUBJECT_MAX} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError("--subject-file is not UTF-8 text") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) != 1:
            raise ConfigurationError("--subject-file must hold the subject on one line")
        given = lines[0]
    subject = str(given).strip()
    if not subject:
        raise ConfigurationError("the subject is empty")
    kind = getattr(args, "subject_type", "str")
    try:
        if kind == "int":
            return int(subject)
        if kind == "uuid":
            return uuid.UUID(subject)
    except ValueError:
        # Not repeated: it is the member id.
        raise ConfigurationError(f"the subject is not of --subject-type {kind}") from None
    return subject


def _tables_of(target: object) -> object:
    """What ``erasure_cells`` takes from a ``--model`` object: a table, or a base's metadata."""
    import sqlalchemy as sa

    if isinstance(target, sa.MetaData | sa.Table):
        return target
    table = getattr(target, "__table__", None)
    if isinstance(table, sa.Table):
        return table
    metadata = getattr(target, "metadata", None)
    if isinstance(metadata, sa.MetaData):
        return metadata
    raise ConfigurationError("--model names neither a MetaData, a Table nor a mapped class")


def _erase(args: argparse.Namespace) -> int:
    subject = read_subject(args)
    if (args.data is None) != (args.model is None):
        raise ConfigurationError("--data and --model go together")
    with ExitStack() as stack:
        vault = stack.enter_context(open_vault(args))
        cells = None
        if args.data is not None:
            import sqlalchemy as sa

            import vaultkit.sqla

            make_cells = getattr(vaultkit.sqla, "erasure_cells", None)
            if make_cells is None:  # pragma: no cover - an older vaultkit.sqla
                raise ConfigurationError("this vaultkit.sqla cannot null blind-index cells")
            tables = _tables_of(load_object(args.model))
            engine = sa.create_engine(args.data, hide_parameters=True)
            stack.callback(engine.dispose)
            vaultkit.sqla.configure(vault, name=args.vault_name)
            stack.callback(vaultkit.sqla.configure, None, name=args.vault_name)
            # Built (and its tables checked) before anything is fenced or destroyed.
            cells = make_cells(tables, engine, subject)
        receipt = vault.erase_subject(
            subject,
            reason=args.reason,
            request_id=args.request_id,
            domains=args.domains,
            cells=cells,
        )
    if args.json:
        print(receipt.to_json())
    else:
        body = receipt.as_dict()
        print(
            f"erasure {receipt.request_id} ({receipt.reason}): {receipt.status.replace('_', ' ')}"
            f" at {body['erased_at']}"
        )
        for line in receipt.domains:
            if line.status == "retained":
                until = line.as_dict()["retained_until"]
                print(
                    f"  domain {line.domain}: retained"
                    + (f" until {until}" if until else "")
                    + f" (ground: {line.ground or 'not given'})"
                )
            elif line.status == "no_keys":
                print(f"  domain {line.domain}: no key of this subject (writes fenced)")
            else:
                print(
                    f"  domain {line.domain}: {line.keys_destroyed} keys destroyed now, "
                    f"{line.keys_already_destroyed} before"
                )
        for table, rows in receipt.tables:
            print(f"  table {table}: {rows} blind-index rows nulled")
        print(
            f"  finality (no backup holds it any more): {body['finality'] or 'not known'}; "
            f"audited: {'yes' if receipt.audited else 'no (no audit log)'}"
        )
    return EXIT_RETAINED if receipt.status in ("partially_granted", "refused") else 0


def _end(args: argparse.Namespace) -> int:
    subject = read_subject(args)
    at = parse_time(args.at)
    with open_vault(args) as vault:
        updated = vault.end_relationship(subject, at=at)
    print(
        f"relationship end recorded at {at.isoformat(timespec='seconds')}: {updated} keys now "
        "carry their destroy_at"
    )
    return 0


def _allow(args: argparse.Namespace) -> int:
    subject = read_subject(args)
    with open_vault(args) as vault:
        vault.allow_subject(subject, domains=args.domains)
    print("fence lifted: new writes for the subject are accepted again, under new keys")
    return 0


# -- export, import, the request log -----------------------------------------------------------


def _subject_map(spec: str) -> Any:
    from vaultkit.subjects import collect

    return collect(load_object(spec, option="--models"))


@contextmanager
def _data(args: argparse.Namespace) -> Iterator[tuple[Any, Any, Any]]:
    """The vault, configured for the models' column types, the data engine and the map."""
    import sqlalchemy as sa

    import vaultkit.sqla

    subjects = _subject_map(args.models)  # ConfigurationError on a gap, before anything opens
    with ExitStack() as stack:
        vault = stack.enter_context(open_vault(args))
        engine = sa.create_engine(args.database, hide_parameters=True)
        stack.callback(engine.dispose)
        vaultkit.sqla.configure(vault, name=args.vault_name)
        stack.callback(vaultkit.sqla.configure, None, name=args.vault_name)
        yield vault, engine, subjects


def _map(args: argparse.Namespace) -> int:
    print(_subject_map(args.models).describe())
    return 0


def _write(export: Any, kind: str, path: Path, option: str) -> None:
    write = {"json": export.write_json, "csv": export.write_csv_zip, "html": export.write_html}
    try:
        write[kind](path)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {option} {path}: {type(exc).__name__}") from None


def _export(args: argparse.Namespace) -> int:
    from vaultkit import Principal
    from vaultkit.subjects import DEFAULT_PURPOSE

    subject = read_subject(args)
    if args.restricted_out is not None and args.restricted_out == args.out:
        raise ConfigurationError("--restricted-out must be another file than --out")
    with _data(args) as (vault, engine, subjects):
        principal = Principal(args.principal, grants=frozenset(args.grants))
        with vault.acting_as(principal, purpose=DEFAULT_PURPOSE):
            export = vault.export_subject(
                engine,
                subject,
                args.kind,
                subjects=subjects,
                request_id=args.request_id,
                split_restricted=args.restricted_out is not None,
            )
        recorded = vault.requests.get(args.request_id) if args.request_id else None
    _write(export, args.format, args.out, "--out")
    body = export.to_dict()
    erased = sum(
        1
        for t in body["tables"]
        for r in t["rows"]
        for m in r["marks"].values()
        if m.get("status") == "erased"
    )
    tables = sum(1 for t in body["tables"] if t["rows"])
    print(
        f"{args.kind} export{' ' + args.request_id if args.request_id else ''}: {export.status}, "
        f"{export.row_count} rows from {tables} tables, {erased} erased cells -> {args.out}"
    )
    if body.get("note"):
        print(f"  note: {body['note']}")
    for source in export.incomplete_sources:
        where = source["table"] + (f".{source['column']}" if source.get("column") else "")
        print(f"  not read: {where} ({source['reason']})")
    if export.restricted is not None and args.restricted_out is not None:
        _write(export.restricted, args.format, args.restricted_out, "--restricted-out")
        print(
            f"  restricted part: {export.restricted.row_count} rows -> {args.restricted_out} "
            "(deliver through the medical adviser)"
        )
        for source in export.restricted.incomplete_sources:
            where = source["table"] + (f".{source['column']}" if source.get("column") else "")
            print(f"  not read (restricted part): {where} ({source['reason']})")
    if recorded is not None:
        state = recorded.status.replace("_", " ")
        print(
            f"  request {recorded.request_id}: {state}"
            + (f", due {recorded.due_at.date().isoformat()}" if recorded.is_open else "")
        )
    incomplete = export.status != "complete" or (
        export.restricted is not None and export.restricted.status != "complete"
    )
    return EXIT_INCOMPLETE if incomplete else 0


def _import(args: argparse.Namespace) -> int:
    if not args.source.is_file():
        raise ConfigurationError(f"--in {args.source} is not a file")
    with _data(args) as (vault, engine, subjects):
        report = vault.import_subject(engine, args.source, subjects=subjects)
    what = "the restricted part of the" if report.part == "restricted" else "the"
    print(
        f"imported {what} {report.kind} export: {report.rows} rows into "
        f"{sum(1 for _, n in report.tables if n)} tables"
    )
    for table, rows in report.tables:
        print(f"  table {table}: {rows} rows")
    for column, cells in report.erased:
        print(f"  {column}: {cells} erased cells left empty")
    for column, cells in report.withheld:
        print(f"  {column}: {cells} cells the export withheld, left empty")
    for column, cells in report.not_read:
        print(f"  {column}: {cells} cells not in the export, left empty")
    return 0


def _requests(args: argparse.Namespace) -> int:
    import csv

    at = parse_time(args.at) if args.at else None
    subject = read_subject(args) if args.subject_file is not None else None
    with open_vault(args) as vault:
        rows = vault.requests.list(open_only=args.open, subject=subject)
        now = at or vault.requests.now()
    overdue = [r for r in rows if r.overdue(now)]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(
            [
                "request_id",
                "kind",
                "status",
                "received_at",
                "due_at",
                "days_remaining",
                "overdue",
                "completed_at",
                "extended_at",
                "motive",
                "extension_motive",
            ]
        )
        for r in rows:
            d = r.as_dict()
            writer.writerow(
                [
                    d["request_id"],
                    d["kind"],
                    d["status"],
                    d["received_at"],
                    d["due_at"],
                    r.days_remaining(now) if r.is_open else "",
                    "yes" if r.overdue(now) else "no",
                    d["completed_at"] or "",
                    d["extended_at"] or "",
                    d["motive"] or "",
                    d["extension_motive"] or "",
                ]
            )
        return EXIT_OVERDUE if overdue else 0
    if not rows:
        what = "open requests" if args.open else "requests"
        print(f"no {what} of this member" if subject is not None else f"no {what} in the log")
        return 0
    print(f"{'request':<20} {'kind':<13} {'status':<17} {'received':<11} {'due':<11} remaining")
    for r in rows:
        if r.is_open:
            left = r.days_remaining(now)
            remaining = f"OVERDUE by {-left} days" if r.overdue(now) else f"{left} days"
        else:
            remaining = f"closed {r.as_dict()['completed_at'][:10]}"
            late = -r.days_remaining(r.completed_at) if r.completed_at else 0
            if r.completed_at is not None and r.completed_at > r.due_at:
                remaining += f" ({late} days late)"
        print(
            f"{r.request_id:<20} {r.kind:<13} {r.status:<17} "
            f"{r.received_at.date().isoformat():<11} {r.due_at.date().isoformat():<11} "
            f"{remaining}"
        )
    open_count = sum(1 for r in rows if r.is_open)
    print(f"{len(rows)} requests, {open_count} open, {len(overdue)} overdue")
    return EXIT_OVERDUE if overdue else 0


def _describe(request: Any) -> str:
    d = request.as_dict()
    return (
        f"request {d['request_id']} ({d['kind']}): {d['status'].replace('_', ' ')}, received "
        f"{d['received_at']}, due {d['due_at']}"
        + (f", closed {d['completed_at']}" if d["completed_at"] else "")
    )


def _request_open(args: argparse.Namespace) -> int:
    subject = read_subject(args)
    received = parse_time(args.received) if args.received else None
    with open_vault(args) as vault:
        request = vault.requests.open(args.request_id, args.kind, subject, received=received)
    print(_describe(request))
    return 0


def _request_extend(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        request = vault.requests.extend(args.request_id, args.motive)
    print(_describe(request) + " (extended; tell the member, with the motive)")
    return 0


def _request_close(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        request = vault.requests.complete(args.request_id, status=args.status, motive=args.motive)
    print(_describe(request))
    return 0
