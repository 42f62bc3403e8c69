"""``vaultkit audit verify`` and ``vaultkit audit head``: check the audit log, export checkpoints.

Both check the log the application's vault writes: with ``--config`` (the application's
``vaultkit.toml``) the same key store, audit database (``audit``), audit domain and provider as
:meth:`Vault.from_config <vaultkit.Vault.from_config>`; with ``--store``/``--keyring``/``--domain``
and, for ``Vault(audit=URL)``, ``--audit URL``. Both only read: the key store, the audit log and
the audit key are opened read-only (an SQLite file in read-only mode, PostgreSQL and MariaDB in
read-only sessions), and nothing is created, upgraded or written.

``verify --writer NAME=PEM`` also verifies an encrypt-only writer's own chain (signed with the
writer key whose public half the unit pins).

Exit codes: 0 intact; 7 the log (or a writer's chain) is broken, truncated or rolled back (against ``--expect``); 9 no
audit log here: the audit database has no audit tables, or the key store no audit key for the
domain (nothing was verified); 1 a checkpoint file is refused (altered, made under another audit
key, unreadable); 3, 4, 5 as for every command (configuration, key provider, key store).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from vaultkit.audit import (
    AuditLog,
    Checkpoint,
    VerifyResult,
    audit_log_exists,
    read_audit_key,
    read_checkpoint,
    write_checkpoint,
    writer_table_prefix,
)
from vaultkit.errors import ConfigurationError, KeyStoreError
from vaultkit.keys import KeyProvider, LocalKeyProvider
from vaultkit.store import SQLKeyStore

#: The exit code of a log that fails verification (broken chain, truncation, rollback).
EXIT_BROKEN: Final = 7
#: The exit code when there is no audit log to verify where the command looked.
EXIT_NO_LOG: Final = 9

_READ_ONLY_SESSION: Final = {
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
}


class _NoAuditLog(Exception):  # noqa: N818 - internal control flow, mapped to EXIT_NO_LOG
    pass


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="the application's vaultkit TOML configuration: key store, audit database, audit "
        "domain and providers as its vault has them (instead of --store and --keyring)",
    )
    parser.add_argument("--store", help="database URL of the key store (with --keyring)")
    parser.add_argument("--keyring", type=Path, help="the local keyring file (with --store)")
    parser.add_argument(
        "--domain",
        help="the audit domain (the vault's audit_domain, else its first audited domain); "
        "with --config taken from it",
    )
    parser.add_argument(
        "--audit",
        metavar="URL",
        help="database URL of the audit log when the vault keeps it apart (Vault(audit=URL)); "
        "default: the key store's database",
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
        description="Reads only. The audit key is read through --config's provider or the "
        "keyring (master key from VAULTKIT_MASTER_KEY). Exit codes: 0 intact, 7 broken, "
        "truncated or rolled back, 9 no audit log here (no audit tables, or no audit key), "
        "1 checkpoint refused, 3 configuration, 4 key provider, 5 key store.",
    )
    _common(verify)
    verify.add_argument(
        "--writer",
        action="append",
        default=[],
        metavar="NAME=PEM",
        help="also verify an encrypt-only writer's own audit chain, with the Ed25519 public key "
        "(PEM file) the unit pins for it in writers= (repeatable)",
    )
    verify.set_defaults(handler=_verify)
    head = sub.add_parser(
        "head",
        help="verify the log, then export its head as a MACed checkpoint",
        description="Prints (or writes with --out, mode 0600, atomically) a JSON checkpoint: "
        "log id, last sequence number, chain hash, time, and a MAC under the audit key. It "
        "holds no secret. Keep it where the database's writers cannot write, and pass it to "
        "`vaultkit audit verify --expect` later. Reads the database only; exit codes as for "
        "verify.",
    )
    _common(head)
    head.add_argument("--out", type=Path, help="write the checkpoint to this file")
    head.set_defaults(handler=_head)


def _shown(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unreadable URL)"


def _read_only_engine(url: str) -> sa.Engine | None:
    """An engine that cannot write: ``None`` for an SQLite file that does not exist.

    SQLite opens the file with ``mode=ro`` (a missing file is never created); PostgreSQL and
    MariaDB/MySQL sessions are set read-only as they connect.
    """
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        raise ConfigurationError(f"not a database URL: {_shown(url)}") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if not database or database == ":memory:":
                raise ConfigurationError("an in-memory SQLite database holds no audit log")
            path = Path(database)
            if not path.is_file():
                return None
            uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
            return sa.create_engine(
                parsed, creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
            )
        engine = sa.create_engine(parsed, hide_parameters=True)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigurationError(
            f"cannot use the database URL {_shown(url)}: {type(exc).__name__}"
        ) from None
    statement = _READ_ONLY_SESSION.get(engine.dialect.name)
    if statement is not None:

        def read_only(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(statement)
            cursor.close()
            dbapi_connection.commit()  # a SET rolled back with its transaction would not hold

        sa.event.listen(engine, "connect", read_only)
    return engine


def _where(args: argparse.Namespace) -> tuple[str, str | None, str, KeyProvider]:
    """Key store URL, audit URL (None: the key store's), audit domain and its provider."""
    if args.config is not None:
        if args.store is not None or args.keyring is not None:
            raise ConfigurationError("give --config, or --store and --keyring, not both")
        from vaultkit.config import vault_parts

        parts = vault_parts(args.config)
        domain = args.domain or parts.audit_domain
        if domain is None:
            raise _NoAuditLog(
                f"no audit log here: {args.config} declares no audited domain, so the "
                "application's vault keeps no audit log"
            )
        if domain not in parts.providers:
            raise ConfigurationError(f"domain {domain!r} is not declared in {args.config}")
        return parts.store, args.audit or parts.audit, domain, parts.providers[domain]
    if args.store is None or args.keyring is None or args.domain is None:
        raise ConfigurationError(
            "give --config (the application's vaultkit.toml), or --store, --keyring and --domain"
        )
    return args.store, args.audit, args.domain, LocalKeyProvider(args.keyring, create_keys=False)


@contextmanager
def _audit_log(args: argparse.Namespace) -> Iterator[AuditLog]:
    store_url, audit_url, domain, provider = _where(args)
    with ExitStack() as cleanup:
        store_engine = _read_only_engine(store_url)
        if store_engine is not None:
            cleanup.callback(store_engine.dispose)
        if audit_url is None:
            audit_engine = store_engine
        else:
            audit_engine = _read_only_engine(audit_url)
            if audit_engine is not None:
                cleanup.callback(audit_engine.dispose)
        shown = _shown(audit_url or store_url)
        _reachable(store_engine, audit_engine, store_url)
        if audit_engine is None or not audit_log_exists(audit_engine):
            hint = (
                ""
                if audit_url is not None
                else "; if the application's vault keeps its audit log apart (Vault(audit=URL), "
                "audit = in its configuration), give --audit URL or --config"
            )
            raise _NoAuditLog(
                f"no audit log here: {shown} has no tables vaultkit_audit_events and "
                f"vaultkit_audit_head{hint}"
            )
        if store_engine is None or not sa.inspect(store_engine).has_table("vaultkit_data_keys"):
            raise _NoAuditLog(
                f"no audit log here: no key store at {_shown(store_url)}, so no audit key"
            )
        store = SQLKeyStore(store_engine, create=False)
        mac = read_audit_key(store, provider, domain)
        if mac is None:
            raise _NoAuditLog(
                f"no audit log here: the key store at {_shown(store_url)} holds no audit key of "
                f"domain {domain} (is {domain} the vault's audit domain? see --domain, --config)"
            )
        yield AuditLog(audit_engine, mac=mac, read_only=True)


def _reachable(store: sa.Engine | None, audit: sa.Engine | None, store_url: str) -> None:
    """Connect to the key store's and the audit database once: an unreachable key store is a
    KeyStoreError (exit 5) as for every command, an unreachable audit database a database
    failure (exit 10), neither an "audit log cannot be read"."""
    from vaultkit.cli._common import database_failure

    for engine in dict.fromkeys(e for e in (store, audit) if e is not None):
        try:
            with engine.connect():
                pass
        except SQLAlchemyError as exc:
            if engine is store:
                raise KeyStoreError(
                    f"key store at {_shown(store_url)} cannot be reached: {type(exc).__name__}"
                ) from None
            raise database_failure(exc) from None


def _expected(args: argparse.Namespace) -> list[Checkpoint]:
    return [read_checkpoint(args.expect)] if args.expect is not None else []


def _report(result: VerifyResult, args: argparse.Namespace) -> int:
    out = sys.stdout if args.handler is _verify else sys.stderr
    if result.ok:
        against = f", checkpoint {args.expect} holds" if args.expect is not None else ""
        print(f"audit log intact: {result.events} events, hash chain verified{against}", file=out)
        if result.note:
            print(f"note: {result.note}", file=out)
        return 0
    print(
        f"audit log BROKEN at event {result.first_broken}: {result.reason} "
        f"({result.events} events read)"
    )
    return EXIT_BROKEN


def _no_log(exc: _NoAuditLog) -> int:
    print(f"vaultkit: {exc}", file=sys.stderr)
    return EXIT_NO_LOG


def _writer_keys(args: argparse.Namespace) -> list[tuple[str, Ed25519PublicKey]]:
    keys = []
    for item in getattr(args, "writer", []):
        name, sep, pem = item.partition("=")
        if not sep or not name or not pem:
            raise ConfigurationError(f"--writer takes NAME=PEM-FILE, not {item!r}")
        try:
            key = serialization.load_pem_public_key(Path(pem).read_bytes())
        except (OSError, ValueError, TypeError):
            raise ConfigurationError(
                f"writer {name}: {pem} is not a readable PEM public key"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigurationError(f"writer {name}: {pem} is not an Ed25519 public key")
        keys.append((name, key))
    return keys


def _writer_chain(engine: sa.Engine, name: str, key: Ed25519PublicKey) -> AuditLog:
    if not audit_log_exists(engine, table_prefix=writer_table_prefix(key)):
        raise _NoAuditLog(
            f"no audit log here for writer {name}: no tables {writer_table_prefix(key)}"
            "audit_events and ..._audit_head (it has logged nothing here, or they were dropped)"
        )
    return AuditLog.of_writer(engine, key, name=name)


def _verify(args: argparse.Namespace) -> int:
    expected = _expected(args)
    writers = _writer_keys(args)
    try:
        with _audit_log(args) as log:
            result = log.verify(expect=expected)
            chains = [
                (name, _writer_chain(log.engine, name, key).verify()) for name, key in writers
            ]
    except _NoAuditLog as exc:
        return _no_log(exc)
    code = _report(result, args)
    for name, chain in chains:
        if chain.ok:
            print(f"writer {name}: audit chain intact: {chain.events} events, signatures verified")
        else:
            print(
                f"writer {name}: audit chain BROKEN at event {chain.first_broken}: "
                f"{chain.reason} ({chain.events} events read)"
            )
            code = EXIT_BROKEN
    return code


def _head(args: argparse.Namespace) -> int:
    expected = _expected(args)
    try:
        with _audit_log(args) as log:
            # Take the checkpoint first and verify the log against it (and the older one, if
            # given), so that events appended meanwhile are never blessed unverified.
            checkpoint = log.checkpoint()
            result = log.verify(expect=[*expected, checkpoint])
    except _NoAuditLog as exc:
        return _no_log(exc)
    if not result.ok:
        return _report(result, args)
    _report(result, args)
    if args.out is None:
        print(checkpoint.to_json())
    else:
        write_checkpoint(args.out, checkpoint)
        print(f"checkpoint of event {checkpoint.seq} written to {args.out}", file=sys.stderr)
    return 0
