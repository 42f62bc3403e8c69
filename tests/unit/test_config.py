"""Vault.from_config: TOML files and VAULTKIT__* variables; secrets only by variable name."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from vaultkit import Principal, Vault
from vaultkit.config import load_config
from vaultkit.errors import (
    AccessDeniedError,
    ConfigurationError,
    KeyProviderError,
    VaultkitDeprecationWarning,
)

MASTER = base64.b64encode(os.urandom(32)).decode()
MEDICAL_MASTER = base64.b64encode(os.urandom(32)).decode()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vaultkit.toml"
    path.write_text(text.replace("TMP", str(tmp_path)))
    return path


CONFIG = """
key_store = "sqlite:///TMP/keys.db"
default_provider = "keyring"
cache_ttl = 120

[providers.keyring]
type = "local"
path = "TMP/keyring.json"
create_keys = true

[providers.medical-keyring]
type = "local"
path = "TMP/medical-keyring.json"
master_key_env = "MEDICAL_MASTER_KEY"
create_keys = true

[domains.identity]

[domains.medical]
provider = "medical-keyring"
restricted = true
on_denied = "raise"
"""


def test_a_vault_with_separate_credentials_for_the_medical_domain(tmp_path: Path) -> None:
    """Each domain's KEK comes from its own provider and master key; policies are applied."""
    env = {"VAULTKIT_MASTER_KEY": MASTER, "MEDICAL_MASTER_KEY": MEDICAL_MASTER}
    with Vault.from_config(write(tmp_path, CONFIG), env=env) as vault:
        assert set(vault.domains) == {"identity", "medical"}
        coach = Principal("coach", grants={"medical"})
        with vault.acting_as(coach, purpose="t"):
            blob = vault.encrypt("diagnosis", domain="medical")
            assert vault.decrypt(blob, domain="medical") == "diagnosis"
            assert (
                vault.decrypt(vault.encrypt("jan", domain="identity"), domain="identity") == "jan"
            )
        with vault.acting_as(Principal("claims"), purpose="t"), pytest.raises(AccessDeniedError):
            vault.decrypt(blob, domain="medical")  # restricted, on_denied = "raise"
    assert (tmp_path / "medical-keyring.json").exists() and (tmp_path / "keyring.json").exists()
    # The medical keyring needs its own master key: the general one does not open it.
    wrong = {"VAULTKIT_MASTER_KEY": MASTER, "MEDICAL_MASTER_KEY": MASTER}
    with pytest.raises(KeyProviderError, match="wrong master key"):
        Vault.from_config(write(tmp_path, CONFIG), env=wrong)


def test_environment_only_and_overrides(tmp_path: Path) -> None:
    """VAULTKIT__TABLE__KEY variables alone describe a vault, and override a file's values."""
    env = {
        "VAULTKIT_MASTER_KEY": MASTER,
        "VAULTKIT__KEY_STORE": f"sqlite:///{tmp_path}/env-keys.db",
        "VAULTKIT__PROVIDERS__KEYRING__TYPE": "local",
        "VAULTKIT__PROVIDERS__KEYRING__PATH": str(tmp_path / "env-keyring.json"),
        "VAULTKIT__PROVIDERS__KEYRING__CREATE_KEYS": "true",
        "VAULTKIT__DOMAINS__IDENTITY__PROVIDER": "keyring",
    }
    with Vault.from_config(env=env) as vault:
        assert vault.decrypt(vault.encrypt(42, domain="identity"), domain="identity") == 42
    config = load_config(
        write(tmp_path, CONFIG),
        env={
            "VAULTKIT__PROVIDERS__MEDICAL_KEYRING__PATH": "/elsewhere.json",
            "VAULTKIT__CACHE_TTL": "30",
        },
    )
    assert config["providers"]["medical-keyring"]["path"] == "/elsewhere.json"
    assert config["cache_ttl"] == 30
    path = write(tmp_path, CONFIG)
    assert load_config(env={"VAULTKIT_CONFIG": str(path)})["cache_ttl"] == 120


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('[providers.hsm]\ntype = "pkcs11"\npin = "1234"', {}, "pin_env"),
        ('[providers.bao]\ntype = "transit"\ntoken = "s.abc"', {}, "token_env"),
        ("", {"VAULTKIT__PROVIDERS__HSM__PIN": "1234"}, "pin_env"),
        ("master_key = 'x'", {}, "master_key_env"),
        ("colour = 'blue'", {}, "unknown configuration keys: colour"),
        (
            'key_store = "sqlite://"\n[domains.identity]\nprovider = "nope"',
            {},
            r"no \[providers.nope\]",
        ),
        (
            'key_store = "sqlite://"\n[providers.p]\ntype = "ftp"\n[domains.identity]\nprovider = "p"',
            {},
            "type must be one of",
        ),
        (
            'key_store = "sqlite://"\n[providers.p]\ntype = "local"\npath = "k.json"\n[domains.identity]\nprovider = "p"',
            {},
            "VAULTKIT_MASTER_KEY .*is not set",
        ),
        ('key_store = "sqlite://"', {}, "declares no"),
        ("[domains.identity]", {}, "no key_store"),
    ],
)
def test_bad_configuration_is_a_clear_error(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    """Secrets in the file or in VAULTKIT__ variables are refused (and never echoed)."""
    with pytest.raises(ConfigurationError, match=message) as failure:
        Vault.from_config(write(tmp_path, text), env=env)
    assert "1234" not in str(failure.value) and "s.abc" not in str(failure.value)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no vaultkit configuration file"):
        load_config(tmp_path / "none.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("key_store = ")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(broken, env={})


def test_the_example_configuration_parses() -> None:
    """examples/vaultkit.toml is valid, holds no secret, and declares the three domains."""
    path = Path(__file__).parents[2] / "examples" / "vaultkit.toml"
    config = load_config(path, env={})
    assert set(config["domains"]) == {"identity", "financial", "medical"}
    assert config["domains"]["medical"] == {
        "provider": "medical-hsm",
        "restricted": True,
        "audited": True,
    }
    assert config["providers"]["medical-hsm"]["pin_env"] == "MEDICAL_HSM_PIN"


LOCAL_ONLY = """
key_store = "sqlite:///TMP/keys.db"

[providers.keyring]
type = "local"
path = "TMP/keyring.json"
{create}

[domains.identity]
provider = "keyring"
"""


class TestKeyCreation:
    """One name, create_keys, on every provider type; a configuration file creates no key unless
    it says so."""

    def test_a_local_provider_creates_nothing_by_default(self, tmp_path: Path) -> None:
        """Without create_keys a missing keyring is an error and no file appears."""
        path = write(tmp_path, LOCAL_ONLY.format(create=""))
        with pytest.raises(KeyProviderError, match="does not exist"):
            Vault.from_config(path, env={"VAULTKIT_MASTER_KEY": MASTER})
        assert not (tmp_path / "keyring.json").exists()

    def test_create_keys_true_creates_the_keyring(self, tmp_path: Path) -> None:
        """`create_keys = true`, the key the pkcs11, transit and aws-kms types take, works for a
        local provider too."""
        path = write(tmp_path, LOCAL_ONLY.format(create="create_keys = true"))
        with Vault.from_config(path, env={"VAULTKIT_MASTER_KEY": MASTER}) as vault:
            assert vault.decrypt(vault.encrypt("x", domain="identity"), domain="identity") == "x"
        assert (tmp_path / "keyring.json").exists()

    def test_the_old_key_create_still_works_and_warns(self, tmp_path: Path) -> None:
        """`create = true` is read as create_keys, with a VaultkitDeprecationWarning naming the
        release that removes it."""
        path = write(tmp_path, LOCAL_ONLY.format(create="create = true"))
        with pytest.warns(VaultkitDeprecationWarning, match=r"create_keys.*0\.2\.0"):
            Vault.from_config(path, env={"VAULTKIT_MASTER_KEY": MASTER}).close()
        assert (tmp_path / "keyring.json").exists()

    def test_create_keys_takes_a_boolean(self, tmp_path: Path) -> None:
        """A string such as "false" is refused, not read as true."""
        path = write(tmp_path, LOCAL_ONLY.format(create='create_keys = "false"'))
        with pytest.raises(ConfigurationError, match="create_keys must be true or false"):
            Vault.from_config(path, env={"VAULTKIT_MASTER_KEY": MASTER})
        assert not (tmp_path / "keyring.json").exists()


class TestNoSecretInFrames:
    """A provider constructor that raises leaves no PIN, token, passphrase, master key or
    ``os.environ`` in the frames an error reporter ships (the builders of vaultkit.config)."""

    PIN = "PLANTED-PIN-493817"
    TOKEN = "PLANTED-TOKEN-hvs.a8d7f6"
    PASSPHRASE = "PLANTED-PASSPHRASE-horse-battery"
    OTHER = "PLANTED-UNRELATED-ENV-SECRET-55"

    @pytest.fixture
    def environ(self, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes | str]:
        """Secrets in the real os.environ, as a deployment has them."""
        wrong = base64.b64encode(os.urandom(32)).decode()
        values = {
            "VAULTKIT_MASTER_KEY": wrong,
            "VAULTKIT_PKCS11_PIN": self.PIN,
            "TRANSIT_TOKEN": self.TOKEN,
            "KEYRING_PASSPHRASE": self.PASSPHRASE,
            "UNRELATED_SECRET": self.OTHER,
        }
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return {**values, "master key bytes": base64.b64decode(wrong)}

    def test_failing_constructors(self, tmp_path: Path, environ: dict[str, bytes | str]) -> None:
        """A wrong master key, a wrong passphrase, a PKCS#11 library that does not load, an
        unknown transit option and a bad top-level key: each error's frames hold no secret."""
        from tests.unit.test_leaks import frame_leaks, raised_by
        from vaultkit.keys import LocalKeyProvider

        LocalKeyProvider(tmp_path / "keyring.json", master_key=os.urandom(32)).primary("identity")
        LocalKeyProvider(
            tmp_path / "pass.json",
            passphrase="another passphrase",
            kdf_parameters={"time_cost": 1, "memory_cost": 1024, "parallelism": 1},
        ).primary("identity")
        providers = {
            "master": 'type = "local"\npath = "TMP/keyring.json"',
            "passphrase": 'type = "local"\npath = "TMP/pass.json"\n'
            'passphrase_env = "KEYRING_PASSPHRASE"',
            "hsm": 'type = "pkcs11"\nlibrary = "TMP/missing-libsofthsm2.so"\ntoken_label = "m"',
            "transit": 'type = "transit"\nurl = "http://127.0.0.1:9"\ntoken_env = "TRANSIT_TOKEN"'
            "\nno_such_option = 1",
        }
        failures = []
        for name, table in providers.items():
            path = write(
                tmp_path,
                f'key_store = "sqlite:///TMP/keys.db"\n[providers.{name}]\n{table}\n'
                f'[domains.identity]\nprovider = "{name}"\n',
            )
            failures.append(raised_by(Vault.from_config, path))
        failures.append(raised_by(load_config, write(tmp_path, "unknown_key = 1\n")))
        for failed in failures:
            assert isinstance(failed, ConfigurationError | KeyProviderError), repr(failed)
            assert frame_leaks(failed, environ) == [], failed
