"""Per-value cost of vaultkit against raw and framed AES-GCM (the ``core`` suite of ``vaultkit bench``).

Run: ``python benchmarks/bench_core.py`` (about a minute) or ``--quick``. Prints the suite's
Markdown table; ``vaultkit bench --suite core --json-out FILE`` gives the same figures with the
machine block, as JSON of schema ``vaultkit-bench/1``.
"""

from __future__ import annotations

import argparse

from vaultkit.cli._bench._report import format_markdown
from vaultkit.cli.bench import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few calls, for a smoke run")
    args = parser.parse_args()
    print(format_markdown(measure(["core"], quick=args.quick)))


if __name__ == "__main__":
    main()
