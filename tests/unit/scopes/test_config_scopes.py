"""vaultkit.toml keys of a domain's key scope and retention: dek_scope, bucket, retention."""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path

import pytest

from vaultkit import KeyDomain, Retention, Vault
from vaultkit.errors import ConfigurationError, DomainError

MASTER = base64.b64encode(os.urandom(32)).decode()

CONFIG = """
key_store = "sqlite:///TMP/keys.db"
default_provider = "keyring"

[providers.keyring]
type = "local"
path = "TMP/keyring.json"
create_keys = true

[domains.identity]

[domains.chat]
dek_scope = "bucket"
bucket = "PT1H"
retention = "PT72H"

[domains.calls]
dek_scope = "bucket"
bucket = 86400
retention = { duration = "P28D", after = "capture" }

[domains.contract]
dek_scope = "subject"

[domains.contract.retention]
duration = "P5Y"
after = "relationship_end"
kind = "no_less_than"
ground = "art. 60 of the insurance act"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vaultkit.toml"
    path.write_text(text.replace("TMP", str(tmp_path)))
    return path


def test_the_seed_policies_from_a_file(tmp_path: Path) -> None:
    with Vault.from_config(write(tmp_path, CONFIG), env={"VAULTKIT_MASTER_KEY": MASTER}) as vault:
        assert vault.key_domain("chat") == KeyDomain(
            "chat", dek_scope="bucket", bucket=dt.timedelta(hours=1), retention=Retention("PT72H")
        )
        assert vault.key_domain("calls") == KeyDomain(
            "calls", dek_scope="bucket", bucket=dt.timedelta(days=1), retention=Retention("P28D")
        )
        contract = vault.key_domain("contract")
        assert contract is not None and contract.retention == Retention(
            "P5Y",
            after="relationship_end",
            kind="no_less_than",
            ground="art. 60 of the insurance act",
        )
        assert vault.key_domain("identity") == KeyDomain("identity")
        blob = vault.encrypt("claim", domain="contract", subject="m-1")
        assert vault.decrypt(blob) == "claim"
        assert vault.decrypt(vault.encrypt("hi", domain="chat")) == "hi"


def test_environment_variables_set_and_override_them(tmp_path: Path) -> None:
    env = {
        "VAULTKIT_MASTER_KEY": MASTER,
        "VAULTKIT__DOMAINS__CONTRACT__RETENTION__GROUND": "another ground",
        "VAULTKIT__DOMAINS__CHAT__BUCKET": "PT30M",
        "VAULTKIT__DOMAINS__IDP__DEK_SCOPE": "bucket",
        "VAULTKIT__DOMAINS__IDP__BUCKET": "PT6H",
        "VAULTKIT__DOMAINS__IDP__RETENTION": "P7D",
    }
    with Vault.from_config(write(tmp_path, CONFIG), env=env) as vault:
        contract = vault.key_domain("contract")
        assert contract is not None and contract.retention is not None
        assert contract.retention.ground == "another ground"
        chat = vault.key_domain("chat")
        assert chat is not None and chat.bucket == dt.timedelta(minutes=30)
        assert vault.key_domain("idp") == KeyDomain(
            "idp", dek_scope="bucket", bucket=dt.timedelta(hours=6), retention=Retention("P7D")
        )


@pytest.mark.parametrize(
    ("table", "error", "message"),
    [
        (
            'dek_scope = "bucket"\nbucket = "P1M"\nretention = "P1D"',
            ConfigurationError,
            "not years",
        ),
        ('dek_scope = "bucket"\nbucket = "1h"\nretention = "P1D"', ConfigurationError, "ISO 8601"),
        ('dek_scope = "bucket"\nbucket = true\nretention = "P1D"', ConfigurationError, "bucket is"),
        (
            'dek_scope = "bucket"\nbucket = "PT1H"\nretention = 5',
            ConfigurationError,
            "retention is",
        ),
        (
            'dek_scope = "bucket"\nbucket = "PT1H"\nretention = { duration = "P1D", ttl = 3 }',
            ConfigurationError,
            "unknown retention keys ttl",
        ),
        (
            'dek_scope = "bucket"\nbucket = "PT1H"\nretention = { after = "capture" }',
            ConfigurationError,
            "needs duration",
        ),
        (
            'dek_scope = "subject"\nretention = { duration = "P5Y", after = "relationship_end", '
            'kind = "no_less_than" }',
            ConfigurationError,
            "legal ground",
        ),
        ('dek_scope = "bucket"\nbucket = "PT1H"', DomainError, "needs a retention"),
        ('retention = "P1D"', DomainError, "process-scoped keys"),
        ('dek_scope = "tenant"', DomainError, "dek_scope must be"),
    ],
)
def test_bad_scope_settings_are_clear_errors(
    tmp_path: Path, table: str, error: type[Exception], message: str
) -> None:
    text = CONFIG.split("[domains.chat]")[0] + "[domains.x]\n" + table + "\n"
    with pytest.raises(error, match=message):
        Vault.from_config(write(tmp_path, text), env={"VAULTKIT_MASTER_KEY": MASTER})
