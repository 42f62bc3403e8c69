"""Per-value cost of vaultkit against raw AES-GCM, for 16, 64, 256 and 4096-byte values.

Run: ``python benchmarks/bench_core.py`` (about a minute). Prints a Markdown table for
docs/benchmarks.md. The measurement itself lives in ``vaultkit.cli.bench`` so that
``vaultkit bench`` and this script time the same code; see that module for the method.
"""

from __future__ import annotations

import argparse

from vaultkit.cli.bench import SIZES, environment, format_core, measure_core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=50000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds; the best is kept")
    args = parser.parse_args()
    print(f"<!-- {environment()}; {args.number} calls x {args.rounds} rounds, best round -->")
    print(format_core(measure_core(SIZES, number=args.number, rounds=args.rounds)))


if __name__ == "__main__":
    main()
