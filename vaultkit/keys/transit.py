"""KEKs in the transit engine of HashiCorp Vault or OpenBao.

One transit key per domain (``vaultkit-<domain>``, type ``aes256-gcm96``, **derived**): every DEK is
wrapped under a key derived for its own wrap context (domain, DEK id, purpose), so a wrapped DEK
only unwraps with the context it was wrapped with, and ``rewrap`` works on it (OpenBao 2.7 cannot
rewrap ciphertexts made with ``associated_data``; derived keys with ``context`` it can).

A KEK version is a transit key version. ``rotate`` is transit's ``rotate``; the vault's
``rotate_kek`` then rewraps each key row server-side (``rewrap``): the DEK never travels. Versions
below the key's ``min_decryption_version`` are not offered and do not unwrap; raise it with
:meth:`VaultTransitKeyProvider.disable_below` once every key row is under a newer version.

Needs the ``hvac`` package (``pip install vaultkit[transit]``). The token comes from ``token=`` or
the environment (``VAULT_TOKEN`` or ``BAO_TOKEN``) and never appears in a message or log. It is
held in a :class:`~vaultkit._redact.Secret`, not by the hvac client, and sent as a header of each
request only, so that neither ``vars()`` of the provider nor a raising frame shows it.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Final

from vaultkit._redact import Secret
from vaultkit.errors import ConfigurationError, DomainError, KeyNotFoundError, KeyProviderError
from vaultkit.keys._fork import PerProcess
from vaultkit.keys._retry import Retry, Transient
from vaultkit.keys.provider import KeyRef, VersionDestruction

__all__ = ["VaultTransitKeyProvider"]

log = logging.getLogger("vaultkit.keys")

TOKEN_ENVS: Final = ("VAULT_TOKEN", "BAO_TOKEN")
_TRANSIENT_STATUS: Final = frozenset({412, 429, 500, 502, 503, 504})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class VaultTransitKeyProvider:
    """KEKs in a Vault or OpenBao transit engine; DEKs wrapped and unwrapped by the server.

    Args:
        url: the server, such as ``https://bao.internal:8200``.
        token: a token allowed to use the domain keys (default: ``VAULT_TOKEN`` / ``BAO_TOKEN``).
        mount_point: where the transit engine is mounted.
        key_prefix: transit key names are ``<key_prefix><domain>``.
        create_keys: create a domain's transit key when it does not exist (needs the ``create``
            right on ``<mount>/keys/<name>``). Off by default: keys are made by the operator.
        namespace: a Vault Enterprise / OpenBao namespace.
        verify: TLS verification (``True``, ``False`` or a CA bundle path).
        timeout: seconds per request.
        retry: retries of transient failures (connection errors, 5xx, 429).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        mount_point: str = "transit",
        key_prefix: str = "vaultkit-",
        create_keys: bool = False,
        namespace: str | None = None,
        verify: bool | str = True,
        timeout: float = 5.0,
        retry: Retry | None = None,
    ) -> None:
        try:
            import hvac
        except ImportError:  # pragma: no cover - depends on the installation
            raise ConfigurationError(
                "VaultTransitKeyProvider needs hvac: pip install 'vaultkit[transit]'"
            ) from None
        # Into a Secret at once; no attribute and no raising frame holds the token itself.
        self._token: Secret[str] = Secret(
            token
            if token is not None
            else next((os.environ[name] for name in TOKEN_ENVS if os.environ.get(name)), "")
        )
        del token
        if not self._token.reveal():
            raise ConfigurationError(
                f"no token for the transit server at {url}: give token= or set "
                + " or ".join(TOKEN_ENVS)
            )
        self.url = url
        self.mount_point = mount_point.strip("/")
        self.key_prefix = key_prefix
        self.create_keys = create_keys
        self.retry = retry or Retry()
        # The raw adapter hands back responses as they are: their errors are read here, because
        # hvac's own exceptions quote whole response bodies (a batch decrypt's includes DEKs).
        # token="" (not None, which makes hvac read VAULT_TOKEN itself): the client holds none.
        # A forked child makes a client of its own: never the parent's pooled connections.
        self._client = PerProcess(
            lambda: hvac.Client(
                url=url,
                token="",
                namespace=namespace,
                verify=verify,
                timeout=timeout,
                adapter=hvac.adapters.RawAdapter,
            )
        )
        self._client.get()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VaultTransitKeyProvider(url={self.url!r}, mount_point={self.mount_point!r})"

    # -- requests -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, what: str, body: Any = None) -> dict[str, Any]:
        """One API call with retries; errors are ours, never hvac's (whose text quotes bodies).

        ``body`` may be a :class:`Secret` (a wrap request carries a DEK): it is revealed only in
        the call that sends it.
        """
        url = f"/v1/{self.mount_point}/{path}"

        def attempt() -> dict[str, Any]:
            status, payload = self._send(method, url, body)
            if status in _TRANSIENT_STATUS:
                raise Transient(f"HTTP {status}")
            if 200 <= status < 300:
                return payload if isinstance(payload, dict) else {}
            raise _status_error(status, _errors(payload), what)

        try:
            return self.retry.call(f"transit {what}", attempt)
        except Transient as failure:
            reason = failure.reason
        raise KeyProviderError(
            f"could not reach the transit server at {self.url} for {what} "
            f"({reason}, {self.retry.attempts} attempts): check the address, the "
            "network and that the server is up and unsealed"
        )

    def _send(self, method: str, url: str, body: Any) -> tuple[int, Any]:
        """Send one request; ``(status, parsed JSON body or None)``. No response object outlives
        this frame (its request headers hold the token)."""
        import requests

        try:
            response = self._client.get().adapter.request(
                method,
                url,
                json=body.reveal() if isinstance(body, Secret) else body,
                headers={"X-Vault-Token": self._token.reveal()},
                raise_exception=False,
            )
        except requests.exceptions.RequestException as exc:
            raise Transient(type(exc).__name__) from None
        status = int(response.status_code)
        try:
            payload = response.json() if response.content else {}
        except ValueError:
            payload = None
        del response
        return status, payload

    # -- keys -----------------------------------------------------------------------------------

    def _name(self, domain: str) -> str:
        return f"{self.key_prefix}{domain}"

    def _key(self, domain: str) -> dict[str, Any]:
        name = self._name(domain)
        try:
            return self._request("GET", f"keys/{name}", f"reading key {name}")["data"]  # type: ignore[no-any-return]
        except KeyNotFoundError:
            if not self.create_keys:
                raise DomainError(
                    f"transit key {name} does not exist on {self.url} (create it, derived, "
                    "type aes256-gcm96, or pass create_keys=True)"
                ) from None
        with self._lock:
            self._request(
                "POST",
                f"keys/{name}",
                f"creating key {name}",
                {"type": "aes256-gcm96", "derived": True, "exportable": False},
            )
            log.info("created transit key %s", name)
        return self._request("GET", f"keys/{name}", f"reading key {name}")["data"]  # type: ignore[no-any-return]

    def _ref(self, domain: str, version: int) -> KeyRef:
        return KeyRef(domain, self._name(domain), version)

    def primary(self, domain: str) -> KeyRef:
        """The latest transit key version of ``domain``."""
        info = self._key(domain)
        if not info.get("derived"):
            raise ConfigurationError(
                f"transit key {self._name(domain)} is not derived; vaultkit binds each wrapped DEK "
                "to its context and needs derived=true"
            )
        return self._ref(domain, int(info["latest_version"]))

    def versions(self, domain: str) -> Sequence[KeyRef]:
        """Versions that can still decrypt (from ``min_decryption_version``), oldest first."""
        info = self._key(domain)
        low = int(info.get("min_decryption_version", 1))
        return [self._ref(domain, int(v)) for v in sorted(info["keys"], key=int) if int(v) >= low]

    def rotate(self, domain: str) -> KeyRef:
        """Transit ``rotate``: a new key version, primary from now on."""
        name = self._name(domain)
        self._key(domain)
        self._request("POST", f"keys/{name}/rotate", f"rotating key {name}")
        ref = self.primary(domain)
        log.info("rotated transit key %s to v%d", name, ref.version)
        return ref

    def disable_below(self, domain: str, version: int) -> None:
        """Set ``min_decryption_version``: versions below ``version`` no longer decrypt."""
        name = self._name(domain)
        self._request(
            "POST",
            f"keys/{name}/config",
            f"configuring key {name}",
            {"min_decryption_version": int(version)},
        )

    @property
    def destruction_delay(self) -> dt.timedelta:
        """Zero: :meth:`destroy_version` destroys at once.

        .. versionadded:: 0.3.0
        """
        return dt.timedelta(0)

    def destroy_version(self, ref: KeyRef) -> VersionDestruction:
        """Delete the key material of version ``ref`` and of every older version from the server.

        :class:`~vaultkit.keys.SupportsVersionDestruction`. Transit keeps a key's versions as one
        ring that can only be cut from below: this raises ``min_decryption_version`` (and
        ``min_encryption_version``) to ``ref.version + 1``, then ``trim`` s the ring with
        ``min_available_version = ref.version + 1``, which deletes the older versions' material
        from the server's storage for good. So ``VersionDestruction.versions`` lists every
        version up to ``ref.version``; ``final_at`` is now. A snapshot of the server's storage
        (Raft snapshot, storage backup) made before still holds them. The token needs the
        ``update`` right on ``<mount>/keys/<name>/config`` and ``<mount>/keys/<name>/trim``.

        Raises:
            KeyProviderError: ``ref`` is the latest version, or the server refused.
            KeyNotFoundError: ``ref`` names a version above the latest.

        .. versionadded:: 0.3.0
        """
        name = self._check(ref)
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            info = self._key(ref.domain)
            latest = int(info["latest_version"])
            trimmed_below = int(info.get("min_available_version") or 0)
            if ref.version == latest:
                raise KeyProviderError(
                    f"v{ref.version} is the current version of transit key {name}; rotate first"
                )
            if not 1 <= ref.version < latest:
                raise KeyNotFoundError(f"transit key {name} has no version {ref.version}")
            floor = ref.version + 1
            destroyed = tuple(range(max(trimmed_below, 1), floor))
            if floor > trimmed_below:
                config = {
                    "min_decryption_version": max(
                        floor, int(info.get("min_decryption_version") or 0)
                    ),
                    "min_encryption_version": max(
                        floor, int(info.get("min_encryption_version") or 0)
                    ),
                }
                self._request("POST", f"keys/{name}/config", f"configuring key {name}", config)
                self._request(
                    "POST",
                    f"keys/{name}/trim",
                    f"trimming key {name}",
                    {"min_available_version": floor},
                )
                log.info("trimmed transit key %s below v%d", name, floor)
        return VersionDestruction(ref, destroyed or (ref.version,), now, now, "transit trim")

    # -- wrapping ----------------------------------------------------------------------------------

    def _check(self, ref: KeyRef) -> str:
        name = self._name(ref.domain)
        if ref.key_id != name:
            raise KeyNotFoundError(f"{ref.key_id} is not this provider's key for {ref.domain}")
        return name

    def wrap(self, ref: KeyRef, data_key: bytes, *, context: bytes) -> bytes:
        """Transit ``encrypt`` under version ``ref.version``, derived for ``context``."""
        name = self._check(ref)
        data = self._request(
            "POST",
            f"encrypt/{name}",
            f"wrapping under {name} v{ref.version}",
            Secret(
                {"plaintext": _b64(data_key), "context": _b64(context), "key_version": ref.version}
            ),
        )["data"]
        return str(data["ciphertext"]).encode("ascii")

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        """Transit ``decrypt``; fails for another context, key or version."""
        return self.unwrap_many([(ref, wrapped, context)])[0]

    def unwrap_many(self, items: Sequence[tuple[KeyRef, bytes, bytes]]) -> list[bytes]:
        """Unwrap several DEKs with one request per transit key (``batch_input``)."""
        results: list[bytes | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, (ref, wrapped, _context) in enumerate(items):
            name = self._check(ref)
            if not wrapped.startswith(f"vault:v{ref.version}:".encode()):
                raise KeyProviderError(
                    f"wrapped data key is not a {name} v{ref.version} ciphertext (damaged key row?)"
                )
            groups.setdefault(name, []).append(i)
        for name, indexes in groups.items():
            try:
                failure = self._unwrap_group(name, indexes, items, results)
            except BaseException:
                results[:] = []  # no DEK unwrapped so far stays in a frame that raises
                raise
            if failure is not None:
                results[:] = []
                raise KeyProviderError(failure)
        return [r for r in results if r is not None]

    def _unwrap_group(
        self,
        name: str,
        indexes: list[int],
        items: Sequence[tuple[KeyRef, bytes, bytes]],
        results: list[bytes | None],
    ) -> str | None:
        """Unwrap one transit key's items into ``results``; the failure message, if any."""
        batch = [
            {"ciphertext": items[i][1].decode("ascii"), "context": _b64(items[i][2])}
            for i in indexes
        ]
        what = f"unwrapping {len(batch)} data key(s) under {name}"
        data = self._batch("POST", f"decrypt/{name}", what, batch)
        for i, entry in zip(indexes, data, strict=True):
            if entry.get("error") or "plaintext" not in entry:
                return (
                    f"wrapped data key did not unwrap under {name} v{items[i][0].version}: "
                    f"{_safe(entry.get('error', 'no plaintext'))} (wrong context, version "
                    "below min_decryption_version, or damaged key row)"
                )
            results[i] = base64.b64decode(entry["plaintext"])
        return None

    def _batch(self, method: str, path: str, what: str, batch: list[dict[str, Any]]) -> Any:
        """A batch call whose partial failures come back as HTTP 400 with per-item errors."""
        try:
            return self._request(method, path, what, {"batch_input": batch})["data"][
                "batch_results"
            ]
        except _BatchError as failed:
            return failed.results

    def rewrap(self, old: KeyRef, new: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        """Transit ``rewrap`` to version ``new.version`` on the server: the DEK never travels."""
        name = self._check(new)
        if self._check(old) != name:
            raise KeyProviderError("transit rewrap stays within one key")
        data = self._request(
            "POST",
            f"rewrap/{name}",
            f"rewrapping under {name} v{new.version}",
            {
                "ciphertext": wrapped.decode("ascii"),
                "context": _b64(context),
                "key_version": new.version,
            },
        )["data"]
        return str(data["ciphertext"]).encode("ascii")


class _BatchError(KeyProviderError):
    def __init__(self, results: list[dict[str, Any]]) -> None:
        super().__init__("batch request partly failed")
        self.results = results


def _errors(body: Any) -> list[str]:
    """The ``errors`` of a refused request's JSON body; a partly failed batch raises instead."""
    if isinstance(body, dict):
        batch = (body.get("data") or {}).get("batch_results")
        if isinstance(batch, list):
            raise _BatchError(batch)
        errors = body.get("errors")
        if isinstance(errors, list):
            return [str(e) for e in errors]
    return []


def _safe(text: Any) -> str:
    """A server's error text, kept short and printable (it never holds key material)."""
    return "".join(c for c in str(text)[:200] if c.isprintable())


def _status_error(status: int, errors: Sequence[Any], what: str) -> KeyProviderError:
    detail = "; ".join(_safe(e) for e in errors) or f"HTTP {status}"
    if status == 404:
        return KeyNotFoundError(f"transit server: not found while {what} ({detail})")
    if status in (401, 403):
        return KeyProviderError(
            f"transit server refused {what}: {detail} (check the token and its policy)"
        )
    return KeyProviderError(f"transit server refused {what}: {detail}")
