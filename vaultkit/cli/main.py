"""Entry point of the ``vaultkit`` command: parses arguments and maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Final

from vaultkit.cli._common import DatabaseError, database_failure
from vaultkit.errors import (
    ConfigurationError,
    ConflictError,
    DecryptionError,
    DomainError,
    KeyProviderError,
    KeyStoreError,
    VaultkitError,
)

__all__ = ["EXIT_CODES", "EXIT_DATABASE", "EXIT_UNEXPECTED", "DatabaseError", "main"]


#: Exit codes (docs/operations.md, "Exit codes", is the authoritative table; a test drives each):
#: 0 success; 2 usage (argparse); by error class, most specific first: 3 configuration, 4 key
#: provider, 5 key store, 6 decryption, 8 conflict (a batch aborted by the database through every
#: retry), 10 the data or audit database failed or was not reached, 1 any other vaultkit error. Commands return
#: their own: 7 "done, but not clean" (``vaultkit rekey``, ``vaultkit audit verify``, ``vaultkit
#: retention report`` with violations, ``vaultkit subject erase`` partially granted), 9 "no audit
#: log here" (``vaultkit audit``), 4 "breach list unavailable" (``vaultkit password check``), 1 a
#: refusal (a checkpoint refused, a password rejected, a destroy not confirmed). An unexpected
#: exception is 1 (one line, no traceback); Ctrl-C is 130.
EXIT_CODES: Final[tuple[tuple[type[VaultkitError], int], ...]] = (
    (ConfigurationError, 3),
    (DomainError, 3),
    (KeyProviderError, 4),
    (KeyStoreError, 5),
    (DecryptionError, 6),
    (ConflictError, 8),
    (DatabaseError, 10),
    (VaultkitError, 1),
)
EXIT_DATABASE: Final = 10
EXIT_UNEXPECTED: Final = 1


def _parser() -> argparse.ArgumentParser:
    from vaultkit.cli import (
        audience,
        audit,
        bench,
        demo,
        export,
        index,
        keys,
        password,
        rekey,
        retention,
        subject,
    )

    parser = argparse.ArgumentParser(
        prog="vaultkit",
        description="Field-level envelope encryption for personal data in SQL databases.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log key ids and timings")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(commands)
    keys.register(commands)
    bench.register(commands)
    audience.register(commands)
    password.register(commands)
    audit.register(commands)
    rekey.register(commands)
    index.register(commands)
    retention.register(commands)
    subject.register(commands)
    export.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except VaultkitError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        print("vaultkit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        import sqlalchemy.exc

        if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
            return _report(database_failure(exc))
        # A bug or a failure vaultkit did not foresee. Its message and traceback may quote values
        # (SQL parameters, a row), so neither is shown: one line naming the class.
        print(
            f"vaultkit: unexpected error: {type(exc).__name__} (its message is not shown, it may "
            "quote values; please report it)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED


def _report(exc: VaultkitError) -> int:
    # vaultkit messages name no secret; print the class and the message's first line only.
    lines = str(exc).splitlines()
    print(f"vaultkit: {type(exc).__name__}: {lines[0] if lines else ''}", file=sys.stderr)
    return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))
