"""Entry point of the ``vaultkit`` command: parses arguments and maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Final

from vaultkit.errors import (
    ConfigurationError,
    ConflictError,
    DecryptionError,
    DomainError,
    KeyProviderError,
    KeyStoreError,
    VaultkitError,
)

__all__ = ["EXIT_CODES", "main"]

#: Exit codes: 0 success, 2 usage (argparse); the rest by error class, most specific first
#: (7 is a command's own "done, but not clean": ``vaultkit rekey``, ``vaultkit audit verify``).
EXIT_CODES: Final[tuple[tuple[type[VaultkitError], int], ...]] = (
    (ConfigurationError, 3),
    (DomainError, 3),
    (KeyProviderError, 4),
    (KeyStoreError, 5),
    (DecryptionError, 6),
    (ConflictError, 8),
    (VaultkitError, 1),
)


def _parser() -> argparse.ArgumentParser:
    from vaultkit.cli import audience, audit, bench, demo, keys, password, rekey

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
        # vaultkit messages name no secret; print the class and message, never a traceback.
        print(f"vaultkit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))
    except KeyboardInterrupt:
        print("vaultkit: interrupted", file=sys.stderr)
        return 130
