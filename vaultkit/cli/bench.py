"""``vaultkit bench``: vaultkit measured beside its baselines in one run, as a reviewer's report.

Each suite (``--suite core,orm,providers,rekey,audiences,passwords,lifecycle``; all by default) times
vaultkit with every protection on next to its baselines in the same run: raw and framed AES-GCM,
plain columns, bare SHA-256, the libraries vaultkit wraps, and peers (Fernet, sqlalchemy-utils,
Tink) when installed. Figures are absolute (µs per operation, ops/s, MB/s, rows/s), with their
distribution over rounds (best, median, p95) and ratios to each baseline, so machine speed cancels
out. Beside each baseline or peer, what it does not protect.

The report starts with a machine block (CPU model and flags, cores, Python, cryptography and its
OpenSSL, SQLAlchemy, SQLite and database servers, vaultkit version and commit) and a digest of the
vault configuration whose protections were checked on. No host or user name unless
``--include-host``.

``--json-out FILE`` writes the run as JSON of schema ``vaultkit-bench/1`` (validated before it is
written); ``--compare BASE.json`` prints base, now and delta per figure, with a noise threshold and
a warning when the machine blocks differ; ``--input RUN.json`` reports a saved run instead of
measuring; ``--chart FILE`` draws the ratios (matplotlib, ``pip install 'vaultkit[bench]'``);
``--update-doc docs/benchmarks.md`` rewrites the generated part of that page from the run.
``--database URL`` (repeatable) also runs the ``orm`` and ``rekey`` suites on that database, in
tables of their own that they drop; the machine block gets its server version, never the URL.
``--config FILE`` makes the ``providers`` suite measure each domain's provider of that vault
configuration (wraps and unwraps of random data keys, nothing stored).

Exit codes: 0; 2 usage; 3 a JSON file that is not a ``vaultkit-bench/1`` run, ``--chart``
without matplotlib, or an ``--update-doc`` file without its markers; 1 with
``--fail-on-regression`` when ``--compare`` finds a figure slower beyond the noise threshold;
the command's usual codes (4 provider, 10 database) when ``--config`` or ``--database`` fail.

.. versionchanged:: 0.3.0
   Suites, machine block, ``--format``, ``--json-out``, ``--compare``, ``--input``, ``--chart``,
   ``--update-doc``, ``--database``, ``--config``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaultkit.cli._bench._machine import config_digest, load_average, machine_block
from vaultkit.cli._bench._model import Run
from vaultkit.cli._bench._report import (
    DEFAULT_NOISE,
    compare,
    format_comparison,
    format_markdown,
    format_run,
    splice_generated,
)
from vaultkit.cli._bench._schema import SchemaError, validate
from vaultkit.cli._bench._suites import SUITES, Options, protections
from vaultkit.errors import ConfigurationError

__all__ = ["SIZES", "CoreResult", "load_run", "measure", "measure_core", "register", "run"]

#: Payload sizes of :func:`measure_core` (``benchmarks/bench_key_check.py`` compares trees with it).
SIZES = (16, 64, 256, 4096)


@dataclass(frozen=True, slots=True)
class CoreResult:
    """Best microseconds per operation for one payload size (the interface older trees share)."""

    size: int
    raw_encrypt: float
    raw_decrypt: float
    framed_encrypt: float
    framed_decrypt: float
    vault_encrypt: float
    vault_decrypt: float
    field_encrypt: float
    field_decrypt: float


def measure_core(
    sizes: tuple[int, ...] = SIZES, *, number: int = 20000, rounds: int = 7
) -> list[CoreResult]:
    """Time raw and framed AES-GCM, ``Vault`` and ``FieldCipher``; best µs per operation."""
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from vaultkit.cli._bench._model import interleaved
    from vaultkit.cli._bench._suites import bench_vault, core_ops
    from vaultkit.core import wire

    names = {
        "raw AESGCM": "raw",
        "framed AESGCM": "framed",
        "Vault.encrypt": "vault",
        "FieldCipher": "field",
    }
    context = {"table": "members", "column": "note"}
    out = []
    with bench_vault() as vault:
        field = vault.field("identity", table="members", column="note")
        raw = AESGCM(os.urandom(32))
        aad = os.urandom(wire.HEADER_SIZE + len(wire.context_block("identity", context)))
        fernet = Fernet(Fernet.generate_key())
        for size in sizes:
            ops = core_ops(size, vault, field, raw, fernet, None, aad, context)
            chosen = {f"{names[s]}_{o}": fn for (s, o), fn in ops.items() if s in names}
            samples = interleaved(chosen, number=number, rounds=rounds)
            out.append(CoreResult(size, **{k: min(v) * 1e6 for k, v in samples.items()}))
    return out


def _suites(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown suite(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SUITES)}"
        )
    return names


def register(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure vaultkit against its baselines and peers",
        description="Measure vaultkit beside its baselines in one run (docs/benchmarks.md).",
    )
    bench.add_argument("--quick", action="store_true", help="few iterations, for a smoke run")
    bench.add_argument(
        "--suite",
        type=_suites,
        default=list(SUITES),
        metavar="NAMES",
        help=f"comma-separated suites (default: all): {','.join(SUITES)}",
    )
    bench.add_argument(
        "--format", choices=["table", "markdown", "json"], default="table", help="output format"
    )
    bench.add_argument(
        "--database",
        action="append",
        default=[],
        metavar="URL",
        help="also measure the orm and rekey suites on this database (tables of their own, dropped)",
    )
    bench.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="providers suite: also measure each domain's provider of this vault configuration",
    )
    bench.add_argument("--json-out", type=Path, metavar="FILE", help="also write the run as JSON")
    bench.add_argument("--chart", type=Path, metavar="FILE", help="draw the ratios (.svg, .png)")
    bench.add_argument(
        "--compare", type=Path, metavar="BASE.json", help="print base, now and delta per figure"
    )
    bench.add_argument(
        "--input", type=Path, metavar="RUN.json", help="report a saved run instead of measuring"
    )
    bench.add_argument(
        "--noise",
        type=float,
        default=DEFAULT_NOISE,
        metavar="FRACTION",
        help=f"--compare: changes below this fraction are noise (default {DEFAULT_NOISE})",
    )
    bench.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="--compare: exit 1 when a figure is slower beyond the noise threshold",
    )
    bench.add_argument(
        "--update-doc",
        type=Path,
        metavar="FILE.md",
        help="write the Markdown report between the generated-part markers of FILE.md",
    )
    bench.add_argument(
        "--include-host", action="store_true", help="name the host and user in the machine block"
    )
    bench.set_defaults(handler=run)


def measure(
    suites: list[str],
    *,
    quick: bool,
    databases: tuple[str, ...] = (),
    config: str | None = None,
    include_host: bool = False,
    argv: list[str] | None = None,
) -> Run:
    """Run ``suites`` and return the run, machine block and checked configuration included.

    ``databases`` are SQLAlchemy URLs the ``orm`` and ``rekey`` suites also measure, beside
    SQLite, in tables of unique names that they drop afterwards. ``config`` is a vault
    configuration file whose providers the ``providers`` suite measures (a few hundred wraps and
    unwraps of random data keys; nothing is stored).
    """
    started = time.perf_counter()
    found = protections()
    checked = {
        "protections": found,
        "all_on": all(v is True for k, v in found.items() if k != "suite"),
        "digest": config_digest(found),
    }
    result = Run(
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        quick=quick,
        machine=machine_block(include_host=include_host),
        config=checked,
        argv=list(argv or []),
    )
    options = Options(quick=quick, databases=databases, config=config)
    for name in suites:
        suite_start = time.perf_counter()
        suite = SUITES[name](options)
        suite.seconds = time.perf_counter() - suite_start
        suite.finish()
        result.suites.append(suite)
    result.machine["database_servers"] = dict(sorted(options.servers.items()))
    result.machine["load_average_after"] = load_average()
    result.duration_s = time.perf_counter() - started
    return result


def _argv(args: argparse.Namespace) -> list[str]:
    """What was measured, as command-line arguments; database URLs left out (they may hold a password)."""
    out = ["bench", "--suite", ",".join(args.suite)]
    if args.quick:
        out.append("--quick")
    for _url in args.database:
        out += ["--database", "<url>"]
    if args.config:
        out += ["--config", "<file>"]
    return out


def load_run(path: Path) -> Run:
    """Read and validate a saved run.

    Raises:
        ConfigurationError: the file cannot be read or is not a ``vaultkit-bench/1`` run.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"{path}: not a readable JSON file ({type(exc).__name__})"
        ) from None
    try:
        validate(document)
    except SchemaError as exc:
        raise ConfigurationError(f"{path}: not a vaultkit-bench/1 run: {exc}") from None
    return Run.from_json(document)


def run(args: argparse.Namespace) -> int:
    base = load_run(args.compare) if args.compare else None
    if args.input:
        now = load_run(args.input)
    else:
        now = measure(
            args.suite,
            quick=args.quick,
            databases=tuple(args.database),
            config=str(args.config) if args.config else None,
            include_host=args.include_host,
            argv=_argv(args),
        )
    document = now.to_json()
    validate(document)  # what is written or printed is always a valid vaultkit-bench/1 run
    if args.json_out:
        args.json_out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    if args.chart:
        from vaultkit.cli._bench._chart import write_chart

        write_chart(now, args.chart)
    if args.update_doc:
        chart = None
        if args.chart:
            chart = os.path.relpath(args.chart, args.update_doc.parent)
        try:
            text = args.update_doc.read_text(encoding="utf-8")
            updated = splice_generated(text, format_markdown(now, chart=chart))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"--update-doc {args.update_doc}: {exc}") from None
        args.update_doc.write_text(updated, encoding="utf-8")
    if base is None:
        print(format_run(now, args.format, chart=str(args.chart) if args.chart else None))
        return 0
    comparison = compare(base, now, noise=args.noise)
    print(format_comparison(comparison, args.format))
    return 1 if args.fail_on_regression and comparison.regressions else 0
