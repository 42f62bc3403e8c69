"""``vaultkit retention enforce`` and ``vaultkit retention report``: retention by key destruction.

Both open the application's vault as every command does (``--config``, or ``--store`` and
``--keyring``; only ``--config`` knows the domains' scopes and retention policies).

``enforce`` destroys every key whose ``destroy_at`` is past (reads refuse those already), in
batches, each one committed and audited before the next: run it from a scheduler; after a crash
run it again, it resumes (what was destroyed stays destroyed, the rest is still due).

``report`` reads one aggregate per domain (no key material, no subject ref) and prints the
policy, live, destroyed and due keys, the oldest capture still readable, members with no
relationship end recorded, and violations.

Exit codes: 0 done (``report``: no violation); 7 ``report`` found violations (a live key that
reads would accept beyond its domain's policy); 2 usage; 3 configuration (a key store without
scoped keys, a time without a zone); 4 key provider; 5 key store; 10 a database failed or was
not reached; 1 an unexpected error.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any, Final

from vaultkit.cli._common import open_vault, store_options
from vaultkit.errors import ConfigurationError

__all__ = ["EXIT_VIOLATIONS", "parse_time", "register"]

#: ``retention report`` found violations (the "done, but not clean" code of other commands).
EXIT_VIOLATIONS: Final = 7


def parse_time(text: str, *, option: str = "--at") -> dt.datetime:
    """An ISO 8601 time with its zone (``2026-12-01T15:00Z``) given on the command line."""
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"{option} takes an ISO 8601 time such as 2026-12-01T15:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise ConfigurationError(f"{option} needs a time zone (Z or +01:00, for example)")
    return parsed.astimezone(dt.UTC)


def register(commands: Any) -> None:
    retention = commands.add_parser(
        "retention", help="destroy the keys whose retention ran out; report retention per domain"
    )
    sub = retention.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    enforce = sub.add_parser(
        "enforce",
        help="destroy every key past its destroy_at, in audited batches (idempotent, resumable)",
        description=(
            "Destroys, batch by batch, every data key whose destroy_at is at or before --at "
            "(default: now). Each batch is an audit event, written before its keys are "
            "destroyed, and is committed before the next. Run it again after a crash: it "
            "resumes. Exit codes: 0 done, 2 usage, 3 configuration, 4 key provider, 5 key "
            "store, 10 a database failed, 1 unexpected."
        ),
    )
    store_options(enforce)
    enforce.add_argument(
        "--at",
        help="the time keys are due by, ISO 8601 with a zone (default now; never later than "
        "now: no key is destroyed before it is due)",
    )
    enforce.add_argument("--batch", type=int, default=1000, help="keys per batch (default 1000)")
    enforce.add_argument("--json", action="store_true", help="print the report as JSON")
    enforce.set_defaults(handler=_enforce)
    report = sub.add_parser(
        "report",
        help="policy, live/destroyed/due keys, oldest readable capture and violations per domain",
        description=(
            "Reads one aggregate per domain from the key store; never key material or subject "
            "refs. Exit codes: 0 no violation, 7 violations found, 2 usage, 3 configuration, "
            "4 key provider, 5 key store, 10 a database failed, 1 unexpected."
        ),
    )
    store_options(report)
    report.add_argument("--at", help="the time to report at, ISO 8601 with a zone (default now)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(handler=_report)


def _at(args: argparse.Namespace) -> dt.datetime | None:
    return parse_time(args.at) if args.at else None


def _enforce(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ConfigurationError("--batch must be at least 1")
    at = _at(args)
    with open_vault(args) as vault:
        report = vault.enforce_retention(at=at, batch=args.batch)
    if args.json:
        print(report.to_json())
        return 0
    per_domain = ", ".join(f"{d}: {n:,}" for d, n in report.by_domain) or "none"
    print(
        f"retention enforced at {report.at.isoformat(timespec='seconds')}: "
        f"{report.keys_destroyed:,} keys destroyed in {report.batches} batches "
        f"({per_domain}); {report.already_destroyed:,} destroyed meanwhile by another run; "
        f"{report.seconds:.1f} s"
    )
    if not report.audited:
        print("  no audit log: this vault audits no domain, so the batches are not audited")
    return 0


def _report(args: argparse.Namespace) -> int:
    at = _at(args)
    with open_vault(args) as vault:
        report = vault.retention_report(at=at)
    if args.json:
        print(report.to_json())
    else:
        print(f"retention at {report.at.isoformat(timespec='seconds')}")
        for line in report.domains:
            body = line.as_dict()
            policy = body["policy"]
            rule = (
                "no retention"
                if policy is None
                else f"{policy['kind']} {policy['duration']} after {policy['after']}"
                + (f" (ground: {policy['ground']})" if policy["ground"] else "")
            )
            bucket = f", buckets of {body['bucket']}" if body["bucket"] else ""
            print(f"domain {line.domain} ({line.scope} keys{bucket}): {rule}")
            print(
                f"  keys live {line.live:,}, destroyed {line.destroyed:,}, due {line.due:,} "
                "(reads refuse due keys; `retention enforce` destroys them)"
            )
            print(f"  oldest readable capture {body['oldest_readable_capture'] or '-'}")
            if line.scope == "subject":
                without = (
                    f", {line.subjects_without_end:,} with no relationship end recorded "
                    "(no deadline until one is)"
                    if line.subjects_without_end is not None
                    else ""
                )
                print(f"  subjects with a live key {line.subjects:,}{without}")
            for violation in line.violations:
                print(f"  VIOLATION: {violation}")
        print(f"violations: {report.violations}")
    return 0 if report.ok else EXIT_VIOLATIONS
