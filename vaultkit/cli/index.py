"""``vaultkit index plan``: how many bits the indexes of an encrypted column may keep;
``vaultkit index rewrite-terms``: a token index's terms under its current key version.

Reads the column's row count and distinct count from the application's database (``--data``, with
the vault of ``--config`` or ``--store``/``--keyring`` to decrypt a sample when no full-width blind
index counts exactly), or takes them from ``--rows`` and ``--distinct``, and prints both published
rules (AWS's beacon-length bounds, CipherSweet's coincidence count over every index on the same
source columns), a recommended width, partition advice for skewed values, and the expected false
candidates per lookup of each declared index. See docs/search.md.

Exit codes: 0 a plan, nothing refused; 7 refused: a stand-alone index on a field with fewer than
256 distinct values that is not part of a compound index (declared, or the one the plan would
recommend); 2 usage; 3 configuration (an unknown model or column, no counts); 4/5 key provider or
key store (decrypting the sample); 10 the database failed or was not reached; 1 unexpected.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Final

from vaultkit.cli._common import load_object, open_vault, store_options
from vaultkit.errors import ConfigurationError

__all__ = ["EXIT_REFUSED", "register"]

#: The plan refuses an index (the "done, but not clean" code of the other commands).
EXIT_REFUSED: Final = 7


def register(commands: Any) -> None:
    index = commands.add_parser("index", help="plan the widths of search indexes")
    sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    planner = sub.add_parser(
        "plan",
        help="recommend index widths for a column from its counts (AWS and CipherSweet rules)",
        description=(
            "Prints, for one column, AWS's beacon-length bounds [ceil(log2 sqrt X), "
            "floor(log2 X/2)], CipherSweet's coincidence count C = R / 2^(sum min(L_i, K_i)) over "
            "every index on the same source columns, a recommended width, partitions for skewed "
            "values and each declared index's expected false candidates per lookup. Counts come "
            "from --data (exact from a full-width blind index, else estimated from a decrypted "
            "sample) or from --rows and --distinct. Exit codes: 0 a plan, 7 an index refused (a "
            "stand-alone index on fewer than 256 distinct values), 2 usage, 3 configuration, "
            "4 key provider, 5 key store, 10 a database failed, 1 unexpected."
        ),
    )
    planner.add_argument(
        "--model",
        required=True,
        metavar="MODULE:NAME",
        help="the mapped class or Table (or a declarative base or MetaData with --table)",
    )
    planner.add_argument("--table", help="the table's name, when --model names a base or MetaData")
    planner.add_argument("--column", required=True, help="the encrypted column to plan")
    planner.add_argument("--data", help="database URL of the application's data, to count from")
    planner.add_argument("--rows", type=int, help="rows holding a value (instead of counting)")
    planner.add_argument("--distinct", type=int, help="distinct values (instead of counting)")
    planner.add_argument(
        "--top-share", type=float, help="the most common value's share of the rows (0 to 1)"
    )
    planner.add_argument(
        "--sample", type=int, default=10_000, help="values decrypted for an estimate (10000)"
    )
    planner.add_argument(
        "--max-false-positives",
        type=float,
        default=None,
        help="the recommended width brings at most this many false candidates per lookup (64)",
    )
    planner.add_argument(
        "--vault-name", default="default", help="the vault name the columns use (vault=...)"
    )
    planner.add_argument("--json", action="store_true", help="print the plan as JSON")
    store_options(planner)
    planner.set_defaults(handler=_plan)
    rewrite = sub.add_parser(
        "rewrite-terms",
        help="rewrite the token indexes' terms under their current key version (rotation)",
        description=(
            "After deploying TokenIndex(..., version=N, query_versions=(..., N)), rewrites every "
            "row's terms under version N, batch by batch in primary-key order, one transaction "
            "per batch (decrypting the source values through the vault); idempotent. Then drop "
            "the old versions from query_versions. Also rebuilds terms after writes vaultkit did "
            "not see (raw SQL, op.encrypt_column). Exit codes: 0 done, 2 usage, 3 configuration, "
            "4 key provider, 5 key store, 10 a database failed, 1 unexpected."
        ),
    )
    rewrite.add_argument("--model", required=True, metavar="MODULE:NAME", help="the mapped class")
    rewrite.add_argument("--data", required=True, help="database URL of the application's data")
    rewrite.add_argument(
        "--index", action="append", dest="indexes", help="only this token index (repeatable)"
    )
    rewrite.add_argument("--batch", type=int, default=1000, help="rows per transaction (1000)")
    rewrite.add_argument(
        "--vault-name", default="default", help="the vault name the columns use (vault=...)"
    )
    store_options(rewrite)
    rewrite.set_defaults(handler=_rewrite)


def _resolve(spec: str, table: str | None) -> Any:
    import sqlalchemy as sa

    target = load_object(spec)
    if getattr(target, "__table__", None) is not None and table is None:
        return target
    if isinstance(target, sa.Table) and table is None:
        return target
    metadata = getattr(target, "metadata", target)
    if not isinstance(metadata, sa.MetaData):
        raise ConfigurationError(f"{spec} is neither a mapped class, a Table, a base nor MetaData")
    if table is None:
        raise ConfigurationError(f"{spec} is a base or MetaData: name the table with --table")
    found = metadata.tables.get(table)
    if found is None:
        raise ConfigurationError(f"{spec} has no table {table!r}")
    return found


def _plan(args: argparse.Namespace) -> int:
    import vaultkit.sqla

    if (args.rows is None) != (args.distinct is None) and args.data is None:
        raise ConfigurationError("give both --rows and --distinct, or --data to count from")
    if args.data is None and args.rows is None:
        raise ConfigurationError("give --data to count from, or --rows and --distinct")
    model = _resolve(args.model, args.table)
    options = {
        "rows": args.rows,
        "distinct": args.distinct,
        "top_share": args.top_share,
        "sample": args.sample,
        "max_false_positives": args.max_false_positives,
    }
    if args.data is None:
        result = vaultkit.sqla.plan_column(model, args.column, **options)
    else:
        import sqlalchemy as sa

        needs_vault = args.config is not None or args.store is not None
        engine = sa.create_engine(args.data, hide_parameters=True)
        try:
            if needs_vault:
                with open_vault(args) as vault:
                    vaultkit.sqla.configure(vault, name=args.vault_name)
                    try:
                        with engine.connect() as conn:
                            result = vaultkit.sqla.plan_column(
                                model, args.column, bind=conn, **options
                            )
                    finally:
                        vaultkit.sqla.configure(None, name=args.vault_name)
            else:
                with engine.connect() as conn:
                    result = vaultkit.sqla.plan_column(model, args.column, bind=conn, **options)
        finally:
            engine.dispose()
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(_render(result))
    return 0 if result.ok else EXIT_REFUSED


def _rewrite(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    import vaultkit.sqla

    model = _resolve(args.model, None)
    indexes = vaultkit.sqla.token_indexes(model)
    if args.indexes:
        unknown = set(args.indexes) - {i.name for i in indexes}
        if unknown:
            raise ConfigurationError(f"{args.model} has no token index {sorted(unknown)[0]!r}")
        indexes = [i for i in indexes if i.name in args.indexes]
    if not indexes:
        raise ConfigurationError(f"{args.model} has no token index")
    engine = sa.create_engine(args.data, hide_parameters=True)
    try:
        with open_vault(args) as vault:
            vaultkit.sqla.configure(vault, name=args.vault_name)
            try:
                for index in indexes:
                    counts = vaultkit.sqla.rewrite_terms(engine, index, batch=args.batch)
                    print(
                        f"{index.table.name}: {counts['rows']} rows, {counts['terms']} terms "
                        f"under version {index.version}"
                    )
            finally:
                vaultkit.sqla.configure(None, name=args.vault_name)
    finally:
        engine.dispose()
    return 0


def _bits(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:.1f}"


def _render(plan: Any) -> str:
    lines = [
        f"column: {plan.column}",
        f"rows (R): {plan.rows}    distinct values (X): {plan.distinct}"
        + (f"    top value: {plan.top_share:.2%} of rows" if plan.top_share is not None else ""),
        "AWS beacon length [ceil(log2 sqrt X), floor(log2 X/2)]: "
        + (f"{plan.aws_bits[0]}-{plan.aws_bits[1]} bits" if plan.aws_bits else "none (X < 4)"),
        "CipherSweet, a new index with 2 <= C <= sqrt(R): "
        + (
            f"{plan.ciphersweet_bits[0]}-{plan.ciphersweet_bits[1]} bits"
            if plan.ciphersweet_bits
            else "none (with the indexes declared, C would fall below 2)"
        ),
    ]
    if plan.indexes:
        lines.append(
            f"coincidence count C over the {len(plan.indexes)} indexes: {plan.coincidences:.4g}"
        )
    if plan.recommended_bits is not None:
        lines.append(f"recommended width: {plan.recommended_bits} bits")
    if plan.partitions > 1:
        lines.append(f"recommended partitions: {plan.partitions}")
    if plan.refused:
        lines.append(f"REFUSED: {plan.refused}")
    if plan.indexes:
        lines.append("")
        lines.append(
            "index               kind      bits  K (bits)  C          false candidates/lookup"
        )
        for item in plan.indexes:
            index = item.index
            lines.append(
                f"{index.name:<19} {index.kind:<9} {index.bits:>4}  {_bits(index.input_bits):>8}  "
                f"{item.coincidences:<10.4g} {item.false_positives:.3g}"
                + (f"   REFUSED: {item.refused}" if item.refused else "")
            )
    for note in plan.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
