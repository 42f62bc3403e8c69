"""KEKs in AWS KMS.

Each KEK version of a domain is a symmetric KMS key, named by two aliases:
``alias/vaultkit-<domain>-v<N>`` for the version and ``alias/vaultkit-<domain>`` for the current one.
DEKs come from ``GenerateDataKey``, are unwrapped with ``Decrypt`` and rewrapped on rotation with
``ReEncrypt`` (server-side: the DEK does not travel). Every call carries the encryption context
``{"vaultkit:domain": <domain>, "vaultkit:wrap": <wrap context, base64>}``, so a wrapped DEK only
unwraps for its own domain, DEK id and purpose, and IAM policies can grant per domain with the
``kms:EncryptionContext:vaultkit:domain`` condition key (docs/providers.md has a policy).

Needs ``boto3`` (``pip install vaultkit[aws]``). Credentials come from boto3's usual chain
(environment, profile, instance role); none is ever logged or quoted, and the boto3 client (which
holds them) is kept in an opaque :class:`~vaultkit._redact.Secret` holder so that ``vars()`` of the
provider, and the frames an error reporter captures, do not reach them. botocore logs request
parameters and response bodies at DEBUG level, which for KMS include data keys: the provider
installs a filter on botocore's loggers that drops those records.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from vaultkit._redact import Secret
from vaultkit.errors import ConfigurationError, DomainError, KeyNotFoundError, KeyProviderError
from vaultkit.keys._fork import PerProcess
from vaultkit.keys.provider import KeyRef, VersionDestruction

__all__ = ["AWSKMSKeyProvider"]

log = logging.getLogger("vaultkit.keys")

_VERSION_ALIAS: Final = re.compile(r"-v(\d+)$")
_REFUSED: Final = {
    "AccessDeniedException": "KMS refused {what} (check the IAM policy of these credentials)",
    "InvalidCiphertextException": (
        "wrapped data key did not unwrap under {key}: wrong key, wrong context or damaged key row"
    ),
    "IncorrectKeyException": "wrapped data key was not made with {key}",
    "DisabledException": "KMS key {key} is disabled (a retired KEK version?)",
    "KMSInvalidStateException": "KMS key {key} is not usable in its state (disabled, pending deletion?)",
    "NotFoundException": "KMS key or alias not found while {what}",
}
_TRANSIENT: Final = frozenset(
    {
        "ThrottlingException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "LimitExceededException",
    }
)


class _NoBodies(logging.Filter):
    """Drops botocore's DEBUG records that quote request parameters or response bodies: for KMS
    they hold data keys (``Plaintext`` of Encrypt and GenerateDataKey)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return True
        message = str(record.msg)
        return not (
            message.startswith(("Making request for", "Response body", "Request body"))
            or "params:" in message
        )


_FILTER: Final = _NoBodies()


def _silence_bodies() -> None:
    """Install the filter on the botocore loggers that log bodies (once; idempotent)."""
    for name in ("botocore.endpoint", "botocore.parsers", "botocore.hooks", "botocore.auth"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class AWSKMSKeyProvider:
    """KEKs in AWS KMS, one KMS key per domain and version.

    Args:
        region: the AWS region (default: boto3's configuration).
        endpoint_url: another endpoint (a VPC endpoint; or an emulator in tests).
        alias_prefix: aliases are ``<alias_prefix><domain>`` and ``<alias_prefix><domain>-v<N>``.
        create_keys: create the first key of a domain that has none (needs ``kms:CreateKey``,
            ``kms:CreateAlias``, ``kms:TagResource``). Off by default.
        profile: an AWS profile of its own (separate credentials for the medical domain).
        client: a ready ``boto3`` KMS client (then region, endpoint and retries are its own).
        max_attempts: attempts per call, with botocore's standard exponential backoff.
        timeout: connect and read timeout in seconds.
        deletion_window_days: the waiting period of :meth:`destroy_version`'s
            ``ScheduleKeyDeletion``, 7 to 30 days (KMS's bounds; 7, the shortest, by default).

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.3.0
       ``deletion_window_days`` and :meth:`destroy_version`.
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        alias_prefix: str = "alias/vaultkit-",
        create_keys: bool = False,
        profile: str | None = None,
        client: Any = None,
        max_attempts: int = 4,
        timeout: float = 5.0,
        deletion_window_days: int = 7,
    ) -> None:
        if not 7 <= deletion_window_days <= 30:
            raise ConfigurationError(
                f"deletion_window_days must be 7 to 30 (KMS's bounds), got {deletion_window_days}"
            )
        self.deletion_window_days = deletion_window_days
        factory: Callable[[], Any] | None = None
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:  # pragma: no cover - depends on the installation
                raise ConfigurationError(
                    "AWSKMSKeyProvider needs boto3: pip install 'vaultkit[aws]'"
                ) from None
            config = Config(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=timeout,
                read_timeout=timeout,
            )

            def factory() -> Any:
                session = boto3.session.Session(profile_name=profile) if profile else boto3
                return session.client(
                    "kms", region_name=region, endpoint_url=endpoint_url, config=config
                )

            client = factory()
        _silence_bodies()
        self.endpoint = endpoint_url or getattr(client.meta, "endpoint_url", "KMS")
        # The client (which holds the credentials) in an opaque holder; a forked child makes one
        # of its own, with connections of its own. A client the caller gave is theirs: kept.
        given: Secret[Any] = Secret(client)
        del client
        self._kms: PerProcess[Secret[Any]] = PerProcess(
            (lambda: Secret(factory())) if factory is not None else (lambda: given), value=given
        )
        self.alias_prefix = alias_prefix
        self.create_keys = create_keys
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AWSKMSKeyProvider(endpoint={self.endpoint!r}, alias_prefix={self.alias_prefix!r})"

    # -- calls ---------------------------------------------------------------------------------

    def _call(self, operation: str, what: str, key: str = "", **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return getattr(self._kms.get().reveal(), operation)(**kwargs)  # type: ignore[no-any-return]
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            template = _REFUSED.get(code)
            if template is None:
                again = " after retries" if code in _TRANSIENT else ""
                template = f"KMS refused {{what}}{again}: {code}"
            error = KeyNotFoundError if code == "NotFoundException" else KeyProviderError
            raise error(template.format(what=what, key=key or "the key")) from None
        except NoCredentialsError:
            raise KeyProviderError(
                f"no AWS credentials for {what} (check AWS_PROFILE, the AWS_* environment "
                "variables or the instance role)"
            ) from None
        except BotoCoreError as exc:
            raise KeyProviderError(
                f"could not reach KMS at {self.endpoint} for {what} ({type(exc).__name__}): check "
                "the region, the endpoint and the network"
            ) from None

    @staticmethod
    def _context(ref: KeyRef, context: bytes) -> dict[str, str]:
        return {"vaultkit:domain": ref.domain, "vaultkit:wrap": base64.b64encode(context).decode()}

    # -- keys ----------------------------------------------------------------------------------

    def _aliases(self, domain: str) -> dict[int | None, str]:
        """``{version: key ARN}`` and ``{None: current key ARN}`` from the domain's aliases."""
        base = f"{self.alias_prefix}{domain}"
        found: dict[int | None, str] = {}
        arn_prefix: str | None = None
        marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Limit": 100}
            if marker:
                kwargs["Marker"] = marker
            page = self._call("list_aliases", f"listing the aliases of {domain}", **kwargs)
            for alias in page.get("Aliases", []):
                name = alias.get("AliasName", "")
                target = alias.get("TargetKeyId")
                if target is None or not name.startswith(base):
                    continue
                if arn_prefix is None:
                    arn_prefix = str(alias["AliasArn"]).split(":alias/")[0] + ":key/"
                arn = target if target.startswith("arn:") else arn_prefix + target
                if name == base:
                    found[None] = arn
                else:
                    match = _VERSION_ALIAS.search(name[len(base) :])
                    if match and name == f"{base}-v{match.group(1)}":
                        found[int(match.group(1))] = arn
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                return found

    def _versions(self, domain: str) -> dict[int | None, str]:
        found = self._aliases(domain)
        if None in found:
            return found
        if not self.create_keys:
            raise DomainError(
                f"no KMS alias {self.alias_prefix}{domain}: create the domain's key and aliases "
                "(docs/providers.md) or pass create_keys=True"
            )
        with self._lock:
            found = self._aliases(domain)
            if None not in found:
                self._new_version(domain, 1)
                found = self._aliases(domain)
        return found

    def _new_version(self, domain: str, version: int) -> str:
        base = f"{self.alias_prefix}{domain}"
        metadata = self._call(
            "create_key",
            f"creating KEK v{version} of {domain}",
            Description=f"vaultkit KEK of domain {domain}, version {version}",
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            Tags=[
                {"TagKey": "vaultkit-domain", "TagValue": domain},
                {"TagKey": "vaultkit-version", "TagValue": str(version)},
            ],
        )["KeyMetadata"]
        arn = str(metadata["Arn"])
        self._call(
            "create_alias", "creating an alias", AliasName=f"{base}-v{version}", TargetKeyId=arn
        )
        if version == 1:
            self._call("create_alias", "creating an alias", AliasName=base, TargetKeyId=arn)
        else:
            self._call("update_alias", "moving the alias", AliasName=base, TargetKeyId=arn)
        log.info("created KMS key for %s v%d", domain, version)
        return arn

    def _ref_of(self, domain: str, found: dict[int | None, str]) -> KeyRef:
        current = found[None]
        version = next((v for v, arn in found.items() if v is not None and arn == current), None)
        if version is None:
            raise ConfigurationError(
                f"{self.alias_prefix}{domain} points at a key with no {self.alias_prefix}{domain}-vN "
                "alias: give every version its alias"
            )
        return KeyRef(domain, current, version)

    def primary(self, domain: str) -> KeyRef:
        """The key ``alias/vaultkit-<domain>`` points at, with its version."""
        return self._ref_of(domain, self._versions(domain))

    def versions(self, domain: str) -> Sequence[KeyRef]:
        """Every version that has an alias, oldest first (disabled keys included: KMS refuses them)."""
        found = self._versions(domain)
        return [
            KeyRef(domain, arn, v)
            for v, arn in sorted((v, a) for v, a in found.items() if v is not None)
        ]

    def rotate(self, domain: str) -> KeyRef:
        """A new KMS key as version N+1; ``alias/vaultkit-<domain>`` moves to it."""
        with self._lock:
            found = self._versions(domain)
            version = max(v for v in found if v is not None) + 1
            arn = self._new_version(domain, version)
        return KeyRef(domain, arn, version)

    def disable(self, domain: str, version: int) -> None:
        """Disable the KMS key of an old version (``DisableKey``; reversible in KMS)."""
        found = self._versions(domain)
        arn = found.get(version)
        if arn is None:
            raise KeyNotFoundError(f"no KEK v{version} for {domain}")
        if arn == found[None]:
            raise ConfigurationError(f"v{version} is the current KEK of {domain}; rotate first")
        self._call(
            "disable_key", f"disabling KEK v{version} of {domain}", KeyId=arn.rsplit("/", 1)[-1]
        )

    @property
    def destruction_delay(self) -> dt.timedelta:
        """The waiting period of ``ScheduleKeyDeletion``: ``deletion_window_days``.

        .. versionadded:: 0.3.0
        """
        return dt.timedelta(days=self.deletion_window_days)

    def destroy_version(self, ref: KeyRef) -> VersionDestruction:
        """Schedule the deletion of version ``ref``'s KMS key (``ScheduleKeyDeletion``).

        :class:`~vaultkit.keys.SupportsVersionDestruction`. Each version is a KMS key of its own,
        so one version can go without the others. KMS refuses the key from the call on (state
        ``PendingDeletion``: nothing wrapped under it decrypts) and deletes its material when
        the waiting period (``deletion_window_days``, 7 to 30 days) ends: ``final_at`` is then.
        Until then an administrator can still ``CancelKeyDeletion``; IAM can deny it. Its
        ``-vN`` alias is kept, so that a second call finds the key and answers with the same
        date. Needs ``kms:ScheduleKeyDeletion`` and ``kms:DescribeKey``.

        Raises:
            KeyProviderError: ``ref`` is the current version, or KMS refused.
            KeyNotFoundError: no ``-vN`` alias for ``ref``'s version points at ``ref.key_id``.

        .. versionadded:: 0.3.0
        """
        found = self._versions(ref.domain)
        arn = found.get(ref.version)
        if arn is None or arn != ref.key_id:
            raise KeyNotFoundError(f"no KEK v{ref.version} of {ref.domain} behind its alias")
        if arn == found[None]:
            raise KeyProviderError(
                f"v{ref.version} is the current KEK of {ref.domain}; rotate first"
            )
        key_id = arn.rsplit("/", 1)[-1]
        what = f"destroying KEK v{ref.version} of {ref.domain}"
        now = dt.datetime.now(dt.UTC)
        metadata = self._call("describe_key", what, KeyId=key_id)["KeyMetadata"]
        if metadata.get("KeyState") == "PendingDeletion" and metadata.get("DeletionDate"):
            when = metadata["DeletionDate"]
        else:
            when = self._call(
                "schedule_key_deletion",
                what,
                KeyId=key_id,
                PendingWindowInDays=self.deletion_window_days,
            ).get("DeletionDate")
            log.info("scheduled deletion of KMS key %s (%s v%d)", key_id, ref.domain, ref.version)
        if not isinstance(when, dt.datetime):  # an emulator may leave it out
            when = now + dt.timedelta(days=self.deletion_window_days)
        final_at = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        return VersionDestruction(
            ref, (ref.version,), now, final_at.astimezone(dt.UTC), "ScheduleKeyDeletion"
        )

    # -- wrapping --------------------------------------------------------------------------------

    def generate_data_key(self, ref: KeyRef, *, context: bytes) -> tuple[bytes, bytes]:
        """``GenerateDataKey`` (AES_256): the DEK and its wrapped form, bound to ``context``."""
        result = self._call(
            "generate_data_key",
            f"generating a data key under {ref.domain} v{ref.version}",
            key=ref.key_id,
            KeyId=ref.key_id,
            KeySpec="AES_256",
            EncryptionContext=self._context(ref, context),
        )
        return bytes(result["Plaintext"]), bytes(result["CiphertextBlob"])

    def wrap(self, ref: KeyRef, data_key: bytes, *, context: bytes) -> bytes:
        """``Encrypt`` a DEK under the version's key with the encryption context."""
        result = self._call(
            "encrypt",
            f"wrapping under {ref.domain} v{ref.version}",
            key=ref.key_id,
            KeyId=ref.key_id,
            Plaintext=data_key,
            EncryptionContext=self._context(ref, context),
        )
        return bytes(result["CiphertextBlob"])

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        """``Decrypt`` with the expected key id and encryption context."""
        result = self._call(
            "decrypt",
            f"unwrapping under {ref.domain} v{ref.version}",
            key=f"{ref.domain} v{ref.version}",
            CiphertextBlob=wrapped,
            KeyId=ref.key_id,
            EncryptionContext=self._context(ref, context),
        )
        return bytes(result["Plaintext"])

    def rewrap(self, old: KeyRef, new: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        """``ReEncrypt`` from the old version's key to the new one, inside KMS."""
        result = self._call(
            "re_encrypt",
            f"rewrapping {old.domain} v{old.version} -> v{new.version}",
            key=f"{old.domain} v{old.version}",
            CiphertextBlob=wrapped,
            SourceKeyId=old.key_id,
            SourceEncryptionContext=self._context(old, context),
            DestinationKeyId=new.key_id,
            DestinationEncryptionContext=self._context(new, context),
        )
        return bytes(result["CiphertextBlob"])
