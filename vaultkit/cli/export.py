"""``vaultkit export``: pseudonymised research exports (:mod:`vaultkit.research`).

``vaultkit export --spec cohort.toml --out cohort.parquet --data URL`` reads the spec's source
from the data database in two passes, checks k-anonymity, and writes the Parquet file with its
manifest; it prints counts, the achieved k, the dataset key id and the manifest's SHA-256 (also
in the audit chain).

``vaultkit export withdraw --recipient R [--project P] --subject-file PATH`` reads member ids,
one per line (``-``: standard input), and prints the pseudonyms the recipient must delete under
each of its live dataset keys, recomputed (vaultkit keeps no pseudonym-to-member table). The
member ids are never printed, and the pseudonyms are sorted so that their order tells nothing.

``vaultkit export destroy-key --project P --recipient R --yes`` destroys a dataset key: the
export links to no member any more, and the project cannot be exported again for that recipient.

Exit codes: 0 done; 1 refused (k-anonymity, a destroyed key, a kept identifier, a destroy not
confirmed); 2 usage; 3 configuration (the spec); 4 key provider; 5 key store; 10 the data
database failed; 1 an unexpected error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from vaultkit.cli._common import open_vault, store_options
from vaultkit.errors import ConfigurationError

__all__ = ["register"]

_SUBJECTS_MAX: Final = 64 * 1024 * 1024  # bytes read from --subject-file


def register(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="pseudonymised research exports to Parquet; withdraw lists; destroy dataset keys",
        description=(
            "Writes the research export a spec describes (an allow-list of columns and "
            "transforms), after a k-anonymity check, as Parquet with a manifest whose hash "
            "goes into the audit chain. See docs/exports.md. Exit codes: 0 done, 1 refused, "
            "2 usage, 3 configuration, 4 key provider, 5 key store, 10 a database failed."
        ),
    )
    export.add_argument("--spec", type=Path, help="the export spec (TOML)")
    export.add_argument("--out", type=Path, help="the Parquet file to write")
    export.add_argument("--data", help="database URL of the data the spec's source is in")
    export.add_argument(
        "--allow-unaudited",
        action="store_true",
        help="export even though the vault keeps no audit log (the manifest hash is not chained)",
    )
    export.add_argument("--json", action="store_true", help="print the report as JSON")
    store_options(export)
    export.set_defaults(handler=_export)
    sub = export.add_subparsers(dest="export_command", required=False, metavar="ACTION")

    withdraw = sub.add_parser(
        "withdraw",
        help="print the pseudonyms a recipient must delete for erased members (recomputed)",
    )
    withdraw.add_argument("--recipient", required=True)
    withdraw.add_argument("--project", help="only this project's dataset key")
    withdraw.add_argument(
        "--subject-file",
        required=True,
        metavar="PATH",
        help="member ids, one per line ('-': standard input); never printed",
    )
    withdraw.add_argument("--domain", default="research", help="the research key domain")
    withdraw.add_argument("--json", action="store_true", help="print the lists as JSON")
    store_options(withdraw)
    withdraw.set_defaults(handler=_withdraw)

    destroy = sub.add_parser(
        "destroy-key",
        help="destroy a dataset key: the export links to no member any more",
    )
    destroy.add_argument("--project", required=True)
    destroy.add_argument("--recipient", required=True)
    destroy.add_argument("--domain", default="research", help="the research key domain")
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    store_options(destroy)
    destroy.set_defaults(handler=_destroy)


def _export(args: argparse.Namespace) -> int:
    from vaultkit.research import export, load_spec

    if args.spec is None or args.out is None or args.data is None:
        raise ConfigurationError("vaultkit export needs --spec, --out and --data")
    spec = load_spec(args.spec)
    with open_vault(args) as vault:
        report = export(
            vault, spec, args.out, database=args.data, allow_unaudited=args.allow_unaudited
        )
    facts = {
        "out": str(report.path),
        "rows_in": report.rows_in,
        "rows_out": report.rows_out,
        "suppressed": report.suppressed,
        "classes": report.classes,
        "k": report.k,
        "achieved_k": report.achieved_k,
        "dataset_key_id": report.dataset_key_id,
        "manifest_sha256": report.manifest_sha256,
        "audited": report.audited,
    }
    if args.json:
        print(json.dumps(facts, sort_keys=True))
    else:
        print(
            f"wrote {report.path}: {report.rows_out} of {report.rows_in} rows "
            f"({report.suppressed} suppressed), {report.classes} classes, k={report.k}, "
            f"achieved k={report.achieved_k}"
        )
        print(f"dataset key {report.dataset_key_id}; manifest sha256 {report.manifest_sha256}")
        if not report.audited:
            print("warning: the vault keeps no audit log; the manifest hash is not chained")
    return 0


def _read_members(path: str) -> list[str]:
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(_SUBJECTS_MAX + 1)
        else:
            with Path(path).open("rb") as handle:
                raw = handle.read(_SUBJECTS_MAX + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read --subject-file: {type(exc).__name__}") from None
    if len(raw) > _SUBJECTS_MAX:
        raise ConfigurationError(f"--subject-file is larger than {_SUBJECTS_MAX} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError("--subject-file is not UTF-8") from None
    members = [line.strip() for line in text.splitlines() if line.strip()]
    if not members:
        raise ConfigurationError("--subject-file holds no member id")
    return members


def _withdraw(args: argparse.Namespace) -> int:
    from vaultkit.research import withdraw

    members = _read_members(args.subject_file)
    with open_vault(args) as vault:
        lists = withdraw(
            vault, members, recipient=args.recipient, project=args.project, domain=args.domain
        )
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "project": w.project,
                        "recipient": w.recipient,
                        "dataset_key_id": w.dataset_key_id,
                        "state": w.state,
                        "pseudonyms": list(w.pseudonyms),
                    }
                    for w in lists
                ],
                sort_keys=True,
            )
        )
        return 0
    for w in lists:
        if w.state == "destroyed":
            print(
                f"# project {w.project}, recipient {w.recipient}: dataset key "
                f"{w.dataset_key_id} destroyed; the export links to no member, nothing to delete"
            )
            continue
        print(
            f"# project {w.project}, recipient {w.recipient}, dataset key {w.dataset_key_id}: "
            f"{len(w.pseudonyms)} pseudonyms to delete"
        )
        for name in w.pseudonyms:
            print(name)
    return 0


def _destroy(args: argparse.Namespace) -> int:
    from vaultkit.research import destroy_key

    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigurationError(
                "destroying a dataset key needs --yes when not run from a terminal"
            )
        answer = input(f"Type the project name ({args.project}) to destroy its key for good: ")
        if answer.strip() != args.project:
            print("not confirmed; nothing destroyed")
            return 1
    with open_vault(args) as vault:
        destroyed = destroy_key(
            vault, project=args.project, recipient=args.recipient, domain=args.domain
        )
    state = "destroyed" if destroyed else "was already destroyed"
    print(f"dataset key of project {args.project} for recipient {args.recipient} {state}")
    return 0
