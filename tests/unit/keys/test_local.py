"""Tests for vaultkit.keys.LocalKeyProvider: the keyring file."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vaultkit.core.envelope import wrap_context
from vaultkit.errors import ConfigurationError, DomainError, KeyNotFoundError, KeyProviderError
from vaultkit.keys import KeyRef, LocalKeyProvider, generate_master_key
from vaultkit.keys.local import MASTER_KEY_ENV, MASTER_PASSPHRASE_ENV

MASTER = bytes(range(32))
CHEAP_KDF = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}  # test-only: fast argon2id
CTX = wrap_context("identity", bytes(16))


@pytest.fixture(autouse=True)
def _no_master_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    monkeypatch.delenv(MASTER_PASSPHRASE_ENV, raising=False)


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    return tmp_path / "keyring.json"


class TestCreateAndReopen:
    def test_created_with_mode_0600(self, keyring: Path) -> None:
        """A new keyring file is readable by its owner only."""
        LocalKeyProvider(keyring, master_key=MASTER).primary("identity")
        assert stat.S_IMODE(keyring.stat().st_mode) == 0o600

    def test_reopened_keyring_unwraps(self, keyring: Path) -> None:
        """A DEK wrapped by one instance unwraps in another opened on the same file."""
        first = LocalKeyProvider(keyring, master_key=MASTER)
        ref = first.primary("identity")
        wrapped = first.wrap(ref, b"k" * 32, context=CTX)
        second = LocalKeyProvider(keyring, master_key=MASTER)
        assert second.unwrap(ref, wrapped, context=CTX) == b"k" * 32

    def test_file_holds_no_key_in_clear(self, keyring: Path) -> None:
        """The file is JSON whose key table is encrypted; no KEK appears in it."""
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        provider.primary("identity")
        doc = json.loads(keyring.read_text())
        assert set(doc) == {"vaultkit_keyring", "keyring_id", "master_key", "nonce", "ciphertext"}
        assert "identity" not in keyring.read_text()

    def test_master_key_from_environment(
        self, keyring: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """VAULTKIT_MASTER_KEY is read as base64."""
        monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(MASTER).decode())
        ref = LocalKeyProvider(keyring).primary("identity")
        assert LocalKeyProvider(keyring, master_key=MASTER).primary("identity") == ref

    def test_passphrase_keyring(self, keyring: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A passphrase-protected keyring opens with the passphrase, from argument or environment."""
        made = LocalKeyProvider(
            keyring, passphrase="correct horse battery", kdf_parameters=CHEAP_KDF
        )
        wrapped = made.wrap(made.primary("identity"), b"k" * 32, context=CTX)
        monkeypatch.setenv(MASTER_PASSPHRASE_ENV, "correct horse battery")
        again = LocalKeyProvider(keyring)
        assert again.unwrap(made.primary("identity"), wrapped, context=CTX) == b"k" * 32
        with pytest.raises(KeyProviderError, match="wrong master key"):
            LocalKeyProvider(keyring, passphrase="wrong horse battery")

    def test_create_false_needs_the_file(self, keyring: Path) -> None:
        """With create_keys=False a missing file is an error, not a new keyring."""
        with pytest.raises(KeyProviderError, match="does not exist"):
            LocalKeyProvider(keyring, master_key=MASTER, create_keys=False)
        assert not keyring.exists()

    def test_create_false_refuses_new_domains(self, keyring: Path) -> None:
        """With create_keys=False an unknown domain is a DomainError."""
        LocalKeyProvider(keyring, master_key=MASTER).primary("identity")
        strict = LocalKeyProvider(keyring, master_key=MASTER, create_keys=False)
        with pytest.raises(DomainError, match="medical"):
            strict.primary("medical")


class TestMasterKeyErrors:
    def test_no_master_key(self, keyring: Path) -> None:
        """Without any master key the error says which variables to set."""
        with pytest.raises(ConfigurationError, match=MASTER_KEY_ENV):
            LocalKeyProvider(keyring)

    @pytest.mark.parametrize("text", ["not base64!", base64.b64encode(b"short").decode()])
    def test_malformed_master_key(
        self, keyring: Path, monkeypatch: pytest.MonkeyPatch, text: str
    ) -> None:
        """A malformed VAULTKIT_MASTER_KEY is refused without echoing it."""
        monkeypatch.setenv(MASTER_KEY_ENV, text)
        with pytest.raises(ConfigurationError) as info:
            LocalKeyProvider(keyring)
        assert text not in str(info.value)

    def test_wrong_master_key_overwrites_nothing(self, keyring: Path) -> None:
        """A wrong master key gives a clear error and leaves the file byte for byte as it was."""
        LocalKeyProvider(keyring, master_key=MASTER).primary("identity")
        before = keyring.read_bytes()
        with pytest.raises(KeyProviderError, match="wrong master key or damaged file"):
            LocalKeyProvider(keyring, master_key=bytes(32))
        assert keyring.read_bytes() == before

    def test_raw_keyring_asked_for_passphrase(self, keyring: Path) -> None:
        """A master-key keyring opened with a passphrase says what it needs."""
        LocalKeyProvider(keyring, master_key=MASTER)
        with pytest.raises(ConfigurationError, match=MASTER_KEY_ENV):
            LocalKeyProvider(keyring, passphrase="x" * 20)

    def test_both_key_and_passphrase(self, keyring: Path) -> None:
        """Giving both a master key and a passphrase is ambiguous and refused."""
        with pytest.raises(ConfigurationError, match="not both"):
            LocalKeyProvider(keyring, master_key=MASTER, passphrase="x")


class TestDamagedFiles:
    @pytest.mark.parametrize(
        ("mutate", "message"),
        [
            (lambda t: t[: len(t) // 2], "not JSON"),
            (lambda t: "[]", "not a vaultkit keyring"),
            (
                lambda t: t.replace('"vaultkit_keyring": 1', '"vaultkit_keyring": 9'),
                "file format 9",
            ),
            (lambda t: t.replace('"kind": "raw"', '"kind": "rot13"'), "unknown master key kind"),
            (
                lambda t: t.replace('"keyring_id": "', '"keyring_id": "0'),
                "wrong master key or damaged",
            ),
        ],
        ids=["truncated", "not-a-keyring", "newer-format", "unknown-kdf", "edited-header"],
    )
    def test_damage_is_reported_and_nothing_written(
        self, keyring: Path, mutate, message: str
    ) -> None:  # type: ignore[no-untyped-def]
        """Each kind of damage names the problem and the file is left as it was."""
        LocalKeyProvider(keyring, master_key=MASTER).primary("identity")
        keyring.write_text(mutate(keyring.read_text()))
        before = keyring.read_bytes()
        with pytest.raises(KeyProviderError, match=message):
            LocalKeyProvider(keyring, master_key=MASTER)
        assert keyring.read_bytes() == before

    def test_ciphertext_bit_flip(self, keyring: Path) -> None:
        """A flipped bit in the encrypted key table is caught."""
        LocalKeyProvider(keyring, master_key=MASTER).primary("identity")
        doc = json.loads(keyring.read_text())
        body = bytearray(base64.b64decode(doc["ciphertext"]))
        body[5] ^= 1
        doc["ciphertext"] = base64.b64encode(bytes(body)).decode()
        keyring.write_text(json.dumps(doc))
        with pytest.raises(KeyProviderError, match="wrong master key or damaged"):
            LocalKeyProvider(keyring, master_key=MASTER)


class TestRotation:
    def test_rotation_keeps_old_versions(self, keyring: Path) -> None:
        """After rotation new DEKs use v2 and DEKs under v1 still unwrap."""
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        v1 = provider.primary("identity")
        old = provider.wrap(v1, b"a" * 32, context=CTX)
        v2 = provider.rotate("identity")
        assert v2.version == 2 and provider.primary("identity") == v2
        assert provider.unwrap(v1, old, context=CTX) == b"a" * 32
        assert [r.version for r in provider.versions("identity")] == [1, 2]

    def test_rotation_in_another_process_is_picked_up(self, keyring: Path) -> None:
        """An instance learns of a KEK version another instance created when it meets it."""
        a = LocalKeyProvider(keyring, master_key=MASTER)
        a.primary("identity")
        b = LocalKeyProvider(keyring, master_key=MASTER)
        v2 = b.rotate("identity")
        wrapped = b.wrap(v2, b"z" * 32, context=CTX)
        assert a.unwrap(v2, wrapped, context=CTX) == b"z" * 32

    def test_wrong_context_is_refused(self, keyring: Path) -> None:
        """A wrapped DEK does not unwrap under another context."""
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        ref = provider.primary("identity")
        wrapped = provider.wrap(ref, b"a" * 32, context=CTX)
        with pytest.raises(KeyProviderError, match="did not unwrap"):
            provider.unwrap(ref, wrapped, context=wrap_context("medical", bytes(16)))

    def test_unknown_kek(self, keyring: Path) -> None:
        """A KEK id of another keyring or an unknown version is KeyNotFoundError."""
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        ref = provider.primary("identity")
        with pytest.raises(KeyNotFoundError):
            provider.wrap(KeyRef("identity", "local:other:identity", 1), b"a" * 32, context=CTX)
        with pytest.raises(KeyNotFoundError):
            provider.wrap(KeyRef("identity", ref.key_id, 7), b"a" * 32, context=CTX)

    def test_keyring_refuses_pickling(self, keyring: Path) -> None:
        """The provider holds KEKs and cannot be pickled."""
        import pickle

        with pytest.raises(TypeError):
            pickle.dumps(LocalKeyProvider(keyring, master_key=MASTER))


def test_generated_master_keys_are_32_random_bytes() -> None:
    """generate_master_key gives base64 of 32 bytes, different each time."""
    a, b = generate_master_key(), generate_master_key()
    assert len(base64.b64decode(a)) == 32 and a != b


def test_no_temporary_files_are_left(keyring: Path) -> None:
    """Atomic writes leave only the keyring, its backup and its lock file behind."""
    provider = LocalKeyProvider(keyring, master_key=MASTER)
    for domain in ("identity", "medical", "financial"):
        provider.primary(domain)
    provider.rotate("medical")
    assert sorted(p.name for p in keyring.parent.iterdir()) == [
        "keyring.json",
        "keyring.json.bak",
        "keyring.json.lock",
    ]
    assert os.access(keyring, os.R_OK)


# A child process that changes the keyring under a file-size limit: its writes past ``limit``
# bytes return short, then fail with EFBIG (SIGXFSZ is ignored, so the process is not killed).
# It reports, as JSON, what it raised and what an error reporter would find in the frames.
SHORT_WRITE_CHILD = r"""
import json, os, resource, signal, sys
sys.path.insert(0, sys.argv[4])
from test_leaks import frame_leaks, raised_by
from vaultkit.errors import VaultkitError
from vaultkit.keys import LocalKeyProvider

path, limit, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]
secrets = {"master key": bytes.fromhex(os.environ["CHILD_MASTER_HEX"])}
for i, kek in enumerate(os.environ["CHILD_KEKS_HEX"].split(",")):
    secrets[f"KEK {i}"] = bytes.fromhex(kek)
provider = LocalKeyProvider(path)
before = provider.primary("identity").version
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    if action == "rotate":
        exc = raised_by(provider.rotate, "identity")
    else:
        exc = raised_by(provider.primary, "criminal")
except AssertionError:  # nothing raised: the short write went unnoticed
    exc = None
print(json.dumps({
    "error": type(exc).__name__,
    "vaultkit": isinstance(exc, VaultkitError),
    "message": str(exc),
    "leaks": frame_leaks(exc, secrets) if exc is not None else [],
    "primary_before": before,
    "primary_after": provider.primary("identity").version,
    "domains_after": provider.domains(),
}))
"""


def read_keks(path: Path, master: bytes) -> dict[tuple[str, int], bytes]:
    """The KEKs of a keyring file, decrypted as docs/keyring.md describes the format."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    doc = json.loads(path.read_bytes())
    outer = {k: doc[k] for k in ("vaultkit_keyring", "keyring_id", "master_key")}
    aad = json.dumps(outer, sort_keys=True, separators=(",", ":")).encode()
    plain = AESGCM(master).decrypt(
        base64.b64decode(doc["nonce"]), base64.b64decode(doc["ciphertext"]), aad
    )
    return {
        (domain, int(v)): base64.b64decode(k["key"])
        for domain, entry in json.loads(plain)["domains"].items()
        for v, k in entry["keys"].items()
    }


class TestShortWrites:
    @pytest.mark.parametrize("action", ["rotate", "new-domain"])
    def test_a_short_write_never_destroys_the_keyring(
        self, keyring: Path, monkeypatch: pytest.MonkeyPatch, action: str
    ) -> None:
        """Under a real file-size limit a rotation or a new domain fails with a KeyProviderError that
        names no secret; the keyring is byte for byte as it was and every old KEK still unwraps."""
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        wrapped = {}
        for domain in ("identity", "medical", "financial"):
            ref = provider.primary(domain)
            wrapped[ref] = provider.wrap(ref, domain.encode().ljust(32, b"."), context=CTX)
        provider.rotate("medical")  # leaves a backup of the two-version state
        before = keyring.read_bytes()
        backup_before = (keyring.parent / "keyring.json.bak").read_bytes()
        keks = read_keks(keyring, MASTER)
        monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(MASTER).decode())
        monkeypatch.setenv("CHILD_MASTER_HEX", MASTER.hex())
        monkeypatch.setenv("CHILD_KEKS_HEX", ",".join(k.hex() for k in keks.values()))
        root = Path(__file__).resolve().parents[3]
        monkeypatch.setenv("PYTHONPATH", str(root))
        limit = len(before) + 40  # the new file is longer by a whole KEK entry
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                SHORT_WRITE_CHILD,
                str(keyring),
                str(limit),
                action,
                str(root / "tests" / "unit"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert child.returncode == 0, child.stderr[-2000:]
        outcome = json.loads(child.stdout)
        again = LocalKeyProvider(keyring, master_key=MASTER)
        for ref, blob in wrapped.items():
            assert again.unwrap(ref, blob, context=CTX) == ref.domain.encode().ljust(32, b".")
        assert keyring.read_bytes() == before
        assert (keyring.parent / "keyring.json.bak").read_bytes() == backup_before
        assert sorted(p.name for p in keyring.parent.iterdir()) == [
            "keyring.json",
            "keyring.json.bak",
            "keyring.json.lock",
        ]
        assert outcome["error"] == "KeyProviderError" and outcome["vaultkit"]
        assert "cannot write keyring" in outcome["message"]
        assert outcome["leaks"] == []
        assert MASTER.hex() not in outcome["message"]
        # The failed change is not adopted in memory either: nothing is wrapped under a KEK that
        # exists nowhere on disk.
        assert outcome["primary_after"] == outcome["primary_before"] == 1
        assert "criminal" not in outcome["domains_after"]


class TestBackup:
    def test_previous_file_is_kept_as_a_private_backup(self, keyring: Path) -> None:
        """After a change the previous keyring is KEYRING.bak (mode 0600) and still opens."""
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        v1 = provider.primary("identity")
        old = provider.wrap(v1, b"a" * 32, context=CTX)
        provider.rotate("identity")
        backup = keyring.parent / "keyring.json.bak"
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        from_backup = LocalKeyProvider(backup, master_key=MASTER, create_keys=False)
        assert [r.version for r in from_backup.versions("identity")] == [1]
        assert from_backup.unwrap(v1, old, context=CTX) == b"a" * 32

    def test_a_disabled_kek_is_in_neither_the_keyring_nor_its_backup(self, keyring: Path) -> None:
        """disable() erases the KEK version from the keyring and from its backup alike."""
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        provider.primary("identity")
        provider.rotate("identity")
        disabled = read_keks(keyring, MASTER)[("identity", 1)]
        provider.disable("identity", 1)
        for path in (keyring, keyring.parent / "keyring.json.bak"):
            keks = read_keks(path, MASTER)
            assert ("identity", 1) not in keks and disabled not in keks.values()
            assert ("identity", 2) in keks

    def test_damaged_keyring_points_at_its_backup(self, keyring: Path) -> None:
        """A truncated keyring is refused with a message that says the backup opens and how to
        restore it; nothing is written; after the copy the old KEKs unwrap."""
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        v1 = provider.primary("identity")
        old = provider.wrap(v1, b"a" * 32, context=CTX)
        provider.primary("medical")
        keyring.write_bytes(keyring.read_bytes()[:100])
        with pytest.raises(KeyProviderError, match=r"not JSON\. Its backup keyring\.json\.bak"):
            LocalKeyProvider(keyring, master_key=MASTER)
        assert len(keyring.read_bytes()) == 100
        with pytest.raises(KeyProviderError, match="does not open with this master key either"):
            LocalKeyProvider(keyring, master_key=bytes(32))
        keyring.write_bytes((keyring.parent / "keyring.json.bak").read_bytes())
        assert LocalKeyProvider(keyring, master_key=MASTER).unwrap(v1, old, context=CTX) == (
            b"a" * 32
        )

    def test_missing_keyring_with_a_backup_is_not_recreated(self, keyring: Path) -> None:
        """A deleted keyring whose backup exists is not silently replaced by a new, empty one."""
        provider = LocalKeyProvider(keyring, master_key=MASTER)
        provider.primary("identity")
        keyring.unlink()
        with pytest.raises(KeyProviderError, match="missing but its backup"):
            LocalKeyProvider(keyring, master_key=MASTER)
        assert not keyring.exists()
