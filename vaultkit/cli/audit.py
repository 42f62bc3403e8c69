"""``vaultkit audit verify``: check the audit log's hash chain and name the first broken link."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaultkit import KeyDomain, Vault
from vaultkit.errors import ConfigurationError
from vaultkit.keys import LocalKeyProvider


def register(commands: Any) -> None:
    audit = commands.add_parser("audit", help="check the audit log")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = sub.add_parser(
        "verify",
        help="recompute the hash chain and name the first broken link",
        description="The audit key is read through the keyring (master key from VAULTKIT_MASTER_KEY).",
    )
    verify.add_argument(
        "--store", required=True, help="database URL of the key store and audit log"
    )
    verify.add_argument("--keyring", type=Path, required=True, help="the local keyring file")
    verify.add_argument(
        "--domain", required=True, help="the audit domain (the first audited domain)"
    )
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    provider = LocalKeyProvider(args.keyring, create_keys=False)
    with Vault(
        provider=provider, store=args.store, domains=[KeyDomain(args.domain, audited=True)]
    ) as vault:
        log = vault.audit_log
        if log is None:  # pragma: no cover - an audited domain always opens the log
            raise ConfigurationError("no audit log")
        result = log.verify()
    if result.ok:
        print(f"audit log intact: {result.events} events, hash chain verified")
        return 0
    print(
        f"audit log BROKEN at event {result.first_broken}: {result.reason} ({result.events} events read)"
    )
    return 7
