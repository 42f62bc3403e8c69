"""Leak test: plant known secrets, provoke every kind of output, and search it all.

Secrets planted: a plaintext, a master key, a passphrase, the unwrapped DEK, and a ciphertext.
Searched: repr() and str() of every public object, every error message raised on the way, every
log record at DEBUG level, the output of the command line, and what an error reporter that
captures local variables (Sentry, Django's debug page) would ship: the locals of every frame a
raised exception passed through, and ``vars()`` of the providers.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import types
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vaultkit import KeyDomain, KeyRef, Vault
from vaultkit._redact import Secret
from vaultkit.cli.main import main
from vaultkit.core.envelope import wrap_context
from vaultkit.errors import VaultkitError
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV, MASTER_PASSPHRASE_ENV
from vaultkit.store import SQLKeyStore

PLAINTEXT = "PLANTED-PLAINTEXT-Jan-Peeters-8f3a"
MASTER = bytes.fromhex("5a" * 16 + "a5" * 16)
PASSPHRASE = "PLANTED-PASSPHRASE-correct-horse-77"


def forms(secret: bytes | str) -> list[str]:
    """The shapes in which a secret could leak into text."""
    raw = secret.encode() if isinstance(secret, str) else secret
    out = [raw.hex(), base64.b64encode(raw).decode(), repr(raw)[2:-1]]
    if isinstance(secret, str):
        out.append(secret)
    # Also look for long fragments, in case a message truncates.
    out += [raw.hex()[:24], base64.b64encode(raw).decode()[:20]]
    return out


MAX_DEPTH = 8
MAX_ITEMS = 500
_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType)


def _needles(secrets: dict[str, bytes | str]) -> list[tuple[str, str]]:
    out = []
    for name, secret in secrets.items():
        raw = secret.encode() if isinstance(secret, str) else secret
        for form in [*forms(secret), raw.decode("latin-1")]:
            if form:
                out.append((name, form))
    return out


class _Walk:
    """Search a graph of values for secrets: strings and bytes, containers, objects' ``__dict__``s
    and every object's ``repr()``; bounded in depth and breadth, each object visited once."""

    def __init__(self, secrets: dict[str, bytes | str]) -> None:
        self.needles = _needles(secrets)
        self.seen: set[int] = set()
        self.found: list[str] = []

    def text(self, text: str, where: str) -> None:
        for name, form in self.needles:
            finding = f"{name} in {where}"
            if form in text and finding not in self.found:
                self.found.append(finding)

    def value(self, value: object, where: str, depth: int = 0) -> None:
        if depth > MAX_DEPTH or id(value) in self.seen or value is None:
            return
        self.seen.add(id(value))
        if isinstance(value, str):
            self.text(value, where)
            return
        if isinstance(value, bytes | bytearray | memoryview):
            self.text(bytes(value).decode("latin-1"), where)
            return
        if isinstance(value, int | float | complex) or isinstance(value, _OPAQUE):
            return
        if isinstance(value, types.FrameType | types.TracebackType):
            return  # frames are walked one by one, from the traceback
        if isinstance(value, dict):
            for key, item in list(value.items())[:MAX_ITEMS]:
                self.value(key, f"{where} key", depth + 1)
                self.value(item, f"{where}[{key!r}]", depth + 1)
            return
        if isinstance(value, list | tuple | set | frozenset | deque):
            for i, item in enumerate(list(value)[:MAX_ITEMS]):
                self.value(item, f"{where}[{i}]", depth + 1)
            return
        try:
            shown = repr(value)
        except Exception:  # a repr that fails shows nothing
            shown = ""
        self.text(shown[:5000], f"repr({where})")
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict):
            self.value(attributes, f"{where}.__dict__", depth + 1)
        if isinstance(value, BaseException):
            self.value(value.args, f"{where}.args", depth + 1)


def raised_by(fn: Callable[..., object], *args: Any, **kwargs: Any) -> BaseException:
    """Call ``fn`` and return what it raised (its traceback starts in this helper's frame)."""
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # the exception is what the test examines
        return exc
    raise AssertionError(f"{getattr(fn, '__name__', fn)} raised nothing")


def frame_leaks(exc: BaseException, secrets: dict[str, bytes | str]) -> list[str]:
    """Where a known secret appears in what an error reporter captures of ``exc``.

    That is: the message and attributes of ``exc`` and of each exception chained to it the way
    reporters follow the chain (``__cause__``, and ``__context__`` unless suppressed), and the
    ``f_locals`` of every frame of their tracebacks, searched recursively (containers and objects'
    ``__dict__``s, bounded) for the secrets in raw, hex and base64 form. The frame of
    :func:`raised_by` is skipped: it is the test's, not the code's under test.
    """
    walk = _Walk(secrets)
    chained: BaseException | None = exc
    done: set[int] = set()
    while chained is not None and id(chained) not in done:
        done.add(id(chained))
        walk.value(chained, f"exception {type(chained).__name__}")
        walk.text(str(chained), f"str({type(chained).__name__})")
        tb = chained.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code is not raised_by.__code__:
                where = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"
                for name, local in frame.f_locals.items():
                    walk.value(local, f"{where} local {name}")
            tb = tb.tb_next
        chained = chained.__cause__ or (
            None if chained.__suppress_context__ else chained.__context__
        )
    return walk.found


def object_leaks(obj: object, secrets: dict[str, bytes | str]) -> list[str]:
    """Where a known secret appears in ``repr(obj)`` or, recursively, in ``vars(obj)``."""
    walk = _Walk(secrets)
    walk.value(obj, type(obj).__name__)
    return walk.found


class Collector:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *objects: object) -> None:
        for obj in objects:
            self.texts.append(repr(obj))
            self.texts.append(str(obj))

    def expect_error(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except (VaultkitError, TypeError, ValueError) as exc:
            self.texts.append(f"{type(exc).__name__}: {exc}")
            cause = exc.__cause__ or exc.__context__
            if cause is not None and not exc.__suppress_context__:
                self.texts.append(repr(cause))
        else:
            raise AssertionError("expected an error")

    def search(self, secrets: dict[str, bytes | str]) -> list[str]:
        found = []
        for name, secret in secrets.items():
            for form in forms(secret):
                for text in self.texts:
                    if form and form in text:
                        found.append(f"{name} found in: {text[:120]}")
        return found


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger("vaultkit")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def test_no_secret_reaches_any_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No planted secret appears in reprs, errors, logs or CLI output."""
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    monkeypatch.delenv(MASTER_PASSPHRASE_ENV, raising=False)
    seen = Collector()
    keyring = tmp_path / "keyring.json"
    db = f"sqlite:///{tmp_path / 'app.db'}"
    with captured_logs() as logs:
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        store = SQLKeyStore(db)
        vault = Vault(
            provider=provider, store=store, domains=[KeyDomain("identity"), KeyDomain("medical")]
        )
        ctx = {"table": "members", "column": "name", "row": "m-17"}
        blob = vault.encrypt(PLAINTEXT, domain="identity", context=ctx)
        (record,) = store.records()
        dek = provider.unwrap(
            KeyRef(record.domain, record.kek_id, record.kek_version),
            record.wrapped,
            context=wrap_context(record.domain, record.dek_id),
        )
        field = vault.field("identity", table="members", column="name", row_bound=True)
        vault.decrypt(blob, context=ctx)  # a writer reads through the provider, then caches
        key = vault._keyring.cache.by_id[record.dek_id]
        seen.add(
            vault,
            provider,
            store,
            record,
            field,
            key,
            vault.cache_info(),
            KeyDomain("identity"),
            provider.primary("identity"),
            Secret(PLAINTEXT),
            Secret(MASTER),
        )

        seen.expect_error(lambda: vault.decrypt(blob, context={**ctx, "row": "m-18"}))
        seen.expect_error(lambda: vault.decrypt(blob[:-1], context=ctx))
        seen.expect_error(lambda: vault.decrypt(blob, context=ctx, domain="medical"))
        seen.expect_error(lambda: vault.decrypt(PLAINTEXT.encode() * 4))
        seen.expect_error(lambda: vault.decrypt(PLAINTEXT))  # type: ignore[arg-type]
        seen.expect_error(lambda: vault.encrypt(PLAINTEXT, domain="criminal"))
        seen.expect_error(lambda: vault.encrypt({PLAINTEXT}, domain="identity"))  # type: ignore[arg-type]
        seen.expect_error(lambda: vault.encrypt(PLAINTEXT + "\ud800", domain="identity"))
        seen.expect_error(
            lambda: vault.encrypt(PLAINTEXT, domain="identity", context={"row": b"x"})
        )  # type: ignore[dict-item]
        seen.expect_error(lambda: field.encrypt(PLAINTEXT))
        seen.expect_error(lambda: LocalKeyProvider(keyring, master_key=bytes(32)))
        seen.expect_error(lambda: LocalKeyProvider(keyring, passphrase=PASSPHRASE))
        monkeypatch.setenv(MASTER_KEY_ENV, PASSPHRASE)
        seen.expect_error(lambda: LocalKeyProvider(keyring))
        monkeypatch.delenv(MASTER_KEY_ENV)
        seen.expect_error(
            lambda: provider.unwrap(
                KeyRef("identity", record.kek_id, 1), record.wrapped, context=b"other"
            )
        )
        seen.expect_error(lambda: SQLKeyStore(f"postgresql+psycopg://u:{PASSPHRASE}@127.0.0.1:1/x"))

        pass_ring = tmp_path / "pass.json"
        LocalKeyProvider(
            pass_ring,
            passphrase=PASSPHRASE,
            kdf_parameters={"time_cost": 1, "memory_cost": 1024, "parallelism": 1},
        )
        seen.expect_error(lambda: LocalKeyProvider(pass_ring, passphrase=PASSPHRASE + "x"))
        damaged = tmp_path / "damaged.json"
        doc = json.loads(keyring.read_text())
        doc["ciphertext"] = doc["ciphertext"][:-8] + "AAAAAAA="
        damaged.write_text(json.dumps(doc))
        seen.expect_error(lambda: LocalKeyProvider(damaged, master_key=MASTER))
        vault.close()

    # The command line: keys init with a master key in the environment and with a new one.
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(MASTER).decode())
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert (
            main(["keys", "init", "--keyring", str(tmp_path / "cli.json"), "--domain", "medical"])
            == 0
        )
        assert main(["keys", "init", "--keyring", str(tmp_path / "cli.json")]) == 3
    monkeypatch.delenv(MASTER_KEY_ENV)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["keys", "init", "--keyring", str(tmp_path / "new.json")]) == 0
    new_master = (tmp_path / "new.json.master-key").read_text().strip()
    seen.texts += [out.getvalue(), err.getvalue(), *logs]

    leaks = seen.search(
        {
            "plaintext": PLAINTEXT,
            "master key": MASTER,
            "passphrase": PASSPHRASE,
            "DEK": dek,
            "derived key commitment is public, DEK is not": dek,
            "ciphertext": blob[52:],
            "generated master key": base64.b64decode(new_master),
        }
    )
    assert leaks == []
    assert len(seen.texts) > 40  # the search did look at something
    assert any("DEK" in line for line in logs)  # and logging did happen


# -- what an error reporter would capture: frame locals and vars() -------------------------------

WRONG_MASTER = bytes.fromhex("c3" * 32)


def keyring_keks(path: Path, master: bytes) -> dict[str, bytes | str]:
    """Every KEK of a keyring file, decrypted as docs/keyring.md describes the format."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    doc = json.loads(path.read_bytes())
    outer = {k: doc[k] for k in ("vaultkit_keyring", "keyring_id", "master_key")}
    aad = json.dumps(outer, sort_keys=True, separators=(",", ":")).encode()
    plain = AESGCM(master).decrypt(
        base64.b64decode(doc["nonce"]), base64.b64decode(doc["ciphertext"]), aad
    )
    return {
        f"KEK {domain} v{v}": base64.b64decode(k["key"])
        for domain, entry in json.loads(plain)["domains"].items()
        for v, k in entry["keys"].items()
    }


@pytest.fixture
def keyring_with_keks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, dict[str, bytes | str]]:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    monkeypatch.delenv(MASTER_PASSPHRASE_ENV, raising=False)
    path = tmp_path / "keyring.json"
    provider = LocalKeyProvider(path, master_key=MASTER)
    for domain in ("identity", "medical"):
        provider.primary(domain)
    provider.rotate("medical")
    planted: dict[str, bytes | str] = {
        "master key": MASTER,
        "wrong master key": WRONG_MASTER,
        "passphrase": PASSPHRASE,
        **keyring_keks(path, MASTER),
    }
    return path, planted


FAILED_SAVE_CHILD = r"""
import json, os, resource, signal, sys
sys.path.insert(0, sys.argv[2])
from test_leaks import frame_leaks, raised_by
from vaultkit.keys import LocalKeyProvider

planted = {k: bytes.fromhex(v) for k, v in json.loads(os.environ["CHILD_PLANTED"]).items()}
provider = LocalKeyProvider(sys.argv[1], master_key=planted["master key"])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))  # no byte can be written
exc = raised_by(provider.rotate, "identity")
print(json.dumps({"error": type(exc).__name__, "leaks": frame_leaks(exc, planted)}))
"""


def test_a_failed_keyring_save_leaves_no_key_in_any_frame(
    keyring_with_keks: tuple[Path, dict[str, bytes | str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyring save that fails for real (a file-size limit of 0 in a child process) raises from
    frames whose locals hold neither the master key nor any KEK, in any form."""
    import subprocess
    import sys

    path, planted = keyring_with_keks
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.setenv(
        "CHILD_PLANTED",
        json.dumps({k: v.hex() for k, v in planted.items() if isinstance(v, bytes)}),
    )
    child = subprocess.run(
        [sys.executable, "-c", FAILED_SAVE_CHILD, str(path), str(root / "tests" / "unit")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    outcome = json.loads(child.stdout)
    assert outcome == {"error": "KeyProviderError", "leaks": []}


def test_a_wrong_master_key_leaves_no_key_in_any_frame(
    keyring_with_keks: tuple[Path, dict[str, bytes | str]],
) -> None:
    """Opening a keyring with a wrong master key raises from frames that hold neither key."""
    path, planted = keyring_with_keks
    failed = raised_by(LocalKeyProvider, path, master_key=WRONG_MASTER)
    assert isinstance(failed, VaultkitError)
    assert frame_leaks(failed, planted) == []


def test_keyring_construction_errors_leave_no_secret_in_any_frame(
    keyring_with_keks: tuple[Path, dict[str, bytes | str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every way of failing to open a keyring (both secrets, a malformed key in the environment,
    a wrong passphrase, a damaged file) raises from frames with no secret in them."""
    path, planted = keyring_with_keks
    cheap = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
    pass_ring = tmp_path / "pass.json"
    LocalKeyProvider(pass_ring, passphrase=PASSPHRASE, kdf_parameters=cheap)
    damaged = tmp_path / "damaged.json"
    doc = json.loads(path.read_text())
    doc["ciphertext"] = doc["ciphertext"][:-8] + "AAAAAAA="
    damaged.write_text(json.dumps(doc))
    failures = [
        raised_by(LocalKeyProvider, path, master_key=MASTER, passphrase=PASSPHRASE),
        raised_by(LocalKeyProvider, path, master_key=MASTER[:31]),
        raised_by(LocalKeyProvider, pass_ring, passphrase=PASSPHRASE + "x"),
        raised_by(LocalKeyProvider, pass_ring, master_key=MASTER),
        raised_by(LocalKeyProvider, damaged, master_key=MASTER),
    ]
    monkeypatch.setenv(MASTER_KEY_ENV, PASSPHRASE)
    failures.append(raised_by(LocalKeyProvider, path))
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(WRONG_MASTER[:20]).decode())
    failures.append(raised_by(LocalKeyProvider, path))
    for failed in failures:
        assert isinstance(failed, VaultkitError), failed
        assert frame_leaks(failed, {**planted, "short key": WRONG_MASTER[:20]}) == [], failed


def test_providers_hold_no_key_material_in_vars_or_repr(
    keyring_with_keks: tuple[Path, dict[str, bytes | str]],
) -> None:
    """vars() and repr() of a keyring provider, searched recursively, show no master key or KEK;
    neither provider lets vars() reach key bytes or the AESGCM objects built from them."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from vaultkit.testing import InMemoryKeyProvider

    path, planted = keyring_with_keks
    provider = LocalKeyProvider(path, master_key=MASTER)
    provider.rotate("identity")
    planted = {**planted, **keyring_keks(path, MASTER)}
    assert object_leaks(provider, planted) == []
    memory = InMemoryKeyProvider(["identity", "medical"])
    memory.rotate("medical")
    found: list[object] = []

    def collect(value: object) -> None:
        if isinstance(value, bytes | bytearray | AESGCM):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item)

    # Neither key bytes nor the AESGCM objects that hold them (a cryptography release allowed by
    # the dependency range may keep the key in a Python attribute of AESGCM) are reachable.
    collect(vars(memory))
    collect(vars(provider))
    assert found == []


WALK_KEY = bytes(range(32))


class _Holder:
    def __init__(self, inner: object) -> None:
        self.inner = inner


def _deep() -> None:
    held = _Holder(_Holder({"k": [base64.b64encode(WALK_KEY).decode()]}))  # noqa: F841 - a finding
    wrapped = Secret(WALK_KEY)  # noqa: F841 - opaque: not a finding
    raise ValueError("boom")


def _chained() -> None:
    try:
        _deep()
    except ValueError:
        raise KeyError("second")  # noqa: B904 - the implicit chain is what is tested


def _suppressed() -> None:
    try:
        _deep()
    except ValueError:
        hidden = {"x": (WALK_KEY.hex(),)}  # noqa: F841 - a finding
        raise KeyError("third") from None


def test_the_frame_walk_finds_what_a_reporter_would_ship() -> None:
    """The walk finds a secret in base64 two objects deep in a frame local, in hex in a nested
    container, and in the frames of an implicitly chained exception; a Secret holder and a
    suppressed context (which reporters do not show) are not findings."""
    held = "key in test_leaks.py:_deep local held.__dict__['inner'].__dict__['inner']['k'][0]"
    assert frame_leaks(raised_by(_deep), {"key": WALK_KEY}) == [held]
    assert frame_leaks(raised_by(_chained), {"key": WALK_KEY}) == [held]
    assert frame_leaks(raised_by(_suppressed), {"key": WALK_KEY}) == [
        "key in test_leaks.py:_suppressed local hidden['x'][0]"
    ]


def test_x25519_provider_shows_no_private_key_bytes() -> None:
    """vars() and repr() of the encrypt-only unit's X25519 provider, searched recursively, show
    neither its private keys nor its writer's signing key as bytes (they stay opaque key objects)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vaultkit.keys.x25519 import X25519KeyProvider

    signer = Ed25519PrivateKey.generate()
    unit = X25519KeyProvider.generate(["medical"]).with_writers({"intake": signer.public_key()})
    writer = unit.public_only(signer=signer)
    raw = serialization.Encoding.Raw
    private = serialization.PrivateFormat.Raw
    none = serialization.NoEncryption()
    planted: dict[str, bytes | str] = {
        "writer signing key": signer.private_bytes(raw, private, none),
    }
    for i, key in enumerate(unit._private["medical"]):
        planted[f"unit private key {i}"] = key.private_bytes(raw, private, none)
    assert object_leaks(unit, planted) == []
    assert object_leaks(writer, planted) == []
