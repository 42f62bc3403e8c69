"""Audience hashing of a Parquet member list on the Arrow kernels (:mod:`vaultkit.arrow`).

``vaultkit audience hash members.parquet -o upload.parquet --platform google`` reads the input in
record batches (bounded memory), hashes the e-mail and phone columns with
:func:`vaultkit.arrow.hash_audience_array`, and writes the platform's upload columns as Parquet or
CSV, with the same acceptance rules and reject reasons as :func:`vaultkit.audiences.render` gives a
record holding those identifiers. Outputs are written under a temporary name (mode 0600) and put
in place only when written in full, as the CSV path does.

Needs ``pyarrow`` (extra ``vaultkit[arrow]``).

.. versionadded:: 0.4.0
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from vaultkit._files import atomic_text_outputs
from vaultkit.audiences._csv import _resolve_columns
from vaultkit.audiences._render import COLUMNS, AudienceReport, Platform, _check
from vaultkit.audiences.arrow import hash_audience_array
from vaultkit.audiences.normalize import Reason
from vaultkit.errors import AudienceError, ConfigurationError

__all__ = ["BATCH_ROWS", "hash_parquet"]

#: Rows per record batch read from the input.
BATCH_ROWS: Final = 65_536
#: The identifier fields the Parquet path hashes (the kernels' kinds).
PARQUET_FIELDS: Final = ("email", "phone")
_NO_IDENTIFIER: Final = str(Reason.NO_IDENTIFIER)


def _value_reason(reasons: str | None) -> str | None:
    """A kernel's reasons for one value, without the row-level ``no_identifier``."""
    if reasons is None or reasons == _NO_IDENTIFIER:
        return None
    return reasons.split(" ", 1)[0]


def _text(array: Any) -> Any:
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return array
    if pa.types.is_string_view(array.type) or pa.types.is_dictionary(array.type):
        return array.cast(pa.string())
    if pa.types.is_integer(array.type):  # phone numbers stored as integers
        return array.cast(pa.string())
    raise ConfigurationError(f"identifier columns must hold text, not {array.type}")


def hash_parquet(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    platform: Platform | str,
    default_region: str | None = None,
    rules: str | None = None,
    mapping: dict[str, str] | None = None,
    output_format: str = "parquet",
    rejects_path: str | os.PathLike[str] | None = None,
    rejects_with_values: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[int], None] | None = None,
) -> AudienceReport:
    """Hash the e-mail and phone columns of a Parquet file into a platform's upload file.

    Args:
        input_path: a Parquet file; its e-mail and phone columns are found by name as in the
            CSV path (``email``, ``E-mail``, ``phone``, ``GSM``, ...) or named by ``mapping``.
        output_path: the upload file: the platform's columns (:data:`COLUMNS`), one row per
            accepted input row, in input order; columns without a hash are null (Parquet) or
            empty (CSV).
        output_format: ``"parquet"`` or ``"csv"``.
        rejects_path: a CSV of rejected rows and dropped values: row number (1 for the first
            data row), status (``rejected``, ``values_dropped``) and reason codes; the values
            only with ``rejects_with_values``.
        batch_rows: rows per record batch read.

    Raises:
        ConfigurationError: bad options, columns other than e-mail and phone (the CSV path
            hashes names and addresses), or an output that cannot be written in full.
        AudienceError: the input is not a readable Parquet file.
    """
    chosen, version = _check(platform, rules, default_region)
    if output_format not in ("parquet", "csv"):
        raise ConfigurationError('output_format is "parquet" or "csv"')
    if batch_rows < 1:
        raise ConfigurationError("batch_rows must be at least 1")
    source = Path(input_path)
    target = Path(output_path)
    if source.resolve() == target.resolve():
        raise ConfigurationError("the output file must not be the input file")
    try:
        reader = pq.ParquetFile(source)
    except FileNotFoundError:
        raise ConfigurationError(f"cannot read {source}: no such file") from None
    except (OSError, pa.ArrowException) as exc:
        raise AudienceError(f"{source.name} is not a readable Parquet file: {exc}") from None
    header = reader.schema_arrow.names
    columns = _resolve_columns(header, mapping or {})
    others = sorted(set(columns) - set(PARQUET_FIELDS))
    if others:
        raise ConfigurationError(
            f"the Parquet path hashes e-mail and phone only; {source.name} also has "
            f"{', '.join(others)} ({', '.join(header[columns[f]] for f in others)}): hash those "
            "through a CSV, or leave them out of the file"
        )
    names = {field: header[i] for field, i in columns.items()}
    out_columns = COLUMNS[chosen]
    email_at = 0
    phone_at = 1
    region = default_region.upper() if default_region else None
    report = AudienceReport()
    outputs = [target] if rejects_path is None else [target, Path(rejects_path)]
    read_names = list(names.values())
    with atomic_text_outputs(outputs, what="audience file", error=ConfigurationError) as files:
        writer: Any = None
        text_out: Any = None
        if output_format == "csv":
            text_out = csv.writer(files[0], lineterminator="\r\n")
            text_out.writerow(out_columns)
        else:
            schema = pa.schema([pa.field(c, pa.string()) for c in out_columns])
            writer = pq.ParquetWriter(files[0].buffer, schema)
        rejects = None
        if rejects_path is not None:
            rejects = csv.writer(files[1], lineterminator="\r\n")
            rejects.writerow(
                ["row", "status", "reasons", *(read_names if rejects_with_values else [])]
            )
        try:
            row_no = 0
            for batch in reader.iter_batches(batch_size=batch_rows, columns=read_names):
                n = batch.num_rows
                hashed: dict[str, tuple[list[Any], list[Any]]] = {}
                for field, name in names.items():
                    hashes, reasons = hash_audience_array(
                        _text(batch.column(name)),
                        platform=chosen,
                        kind=field,
                        rules=version,
                        default_region=region,
                    )
                    hashed[field] = (hashes.to_pylist(), reasons.to_pylist())
                none = [None] * n
                email_h, email_r = hashed.get("email", (none, none))
                phone_h, phone_r = hashed.get("phone", (none, none))
                keep: list[int] = []
                values = (
                    {name: batch.column(name).to_pylist() for name in read_names}
                    if (rejects is not None and rejects_with_values)
                    else None
                )
                for i in range(n):
                    dropped = [
                        r for r in (_value_reason(email_r[i]), _value_reason(phone_r[i])) if r
                    ]
                    accepted = email_h[i] is not None or phone_h[i] is not None
                    if not accepted:
                        dropped.append(_NO_IDENTIFIER)
                    report.rows += 1
                    report.reasons.update(dropped)
                    if accepted:
                        report.accepted += 1
                        keep.append(i)
                    else:
                        report.rejected += 1
                    if rejects is not None and dropped:
                        entry: list[Any] = [
                            row_no + i + 1,
                            "values_dropped" if accepted else "rejected",
                            " ".join(dropped),
                        ]
                        if values is not None:
                            entry.extend(
                                "" if values[c][i] is None else values[c][i] for c in read_names
                            )
                        rejects.writerow(entry)
                row_no += n
                emails = [email_h[i] for i in keep]
                phones = [phone_h[i] for i in keep]
                if text_out is not None:
                    blank = [""] * (len(out_columns) - 2)
                    text_out.writerows(
                        [e or "", p or "", *blank] for e, p in zip(emails, phones, strict=True)
                    )
                elif keep:
                    empty = pa.nulls(len(keep), type=pa.string())
                    arrays = [empty] * len(out_columns)
                    arrays[email_at] = pa.array(emails, type=pa.string())
                    arrays[phone_at] = pa.array(phones, type=pa.string())
                    writer.write_table(pa.Table.from_arrays(arrays, schema=writer.schema))
                if progress is not None:
                    progress(report.rows)
        finally:
            # Closed here in every case, while its temporary file is still open: after a failure
            # the file is discarded, and a writer left to the garbage collector would write to a
            # closed file.
            if writer is not None:
                writer.close()
    return report
