"""Why a stored value needs re-encryption, and the new values of a batch of rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, cast

import sqlalchemy as sa

from vaultkit import SealedValue, Vault
from vaultkit.core import wire
from vaultkit.errors import ConfigurationError, DecryptionError, ValueErasedError
from vaultkit.rekey._manifest import Manifest
from vaultkit.rekey._table import as_raw
from vaultkit.sqla.types import BlindIndexType, Encrypted, Parts, RowBound
from vaultkit.store import DekState

__all__ = ["Batch", "Change", "Classifier", "IndexTarget", "Target", "changes_in", "targets_of"]

_UNKNOWN: Final = "unknown"
_SUITE: Final = wire.Suite.AES256_GCM_HKDF_SHA256_COMMIT
#: The leading bytes a value's reason depends on, without ``previous=``: magic, version, suite
#: and DEK id (the cache key of :attr:`Classifier.by_header`).
_ROUTE: Final = wire.DEK_ID_SLICE.stop
#: A shorter value with the magic is refused by :meth:`Classifier.reason` (never cached).
_SHORTEST: Final = wire.MIN_VALUE_SIZE


class Classifier:
    """Decides why a stored value needs re-encryption, caching what the key store says per DEK."""

    def __init__(self, vault: Vault, *, decrypt: bool = True) -> None:
        self._vault = vault
        #: False in a dry run: nothing is decrypted (an audited decrypt would write an event).
        self._decrypt = decrypt
        self._deks: dict[bytes, tuple[DekState | None, str | None, str | None]] = {}
        #: Reasons by the first 20 bytes of a value, for columns without ``previous=``.
        self.by_header: dict[bytes, str | None] = {}

    def reason(self, column_type: Encrypted, value: bytes | None, row_key: Any) -> str | None:
        """Why ``value`` needs rewriting (``"plaintext"``, ``"outdated"``, ``"retired"``,
        ``"moved"``, ``"unchecked"`` in a dry run), or None when it is current; ``"erased"``
        when its DEK is destroyed (by erasure, retention or an operator: never rewritten), and
        ``"kept"`` when it would be rewritten but is under a subject or bucket key (left under
        its key: re-encrypting it would move it into a newer bucket, extending its retention,
        or out of its subject's key, beyond erasure).

        Raises:
            DecryptionError: the value has the magic but is too short to be one.
        """
        if value is None:
            return None
        header = wire.parse_value(value)
        if header is None:
            return "plaintext"
        if header.version != wire.VERSION_1 or header.suite != _SUITE:
            return "outdated"
        dek_id = header.dek_id
        known = self._deks.get(dek_id)
        if known is None:
            record = self._vault.store.get(dek_id)
            known = (
                (record.state, record.domain, record.scope)
                if record is not None
                else (None, None, None)
            )
            self._deks[dek_id] = known
        state, domain, scope = known
        if state is DekState.DESTROYED:
            return "erased"
        reason = self._rewrite_reason(column_type, value, row_key, state, domain)
        if reason is not None and reason != "unchecked" and scope is not None:
            return "kept"
        return reason

    def _rewrite_reason(
        self,
        column_type: Encrypted,
        value: bytes,
        row_key: Any,
        state: DekState | None,
        domain: str | None,
    ) -> str | None:
        if column_type.previous is not None:
            if domain != column_type.domain:
                return "moved"
            if not self._decrypt:
                # Only decrypting tells the previous binding from the current one; a value under
                # a retired DEK is re-encrypted either way.
                return "retired" if state is DekState.RETIRED else "unchecked"
            if not column_type.is_current(value, row=row_key):
                return "moved"
        if state is DekState.RETIRED:
            return "retired"
        return None


class Change(NamedTuple):
    pk: Any
    column: str
    old: bytes
    new: bytes
    #: The new values of the column's index columns (Target.indexes), in order.
    digests: tuple[bytes | None, ...]
    reason: str


class IndexTarget(NamedTuple):
    """One index column a target column carries: where its stored value is, its current key
    version, and its new digest from the column's plaintext and the selected row."""

    name: str
    position: int
    version: int
    digest: Callable[[Any, Any], bytes | None]


@dataclass(frozen=True)
class Target:
    """One encrypted column as the engine handles it: positions in the selected row, fast paths."""

    name: str
    position: int
    row_key_position: int | None
    type: Encrypted
    indexes: tuple[IndexTarget, ...]  # the index columns this column carries
    open: Callable[[Any], Any] | None  # the column's result processor, when not row-bound
    seal: Callable[[Any], bytes | None] | None  # the column's bind processor, when not row-bound


def _index_target(
    index: sa.Column[Any],
    owner: str,
    names: list[str],
    row_keys: dict[str, sa.Column[Any]],
) -> IndexTarget:
    index_type: BlindIndexType = index.type  # type: ignore[assignment]
    if not index_type.takes_parts:
        single = index_type.digest
        return IndexTarget(
            index.name, names.index(index.name, 1), index_type.version, lambda p, _r: single(p)
        )
    table = index.table
    others: list[tuple[str, int, int | None, Encrypted]] = []
    for source in index_type.sources:
        if source == owner:
            continue  # the carrier's value is the one re-keyed (plain)
        column = table.columns[source]
        key = row_keys.get(source)
        others.append(
            (
                source,
                names.index(source, 1),
                names.index(key.name) if key is not None else None,
                cast(Encrypted, column.type),
            )
        )

    def compound(plain: Any, row: Any) -> bytes | None:
        values = {owner: plain}
        for source, at, key_at, source_type in others:
            raw = as_raw(row[at])
            values[source] = (
                None
                if raw is None
                else source_type.decrypt_value(raw, row=row[key_at] if key_at is not None else None)
            )
        return index_type.digest(Parts(values))

    return IndexTarget(index.name, names.index(index.name, 1), index_type.version, compound)


def _digests(
    index_targets: tuple[IndexTarget, ...], plain: Any, row: Any
) -> tuple[bytes | None, ...]:
    out = []
    for ix in index_targets:
        try:
            out.append(ix.digest(plain, row))
        except (ValueErasedError, DecryptionError):
            # Another source of a compound index does not open (erased, damaged): the index
            # cannot be computed, and is cleared (its lookups could not be checked anyway).
            out.append(None)
    return tuple(out)


def targets_of(
    dialect: sa.Dialect,
    selected: list[Any],
    encrypted: list[sa.Column[Any]],
    row_keys: dict[str, sa.Column[Any]],
    indexes: dict[str, list[sa.Column[Any]]],
) -> list[Target]:
    names = [getattr(item, "name", None) or item.key for item in selected]
    targets = []
    for column in encrypted:
        column_type: Encrypted = column.type  # type: ignore[assignment]
        bound = column.name in row_keys
        targets.append(
            Target(
                name=column.name,
                position=names.index(column.name, 1),
                row_key_position=names.index(row_keys[column.name].name) if bound else None,
                type=column_type,
                indexes=tuple(
                    _index_target(index, column.name, names, row_keys)
                    for index in indexes.get(column.name, ())
                ),
                open=None if bound else column_type.result_processor(dialect, None),
                seal=None if bound else column_type.bind_processor(dialect),
            )
        )
    return targets


@dataclass
class Batch:
    """What :func:`changes_in` found in one batch of rows."""

    changes: list[Change] = field(default_factory=list)
    undecryptable: int = 0
    tampered: int = 0
    #: Values whose DEK is destroyed (erasure, retention): unreadable for good, left as they are.
    erased: int = 0
    #: Values under a subject or bucket key that would need rewriting, left under their key.
    kept: int = 0
    #: Manifest entries of rows seen holding ciphertext: (column name, row id).
    forget: list[tuple[str, str]] = field(default_factory=list)
    #: Row ids of the recorded legacy values among ``changes``, by (column name, row key):
    #: forgotten once written.
    legacy_ids: dict[tuple[str, Any], str] = field(default_factory=dict)


def changes_in(
    rows: Sequence[Any],
    targets: list[Target],
    classify: Classifier,
    manifests: dict[str, Manifest] | None = None,
    legacy: dict[str, dict[Any, tuple[str, bytes]]] | None = None,
    *,
    dry_run: bool = False,
) -> Batch:
    """The new values of ``rows``: one change per value that needs re-encryption; how many values
    could not be opened, and how many plaintext values were refused as tampered (both left as
    they are; :func:`verify_table` reports them too).

    ``manifests`` are the legacy manifests of the columns whose migration has begun, and
    ``legacy`` their entries for these rows (:func:`legacy_entries`). With ``dry_run`` the
    changes only carry their reason: nothing is decrypted or encrypted, so no DEK, blind-index
    key or audit event comes into being.
    """
    found = Batch()
    append = found.changes.append
    manifests = manifests or {}
    legacy = legacy or {}
    by_header = classify.by_header
    plan = [
        (
            t.position,
            t.row_key_position,
            t.type,
            t.type.previous is None,
            t.type.migrating,
            t.open,
            t.seal,
            t.indexes,
            t.name,
            manifests.get(t.name),
            legacy.get(t.name, {}),
        )
        for t in targets
    ]
    for row in rows:
        key = row[0]
        for (
            position,
            rk_at,
            ctype,
            by_dek,
            migrating,
            open_,
            seal,
            index_targets,
            name,
            manifest,
            entries,
        ) in plan:
            old = row[position]
            if old is None:
                continue
            if type(old) is not bytes:
                old = as_raw(old)
            row_key = row[rk_at] if rk_at is not None else None
            try:
                if by_dek and len(old) >= _SHORTEST and wire.is_vaultkit_value(old):
                    # Without previous=, the reason depends on the header alone (version, suite,
                    # DEK): decided once per DEK.
                    header = old[:_ROUTE]
                    reason = by_header.get(header, _UNKNOWN)
                    if reason is _UNKNOWN:
                        reason = by_header[header] = classify.reason(ctype, old, row_key)
                else:
                    reason = classify.reason(ctype, old, row_key)
                if reason == "erased":
                    found.erased += 1
                    continue
                if reason == "kept":
                    found.kept += 1
                    continue
                entry = entries.get(key) if entries else None
                if entry is not None and reason != "plaintext":
                    found.forget.append((name, entry[0]))  # ciphertext now: never plaintext again
                if reason is None:
                    if all(
                        row[ix.position] is not None and row[ix.position][0] == ix.version
                        for ix in index_targets
                    ):
                        continue
                    reason = "index"  # missing, or under an older index key version
                elif reason == "plaintext":
                    if manifest is not None and not (migrating and manifest.recorded(entry, old)):
                        found.tampered += 1  # not this row's recorded legacy value: left alone
                        continue
                    if entry is not None:
                        found.legacy_ids[(name, key)] = entry[0]
                    if not migrating:
                        found.undecryptable += 1  # plaintext in a strict column: left for a person
                        continue
                if dry_run:
                    append(Change(key, name, old, old, (), reason))
                    continue
                if reason == "plaintext":
                    plain = ctype.open_legacy(old, row=row_key)
                else:
                    plain = (
                        open_(old) if open_ is not None else ctype.decrypt_value(old, row=row_key)
                    )
            except ValueErasedError:
                found.erased += 1  # past its deadline, or destroyed since the key store was read
                continue
            except DecryptionError:
                found.undecryptable += 1
                continue
            if plain is None:
                # A stored value that opens as None: a column with on_erased="null" read a value
                # whose key is gone. Never rewritten (that would replace it with NULL).
                found.erased += 1
                continue
            if type(plain) is SealedValue:
                raise ConfigurationError(f"the re-keying principal has no grant for {ctype.domain}")
            if reason == "index":
                new = old  # the value stays as it is; only its index is written
            elif seal is not None:
                new = seal(plain)
            else:
                new = ctype.encrypt_value(RowBound(plain, row_key))
            append(Change(key, name, old, new, _digests(index_targets, plain, row), reason))
    return found
