"""A key provider whose KEKs live in process memory only, for tests (:mod:`vaultkit.testing`).

Its KEKs vanish with the process, like tink-py's fake KMS. A wrapped DEK has the layout of the
local provider (:mod:`vaultkit.keys._kekwrap`). Import it from :mod:`vaultkit.testing`.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit._redact import NoPickle, Secret
from vaultkit.errors import DomainError, KeyNotFoundError, KeyProviderError
from vaultkit.keys import _kekwrap
from vaultkit.keys.domains import check_domain_name
from vaultkit.keys.provider import KeyRef, VersionDestruction

__all__ = ["InMemoryKeyProvider"]


class InMemoryKeyProvider(_kekwrap.AESGCMWrapping, NoPickle):
    """A key provider with KEKs in memory only. For tests; everything is lost with the process.

    Args:
        domains: domains to create KEKs for up front. With ``create=True`` (the default) a KEK is
            also created for any other domain on first use.
        create: whether unknown domains get a KEK on first use.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.3.0
       :meth:`destroy_version` (:class:`~vaultkit.keys.SupportsVersionDestruction`).
    """

    def __init__(self, domains: Sequence[str] = (), *, create: bool = True) -> None:
        self._id = os.urandom(8).hex()
        # In an opaque holder: vars() of the provider shows no KEK, also with a cryptography
        # release whose AESGCM keeps its key in a Python attribute.
        # A destroyed version leaves None in its place, so that version numbers stay list indexes.
        self._keks: Secret[dict[str, list[AESGCM | None]]] = Secret({})
        self._create = create
        self._lock = threading.Lock()
        for domain in domains:
            self.rotate(domain)

    def _key_id(self, domain: str) -> str:
        return f"memory:{self._id}:{domain}"

    def primary(self, domain: str) -> KeyRef:
        check_domain_name(domain)
        with self._lock:
            keks = self._keks.reveal()
            if domain not in keks:
                if not self._create:
                    raise DomainError(f"in-memory provider holds no KEK for domain {domain!r}")
                keks[domain] = [AESGCM(os.urandom(32))]
            return KeyRef(domain, self._key_id(domain), len(keks[domain]))

    def versions(self, domain: str) -> Sequence[KeyRef]:
        with self._lock:
            keks = self._keks.reveal()
            if domain not in keks:
                raise DomainError(f"in-memory provider holds no KEK for domain {domain!r}")
            return [
                KeyRef(domain, self._key_id(domain), v + 1)
                for v, kek in enumerate(keks[domain])
                if kek is not None
            ]

    def rotate(self, domain: str) -> KeyRef:
        check_domain_name(domain)
        with self._lock:
            versions = self._keks.reveal().setdefault(domain, [])
            versions.append(AESGCM(os.urandom(32)))
            return KeyRef(domain, self._key_id(domain), len(versions))

    @property
    def destruction_delay(self) -> dt.timedelta:
        """Zero: :meth:`destroy_version` destroys at once.

        .. versionadded:: 0.3.0
        """
        return dt.timedelta(0)

    def destroy_version(self, ref: KeyRef) -> VersionDestruction:
        """Drop the KEK of version ``ref`` from memory: nothing wrapped under it unwraps again.

        Raises:
            KeyProviderError: ``ref`` is the primary version.
            KeyNotFoundError: no such version.

        .. versionadded:: 0.3.0
        """
        with self._lock:
            keks = self._keks.reveal().get(ref.domain)
            if (
                ref.key_id != self._key_id(ref.domain)
                or not keks
                or not 1 <= ref.version <= len(keks)
            ):
                raise KeyNotFoundError(
                    f"KEK {ref.key_id} version {ref.version} is unknown to this provider"
                )
            if ref.version == len(keks):
                raise KeyProviderError(
                    f"KEK version {ref.version} is the primary of domain {ref.domain!r}; rotate first"
                )
            keks[ref.version - 1] = None
        now = dt.datetime.now(dt.UTC)
        return VersionDestruction(ref, (ref.version,), now, now, "memory")

    def _cipher(self, ref: KeyRef) -> AESGCM:
        keks = self._keks.reveal().get(ref.domain)
        if ref.key_id != self._key_id(ref.domain) or not keks or not 1 <= ref.version <= len(keks):
            raise KeyNotFoundError(
                f"KEK {ref.key_id} version {ref.version} is unknown to this provider"
            )
        kek = keks[ref.version - 1]
        if kek is None:
            raise KeyNotFoundError(f"KEK {ref.key_id} version {ref.version} was destroyed")
        return kek

    def __repr__(self) -> str:
        return f"InMemoryKeyProvider(domains={sorted(self._keks.reveal())!r})"
