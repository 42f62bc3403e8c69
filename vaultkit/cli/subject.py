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

Exit codes: 0 the erasure is granted (or there was nothing to erase), or the end/allow is
recorded; 7 the erasure is partially granted or refused (a retained domain; see the receipt's
ground); 2 usage; 3 configuration (no subject, a subject given twice, a request id that looks
like a personal identifier, a key store without scoped keys); 4 key provider; 5 key store; 10 a
database failed or was not reached; 1 an unexpected error.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final

from vaultkit.cli._common import load_object, open_vault, store_options
from vaultkit.cli.retention import parse_time
from vaultkit.errors import ConfigurationError

__all__ = ["EXIT_RETAINED", "register"]

#: ``subject erase`` was partially granted or refused: some domain is retained.
EXIT_RETAINED: Final = 7
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


def read_subject(args: argparse.Namespace) -> str | int | uuid.UUID:
    """The subject from the argument or ``--subject-file`` (exactly one of them), stripped, as
    ``--subject-type`` says."""
    given, path = args.subject, args.subject_file
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
