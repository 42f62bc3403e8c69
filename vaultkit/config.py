"""Build a vault and its key providers from a TOML file and environment variables.

Operators describe which provider holds each domain's KEK, so that the medical domain can live in
its own HSM token or KMS account with credentials of its own::

    key_store = "postgresql+psycopg://vaultkit@db.internal/keys"

    [providers.keyring]
    type = "local"
    path = "/etc/vaultkit/keyring.json"      # master key: VAULTKIT_MASTER_KEY

    [providers.medical-hsm]
    type = "pkcs11"
    library = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "medical"
    pin_env = "MEDICAL_HSM_PIN"              # the PIN itself never goes in the file

    [domains.identity]
    provider = "keyring"

    [domains.medical]
    provider = "medical-hsm"
    restricted = true
    audited = true

    [domains.chat]                           # one key per hour, unreadable 72 h after its end
    provider = "keyring"
    dek_scope = "bucket"
    bucket = "PT1H"
    retention = "PT72H"

    [domains.contract]                       # one key per member, kept 5 years after the end
    provider = "keyring"
    dek_scope = "subject"
    retention = { duration = "P5Y", after = "relationship_end", kind = "no_less_than", ground = "..." }

Backups (docs/lifecycle.md): a ledger of erasures outside the database, replayed at start-up, and
the finality date receipts state (top-level keys, ISO 8601 durations of days and time)::

    erasure_ledger = "/mnt/ledger/erasures.jsonl"  # its directory must exist (a mounted disk)
    key_store_backup_retention = "P35D"            # backups of the key store kept 35 days
    shred_epoch_interval = "P7D"                   # vaultkit keys shred-epoch every week

``vault = Vault.from_config("vaultkit.toml")``; with no path, the file named by ``VAULTKIT_CONFIG``.
Environment variables ``VAULTKIT__<TABLE>__<KEY>`` (double underscores, any case) override or add
values: ``VAULTKIT__PROVIDERS__MEDICAL_HSM__TOKEN_LABEL=medical-2`` (``_`` in a name matches ``-``
or ``_``). Secrets are refused in the file and in these variables: give the *name* of the
variable that holds them (``pin_env``, ``token_env``, ``master_key_env``). No provider creates a
key unless its table says ``create_keys = true`` (the same key for every type; the default is
false). docs/providers.md has an example for each provider type.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vaultkit._redact import Secret
from vaultkit.errors import ConfigurationError, VaultkitDeprecationWarning
from vaultkit.keys.domains import KeyDomain, Retention, parse_duration
from vaultkit.keys.provider import KeyProvider

if TYPE_CHECKING:
    from vaultkit._vault import Vault

__all__ = [
    "CONFIG_ENV",
    "VaultParts",
    "load_config",
    "vault_from_config",
    "vault_options",
    "vault_parts",
]

CONFIG_ENV: Final = "VAULTKIT_CONFIG"
_PREFIX: Final = "VAULTKIT__"
#: Keys that would hold a secret: refused, with the name of the ``*_env`` key to use instead.
_SECRET_KEYS: Final = {
    "pin": "pin_env",
    "token": "token_env",
    "master_key": "master_key_env",
    "passphrase": "passphrase_env",
    "secret_access_key": "the AWS credential chain (profile or environment)",
    "aws_secret_access_key": "the AWS credential chain (profile or environment)",
    "password": "a *_env key",
}
_VAULT_KEYS: Final = {
    "key_store",
    "key_store_env",
    "default_provider",
    "cache_size",
    "cache_ttl",
    "key_check_interval",
    "dek_max_encryptions",
    "dek_max_age_days",
    "audit",
    "audit_env",
    "audit_domain",
    "erasure_ledger",
    "key_store_backup_retention",
    "shred_epoch_interval",
    "providers",
    "domains",
}
_DOMAIN_KEYS: Final = {
    "provider",
    "restricted",
    "audited",
    "on_denied",
    "encrypt_requires_grant",
    "dek_scope",
    "bucket",
    "retention",
}
_RETENTION_KEYS: Final = {"duration", "after", "kind", "ground"}


#: The environment, wrapped: its repr shows nothing, and a frame holding it holds no secret (error
#: reporters capture frame locals; ``os.environ``'s repr lists ``VAULTKIT_MASTER_KEY`` and PINs).
_Env = Secret[Mapping[str, str]]


def _wrap_env(env: Mapping[str, str] | _Env | None) -> _Env:
    if isinstance(env, Secret):
        return env
    return Secret(os.environ if env is None else env)


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _merge_env(config: dict[str, Any], env: _Env) -> None:
    # Names first, values only once a name is known not to hold a secret.
    for name in [n for n in env.reveal() if n.upper().startswith(_PREFIX)]:
        path = [part.lower() for part in name[len(_PREFIX) :].split("__") if part]
        if not path:
            continue
        _refuse_secret(path[-1], f"environment variable {name}")
        node = config
        for part in path[:-1]:
            match = next(
                (k for k in node if k.replace("-", "_").lower() == part.replace("-", "_")), part
            )
            child = node.setdefault(match, {})
            if not isinstance(child, dict):
                raise ConfigurationError(f"{name}: {match} is not a table")
            node = child
        node[path[-1]] = _env_value(env.reveal()[name])


def _refuse_secret(key: str, where: str) -> None:
    instead = _SECRET_KEYS.get(key.lower())
    if instead is not None:
        raise ConfigurationError(
            f"{where}: {key!r} would hold a secret; name the environment variable that holds it "
            f"with {instead} instead"
        )


def _check_secrets(node: Any, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_secret(key, where)
            _check_secrets(value, where)


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Read the TOML file (``path``, else ``$VAULTKIT_CONFIG``, else none) and apply the
    ``VAULTKIT__*`` variables of ``env`` (default ``os.environ``). Returns the merged tables."""
    environ = _wrap_env(env)
    del env  # no frame of this module binds the environment itself
    return _load(path, environ)


def _load(path: str | os.PathLike[str] | None, env: _Env) -> dict[str, Any]:
    config: dict[str, Any] = {}
    source = path if path is not None else env.reveal().get(CONFIG_ENV)
    if source:
        file = Path(source)
        try:
            with file.open("rb") as handle:
                config = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigurationError(f"no vaultkit configuration file at {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{file} is not valid TOML: {exc}") from None
        _check_secrets(config, str(file))
    _merge_env(config, env)
    unknown = set(config) - _VAULT_KEYS
    if unknown:
        raise ConfigurationError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    return config


def _secret_from_env(
    settings: dict[str, Any], key: str, default: str | None, env: _Env, what: str
) -> Secret[str] | None:
    """The secret in the variable named by ``<key>_env`` (popped from ``settings``), else by
    ``default``; None when neither names one. A named variable that is unset is an error."""
    variable = settings.pop(f"{key}_env", default)
    if variable is None:
        return None
    value = Secret(env.reveal().get(str(variable)) or "")
    if not value.reveal():
        raise ConfigurationError(f"{what}: environment variable {variable} is not set")
    return value


def _create_keys(settings: dict[str, Any], what: str) -> bool:
    """``create_keys`` of a provider table (popped): false unless the file says true.

    A configuration file describes a deployment, and a deployment's keys are made on purpose
    (``vaultkit keys init``, the HSM's or KMS's own tools), never as a side effect of starting a
    process against a wrong path, token or account.
    """
    value = settings.pop("create_keys", None)
    if "create" in settings:
        old = settings.pop("create")
        warnings.warn(
            f"{what}: the key create is now create_keys, the name every provider type uses; "
            "create will be removed in vaultkit 0.2.0",
            VaultkitDeprecationWarning,
            stacklevel=2,
        )
        value = old if value is None else value
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigurationError(f"{what}: create_keys must be true or false")
    return value


# The builders hand each secret to its provider's constructor straight out of its Secret (the
# constructors wrap it at once), so that no frame here binds a PIN, token, passphrase or key.


def _local(settings: dict[str, Any], env: _Env, what: str) -> KeyProvider:
    from vaultkit.keys.local import MASTER_KEY_ENV, LocalKeyProvider, decode_master_key

    path = settings.pop("path", None)
    if not path:
        raise ConfigurationError(f"{what}: a local provider needs path = the keyring file")
    create = _create_keys(settings, what)
    passphrase = _secret_from_env(settings, "passphrase", None, env, what)
    if passphrase is not None:
        return LocalKeyProvider(path, passphrase=passphrase.reveal(), create_keys=create)
    key_env = str(settings.get("master_key_env", MASTER_KEY_ENV))
    text = _secret_from_env(settings, "master_key", MASTER_KEY_ENV, env, f"{what} (master key)")
    if text is None:  # pragma: no cover - a default variable name yields a value or raises
        raise ConfigurationError(f"{what}: no master key")
    return LocalKeyProvider(
        path, master_key=decode_master_key(text.reveal(), source=key_env), create_keys=create
    )


def _pkcs11(settings: dict[str, Any], env: _Env, what: str) -> KeyProvider:
    from vaultkit.keys.pkcs11 import PIN_ENV, PKCS11KeyProvider

    pin = _secret_from_env(settings, "pin", PIN_ENV, env, what)
    library = settings.pop("library", None)
    label = settings.pop("token_label", None)
    if not library or not label:
        raise ConfigurationError(f"{what}: a pkcs11 provider needs library and token_label")
    create = _create_keys(settings, what)
    return PKCS11KeyProvider(
        str(library),
        token_label=str(label),
        pin=None if pin is None else pin.reveal(),
        create_keys=create,
        **settings,
    )


def _transit(settings: dict[str, Any], env: _Env, what: str) -> KeyProvider:
    from vaultkit.keys.transit import VaultTransitKeyProvider

    token = _secret_from_env(settings, "token", None, env, what)
    url = settings.pop("url", None)
    if not url:
        raise ConfigurationError(f"{what}: a transit provider needs url")
    create = _create_keys(settings, what)
    return VaultTransitKeyProvider(
        str(url), token=None if token is None else token.reveal(), create_keys=create, **settings
    )


def _aws(settings: dict[str, Any], env: _Env, what: str) -> KeyProvider:
    from vaultkit.keys.aws import AWSKMSKeyProvider

    return AWSKMSKeyProvider(create_keys=_create_keys(settings, what), **settings)


_BUILDERS: Final[dict[str, Callable[[dict[str, Any], _Env, str], KeyProvider]]] = {
    "local": _local,
    "pkcs11": _pkcs11,
    "transit": _transit,
    "aws-kms": _aws,
}


def build_provider(
    name: str, settings: Mapping[str, Any], env: Mapping[str, str] | _Env
) -> KeyProvider:
    """One provider from its table (``type`` and the provider's own keyword arguments)."""
    environ = _wrap_env(env)
    del env
    what = f"provider {name!r}"
    options = dict(settings)
    kind = options.pop("type", None)
    builder = _BUILDERS.get(str(kind))
    if builder is None:
        raise ConfigurationError(
            f"{what}: type must be one of {', '.join(sorted(_BUILDERS))}, not {kind!r}"
        )
    try:
        return builder(options, environ, what)
    except TypeError as exc:  # an unknown option for that provider type
        raise ConfigurationError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class VaultParts:
    """What a configuration builds a vault from, without building it (nothing is opened).

    ``vaultkit audit verify --config`` reads the audit log through these, read-only, exactly
    as the application's vault would find it: the same key store, audit database, audit domain
    and provider.

    .. versionadded:: 0.2.0
    """

    store: str
    domains: list[KeyDomain]
    provider: KeyProvider
    providers: dict[str, KeyProvider]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def audit(self) -> str | None:
        """The audit database URL (``audit`` or ``audit_env``), or None: the key store's."""
        value = self.options.get("audit")
        return None if value is None else str(value)

    @property
    def audit_domain(self) -> str | None:
        """The domain whose key MACs the audit log (as :class:`~vaultkit.Vault` picks it)."""
        if "audit_domain" in self.options:
            return str(self.options["audit_domain"])
        return next((d.name for d in self.domains if d.audited), None)

    def __repr__(self) -> str:
        return f"VaultParts(store=..., domains={[d.name for d in self.domains]!r})"


def vault_parts(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | Secret[Mapping[str, str]] | None = None,
) -> VaultParts:
    """The key store URL, domains, providers and options a configuration describes.

    Builds the providers (as :meth:`Vault.from_config` does), opens nothing else.
    """
    environ = _wrap_env(env)
    del env
    config = _load(path, environ)
    store = config.get("key_store")
    if store is None and "key_store_env" in config:
        store = environ.reveal().get(str(config["key_store_env"]))
    if not store:
        raise ConfigurationError("the configuration names no key_store (a database URL)")
    provider_tables = config.get("providers") or {}
    domain_tables = config.get("domains") or {}
    if not domain_tables:
        raise ConfigurationError("the configuration declares no [domains.<name>] table")
    built: dict[str, KeyProvider] = {}

    def provider(name: str) -> KeyProvider:
        if name not in built:
            if name not in provider_tables:
                raise ConfigurationError(f"no [providers.{name}] table")
            built[name] = build_provider(name, provider_tables[name], environ)
        return built[name]

    default = config.get("default_provider")
    domains: list[KeyDomain] = []
    by_domain: dict[str, KeyProvider] = {}
    for name, table in domain_tables.items():
        table = dict(table)
        unknown = set(table) - _DOMAIN_KEYS
        if unknown:
            raise ConfigurationError(f"domain {name}: unknown keys {', '.join(sorted(unknown))}")
        chosen = table.pop("provider", default)
        if chosen is None:
            raise ConfigurationError(f"domain {name}: no provider (and no default_provider)")
        by_domain[name] = provider(str(chosen))
        if "bucket" in table:
            table["bucket"] = _bucket(table["bucket"], f"domain {name}")
        if "retention" in table:
            table["retention"] = _retention(table["retention"], f"domain {name}")
        domains.append(KeyDomain(name, **table))
    options: dict[str, Any] = {}
    for key in (
        "cache_size",
        "cache_ttl",
        "key_check_interval",
        "dek_max_encryptions",
        "audit_domain",
    ):
        if key in config:
            options[key] = config[key]
    if "dek_max_age_days" in config:
        options["dek_max_age"] = dt.timedelta(days=float(config["dek_max_age_days"]))
    if "erasure_ledger" in config:
        ledger = config["erasure_ledger"]
        if not isinstance(ledger, str) or not ledger:
            raise ConfigurationError("erasure_ledger is the path of a file (a string)")
        options["erasure_ledger"] = ledger
    for key in ("key_store_backup_retention", "shred_epoch_interval"):
        if key in config:
            options[key] = _duration(config[key], key)
    audit = config.get("audit") or (
        environ.reveal().get(str(config["audit_env"])) if "audit_env" in config else None
    )
    if audit:
        options["audit"] = audit
    main = provider(str(default)) if default else next(iter(by_domain.values()))
    return VaultParts(str(store), domains, main, by_domain, options)


def _bucket(value: Any, what: str) -> dt.timedelta:
    """A bucket width: an ISO 8601 duration of days and time (``"PT1H"``, ``"P1D"``) or seconds."""
    return _duration(value, f"{what}: bucket")


def _duration(value: Any, what: str) -> dt.timedelta:
    """An ISO 8601 duration of days and time (``"PT1H"``, ``"P35D"``) or whole seconds.

    Years and months are refused: their length varies, and these widths and intervals are fixed.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f'{what} is a duration such as "PT1H" or seconds')
    if isinstance(value, int):
        return dt.timedelta(seconds=value)
    if isinstance(value, str):
        try:
            months, days, seconds = parse_duration(value)
        except ValueError:
            raise ConfigurationError(f"{what} {value[:40]!r} is not an ISO 8601 duration") from None
        if months:
            raise ConfigurationError(f"{what} is days and time (such as P35D), not years or months")
        return dt.timedelta(days=days, seconds=seconds)
    raise ConfigurationError(f'{what} is a duration such as "PT1H" or seconds')


def _retention(value: Any, what: str) -> Retention:
    """A retention: ``"PT72H"`` (after capture, no longer than) or a table with ``duration``,
    ``after``, ``kind`` and ``ground``."""
    if isinstance(value, str):
        value = {"duration": value}
    if not isinstance(value, dict):
        raise ConfigurationError(f"{what}: retention is a duration or a table")
    unknown = set(value) - _RETENTION_KEYS
    if unknown:
        raise ConfigurationError(f"{what}: unknown retention keys {', '.join(sorted(unknown))}")
    if "duration" not in value:
        raise ConfigurationError(f"{what}: retention needs duration = an ISO 8601 duration")
    try:
        return Retention(**value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what}: retention: {exc}") from None


def vault_options(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | Secret[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of :class:`~vaultkit.Vault` that a configuration describes.

    ``Vault(**vault_options(path))`` is :meth:`Vault.from_config`. Builds the providers and
    opens nothing else.

    .. versionadded:: 0.2.0
    """
    parts = vault_parts(path, env=env)
    return {
        "provider": parts.provider,
        "store": parts.store,
        "domains": parts.domains,
        "providers": parts.providers,
        **parts.options,
    }


def vault_from_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Vault:
    """Build a :class:`~vaultkit.Vault` (and its providers) from configuration; see the module.

    .. deprecated:: 0.2.0
       Use :meth:`Vault.from_config` (or ``Vault(**vault_options(...))``); removed in 0.3.0.
    """
    warnings.warn(
        "vaultkit.config.vault_from_config is deprecated and will be removed in 0.3.0; use "
        "Vault.from_config",
        VaultkitDeprecationWarning,
        stacklevel=2,
    )
    # The one reference from this module up to the vault, kept for this deprecated shim only.
    from vaultkit._vault import Vault

    return Vault(**vault_options(path, env=env))
