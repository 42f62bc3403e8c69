"""How values are checked and converted on their way into and out of an ``Encrypted`` column.

:func:`coercer` checks what the application writes against the inner type (and converts the few
values that convert without loss); :func:`legacy_value` reads legacy plaintext in migration mode as
the inner type. Neither lets a message quote a value.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.types import TypeEngine

from vaultkit._codec import PlainValue
from vaultkit.errors import ConfigurationError

__all__ = ["INVALID", "coercer", "legacy_bytes", "legacy_value"]


def coercer(
    inner: TypeEngine[Any], *, cell_of: Callable[[Any], object | None]
) -> tuple[type | None, Callable[[Any], PlainValue]]:
    """Return the Python type of ``inner`` and a function that checks and converts values to it.

    ``cell_of`` tells a sealed cell (or a container holding one) from a value: a JSON column
    refuses to write one back.
    """
    if isinstance(inner, sa.Enum):
        enum_class = inner.enum_class
        names = frozenset(inner.enums)

        def to_enum_name(value: Any) -> PlainValue:
            if enum_class is not None and isinstance(value, enum_class):
                return str(value.name)
            if isinstance(value, str) and value in names:
                return str(value)
            raise ValueError(f"value is not one of the {len(names)} members of this Enum column")

        return (enum_class or str), to_enum_name
    if isinstance(inner, sa.JSON):

        def to_json(value: Any) -> PlainValue:
            if isinstance(value, dict | list):
                if cell_of(value) is not None:
                    raise TypeError(
                        "a sealed value cannot be written back into an encrypted column"
                    )
                return value
            raise TypeError(f"a JSON column takes dict or list, not {type(value).__name__}")

        return dict, to_json
    try:
        python_type = inner.python_type
    except NotImplementedError:
        raise ConfigurationError(
            f"Encrypted cannot wrap {type(inner).__name__}: no Python type"
        ) from None

    def strict(value: Any) -> PlainValue:
        if isinstance(value, python_type) and not (python_type is int and isinstance(value, bool)):
            return value  # type: ignore[no-any-return]
        raise TypeError(
            f"column of type {type(inner).__name__} takes {python_type.__name__}, not {type(value).__name__}"
        )

    if python_type is Decimal:

        def to_decimal(value: Any) -> PlainValue:
            if isinstance(value, int) and not isinstance(value, bool):
                return Decimal(value)
            return strict(value)

        return Decimal, to_decimal
    if python_type is float:

        def to_float(value: Any) -> PlainValue:
            if isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            return strict(value)

        return float, to_float
    if python_type is uuid.UUID:

        def to_uuid(value: Any) -> PlainValue:
            if isinstance(value, str):
                return uuid.UUID(value)
            return strict(value)

        return uuid.UUID, to_uuid
    if python_type is dt.date:

        def to_date(value: Any) -> PlainValue:
            if isinstance(value, dt.datetime):
                raise TypeError(
                    "a Date column takes a date, not a datetime (the time would be lost)"
                )
            return strict(value)

        return dt.date, to_date
    if python_type is bytes:

        def to_bytes(value: Any) -> PlainValue:
            if isinstance(value, bytearray | memoryview):
                return bytes(value)
            return strict(value)

        return bytes, to_bytes
    return python_type, strict


#: What :func:`legacy_value` returns for a legacy value that does not convert to the column's type.
INVALID: Final = object()


def legacy_bytes(raw: Any) -> bytes:
    """The stored bytes of a legacy value, as the manifest's tags were computed over them."""
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, bytearray | memoryview):
        return bytes(raw)
    return str(raw).encode("utf-8")  # legacy text read through a text column type


def legacy_value(raw: Any, python_type: type | None, inner: TypeEngine[Any]) -> Any:
    """Interpret a legacy plaintext value (migration mode) as the inner type's Python type.

    Returns :data:`INVALID` when it does not convert. No exception leaves this function: the
    converters' messages quote the value (``invalid literal for int() with base 10: 'abc'``).
    """
    try:
        return _convert_legacy(raw, python_type, inner)
    except Exception:  # any failure: its message and chain would carry the value
        return INVALID


def _convert_legacy(raw: Any, python_type: type | None, inner: TypeEngine[Any]) -> Any:
    if isinstance(raw, bytearray | memoryview):
        raw = bytes(raw)
    if python_type is bytes:
        return raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if python_type is None or python_type is str:
        return text if isinstance(text, str) else str(text)
    if (
        isinstance(inner, sa.Enum)
        and isinstance(python_type, type)
        and issubclass(python_type, enum.Enum)
    ):
        return python_type[text]
    if isinstance(text, python_type) and not isinstance(text, bool):
        return text
    if python_type is bool:
        if isinstance(text, int):
            return bool(text)
        return str(text).strip().lower() in {"1", "t", "true", "y", "yes"}
    converters: dict[type, Callable[[str], Any]] = {
        int: int,
        float: float,
        Decimal: Decimal,
        dt.date: dt.date.fromisoformat,
        dt.datetime: dt.datetime.fromisoformat,
        uuid.UUID: uuid.UUID,
        dict: json.loads,
    }
    converter = converters.get(python_type)
    if converter is None:
        return INVALID
    return converter(str(text))
