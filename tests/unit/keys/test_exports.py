"""vaultkit.keys exports every provider and capability; the optional backends load on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import vaultkit.keys

ROOT = Path(__file__).resolve().parents[3]
LAZY = {
    "AWSKMSKeyProvider": "vaultkit.keys.aws",
    "PKCS11KeyProvider": "vaultkit.keys.pkcs11",
    "VaultTransitKeyProvider": "vaultkit.keys.transit",
}
HEAVY = ("boto3", "botocore", "hvac", "requests", "PyKCS11")


def _fresh_python(code: str) -> object:
    """Run ``code`` in a new interpreter (nothing imported yet) and return what it prints (JSON)."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        timeout=120,
    )
    return json.loads(result.stdout)


def test_importing_the_package_loads_no_backend() -> None:
    """``import vaultkit.keys`` (and ``import vaultkit``) import neither boto3, hvac nor PyKCS11,
    nor the modules of those providers."""
    loaded = _fresh_python(
        "import json, sys, vaultkit, vaultkit.keys\n"
        f"print(json.dumps(sorted(m for m in {[*HEAVY, *LAZY.values()]!r} if m in sys.modules)))"
    )
    assert loaded == []


def test_a_lazy_name_loads_its_module_only() -> None:
    """``from vaultkit.keys import AWSKMSKeyProvider`` works and loads vaultkit.keys.aws, not the
    transit or PKCS#11 modules."""
    loaded = _fresh_python(
        "import json, sys\n"
        "from vaultkit.keys import AWSKMSKeyProvider\n"
        "from vaultkit.keys.aws import AWSKMSKeyProvider as direct\n"
        "assert AWSKMSKeyProvider is direct\n"
        f"print(json.dumps(sorted(m for m in {list(LAZY.values())!r} if m in sys.modules)))"
    )
    assert loaded == ["vaultkit.keys.aws"]


@pytest.mark.parametrize("name", sorted(LAZY))
def test_each_lazy_name_is_the_submodules_class(name: str) -> None:
    """Each lazily exported provider is the class of its submodule, listed in ``__all__`` and
    ``dir()``."""
    module = __import__(LAZY[name], fromlist=[name])
    assert getattr(vaultkit.keys, name) is getattr(module, name)
    assert name in vaultkit.keys.__all__
    assert name in dir(vaultkit.keys)


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted, and every name in it resolves."""
    names = vaultkit.keys.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(vaultkit.keys, name) is not None
    for name in (
        "SupportsRewrap",
        "SupportsBatchUnwrap",
        "SupportsDataKeyGeneration",
        "SupportsAuditSigner",
        "SupportsWriterPins",
    ):
        assert name in names


def test_an_unknown_name_is_an_attribute_error() -> None:
    """A name the package does not have raises AttributeError (so hasattr and getattr work)."""
    with pytest.raises(AttributeError, match="NoSuchProvider"):
        vaultkit.keys.NoSuchProvider  # noqa: B018 - the lookup is the test
    assert not hasattr(vaultkit.keys, "NoSuchProvider")


def test_decode_master_key_is_public_and_keeps_its_old_name() -> None:
    """``decode_master_key`` is public; the old private name is the same function (for a release)."""
    from vaultkit.keys.local import _decode_master_key, decode_master_key, generate_master_key

    assert _decode_master_key is decode_master_key
    assert len(decode_master_key(generate_master_key(), source="test")) == 32
