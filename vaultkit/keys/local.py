"""A keyring file holding versioned KEKs, encrypted under a master key.

This is the embedded default for development, tests and small deployments. The file is JSON::

    {
      "vaultkit_keyring": 1,                     # file format version
      "keyring_id": "<32 hex digits>",           # random; part of every KEK id
      "master_key": {"kind": "raw"}              # or {"kind": "argon2id", "salt", "time_cost", ...}
      "nonce": "<base64>",
      "ciphertext": "<base64>"                   # AES-256-GCM of the KEK table under the master key
    }

Every field outside ``ciphertext`` is bound to it as associated data, so editing the KDF
parameters or the id breaks authentication rather than silently changing keys. The master key is
32 random bytes given in base64 (environment variable ``VAULTKIT_MASTER_KEY``), or derived from a
passphrase (``VAULTKIT_MASTER_PASSPHRASE``) with argon2id at RFC 9106's second recommended
(low-memory) parameters.

Every change is written in full to a temporary file (mode 0600), synced, read back and
authenticated under the master key before ``os.replace`` moves it into place, under an advisory
lock; the previous file is kept as ``<keyring>.bak``. A full disk, a file-size limit or a crash
leaves the old or the new file, never a truncated one, and a change that could not be written is
not adopted in memory either. docs/keyring.md says how to recover from the backup.

Warning:
    The master key protects every KEK in the file. In production keep KEKs in an HSM or KMS.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit._files import write_atomic
from vaultkit._redact import NoPickle, Secret
from vaultkit.errors import (
    ConfigurationError,
    DomainError,
    KeyNotFoundError,
    KeyProviderError,
    VaultkitDeprecationWarning,
)
from vaultkit.keys import _kekwrap
from vaultkit.keys.domains import check_domain_name
from vaultkit.keys.provider import KeyRef, VersionDestruction

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl; single-writer use only there.
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MASTER_KEY_ENV",
    "MASTER_PASSPHRASE_ENV",
    "RFC_9106_LOW_MEMORY",
    "LocalKeyProvider",
    "decode_master_key",
    "generate_master_key",
]

log = logging.getLogger("vaultkit.keys.local")

MASTER_KEY_ENV: Final = "VAULTKIT_MASTER_KEY"
MASTER_PASSPHRASE_ENV: Final = "VAULTKIT_MASTER_PASSPHRASE"  # noqa: S105 - a variable name
FILE_FORMAT: Final = 1
#: argon2id parameters from RFC 9106, section 4, second recommended option.
RFC_9106_LOW_MEMORY: Final = {"time_cost": 3, "memory_cost": 65536, "parallelism": 4}  # 64 MiB
_OUTER_FIELDS: Final = ("vaultkit_keyring", "keyring_id", "master_key")


def generate_master_key() -> str:
    """Return a fresh master key: 32 random bytes in base64, for ``VAULTKIT_MASTER_KEY``."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def _b64_or_none(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_master_key(text: str, *, source: str) -> bytes:
    """Return the 32 bytes of a master key given in base64 (as ``VAULTKIT_MASTER_KEY`` holds it).

    Args:
        text: the base64 text.
        source: where the text came from (an environment variable's name), for the message.

    Raises:
        ConfigurationError: the text is not base64 or does not hold 32 bytes. The message names
            ``source`` and the size, never the text.

    .. versionadded:: 0.1.0
    """
    raw = _b64_or_none(text)
    del text  # a malformed master key is still a secret: not in the frame that raises
    if raw is None:
        raise ConfigurationError(f"{source} is not valid base64")
    size = len(raw)
    if size != 32:
        del raw
        raise ConfigurationError(f"{source} must hold 32 random bytes in base64, got {size} bytes")
    return raw


#: The old, private name; kept for one release (0.2 removes it).
_decode_master_key = decode_master_key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, *, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyProviderError(f"keyring file is damaged: {what} is missing")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyProviderError(f"keyring file is damaged: {what} is not base64") from None


class _Domain(NoPickle):
    """One domain's KEK versions. Slotted, so ``vars()`` has nothing to show; the key material is
    inside a :class:`Secret` and the ciphers are opaque ``AESGCM`` objects."""

    __slots__ = ("ciphers", "material", "primary")

    def __init__(
        self, primary: int, material: Secret[dict[str, dict[str, str]]], ciphers: dict[int, AESGCM]
    ) -> None:
        self.primary = primary
        self.material = material
        self.ciphers = ciphers

    def with_version(self, version: int, key: bytes, created_at: str) -> _Domain:
        material = dict(self.material.reveal())
        material[str(version)] = {"key": _b64(key), "created_at": created_at}
        return _Domain(version, Secret(material), {**self.ciphers, version: AESGCM(key)})

    def without_version(self, version: int) -> _Domain:
        material = {v: k for v, k in self.material.reveal().items() if v != str(version)}
        ciphers = {v: c for v, c in self.ciphers.items() if v != version}
        return _Domain(self.primary, Secret(material), ciphers)

    def __repr__(self) -> str:
        return f"_Domain(primary={self.primary}, versions={sorted(self.ciphers)})"


_Table = dict[str, _Domain]


def _open_table(master: AESGCM, nonce: bytes, body: bytes, aad: bytes) -> _Table | str:
    """Decrypt and parse the KEK table; on failure the reason ("auth" or "table"), never raising.

    The decrypted table exists only in this frame, which has returned before anyone raises.
    """
    try:
        plain = master.decrypt(nonce, body, aad)
    except (InvalidTag, ValueError):
        return "auth"
    try:
        table: _Table = {}
        for name, entry in json.loads(plain)["domains"].items():
            material = {
                str(int(v)): {"key": str(k["key"]), "created_at": str(k.get("created_at", ""))}
                for v, k in entry["keys"].items()
            }
            ciphers = {int(v): AESGCM(_strict_b64(k["key"])) for v, k in material.items()}
            table[str(name)] = _Domain(int(entry["primary"]), Secret(material), ciphers)
    except Exception:  # any malformation is "damaged"; the details would hold keys
        return "table"
    return table


def _strict_b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _seal_table(master: AESGCM, table: _Table, aad: bytes) -> tuple[bytes, bytes, bytes]:
    """``(nonce, ciphertext, SHA-256 of the plaintext)`` of the KEK table; only bytes leave here."""
    inner = {
        "domains": {
            name: {"primary": entry.primary, "keys": entry.material.reveal()}
            for name, entry in table.items()
        }
    }
    plain = json.dumps(inner, sort_keys=True).encode("utf-8")
    nonce = os.urandom(12)
    return nonce, master.encrypt(nonce, plain, aad), hashlib.sha256(plain).digest()


def _plaintext_digest(master: AESGCM, nonce: bytes, body: bytes, aad: bytes) -> bytes | None:
    try:
        return hashlib.sha256(master.decrypt(nonce, body, aad)).digest()
    except (InvalidTag, ValueError):
        return None


def _derive(passphrase: Secret[str], kdf: dict[str, Any]) -> bytes | None:
    """The argon2id master key, or ``None`` when the stored parameters are unusable."""
    try:
        salt = base64.b64decode(str(kdf.get("salt")), validate=True)
        return hash_secret_raw(
            secret=passphrase.reveal().encode("utf-8"),
            salt=salt,
            time_cost=int(kdf["time_cost"]),
            memory_cost=int(kdf["memory_cost"]),
            parallelism=int(kdf["parallelism"]),
            hash_len=32,
            type=Type.ID,
        )
    except Exception:  # argon2 errors would hold the passphrase in their frames
        return None


def _master_from_environment() -> tuple[Secret[bytes] | None, Secret[str] | None]:
    # The environment's values go straight into Secret wrappers: no frame binds them by name.
    if os.environ.get(MASTER_KEY_ENV):
        return Secret(_decode_master_key(os.environ[MASTER_KEY_ENV], source=MASTER_KEY_ENV)), None
    if os.environ.get(MASTER_PASSPHRASE_ENV):
        return None, Secret(os.environ[MASTER_PASSPHRASE_ENV])
    return None, None


def _aad(keyring_id: str, kdf: dict[str, Any]) -> bytes:
    outer = {"vaultkit_keyring": FILE_FORMAT, "keyring_id": keyring_id, "master_key": kdf}
    return json.dumps(outer, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _header(raw: bytes) -> dict[str, Any] | str:
    """The parsed document with its header fields checked, or what is wrong with it."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "not JSON"
    if not isinstance(doc, dict) or "vaultkit_keyring" not in doc:
        return "not a vaultkit keyring file"
    if doc["vaultkit_keyring"] == FILE_FORMAT and (
        not isinstance(doc.get("master_key"), dict) or not isinstance(doc.get("keyring_id"), str)
    ):
        return "header fields missing"
    return doc


def _sealed_parts(doc: dict[str, Any]) -> tuple[bytes, bytes]:
    return _unb64(doc.get("nonce"), what="nonce"), _unb64(doc.get("ciphertext"), what="ciphertext")


def _master_for(
    kdf: dict[str, Any], key: Secret[bytes] | None, phrase: Secret[str] | None, path: Path
) -> AESGCM | None:
    """The master cipher for a file's ``master_key`` header; ``None`` for unusable KDF parameters."""
    if kdf.get("kind") == "raw":
        if key is None:
            raise ConfigurationError(
                f"keyring {path} is protected by a master key; set {MASTER_KEY_ENV}"
            )
        return AESGCM(key.reveal())
    if kdf.get("kind") == "argon2id":
        if phrase is None:
            raise ConfigurationError(
                f"keyring {path} is protected by a passphrase; set {MASTER_PASSPHRASE_ENV}"
            )
        derived = _derive(phrase, kdf)
        return None if derived is None else AESGCM(derived)
    raise KeyProviderError(f"keyring file {path} is damaged: unknown master key kind")


def _opens(path: Path, key: Secret[bytes] | None, phrase: Secret[str] | None) -> bool:
    """Whether the keyring file at ``path`` authenticates under this master key (read-only)."""
    try:
        doc = _header(path.read_bytes())
        if isinstance(doc, str) or doc["vaultkit_keyring"] != FILE_FORMAT:
            return False
        master = _master_for(doc["master_key"], key, phrase, path)
        if master is None:
            return False
        aad = _aad(doc["keyring_id"], doc["master_key"])
        return not isinstance(_open_table(master, *_sealed_parts(doc), aad), str)
    except (OSError, KeyProviderError, ConfigurationError):
        return False


class LocalKeyProvider(_kekwrap.AESGCMWrapping, NoPickle):
    """Key provider backed by a keyring file encrypted under a master key.

    Args:
        path: the keyring file. It is created on first use when ``create_keys`` is true.
        master_key: 32 raw bytes; else ``passphrase``; else the environment variables
            ``VAULTKIT_MASTER_KEY`` (base64) or ``VAULTKIT_MASTER_PASSPHRASE``.
        passphrase: a passphrase from which the master key is derived with argon2id.
        create_keys: create the file, and a KEK for each domain asked for, when missing (the
            default in code, for development, tests and the demo; a configuration file's
            ``type = "local"`` provider defaults to false). With ``create_keys=False`` a missing
            file raises :class:`KeyProviderError` and an unknown domain :class:`DomainError`.
        create: the former name of ``create_keys``; deprecated, removed in vaultkit 0.2.0.
        kdf_parameters: argon2id parameters for a new passphrase-protected file.

    Raises:
        ConfigurationError: no master key is available, or it is malformed.
        KeyProviderError: the file cannot be read, is damaged, or the master key is wrong (the
            message says whether the backup ``KEYRING.bak`` opens instead); the file is missing but
            its backup exists. Nothing is written in these cases.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       Every change keeps the previous file as ``KEYRING.bak`` and is verified before it replaces
       the keyring; no key material is held in plain instance attributes or raising frames.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        master_key: bytes | None = None,
        passphrase: str | None = None,
        create_keys: bool = True,
        create: bool | None = None,
        kdf_parameters: dict[str, int] | None = None,
    ) -> None:
        if create is not None:
            warnings.warn(
                "LocalKeyProvider(create=...) is now create_keys=..., the name every provider "
                "uses; create= will be removed in vaultkit 0.2.0",
                VaultkitDeprecationWarning,
                stacklevel=2,
            )
            create_keys = create
        # The secrets go into wrappers at once and the plain names are dropped, so that no frame
        # of this constructor holds them when an error is raised (reporters capture frame locals).
        key: Secret[bytes] | None = None if master_key is None else Secret(master_key)
        phrase: Secret[str] | None = None if passphrase is None else Secret(passphrase)
        del master_key, passphrase
        self._path = Path(path)
        self._lock = threading.RLock()
        self._domains: _Table = {}
        self._seen: tuple[int, int, int] | None = None  # the file read last, see _stale()
        self._create = create_keys
        if key is not None and phrase is not None:
            raise ConfigurationError("give a master key or a passphrase, not both")
        if key is not None and (not isinstance(key.reveal(), bytes) or len(key.reveal()) != 32):
            raise ConfigurationError("master_key must be 32 bytes")
        if key is None and phrase is None:
            key, phrase = _master_from_environment()
            if key is None and phrase is None:
                raise ConfigurationError(
                    f"no master key for keyring {self._path.name}: set {MASTER_KEY_ENV} (32 random "
                    f"bytes in base64, see `vaultkit keys init`) or {MASTER_PASSPHRASE_ENV}"
                )
        with self._file_lock():
            if self._path.exists():
                self._load(key, phrase)
            elif self._backup.exists():
                raise KeyProviderError(
                    f"keyring {self._path} is missing but its backup {self._backup.name} exists: "
                    f"copy {self._backup.name} to {self._path.name} to recover it, or remove the "
                    "backup to start a new keyring"
                )
            elif create_keys:
                self._init_new(key, phrase, kdf_parameters or dict(RFC_9106_LOW_MEMORY))
                self._save({})
                self._domains = {}
                self._seen = self._identity()
                log.info("created keyring %s (%s)", self._path, self._keyring_id)
            else:
                raise KeyProviderError(f"keyring file {self._path} does not exist")

    # -- file handling ------------------------------------------------------------------------

    @property
    def _backup(self) -> Path:
        return self._path.with_name(self._path.name + ".bak")

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        with self._lock:
            if fcntl is None:  # type: ignore[comparison-overlap, unused-ignore]
                yield  # type: ignore[unreachable, unused-ignore]
                return
            lock_path = self._path.with_name(self._path.name + ".lock")
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise KeyProviderError(
                    f"cannot lock keyring {self._path}: {exc.strerror}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _init_new(
        self, key: Secret[bytes] | None, phrase: Secret[str] | None, kdf: dict[str, int]
    ) -> None:
        self._keyring_id = os.urandom(16).hex()
        if key is not None:
            self._kdf: dict[str, Any] = {"kind": "raw"}
            self._master: Secret[AESGCM] = Secret(AESGCM(key.reveal()))
            return
        if phrase is None:  # unreachable: the constructor guarantees one of the two
            raise ConfigurationError("no master key or passphrase")
        self._kdf = {"kind": "argon2id", "salt": _b64(os.urandom(16)), **kdf}
        derived = _derive(phrase, self._kdf)
        if derived is None:
            raise ConfigurationError("kdf_parameters are invalid for argon2id")
        self._master = Secret(AESGCM(derived))
        del derived

    def _outer_aad(self) -> bytes:
        return _aad(self._keyring_id, self._kdf)

    def _load(self, key: Secret[bytes] | None, phrase: Secret[str] | None) -> None:
        seen = self._identity()
        try:
            raw = self._path.read_bytes()
        except OSError as exc:
            raise KeyProviderError(f"cannot read keyring {self._path}: {exc.strerror}") from None
        doc = _header(raw)
        if isinstance(doc, str):
            raise self._damaged(f"keyring file {self._path} is damaged: {doc}", key, phrase)
        version = doc["vaultkit_keyring"]
        if version != FILE_FORMAT:
            raise KeyProviderError(
                f"keyring {self._path} has file format {version!r}; this release reads format {FILE_FORMAT}"
            )
        self._keyring_id = doc["keyring_id"]
        self._kdf = doc["master_key"]
        master = _master_for(self._kdf, key, phrase, self._path)
        if master is None:
            raise self._damaged(
                f"keyring file {self._path} is damaged: KDF parameters are invalid", key, phrase
            )
        self._master = Secret(master)
        table = _open_table(master, *_sealed_parts(doc), self._outer_aad())
        if table == "auth":
            raise self._damaged(
                f"keyring {self._path} could not be opened: wrong master key or damaged file",
                key,
                phrase,
            )
        if isinstance(table, str):
            raise self._damaged(
                f"keyring {self._path} is damaged: key table unreadable", key, phrase
            )
        self._domains = table
        self._seen = seen

    def _damaged(
        self, problem: str, key: Secret[bytes] | None, phrase: Secret[str] | None
    ) -> KeyProviderError:
        """The error for an unreadable keyring, saying whether its backup opens instead.

        Recovery is left to the operator on purpose: the backup lacks the last change (a KEK
        version created then), so switching to it silently could strand DEKs wrapped since.
        """
        backup = self._backup
        if not backup.exists():
            return KeyProviderError(problem)
        if _opens(backup, key, phrase):
            return KeyProviderError(
                f"{problem}. Its backup {backup.name} (the keyring before its last change) opens "
                f"with this master key: move {self._path.name} aside and copy {backup.name} to "
                f"{self._path.name} to recover; a KEK version created by the last change is not in it"
            )
        return KeyProviderError(
            f"{problem} (its backup {backup.name} does not open with this master key either)"
        )

    def _save(self, table: _Table) -> None:
        """Write ``table`` as the new keyring; the old file becomes ``KEYRING.bak``.

        The new file is written in full, synced, read back, and authenticated under the master key
        (its plaintext must hash to what was sealed) before it replaces the keyring; the backup is
        replaced only then. On failure the keyring and the backup are as they were.
        """
        aad = self._outer_aad()
        nonce, body, digest = _seal_table(self._master.reveal(), table, aad)
        doc = {
            "vaultkit_keyring": FILE_FORMAT,
            "keyring_id": self._keyring_id,
            "master_key": self._kdf,
            "nonce": _b64(nonce),
            "ciphertext": _b64(body),
        }
        data = json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        master = self._master.reveal()

        def authenticates(written: bytes) -> bool:
            parsed = _header(written)
            if isinstance(parsed, str) or parsed["keyring_id"] != self._keyring_id:
                return False
            try:
                parts = _sealed_parts(parsed)
            except KeyProviderError:
                return False
            return _plaintext_digest(master, *parts, aad) == digest

        write_atomic(
            self._path,
            data,
            what="keyring",
            error=KeyProviderError,
            check=authenticates,
            backup=self._backup,
        )

    def _reload(self) -> None:
        """Re-read the file (another process may have rotated a KEK), keeping the master key."""
        seen = self._identity()
        try:
            raw = self._path.read_bytes()
        except OSError:
            raise KeyProviderError(f"cannot re-read keyring {self._path}") from None
        doc = _header(raw)
        if isinstance(doc, str):
            raise KeyProviderError(f"cannot re-read keyring {self._path}: {doc}")
        if doc["keyring_id"] != self._keyring_id:
            raise KeyProviderError(f"keyring {self._path} was replaced by a different keyring")
        table = _open_table(self._master.reveal(), *_sealed_parts(doc), self._outer_aad())
        if isinstance(table, str):
            raise KeyProviderError(
                f"keyring {self._path} could not be re-read: it no longer opens with this "
                "master key (damaged or replaced)"
            )
        self._domains = table
        self._seen = seen

    def _identity(self) -> tuple[int, int, int] | None:
        """(inode, mtime, size) of the keyring file: every write replaces it (a new inode)."""
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _stale(self) -> bool:
        """Whether the file changed since it was read last (another process or provider wrote).

        A file that cannot be stat()ed is not "changed": the keys in memory stay usable, as before.
        """
        now = self._identity()
        return now is not None and now != self._seen

    # -- KeyProvider --------------------------------------------------------------------------

    @property
    def keyring_id(self) -> str:
        """The keyring's random id, part of each KEK id (``local:<keyring id>:<domain>``)."""
        return self._keyring_id

    @property
    def path(self) -> Path:
        """The keyring file."""
        return self._path

    def _key_id(self, domain: str) -> str:
        return f"local:{self._keyring_id}:{domain}"

    def domains(self) -> list[str]:
        """Names of the domains this keyring holds KEKs for."""
        with self._lock:
            return sorted(self._domains)

    def _with_new_version(self, domain: str) -> _Table:
        """A copy of the key table with a new primary KEK version of ``domain``."""
        entry = self._domains.get(domain) or _Domain(0, Secret({}), {})
        version = max(entry.ciphers, default=0) + 1
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return {**self._domains, domain: entry.with_version(version, os.urandom(32), created)}

    def _commit(self, table: _Table) -> None:
        """Save ``table`` and only then adopt it: a failed write leaves the provider as it was."""
        self._save(table)
        self._domains = table
        self._seen = self._identity()

    def _refresh(self) -> None:
        """Re-read the file if another process (or provider) changed it since it was read."""
        if self._stale():
            with self._file_lock():
                self._reload()

    def primary(self, domain: str) -> KeyRef:
        check_domain_name(domain)
        with self._lock:
            # Another process may have rotated (and destroyed the old version): one stat() per
            # call, so that new DEKs are never wrapped under a version that is gone.
            self._refresh()
            entry = self._domains.get(domain)
            if entry is None:
                if not self._create:
                    raise DomainError(
                        f"keyring {self._path.name} holds no KEK for domain {domain!r}"
                    )
                with self._file_lock():
                    self._reload()
                    if domain not in self._domains:
                        self._commit(self._with_new_version(domain))
                        log.info(
                            "created KEK for domain %s in keyring %s", domain, self._keyring_id
                        )
                entry = self._domains[domain]
            return KeyRef(domain, self._key_id(domain), entry.primary)

    def versions(self, domain: str) -> Sequence[KeyRef]:
        with self._lock:
            self._refresh()
            entry = self._domains.get(domain)
            if entry is None:
                raise DomainError(f"keyring {self._path.name} holds no KEK for domain {domain!r}")
            return [KeyRef(domain, self._key_id(domain), v) for v in sorted(entry.ciphers)]

    def rotate(self, domain: str) -> KeyRef:
        check_domain_name(domain)
        with self._file_lock():
            self._reload()
            if domain not in self._domains and not self._create:
                raise DomainError(f"keyring {self._path.name} holds no KEK for domain {domain!r}")
            self._commit(self._with_new_version(domain))
            ref = KeyRef(domain, self._key_id(domain), self._domains[domain].primary)
        log.info("rotated KEK for domain %s to version %d", domain, ref.version)
        return ref

    def disable(self, domain: str, version: int) -> None:
        """Disable a KEK version: it no longer unwraps (its key material is erased from the file).

        The keyring is written twice, so that the backup (``KEYRING.bak``) lacks the version too.
        Old blocks of either file may survive on the disk itself, as with any file rewrite.

        Raises:
            KeyProviderError: the version is the primary one, or unknown.
        """
        if not self._erase_version(domain, version):
            raise KeyNotFoundError(f"domain {domain!r} has no KEK version {version}")

    @property
    def destruction_delay(self) -> dt.timedelta:
        """Zero: :meth:`destroy_version` destroys at once.

        .. versionadded:: 0.3.0
        """
        return dt.timedelta(0)

    def destroy_version(self, ref: KeyRef) -> VersionDestruction:
        """Destroy a KEK version (:class:`~vaultkit.keys.SupportsVersionDestruction`).

        The version's key material is removed from the keyring file and from its backup
        ``KEYRING.bak`` (the file is rewritten twice, atomically, under the file lock), so it is
        final at once: ``final_at`` is now. Copies of the keyring file made before (a backup of
        the host, old blocks on the disk) still hold it: keep the keyring out of long-lived
        backups, or use a provider whose key material never leaves it.

        Raises:
            KeyProviderError: ``ref`` is the primary version of its domain.
            KeyNotFoundError: ``ref`` is not of this keyring, or names a version it never had.

        .. versionadded:: 0.3.0
        """
        if ref.key_id != self._key_id(ref.domain):
            raise KeyNotFoundError(f"KEK {ref.key_id} is not in keyring {self._keyring_id}")
        now = dt.datetime.now(dt.UTC)
        self._erase_version(ref.domain, ref.version)
        return VersionDestruction(ref, (ref.version,), now, now, "keyring rewrite")

    def _erase_version(self, domain: str, version: int) -> bool:
        """Remove ``version`` from the file and its backup; False if it was already gone.

        Raises KeyProviderError for the primary and KeyNotFoundError for a version the domain
        never had (above the primary, or below 1).
        """
        with self._file_lock():
            self._reload()
            entry = self._domains.get(domain)
            if entry is None or not 1 <= version <= entry.primary:
                raise KeyNotFoundError(f"domain {domain!r} has no KEK version {version}")
            if entry.primary == version:
                raise KeyProviderError(
                    "the primary KEK version cannot be disabled or destroyed; rotate first"
                )
            if version not in entry.ciphers:
                return False
            remaining = {**self._domains, domain: entry.without_version(version)}
            self._commit(remaining)
            self._save(remaining)  # the backup now holds the same, verified, table
        log.info("erased KEK version %d of domain %s", version, domain)
        return True

    def _cipher(self, ref: KeyRef) -> AESGCM:
        if ref.key_id != self._key_id(ref.domain):
            raise KeyNotFoundError(f"KEK {ref.key_id} is not in keyring {self._keyring_id}")
        with self._lock:
            entry = self._domains.get(ref.domain)
            cipher = entry.ciphers.get(ref.version) if entry else None
            # A version another process (or provider) destroyed is dropped here at once: each
            # use of a KEK costs one stat() of the file, and a changed file is read again.
            if cipher is None or self._stale():
                with self._file_lock():
                    self._reload()
                entry = self._domains.get(ref.domain)
                cipher = entry.ciphers.get(ref.version) if entry else None
            if cipher is None:
                raise KeyNotFoundError(
                    f"KEK {ref.key_id} version {ref.version} is not in the keyring"
                )
            return cipher

    def __repr__(self) -> str:
        return f"LocalKeyProvider(path={str(self._path)!r}, keyring_id={self._keyring_id!r})"
