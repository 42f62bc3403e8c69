"""The re-keying engine: re-encrypt values in place, in resumable batches, while the application runs.

For one table and its encrypted columns (``vaultkit.sqla.Encrypted``), it rewrites every value that
is legacy plaintext (a column in migration mode), encrypted under a retired DEK, written in an older
wire format or cipher suite, or still encrypted the way the column's ``previous=`` type says (a
move to another domain or binding), under the column's current domain and DEK; it fills the blind
indexes of those columns in the same UPDATE, and rewrites blind-index values that are missing or
under an older index key version (blind-index key rotation) without re-encrypting their values.

* **Ranges and batches by primary key.** The first worker of a job cuts the key space into ranges
  of about ``range_size`` rows (``vaultkit_rekey_ranges``); workers claim ranges and walk each in
  key order (keyset pagination), ``batch_size`` rows per transaction.
* **Workers coordinated by the database.** On PostgreSQL and MariaDB a worker claims a range with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` on a connection of its own and keeps the row lock while it
  works: other workers (processes on this machine or others) skip that range, and the lock goes
  away with the worker's connection if the process dies. SQLite has no row locks: run one worker
  per job there (a second one would only repeat work; compare-and-set keeps it harmless).
* **Compare-and-set.** Each UPDATE carries the old bytes of each column in its condition, so a value
  the application changed after the batch was read is never overwritten with stale data; those
  rows are read again and retried in the same transaction, a bounded number of times.
* **Checkpoints** (``vaultkit_rekey_checkpoints``), committed in the same transaction as the
  batch's UPDATEs: after a crash at any point a new run resumes after the last committed batch of
  each range, and redoing a batch is harmless (values already current are skipped).
* ``dry_run`` counts what would change without writing; :func:`verify_table` decrypts everything
  and counts values by DEK.
* **Legacy manifest.** Plaintext in a column in migration mode is encrypted only if its row was
  recorded with that very value when the column's migration began (:func:`begin_migration`, run
  by the first re-key job if nobody ran it before): keyed tags of row key and value, never the
  value. Anything else is counted as ``tampered`` and left alone, so a ciphertext a database
  writer replaced by plaintext is never laundered into a genuine one. Once a row holds ciphertext
  its entry is forgotten; the application checks values against the same manifest
  (:func:`load_migration`).

No printing, no argv: the command line and migration scripts call :func:`rekey_table`.

The package's rooms: :mod:`._run` (the engine: one worker's run, range by range and batch by
batch), :mod:`._jobs` (job tables, range claims, checkpoints), :mod:`._classify` (why a value
needs rewriting, and a batch's new values), :mod:`._write` (the compare-and-set writers),
:mod:`._manifest` (the legacy manifest), :mod:`._verify`, :mod:`._reports` and :mod:`._table`
(what the engine reads of a table). The keyset walk itself is :mod:`vaultkit.sqla.keyset`, shared
with the Alembic operations.
"""

from __future__ import annotations

from vaultkit.rekey._jobs import (
    CHECKPOINTS,
    RANGES,
    default_job,
    default_worker_name,
    drop_job,
    plan_job,
)
from vaultkit.rekey._manifest import (
    LEGACY_MIGRATIONS,
    LEGACY_ROWS,
    begin_migration,
    load_migration,
)
from vaultkit.rekey._reports import ConflictRetry, RekeyReport, VerifyReport
from vaultkit.rekey._run import rekey_table
from vaultkit.rekey._verify import verify_table

__all__ = [
    "CHECKPOINTS",
    "LEGACY_MIGRATIONS",
    "LEGACY_ROWS",
    "RANGES",
    "ConflictRetry",
    "RekeyReport",
    "VerifyReport",
    "begin_migration",
    "default_job",
    "default_worker_name",
    "drop_job",
    "load_migration",
    "plan_job",
    "rekey_table",
    "verify_table",
]
