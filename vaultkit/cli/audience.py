"""``vaultkit audience hash``: a members CSV in, a platform's hashed upload CSV out."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from vaultkit.audiences import RECORD_FIELDS, RULE_VERSIONS, Platform, hash_csv
from vaultkit.errors import ConfigurationError


def register(commands: Any) -> None:
    audience = commands.add_parser("audience", help="hash member lists for ad-platform uploads")
    sub = audience.add_subparsers(dest="audience_command", required=True, metavar="ACTION")
    hash_cmd = sub.add_parser(
        "hash",
        help="normalise and SHA-256 a members CSV for Google or Meta",
        description=(
            "Normalise each identifier as the platform documents it and hash it with SHA-256 on "
            "this machine. Output columns follow the platform's upload template. Plaintext "
            "identifiers never appear in the output, the rejects file (unless asked) or the "
            "terminal. The hashes are pseudonymous personal data, not anonymous data."
        ),
    )
    hash_cmd.add_argument("input", type=Path, help="members CSV with a header row")
    hash_cmd.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="upload CSV to write (mode 0600, put in place only when written in full)",
    )
    hash_cmd.add_argument("--platform", required=True, choices=[p.value for p in Platform])
    hash_cmd.add_argument("--default-region", help="country of national phone numbers, such as BE")
    versions = ", ".join(f"{p}: {', '.join(v)}" for p, v in RULE_VERSIONS.items())
    hash_cmd.add_argument("--rules", help=f"rule version (default: newest; {versions})")
    hash_cmd.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=HEADER",
        help=f"input header for a field ({', '.join(RECORD_FIELDS)}); repeatable",
    )
    hash_cmd.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)"
    )
    hash_cmd.add_argument(
        "--rejects",
        type=Path,
        help="write row numbers and reason codes of rejected rows here (mode 0600)",
    )
    hash_cmd.add_argument(
        "--rejects-with-values",
        action="store_true",
        help="also copy the rejected rows' plaintext values into the rejects file (handle it as personal data)",
    )
    hash_cmd.add_argument("--encoding", default="utf-8-sig", help="input encoding (default UTF-8)")
    hash_cmd.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    hash_cmd.set_defaults(handler=_hash)


def _mapping(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        field, sep, header = pair.partition("=")
        if not sep or not field or not header:
            raise ConfigurationError(f"--map takes FIELD=HEADER, got {pair!r}")
        mapping[field.strip()] = header
    return mapping


def _hash(args: argparse.Namespace) -> int:
    start = time.monotonic()
    show = not args.no_progress and sys.stderr.isatty()

    def progress(rows: int) -> None:
        if show:
            rate = rows / max(time.monotonic() - start, 1e-9)
            sys.stderr.write(f"\r{rows:,} rows  {rate:,.0f} rows/s")
            sys.stderr.flush()

    report = hash_csv(
        args.input,
        args.output,
        platform=args.platform,
        default_region=args.default_region,
        rules=args.rules,
        mapping=_mapping(args.map),
        workers=args.workers,
        rejects_path=args.rejects,
        rejects_with_values=args.rejects_with_values,
        encoding=args.encoding,
        progress=progress,
    )
    elapsed = time.monotonic() - start
    if show:
        sys.stderr.write("\n")
    print(
        f"{report.rows:,} rows in {elapsed:.1f} s ({report.rows / max(elapsed, 1e-9):,.0f} rows/s, "
        f"{args.workers} worker{'s' if args.workers != 1 else ''}): "
        f"{report.accepted:,} accepted, {report.rejected:,} rejected"
    )
    for reason, count in sorted(report.reasons.items()):
        print(f"  {reason}: {count:,}")
    print(f"wrote {args.output}" + (f" and {args.rejects}" if args.rejects else ""))
    return 0
