"""Password hashing and policy costs on this machine.

Run: ``python benchmarks/bench_passwords.py`` (about a minute). Prints Markdown tables for
docs/benchmarks.md: milliseconds per hash and per verify for each scheme and profile (median of
``--repeat``), and the policy check's typical and worst-case time over a search of inputs known to
be expensive for zxcvbn (long strings, l33t-heavy strings, repeated patterns).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import statistics
import time
from collections.abc import Callable

from vaultkit.passwords import Argon2Profile, PasswordHasher, PasswordPolicy
from vaultkit.passwords.policy import MAX_L33T_CHARACTERS, MAX_SCORED_LENGTH

PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark input, not a secret


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def hashing(repeat: int) -> None:
    print("| scheme and parameters | hash ms | verify ms |")
    print("|---|---:|---:|")
    profiles = {
        "argon2id RFC 9106 low-memory (t=3, 64 MiB, p=4), the default": Argon2Profile(3, 65536, 4),
        "argon2id OWASP minimum (t=2, 19 MiB, p=1)": Argon2Profile(2, 19456, 1),
    }
    for label, profile in profiles.items():
        hasher = PasswordHasher(argon2_profile=profile)
        stored = hasher.hash(PASSWORD)
        print(
            f"| {label} | {median_ms(lambda h=hasher: h.hash(PASSWORD), repeat):.0f} "
            f"| {median_ms(lambda h=hasher, s=stored: h.verify(PASSWORD, s), repeat):.0f} |"
        )
    for rounds in (10, 12):
        hasher = PasswordHasher(scheme="bcrypt", bcrypt_rounds=rounds)
        stored = hasher.hash(PASSWORD)
        print(
            f"| bcrypt cost {rounds} | {median_ms(lambda h=hasher: h.hash(PASSWORD), repeat):.0f} "
            f"| {median_ms(lambda h=hasher, s=stored: h.verify(PASSWORD, s), repeat):.0f} |"
        )
    default = PasswordHasher()
    salt = "benchsalt1234"
    digest = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt.encode(), 600_000)
    django = f"pbkdf2_sha256$600000${salt}${base64.b64encode(digest).decode()}"
    print(
        f"| PBKDF2-SHA256 600,000 (legacy, verify only) | - | {median_ms(lambda: default.verify(PASSWORD, django), repeat):.0f} |"
    )
    print(
        f"| unknown hash format (comparable work before the error) | - | {median_ms(lambda: _unknown(default), repeat):.0f} |"
    )


def _unknown(hasher: PasswordHasher) -> None:
    try:
        hasher.verify(PASSWORD, "md5$not$a$supported$hash")
    except Exception:  # noqa: S110 - the error is the point
        pass


def policy(rounds: int) -> None:
    checker = PasswordPolicy()
    typical = [
        "Tr0ub4dor&3",
        PASSWORD,
        "kX7#qz!Lp",
        "Summer2024!",
        "paard batterij nietje correct",
        "password1",
    ]
    typical_ms = [median_ms(lambda p=p: checker.check(p), 5) for p in typical]
    rnd = random.Random(3)
    l33t = "!$%(+0123456789<@[{|"
    candidates = [
        "4@8({[<3691!|" * 8,
        "@1!|$5+7(<{[" * 8,
        "x" * 10_000,
        "a1" * 5000,
        "p4$$w0rd" * 40,
        "".join(rnd.choice(l33t) for _ in range(72)),
    ]
    for _ in range(rounds):
        length = rnd.choice((16, 24, 32, 48, 64, 72, 200))
        mix = rnd.random()
        candidates.append(
            "".join(
                rnd.choice(l33t) if rnd.random() < mix else rnd.choice("aeiolstbg")
                for _ in range(length)
            )
        )
    worst, worst_len = 0.0, 0
    for text in candidates:
        start = time.perf_counter()
        checker.check(text)
        elapsed = (time.perf_counter() - start) * 1000
        if elapsed > worst:
            worst, worst_len = elapsed, len(text)
    print()
    print(
        f"Policy check (zxcvbn 4.5.0 with the Dutch and French dictionaries; scored prefix: at most "
        f"{MAX_SCORED_LENGTH} characters and {MAX_L33T_CHARACTERS} l33t characters):"
    )
    print()
    print("| inputs | ms |")
    print("|---|---:|")
    print(
        f"| typical (the spec's cases), median of medians | {statistics.median(typical_ms):.1f} |"
    )
    print(f"| typical, slowest | {max(typical_ms):.1f} |")
    print(
        f"| worst of {len(candidates)} expensive inputs (long, l33t-heavy, repeated; the worst was {worst_len} characters) | {worst:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--search", type=int, default=300, help="random expensive inputs to try")
    args = parser.parse_args()
    hashing(args.repeat)
    policy(args.search)


if __name__ == "__main__":
    main()
