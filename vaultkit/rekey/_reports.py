"""What a re-keying run reports, and how it retries a batch the database aborted."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vaultkit.errors import ConfigurationError

__all__ = ["ConflictRetry", "RekeyReport", "VerifyReport"]


@dataclass(frozen=True)
class ConflictRetry:
    """How often a batch the database aborted on a conflict is tried again.

    Deadlocks (PostgreSQL SQLSTATE 40P01, MySQL/MariaDB error 1213), serialization failures
    (40001) and lock timeouts (55P03, 1205) roll the batch's transaction back; the engine waits
    ``min(max_delay, base_delay * 2**n)`` times a random factor from 0.5 to 1 after failure ``n``
    (from 0), reads the batch again and redoes it, up to ``attempts`` tries in all; then it raises
    :class:`~vaultkit.errors.ConflictError` (the batches before are committed: a new run resumes).
    """

    attempts: int = 6
    base_delay: float = 0.05
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("attempts must be at least 1 and delays not negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 0)."""
        wait = min(self.max_delay, self.base_delay * 2.0**attempt)
        return wait * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


@dataclass
class RekeyReport:
    """What one worker's run did, in counts; never a value."""

    job: str
    worker: str = ""
    rows_scanned: int = 0
    values_rewritten: int = 0
    plaintext_encrypted: int = 0
    retired_reencrypted: int = 0
    outdated_reencrypted: int = 0
    moved: int = 0
    indexes_rebuilt: int = 0
    changed_meanwhile: int = 0
    #: Batches the database aborted on a conflict (deadlock, lock timeout) and that were redone.
    conflicts_retried: int = 0
    left_changing: int = 0
    undecryptable: int = 0
    #: Dry run only: values of a ``previous=`` column in the column's own domain, which only
    #: decrypting can tell apart (the run re-encrypts those still in the previous binding).
    unchecked: int = 0
    #: Plaintext values refused: not recorded with that value in that row when the migration
    #: began (a ciphertext replaced by plaintext, for example), or in a column out of migration
    #: mode after its migration. Left as they are for a person to look at.
    tampered: int = 0
    #: Values whose DEK was destroyed (a subject's erasure, retention): unreadable by design,
    #: never rewritten, and not a failure (they do not make the run incomplete).
    erased: int = 0
    #: Values under a subject or bucket key that would have been rewritten (a retired or moved
    #: DEK) but were left under their key: re-encrypting a bucket value would put it into a newer
    #: bucket and extend its retention; a subject value would leave its subject's key.
    kept_in_scope: int = 0
    batches: int = 0
    ranges_total: int = 0
    ranges_done: int = 0
    resumed_after: Any = None
    finished: bool = False
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """The job is finished and nothing was left behind (no value left changing, unreadable or
        refused as tampered)."""
        return (
            self.finished
            and self.left_changing == 0
            and self.undecryptable == 0
            and self.tampered == 0
        )


@dataclass
class VerifyReport:
    """Values by DEK id (hex) and by wire version, plus those that are plaintext or do not open."""

    values: int = 0
    by_dek: Counter[str] = field(default_factory=Counter)
    by_version: Counter[int] = field(default_factory=Counter)
    plaintext: int = 0
    undecryptable: int = 0
    under_retired: int = 0
    previous_binding: int = 0
    index_outdated: int = 0
    #: Plaintext values not recorded with that value in that row when their column's migration
    #: began, or found after it (see :attr:`RekeyReport.tampered`); not counted in ``plaintext``.
    tampered: int = 0
    #: Values whose DEK was destroyed (erasure, retention): unreadable by design; not a problem,
    #: not counted in ``undecryptable``.
    erased: int = 0
    #: Values under a retired subject or bucket key (see :attr:`RekeyReport.kept_in_scope`).
    kept_in_scope: int = 0

    @property
    def clean(self) -> bool:
        """Every value opens under its column's current type (or is erased: its DEK destroyed by
        erasure or retention), no DEK it names is retired, and every blind index is there under
        its current key version."""
        return (
            self.plaintext == 0
            and self.tampered == 0
            and self.undecryptable == 0
            and self.under_retired == 0
            and self.previous_binding == 0
            and self.index_outdated == 0
        )
