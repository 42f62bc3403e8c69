"""Vault.from_config with each remote provider type, the medical domain on its own credentials."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest

from tests._servers import Server, SoftHSM
from vaultkit import Principal, Vault

COACH = Principal("coach", grants={"medical"})
HEAD = """
key_store = "sqlite:///{tmp}/keys.db"
default_provider = "keyring"

[providers.keyring]
type = "local"
path = "{tmp}/keyring.json"
create_keys = true

[domains.identity]

[domains.medical]
provider = "medical"
restricted = true
"""


def round_trip(path: Path, env: dict[str, str]) -> None:
    env = {"VAULTKIT_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(), **env}
    with Vault.from_config(path, env=env) as vault, vault.acting_as(COACH, purpose="t"):
        for domain in ("identity", "medical"):
            assert vault.decrypt(vault.encrypt("x", domain=domain), domain=domain) == "x"


def config(tmp_path: Path, provider: str) -> Path:
    path = tmp_path / "vaultkit.toml"
    path.write_text(HEAD.format(tmp=tmp_path) + provider)
    return path


@pytest.mark.pkcs11
def test_medical_domain_in_an_hsm(tmp_path: Path, softhsm: SoftHSM) -> None:
    text = f"""
[providers.medical]
type = "pkcs11"
library = "{softhsm.library}"
token_label = "{softhsm.token_label}"
pin_env = "MEDICAL_HSM_PIN"
label_prefix = "cfg{secrets.token_hex(3)}:"
create_keys = true
"""
    round_trip(config(tmp_path, text), {"MEDICAL_HSM_PIN": softhsm.pin})


@pytest.mark.pkcs11
def test_an_hsm_provider_from_a_file_creates_no_key_by_default(
    tmp_path: Path, softhsm: SoftHSM
) -> None:
    """A pkcs11 table without create_keys generates no key object in the token (the class's own
    default is to create): the vault refuses to start, and the token stays without that key."""
    from vaultkit.errors import DomainError
    from vaultkit.keys.pkcs11 import PKCS11KeyProvider

    prefix = f"cfg{secrets.token_hex(3)}:"
    text = f"""
[providers.medical]
type = "pkcs11"
library = "{softhsm.library}"
token_label = "{softhsm.token_label}"
pin_env = "MEDICAL_HSM_PIN"
label_prefix = "{prefix}"
"""
    env = {"VAULTKIT_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    with pytest.raises(DomainError, match="holds no key for medical"):
        Vault.from_config(config(tmp_path, text), env={**env, "MEDICAL_HSM_PIN": softhsm.pin})
    token = PKCS11KeyProvider(
        softhsm.library,
        token_label=softhsm.token_label,
        pin=softhsm.pin,
        label_prefix=prefix,
        create_keys=False,
    )
    assert token.versions("medical") == []


@pytest.mark.openbao
def test_medical_domain_in_transit(tmp_path: Path, openbao: Server) -> None:
    text = f"""
[providers.medical]
type = "transit"
url = "{openbao.url}"
token_env = "MEDICAL_BAO_TOKEN"
key_prefix = "cfg{secrets.token_hex(3)}-"
create_keys = true
"""
    round_trip(config(tmp_path, text), {"MEDICAL_BAO_TOKEN": openbao.token})


@pytest.mark.aws
def test_medical_domain_in_kms(tmp_path: Path, aws_emulator: Server) -> None:
    text = f"""
[providers.medical]
type = "aws-kms"
region = "eu-west-1"
endpoint_url = "{aws_emulator.url}"
alias_prefix = "alias/cfg{secrets.token_hex(3)}-"
create_keys = true
"""
    round_trip(config(tmp_path, text), {})


@pytest.mark.openbao
def test_keys_commands_with_a_config_file(
    tmp_path: Path,
    openbao: Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`vaultkit keys list / rotate-kek --config`: the medical KEK in transit is rotated and its key
    rows rewrapped on the server; the old version is then disabled and everything still reads."""
    from vaultkit.cli.main import main

    text = f"""
[providers.medical]
type = "transit"
url = "{openbao.url}"
token_env = "MEDICAL_BAO_TOKEN"
key_prefix = "cli{secrets.token_hex(3)}-"
create_keys = true
"""
    path = config(tmp_path, text)
    monkeypatch.setenv("MEDICAL_BAO_TOKEN", openbao.token)
    monkeypatch.setenv("VAULTKIT_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with Vault.from_config(path) as vault, vault.acting_as(COACH, purpose="t"):
        blob = vault.encrypt("diagnosis", domain="medical")
    assert main(["keys", "rotate-kek", "--config", str(path), "--domain", "medical"]) == 0
    assert "KEK v2 is primary; 1 key rows rewrapped" in capsys.readouterr().out
    assert main(["keys", "list", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "domain medical: KEK versions v1, v2 (primary v2)" in out
    assert "key rows wrapped under v2: 1" in out
    with Vault.from_config(path) as vault:
        vault.provider_for("medical").disable_below("medical", 2)  # type: ignore[attr-defined]
    with Vault.from_config(path) as vault, vault.acting_as(COACH, purpose="t"):
        assert vault.decrypt(blob, domain="medical") == "diagnosis"
    assert openbao.token not in out
