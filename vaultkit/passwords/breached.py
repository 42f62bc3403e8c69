"""Breached-password lists: Pwned Passwords range files, the single sorted file, and a range mirror.

NIST SP 800-63B-4 (section 3.1.1.2) and rev. 3 (5.1.1.2) ask verifiers to compare new passwords
against a blocklist of values known to be compromised. The Pwned Passwords corpus is published
as SHA-1 hashes, split by the first five hex digits of the hash (the *prefix*) into 16^5 ranges.
This module reads three forms of it:

- :class:`PwnedRangeDirectory`: the files the official PwnedPasswordsDownloader writes with
  ``-s false``, one per prefix (``21BD1.txt``), each line ``SUFFIX:COUNT`` with the 35 remaining
  uppercase hex digits, as the range API returns them.
- :class:`PwnedHashFile`: the downloader's default single file (``pwnedpasswords.txt``), one
  ``HASH:COUNT`` line per hash in hash order, searched by bisection without loading it.
- :class:`PwnedRangeMirror`: an HTTP endpoint the operator runs, ``GET {base}/range/{PREFIX}``,
  answering like the public range API. Only the five-hex-digit prefix leaves the process
  (k-anonymity): never the password, the full hash or the suffix, in the URL, a header or a log.

Each source answers :meth:`count` for a full uppercase SHA-1 hex digest: how often the password
appeared in breaches, 0 if never. A source that cannot answer raises
:class:`~vaultkit.errors.PasswordError`; :class:`~vaultkit.passwords.PasswordPolicy` decides what
that means (``on_unavailable``).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import functools
import http.client
import io
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from vaultkit.errors import ConfigurationError, PasswordError

__all__ = [
    "BreachedPasswords",
    "PwnedHashFile",
    "PwnedRangeDirectory",
    "PwnedRangeMirror",
    "parse_range",
]

PREFIX_LENGTH: Final = 5
#: A range holds about 800 to 2,000 hashes (about 40 to 90 kB); padding adds a few hundred more.
MAX_RANGE_BYTES: Final = 1024 * 1024  # 1 MiB
_HEX40: Final = re.compile(r"[0-9A-F]{40}")
_RANGE_LINE: Final = re.compile(rb"([0-9A-Fa-f]{35}):([0-9]{1,12})")
_HASH_LINE: Final = re.compile(rb"([0-9A-Fa-f]{40}):([0-9]{1,12})")


@runtime_checkable
class BreachedPasswords(Protocol):
    """Anything that can say how often a password's SHA-1 appeared in breaches.

    .. versionadded:: 0.2.0
    """

    def count(self, sha1_hex: str) -> int:
        """Breach count for a full uppercase SHA-1 hex digest (0 if absent).

        Raises:
            PasswordError: the list cannot be read or the mirror cannot be reached.
        """
        ...


def _check_digest(sha1_hex: str) -> str:
    if not isinstance(sha1_hex, str) or not _HEX40.fullmatch(sha1_hex):
        raise ValueError("expected a full uppercase SHA-1 hex digest")
    return sha1_hex


def parse_range(body: bytes, suffix: str) -> int:
    """The count of ``suffix`` in a range body (``SUFFIX:COUNT`` lines), 0 if absent.

    Lines end in CRLF or LF; blank lines are skipped; padding entries (count 0) count as absent.

    Raises:
        ValueError: a line is not ``35 hex digits:count`` (the body is not a range).
    """
    target = suffix.encode("ascii")
    found = 0
    for line in body.splitlines():
        if not line.strip():
            continue
        match = _RANGE_LINE.fullmatch(line.strip())
        if match is None:
            raise ValueError("not a range line")
        if match.group(1).upper() == target:
            found = max(found, int(match.group(2)))
    return found


class PwnedRangeDirectory:
    """A directory of Pwned Passwords range files, one per prefix (``00000.txt`` ... ``FFFFF.txt``).

    Made by ``haveibeenpwned-downloader -s false DIRECTORY``: each file is the range API's answer
    for its prefix, unchanged. A missing or unreadable file means an incomplete copy and raises
    :class:`~vaultkit.errors.PasswordError` (the policy then fails closed unless told otherwise).

    Args:
        path: the directory.
        max_file_bytes: refuse a range file larger than this (default 1 MiB).

    Raises:
        ConfigurationError: ``path`` is not a directory.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_file_bytes: int = MAX_RANGE_BYTES
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ConfigurationError("the Pwned Passwords range directory does not exist")
        if max_file_bytes < 1:
            raise ConfigurationError("max_file_bytes must be positive")
        self.max_file_bytes = max_file_bytes

    def count(self, sha1_hex: str) -> int:
        """Breach count for a SHA-1 hex digest, read from its prefix's range file."""
        digest = _check_digest(sha1_hex)
        prefix, suffix = digest[:PREFIX_LENGTH], digest[PREFIX_LENGTH:]
        name = f"{prefix}.txt"
        try:
            with open(self.path / name, "rb") as handle:
                body = handle.read(self.max_file_bytes + 1)
        except FileNotFoundError:
            raise PasswordError(
                f"range file {name} is missing from the Pwned Passwords directory "
                "(an incomplete download?)"
            ) from None
        except OSError as exc:
            raise PasswordError(
                f"range file {name} could not be read ({type(exc).__name__})"
            ) from None
        if len(body) > self.max_file_bytes:
            raise PasswordError(f"range file {name} is larger than {self.max_file_bytes} bytes")
        try:
            return parse_range(body, suffix)
        except ValueError:
            raise PasswordError(f"range file {name} is not a Pwned Passwords range") from None

    def __repr__(self) -> str:
        return f"PwnedRangeDirectory({str(self.path)!r})"


class PwnedHashFile:
    """The Pwned Passwords single file: ``HASH:COUNT`` lines in hash order, searched by bisection.

    Made by ``haveibeenpwned-downloader FILE`` (the default mode). The file (tens of GB) is never
    loaded: a lookup reads about 40 lines at bisection points.

    Args:
        path: the file.

    Raises:
        ConfigurationError: ``path`` is not a file, or its first line is not ``HASH:COUNT``.

    .. versionadded:: 0.2.0
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigurationError("the Pwned Passwords hash file does not exist")
        with open(self.path, "rb") as handle:
            first = handle.readline(256).strip()
        if first and _HASH_LINE.fullmatch(first) is None:
            raise ConfigurationError(
                "the Pwned Passwords hash file does not start with a HASH:COUNT line "
                "(an NTLM or a range file?)"
            )

    def count(self, sha1_hex: str) -> int:
        """Breach count for a SHA-1 hex digest, found by bisection over byte offsets."""
        target = _check_digest(sha1_hex).encode("ascii")
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                line = self._first_at_or_after(handle, size, target)
        except OSError as exc:
            raise PasswordError(
                f"the Pwned Passwords hash file could not be read ({type(exc).__name__})"
            ) from None
        if line is None or line[:40].upper() != target:
            return 0
        match = _HASH_LINE.fullmatch(line)
        if match is None:
            raise PasswordError("the Pwned Passwords hash file has a malformed line")
        return int(match.group(2))

    @staticmethod
    def _line_from(handle: io.BufferedReader, position: int) -> bytes | None:
        # The first whole line that starts at or after ``position``, stripped; None at the end.
        if position == 0:
            handle.seek(0)
        else:
            handle.seek(position - 1)
            handle.readline(4096)  # the rest of the line that holds position - 1
        line = handle.readline(4096)
        return line.strip() if line else None

    def _first_at_or_after(
        self, handle: io.BufferedReader, size: int, target: bytes
    ) -> bytes | None:
        # Bisect over byte offsets for the first line whose hash is >= target. The predicate
        # "the first line starting at or after p sorts >= target" only grows with p.
        low, high = 0, size
        while low < high:
            middle = (low + high) // 2
            line = self._line_from(handle, middle)
            if line is None or line[:40].upper() >= target:
                high = middle
            else:
                low = middle + 1
        return self._line_from(handle, low)

    def __repr__(self) -> str:
        return f"PwnedHashFile({str(self.path)!r})"


# -- the HTTP mirror ------------------------------------------------------------------------------


class _DeadlineError(TimeoutError):
    pass


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _DeadlineError("deadline passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """A socket reader whose every receive waits at most until the request's deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_remaining(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """Wraps a connected socket so that sending and receiving end at one deadline in total.

    urllib's ``timeout`` bounds each blocking operation, not the request: a server sending one
    byte just inside every timeout could hold a sign-up for ever. This bounds the whole exchange.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_remaining(self._deadline))
        self._sock.sendall(data)

    def close(self) -> None:
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineConnection:
    _deadline: float
    timeout: float | None
    sock: Any

    def connect(self) -> None:
        self.timeout = _remaining(self._deadline)
        super().connect()  # type: ignore[misc]
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _HTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline


class _HTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            functools.partial(_HTTPSConnection, deadline=self._deadline),
            req,
            context=self._context,  # type: ignore[attr-defined]
        )


class PwnedRangeMirror:
    """An internal mirror of the Pwned Passwords range API: ``GET {base}/range/{PREFIX}``.

    Only the first five hex digits of the password's SHA-1 leave the process, as the request path;
    the answer lists every suffix in that range and the match is made here (k-anonymity). The
    request carries ``Add-Padding: true`` so that a padding-aware mirror pads each answer with
    count-0 entries (they are ignored), hiding the range's size from an observer of the response
    length. No other header says anything about the password; the prefix is not logged.

    The mirror is treated as untrusted input: the whole exchange (connect, send, headers, body)
    ends within ``timeout`` seconds, the body is refused past ``max_response_bytes``, redirects
    are not followed (they could send the prefix elsewhere), environment proxy settings are not
    used, and an answer that is not a range is an error, never a "not breached".

    Args:
        base_url: ``http://`` or ``https://`` URL of the mirror, without ``/range``.
        timeout: seconds for the whole request (default 2).
        max_response_bytes: largest body accepted (default 1 MiB).
        ssl_context: for an ``https`` mirror with a private CA (default: the system's trust store).

    Raises:
        ConfigurationError: the URL is not http(s), or has a query, fragment or credentials.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 2.0,
        max_response_bytes: int = MAX_RANGE_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("the Pwned Passwords mirror URL must be http:// or https://")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigurationError(
                "the Pwned Passwords mirror URL must not carry a query, a fragment or credentials"
            )
        if not timeout > 0 or max_response_bytes < 1:
            raise ConfigurationError("timeout and max_response_bytes must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context

    def count(self, sha1_hex: str) -> int:
        """Breach count for a SHA-1 hex digest: fetch its prefix's range, match the suffix here."""
        digest = _check_digest(sha1_hex)
        prefix, suffix = digest[:PREFIX_LENGTH], digest[PREFIX_LENGTH:]
        body = self.fetch_range(prefix)
        try:
            return parse_range(body, suffix)
        except ValueError:
            raise PasswordError(
                "the Pwned Passwords mirror answered with something that is not a range"
            ) from None

    def fetch_range(self, prefix: str) -> bytes:
        """The raw body the mirror returns for a five-hex-digit prefix.

        Raises:
            PasswordError: unreachable, timed out, not HTTP 200, compressed, or too large.
        """
        if not re.fullmatch(r"[0-9A-F]{5}", prefix):
            raise ValueError("a range prefix is five uppercase hex digits")
        deadline = time.monotonic() + self.timeout
        opener = urllib.request.OpenerDirector()
        for handler in (
            _HTTPHandler(deadline),
            _HTTPSHandler(deadline, self._ssl_context),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPErrorProcessor(),
        ):
            opener.add_handler(handler)
        # The scheme was checked to be http or https in __init__, and the opener has no other.
        request = urllib.request.Request(  # noqa: S310
            f"{self.base_url}/range/{prefix}",
            headers={"Add-Padding": "true", "User-Agent": "vaultkit", "Accept": "text/plain"},
        )
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return self._read(response, deadline)
        except PasswordError:
            raise
        except urllib.error.HTTPError as exc:
            exc.close()
            raise self._unavailable(f"HTTP {exc.code}") from None
        except TimeoutError:
            raise self._unavailable(f"no complete answer within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise self._unavailable(f"no complete answer within {self.timeout:g} s") from None
            raise self._unavailable(
                f"unreachable ({type(reason).__name__ if not isinstance(reason, str) else 'URL error'})"
            ) from None
        except (http.client.HTTPException, OSError, ValueError) as exc:
            raise self._unavailable(f"broken answer ({type(exc).__name__})") from None

    def _read(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        if response.status != 200:
            raise self._unavailable(f"HTTP {response.status}")
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise self._unavailable("a compressed answer, which was not asked for")
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit():
            if int(declared) > self.max_response_bytes:
                raise self._unavailable(f"an answer larger than {self.max_response_bytes} bytes")
        body = bytearray()
        while True:
            _remaining(deadline)
            chunk = response.read1(65536)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > self.max_response_bytes:
                raise self._unavailable(f"an answer larger than {self.max_response_bytes} bytes")

    @staticmethod
    def _unavailable(reason: str) -> PasswordError:
        return PasswordError(f"the Pwned Passwords mirror is unavailable: {reason}")

    def __repr__(self) -> str:
        parts = urllib.parse.urlsplit(self.base_url)
        return f"PwnedRangeMirror({parts.scheme}://{parts.netloc}{parts.path!s}, timeout={self.timeout:g})"
