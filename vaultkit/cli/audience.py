"""``vaultkit audience hash``: a members CSV or Parquet file in, a platform's hashed upload out.

CSV input goes through :func:`vaultkit.audiences.hash_csv` (several processes); Parquet input
through the Arrow kernels (:func:`vaultkit.audiences.parquet.hash_parquet`), to a Parquet or CSV
upload. The format is taken from the file suffix unless ``--input-format`` / ``--output-format``
name it.
"""

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
    hash_cmd.add_argument(
        "input", type=Path, help="members CSV with a header row, or a Parquet file (.parquet)"
    )
    hash_cmd.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="upload file to write, CSV or Parquet (mode 0600, put in place only when written in full)",
    )
    hash_cmd.add_argument(
        "--input-format",
        choices=list(_FORMATS),
        help="csv or parquet (default: from the input's suffix, .parquet/.pq is Parquet)",
    )
    hash_cmd.add_argument(
        "--output-format",
        choices=list(_FORMATS),
        help="csv or parquet (default: from the output's suffix); Parquet output needs Parquet input",
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
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for CSV input (default: all cores); Parquet input runs in one (scale out with Dask, docs/scale-out.md)",
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


_FORMATS = ("csv", "parquet")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _format(given: str | None, path: Path) -> str:
    if given is not None:
        return given
    return "parquet" if path.suffix.lower() in _PARQUET_SUFFIXES else "csv"


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

    source_format = _format(args.input_format, args.input)
    target_format = _format(args.output_format, args.output)
    workers = args.workers
    if source_format == "parquet":
        try:
            from vaultkit.audiences.parquet import hash_parquet
        except ImportError:
            raise ConfigurationError(
                "Parquet input needs pyarrow: pip install 'vaultkit[arrow]'"
            ) from None
        workers = 1
        report = hash_parquet(
            args.input,
            args.output,
            platform=args.platform,
            default_region=args.default_region,
            rules=args.rules,
            mapping=_mapping(args.map),
            output_format=target_format,
            rejects_path=args.rejects,
            rejects_with_values=args.rejects_with_values,
            progress=progress,
        )
    elif target_format == "parquet":
        raise ConfigurationError(
            "Parquet output needs Parquet input (the Arrow kernels); write CSV, or convert the "
            "members file to Parquet first"
        )
    else:
        report = hash_csv(
            args.input,
            args.output,
            platform=args.platform,
            default_region=args.default_region,
            rules=args.rules,
            mapping=_mapping(args.map),
            workers=workers,
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
        f"{workers} worker{'s' if workers != 1 else ''}): "
        f"{report.accepted:,} accepted, {report.rejected:,} rejected"
    )
    for reason, count in sorted(report.reasons.items()):
        print(f"  {reason}: {count:,}")
    print(f"wrote {args.output}" + (f" and {args.rejects}" if args.rejects else ""))
    return 0
