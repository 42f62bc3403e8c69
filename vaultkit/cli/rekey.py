"""``vaultkit rekey``: re-encrypt a table's encrypted columns in place, with workers and progress.

Exit codes: 0 the job is finished and nothing was left behind (and, with ``--verify``, every value
opens under its column's current type, or is erased, and no value names a retired DEK); 7 the run
ended but values are left for another run (changed by the application at every attempt, not decryptable)
or verification found problems; 2 usage; 3 configuration errors (among them ``--store`` and
``--keyring`` for a key store with an audit log); 4/5 key provider or key store errors; 8 the data
database aborted one batch on a conflict at every retry (deadlock, serialization failure, lock
timeout); 10 a database failed or was not reached; 1 an unexpected error; 130 interrupted (the checkpoints keep the place: run the same command again).
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import queue
import sys
import time
from typing import Any, Final

from vaultkit.cli._common import open_vault, store_options
from vaultkit.errors import ConfigurationError, VaultkitError

EXIT_INCOMPLETE: Final = 7


def register(commands: Any) -> None:
    rekey = commands.add_parser(
        "rekey",
        help="re-encrypt a table's values: retired DEKs, legacy plaintext, moved columns",
        description=(
            "Re-encrypts, in place and online, the values of a model's encrypted columns that are "
            "legacy plaintext (columns in migration mode), under retired DEKs, in an old wire "
            "format, or still encrypted as the column's previous= type says; fills their blind "
            "indexes in the same pass. Resumable: run the same command again after a crash. "
            "Values whose key was destroyed (erasure, retention) are counted as erased and left "
            "as they are; values under bucket keys stay in their bucket (never re-encrypted into "
            "a newer one); columns of subject-scoped domains are refused (dry runs excepted). "
            "Give --config (the application's vaultkit.toml) so that restricted and audited "
            "domains are re-keyed under their policy. "
            "Exit codes: 0 done and clean, 7 values left for another run or --verify found "
            "problems, 2 usage, 3 configuration, 4 key provider, 5 key store, 8 the database "
            "kept aborting a batch on a conflict (deadlock, lock timeout), 10 a database failed "
            "or was not reached, 130 interrupted."
        ),
    )
    store_options(rekey)
    rekey.add_argument("--data", required=True, help="database URL of the encrypted data")
    rekey.add_argument(
        "--model",
        required=True,
        metavar="MODULE:NAME",
        help="the mapped class or Table, e.g. myapp.models:Member (imported from the current "
        "directory and PYTHONPATH)",
    )
    rekey.add_argument(
        "--column", action="append", dest="columns", help="only this encrypted column (repeatable)"
    )
    rekey.add_argument("--job", help="job name (default TABLE:rekey); the checkpoints' name")
    rekey.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    rekey.add_argument("--batch-size", type=int, default=1000, help="rows per transaction")
    rekey.add_argument("--range-size", type=int, default=20_000, help="rows per claimed range")
    rekey.add_argument(
        "--vault-name", default="default", help="the vault name the columns use (vault=...)"
    )
    rekey.add_argument(
        "--dry-run",
        action="store_true",
        help="count what would change from the values' headers and the key store; decrypt, "
        "encrypt and write nothing (no key, audit event or checkpoint)",
    )
    rekey.add_argument(
        "--verify",
        action="store_true",
        help="afterwards decrypt every value and report counts by DEK and wire version",
    )
    rekey.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    rekey.set_defaults(handler=_rekey)


def _load_table(spec: str) -> Any:
    import sqlalchemy as sa

    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigurationError(f"--model takes MODULE:NAME, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name}: {exc}") from None
    target = getattr(module, attribute, None)
    table = getattr(target, "__table__", target)
    if not isinstance(table, sa.Table):
        raise ConfigurationError(f"{spec} is neither a mapped class nor a Table")
    return table


def _run_worker(args: argparse.Namespace, progress: Any, number: int) -> Any:
    """One worker: its own vault, engine and claims. Returns its RekeyReport."""
    import sqlalchemy as sa

    import vaultkit.sqla
    from vaultkit.rekey import default_worker_name, rekey_table

    table = _load_table(args.model)
    with open_vault(args) as vault:
        vaultkit.sqla.configure(vault, name=args.vault_name)
        engine = sa.create_engine(args.data, hide_parameters=True)
        try:
            return rekey_table(
                engine,
                table,
                vault=vault,
                columns=args.columns,
                job=args.job,
                batch_size=args.batch_size,
                range_size=args.range_size,
                dry_run=args.dry_run,
                progress=progress,
                worker=None if args.workers == 1 else f"{default_worker_name()}:{number}",
            )
        finally:
            engine.dispose()
            vaultkit.sqla.configure(None, name=args.vault_name)


def _child(args: argparse.Namespace, messages: Any, number: int) -> None:
    """Entry point of a worker process: reports progress and its result through ``messages``."""
    last = 0

    def progress(report: Any) -> None:
        nonlocal last
        messages.put(("rows", report.rows_scanned - last))
        last = report.rows_scanned

    try:
        messages.put(("done", _run_worker(args, progress, number)))
    except VaultkitError as exc:  # vaultkit messages name no secret
        messages.put(("error", exc))
    except KeyboardInterrupt:
        messages.put(("interrupted", None))
    except Exception as exc:  # a driver error may quote SQL parameters: keep only its class
        import sqlalchemy.exc

        from vaultkit.cli._common import database_failure

        if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
            messages.put(("error", database_failure(exc)))
        else:
            messages.put(("error", VaultkitError(f"worker {number} failed: {type(exc).__name__}")))


class _Progress:
    """One line on stderr: rows, percent, rows/s and time left (when stderr is a terminal)."""

    def __init__(self, total: int, *, show: bool) -> None:
        self.total = max(total, 0)
        self.rows = 0
        self.show = show
        self.started = time.monotonic()
        self._shown = 0.0

    def add(self, rows: int, *, force: bool = False) -> None:
        self.rows += rows
        now = time.monotonic()
        if not self.show or (now - self._shown < 0.2 and not force):
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-9)
        rate = self.rows / elapsed
        line = f"\r{self.rows:,} rows  {rate:,.0f} rows/s"
        if self.total:
            left = max(self.total - self.rows, 0) / rate if rate else 0
            done = min(self.rows / self.total, 1.0)
            bar = "#" * int(done * 30)
            line = (
                f"\r[{bar:<30}] {done:6.1%}  {self.rows:,}/{self.total:,} rows  "
                f"{rate:,.0f} rows/s  {int(left) // 60}:{int(left) % 60:02d} left"
            )
        sys.stderr.write(line + "  ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.show and self._shown:
            self.add(0, force=True)  # the final count, not the last throttled one
            sys.stderr.write("\n")


def _check_policies(args: argparse.Namespace) -> None:
    """Refuse ``--store``/``--keyring`` for a key store that serves audited domains.

    A keyring knows domain names, not policies: a vault built from it treats every domain as
    neither restricted nor audited, so re-keying medical values would read and write them with
    no audit event. The key store tells whether some vault audits its domains (it holds the audit
    log's key); which ones only the configuration says.
    """
    if getattr(args, "config", None) is not None:
        return

    with open_vault(args) as vault:
        audit_domains = sorted({r.domain for r in vault.store.records() if r.purpose == "audit"})
    if audit_domains:
        raise ConfigurationError(
            f"the key store keeps an audit log (its key is in domain {audit_domains[0]}), so some "
            "domains are audited, and --store/--keyring cannot tell which: give --config with the "
            "application's vaultkit.toml (its [domains] say restricted and audited) so that the "
            "re-key is audited"
        )


def _rekey(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from vaultkit.rekey import RekeyReport, default_job, plan_job

    if args.workers < 1 or args.batch_size < 1 or args.range_size < 1:
        raise ConfigurationError("--workers, --batch-size and --range-size must be at least 1")
    if args.dry_run and args.workers != 1:
        raise ConfigurationError("--dry-run runs one worker")
    table = _load_table(args.model)
    _check_policies(args)
    args.job = args.job or default_job(table)
    engine = sa.create_engine(args.data, hide_parameters=True)
    try:
        with engine.connect() as conn:
            rows = int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
        if args.dry_run:
            expected = rows
        else:
            ranges, left = plan_job(engine, table, job=args.job, range_size=args.range_size)
            expected = rows * left // max(ranges, 1)
    finally:
        engine.dispose()
    bar = _Progress(expected, show=not args.no_progress and sys.stderr.isatty())
    started = time.monotonic()
    reports: list[RekeyReport] = []
    try:
        if args.workers == 1:
            last = 0

            def progress(report: RekeyReport) -> None:
                nonlocal last
                bar.add(report.rows_scanned - last)
                last = report.rows_scanned

            reports.append(_run_worker(args, progress, 0))
        else:
            reports.extend(_run_processes(args, bar))
    finally:
        bar.close()
    elapsed = time.monotonic() - started
    _summary(args, reports, elapsed)
    complete = all(r.complete for r in reports) and any(r.finished for r in reports)
    if args.verify and not args.dry_run:
        complete = _verify(args, table) and complete
    if args.dry_run:
        return 0
    return 0 if complete else EXIT_INCOMPLETE


def _run_processes(args: argparse.Namespace, bar: _Progress) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    workers = [
        context.Process(target=_child, args=(args, messages, number), daemon=True)
        for number in range(args.workers)
    ]
    for worker in workers:
        worker.start()
    reports: list[Any] = []
    errors: list[BaseException] = []
    interrupted = False
    pending = len(workers)
    try:
        while pending:
            try:
                kind, payload = messages.get(timeout=0.5)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    # A worker that died without a word (killed): what finished is checkpointed.
                    errors.append(ConfigurationError("a worker process ended without a report"))
                    break
                continue
            if kind == "rows":
                bar.add(payload)
                continue
            pending -= 1
            if kind == "done":
                reports.append(payload)
            elif kind == "interrupted":
                interrupted = True
            else:
                errors.append(payload)
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
    if interrupted:
        raise KeyboardInterrupt
    if errors:
        raise errors[0]
    return reports


def _summary(args: argparse.Namespace, reports: list[Any], elapsed: float) -> None:
    def total(name: str) -> int:
        return sum(getattr(r, name) for r in reports)

    scanned = total("rows_scanned")
    verb = "would re-encrypt" if args.dry_run else "re-encrypted"
    print(
        f"{args.job}: {scanned:,} rows scanned in {elapsed:.1f} s "
        f"({scanned / max(elapsed, 1e-9):,.0f} rows/s, {len(reports)} worker(s)); "
        f"{verb} {total('values_rewritten'):,} values"
    )
    print(
        f"  legacy plaintext {total('plaintext_encrypted'):,}, retired DEK "
        f"{total('retired_reencrypted'):,}, old format {total('outdated_reencrypted'):,}, "
        f"moved {total('moved'):,}; blind-index values rebuilt {total('indexes_rebuilt'):,}"
    )
    print(
        f"  changed by the application meanwhile {total('changed_meanwhile'):,} "
        f"(retried), left changing {total('left_changing'):,}, "
        f"not decryptable {total('undecryptable'):,}; "
        f"batches aborted by the database and redone (conflicts retried) "
        f"{total('conflicts_retried'):,}"
    )
    if total("tampered"):
        print(
            f"  TAMPERED {total('tampered'):,}: plaintext not recorded in its row when the "
            "migration began (a ciphertext replaced by plaintext?), left as it is"
        )
    if total("erased") or total("kept_in_scope"):
        print(
            f"  erased {total('erased'):,} (their keys were destroyed by an erasure or by "
            f"retention: unreadable by design, left as they are); kept under their subject or "
            f"bucket key {total('kept_in_scope'):,} (never moved to a newer bucket)"
        )
    if args.dry_run:
        print(
            "  dry run: nothing decrypted, encrypted or written; unchecked (a previous= binding "
            f"in the column's own domain, told apart only by decrypting) {total('unchecked'):,}"
        )
    else:
        finished = any(r.finished for r in reports)
        print(f"  job {'finished' if finished else 'not finished: run again to resume'}")


def _verify(args: argparse.Namespace, table: Any) -> bool:
    import sqlalchemy as sa

    import vaultkit.sqla
    from vaultkit.rekey import verify_table

    with open_vault(args) as vault:
        vaultkit.sqla.configure(vault, name=args.vault_name)
        engine = sa.create_engine(args.data, hide_parameters=True)
        try:
            report = verify_table(engine, table, vault=vault, columns=args.columns)
        finally:
            engine.dispose()
            vaultkit.sqla.configure(None, name=args.vault_name)
        states = {r.dek_id.hex(): r.state.value for r in vault.store.records()}
    print(f"verify: {report.values:,} values")
    for dek, count in sorted(report.by_dek.items()):
        print(f"  DEK {dek} ({states.get(dek, 'unknown')}): {count:,}")
    for version, count in sorted(report.by_version.items()):
        print(f"  wire format v{version}: {count:,}")
    print(
        f"  plaintext {report.plaintext:,}, not decryptable {report.undecryptable:,}, "
        f"under retired DEKs {report.under_retired:,}, previous binding {report.previous_binding:,}, "
        f"blind index missing or old {report.index_outdated:,}"
    )
    if report.tampered:
        print(
            f"  TAMPERED {report.tampered:,}: plaintext not recorded in its row when the "
            "migration began, or found after it"
        )
    if report.erased or report.kept_in_scope:
        print(
            f"  erased {report.erased:,} (keys destroyed by erasure or retention; not a "
            f"problem), under retired subject or bucket keys {report.kept_in_scope:,}"
        )
    print(f"  {'clean' if report.clean else 'NOT clean'}")
    return report.clean
