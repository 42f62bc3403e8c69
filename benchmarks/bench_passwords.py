"""Password hashing and policy costs on this machine.

Run: ``python benchmarks/bench_passwords.py`` (about two minutes). Prints Markdown tables for
docs/benchmarks.md: milliseconds per hash and per verify for each scheme and profile (median of
``--repeat``), and the policy check's typical and worst-case time over a search of inputs known to
be expensive for zxcvbn (long strings, l33t-heavy strings, repeated patterns, places with postal
codes), alone and with context words and a breach check against local range files (written to a
temporary directory), and the typical cost of a breach check through a range mirror on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import random
import statistics
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

from vaultkit.passwords import (
    Argon2Profile,
    PasswordHasher,
    PasswordPolicy,
    PwnedRangeDirectory,
    PwnedRangeMirror,
)
from vaultkit.passwords.policy import MAX_L33T_CHARACTERS, MAX_SCORED_LENGTH

CONTEXT_WORDS = [
    "ziekenfonds",
    "mutualiteit",
    "zorgverzekeraar",
    "mutualite",
    "zorgkas",
    "vivamedis",
    "ledenvoordeel",
    "hospitalisatieverzekering",
] * 5

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


def expensive_inputs(rounds: int) -> list[str]:
    """Inputs known to be expensive for the policy; the same list for a given ``rounds``."""
    rnd = random.Random(3)
    l33t = "!$%(+0123456789<@[{|"
    places = ["leuven", "gent", "utrecht", "sint-niklaas", "amsterdam", "brussel", "liège"]
    candidates = [
        "4@8({[<3691!|" * 8,
        "@1!|$5+7(<{[" * 8,
        "x" * 10_000,
        "a1" * 5000,
        "p4$$w0rd" * 40,
        "".join(rnd.choice(l33t) for _ in range(72)),
        "Leuven3000" * 1000,
        "3000 leuven " * 500,
        "9000gent" * 9,
        "Utrecht3511AB" * 6,
        "1000" * 2000,
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
    for _ in range(rounds // 3):
        candidates.append(
            "".join(
                rnd.choice(places) + rnd.choice(("", "-", " ")) + f"{rnd.randint(1000, 9999)}"
                for _ in range(rnd.randint(1, 8))
            )
        )
    return candidates


def worst_ms(checker: PasswordPolicy, candidates: list[str]) -> tuple[float, int]:
    worst, worst_len = 0.0, 0
    for text in candidates:
        start = time.perf_counter()
        checker.check(text)
        elapsed = (time.perf_counter() - start) * 1000
        if elapsed > worst:
            worst, worst_len = elapsed, len(text)
    return worst, worst_len


def write_range_files(directory: Path, passwords: list[str], entries: int = 900) -> None:
    """Range files of realistic size (about 900 lines) for every prefix these passwords reach."""
    rnd = random.Random(9)
    prefixes = set()
    for password in passwords:
        for form in {unicodedata.normalize("NFKC", password), password}:
            data = form.encode("utf-8", "surrogatepass")
            prefixes.add(hashlib.sha1(data, usedforsecurity=False).hexdigest().upper()[:5])
    for prefix in prefixes:
        lines = sorted(
            f"{rnd.getrandbits(140):035X}:{rnd.randint(1, 9999)}" for _ in range(entries)
        )
        (directory / f"{prefix}.txt").write_text("\r\n".join(lines), encoding="ascii")


def mirror_ms(typical: list[str], repeat: int) -> float:
    """Median policy check through a range mirror on 127.0.0.1 (the network at its cheapest)."""
    rnd = random.Random(4)
    body = "\r\n".join(
        sorted(f"{rnd.getrandbits(140):035X}:{rnd.randint(1, 9999)}" for _ in range(900))
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        checker = PasswordPolicy(breached=PwnedRangeMirror(url))
        return statistics.median(median_ms(lambda p=p: checker.check(p), repeat) for p in typical)
    finally:
        server.shutdown()
        server.server_close()


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
    candidates = expensive_inputs(rounds)
    with tempfile.TemporaryDirectory() as tmp:
        write_range_files(Path(tmp), typical + candidates)
        full = PasswordPolicy(context_words=CONTEXT_WORDS, breached=PwnedRangeDirectory(tmp))
        typical_ms = [median_ms(lambda p=p: checker.check(p), 5) for p in typical]
        full_typical_ms = [median_ms(lambda p=p: full.check(p), 5) for p in typical]
        worst, worst_len = worst_ms(checker, candidates)
        full_worst, full_worst_len = worst_ms(full, candidates)
    print()
    print(
        f"Policy check (zxcvbn 4.5.0 with the Dutch and French dictionaries and the place and "
        f"postal-code rule; scored prefix: at most {MAX_SCORED_LENGTH} characters and "
        f"{MAX_L33T_CHARACTERS} l33t characters). The full policy adds {len(CONTEXT_WORDS)} "
        f"context words and a breach check against local range files of 900 lines:"
    )
    print()
    print("| inputs | default policy, ms | full policy, ms |")
    print("|---|---:|---:|")
    print(
        f"| typical (the spec's cases), median of medians | {statistics.median(typical_ms):.1f} "
        f"| {statistics.median(full_typical_ms):.1f} |"
    )
    print(f"| typical, slowest | {max(typical_ms):.1f} | {max(full_typical_ms):.1f} |")
    print(
        f"| worst of {len(candidates)} expensive inputs (long, l33t-heavy, repeated, places with "
        f"codes; the worst was {worst_len} / {full_worst_len} characters) | {worst:.1f} | {full_worst:.1f} |"
    )
    print(
        f"| typical, breach check through a range mirror on 127.0.0.1, median | - "
        f"| {mirror_ms(typical, 5):.1f} |"
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
