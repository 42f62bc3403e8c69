"""The research export: two passes over the source in Arrow batches, a k check, a Parquet file.

Pass 1 reads only the quasi-identifiers' sources (and the member column, and the decrypted
columns and the subject column to leave erased members out), applies their transforms and counts each equivalence
class's rows and distinct members (k counts members): memory grows with the number of classes
and 16 bytes per distinct (class, member) pair. The k check refuses (or decides which classes to suppress) before anything is written.
Pass 2 reads the source again, transforms every output column, drops the suppressed rows and
writes the Parquet file batch by batch; it counts the classes again, and a source that changed
between the passes aborts the export (the partial file is removed). The manifest goes into the
file's key-value metadata and its SHA-256 into the audit chain before the file gets its name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaultkit._keyring import DATASET_PURPOSE, SUBJECT_REF_NAME, index_key_id
from vaultkit.arrow import decrypt_array
from vaultkit.errors import ConfigurationError, ExportRefusedError, KeyStoreError
from vaultkit.research._spec import ColumnSpec, ExportSpec, dataset_key_name
from vaultkit.research._transforms import PSEUDONYM_BITS, pseudonym, transform
from vaultkit.store import DekState, SupportsScopedKeys

if TYPE_CHECKING:
    import sqlalchemy as sa

    from vaultkit import BlindIndexKey, Vault

__all__ = [
    "MANIFEST_KEY",
    "ExportReport",
    "Withdrawal",
    "destroy_key",
    "export",
    "withdraw",
]

#: The Parquet key-value metadata key that holds the manifest (JSON).
MANIFEST_KEY: Final = "vaultkit.export"
MANIFEST_FORMAT: Final = "vaultkit.export/1"
AUDIT_ACTION: Final = "research-export"
_KEYED: Final = frozenset({"pseudonym", "date_shift", "ff1"})
#: Patterns a kept text column must not hold (the export refuses, naming column and kind).
_PII_PATTERNS: Final = (
    ("e-mail address", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    ("phone number", r"(^|[^0-9])(\+|00)[1-9][0-9 ./-]{7,16}[0-9]($|[^0-9])"),
    (
        "INSZ/NISS number",
        r"(^|[^0-9])[0-9]{2}\.?[01][0-9]\.?[0-3][0-9]-?[0-9]{3}\.?[0-9]{2}($|[^0-9])",
    ),
    ("BSN-like number", r"(^|[^0-9])[0-9]{9}($|[^0-9])"),
)


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What an export wrote: counts, the achieved k and the manifest's hash (no value)."""

    path: Path
    rows_in: int
    rows_out: int
    suppressed: int
    classes: int
    k: int
    achieved_k: int | None
    manifest_sha256: str
    dataset_key_id: str
    audited: bool


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """The pseudonyms one dataset key gives the members of a withdrawal (sorted, no member id).

    ``state`` is ``live`` (``pseudonyms`` recomputed) or ``destroyed`` (the dataset is no
    longer linkable to anyone: nothing to withdraw, ``pseudonyms`` empty).
    """

    project: str
    recipient: str
    dataset_key_id: str
    state: str
    pseudonyms: tuple[str, ...]


def export(
    vault: Vault,
    spec: ExportSpec,
    out: str | os.PathLike[str],
    *,
    database: sa.Engine | str,
    allow_unaudited: bool = False,
    today: dt.date | None = None,
) -> ExportReport:
    """Write the research export ``spec`` describes to the Parquet file ``out``.

    Args:
        vault: a vault serving ``spec.domain`` (the research KEK) and every decrypted domain.
        spec: the parsed spec (:func:`vaultkit.research.load_spec`).
        out: the Parquet file; written next to it first and renamed when complete.
        database: the data database (an SQLAlchemy Engine or URL) holding ``spec.source``.
        allow_unaudited: write the export even though the vault keeps no audit log.
        today: the date ages are counted at when a column gives none (tests fix it).

    Raises:
        ExportRefusedError: the spec's ``expires`` is past, a class is smaller than k
            (``on_small_class = "refuse"``), the dataset
            key is destroyed, the linked project has no key, the source is empty or changed
            between the passes, or a kept column holds an identifier pattern.
        ConfigurationError: no audit log (without ``allow_unaudited``), a missing column.
        AccessDeniedError: a decrypted column's domain needs a grant the principal lacks.
    """
    import sqlalchemy as sa

    if vault.audit_log is None and not allow_unaudited:
        raise ConfigurationError(
            "the vault keeps no audit log: a research export records its manifest's hash in "
            "the audit chain (audit a domain, or pass allow_unaudited / --allow-unaudited)"
        )
    now = dt.datetime.now(dt.UTC)
    today = today or now.date()
    if spec.expires is not None and spec.expires < today:
        raise ExportRefusedError(
            f"the spec expired on {spec.expires.isoformat()}: renew the agreement (and expires)"
        )
    key, key_id, max_days = _dataset_key(vault, spec)
    erasures = _Erasures.of(vault, spec)
    engine = (
        sa.create_engine(database, hide_parameters=True) if isinstance(database, str) else database
    )
    owned = isinstance(database, str)
    try:
        qi_columns = [c for c in spec.output if c.name in spec.quasi_identifiers]
        qi_columns.sort(key=lambda c: spec.quasi_identifiers.index(c.name))
        # Pass 1: class sizes over the transformed quasi-identifiers.
        counts: Counter[tuple[object, ...]] = Counter()
        members = _Members()
        rows_in = 0
        # The decrypted columns are read too: a row of an erased member is left out of both
        # passes (_batches), so pass 1 must see what pass 2 will.
        read = [*qi_columns, *(c for c in spec.output if c.decrypt and c not in qi_columns)]
        for batch in _batches(vault, engine, spec, read, erasures):
            rows_in += batch.num_rows
            classes = list(_classes(batch, qi_columns, spec, key, today))
            counts.update(classes)
            members.add(classes, batch.column(spec.member).to_pylist())
        if rows_in == 0:
            raise ExportRefusedError("the source has no rows: nothing to export")
        # k counts members, not rows: one member with k claims is not k people.
        sizes = members.sizes()
        small = {c for c, n in sizes.items() if n < spec.k}
        if small and spec.on_small_class == "refuse":
            smallest = min(sizes.values())
            raise ExportRefusedError(
                f"k-anonymity: {len(small)} of {len(counts)} classes of "
                f"({', '.join(spec.quasi_identifiers)}) have fewer than k={spec.k} members "
                f"(smallest: {smallest}); generalise further, or set on_small_class = "
                '"suppress"'
            )
        suppressed = sum(counts[c] for c in small)
        kept = [n for c, n in sizes.items() if c not in small]
        rows_out = rows_in - suppressed
        if rows_out == 0:
            raise ExportRefusedError(
                f"k-anonymity: every class has fewer than k={spec.k} rows: nothing would be left"
            )
        manifest = _manifest(
            spec,
            key_id=key_id,
            max_days=max_days,
            subject_column=erasures.column if erasures is not None else None,
            rows_in=rows_in,
            rows_out=rows_out,
            suppressed=suppressed,
            classes=len(kept),
            achieved_k=min(kept),
            created=now,
            today=today,
        )
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(manifest_bytes).hexdigest()
        target = Path(out)
        partial = target.with_name(target.name + ".partial")
        try:
            _write(
                vault, engine, spec, key, today, counts, small, partial, manifest_bytes, erasures
            )
            audited = vault.record_event(
                AUDIT_ACTION,
                spec.domain,
                count=rows_out,
                facts={
                    "manifest_sha256": digest,
                    "project": spec.project,
                    "recipient": spec.recipient,
                    "dataset_key_id": key_id,
                    "rows_in": str(rows_in),
                    "suppressed": str(suppressed),
                },
            )
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
    finally:
        if owned:
            engine.dispose()
    return ExportReport(
        path=target,
        rows_in=rows_in,
        rows_out=rows_out,
        suppressed=suppressed,
        classes=len(kept),
        k=spec.k,
        achieved_k=min(kept),
        manifest_sha256=digest,
        dataset_key_id=key_id,
        audited=audited,
    )


class _Members:
    """Distinct members per class: a class number and a 64-bit hash of the member id per row
    (16 bytes a row in numpy, deduplicated as batches come; no member id is kept). Rows without
    a member id count as one member, the cautious side."""

    def __init__(self) -> None:
        self._ids: dict[tuple[object, ...], int] = {}
        self._pairs = np.empty((0, 2), dtype=np.int64)
        self._pending: list[np.ndarray[Any, Any]] = []
        self._pending_rows = 0

    def add(self, classes: Sequence[tuple[object, ...]], members: Sequence[object]) -> None:
        ids = self._ids
        cls = np.fromiter(
            (ids.setdefault(c, len(ids)) for c in classes), dtype=np.int64, count=len(classes)
        )
        who = np.fromiter((hash(m) for m in members), dtype=np.int64, count=len(members))
        self._pending.append(np.unique(np.stack([cls, who], axis=1), axis=0))
        self._pending_rows += len(classes)
        if self._pending_rows > 1_000_000:
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            both = np.concatenate([self._pairs, *self._pending])
            self._pairs = np.unique(both, axis=0)
            self._pending, self._pending_rows = [], 0

    def sizes(self) -> dict[tuple[object, ...], int]:
        self._merge()
        per_class = np.bincount(self._pairs[:, 0], minlength=len(self._ids))
        return {c: int(per_class[i]) for c, i in self._ids.items()}


def _dataset_key(vault: Vault, spec: ExportSpec) -> tuple[BlindIndexKey | None, str, int | None]:
    """The dataset key the spec's keyed columns use (the linked project's when it links), its
    id and the date-shift bound it was made with.

    A dataset key records one bound when it is made (the first keyed export's date_shift bound,
    or the default if it shifts no date), in its key-store row's name and bound into the key's
    wrapping: every export under it shifts a member's dates by the same amount, and a key-store
    writer who edits the bound makes the key unreadable (refused) rather than allows a second
    shift. An export that date-shifts with another bound is refused."""
    name = dataset_key_name(spec.key_project, spec.recipient)
    key_id = index_key_id(spec.domain, name).hex()
    record = vault.store.get(bytes.fromhex(key_id))
    if record is not None and record.state is DekState.DESTROYED:
        raise ExportRefusedError(
            f"the dataset key of project {spec.key_project} for recipient {spec.recipient} "
            f"(key {key_id}) was destroyed: that dataset can no longer be extended or linked"
        )
    if spec.link_with and record is None:
        raise ExportRefusedError(
            f"link_with: project {spec.key_project} has no dataset key for recipient "
            f"{spec.recipient} (export it first; linking needs that project's key)"
        )
    if not any(c.transform in _KEYED for c in spec.output):
        return None, key_id, None
    key = vault.dataset_key(
        spec.domain, name, create=not spec.link_with, attrs=f"max_days={spec.max_days}"
    )
    attrs = key.attrs or ""
    recorded = int(attrs[9:]) if attrs.startswith("max_days=") and attrs[9:].isdigit() else None
    shifts = any(c.transform == "date_shift" for c in spec.output)
    if shifts and recorded != spec.max_days:
        which = (
            f"date_shift: the dataset key of project {spec.key_project} for recipient "
            f"{spec.recipient} (key {key_id})"
        )
        if recorded is None:
            raise ExportRefusedError(
                f"{which} records no max_days (made before bounds were recorded): shift the "
                "dates under another project or recipient (another dataset key)"
            )
        raise ExportRefusedError(
            f"{which} was made with max_days = {recorded}, this spec shifts by max_days = "
            f"{spec.max_days}: a member's dates would move by two amounts across its exports. "
            f"Use max_days = {recorded}, or another project or recipient (another dataset key)"
        )
    return key, key_id, recorded


class _Erasures:
    """The members of a batch whose subject record says erased, in the vault's subject-scoped
    domains: an export that decrypts no column of theirs would not see it otherwise.

    Looked up by subject reference (never the member id) in one key-store query per domain
    and 500 distinct members of a batch. A member erased in any subject-scoped domain, or fenced
    there (an erasure under way), is left out; so is one erased and later allowed again (their
    rows cannot be told from the erased ones without a decrypted column).
    """

    def __init__(self, vault: Vault, column: str, domains: Sequence[str]) -> None:
        self._vault = vault
        self.column = column
        self._domains = domains

    @classmethod
    def of(cls, vault: Vault, spec: ExportSpec) -> _Erasures | None:
        column = spec.subject_column
        if column is None:
            return None
        domains = []
        for name in vault.domains:
            domain = vault.key_domain(name)
            if domain is None or domain.dek_scope != "subject":
                continue
            # No subject-reference key yet: no member of that domain was ever erased.
            if vault.store.get(index_key_id(name, SUBJECT_REF_NAME)) is None:
                continue
            domains.append(name)
        return cls(vault, column, domains) if domains else None

    def erased(self, values: Sequence[object]) -> pa.Array | None:
        """A mask of the rows whose member is erased, or ``None`` if none is."""
        vault = self._vault
        members: list[str | int | uuid.UUID] = []
        for v in dict.fromkeys(v for v in values if v is not None):
            if isinstance(v, bool) or not isinstance(v, str | int | uuid.UUID):
                raise ConfigurationError(
                    f"subject column {self.column} holds {type(v).__name__} values, not the "
                    "str, int or UUID member ids the vault knows; cast it in a query"
                )
            members.append(v)
        if not members:
            return None
        gone: set[object] = set()
        store = vault.store
        get_many = getattr(store, "get_subjects", None)
        for domain in self._domains:
            refs = {vault.subject_ref(domain, m): m for m in members}
            if get_many is not None:
                found = get_many(domain, list(refs))
            elif isinstance(store, SupportsScopedKeys):  # no batch reads: one per member
                found = {r: x for r in refs if (x := store.get_subject(domain, r)) is not None}
            else:
                found = {}
            for ref, record in found.items():
                if record.erased_at is not None or record.fenced_at is not None:
                    gone.add(refs[ref])
        if not gone:
            return None
        return pa.array([v is not None and v in gone for v in values], pa.bool_())


def _select(engine: sa.Engine, spec: ExportSpec, names: Sequence[str]) -> sa.Select[Any]:
    import sqlalchemy as sa

    if spec.source is not None:
        schema, _, table = spec.source.rpartition(".")
        source: Any = sa.table(table, *(sa.column(n) for n in names), schema=schema or None)
        return sa.select(*(source.c[n] for n in names))
    if spec.query is None:
        raise ConfigurationError("export spec: [export] needs exactly one of source and query")
    sub = sa.text(spec.query).columns(*(sa.column(n) for n in names)).subquery("vaultkit_source")
    return sa.select(*(sub.c[n] for n in names))


def _batches(
    vault: Vault,
    engine: sa.Engine,
    spec: ExportSpec,
    columns: Sequence[ColumnSpec],
    erasures: _Erasures | None,
) -> Iterator[pa.Table]:
    """The source in Arrow batches: the member column and ``columns``' sources, decrypted; the
    rows of erased members left out (seen through a decrypted column, or ``erasures``)."""
    subject = [erasures.column] if erasures is not None else []
    names = list(dict.fromkeys([spec.member, *subject, *(c.source for c in columns)]))
    decrypting = {c.source: c.decrypt for c in columns if c.decrypt is not None}
    statement = _select(engine, spec, names)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=spec.batch_size).execute(
            statement
        )
        for rows in result.partitions(spec.batch_size):
            cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
            arrays: dict[str, pa.Array] = {}
            erased: pa.Array | None = None
            for name, values in zip(names, cols, strict=True):
                where = decrypting.get(name)
                if where is None:
                    arrays[name] = _array(name, values)
                    continue
                if not all(v is None or isinstance(v, bytes) for v in values):
                    raise ConfigurationError(
                        f"source column {name} to decrypt holds values that are not ciphertext"
                    )
                # An erased member's values read as null (their key is destroyed); a
                # ciphertext never decrypts to null, so a value there that reads null is erased.
                blobs = pa.array(values, pa.binary())
                plain = decrypt_array(
                    vault,
                    blobs,
                    domain=where[0],
                    table=where[1],
                    name=where[2],
                    on_erased="null",
                )
                arrays[name] = plain
                gone = pc.and_(pc.is_valid(blobs), pc.is_null(plain))
                erased = gone if erased is None else pc.or_(erased, gone)
            if erasures is not None:
                marked = erasures.erased(arrays[erasures.column].to_pylist())
                if marked is not None:
                    erased = marked if erased is None else pc.or_(erased, marked)
            table = pa.table(arrays)
            if erased is not None and pc.any(erased).as_py():
                # The row of an erased member is not exported at all: its clear columns and its
                # pseudonym would be a new disclosure of an erased person's data.
                table = table.filter(pc.invert(erased))
            yield table


def _array(name: str, values: Sequence[object]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise ConfigurationError(
            f"source column {name} holds values of mixed types; cast it in the query"
        ) from None


def _transformed(
    batch: pa.Table,
    columns: Sequence[ColumnSpec],
    key: BlindIndexKey | None,
    spec: ExportSpec,
    today: dt.date,
) -> list[pa.Array]:
    members = batch.column(spec.member).combine_chunks()
    shifts: dict[int, list[int]] = {}  # one keyed shift per member and bound, for every date column
    return [
        transform(
            c,
            batch.column(c.source).combine_chunks(),
            key=key,
            members=members,
            today=today,
            shifts=shifts,
        )
        for c in columns
    ]


def _classes(
    batch: pa.Table,
    qi_columns: Sequence[ColumnSpec],
    spec: ExportSpec,
    key: BlindIndexKey | None,
    today: dt.date,
) -> Iterable[tuple[object, ...]]:
    if not qi_columns:
        return [()] * batch.num_rows
    arrays = _transformed(batch, qi_columns, key, spec, today)
    return zip(*(a.to_pylist() for a in arrays), strict=True)


def _check_kept(column: ColumnSpec, array: pa.Array) -> None:
    """Refuse a kept text column that holds an e-mail, phone or national-number pattern, and a
    kept integer column whose digits are a national number (a BSN or INSZ stored as a number),
    and any kept binary column: a ciphertext or an index digest (blind, compound, prefix, bucket)
    is the very value of the production table, so it links each exported row back to its member
    for whoever can read that table."""
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        if array.null_count < len(array):
            raise ExportRefusedError(
                f"column {column.name} (keep) holds binary values (a ciphertext or an index "
                "digest, which link each row back to the database): decrypt and pseudonymise, "
                "or drop it"
            )
        return
    if pa.types.is_integer(array.type):
        array = pc.cast(array, pa.string())
    elif not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return
    for kind, pattern in _PII_PATTERNS:
        if pc.any(pc.match_substring_regex(array, pattern)).as_py():
            raise ExportRefusedError(
                f"column {column.name} (keep) holds what looks like an {kind}: pseudonymise, "
                "generalise or drop it"
            )


def _write(
    vault: Vault,
    engine: sa.Engine,
    spec: ExportSpec,
    key: BlindIndexKey | None,
    today: dt.date,
    counts: Counter[tuple[object, ...]],
    small: set[tuple[object, ...]],
    path: Path,
    manifest: bytes,
    erasures: _Erasures | None,
) -> None:
    output = spec.output
    qi_index = [
        next(i for i, c in enumerate(output) if c.name == q) for q in spec.quasi_identifiers
    ]
    seen: Counter[tuple[object, ...]] = Counter()
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    try:
        for batch in _batches(vault, engine, spec, output, erasures):
            arrays = _transformed(batch, output, key, spec, today)
            for c, a in zip(output, arrays, strict=True):
                if c.transform == "keep":
                    _check_kept(c, a)
            if qi_index:
                classes = list(zip(*(arrays[i].to_pylist() for i in qi_index), strict=True))
            else:
                classes = [()] * batch.num_rows
            seen.update(classes)
            table = pa.table({c.name: a for c, a in zip(output, arrays, strict=True)})
            if small:
                mask = pa.array([c not in small for c in classes], pa.bool_())
                table = table.filter(mask)
            if writer is None or schema is None:
                schema = table.schema.with_metadata({MANIFEST_KEY: manifest})
                writer = pq.ParquetWriter(path, schema)
            else:
                table = _cast(table, schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if seen != counts:
        raise ExportRefusedError(
            "the source changed between the two passes (class counts differ); run the export "
            "again on a stable snapshot"
        )
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A later batch in the first batch's types; pyarrow's own message may quote a value."""
    try:
        return table.cast(schema.remove_metadata()).replace_schema_metadata(schema.metadata)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        changed = [f.name for f, g in zip(schema, table.schema, strict=True) if f.type != g.type]
        raise ConfigurationError(
            f"output column(s) {', '.join(changed)} changed type from one batch to the next; "
            "cast the source column in a query"
        ) from None


def _manifest(
    spec: ExportSpec,
    *,
    key_id: str,
    max_days: int | None,
    subject_column: str | None,
    rows_in: int,
    rows_out: int,
    suppressed: int,
    classes: int,
    achieved_k: int,
    created: dt.datetime,
    today: dt.date,
) -> dict[str, object]:
    import vaultkit

    columns = []
    for c in spec.columns:
        entry: dict[str, object] = {"name": c.name, "source": c.source, "transform": c.transform}
        params = c.params
        if c.transform == "generalise" and c.method == "age_band" and c.at is None:
            params["at"] = today.isoformat()
        if c.transform == "pseudonym":
            params["bits"] = PSEUDONYM_BITS
        if params:
            entry["params"] = params
        entry["written"] = c.transform != "drop"
        columns.append(entry)
    return {
        "format": MANIFEST_FORMAT,
        "project": spec.project,
        "recipient": spec.recipient,
        "link_with": list(spec.link_with),
        "spec_sha256": spec.digest,
        "key_domain": spec.domain,
        "dataset_key_id": key_id,
        "dataset_max_days": max_days,
        "subject_column": subject_column,
        "columns": columns,
        "quasi_identifiers": list(spec.quasi_identifiers),
        "k": spec.k,
        "achieved_k": achieved_k,
        "on_small_class": spec.on_small_class,
        "classes": classes,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "suppressed": suppressed,
        "created": created.isoformat(timespec="seconds"),
        "expires": spec.expires.isoformat() if spec.expires else None,
        "legal_basis": spec.legal_basis,
        "dpia_ref": spec.dpia_ref,
        "note": "pseudonymised data remain personal data (EDPB Guidelines 01/2025)",
        "vaultkit": vaultkit.__version__,
    }


_DATASET_NAME: Final = re.compile(r"dataset:(?P<project>[^/]+)/(?P<recipient>[^@]+)@v1")


def withdraw(
    vault: Vault,
    members: Iterable[object],
    *,
    recipient: str,
    project: str | None = None,
    domain: str = "research",
) -> list[Withdrawal]:
    """The pseudonyms ``recipient`` must delete for ``members``, under each of its dataset keys.

    Recomputed from each dataset key in the key store (of ``project`` only, when given): no
    pseudonym-to-member table exists. A project that linked with another used that project's
    key, so its pseudonyms are those listed under the other project. A destroyed key yields
    ``state="destroyed"`` and no pseudonym: that dataset links to no member any more.

    The request is an audit event (recipient, project, how many members; no id).

    Raises:
        ConfigurationError: no dataset key of the recipient (and project) exists.
    """
    ids = [m for m in members]
    found: list[Withdrawal] = []
    for record in vault.store.records(domain=domain):
        if record.purpose != DATASET_PURPOSE or record.name is None:
            continue
        name = record.name.partition(";")[0]  # the row's attributes (max_days) follow a ';'
        match = _DATASET_NAME.fullmatch(name)
        if match is None or match["recipient"] != recipient:
            continue
        if project is not None and match["project"] != project:
            continue
        if record.state is DekState.DESTROYED:
            found.append(
                Withdrawal(match["project"], recipient, record.dek_id.hex(), "destroyed", ())
            )
            continue
        try:
            key = vault.dataset_key(domain, name, create=False)
        except KeyStoreError:
            # Destroyed meanwhile: nothing to withdraw. Anything else (a row that does not
            # unwrap: edited by a key-store writer) is raised, never taken for destroyed.
            now = vault.store.get(record.dek_id)
            if now is None or now.state is not DekState.DESTROYED:
                raise
            found.append(
                Withdrawal(match["project"], recipient, record.dek_id.hex(), "destroyed", ())
            )
            continue
        names = sorted({pseudonym(key, m) for m in ids})
        found.append(
            Withdrawal(match["project"], recipient, record.dek_id.hex(), "live", tuple(names))
        )
    if not found:
        which = f"project {project} and " if project else ""
        hint = (
            " (a project exported with link_with uses the linked project's key: withdraw "
            "under that project, or without --project)"
            if project
            else ""
        )
        raise ConfigurationError(f"no dataset key for {which}recipient {recipient}{hint}")
    vault.record_event(
        "research-withdraw",
        domain,
        count=len(ids),
        facts={"recipient": recipient, "project": project or "*", "datasets": str(len(found))},
    )
    return sorted(found, key=lambda w: w.project)


def destroy_key(vault: Vault, *, project: str, recipient: str, domain: str = "research") -> bool:
    """Destroy the dataset key of (project, recipient): its pseudonyms and date shifts can no
    longer be recomputed, so the export links to no member. False if destroyed already.

    Raises:
        KeyStoreError: no such dataset key.
    """
    name = dataset_key_name(project, recipient)
    destroyed = vault.destroy_dataset_key(domain, name)
    if destroyed:
        vault.record_event(
            "research-key-destroyed",
            domain,
            count=1,
            facts={
                "project": project,
                "recipient": recipient,
                "dataset_key_id": index_key_id(domain, name).hex(),
            },
        )
    return destroyed
