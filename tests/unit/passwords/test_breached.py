"""Tests for vaultkit.passwords.breached and the policy's breach check (NIST SP 800-63B blocklist).

The range directory and the single file are written by the tests in the downloader's layout; the
mirror is an http.server on 127.0.0.1 in a thread that records every byte it is sent.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vaultkit.errors import ConfigurationError, PasswordError
from vaultkit.passwords import (
    BreachedPasswords,
    PasswordPolicy,
    PwnedHashFile,
    PwnedRangeDirectory,
    PwnedRangeMirror,
)
from vaultkit.passwords.breached import parse_range
from vaultkit.passwords.policy import BREACHED_MESSAGE

# Strong by zxcvbn (score 4), so that only the breach list can reject them.
STRONG = "correct horse battery staple"
OTHER_STRONG = "paard batterij nietje correct"


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest().upper()


def random_suffixes(rnd: random.Random, count: int) -> list[str]:
    return [f"{rnd.getrandbits(140):035X}" for _ in range(count)]


def range_body(entries: dict[str, int], *, newline: str = "\r\n") -> bytes:
    """A range answer as the API sends it: sorted SUFFIX:COUNT lines, CRLF, no final newline."""
    return newline.join(f"{s}:{c}" for s, c in sorted(entries.items())).encode("ascii")


def write_ranges(directory: Path, breached: dict[str, int], *, filler: int = 300) -> None:
    """Write the range files of every breached password, each padded with random other hashes."""
    rnd = random.Random(12)
    by_prefix: dict[str, dict[str, int]] = {}
    for password, count in breached.items():
        digest = sha1(password)
        by_prefix.setdefault(digest[:5], {})[digest[5:]] = count
    for prefix, entries in by_prefix.items():
        others = {s: rnd.randint(1, 5000) for s in random_suffixes(rnd, filler)}
        (directory / f"{prefix}.txt").write_bytes(range_body({**others, **entries}))


# -- the range directory -------------------------------------------------------------------------


class TestRangeDirectory:
    def test_counts_from_the_prefix_file(self, tmp_path: Path) -> None:
        """A hash's count is read from its prefix's file; an absent suffix counts 0."""
        write_ranges(tmp_path, {"password1": 2_418_984, STRONG: 3})
        source = PwnedRangeDirectory(tmp_path)
        assert source.count(sha1("password1")) == 2_418_984
        assert source.count(sha1(STRONG)) == 3
        neighbour = sha1(STRONG)[:5] + "0" * 35
        assert source.count(neighbour) == 0

    def test_breached_strong_password_is_rejected_whatever_its_score(self, tmp_path: Path) -> None:
        """A score-4 password on the list is rejected with reason 'breached' and the user-facing message."""
        write_ranges(tmp_path, {STRONG: 3})
        policy = PasswordPolicy(breached=PwnedRangeDirectory(tmp_path))
        result = policy.check(STRONG)
        assert result.score == 4
        assert not result.accepted and result.breached
        assert result.reasons == ("breached",)
        assert result.warning == BREACHED_MESSAGE
        assert result.feedback[0].startswith("This password has appeared in a data breach")
        write_ranges(tmp_path, {OTHER_STRONG: 0})  # a padding entry only
        assert policy.check(OTHER_STRONG).accepted

    def test_weak_and_breached_gives_both_reasons(self, tmp_path: Path) -> None:
        """A weak password on the list is rejected as too weak and breached."""
        write_ranges(tmp_path, {"password1": 2_418_984})
        result = PasswordPolicy(breached=PwnedRangeDirectory(tmp_path)).check("password1")
        assert result.reasons == ("too_weak", "breached")

    def test_min_breach_count(self, tmp_path: Path) -> None:
        """With min_breach_count, a password seen fewer times is not rejected for it."""
        write_ranges(tmp_path, {STRONG: 3})
        lenient = PasswordPolicy(breached=PwnedRangeDirectory(tmp_path), min_breach_count=4)
        assert lenient.check(STRONG).accepted
        strict = PasswordPolicy(breached=PwnedRangeDirectory(tmp_path), min_breach_count=3)
        assert strict.check(STRONG).breached

    def test_password_as_typed_and_as_stored_are_both_checked(self, tmp_path: Path) -> None:
        """A breached password typed in another Unicode form (a ligature) is still found."""
        typed = "of\ufb01ce horse battery staple"
        stored = "office horse battery staple"  # what hash() stores: NFKC
        policy = PasswordPolicy(breached=PwnedRangeDirectory(tmp_path))
        write_ranges(tmp_path, {typed: 7, stored: 0})
        assert policy.check(typed).breached
        assert policy.check(stored).accepted
        write_ranges(tmp_path, {typed: 0, stored: 7})
        assert policy.check(typed).breached

    def test_too_short_passwords_are_not_looked_up(self, tmp_path: Path) -> None:
        """A password rejected for length is not looked up (an empty directory raises nothing)."""
        policy = PasswordPolicy(breached=PwnedRangeDirectory(tmp_path))
        assert policy.check("short").reasons == ("too_short", "too_weak")

    def test_missing_file_fails_closed(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A missing range file raises a PasswordError by default; 'allow' logs and judges without it."""
        with pytest.raises(PasswordError, match=r"range file [0-9A-F]{5}\.txt is missing"):
            PasswordPolicy(breached=PwnedRangeDirectory(tmp_path)).check(STRONG)
        allow = PasswordPolicy(breached=PwnedRangeDirectory(tmp_path), on_unavailable="allow")
        with caplog.at_level(logging.WARNING, logger="vaultkit.passwords"):
            result = allow.check(STRONG)
        assert result.accepted and not result.breached
        assert "breached-password check skipped" in caplog.text
        assert STRONG not in caplog.text and sha1(STRONG)[5:] not in caplog.text

    @pytest.mark.parametrize(
        "content",
        [b"not a range at all\r\n", b"ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ:1", b"\xff\xfe\x00"],
        ids=["text", "non-hex", "binary"],
    )
    def test_malformed_file_is_an_error(self, tmp_path: Path, content: bytes) -> None:
        """A range file that is not SUFFIX:COUNT lines raises a PasswordError, never 'not breached'."""
        (tmp_path / f"{sha1(STRONG)[:5]}.txt").write_bytes(content)
        with pytest.raises(PasswordError, match="not a Pwned Passwords range"):
            PwnedRangeDirectory(tmp_path).count(sha1(STRONG))

    def test_oversized_file_is_refused(self, tmp_path: Path) -> None:
        """A range file above max_file_bytes is refused without reading it all."""
        (tmp_path / f"{sha1(STRONG)[:5]}.txt").write_bytes(b"0" * 35 + b":1\r\n" * 100_000)
        with pytest.raises(PasswordError, match="larger than"):
            PwnedRangeDirectory(tmp_path, max_file_bytes=4096).count(sha1(STRONG))

    def test_configuration_is_checked_eagerly(self, tmp_path: Path) -> None:
        """A directory that does not exist, or a source without count(), fails at construction."""
        with pytest.raises(ConfigurationError):
            PwnedRangeDirectory(tmp_path / "absent")
        with pytest.raises(ConfigurationError):
            PasswordPolicy(breached=object())  # type: ignore[arg-type]
        for mistaken in (str(tmp_path), tmp_path, [sha1(STRONG)], (sha1(STRONG),)):
            with pytest.raises(ConfigurationError, match="not a path or a collection"):
                PasswordPolicy(breached=mistaken)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            PasswordPolicy(on_unavailable="ignore")  # type: ignore[arg-type]
        assert isinstance(PwnedRangeDirectory(tmp_path), BreachedPasswords)


def test_parse_range_ignores_padding_and_accepts_lf() -> None:
    """Count-0 padding lines count as absent; LF and CRLF both separate lines."""
    suffix = "1E4C9B93F3F0682250B6CF8331B7EE68FD8"  # SHA-1("password"), HIBP's documented example
    assert parse_range(range_body({suffix: 0, "0" * 35: 9}), suffix) == 0
    assert parse_range(range_body({suffix: 10_434_004}, newline="\n") + b"\n", suffix) == 10_434_004
    assert parse_range(b"", suffix) == 0


# -- the single file -----------------------------------------------------------------------------


class TestHashFile:
    @pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
    def test_bisection_finds_every_hash(self, tmp_path: Path, newline: str) -> None:
        """Every hash in a sorted HASH:COUNT file is found with its count; others count 0."""
        rnd = random.Random(7)
        hashes = {f"{rnd.getrandbits(160):040X}": rnd.randint(1, 10**7) for _ in range(3000)}
        hashes[sha1(STRONG)] = 42
        hashes["0" * 40] = 1
        hashes["F" * 40] = 2
        path = tmp_path / "pwnedpasswords.txt"
        path.write_text(
            "".join(f"{h}:{c}{newline}" for h, c in sorted(hashes.items())), encoding="ascii"
        )
        source = PwnedHashFile(path)
        for digest, count in hashes.items():
            assert source.count(digest) == count
        for _ in range(300):
            absent = f"{rnd.getrandbits(160):040X}"
            assert source.count(absent) == hashes.get(absent, 0)
        assert PasswordPolicy(breached=source).check(STRONG).breached

    def test_empty_and_wrong_files(self, tmp_path: Path) -> None:
        """An empty file has no hashes; a file of range lines or NTLM-length junk is refused."""
        empty = tmp_path / "empty.txt"
        empty.write_bytes(b"")
        assert PwnedHashFile(empty).count(sha1(STRONG)) == 0
        ranges = tmp_path / "00000.txt"
        ranges.write_bytes(range_body({"0" * 35: 1}))
        with pytest.raises(ConfigurationError):
            PwnedHashFile(ranges)
        with pytest.raises(ConfigurationError):
            PwnedHashFile(tmp_path / "absent.txt")


# -- the mirror ----------------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    raw: bytes


class _Tee:
    """Records every byte the request handler reads from the client."""

    def __init__(self, inner: Any, sink: bytearray) -> None:
        self._inner, self._sink = inner, sink

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._inner.readline(*args)
        self._sink += data
        return data

    def read(self, *args: Any) -> bytes:
        data: bytes = self._inner.read(*args)
        self._sink += data
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class Mirror:
    """A range mirror on 127.0.0.1; ``behaviour`` says how it answers."""

    url: str
    ranges: dict[str, bytes] = field(default_factory=dict)
    behaviour: str = "normal"
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def _handler(mirror: Mirror) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def setup(self) -> None:
            super().setup()
            self.raw = bytearray()
            self.rfile = _Tee(self.rfile, self.raw)  # type: ignore[assignment]

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            mirror.seen.append(Seen(self.path, dict(self.headers.items()), bytes(self.raw)))
            try:
                self.answer()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def send(self, status: int, body: bytes, **headers: str) -> None:
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def answer(self) -> None:
            behaviour = mirror.behaviour
            prefix = self.path.rsplit("/", 1)[-1]
            if behaviour == "normal":
                body = mirror.ranges.get(prefix, b"")
                if self.headers.get("Add-Padding") == "true":
                    rnd = random.Random(prefix)
                    padding = {s: 0 for s in random_suffixes(rnd, 50)}
                    body = body + b"\r\n" + range_body(padding) if body else range_body(padding)
                self.send(200, body, Content_Type="text/plain")
            elif behaviour == "http500":
                self.send(500, b"internal error")
            elif behaviour == "redirect":
                self.send(302, b"", Location="http://127.0.0.1:9/range/" + prefix)
            elif behaviour == "gzip":
                self.send(200, b"\x1f\x8b\x08\x00", Content_Encoding="gzip")
            elif behaviour == "non-hex":
                self.send(200, b"<html><body>Service Unavailable</body></html>\r\n")
            elif behaviour == "huge-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(50 * 1024 * 1024))
                self.end_headers()
                self.wfile.write(b"0" * 35 + b":1\r\n")
                mirror.release.wait(10)
            elif behaviour == "huge-streamed":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                line = b"0" * 35 + b":1\r\n"
                for _ in range(4 * 1024 * 1024 // len(line)):  # 4 MiB, then stop
                    if mirror.release.is_set():
                        break
                    self.wfile.write(line * 64)
            elif behaviour == "silent":
                mirror.release.wait(10)
            elif behaviour == "drip-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(
                    99
                ):  # a header line every 0.1 s: each read is quick, the whole is not
                    if mirror.release.wait(0.1):
                        break
                    self.wfile.write(b"X-Slow: 1\r\n")
                    self.wfile.flush()
            elif behaviour == "drip":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.flush()
                for _ in range(100):  # one byte every 0.1 s, each well inside any timeout
                    if mirror.release.wait(0.1):
                        break
                    self.wfile.write(b"0")
                    self.wfile.flush()

    return Handler


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.daemon_threads = True
    state = Mirror(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def breached_mirror(mirror: Mirror, passwords: dict[str, int]) -> None:
    rnd = random.Random(5)
    for password, count in passwords.items():
        digest = sha1(password)
        entries = {s: rnd.randint(1, 900) for s in random_suffixes(rnd, 200)}
        entries[digest[5:]] = count
        mirror.ranges[digest[:5]] = range_body(entries)


def leaked_hash_fragments(digest: str, raw: bytes) -> list[str]:
    """Every run of 6 hex digits of the hash (more than the prefix) found in the raw request."""
    text = raw.decode("latin-1").upper()
    return [digest[i : i + 6] for i in range(len(digest) - 5) if digest[i : i + 6] in text]


class TestMirror:
    def test_only_the_prefix_leaves_the_process(
        self, mirror: Mirror, caplog: pytest.LogCaptureFixture
    ) -> None:
        """One GET /range/PREFIX with Add-Padding; no 6 hex digits of the hash, and no password, in any byte sent."""
        breached_mirror(mirror, {STRONG: 12})
        policy = PasswordPolicy(breached=PwnedRangeMirror(mirror.url))
        with caplog.at_level(logging.DEBUG):
            assert policy.check(STRONG).breached
            assert policy.check(OTHER_STRONG).accepted
        assert [s.path for s in mirror.seen] == [
            f"/range/{sha1(STRONG)[:5]}",
            f"/range/{sha1(OTHER_STRONG)[:5]}",
        ]
        for seen, password in zip(mirror.seen, (STRONG, OTHER_STRONG), strict=True):
            assert seen.headers["Add-Padding"] == "true"
            assert set(seen.headers) <= {
                "Accept-Encoding",
                "Host",
                "User-Agent",
                "Connection",
                "Add-Padding",
                "Accept",
            }
            assert seen.raw.startswith(f"GET /range/{sha1(password)[:5]} HTTP/1.1\r\n".encode())
            assert leaked_hash_fragments(sha1(password), seen.raw) == []
            for form in (password, password.replace(" ", "%20"), password.replace(" ", "+")):
                assert form.encode() not in seen.raw
        for password in (STRONG, OTHER_STRONG):
            assert password not in caplog.text and sha1(password)[:5] not in caplog.text

    def test_padding_entries_are_ignored(self, mirror: Mirror) -> None:
        """A suffix listed with count 0 (padding) is not breached; with a count it is."""
        breached_mirror(mirror, {STRONG: 0})
        source = PwnedRangeMirror(mirror.url)
        assert source.count(sha1(STRONG)) == 0
        breached_mirror(mirror, {STRONG: 1})
        assert source.count(sha1(STRONG)) == 1

    @pytest.mark.parametrize(
        ("behaviour", "message"),
        [
            ("http500", "HTTP 500"),
            ("redirect", "HTTP 302"),
            ("gzip", "compressed"),
            ("non-hex", "not a range"),
            ("huge-declared", "larger than"),
            ("huge-streamed", "larger than"),
            ("silent", "no complete answer within 0.5 s"),
            ("drip", "no complete answer within 0.5 s"),
            ("drip-headers", "no complete answer within 0.5 s"),
        ],
    )
    def test_hostile_answers_are_clear_errors_in_bounded_time(
        self, mirror: Mirror, behaviour: str, message: str
    ) -> None:
        """Each hostile answer raises a PasswordError naming the fault, within about the timeout."""
        mirror.behaviour = behaviour
        policy = PasswordPolicy(breached=PwnedRangeMirror(mirror.url, timeout=0.5))
        start = time.monotonic()
        with pytest.raises(PasswordError, match=message) as info:
            policy.check(STRONG)
        elapsed = time.monotonic() - start
        # 0.5 s is the whole exchange's deadline; the bound leaves room for a loaded machine.
        assert elapsed < 4.0, elapsed
        assert STRONG not in str(info.value) and sha1(STRONG)[:5] not in str(info.value)
        assert len(mirror.seen) == 1  # a redirect is not followed

    def test_mirror_down_fails_closed_by_default(self, caplog: pytest.LogCaptureFixture) -> None:
        """Nothing listening: a PasswordError by default; 'allow' accepts on score and logs a warning without secrets."""
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(PasswordError, match="mirror is unavailable: unreachable"):
            PasswordPolicy(breached=PwnedRangeMirror(url, timeout=1)).check(STRONG)
        allow = PasswordPolicy(breached=PwnedRangeMirror(url, timeout=1), on_unavailable="allow")
        with caplog.at_level(logging.WARNING, logger="vaultkit.passwords"):
            assert allow.check(STRONG).accepted
        assert "breached-password check skipped (on_unavailable='allow')" in caplog.text
        assert STRONG not in caplog.text and sha1(STRONG)[:5] not in caplog.text

    def test_no_password_in_the_frames_of_the_error(self, mirror: Mirror) -> None:
        """When the mirror fails, no vaultkit frame of the traceback holds the password or its hash."""
        mirror.behaviour = "http500"
        policy = PasswordPolicy(breached=PwnedRangeMirror(mirror.url, timeout=1))
        check: Callable[..., object] = policy.check
        try:
            check(STRONG, user_inputs=["jan.peeters@example.be"])
        except PasswordError as exc:
            error = exc
        else:
            pytest.fail("no error")
        frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)][1:]
        assert frames, "the error was raised inside vaultkit"
        dump = repr([frame.f_locals for frame in frames])
        for secret in (STRONG, sha1(STRONG), sha1(STRONG)[5:], "jan.peeters"):
            assert secret not in dump
        assert error.__context__ is None and error.__cause__ is None

    def test_configuration_is_checked_eagerly(self) -> None:
        """Non-http URLs, URLs with credentials or a query, and a zero timeout are refused at construction."""
        for url in (
            "file:///etc/passwd",
            "ftp://mirror",
            "https://user:pw@mirror",
            "http://m/?q=1",
        ):
            with pytest.raises(ConfigurationError):
                PwnedRangeMirror(url)
        with pytest.raises(ConfigurationError):
            PwnedRangeMirror("http://mirror", timeout=0)
        assert repr(PwnedRangeMirror("https://mirror.internal/pwned/")) == (
            "PwnedRangeMirror(https://mirror.internal/pwned, timeout=2)"
        )


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, made with cryptography (a vaultkit dependency)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vaultkit test mirror")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_mirror_with_a_private_ca(mirror: Mirror, tmp_path: Path) -> None:
    """An https mirror verifies against ssl_context's CA, answers as over http, and an unknown CA is refused."""
    import ssl

    cert, key = _self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(mirror))
    server.daemon_threads = True
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        breached_mirror(mirror, {STRONG: 3})
        trusted = ssl.create_default_context(cafile=str(cert))
        assert PwnedRangeMirror(url, ssl_context=trusted).count(sha1(STRONG)) == 3
        assert mirror.seen[-1].path == f"/range/{sha1(STRONG)[:5]}"
        with pytest.raises(PasswordError, match="mirror is unavailable: unreachable"):
            PwnedRangeMirror(url, timeout=1).count(sha1(STRONG))  # the system trust store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_failing_custom_source_fails_closed_without_its_message() -> None:
    """A third-party source raising any error gives a PasswordError naming only the error type."""

    class Flaky:
        def count(self, sha1_hex: str) -> int:
            raise RuntimeError(f"backend rejected {sha1_hex}")

    with pytest.raises(PasswordError, match=r"the breach list failed \(RuntimeError\)") as info:
        PasswordPolicy(breached=Flaky()).check(STRONG)
    assert sha1(STRONG) not in str(info.value) and info.value.__context__ is None


def test_hash_new_password_refuses_a_breached_password(tmp_path: Path) -> None:
    """Sign-up raises WeakPasswordError with reason 'breached' for a strong but breached password."""
    from vaultkit.errors import WeakPasswordError
    from vaultkit.passwords import CHEAPEST, PasswordHasher, hash_new_password

    write_ranges(tmp_path, {STRONG: 3})
    policy = PasswordPolicy(breached=PwnedRangeDirectory(tmp_path))
    with pytest.raises(WeakPasswordError, match="breached") as info:
        hash_new_password(STRONG, policy=policy, hasher=PasswordHasher(argon2_profile=CHEAPEST))
    assert STRONG not in str(info.value)
