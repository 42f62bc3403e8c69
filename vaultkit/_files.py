"""Writing files so that a failure never leaves a damaged or half-written file under the final name.

Every file vaultkit writes (the keyring, a generated master key, audience uploads and their rejects)
goes through here. The rules, one place for all of them:

- The data goes to a temporary file in the target's own directory (so ``os.replace`` is a rename on
  one file system), created with ``O_EXCL`` and mode 0600: nobody else can read it while it is written.
- Every byte is written: ``os.write`` may return short (a full disk, ``RLIMIT_FSIZE`` with
  ``SIGXFSZ`` ignored, a signal); the loop goes on until all is written or the OS raises.
- The file is flushed to disk (``fsync``) and checked before it is renamed into place: small files
  are read back and compared byte for byte (and given to the caller's own check, such as
  authenticating a keyring); streamed files have their size compared with the bytes written.
- Only then ``os.replace``; then the directory is synced so that the rename itself survives a crash.
  On any failure the temporary file is removed and the final name keeps what it had.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TextIO, cast

from vaultkit._redact import Secret
from vaultkit.errors import VaultkitError

__all__ = [
    "PRIVATE",
    "atomic_text_output",
    "atomic_text_outputs",
    "sync_directory",
    "write_atomic",
]

PRIVATE: Final = 0o600


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")


def _create(path: Path, mode: int) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data``; a short write continues, an error raises ``OSError``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - POSIX raises instead of returning 0 for regular files
            raise OSError(errno.EIO, "the operating system accepted no bytes")
        view = view[written:]


def sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable, where the platform allows opening a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _keep_backup(path: Path, backup: Path) -> None:
    """Make ``backup`` the current content of ``path`` (a hard link where possible, else a copy)."""
    if not path.exists():
        return
    staged = _temporary(backup)
    try:
        os.link(path, staged)
    except OSError:
        # No hard links on this file system: copy it, with the same care as any other write.
        fd = _create(staged, PRIVATE)
        try:
            _write_all(fd, path.read_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        os.chmod(staged, PRIVATE)
        os.replace(staged, backup)
    except OSError:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise


def _describe(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def write_atomic(
    path: Path,
    data: bytes | Secret[bytes],
    *,
    what: str,
    error: type[VaultkitError],
    check: Callable[[bytes], bool] | None = None,
    backup: Path | None = None,
    mode: int = PRIVATE,
    exclusive: bool = False,
) -> None:
    """Replace ``path`` by ``data`` only once ``data`` is fully on disk and verified.

    Args:
        path: the final name.
        data: the whole content (a small file: it is read back whole). A :class:`Secret` (a
            master key) is revealed only inside the helper that writes it, never in a frame
            that raises.
        what: how messages name the file ("keyring", "master key file").
        error: the vaultkit error to raise.
        check: called with the bytes read back from the temporary file; ``False`` refuses it.
        backup: keep the previous content of ``path`` under this name (mode 0600), replaced only
            after the new file verified.
        mode: permissions of the new file.
        exclusive: refuse to replace an existing ``path`` (the rename is a hard link, which
            fails when the name exists).

    Raises:
        error: the file could not be written, read back, or verified, or (``exclusive``) exists
            already; ``path`` is unchanged.
    """
    tmp = _temporary(path)
    problem = _write_verified(tmp, data, check, mode)
    if problem is None:
        try:
            if backup is not None:
                _keep_backup(path, backup)
            if exclusive:
                _link_new(tmp, path)
            else:
                os.replace(tmp, path)
        except FileExistsError:
            problem = "it already exists; not overwriting it"
        except OSError as exc:
            problem = _describe(exc)
    if problem is not None:
        _remove(tmp)
        raise error(f"cannot write {what} {path}: {problem}; the previous file is unchanged")
    sync_directory(path.parent)


def _write_verified(
    tmp: Path, data: bytes | Secret[bytes], check: Callable[[bytes], bool] | None, mode: int
) -> str | None:
    """Write, sync and read back ``tmp``; what went wrong, or ``None``. Never raises, so the
    content (which may be a secret) is in no frame of an error."""
    content = data.reveal() if isinstance(data, Secret) else data
    try:
        fd = _create(tmp, mode)
        try:
            _write_all(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        written = tmp.read_bytes()
    except OSError as exc:
        return _describe(exc)
    if written != content:
        return f"read back {len(written)} of {len(content)} bytes as written"
    if check is not None and not check(written):
        return "the written file did not verify"
    return None


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless that exists (``FileExistsError``)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # No hard links here: check, then rename (a narrow race, on such file systems only).
        if path.exists():
            raise FileExistsError(errno.EEXIST, "exists") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


class _Counted(io.RawIOBase):
    """A raw file that counts the bytes the OS accepted and never loses a short write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data)
        _write_all(self.fd, view)
        self.count += view.nbytes
        return view.nbytes

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self.fd)
            finally:
                super().close()


class _Staged:
    """One streamed output under its temporary name, until :meth:`finish` and :meth:`commit`."""

    def __init__(
        self, path: Path, *, what: str, error: type[VaultkitError], encoding: str, newline: str
    ) -> None:
        self.path = path
        self.what = what
        self.error = error
        self.tmp = _temporary(path)
        try:
            fd = _create(self.tmp, PRIVATE)
        except OSError as exc:
            raise error(f"cannot write {what} {path}: {_describe(exc)}") from None
        self.raw = _Counted(fd)
        buffered = io.BufferedWriter(cast(Any, self.raw), buffer_size=1 << 20)  # 1 MiB
        self.handle = io.TextIOWrapper(buffered, encoding=encoding, newline=newline)

    def fail(self, problem: str) -> VaultkitError:
        self.discard()
        return self.error(
            f"cannot write {self.what} {self.path}: {problem}; nothing was written under that name"
        )

    def finish(self) -> None:
        """Flush, sync and check the size on disk against the bytes written."""
        problem: str | None = None
        try:
            self.handle.flush()
            os.fsync(self.raw.fd)
            size = os.fstat(self.raw.fd).st_size
            if size != self.raw.count:
                problem = f"{size} bytes on disk of {self.raw.count} written"
        except OSError as exc:
            problem = _describe(exc)
        if problem is not None:
            raise self.fail(problem)
        _close(self.handle)

    def commit(self) -> None:
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise self.fail(_describe(exc)) from None
        sync_directory(self.path.parent)

    def discard(self) -> None:
        _close(self.handle)
        _remove(self.tmp)


@contextlib.contextmanager
def atomic_text_outputs(
    paths: Sequence[Path],
    *,
    what: str,
    error: type[VaultkitError],
    encoding: str = "utf-8",
    newline: str = "",
) -> Iterator[list[TextIO]]:
    """Text files written under temporary names (mode 0600), renamed to ``paths`` together and
    only when every one of them was written in full.

    For large streamed outputs: nothing is read back; instead each file's size on disk after
    ``fsync`` must equal the number of bytes the OS accepted. An exception inside the block, or a
    failed write of any of the files, removes every temporary file and leaves each of ``paths`` as
    it was, so an output and its companion (an upload and its rejects) never disagree.

    Raises:
        error: a file could not be written or synced (also when a write inside the block
            failed); no path is changed.
    """
    staged: list[_Staged] = []
    try:
        for path in paths:
            staged.append(_Staged(path, what=what, error=error, encoding=encoding, newline=newline))
        try:
            yield [s.handle for s in staged]
        except OSError as exc:  # a write inside the block failed (disk full, file-size limit)
            names = " and ".join(str(p) for p in paths)
            problem = _describe(exc)
            raise error(
                f"cannot write {what} {names}: {problem}; nothing was written under "
                + ("that name" if len(paths) == 1 else "those names")
            ) from None
        for s in staged:
            s.finish()
        for s in staged:
            s.commit()
    except BaseException:
        for s in staged:
            s.discard()
        raise


@contextlib.contextmanager
def atomic_text_output(
    path: Path,
    *,
    what: str,
    error: type[VaultkitError],
    encoding: str = "utf-8",
    newline: str = "",
) -> Iterator[TextIO]:
    """One file as :func:`atomic_text_outputs` writes them."""
    with atomic_text_outputs(
        [path], what=what, error=error, encoding=encoding, newline=newline
    ) as (handle,):
        yield handle


def _close(handle: TextIO) -> None:
    # Closing flushes what is still buffered; after a failure that fails again (the disk is still
    # full), and the descriptor is closed all the same.
    with contextlib.suppress(OSError, ValueError):
        handle.close()


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()
