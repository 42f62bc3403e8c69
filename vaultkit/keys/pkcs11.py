"""KEKs in a PKCS#11 token (an HSM; SoftHSM2 in tests).

Each KEK version is a non-extractable, sensitive AES-256 secret-key object on the token, labelled
``vaultkit:<domain>:v<N>``. DEKs are wrapped and unwrapped inside the token with ``CKM_AES_GCM``
(96-bit random IV, 128-bit tag, the wrap context as AAD), so the KEK never leaves the HSM.
A wrapped DEK is ``01 || IV (12) || ciphertext (32) || tag (16)``, the layout of the local
provider (:mod:`vaultkit.keys._kekwrap`).

Every PKCS#11 call goes through one lock per library: some modules (SoftHSM2 with python-pkcs11
among them) corrupt memory when called from several threads at once. The provider uses PyKCS11
(``pip install vaultkit[pkcs11]``). The PIN comes from ``pin=`` or an environment variable and
never appears in a message, a log, ``vars()`` of the provider or a raising frame. After ``fork()``
the child opens its own session.

PKCS#11 keeps the login state per application and token, not per session: once one session of the
process is logged in, ``C_Login`` on any other answers ``CKR_USER_ALREADY_LOGGED_IN`` without
looking at the PIN. So that a second provider with a wrong PIN is not let in on the first one's
login, each successful login records an HMAC of its PIN (under a random key of this process) for
that token, and a provider that finds the token already logged in must present the same PIN. A
token logged in by code outside vaultkit, whose PIN cannot be checked, is refused.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from vaultkit._redact import Secret
from vaultkit.errors import ConfigurationError, DomainError, KeyNotFoundError, KeyProviderError
from vaultkit.keys import _kekwrap
from vaultkit.keys._fork import PerProcess
from vaultkit.keys.provider import KeyRef, VersionDestruction

__all__ = ["PIN_ENV", "PKCS11KeyProvider"]

log = logging.getLogger("vaultkit.keys")

PIN_ENV: Final = "VAULTKIT_PKCS11_PIN"
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
#: (library, token) -> HMAC of the PIN of the login vaultkit made; guarded by the library's lock.
_LOGINS: dict[tuple[str, str], bytes] = {}
_PIN_KEY: Final = os.urandom(32)  # this process's key for those HMACs; never stored elsewhere

T = TypeVar("T")


def _library_lock(library: str) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(os.path.realpath(library), threading.RLock())


def _pin_tag(pin: Secret[str]) -> bytes:
    return hmac.digest(_PIN_KEY, pin.reveal().encode("utf-8"), hashlib.sha256)


def _login(session: Any, pin: Secret[str], error: type[Exception]) -> int | None:
    """``C_Login``; the CKR code on failure. PyKCS11's frames hold the PIN: they end here."""
    try:
        session.login(pin.reveal())
    except error as exc:
        return int(getattr(exc, "value", -1))
    return None


@dataclass(eq=False)
class _Token:
    """What one process holds of the token: the loaded module, a session, found key handles."""

    lib: Any
    session: Any = None
    key: tuple[str, str] = ("", "")  # (library, serial/label) of the login, for _LOGINS
    handles: dict[str, Any] = field(default_factory=dict)


class PKCS11KeyProvider:
    """KEKs as AES-256 key objects in a PKCS#11 token; wrapping happens inside the token.

    Args:
        library: the PKCS#11 module, such as ``/usr/lib/softhsm/libsofthsm2.so``.
        token_label: the token to use.
        pin: the user PIN (default: the environment variable named by ``pin_env``).
        pin_env: where to find the PIN when ``pin`` is not given.
        label_prefix: key objects are labelled ``<label_prefix><domain>:v<N>``.
        create_keys: generate a domain's first key object when it has none.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        library: str,
        *,
        token_label: str,
        pin: str | None = None,
        pin_env: str = PIN_ENV,
        label_prefix: str = "vaultkit:",
        create_keys: bool = True,
    ) -> None:
        try:
            import PyKCS11
        except ImportError:  # pragma: no cover - depends on the installation
            raise ConfigurationError(
                "PKCS11KeyProvider needs PyKCS11: pip install 'vaultkit[pkcs11]'"
            ) from None
        self._pk = PyKCS11
        self.library = library
        self.token_label = token_label
        self.label_prefix = label_prefix
        self.create_keys = create_keys
        # The PIN goes into a Secret at once: neither the instance dict nor a raising frame of
        # this constructor holds it (error reporters capture both).
        self._pin: Secret[str] = Secret(pin if pin is not None else os.environ.get(pin_env, ""))
        del pin
        if not self._pin.reveal():
            raise ConfigurationError(
                f"no PIN for PKCS#11 token {token_label!r}: give pin= or set {pin_env}"
            )
        self._lock = _library_lock(library)
        # A forked child loads the module again and opens a session of its own: the parent's
        # session and module state are not the child's (each process initialises the module).
        # The loader holds no reference to the provider: a cycle would leave the provider to the
        # cyclic garbage collector, which may then finalise its PyKCS11Lib while another thread's
        # PyKCS11Lib.load() holds PyKCS11's class lock (its __del__ takes that lock: a deadlock).
        load = functools.partial(_load, PyKCS11, library)
        with self._lock:
            self._token = PerProcess(load, value=load())

    def __repr__(self) -> str:
        return f"PKCS11KeyProvider(library={self.library!r}, token_label={self.token_label!r})"

    # -- session -----------------------------------------------------------------------------------

    def _open(self) -> Any:
        pk = self._pk
        state = self._token.get()
        if state.session is not None:
            return state.session
        lib = state.lib
        slot, serial = next(
            (
                (s, str(info.serialNumber).strip())
                for s in lib.getSlotList(tokenPresent=True)
                if (info := lib.getTokenInfo(s)).label.strip() == self.token_label
            ),
            (None, ""),
        )
        if slot is None:
            raise KeyProviderError(
                f"no PKCS#11 token labelled {self.token_label!r} in {self.library}: check the "
                "token label, and SOFTHSM2_CONF for SoftHSM2"
            )
        token = (os.path.realpath(self.library), f"{serial}/{self.token_label}")
        session = lib.openSession(slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION)
        code = _login(session, self._pin, pk.PyKCS11Error)
        if code is None:
            _LOGINS[token] = _pin_tag(self._pin)
        elif code == pk.CKR_USER_ALREADY_LOGGED_IN:
            # The token did not look at this PIN: compare it with the one that logged in.
            known = _LOGINS.get(token)
            if known is None or not hmac.compare_digest(known, _pin_tag(self._pin)):
                session.closeSession()
                raise KeyProviderError(
                    f"PKCS#11 login to token {self.token_label!r} refused: the token is already "
                    "logged in in this process "
                    + (
                        "by code outside vaultkit, so this provider's PIN cannot be checked"
                        if known is None
                        else "with another PIN than this provider's: check the PIN"
                    )
                )
        else:
            session.closeSession()
            raise KeyProviderError(
                f"PKCS#11 login to token {self.token_label!r} failed ({_ckr_name(pk, code)}): "
                "check the PIN"
            )
        state.key = token
        state.session = session
        return session

    def _do(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run one operation on the session, serialised with every other call to this library."""
        pk = self._pk
        with self._lock:
            for attempt in (1, 2):
                session = self._open()
                try:
                    return operation(session)
                except pk.PyKCS11Error as exc:
                    code = exc.value
                    if attempt == 1 and code in (
                        pk.CKR_SESSION_HANDLE_INVALID,
                        pk.CKR_SESSION_CLOSED,
                        pk.CKR_DEVICE_REMOVED,
                        pk.CKR_TOKEN_NOT_PRESENT,
                        pk.CKR_USER_NOT_LOGGED_IN,
                    ):
                        state = self._token.get()  # the token went away: a new session, once
                        state.session = None
                        state.handles = {}
                        continue
                    raise KeyProviderError(f"PKCS#11 {what} failed ({_ckr(exc)})") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- keys ----------------------------------------------------------------------------------

    def _label(self, domain: str, version: int) -> str:
        return f"{self.label_prefix}{domain}:v{version}"

    def _all_versions(self, domain: str) -> list[int]:
        pk = self._pk
        prefix = f"{self.label_prefix}{domain}:v"
        pattern = re.compile(re.escape(prefix) + r"(\d+)$")

        def find(session: Any) -> list[int]:
            found = []
            for handle in session.findObjects(
                [(pk.CKA_CLASS, pk.CKO_SECRET_KEY), (pk.CKA_KEY_TYPE, pk.CKK_AES)]
            ):
                label = session.getAttributeValue(handle, [pk.CKA_LABEL])[0]
                match = pattern.match(str(label or ""))
                if match:
                    found.append(int(match.group(1)))
            return sorted(found)

        return self._do(f"listing the keys of {domain}", find)

    def _generate(self, domain: str, version: int) -> None:
        pk = self._pk
        template = [
            (pk.CKA_CLASS, pk.CKO_SECRET_KEY),
            (pk.CKA_KEY_TYPE, pk.CKK_AES),
            (pk.CKA_VALUE_LEN, 32),
            (pk.CKA_LABEL, self._label(domain, version)),
            (pk.CKA_TOKEN, True),
            (pk.CKA_PRIVATE, True),
            (pk.CKA_SENSITIVE, True),
            (pk.CKA_EXTRACTABLE, False),
            (pk.CKA_ENCRYPT, True),
            (pk.CKA_DECRYPT, True),
        ]
        mechanism = pk.Mechanism(pk.CKM_AES_KEY_GEN, None)
        self._do(
            f"generating KEK v{version} of {domain}",
            lambda s: s.generateKey(template, mechanism),
        )
        log.info("generated PKCS#11 KEK %s", self._label(domain, version))

    def _handle(self, ref: KeyRef) -> Any:
        label = self._label(ref.domain, ref.version)
        if ref.key_id != label:
            raise KeyNotFoundError(f"{ref.key_id} is not this provider's key for {ref.domain}")
        handle = self._token.get().handles.get(label)
        if handle is not None:
            return handle
        pk = self._pk

        def find(session: Any) -> Any:
            found = session.findObjects([(pk.CKA_CLASS, pk.CKO_SECRET_KEY), (pk.CKA_LABEL, label)])
            return found[0] if found else None

        handle = self._do(f"finding {label}", find)
        if handle is None:
            raise KeyNotFoundError(f"no key object {label} on token {self.token_label!r}")
        self._token.get().handles[label] = handle
        return handle

    def primary(self, domain: str) -> KeyRef:
        """The highest version of the domain's key objects (created when none and allowed)."""
        versions = self._all_versions(domain)
        if not versions:
            if not self.create_keys:
                raise DomainError(f"token {self.token_label!r} holds no key for {domain}")
            with self._lock:
                versions = self._all_versions(domain)
                if not versions:
                    self._generate(domain, 1)
                    versions = [1]
        return KeyRef(domain, self._label(domain, versions[-1]), versions[-1])

    def versions(self, domain: str) -> Sequence[KeyRef]:
        """Every key object of the domain, oldest first."""
        return [KeyRef(domain, self._label(domain, v), v) for v in self._all_versions(domain)]

    def rotate(self, domain: str) -> KeyRef:
        """Generate key object v(N+1), primary from now on."""
        with self._lock:
            current = self.primary(domain).version
            self._generate(domain, current + 1)
        return KeyRef(domain, self._label(domain, current + 1), current + 1)

    def disable(self, domain: str, version: int) -> None:
        """Destroy the key object of an old version (irreversible): it can unwrap nothing more."""
        ref = KeyRef(domain, self._label(domain, version), version)
        if version == self.primary(domain).version:
            raise ConfigurationError(f"v{version} is the current KEK of {domain}; rotate first")
        handle = self._handle(ref)
        self._do(f"destroying {ref.key_id}", lambda s: s.destroyObject(handle))
        self._token.get().handles.pop(ref.key_id, None)

    @property
    def destruction_delay(self) -> dt.timedelta:
        """Zero: :meth:`destroy_version` destroys at once.

        .. versionadded:: 0.3.0
        """
        return dt.timedelta(0)

    def destroy_version(self, ref: KeyRef) -> VersionDestruction:
        """Destroy the key object of version ``ref`` on the token (``C_DestroyObject``).

        :class:`~vaultkit.keys.SupportsVersionDestruction`. The token erases the object at once,
        so ``final_at`` is now; a backup of the token (SoftHSM2's token directory, an HSM's
        backup blob) made before still holds it, and is the operator's to expire.

        Raises:
            KeyProviderError: ``ref`` is the primary version, or the token refused.
            KeyNotFoundError: ``ref`` is not this provider's label for its version, or names a
                version above the primary.

        .. versionadded:: 0.3.0
        """
        if ref.key_id != self._label(ref.domain, ref.version):
            raise KeyNotFoundError(f"{ref.key_id} is not this provider's key for {ref.domain}")
        now = dt.datetime.now(dt.UTC)
        with self._lock:  # no rotation between the check of the primary and the destruction
            versions = self._all_versions(ref.domain)
            primary = versions[-1] if versions else 0
            if ref.version == primary:
                raise KeyProviderError(
                    f"v{ref.version} is the current KEK of {ref.domain}; rotate first"
                )
            if not 1 <= ref.version < primary:
                raise KeyNotFoundError(f"no key object {ref.key_id} on token {self.token_label!r}")
            if ref.version in versions:
                handle = self._handle(ref)
                self._do(f"destroying {ref.key_id}", lambda s: s.destroyObject(handle))
                self._token.get().handles.pop(ref.key_id, None)
                log.info("destroyed PKCS#11 KEK %s", ref.key_id)
        return VersionDestruction(ref, (ref.version,), now, now, "C_DestroyObject")

    # -- wrapping ----------------------------------------------------------------------------------

    def wrap(self, ref: KeyRef, data_key: bytes, *, context: bytes) -> bytes:
        """AES-256-GCM inside the token, the context as AAD."""
        _kekwrap.check_data_key(data_key)
        handle = self._handle(ref)
        iv = os.urandom(_kekwrap.NONCE_SIZE)
        mechanism = self._pk.AES_GCM_Mechanism(iv, context, 128)
        sealed = self._do(
            f"wrapping under {ref.key_id}", lambda s: bytes(s.encrypt(handle, data_key, mechanism))
        )
        return _kekwrap.frame(iv, sealed)

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        """AES-256-GCM decryption inside the token; fails for another key or context."""
        iv, sealed = _kekwrap.split(wrapped, what=ref.key_id)
        handle = self._handle(ref)
        mechanism = self._pk.AES_GCM_Mechanism(iv, context, 128)
        try:
            return self._do(
                f"unwrapping under {ref.key_id}",
                lambda s: bytes(s.decrypt(handle, sealed, mechanism)),
            )
        except KeyProviderError:
            raise KeyProviderError(
                f"wrapped data key did not unwrap under {ref.key_id}: wrong KEK, wrong context "
                "or damaged key row"
            ) from None

    def close(self) -> None:
        """Log out and close the session."""
        with self._lock:
            state = self._token.current()  # never the parent's session, in a forked child
            if state is not None and state.session is not None:
                # Logging out ends the login of every session of this process on the token.
                _LOGINS.pop(state.key, None)
                try:
                    state.session.logout()
                    state.session.closeSession()
                except self._pk.PyKCS11Error:
                    pass
                state.session = None
                state.handles = {}


def _load(pk: Any, library: str) -> _Token:
    """Load the PKCS#11 module ``library`` for this process."""
    lib = pk.PyKCS11Lib()
    try:
        lib.load(library)
    except pk.PyKCS11Error as exc:
        failure = f"could not load the PKCS#11 module {library} ({exc}): check the path"
    else:
        return _Token(lib)
    del lib  # unloaded now, outside PyKCS11's lock, not by the garbage collector later
    raise KeyProviderError(failure)


def _ckr_name(pk: Any, code: int) -> str:
    name = pk.CKR.get(code)
    return name if isinstance(name, str) else f"error {code:#x}"


def _ckr(exc: Any) -> str:
    """The CKR_ name of a PyKCS11 error (never anything the caller passed in)."""
    text = str(exc)
    match = re.match(r"(CKR_[A-Z_]+)", text)
    return match.group(1) if match else f"error {getattr(exc, 'value', '?')}"
