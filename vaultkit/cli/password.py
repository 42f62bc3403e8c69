"""``vaultkit password``: check a password against the policy, calibrate argon2id."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from vaultkit.errors import ConfigurationError, PasswordError
from vaultkit.passwords import (
    BreachedPasswords,
    PasswordPolicy,
    PwnedHashFile,
    PwnedRangeDirectory,
    PwnedRangeMirror,
    calibrate,
)

#: Exit code when the breach list cannot answer (as for an unreachable key provider).
EXIT_BREACH_LIST_UNAVAILABLE = 4


def register(commands: Any) -> None:
    password = commands.add_parser("password", help="check passwords, calibrate hashing")
    sub = password.add_subparsers(dest="password_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="judge a password (read without echo, or from stdin); it is never printed",
    )
    check.add_argument("--stdin", action="store_true", help="read the password from standard input")
    check.add_argument(
        "--user-input", action="append", default=[], help="the user's e-mail, name, ...; repeatable"
    )
    check.add_argument("--min-length", type=int, default=9)
    check.add_argument("--min-score", type=int, default=3)
    check.add_argument(
        "--context-word",
        action="append",
        default=[],
        help="the organisation's own words (name, products, sector); repeatable",
    )
    breach = check.add_mutually_exclusive_group()
    breach.add_argument(
        "--pwned-dir",
        metavar="DIR",
        help="also reject passwords found in a Pwned Passwords range directory "
        "(haveibeenpwned-downloader -s false DIR)",
    )
    breach.add_argument(
        "--pwned-file",
        metavar="FILE",
        help="the same, in the downloader's single sorted file (pwnedpasswords.txt)",
    )
    breach.add_argument(
        "--pwned-url",
        metavar="URL",
        help="the same, through an internal range mirror (GET URL/range/PREFIX); "
        "only a 5-hex-digit prefix of the password's SHA-1 is sent",
    )
    check.add_argument(
        "--pwned-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="whole-request timeout for --pwned-url (default 2); when the list cannot answer, "
        f"the command exits {EXIT_BREACH_LIST_UNAVAILABLE}",
    )
    check.set_defaults(handler=_check)
    cal = sub.add_parser("calibrate", help="argon2id parameters for a target time on this machine")
    cal.add_argument("--target-ms", type=float, default=250.0)
    cal.add_argument("--memory-mib", type=int, default=64)
    cal.set_defaults(handler=_calibrate)


def _check(args: argparse.Namespace) -> int:
    breached: BreachedPasswords | None = None
    if args.pwned_dir:
        breached = PwnedRangeDirectory(args.pwned_dir)
    elif args.pwned_file:
        breached = PwnedHashFile(args.pwned_file)
    elif args.pwned_url:
        breached = PwnedRangeMirror(args.pwned_url, timeout=args.pwned_timeout)
    elif args.pwned_timeout != 2.0:
        raise ConfigurationError("--pwned-timeout needs --pwned-url")
    policy = PasswordPolicy(
        min_length=args.min_length,
        min_score=args.min_score,
        context_words=args.context_word,
        breached=breached,
    )
    if args.stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password (not shown): ")
    try:
        result = policy.check(password, user_inputs=args.user_input)
    except PasswordError as exc:
        print(f"vaultkit: the breached-password check could not run: {exc}", file=sys.stderr)
        return EXIT_BREACH_LIST_UNAVAILABLE
    print(
        f"length {result.length} (minimum {args.min_length}), score {result.score}/4 (minimum {args.min_score})"
    )
    print(
        f"verdict: {result.verdict}" + (f" ({', '.join(result.reasons)})" if result.reasons else "")
    )
    if result.warning:
        print(f"warning: {result.warning}")
    for suggestion in result.suggestions:
        print(f"suggestion: {suggestion}")
    return 0 if result.accepted else 1


def _calibrate(args: argparse.Namespace) -> int:
    profile, measured = calibrate(args.target_ms, memory_cost=args.memory_mib * 1024)
    print(
        f"argon2id time_cost={profile.time_cost} memory_cost={profile.memory_cost} KiB "
        f"parallelism={profile.parallelism}: {measured:.0f} ms per hash on this machine "
        f"(target {args.target_ms:.0f} ms)"
    )
    print(
        "use: PasswordHasher(argon2_profile=Argon2Profile("
        f"time_cost={profile.time_cost}, memory_cost={profile.memory_cost}, parallelism={profile.parallelism}))"
    )
    return 0
