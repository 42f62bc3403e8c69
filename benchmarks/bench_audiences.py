"""Audience hashing throughput: CSV to CSV, e-mail only and full records, 1 and 2 workers.

Run: ``python benchmarks/bench_audiences.py`` (about two minutes; ``--rows 100000`` for a quick
look). Prints a Markdown table for docs/benchmarks.md. The baseline, measured in the same run, is a
bare ``hashlib.sha256(email.encode()).hexdigest()`` loop over the same e-mails already in memory:
no CSV, no normalisation, no validation.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import random
import string
import tempfile
import time
from pathlib import Path

from vaultkit.audiences._csv import hash_csv


def write_inputs(directory: Path, rows: int) -> tuple[Path, Path, list[str]]:
    rnd = random.Random(42)
    letters = string.ascii_lowercase
    emails = []
    email_path, full_path = directory / "emails.csv", directory / "full.csv"
    with (
        open(email_path, "w", newline="") as e_handle,
        open(full_path, "w", newline="") as f_handle,
    ):
        e_writer, f_writer = csv.writer(e_handle), csv.writer(f_handle)
        e_writer.writerow(["email"])
        f_writer.writerow(["email", "phone", "first_name", "last_name", "country", "postal_code"])
        for i in range(rows):
            first = "".join(rnd.choices(letters, k=6))
            last = "".join(rnd.choices(letters, k=8))
            email = f"{first}.{last}{i % 1000}@{'gmail.com' if i % 4 == 0 else 'example.be'}"
            emails.append(email)
            e_writer.writerow([email])
            f_writer.writerow(
                [
                    email,
                    f"+32 470 {rnd.randint(10, 99)} {rnd.randint(10, 99)} {rnd.randint(10, 99)}",
                    first.title(),
                    last.title(),
                    "BE",
                    str(rnd.randint(1000, 9999)),
                ]
            )
    return email_path, full_path, emails


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vaultkit-audience-bench-"))
    email_path, full_path, emails = write_inputs(tmp, args.rows)

    start = time.perf_counter()
    sha = hashlib.sha256
    for email in emails:
        sha(email.encode()).hexdigest()
    bare = args.rows / (time.perf_counter() - start)

    print(f"<!-- {args.rows:,} rows, {os.cpu_count()} CPUs -->")
    print("| input | platform | workers | rows/s | rows/s per worker | vs bare sha256 loop |")
    print("|---|---|---:|---:|---:|---:|")
    print(f"| e-mails in memory (baseline) | - | 1 | {bare:,.0f} | {bare:,.0f} | 1.00x |")
    for label, path in (("e-mail only", email_path), ("full records", full_path)):
        for platform in ("google", "meta"):
            for workers in (1, 2):
                out = tmp / f"out-{platform}-{workers}.csv"
                start = time.perf_counter()
                report = hash_csv(
                    path, out, platform=platform, default_region="BE", workers=workers
                )
                rate = report.rows / (time.perf_counter() - start)
                assert report.rows == args.rows
                print(
                    f"| {label} | {platform} | {workers} | {rate:,.0f} | {rate / workers:,.0f} "
                    f"| {rate / bare:.2f}x |"
                )


if __name__ == "__main__":
    main()
