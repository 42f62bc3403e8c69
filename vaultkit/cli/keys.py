"""``vaultkit keys``: create a local keyring."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path
from typing import Any

from vaultkit.errors import ConfigurationError
from vaultkit.keys.local import (
    MASTER_KEY_ENV,
    MASTER_PASSPHRASE_ENV,
    LocalKeyProvider,
    _decode_master_key,
    generate_master_key,
)


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


def _write_secret_file(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigurationError(f"{path} already exists; not overwriting it") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def _init(args: argparse.Namespace) -> int:
    keyring: Path = args.keyring
    if keyring.exists():
        raise ConfigurationError(f"{keyring} already exists; not overwriting it")
    note: str
    if os.environ.get(MASTER_KEY_ENV):
        master = _decode_master_key(os.environ[MASTER_KEY_ENV], source=MASTER_KEY_ENV)
        provider = LocalKeyProvider(keyring, master_key=master)
        note = f"Protected by the master key in {MASTER_KEY_ENV}."
    elif args.passphrase:
        passphrase = os.environ.get(MASTER_PASSPHRASE_ENV)
        if not passphrase:
            passphrase = getpass.getpass("Passphrase for the keyring: ")
            if passphrase != getpass.getpass("Repeat the passphrase: "):
                raise ConfigurationError("the two passphrases differ")
        if len(passphrase) < 12:
            raise ConfigurationError("use a passphrase of at least 12 characters")
        provider = LocalKeyProvider(keyring, passphrase=passphrase)
        note = (
            "Protected by your passphrase (argon2id). Give it to every process that uses this "
            f"keyring in {MASTER_PASSPHRASE_ENV}."
        )
    else:
        key_file: Path = args.master_key_file or keyring.with_name(keyring.name + ".master-key")
        if key_file.exists():
            raise ConfigurationError(f"{key_file} already exists; not overwriting it")
        master_text = generate_master_key()
        provider = LocalKeyProvider(
            keyring, master_key=_decode_master_key(master_text, source="key")
        )
        _write_secret_file(key_file, master_text)
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
