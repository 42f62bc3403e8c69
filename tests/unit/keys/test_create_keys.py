"""LocalKeyProvider's key-creation flag: create_keys, as on every provider; create= deprecated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vaultkit.errors import DomainError, KeyProviderError, VaultkitDeprecationWarning
from vaultkit.keys import LocalKeyProvider

MASTER = os.urandom(32)


class TestCreateKeys:
    """``create_keys`` decides whether a missing keyring file or domain KEK is made."""

    def test_create_keys_false_creates_nothing(self, tmp_path: Path) -> None:
        """With create_keys=False a missing file is an error and no file appears."""
        keyring = tmp_path / "keyring.json"
        with pytest.raises(KeyProviderError, match="does not exist"):
            LocalKeyProvider(keyring, master_key=MASTER, create_keys=False)
        assert not keyring.exists()

    def test_create_keys_false_makes_no_new_domain(self, tmp_path: Path) -> None:
        """With create_keys=False an unknown domain is a DomainError, and the file is unchanged."""
        keyring = tmp_path / "keyring.json"
        LocalKeyProvider(keyring, master_key=MASTER).primary("identity")
        before = keyring.read_bytes()
        strict = LocalKeyProvider(keyring, master_key=MASTER, create_keys=False)
        with pytest.raises(DomainError):
            strict.primary("medical")
        assert keyring.read_bytes() == before

    def test_the_code_default_creates_for_development(self, tmp_path: Path) -> None:
        """LocalKeyProvider(path) without the flag creates the keyring: the embedded default."""
        keyring = tmp_path / "keyring.json"
        LocalKeyProvider(keyring, master_key=MASTER).primary("identity")
        assert keyring.exists()

    def test_the_old_name_warns_and_still_works(self, tmp_path: Path) -> None:
        """create= is read as create_keys= with a VaultkitDeprecationWarning naming 0.2.0."""
        keyring = tmp_path / "keyring.json"
        with (
            pytest.warns(VaultkitDeprecationWarning, match=r"create_keys.*0\.2\.0"),
            pytest.raises(KeyProviderError, match="does not exist"),
        ):
            LocalKeyProvider(keyring, master_key=MASTER, create=False)
        assert not keyring.exists()
