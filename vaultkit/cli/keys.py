"""``vaultkit keys``: create a local keyring, list keys, rotate a KEK, start a shred epoch."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from vaultkit._files import write_atomic
from vaultkit._redact import Secret
from vaultkit.cli._common import open_vault, parse_dek_id, store_options
from vaultkit.errors import ConfigurationError
from vaultkit.keys.local import (
    MASTER_KEY_ENV,
    MASTER_PASSPHRASE_ENV,
    LocalKeyProvider,
    decode_master_key,
    generate_master_key,
)
from vaultkit.store import DekState


def register(commands: Any) -> None:
    keys = commands.add_parser("keys", help="manage KEKs")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = sub.add_parser(
        "init",
        help="create a local keyring file",
        description=(
            "Create a keyring file with a KEK per domain. The master key is taken from "
            f"{MASTER_KEY_ENV} if set; else, with --passphrase, derived from a passphrase "
            f"({MASTER_PASSPHRASE_ENV} or a prompt); else a new one is generated and written to a "
            "file readable only by you. The master key is never printed."
        ),
    )
    init.add_argument("--keyring", default="keyring.json", type=Path, help="keyring file to create")
    init.add_argument(
        "--domain", action="append", default=[], dest="domains", help="create a KEK (repeatable)"
    )
    init.add_argument("--passphrase", action="store_true", help="protect it with a passphrase")
    init.add_argument(
        "--master-key-file",
        type=Path,
        help="where to write a newly generated master key (default: KEYRING.master-key)",
    )
    init.set_defaults(handler=_init)

    listing = sub.add_parser(
        "list", help="domains, KEK versions and key rows by purpose and state (never key material)"
    )
    store_options(listing)
    listing.set_defaults(handler=_list)

    rotate = sub.add_parser(
        "rotate-kek",
        help="create a new KEK version and rewrap every key row of the domain (no data row changes)",
    )
    store_options(rotate)
    rotate.add_argument("--domain", required=True)
    rotate.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted rotation onto the current version",
    )
    rotate.set_defaults(handler=_rotate)
    shred = sub.add_parser(
        "shred-epoch",
        help="start a shred epoch: new KEK version and wrapping key, old ones destroyed",
        description=(
            "Rotates the domain's KEK, rewraps every key row (scoped DEKs under a new wrapping "
            "key), then destroys the old wrapping key and the old KEK versions in the provider. "
            "Every backup of the key store taken before is unreadable afterwards (also for erased "
            "subjects); so is any restore of one. Run it on a schedule (shred_epoch_interval)."
        ),
    )
    store_options(shred)
    shred.add_argument("--domain", required=True)
    shred.add_argument("--json", action="store_true", help="print the report as JSON")
    shred.set_defaults(handler=_shred_epoch)
    _register_lifecycle(sub)


def _register_lifecycle(sub: Any) -> None:
    retire = sub.add_parser(
        "retire-dek", help="mark DEKs retired: they decrypt, nobody encrypts under them"
    )
    store_options(retire)
    retire.add_argument("--dek", action="append", required=True, help="DEK id in hex (repeatable)")
    retire.set_defaults(handler=_retire)
    destroy = sub.add_parser(
        "destroy",
        help="erase a retired DEK that no value references any more (irreversible)",
        description=(
            "Counts the values that still name the DEK in every --column (TABLE.COLUMN) of the "
            "--data database and refuses if there is any. Asks for the DEK id to confirm unless --yes."
        ),
    )
    store_options(destroy)
    destroy.add_argument("--dek", required=True, help="DEK id in hex")
    destroy.add_argument("--data", required=True, help="database URL of the encrypted data")
    destroy.add_argument("--column", action="append", required=True, metavar="TABLE.COLUMN")
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    destroy.set_defaults(handler=_destroy)


def _retire(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        for text in args.dek:
            vault.retire_dek(parse_dek_id(text))
            print(f"retired DEK {text}")
    return 0


def _destroy(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from vaultkit.sqla import count_dek_references

    dek_id = parse_dek_id(args.dek)
    engine = sa.create_engine(args.data)
    try:
        with engine.connect() as conn:
            references = 0
            for spec in args.column:
                table, dot, column = spec.partition(".")
                if not dot:
                    raise ConfigurationError(f"--column takes TABLE.COLUMN, got {spec!r}")
                found = count_dek_references(conn, table, column, dek_id)
                print(f"{spec}: {found} values under DEK {args.dek}")
                references += found
    finally:
        engine.dispose()
    if references:
        raise ConfigurationError(
            f"DEK {args.dek} is still referenced by {references} values; re-encrypt them first"
        )
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigurationError("destroying a DEK needs --yes when not run from a terminal")
        if input("Type the DEK id to destroy it for good: ").strip() != args.dek:
            print("not confirmed; nothing destroyed")
            return 1
    with open_vault(args) as vault:
        vault.destroy_dek(dek_id, references=references)
    print(
        f"destroyed DEK {args.dek}: its wrapped key is erased; running processes stop decrypting "
        "under it within their key_check_interval (5 s by default)"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        for domain in vault.domains:
            provider = vault.provider_for(domain)
            versions = provider.versions(domain)
            primary = provider.primary(domain).version
            print(
                f"domain {domain}: KEK versions {', '.join(f'v{r.version}' for r in versions)} (primary v{primary})"
            )
            counts: Counter[tuple[str, str]] = Counter()
            wrapped_under: Counter[int] = Counter()
            for record in vault.store.records(domain=domain):
                counts[(record.purpose, record.state.value)] += 1
                if record.state is not DekState.DESTROYED:
                    wrapped_under[record.kek_version] += 1
            for (purpose, state), count in sorted(counts.items()):
                print(f"  {purpose:<5} {state:<9} {count}")
            if wrapped_under:
                under = ", ".join(f"v{v}: {n}" for v, n in sorted(wrapped_under.items()))
                print(f"  key rows wrapped under {under}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        report = vault.rotate_kek(args.domain, new_version=not args.resume)
    print(
        f"domain {report.domain}: KEK v{report.kek_version} is primary; {report.rewrapped} key rows "
        f"rewrapped, {report.already_current} already under it, {report.changed_meanwhile} changed "
        "meanwhile (left alone). No data row was touched."
    )
    return 0


def _shred_epoch(args: argparse.Namespace) -> int:
    with open_vault(args) as vault:
        report = vault.shred_epoch(args.domain)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        return 0 if report.stranded == 0 else 1
    destroyed = ", ".join(f"v{v}" for v in report.kek_versions_destroyed) or "none"
    epoch = "none (no scoped keys)" if report.epoch is None else str(report.epoch)
    print(
        f"domain {report.domain}: KEK v{report.kek_version} is primary, wrapping epoch {epoch}; "
        f"{report.kek_rows_rewrapped} KEK-wrapped rows and {report.scoped_rewrapped} scoped keys "
        f"rewrapped, {report.changed_meanwhile} changed meanwhile"
    )
    final = "" if report.final_at is None else f", gone for good from {report.final_at.isoformat()}"
    print(f"  old KEK versions destroyed: {destroyed}{final}")
    if report.stranded:
        print(
            f"  {report.stranded} key rows were written under a destroyed key during the epoch "
            "and are unreadable",
            file=sys.stderr,
        )
        return 1
    return 0


def _write_secret_file(path: Path, text: Secret[str]) -> None:
    """Write a master key file (0600), in full and verified, never over an existing file."""
    write_atomic(
        path,
        Secret((text.reveal() + "\n").encode("ascii")),
        what="master key file",
        error=ConfigurationError,
        exclusive=True,
    )


def _init(args: argparse.Namespace) -> int:
    keyring: Path = args.keyring
    if keyring.exists():
        raise ConfigurationError(f"{keyring} already exists; not overwriting it")
    note: str
    if os.environ.get(MASTER_KEY_ENV):
        provider = LocalKeyProvider(
            keyring,
            master_key=decode_master_key(os.environ[MASTER_KEY_ENV], source=MASTER_KEY_ENV),
        )
        note = f"Protected by the master key in {MASTER_KEY_ENV}."
    elif args.passphrase:
        passphrase = Secret(os.environ.get(MASTER_PASSPHRASE_ENV, ""))
        if not passphrase.reveal():
            passphrase = Secret(getpass.getpass("Passphrase for the keyring: "))
            if passphrase.reveal() != getpass.getpass("Repeat the passphrase: "):
                raise ConfigurationError("the two passphrases differ")
        if len(passphrase.reveal()) < 12:
            raise ConfigurationError("use a passphrase of at least 12 characters")
        provider = LocalKeyProvider(keyring, passphrase=passphrase.reveal())
        note = (
            "Protected by your passphrase (argon2id). Give it to every process that uses this "
            f"keyring in {MASTER_PASSPHRASE_ENV}."
        )
    else:
        key_file: Path = args.master_key_file or keyring.with_name(keyring.name + ".master-key")
        if key_file.exists():
            raise ConfigurationError(f"{key_file} already exists; not overwriting it")
        master_text = Secret(generate_master_key())
        # The key file first: a keyring whose master key was never saved would be lost at once.
        # If the keyring then cannot be written, the key file protects nothing and goes again.
        _write_secret_file(key_file, master_text)
        try:
            provider = LocalKeyProvider(
                keyring, master_key=decode_master_key(master_text.reveal(), source="key")
            )
        except BaseException:
            key_file.unlink(missing_ok=True)
            raise
        note = (
            f"A new master key was written to {key_file} (mode 0600); it is not shown here.\n"
            f"Put its content in the environment variable {MASTER_KEY_ENV} of every process that "
            "uses this keyring\n(for example from your secret manager), keep a copy in a safe "
            "place apart from the keyring, and then delete the file.\n"
            "Without the master key, nothing encrypted under this keyring can be read again."
        )
    for domain in args.domains:
        provider.primary(domain)
    print(f"Created keyring {keyring} (id {provider.keyring_id}).")
    for domain in provider.domains():
        versions = ", ".join(f"v{ref.version}" for ref in provider.versions(domain))
        print(f"  domain {domain}: KEK {versions}")
    print(note)
    return 0
