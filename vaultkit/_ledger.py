"""The erasure ledger: a record of erasures kept outside the database, replayed at start-up.

A database backup holds the key store as it was: restored, it brings back the wrapped DEKs of a
subject erased since, and with a live KEK their values read again. The ledger is an append-only
file of erasures on another disk than the database (another host's mount, a volume with its own
backup policy): a vault opened with ``Vault(erasure_ledger=path)`` replays it, destroying again
every key of a ledger entry's subject that the restored store holds as live, and fencing that
subject again. It keeps no subject, only its reference in the domain (a keyed HMAC).

File format: UTF-8 JSON lines, one erasure per line, appended and never rewritten::

    {"v":1,"domain":"medical","subject_ref":"<32 hex>","erased_at":"2026-12-01T15:00:00+00:00","request_id":"r-17"}

Writes: every append is one ``write`` of whole lines under an exclusive ``flock`` of the file
itself, then ``fsync``; only then does the caller go on to destroy anything. A failed write (full
disk, I/O error) truncates the file back to its size before the write and raises, so no erasure
runs without its line on disk. Reads take a shared lock. A crash in the middle of a write leaves
a last line without its newline: readers skip it (that erasure never went past this step), the
next append cuts it off first. (A crash may also leave whole lines of an append that never
returned: replaying them carries out the erasure that was asked for.) Any other damaged line is an error: replaying part of a ledger
would leave erased subjects readable without saying so.

Trust: whoever can write the file can have any subject's keys destroyed at the next start-up
(the references are in the key store): give it the permissions of the keyring, not of a log.

What it does not cover: an attacker who holds a database backup *and* can use the KEK reads the
restored keys without ever running a vault; only shred epochs (:meth:`Vault.shred_epoch`) cover
that. And a ledger restored from an older backup of its own misses the erasures since.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vaultkit._files import sync_directory
from vaultkit.errors import ConfigurationError, KeyStoreError
from vaultkit.keys.domains import check_domain_name
from vaultkit.store import DekState, SubjectRecord, SupportsScopedKeys

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl; single-writer use only there.
    fcntl = None  # type: ignore[assignment]

__all__ = ["ErasureLedger", "LedgerEntry", "ReplayReport"]

log = logging.getLogger("vaultkit")

LEDGER_FORMAT: Final = 1
_REF: Final = re.compile(r"[0-9a-f]{32}")
_MAX_REQUEST_ID: Final = 255  # the request_id column of the subjects table
_FIELDS: Final = frozenset({"v", "domain", "subject_ref", "erased_at", "request_id"})


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One erasure, as the ledger keeps it: no subject, only its reference in the domain.

    Args:
        domain: the key domain.
        subject_ref: the subject's reference in that domain (32 hex digits,
            :meth:`Vault.subject_ref`).
        erased_at: when the erasure was requested (timezone-aware).
        request_id: the erasure request's id as its caller gave it, or ``None``.

    Raises:
        ValueError: a reference that is not 32 lowercase hex digits, a naive ``erased_at``, or a
            ``request_id`` longer than 255 characters or with control characters.

    .. versionadded:: 0.3.0
    """

    domain: str
    subject_ref: str
    erased_at: dt.datetime
    request_id: str | None = None

    def __post_init__(self) -> None:
        check_domain_name(self.domain)
        if not isinstance(self.subject_ref, str) or not _REF.fullmatch(self.subject_ref):
            raise ValueError("subject_ref must be 32 lowercase hex digits (a subject reference)")
        if not isinstance(self.erased_at, dt.datetime) or self.erased_at.utcoffset() is None:
            raise ValueError("erased_at must be a timezone-aware datetime")
        if self.request_id is not None and (
            not isinstance(self.request_id, str)
            or len(self.request_id) > _MAX_REQUEST_ID
            or not self.request_id.isprintable()
        ):
            raise ValueError("request_id must be printable text of at most 255 characters")

    def _line(self) -> bytes:
        doc = {
            "v": LEDGER_FORMAT,
            "domain": self.domain,
            "subject_ref": self.subject_ref,
            "erased_at": self.erased_at.astimezone(dt.UTC).isoformat(),
            "request_id": self.request_id,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def _parse(line: bytes) -> LedgerEntry | None:
    """The entry of one complete line, or ``None`` if it is not a valid ledger line."""
    try:
        doc = json.loads(line)
        if not isinstance(doc, dict) or set(doc) != _FIELDS or doc["v"] != LEDGER_FORMAT:
            return None
        return LedgerEntry(
            domain=doc["domain"],
            subject_ref=doc["subject_ref"],
            erased_at=dt.datetime.fromisoformat(doc["erased_at"]),
            request_id=doc["request_id"],
        )
    except (ValueError, TypeError, KeyError):  # json, fromisoformat and __post_init__ errors
        return None


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What :meth:`ErasureLedger.replay` did to a key store.

    Args:
        entries: distinct (domain, subject reference) pairs in the ledger.
        keys_destroyed: live keys of those subjects, made before their erasure, destroyed again
            (a restored backup brought them back).
        fences_set: subjects whose fence and erasure time were set again.

    .. versionadded:: 0.3.0
    """

    entries: int
    keys_destroyed: int
    fences_set: int


class ErasureLedger:
    """An append-only file of erasures outside the database (see the module docstring).

    Args:
        path: the ledger file; created (mode 0600) by the first append. Keep it on another disk
            and under another backup policy than the database.

    .. versionadded:: 0.3.0
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()  # flock is per open file: threads of a process queue here

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    def __repr__(self) -> str:
        return f"ErasureLedger(path={str(self._path)!r})"

    @contextlib.contextmanager
    def _locked(self, flags: int, lock: int) -> Iterator[int]:
        with self._lock:
            try:
                fd = os.open(self._path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
            except OSError as exc:
                raise KeyStoreError(
                    f"cannot open the erasure ledger {self._path}: {exc.strerror}"
                ) from None
            try:
                if fcntl is not None:  # type: ignore[comparison-overlap, unused-ignore]
                    fcntl.flock(fd, lock)
                yield fd
            finally:
                os.close(fd)  # closing releases the flock

    def append(self, entries: Iterable[LedgerEntry]) -> None:
        """Append ``entries`` durably (written and ``fsync``-ed) before anything is destroyed.

        All entries go in one write of whole lines under an exclusive lock of the file; a torn
        last line left by a crash is cut off first. Call it before the first destructive step of
        an erasure: when it raises, nothing may be destroyed.

        Raises:
            KeyStoreError: the file cannot be opened, locked, written or synced (a full disk):
                the file is left as it was before the call.

        .. versionadded:: 0.3.0
        """
        data = b"".join(entry._line() for entry in entries)
        if not data:
            return
        created = not self._path.exists()
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        with self._locked(flags, fcntl.LOCK_EX if fcntl is not None else 0) as fd:
            try:
                size = os.fstat(fd).st_size
                size = _cut_torn_tail(fd, size)
                _write_all(fd, data)
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # no partial line stays behind
                    os.fsync(fd)
                raise KeyStoreError(
                    f"the erasure ledger {self._path} could not be written ({exc.strerror}); "
                    "nothing was erased"
                ) from None
        if created:
            sync_directory(self._path.parent)
        log.info("erasure ledger: %d entries appended", data.count(b"\n"))

    def entries(self) -> list[LedgerEntry]:
        """Every entry of the ledger, oldest first; ``[]`` while the file does not exist.

        A last line without its newline (a write cut short by a crash) is skipped.

        Raises:
            KeyStoreError: the file cannot be read, or a complete line is not a ledger entry
                (the message gives its line number, never its content).

        .. versionadded:: 0.3.0
        """
        if not self._path.exists():
            return []
        with self._locked(os.O_RDONLY, fcntl.LOCK_SH if fcntl is not None else 0) as fd:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise KeyStoreError(f"the erasure ledger {self._path} is not a regular file")
                raw = _read_all(fd)
            except OSError as exc:
                raise KeyStoreError(
                    f"cannot read the erasure ledger {self._path}: {exc.strerror}"
                ) from None
        lines = raw.split(b"\n")
        torn = lines.pop()  # after the last newline: b"" for a whole file
        if torn:
            log.warning(
                "erasure ledger %s ends with an incomplete line (a write cut short); skipped",
                self._path,
            )
        found: list[LedgerEntry] = []
        for number, line in enumerate(lines, start=1):
            entry = _parse(line)
            if entry is None:
                raise KeyStoreError(
                    f"the erasure ledger {self._path} is damaged at line {number}: restore it "
                    "from its own backup; vaultkit does not replay part of a ledger"
                )
            found.append(entry)
        return found

    def replay(self, store: object, *, now: dt.datetime | None = None) -> ReplayReport:
        """Apply the ledger to ``store`` again: what a restored backup brought back goes again.

        For each (domain, subject reference) of the ledger (its latest entry): every key of that
        subject which is live and was made at or before the erasure is destroyed (reason
        ``"erasure"``), and the subject's fence and erasure time are set again unless the store
        records that erasure or a later one already (a subject let back in with
        :meth:`Vault.allow_subject` after its erasure stays let in; its new keys, made after the
        erasure, stay too). Idempotent.

        Args:
            store: a key store with :class:`~vaultkit.store.SupportsScopedKeys`.
            now: the destruction time recorded on the rows (default: the current time).

        Raises:
            ConfigurationError: ``store`` lacks SupportsScopedKeys.
            KeyStoreError: the ledger cannot be read (see :meth:`entries`) or the store failed.

        .. versionadded:: 0.3.0
        """
        if not isinstance(store, SupportsScopedKeys):
            raise ConfigurationError(
                f"an erasure ledger needs a key store with subject keys (SupportsScopedKeys), "
                f"not {type(store).__name__}"
            )
        at = now or dt.datetime.now(dt.UTC)
        latest: dict[tuple[str, str], LedgerEntry] = {}
        for entry in self.entries():
            key = (entry.domain, entry.subject_ref)
            known = latest.get(key)
            if known is None or entry.erased_at >= known.erased_at:
                latest[key] = entry
        destroyed = fences = 0
        for (domain, ref), entry in latest.items():
            for record in store.subject_keys(domain, ref):
                if record.state is DekState.DESTROYED or record.created_at > entry.erased_at:
                    continue
                if store.destroy_key(record.dek_id, reason="erasure", at=at):
                    destroyed += 1
            subject = store.get_subject(domain, ref)
            if subject is None or subject.erased_at is None or subject.erased_at < entry.erased_at:
                store.put_subject(
                    SubjectRecord(
                        domain=domain,
                        subject_ref=ref,
                        relationship_end=subject.relationship_end if subject else None,
                        fenced_at=entry.erased_at,
                        erased_at=entry.erased_at,
                        request_id=entry.request_id,
                    )
                )
                fences += 1
        if destroyed or fences:
            log.warning(
                "erasure ledger replay: %d keys destroyed again and %d subjects fenced again "
                "(the key store was older than the ledger: a restored backup?)",
                destroyed,
                fences,
            )
        return ReplayReport(len(latest), destroyed, fences)


def _cut_torn_tail(fd: int, size: int) -> int:
    """Truncate a last line without its newline (a write a crash cut short); the new size."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    # Find the last newline, reading backwards in blocks.
    end = size
    while end > 0:
        start = max(0, end - 4096)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        end = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    log.warning("erasure ledger: an incomplete last line (a write cut short) was cut off")
    return keep


def _write_all(fd: int, data: bytes) -> None:
    """Every byte of ``data``: a short write goes on; an error raises ``OSError``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - POSIX raises instead of returning 0
            raise OSError(errno.EIO, "the operating system accepted no bytes")
        view = view[written:]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
