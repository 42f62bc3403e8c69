"""Arrow kernels: encrypt, decrypt, blind-index and audience-hash whole ``pyarrow`` arrays.

One integration surface for the engines (Spark, Dask, Polars, DuckDB; see
:mod:`vaultkit.integrations` and docs/scale-out.md). Each kernel takes an array (or a chunked
array) and returns one of the same length; nulls stay nulls. The values are byte-for-byte those of
the scalar API (:meth:`vaultkit.FieldCipher.encrypt`, :class:`vaultkit.sqla.BlindIndexType`,
:func:`vaultkit.audiences.render`): the kernels loop over the values in this process with the
column's cipher and key bound once, they do not reimplement any cryptography.

Workers open their vault from a :class:`VaultSpec`: a path to a ``vaultkit.toml`` and non-secret
overrides, picklable and free of key material. Secrets come from each worker's own environment
through the configuration's ``*_env`` keys (``VAULTKIT_MASTER_KEY``, ``pin_env``, ...), as they do
for any vaultkit process; :class:`~vaultkit.Vault` and :class:`~vaultkit.FieldCipher` keep refusing
pickle, so no key can travel in a query plan, a UDF closure or a task.

Needs ``pyarrow`` (extra ``vaultkit[arrow]``).

.. versionadded:: 0.4.0
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from vaultkit._access import Principal, SealedValue, acting_as
from vaultkit._codec import STR_TAG, encode_value
from vaultkit._redact import Secret
from vaultkit._vault import Vault
from vaultkit.audiences.arrow import AUDIENCE_KINDS, hash_audience_array
from vaultkit.errors import AccessDeniedError, ConfigurationError, ValueErasedError

__all__ = [
    "AUDIENCE_KINDS",
    "BatchTransform",
    "ColumnSpec",
    "IndexSpec",
    "Op",
    "VaultSpec",
    "acting",
    "audience_hash",
    "blind_index",
    "blind_index_array",
    "close_vaults",
    "column_spec",
    "decrypt",
    "decrypt_array",
    "encrypt",
    "encrypt_array",
    "hash_audience_array",
    "index_spec",
    "open_vault",
    "output_schema",
    "transform",
]

_ENV_PREFIX: Final = "VAULTKIT__"
#: ``type`` itself, for the kernels whose ``type=`` argument (pyarrow's name) shadows it.
builtins_type = builtins.type


# -- the spec a worker opens -------------------------------------------------------------------


#: ``scheme://user:password@``: a credential in a URL (the password is never named in a message).
_URL_PASSWORD: Final = re.compile(r"://[^/\s@]*:[^/\s@]+@")


def _overrides(env: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    from vaultkit.config import load_config

    pairs = env.items() if isinstance(env, Mapping) else env
    checked: dict[str, str] = {}
    for item in pairs:
        if isinstance(item, str) or len(item) != 2:
            raise ConfigurationError("VaultSpec env= takes (name, value) pairs or a mapping")
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigurationError("VaultSpec env= names and values are str")
        if not name.upper().startswith(_ENV_PREFIX) or not name[len(_ENV_PREFIX) :].strip("_"):
            # Only configuration overrides travel with a spec: never VAULTKIT_MASTER_KEY or a
            # PIN, which each worker reads from its own environment.
            raise ConfigurationError(
                f"VaultSpec env= takes VAULTKIT__<TABLE>__<KEY> overrides only, not {name!r}: "
                "secrets come from each worker's environment"
            )
        if _URL_PASSWORD.search(value):
            # A database URL with its password would be pickled into every graph and plan.
            raise ConfigurationError(
                f"VaultSpec env= {name} holds a URL with a password: name the variable that "
                "holds the URL with key_store_env / audit_env in vaultkit.toml, set on each "
                "worker"
            )
        checked[name] = value
    # The configuration's own check of VAULTKIT__* variables, on these alone: a key that would
    # hold a secret (master_key, pin, token, ...) or an unknown table is refused here, on the
    # driver, rather than on every worker.
    load_config(None, env=checked)
    return tuple(sorted(checked.items()))


@dataclass(frozen=True, slots=True)
class VaultSpec:
    """What a worker needs to open a vault, and nothing secret: picklable, hashable, key-free.

    Args:
        config: path of the ``vaultkit.toml`` every worker can read (made absolute here).
        vault_name: a label for this vault (the name given to :func:`vaultkit.sqla.configure`,
            by convention); part of the per-process cache key and of messages.
        env: ``VAULTKIT__<TABLE>__<KEY>`` overrides applied over each worker's environment
            (a mapping or pairs). Secret keys (``master_key``, ``pin``, ...) and any other
            variable are refused: secrets come from the worker's own environment.

    :meth:`open` gives this process's vault for the spec, opened once per process (and again
    in a forked child).
    """

    config: str
    vault_name: str = "default"
    env: tuple[tuple[str, str], ...] = field(default=())

    def __init__(
        self,
        config: str | os.PathLike[str],
        *,
        vault_name: str = "default",
        env: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> None:
        if not isinstance(config, str | os.PathLike) or not str(config):
            raise ConfigurationError("VaultSpec needs the path of a vaultkit.toml")
        if not isinstance(vault_name, str) or not vault_name:
            raise ConfigurationError("VaultSpec vault_name= is a non-empty str")
        object.__setattr__(self, "config", str(Path(config).absolute()))
        object.__setattr__(self, "vault_name", vault_name)
        object.__setattr__(self, "env", _overrides(env))

    def open(self) -> Vault:
        """This process's vault for the spec (opened on first use, then cached).

        Do not close it: it is shared by every kernel call in the process
        (:func:`close_vaults` closes them all).
        """
        return open_vault(self)

    def __repr__(self) -> str:
        return f"VaultSpec({self.config!r}, vault_name={self.vault_name!r})"


_vaults: dict[VaultSpec, Vault] = {}
_vaults_lock = threading.Lock()


def _forget_after_fork() -> None:
    # The child's vaults are the parent's objects: a fresh lock and an empty cache, so that the
    # child opens its own (each collaborator also resets itself after a fork).
    global _vaults_lock
    _vaults_lock = threading.Lock()
    _vaults.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def open_vault(spec: VaultSpec) -> Vault:
    """Open (once per process) the vault ``spec`` describes, with this process's environment.

    Raises:
        ConfigurationError: the file is missing or invalid, or a variable it names is unset.
    """
    if not isinstance(spec, VaultSpec):
        raise TypeError(f"open_vault takes a VaultSpec, not {type(spec).__name__}")
    vault = _vaults.get(spec)
    if vault is not None:
        return vault
    with _vaults_lock:
        vault = _vaults.get(spec)
        if vault is None:
            from vaultkit.config import vault_options

            merged: Secret[Mapping[str, str]] = Secret({**os.environ, **dict(spec.env)})
            vault = Vault(**vault_options(spec.config, env=merged))
            _vaults[spec] = vault
        return vault


def close_vaults() -> None:
    """Close every vault :func:`open_vault` opened in this process (at a worker's shutdown)."""
    with _vaults_lock:
        vaults = list(_vaults.values())
        _vaults.clear()
    for vault in vaults:
        vault.close()


# -- column and index specs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """The binding of an encrypted column: what :meth:`vaultkit.Vault.field` takes. Key-free.

    Build it from a declared column with :func:`column_spec` (``column_spec(Member.email)``).
    """

    domain: str
    table: str
    column: str
    schema: str | None = None
    row_bound: bool = False
    pad_to: int | None = None

    def field(self, vault: Vault) -> Any:
        """The vault's :class:`~vaultkit.FieldCipher` for this column."""
        return vault.field(
            self.domain,
            table=self.table,
            column=self.column,
            schema=self.schema,
            row_bound=self.row_bound,
            pad_to=self.pad_to,
        )


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """A blind index: its key's domain, table, source column and version; digest length and the
    normalisation applied before hashing (a picklable callable such as ``str.lower``)."""

    domain: str
    table: str
    column: str
    version: int = 1
    bits: int | None = None
    normalize: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or not 1 <= self.version <= 255:
            raise ConfigurationError("a blind-index version is an integer from 1 to 255")
        bits = self.bits
        if bits is not None and not (isinstance(bits, int) and 16 <= bits <= 256 and bits % 8 == 0):
            raise ConfigurationError("bits must be a multiple of 8 from 16 to 256")


def _column_type(column: Any) -> tuple[Any, Any]:
    """The SQLAlchemy column and its type of a mapped attribute, a Column or a column type."""
    clause = column.__clause_element__() if hasattr(column, "__clause_element__") else column
    return clause, getattr(clause, "type", clause)


def column_spec(column: Any) -> ColumnSpec:
    """The :class:`ColumnSpec` of an ``Encrypted`` column: ``Member.email``, a ``Column`` or the
    attached type, so that table, column, schema and domain are never retyped.

    A column whose domain has a key per subject takes the members with the values: pass them
    as :func:`encrypt_array`'s ``subjects=`` (same spec).

    Raises:
        ConfigurationError: not an ``Encrypted`` column.
    """
    from vaultkit.sqla.types import Encrypted

    _, column_type = _column_type(column)
    if not isinstance(column_type, Encrypted):
        raise ConfigurationError(
            f"column_spec takes an Encrypted column, not {type(column_type).__name__}"
        )
    schema, table, name = column_type.binding()
    return ColumnSpec(
        domain=column_type.domain,
        table=table,
        column=name,
        schema=schema,
        row_bound=column_type.row_key is not None,
        pad_to=column_type.pad_to,
    )


def index_spec(index: Any) -> IndexSpec:
    """The :class:`IndexSpec` of a declared blind index (``Member.email_index``)."""
    from vaultkit.sqla.types import BlindIndexType

    _, index_type = _column_type(index)
    if type(index_type) is not BlindIndexType:
        # A compound, prefix or bucket index (subclasses) has its own key label and encoding:
        # digests computed here as a plain blind index would silently match nothing.
        raise ConfigurationError(
            f"index_spec takes a BlindIndex column, not {type(index_type).__name__}"
        )
    if index_type.partitions > 1:
        raise ConfigurationError(
            f"blind index of {index_type.source!r} has partitions={index_type.partitions}: its "
            "digests are drawn per row, which the kernels do not do; write it through the column "
            "types"
        )
    attached = index_type._attached
    if attached is None:
        raise ConfigurationError(f"blind index of {index_type.source!r} is not attached to a table")
    return IndexSpec(
        domain=index_type._domain(),
        table=attached[0],
        column=attached[1],
        version=index_type.version,
        bits=index_type.bits,
        normalize=index_type.normalize,
    )


def _resolve_column(
    field_: ColumnSpec | Any | None,
    domain: str | None,
    table: str | None,
    column: str | None,
    schema: str | None,
    pad_to: int | None,
    row_bound: bool,
) -> ColumnSpec:
    if field_ is not None:
        if domain is not None or table is not None or column is not None:
            raise ConfigurationError(
                "give column= (a spec or Encrypted column) or domain/table/column"
            )
        return field_ if isinstance(field_, ColumnSpec) else column_spec(field_)
    if domain is None or table is None or column is None:
        raise ConfigurationError("a kernel needs column= or all of domain=, table= and column=")
    return ColumnSpec(domain, table, column, schema=schema, row_bound=row_bound, pad_to=pad_to)


# -- arrays ------------------------------------------------------------------------------------


def _values(array: Any, what: str) -> list[Any]:
    if isinstance(array, pa.Array):
        return array.to_pylist()  # type: ignore[no-any-return]
    raise TypeError(f"{what} must be a pyarrow Array or ChunkedArray, not {type(array).__name__}")


def _per_chunk(array: Any, others: tuple[Any, ...], one: Callable[..., Any]) -> Any:
    """Run ``one(chunk, *companions)`` per chunk of a ChunkedArray, companions cut alike."""
    pieces = []
    offset = 0
    for chunk in array.chunks:
        cut = tuple(None if o is None else _flat(o).slice(offset, len(chunk)) for o in others)
        pieces.append(one(chunk, *cut))
        offset += len(chunk)
    if not pieces:
        return one(pa.array([], type=array.type), *(None for _ in others))
    return pa.chunked_array(pieces)


def _flat(array: Any) -> Any:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _same_length(array: Any, other: Any, what: str) -> list[Any] | None:
    if other is None:
        return None
    values = _values(_flat(other), what)
    if len(values) != len(array):
        raise ConfigurationError(f"{what} has {len(values)} values for an array of {len(array)}")
    return values


def encrypt_array(
    vault: Vault,
    array: Any,
    *,
    column: ColumnSpec | Any | None = None,
    domain: str | None = None,
    table: str | None = None,
    name: str | None = None,
    schema: str | None = None,
    pad_to: int | None = None,
    row_keys: Any = None,
    subjects: Any = None,
    large: bool = False,
) -> Any:
    """Encrypt every value of ``array`` as :meth:`FieldCipher.encrypt` does, one by one.

    Args:
        vault: this process's vault (``spec.open()``).
        array: values of any type the scalar API takes (string, binary, integer, float,
            decimal, date, timestamp, boolean); nulls stay null.
        column: a :class:`ColumnSpec` or an ``Encrypted`` column (``Member.email``); or give
            ``domain``, ``table`` and ``name`` (the column's name), with ``schema`` and ``pad_to``.
        row_keys: an array of the row keys of a row-bound column, same length.
        subjects: an array of member ids for a domain with subject keys, same length.
        large: return ``large_binary`` instead of ``binary`` (for more than 2 GiB per array).

    Returns:
        A binary array of ciphertexts (wire format v1).
    """
    if isinstance(array, pa.ChunkedArray):
        return _per_chunk(
            array,
            (row_keys, subjects),
            lambda chunk, rows, members: encrypt_array(
                vault,
                chunk,
                column=column,
                domain=domain,
                table=table,
                name=name,
                schema=schema,
                pad_to=pad_to,
                row_keys=rows,
                subjects=members,
                large=large,
            ),
        )
    spec = _resolve_column(column, domain, table, name, schema, pad_to, row_keys is not None)
    values = _values(array, "array")
    rows = _same_length(values, row_keys, "row_keys")
    members = _same_length(values, subjects, "subjects")
    cipher = spec.field(vault)
    out: list[bytes | None]
    if rows is None and members is None and not spec.row_bound:
        encrypt = cipher.encrypt
        if spec.pad_to is None:
            seal = cipher.sealer()
            out = [
                None
                if v is None
                else (seal(STR_TAG + v.encode("utf-8")) if type(v) is str else encrypt(v))
                for v in values
            ]
        else:
            out = [None if v is None else encrypt(v) for v in values]
    else:
        if spec.row_bound and rows is None:
            raise ConfigurationError(f"{spec.table}.{spec.column} is row-bound: pass row_keys=")
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            out.append(
                cipher.encrypt(
                    v,
                    row=None if rows is None else rows[i],
                    subject=None if members is None else members[i],
                )
            )
    return pa.array(out, type=pa.large_binary() if large else pa.binary())


def _sealed(domain: str) -> AccessDeniedError:
    return AccessDeniedError(
        f"no grant for domain {domain!r} in this scope: sealed values have no Arrow form "
        "(run the kernel inside acting_as(...) with a principal holding the grant)"
    )


def decrypt_array(
    vault: Vault,
    array: Any,
    *,
    column: ColumnSpec | Any | None = None,
    domain: str | None = None,
    table: str | None = None,
    name: str | None = None,
    schema: str | None = None,
    row_keys: Any = None,
    type: Any = None,
    on_erased: str = "raise",
) -> Any:
    """Decrypt every value of a binary array as :meth:`FieldCipher.decrypt` does.

    Args:
        array: binary or large_binary ciphertexts; nulls stay null.
        column, domain, table, name, schema: the column, as for :func:`encrypt_array`.
        row_keys: the row keys of a row-bound column, same length.
        type: the Arrow type of the result (default: inferred from the values).
        on_erased: ``"raise"`` (the default) or ``"null"``: a value whose key was destroyed
            (an erased member, a retention deadline) reads as null, as ``Encrypted(...,
            on_erased="null")`` does. Any other failure raises in both modes.

    Raises:
        DecryptionError: a damaged, foreign or misplaced value (one message for all).
        AccessDeniedError: the current scope has no grant for a restricted domain (sealed
            values have no Arrow form).
    """
    if on_erased not in ("raise", "null"):
        raise ConfigurationError('on_erased= is "raise" or "null"')
    if isinstance(array, pa.ChunkedArray):
        return _per_chunk(
            array,
            (row_keys,),
            lambda chunk, rows: decrypt_array(
                vault,
                chunk,
                column=column,
                domain=domain,
                table=table,
                name=name,
                schema=schema,
                row_keys=rows,
                type=type,
                on_erased=on_erased,
            ),
        )
    if not pa.types.is_binary(array.type) and not pa.types.is_large_binary(array.type):
        if not pa.types.is_null(array.type):
            raise TypeError(f"decrypt_array takes binary ciphertexts, not {array.type}")
    spec = _resolve_column(column, domain, table, name, schema, None, row_keys is not None)
    values = _values(array, "array")
    rows = _same_length(values, row_keys, "row_keys")
    cipher = spec.field(vault)
    out: list[Any] = []
    append = out.append
    if rows is None and not spec.row_bound and on_erased == "raise":
        open_ = cipher.opener()
        out = [None if b is None else open_(b) for b in values]
    else:
        if spec.row_bound and rows is None:
            raise ConfigurationError(f"{spec.table}.{spec.column} is row-bound: pass row_keys=")
        decrypt = cipher.decrypt
        for i, blob in enumerate(values):
            if blob is None:
                append(None)
                continue
            try:
                append(decrypt(blob, row=None if rows is None else rows[i]))
            except ValueErasedError:
                if on_erased == "null":
                    append(None)
                    continue
                raise
    try:
        return pa.array(out, type=type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # pyarrow's message quotes the value it could not convert: a plaintext. Neither it nor
        # a chained error leaves this frame; only the types are named.
        kinds = sorted({builtins_type(v).__name__ for v in out if v is not None})
        sealed = any(isinstance(v, SealedValue) for v in out)
    del out
    if sealed:
        raise _sealed(spec.domain)
    raise TypeError(
        f"decrypted values of {spec.table}.{spec.column} ({', '.join(kinds)}) do not fit the "
        f"Arrow type {type if type is not None else 'inferred'}; pass type="
    )


def blind_index_array(
    vault: Vault,
    array: Any,
    *,
    index: IndexSpec | Any | None = None,
    domain: str | None = None,
    table: str | None = None,
    column: str | None = None,
    version: int = 1,
    bits: int | None = None,
    normalize: Callable[[Any], Any] | None = None,
) -> Any:
    """The stored blind-index digests (``version || HMAC-SHA256``) of every plaintext value.

    The same bytes :class:`vaultkit.sqla.BlindIndexType` writes: ``index`` is an
    :class:`IndexSpec` or the declared index (``Member.email_index``); or give ``domain``,
    ``table`` and ``column`` (the source column), with ``version``, ``bits`` and ``normalize``.
    Nulls stay null. Returns a binary array.
    """
    if isinstance(array, pa.ChunkedArray):
        return _per_chunk(
            array,
            (),
            lambda chunk: blind_index_array(
                vault,
                chunk,
                index=index,
                domain=domain,
                table=table,
                column=column,
                version=version,
                bits=bits,
                normalize=normalize,
            ),
        )
    if index is not None:
        if domain is not None or table is not None or column is not None:
            raise ConfigurationError("give index= or domain/table/column, not both")
        spec = index if isinstance(index, IndexSpec) else index_spec(index)
    else:
        if domain is None or table is None or column is None:
            raise ConfigurationError("blind_index_array needs index= or domain=, table=, column=")
        spec = IndexSpec(domain, table, column, version=version, bits=bits, normalize=normalize)
    values = _values(array, "array")
    key = vault.blind_index_key(
        spec.domain, table=spec.table, column=spec.column, version=spec.version
    )
    base = key._base
    size = (spec.bits or 256) // 8
    prefix = bytes((spec.version,))
    norm = spec.normalize
    out: list[bytes | None] = []
    append = out.append
    for value in values:
        if value is None:
            append(None)
            continue
        if norm is not None:
            value = norm(value)
        mac = base.copy()
        mac.update(STR_TAG + value.encode("utf-8") if type(value) is str else encode_value(value))
        append(prefix + mac.digest()[:size])
    return pa.array(out, type=pa.binary())


# -- column operations on record batches: what the engine adapters hand to their engines ---------


@dataclass(frozen=True, slots=True)
class Op:
    """One column operation on a record batch: key-free and picklable. Made by :func:`decrypt`,
    :func:`encrypt`, :func:`blind_index` and :func:`audience_hash`.

    ``source`` is the input column, ``target`` the output column (replaced, or appended when
    new); ``row_key`` and ``subject`` name the batch columns holding row keys and subjects.
    """

    action: str
    source: str
    target: str
    column: ColumnSpec | None = None
    index: IndexSpec | None = None
    row_key: str | None = None
    subject: str | None = None
    type: Any = None
    on_erased: str = "raise"
    platform: str | None = None
    kind: str = "email"
    rules: str | None = None
    default_region: str | None = None
    reasons: str | None = None

    @property
    def needs_vault(self) -> bool:
        return self.action != "audience"

    def output_fields(self) -> list[Any]:
        """The Arrow fields this operation writes."""
        if self.action == "decrypt":
            return [pa.field(self.target, self.type)]
        if self.action in ("encrypt", "blind_index"):
            return [pa.field(self.target, pa.binary())]
        fields = [pa.field(self.target, pa.string())]
        if self.reasons is not None:
            fields.append(pa.field(self.reasons, pa.string()))
        return fields

    def apply(self, vault: Vault | None, batch: Any) -> list[Any]:
        """The output arrays of this operation on ``batch`` (a RecordBatch or Table)."""
        values = batch.column(self.source)
        if batch.num_rows == 0:
            return [pa.array([], type=f.type) for f in self.output_fields()]
        if self.action == "audience":
            assert self.platform is not None  # noqa: S101 - set by audience_hash()
            hashes, reasons = hash_audience_array(
                values,
                platform=self.platform,
                kind=self.kind,
                rules=self.rules,
                default_region=self.default_region,
            )
            return [hashes] if self.reasons is None else [hashes, reasons]
        if vault is None:
            raise ConfigurationError(f"{self.action} of {self.source!r} needs a VaultSpec")
        rows = batch.column(self.row_key) if self.row_key is not None else None
        if rows is not None and not pa.types.is_string(rows.type):
            rows = _row_keys_as_text(rows)
        if self.action == "decrypt":
            return [
                decrypt_array(
                    vault,
                    values,
                    column=self.column,
                    row_keys=rows,
                    type=self.type,
                    on_erased=self.on_erased,
                )
            ]
        if self.action == "encrypt":
            subjects = batch.column(self.subject) if self.subject is not None else None
            return [
                encrypt_array(vault, values, column=self.column, row_keys=rows, subjects=subjects)
            ]
        return [blind_index_array(vault, values, index=self.index)]


def _row_keys_as_text(rows: Any) -> Any:
    # Row keys bind as str, int or UUID: integers stay integers, anything else as text.
    if pa.types.is_integer(rows.type) or pa.types.is_string(rows.type):
        return rows
    if pa.types.is_large_string(rows.type) or pa.types.is_string_view(rows.type):
        return rows.cast(pa.string())
    raise ConfigurationError(f"row keys must be integers or text, not {rows.type}")


def _as_column(column: ColumnSpec | Any) -> ColumnSpec:
    return column if isinstance(column, ColumnSpec) else column_spec(column)


def decrypt(
    source: str,
    *,
    column: ColumnSpec | Any,
    target: str | None = None,
    row_key: str | None = None,
    type: Any = None,
    on_erased: str = "raise",
) -> Op:
    """Decrypt batch column ``source`` (binary) into ``target`` (default: in place).

    ``type`` is the Arrow type of the plaintexts (default ``string``); ``column`` a
    :class:`ColumnSpec` or an ``Encrypted`` column; ``row_key`` the batch column of row keys.
    """
    if on_erased not in ("raise", "null"):
        raise ConfigurationError('on_erased= is "raise" or "null"')
    return Op(
        "decrypt",
        source,
        target or source,
        column=_as_column(column),
        row_key=row_key,
        type=pa.string() if type is None else type,
        on_erased=on_erased,
    )


def encrypt(
    source: str,
    *,
    column: ColumnSpec | Any,
    target: str | None = None,
    row_key: str | None = None,
    subject: str | None = None,
) -> Op:
    """Encrypt batch column ``source`` into binary column ``target`` (default: in place)."""
    return Op(
        "encrypt",
        source,
        target or source,
        column=_as_column(column),
        row_key=row_key,
        subject=subject,
    )


def blind_index(source: str, *, index: IndexSpec | Any, target: str) -> Op:
    """The blind-index digests of plaintext column ``source``, into binary column ``target``."""
    return Op(
        "blind_index",
        source,
        target,
        index=index if isinstance(index, IndexSpec) else index_spec(index),
    )


def audience_hash(
    source: str,
    *,
    platform: str,
    target: str,
    kind: str = "email",
    reasons: str | None = None,
    rules: str | None = None,
    default_region: str | None = None,
) -> Op:
    """Audience hashes of ``source`` into ``target``; reject reasons into ``reasons`` if given."""
    # Checked now, on the driver: platform, rule version, region and kind.
    hash_audience_array(
        pa.array([], type=pa.string()),
        platform=platform,
        kind=kind,
        rules=rules,
        default_region=default_region,
    )
    return Op(
        "audience",
        source,
        target,
        platform=str(platform),
        kind=kind,
        reasons=reasons,
        rules=rules,
        default_region=default_region,
    )


def acting(vault: Vault | None, principal: Principal | None, purpose: str | None) -> Any:
    """The scope a kernel runs in on a worker: ``vault.acting_as(principal, purpose=...)``
    (audit batches written at its end), or the caller's own scope when no principal is given.

    The scope of ``acting_as`` is a context variable of the calling thread: it does not reach a
    Dask or Spark worker, nor DuckDB's threads, so the adapters open it where the kernel runs.
    """
    if principal is None:
        if purpose is not None:
            raise ConfigurationError("purpose= goes with principal=")
        return contextlib.nullcontext()
    if not isinstance(principal, Principal):
        raise TypeError(
            f"principal must be a vaultkit.Principal, not {builtins_type(principal).__name__}"
        )
    if not isinstance(purpose, str) or not purpose:
        raise ConfigurationError("principal= needs a purpose= (written into the audit log)")
    if vault is None:
        return acting_as(principal, purpose=purpose)
    return vault.acting_as(principal, purpose=purpose)


def transform(
    spec: VaultSpec | None,
    batch: Any,
    ops: Iterable[Op],
    *,
    principal: Principal | None = None,
    purpose: str | None = None,
) -> Any:
    """Apply ``ops`` in order to a RecordBatch or Table; returns the same kind.

    The vault is opened from ``spec`` in this process (once), only if an operation needs it and
    the batch has rows. Output columns replace their namesakes in place, new ones are appended.
    With ``principal`` (and ``purpose``), the operations run as that principal: what a
    restricted domain's values need on a worker, where the caller's ``acting_as`` does not reach.
    """
    operations = list(ops)
    vault: Vault | None = None
    if batch.num_rows and any(op.needs_vault for op in operations):
        if spec is None:
            raise ConfigurationError("these operations need a VaultSpec")
        vault = spec.open()
    with acting(vault, principal, purpose):
        return _apply(vault, batch, operations)


def _apply(vault: Vault | None, batch: Any, operations: list[Op]) -> Any:
    for op in operations:
        for f, array in zip(op.output_fields(), op.apply(vault, batch), strict=True):
            if isinstance(array, pa.ChunkedArray) and isinstance(batch, pa.RecordBatch):
                array = array.combine_chunks()
            names = batch.schema.names
            if f.name in names:
                batch = batch.set_column(names.index(f.name), f, array)
            else:
                batch = batch.append_column(f, array)
    return batch


def output_schema(schema: Any, ops: Iterable[Op]) -> Any:
    """The Arrow schema :func:`transform` gives for input ``schema``."""
    for op in ops:
        for f in op.output_fields():
            index = schema.get_field_index(f.name)
            schema = schema.set(index, f) if index >= 0 else schema.append(f)
    return schema


@dataclass(frozen=True, slots=True)
class BatchTransform:
    """``transform(spec, batch, ops)`` as a picklable callable, for one batch or an iterator of
    them (Spark's ``mapInArrow``): what the adapters ship to workers. Holds no key material."""

    spec: VaultSpec | None
    ops: tuple[Op, ...]
    principal: Principal | None = None
    purpose: str | None = None

    def __post_init__(self) -> None:
        acting(None, self.principal, self.purpose)  # checked on the driver, not on each worker

    def __call__(self, batches: Any) -> Any:
        if isinstance(batches, pa.RecordBatch | pa.Table):
            return transform(
                self.spec, batches, self.ops, principal=self.principal, purpose=self.purpose
            )
        return (
            transform(self.spec, b, self.ops, principal=self.principal, purpose=self.purpose)
            for b in batches
        )
