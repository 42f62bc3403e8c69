"""Decrypt every value of a table and count them by DEK, wire version and problem.

Values whose DEK was destroyed (a subject's erasure, retention) are counted apart, as erased:
unreadable by design, not a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from vaultkit import Principal, Vault
from vaultkit.core import wire
from vaultkit.errors import DecryptionError, ValueErasedError
from vaultkit.rekey._classify import Classifier
from vaultkit.rekey._manifest import Manifest, legacy_entries, manifests_of
from vaultkit.rekey._reports import VerifyReport
from vaultkit.rekey._table import as_raw, indexes_of, plan_table, selection
from vaultkit.sqla.types import Encrypted

__all__ = ["verify_table"]


def verify_table(
    engine: sa.Engine,
    table: sa.Table,
    *,
    vault: Vault,
    columns: Sequence[str] | None = None,
    principal: Principal | None = None,
) -> VerifyReport:
    """Decrypt every value of ``table``'s encrypted columns; count by DEK, version and problem."""
    pk, encrypted = plan_table(table, columns)
    report = VerifyReport()
    indexes = indexes_of(table, [c.name for c in encrypted])
    row_keys, selected = selection(pk, encrypted, indexes)
    classify = Classifier(vault)
    actor = principal or Principal("vaultkit-verify", grants=vault.domains)
    manifests = manifests_of(engine, vault, encrypted)
    with (
        vault.acting_as(actor, purpose=f"verify {table.name}"),
        engine.connect() as conn,
        engine.connect() as lookup,
    ):
        result = conn.execution_options(yield_per=2000).execute(sa.select(*selected).order_by(pk))
        for chunk in result.partitions():
            # Plaintext is checked against the legacy manifest of its column: the recorded value
            # of its row is still to migrate; anything else is a downgrade.
            legacy = legacy_entries(lookup, manifests, chunk)
            for row in chunk:
                verify_row(row, encrypted, row_keys, indexes, classify, manifests, legacy, report)
    return report


def verify_row(
    row: Any,
    encrypted: list[sa.Column[Any]],
    row_keys: dict[str, sa.Column[Any]],
    indexes: dict[str, list[sa.Column[Any]]],
    classify: Classifier,
    manifests: dict[str, Manifest],
    legacy: dict[str, dict[Any, tuple[str, bytes]]],
    report: VerifyReport,
) -> None:
    mapping = row._mapping
    for column in encrypted:
        value = as_raw(mapping[column.name])
        if value is None:
            continue
        report.values += 1
        column_type: Encrypted = column.type  # type: ignore[assignment]
        try:
            header = wire.parse_value(value)
        except DecryptionError:
            report.undecryptable += 1  # the magic, but too short to be a value
            continue
        if header is None:
            manifest = manifests.get(column.name)
            if manifest is None or (
                column_type.migrating
                and manifest.recorded(legacy.get(column.name, {}).get(row[0]), value)
            ):
                report.plaintext += 1
            else:
                report.tampered += 1
            continue
        row_key = mapping[row_keys[column.name].name] if column.name in row_keys else None
        try:
            plain = column_type.decrypt_value(value, row=row_key)
            reason = classify.reason(column_type, value, row_key)
        except ValueErasedError:
            report.erased += 1  # its key was destroyed (erasure, retention): unreadable by design
            continue
        except DecryptionError:
            report.undecryptable += 1
            continue
        if plain is None:  # on_erased="null": a value whose key is gone
            report.erased += 1
            continue
        report.by_dek[header.dek_id.hex()] += 1
        report.by_version[header.version] += 1
        for index in indexes.get(column.name, ()):
            stored = as_raw(mapping[index.name])
            if stored is None or stored[0] != index.type.version:  # type: ignore[attr-defined]
                report.index_outdated += 1
                break  # counted once per value
        if reason == "kept":
            report.kept_in_scope += 1
        elif reason == "retired":
            report.under_retired += 1
        elif reason == "moved":
            report.previous_binding += 1
