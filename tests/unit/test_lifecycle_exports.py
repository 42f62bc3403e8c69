"""The data life cycle's public names: importable from ``vaultkit`` (the same objects as in
``vaultkit.lifecycle`` and ``vaultkit.errors``), and ShredReport lives in the public module."""

from __future__ import annotations

import json

import vaultkit
from vaultkit import errors, lifecycle
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

NAMES = {
    "Retention": vaultkit.keys.domains.Retention,
    "Subject": vaultkit._vault.Subject,
    "ErasureReceipt": lifecycle.ErasureReceipt,
    "DomainErasure": lifecycle.DomainErasure,
    "RetentionReport": lifecycle.RetentionReport,
    "DomainRetention": lifecycle.DomainRetention,
    "EnforcementReport": lifecycle.EnforcementReport,
    "ShredReport": lifecycle.ShredReport,
    "ValueErasedError": errors.ValueErasedError,
    "SubjectErasedError": errors.SubjectErasedError,
    "RetentionExpiredError": errors.RetentionExpiredError,
}


def test_the_life_cycle_names_are_exported_from_vaultkit() -> None:
    for name, obj in NAMES.items():
        assert name in vaultkit.__all__, name
        assert getattr(vaultkit, name) is obj, name
    assert sorted(vaultkit.__all__) == vaultkit.__all__ or set(vaultkit.__all__) >= set(NAMES)


def test_shred_report_lives_in_the_public_module() -> None:
    assert lifecycle.ShredReport.__module__ == "vaultkit.lifecycle"
    assert "ShredReport" in lifecycle.__all__
    with vaultkit.Vault(
        provider=InMemoryKeyProvider(),
        store=MemoryKeyStore(),
        domains=[vaultkit.KeyDomain("medical", dek_scope="subject")],
    ) as vault:
        vault.encrypt("x", domain="medical", subject="m-1")
        report = vault.shred_epoch("medical")
    assert isinstance(report, vaultkit.ShredReport)
    body = json.loads(report.to_json())
    assert body == report.as_dict()
    assert body["epoch"] == 2 and body["stranded"] == 0 and body["final_at"].endswith("Z")
