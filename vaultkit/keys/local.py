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
(low-memory) parameters. Writes go to a temporary file created with mode 0600 and are moved into
place with ``os.replace``, under an advisory lock, so a crash leaves either the old or the new file.

Warning:
    The master key protects every KEK in the file. In production keep KEKs in an HSM or KMS.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
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

from vaultkit._redact import NoPickle
from vaultkit.errors import (
    ConfigurationError,
    DomainError,
    KeyNotFoundError,
    KeyProviderError,
    VaultkitDeprecationWarning,
)
from vaultkit.keys import _kekwrap
from vaultkit.keys.domains import check_domain_name
from vaultkit.keys.provider import KeyRef

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl; single-writer use only there.
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MASTER_KEY_ENV",
    "MASTER_PASSPHRASE_ENV",
    "RFC_9106_LOW_MEMORY",
    "LocalKeyProvider",
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


def _decode_master_key(text: str, *, source: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{source} is not valid base64") from None
    if len(raw) != 32:
        raise ConfigurationError(
            f"{source} must hold 32 random bytes in base64, got {len(raw)} bytes"
        )
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, *, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyProviderError(f"keyring file is damaged: {what} is missing")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyProviderError(f"keyring file is damaged: {what} is not base64") from None


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
        KeyProviderError: the file cannot be read, is damaged, or the master key is wrong. Nothing
            is written in that case.

    .. versionadded:: 0.1.0
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
        self._path = Path(path)
        self._lock = threading.RLock()
        self._domains: dict[str, dict[str, Any]] = {}
        self._create = create_keys
        if master_key is not None and passphrase is not None:
            raise ConfigurationError("give a master key or a passphrase, not both")
        if master_key is not None and (not isinstance(master_key, bytes) or len(master_key) != 32):
            raise ConfigurationError("master_key must be 32 bytes")
        if master_key is None and passphrase is None:
            env_key = os.environ.get(MASTER_KEY_ENV)
            env_pass = os.environ.get(MASTER_PASSPHRASE_ENV)
            if env_key:
                master_key = _decode_master_key(env_key, source=MASTER_KEY_ENV)
            elif env_pass:
                passphrase = env_pass
            else:
                raise ConfigurationError(
                    f"no master key for keyring {self._path.name}: set {MASTER_KEY_ENV} (32 random "
                    f"bytes in base64, see `vaultkit keys init`) or {MASTER_PASSPHRASE_ENV}"
                )
        with self._file_lock():
            if self._path.exists():
                self._load(master_key=master_key, passphrase=passphrase)
            elif create_keys:
                self._init_new(master_key, passphrase, kdf_parameters or dict(RFC_9106_LOW_MEMORY))
                self._save()
                log.info("created keyring %s (%s)", self._path, self._keyring_id)
            else:
                raise KeyProviderError(f"keyring file {self._path} does not exist")

    # -- file handling ------------------------------------------------------------------------

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
        self, master_key: bytes | None, passphrase: str | None, kdf: dict[str, int]
    ) -> None:
        self._keyring_id = os.urandom(16).hex()
        if master_key is not None:
            self._kdf: dict[str, Any] = {"kind": "raw"}
            self._master = AESGCM(master_key)
        else:
            if passphrase is None:  # unreachable: the constructor guarantees one of the two
                raise ConfigurationError("no master key or passphrase")
            self._kdf = {"kind": "argon2id", "salt": _b64(os.urandom(16)), **kdf}
            self._master = AESGCM(self._derive(passphrase, self._kdf))

    @staticmethod
    def _derive(passphrase: str, kdf: dict[str, Any]) -> bytes:
        try:
            return hash_secret_raw(
                secret=passphrase.encode("utf-8"),
                salt=_unb64(kdf.get("salt"), what="KDF salt"),
                time_cost=int(kdf["time_cost"]),
                memory_cost=int(kdf["memory_cost"]),
                parallelism=int(kdf["parallelism"]),
                hash_len=32,
                type=Type.ID,
            )
        except (KeyError, TypeError, ValueError):
            raise KeyProviderError("keyring file is damaged: KDF parameters are invalid") from None

    def _outer_aad(self) -> bytes:
        outer = {
            "vaultkit_keyring": FILE_FORMAT,
            "keyring_id": self._keyring_id,
            "master_key": self._kdf,
        }
        return json.dumps(outer, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def _load(self, *, master_key: bytes | None, passphrase: str | None) -> None:
        try:
            raw = self._path.read_bytes()
        except OSError as exc:
            raise KeyProviderError(f"cannot read keyring {self._path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise KeyProviderError(f"keyring file {self._path} is damaged: not JSON") from None
        if not isinstance(doc, dict) or "vaultkit_keyring" not in doc:
            raise KeyProviderError(f"{self._path} is not a vaultkit keyring file")
        version = doc["vaultkit_keyring"]
        if version != FILE_FORMAT:
            raise KeyProviderError(
                f"keyring {self._path} has file format {version!r}; this release reads format {FILE_FORMAT}"
            )
        kdf = doc.get("master_key")
        keyring_id = doc.get("keyring_id")
        if not isinstance(kdf, dict) or not isinstance(keyring_id, str):
            raise KeyProviderError(f"keyring file {self._path} is damaged: header fields missing")
        self._keyring_id = keyring_id
        self._kdf = kdf
        if kdf.get("kind") == "raw":
            if master_key is None:
                raise ConfigurationError(
                    f"keyring {self._path} is protected by a master key; set {MASTER_KEY_ENV}"
                )
            self._master = AESGCM(master_key)
        elif kdf.get("kind") == "argon2id":
            if passphrase is None:
                raise ConfigurationError(
                    f"keyring {self._path} is protected by a passphrase; set {MASTER_PASSPHRASE_ENV}"
                )
            self._master = AESGCM(self._derive(passphrase, kdf))
        else:
            raise KeyProviderError(f"keyring file {self._path} is damaged: unknown master key kind")
        self._domains = self._open_body(doc)

    def _open_body(self, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
        nonce = _unb64(doc.get("nonce"), what="nonce")
        body = _unb64(doc.get("ciphertext"), what="ciphertext")
        try:
            plain = self._master.decrypt(nonce, body, self._outer_aad())
        except (InvalidTag, ValueError):
            raise KeyProviderError(
                f"keyring {self._path} could not be opened: wrong master key or damaged file"
            ) from None
        try:
            inner = json.loads(plain)
            domains = inner["domains"]
            for entry in domains.values():
                entry["ciphers"] = {
                    int(v): AESGCM(_unb64(k["key"], what="KEK")) for v, k in entry["keys"].items()
                }
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyProviderError(
                f"keyring {self._path} is damaged: key table unreadable"
            ) from None
        return dict(domains)

    def _save(self) -> None:
        inner = {
            "domains": {
                name: {"primary": entry["primary"], "keys": entry["keys"]}
                for name, entry in self._domains.items()
            }
        }
        nonce = os.urandom(12)
        body = self._master.encrypt(
            nonce, json.dumps(inner, sort_keys=True).encode("utf-8"), self._outer_aad()
        )
        doc = {
            "vaultkit_keyring": FILE_FORMAT,
            "keyring_id": self._keyring_id,
            "master_key": self._kdf,
            "nonce": _b64(nonce),
            "ciphertext": _b64(body),
        }
        data = json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        tmp = self._path.with_name(f".{self._path.name}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise KeyProviderError(f"cannot write keyring {self._path}: {exc.strerror}") from None
        with contextlib.suppress(OSError):  # make the rename durable where the platform allows
            dir_fd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _reload(self) -> None:
        """Re-read the file (another process may have rotated a KEK), keeping the master key."""
        try:
            doc = json.loads(self._path.read_bytes())
        except (OSError, ValueError):
            raise KeyProviderError(f"cannot re-read keyring {self._path}") from None
        if doc.get("keyring_id") != self._keyring_id:
            raise KeyProviderError(f"keyring {self._path} was replaced by a different keyring")
        self._domains = self._open_body(doc)

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

    def _new_version(self, domain: str) -> None:
        entry = self._domains.setdefault(domain, {"primary": 0, "keys": {}, "ciphers": {}})
        version = max((int(v) for v in entry["keys"]), default=0) + 1
        key = os.urandom(32)
        entry["keys"][str(version)] = {
            "key": _b64(key),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        entry["ciphers"][version] = AESGCM(key)
        entry["primary"] = version

    def primary(self, domain: str) -> KeyRef:
        check_domain_name(domain)
        with self._lock:
            entry = self._domains.get(domain)
            if entry is None:
                if not self._create:
                    raise DomainError(
                        f"keyring {self._path.name} holds no KEK for domain {domain!r}"
                    )
                with self._file_lock():
                    self._reload()
                    if domain not in self._domains:
                        self._new_version(domain)
                        self._save()
                        log.info(
                            "created KEK for domain %s in keyring %s", domain, self._keyring_id
                        )
                entry = self._domains[domain]
            return KeyRef(domain, self._key_id(domain), int(entry["primary"]))

    def versions(self, domain: str) -> Sequence[KeyRef]:
        with self._lock:
            entry = self._domains.get(domain)
            if entry is None:
                raise DomainError(f"keyring {self._path.name} holds no KEK for domain {domain!r}")
            return [KeyRef(domain, self._key_id(domain), v) for v in sorted(entry["ciphers"])]

    def rotate(self, domain: str) -> KeyRef:
        check_domain_name(domain)
        with self._file_lock():
            self._reload()
            if domain not in self._domains and not self._create:
                raise DomainError(f"keyring {self._path.name} holds no KEK for domain {domain!r}")
            self._new_version(domain)
            self._save()
            ref = KeyRef(domain, self._key_id(domain), int(self._domains[domain]["primary"]))
        log.info("rotated KEK for domain %s to version %d", domain, ref.version)
        return ref

    def disable(self, domain: str, version: int) -> None:
        """Disable a KEK version: it no longer unwraps (its key material is erased from the file).

        Raises:
            KeyProviderError: the version is the primary one, or unknown.
        """
        with self._file_lock():
            self._reload()
            entry = self._domains.get(domain)
            if entry is None or str(version) not in entry["keys"]:
                raise KeyNotFoundError(f"domain {domain!r} has no KEK version {version}")
            if int(entry["primary"]) == version:
                raise KeyProviderError("the primary KEK version cannot be disabled; rotate first")
            del entry["keys"][str(version)]
            entry["ciphers"].pop(version, None)
            self._save()
        log.info("disabled KEK version %d of domain %s", version, domain)

    def _cipher(self, ref: KeyRef) -> AESGCM:
        if ref.key_id != self._key_id(ref.domain):
            raise KeyNotFoundError(f"KEK {ref.key_id} is not in keyring {self._keyring_id}")
        with self._lock:
            entry = self._domains.get(ref.domain)
            cipher = entry["ciphers"].get(ref.version) if entry else None
            if cipher is None:
                with self._file_lock():
                    self._reload()
                entry = self._domains.get(ref.domain)
                cipher = entry["ciphers"].get(ref.version) if entry else None
            if cipher is None:
                raise KeyNotFoundError(
                    f"KEK {ref.key_id} version {ref.version} is not in the keyring"
                )
            if not isinstance(cipher, AESGCM):
                raise KeyProviderError(f"keyring {self._path.name} is damaged")
            return cipher

    def __repr__(self) -> str:
        return f"LocalKeyProvider(path={str(self._path)!r}, keyring_id={self._keyring_id!r})"
