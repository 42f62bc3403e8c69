"""``vaultkit audit verify`` and ``vaultkit audit head``: check the audit log, export checkpoints.

Exit codes: 0 intact; 7 the log is broken, truncated or rolled back (against ``--expect``); 1 a
checkpoint file is refused (altered, made under another audit key, unreadable); 3, 4, 5 as for
every command (configuration, key provider, key store).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from vaultkit import KeyDomain, Vault
from vaultkit.audit import AuditLog, Checkpoint, VerifyResult, read_checkpoint, write_checkpoint
from vaultkit.errors import ConfigurationError
from vaultkit.keys import LocalKeyProvider

#: The exit code of a log that fails verification (broken chain, truncation, rollback).
EXIT_BROKEN: Final = 7


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", required=True, help="database URL of the key store and audit log"
    )
    parser.add_argument("--keyring", type=Path, required=True, help="the local keyring file")
    parser.add_argument(
        "--domain", required=True, help="the audit domain (the first audited domain)"
    )
    parser.add_argument(
        "--expect",
        type=Path,
        metavar="CHECKPOINT",
        help="a checkpoint file from `vaultkit audit head`: fail (exit 7) if the log was "
        "truncated, rolled back or replaced since",
    )


def register(commands: Any) -> None:
    audit = commands.add_parser("audit", help="check the audit log")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = sub.add_parser(
        "verify",
        help="recompute the hash chain and name the first broken link",
        description="The audit key is read through the keyring (master key from "
        "VAULTKIT_MASTER_KEY). Exit codes: 0 intact, 7 broken, truncated or rolled back, "
        "1 checkpoint refused.",
    )
    _common(verify)
    verify.set_defaults(handler=_verify)
    head = sub.add_parser(
        "head",
        help="verify the log, then export its head as a MACed checkpoint",
        description="Prints (or writes with --out, mode 0600, atomically) a JSON checkpoint: "
        "log id, last sequence number, chain hash, time, and a MAC under the audit key. It "
        "holds no secret. Keep it where the database's writers cannot write, and pass it to "
        "`vaultkit audit verify --expect` later.",
    )
    _common(head)
    head.add_argument("--out", type=Path, help="write the checkpoint to this file")
    head.set_defaults(handler=_head)


@contextmanager
def _audit_log(args: argparse.Namespace) -> Iterator[AuditLog]:
    provider = LocalKeyProvider(args.keyring, create_keys=False)
    with Vault(
        provider=provider, store=args.store, domains=[KeyDomain(args.domain, audited=True)]
    ) as vault:
        log = vault.audit_log
        if log is None:  # pragma: no cover - an audited domain always opens the log
            raise ConfigurationError("no audit log")
        yield log


def _expected(args: argparse.Namespace) -> list[Checkpoint]:
    return [read_checkpoint(args.expect)] if args.expect is not None else []


def _report(result: VerifyResult, args: argparse.Namespace) -> int:
    if result.ok:
        against = f", checkpoint {args.expect} holds" if args.expect is not None else ""
        print(
            f"audit log intact: {result.events} events, hash chain verified{against}",
            file=sys.stdout if args.handler is _verify else sys.stderr,
        )
        return 0
    print(
        f"audit log BROKEN at event {result.first_broken}: {result.reason} "
        f"({result.events} events read)"
    )
    return EXIT_BROKEN


def _verify(args: argparse.Namespace) -> int:
    expected = _expected(args)
    with _audit_log(args) as log:
        result = log.verify(expect=expected)
    return _report(result, args)


def _head(args: argparse.Namespace) -> int:
    expected = _expected(args)
    with _audit_log(args) as log:
        # Take the checkpoint first and verify the log against it (and the older one, if
        # given), so that events appended meanwhile are never blessed unverified.
        checkpoint = log.checkpoint()
        result = log.verify(expect=[*expected, checkpoint])
    if not result.ok:
        return _report(result, args)
    _report(result, args)
    if args.out is None:
        print(checkpoint.to_json())
    else:
        write_checkpoint(args.out, checkpoint)
        print(f"checkpoint of event {checkpoint.seq} written to {args.out}", file=sys.stderr)
    return 0
