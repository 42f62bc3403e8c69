"""What the command groups share: the key-store options, opening a vault, DEK ids, database errors.

Private to :mod:`vaultkit.cli`; the names are public inside the package so that each command module
imports them from here rather than from a sibling's private names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaultkit import Vault
from vaultkit.core.wire import DEK_ID_SIZE
from vaultkit.errors import ConfigurationError, VaultkitError
from vaultkit.keys.local import LocalKeyProvider

__all__ = [
    "DatabaseError",
    "database_failure",
    "load_object",
    "open_vault",
    "parse_dek_id",
    "store_options",
]


class DatabaseError(VaultkitError):
    """A database the command uses other than the key store (the data or the audit database)
    failed or was not reached; the message names the driver's error class, never its text once
    SQL ran. (The key store's failures are :class:`~vaultkit.errors.KeyStoreError`, exit 5.)"""


def store_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--store`` and ``--keyring``: where :func:`open_vault` finds its keys."""
    parser.add_argument(
        "--config",
        type=Path,
        help="a vaultkit TOML configuration (providers per domain, key store); "
        "instead of --store and --keyring",
    )
    parser.add_argument("--store", help="database URL of the key store (with --keyring)")
    parser.add_argument(
        "--keyring", type=Path, default=Path("keyring.json"), help="the local keyring file"
    )


def open_vault(args: argparse.Namespace) -> Vault:
    """The vault of the options of :func:`store_options`: from ``--config``, or a local keyring
    with every domain it holds over the key store at ``--store``."""
    if getattr(args, "config", None) is not None:
        return Vault.from_config(args.config)
    if not args.store:
        raise ConfigurationError("give --config, or --store (and --keyring)")
    provider = LocalKeyProvider(args.keyring, create_keys=False)
    domains = provider.domains()
    if not domains:
        raise ConfigurationError(f"keyring {args.keyring} holds no domain")
    return Vault(provider=provider, store=args.store, domains=domains)


def load_object(spec: str, *, option: str = "--model") -> object:
    """The object ``MODULE:NAME`` names (imported from the current directory and PYTHONPATH)."""
    import importlib
    import os
    import sys

    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigurationError(f"{option} takes MODULE:NAME, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name}: {exc}") from None
    if not hasattr(module, attribute):
        raise ConfigurationError(f"{module_name} has no {attribute}")
    return getattr(module, attribute)


def parse_dek_id(text: str) -> bytes:
    """A DEK id given in hex on the command line (``--dek``)."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError(f"--dek {text!r} is not hexadecimal") from None
    if len(raw) != DEK_ID_SIZE:
        raise ConfigurationError(f"a DEK id is {DEK_ID_SIZE} bytes ({2 * DEK_ID_SIZE} hex digits)")
    return raw


def database_failure(exc: Exception) -> VaultkitError:
    """The vaultkit error to report for a SQLAlchemy error ``exc``, naming no value.

    A bad URL (or unknown driver) is a configuration error, its text not shown (a URL may hold a
    password). A failure before any SQL ran (connecting, logging in) shows the driver's first line
    (host, port, user; no SQL, no parameters); once SQL ran, the driver's text may quote values
    (a unique key's DETAIL, a statement's parameters), so only its class and SQLSTATE are shown.
    """
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.ArgumentError):
        return ConfigurationError(
            f"a database URL is not valid or names an unknown driver ({type(exc).__name__}; "
            "the URL is not shown, it may hold a password)"
        )
    orig = getattr(exc, "orig", None)
    cause = f"{type(orig).__module__}.{type(orig).__name__}" if orig is not None else ""
    code = (
        orig.args[0]
        if orig is not None and orig.args and isinstance(orig.args[0], int)
        else getattr(orig, "sqlstate", None)
    )
    where = f"{type(exc).__name__}" + (
        f" ({cause}" + (f", code {code})" if code else ")") if cause else ""
    )
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.statement is None and orig is not None:
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
        return DatabaseError(f"cannot reach the database: {where}: {first}")
    return DatabaseError(
        f"the database failed: {where}; its message is not shown (it may quote values)"
    )
